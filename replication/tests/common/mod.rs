//! A cluster of real `Raft` nodes in one test process: each with its own data directory (the
//! journal's Raft log and the state machine's snapshot), its own engine, and its own TCP
//! listener on loopback, talking through this crate's transport.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{EngineLimits, StampedCommand};
use openraft::raft::ReadPolicy;
use replication::{
    net, Batch, EngineStateMachine, ExchangeNode, ExchangeRaft, LogStore, LogStoreConfig, NetConfig,
    NetworkFactory, Origin, Proposal,
};

pub type Raft = ExchangeRaft<EngineStateMachine>;

/// How long a test waits for something the cluster must do (an election, a catch-up). Generous:
/// the machine is shared; these bound a behaviour, they do not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The test configuration: the crate's defaults (heartbeat 50 ms, election 150-300 ms,
/// pre-vote on), snapshots only when a test asks, and purge right behind a snapshot.
pub fn test_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        install_snapshot_timeout: 10_000,
        ..replication::raft_config().expect("the crate's defaults are valid")
    };
    Arc::new(config.validate().expect("valid test config"))
}

pub struct TestNode {
    pub id: u64,
    pub raft: Raft,
    pub sm: EngineStateMachine,
    pub addr: String,
    pub dir: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl TestNode {
    /// Starts node `id` on `dir` (created if missing), listening on `addr` (`127.0.0.1:0` for
    /// a fresh port; a restarted node binds its old port again).
    pub async fn start(id: u64, dir: &Path, addr: &str, limits: EngineLimits) -> TestNode {
        TestNode::start_with(id, dir, addr, limits, NetConfig::default()).await
    }

    /// [`TestNode::start`] with the server's transport limits set to `net`.
    pub async fn start_with(
        id: u64,
        dir: &Path,
        addr: &str,
        limits: EngineLimits,
        net: NetConfig,
    ) -> TestNode {
        let log =
            LogStore::open(&dir.join("journal"), LogStoreConfig::default()).expect("open the log store");
        let sm = EngineStateMachine::open(&dir.join("snapshots"), limits).expect("open the state machine");
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("local addr").to_string();
        let raft =
            Raft::new(id, test_config(), NetworkFactory::new(id, NetConfig::default()), log, sm.clone())
                .await
                .expect("start raft");
        let server = tokio::spawn(net::serve(raft.clone(), listener, net));
        TestNode { id, raft, sm, addr, dir: dir.to_path_buf(), server }
    }

    pub fn node(&self) -> ExchangeNode {
        ExchangeNode { raft_addr: self.addr.clone(), api_addr: format!("api-of-{}", self.id) }
    }

    /// Stops the node as a crash would look to its peers: the listener and every connection
    /// go, openraft's tasks end, the log store is dropped (its directory lock released).
    pub async fn stop(self) -> (u64, PathBuf, String) {
        self.server.abort();
        let _ = self.server.await;
        self.raft.shutdown().await.expect("raft shuts down");
        (self.id, self.dir, self.addr)
    }

    pub fn status(&self) -> (u64, u64) {
        let (hash, seq, _) = self.sm.status().expect("state machine status");
        (hash, seq)
    }
}

async fn bind_retrying(addr: &str) -> tokio::net::TcpListener {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "bind failed, retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Starts `n` nodes (ids 1..=n) under `root` and initializes them as one cluster of voters.
pub async fn start_cluster(root: &Path, n: u64, limits: EngineLimits) -> Vec<Option<TestNode>> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Some(TestNode::start(id, &root.join(format!("n{id}")), "127.0.0.1:0", limits).await));
    }
    let members: BTreeMap<u64, ExchangeNode> = nodes.iter().flatten().map(|n| (n.id, n.node())).collect();
    nodes[0].as_ref().unwrap().raft.initialize(members).await.expect("initialize the cluster");
    nodes
}

/// The node that is leader (and knows it), waiting up to [`PATIENCE`].
pub async fn wait_leader(nodes: &[Option<TestNode>]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if let Some(node) = node {
                if node.raft.as_leader().is_ok() {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Commits `commands` (already stamped, contiguous, following what the cluster holds) as one
/// batch through whichever node leads, retrying across leader changes. Exactly once: after a
/// failed attempt, the new leader's applied state says whether the batch got in anyway (the
/// test has one batch in flight at a time).
pub async fn write_batch(nodes: &[Option<TestNode>], commands: &[StampedCommand]) -> usize {
    let first = commands.first().expect("a batch has commands").seq;
    let last = commands.last().unwrap().seq;
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "batch {first}..={last} not committed within {PATIENCE:?}");
        let i = wait_leader(nodes).await;
        let leader = nodes[i].as_ref().unwrap();
        // Everything committed before is applied on the leader after this.
        match tokio::time::timeout(
            Duration::from_secs(5),
            leader.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let (_, applied_seq) = leader.status();
        if applied_seq == last {
            return i; // an earlier attempt got in
        }
        assert_eq!(applied_seq, first - 1, "the cluster holds commands this test did not send");
        match tokio::time::timeout(
            Duration::from_secs(5),
            leader.raft.client_write(Batch::Commands(proposals(commands))),
        )
        .await
        {
            Ok(Ok(_)) => return i,
            Ok(Err(e)) => tracing::info!(error = %e, "write refused, retrying"),
            Err(_) => tracing::info!("write timed out, retrying"),
        }
    }
}

/// Stamped commands as the proposals a leader would make of them (replicas number them again,
/// in log order: the same numbers, as the commands are contiguous from what the cluster holds).
pub fn proposals(commands: &[StampedCommand]) -> Vec<Proposal> {
    commands
        .iter()
        .map(|c| Proposal {
            origin: Origin { node: 0, incarnation: 0, request: c.seq },
            timestamp_ns: c.timestamp_ns,
            command: c.command,
            replay_mark: None,
        })
        .collect()
}

/// Waits until every running node has applied through `seq`, then returns their state hashes.
pub async fn wait_applied(nodes: &[Option<TestNode>], seq: u64) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let statuses: Vec<(u64, (u64, u64))> = nodes.iter().flatten().map(|n| (n.id, n.status())).collect();
        if statuses.iter().all(|(_, (_, s))| *s >= seq) {
            return statuses.into_iter().map(|(id, (hash, _))| (id, hash)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "not every node applied through seq {seq} within {PATIENCE:?}: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A seeded workload's commands, stamped from seq 1, and the engine limits they need.
pub fn workload(count: usize, seed: u64) -> (EngineLimits, Vec<StampedCommand>) {
    let w = workload::generate(workload::Shape::SingleMarket, count, seed);
    (w.limits, w.stamped(1_000_000, 1_000))
}

/// The state hash a single engine reaches on `commands`: what every replica must reach.
pub fn reference_hash(limits: EngineLimits, commands: &[StampedCommand]) -> u64 {
    let mut engine = engine_core::Engine::new(limits);
    let mut events = Vec::new();
    for command in commands {
        events.clear();
        engine.apply(command, &mut events).expect("contiguous");
    }
    engine.state_hash()
}
