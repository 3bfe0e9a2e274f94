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
            JournalError::BadSegmentHeader { segment, why } => write!(f, "{}: {why}", segment.display()),
            JournalError::Corrupt { segment, offset, seq, why } => write!(
                f,
                "journal corrupt in {} at offset {offset} (where sequence {seq} should be): {why}; \
                 the records from there on cannot be trusted. Restore the journal from a replica or \
                 backup; `exctl journal verify` reports every damaged place",
                segment.display()
            ),
            JournalError::Gap { expected_seq, next_segment, next_first_seq } => write!(
                f,
                "journal records {expected_seq}..{} are missing: the next segment {} starts at {next_first_seq} \
                 (a segment file was removed or lost)",
                next_first_seq - 1,
                next_segment.display()
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
                "{} is being written by another process (its LOCK is held); stop that process first",
                dir.display()
            ),
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
