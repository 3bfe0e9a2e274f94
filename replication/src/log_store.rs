//! openraft's log storage on the journal: entries in `journal::RaftLog` (segment format 3),
//! the vote, committed and purged positions in `journal::RaftStateFile` (`RAFT_STATE`).
//!
//! # Entries as journal frames
//!
//! One Raft entry is one journal frame: the frame holds the log id (index, term) and a kind,
//! the payload is the entry's content encoded with [`codec`]:
//!
//! | entry | kind | payload |
//! | --- | --- | --- |
//! | blank (a new leader's first) | `Blank` | nothing |
//! | `Batch::Commands(v)` | `MarkedCommands` | `codec(v)`, a `Vec<Proposal>` (numbered when applied) |
//! | (read only) | `Commands` | a `Vec<UnmarkedProposal>`, written before replay marks |
//! | `Batch::HashMark { seq, node, hash }` | `HashMark` | `codec((seq, node, hash))` |
//! | membership | `Membership` | `codec(Membership)` |
//!
//! # Durability and order
//!
//! openraft requires every write (appends and votes) to take effect in submission order, and an
//! append's callback to run only once its entries are on disk. So:
//!
//! * `append` writes the frames into the mmap at once (readable on return) and queues a
//!   `SyncRequest` with the callback to the sync thread, which drains its queue, runs the
//!   syncs, then calls the callbacks **in order** (group commit: one thread, no reordering).
//! * `save_vote` queues the vote behind those appends: the sync thread writes and syncs
//!   `RAFT_STATE` only after every earlier append is durable, and `save_vote` returns after.
//! * `save_committed` queues the position behind those appends and returns: the sync thread
//!   writes it into `RAFT_STATE`, without a sync, only once the log reports every entry up to it
//!   durable (or purged). openraft saves a committed position as soon as the entries are
//!   submitted, before their sync; written at once, the state file's page could reach the disk
//!   before the entries' and a power loss would leave a committed index above a torn log, which
//!   `RaftLog::open` refuses (it cuts a torn tail only above the committed index). A position
//!   read back after a crash is at most stale, which is safe (any value once saved was
//!   committed).
//! * `truncate_after` and `purge` first wait for the queue to drain, then change the log
//!   (both are durable on return).
//! * Once a sync fails, every later write fails too: after a failed fdatasync the kernel may
//!   have dropped the dirty pages, so nothing about the file can be trusted; restart the node.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use journal::{
    EntryKind, LogEntry, LogPosition, RaftLog, RaftLogLimits, RaftState, RaftStateFile, StoredVote,
};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use tokio::sync::oneshot;

use crate::types::{Batch, Entry, LogId, Membership, Proposal, TypeConfig, UnmarkedProposal, Vote};

/// The largest reply [`LogReader::limited_get_log_entries`] builds for one replication
/// message, in payload bytes (at least one entry is always returned).
pub const READ_BYTES_MAX_DEFAULT: usize = 4 << 20;

/// How to open a [`LogStore`].
#[derive(Clone, Debug)]
pub struct LogStoreConfig {
    /// The journal's limits for the Raft log (segment size, largest entry).
    pub limits: RaftLogLimits,
    /// See [`READ_BYTES_MAX_DEFAULT`].
    pub read_bytes_max: usize,
}

impl Default for LogStoreConfig {
    fn default() -> LogStoreConfig {
        LogStoreConfig { limits: RaftLogLimits::default(), read_bytes_max: READ_BYTES_MAX_DEFAULT }
    }
}

/// What the store and its readers share.
struct Shared {
    log: Mutex<RaftLog>,
    durable: Arc<Durable>,
    read_bytes_max: usize,
}

/// What the sync thread needs (never the log itself, so that the log and its directory lock go
/// as soon as the store and its readers are dropped).
struct Durable {
    /// What openraft saved last, as `read_vote` and `read_committed` answer it; the file may
    /// lag behind (see [`StateWriter`]).
    state: Mutex<RaftState>,
    /// Set when a sync failed: the store refuses every later write.
    failed: AtomicBool,
}

