//! A full read of a journal directory for operators: every segment, every
//! checksum, every sequence number, and a list of what is wrong.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use engine_core::StampedCommand;
use memmap2::Mmap;

use crate::error::JournalError;
use crate::segment::{list_segments, scan_segment, SegmentHeader, SegmentScan};

#[derive(Clone, Debug)]
pub struct SegmentReport {
    pub path: PathBuf,
    /// The first sequence number, from the file name.
    pub first_seq: u64,
    pub capacity_bytes: u64,
    pub scan: SegmentScan,
}

/// Something wrong in a journal, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    BadHeader {
        segment: PathBuf,
        why: String,
    },
    /// Records missing between two segments.
    Gap {
        expected_seq: u64,
        next_segment: PathBuf,
        next_first_seq: u64,
    },
    /// The shape a crash during an append leaves; the writer cuts it off
    /// when it next opens the journal.
    TornTail {
        segment: PathBuf,
        offset: usize,
        bytes: usize,
        seq: u64,
    },
    /// Damage that is not a torn tail: records from here on are lost.
    Corrupt {
        segment: PathBuf,
        offset: usize,
        seq: u64,
        why: String,
    },
}

impl Problem {
    /// Whether this is only the torn tail of a crash (repaired on open).
    pub fn is_torn_tail(&self) -> bool {
        matches!(self, Problem::TornTail { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BadHeader { segment, why } => write!(f, "{}: {why}", segment.display()),
            Problem::Gap { expected_seq, next_segment, next_first_seq } => write!(
                f,
                "records {expected_seq}..{} missing before {}",
                next_first_seq.saturating_sub(1),
                next_segment.display()
            ),
            Problem::TornTail { segment, offset, bytes, seq } => write!(
                f,
                "{}: torn tail of {bytes} bytes at offset {offset} (sequence {seq} was being written); \
                 it is cut off when the journal is next opened for writing",
                segment.display()
            ),
            Problem::Corrupt { segment, offset, seq, why } => write!(
                f,
                "{}: corrupt at offset {offset}, where sequence {seq} should be: {why}",
                segment.display()
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct JournalReport {
    pub segments: Vec<SegmentReport>,
    pub problems: Vec<Problem>,
}

impl JournalReport {
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.scan.records).sum()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.scan.last_seq)
    }
}

/// Reads every segment of `journal_dir`; `on_record` sees each valid record.
pub fn inspect(
    journal_dir: &Path,
    mut on_record: impl FnMut(&StampedCommand),
) -> Result<JournalReport, JournalError> {
    let segments = list_segments(journal_dir).map_err(|e| JournalError::io(journal_dir, e))?;
    let mut report = JournalReport::default();
    let mut expected_seq: Option<u64> = None;
    let count = segments.len();
    for (index, (first_seq, path)) in segments.into_iter().enumerate() {
        let newest = index + 1 == count;
        if let Some(expected) = expected_seq {
            if first_seq != expected {
                report.problems.push(Problem::Gap {
                    expected_seq: expected,
                    next_segment: path.clone(),
                    next_first_seq: first_seq,
                });
            }
        }
        let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
        // Safety: read-only mapping of a file nobody truncates.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(&path, e))?;
        let header = match SegmentHeader::decode(&map) {
            Ok(header) if header.first_seq == first_seq => header,
            Ok(_) => {
                report.problems.push(Problem::BadHeader {
                    segment: path.clone(),
                    why: "header disagrees with the file's name".into(),
                });
                expected_seq = None;
                continue;
            }
            Err(why) => {
                report.problems.push(Problem::BadHeader { segment: path.clone(), why: why.into() });
                expected_seq = None;
                continue;
            }
        };
        let scan = scan_segment(&map, &header, &mut on_record);
        if let Some(damage) = scan.damage {
            let problem = if damage.torn_tail && newest {
                Problem::TornTail {
                    segment: path.clone(),
                    offset: damage.offset,
                    bytes: damage.written_end - damage.offset,
                    seq: damage.expected_seq,
                }
            } else {
                Problem::Corrupt {
                    segment: path.clone(),
                    offset: damage.offset,
                    seq: damage.expected_seq,
                    why: damage.fault.map_or_else(
                        || format!("{} bytes of unreadable data", damage.written_end - damage.offset),
                        |fault| fault.to_string(),
                    ),
                }
            };
            report.problems.push(problem);
        }
        expected_seq = Some(scan.last_seq.map_or(first_seq, |last| last + 1));
        report.segments.push(SegmentReport { path, first_seq, capacity_bytes: header.capacity_bytes, scan });
    }
    Ok(report)
}
