//! What clients of a cluster saw, and the checker that holds it against the
//! nodes' Raft logs (Jepsen style): every request is recorded with its
//! outcome; at the end, with every node stopped, each node's log is read
//! from its data directory, replayed through an engine, and compared with
//! the history and with the other nodes' logs.
//!
//! # Purged prefixes
//!
//! With snapshot images on, every node's log starts after its purge point,
//! and its image (`<data>/snapshots/raft-snapshot.img`) holds the state
//! there. The checker then proves:
//!
//! * **The committed log, whole.** It is put together from every node's
//!   log and from the segment files the harness hard-linked while the nodes
//!   ran (`SegmentArchive` in `server/cluster.rs`), which keep what a node
//!   later purged, truncated or lost with its disk. Only entries known to be
//!   committed are taken: those of the node that recorded the highest
//!   committed index, and, from any other log or archived segment, the
//!   entries up to one that has the same index and term as a committed
//!   entry or an image's position (Raft's Log Matching: two logs that agree
//!   at one index agree before it). An archived entry there that differs is
//!   a violation; an index no evidence holds is one too (the checker says
//!   it cannot replay past it), never silently skipped. This relies on Log
//!   Matching to tell committed archived entries from stale ones; an
//!   implementation that broke it would show as a node log or an image that
//!   differs from the log put together, below.
//! * **Each node's image is of the committed log.** The replay of the
//!   committed log reaches each image's index with the image's term, the
//!   image's sequence number and its state hash (the whole engine: books,
//!   balances, order ids, client order ids). A node purged past its image is
//!   a violation (it could not restart).
//! * **Each node's log after its purge point** equals the committed log
//!   entry by entry, as without images.
//! * **Every acknowledged command is committed**: in the committed log at
//!   one index, once; and on every node either in its log at that index or
//!   at or before its image's index, where the image's state was shown
//!   equal to the replay's, which applied the command. A command refused
//!   before the log (`421`, edge refusals) is in no log, no archived segment
//!   and not in the committed log.
//! * Everything the replay checks (order ids, cancels, fills, streams,
//!   balances, conservation) runs over the whole committed log, as without
//!   images.
//!
//! What it does not prove with images on: that a node's own log, before
//! its purge point, held the committed entries (its image's state hash
//! stands for them), nor anything of an entry that lived in a segment file
//! for less than the archive's poll interval (none does in these runs: a
//! segment lives until it is full or its node installs an image or is
//! wiped; a gap would be reported, not passed).
//!
//! Included by the test binaries that start clusters (`#[path]`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine_core::{Command, DoneReason, EngineLimits, EventKind, OrderId, OrderRef, UserId};
use journal::{EntryKind, LogEntry, RaftLog, RaftLogLimits, RaftStateFile};
use replication::openraft::EntryPayload;
use replication::types::Entry;
use replication::{Batch, Proposal, Replica};
use serde_json::Value;

/// What became of one request, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200: applied, with the engine's order id.
    Acked { order_id: u64 },
    /// Refused by the engine after it applied the command (409, 404, 422):
    /// in the log.
    Rejected { code: String },
    /// `421 not_leader`: appended nowhere.
    NotLeader,
    /// Refused at the edge before any proposal (authentication, rate
    /// limit) or never sent (no connection): not in the log either.
    NotSent { why: String },
    /// `504`, or the connection broke after the request went out: may or
    /// may not be in the log.
    Unknown { why: String },
}

impl Outcome {
    /// Classifies an answer to `POST /order` (or the transport's failure).
    pub fn of_answer(answer: &Result<(u16, String, Value), String>) -> Outcome {
        let (status, body) = match answer {
            Ok((status, _, body)) => (*status, body),
            // A connection that was never made carried nothing.
            Err(e) if e.starts_with("connect:") => return Outcome::NotSent { why: e.clone() },
            Err(e) => return Outcome::Unknown { why: e.clone() },
        };
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        match status {
            200 => match body["order_id"].as_u64() {
                Some(order_id) => Outcome::Acked { order_id },
                // A cancel-all names no one order.
                None if body["cancelled"].is_u64() => Outcome::Acked { order_id: 0 },
                None => Outcome::Unknown { why: format!("200 without an order id: {body}") },
            },
            421 => Outcome::NotLeader,
            404 | 409 | 422 => Outcome::Rejected { code },
            400 | 401 | 403 | 429 => Outcome::NotSent { why: format!("{status} {code}") },
            _ => Outcome::Unknown { why: format!("{status} {code}") },
        }
    }
}

/// What a request asked for: each kind is found in the logs its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /order`, found by its client order id.
    Place,
    /// `DELETE /order?order_id=`, found by the order it names: a client
    /// cancels each order at most once, so the pair is unique in the log.
    Cancel { order_id: u64 },
    /// `POST /order/cancel_all`: nothing names one in the log, so these are
    /// counted per user.
    CancelAll,
}

/// One request a client sent.
#[derive(Clone, Debug)]
pub struct Request {
    pub user: u64,
    pub op: Op,
    /// The placed order's (for a cancel, a label for the messages).
    pub client_order_id: String,
    /// The node it went to.
    pub node: u64,
    /// Since the history began.
    pub sent_at: Duration,
    pub answered_at: Duration,
    pub outcome: Outcome,
}

/// An order a client found by querying a node.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub user: u64,
    pub client_order_id: String,
    /// The order id the node showed with it.
    pub order_id: Option<u64>,
    pub node: u64,
    /// Whether it showed a fill.
    pub filled: bool,
}

/// What one user-stream message said, kept small (a long run sees
/// hundreds of thousands).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Streamed {
    Fill {
        order_id: u64,
        trade_id: u64,
    },
    /// An `order` message: its order and status.
    Order {
        order_id: u64,
        status: String,
    },
    /// A `balance` message as the node wrote it (decimal strings).
    Balance {
        asset: String,
        available: String,
        locked: String,
    },
    /// Anything else, as received: the workload makes nothing else.
    Other(String),
}

impl Streamed {
    /// Reads a native user-stream message's `data`: (its sequence number,
    /// what it said).
    pub fn of_message(data: &Value) -> (Option<u64>, Streamed) {
        let text = |field: &str| data[field].as_str().unwrap_or("").to_string();
        let number = |field: &str| data[field].as_u64();
        let said = match (data["e"].as_str(), number("order_id"), number("trade_id")) {
            (Some("fill"), Some(order_id), Some(trade_id)) => Streamed::Fill { order_id, trade_id },
            (Some("order"), Some(order_id), _) => Streamed::Order { order_id, status: text("status") },
            (Some("balance"), _, _) => Streamed::Balance {
                asset: text("asset"),
                available: text("available"),
                locked: text("locked"),
            },
            _ => Streamed::Other(data.to_string()),
        };
        (number("E"), said)
    }
}

/// One user-stream message a client received.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    pub user: u64,
    pub node: u64,
    /// Numbers the connection (per history): order and duplicates are
    /// checked within one.
    pub connection: u64,
    /// The `E` of the message: the sequence number of its command.
    pub seq: Option<u64>,
    pub said: Streamed,
}