enum Job {
    /// Make an append durable, then call its callback.
    Flush { request: journal::SyncRequest, callback: IOFlushed<TypeConfig> },
    /// Write and sync `RAFT_STATE` with this vote (after every earlier job), then answer.
    SaveState { vote: StoredVote, reply: oneshot::Sender<io::Result<()>> },
    /// Write this committed position into `RAFT_STATE` once the log reports the entries it
    /// covers durable: `request` covers every entry appended before it (so every entry
    /// openraft may call committed), `purged` is the log's last purged index then.
    SaveCommitted { committed: Option<LogPosition>, request: journal::SyncRequest, purged: Option<u64> },
    /// Answer once every earlier job is done.
    Barrier { reply: oneshot::Sender<io::Result<()>> },
}

/// openraft's `RaftLogStorage` on a journal directory. Dropping it finishes the queued syncs
/// and stops its sync thread; the log (and its directory lock) goes with the last reader.
/// The first log index a reader outside openraft still needs (`u64::MAX`: none), asked at
/// every purge: see [`LogStore::hold_purge`].
pub type PurgeHold = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct LogStore {
    /// Purges stop short of this (the database writer's regeneration on a cluster node).
    purge_hold: Option<PurgeHold>,
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Job>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Scratch for encoding payloads.
    scratch: Vec<u8>,
    fresh: bool,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has run what was queued.
        self.jobs = None;
        if let Some(syncer) = self.syncer.take() {
            if syncer.join().is_err() {
                tracing::error!("the raft log sync thread panicked");
            }
        }
    }
}

/// A reader of the log for openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn journal_error(doing: &str, e: journal::JournalError) -> io::Error {
    io::Error::other(format!("{doing}: {e}"))
}

fn poisoned() -> io::Error {
    io::Error::other("the log store's lock was poisoned by a panic; restart the node")
}

fn sync_failed() -> io::Error {
    io::Error::other(
        "an earlier fdatasync of the raft log failed: the kernel may have dropped written pages, so the \
         log cannot be trusted; restart the node (it recovers from what is on disk)",
    )
}

fn log_id(position: LogPosition) -> LogId {
    LogId::new_term_index(position.term, position.index)
}

fn position(log_id: &LogId) -> LogPosition {
    LogPosition { index: log_id.index, term: log_id.leader_id.term }
}

fn vote_of(stored: StoredVote) -> Vote {
    if stored.committed {
        Vote::new_committed(stored.term, stored.node_id)
    } else {
        Vote::new(stored.term, stored.node_id)
    }
}

fn stored_vote(vote: &Vote) -> StoredVote {
    StoredVote {
        term: vote.leader_id().term(),
        node_id: *vote.leader_id().node_id(),
        committed: vote.is_committed(),
    }
}

/// Encodes an entry's payload into `out`, returning its kind.
fn encode_payload(entry: &Entry, out: &mut Vec<u8>) -> io::Result<EntryKind> {
    out.clear();
    let encoded = match &entry.payload {
        EntryPayload::Blank => return Ok(EntryKind::Blank),
        EntryPayload::Normal(Batch::Commands(commands)) => {
            codec::encode_append(commands, out).map(|()| EntryKind::MarkedCommands)
        }
        EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
            codec::encode_append(&(*seq, *node, *hash), out).map(|()| EntryKind::HashMark)
        }
        EntryPayload::Membership(membership) => {
            codec::encode_append(membership, out).map(|()| EntryKind::Membership)
        }
    };
    encoded.map_err(|e| invalid(format!("entry {} does not encode: {e}", entry.log_id)))
}

/// Decodes a journal frame back into an entry. The bytes come from a disk: hostile.
pub fn decode_entry(frame: &LogEntry) -> io::Result<Entry> {
    let log_id = LogId::new_term_index(frame.term, frame.index);
    let bad = |e: codec::Error| {
        invalid(format!("raft log entry {} ({:?}) does not decode: {e}", frame.index, frame.kind))
    };
    let payload = match frame.kind {
        EntryKind::Blank => {
            if !frame.payload.is_empty() {
                return Err(invalid(format!(
                    "raft log entry {} is blank but carries a payload",
                    frame.index
                )));
            }
            EntryPayload::Blank
        }
        EntryKind::MarkedCommands => {
            let commands: Vec<Proposal> = codec::decode(&frame.payload).map_err(bad)?;
            EntryPayload::Normal(Batch::Commands(commands))
        }
        EntryKind::Commands => {
            let commands: Vec<UnmarkedProposal> = codec::decode(&frame.payload).map_err(bad)?;
            EntryPayload::Normal(Batch::Commands(commands.into_iter().map(Proposal::from).collect()))
        }
        EntryKind::HashMark => {
            let (seq, node, hash): (u64, u64, u64) = codec::decode(&frame.payload).map_err(bad)?;
            EntryPayload::Normal(Batch::HashMark { seq, node, hash })
        }
        EntryKind::Membership => {
            let membership: Membership = codec::decode(&frame.payload).map_err(bad)?;
            EntryPayload::Membership(membership)
        }
    };
    Ok(Entry { log_id, payload })
}

