//! Recovery: the newest valid snapshot plus a replay of the journal after it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine_core::{Engine, EngineLimits, Event, StampedCommand};

use crate::error::JournalError;
use crate::reader::{JournalReader, ReadMode};
use crate::snapshots::{list_snapshots, load_snapshot_with_views, SnapshotInfo};
use crate::writer::{JournalConfig, JournalWriter, OpenReport};

/// Where a data directory keeps its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }
}

/// The recovered state and how it was reached.
#[derive(Debug)]
pub struct Recovery {
    pub engine: Engine,
    /// The sequence number of the next command.
    pub next_seq: u64,
    /// The snapshot the replay started from (`None`: from an empty engine).
    pub snapshot: Option<SnapshotInfo>,
    /// Newer snapshots that could not be used, and why.
    pub skipped_snapshots: Vec<(PathBuf, String)>,
    /// Commands replayed from the journal.
    pub replayed: u64,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub enum RecoveryError {
    Journal(JournalError),
    /// The newest usable snapshot is ahead of the journal: records it
    /// reflects are missing from the journal.
    SnapshotAheadOfJournal {
        snapshot_seq: u64,
        journal_next_seq: u64,
    },
    /// The derived state could not be built without a snapshot.
    Derived(String),
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryError::Journal(error) => write!(f, "{error}"),
            RecoveryError::Derived(why) => write!(f, "cannot build the read views: {why}"),
            RecoveryError::SnapshotAheadOfJournal { snapshot_seq, journal_next_seq } => write!(
                f,
                "the snapshot at sequence {snapshot_seq} is ahead of the journal, which ends before \
                 {journal_next_seq}: journaled records were lost"
            ),
        }
    }
}

impl std::error::Error for RecoveryError {}

impl From<JournalError> for RecoveryError {
    fn from(error: JournalError) -> RecoveryError {
        RecoveryError::Journal(error)
    }
}

/// Options of a recovery.
#[derive(Clone, Copy, Debug)]
pub struct RecoverOptions {
    /// Limits of a fresh engine, when no snapshot is usable.
    pub limits: EngineLimits,
    /// Stop after this sequence number (for inspecting an old state).
    pub to_seq: Option<u64>,
    pub mode: ReadMode,
}

/// State derived from the engine's events (the server's read views),
/// recovered with the engine: loaded from the same snapshot, then brought
/// up to date by the events of the commands replayed after it.
pub trait Derived: Sized {
    /// What building it needs besides the snapshot (its retention bounds, say).
    type Setup;
    /// The derived state at a snapshot: `engine` is the snapshot's engine
    /// (or an empty one when there is no snapshot), `views` its views
    /// section (`None` when it has none). An error makes recovery skip the
    /// snapshot, as a damaged one is skipped.
    fn load(setup: &Self::Setup, engine: &Engine, views: Option<&[u8]>) -> Result<Self, String>;
    /// Follows one replayed command and the events it produced.
    fn apply(&mut self, command: &StampedCommand, events: &[Event]);
}

/// Nothing derived: recovery of the engine alone.
impl Derived for () {
    type Setup = ();

    fn load(_: &(), _: &Engine, _: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }

    fn apply(&mut self, _: &StampedCommand, _: &[Event]) {}
}

/// Rebuilds the engine from the newest snapshot that loads (falling back
/// to older ones, then to an empty engine) and the journal records after it.
/// Reads only: a torn tail is read as the end in `Follow` mode.
/// `on_progress` is called now and then with the sequence number reached.
pub fn recover(
    data: &DataDir,
    options: RecoverOptions,
    on_progress: impl FnMut(u64),
) -> Result<Recovery, RecoveryError> {
    recover_with::<()>(data, options, &(), on_progress).map(|(recovery, ())| recovery)
}

