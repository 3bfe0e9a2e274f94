//! A cluster of real `exchange` processes on loopback: elections, order
//! entry through the leader only, every node applying the same commands,
//! and failover when the leader is killed (SIGKILL) or paused (SIGSTOP),
//! with every acknowledged order still there afterwards.

mod server;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::{Client, Key, ADMIN_TOKEN};

/// Generous bounds for behaviour (never for speed): an election on a loaded
/// 2-core machine takes well under a second; a catch-up a few.
const ELECTION_BOUND: Duration = Duration::from_secs(20);
const CATCH_UP_BOUND: Duration = Duration::from_secs(30);

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

    fn start(&mut self) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("DATABASE_URL")
            .env_remove("EXCHANGE_DATABASE_URL")
            .env("EXCHANGE_LOG_LEVEL", "info,openraft=warn")
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
        // Signed changes from before a start are refused (they may be
        // replays): wait until requests signed now are past that point.
        server::wait_until_signable(
            self.health().and_then(|h| h["signed_changes_from_ms"].as_u64()).unwrap_or(0),
        );
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("the node runs").id();
        // Safety: a signal to our own child process.
        unsafe { kill(pid as i32, signal) };
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn health(&self) -> Option<Value> {
        server::try_raw(self.api, "GET", "/health", &[], b"").ok().map(|(_, _, body)| body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

const SIGKILL: i32 = 9;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

/// Clusters started by this test process, so that each has addresses of its own.
static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The loopback address node `id` of the cluster with `base` uses for Raft.
fn raft_ip(base: u64, id: u64) -> String {
    format!("127.0.{base}.{id}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    nodes: Vec<Node>,
    base: u64,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(size: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        // Each node's Raft traffic has an address of its own (127.0.<cluster>.<node>:
        // all loopback), so that firewall rules can cut one off.
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(i, (api, raft))| {
                format!(
                    "  {{ id = {}, raft = \"{}:{raft}\", api = \"127.0.0.1:{api}\" }},\n",
                    i + 1,
                    raft_ip(base, i as u64 + 1)
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
                     members = [\n{members}]\n",
                    data_dir.display(),
                    raft_ip(base, id),
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
            node.start();
        }
        Cluster { nodes, base, _dir: dir }
    }

    /// The index of the node that leads in the newest term, waiting for one
    /// (among the running nodes; a leader that was paused may still think
    /// it leads an older term for a moment).
    fn leader(&self) -> usize {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            let leaders = self.nodes.iter().enumerate().filter(|(_, node)| node.child.is_some()).filter_map(
                |(index, node)| {
                    let health = node.health()?;
                    (health["cluster"]["role"] == "leader")
                        .then(|| (health["cluster"]["term"].as_u64(), index))
                },
            );
            if let Some((_, index)) = leaders.max() {
                return index;
            }
            assert!(Instant::now() < deadline, "no leader within {ELECTION_BOUND:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node has applied `seq`.
    fn wait_applied(&self, seq: u64) {
        let deadline = Instant::now() + CATCH_UP_BOUND;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let at = node.health().and_then(|h| h["seq"].as_u64()).unwrap_or(0);
                if at >= seq {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} stuck at {at} < {seq}: {}",
                    node.id,
                    node.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn stderr(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {}:\n{}", n.id, n.stderr())).collect()
    }
}

/// What every node must agree on: the book and every user's balances.
fn state_of(client: &Client, keys: &[Key]) -> Value {
    let (_, depth) = client.get("/depth?market=BTC-USDT&limit=1000");
    let balances: Vec<Value> = keys.iter().map(|k| client.signed(k, "GET", "/balance", "", None).1).collect();
    json!({ "bids": depth["bids"], "asks": depth["asks"], "balances": balances })
}

impl Cluster {
    /// Waits until every running node has applied what `client`'s node
    /// has, then checks that they all hold the same book and balances.
    fn assert_converged(&self, client: &Client, keys: &[Key], after: &str) {
        let seq = client.get("/health").1["seq"].as_u64().unwrap();
        self.wait_applied(seq);
        let reference = state_of(client, keys);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            assert_eq!(state_of(&node.client(), keys), reference, "node {} differs after {after}", node.id);
        }
    }
}

/// An order a client was told was accepted, to find again after failovers.
struct Acked {
    key: usize,
    order_id: u64,
}

fn place_some(client: &Client, keys: &[Key], round: usize, acked: &mut Vec<Acked>) {
    for (index, key) in keys.iter().enumerate() {
        let side = if index % 2 == 0 { "buy" } else { "sell" };
        // Prices that cross now and then, so that trades happen too.
        let price = 100 + ((round * 7 + index * 3) % 11);
        let order = json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price.to_string(),
                            "quantity": "0.01", "time_in_force": "GTC" });
        // A new leader takes orders once it has heard from a majority; until
        // then it refuses them as not applied (421), which is safe to retry.
        let deadline = Instant::now() + ELECTION_BOUND;
        let (status, body) = loop {
            let (status, body) = client.place(key, order.clone());
            if status != 421 || Instant::now() > deadline {
                break (status, body);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status, 200, "{body}");
        acked.push(Acked { key: index, order_id: body["order_id"].as_u64().unwrap() });
    }
}

#[test]
fn three_nodes_take_orders_through_the_leader_and_survive_losing_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(4);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    // A follower refuses order entry and names the leader, in both APIs.
    let follower = (leader + 1) % 3;
    let leader_api = cluster.nodes[leader].api.to_string();
    let client = cluster.nodes[follower].client();
    let body = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1" });
    let (status, answer) = client.place(&keys[0], body);
    assert_eq!(status, 421, "{answer}");
    assert_eq!(answer["error"]["code"], "not_leader");
    assert_eq!(answer["error"]["leader"], leader_api.as_str());
    let (status, head, answer) = client.binance(
        &keys[0],
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=1&quantity=1",
    );
    assert_eq!((status, answer["code"].as_i64()), (503, Some(-1001)), "{answer}");
    assert!(head.to_lowercase().contains(&format!("x-leader: {leader_api}")), "{head}");

    // Every node applies the same commands: same book, same balances, and
    // each authenticates the keys created through the leader.
    cluster.assert_converged(&cluster.nodes[leader].client(), &keys, "the first orders");

    // Failovers: the leader is killed (or paused), another takes over, and
    // every order acknowledged so far is there; the old one rejoins.
    let mut failovers = Vec::new();
    for round in 1..=10 {
        let old = cluster.leader();
        let cut_at = Instant::now();
        if round % 2 == 0 {
            cluster.nodes[old].signal(SIGSTOP);
        } else {
            cluster.nodes[old].signal(SIGKILL);
            cluster.nodes[old].child.take().map(|mut c| c.wait());
        }
        let new = wait_for_other_leader(&cluster, old);
        let client = cluster.nodes[new].client();
        place_some(&client, &keys, round, &mut acked);
        // From the fault to the first orders acknowledged by the new leader
        // (printed, never asserted: the machine is shared).
        failovers.push((round % 2 == 0, cut_at.elapsed()));
        for order in &acked {
            let (status, found) = client.signed(
                &keys[order.key],
                "GET",
                "/order",
                &format!("order_id={}", order.order_id),
                None,
            );
            assert_eq!(status, 200, "order {} lost after failover {round}: {found}", order.order_id);
        }
        if round % 2 == 0 {
            cluster.nodes[old].signal(SIGCONT);
        } else {
            cluster.nodes[old].start();
        }
        cluster.assert_converged(&client, &keys, &format!("failover {round}"));
    }
    for (paused, name) in [(false, "SIGKILL"), (true, "SIGSTOP")] {
        let mut times: Vec<Duration> =
            failovers.iter().filter(|(p, _)| *p == paused).map(|(_, t)| *t).collect();
        times.sort();
        eprintln!(
            "failover after {name} of the leader, to the new leader's first acknowledged orders: \
             median {:?}, max {:?} ({} times)",
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
}

/// Waits for a leader other than `old` that takes orders.
fn wait_for_other_leader(cluster: &Cluster, old: usize) -> usize {
    let deadline = Instant::now() + ELECTION_BOUND;
    loop {
        for (index, node) in cluster.nodes.iter().enumerate() {
            if index == old || node.child.is_none() {
                continue;
            }
            if node.health().is_some_and(|h| h["cluster"]["role"] == "leader") {
                return index;
            }
        }
        assert!(Instant::now() < deadline, "no new leader within {ELECTION_BOUND:?}: {}", cluster.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drops Raft traffic between groups of nodes with nftables rules on the
/// loopback interface (each node's Raft traffic has its own address); the
/// table goes when this does.
struct Partition {
    table: String,
}

impl Partition {
    /// Cuts every node in `alone` off from every other node (both ways).
    fn isolate(cluster: &Cluster, alone: &[u64], others: &[u64]) -> Partition {
        let table = format!("exchange_test_{}_{}", std::process::id(), cluster.base);
        let set =
            |ids: &[u64]| ids.iter().map(|id| raft_ip(cluster.base, *id)).collect::<Vec<_>>().join(", ");
        let (a, b) = (set(alone), set(others));
        let rules = format!(
            "table inet {table} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
             ip saddr {{ {a} }} ip daddr {{ {b} }} drop\n  ip saddr {{ {b} }} ip daddr {{ {a} }} drop\n }}\n}}\n"
        );
        nft(&["-f", "-"], Some(&rules));
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        nft(&["delete", "table", "inet", &self.table], None);
    }
}

fn nft(args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let child = Command::new("nft").args(args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("cannot run nft ({e}): the partition test needs nftables (Debian: apt-get install nftables) and root")
    });
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_leader_cut_off_from_the_others_is_replaced_and_loses_nothing_acknowledged() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    let old_id = cluster.nodes[leader].id;
    let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != old_id).collect();
    let partition = Partition::isolate(&cluster, &[old_id], &others);
    let new = wait_for_other_leader(&cluster, leader);
    // The old leader no longer hears a majority: it takes no order (a
    // refusal, or at worst "unknown" if it took one just as it was cut off).
    let (status, answer) = cluster.nodes[leader].client().place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50", "quantity": "0.01",
                "client_order_id": "cut-off-1" }),
    );
    // 421: refused as not applied; 504: taken just as it was cut off, outcome unknown.
    assert!(matches!(status, 421 | 504), "a leader cut off from the majority answered {status}: {answer}");
    place_some(&cluster.nodes[new].client(), &keys, 1, &mut acked);
    drop(partition);

    // Healed: the old leader follows the new one and holds what it holds.
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    cluster.assert_converged(&client, &keys, "the partition healed");
    for node in &cluster.nodes {
        for order in &acked {
            let (status, found) = node.client().signed(
                &keys[order.key],
                "GET",
                "/order",
                &format!("order_id={}", order.order_id),
                None,
            );
            assert_eq!(status, 200, "node {}: acknowledged order {} lost: {found}", node.id, order.order_id);
        }
    }
    if status == 421 {
        // Refused as not applied: it must be nowhere.
        let (found, _) = client.signed(&keys[0], "GET", "/order", "client_order_id=cut-off-1", None);
        assert_eq!(found, 404, "an order refused as not applied was applied");
    }
}

#[test]
fn five_nodes_keep_trading_with_two_of_them_down() {
    let mut cluster = Cluster::start(5);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);
    // Two followers down, then the leader too: three of five still decide.
    let followers: Vec<usize> = (0..5).filter(|i| *i != leader).take(2).collect();
    for &i in &followers {
        cluster.nodes[i].kill();
    }
    place_some(&cluster.nodes[leader].client(), &keys, 1, &mut acked);
    for &i in &followers {
        cluster.nodes[i].start();
    }
    let seq = cluster.nodes[leader].health().unwrap()["seq"].as_u64().unwrap();
    cluster.wait_applied(seq);
    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    for order in &acked {
        let (status, found) =
            client.signed(&keys[order.key], "GET", "/order", &format!("order_id={}", order.order_id), None);
        assert_eq!(status, 200, "order {} lost: {found}", order.order_id);
    }
    cluster.nodes[leader].start();
    cluster.assert_converged(&client, &keys, "the old leader restarted");
}
