//! A cluster node's committed log and snapshot images as the database
//! writer's source: what it regenerates missed events from.
//!
//! The writer's engine starts from the newest image at or before its
//! cursor (the node's image, or the writer's base image kept for it, see
//! [`crate::images`]), or from an empty engine while the log was never
//! purged, and applies the committed entries after it, numbering and
//! stamping commands exactly as every replica does
//! ([`replication::stamp`]). The hash marks it passes are checked.
//!
//! What this module must never do: write to the node's files (the node
//! holds them), or skip a command the log no longer has: an entry purged
//! or missing is an error naming the sequence numbers the database lacks.

use std::collections::VecDeque;
use std::path::PathBuf;

use engine_core::{Engine, EngineLimits, Event, StampedCommand};
use persistence::{Replay, Source, Stamp};
use replication::log_file::read_committed_from;
use replication::openraft::EntryPayload;
use replication::Batch;

use crate::images::WRITER_BASE_IMAGE_FILE_NAME;

/// Committed entries read from the files at a time, and the commands
/// queued at most after a read: each read reads the segment file it starts
/// in whole (64 MiB by default), so reads must not be small, and the queue
/// must not grow without bound.
const ENTRIES_PER_READ: usize = 4_096;
const COMMANDS_QUEUED_MAX: usize = 65_536;
/// Events held at most while replaying to the database's cursor.
const EVENTS_PER_SKIP: usize = 65_536;

/// The node's journal (its Raft log) and snapshot directories.
#[derive(Debug)]
pub struct CommittedLog {
    pub journal: PathBuf,
    pub snapshots: PathBuf,
}

impl Source for CommittedLog {
    fn open(&self, cursor_seq: u64) -> Result<Box<dyn Replay>, String> {
        let mut start: Option<replication::Image> = None;
        let mut found = Vec::new();
        for name in [replication::state_machine::IMAGE_FILE_NAME, WRITER_BASE_IMAGE_FILE_NAME] {
            let image = replication::read_image_at(&self.snapshots.join(name)).map_err(|e| e.to_string())?;
            if let Some((image, _)) = &image {
                found.push(format!("{name} at sequence {}", image.engine.last_seq()));
            }
            if let Some((image, _)) = image.filter(|(image, _)| image.engine.last_seq() <= cursor_seq) {
                if start.as_ref().is_none_or(|start| start.engine.last_seq() < image.engine.last_seq()) {
                    start = Some(image);
                }
            }
        }
        let mut replay = match start {
            Some(image) => LogReplay {
                journal: self.journal.clone(),
                next_index: image.meta.last_log_id.map_or(0, |log_id| log_id.index + 1),
                engine: image.engine,
                last_timestamp_ns: image.last_timestamp_ns,
                queue: VecDeque::new(),
                marks: VecDeque::new(),
            },
            // A cluster node starts from an empty engine with the default
            // limits; the leader journals the configured ones.
            None => LogReplay {
                journal: self.journal.clone(),
                next_index: 0,
                engine: Engine::new(EngineLimits::default()),
                last_timestamp_ns: 0,
                queue: VecDeque::new(),
                marks: VecDeque::new(),
            },
        };
        let from_seq = replay.engine.last_seq();
        let mut events = Vec::new();
        while replay.engine.last_seq() < cursor_seq {
            events.clear();
            let before = replay.engine.last_seq();
            // Events of the commands the database has are dropped a
            // slice at a time: memory stays bounded on a long replay.
            replay.advance(cursor_seq, EVENTS_PER_SKIP, &mut events, None).map_err(|why| {
                format!(
                    "the database has events up to sequence {cursor_seq}; this node cannot replay to it from \
                     sequence {from_seq} (its images: {}): {why}",
                    if found.is_empty() { "none".to_string() } else { found.join(", ") }
                )
            })?;
            if replay.engine.last_seq() == before {
                return Err(format!(
                    "the database has events up to sequence {cursor_seq} but this node's committed log ends at \
                     {before}: the database is ahead of this node (it was fed by another cluster, or this \
                     node's disk was replaced)"
                ));
            }
        }
        Ok(Box::new(replay))
    }

    fn seed_image(&self) -> Result<persistence::seed::SeedImage, String> {
        let image = self.newest_image()?;
        let log_id = image.meta.last_log_id.ok_or_else(|| {
            "this node's snapshot image is of no log position (an empty state): nothing to seed from"
                .to_string()
        })?;
        Ok(persistence::seed::SeedImage {
            engine: image.engine,
            last_timestamp_ns: image.last_timestamp_ns,
            raft_index: log_id.index,
            raft_term: log_id.leader_id.term,
        })
    }
}