/// Every client's requests and sightings; shared by the client threads.
pub struct History {
    start: Instant,
    requests: Mutex<Vec<Request>>,
    sightings: Mutex<Vec<Sighting>>,
    streamed: Mutex<Vec<StreamEvent>>,
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            requests: Mutex::new(Vec::new()),
            sightings: Mutex::new(Vec::new()),
            streamed: Mutex::new(Vec::new()),
        }
    }

    pub fn since_start(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn record(&self, request: Request) {
        self.requests.lock().unwrap().push(request);
    }

    pub fn saw(&self, sighting: Sighting) {
        self.sightings.lock().unwrap().push(sighting);
    }

    pub fn streamed(&self, events: Vec<StreamEvent>) {
        self.streamed.lock().unwrap().extend(events);
    }

    pub fn stream_events(&self) -> Vec<StreamEvent> {
        self.streamed.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn sightings(&self) -> Vec<Sighting> {
        self.sightings.lock().unwrap().clone()
    }
}

/// One node's Raft log as it is on disk, with its snapshot image and what
/// the harness archived of its segments while it ran.
pub struct NodeLog {
    pub node: u64,
    /// The committed index `RAFT_STATE` holds (at most stale: every index
    /// once saved there was committed).
    pub committed: Option<u64>,
    /// The last purged index: the log holds nothing at or below it.
    pub purged: Option<u64>,
    /// The node's snapshot image (`Err`: it does not read or decode).
    pub image: Result<Option<ImageAt>, String>,
    pub entries: Vec<LogEntry>,
    /// Runs of contiguous entries read from the segment files the harness
    /// archived while the node ran (`SegmentArchive`): what was in its log
    /// at some time, committed or not (a truncated or wiped tail too).
    pub archived: Vec<ArchivedRun>,
}

/// Where a node's snapshot image stands and what state it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageAt {
    pub index: u64,
    pub term: u64,
    /// The engine's sequence number in the image.
    pub seq: u64,
    /// The image engine's state hash (`decode_image` checked it against
    /// the one recorded).
    pub state_hash: u64,
}

/// The entries of one archived segment file, from its first frame to the
/// first that is not the next valid one.
pub struct ArchivedRun {
    pub file: String,
    pub entries: Vec<LogEntry>,
}

impl NodeLog {
    /// Reads the log in `journal_dir` (the node must be stopped: the log is
    /// locked while a node runs).
    pub fn read(node: u64, journal_dir: &Path) -> NodeLog {
        let log = RaftLog::open(journal_dir, RaftLogLimits::default()).unwrap_or_else(|e| {
            panic!("node {node}: the raft log in {} does not open: {e}", journal_dir.display())
        });
        let (_, state) = RaftStateFile::open(journal_dir).unwrap_or_else(|e| {
            panic!("node {node}: RAFT_STATE in {} does not open: {e}", journal_dir.display())
        });
        let entries = match log.first().zip(log.last()) {
            Some((first, last)) => log
                .read_range(first.index, last.index + 1, usize::MAX)
                .unwrap_or_else(|e| panic!("node {node}: reading the raft log: {e}")),
            None => Vec::new(),
        };
        NodeLog {
            node,
            committed: state.and_then(|s| s.committed).map(|p| p.index),
            purged: log.last_purged().map(|p| p.index),
            image: Ok(None),
            entries,
            archived: Vec::new(),
        }
    }

    /// Adds the snapshot image kept in `snapshots_dir`, if any.
    pub fn with_image(mut self, snapshots_dir: &Path) -> NodeLog {
        self.image = match replication::read_image_file(snapshots_dir) {
            Ok(None) => Ok(None),
            Ok(Some((image, _))) => match image.meta.last_log_id {
                Some(at) => Ok(Some(ImageAt {
                    index: at.index,
                    term: at.leader_id.term,
                    seq: image.engine.last_seq(),
                    state_hash: image.engine.state_hash(),
                })),
                None => Err("an image of no log position".into()),
            },
            Err(e) => Err(e.to_string()),
        };
        self
    }

    /// Adds the segment files the harness archived of this node.
    pub fn with_archive(mut self, files: &[std::path::PathBuf]) -> NodeLog {
        for file in files {
            let entries = read_archived_segment(file)
                .unwrap_or_else(|e| panic!("node {}: archived segment {}: {e}", self.node, file.display()));
            let file = file.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            self.archived.push(ArchivedRun { file, entries });
        }
        self
    }

    fn image_at(&self) -> Option<ImageAt> {
        self.image.as_ref().ok().copied().flatten()
    }

    fn at(&self, index: u64) -> Option<&LogEntry> {
        let first = self.entries.first()?.index;
        self.entries.get(usize::try_from(index.checked_sub(first)?).ok()?)
    }

    /// Where each client command is in the log.
    fn ops(&self) -> Result<LogOps, String> {
        ops_of(&self.entries).map_err(|e| format!("node {}: {e}", self.node))
    }
}

/// The valid frames of one segment file, in order from its header's first
/// index, up to the first frame that is not the next one (the end of what
/// was written, or a tail torn by a kill).
fn read_archived_segment(path: &Path) -> Result<Vec<LogEntry>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let header = bytes.get(..journal::SEGMENT_HEADER_BYTES).ok_or("shorter than a segment header")?;
    let header = journal::RaftSegmentHeader::decode(header)?;
    let mut entries = Vec::new();
    let mut offset = journal::SEGMENT_HEADER_BYTES;
    while let journal::RaftFrameRead::Entry(frame) = journal::read_raft_frame(&bytes, offset) {
        if frame.position.index != header.first_index + entries.len() as u64 {
            break;
        }
        entries.push(LogEntry {
            index: frame.position.index,
            term: frame.position.term,
            kind: frame.kind,
            payload: frame.payload.to_vec(),
        });
        offset = frame.next_offset;
    }
    Ok(entries)
}

