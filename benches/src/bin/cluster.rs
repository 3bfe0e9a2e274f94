//! Cluster mode through the real server: separate `exchange` processes of
//! the release build on loopback, driven over REST with signed orders.
//!
//! 1. Ack latency and throughput of `replicated` (three nodes: an answer
//!    means a majority has the command on disk) against `batch` (one node,
//!    its journal synced before it answers), on the same order stream
//!    (resting limit orders and crossing IOC ones), closed loop with
//!    `--clients` concurrent clients or at the fixed offered `--rates`; the
//!    two alternate over `--runs` rounds, each on fresh processes, and the
//!    medians are compared.
//! 2. Failover under load: clients send orders to whichever node leads
//!    (following `421` + `X-Leader`); `--kills` times the leader is
//!    SIGKILLed, the time from the kill to the first order the new leader
//!    acknowledges is recorded, every order acknowledged so far is looked up
//!    on the new leader, and the killed node restarts on its data directory
//!    and catches up before the next kill.
//! 3. Catch-up: a follower is killed while `--catch-up-commands` orders are
//!    applied, then restarted; the time until it has applied the leader's
//!    last command. The orders come from a bulk loader: signed REST orders
//!    on `--catch-up-connections` keep-alive connections (one in flight
//!    each) of `--catch-up-users` users, so the leader packs them into full
//!    entries; each connection first rests
//!    `--catch-up-resting-orders-per-connection` orders far from the touch,
//!    a standing book the state carries. Two ways on the same workload,
//!    each on fresh processes, alternating over `--runs` rounds: by log
//!    (images off), and by the
//!    leader's snapshot image (an image every
//!    `--catch-up-snapshot-every-entries` log entries, the log purged past
//!    the follower's position but for `--catch-up-log-kept-entries`; the
//!    run fails unless the follower says it installed the image). Then the
//!    follower is restarted once more with nothing missed: from its own
//!    image, or replaying its whole log. `--catch-up-ways image` (or
//!    `log`) measures one way only.
//!
//! ```text
//! cargo build --release -p gateway --bin exchange
//! cargo run --release -p benches --bin cluster
//! cargo run --release -p benches --bin cluster -- --runs 3 --seconds 5 --kills 20
//! cargo run --release -p benches --bin cluster -- --rates 0,1000 --kills 0 --catch-up-commands 0
//! cargo run --release -p benches --bin cluster -- --seconds 1 --kills 0 --runs 3 --catch-up-commands 50000
//! cargo run --release -p benches --bin cluster -- --seconds 1 --kills 0 --catch-up-commands 10000000 --catch-up-ways image
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::exchange_process::{exchange_binary, write_cluster_configs, ExchangeProcess, ADMIN_TOKEN};
use benches::report::{format_ns, format_rate, latency_histogram, median, ReportArgs, Reports};
use benches::rest_client::{now_ms, seed, Connection, Key, Reply};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Cluster benchmarks through the real server: replicated vs batch, failover, catch-up")]
struct Args {
    /// The `exchange` binary (default: the one next to this executable).
    #[arg(long)]
    exchange: Option<PathBuf>,
    /// Concurrent clients (one keep-alive connection and one user each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Offered rates in orders/s for the latency comparison; 0 means closed
    /// loop (each client sends its next order when the last is answered).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    rates: Vec<u64>,
    /// How an open-loop client waits for each order's send time: `spin`
    /// (exact, but the waiting takes a core from the nodes) or `sleep` (the
    /// runtime's millisecond timer: up to a millisecond late, and the
    /// lateness counts in the latency).
    #[arg(long, value_enum, default_value = "spin")]
    pacing: Pacing,
    /// Measured seconds per configuration, rate and round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Warm-up before each measurement, not recorded.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Rounds of the comparison (batch and replicated alternate in each).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Leader kills in the failover benchmark (0 skips it).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Clients sending orders during the failovers.
    #[arg(long, default_value_t = 2)]
    failover_clients: usize,
    /// Orders applied while a follower is down in the catch-up benchmark
    /// (0 skips it).
    #[arg(long, default_value_t = 5_000)]
    catch_up_commands: u64,
    /// Which ways of the catch-up to measure (`log`, `image`, or both, in
    /// the order given; rounds after the first alternate it). One way
    /// alone halves the load, which at 10M commands is what takes the
    /// time.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "log,image")]
    catch_up_ways: Vec<CatchUpWay>,
    /// `snapshot_every_entries` of the nodes in the catch-up by image: small,
    /// so that the leader writes images and purges its log while the
    /// follower is down.
    #[arg(long, default_value_t = 1_000)]
    catch_up_snapshot_every_entries: u64,
    /// `log_kept_after_snapshot_entries` of the nodes in the catch-up by
    /// image: less than `--catch-up-commands`, or the leader keeps the
    /// entries the follower misses and the follower catches up by log.
    #[arg(long, default_value_t = 100)]
    catch_up_log_kept_entries: u64,
    /// Connections of the catch-up's bulk loader, each with one order in
    /// flight: the leader packs the orders waiting together into one Raft
    /// entry (at most 256 commands, one entry in flight), so it takes twice
    /// that for a full entry to wait while the last one is written.
    #[arg(long, default_value_t = 512)]
    catch_up_connections: usize,
    /// Users the bulk loader's connections are spread over (one key each).
    #[arg(long, default_value_t = 32)]
    catch_up_users: usize,
    /// Resting orders each loader connection places first, far from the
    /// touch where nothing crosses them: the standing book the images and
    /// the matchers carry (users x resting orders per user stay below the
    /// engine's `open_orders_per_user_max`, 1,000 by default).
    #[arg(long, default_value_t = 20)]
    catch_up_resting_orders_per_connection: u64,
    /// Where the nodes' data directories go; must be a real disk, or the
    /// syncs measure nothing (default: the system's temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    report: ReportArgs,
}

/// How long a benchmark waits for something that takes well under a second
/// on an idle machine (an election, a start, a catch-up): a bound for
/// behaviour, never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);
/// A request that takes longer than this counts as failed (or, in the
/// failover benchmark, as of unknown outcome).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups of acknowledged orders run on this many connections at once.
const LOOKUP_CONNECTIONS: usize = 4;
/// The orders kept per user in the nodes' views: every acknowledged order
/// must stay readable for the failover benchmark to find it.
const CLOSED_ORDERS_KEPT_PER_USER: &str = "100000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Pacing {
    Spin,
    Sleep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// One node, its journal synced before it answers (the default policy).
    Batch,
    /// Three nodes: a majority has the command on disk before the answer.
    Replicated,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Batch => "batch",
            Setup::Replicated => "replicated",
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.clients == 0 || args.failover_clients == 0 || args.seconds == 0 || args.runs == 0 {
        return Err("--clients, --failover-clients, --seconds and --runs must be at least 1".to_string());
    }
    let binary = exchange_binary(args.exchange.as_deref())?;
    let data_root = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    // The clients share one runtime worker; the nodes are processes of
    // their own. Everything shares the machine's cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "machine: {}; load average {}; exchange {}; data under {}",
        benches::report::machine(),
        load_average(),
        binary.display(),
        data_root.display()
    );
    let mut reports = Reports::new("cluster", &args.report);
    let bench = Bench { args, binary, data_root, runtime };
    compare(&bench, &mut reports)?;
    if args.kills > 0 {
        failover(&bench, &mut reports)?;
    }
    if args.catch_up_commands > 0 {
        catch_up(&bench)?;
    }
    println!("load average at the end: {}", load_average());
    reports.write()?;
    Ok(())
}

