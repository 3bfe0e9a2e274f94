//! The journal's errors. Each names the file, the offset and the sequence
//! number involved, and what an operator can do about it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum JournalError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Config(String),
    BadSegmentHeader {
        segment: PathBuf,
        why: &'static str,
    },
    /// Data that is not a valid record where valid records must be: never
    /// skipped, never repaired automatically.
    Corrupt {
        segment: PathBuf,
        offset: usize,
        seq: u64,
        why: String,
    },
    /// Records are missing between two segments (a segment file is gone).
    Gap {
        expected_seq: u64,
        next_segment: PathBuf,
        next_first_seq: u64,
    },
    /// The records asked for are older than the oldest segment kept.
    NotRetained {
        from_seq: u64,
        first_retained_seq: u64,
    },
    OutOfOrder {
        expected: u64,
        got: u64,
    },
    Encode(String),
    /// Another process holds the journal's writer lock.
    Locked {
        dir: PathBuf,
    },
    /// `journal/CHECKPOINT` cannot be trusted.
    BadCheckpoint {
        path: PathBuf,
        why: &'static str,
    },
    /// A segment file is not the size its header says. Segments are
    /// preallocated and renamed into place whole, so no crash leaves this:
    /// the file was cut or copied short.
    SegmentSize {
        segment: PathBuf,
        capacity_bytes: u64,
        file_bytes: u64,
        /// The last whole record before the file's end (`None`: none).
        last_seq: Option<u64>,
    },
    /// A segment that must exist is gone.
    MissingSegment {
        /// Where the file should be.
        segment: PathBuf,
        first_seq: u64,
        /// How we know it must exist.
        why: &'static str,
        /// The last record that can be kept without it, when known.
        keep_through: Option<u64>,
    },
    /// A repair that cannot be done as asked, and why.
    RepairRefused(String),
    /// The journal ends before a sequence number known to be durable.
    EndsBeforeDurable {
        /// The segment where the journal ends.
        segment: PathBuf,
        /// The last valid record (0: none).
        last_seq: u64,
        durable_seq: u64,
        /// Where the durable sequence number was recorded.
        recorded_in: PathBuf,
        /// What lies where the next record should be, if not zeros.
        damage: Option<String>,
    },
    /// `RAFT_STATE` or `RAFT_SEGMENTS` cannot be trusted (both slots
    /// damaged, or written by another build).
    BadStateFile {
        path: PathBuf,
        why: &'static str,
    },
    /// The Raft log's files are damaged or incomplete in a way no crash
    /// leaves: refused, never cut silently.
    RaftLogDamaged {
        /// The segment (or `RAFT_SEGMENTS`) where the damage is.
        path: PathBuf,
        /// Where in the file, when known.
        offset: Option<usize>,
        /// The log index that should be there, when known.
        index: Option<u64>,
        why: String,
    },
    /// An append or purge the Raft log cannot do as asked (a caller's
    /// mistake, not damage): nothing was changed.
    RaftLogRefused {
        index: u64,
        why: String,
    },
    /// Entries asked for that the log does not hold.
    EntriesNotInLog {
        from: u64,
        to: u64,
        /// The first and last readable indexes (`None`: the log holds none).
        first: Option<u64>,
        last: Option<u64>,
    },
}

/// What the operator of a cluster node does with a Raft log that cannot be
/// trusted: the other replicas hold the log, so the node rejoins empty.
const RAFT_WAY_OUT: &str = "stop this node, move its journal directory aside (keep it for inspection) and \
     restart it: it rejoins with an empty log and catches up from the leader (by snapshot, then log); it does \
     not vote until it has caught up";

/// The data directory a journal directory belongs to (its parent when it
/// is called `journal`), as the operator passes it to `exctl`.
pub(crate) fn data_dir_of(journal_dir: &Path) -> &Path {
    match journal_dir.parent() {
        Some(parent) if journal_dir.file_name().is_some_and(|name| name == "journal") => parent,
        _ => journal_dir,
    }
}

/// What an operator can do about records that are gone: restore them, or
/// accept their loss explicitly (and on the record).
fn way_out(journal_dir: &Path, keep_through: Option<u64>) -> String {
    let data = data_dir_of(journal_dir).display();
    match keep_through {
        Some(seq) => format!(
            "restore the journal from a replica or backup; or, to accept losing every record after {seq}, \
             run `exctl journal repair {data} --after {seq} --accept-loss` (it moves the files it changes \
             aside and records what it dropped); `exctl journal verify {data}` lists every problem"
        ),
        None => format!(
            "restore the journal from a replica or backup; or accept the loss with `exctl journal repair \
             {data} --after SEQ --accept-loss`, SEQ being the last record to keep (`exctl journal verify \
             {data}` lists every problem and what is left)"
        ),
    }
}

