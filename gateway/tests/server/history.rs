//! What clients of a cluster saw, and the checker that holds it against the
//! nodes' Raft logs (Jepsen style): every request is recorded with its
//! outcome; at the end, with every node stopped, each node's log is read
//! from its data directory, replayed through an engine, and compared with
//! the history and with the other nodes' logs.
//!
//! Included by the test binaries that start clusters (`#[path]`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine_core::{Command, EngineLimits, EventKind, OrderId, UserId};
use journal::{EntryKind, LogEntry, RaftLog, RaftLogLimits, RaftStateFile};
use replication::types::Entry;
use replication::{Proposal, Replica};
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
                None => Outcome::Unknown { why: format!("200 without an order id: {body}") },
            },
            421 => Outcome::NotLeader,
            404 | 409 | 422 => Outcome::Rejected { code },
            400 | 401 | 403 | 429 => Outcome::NotSent { why: format!("{status} {code}") },
            _ => Outcome::Unknown { why: format!("{status} {code}") },
        }
    }
}

/// One request a client sent.
#[derive(Clone, Debug)]
pub struct Request {
    pub user: u64,
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

/// Every client's requests and sightings; shared by the client threads.
pub struct History {
    start: Instant,
    requests: Mutex<Vec<Request>>,
    sightings: Mutex<Vec<Sighting>>,
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History { start: Instant::now(), requests: Mutex::new(Vec::new()), sightings: Mutex::new(Vec::new()) }
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

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn sightings(&self) -> Vec<Sighting> {
        self.sightings.lock().unwrap().clone()
    }
}

/// One node's Raft log as it is on disk.
pub struct NodeLog {
    pub node: u64,
    /// The committed index `RAFT_STATE` holds (at most stale: every index
    /// once saved there was committed).
    pub committed: Option<u64>,
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
        NodeLog { node, committed: state.and_then(|s| s.committed).map(|p| p.index), entries }
    }

    fn at(&self, index: u64) -> Option<&LogEntry> {
        let first = self.entries.first()?.index;
        self.entries.get(usize::try_from(index.checked_sub(first)?).ok()?)
    }

    /// Every order placement in the log with a client order id: (user,
    /// client order id) -> the indexes of the entries that hold it.
    fn placements(&self) -> Result<HashMap<(u64, String), Vec<u64>>, String> {
        let mut found: HashMap<(u64, String), Vec<u64>> = HashMap::new();
        for entry in &self.entries {
            for proposal in proposals(entry).map_err(|e| format!("node {}: {e}", self.node))? {
                if let Command::PlaceOrder(order) = proposal.command {
                    if let Some(id) = order.client_order_id {
                        found
                            .entry((order.user.0 as u64, id.as_str().to_string()))
                            .or_default()
                            .push(entry.index);
                    }
                }
            }
        }
        Ok(found)
    }
}

