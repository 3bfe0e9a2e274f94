//! Checks that tell lost files from a crash: the segments a checkpoint
//! says must exist, each segment file's size against its header, and where
//! one segment does not run on from the one before.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::checkpoint::Checkpoint;
use crate::error::JournalError;
use crate::segment::{scan_segment, segment_file_name, SegmentHeader, SegmentScan, SEGMENT_HEADER_BYTES};

/// Checks the segment files present (`segments`, sorted) against what
/// `checkpoint` says must exist: its newest and oldest segments, and as
/// many segments between them as it counts. Reads no segment unless one
/// is missing (then it finds which).
pub(crate) fn check_listing(
    journal_dir: &Path,
    segments: &[(u64, PathBuf)],
    checkpoint: &Checkpoint,
) -> Result<(), JournalError> {
    let present = |seq: u64| segments.iter().any(|(first_seq, _)| *first_seq == seq);
    if !present(checkpoint.newest_first_seq) {
        return Err(JournalError::MissingSegment {
            segment: journal_dir.join(segment_file_name(checkpoint.newest_first_seq)),
            first_seq: checkpoint.newest_first_seq,
            why: "the checkpoint names it as the newest segment created",
            keep_through: Some(checkpoint.newest_first_seq - 1),
        });
    }
    if !present(checkpoint.oldest_first_seq) {
        return Err(JournalError::MissingSegment {
            segment: journal_dir.join(segment_file_name(checkpoint.oldest_first_seq)),
            first_seq: checkpoint.oldest_first_seq,
            why: "the checkpoint names it as the oldest segment kept (the exchange did not prune it)",
            keep_through: None,
        });
    }
    let in_range: Vec<(u64, PathBuf)> = segments
        .iter()
        .filter(|(first_seq, _)| {
            (checkpoint.oldest_first_seq..=checkpoint.newest_first_seq).contains(first_seq)
        })
        .cloned()
        .collect();
    if in_range.len() as u64 != checkpoint.segment_count {
        if let Some(error) = find_discontinuity(&in_range)? {
            return Err(error);
        }
        return Err(JournalError::BadCheckpoint {
            path: crate::checkpoint::checkpoint_path(journal_dir),
            why: "it counts a different number of segments than the directory holds, yet they run on \
                  without a gap",
        });
    }
    Ok(())
}

/// Reads every segment of `segments` but the last, in order, and returns
/// the first place where one is damaged or does not end just before the
/// next one begins.
pub(crate) fn find_discontinuity(segments: &[(u64, PathBuf)]) -> Result<Option<JournalError>, JournalError> {
    for pair in segments.windows(2) {
        let (first_seq, path) = &pair[0];
        let (next_first_seq, next_path) = &pair[1];
        let header = check_segment_file(path, *first_seq)?;
        let scan = scan_file(path, &header)?;
        if let Some(error) = discontinuity(path, *first_seq, &scan, next_path, *next_first_seq) {
            return Ok(Some(error));
        }
    }
    Ok(None)
}

/// Whether a whole (not newest) segment's scan shows damage, or that it
/// does not end just before the next segment.
pub(crate) fn discontinuity(
    path: &Path,
    first_seq: u64,
    scan: &SegmentScan,
    next_path: &Path,
    next_first_seq: u64,
) -> Option<JournalError> {
    if let Some(damage) = scan.damage {
        return Some(JournalError::Corrupt {
            segment: path.to_path_buf(),
            offset: damage.offset,
            seq: damage.expected_seq,
            why: match damage.fault {
                Some(fault) => format!("{fault} (in a segment the journal had moved past)"),
                None => "unreadable data after the last valid record of a segment the journal had moved past"
                    .into(),
            },
        });
    }
    let next_expected = scan.last_seq.map_or(first_seq, |last| last + 1);
    if next_expected < next_first_seq {
        return Some(JournalError::Gap {
            expected_seq: next_expected,
            next_segment: next_path.to_path_buf(),
            next_first_seq,
        });
    }
    if next_expected > next_first_seq {
        return Some(JournalError::Corrupt {
            segment: next_path.to_path_buf(),
            offset: 0,
            seq: next_first_seq,
            why: format!(
                "the segment before it, {}, runs on to sequence {}",
                path.display(),
                next_expected - 1
            ),
        });
    }
    None
}

/// Reads a segment's header and checks it against the file's name and
/// size. Segments are preallocated and renamed into place whole, so a
/// file of another size was cut or copied short (or padded): never a
/// crash shape.
pub(crate) fn check_segment_file(path: &Path, first_seq: u64) -> Result<SegmentHeader, JournalError> {
    let mut file = File::open(path).map_err(|e| JournalError::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| JournalError::io(path, e))?.len();
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Err(JournalError::BadSegmentHeader {
            segment: path.to_path_buf(),
            why: "the file is shorter than a segment header: it was cut short, which no crash does \
                  (segments are preallocated and renamed into place whole)",
        });
    }
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact(&mut bytes).map_err(|e| JournalError::io(path, e))?;
    let header = SegmentHeader::decode(&bytes)
        .map_err(|why| JournalError::BadSegmentHeader { segment: path.to_path_buf(), why })?;
    if header.first_seq != first_seq {
        return Err(JournalError::BadSegmentHeader {
            segment: path.to_path_buf(),
            why: "header disagrees with the file's name",
        });
    }
    if header.capacity_bytes != file_bytes {
        let scan = scan_file(path, &header)?;
        return Err(JournalError::SegmentSize {
            segment: path.to_path_buf(),
            capacity_bytes: header.capacity_bytes,
            file_bytes,
            last_seq: scan.last_seq,
        });
    }
    Ok(header)
}

/// Scans a segment file read-only.
pub(crate) fn scan_file(path: &Path, header: &SegmentHeader) -> Result<SegmentScan, JournalError> {
    let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
    // Safety: a read-only mapping; the writer only appends into
    // preallocated space and never truncates a segment.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(path, e))?;
    Ok(scan_segment(&map, header, |_| {}))
}
