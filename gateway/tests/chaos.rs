//! The chaos run: three real nodes, clients placing and cancelling orders
//! from threads without pause, a user-stream reader per client hopping
//! between nodes, and a seeded random schedule of faults (SIGKILL of the
//! leader or of a follower, SIGSTOP/SIGCONT of the leader, both at once so
//! that no majority is left, the leader or a follower cut off from the
//! others or unplugged, a follower's disk wiped; overlapping pairs: a
//! follower paused while the leader is killed, a follower cut off from the
//! leader while the leader is killed; a follower or the leader removed
//! from the membership and added back wiped; each healed before the next; killed
//! nodes restart on their data directories). Every request and every
//! stream message is recorded; at the end every node is stopped and its
//! Raft log is held against the history (`server/history.rs`).
//!
//! The nodes take snapshot images often (every [`SNAPSHOT_EVERY_ENTRIES`]
//! log entries) and keep only [`LOG_KEPT_AFTER_SNAPSHOT_ENTRIES`] entries
//! behind them, so that purges happen throughout and a wiped, rejoining or
//! long-dead follower catches up by installing the leader's image: the run
//! fails unless one did. Meanwhile a thread hard-links every Raft segment
//! file the nodes ever have (`SegmentArchive`), so that the checker can put
//! the whole committed log together although every node purged its start,
//! and holds each node's image against it (`server/history.rs`, "Purged
//! prefixes", says what that proves). `CHAOS_IMAGES=0` runs without images
//! (every node keeps its whole log, as before images existed).
//!
//! `cargo test` runs a few faults; the long run is one command:
//! `CHAOS_FAULTS=120 cargo test --release -p gateway --test chaos -- --nocapture`
//! (`CHAOS_SEED=N` replays a schedule; `CHAOS_FAULT_KINDS=KillLeader,RejoinFollower`
//! limits it to those kinds).

#[path = "server/cluster.rs"]
mod cluster;
#[path = "server/history.rs"]
mod history;
mod server;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicU64;

use cluster::{
    state_of, Cluster, Namespaces, Partition, SegmentArchive, CATCH_UP_BOUND, ELECTION_BOUND, SIGCONT,
    SIGSTOP,
};
use history::{check, Faults, History, NodeLog, Op, Outcome, Request, Sighting, StreamEvent, Streamed};
use serde_json::{json, Value};
use server::{Client, Key, ADMIN_TOKEN};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;
use workload::Rng;

/// How often every node takes a snapshot image and purges its log, in log
/// entries: a few times a second under the clients' load, so that each
/// fault meets purged logs.
const SNAPSHOT_EVERY_ENTRIES: u64 = 100;
/// Log entries a node keeps behind its image: a follower further behind
/// than this when the leader purges catches up by the image.
const LOG_KEPT_AFTER_SNAPSHOT_ENTRIES: u64 = 8;
/// The log message of an image a node got from the leader (not its own,
/// at a restart).
const INSTALLED_FROM_LEADER: &str = "received from the leader";

/// Faults in one `cargo test` run (`CHAOS_FAULTS` for the long run).
const FAULTS_DEFAULT: usize = 8;
/// Client threads, one user each.
const CLIENTS: usize = 3;
/// How long a client waits for an answer before it counts the outcome as
/// unknown and tries another node (a paused node never answers).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Every so many orders a client looks one of its earlier orders up.
const QUERY_EVERY_ORDERS: u64 = 4;
/// Every so many orders a client cancels all its open orders, so that the
/// book stays small and orders keep trading (the engine refuses orders
/// past the open-order limit).
const CANCEL_ALL_EVERY_ORDERS: u64 = 200;
/// Every so many orders a client cancels one of its resting orders (each
/// at most once: the checker finds a cancel by the order it names).
const CANCEL_EVERY_ORDERS: u64 = 3;
/// How long a user-stream reader stays on one node before it moves to
/// another, at most (ms): every node's stream gets read, across faults.
const STREAM_STAY_MS_MAX: u64 = 4_000;
/// How long a user-stream reader waits for a frame before it looks at the
/// clock (a paused node sends nothing).
const STREAM_READ_TIMEOUT: Duration = Duration::from_millis(300);
/// How long an admin call that changes the membership may take (adding a
/// member waits until it has caught up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the probe that times a failover waits for one answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the cluster runs undisturbed between faults, at most (ms).
const CALM_MS_MAX: u64 = 1_000;
/// How long a follower stays down or cut off, at most (ms).
const OUTAGE_MS_MAX: u64 = 1_500;

