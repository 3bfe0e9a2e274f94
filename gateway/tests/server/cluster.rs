//! A cluster of real `exchange` processes for the cluster and chaos tests:
//! nodes with their own data directories, started, killed (SIGKILL),
//! paused (SIGSTOP) and cut apart.
//!
//! Each node runs in a network namespace of its own when the test runs as
//! root (a veth pair to a bridge in the test's namespace, addresses in
//! 10.200.0.0/13), so that a partition is real: nftables rules inside the
//! namespaces drop the traffic, or the node's link goes down. Without root
//! the nodes share the loopback interface, each with a Raft address of its
//! own (127.0.<cluster>.<node>), and partitions are not available.
//!
//! Included by the test binaries that start clusters (`#[path]`), not by
//! `server/mod.rs`, so that the other tests do not build it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::{self, Client, Key, ADMIN_TOKEN};

/// Generous bounds for behaviour (never for speed): an election on a loaded
/// 2-core machine takes well under a second; a catch-up a few.
pub const ELECTION_BOUND: Duration = Duration::from_secs(20);
pub const CATCH_UP_BOUND: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// A node's ports inside its own namespace: nothing else listens there.
const NETNS_API_PORT: u16 = 8080;
const NETNS_RAFT_PORT: u16 = 7100;
/// Nodes per cluster in namespaces: a /29 holds the nodes (.1 to .5) and
/// the bridge (.6).
const NETNS_NODES_MAX: u64 = 5;

pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGCONT: i32 = libc::SIGCONT;
pub const SIGSTOP: i32 = libc::SIGSTOP;

pub struct Node {
    pub id: u64,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// The address its Raft traffic comes from (and goes to).
    pub raft_ip: IpAddr,
    pub child: Option<Child>,
    pub stderr_path: PathBuf,
    /// The network namespace it runs in (`None` on loopback).
    pub netns: Option<String>,
    /// Stopped with SIGSTOP and not yet continued.
    pub paused: bool,
}

impl Node {
    pub fn client(&self) -> Client {
        Client::new(self.api)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the node with more environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
        let mut command = match &self.netns {
            // `ip netns exec` execs the binary: the child's pid is the node's.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(env!("CARGO_BIN_EXE_exchange"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_exchange")),
        };
        let mut child = command
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
        self.paused = false;
        // Signed changes from before a start are refused (they may be
        // replays): wait until requests signed now are past that point.
        server::wait_until_signable(
            self.health().and_then(|h| h["signed_changes_from_ms"].as_u64()).unwrap_or(0),
        );
    }

    pub fn signal(&mut self, signal: i32) {
        let pid = self.child.as_ref().expect("the node runs").id();
        // Safety: a signal to our own child process.
        unsafe { libc::kill(pid as i32, signal) };
        match signal {
            SIGSTOP => self.paused = true,
            SIGCONT => self.paused = false,
            _ => {}
        }
    }

