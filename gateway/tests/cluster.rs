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
        let from_ms = self.health().and_then(|h| h["signed_changes_from_ms"].as_u64()).unwrap_or(0);
        loop {
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                    as u64;
            if now_ms >= from_ms {
                break;
            }
            std::thread::sleep(Duration::from_millis(from_ms - now_ms));
        }
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
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(i, (api, raft))| {
                format!("  {{ id = {}, raft = \"127.0.0.1:{raft}\", api = \"127.0.0.1:{api}\" }},\n", i + 1)
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
                     [cluster]\nnode_id = {id}\nraft_listen = \"127.0.0.1:{raft}\"\nbootstrap = {}\n\
                     members = [\n{members}]\n",
                    data_dir.display(),
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
        Cluster { nodes, _dir: dir }
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

/// Sets up two assets, a market and `users` funded users through the leader.
fn demo(client: &Client, users: usize) -> Vec<Key> {
    for (symbol, decimals) in [("BTC", 8), ("USDT", 6)] {
        client.admin_ok("POST", "/admin/assets", json!({ "symbol": symbol, "decimals": decimals }));
    }
    client.admin_ok(
        "POST",
        "/admin/markets",
        json!({
            "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
            "min_quantity": "0.0001", "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.002"
        }),
    );
    (0..users)
        .map(|_| {
            let user = client.admin_ok("POST", "/admin/users", json!({}))["user_id"].as_u64().unwrap();
            let key = client.admin_ok("POST", "/admin/api_keys", json!({ "user_id": user }));
            for (asset, amount) in [("BTC", "10"), ("USDT", "1000000")] {
                client.admin_ok(
                    "POST",
                    "/admin/deposit",
                    json!({ "user_id": user, "asset": asset, "amount": amount }),
                );
            }
            Key {
                user_id: user,
                api_key: key["api_key"].as_str().unwrap().to_string(),
                secret: key["secret"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// What every node must agree on: the book and every user's balances.
fn state_of(client: &Client, keys: &[Key]) -> Value {
    let (_, depth) = client.get("/depth?market=BTC-USDT&limit=1000");
    let balances: Vec<Value> = keys.iter().map(|k| client.signed(k, "GET", "/balance", "", None).1).collect();
    json!({ "bids": depth["bids"], "asks": depth["asks"], "balances": balances })
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
    let keys = demo(&cluster.nodes[leader].client(), 4);
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
    let seq = cluster.nodes[leader].health().unwrap()["seq"].as_u64().unwrap();
    cluster.wait_applied(seq);
    let reference = state_of(&cluster.nodes[leader].client(), &keys);
    for node in &cluster.nodes {
        assert_eq!(state_of(&node.client(), &keys), reference, "node {} differs", node.id);
    }

    // Failovers: the leader is killed (or paused), another takes over, and
    // every order acknowledged so far is there; the old one rejoins.
    for round in 1..=4 {
        let old = cluster.leader();
        if round % 2 == 0 {
            cluster.nodes[old].signal(SIGSTOP);
        } else {
            cluster.nodes[old].signal(SIGKILL);
            cluster.nodes[old].child.take().map(|mut c| c.wait());
        }
        let new = wait_for_other_leader(&cluster, old);
        let client = cluster.nodes[new].client();
        place_some(&client, &keys, round, &mut acked);
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
        let seq = client.get("/health").1["seq"].as_u64().unwrap();
        cluster.wait_applied(seq);
        let reference = state_of(&client, &keys);
        for node in &cluster.nodes {
            assert_eq!(
                state_of(&node.client(), &keys),
                reference,
                "node {} differs after round {round}",
                node.id
            );
        }
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
