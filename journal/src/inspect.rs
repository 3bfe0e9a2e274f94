//! A full read of a journal directory for operators: every segment, every
//! checksum, every sequence number, and a list of what is wrong.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use engine_core::StampedCommand;
use memmap2::Mmap;

use crate::checkpoint::{checkpoint_path, read_checkpoint, Checkpoint};
use crate::error::JournalError;
use crate::segment::{list_segments, scan_segment, segment_file_name, SegmentHeader, SegmentScan};
use crate::snapshots::list_snapshots;

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
    /// `journal/CHECKPOINT` cannot be trusted.
    BadCheckpoint {
        path: PathBuf,
        why: String,
    },
    /// A segment file is not its preallocated size (cut or copied short).
    SegmentSize {
        segment: PathBuf,
        capacity_bytes: u64,
        file_bytes: u64,
        /// The last whole record in it.
        last_seq: Option<u64>,
    },
    /// A segment the checkpoint says must exist is gone.
    MissingSegment {
        segment: PathBuf,
        first_seq: u64,
        why: &'static str,
    },
    /// The journal ends before a sequence number recorded as durable.
    EndsBeforeDurable {
        last_seq: u64,
        durable_seq: u64,
        recorded_in: PathBuf,
    },
    /// A snapshot reflects records the journal no longer has.
    SnapshotAhead {
        snapshot: PathBuf,
        snapshot_seq: u64,
        journal_last_seq: u64,
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
            Problem::BadCheckpoint { path, why } => write!(
                f,
                "{}: {why}; what must exist in the journal cannot be checked (a server refuses to start)",
                path.display()
            ),
            Problem::SegmentSize { segment, capacity_bytes, file_bytes, last_seq } => write!(
                f,
                "{}: the file is {file_bytes} bytes, its header says {capacity_bytes}: cut or copied short \
                 (no crash changes a segment's size); its last whole record is {}",
                segment.display(),
                last_seq.map_or("none".to_string(), |seq| format!("sequence {seq}"))
            ),
            Problem::MissingSegment { segment, first_seq, why } => {
                write!(f, "{} (records from {first_seq}) is missing: {why}", segment.display())
            }
            Problem::EndsBeforeDurable { last_seq, durable_seq, recorded_in } => write!(
                f,
                "the journal ends at sequence {last_seq}, but {} records {durable_seq} as durable: records \
                 {}..{durable_seq} were synced and are gone",
                recorded_in.display(),
                last_seq + 1
            ),
            Problem::SnapshotAhead { snapshot, snapshot_seq, journal_last_seq } => write!(
                f,
                "{}: the snapshot is at sequence {snapshot_seq}, but the journal ends at {journal_last_seq}: \
                 records {}..{snapshot_seq} it reflects are gone from the journal",
                snapshot.display(),
                journal_last_seq + 1
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct JournalReport {
    pub segments: Vec<SegmentReport>,
    /// What `journal/CHECKPOINT` says must exist (`None`: no readable one).
    pub checkpoint: Option<Checkpoint>,
    pub problems: Vec<Problem>,
}

impl JournalReport {
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.scan.records).sum()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.scan.last_seq)
    }

    /// Where the journal ends: its last record, or the record just before
    /// its newest segment when that one is still empty (0: no segment).
    pub fn end_seq(&self) -> u64 {
        match (self.last_seq(), self.segments.last()) {
            (Some(last), Some(newest)) => last.max(newest.first_seq - 1),
            (None, Some(newest)) => newest.first_seq - 1,
            (last, None) => last.unwrap_or(0),
        }
    }
}

/// The snapshots in `snapshots_dir` ahead of where the journal of `report`
/// ends. A snapshot is written only after the journal is synced up to it,
/// so each one is a durable sequence number recorded elsewhere.
pub fn snapshots_ahead(snapshots_dir: &Path, report: &JournalReport) -> Result<Vec<Problem>, JournalError> {
    let journal_last_seq = report.end_seq();
    Ok(list_snapshots(snapshots_dir)?
        .into_iter()
        .filter(|(seq, _)| *seq > journal_last_seq)
        .map(|(snapshot_seq, snapshot)| Problem::SnapshotAhead { snapshot, snapshot_seq, journal_last_seq })
        .collect())
}

/// Where the journal in `journal_dir` ends, reading only its newest
/// segment: its last valid record, or the record before that segment when
/// it holds none yet (`None`: no segment). For progress reports that need
/// the real length without reading the whole journal; what the journal
/// holds is judged by [`inspect`].
pub fn end_seq(journal_dir: &Path) -> Result<Option<u64>, JournalError> {
    let segments = list_segments(journal_dir).map_err(|e| JournalError::io(journal_dir, e))?;
    let Some((first_seq, path)) = segments.last() else { return Ok(None) };
    let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
    // Safety: read-only mapping of a file nobody truncates.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(path, e))?;
    let last_seq = match SegmentHeader::decode(&map) {
        Ok(header) if header.first_seq == *first_seq => scan_segment(&map, &header, |_| {}).last_seq,
        // A damaged newest segment: where it should start is all we know.
        _ => None,
    };
    Ok(Some(last_seq.unwrap_or(first_seq.saturating_sub(1))))
}

/// Reads every segment of `journal_dir`; `on_record` sees each valid record.
pub fn inspect(
    journal_dir: &Path,
    mut on_record: impl FnMut(&StampedCommand),
) -> Result<JournalReport, JournalError> {
    let segments = list_segments(journal_dir).map_err(|e| JournalError::io(journal_dir, e))?;
    let mut report = JournalReport::default();
    match read_checkpoint(journal_dir) {
        Ok(checkpoint) => report.checkpoint = checkpoint,
        Err(JournalError::BadCheckpoint { path, why }) => {
            report.problems.push(Problem::BadCheckpoint { path, why: why.to_string() })
        }
        Err(error) => return Err(error),
    }
    if let Some(checkpoint) = report.checkpoint {
        let present = |seq: u64| segments.iter().any(|(first_seq, _)| *first_seq == seq);
        if !present(checkpoint.oldest_first_seq) {
            report.problems.push(Problem::MissingSegment {
                segment: journal_dir.join(segment_file_name(checkpoint.oldest_first_seq)),
                first_seq: checkpoint.oldest_first_seq,
                why: "the checkpoint names it as the oldest segment kept (the exchange did not prune it)",
            });
        }
        if !present(checkpoint.newest_first_seq) && checkpoint.newest_first_seq != checkpoint.oldest_first_seq
        {
            report.problems.push(Problem::MissingSegment {
                segment: journal_dir.join(segment_file_name(checkpoint.newest_first_seq)),
                first_seq: checkpoint.newest_first_seq,
                why: "the checkpoint names it as the newest segment created",
            });
        }
    }
    let durable_seq = report.checkpoint.map_or(0, |c| c.durable_seq);
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
        let short = header.capacity_bytes != map.len() as u64;
        if short {
            report.problems.push(Problem::SegmentSize {
                segment: path.clone(),
                capacity_bytes: header.capacity_bytes,
                file_bytes: map.len() as u64,
                last_seq: scan.last_seq,
            });
        }
        if let Some(damage) = scan.damage.filter(|damage| !(short && damage.torn_tail)) {
            let problem = if damage.torn_tail && newest && damage.expected_seq > durable_seq {
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
    let last_seq = report.end_seq();
    if last_seq < durable_seq {
        report.problems.push(Problem::EndsBeforeDurable {
            last_seq,
            durable_seq,
            recorded_in: checkpoint_path(journal_dir),
        });
    }
    Ok(report)
}
