//! Segment format 3: the Raft log's segments, one frame per Raft entry.
//!
//! A segment is one preallocated, memory-mapped file named by the index of
//! its first entry, `raft-<first index, 20 digits>.log`:
//!
//! ```text
//! header (64 bytes):
//! 0      8         12           16            24         32                      40      64
//! | magic | version 3 | header crc | first index | capacity | next seq at creation | zeros |
//!
//! then frames, each 8-byte aligned:
//! 0     4     8       16     24     25       32
//! | len | crc | index | term | kind | zeros 7 | payload (len bytes) | zero pad to 8 |
//! ```
//!
//! All integers are little-endian. The header is the command journal's
//! (`segment.rs`) with version 3 and one more field: "next seq at
//! creation", the sequence number of the first command appended after the
//! segment was created, when the appender told the log
//! ([`RaftLog::note_next_seq`](crate::RaftLog::note_next_seq); 0: not
//! known). It lets a reader pick the segment holding a sequence number
//! without scanning (the payloads are opaque to the log). The frame CRC
//! (CRC-32) covers every byte of the frame header but the CRC itself, and
//! the payload. `kind` is an [`EntryKind`]. `len` counts the frame header
//! and the payload (32 + payload bytes, padding excluded), so it is never
//! zero, even for an entry with an empty payload (a blank entry):
//! unwritten space is zero, and a `len` of 0 ends the data. The writer
//! stores `len` last, after a release fence, as the command journal does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use crate::raft_state::LogPosition;
use crate::segment::{
    align8, decode_header_fields, encode_header_fields, list_numbered_files, parse_numbered_file_name,
    read_u32, read_u64, written_end, HeaderFields, SEGMENT_HEADER_BYTES,
};

/// The format of the Raft log's segments.
pub const RAFT_SEGMENT_FORMAT_VERSION: u32 = 3;
pub const RAFT_FRAME_HEADER_BYTES: usize = 32;
/// The largest entry payload the format holds: one matcher batch (at most
/// 1,024 commands) fits with room to spare, and the bound keeps a damaged
/// length from reaching far.
pub const RAFT_ENTRY_PAYLOAD_MAX_BYTES: usize = 256 * 1024;
/// The most bytes one frame can occupy, padding included: the most a torn
/// tail can span.
pub const RAFT_FRAME_MAX_BYTES: usize = align8(RAFT_FRAME_HEADER_BYTES + RAFT_ENTRY_PAYLOAD_MAX_BYTES);
const RAFT_SEGMENT_PREFIX: &str = "raft-";
const RAFT_SEGMENT_EXTENSION: &str = "log";

/// What a Raft entry carries; the payload is opaque bytes to the journal.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// No payload: a new leader's first entry.
    Blank = 0,
    /// A batch of proposed commands without replay marks (written by
    /// earlier versions; read, no longer written).
    Commands = 1,
    /// A cluster membership change.
    Membership = 2,
    /// A replica's state hash at a point of the log.
    HashMark = 3,
    /// A batch of proposed commands, each with the replay mark of the
    /// signed request it executes, if any.
    MarkedCommands = 4,
}

impl EntryKind {
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            0 => Some(EntryKind::Blank),
            1 => Some(EntryKind::Commands),
            2 => Some(EntryKind::Membership),
            3 => Some(EntryKind::HashMark),
            4 => Some(EntryKind::MarkedCommands),
            _ => None,
        }
    }
}

/// The file name of the Raft segment whose first entry has `first_index`.
pub fn raft_segment_file_name(first_index: u64) -> String {
    format!("{RAFT_SEGMENT_PREFIX}{first_index:020}.{RAFT_SEGMENT_EXTENSION}")
}

/// The first index encoded in a Raft segment's file name.
pub fn parse_raft_segment_file_name(path: &Path) -> Option<u64> {
    parse_numbered_file_name(path, RAFT_SEGMENT_PREFIX, RAFT_SEGMENT_EXTENSION)
}

/// The Raft segments in `dir`, sorted by first index.
pub fn list_raft_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    list_numbered_files(dir, parse_raft_segment_file_name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftSegmentHeader {
    pub first_index: u64,
    pub capacity_bytes: u64,
    /// The sequence number of the first command after the segment's
    /// creation (0: not known).
    pub next_seq: u64,
}

impl RaftSegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        encode_header_fields(&HeaderFields {
            format_version: RAFT_SEGMENT_FORMAT_VERSION,
            first: self.first_index,
            capacity_bytes: self.capacity_bytes,
            next_seq: self.next_seq,
        })
    }

    /// Checks and decodes a header; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<RaftSegmentHeader, &'static str> {
        let fields = decode_header_fields(
            bytes,
            &[RAFT_SEGMENT_FORMAT_VERSION],
            "not a Raft log segment: its format version is not 3",
        )?;
        if bytes[40..SEGMENT_HEADER_BYTES].iter().any(|&byte| byte != 0) {
            return Err("segment header has bytes set where the format has zeros");
        }
        Ok(RaftSegmentHeader {
            first_index: fields.first,
            capacity_bytes: fields.capacity_bytes,
            next_seq: fields.next_seq,
        })
    }
}