impl CommittedLog {
    /// The node's own image, checked whole as it is read.
    fn newest_image(&self) -> Result<replication::Image, String> {
        let name = replication::state_machine::IMAGE_FILE_NAME;
        let path = self.snapshots.join(name);
        match replication::read_image_at(&path).map_err(|e| e.to_string())? {
            Some((image, _)) => Ok(image),
            None => Err(format!(
                "this node has no snapshot image ({} is missing): its log was never compacted, so there is \
                 nothing to seed from",
                path.display()
            )),
        }
    }
}

/// An engine walking the committed log.
struct LogReplay {
    journal: PathBuf,
    /// The next log entry to read.
    next_index: u64,
    engine: Engine,
    last_timestamp_ns: u64,
    /// Commands read and stamped, not yet applied (an entry holds many).
    queue: VecDeque<StampedCommand>,
    /// Hash marks read, in log order, not yet reached.
    marks: VecDeque<(u64, u64, u64)>,
}

impl LogReplay {
    /// Reads up to [`ENTRIES_PER_READ`] more committed entries into the
    /// queue. Returns whether it read any.
    fn read(&mut self) -> Result<bool, String> {
        let mut read = 0usize;
        let engine_seq = self.engine.last_seq();
        let result = read_committed_from(&self.journal, self.next_index, |entry| {
            if read == ENTRIES_PER_READ || self.queue.len() >= COMMANDS_QUEUED_MAX {
                return Err(String::new());
            }
            match &entry.payload {
                EntryPayload::Normal(Batch::Commands(proposals)) => {
                    for proposal in proposals {
                        let seq = engine_seq + self.queue.len() as u64 + 1;
                        let stamped = replication::stamp(proposal, seq, &mut self.last_timestamp_ns);
                        self.queue.push_back(stamped);
                    }
                }
                EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
                    self.marks.push_back((*seq, *node, *hash))
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => {}
            }
            self.next_index = entry.log_id.index + 1;
            read += 1;
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(stopped) if stopped.is_empty() => {}
            Err(error) => return Err(error),
        }
        self.check_marks()?;
        Ok(read > 0)
    }

    /// Checks the hash marks the engine stands at; drops those it passed
    /// (a mark for a point before the replay's start says nothing here).
    fn check_marks(&mut self) -> Result<(), String> {
        let last_seq = self.engine.last_seq();
        while let Some(&(seq, node, hash)) = self.marks.front().filter(|mark| mark.0 <= last_seq) {
            self.marks.pop_front();
            if seq == last_seq {
                let ours = self.engine.state_hash();
                if ours != hash {
                    return Err(format!(
                        "the replay diverges from the cluster at sequence {seq}: its state hash is {ours:016x}, \
                         node {node}'s hash mark says {hash:016x}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies queued commands up to `target` (and at most about
    /// `events_max` events), reading more of the log as needed; stops
    /// early when the committed log has no more yet.
    fn advance(
        &mut self,
        target: u64,
        events_max: usize,
        events: &mut Vec<Event>,
        mut stamps: Option<&mut Vec<Stamp>>,
    ) -> Result<(), String> {
        while self.engine.last_seq() < target && events.len() < events_max {
            let Some(command) = self.queue.pop_front() else {
                let read = self.read().map_err(|why| {
                    format!(
                        "reading this node's committed log after sequence {}: {why}. A node keeps the log its \
                         database writer needs only while the writer is configured: a database attached after \
                         the log was compacted, or a node that installed the leader's snapshot image while its \
                         writer was behind, lacks that history; feed the database from a node that has it",
                        self.engine.last_seq()
                    )
                })?;
                if read {
                    continue;
                }
                break;
            };
            self.engine.apply(&command, events).map_err(|e| format!("replay out of order: {e:?}"))?;
            if self.marks.front().is_some_and(|mark| mark.0 <= command.seq) {
                self.check_marks()?;
            }
            if let Some(stamps) = stamps.as_mut() {
                stamps.push(Stamp { seq: command.seq, timestamp_ns: command.timestamp_ns });
            }
        }
        Ok(())
    }
}

impl Replay for LogReplay {
    fn seq(&self) -> u64 {
        self.engine.last_seq()
    }

    fn replay(
        &mut self,
        target: u64,
        events_max: usize,
        events: &mut Vec<Event>,
        stamps: &mut Vec<Stamp>,
    ) -> Result<(), String> {
        self.advance(target, events_max, events, Some(stamps))
    }
}