/// What the client threads share with the schedule.
struct Shared {
    history: History,
    /// The node the clients send orders to: the one that led last time
    /// they heard (the schedule updates it too, as service discovery would).
    leader_hint: AtomicUsize,
    stop: AtomicBool,
    /// The nodes' REST APIs, by node index.
    apis: Vec<SocketAddr>,
    /// Numbers the user-stream connections.
    connections: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PartitionLeader,
    PartitionFollower,
    UnplugLeader,
    /// The leader paused and a follower killed at once: no majority is
    /// left, so nothing may be acknowledged until they come back.
    MajorityLost,
    /// A follower killed and its disk lost: it restarts empty, gets the log
    /// again from the leader and votes only once it has caught up.
    WipeFollower,
    /// A follower paused, then the leader killed while it is: no majority
    /// until the follower is continued a moment later (with a log that may
    /// be behind); then the two elect a leader.
    PauseFollowerKillLeader,
    /// A follower removed from the membership through the admin API while
    /// clients write, killed, its disk wiped, and added back: it catches
    /// up as a learner and is promoted to voter.
    RejoinFollower,
    /// The same done to the leader: it commits its own removal and steps
    /// down, the others elect a leader, and it comes back wiped.
    RejoinLeader,
    /// A follower cut off from the leader only (the other follower hears
    /// both), then the leader killed: a majority is left throughout.
    PartitionFollowerKillLeader,
}

impl Fault {
    fn pick(rng: &mut Rng, partitions: bool, only: &[Fault]) -> Fault {
        if !only.is_empty() {
            return only[rng.below(only.len() as u64) as usize];
        }
        let all = Fault::ALL;
        let kinds = if partitions { all.len() } else { Fault::WITHOUT_PARTITIONS };
        all[rng.below(kinds as u64) as usize]
    }

    /// How many of [`Fault::ALL`], from the first, need no partitions.
    const WITHOUT_PARTITIONS: usize = 8;

    const ALL: [Fault; 12] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::MajorityLost,
        Fault::WipeFollower,
        Fault::PauseFollowerKillLeader,
        Fault::RejoinFollower,
        Fault::RejoinLeader,
        Fault::PartitionLeader,
        Fault::PartitionFollower,
        Fault::UnplugLeader,
        Fault::PartitionFollowerKillLeader,
    ];

    /// The kinds `CHAOS_FAULT_KINDS` names (`KillLeader,RejoinFollower`):
    /// a schedule of those only.
    fn only_from_env(partitions: bool) -> Vec<Fault> {
        let Ok(names) = std::env::var("CHAOS_FAULT_KINDS") else { return Vec::new() };
        names
            .split(',')
            .map(|name| {
                let fault =
                    Fault::ALL.into_iter().find(|f| format!("{f:?}") == name.trim()).unwrap_or_else(|| {
                        panic!("CHAOS_FAULT_KINDS: no fault {name:?}; the kinds: {:?}", Fault::ALL)
                    });
                let needs_partitions =
                    Fault::ALL.iter().position(|f| *f == fault).unwrap_or(0) >= Fault::WITHOUT_PARTITIONS;
                assert!(!needs_partitions || partitions, "CHAOS_FAULT_KINDS: {fault:?} needs partitions");
                fault
            })
            .collect()
    }

    fn hits_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::PauseLeader
                | Fault::PartitionLeader
                | Fault::UnplugLeader
                | Fault::PauseFollowerKillLeader
                | Fault::PartitionFollowerKillLeader
        )
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.parse().unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")))
}