fn raft_frame_crc(frame_header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame_header[0..4]);
    hasher.update(&frame_header[8..RAFT_FRAME_HEADER_BYTES]);
    hasher.update(payload);
    hasher.finalize()
}

/// The bytes one frame with a payload of `payload_bytes` occupies.
pub const fn raft_frame_bytes(payload_bytes: usize) -> usize {
    align8(RAFT_FRAME_HEADER_BYTES + payload_bytes)
}

/// Writes one frame at `at` of `segment` (which has room for it and is
/// zero there), `len` last after a release fence: a reader that sees the
/// length sees the whole frame. Returns where the next frame goes.
pub(crate) fn write_raft_frame(
    segment: &mut [u8],
    at: usize,
    position: LogPosition,
    kind: EntryKind,
    payload: &[u8],
) -> usize {
    let frame_len = raft_frame_bytes(payload.len());
    let frame = &mut segment[at..at + frame_len];
    let len = (RAFT_FRAME_HEADER_BYTES + payload.len()) as u32;
    frame[8..16].copy_from_slice(&position.index.to_le_bytes());
    frame[16..24].copy_from_slice(&position.term.to_le_bytes());
    frame[24] = kind as u8;
    frame[RAFT_FRAME_HEADER_BYTES..RAFT_FRAME_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    let mut header = [0u8; RAFT_FRAME_HEADER_BYTES];
    header.copy_from_slice(&frame[..RAFT_FRAME_HEADER_BYTES]);
    header[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = raft_frame_crc(&header, payload);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    // The length goes last, after everything it vouches for.
    fence(Ordering::Release);
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    at + frame_len
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftFrameFault {
    /// `len` below the frame header or above the largest frame.
    LengthOutOfRange(u32),
    PastEndOfSegment,
    ChecksumMismatch,
    /// The checksum matched but the kind is not one this build knows.
    UnknownKind(u8),
    /// Bytes the format keeps zero (after `kind`, the padding) are not.
    NotZero,
}

impl std::fmt::Display for RaftFrameFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftFrameFault::LengthOutOfRange(len) => write!(
                f,
                "frame length {len} is outside {RAFT_FRAME_HEADER_BYTES}..={} (a header and at most \
                 {RAFT_ENTRY_PAYLOAD_MAX_BYTES} bytes of entry)",
                RAFT_FRAME_HEADER_BYTES + RAFT_ENTRY_PAYLOAD_MAX_BYTES
            ),
            RaftFrameFault::PastEndOfSegment => f.write_str("frame runs past the end of the segment"),
            RaftFrameFault::ChecksumMismatch => f.write_str("frame checksum mismatch"),
            RaftFrameFault::UnknownKind(kind) => write!(f, "entry kind {kind} is not one this build knows"),
            RaftFrameFault::NotZero => f.write_str("frame bytes the format keeps zero are not"),
        }
    }
}

/// One valid frame, borrowed from the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftFrame<'a> {
    pub position: LogPosition,
    pub kind: EntryKind,
    pub payload: &'a [u8],
    pub next_offset: usize,
}

/// What is at one offset of a segment's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftFrameRead<'a> {
    Entry(RaftFrame<'a>),
    /// Zero length: nothing has been written here (yet).
    End,
    Bad(RaftFrameFault),
}

