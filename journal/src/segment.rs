//! The on-disk format of journal segments, and the scanner that reads it.
//!
//! A segment is one preallocated file named `<first seq, 20 digits>.seg`:
//!
//! ```text
//! 0      8        12           16         24          32        64
//! | magic | version | header crc | first seq | capacity | zeros... |
//!
//! then records, each 8-byte aligned:
//! | len u32 | crc u32 | seq u64 | timestamp_ns u64 | payload (len bytes) | pad |
//! ```
//!
//! All integers are little-endian. The record CRC (CRC-32) covers `len`,
//! `seq`, `timestamp_ns` and the payload, which is the command encoded with
//! the project's codec (`codec` crate, layout in `docs/encoding.md`) in
//! format 2, and with bincode 2's standard layout in format 1 (segments
//! written before format 2; still read, never appended to). The header's
//! version says which. Unwritten space is zero, so a `len` of
//! 0 marks the end of the data. The writer stores `len` last: a record whose
//! `len` is visible is complete (the one store is what makes a record
//! appear to a concurrent reader).

use std::path::{Path, PathBuf};

use engine_core::{Command, StampedCommand};

pub const SEGMENT_MAGIC: &[u8; 8] = b"EXJOURNL";
/// The format new segments are written in: payloads in the project's codec.
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Segments written before the project's codec: payloads in bincode 2's
/// standard layout. Read (recovery, replay, inspection), never written.
pub const SEGMENT_FORMAT_VERSION_BINCODE: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_HEADER_BYTES: usize = 24;
/// The largest encoded command accepted. Commands are far smaller (under
/// 100 bytes); the bound keeps a damaged length from reaching far.
pub const PAYLOAD_MAX_BYTES: usize = 1024;
/// The most bytes one record can occupy, padding included.
pub const FRAME_MAX_BYTES: usize = align8(FRAME_HEADER_BYTES + PAYLOAD_MAX_BYTES);
const SEGMENT_EXTENSION: &str = "seg";

pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Decodes a record's payload as written in segment format `format_version`
/// (any version but 1 is read as the current one: a header of another
/// version is refused before any record is read).
pub fn decode_command(payload: &[u8], format_version: u32) -> Result<Command, codec::Error> {
    if format_version == SEGMENT_FORMAT_VERSION_BINCODE {
        codec::decode_bincode_standard(payload)
    } else {
        codec::decode(payload)
    }
}

/// The format version in the header of a whole segment's bytes, unchecked
/// (the header is checked when the segment is opened).
fn format_version_of(segment: &[u8]) -> u32 {
    if segment.len() < 12 {
        return SEGMENT_FORMAT_VERSION;
    }
    read_u32(segment, 8)
}

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXTENSION}")
}

/// The first sequence number encoded in a segment's file name.
pub fn parse_segment_file_name(path: &Path) -> Option<u64> {
    parse_numbered_file_name(path, "", SEGMENT_EXTENSION)
}

/// The segments in `dir`, sorted by first sequence number.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    list_numbered_files(dir, parse_segment_file_name)
}

/// The number in a file name `<prefix><20 digits>.<extension>`.
pub(crate) fn parse_numbered_file_name(path: &Path, prefix: &str, extension: &str) -> Option<u64> {
    if path.extension()? != extension {
        return None;
    }
    let digits = path.file_stem()?.to_str()?.strip_prefix(prefix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The files in `dir` whose names `parse` gives a number, sorted by it.
pub(crate) fn list_numbered_files(
    dir: &Path,
    parse: impl Fn(&Path) -> Option<u64>,
) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(number) = parse(&path) {
            files.push((number, path));
        }
    }
    files.sort_unstable_by_key(|(number, _)| *number);
    Ok(files)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub capacity_bytes: u64,
    /// [`SEGMENT_FORMAT_VERSION`] or [`SEGMENT_FORMAT_VERSION_BINCODE`].
    pub format_version: u32,
}

impl SegmentHeader {
    /// The header of a new segment, in the current format.
    pub fn new(first_seq: u64, capacity_bytes: u64) -> SegmentHeader {
        SegmentHeader { first_seq, capacity_bytes, format_version: SEGMENT_FORMAT_VERSION }
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        encode_header_fields(&HeaderFields {
            format_version: self.format_version,
            first: self.first_seq,
            capacity_bytes: self.capacity_bytes,
            next_seq: 0,
        })
    }