#[test]
fn a_cluster_under_random_faults_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let faults_wanted = env_number("CHAOS_FAULTS").map(|n| n as usize).unwrap_or(FAULTS_DEFAULT);
    let seed = env_number("CHAOS_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    let partitions = match Namespaces::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("partitions left out of the schedule: {why}");
            false
        }
    };
    let only = Fault::only_from_env(partitions);
    let images = env_number("CHAOS_IMAGES") != Some(0);
    eprintln!(
        "chaos: seed {seed} (CHAOS_SEED={seed} replays the schedule), {faults_wanted} faults, images {}",
        if images { "on (CHAOS_IMAGES=0: off)" } else { "off" }
    );
    let mut rng = Rng::new(seed);
    // The clients place orders as fast as the cluster answers, and the
    // checks at the end query every node with every key: the per-key rate
    // limit would refuse them (a limit, not a fault under test).
    let image_config = if images {
        format!(
            "snapshot_every_entries = {SNAPSHOT_EVERY_ENTRIES}\n\
             log_kept_after_snapshot_entries = {LOG_KEPT_AFTER_SNAPSHOT_ENTRIES}"
        )
    } else {
        "snapshot_every_entries = 0".to_string()
    };
    let mut cluster = Cluster::start_configured(
        3,
        partitions,
        "rate_limit_per_s = 1000000\nrate_limit_burst = 1000000",
        &image_config,
    );
    // Before the first purge: the log's start is archived too.
    let archive = SegmentArchive::start(&cluster);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(CLIENTS);

    let shared = Arc::new(Shared {
        history: History::new(),
        leader_hint: AtomicUsize::new(leader),
        stop: AtomicBool::new(false),
        apis: cluster.nodes.iter().map(|n| n.api).collect(),
        connections: AtomicU64::new(0),
    });
    let threads: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(thread, key)| {
            let (shared, key) = (shared.clone(), key.clone());
            let seed = seed ^ (thread as u64 + 1).wrapping_mul(0x9E37_79B9);
            std::thread::spawn(move || place_orders(thread, &key, &shared, seed))
        })
        .collect();
    let readers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(thread, key)| {
            let (shared, key) = (shared.clone(), key.clone());
            let seed = seed ^ (thread as u64 + 1).wrapping_mul(0x85EB_CA6B);
            std::thread::spawn(move || read_user_stream(&key, &shared, seed))
        })
        .collect();

    let mut done = Faults::default();
    let mut probes = 0u64;
    let mut timeline = Vec::new();
    let mut failovers: Vec<(Fault, Duration)> = Vec::new();
    for number in 1..=faults_wanted {
        std::thread::sleep(Duration::from_millis(200 + rng.below(CALM_MS_MAX)));
        let mut fault = Fault::pick(&mut rng, partitions, &only);
        // A run with images wipes a disk at least once: that node can
        // catch up by nothing but the leader's image.
        if images && only.is_empty() && number == faults_wanted && done.wipes == 0 {
            fault = Fault::WipeFollower;
        }
        let leader = cluster.leader();
        shared.leader_hint.store(leader, Ordering::Relaxed);
        let follower = (leader + 1 + rng.below(2) as usize) % 3;
        let target = if fault.hits_leader() || matches!(fault, Fault::MajorityLost | Fault::RejoinLeader) {
            leader
        } else {
            follower
        };
        // The follower the overlapping faults hit besides the leader.
        let other_id = cluster.nodes[follower].id;
        let id = cluster.nodes[target].id;
        let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|other| *other != id).collect();
        let at = shared.history.since_start();
        let mut fault_at = Instant::now();
        let mut partition = None;
        let mut also = String::new();
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                cluster.nodes[target].kill();
                done.kills += 1;
            }
            Fault::PauseLeader => {
                cluster.nodes[target].signal(SIGSTOP);
                done.pauses += 1;
            }
            Fault::PartitionLeader | Fault::PartitionFollower => {
                partition = Some(Partition::isolate(&cluster, &[id], &others));
                done.partitions += 1;
            }
            Fault::UnplugLeader => {
                partition = Some(Partition::unplug(&cluster, id));
                done.partitions += 1;
            }
            Fault::MajorityLost => {
                cluster.nodes[target].signal(SIGSTOP);
                cluster.nodes[follower].kill();
                done.pauses += 1;
                done.kills += 1;
            }
            Fault::WipeFollower => {
                cluster.nodes[target].kill();
                cluster.nodes[target].wipe();
                done.kills += 1;
                done.wipes += 1;
            }
            Fault::PauseFollowerKillLeader => {
                cluster.nodes[follower].signal(SIGSTOP);
                std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
                cluster.nodes[target].kill();
                // The failover is timed from the kill.
                fault_at = Instant::now();
                let killed = shared.history.since_start();
                let paused_ms = 200 + rng.below(600);
                std::thread::sleep(Duration::from_millis(paused_ms));
                let continued = shared.history.since_start();
                cluster.nodes[follower].signal(SIGCONT);
                assert_nothing_applied(&shared.history, killed, continued, seed);
                also = format!(", node {other_id} paused from before the kill to {paused_ms} ms after it");
                done.kills += 1;
                done.pauses += 1;
                done.overlaps += 1;
            }
            Fault::PartitionFollowerKillLeader => {
                partition = Some(Partition::isolate(&cluster, &[other_id], &[id]));
                std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
                cluster.nodes[target].kill();
                fault_at = Instant::now();
                also = format!(", node {other_id} cut off from it (not from the third) from before the kill");
                done.kills += 1;
                done.partitions += 1;
                done.overlaps += 1;
            }
            Fault::RejoinFollower | Fault::RejoinLeader => {
                let took = rejoin(&mut cluster, target);
                also = format!(": removed, wiped, added back and voting after {took:?}");
                done.kills += 1;
                done.wipes += 1;
                done.rejoins += 1;
            }
        }
        let struck = shared.history.since_start();
        if fault.hits_leader() {
            let (new, first_ack) =
                probe_until_acked(&cluster, target, &keys[0], &shared.history, &mut probes);
            let first_ack = first_ack.saturating_duration_since(fault_at);
            shared.leader_hint.store(new, Ordering::Relaxed);
            failovers.push((fault, first_ack));
            timeline.push(format!(
                "{number:>3} {:>9.3}s {fault:?} node {id}{also}: node {} acknowledged an order after {first_ack:?}",
                at.as_secs_f64(),
                cluster.nodes[new].id
            ));
            eprintln!("{}", timeline[timeline.len() - 1]);
        } else {
            if !matches!(fault, Fault::RejoinFollower | Fault::RejoinLeader) {
                std::thread::sleep(Duration::from_millis(200 + rng.below(OUTAGE_MS_MAX)));
            }
            if fault == Fault::MajorityLost {
                also = format!(" paused, node {other_id} killed");
            }
            timeline.push(format!("{number:>3} {:>9.3}s {fault:?} node {id}{also}", at.as_secs_f64()));
            eprintln!("{}", timeline[timeline.len() - 1]);
        }
        // Heal: the nodes come back (a killed one restarts on its data).
        drop(partition);
        let healed = shared.history.since_start();
        for node in [target, follower] {
            if cluster.nodes[node].paused {
                cluster.nodes[node].signal(SIGCONT);
            }
            if !cluster.nodes[node].is_running() {
                cluster.nodes[node].start();
            }
        }
        if fault == Fault::WipeFollower {
            // Until it votes again, one more fault could leave no majority
            // that may elect: healed means caught up here.
            cluster.nodes[target].wait_voting();
        }
        // Both back (a restarted node counts from when it listens).
        let healed_at = Instant::now();
        if fault == Fault::MajorityLost {
            // Sent once no majority was left and answered before it came back:
            // nothing of that may have been acknowledged.
            assert_nothing_applied(&shared.history, struck, healed, seed);
            // Every node may lead now: the cluster takes orders again.
            let (new, first_ack) =
                probe_until_acked(&cluster, usize::MAX, &keys[0], &shared.history, &mut probes);
            shared.leader_hint.store(new, Ordering::Relaxed);
            eprintln!(
                "    node {} acknowledged an order {:?} after both were back",
                cluster.nodes[new].id,
                first_ack.saturating_duration_since(healed_at)
            );
        }
    }

    // Calm: the clients stop, every node catches up and they all agree.
    std::thread::sleep(Duration::from_millis(500));
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads.into_iter().chain(readers) {
        thread.join().expect("a client or stream thread panicked");
    }
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    cluster.assert_converged(&client, &keys, "the chaos run");
    let balances: Vec<(u64, serde_json::Value)> = keys
        .iter()
        .zip(state_of(&client, &keys)["balances"].as_array().unwrap().clone())
        .map(|(key, answer)| (key.user_id, answer))
        .collect();
    for node in &mut cluster.nodes {
        node.stop();
    }
    let archived = archive.finish();
    let logs: Vec<NodeLog> = cluster
        .nodes
        .iter()
        .map(|n| {
            let files = archived.iter().find(|(id, _)| *id == n.id).map_or(&[][..], |(_, files)| &files[..]);
            NodeLog::read(n.id, &n.journal_dir())
                .with_image(&n.data_dir.join("snapshots"))
                .with_archive(files)
        })
        .collect();
    let verdict = check(&shared.history, &logs, &balances, &done);

    eprintln!("chaos: seed {seed}, {} faults", timeline.len());
    // From the fault to the first order a new leader acknowledged (printed,
    // never asserted: the machine is shared).
    for kind in [
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::UnplugLeader,
        Fault::PauseFollowerKillLeader,
        Fault::PartitionFollowerKillLeader,
    ] {
        let mut times: Vec<Duration> = failovers.iter().filter(|f| f.0 == kind).map(|f| f.1).collect();
        if times.is_empty() {
            continue;
        }
        times.sort();
        eprintln!(
            "{kind:?} x{}: fault to the first order a new leader acknowledged: median {:?}, p90 {:?}, max {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1]
        );
    }
    eprint!("{}", verdict.summary);
    // A run that checked no cancel or no stream message would pass on
    // broken code: each happens within the first second of any run.
    let requests = shared.history.requests();
    let cancelled =
        |r: &Request| matches!(r.op, Op::Cancel { .. }) && matches!(r.outcome, Outcome::Acked { .. });
    assert!(requests.iter().any(cancelled), "seed {seed}: no cancel was acknowledged, so none was checked");
    assert!(
        !shared.history.stream_events().is_empty(),
        "seed {seed}: no user-stream message arrived, so none was checked"
    );
    if images {
        // A run with images that took none, purged nothing or installed
        // none from a leader would pass without testing them.
        let stderr = cluster.stderr();
        let installs = stderr.lines().filter(|l| l.contains(INSTALLED_FROM_LEADER)).count();
        eprintln!("chaos: {installs} snapshot images installed from a leader");
        assert!(installs > 0, "seed {seed}: no node installed an image from a leader, so none was checked");
        for log in &logs {
            assert!(
                log.purged.is_some() && matches!(log.image, Ok(Some(_))),
                "seed {seed}: node {} purged through {:?} with image {:?}: images were not exercised",
                log.node,
                log.purged,
                log.image
            );
        }
    }
    assert!(
        verdict.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\n{}",
        verdict.violations.len(),
        verdict.violations.iter().take(50).cloned().collect::<Vec<_>>().join("\n"),
        cluster
            .stderr()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(100)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Places orders on every running node but `old` until one acknowledges
/// one (each is recorded like any client's): the node that did, and when.
/// Times a failover apart from the clients, which may sit on the old
/// leader until their timeout.
fn probe_until_acked(
    cluster: &Cluster,
    old: usize,
    key: &Key,
    history: &History,
    probes: &mut u64,
) -> (usize, Instant) {
    let deadline = Instant::now() + ELECTION_BOUND;
    let clients: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    let mut last = String::new();
    loop {
        for (index, node) in cluster.nodes.iter().enumerate() {
            if index == old || !node.is_running() || node.paused {
                continue;
            }
            *probes += 1;
            let client_order_id = format!("probe-{probes}");
            let order = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "90",
                                "quantity": "0.02", "time_in_force": "IOC", "client_order_id": client_order_id });
            let sent_at = history.since_start();
            let answer = clients[index].try_signed(key, "POST", "/order", "", Some(order), PROBE_TIMEOUT);
            let answered = Instant::now();
            let outcome = Outcome::of_answer(&answer);
            // An engine's rejection went through the log too.
            let acked = matches!(outcome, Outcome::Acked { .. } | Outcome::Rejected { .. });
            last = format!("node {}: {outcome:?} {answer:?}", node.id);
            history.record(Request {
                user: key.user_id,
                op: Op::Place,
                client_order_id,
                node: node.id,
                sent_at,
                answered_at: history.since_start(),
                outcome,
            });
            if acked {
                return (index, answered);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node took an order within {ELECTION_BOUND:?} of a fault; the last answer: {last}; {}",
            cluster.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fails the run if a command sent at `from` or later and answered before
/// `to` was applied: no majority was left meanwhile.
fn assert_nothing_applied(history: &History, from: Duration, to: Duration, seed: u64) {
    let premature: Vec<Request> = history
        .requests()
        .into_iter()
        .filter(|r| r.sent_at >= from && r.answered_at < to)
        .filter(|r| matches!(r.outcome, Outcome::Acked { .. } | Outcome::Rejected { .. }))
        .collect();
    assert!(premature.is_empty(), "seed {seed}: acknowledged without a majority: {premature:#?}");
}

/// One admin call on the membership through the node that leads now
/// (waiting for one): its status and answer, or why there was none.
fn membership_call(cluster: &Cluster, method: &str, body: &Value) -> Result<(u16, Value), String> {
    let leader = cluster.leader();
    let body = body.to_string();
    server::try_raw_within(
        cluster.nodes[leader].api,
        method,
        "/admin/cluster/members",
        &[("X-Admin-Token", ADMIN_TOKEN)],
        body.as_bytes(),
        MEMBERSHIP_TIMEOUT,
    )
    .map(|(status, _, answer)| (status, answer))
}

/// Removes `target` (a follower, or the leader: it commits its own removal
/// and steps down) from the membership, kills it, wipes its disk, starts it
/// and adds it back as a voter through whichever node leads then, while the
/// clients go on; returns once it votes again, with how long all that took.
fn rejoin(cluster: &mut Cluster, target: usize) -> Duration {
    let started = Instant::now();
    let deadline = started + CATCH_UP_BOUND;
    let id = cluster.nodes[target].id;
    loop {
        match membership_call(cluster, "DELETE", &json!({ "id": id })) {
            Ok((200, _)) => break,
            // An earlier attempt that timed out went through after all.
            Ok((400, answer))
                if answer["error"]["message"].as_str().is_some_and(|m| m.contains("not a member")) =>
            {
                break
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "node {id} was not removed: {other:?}; {}",
                    cluster.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    cluster.nodes[target].kill();
    cluster.nodes[target].wipe();
    cluster.nodes[target].start();
    let member = cluster.nodes[target].member(false);
    // The leader answers once the new log is close to its own (a long run's
    // log takes a while to send), or that it is not yet: then it is asked again.
    let deadline = Instant::now() + 3 * CATCH_UP_BOUND;
    loop {
        match membership_call(cluster, "POST", &member) {
            Ok((200, answer)) => {
                let role =
                    answer["members"].as_array().and_then(|all| all.iter().find(|m| m["id"] == id).cloned());
                assert_eq!(role.as_ref().map(|m| m["role"].clone()), Some(json!("voter")), "{answer}");
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "node {id} was not added back: {other:?}; {}",
                    cluster.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    cluster.nodes[target].wait_voting();
    started.elapsed()
}

/// Reads the native user stream of `key`'s user (`LOGIN` on a WebSocket at
/// a node's REST port), moving to another node now and then and whenever
/// one fails; records every message with its connection.
fn read_user_stream(key: &Key, shared: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        let node = rng.below(shared.apis.len() as u64) as usize;
        let connection = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let stay = Duration::from_millis(500 + rng.below(STREAM_STAY_MS_MAX));
        let mut seen = Vec::new();
        // A node that is down, paused, unplugged or not yet caught up fails
        // here or later: the reader moves on either way.
        let _ = stream_from(shared.apis[node], key, shared, stay, |data| {
            let (seq, said) = Streamed::of_message(data);
            seen.push(StreamEvent { user: key.user_id, node: node as u64 + 1, connection, seq, said });
        });
        shared.history.streamed(seen);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One user-stream connection to `api` for `stay` (or until the run
/// stops): every `user` message's `data` goes to `on_message`.
fn stream_from(
    api: SocketAddr,
    key: &Key,
    shared: &Shared,
    stay: Duration,
    mut on_message: impl FnMut(&Value),
) -> Result<(), String> {
    let until = Instant::now() + stay;
    let stream =
        TcpStream::connect_timeout(&api, Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let (mut socket, _) = tungstenite::client(format!("ws://{api}/"), MaybeTlsStream::Plain(stream))
        .map_err(|e| format!("handshake: {e}"))?;
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let signed = format!("apiKey={}&timestamp={timestamp}", key.api_key);
    let signature = gateway::auth::sign(&key.secret, &signed, b"");
    let login = json!({ "method": "LOGIN", "params": { "apiKey": key.api_key, "timestamp": timestamp,
                                                       "signature": signature }, "id": 1 });
    socket.send(Message::text(login.to_string())).map_err(|e| format!("login: {e}"))?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(STREAM_READ_TIMEOUT)).map_err(|e| e.to_string())?;
    }
    let mut logged_in = false;
    while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
        let message = match socket.read() {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => return Err("closed".into()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        let message: Value = serde_json::from_str(&message).map_err(|e| format!("{e}: {message}"))?;
        if message["id"] == 1 {
            if message["status"] != 200 {
                return Err(format!("login refused: {message}"));
            }
            logged_in = true;
        } else if message["stream"] == "user" {
            assert!(logged_in, "a user-stream message before the login was answered: {message}");
            on_message(&message["data"]);
        }
    }
    let _ = socket.close(None);
    Ok(())
}

/// One client: places orders on the node it believes leads, follows
/// `X-Leader` and tries other nodes when one fails, cancels some of its
/// resting orders, and now and then looks up one of its earlier orders on
/// any node. Every order and cancel is recorded.
fn place_orders(thread: usize, key: &Key, shared: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    let clients: Vec<Client> = shared.apis.iter().map(|a| Client::new(*a)).collect();
    // Client order id, and the order id when acknowledged.
    let mut sent: Vec<(String, Option<u64>)> = Vec::new();
    // Acknowledged GTC orders not cancelled yet: order id, client order id.
    let mut resting: Vec<(u64, String)> = Vec::new();
    let mut number = 0u64;
    // Sends one change to the node the clients believe leads, records it,
    // and moves that belief on when the node refuses or fails.
    let send = |rng: &mut Rng, op: Op, label: String, method: &str, path: &str, query: &str, body| {
        let node = shared.leader_hint.load(Ordering::Relaxed);
        let sent_at = shared.history.since_start();
        let answer = clients[node].try_signed(key, method, path, query, body, CLIENT_TIMEOUT);
        let outcome = Outcome::of_answer(&answer);
        shared.history.record(Request {
            user: key.user_id,
            op,
            client_order_id: label,
            node: node as u64 + 1,
            sent_at,
            answered_at: shared.history.since_start(),
            outcome: outcome.clone(),
        });
        match outcome {
            Outcome::Acked { .. } | Outcome::Rejected { .. } => {}
            Outcome::NotLeader => {
                let named =
                    answer.ok().and_then(|(_, _, body)| body["error"]["leader"].as_str().map(String::from));
                let next = named
                    .and_then(|api| shared.apis.iter().position(|a| a.to_string() == api))
                    .unwrap_or_else(|| (node + 1 + rng.below(2) as usize) % clients.len());
                let _ = shared.leader_hint.compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Outcome::NotSent { .. } | Outcome::Unknown { .. } => {
                let next = (node + 1 + rng.below(2) as usize) % clients.len();
                let _ = shared.leader_hint.compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        outcome
    };
    while !shared.stop.load(Ordering::Relaxed) {
        number += 1;
        let client_order_id = format!("t{thread}-{number}");
        let side = if rng.below(2) == 0 { "buy" } else { "sell" };
        // Prices around 100 on both sides: orders cross often, so trades happen.
        let price = 95 + rng.below(11);
        let tif = if rng.below(3) == 0 { "IOC" } else { "GTC" };
        let order = json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price.to_string(),
                            "quantity": "0.02", "time_in_force": tif, "client_order_id": client_order_id });
        let outcome = send(&mut rng, Op::Place, client_order_id.clone(), "POST", "/order", "", Some(order));
        let order_id = match outcome {
            Outcome::Acked { order_id } => Some(order_id),
            _ => None,
        };
        if let (Some(order_id), "GTC") = (order_id, tif) {
            resting.push((order_id, client_order_id.clone()));
        }
        sent.push((client_order_id, order_id));
        if number.is_multiple_of(CANCEL_EVERY_ORDERS) && !resting.is_empty() {
            // It may have filled meanwhile: then the engine refuses the
            // cancel (404), in the log all the same.
            // Mostly one of the newest: older ones have often traded away.
            let newest = resting.len().saturating_sub(4) as u64;
            let pick = if rng.below(4) == 0 {
                rng.below(resting.len() as u64)
            } else {
                newest + rng.below(resting.len() as u64 - newest)
            };
            let (order_id, label) = resting.swap_remove(pick as usize);
            let query = format!("order_id={order_id}");
            send(&mut rng, Op::Cancel { order_id }, label, "DELETE", "/order", &query, None);
        }
        if number.is_multiple_of(CANCEL_ALL_EVERY_ORDERS) {
            let outcome =
                send(&mut rng, Op::CancelAll, "cancel-all".into(), "POST", "/order/cancel_all", "", None);
            if matches!(outcome, Outcome::Acked { .. }) {
                resting.clear();
            }
        }
        if number.is_multiple_of(QUERY_EVERY_ORDERS) {
            let (looked_up, order_id) = &sent[rng.below(sent.len() as u64) as usize];
            let at = rng.below(clients.len() as u64) as usize;
            // By order id when known: closed orders are found that way too.
            let query = match order_id {
                Some(order_id) => format!("order_id={order_id}"),
                None => format!("client_order_id={looked_up}"),
            };
            if let Ok((200, _, found)) =
                clients[at].try_signed(key, "GET", "/order", &query, None, CLIENT_TIMEOUT)
            {
                let filled =
                    found["filled_quantity"].as_str().is_some_and(|q| !q.trim_matches(['0', '.']).is_empty());
                shared.history.saw(Sighting {
                    user: key.user_id,
                    // As the node tells it: it must be the order looked up.
                    client_order_id: found["client_order_id"].as_str().unwrap_or("").to_string(),
                    order_id: found["order_id"].as_u64(),
                    node: at as u64 + 1,
                    filled,
                });
            }
        }
    }
}