/// Reads the frame at `offset` of a whole segment's bytes. Never panics,
/// whatever the bytes.
pub fn read_raft_frame(segment: &[u8], offset: usize) -> RaftFrameRead<'_> {
    if offset.saturating_add(RAFT_FRAME_HEADER_BYTES) > segment.len() {
        return RaftFrameRead::End;
    }
    let len = read_u32(segment, offset);
    if len == 0 {
        return RaftFrameRead::End;
    }
    let Some(payload_bytes) = (len as usize).checked_sub(RAFT_FRAME_HEADER_BYTES) else {
        return RaftFrameRead::Bad(RaftFrameFault::LengthOutOfRange(len));
    };
    if payload_bytes > RAFT_ENTRY_PAYLOAD_MAX_BYTES {
        return RaftFrameRead::Bad(RaftFrameFault::LengthOutOfRange(len));
    }
    let header = &segment[offset..offset + RAFT_FRAME_HEADER_BYTES];
    let payload_start = offset + RAFT_FRAME_HEADER_BYTES;
    let payload_end = payload_start + payload_bytes;
    if payload_end > segment.len() {
        return RaftFrameRead::Bad(RaftFrameFault::PastEndOfSegment);
    }
    let payload = &segment[payload_start..payload_end];
    if raft_frame_crc(header, payload) != read_u32(header, 4) {
        return RaftFrameRead::Bad(RaftFrameFault::ChecksumMismatch);
    }
    let padding = &segment[payload_end..align8(payload_end).min(segment.len())];
    if header[25..].iter().chain(padding).any(|&byte| byte != 0) {
        return RaftFrameRead::Bad(RaftFrameFault::NotZero);
    }
    let Some(kind) = EntryKind::from_u8(header[24]) else {
        return RaftFrameRead::Bad(RaftFrameFault::UnknownKind(header[24]));
    };
    RaftFrameRead::Entry(RaftFrame {
        position: LogPosition { index: read_u64(header, 8), term: read_u64(header, 16) },
        kind,
        payload,
        next_offset: align8(payload_end),
    })
}

/// Bytes after the last valid frame of a segment that are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftDamage {
    pub offset: usize,
    /// The index the next frame should have had.
    pub expected_index: u64,
    pub why: String,
    /// Where the last non-zero byte after `offset` ends.
    pub written_end: usize,
    /// Whether the damage is confined to what one frame could occupy at the
    /// very end of the written data, and is not a valid frame out of place:
    /// the shape a crash during an append leaves. Anything else is
    /// corruption.
    pub torn_tail: bool,
}

/// What a scan of one segment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftSegmentScan {
    /// Each valid entry's offset and term, in order from the header's
    /// first index.
    pub entries: Vec<(usize, u64)>,
    /// Where valid data ends.
    pub end_offset: usize,
    pub damage: Option<RaftDamage>,
}

/// Scans every frame of a segment: checksums, indexes running on from the
/// header's first index, terms never going down (from `min_term`, the last
/// term of the segment before). Damage within `torn_tail_max_bytes` (the
/// largest frame the writer may have been writing) of the end of the
/// written data is a torn tail. Never panics, whatever the bytes.
pub fn scan_raft_segment(
    segment: &[u8],
    header: &RaftSegmentHeader,
    min_term: u64,
    torn_tail_max_bytes: usize,
) -> RaftSegmentScan {
    let mut scan = RaftSegmentScan::default();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut last_term = min_term;
    loop {
        // Index u64::MAX is the last an entry can have: nothing follows it.
        let next = header.first_index.checked_add(scan.entries.len() as u64);
        let expected_index = next.unwrap_or(u64::MAX);
        let (why, out_of_place) = match read_raft_frame(segment, offset) {
            RaftFrameRead::Entry(_) if next.is_none() => {
                ("a frame after the entry of index u64::MAX".to_string(), true)
            }
            RaftFrameRead::Entry(frame) => {
                if frame.position.index != expected_index {
                    (
                        format!(
                            "a valid frame carries index {} where {expected_index} belongs",
                            frame.position.index
                        ),
                        true,
                    )
                } else if frame.position.term < last_term {
                    (
                        format!(
                            "the entry's term {} is below the term {last_term} before it",
                            frame.position.term
                        ),
                        true,
                    )
                } else {
                    scan.entries.push((offset, frame.position.term));
                    last_term = frame.position.term;
                    offset = frame.next_offset;
                    continue;
                }
            }
            RaftFrameRead::End => ("unreadable data after the last valid frame".to_string(), false),
            RaftFrameRead::Bad(fault) => (fault.to_string(), false),
        };
        let end = written_end(segment, offset);
        if end > offset {
            scan.damage = Some(RaftDamage {
                offset,
                expected_index,
                why,
                written_end: end,
                torn_tail: !out_of_place && end - offset <= torn_tail_max_bytes,
            });
        }
        break;
    }
    scan.end_offset = offset;
    scan
}