impl LogStore {
    /// Opens (or creates) the Raft log and `RAFT_STATE` in `dir` and starts its sync thread.
    /// A damaged log or state file is refused with the journal's reason.
    pub fn open(dir: &Path, config: LogStoreConfig) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let log = RaftLog::open(dir, config.limits).map_err(|e| journal_error("opening the raft log", e))?;
        let (file, state) = RaftStateFile::open(dir).map_err(|e| journal_error("opening RAFT_STATE", e))?;
        let fresh = state.is_none();
        let state = state.unwrap_or_default();
        // The newest segment was synced by the open: every entry it holds is durable.
        let durable_index = log.last().map(|p| p.index);
        let durable = Arc::new(Durable { state: Mutex::new(state), failed: AtomicBool::new(false) });
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            durable: durable.clone(),
            read_bytes_max: config.read_bytes_max.max(1),
        });
        let (jobs, queue) = mpsc::channel();
        let syncer = std::thread::Builder::new().name("raft-log-sync".into()).spawn(move || {
            let writer = StateWriter { file, on_disk: state, pending: None, durable_index };
            run_syncer(&durable, writer, &queue)
        })?;
        Ok(LogStore {
            purge_hold: None,
            shared,
            jobs: Some(jobs),
            syncer: Some(syncer),
            scratch: Vec::new(),
            fresh,
        })
    }

    /// Purges behind snapshots keep every entry from `hold()` on. openraft considers them
    /// purged all the same (it never asks for them again); they stay on disk for a reader of
    /// the files until a later purge, asked when the hold has moved, deletes them. A purge
    /// that would empty the log (after a snapshot install from the leader) is never held:
    /// the log must stay contiguous with what openraft appends next.
    pub fn hold_purge(mut self, hold: PurgeHold) -> LogStore {
        self.purge_hold = Some(hold);
        self
    }

    /// True when `RAFT_STATE` did not exist at open: a new node, or one whose disk was wiped.
    /// Such a node has forgotten its vote and must not vote until it has caught up.
    pub fn was_fresh(&self) -> bool {
        self.fresh
    }

    fn check_healthy(&self) -> io::Result<()> {
        if self.shared.durable.failed.load(Ordering::Acquire) {
            return Err(sync_failed());
        }
        Ok(())
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        let stopped = || io::Error::other("the raft log sync thread stopped");
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())
    }

    fn log(&self) -> io::Result<MutexGuard<'_, RaftLog>> {
        self.shared.log.lock().map_err(|_| poisoned())
    }

    /// Waits until every job queued before it is done.
    async fn barrier(&self) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Barrier { reply })?;
        done.await.map_err(|_| io::Error::other("the raft log sync thread stopped"))?
    }
}

impl Durable {
    fn state(&self) -> io::Result<MutexGuard<'_, RaftState>> {
        self.state.lock().map_err(|_| poisoned())
    }
}

/// A committed position waiting for the entries it covers to be durable.
#[derive(Clone, Copy)]
struct PendingCommitted {
    committed: Option<LogPosition>,
    /// The log's last purged index when it was saved: entries up to it need no sync.
    purged: Option<u64>,
}

/// `RAFT_STATE` as the sync thread (its only writer) keeps it: what the file holds, and a
/// committed position it holds back until the log reports its entries durable.
struct StateWriter {
    file: RaftStateFile,
    on_disk: RaftState,
    pending: Option<PendingCommitted>,
    /// Every entry up to this index is on disk, as the log's last sync reported.
    durable_index: Option<u64>,
}

impl StateWriter {
    /// The pending committed position, if every entry it covers is now durable or purged.
    fn writable_committed(&self) -> Option<Option<LogPosition>> {
        let pending = self.pending?;
        let covered = |index: u64| {
            self.durable_index.is_some_and(|d| d >= index) || pending.purged.is_some_and(|p| p >= index)
        };
        pending.committed.is_none_or(|c| covered(c.index)).then_some(pending.committed)
    }