    /// Checks and decodes a header; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
        let fields = decode_header_fields(
            bytes,
            &[SEGMENT_FORMAT_VERSION, SEGMENT_FORMAT_VERSION_BINCODE],
            "unsupported segment format version (this build reads versions 1 and 2)",
        )?;
        let header = SegmentHeader {
            first_seq: fields.first,
            capacity_bytes: fields.capacity_bytes,
            format_version: fields.format_version,
        };
        if header.first_seq == 0 {
            return Err("segment header names sequence 0");
        }
        Ok(header)
    }
}

/// The fields every segment header has, whatever the format: the command
/// journal's (formats 1 and 2: `first` is a sequence number, `next_seq`
/// unused) and the Raft log's (format 3: `first` is a log index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderFields {
    pub format_version: u32,
    pub first: u64,
    pub capacity_bytes: u64,
    pub next_seq: u64,
}

/// `| magic | version | header crc | first | capacity | next seq | zeros |`
pub(crate) fn encode_header_fields(fields: &HeaderFields) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    bytes[0..8].copy_from_slice(SEGMENT_MAGIC);
    bytes[8..12].copy_from_slice(&fields.format_version.to_le_bytes());
    bytes[16..24].copy_from_slice(&fields.first.to_le_bytes());
    bytes[24..32].copy_from_slice(&fields.capacity_bytes.to_le_bytes());
    bytes[32..40].copy_from_slice(&fields.next_seq.to_le_bytes());
    let crc = header_crc(&bytes);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks a header's length, magic, version (one of `versions`, else
/// `unsupported`) and checksum, and decodes its fields.
pub(crate) fn decode_header_fields(
    bytes: &[u8],
    versions: &[u32],
    unsupported: &'static str,
) -> Result<HeaderFields, &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err("shorter than a segment header");
    }
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err("not a journal segment (bad magic)");
    }
    let format_version = read_u32(bytes, 8);
    if !versions.contains(&format_version) {
        return Err(unsupported);
    }
    if read_u32(bytes, 12) != header_crc(bytes) {
        return Err("segment header checksum mismatch");
    }
    Ok(HeaderFields {
        format_version,
        first: read_u64(bytes, 16),
        capacity_bytes: read_u64(bytes, 24),
        next_seq: read_u64(bytes, 32),
    })
}

fn header_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..12]);
    hasher.update(&bytes[16..SEGMENT_HEADER_BYTES]);
    hasher.finalize()
}

pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub fn frame_crc(len: u32, seq: u64, timestamp_ns: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(&timestamp_ns.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFault {
    LengthTooLarge(u32),
    PastEndOfSegment,
    ChecksumMismatch,
    /// The checksum matched but the payload is not a command this build can read.
    Undecodable,
    /// The bytes that pad the record to 8 are not zero (the writer never
    /// writes them; the checksum does not cover them).
    PaddingNotZero,
}

impl std::fmt::Display for FrameFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameFault::LengthTooLarge(len) => {
                write!(f, "record length {len} exceeds the maximum of {PAYLOAD_MAX_BYTES} bytes")
            }
            FrameFault::PastEndOfSegment => f.write_str("record runs past the end of the segment"),
            FrameFault::ChecksumMismatch => f.write_str("record checksum mismatch"),
            FrameFault::Undecodable => f.write_str("record payload does not decode as a command"),
            FrameFault::PaddingNotZero => f.write_str("record padding is not zero"),
        }
    }
}

/// What is at one offset of a segment's data.
// A record is read into a frame on the stack, one at a time: boxing the
// large variant would allocate once per record replayed.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A valid record, and the offset where the next one starts.
    Record {
        command: StampedCommand,
        next_offset: usize,
        payload_bytes: usize,
    },
    /// Zero length: nothing has been written here (yet).
    End,
    Bad(FrameFault),
}

/// Reads the frame at `offset` of a whole segment's bytes (header
/// included: its version says how payloads are encoded). Never panics,
/// whatever the bytes.
pub fn read_frame(segment: &[u8], offset: usize) -> Frame {
    if offset + FRAME_HEADER_BYTES > segment.len() {
        return Frame::End;
    }
    let len = read_u32(segment, offset);
    if len == 0 {
        return Frame::End;
    }
    if len as usize > PAYLOAD_MAX_BYTES {
        return Frame::Bad(FrameFault::LengthTooLarge(len));
    }
    let payload_start = offset + FRAME_HEADER_BYTES;
    let payload_end = payload_start + len as usize;
    if payload_end > segment.len() {
        return Frame::Bad(FrameFault::PastEndOfSegment);
    }
    let crc = read_u32(segment, offset + 4);
    let seq = read_u64(segment, offset + 8);
    let timestamp_ns = read_u64(segment, offset + 16);
    let payload = &segment[payload_start..payload_end];
    if frame_crc(len, seq, timestamp_ns, payload) != crc {
        return Frame::Bad(FrameFault::ChecksumMismatch);
    }
    let padding = &segment[payload_end..align8(payload_end).min(segment.len())];
    if padding.iter().any(|&byte| byte != 0) {
        return Frame::Bad(FrameFault::PaddingNotZero);
    }
    match decode_command(payload, format_version_of(segment)) {
        Ok(command) => Frame::Record {
            command: StampedCommand { seq, timestamp_ns, command },
            next_offset: align8(payload_end),
            payload_bytes: len as usize,
        },
        Err(_) => Frame::Bad(FrameFault::Undecodable),
    }
}