/// Checks a whole Raft segment file's bytes as the log does when it opens
/// them (header, then every frame): the number of valid entries, or why the
/// bytes are not a segment. Never panics, whatever the bytes: for the fuzz
/// target and tools.
pub fn check_raft_segment(bytes: &[u8]) -> Result<RaftSegmentScan, String> {
    let header = RaftSegmentHeader::decode(bytes).map_err(str::to_string)?;
    if header.capacity_bytes != bytes.len() as u64 {
        return Err(format!(
            "the header says {} bytes, the segment has {}",
            header.capacity_bytes,
            bytes.len()
        ));
    }
    Ok(scan_raft_segment(bytes, &header, 0, RAFT_FRAME_MAX_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(entries: &[(u64, u64, EntryKind, &[u8])]) -> Vec<u8> {
        let header = RaftSegmentHeader { first_index: entries[0].0, capacity_bytes: 4096, next_seq: 0 };
        let mut bytes = vec![0u8; 4096];
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        let mut at = SEGMENT_HEADER_BYTES;
        for (index, term, kind, payload) in entries {
            at = write_raft_frame(&mut bytes, at, LogPosition { index: *index, term: *term }, *kind, payload);
        }
        bytes
    }

    #[test]
    fn header_round_trip_and_every_flip_is_detected() {
        let header = RaftSegmentHeader { first_index: 0, capacity_bytes: 1 << 20, next_seq: 77 };
        let bytes = header.encode();
        assert_eq!(RaftSegmentHeader::decode(&bytes), Ok(header));
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x04;
            assert!(RaftSegmentHeader::decode(&damaged).is_err(), "flip at {at} not detected");
        }
        // A command journal segment is not a Raft segment, and the other way round.
        let command = crate::segment::SegmentHeader::new(1, 1 << 20).encode();
        assert!(RaftSegmentHeader::decode(&command).unwrap_err().contains("not a Raft log segment"));
        assert!(crate::segment::SegmentHeader::decode(&bytes).is_err());
    }

    #[test]
    fn file_names_sort_by_index() {
        assert_eq!(raft_segment_file_name(7), "raft-00000000000000000007.log");
        assert_eq!(parse_raft_segment_file_name(Path::new("/x/raft-00000000000000000007.log")), Some(7));
        assert_eq!(parse_raft_segment_file_name(Path::new("00000000000000000007.seg")), None);
        assert_eq!(parse_raft_segment_file_name(Path::new("raft-7.log")), None);
        assert_eq!(parse_raft_segment_file_name(Path::new("raft-00000000000000000007.log.tmp")), None);
    }

    #[test]
    fn frames_round_trip_and_every_flip_is_detected() {
        let bytes =
            segment_with(&[(5, 1, EntryKind::Blank, b""), (6, 2, EntryKind::Commands, b"abcdefghij")]);
        let header = RaftSegmentHeader::decode(&bytes).unwrap();
        let scan = scan_raft_segment(&bytes, &header, 0, RAFT_FRAME_MAX_BYTES);
        assert_eq!(scan.entries.len(), 2);
        assert_eq!(scan.damage, None);
        let RaftFrameRead::Entry(frame) = read_raft_frame(&bytes, scan.entries[1].0) else { panic!() };
        assert_eq!(
            (frame.position, frame.kind, frame.payload),
            (LogPosition { index: 6, term: 2 }, EntryKind::Commands, &b"abcdefghij"[..])
        );
        for at in SEGMENT_HEADER_BYTES..scan.end_offset {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let scan = scan_raft_segment(&damaged, &header, 0, RAFT_FRAME_MAX_BYTES);
            assert!(scan.damage.is_some() || scan.entries.len() < 2, "flip at {at} not detected");
        }
    }

    #[test]
    fn wrong_index_and_falling_term_are_corruption_not_a_torn_tail() {
        let bytes = segment_with(&[(5, 1, EntryKind::Blank, b""), (7, 1, EntryKind::Blank, b"")]);
        let scan =
            scan_raft_segment(&bytes, &RaftSegmentHeader::decode(&bytes).unwrap(), 0, RAFT_FRAME_MAX_BYTES);
        let damage = scan.damage.unwrap();
        assert!(!damage.torn_tail && damage.why.contains("index 7 where 6"), "{damage:?}");
        let bytes = segment_with(&[(5, 3, EntryKind::Blank, b""), (6, 2, EntryKind::Blank, b"")]);
        let damage =
            scan_raft_segment(&bytes, &RaftSegmentHeader::decode(&bytes).unwrap(), 0, RAFT_FRAME_MAX_BYTES)
                .damage
                .unwrap();
        assert!(!damage.torn_tail && damage.why.contains("term 2 is below"), "{damage:?}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader() {
        let mut state = 7u64;
        for _ in 0..20_000 {
            let len = (state % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = read_raft_frame(&bytes, 0);
            let _ = read_raft_frame(&bytes, len / 2);
            let _ = check_raft_segment(&bytes);
        }
    }
}