    /// SIGKILL: a crash at whatever point the node is.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM and wait for the exit (continuing a paused node first).
    pub fn stop(&mut self) {
        if self.paused {
            self.signal(SIGCONT);
        }
        let Some(mut child) = self.child.take() else { return };
        // Safety: a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, SIGTERM) };
        let deadline = Instant::now() + STOP_BOUND;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                eprintln!("node {} did not stop within {STOP_BOUND:?} of SIGTERM: killed", self.id);
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the node to exit on its own.
    pub fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
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

    /// (hash marks checked, the newest one's sequence number, applied seq).
    pub fn marks(&self) -> (u64, u64, u64) {
        let health = self.health().unwrap_or_default();
        let cluster = &health["cluster"];
        (
            cluster["hash_marks_checked"].as_u64().unwrap_or(0),
            cluster["last_hash_mark_seq"].as_u64().unwrap_or(0),
            health["seq"].as_u64().unwrap_or(0),
        )
    }

    pub fn health(&self) -> Option<Value> {
        server::try_raw_within(self.api, "GET", "/health", &[], b"", Duration::from_secs(2))
            .ok()
            .map(|(_, _, body)| body)
    }

    /// The journal directory: the node's Raft log.
    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// What a dead disk leaves: nothing (the node must be stopped).
    pub fn wipe(&self) {
        assert!(self.child.is_none(), "node {} runs", self.id);
        std::fs::remove_dir_all(&self.data_dir).unwrap();
    }

    /// How `POST /admin/cluster/members` names this node: its addresses
    /// as its configuration file gives them.
    pub fn member(&self, learner: bool) -> Value {
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        let raft = config
            .lines()
            .find_map(|l| l.strip_prefix("raft_listen = "))
            .expect("a cluster node's configuration names raft_listen")
            .trim_matches('"');
        json!({ "id": self.id, "raft": raft, "api": self.api.to_string(), "learner": learner })
    }

    /// Waits until this node votes (a new or wiped log first catches up).
    pub fn wait_voting(&self) {
        let deadline = Instant::now() + CATCH_UP_BOUND;
        while !self.health().is_some_and(|h| h["cluster"]["votes"] == true) {
            assert!(Instant::now() < deadline, "node {} does not vote: {}", self.id, self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clusters started by this test process, so that each has addresses of its own.
static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the nodes' traffic goes.
pub enum Network {
    /// Every node on loopback, its Raft traffic on 127.0.<base>.<node>.
    Loopback {
        base: u64,
    },
    Namespaces(Namespaces),
}

/// One network namespace per node, each with a veth pair whose other end is
/// on a bridge in the test's namespace (which has an address on it, so the
/// test talks to the nodes' APIs). Everything goes when this does, panics
/// included.
pub struct Namespaces {
    /// Names the namespaces, veths, bridge and nftables tables of this
    /// cluster: unique per test process and cluster.
    tag: String,
    subnet: Ipv4Addr,
    bridge: String,
    /// Namespace and the veth end in the test's namespace, by node (id - 1).
    nodes: Vec<(String, String)>,
}

impl Namespaces {
    /// Whether namespaces can be made here, and why not.
    pub fn available() -> Result<(), String> {
        // Safety: no arguments, no side effects.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces, veth pairs and nftables need root".into());
        }
        for (tool, version) in [("ip", "-V"), ("nft", "--version")] {
            let found = Command::new(tool).arg(version).output().is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("`{tool}` is missing (Debian: apt-get install iproute2 nftables)"));
            }
        }
        Ok(())
    }

    fn create(size: u64, cluster: u64) -> Namespaces {
        assert!(size <= NETNS_NODES_MAX, "at most {NETNS_NODES_MAX} nodes per cluster in namespaces");
        let pid = std::process::id();
        // Interface names hold at most 15 bytes: "xb" + pid (7 digits at
        // most) + "c" + cluster + "n" + node.
        let tag = format!("{pid}c{}", cluster % 100);
        let subnet = free_subnet(pid as u64 * 8 + cluster);
        let mut namespaces =
            Namespaces { tag: tag.clone(), subnet, bridge: format!("xb{tag}"), nodes: Vec::new() };
        let bridge_ip = namespaces.address(NETNS_NODES_MAX + 1);
        ip(&["link", "add", &namespaces.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{bridge_ip}/29"), "dev", &namespaces.bridge]);
        ip(&["link", "set", &namespaces.bridge, "up"]);
        for id in 1..=size {
            let netns = format!("exchange-test-{tag}n{id}");
            let (outside, inside) = (format!("xv{tag}n{id}"), format!("xp{tag}n{id}"));
            ip(&["netns", "add", &netns]);
            // Recorded before the links exist: Drop removes what was made.
            namespaces.nodes.push((netns.clone(), outside.clone()));
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &netns]);
            ip(&["link", "set", &outside, "master", &namespaces.bridge, "up"]);
            let address = format!("{}/29", namespaces.address(id));
            ip(&["-n", &netns, "addr", "add", &address, "dev", &inside]);
            ip(&["-n", &netns, "link", "set", &inside, "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        namespaces
    }

    /// Node `id`'s address (the bridge's is `NETNS_NODES_MAX + 1`).
    fn address(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + id as u32)
    }

    fn netns(&self, id: u64) -> &str {
        &self.nodes[id as usize - 1].0
    }

    fn veth(&self, id: u64) -> &str {
        &self.nodes[id as usize - 1].1
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // A veth pair goes with either end; the namespace's own end would go
        // with the namespace only once the kernel has let go of it (which
        // can take a while), so the pair is deleted from this side first.
        for (netns, veth) in &self.nodes {
            let _ = Command::new("ip").args(["link", "delete", veth]).stderr(Stdio::null()).status();
            let _ = Command::new("ip").args(["netns", "delete", netns]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).status();
    }
}

/// A /29 in 10.200.0.0/13 that no interface here uses yet, starting from
/// `seed`.
fn free_subnet(seed: u64) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let used = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap();
    let used = String::from_utf8_lossy(&used.stdout).into_owned();
    let slots = 1u64 << 16;
    (0..slots)
        .map(|step| Ipv4Addr::from(base + (((seed + step) % slots) as u32) * 8))
        .find(|subnet| {
            let prefix = subnet.octets();
            !used.contains(&format!("inet {}.{}.{}.", prefix[0], prefix[1], prefix[2]))
        })
        .expect("a free /29 in 10.200.0.0/13")
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("`ip` runs");
    assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    // Dropped after the nodes (fields drop in order): no process is left in
    // a namespace being deleted.
    pub network: Network,
    pub dir: tempfile::TempDir,
    /// The members' lines of the configuration files, for nodes added later.
    pub members: String,
}

impl Cluster {
    /// `size` nodes in namespaces of their own when the test may make them,
    /// on loopback otherwise.
    pub fn start(size: u64) -> Cluster {
        Cluster::start_with(size, Namespaces::available().is_ok(), "")
    }

    /// `size` nodes, in namespaces or on loopback, with `extra` (TOML keys
    /// of the top level) in every node's configuration.
    pub fn start_with(size: u64, in_namespaces: bool, extra: &str) -> Cluster {
        Cluster::start_configured(size, in_namespaces, extra, "")
    }

    /// As [`Cluster::start_with`], with `extra_cluster` (keys of the
    /// `[cluster]` section) too.
    pub fn start_configured(size: u64, in_namespaces: bool, extra: &str, extra_cluster: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let number = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let network = if in_namespaces {
            Network::Namespaces(Namespaces::create(size, number))
        } else {
            Network::Loopback { base: number }
        };
        let addresses: Vec<(SocketAddr, SocketAddr)> = (1..=size)
            .map(|id| match &network {
                Network::Namespaces(n) => {
                    let ip = IpAddr::V4(n.address(id));
                    (SocketAddr::new(ip, NETNS_API_PORT), SocketAddr::new(ip, NETNS_RAFT_PORT))
                }
                // Each node's Raft traffic has an address of its own (all
                // loopback), so that firewall rules can cut one off.
                Network::Loopback { base } => (
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::new(format!("127.0.{base}.{id}").parse().unwrap(), free_port()),
                ),
            })
            .collect();
        let members: String = addresses
            .iter()
            .enumerate()
            .map(|(i, (api, raft))| format!("  {{ id = {}, raft = \"{raft}\", api = \"{api}\" }},\n", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for (i, (api, raft)) in addresses.iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = dir.path().join(format!("node{id}"));
            let config_path = dir.path().join(format!("node{id}.toml"));
            std::fs::write(
                &config_path,
                format!(
                    "listen = \"{api}\"\nws_listen = \"{}:0\"\ndata_dir = \"{}\"\n\
                     durability = \"replicated\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{extra}\n\
                     [cluster]\nnode_id = {id}\nraft_listen = \"{raft}\"\nbootstrap = {}\n{extra_cluster}\n\
                     members = [\n{members}]\n",
                    api.ip(),
                    data_dir.display(),
                    id == 1
                ),
            )
            .unwrap();
            nodes.push(Node {
                id,
                config_path,
                data_dir,
                api: *api,
                raft_ip: raft.ip(),
                child: None,
                stderr_path: dir.path().join(format!("node{id}.stderr")),
                netns: match &network {
                    Network::Namespaces(n) => Some(n.netns(id).to_string()),
                    Network::Loopback { .. } => None,
                },
                paused: false,
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
        Cluster { nodes, network, dir, members }
    }

    /// A node on loopback not (yet) in the cluster, configured with every
    /// member and itself (as a learner if `learner`); not started.
    pub fn new_node(&mut self, learner: bool) -> usize {
        let Network::Loopback { base } = self.network else {
            panic!("nodes are added to clusters on loopback only");
        };
        let id = self.nodes.len() as u64 + 1;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let raft = SocketAddr::new(format!("127.0.{base}.{id}").parse().unwrap(), free_port());
        let members = format!(
            "{}  {{ id = {id}, raft = \"{raft}\", api = \"{api}\", learner = {learner} }},\n",
            self.members
        );
        let data_dir = self.dir.path().join(format!("node{id}"));
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "listen = \"{api}\"\nws_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
                 durability = \"replicated\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                 [cluster]\nnode_id = {id}\nraft_listen = \"{raft}\"\nbootstrap = false\n\
                 members = [\n{members}]\n",
                data_dir.display(),
            ),
        )
        .unwrap();
        self.nodes.push(Node {
            id,
            config_path,
            data_dir,
            api,
            raft_ip: raft.ip(),
            child: None,
            stderr_path: self.dir.path().join(format!("node{id}.stderr")),
            netns: None,
            paused: false,
        });
        self.nodes.len() - 1
    }

    pub fn in_namespaces(&self) -> bool {
        matches!(self.network, Network::Namespaces(_))
    }

    /// The index of the node that leads in the newest term, waiting for one
    /// (among the running nodes; a leader that was paused may still think
    /// it leads an older term for a moment).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            if let Some(index) = self.leader_now() {
                return index;
            }
            assert!(Instant::now() < deadline, "no leader within {ELECTION_BOUND:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running, unpaused node that says it leads the newest term, if any.
    pub fn leader_now(&self) -> Option<usize> {
        let leaders =
            self.nodes.iter().enumerate().filter(|(_, node)| node.is_running() && !node.paused).filter_map(
                |(index, node)| {
                    let health = node.health()?;
                    (health["cluster"]["role"] == "leader")
                        .then(|| (health["cluster"]["term"].as_u64(), index))
                },
            );
        leaders.max().map(|(_, index)| index)
    }

    /// Waits until every running node has applied `seq`.
    pub fn wait_applied(&self, seq: u64) {
        let deadline = Instant::now() + CATCH_UP_BOUND;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
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

    pub fn stderr(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {}:\n{}", n.id, n.stderr())).collect()
    }

    /// Waits until every running node has applied what `client`'s node
    /// has, then checks that they all hold the same book and balances.
    pub fn assert_converged(&self, client: &Client, keys: &[Key], after: &str) {
        let seq = client.get("/health").1["seq"].as_u64().unwrap();
        self.wait_applied(seq);
        let reference = state_of(client, keys);
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            // `/health`'s seq is the matcher's; the read views a query sees
            // follow it a moment later: look again until they agree.
            let deadline = Instant::now() + CATCH_UP_BOUND;
            let mut state = state_of(&node.client(), keys);
            while state != reference && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                state = state_of(&node.client(), keys);
            }
            assert_eq!(state, reference, "node {} differs after {after}: {:?}", node.id, node.health());
        }
    }

    /// The index of the node whose API is at `api` (`host:port`).
    pub fn node_at(&self, api: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.api.to_string() == api)
    }
}

/// What every node must agree on: the book and every user's balances.
pub fn state_of(client: &Client, keys: &[Key]) -> Value {
    let (_, depth) = client.get("/depth?market=BTC-USDT&limit=1000");
    let balances: Vec<Value> = keys.iter().map(|k| client.signed(k, "GET", "/balance", "", None).1).collect();
    json!({ "bids": depth["bids"], "asks": depth["asks"], "balances": balances })
}

/// An order a client was told was accepted, to find again after failovers.
pub struct Acked {
    pub key: usize,
    pub order_id: u64,
}

pub fn place_some(client: &Client, keys: &[Key], round: usize, acked: &mut Vec<Acked>) {
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

/// Waits for a running, unpaused leader other than `old` that takes orders.
pub fn wait_for_other_leader(cluster: &Cluster, old: usize) -> usize {
    let deadline = Instant::now() + ELECTION_BOUND;
    loop {
        for (index, node) in cluster.nodes.iter().enumerate() {
            if index == old || !node.is_running() || node.paused {
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

/// Raft traffic between groups of nodes dropped, or a node's link down;
/// healed when this goes.
pub struct Partition {
    /// nftables tables to delete: (namespace, or `None` for the test's own; name).
    tables: Vec<(Option<String>, String)>,
    /// Veth ends (in the test's namespace) to set up again.
    links_down: Vec<String>,
    pub what: String,
}

/// Partitions made by this test process, so that each table has a name of its own.
static PARTITIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Partition {
    /// Cuts every node in `alone` off from every node in `others`, both
    /// ways: in namespaces, rules inside each node's namespace drop what
    /// arrives from the other side (silent loss, as on a cut cable); on
    /// loopback, rules on the test's own input hook. Clients still reach
    /// every node.
    pub fn isolate(cluster: &Cluster, alone: &[u64], others: &[u64]) -> Partition {
        let number = PARTITIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("exchange_test_{}_{number}", std::process::id());
        let set = |ids: &[u64]| {
            ids.iter()
                .map(|id| cluster.nodes[*id as usize - 1].raft_ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let what = format!("nodes {alone:?} cut off from {others:?}");
        match &cluster.network {
            Network::Namespaces(namespaces) => {
                let mut tables = Vec::new();
                for (side, other_side) in [(alone, others), (others, alone)] {
                    let from = set(other_side);
                    for id in side {
                        let rules = format!(
                            "table inet {table} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
                             ip saddr {{ {from} }} drop\n }}\n}}\n"
                        );
                        let netns = namespaces.netns(*id).to_string();
                        nft(Some(&netns), &["-f", "-"], Some(&rules));
                        tables.push((Some(netns), table.clone()));
                    }
                }
                Partition { tables, links_down: Vec::new(), what }
            }
            Network::Loopback { .. } => {
                let (a, b) = (set(alone), set(others));
                let rules = format!(
                    "table inet {table} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
                     ip saddr {{ {a} }} ip daddr {{ {b} }} drop\n  ip saddr {{ {b} }} ip daddr {{ {a} }} drop\n }}\n}}\n"
                );
                nft(None, &["-f", "-"], Some(&rules));
                Partition { tables: vec![(None, table)], links_down: Vec::new(), what }
            }
        }
    }

    /// Sets node `id`'s link down: it hears nobody and nobody hears it,
    /// clients included (in namespaces only).
    pub fn unplug(cluster: &Cluster, id: u64) -> Partition {
        let Network::Namespaces(namespaces) = &cluster.network else {
            panic!("unplugging a node needs network namespaces");
        };
        let veth = namespaces.veth(id).to_string();
        ip(&["link", "set", &veth, "down"]);
        Partition { tables: Vec::new(), links_down: vec![veth], what: format!("node {id} unplugged") }
    }
}

impl Partition {
    /// Heals the cut after resetting every connection across it, orphaned
    /// ones included (namespaces only). A connection dropped by its owner
    /// while the cable was cut still holds its unsent bytes, and the kernel
    /// delivers them once the cut heals: a node would then read requests
    /// its peer gave up on long ago. A reset models connections that died
    /// with the cut, as they do when it lasts longer than TCP retries.
    pub fn heal_resetting_connections(self, cluster: &Cluster, alone: &[u64], others: &[u64]) {
        let Network::Namespaces(namespaces) = &cluster.network else {
            panic!("resetting connections needs network namespaces");
        };
        for (side, other_side) in [(alone, others), (others, alone)] {
            for id in side {
                for other in other_side {
                    let other_ip = cluster.nodes[*other as usize - 1].raft_ip.to_string();
                    let netns = namespaces.netns(*id);
                    let output = Command::new("ip")
                        .args(["netns", "exec", netns, "ss", "-K", "-t", "dst", &other_ip])
                        .output()
                        .expect("`ss` runs");
                    assert!(output.status.success(), "ss -K: {}", String::from_utf8_lossy(&output.stderr));
                }
            }
        }
        drop(self);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Never a panic here (it may run while a test unwinds): a table that
        // cannot be deleted goes with its namespace anyway.
        for (netns, table) in &self.tables {
            if let Err(e) = try_nft(netns.as_deref(), &["delete", "table", "inet", table], None) {
                eprintln!("healing {}: {e}", self.what);
            }
        }
        for veth in &self.links_down {
            let status = Command::new("ip").args(["link", "set", veth, "up"]).status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("healing {}: ip link set {veth} up failed: {status:?}", self.what);
            }
        }
    }
}

/// Runs `nft` (inside `netns` when given), feeding it `input`.
fn nft(netns: Option<&str>, args: &[&str], input: Option<&str>) {
    if let Err(e) = try_nft(netns, args, input) {
        panic!("{e}");
    }
}

fn try_nft(netns: Option<&str>, args: &[&str], input: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "nft"]);
            command
        }
        None => Command::new("nft"),
    };
    let child = command.args(args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = child.map_err(|e| {
        format!("cannot run nft ({e}): partitions need nftables (Debian: apt-get install nftables) and root")
    })?;
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).map_err(|e| format!("nft {args:?}: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("nft {args:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("nft {args:?} in {netns:?}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(())
}

/// Keeps every Raft segment file the nodes ever had, while they run: a
/// thread hard-links each segment (by inode) into `<cluster dir>/archive/
/// node<id>/`. A purge, a truncation, an install or a wiped disk then only
/// unlinks the node's name of the file; the archive's name keeps the file's
/// bytes, which the node goes on writing in place until it lets go of it.
/// So the checker can read committed entries that every node has purged
/// (`history.rs`, "Purged prefixes"). Hard links, not copies: the segments
/// are large and preallocated, and a copy could be torn mid-write.
pub struct SegmentArchive {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

/// How often the archive looks for new segment files. A segment lives at
/// least until it is full (64 MiB) or until the node's next install or
/// wipe, which are seconds apart in the chaos run.
const ARCHIVE_POLL: Duration = Duration::from_millis(5);

impl SegmentArchive {
    pub fn start(cluster: &Cluster) -> SegmentArchive {
        let dir = cluster.dir.path().join("archive");
        let nodes: Vec<(u64, PathBuf, PathBuf)> = cluster
            .nodes
            .iter()
            .map(|n| (n.id, n.journal_dir(), dir.join(format!("node{}", n.id))))
            .collect();
        for (_, _, archive) in &nodes {
            std::fs::create_dir_all(archive).unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut linked = std::collections::HashSet::new();
                loop {
                    // One more pass after the stop: the last files are linked too.
                    let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                    for (id, journal, archive) in &nodes {
                        archive_segments(*id, journal, archive, &mut linked);
                    }
                    if last {
                        return;
                    }
                    std::thread::sleep(ARCHIVE_POLL);
                }
            })
        };
        SegmentArchive { stop, thread: Some(thread), dir }
    }

    /// Stops the thread after a last pass; the archived segment files of
    /// each node, by node id.
    pub fn finish(mut self) -> Vec<(u64, Vec<PathBuf>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the segment archive thread panicked");
        let mut nodes: Vec<(u64, Vec<PathBuf>)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|node| {
                let node = node.unwrap().path();
                let id =
                    node.file_name().unwrap().to_str().unwrap().trim_start_matches("node").parse().unwrap();
                let mut files: Vec<PathBuf> =
                    std::fs::read_dir(&node).unwrap().map(|f| f.unwrap().path()).collect();
                files.sort();
                (id, files)
            })
            .collect();
        nodes.sort();
        nodes
    }
}

impl Drop for SegmentArchive {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Links every segment file in `journal` not linked yet (by inode: a
/// truncated or purged segment's name comes back as a new file) into
/// `archive` as `<first index>-<inode>`. A file that goes between the
/// listing and the link is missed (its node let go of it within a poll).
fn archive_segments(
    id: u64,
    journal: &std::path::Path,
    archive: &std::path::Path,
    linked: &mut std::collections::HashSet<(u64, u64)>,
) {
    use std::os::unix::fs::MetadataExt;
    // Missing while the node is wiped or before its first start.
    let Ok(segments) = journal::list_raft_segments(journal) else { return };
    for (first_index, path) in segments {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !linked.insert((id, meta.ino())) {
            continue;
        }
        let name = archive.join(format!("{first_index:020}-{}", meta.ino()));
        if std::fs::hard_link(&path, &name).is_err() {
            linked.remove(&(id, meta.ino()));
        }
    }
}

/// Waits until the database behind `feeder` holds every command the
/// leader has, and returns that sequence number.
pub fn wait_written(cluster: &Cluster, feeder: usize, leader: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let target = cluster.nodes[leader].health().unwrap()["seq"].as_u64().unwrap();
        let health = cluster.nodes[feeder].health().unwrap_or_default();
        if health["seq"].as_u64() == Some(target)
            && health["database"]["written_seq"].as_u64() == Some(target)
        {
            return target;
        }
        // A liveness bound, not a speed assertion.
        assert!(Instant::now() < deadline, "the database did not catch up with {target}: {health}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A market's trades as `client`'s node answers them (`query` appended),
/// by trade id.
pub fn market_trades(client: &Client, query: &str) -> Vec<Value> {
    let (status, body) = client.get(&format!("/trade/history?market=BTC-USDT&limit=1000{query}"));
    assert_eq!(status, 200, "{body}");
    let mut trades = body["trades"].as_array().unwrap().clone();
    trades.sort_by_key(|t| t["trade_id"].as_u64());
    trades
}