/// The offset just past the last non-zero byte of `segment` at or after
/// `from` (or `from` when everything there is zero).
pub fn written_end(segment: &[u8], from: usize) -> usize {
    let tail = &segment[from.min(segment.len())..];
    match tail.iter().rposition(|&byte| byte != 0) {
        Some(last) => from + last + 1,
        None => from,
    }
}

/// What a full scan of one segment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_timestamp_ns: Option<u64>,
    pub last_timestamp_ns: Option<u64>,
    /// Where valid data ends.
    pub end_offset: usize,
    pub payload_bytes: u64,
    /// Set when the scan stopped before the end of the written bytes.
    pub damage: Option<Damage>,
}

/// Bytes after the last valid record that are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: usize,
    /// The sequence number the next record should have had.
    pub expected_seq: u64,
    /// `None` when the data simply stops (non-zero bytes after a zero length).
    pub fault: Option<FrameFault>,
    /// Where the last non-zero byte after `offset` ends.
    pub written_end: usize,
    /// Whether the damage is confined to what one record could occupy at the
    /// very end of the written data: the shape a crash during an append
    /// leaves. Anything else is corruption.
    pub torn_tail: bool,
}

/// Scans every record of a segment, checking checksums and that sequence
/// numbers run on from `header.first_seq`, and calls `on_record` for each.
pub fn scan_segment(
    segment: &[u8],
    header: &SegmentHeader,
    mut on_record: impl FnMut(&StampedCommand),
) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected_seq = header.first_seq;
    loop {
        let fault = match read_frame(segment, offset) {
            Frame::Record { command, next_offset, payload_bytes } => {
                if command.seq != expected_seq {
                    // A valid frame with the wrong number: not a crash shape.
                    scan.damage = Some(Damage {
                        offset,
                        expected_seq,
                        fault: None,
                        written_end: written_end(segment, offset),
                        torn_tail: false,
                    });
                    break;
                }
                scan.records += 1;
                scan.first_seq.get_or_insert(command.seq);
                scan.last_seq = Some(command.seq);
                scan.first_timestamp_ns.get_or_insert(command.timestamp_ns);
                scan.last_timestamp_ns = Some(command.timestamp_ns);
                scan.payload_bytes += payload_bytes as u64;
                on_record(&command);
                expected_seq += 1;
                offset = next_offset;
                continue;
            }
            Frame::End => None,
            Frame::Bad(fault) => Some(fault),
        };
        let end = written_end(segment, offset);
        if fault.is_some() || end > offset {
            scan.damage = Some(Damage {
                offset,
                expected_seq,
                fault,
                written_end: end,
                torn_tail: end - offset <= FRAME_MAX_BYTES,
            });
        }
        break;
    }
    scan.end_offset = offset;
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader::new(42, 1 << 20);
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        let old = SegmentHeader { format_version: SEGMENT_FORMAT_VERSION_BINCODE, ..header };
        assert_eq!(SegmentHeader::decode(&old.encode()), Ok(old));
        let future = SegmentHeader { format_version: 3, ..header };
        assert!(SegmentHeader::decode(&future.encode()).is_err());
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at {at} not detected");
        }
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn file_names_sort_by_sequence() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name(Path::new("/x/00000000000000000007.seg")), Some(7));
        assert_eq!(parse_segment_file_name(Path::new("7.seg")), None);
        assert_eq!(parse_segment_file_name(Path::new("00000000000000000007.seg.tmp")), None);
        assert_eq!(parse_segment_file_name(Path::new("0000000000000000000x.seg")), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_reader() {
        let mut state = 1u64;
        for _ in 0..20_000 {
            let len = (state % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = read_frame(&bytes, 0);
            let _ = read_frame(&bytes, len / 2);
        }
    }
}