    /// Writes `RAFT_STATE` with `vote` (when given) and the pending committed position if it is
    /// writable; synced when `sync`. Does nothing when that changes nothing.
    fn save(&mut self, shared: &Durable, vote: Option<StoredVote>, sync: bool) -> io::Result<()> {
        let mut state = self.on_disk;
        if let Some(vote) = vote {
            state.vote = Some(vote);
        }
        if let Some(committed) = self.writable_committed() {
            state.committed = committed;
            self.pending = None;
        }
        if state == self.on_disk && !sync {
            return Ok(());
        }
        self.file.save(&state, sync).map_err(|e| {
            shared.failed.store(true, Ordering::Release);
            tracing::error!(error = %e, "saving RAFT_STATE failed");
            journal_error("saving RAFT_STATE", e)
        })?;
        self.on_disk = state;
        Ok(())
    }
}

/// The sync thread: takes everything queued, runs it in order, answers in order.
fn run_syncer(shared: &Durable, mut writer: StateWriter, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter());
        let mut flushes = Vec::new();
        for job in jobs {
            match job {
                Job::Flush { request, callback } => flushes.push((request, Some(callback))),
                Job::SaveCommitted { committed, request, purged } => {
                    // Its request joins the group's sync; the position waits for it.
                    flushes.push((request, None));
                    writer.pending = Some(PendingCommitted { committed, purged });
                }
                Job::SaveState { vote, reply } => {
                    // Every append queued before the vote is durable first.
                    flush(shared, std::mem::take(&mut flushes), &mut writer.durable_index);
                    let result = healthy(shared).and_then(|()| writer.save(shared, Some(vote), true));
                    let _ = reply.send(result);
                }
                Job::Barrier { reply } => {
                    flush(shared, std::mem::take(&mut flushes), &mut writer.durable_index);
                    let _ = reply.send(healthy(shared));
                }
            }
        }
        flush(shared, flushes, &mut writer.durable_index);
        if writer.pending.is_some() && healthy(shared).is_ok() {
            // Not synced: a committed position read back after a crash may be stale, never
            // ahead of the entries on disk. A failure is logged and fails every later write.
            let _ = writer.save(shared, None, false);
        }
    }
    tracing::debug!("raft log sync thread stops: the store was dropped");
}

fn healthy(shared: &Durable) -> io::Result<()> {
    if shared.failed.load(Ordering::Acquire) {
        return Err(sync_failed());
    }
    Ok(())
}

/// Makes a run of queued appends durable with one sync (group commit), then calls their
/// callbacks in order (a request with no callback was queued by `save_committed`), and sets
/// `durable_index` to what the log reports durable. The newest request covers every older one:
/// only the newest segment can hold unsynced entries, and no truncation happens while appends
/// are queued (it waits for the queue). The older requests still run after it, as a check that
/// costs no sync when it holds.
type Flushes = Vec<(journal::SyncRequest, Option<IOFlushed<TypeConfig>>)>;

fn flush(shared: &Durable, mut flushes: Flushes, durable_index: &mut Option<u64>) {
    let Some((newest, newest_callback)) = flushes.pop() else { return };
    let run = |request: journal::SyncRequest| {
        healthy(shared).and_then(|()| {
            request.run().map_err(|e| {
                shared.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, "fdatasync of the raft log failed: this node's log can no longer be trusted");
                journal_error("syncing the raft log", e)
            })
        })
    };
    let newest_result = run(newest);
    if let Ok(durable) = &newest_result {
        *durable_index = *durable;
    }
    for (request, callback) in flushes {
        let result = run(request).map(|_| ());
        if let Some(callback) = callback {
            callback.io_completed(result);
        }
    }
    if let Some(callback) = newest_callback {
        callback.io_completed(newest_result.map(|_| ()));
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.shared, range, usize::MAX, PurgedStart::Skip)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.durable.state()?.vote.map(vote_of))
    }

    /// A read for a replication request, which pairs the entries with the id of the entry before
    /// `start` as its `prev_log_id`: the entries must begin at `start` or not at all.
    ///
    /// openraft asks for a purged `start` only from a stream it has already replaced (a
    /// follower's log went back, say after a wipe; the leader's progress for it was reset, a
    /// snapshot chosen, and the purge it had held back went ahead). Entries from after the
    /// purged point would go out as if they followed that `prev_log_id` (a hole in the
    /// follower's log, and openraft's debug assertion ends the stream for good); an empty answer
    /// is a heartbeat at the old position instead, and the replaced stream ends at the
    /// follower's reply.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.shared, start..end, self.shared.read_bytes_max, PurgedStart::Empty)
    }
}

