//! Where the writer regenerates the events it missed: the commands the
//! matcher applied, in their order, replayed through an engine of the
//! writer's own (replay is deterministic, so the events are the very ones
//! the matcher published).
//!
//! A single node regenerates from its journal ([`JournalSource`]: the
//! newest snapshot at or before the cursor, then the journal). A cluster
//! node's journal is the replicated log, so the gateway gives the writer a
//! source over that log and its snapshot images instead.
//!
//! What a source must never do: hand out an engine that is not exactly at
//! the cursor asked for, or skip a command (a gap is an error that says
//! where, never a shorter history).

use engine_core::{EngineLimits, Event};
use journal::{DataDir, JournalReader, ReadMode, RecoverOptions};

use crate::rows::Stamp;
use crate::seed::SeedImage;

/// What the writer regenerates from.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// An engine that has applied exactly the commands up to `cursor_seq`,
    /// ready to replay the ones after it.
    fn open(&self, cursor_seq: u64) -> Result<Box<dyn Replay>, String>;

    /// The time stamp of command `seq`, if the source can tell cheaply
    /// (the writer's lag at start, before the first live batch).
    fn timestamp_of(&self, seq: u64) -> Option<u64> {
        let _ = seq;
        None
    }

    /// The newest snapshot image, checked whole, to seed an empty database
    /// from (`crate::seed`). A single node's journal is never compacted
    /// past what its writer needs, so it has none to offer.
    fn seed_image(&self) -> Result<SeedImage, String> {
        Err("this exchange is not a cluster node: its writer regenerates the whole history from its journal, \
             so there is nothing to seed"
            .to_string())
    }
}

/// An engine positioned in a source's commands.
pub trait Replay: Send {
    /// The last command applied.
    fn seq(&self) -> u64;

    /// Applies commands up to `target` (fewer when about `events_max`
    /// events are reached, or when the source has no more yet), appending
    /// their events and stamps.
    fn replay(
        &mut self,
        target: u64,
        events_max: usize,
        events: &mut Vec<Event>,
        stamps: &mut Vec<Stamp>,
    ) -> Result<(), String>;
}

/// A single node's journal and snapshots.
#[derive(Debug)]
pub struct JournalSource {
    pub data: DataDir,
    /// The engine limits the exchange runs with (a replay from an empty
    /// engine must reject exactly what the live one rejected).
    pub limits: EngineLimits,
}

impl Source for JournalSource {
    fn open(&self, cursor_seq: u64) -> Result<Box<dyn Replay>, String> {
        let options =
            RecoverOptions { limits: self.limits, to_seq: Some(cursor_seq), mode: ReadMode::Follow };
        let recovery = journal::recover(&self.data, options, |_| {}).map_err(|e| e.to_string())?;
        if recovery.engine.last_seq() != cursor_seq {
            return Err(format!(
                "the journal ends at sequence {} but the database has events up to {cursor_seq}: \
                 the database is ahead of the journal (was the journal lost or replaced?)",
                recovery.engine.last_seq()
            ));
        }
        let reader = JournalReader::open(&self.data.journal(), cursor_seq + 1, ReadMode::Follow)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(JournalReplay { engine: recovery.engine, reader }))
    }

    fn timestamp_of(&self, seq: u64) -> Option<u64> {
        let mut reader = JournalReader::open(&self.data.journal(), seq, ReadMode::Follow).ok()?;
        reader.next().ok().flatten().filter(|command| command.seq == seq).map(|command| command.timestamp_ns)
    }
}

struct JournalReplay {
    engine: engine_core::Engine,
    reader: JournalReader,
}

impl Replay for JournalReplay {
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
        while self.engine.last_seq() < target && events.len() < events_max {
            let Some(command) = self.reader.next().map_err(|e| e.to_string())? else { break };
            self.engine.apply(&command, events).map_err(|e| format!("replay out of order: {e:?}"))?;
            stamps.push(Stamp { seq: command.seq, timestamp_ns: command.timestamp_ns });
        }
        Ok(())
    }
}
