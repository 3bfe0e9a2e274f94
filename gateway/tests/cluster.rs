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
    data_dir: PathBuf,
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

    /// What a dead disk leaves: nothing (the node must be stopped).
    fn wipe(&self) {
        assert!(self.child.is_none(), "node {} runs", self.id);
        std::fs::remove_dir_all(&self.data_dir).unwrap();
    }

    /// Waits until this node votes (a new or wiped log first catches up).
    fn wait_voting(&self) {
        let deadline = Instant::now() + CATCH_UP_BOUND;
        while !self.health().is_some_and(|h| h["cluster"]["votes"] == true) {
            assert!(Instant::now() < deadline, "node {} does not vote: {}", self.id, self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
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
    /// The members' lines of the configuration files, for nodes added later.
    members: String,
    dir: tempfile::TempDir,
}

/// A node's configuration file.
fn node_config(
    base: u64,
    dir: &std::path::Path,
    id: u64,
    api: u16,
    raft: u16,
    members: &str,
) -> (PathBuf, PathBuf) {
    let data_dir = dir.join(format!("node{id}"));
    let config_path = dir.join(format!("node{id}.toml"));
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
    (config_path, data_dir)
}

fn member_line(base: u64, id: u64, api: u16, raft: u16, learner: bool) -> String {
    format!(
        "  {{ id = {id}, raft = \"{}:{raft}\", api = \"127.0.0.1:{api}\", learner = {learner} }},\n",
        raft_ip(base, id)
    )
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
            .map(|(i, (api, raft))| member_line(base, i as u64 + 1, *api, *raft, false))
            .collect();
        let mut nodes = Vec::new();
        for (i, (api, raft)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let (config_path, data_dir) = node_config(base, dir.path(), id, *api, *raft, &members);
            nodes.push(Node {
                id,
                config_path,
                data_dir,
                api: SocketAddr::from(([127, 0, 0, 1], *api)),
                child: None,
                stderr_path: dir.path().join(format!("node{id}.stderr")),
            });
        }
        for node in &mut nodes {
            node.start();
        }
        // The first node forms the cluster and adds the others, whose new
        // logs then catch up before they vote: only then can any of them
        // replace a leader.
        for node in &nodes {
            node.wait_voting();
        }
        Cluster { nodes, base, members, dir }
    }

    /// A node not (yet) in the cluster, configured with every member and
    /// itself (as a learner if `learner`); not started.
    fn new_node(&mut self, learner: bool) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let (api, raft) = (free_port(), free_port());
        let members = format!("{}{}", self.members, member_line(self.base, id, api, raft, learner));
        let (config_path, data_dir) = node_config(self.base, self.dir.path(), id, api, raft, &members);
        self.nodes.push(Node {
            id,
            config_path,
            data_dir,
            api: SocketAddr::from(([127, 0, 0, 1], api)),
            child: None,
            stderr_path: self.dir.path().join(format!("node{id}.stderr")),
        });
        self.nodes.len() - 1
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

/// Every order in `acked` is found through `client`.
fn assert_all_found(client: &Client, keys: &[Key], acked: &[Acked], after: &str) {
    for order in acked {
        let (status, found) =
            client.signed(&keys[order.key], "GET", "/order", &format!("order_id={}", order.order_id), None);
        assert_eq!(status, 200, "order {} lost after {after}: {found}", order.order_id);
    }
}

#[test]
fn a_node_restarted_with_a_wiped_disk_votes_only_once_it_has_caught_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    // A follower loses its disk while orders go on: it comes back empty,
    // the leader sends it the whole log, and it votes once caught up.
    let wiped = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.nodes[wiped].kill();
    cluster.nodes[wiped].wipe();
    place_some(&cluster.nodes[leader].client(), &keys, 1, &mut acked);
    cluster.nodes[wiped].start();
    cluster.nodes[wiped].wait_voting();
    cluster.assert_converged(&cluster.nodes[leader].client(), &keys, "the wiped follower rejoined");
    assert_all_found(&cluster.nodes[wiped].client(), &keys, &acked, "the wipe");

    // The hazard a wiped node must not create: it may have acknowledged
    // entries before it lost them. With the leader down, the wiped node and
    // the remaining follower must not elect a leader between them on the
    // strength of the wiped node's vote.
    for node in &mut cluster.nodes {
        node.kill();
    }
    cluster.nodes[wiped].wipe();
    cluster.nodes[wiped].start();
    cluster.nodes[other].start();
    // Ten election timeouts and more (behaviour, not speed: a vote would
    // elect a leader in one).
    std::thread::sleep(Duration::from_secs(3));
    for index in [wiped, other] {
        let health = cluster.nodes[index].health().unwrap();
        assert_ne!(
            health["cluster"]["role"], "leader",
            "node {index} leads without a caught-up majority: {health}"
        );
    }
    assert_eq!(cluster.nodes[wiped].health().unwrap()["cluster"]["votes"], false);

    // The old leader returns: a leader is elected, the wiped node catches
    // up and votes, and nothing acknowledged is lost.
    cluster.nodes[leader].start();
    let leader = cluster.leader();
    cluster.nodes[wiped].wait_voting();
    let client = cluster.nodes[leader].client();
    place_some(&client, &keys, 2, &mut acked);
    cluster.assert_converged(&client, &keys, "the second wipe");
    for node in &cluster.nodes {
        assert_all_found(&node.client(), &keys, &acked, "the second wipe");
    }
}

#[test]
fn learners_and_voters_join_and_leave_through_the_admin_api() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);
    let admin = cluster.nodes[leader].client();
    let base = cluster.base;
    let member = |node: &Node, learner: bool| {
        json!({ "id": node.id, "raft": format!("{}:{}", raft_ip(base, node.id), raft_port(node)),
                "api": node.api.to_string(), "learner": learner })
    };

    // A learner: added through the leader, it follows the log, serves
    // reads, and refuses order entry naming the leader.
    let learner = cluster.new_node(true);
    cluster.nodes[learner].start();
    let body = member(&cluster.nodes[learner], true);
    let (status, refused) =
        cluster.nodes[(leader + 1) % 3].client().admin("POST", "/admin/cluster/members", body.clone());
    assert_eq!((status, refused["error"]["code"].as_str()), (421, Some("not_leader")), "{refused}");
    let membership = admin.admin_ok("POST", "/admin/cluster/members", body);
    let roles: Vec<(u64, String)> = membership["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(roles, [(1, "voter".into()), (2, "voter".into()), (3, "voter".into()), (4, "learner".into())]);
    cluster.assert_converged(&admin, &keys, "a learner joined");
    let learner_client = cluster.nodes[learner].client();
    assert_eq!(learner_client.get("/health").1["cluster"]["role"], "learner");
    let (status, answer) = learner_client.place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1" }),
    );
    assert_eq!(status, 421, "{answer}");
    assert_eq!(answer["error"]["leader"], cluster.nodes[leader].api.to_string().as_str());

    // A voter added while orders go on; then both leave again.
    let voter = cluster.new_node(false);
    cluster.nodes[voter].start();
    let membership = admin.admin_ok("POST", "/admin/cluster/members", member(&cluster.nodes[voter], false));
    let voters = membership["members"].as_array().unwrap().iter().filter(|m| m["role"] == "voter").count();
    assert_eq!(voters, 4, "{membership}");
    cluster.nodes[voter].wait_voting();
    place_some(&admin, &keys, 1, &mut acked);
    cluster.assert_converged(&admin, &keys, "a voter joined");
    let (status, refused) = admin.admin("DELETE", "/admin/cluster/members", json!({ "id": 99 }));
    assert_eq!((status, refused["error"]["code"].as_str()), (400, Some("invalid_member")), "{refused}");
    for index in [learner, voter] {
        let id = cluster.nodes[index].id;
        let membership = admin.admin_ok("DELETE", "/admin/cluster/members", json!({ "id": id }));
        assert!(membership["members"].as_array().unwrap().iter().all(|m| m["id"] != id), "{membership}");
        cluster.nodes[index].kill();
    }

    // Three voters again: losing the leader still leaves a majority.
    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    assert_all_found(&client, &keys, &acked, "the members left and the leader died");
}

/// The Raft port in a node's configuration file.
fn raft_port(node: &Node) -> u16 {
    let config = std::fs::read_to_string(&node.config_path).unwrap();
    let line = config.lines().find(|l| l.starts_with("raft_listen")).unwrap();
    line.trim_end_matches('"').rsplit(':').next().unwrap().parse().unwrap()
}