/// What a read whose first entries are purged returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PurgedStart {
    /// The entries the log still holds (openraft's contract for `try_get_log_entries`).
    Skip,
    /// Nothing: the caller needs the range to start where it asked.
    Empty,
}

/// Entries in `range` that the log holds, in order: the absent ones can only be at the start
/// (purged) or the end (not yet appended), never in between (the journal refuses holes).
fn read_entries(
    shared: &Shared,
    range: impl RangeBounds<u64>,
    bytes_max: usize,
    purged_start: PurgedStart,
) -> io::Result<Vec<Entry>> {
    let log = shared.log.lock().map_err(|_| poisoned())?;
    let (Some(first), Some(last)) = (log.first(), log.last()) else { return Ok(Vec::new()) };
    let asked_from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    if asked_from < first.index && purged_start == PurgedStart::Empty {
        tracing::debug!(
            asked_from,
            first_held = first.index,
            "a replication read from purged entries answered empty"
        );
        return Ok(Vec::new());
    }
    let from = asked_from.max(first.index);
    let to = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    }
    .min(last.index + 1);
    let mut entries = Vec::new();
    let mut next = from;
    while next < to {
        let frames = log
            .read_range(next, to, bytes_max)
            .map_err(|e| journal_error(&format!("reading raft log entries {next}..{to}"), e))?;
        let Some(end) = frames.last().map(|f| f.index) else {
            return Err(io::Error::other(format!("the raft log returned nothing for {next}..{to}")));
        };
        for frame in &frames {
            entries.push(decode_entry(frame)?);
        }
        next = end + 1;
        if bytes_max != usize::MAX {
            break; // a limited read: the first chunk is enough
        }
    }
    Ok(entries)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log()?;
        let last_purged_log_id = log.last_purged().map(log_id);
        let last_log_id = log.last().map(log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { shared: self.shared.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.check_healthy()?;
        let vote = stored_vote(vote);
        self.shared.durable.state()?.vote = Some(vote);
        let (reply, done) = oneshot::channel();
        self.submit(Job::SaveState { vote, reply })?;
        done.await.map_err(|_| io::Error::other("the raft log sync thread stopped"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.check_healthy()?;
        let committed = committed.as_ref().map(position);
        self.shared.durable.state()?.committed = committed;
        // Captured after every append openraft submitted before this call: the sync thread
        // writes the position once this request reports its entries durable.
        let (request, purged) = {
            let log = self.log()?;
            (log.sync_request(), log.last_purged().map(|p| p.index))
        };
        self.submit(Job::SaveCommitted { committed, request, purged })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.durable.state()?.committed.map(log_id))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.check_healthy()?;
        let request = {
            let mut log = self.shared.log.lock().map_err(|_| poisoned())?;
            for entry in entries {
                let kind = encode_payload(&entry, &mut self.scratch)?;
                log.append(entry.log_id.index, entry.log_id.leader_id.term, kind, &self.scratch)
                    .map_err(|e| journal_error(&format!("appending raft log entry {}", entry.log_id), e))?;
            }
            log.sync_request()
        };
        self.submit(Job::Flush { request, callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.check_healthy()?;
        // Earlier appends' syncs first: none of them may run on a region this rewrites.
        self.barrier().await?;
        let keep = last_log_id.map(|l| l.index);
        self.log()?
            .truncate_after(keep)
            .map_err(|e| journal_error(&format!("truncating the raft log after {keep:?}"), e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.check_healthy()?;
        self.barrier().await?;
        let mut log = self.log()?;
        let mut upto = position(&log_id);
        let keep_from = self.purge_hold.as_ref().map_or(u64::MAX, |hold| hold());
        if keep_from <= upto.index && log.last().is_some_and(|last| last.index > upto.index) {
            let Some(held) = keep_from.checked_sub(1) else {
                tracing::debug!("raft log purge through {log_id} held: every entry is still needed");
                return Ok(());
            };
            let Some(term) = log.term_of(held) else { return Ok(()) };
            tracing::debug!("raft log purge through {log_id} held at entry {held}");
            upto = journal::LogPosition { index: held, term };
        }
        log.purge_through(upto)
            .map_err(|e| journal_error(&format!("purging the raft log through {log_id}"), e))
    }
}