fn dir_of(file: &Path) -> &Path {
    file.parent().unwrap_or(file)
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> JournalError {
        JournalError::Io { path: path.to_path_buf(), source }
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            JournalError::Config(why) => write!(f, "journal configuration: {why}"),
            JournalError::BadSegmentHeader { segment, why } => write!(
                f,
                "{}: {why}. To go on: {}",
                segment.display(),
                way_out(
                    dir_of(segment),
                    crate::segment::parse_segment_file_name(segment).map(|first| first.saturating_sub(1))
                )
            ),
            JournalError::Corrupt { segment, offset, seq, why } => write!(
                f,
                "journal corrupt in {} at offset {offset} (where sequence {seq} should be): {why}; \
                 the records from there on cannot be trusted. To go on: {}",
                segment.display(),
                way_out(dir_of(segment), Some(seq.saturating_sub(1)))
            ),
            JournalError::Gap { expected_seq, next_segment, next_first_seq } => write!(
                f,
                "journal records {expected_seq}..{} are missing: the next segment {} starts at {next_first_seq} \
                 (a segment file such as {} was removed or lost, which no crash does). To go on: {}",
                next_first_seq - 1,
                next_segment.display(),
                crate::segment::segment_file_name(*expected_seq),
                way_out(dir_of(next_segment), Some(expected_seq.saturating_sub(1)))
            ),
            JournalError::NotRetained { from_seq, first_retained_seq } => write!(
                f,
                "journal record {from_seq} is no longer kept: the oldest segment starts at {first_retained_seq}"
            ),
            JournalError::OutOfOrder { expected, got } => {
                write!(f, "append of sequence {got} where {expected} was expected")
            }
            JournalError::Encode(why) => write!(f, "cannot encode a command for the journal: {why}"),
            JournalError::Locked { dir } => write!(
                f,
                "{} is held by another process (its LOCK is taken: a running exchange, or an exctl that \
                 writes into it); stop that process first",
                dir.display()
            ),
            JournalError::BadCheckpoint { path, why } => write!(
                f,
                "{}: {why}. It records what must exist in the journal, so the journal cannot be checked \
                 against it: restore it (or the whole data directory) from a backup; or, after `exctl journal \
                 verify` shows the segments whole, `exctl journal repair {} --after SEQ --accept-loss` with SEQ \
                 the last sequence number you trust writes a new one",
                path.display(),
                data_dir_of(dir_of(path)).display()
            ),
            JournalError::SegmentSize { segment, capacity_bytes, file_bytes, last_seq } => {
                let last = last_seq.unwrap_or(0);
                write!(
                    f,
                    "{} is {file_bytes} bytes, but its header says {capacity_bytes}: segments are preallocated \
                     whole and no crash changes their size, so the file was cut or copied short (or padded) and \
                     the records after sequence {last} may be lost. To go on: {}",
                    segment.display(),
                    way_out(dir_of(segment), Some(last))
                )
            }
            JournalError::MissingSegment { segment, first_seq, why, keep_through } => write!(
                f,
                "journal segment {} (records from {first_seq}) is missing: {why}; no crash removes a segment. \
                 To go on: {}",
                segment.display(),
                way_out(dir_of(segment), *keep_through)
            ),
            JournalError::RepairRefused(why) => write!(f, "cannot repair: {why}"),
            JournalError::EndsBeforeDurable { segment, last_seq, durable_seq, recorded_in, damage } => {
                write!(
                    f,
                    "the journal ends at sequence {last_seq} in {}, but {} records sequence {durable_seq} as \
                     durable: records {}..{durable_seq} were written to disk and are gone (no crash loses \
                     synced records)",
                    segment.display(),
                    recorded_in.display(),
                    last_seq + 1
                )?;
                if let Some(damage) = damage {
                    write!(f, "; where {} should be: {damage}", last_seq + 1)?;
                }
                write!(f, ". To go on: {}", way_out(dir_of(segment), Some(*last_seq)))
            }
            JournalError::BadStateFile { path, why } => {
                write!(f, "{}: {why}. To go on: {RAFT_WAY_OUT}", path.display())
            }
            JournalError::RaftLogDamaged { path, offset, index, why } => {
                write!(f, "Raft log damaged in {}", path.display())?;
                if let Some(offset) = offset {
                    write!(f, " at offset {offset}")?;
                }
                if let Some(index) = index {
                    write!(f, " (where index {index} should be)")?;
                }
                write!(f, ": {why}. To go on: {RAFT_WAY_OUT}")
            }
            JournalError::RaftLogRefused { index, why } => write!(f, "Raft log entry {index}: {why}"),
            JournalError::EntriesNotInLog { from, to, first, last } => {
                write!(f, "Raft log entries {from}..{to} (end excluded) asked for, but ")?;
                match (first, last) {
                    (Some(first), Some(last)) => write!(f, "the log holds {first}..={last}"),
                    _ => f.write_str("the log holds no entry"),
                }
            }
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