/// Like [`recover`], and also rebuilds the derived state `D` from the same
/// snapshot and the same replayed commands.
pub fn recover_with<D: Derived>(
    data: &DataDir,
    options: RecoverOptions,
    setup: &D::Setup,
    mut on_progress: impl FnMut(u64),
) -> Result<(Recovery, D), RecoveryError> {
    let started = Instant::now();
    let mut skipped_snapshots = Vec::new();
    let mut base = None;
    for (seq, path) in list_snapshots(&data.snapshots())? {
        if options.to_seq.is_some_and(|to| seq > to) {
            continue;
        }
        let loaded = load_snapshot_with_views(&path).map_err(|error| error.to_string()).and_then(|loaded| {
            let derived = D::load(setup, &loaded.engine, loaded.views.as_deref())
                .map_err(|why| format!("views section unusable: {why}"))?;
            Ok((loaded.engine, loaded.info, derived))
        });
        match loaded {
            Ok(loaded) => {
                base = Some(loaded);
                break;
            }
            Err(error) => skipped_snapshots.push((path, error)),
        }
    }
    let (mut engine, snapshot, mut derived) = match base {
        Some((engine, info, derived)) => (engine, Some(info), derived),
        None => {
            let engine = Engine::new(options.limits);
            let derived = D::load(setup, &engine, None).map_err(RecoveryError::Derived)?;
            (engine, None, derived)
        }
    };
    let replayed = replay_with(
        &data.journal(),
        &mut engine,
        options.to_seq,
        options.mode,
        &mut on_progress,
        &mut |command, events| derived.apply(command, events),
    )?;
    let recovery = Recovery {
        next_seq: engine.last_seq() + 1,
        engine,
        snapshot,
        skipped_snapshots,
        replayed,
        elapsed: started.elapsed(),
    };
    Ok((recovery, derived))
}

/// Applies the journal's records after `engine.last_seq()` (up to `to_seq`)
/// and returns how many were applied.
pub fn replay(
    journal_dir: &Path,
    engine: &mut Engine,
    to_seq: Option<u64>,
    mode: ReadMode,
    on_progress: &mut impl FnMut(u64),
) -> Result<u64, RecoveryError> {
    replay_with(journal_dir, engine, to_seq, mode, on_progress, &mut |_, _| {})
}

/// Like [`replay`], telling `on_applied` each command and its events.
pub fn replay_with(
    journal_dir: &Path,
    engine: &mut Engine,
    to_seq: Option<u64>,
    mode: ReadMode,
    on_progress: &mut impl FnMut(u64),
    on_applied: &mut impl FnMut(&StampedCommand, &[Event]),
) -> Result<u64, RecoveryError> {
    let mut reader = JournalReader::open(journal_dir, engine.last_seq() + 1, mode)?;
    let mut events: Vec<Event> = Vec::with_capacity(256);
    let mut replayed = 0u64;
    while to_seq.is_none_or(|to| engine.last_seq() < to) {
        let Some(command) = reader.next()? else { break };
        events.clear();
        engine.apply(&command, &mut events).map_err(|error| {
            RecoveryError::Journal(JournalError::OutOfOrder { expected: error.expected, got: error.got })
        })?;
        on_applied(&command, &events);
        replayed += 1;
        if replayed.is_multiple_of(1 << 20) {
            on_progress(engine.last_seq());
        }
    }
    on_progress(engine.last_seq());
    Ok(replayed)
}

/// Opens a data directory for the exchange: opens the journal for
/// appending (cutting a torn tail), then recovers the state. The writer's
/// next sequence number and the engine's agree when this returns.
pub fn open_data_dir(
    data: &DataDir,
    journal: JournalConfig,
    limits: EngineLimits,
) -> Result<(JournalWriter, OpenReport, Recovery), RecoveryError> {
    open_data_dir_with::<()>(data, journal, limits, &())
        .map(|(writer, report, recovery, ())| (writer, report, recovery))
}

/// Like [`open_data_dir`], recovering the derived state `D` too.
pub fn open_data_dir_with<D: Derived>(
    data: &DataDir,
    mut journal: JournalConfig,
    limits: EngineLimits,
    setup: &D::Setup,
) -> Result<(JournalWriter, OpenReport, Recovery, D), RecoveryError> {
    journal.dir = data.journal();
    let (writer, report) = JournalWriter::open(journal)?;
    let options = RecoverOptions { limits, to_seq: None, mode: ReadMode::Strict };
    let (recovery, derived) = recover_with::<D>(data, options, setup, |_| {})?;
    if recovery.next_seq != writer.next_seq() {
        return Err(RecoveryError::SnapshotAheadOfJournal {
            snapshot_seq: recovery.engine.last_seq(),
            journal_next_seq: writer.next_seq(),
        });
    }
    Ok((writer, report, recovery, derived))
}