fn proposals(entry: &LogEntry) -> Result<Vec<Proposal>, String> {
    match entry.kind {
        EntryKind::Commands => codec::decode(&entry.payload)
            .map_err(|e| format!("entry {} (commands) does not decode: {e}", entry.index)),
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
    // node recorded was committed by the cluster, and every node (they all
    // converged before they stopped) holds that prefix, entry by entry.
    let committed = logs.iter().filter_map(|l| l.committed).max().unwrap_or(0);
    let reference =
        logs.iter().find(|l| l.committed == Some(committed)).expect("a log with the committed index");
    for log in logs {
        let last = log.entries.last().map(|e| e.index).unwrap_or(0);
        if last < committed {
            violations.push(format!(
                "node {}: its log ends at {last}, before the committed index {committed}",
                log.node
            ));
        }
        let first_difference = reference
            .entries
            .iter()
            .take_while(|e| e.index <= committed)
            .find(|e| log.at(e.index).is_some_and(|mine| mine != *e));
        if let Some(entry) = first_difference {
            let mine = log.at(entry.index).unwrap();
            violations.push(format!(
                "node {} differs from node {} at committed index {}: term {} {:?} ({} bytes) against term {} {:?} ({} bytes)",
                log.node,
                reference.node,
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

    // Where each order placement is, in every log.
    let mut placements = Vec::new();
    for log in logs {
        match log.placements() {
            Ok(found) => placements.push((log.node, found)),
            Err(e) => violations.push(e),
        }
    }
    for (node, found) in &placements {
        for ((user, id), indexes) in found {
            if indexes.len() > 1 {
                violations.push(format!(
                    "node {node}: order {id} of user {user} is in the log {} times, at {indexes:?}",
                    indexes.len()
                ));
            }
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let (mut unknown_in, mut unknown_out) = (0usize, 0usize);
    for request in &requests {
        let key = (request.user, request.client_order_id.clone());
        let applied = matches!(request.outcome, Outcome::Acked { .. } | Outcome::Rejected { .. });
        *counts
            .entry(match &request.outcome {
                Outcome::Acked { .. } => "acked".to_string(),
                Outcome::Rejected { code } => format!("rejected by the engine ({code})"),
                Outcome::NotLeader => "refused not_leader".to_string(),
                Outcome::NotSent { .. } => "not sent or refused at the edge".to_string(),
                Outcome::Unknown { .. } => "unknown".to_string(),
            })
            .or_default() += 1;
        if applied {
            // In the committed prefix of every node's log, at one index.
            let indexes: Vec<(u64, Option<u64>)> =
                placements.iter().map(|(node, found)| (*node, found.get(&key).map(|v| v[0]))).collect();
            for (node, index) in &indexes {
                match index {
                    None => violations.push(format!(
                        "node {node}: {:?} order {} of user {} (sent to node {} at {:?}) is not in its log",
                        request.outcome, request.client_order_id, request.user, request.node, request.sent_at
                    )),
                    Some(index) if *index > committed => violations.push(format!(
                        "node {node}: {:?} order {} of user {} is at index {index}, after the committed {committed}",
                        request.outcome, request.client_order_id, request.user
                    )),
                    Some(_) => {}
                }
            }
            let distinct: HashSet<Option<u64>> = indexes.iter().map(|(_, i)| *i).collect();
            if distinct.len() > 1 {
                violations.push(format!(
                    "order {} of user {} is at different indexes: {indexes:?}",
                    request.client_order_id, request.user
                ));
            }
        } else {
            let found: Vec<(u64, u64)> = placements
                .iter()
                .filter_map(|(node, found)| found.get(&key).map(|v| (*node, v[0])))
                .collect();
            match &request.outcome {
                Outcome::NotLeader | Outcome::NotSent { .. } if !found.is_empty() => {
                    violations.push(format!(
                    "{:?} order {} of user {} (sent to node {} at {:?}) is in logs (node, index): {found:?}",
                    request.outcome, request.client_order_id, request.user, request.node, request.sent_at
                ))
                }
                Outcome::Unknown { .. } if found.is_empty() => unknown_out += 1,
                Outcome::Unknown { .. } => unknown_in += 1,
                _ => {}
            }
        }
    }

    // Replay of the committed prefix: order ids, fills, conservation.
    let mut replica = Replica::new(EngineLimits::default());
    let mut events = Vec::new();
    let mut order_ids: HashMap<(u64, String), OrderId> = HashMap::new();
    let mut filled: HashSet<OrderId> = HashSet::new();
    for frame in reference.entries.iter().take_while(|e| e.index <= committed) {
        let entry = match decode_entry(frame) {
            Ok(entry) => entry,
            Err(e) => {
                violations.push(format!("node {}: {e}", reference.node));
                break;
            }
        };
        events.clear();
        if let Err(e) = replica.apply_entry(&entry, &mut events) {
            violations.push(format!("node {}: replaying entry {}: {e:?}", reference.node, frame.index));
            break;
        }
        for event in &events {
            match event.kind {
                EventKind::OrderAccepted { order, user, client_order_id: Some(id), .. } => {
                    order_ids.insert((user.0 as u64, id.as_str().to_string()), order);
                }
                EventKind::Trade { maker_order, taker_order, .. } => {
                    filled.insert(maker_order);
                    filled.insert(taker_order);
                }
                _ => {}
            }
        }
    }
    let engine = replica.engine();
    for request in &requests {
        if let Outcome::Acked { order_id } = request.outcome {
            let replayed = order_ids.get(&(request.user, request.client_order_id.clone()));
            if replayed != Some(&OrderId(order_id)) {
                violations.push(format!(
                    "order {} of user {} was acknowledged as order {order_id}; the log makes it {replayed:?}",
                    request.client_order_id, request.user
                ));
            }
        }
    }
    let mut fills_seen = 0;
    let reference_placements =
        placements.iter().find(|(node, _)| *node == reference.node).map(|(_, found)| found);
    for sighting in &sightings {
        let key = (sighting.user, sighting.client_order_id.clone());
        let order = order_ids.get(&key);
        // An order the engine rejected has no order id but is in the log.
        let committed_placement = reference_placements
            .and_then(|found| found.get(&key))
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
    for log in logs {
        let commands: usize = log.entries.iter().filter_map(|e| proposals(e).ok()).map(|p| p.len()).sum();
        let _ = writeln!(
            summary,
            "node {}: {} log entries ({} commands), last index {:?}, committed {:?}",
            log.node,
            log.entries.len(),
            commands,
            log.entries.last().map(|e| e.index),
            log.committed
        );
    }
    let _ = writeln!(
        summary,
        "replayed to seq {} (state hash {:016x}); faults: {} kills ({} of them with the disk wiped), {} pauses, \
         {} partitions",
        engine.last_seq(),
        engine.state_hash(),
        faults.kills,
        faults.wipes,
        faults.pauses,
        faults.partitions
    );
    Verdict { violations, summary }
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

/// The checker itself is tested: a history and logs with known faults
/// must each be reported.
#[test]
fn the_checker_reports_lost_acknowledgements_applied_refusals_and_diverging_logs() {
    use engine_core::{
        ClientOrderId, Lots, MarketId, NewOrder, OrderKind, SelfTradePrevention, Side, Ticks, TimeInForce,
    };
    use replication::Origin;

    let place = |client_order_id: &str| Proposal {
        origin: Origin { node: 1, incarnation: 1, request: 1 },
        timestamp_ns: 1,
        // User 0 does not exist: the engine rejects the order, and it is in the log all the same.
        command: Command::PlaceOrder(NewOrder {
            user: UserId(0),
            market: MarketId(0),
            side: Side::Buy,
            kind: OrderKind::Limit { price: Ticks(100), qty: Lots(1), tif: TimeInForce::Gtc },
            client_order_id: Some(ClientOrderId::new(client_order_id).unwrap()),
            stp: SelfTradePrevention::CancelTaker,
        }),
    };
    let entry = |index: u64, client_order_id: &str| {
        let mut payload = Vec::new();
        codec::encode_append(&vec![place(client_order_id)], &mut payload).unwrap();
        LogEntry { index, term: 1, kind: EntryKind::Commands, payload }
    };
    let logs = [
        NodeLog {
            node: 1,
            committed: Some(3),
            entries: vec![entry(1, "a"), entry(2, "refused"), entry(3, "b")],
        },
        NodeLog {
            node: 2,
            committed: Some(3),
            entries: vec![entry(1, "a"), entry(2, "refused"), entry(3, "c")],
        },
    ];
    let history = History::new();
    let request = |client_order_id: &str, outcome: Outcome| Request {
        user: 0,
        client_order_id: client_order_id.into(),
        node: 1,
        sent_at: Duration::ZERO,
        answered_at: Duration::ZERO,
        outcome,
    };
    history.record(request("a", Outcome::Acked { order_id: 1 }));
    history.record(request("lost", Outcome::Acked { order_id: 2 }));
    history.record(request("refused", Outcome::NotLeader));
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
    assert_eq!(verdict.violations.len(), 7, "{:#?}", verdict.violations);
}