/// What every part of the benchmark runs with.
struct Bench<'a> {
    args: &'a Args,
    binary: PathBuf,
    /// Where the nodes' data directories go.
    data_root: PathBuf,
    /// The clients' runtime.
    runtime: tokio::runtime::Runtime,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

// ---------------------------------------------------------------------------
// The order stream.

/// Client `client`'s `n`th order: three resting GTC limit orders on its own
/// side (even clients bid 990-999, odd ones offer 1001-1010), then one IOC
/// order on the other side that crosses the book and takes more than the
/// three added, so that the book stays shallow however long the run.
/// `tag` keeps client order ids apart across runs.
fn order_body(tag: &str, client: usize, n: u64) -> String {
    let buyer = client.is_multiple_of(2);
    let client_order_id = format!("{tag}c{client}n{n}");
    if n % 4 == 3 {
        let (side, price) = if buyer { ("sell", "990") } else { ("buy", "1010") };
        format!(
            r#"{{"market":"BTC-USDT","side":"{side}","type":"limit","price":"{price}","quantity":"0.04","time_in_force":"IOC","self_trade_prevention":"cancel_maker","client_order_id":"{client_order_id}"}}"#
        )
    } else {
        let step = (n * 7) % 10;
        let (side, price) = if buyer { ("buy", 990 + step) } else { ("sell", 1001 + step) };
        format!(
            r#"{{"market":"BTC-USDT","side":"{side}","type":"limit","price":"{price}","quantity":"0.01","time_in_force":"GTC","client_order_id":"{client_order_id}"}}"#
        )
    }
}

fn order_id_of(reply: &Reply) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(&reply.body).ok()?["order_id"].as_u64()
}

// ---------------------------------------------------------------------------
// Deployments.

/// Why a deployment did not start; `port_taken` holds its kept directory
/// when a node's port was taken before the node could listen on it.
struct StartError {
    message: String,
    port_taken: Option<PathBuf>,
}

/// Starts of a deployment on fresh ports before a taken port fails the run.
const PORT_TRIES: usize = 3;
/// What a node that cannot listen on its configured port logs (the
/// operating system's text for `EADDRINUSE`).
const PORT_TAKEN_MESSAGE: &str = "Address already in use";

/// The nodes of one setup, in a data directory that goes with them.
struct Deployment {
    nodes: Vec<ExchangeProcess>,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts `setup`, again on fresh ports (up to [`PORT_TRIES`] times in
    /// all) if a node finds its port taken: the ports are picked free
    /// before the nodes start (every member names the others'), and any
    /// process's outgoing connection may take one in between.
    fn start(
        setup: Setup,
        binary: &Path,
        data_root: &Path,
        env: &[(&str, &str)],
        cluster_settings: &str,
    ) -> Result<Deployment, String> {
        let mut tries = 1;
        loop {
            match Deployment::start_once(setup, binary, data_root, env, cluster_settings) {
                Err(StartError { message, port_taken: Some(dir) }) if tries < PORT_TRIES => {
                    let why =
                        message.lines().find(|line| line.contains(PORT_TAKEN_MESSAGE)).unwrap_or_default();
                    println!(
                        "  a node's port was taken before it started ({}); again on fresh ports",
                        why.trim()
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                    tries += 1;
                }
                other => return other.map_err(|error| error.message),
            }
        }
    }

    fn start_once(
        setup: Setup,
        binary: &Path,
        data_root: &Path,
        env: &[(&str, &str)],
        cluster_settings: &str,
    ) -> Result<Deployment, StartError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("exchange-cluster-bench-{}-", setup.name()))
            .tempdir_in(data_root)
            .map_err(|e| StartError { message: format!("{}: {e}", data_root.display()), port_taken: None })?;
        let started = Deployment::start_nodes(setup, binary, dir.path(), env, cluster_settings);
        match started {
            Ok(nodes) => Ok(Deployment { nodes, dir }),
            Err(error) => {
                // Why a node did not start is in its stderr, which goes
                // with the directory: keep it, and show its end here.
                let kept = dir.keep();
                let mut tails = String::new();
                let mut port_taken = false;
                for index in 1..=3 {
                    let path = kept.join(format!("node{index}.stderr"));
                    if let Ok(text) = std::fs::read(&path) {
                        port_taken |= String::from_utf8_lossy(&text).contains(PORT_TAKEN_MESSAGE);
                        let tail = &text[text.len().saturating_sub(2_000)..];
                        tails.push_str(&format!(
                            "\n--- {}:\n{}",
                            path.display(),
                            String::from_utf8_lossy(tail)
                        ));
                    }
                }
                Err(StartError {
                    message: format!(
                        "{error}; the deployment's directory is kept: {}{tails}",
                        kept.display()
                    ),
                    port_taken: port_taken.then_some(kept),
                })
            }
        }
    }

