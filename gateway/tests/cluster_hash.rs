//! Hash marks in a cluster of real `exchange` processes: every node checks
//! its own state hash against the leader's marks in the log, and a node
//! whose state differs stops loudly while the others go on.

mod server;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::{Client, Key, ADMIN_TOKEN};

/// Generous bounds for behaviour (never for speed).
const ELECTION_BOUND: Duration = Duration::from_secs(20);
const CATCH_UP_BOUND: Duration = Duration::from_secs(30);

/// A small interval, so that a few hundred commands make several marks.
const INTERVAL_SEQS: u64 = 20;

/// The exit status of a node that diverged (`gateway::pipeline::DIVERGED_EXIT_CODE`).
const DIVERGED_EXIT_CODE: i32 = gateway::pipeline::DIVERGED_EXIT_CODE;

struct Node {
    id: u64,
    config_path: PathBuf,
    api: SocketAddr,
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Node {
    fn client(&self) -> Client {
        Client::new(self.api)
    }

    fn start(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("DATABASE_URL")
            .env_remove("EXCHANGE_DATABASE_URL")
            .env("EXCHANGE_LOG_LEVEL", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the exchange binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on "), "node {}: {line:?}; stderr: {}", self.id, self.stderr());
        // Keep reading stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        self.child = Some(child);
        server::wait_until_signable(
            self.health().and_then(|h| h["signed_changes_from_ms"].as_u64()).unwrap_or(0),
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the node to exit on its own.
    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        let child = self.child.as_mut().expect("the node runs");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node {} still runs: {}", self.id, self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn health(&self) -> Option<Value> {
        server::try_raw(self.api, "GET", "/health", &[], b"").ok().map(|(_, _, body)| body)
    }

    /// (hash marks checked, the newest one's sequence number, applied seq).
    fn marks(&self) -> (u64, u64, u64) {
        let health = self.health().unwrap_or_default();
        let cluster = &health["cluster"];
        (
            cluster["hash_marks_checked"].as_u64().unwrap_or(0),
            cluster["last_hash_mark_seq"].as_u64().unwrap_or(0),
            health["seq"].as_u64().unwrap_or(0),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clusters started by this test process, so that each has addresses of its own.
/// (Starts at 100: `tests/cluster.rs` counts from 1 and may run at the same time.)
static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(size: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let raft_ip = |id: u64| format!("127.0.{base}.{id}");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(i, (api, raft))| {
                format!(
                    "  {{ id = {}, raft = \"{}:{raft}\", api = \"127.0.0.1:{api}\" }},\n",
                    i + 1,
                    raft_ip(i as u64 + 1)
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (api, raft)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = dir.path().join(format!("node{id}"));
            let config_path = dir.path().join(format!("node{id}.toml"));
            std::fs::write(
                &config_path,
                format!(
                    "listen = \"127.0.0.1:{api}\"\nws_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
                     durability = \"replicated\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                     [cluster]\nnode_id = {id}\nraft_listen = \"{}:{raft}\"\nbootstrap = {}\n\
                     hash_mark_interval_seqs = {INTERVAL_SEQS}\nmembers = [\n{members}]\n",
                    data_dir.display(),
                    raft_ip(id),
                    id == 1
                ),
            )
            .unwrap();
            nodes.push(Node {
                id,
                config_path,
                api: SocketAddr::from(([127, 0, 0, 1], *api)),
                child: None,
                stderr_path: dir.path().join(format!("node{id}.stderr")),
            });
        }
        for node in &mut nodes {
            node.start(&[]);
        }
        Cluster { nodes, _dir: dir }
    }

    /// The index of the running node that leads, waiting for one.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            let leader = self.nodes.iter().position(|node| {
                node.child.is_some() && node.health().is_some_and(|h| h["cluster"]["role"] == "leader")
            });
            if let Some(index) = leader {
                return index;
            }
            assert!(Instant::now() < deadline, "no leader within {ELECTION_BOUND:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node has applied `seq` and checked the
    /// mark of the last marked point at or before it.
    fn wait_marked(&self, seq: u64) {
        let last_mark_seq = seq / INTERVAL_SEQS * INTERVAL_SEQS;
        let deadline = Instant::now() + CATCH_UP_BOUND;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let (_, marked, applied) = node.marks();
                if applied >= seq && marked >= last_mark_seq {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} applied {applied}, checked a mark at {marked}; expected {seq} and {last_mark_seq}: {}",
                    node.id,
                    self.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn stderr(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {}:\n{}", n.id, n.stderr())).collect()
    }
}

/// Places `rounds` orders per key through `client`, at prices that cross now
/// and then (trades change the state too); returns the leader's last seq.
fn place_orders(client: &Client, keys: &[Key], rounds: usize) -> u64 {
    for round in 0..rounds {
        for (index, key) in keys.iter().enumerate() {
            let side = if index % 2 == 0 { "buy" } else { "sell" };
            let price = 100 + ((round * 7 + index * 3) % 11);
            let order = json!({ "market": "BTC-USDT", "side": side, "type": "limit",
                                "price": price.to_string(), "quantity": "0.01", "time_in_force": "GTC" });
            let (status, body) = client.place(key, order);
            assert_eq!(status, 200, "{body}");
        }
    }
    client.get("/health").1["seq"].as_u64().unwrap()
}

#[test]
fn every_node_checks_its_state_hash_against_the_leaders_marks() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(4);
    let seq = place_orders(&client, &keys, 25);
    assert!(seq >= 5 * INTERVAL_SEQS, "only {seq} commands");
    cluster.wait_marked(seq);
    let marks: Vec<(u64, u64, u64)> = cluster.nodes.iter().map(Node::marks).collect();
    eprintln!("(checked, last mark seq, applied) per node after {seq} commands: {marks:?}");
    let last_mark_seq = seq / INTERVAL_SEQS * INTERVAL_SEQS;
    for (node, (checked, marked, _)) in cluster.nodes.iter().zip(&marks) {
        assert!(*checked > 0, "node {} checked no mark", node.id);
        assert_eq!(*marked, last_mark_seq, "node {}'s last mark", node.id);
        // The counter is in /metrics too.
        let (_, _, page) = server::try_raw(node.api, "GET", "/metrics", &[], b"").unwrap();
        let line = format!("exchange_hash_marks_checked_total {checked}");
        assert!(
            page.as_str().is_some_and(|p| p.contains(&line)),
            "node {}: no {line:?} in /metrics",
            node.id
        );
    }
    assert!(!cluster.stderr().contains("replicas diverged"), "{}", cluster.stderr());
}

#[test]
fn a_follower_whose_state_differs_stops_loudly_and_the_others_go_on() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(2);
    let seq = place_orders(&client, &keys, 10);
    cluster.wait_marked(seq);

    // The follower restarts with a wrong hash recorded at a point still to
    // come: it replays the log (its earlier marks agree), then diverges.
    let bad = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let corrupt_at = (seq / INTERVAL_SEQS + 3) * INTERVAL_SEQS;
    cluster.nodes[bad].kill();
    let corrupt = corrupt_at.to_string();
    cluster.nodes[bad].start(&[("TEST_EXCHANGE_CORRUPT_HASH_AT_SEQ", corrupt.as_str())]);
    cluster.wait_marked(seq);
    let (checked_before, _, _) = cluster.nodes[other].marks();

    let seq = place_orders(&client, &keys, 40);
    assert!(seq > corrupt_at + INTERVAL_SEQS, "only {seq} commands");
    let status = cluster.nodes[bad].wait_exit(CATCH_UP_BOUND);
    assert_eq!(status.code(), Some(DIVERGED_EXIT_CODE), "{}", cluster.nodes[bad].stderr());
    let stderr = cluster.nodes[bad].stderr();
    let line = stderr.lines().find(|l| l.contains("replicas diverged")).unwrap_or_else(|| panic!("{stderr}"));
    let (leader_id, bad_id) = (cluster.nodes[leader].id, cluster.nodes[bad].id);
    for expected in [
        format!("at sequence {corrupt_at} "),
        format!("node {bad_id} is "),
        format!("hash mark of node {leader_id} says"),
    ] {
        assert!(line.contains(&expected), "{line:?} does not say {expected:?}");
    }
    eprintln!("the diverged node's last line: {line}");

    // The leader and the other follower take orders and check marks still.
    let seq = place_orders(&client, &keys, 10);
    cluster.wait_marked(seq);
    for index in [leader, other] {
        let (checked, marked, _) = cluster.nodes[index].marks();
        assert!(checked > checked_before, "node {}: {checked} marks checked", cluster.nodes[index].id);
        assert_eq!(marked, seq / INTERVAL_SEQS * INTERVAL_SEQS);
    }
    let good = cluster.nodes[leader].stderr() + &cluster.nodes[other].stderr();
    assert!(!good.contains("replicas diverged"), "{good}");
}
