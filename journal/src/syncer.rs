//! Making appended records durable from another thread than the one that
//! appends them: the durability stage of a pipeline, or the thread that
//! writes a snapshot. The appender (the matcher) never waits for a sync.
//!
//! A syncer syncs segment files by descriptor (`fdatasync`), which writes
//! back what the appender wrote through its mapping of the same file.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::checkpoint::DurablePublisher;
use crate::error::JournalError;
use crate::segment::segment_file_name;
use crate::writer::Durability;

/// Follows what the appender appended (told by [`JournalSyncer::appended`])
/// and syncs it under the policy. Create one with
/// [`JournalWriter::syncer`](crate::JournalWriter::syncer).
pub struct JournalSyncer {
    dir: PathBuf,
    durability: Durability,
    /// The segment the last record told of was appended to, and its file
    /// (opened when a record of it is first told of).
    segment: Option<(u64, File)>,
    appended_seq: u64,
    durable_seq: u64,
    last_sync: Instant,
    publisher: DurablePublisher,
}

impl JournalSyncer {
    pub(crate) fn new(
        dir: PathBuf,
        durability: Durability,
        durable_seq: u64,
        publisher: DurablePublisher,
    ) -> JournalSyncer {
        JournalSyncer {
            dir,
            durability,
            segment: None,
            appended_seq: durable_seq,
            durable_seq,
            last_sync: Instant::now(),
            publisher,
        }
    }

    /// Notes that record `seq` was appended to the segment whose first
    /// record is `segment_first_seq`. Records must be told in order.
    pub fn appended(&mut self, seq: u64, segment_first_seq: u64) -> Result<(), JournalError> {
        if seq <= self.appended_seq {
            return Ok(());
        }
        if self.segment.as_ref().is_none_or(|(first, _)| *first != segment_first_seq) {
            // The appender synced every record of the segments before this
            // one when it created it: only this one's can be unsynced.
            let path = self.dir.join(segment_file_name(segment_first_seq));
            let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
            self.segment = Some((segment_first_seq, file));
        }
        self.appended_seq = seq;
        Ok(())
    }

    /// Ends a batch: under `Batch` everything told of is on disk when this
    /// returns; under `Interval` it is synced if the interval has passed;
    /// under `None` nothing is done. Returns the durable sequence number.
    pub fn commit(&mut self) -> Result<u64, JournalError> {
        match self.durability {
            Durability::None => Ok(self.durable_seq),
            Durability::Batch => self.sync(),
            Durability::Interval { interval_ms } => {
                if self.last_sync.elapsed() >= Duration::from_millis(interval_ms) {
                    self.sync()
                } else {
                    Ok(self.durable_seq)
                }
            }
        }
    }

    /// Syncs everything told of so far, whatever the policy; returns the
    /// durable sequence number.
    pub fn sync(&mut self) -> Result<u64, JournalError> {
        if self.appended_seq > self.durable_seq {
            if let Some((first_seq, file)) = &self.segment {
                file.sync_data()
                    .map_err(|e| JournalError::io(&self.dir.join(segment_file_name(*first_seq)), e))?;
            }
            self.durable_seq = self.appended_seq;
            self.publisher.publish(self.durable_seq);
        }
        self.last_sync = Instant::now();
        Ok(self.durable_seq)
    }

    /// The highest sequence number this syncer made (or found) durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Whether records told of wait for a sync.
    pub fn behind(&self) -> bool {
        self.appended_seq > self.durable_seq
    }
}