    /// The nodes of `setup`, their data and stderr under `dir`; the nodes
    /// started so far are killed if one fails to start.
    fn start_nodes(
        setup: Setup,
        binary: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        cluster_settings: &str,
    ) -> Result<Vec<ExchangeProcess>, String> {
        let mut nodes = Vec::new();
        match setup {
            Setup::Batch => {
                let data = dir.join("node1");
                let data = data.display().to_string();
                let mut settings = vec![
                    ("EXCHANGE_DATA_DIR", data.as_str()),
                    ("EXCHANGE_LISTEN", "127.0.0.1:0"),
                    ("EXCHANGE_WS_LISTEN", "127.0.0.1:0"),
                    ("EXCHANGE_DURABILITY", "batch"),
                ];
                settings.extend_from_slice(env);
                nodes.push(ExchangeProcess::start(binary, None, &settings, &dir.join("node1.stderr"))?);
            }
            Setup::Replicated => {
                for (index, (config, _)) in
                    write_cluster_configs(dir, 3, cluster_settings)?.iter().enumerate()
                {
                    let stderr = dir.join(format!("node{}.stderr", index + 1));
                    nodes.push(ExchangeProcess::start(binary, Some(config), env, &stderr)?);
                }
            }
        }
        Ok(nodes)
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.rest).collect()
    }

    fn stderr_paths(&self) -> String {
        self.nodes.iter().map(|node| node.stderr_path().display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// `GET /health` of the node at `address`, if it answers in time.
async fn health(address: SocketAddr) -> Option<serde_json::Value> {
    let ask = async {
        let mut connection = Connection::open(address).await.ok()?;
        connection.get_json("/health").await.ok().map(|(_, value)| value)
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

/// The index of the node that leads in the newest term (a single node
/// leads itself), waiting for one; `except` is left out.
async fn leader(addresses: &[SocketAddr], except: Option<usize>) -> Result<usize, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut best: Option<(u64, usize)> = None;
        for (index, address) in addresses.iter().enumerate() {
            if Some(index) == except {
                continue;
            }
            let Some(health) = health(*address).await else { continue };
            let cluster = &health["cluster"];
            if cluster.is_null() {
                return Ok(index);
            }
            if cluster["role"] == "leader" {
                let term = cluster["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, index));
                }
            }
        }
        if let Some((_, index)) = best {
            return Ok(index);
        }
        if Instant::now() > deadline {
            return Err(format!("no leader within {PATIENCE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last command the node at `address` applied.
/// The node's applied `seq` from its `/health`, or why there is none (a
/// failed connection, no answer within a second, an answer without it).
/// The node's applied seq, asked again (a fresh connection, 1 s each) until
/// [`PATIENCE`] runs out: right after the bulk load's 512 connections a
/// loaded machine may drop a connection attempt, which the kernel retries
/// only after a second. The error names every failed attempt.
async fn applied_seq_or_why(address: SocketAddr) -> Result<u64, String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    while started.elapsed() < PATIENCE {
        let ask = async {
            let mut connection = Connection::open(address).await.map_err(|e| format!("connect: {e}"))?;
            let (status, value) =
                connection.get_json("/health").await.map_err(|e| format!("GET /health: {e}"))?;
            value["seq"].as_u64().ok_or_else(|| format!("GET /health: {status} without a seq: {value}"))
        };
        let attempt = tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .map_err(|_| "GET /health: no answer within 1 s".to_string())
            .and_then(|r| r);
        match attempt {
            Ok(seq) => return Ok(seq),
            Err(why) => failures.push(format!("after {} ms: {why}", started.elapsed().as_millis())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{address}: {}", failures.join("; ")))
}

async fn applied_seq(address: SocketAddr) -> Option<u64> {
    health(address).await?["seq"].as_u64()
}

/// Waits until the node at `address` has applied `seq`.
async fn wait_applied(address: SocketAddr, seq: u64) -> Result<(), String> {
    wait_applied_within(address, seq, PATIENCE).await
}

/// [`wait_applied`], giving up after `patience`.
async fn wait_applied_within(address: SocketAddr, seq: u64, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    loop {
        let at = applied_seq(address).await.unwrap_or(0);
        if at >= seq {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{address} stuck at seq {at} < {seq} after {patience:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node refuses signed changes signed before it started (they may be
/// replays of requests its previous process executed): waits until the
/// clock has passed that point.
async fn wait_signable(address: SocketAddr) -> Result<(), String> {
    let health = health(address).await.ok_or_else(|| format!("{address} does not answer /health"))?;
    let from_ms = health["signed_changes_from_ms"].as_u64().unwrap_or(0) as u128;
    let now = now_ms();
    if now < from_ms {
        tokio::time::sleep(Duration::from_millis((from_ms - now) as u64 + 1)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. replicated vs batch.

/// One measurement's figures.
#[derive(Clone, Copy)]
struct Figures {
    orders_per_s: f64,
    ns: [u64; 5],
}

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

impl Figures {
    fn of(orders_per_s: f64, histogram: &Histogram<u64>) -> Figures {
        let mut ns = [0; 5];
        for (slot, (quantile, _)) in ns.iter_mut().zip(QUANTILES) {
            *slot = histogram.value_at_quantile(quantile);
        }
        ns[4] = histogram.max();
        Figures { orders_per_s, ns }
    }

    /// The median of each figure on its own over `all`.
    fn median(all: &[Figures]) -> Figures {
        let mut rates: Vec<f64> = all.iter().map(|f| f.orders_per_s).collect();
        let mut ns = [0; 5];
        for (i, slot) in ns.iter_mut().enumerate() {
            let mut values: Vec<f64> = all.iter().map(|f| f.ns[i] as f64).collect();
            *slot = median(&mut values) as u64;
        }
        Figures { orders_per_s: median(&mut rates), ns }
    }

    fn line(&self) -> String {
        let mut text = format!("{:>7} orders/s | ack", format_rate(self.orders_per_s));
        for (i, (_, name)) in QUANTILES.iter().enumerate() {
            text += &format!(" {name} {:>8}", format_ns(self.ns[i]));
        }
        text + &format!(" max {:>8}", format_ns(self.ns[4]))
    }
}

fn offered_name(rate: u64) -> String {
    if rate == 0 {
        "closed loop".to_string()
    } else {
        format!("{}/s offered", format_rate(rate as f64))
    }
}

fn compare(bench: &Bench, reports: &mut Reports) -> Result<(), String> {
    let Bench { args, binary, data_root, runtime } = bench;
    println!(
        "\n== ack latency and throughput: replicated (3 processes) vs batch (1 process); {} clients, \
         {} s per measurement after {} ms of warm-up, {} round(s); open-loop pacing: {:?}",
        args.clients, args.seconds, args.warmup_ms, args.runs, args.pacing
    );
    // figures[setup][rate] over the rounds, and the merged histograms.
    let setups = [Setup::Batch, Setup::Replicated];
    let mut figures: Vec<Vec<Vec<Figures>>> = vec![vec![Vec::new(); args.rates.len()]; 2];
    let mut merged: Vec<Vec<Histogram<u64>>> = vec![vec![latency_histogram(); args.rates.len()]; 2];
    for round in 0..args.runs {
        // Alternate which goes first, so that a drift of the machine's load
        // does not favour one.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for s in order {
            let setup = setups[s];
            let deployment = Deployment::start(setup, binary, data_root, &[], "")?;
            let addresses = deployment.addresses();
            let result: Result<(), String> = runtime.block_on(async {
                let leader = addresses[leader(&addresses, None).await?];
                wait_signable(leader).await?;
                let keys = seed(leader, ADMIN_TOKEN, args.clients).await?;
                for (r, &rate) in args.rates.iter().enumerate() {
                    let tag = format!("w{round}{s}{r}");
                    drive(leader, &keys, rate, args.pacing, Duration::from_millis(args.warmup_ms), &tag)
                        .await?;
                    let tag = format!("m{round}{s}{r}");
                    let (orders_per_s, histogram) =
                        drive(leader, &keys, rate, args.pacing, Duration::from_secs(args.seconds), &tag)
                            .await?;
                    let measured = Figures::of(orders_per_s, &histogram);
                    println!(
                        "round {} {:<10} {:<16} {}  (n={})",
                        round + 1,
                        setup.name(),
                        offered_name(rate),
                        measured.line(),
                        histogram.len()
                    );
                    figures[s][r].push(measured);
                    let _ = merged[s][r].add(&histogram);
                }
                Ok(())
            });
            result.map_err(|e| {
                format!("{}: {e}; the nodes' logs: {}", setup.name(), deployment.stderr_paths())
            })?;
        }
    }
    println!("\nmedians over {} round(s):", args.runs);
    for (r, &rate) in args.rates.iter().enumerate() {
        let batch = Figures::median(&figures[0][r]);
        let replicated = Figures::median(&figures[1][r]);
        println!("  {:<10} {:<16} {}", "batch", offered_name(rate), batch.line());
        println!("  {:<10} {:<16} {}", "replicated", offered_name(rate), replicated.line());
        let throughput_ratio = replicated.orders_per_s / batch.orders_per_s;
        let p50_us = (replicated.ns[0] as f64 - batch.ns[0] as f64) / 1e3;
        let p99_us = (replicated.ns[2] as f64 - batch.ns[2] as f64) / 1e3;
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        println!(
            "  replicated/batch, {}: throughput x{throughput_ratio:.2} (goal >= 0.5: {}), \
             p50 {p50_us:+.0} us (goal <= +200: {}), p99 {p99_us:+.0} us (goal <= +1000: {})",
            offered_name(rate),
            verdict(throughput_ratio >= 0.5),
            verdict(p50_us <= 200.0),
            verdict(p99_us <= 1_000.0)
        );
        for (s, setup) in setups.iter().enumerate() {
            reports.add(&format!("{} {}", setup.name(), offered_name(rate)), &merged[s][r]);
        }
    }
    Ok(())
}

/// Sends orders to `leader` for `length`, one client per key; closed loop
/// at rate 0, else each client on its share of a uniform schedule, its
/// latency counted from the intended send time (a client that falls behind
/// carries the delay into every later order). Orders per second and the
/// ack latencies; any order not acknowledged is an error.
async fn drive(
    leader: SocketAddr,
    keys: &[Key],
    rate: u64,
    pacing: Pacing,
    length: Duration,
    tag: &str,
) -> Result<(f64, Histogram<u64>), String> {
    let clients = keys.len();
    let epoch = Instant::now() + Duration::from_millis(20);
    let deadline = epoch + length;
    let mut tasks = Vec::new();
    for (client, key) in keys.iter().enumerate() {
        let key = key.clone();
        let tag = tag.to_string();
        let interval = Duration::from_nanos((1_000_000_000 * clients as u64).checked_div(rate).unwrap_or(0));
        let offset = Duration::from_nanos((1_000_000_000 * client as u64).checked_div(rate).unwrap_or(0));
        tasks.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let mut connection = Connection::open(leader).await?;
            tokio::time::sleep_until(epoch.into()).await;
            let mut n: u64 = 0;
            loop {
                let intended = epoch + offset + interval * n as u32;
                if intended >= deadline || (rate == 0 && Instant::now() >= deadline) {
                    break;
                }
                if rate > 0 && pacing == Pacing::Sleep {
                    tokio::time::sleep_until(intended.into()).await;
                } else if rate > 0 {
                    // The runtime's timer ticks in milliseconds: sleep to
                    // just before the send time, then yield until it.
                    if let Some(early) = intended.checked_sub(Duration::from_millis(2)) {
                        tokio::time::sleep_until(early.into()).await;
                    }
                    while Instant::now() < intended {
                        tokio::task::yield_now().await;
                    }
                }
                let started = if rate > 0 { intended } else { Instant::now() };
                let body = order_body(&tag, client, n);
                let reply = tokio::time::timeout(REQUEST_TIMEOUT, connection.place_order(&key, &body, n))
                    .await
                    .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
                if reply.status != 200 {
                    return Err(format!(
                        "order refused: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ));
                }
                histogram.saturating_record((started.elapsed().as_nanos() as u64).max(1));
                n += 1;
            }
            Ok::<_, String>(histogram)
        }));
    }
    let mut histogram = latency_histogram();
    for task in tasks {
        let part = task.await.map_err(|e| e.to_string())??;
        let _ = histogram.add(&part);
    }
    let elapsed = Instant::now().saturating_duration_since(epoch).as_secs_f64().max(1e-9);
    Ok((histogram.len() as f64 / elapsed, histogram))
}

// ---------------------------------------------------------------------------
// 2. Failover under load.

/// An order a client was told was accepted.
#[derive(Clone, Copy)]
struct Acked {
    key: usize,
    order_id: u64,
    node: usize,
    at: Instant,
}

/// What the failover clients share with the benchmark.
struct Load {
    nodes: Vec<SocketAddr>,
    keys: Vec<Key>,
    /// The node the clients last found leading.
    leader_hint: AtomicUsize,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    /// Orders whose outcome the client cannot know: the connection broke
    /// under them, or the node answered 504 (the leader changed under the
    /// proposal). They are not counted as acknowledged.
    unknown: AtomicU64,
    /// Answers a client did not expect; any makes the benchmark fail.
    errors: Mutex<Vec<String>>,
}

impl Load {
    fn acked_len(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// The first order acknowledged after `since` by a node other than `old`.
    fn first_ack_after(&self, since: Instant, old: usize) -> Option<Instant> {
        let acked = self.acked.lock().ok()?;
        acked.iter().rev().take_while(|a| a.at > since).filter(|a| a.node != old).map(|a| a.at).min()
    }

    fn error(&self, text: String) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(text);
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One failover client: orders to the leader until told to stop. A `421`
/// (not applied anywhere) is retried on the node its `X-Leader` names, or
/// on the next node while an election is under way; a broken connection
/// or a `504` leaves the order's outcome unknown, and the client goes on
/// with a new one.
async fn failover_client(load: Arc<Load>, client: usize) {
    let key = load.keys[client].clone();
    let count = load.nodes.len();
    let mut node = load.leader_hint.load(Ordering::Relaxed);
    let mut connection: Option<Connection> = None;
    let mut nonce: u64 = 0;
    let mut n: u64 = 0;
    'orders: while !load.stop.load(Ordering::Relaxed) {
        let body = order_body("f", client, n);
        n += 1;
        loop {
            if load.stop.load(Ordering::Relaxed) {
                break 'orders;
            }
            if connection.as_ref().map(Connection::address) != Some(load.nodes[node]) {
                connection = Connection::open(load.nodes[node]).await.ok();
            }
            let Some(open) = connection.as_mut() else {
                // Refused: the node is down; nothing was sent.
                node = (node + 1) % count;
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            };
            nonce += 1;
            let reply =
                match tokio::time::timeout(REQUEST_TIMEOUT, open.place_order(&key, &body, nonce)).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) | Err(_) => {
                        connection = None;
                        load.unknown.fetch_add(1, Ordering::Relaxed);
                        node = (node + 1) % count;
                        continue 'orders;
                    }
                };
            match reply.status {
                200 => {
                    let Some(order_id) = order_id_of(&reply) else {
                        load.error(format!(
                            "an acknowledgement without order_id: {}",
                            String::from_utf8_lossy(&reply.body)
                        ));
                        break 'orders;
                    };
                    let at = Instant::now();
                    if let Ok(mut acked) = load.acked.lock() {
                        acked.push(Acked { key: client, order_id, node, at });
                    }
                    load.leader_hint.store(node, Ordering::Relaxed);
                    continue 'orders;
                }
                421 => {
                    let named = reply.leader.and_then(|l| load.nodes.iter().position(|a| a.to_string() == l));
                    match named {
                        Some(leader) if leader != node => node = leader,
                        _ => {
                            node = (node + 1) % count;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                // The matcher's queue is full: not applied, retry.
                503 => tokio::time::sleep(Duration::from_millis(5)).await,
                504 => {
                    load.unknown.fetch_add(1, Ordering::Relaxed);
                    continue 'orders;
                }
                status => {
                    load.error(format!(
                        "node {}: unexpected {status} {}",
                        node + 1,
                        String::from_utf8_lossy(&reply.body)
                    ));
                    break 'orders;
                }
            }
        }
    }
}

/// Looks every order of `orders` up on the node at `address`; the ones
/// not found (after a few tries: reads may trail the node's own answers
/// by a moment).
async fn missing_orders(address: SocketAddr, keys: &[Key], orders: &[Acked]) -> Result<Vec<u64>, String> {
    let chunk = orders.len().div_ceil(LOOKUP_CONNECTIONS).max(1);
    let mut tasks = Vec::new();
    for part in orders.chunks(chunk) {
        let part = part.to_vec();
        let keys = keys.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(address).await?;
            let mut missing = Vec::new();
            for order in part {
                let mut tries = 0;
                loop {
                    let query = format!("order_id={}", order.order_id);
                    let reply = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        connection.signed_get(&keys[order.key], "/order", &query),
                    )
                    .await
                    .map_err(|_| format!("GET /order: no answer within {REQUEST_TIMEOUT:?}"))??;
                    match reply.status {
                        200 => break,
                        404 if tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        404 => {
                            missing.push(order.order_id);
                            break;
                        }
                        status => {
                            return Err(format!(
                                "GET /order: {status} {}",
                                String::from_utf8_lossy(&reply.body)
                            ))
                        }
                    }
                }
            }
            Ok::<_, String>(missing)
        }));
    }
    let mut missing = Vec::new();
    for task in tasks {
        missing.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(missing)
}

fn failover(bench: &Bench, reports: &mut Reports) -> Result<(), String> {
    let Bench { args, binary, data_root, runtime } = bench;
    println!(
        "\n== failover under load: 3 processes, {} clients sending orders to the leader, {} SIGKILLs of the leader",
        args.failover_clients, args.kills
    );
    let mut deployment = Deployment::start(
        Setup::Replicated,
        binary,
        data_root,
        &[("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", CLOSED_ORDERS_KEPT_PER_USER)],
        "",
    )?;
    let logs = deployment.stderr_paths();
    let result = failover_rounds(args, &mut deployment, runtime, reports);
    result.map_err(|e| format!("{e}; the nodes' logs: {logs}"))
}

fn failover_rounds(
    args: &Args,
    deployment: &mut Deployment,
    runtime: &tokio::runtime::Runtime,
    reports: &mut Reports,
) -> Result<(), String> {
    let addresses = deployment.addresses();
    let first = runtime.block_on(leader(&addresses, None))?;
    let keys = runtime.block_on(async {
        for address in &addresses {
            wait_signable(*address).await?;
        }
        seed(addresses[first], ADMIN_TOKEN, args.failover_clients).await
    })?;
    let load = Arc::new(Load {
        nodes: addresses.clone(),
        keys,
        leader_hint: AtomicUsize::new(first),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        unknown: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let clients: Vec<_> =
        (0..args.failover_clients).map(|c| runtime.spawn(failover_client(Arc::clone(&load), c))).collect();
    let mut times = latency_histogram();
    let mut elections = latency_histogram();
    let mut checked = 0;
    let mut lookups = 0;
    let outcome = (|| -> Result<(), String> {
        // Some load before the first kill.
        let deadline = Instant::now() + PATIENCE;
        while load.acked_len() < 200 {
            if Instant::now() > deadline {
                return Err("the clients got no orders through".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for kill in 1..=args.kills {
            let old = runtime.block_on(leader(&addresses, None))?;
            let killed_at = Instant::now();
            deployment.nodes[old].kill();
            // When the others have elected a leader (as their `/health`
            // says, polled every 10 ms), to tell the election from what
            // follows it until the first acknowledgement.
            let new = runtime.block_on(leader(&addresses, Some(old)))?;
            let elected = killed_at.elapsed();
            elections.saturating_record((elected.as_nanos() as u64).max(1));
            let deadline = killed_at + PATIENCE;
            let first_ack = loop {
                if let Some(at) = load.first_ack_after(killed_at, old) {
                    break at;
                }
                if let Some(error) = load.errors.lock().ok().and_then(|e| e.first().cloned()) {
                    return Err(error);
                }
                if Instant::now() > deadline {
                    return Err(format!("kill {kill}: no order acknowledged within {PATIENCE:?}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let took = first_ack.duration_since(killed_at);
            times.saturating_record((took.as_nanos() as u64).max(1));
            // Every order acknowledged since the last look, the ones the
            // killed leader acknowledged last among them, must be on the new
            // leader.
            let to_check: Vec<Acked> = load.acked.lock().map(|a| a[checked..].to_vec()).unwrap_or_default();
            let missing = runtime.block_on(missing_orders(addresses[new], &load.keys, &to_check))?;
            if !missing.is_empty() {
                return Err(format!(
                    "kill {kill}: {} acknowledged orders not on the new leader (node {}): {:?}",
                    missing.len(),
                    new + 1,
                    &missing[..missing.len().min(10)]
                ));
            }
            checked += to_check.len();
            lookups += to_check.len();
            // The killed node back on its data directory, caught up with
            // what the leader has applied, before the next kill.
            let restarted_at = Instant::now();
            deployment.nodes[old].restart()?;
            let restarted = deployment.nodes[old].rest;
            let (seq, caught_up) = runtime.block_on(async {
                let seq = applied_seq(addresses[new]).await.ok_or("the new leader does not answer")?;
                wait_applied(restarted, seq).await?;
                let caught_up = restarted_at.elapsed();
                // It may lead after the next kill.
                wait_signable(restarted).await?;
                Ok::<_, String>((seq, caught_up))
            })?;
            println!(
                "kill {kill:>2}: node {} killed; node {} leads after {:>8}, acknowledges an order after {:>8}; \
                 {:>4} orders checked on it; node {} restarted, at seq {seq} after {}",
                old + 1,
                new + 1,
                format_ns(elected.as_nanos() as u64),
                format_ns(took.as_nanos() as u64),
                to_check.len(),
                old + 1,
                format_ns(caught_up.as_nanos() as u64)
            );
        }
        Ok(())
    })();
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = runtime.block_on(client);
    }
    outcome?;
    if let Some(error) = load.errors.lock().ok().and_then(|e| e.first().cloned()) {
        return Err(error);
    }
    // At the end, every order acknowledged in the whole run on the leader.
    let all: Vec<Acked> = load.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let last = runtime.block_on(leader(&addresses, None))?;
    let missing = runtime.block_on(missing_orders(addresses[last], &load.keys, &all))?;
    if !missing.is_empty() {
        return Err(format!(
            "{} acknowledged orders not on the final leader: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    for (what, histogram) in
        [("a new leader in /health", &elections), ("the first order acknowledged by the new leader", &times)]
    {
        println!(
            "failover, SIGKILL of the leader -> {what}, {} kills: p50 {}  p99 {}  max {}",
            histogram.len(),
            format_ns(histogram.value_at_quantile(0.5)),
            format_ns(histogram.value_at_quantile(0.99)),
            format_ns(histogram.max())
        );
    }
    println!(
        "orders: {} acknowledged, all found on the new leader after each kill ({} lookups) and all {} \
         on the final leader (node {}); {} of unknown outcome (connection broken by the kill or 504)",
        all.len(),
        lookups,
        all.len(),
        last + 1,
        load.unknown.load(Ordering::Relaxed)
    );
    reports.add("failover after SIGKILL", &times);
    reports.add("election after SIGKILL", &elections);
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Catch-up.

/// How a follower catches up in one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CatchUpWay {
    /// Images off: the follower replays its own log, then fetches the
    /// entries it missed from the leader.
    Log,
    /// The leader's log is purged past the follower: it installs the
    /// leader's image, then applies the log after it.
    Image,
}

impl CatchUpWay {
    fn name(self) -> &'static str {
        match self {
            CatchUpWay::Log => "by log",
            CatchUpWay::Image => "by image",
        }
    }
}

/// What the follower says when it installs the leader's image
/// (gateway/src/cluster.rs, logged at info by `gateway::cluster`).
const INSTALLED_MESSAGE: &str = "installed the snapshot image";
/// The nodes' log filter: warnings, and the install message above.
const CATCH_UP_LOG_LEVEL: &str = "warn,gateway::cluster=info";

/// One catch-up measurement.
struct CatchUp {
    behind_commands: u64,
    listening: Duration,
    caught_up: Duration,
    /// The leader's newest image (its `/health` `snapshot_seq`) and the
    /// follower's image file afterwards, if any.
    snapshot_seq: u64,
    image_bytes: Option<u64>,
    /// The follower restarted once more with nothing missed: listening,
    /// and applied the leader's last command.
    restart_listening: Duration,
    restart_applied: Duration,
}

/// The bulk loader's orders, on top of [`order_body`]'s stream: each
/// connection first places `resting` GTC orders far from the touch
/// (bids 500-899, offers 1101-1500, by its user's side), which nothing in
/// the stream crosses, so the book keeps a standing depth of
/// connections x `resting` orders over 800 levels however long the load;
/// then [`order_body`]'s stream (three resting orders near the touch, one
/// IOC that takes more than they add). No client order ids: the state
/// stays the book and the balances, not a growing map of ids.
fn bulk_order_body(user: usize, connection: usize, resting: u64, n: u64) -> String {
    let buyer = user.is_multiple_of(2);
    if n < resting {
        let step = (connection as u64 * resting + n) % 400;
        let (side, price) = if buyer { ("buy", 500 + step) } else { ("sell", 1101 + step) };
        return format!(
            r#"{{"market":"BTC-USDT","side":"{side}","type":"limit","price":"{price}","quantity":"0.01","time_in_force":"GTC"}}"#
        );
    }
    let n = n - resting;
    if n % 4 == 3 {
        let (side, price) = if buyer { ("sell", "990") } else { ("buy", "1010") };
        format!(
            r#"{{"market":"BTC-USDT","side":"{side}","type":"limit","price":"{price}","quantity":"0.04","time_in_force":"IOC","self_trade_prevention":"cancel_maker"}}"#
        )
    } else {
        let step = (n * 7) % 10;
        let (side, price) = if buyer { ("buy", 990 + step) } else { ("sell", 1001 + step) };
        format!(
            r#"{{"market":"BTC-USDT","side":"{side}","type":"limit","price":"{price}","quantity":"0.01","time_in_force":"GTC"}}"#
        )
    }
}

/// The catch-up's bulk loader: signed orders over REST through the
/// leader's real order entry (the proposer, the Raft log, every node's
/// matcher), on many keep-alive connections with one order in flight
/// each. The proposer packs the orders that wait while an entry is being
/// written into the next entry, so with enough connections the entries
/// are full and the leader's append, sync and round trip are paid once
/// per few hundred commands instead of once per order.
struct BulkLoader {
    leader: SocketAddr,
    keys: Vec<Key>,
    /// Orders each connection has sent so far, and requests (an order
    /// sent again counts again): a later [`load`](Self::load) goes on with
    /// its stream and its nonces where the last stopped.
    sent: Vec<(u64, u64)>,
    resting: u64,
    /// Orders refused with `421` and sent again, over all calls.
    refused: Arc<AtomicU64>,
}

impl BulkLoader {
    fn new(leader: SocketAddr, keys: Vec<Key>, connections: usize, resting: u64) -> BulkLoader {
        BulkLoader { leader, keys, sent: vec![(0, 0); connections], resting, refused: Arc::default() }
    }

    /// Sends `orders` orders, each answered 200 (a `503`, the matcher's
    /// queue full, is sent again). Prints its progress every 30 s.
    async fn load(&mut self, orders: u64) -> Result<Duration, String> {
        let remaining = Arc::new(AtomicU64::new(orders));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (connection, &(sent, requests)) in self.sent.iter().enumerate() {
            let user = connection % self.keys.len();
            let key = self.keys[user].clone();
            let (leader, resting) = (self.leader, self.resting);
            let (remaining, done) = (Arc::clone(&remaining), Arc::clone(&done));
            let refused = Arc::clone(&self.refused);
            tasks.push(tokio::spawn(async move {
                let mut link = Connection::open(leader).await?;
                let mut n = sent;
                // Nonces unique per key across its connections, calls and
                // tries: one per request.
                let mut nonce = ((connection as u64) << 40) | requests;
                while remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_ok()
                {
                    let body = bulk_order_body(user, connection, resting, n);
                    let refused_since = Instant::now();
                    loop {
                        nonce += 1;
                        let reply =
                            tokio::time::timeout(REQUEST_TIMEOUT, link.place_order(&key, &body, nonce))
                                .await
                                .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
                        match reply.status {
                            200 => break,
                            503 => tokio::time::sleep(Duration::from_millis(5)).await,
                            // Not applied: the leader has not heard from a
                            // majority within an election timeout (under
                            // this load, its one live follower's acks came
                            // late), or leads no more. Counted, and sent
                            // again; a lost leadership fails the run below.
                            421 => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                if refused_since.elapsed() > PATIENCE {
                                    return Err(format!(
                                        "refused with 421 for {PATIENCE:?}: {}",
                                        String::from_utf8_lossy(&reply.body)
                                    ));
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                            status => {
                                return Err(format!(
                                    "order refused: {status} {}",
                                    String::from_utf8_lossy(&reply.body)
                                ))
                            }
                        }
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, String>((n, nonce & ((1 << 40) - 1)))
            }));
        }
        let progress = {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    let count = done.load(Ordering::Relaxed);
                    println!(
                        "  loading: {count} of {orders} orders after {:.0} s ({} orders/s); load average {}",
                        started.elapsed().as_secs_f64(),
                        format_rate(count as f64 / started.elapsed().as_secs_f64()),
                        load_average()
                    );
                }
            })
        };
        let mut outcome = Ok(());
        for (connection, task) in tasks.into_iter().enumerate() {
            match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(position) => self.sent[connection] = position,
                Err(error) => {
                    remaining.store(0, Ordering::Relaxed);
                    if outcome.is_ok() {
                        outcome = Err(error);
                    }
                }
            }
        }
        progress.abort();
        outcome.map(|()| started.elapsed())
    }
}

/// CPU time (user and system) process `pid` has used so far, from
/// `/proc/<pid>/stat` (in the kernel's clock ticks, 100 per second here).
fn cpu_time(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            // The fields after the command name, which may hold spaces.
            let rest = &text[text.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_s)
}

/// The leader's packing so far, from its `/metrics`: entries of commands
/// proposed, commands in them, the most in one.
async fn packing(address: SocketAddr) -> Option<(u64, u64, u64)> {
    let mut connection = Connection::open(address).await.ok()?;
    let reply = connection.request("GET", "/metrics", &[], String::new()).await.ok()?;
    let text = String::from_utf8_lossy(&reply.body);
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        value("exchange_cluster_entries_proposed_total")?,
        value("exchange_cluster_commands_proposed_total")?,
        value("exchange_cluster_commands_per_entry_max")?,
    ))
}

/// The resting orders of every key's user on the node at `address`.
async fn resting_orders(address: SocketAddr, keys: &[Key]) -> Result<u64, String> {
    let mut connection = Connection::open(address).await?;
    let mut count = 0;
    for key in keys {
        let reply = connection.signed_get(key, "/orders/open", "limit=1000").await?;
        let value: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|e| format!("GET /orders/open: {e}"))?;
        let orders = value["orders"].as_array().ok_or_else(|| format!("GET /orders/open: {value}"))?;
        count += orders.len() as u64;
    }
    Ok(count)
}

/// How long a catch-up of `commands` may take before the benchmark gives
/// up: [`PATIENCE`], plus a second per 5,000 commands (a bound far below
/// any rate measured here, never a measurement).
fn catch_up_patience(commands: u64) -> Duration {
    PATIENCE + Duration::from_secs(commands / 5_000)
}

fn catch_up(bench: &Bench) -> Result<(), String> {
    let args = bench.args;
    let mut ways: Vec<CatchUpWay> = Vec::new();
    for &way in &args.catch_up_ways {
        if !ways.contains(&way) {
            ways.push(way);
        }
    }
    if ways.is_empty() {
        return Err("--catch-up-ways names no way (log, image)".to_string());
    }
    let by_image = ways.contains(&CatchUpWay::Image);
    if by_image
        && (args.catch_up_log_kept_entries >= args.catch_up_commands
            || args.catch_up_snapshot_every_entries == 0)
    {
        return Err(format!(
            "--catch-up-log-kept-entries ({}) must be below --catch-up-commands ({}) and \
             --catch-up-snapshot-every-entries at least 1, or the follower catches up by log in the image case",
            args.catch_up_log_kept_entries, args.catch_up_commands
        ));
    }
    if args.catch_up_connections == 0 || args.catch_up_users == 0 {
        return Err("--catch-up-connections and --catch-up-users must be at least 1".to_string());
    }
    println!(
        "\n== catch-up: a follower down while {} orders are applied, then restarted; {} (by log: images \
         off; by image: snapshot_every_entries = {}, log_kept_after_snapshot_entries = {}), {} round(s)",
        args.catch_up_commands,
        ways.iter().map(|way| way.name()).collect::<Vec<_>>().join(", "),
        args.catch_up_snapshot_every_entries,
        args.catch_up_log_kept_entries,
        args.runs
    );
    let mut all: Vec<(CatchUpWay, CatchUp)> = Vec::new();
    for round in 0..args.runs {
        // Which goes first alternates, so that neither always meets a
        // fresher (or more loaded) machine.
        let mut order = ways.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for way in order {
            let figures = catch_up_once(bench, way)?;
            println!(
                "round {} {:<8}: {} commands behind; listening after {}, caught up after {} \
                 ({} commands behind/s); leader's image at seq {}, follower's image file {}; \
                 restarted again with nothing missed: listening after {}, applied after {}",
                round + 1,
                way.name(),
                figures.behind_commands,
                format_ns(figures.listening.as_nanos() as u64),
                format_ns(figures.caught_up.as_nanos() as u64),
                format_rate(figures.behind_commands as f64 / figures.caught_up.as_secs_f64()),
                figures.snapshot_seq,
                figures.image_bytes.map_or("none".to_string(), format_bytes),
                format_ns(figures.restart_listening.as_nanos() as u64),
                format_ns(figures.restart_applied.as_nanos() as u64),
            );
            all.push((way, figures));
        }
    }
    println!("catch-up, medians over {} round(s):", args.runs);
    for way in [CatchUpWay::Log, CatchUpWay::Image].into_iter().filter(|way| ways.contains(way)) {
        let of_way: Vec<&CatchUp> = all.iter().filter(|(w, _)| *w == way).map(|(_, f)| f).collect();
        let med = |f: &dyn Fn(&CatchUp) -> f64| median(&mut of_way.iter().map(|c| f(c)).collect::<Vec<_>>());
        let behind = med(&|c| c.behind_commands as f64);
        let caught_up_s = med(&|c| c.caught_up.as_secs_f64());
        let rate = med(&|c| c.behind_commands as f64 / c.caught_up.as_secs_f64());
        let image = med(&|c| c.image_bytes.unwrap_or(0) as f64);
        let restart_s = med(&|c| c.restart_applied.as_secs_f64());
        println!(
            "  {:<8} {:>7} commands behind: caught up after {} ({} commands behind/s); image file {}; \
             restart with nothing missed, applied after {} ({})",
            way.name(),
            behind as u64,
            format_ns((caught_up_s * 1e9) as u64),
            format_rate(rate),
            if way == CatchUpWay::Image { format_bytes(image as u64) } else { "none".to_string() },
            format_ns((restart_s * 1e9) as u64),
            if way == CatchUpWay::Image { "from its own image" } else { "replaying its whole log" },
        );
    }
    Ok(())
}

fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The size of the first file named `raft-snapshot.img` under `dir`.
fn image_file_bytes(dir: &Path) -> Option<u64> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(bytes) = image_file_bytes(&path) {
                return Some(bytes);
            }
        } else if path.file_name().is_some_and(|name| name == "raft-snapshot.img") {
            return std::fs::metadata(&path).ok().map(|m| m.len());
        }
    }
    None
}

/// What the process wrote to `path` after its first `from_bytes` bytes.
fn log_after(path: &Path, from_bytes: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(text.get(from_bytes as usize..).unwrap_or_default()).into_owned()
}

fn catch_up_once(bench: &Bench, way: CatchUpWay) -> Result<CatchUp, String> {
    let Bench { args, binary, data_root, runtime } = bench;
    let cluster_settings = match way {
        CatchUpWay::Log => "snapshot_every_entries = 0\n".to_string(),
        CatchUpWay::Image => format!(
            "snapshot_every_entries = {}\nlog_kept_after_snapshot_entries = {}\n",
            args.catch_up_snapshot_every_entries, args.catch_up_log_kept_entries
        ),
    };
    // Both ways log the same, so that the logging costs the same.
    let env = [("EXCHANGE_LOG_LEVEL", CATCH_UP_LOG_LEVEL)];
    let mut deployment = Deployment::start(Setup::Replicated, binary, data_root, &env, &cluster_settings)?;
    let logs = deployment.stderr_paths();
    let addresses = deployment.addresses();
    let result = (|| -> Result<CatchUp, String> {
        let leader_index = runtime.block_on(leader(&addresses, None))?;
        let leader = addresses[leader_index];
        let keys = runtime.block_on(async {
            for address in &addresses {
                wait_signable(*address).await?;
            }
            seed(leader, ADMIN_TOKEN, args.catch_up_users).await
        })?;
        let follower = (leader_index + 1) % addresses.len();
        // The follower holds everything so far (the setup) when it goes.
        let (seq_before, follower_index) = runtime.block_on(async {
            let seq =
                applied_seq_or_why(leader).await.map_err(|e| format!("the leader does not answer: {e}"))?;
            wait_applied(addresses[follower], seq).await?;
            let health = health(addresses[follower]).await.ok_or("the follower does not answer")?;
            Ok::<_, String>((seq, health["cluster"]["applied_index"].as_u64().unwrap_or(0)))
        })?;
        deployment.nodes[follower].kill();
        let packing_before = runtime.block_on(packing(leader)).unwrap_or_default();
        // Where the load's CPU goes: the leader, the live follower, this
        // process (the loader).
        let live_follower = (follower + 1) % addresses.len();
        let pids = [
            deployment.nodes[leader_index].pid(),
            deployment.nodes[live_follower].pid(),
            Some(std::process::id()),
        ];
        let cpu_before: Vec<Duration> = pids.iter().map(|p| p.map_or(Duration::ZERO, cpu_time)).collect();
        let mut loader = BulkLoader::new(
            leader,
            keys.clone(),
            args.catch_up_connections,
            args.catch_up_resting_orders_per_connection,
        );
        let loaded = runtime.block_on(loader.load(args.catch_up_commands))?;
        // By image, the load goes on until the leader has purged its log
        // past the follower: it purges only at its next image and while no
        // replication to the follower is in flight.
        let purge_deadline = Instant::now() + PATIENCE * 4;
        let mut more = 0;
        let mut purged_past = way != CatchUpWay::Image;
        while !purged_past {
            let purged = runtime
                .block_on(health(leader))
                .and_then(|h| h["cluster"]["purged_index"].as_u64())
                .unwrap_or(0);
            purged_past = purged > follower_index;
            if purged_past {
                break;
            }
            if Instant::now() > purge_deadline {
                return Err(format!(
                    "the leader's log is purged to index {purged} only, not past the follower's {follower_index}; \
                     lower --catch-up-snapshot-every-entries or --catch-up-log-kept-entries"
                ));
            }
            let chunk = (args.catch_up_connections as u64 * 4).max(1_000);
            runtime.block_on(loader.load(chunk))?;
            more += chunk;
        }
        let seq = runtime
            .block_on(applied_seq_or_why(leader))
            .map_err(|e| format!("the leader does not answer after the load: {e}"))?;
        let (entries, commands, commands_per_entry_max) = {
            let after = runtime.block_on(packing(leader)).unwrap_or_default();
            (after.0 - packing_before.0, after.1 - packing_before.1, after.2)
        };
        // Every order went to the node that led at the start: it must lead
        // still, or the figures would mix in an election.
        if runtime.block_on(self::leader(&addresses, None))? != leader_index {
            return Err("the leader changed during the load".to_string());
        }
        let cpu_us_per_order: Vec<String> = pids
            .iter()
            .zip(&cpu_before)
            .map(|(p, before)| {
                let used = p.map_or(Duration::ZERO, cpu_time).saturating_sub(*before);
                format!("{:.1}", used.as_secs_f64() * 1e6 / (seq - seq_before).max(1) as f64)
            })
            .collect();
        let resting = runtime.block_on(resting_orders(leader, &keys))?;
        println!(
            "  {} loaded {} orders (+{more} until the leader purged) on {} connections of {} users in {} \
             ({} orders/s, load average {}); leader: {entries} entries of {commands} commands \
             ({:.0} per entry, at most {commands_per_entry_max}), {} orders refused with 421 and sent again; \
             CPU per order: leader {} us, live follower {} us, loader {} us; \
             state: {} users, {resting} resting orders, seq {seq}",
            way.name(),
            args.catch_up_commands,
            args.catch_up_connections,
            args.catch_up_users,
            format_ns(loaded.as_nanos() as u64),
            format_rate(args.catch_up_commands as f64 / loaded.as_secs_f64()),
            load_average(),
            commands as f64 / entries.max(1) as f64,
            loader.refused.load(Ordering::Relaxed),
            cpu_us_per_order[0],
            cpu_us_per_order[1],
            cpu_us_per_order[2],
            args.catch_up_users,
        );
        let patience = catch_up_patience(seq - seq_before);
        let snapshot_seq =
            runtime.block_on(health(leader)).and_then(|h| h["snapshot_seq"].as_u64()).unwrap_or(0);
        let stderr = deployment.nodes[follower].stderr_path().to_path_buf();
        let stderr_before = std::fs::metadata(&stderr).map_or(0, |m| m.len());
        let restarted_at = Instant::now();
        deployment.nodes[follower].restart()?;
        let listening = restarted_at.elapsed();
        runtime.block_on(wait_applied_within(addresses[follower], seq, patience))?;
        let caught_up = restarted_at.elapsed();
        let installed = log_after(&stderr, stderr_before).contains(INSTALLED_MESSAGE);
        match (way, installed) {
            (CatchUpWay::Image, false) => {
                return Err(format!(
                    "the follower caught up without installing the leader's image (no {INSTALLED_MESSAGE:?} \
                     in {}): the figure would not be of an install",
                    stderr.display()
                ))
            }
            (CatchUpWay::Log, true) => {
                return Err(format!("the follower installed an image with images off ({})", stderr.display()))
            }
            _ => {}
        }
        let follower_dir = deployment.dir.path().join(format!("node{}", follower + 1));
        let image_bytes = image_file_bytes(&follower_dir);
        // Once more with nothing missed: from its own image (by image) or
        // replaying its whole log.
        deployment.nodes[follower].kill();
        let restarted_at = Instant::now();
        deployment.nodes[follower].restart()?;
        let restart_listening = restarted_at.elapsed();
        runtime.block_on(wait_applied_within(addresses[follower], seq, patience))?;
        let restart_applied = restarted_at.elapsed();
        Ok(CatchUp {
            behind_commands: seq - seq_before,
            listening,
            caught_up,
            snapshot_seq,
            image_bytes,
            restart_listening,
            restart_applied,
        })
    })();
    if result.is_err() {
        // The logs are what tells a product fault from a benchmark one:
        // keep them past the run.
        let Deployment { nodes, dir } = deployment;
        drop(nodes);
        let _ = dir.keep();
    }
    result.map_err(|e| format!("{e}; the nodes' logs (kept): {logs}"))
}