/// Where each client command is in `entries`.
fn ops_of(entries: &[LogEntry]) -> Result<LogOps, String> {
    let mut found = LogOps::default();
    for entry in entries {
        for proposal in proposals(entry)? {
            match proposal.command {
                Command::PlaceOrder(order) => {
                    if let Some(id) = order.client_order_id {
                        found
                            .places
                            .entry((order.user.0 as u64, id.as_str().to_string()))
                            .or_default()
                            .push(entry.index);
                    }
                }
                Command::CancelOrder { user, order: OrderRef::Id(order) } => {
                    found.cancels.entry((user.0 as u64, order.0)).or_default().push(entry.index);
                }
                Command::CancelAll { user, .. } => {
                    found.cancel_alls.entry(user.0 as u64).or_default().push(entry.index)
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// The index of a cluster's first log entry (the membership its first
/// node forms the cluster with): the committed log starts there.
const LOG_FIRST_INDEX: u64 = 0;

/// The committed log, index by index, with where each entry was read.
struct CommittedLog {
    /// Contiguous from the lowest index any evidence holds.
    entries: Vec<LogEntry>,
    /// For each entry, where it was read ("node 2", "node 1's archived
    /// segment <file>").
    sources: Vec<String>,
    /// How many entries came from archived segments only.
    from_archive: usize,
}

/// Puts the committed log together (see "Purged prefixes" in the checker's
/// documentation): the entries through `recorded` (the highest committed
/// index a node recorded) of `logs[reference]` first; then, until nothing changes, every run of entries (a node's log, an
/// archived segment) that holds an entry of the same index and term as one
/// already known to be committed (an entry of the committed log, or a
/// node's image position) contributes its entries up to that one: a Raft
/// log that agrees with the committed log at one index agrees with it at
/// every index before (Log Matching). A run's entries past its last such
/// anchor are not used: they may be an uncommitted tail that was truncated
/// or wiped. Entries that contradict the committed log there are reported.
fn committed_log(
    logs: &[NodeLog],
    reference: usize,
    recorded: u64,
    committed: u64,
    violations: &mut Vec<String>,
) -> CommittedLog {
    let mut known: BTreeMap<u64, (&LogEntry, String)> = BTreeMap::new();
    for entry in logs[reference].entries.iter().take_while(|e| e.index <= recorded) {
        known.insert(entry.index, (entry, format!("node {}", logs[reference].node)));
    }
    // Image positions: committed (an image is of applied entries), with
    // the term there.
    let images: HashMap<u64, u64> =
        logs.iter().filter_map(|l| l.image_at()).map(|image| (image.index, image.term)).collect();
    // The nodes' logs first: an entry is counted as read from an archived
    // segment only when no node's log holds it.
    let mut runs: Vec<(String, &[LogEntry], bool)> =
        logs.iter().map(|log| (format!("node {}", log.node), log.entries.as_slice(), false)).collect();
    for log in logs {
        for run in &log.archived {
            runs.push((
                format!("node {}'s archived segment {}", log.node, run.file),
                run.entries.as_slice(),
                true,
            ));
        }
    }
    let mut anchors: Vec<Option<u64>> = vec![None; runs.len()];
    let mut from_archive = HashSet::new();
    loop {
        let mut changed = false;
        for (number, (source, entries, archived)) in runs.iter().enumerate() {
            let anchor = entries.iter().rev().filter(|e| e.index <= committed).find(|e| {
                known.get(&e.index).map(|(k, _)| k.term).or_else(|| images.get(&e.index).copied())
                    == Some(e.term)
            });
            let Some(anchor) = anchor.map(|e| e.index) else { continue };
            if anchors[number].is_some_and(|before| before >= anchor) {
                continue;
            }
            anchors[number] = Some(anchor);
            changed = true;
            for entry in entries.iter().take_while(|e| e.index <= anchor) {
                match known.get(&entry.index) {
                    None => {
                        known.insert(entry.index, (entry, source.clone()));
                        if *archived {
                            from_archive.insert(entry.index);
                        }
                    }
                    // A node's log is compared entry by entry later.
                    Some((mine, from)) if *archived && *mine != entry => violations.push(format!(
                        "{source} differs from {from} at committed index {}: term {} {:?} ({} bytes) against \
                         term {} {:?} ({} bytes)",
                        entry.index,
                        entry.term,
                        entry.kind,
                        entry.payload.len(),
                        mine.term,
                        mine.kind,
                        mine.payload.len()
                    )),
                    Some(_) => {}
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut log = CommittedLog { entries: Vec::new(), sources: Vec::new(), from_archive: from_archive.len() };
    for index in LOG_FIRST_INDEX..=committed {
        match known.get(&index) {
            Some((entry, source)) => {
                log.entries.push((*entry).clone());
                log.sources.push(source.clone());
            }
            None => {
                let next = known.range(index..).next().map(|(i, _)| *i);
                violations.push(format!(
                    "committed entries {index} to {} are in no node's log and in no archived segment: the \
                     checker cannot replay them",
                    next.map_or(committed, |n| n - 1),
                ));
                break;
            }
        }
    }
    log
}

/// The client commands in one log, each with the indexes of the entries
/// that hold it.
#[derive(Default)]
struct LogOps {
    /// (user, client order id).
    places: HashMap<(u64, String), Vec<u64>>,
    /// (user, order id) of cancels by order id.
    cancels: HashMap<(u64, u64), Vec<u64>>,
    /// user -> its cancel-alls.
    cancel_alls: HashMap<u64, Vec<u64>>,
}

impl LogOps {
    /// Where `request`'s command is (`None` for a cancel-all: not one to find).
    fn of(&self, request: &Request) -> Option<Option<&Vec<u64>>> {
        match request.op {
            Op::Place => Some(self.places.get(&(request.user, request.client_order_id.clone()))),
            Op::Cancel { order_id } => Some(self.cancels.get(&(request.user, order_id))),
            Op::CancelAll => None,
        }
    }
}

fn proposals(entry: &LogEntry) -> Result<Vec<Proposal>, String> {
    match decode_entry(entry)?.payload {
        EntryPayload::Normal(Batch::Commands(proposals)) => Ok(proposals),
        _ => Ok(Vec::new()),
    }
}

/// A journal frame as the openraft entry it stores.
fn decode_entry(frame: &LogEntry) -> Result<Entry, String> {
    replication::log_store::decode_entry(frame).map_err(|e| e.to_string())
}

/// What the run did to the cluster, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub kills: usize,
    pub pauses: usize,
    pub partitions: usize,
    /// Nodes killed and restarted with an empty data directory.
    pub wipes: usize,
    /// Two faults at once that left a majority (or lost it only briefly).
    pub overlaps: usize,
    /// Nodes removed from the membership and added back (wiped).
    pub rejoins: usize,
}

/// What the checker found.
pub struct Verdict {
    pub violations: Vec<String>,
    pub summary: String,
}

/// Holds the history against the logs of every node (all stopped) and the
/// balances the nodes served at the end (`balances`: user id -> the
/// `/balance` answer every node gave, after they converged).
pub fn check(history: &History, logs: &[NodeLog], balances: &[(u64, Value)], faults: &Faults) -> Verdict {
    let mut violations = Vec::new();
    let requests = history.requests();
    let sightings = history.sightings();

    // Committed prefixes are identical: the furthest committed index any
    // node recorded was committed by the cluster (and so is every image's
    // position), and every node (they all converged before they stopped)
    // holds that prefix, entry by entry, in its log or behind its image.
    let recorded = logs.iter().filter_map(|l| l.committed).max().unwrap_or(0);
    let reference =
        logs.iter().position(|l| l.committed == Some(recorded)).expect("a log with the committed index");
    let committed = logs.iter().filter_map(|l| l.image_at()).map(|i| i.index).fold(recorded, u64::max);
    let whole = committed_log(logs, reference, recorded, committed, &mut violations);
    let whole_at = |index: u64| {
        let first = whole.entries.first()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        Some((whole.entries.get(at)?, whole.sources.get(at)?))
    };
    for log in logs {
        let image = log.image_at();
        let last = [log.entries.last().map(|e| e.index), log.purged, image.map(|i| i.index)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        if last < committed {
            violations.push(format!(
                "node {}: its log ends at {last}, before the committed index {committed}",
                log.node
            ));
        }
        if let Err(e) = &log.image {
            violations.push(format!("node {}: its snapshot image: {e}", log.node));
        }
        // What a node purged, its image must hold: else it cannot restart.
        if let Some(purged) = log.purged.filter(|p| image.is_none_or(|i| i.index < *p)) {
            violations.push(format!(
                "node {}: its log is purged through {purged}, but its image is at {:?}",
                log.node,
                image.map(|i| i.index)
            ));
        }
        let first_difference =
            log.entries.iter().take_while(|e| e.index <= committed).find_map(|mine| {
                whole_at(mine.index).filter(|(entry, _)| *entry != mine).map(|at| (mine, at))
            });
        if let Some((mine, (entry, source))) = first_difference {
            violations.push(format!(
                "node {} differs from {source} at committed index {}: term {} {:?} ({} bytes) against term {} {:?} ({} bytes)",
                log.node,
                entry.index,
                mine.term,
                mine.kind,
                mine.payload.len(),
                entry.term,
                entry.kind,
                entry.payload.len()
            ));
        }
    }

    // Where each client command is, in every log.
    let mut ops = Vec::new();
    for log in logs {
        match log.ops() {
            Ok(found) => ops.push((log.node, found)),
            Err(e) => violations.push(e),
        }
    }
    for (node, found) in &ops {
        let placed = found.places.iter().map(|((user, id), at)| (*user, format!("order {id}"), at));
        let cancelled =
            found.cancels.iter().map(|((user, id), at)| (*user, format!("the cancel of order {id}"), at));
        for (user, what, indexes) in placed.chain(cancelled) {
            if indexes.len() > 1 {
                violations.push(format!(
                    "node {node}: {what} of user {user} is in the log {} times, at {indexes:?}",
                    indexes.len()
                ));
            }
        }
    }
    // The committed log's own: each command in it once.
    let whole_ops = match ops_of(&whole.entries) {
        Ok(found) => {
            let placed = found.places.iter().map(|((user, id), at)| (*user, format!("order {id}"), at));
            let cancelled =
                found.cancels.iter().map(|((user, id), at)| (*user, format!("the cancel of order {id}"), at));
            for (user, what, indexes) in placed.chain(cancelled) {
                if indexes.len() > 1 {
                    violations.push(format!(
                        "the committed log holds {what} of user {user} {} times, at {indexes:?}",
                        indexes.len()
                    ));
                }
            }
            Some(found)
        }
        Err(e) => {
            violations.push(format!("the committed log: {e}"));
            None
        }
    };
    let mut archived_ops = Vec::new();
    for log in logs {
        for run in &log.archived {
            match ops_of(&run.entries) {
                Ok(found) => archived_ops.push((log.node, found)),
                Err(e) => violations.push(format!("node {}'s archived segment {}: {e}", log.node, run.file)),
            }
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let (mut unknown_in, mut unknown_out) = (0usize, 0usize);
    // Per user, cancel-alls: (acknowledged or rejected, unknown outcome).
    let mut cancel_alls: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for request in &requests {
        let applied = matches!(request.outcome, Outcome::Acked { .. } | Outcome::Rejected { .. });
        let op = match request.op {
            Op::Place => "order",
            Op::Cancel { .. } => "cancel",
            Op::CancelAll => "cancel-all",
        };
        *counts
            .entry(match &request.outcome {
                Outcome::Acked { .. } => format!("{op}: acked"),
                Outcome::Rejected { code } => format!("{op}: rejected by the engine ({code})"),
                Outcome::NotLeader => format!("{op}: refused not_leader"),
                Outcome::NotSent { .. } => format!("{op}: not sent or refused at the edge"),
                Outcome::Unknown { .. } => format!("{op}: unknown"),
            })
            .or_default() += 1;
        if request.op == Op::CancelAll {
            let tally = cancel_alls.entry(request.user).or_default();
            match request.outcome {
                _ if applied => tally.0 += 1,
                Outcome::Unknown { .. } => tally.1 += 1,
                _ => {}
            }
            continue;
        }
        let what = match request.op {
            Op::Cancel { order_id } => format!("the cancel of order {order_id}"),
            _ => format!("order {}", request.client_order_id),
        };
        if applied {
            // In the committed log at one index, and on every node: in its
            // log at that index, or behind its image (whose state the
            // replay below holds against the committed log's there).
            let at = whole_ops.as_ref().and_then(|found| found.of(request).flatten()).map(|v| v[0]);
            let mut indexes: Vec<(u64, Option<u64>)> = Vec::new();
            for (node, found) in &ops {
                let index = found.of(request).flatten().map(|v| v[0]);
                indexes.push((*node, index));
                let image = logs.iter().find(|l| l.node == *node).and_then(|l| l.image_at());
                let behind_image = at.zip(image).is_some_and(|(at, image)| at <= image.index);
                match index {
                    None if behind_image => {}
                    None => violations.push(format!(
                        "node {node}: {:?} {what} of user {} (sent to node {} at {:?}) is not in its log",
                        request.outcome, request.user, request.node, request.sent_at
                    )),
                    Some(index) if index > committed => violations.push(format!(
                        "node {node}: {:?} {what} of user {} is at index {index}, after the committed {committed}",
                        request.outcome, request.user
                    )),
                    Some(_) => {}
                }
            }
            let distinct: HashSet<u64> = indexes.iter().filter_map(|(_, i)| *i).chain(at).collect();
            if distinct.len() > 1 {
                violations.push(format!(
                    "{what} of user {} is at different indexes: {indexes:?} (the committed log: {at:?})",
                    request.user
                ));
            }
        } else {
            let found: Vec<(u64, u64)> = ops
                .iter()
                .filter_map(|(node, found)| found.of(request).flatten().map(|v| (*node, v[0])))
                .collect();
            let committed_at = whole_ops.as_ref().and_then(|found| found.of(request).flatten());
            // An archived segment holds what a node ever had in its log,
            // uncommitted tails too: a refused command must be in none.
            let archived: Vec<(u64, u64)> = archived_ops
                .iter()
                .filter_map(|(node, found)| found.of(request).flatten().map(|v| (*node, v[0])))
                .collect();
            match &request.outcome {
                Outcome::NotLeader | Outcome::NotSent { .. }
                    if !found.is_empty() || committed_at.is_some() || !archived.is_empty() =>
                {
                    violations.push(format!(
                        "{:?} {what} of user {} (sent to node {} at {:?}) is in logs (node, index): {found:?}, \
                         archived segments: {archived:?}",
                        request.outcome, request.user, request.node, request.sent_at
                    ))
                }
                Outcome::Unknown { .. } if found.is_empty() && committed_at.is_none() => unknown_out += 1,
                Outcome::Unknown { .. } => unknown_in += 1,
                _ => {}
            }
        }
    }
    let reference_ops = whole_ops.as_ref();
    // Cancel-alls name nothing a log entry could be matched by: each user's
    // committed ones are at least those applied and at most those plus
    // the unknown ones (none applied twice, none refused applied).
    for (user, (applied, unknown)) in &cancel_alls {
        let logged = reference_ops
            .and_then(|found| found.cancel_alls.get(user))
            .map_or(0, |at| at.iter().filter(|i| **i <= committed).count());
        if logged < *applied || logged > applied + unknown {
            violations.push(format!(
                "user {user}: {logged} cancel-alls in the committed log; the client had {applied} applied and \
                 {unknown} with unknown outcomes"
            ));
        }
    }
    // Real time: a command answered before another was sent is before it
    // in the log (each client waits for one answer before the next).
    if let Some(found) = reference_ops {
        let mut placed: Vec<(&Request, u64)> = requests
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Acked { .. } | Outcome::Rejected { .. }))
            .filter_map(|r| Some((r, found.of(r).flatten()?[0])))
            .collect();
        let mut by_answer = placed.clone();
        by_answer.sort_by_key(|(r, _)| r.answered_at);
        placed.sort_by_key(|(r, _)| r.sent_at);
        let mut answered = by_answer.iter().peekable();
        let mut latest: Option<(&Request, u64)> = None;
        for (request, index) in &placed {
            while let Some((earlier, at)) = answered.next_if(|(r, _)| r.answered_at < request.sent_at) {
                if latest.is_none_or(|(_, max)| *at > max) {
                    latest = Some((earlier, *at));
                }
            }
            if let Some((earlier, at)) = latest.filter(|(_, at)| at > index) {
                violations.push(format!(
                    "{:?} of {} (user {}) was answered at {:?}, before {:?} of {} was sent at {:?}, but is after \
                     it in the log ({at} > {index})",
                    earlier.op,
                    earlier.client_order_id,
                    earlier.user,
                    earlier.answered_at,
                    request.op,
                    request.client_order_id,
                    request.sent_at
                ));
            }
        }
    }

    // Replay of the committed prefix: order ids, fills, cancels,
    // conservation, and what each command told each user's stream.
    let mut replica = Replica::new(EngineLimits::default());
    let mut events = Vec::new();
    let mut order_ids: HashMap<(u64, String), OrderId> = HashMap::new();
    let mut filled: HashSet<OrderId> = HashSet::new();
    // Orders closed, and the index of the entry that closed them.
    let mut done: HashMap<OrderId, (u64, DoneReason)> = HashMap::new();
    // What the users' streams may show: (user, seq) -> what, with how many
    // times the command said it.
    let streamed_users: HashSet<u64> = history.stream_events().iter().map(|e| e.user).collect();
    let mut told: BTreeMap<(u64, u64), HashMap<Streamed, usize>> = BTreeMap::new();
    let mut tell = |user: UserId, seq: u64, said: Streamed| {
        if streamed_users.contains(&(user.0 as u64)) {
            *told.entry((user.0 as u64, seq)).or_default().entry(said).or_default() += 1;
        }
    };
    // Each node's image, held against the replay where it stands.
    let mut images: BTreeMap<u64, Vec<(u64, ImageAt)>> = BTreeMap::new();
    for log in logs {
        if let Some(image) = log.image_at() {
            images.entry(image.index).or_default().push((log.node, image));
        }
    }
    let mut images_checked = 0usize;
    for (frame, source) in whole.entries.iter().zip(&whole.sources) {
        let entry = match decode_entry(frame) {
            Ok(entry) => entry,
            Err(e) => {
                violations.push(format!("{source}: {e}"));
                break;
            }
        };
        events.clear();
        if let Err(e) = replica.apply_entry(&entry, &mut events) {
            violations.push(format!("{source}: replaying entry {}: {e:?}", frame.index));
            break;
        }
        for (node, image) in images.remove(&frame.index).unwrap_or_default() {
            let engine = replica.engine();
            let replayed = (frame.term, engine.last_seq(), engine.state_hash());
            if (image.term, image.seq, image.state_hash) != replayed {
                violations.push(format!(
                    "node {node}: its image at index {} (term {}, seq {}, state hash {:016x}) is not the committed \
                     log's state there (term {}, seq {}, state hash {:016x})",
                    image.index, image.term, image.seq, image.state_hash, replayed.0, replayed.1, replayed.2
                ));
            }
            images_checked += 1;
        }
        let assets = replica.engine().assets();
        for event in &events {
            match event.kind {
                EventKind::OrderAccepted { order, user, client_order_id, .. } => {
                    if let Some(id) = client_order_id {
                        order_ids.insert((user.0 as u64, id.as_str().to_string()), order);
                    }
                    tell(user, event.seq, Streamed::Order { order_id: order.0, status: "new".into() });
                }
                EventKind::Trade { trade, maker_order, maker_user, taker_order, taker_user, .. } => {
                    filled.insert(maker_order);
                    filled.insert(taker_order);
                    for order in [maker_order, taker_order] {
                        if let Some((at, reason)) = done.get(&order) {
                            violations.push(format!(
                                "order {order} traded at entry {} (trade {trade}), after it closed ({reason:?}) at \
                                 entry {at}",
                                frame.index
                            ));
                        }
                    }
                    tell(
                        maker_user,
                        event.seq,
                        Streamed::Fill { order_id: maker_order.0, trade_id: trade.0 },
                    );
                    tell(
                        taker_user,
                        event.seq,
                        Streamed::Fill { order_id: taker_order.0, trade_id: trade.0 },
                    );
                }
                EventKind::OrderDone { order, user, reason, .. } => {
                    done.insert(order, (frame.index, reason));
                    let status = persistence::done_status(reason).to_string();
                    tell(user, event.seq, Streamed::Order { order_id: order.0, status });
                }
                EventKind::Balance { user, asset, available, locked } => {
                    let Some(asset) = assets.get(asset.0 as usize) else { continue };
                    // As units: the stream's decimal strings are read the same way.
                    tell(
                        user,
                        event.seq,
                        Streamed::Balance {
                            asset: asset.symbol.to_string(),
                            available: available.0.to_string(),
                            locked: locked.0.to_string(),
                        },
                    );
                }
                _ => {}
            }
        }
    }
    for (index, unchecked) in &images {
        for (node, _) in unchecked {
            violations.push(format!(
                "node {node}: its image at index {index} is past what the checker could replay of the committed log"
            ));
        }
    }
    let engine = replica.engine();
    for request in &requests {
        match (request.op, &request.outcome) {
            (Op::Place, Outcome::Acked { order_id }) => {
                let replayed = order_ids.get(&(request.user, request.client_order_id.clone()));
                if replayed != Some(&OrderId(*order_id)) {
                    violations.push(format!(
                        "order {} of user {} was acknowledged as order {order_id}; the log makes it {replayed:?}",
                        request.client_order_id, request.user
                    ));
                }
            }
            // Acknowledged: the cancel's own entry closed the order.
            (Op::Cancel { order_id }, Outcome::Acked { .. }) => {
                let at = reference_ops.and_then(|found| found.cancels.get(&(request.user, order_id)));
                let closed = done.get(&OrderId(order_id));
                let by_it =
                    matches!((at, closed), (Some(at), Some((by, DoneReason::Cancelled))) if at[0] == *by);
                if !by_it {
                    violations.push(format!(
                        "the cancel of order {order_id} of user {} was acknowledged; the log has it at {at:?} and \
                         the order closed {closed:?}",
                        request.user
                    ));
                }
            }
            _ => {}
        }
    }
    let mut fills_seen = 0;
    for sighting in &sightings {
        let key = (sighting.user, sighting.client_order_id.clone());
        let order = order_ids.get(&key);
        // An order the engine rejected has no order id but is in the log.
        let committed_placement = reference_ops
            .and_then(|found| found.places.get(&key))
            .is_some_and(|indexes| indexes[0] <= committed);
        match order {
            None if committed_placement && !sighting.filled => {}
            None => violations.push(format!(
                "node {} showed order {} of user {}, which is not in the committed log",
                sighting.node, sighting.client_order_id, sighting.user
            )),
            Some(order) if sighting.order_id.is_some_and(|id| OrderId(id) != *order) => {
                violations.push(format!(
                    "node {} showed order {} of user {} as order {:?}; the log makes it {order}",
                    sighting.node, sighting.client_order_id, sighting.user, sighting.order_id
                ))
            }
            Some(order) if sighting.filled && !filled.contains(order) => violations.push(format!(
                "node {} showed a fill of order {} of user {}; the log has no trade of it",
                sighting.node, sighting.client_order_id, sighting.user
            )),
            Some(_) => fills_seen += sighting.filled as usize,
        }
    }
    let streams = check_streams(history, engine, &told, &mut violations);
    if let Err(e) = engine.check_invariants() {
        violations.push(format!("the replayed engine breaks an invariant: {e}"));
    }
    // Conservation, stated here too: for every asset, what users hold
    // (available and locked) plus the fees equals deposits less withdrawals.
    for asset in engine.assets() {
        let totals = engine.asset_totals(asset.id).expect("a listed asset has totals");
        let held: u128 = (0..engine.user_count())
            .map(|user| {
                let balance = engine.balance(UserId(user), asset.id);
                balance.available.0 as u128 + balance.locked.0 as u128
            })
            .sum();
        if held + totals.fees.0 as u128 != totals.outstanding() {
            violations.push(format!(
                "{}: users hold {held} and fees are {}, but deposits less withdrawals are {}",
                asset.symbol,
                totals.fees.0,
                totals.outstanding()
            ));
        }
    }
    // The balances the nodes served are the log's.
    for (user, answer) in balances {
        for asset in engine.assets() {
            let Some(served) = answer["balances"]
                .as_array()
                .and_then(|all| all.iter().find(|b| b["asset"] == asset.symbol.as_str()))
            else {
                continue;
            };
            let balance = engine.balance(UserId(*user as u32), asset.id);
            let parse = |field: &str| units(served[field].as_str().unwrap_or(""), asset.decimals);
            if (parse("available"), parse("locked")) != (Some(balance.available.0), Some(balance.locked.0)) {
                violations.push(format!(
                    "user {user} {}: the nodes served {served}, the log gives {balance:?}",
                    asset.symbol
                ));
            }
        }
    }

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "history: {} requests, {} sightings ({fills_seen} with fills)",
        requests.len(),
        sightings.len()
    );
    for (what, count) in &counts {
        let _ = writeln!(summary, "  {what}: {count}");
    }
    let _ = writeln!(summary, "  unknown outcomes found in the log: {unknown_in}, not in it: {unknown_out}");
    summary.push_str(&streams);
    for log in logs {
        let commands: usize = log.entries.iter().filter_map(|e| proposals(e).ok()).map(|p| p.len()).sum();
        let _ = writeln!(
            summary,
            "node {}: {} log entries ({} commands), last index {:?}, committed {:?}, purged through {:?}, image \
             at {:?}, {} archived segments",
            log.node,
            log.entries.len(),
            commands,
            log.entries.last().map(|e| e.index),
            log.committed,
            log.purged,
            log.image_at().map(|i| (i.index, i.seq)),
            log.archived.len()
        );
    }
    let _ = writeln!(
        summary,
        "committed log: indexes {} to {committed}, {} entries of them read from archived segments only; {} \
         images held against the replay",
        whole.entries.first().map(|e| e.index).unwrap_or(LOG_FIRST_INDEX),
        whole.from_archive,
        images_checked
    );
    let _ = writeln!(
        summary,
        "replayed to seq {} (state hash {:016x}); faults: {} kills ({} of them with the disk wiped), {} pauses, \
         {} partitions, {} overlapping pairs, {} nodes removed from the membership and added back",
        engine.last_seq(),
        engine.state_hash(),
        faults.kills,
        faults.wipes,
        faults.pauses,
        faults.partitions,
        faults.overlaps,
        faults.rejoins
    );
    Verdict { violations, summary }
}

/// Holds what the user streams showed against the replay (`told`: what
/// each committed command said to each streamed user, by sequence
/// number): every message is one a committed command made, each at most as
/// often as the command made it, in order within a connection, with none
/// missing between a connection's first and last message. A summary line.
fn check_streams(
    history: &History,
    engine: &engine_core::Engine,
    told: &BTreeMap<(u64, u64), HashMap<Streamed, usize>>,
    violations: &mut Vec<String>,
) -> String {
    let decimals: HashMap<String, u8> =
        engine.assets().iter().map(|a| (a.symbol.to_string(), a.decimals)).collect();
    // Balances as units, as the replay tells them.
    let canonical = |said: &Streamed| match said {
        Streamed::Balance { asset, available, locked } => {
            let as_units = |text: &str| {
                decimals
                    .get(asset)
                    .and_then(|d| units(text, *d))
                    .map_or_else(|| format!("unreadable {text:?}"), |u| u.to_string())
            };
            Streamed::Balance {
                asset: asset.clone(),
                available: as_units(available),
                locked: as_units(locked),
            }
        }
        other => other.clone(),
    };
    let mut connections: BTreeMap<u64, Vec<StreamEvent>> = BTreeMap::new();
    for event in history.stream_events() {
        connections.entry(event.connection).or_default().push(event);
    }
    let (mut messages, mut checked_seqs) = (0usize, 0usize);
    for (connection, events) in &connections {
        let (user, node) = (events[0].user, events[0].node);
        let name = format!("user {user}'s stream connection {connection} to node {node}");
        let mut seen: BTreeMap<u64, HashMap<Streamed, usize>> = BTreeMap::new();
        let mut previous = 0u64;
        for event in events {
            messages += 1;
            let Some(seq) = event.seq else {
                violations.push(format!("{name}: a message without a sequence number: {:?}", event.said));
                continue;
            };
            if seq < previous {
                violations.push(format!("{name}: seq {seq} ({:?}) came after seq {previous}", event.said));
            }
            previous = previous.max(seq);
            *seen.entry(seq).or_default().entry(canonical(&event.said)).or_default() += 1;
        }
        let first = seen.keys().next().copied().unwrap_or(0);
        let last = seen.keys().next_back().copied().unwrap_or(0);
        for (seq, said) in &seen {
            let made = told.get(&(user, *seq));
            for (what, times) in said {
                let made_times = made.and_then(|m| m.get(what)).copied().unwrap_or(0);
                if made_times == 0 {
                    violations.push(format!(
                        "{name}: {what:?} at seq {seq}, which no command in the committed log made (the replay \
                         made {made:?} there)"
                    ));
                } else if *times > made_times {
                    violations.push(format!(
                        "{name}: {what:?} at seq {seq} {times} times; the command made it {made_times} times"
                    ));
                }
            }
        }
        // Between its first and its last message a connection misses
        // nothing of its user (the last may be cut short by the node's death).
        for ((_, seq), made) in told.range((user, first)..(user, last)) {
            checked_seqs += 1;
            let said = seen.get(seq);
            for (what, times) in made {
                let seen_times = said.and_then(|s| s.get(what)).copied().unwrap_or(0);
                if seen_times < *times {
                    violations.push(format!(
                        "{name}: missed {what:?} at seq {seq} (seen {seen_times} of {times} times) between its first \
                         message (seq {first}) and its last (seq {last})"
                    ));
                }
            }
        }
    }
    format!(
        "user streams: {} connections, {messages} messages, all of {checked_seqs} commands' messages between each \
         connection's first and last checked\n",
        connections.len()
    )
}

/// A decimal string as integer units with `decimals` decimals.
fn units(text: &str, decimals: u8) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > decimals as usize {
        return None;
    }
    let digits = format!("{whole}{fraction:0<width$}", width = decimals as usize);
    digits.parse().ok()
}

/// A log entry of one order that the engine rejects (user 0 does not
/// exist) and that is in the log all the same: the checker's own tests
/// build logs of these.
fn rejected_order_entry(index: u64, term: u64, request: u64, client_order_id: &str) -> LogEntry {
    use engine_core::{
        ClientOrderId, Lots, MarketId, NewOrder, OrderKind, SelfTradePrevention, Side, Ticks, TimeInForce,
    };
    let place = Proposal {
        origin: replication::Origin { node: 1, incarnation: 1, request },
        timestamp_ns: 1,
        command: Command::PlaceOrder(NewOrder {
            user: UserId(0),
            market: MarketId(0),
            side: Side::Buy,
            kind: OrderKind::Limit { price: Ticks(100), qty: Lots(1), tif: TimeInForce::Gtc },
            client_order_id: Some(ClientOrderId::new(client_order_id).unwrap()),
            stp: SelfTradePrevention::CancelTaker,
        }),
        replay_mark: None,
    };
    let mut payload = Vec::new();
    codec::encode_append(&vec![place], &mut payload).unwrap();
    LogEntry { index, term, kind: EntryKind::MarkedCommands, payload }
}

/// The checker itself is tested: a history and logs with known faults
/// must each be reported.
#[test]
fn the_checker_reports_lost_acknowledgements_applied_refusals_and_diverging_logs() {
    let entry = |index: u64, client_order_id: &str| rejected_order_entry(index, 1, 1, client_order_id);
    let first = LogEntry { index: LOG_FIRST_INDEX, term: 1, kind: EntryKind::Blank, payload: Vec::new() };
    let logs = [
        NodeLog {
            node: 1,
            committed: Some(3),
            purged: None,
            image: Ok(None),
            entries: vec![first.clone(), entry(1, "a"), entry(2, "refused"), entry(3, "b")],
            archived: Vec::new(),
        },
        NodeLog {
            node: 2,
            committed: Some(3),
            purged: None,
            image: Ok(None),
            entries: vec![first, entry(1, "a"), entry(2, "refused"), entry(3, "c")],
            archived: Vec::new(),
        },
    ];
    let history = History::new();
    let request = |client_order_id: &str, outcome: Outcome| Request {
        user: 0,
        op: Op::Place,
        client_order_id: client_order_id.into(),
        node: 1,
        sent_at: Duration::ZERO,
        answered_at: Duration::ZERO,
        outcome,
    };
    // "a" was sent after "b" was answered, yet "b" is after it in the logs.
    let ms = Duration::from_millis;
    history.record(Request {
        sent_at: ms(2),
        answered_at: ms(3),
        ..request("a", Outcome::Acked { order_id: 1 })
    });
    history.record(Request {
        sent_at: ms(0),
        answered_at: ms(1),
        ..request("b", Outcome::Rejected { code: "unknown_user".into() })
    });
    history.record(request("lost", Outcome::Acked { order_id: 2 }));
    history.record(request("refused", Outcome::NotLeader));
    // A cancel acknowledged, in no log; a cancel-all acknowledged, in none either.
    history
        .record(Request { op: Op::Cancel { order_id: 5 }, ..request("a", Outcome::Acked { order_id: 5 }) });
    history.record(Request { op: Op::CancelAll, ..request("cancel-all", Outcome::Acked { order_id: 0 }) });
    // A stream message that no command made, and one about a command
    // past the end of the log.
    history.streamed(vec![
        StreamEvent {
            user: 0,
            node: 2,
            connection: 1,
            seq: Some(1),
            said: Streamed::Fill { order_id: 1, trade_id: 1 },
        },
        StreamEvent {
            user: 0,
            node: 2,
            connection: 1,
            seq: Some(99),
            said: Streamed::Order { order_id: 9, status: "new".into() },
        },
    ]);
    history.saw(Sighting {
        user: 0,
        client_order_id: "ghost".into(),
        order_id: Some(9),
        node: 2,
        filled: true,
    });

    let verdict = check(&history, &logs, &[], &Faults::default());
    let found = |what: &str| verdict.violations.iter().any(|v| v.contains(what));
    assert!(found("node 2 differs from node 1 at committed index 3"), "{:#?}", verdict.violations);
    assert!(
        found("order lost of user 0 (sent to node 1 at 0ns) is not in its log"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("NotLeader order refused of user 0 (sent to node 1 at 0ns) is in logs"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("order a of user 0 was acknowledged as order 1; the log makes it None"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("node 2 showed order ghost of user 0, which is not in the committed log"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("node 1: Acked { order_id: 5 } the cancel of order 5 of user 0 (sent to node 1 at 0ns) is not in its log"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("the cancel of order 5 of user 0 was acknowledged; the log has it at None"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("user 0: 0 cancel-alls in the committed log; the client had 1 applied"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("connection 1 to node 2: Fill { order_id: 1, trade_id: 1 } at seq 1, which no command"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("Order { order_id: 9, status: \"new\" } at seq 99, which no command"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("Place of b (user 0) was answered at 1ms, before Place of a was sent at 2ms, but is after it in the log (3 > 1)"),
        "{:#?}",
        verdict.violations
    );
    // (Order b, missing from node 2's log, is reported once, as missing.)
    assert_eq!(verdict.violations.len(), 15, "{:#?}", verdict.violations);
}

/// Purged prefixes: the committed log is put together from archived
/// segments, an image of the wrong state, a log purged past its image, a
/// command behind neither a node's log nor its image, a refused command in
/// a stale archived tail, and a committed entry no evidence holds are each
/// reported; a stale archived tail is not taken for the committed log.
#[test]
fn the_checker_reports_wrong_images_and_gaps_in_purged_prefixes() {
    let entry = |index: u64, term: u64, client_order_id: &str| {
        rejected_order_entry(index, term, index, client_order_id)
    };
    let blank = LogEntry { index: LOG_FIRST_INDEX, term: 1, kind: EntryKind::Blank, payload: Vec::new() };
    let committed = vec![blank, entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c"), entry(4, 1, "d")];
    // The replay's state at each index.
    let mut replica = Replica::new(EngineLimits::default());
    let mut at = Vec::new();
    for frame in &committed {
        replica.apply_entry(&decode_entry(frame).unwrap(), &mut Vec::new()).unwrap();
        let engine = replica.engine();
        at.push(ImageAt {
            index: frame.index,
            term: 1,
            seq: engine.last_seq(),
            state_hash: engine.state_hash(),
        });
    }
    let run = |file: &str, entries: &[LogEntry]| ArchivedRun { file: file.into(), entries: entries.to_vec() };
    let logs = [
        // Purged through 2, its image there; its whole segment archived.
        NodeLog {
            node: 1,
            committed: Some(4),
            purged: Some(2),
            image: Ok(Some(at[2])),
            entries: committed[3..].to_vec(),
            archived: vec![run("1", &committed)],
        },
        // Purged through 3 but its image is at 2, and of another state.
        NodeLog {
            node: 2,
            committed: Some(4),
            purged: Some(3),
            image: Ok(Some(ImageAt { state_hash: at[2].state_hash ^ 1, ..at[2] })),
            entries: committed[4..].to_vec(),
            archived: Vec::new(),
        },
        // Whole, with a stale tail archived (a later term at 4, never
        // committed, holding a command that was refused).
        NodeLog {
            node: 3,
            committed: Some(4),
            purged: None,
            image: Ok(None),
            entries: committed.clone(),
            archived: vec![run("3", &[entry(4, 2, "refused")])],
        },
    ];
    let history = History::new();
    let request = |client_order_id: &str, outcome: Outcome| Request {
        user: 0,
        op: Op::Place,
        client_order_id: client_order_id.into(),
        node: 1,
        sent_at: Duration::ZERO,
        answered_at: Duration::ZERO,
        outcome,
    };
    for id in ["a", "b", "c", "d"] {
        history.record(request(id, Outcome::Rejected { code: "unknown_user".into() }));
    }
    history.record(request("refused", Outcome::NotLeader));

    let verdict = check(&history, &logs, &[], &Faults::default());
    let found = |what: &str| verdict.violations.iter().any(|v| v.contains(what));
    assert!(
        found("node 2: its log is purged through 3, but its image is at Some(2)"),
        "{:#?}",
        verdict.violations
    );
    assert!(found("node 2: its image at index 2 (term 1, seq 2, state hash"), "{:#?}", verdict.violations);
    assert!(
        found("node 2: Rejected { code: \"unknown_user\" } order c of user 0"),
        "{:#?}",
        verdict.violations
    );
    assert!(
        found("NotLeader order refused of user 0 (sent to node 1 at 0ns) is in logs (node, index): [], archived segments: [(3, 4)]"),
        "{:#?}",
        verdict.violations
    );
    assert_eq!(verdict.violations.len(), 4, "{:#?}", verdict.violations);
    assert!(
        verdict.summary.contains(
            "committed log: indexes 0 to 4, 0 entries of them read from archived segments only; 2 images"
        ),
        "{}",
        verdict.summary
    );

    // Without node 3 the start is only in node 1's archived segment; without
    // that too, nothing holds it.
    let verdict = check(&history, &logs[..2], &[], &Faults::default());
    assert!(
        verdict.summary.contains("3 entries of them read from archived segments only"),
        "{}",
        verdict.summary
    );
    let mut logs = logs;
    logs[0].archived.clear();
    let verdict = check(&history, &logs[..2], &[], &Faults::default());
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.contains("committed entries 0 to 2 are in no node's log and in no archived segment")),
        "{:#?}",
        verdict.violations
    );
}

/// The user-stream rules, each broken once: a message missed between a
/// connection's first and last, one repeated, one out of order.
#[test]
fn the_checker_reports_missed_repeated_and_reordered_stream_messages() {
    let new = |order_id: u64| Streamed::Order { order_id, status: "new".into() };
    let mut told: BTreeMap<(u64, u64), HashMap<Streamed, usize>> = BTreeMap::new();
    for seq in 5..=7 {
        told.entry((3, seq)).or_default().insert(new(seq), 1);
    }
    told.entry((3, 6)).or_default().insert(Streamed::Fill { order_id: 6, trade_id: 1 }, 1);
    let history = History::new();
    let event = |connection: u64, seq: u64, said: Streamed| StreamEvent {
        user: 3,
        node: 1,
        connection,
        seq: Some(seq),
        said,
    };
    history.streamed(vec![
        // Connection 1 misses the fill at 6.
        event(1, 5, new(5)),
        event(1, 6, new(6)),
        event(1, 7, new(7)),
        // Connection 2 gets the fill twice.
        event(2, 6, Streamed::Fill { order_id: 6, trade_id: 1 }),
        event(2, 6, Streamed::Fill { order_id: 6, trade_id: 1 }),
        // Connection 3 goes back; connection 4 is as it should be.
        event(3, 7, new(7)),
        event(3, 5, new(5)),
        event(4, 6, new(6)),
        event(4, 6, Streamed::Fill { order_id: 6, trade_id: 1 }),
        event(4, 7, new(7)),
    ]);
    let replica = Replica::new(EngineLimits::default());
    let mut violations = Vec::new();
    check_streams(&history, replica.engine(), &told, &mut violations);
    let found = |what: &str| violations.iter().any(|v| v.contains(what));
    assert!(
        found(
            "connection 1 to node 1: missed Fill { order_id: 6, trade_id: 1 } at seq 6 (seen 0 of 1 times)"
        ),
        "{violations:#?}"
    );
    assert!(
        found("connection 2 to node 1: Fill { order_id: 6, trade_id: 1 } at seq 6 2 times; the command made it 1"),
        "{violations:#?}"
    );
    assert!(found("connection 3 to node 1: seq 5 (Order"), "{violations:#?}");
    // Connection 3 also missed 6 between its 7 and its 5.
    assert_eq!(violations.len(), 3 + 2, "{violations:#?}");
}
