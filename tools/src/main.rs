//! `exctl`: the exchange operator's tool.
//!
//! It reads a data directory (`DIR/journal`, `DIR/snapshots`): inspect
//! and verify it, dump records (prices, quantities and amounts as
//! decimals), replay it into an engine to see the state and its hash at
//! any sequence number. Two verbs write into it, each only while no server
//! holds the journal's lock: `snapshot` (offline) and `journal repair`, the
//! explicit, recorded way to accept lost records.
//!
//! It administers a running exchange through its admin API (`admin.rs`):
//! assets, markets, users, API keys, deposits, withdrawals, limits, a
//! cluster's members, a node's history database seeded from its snapshot image; and asks it how it is (`health`, `lag`). A market is written `BTC-USDT` in
//! every output; `BTCUSDT` and `BTC/USDT` are understood on input
//! (`market_name.rs`). A refusal prints the server's message and exits 1.
//!
//! ```text
//! exctl journal inspect ./data
//! exctl journal dump ./data --from 1000 --limit 20 --json
//! exctl journal verify ./data
//! exctl journal repair ./data --after 41999 --accept-loss
//! exctl replay ./data --to 5000000
//! exctl snapshot ./data
//! exctl seed --file examples/demo-seed.toml --server http://127.0.0.1:8080
//! exctl market add BTC-USDT --tick-size 0.01 --lot-size 0.0001 --taker-fee 0.001
//! exctl market status BTCUSDT halted
//! exctl user add && exctl key add 0 && exctl deposit 0 1.5 BTC
//! exctl limits set --open-orders-per-user-max 500 --json
//! exctl cluster status --server http://10.0.0.1:8080
//! exctl cluster add 4 --raft 10.0.0.4:7100 --api 10.0.0.4:8080 --learner
//! exctl database seed-from-image --reason 'new reporting database' --server http://10.0.0.2:8080
//! ```

mod admin;
mod cluster_check;
mod cluster_log;
mod dump;
mod http;
mod market_name;
mod seed;
mod status;
mod time;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine_core::{EngineLimits, Side};
use indicatif::{ProgressBar, ProgressStyle};
use journal::{DataDir, JournalLock, ReadMode, RecoverOptions};

#[derive(Parser, Debug)]
#[command(
    name = "exctl",
    about = "Operator's tool for the exchange: its data directory and a running server's admin API",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Look at the journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Rebuild the state from the newest snapshot and the journal, and print
    /// the sequence reached, the state hash and each market's book.
    Replay {
        /// The data directory (holding `journal/` and `snapshots/`).
        dir: PathBuf,
        /// Stop after this sequence number.
        #[arg(long)]
        to: Option<u64>,
    },
    #[command(flatten)]
    Admin(admin::AdminCommand),
    /// Create assets, markets, users with API keys, and deposits on a
    /// running exchange from a TOML file (see examples/demo-seed.toml).
    Seed {
        #[arg(long)]
        file: PathBuf,
        /// The exchange's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The admin token (default: the EXCHANGE_ADMIN_TOKEN variable).
        #[arg(long)]
        admin_token: Option<String>,
        /// Also write the created users' keys as JSON to this file (mode 0600).
        #[arg(long)]
        keys_out: Option<PathBuf>,
    },
    /// Ask a running exchange how it is (GET /health): status, sequence
    /// numbers, snapshot, WebSocket connections, the history database.
    /// Exit status: 0 ok, 1 degraded (history behind or away; trading goes
    /// on), 3 the journal failed (orders refused), 2 not reachable.
    Health {
        /// The exchange's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print the exchange's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How far behind the matcher each follower is: the journal's sync,
    /// the newest snapshot, the history database (commands and ms).
    Lag {
        /// The exchange's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Apply the PostgreSQL migrations the database lacks (the exchange
    /// also applies them when it connects).
    Migrate {
        /// A tokio-postgres connection string; defaults to $DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Replay the journal and write a snapshot of the state it reaches,
    /// with the read views (closed orders, trades, bars) as the server
    /// keeps them.
    Snapshot {
        dir: PathBuf,
        /// Snapshots to keep (older ones are deleted).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// The server's configuration file, for how much history the views
        /// keep (EXCHANGE_* variables apply too, as for the server).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Segments, sequence ranges, sizes, record counts, first and last timestamps.
    Inspect { dir: PathBuf },
    /// Print records: as text with prices, quantities and amounts in
    /// decimals and markets by name, or as JSON lines (the raw record plus
    /// the decimals as strings under "decimal").
    ///
    /// On a cluster node (a Raft log) it prints entries: index, term,
    /// committed or not, the kind (blank, membership, commands, hash mark)
    /// and each command numbered as every node numbers it; --from is then a
    /// log index and --limit counts entries.
    Dump {
        dir: PathBuf,
        /// The first sequence number (default 1), or on a Raft log the first
        /// log index (default: the first one held).
        #[arg(long)]
        from: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum and sequence number, every segment file's size,
    /// the segments and the durable sequence number the checkpoint records,
    /// and that no snapshot is ahead of the journal. Exit status: 0 clean,
    /// 1 a torn tail only (cut off at the next open), 2 damage.
    ///
    /// On a cluster node (a Raft log): every segment's checksums, the chain
    /// of indexes and terms, RAFT_STATE and RAFT_SEGMENTS, the committed
    /// index and the purged position against the log, the snapshot image
    /// against the log, and a replay of the committed entries checking
    /// every hash mark.
    Verify { dir: PathBuf },
    /// Keep the journal's records up to --after and drop the rest: segments
    /// after it, snapshots ahead of it and the old checkpoint are moved to
    /// DIR/repair-<UTC time>/ (a segment it cuts is copied there first), and
    /// DIR/repairs.log records what was dropped, when and by whom. Refused
    /// while a server holds the journal.
    ///
    /// On a cluster node (a Raft log) --after is a log index: the entries
    /// after it, uncommitted and at most damaged, are cut (the segments and
    /// RAFT_SEGMENTS copied aside first, recorded in DIR/repairs.log); a cut
    /// at or below the committed index is refused: such a node is re-seeded
    /// from the cluster (wiped, and rejoined).
    Repair {
        /// The data directory.
        dir: PathBuf,
        /// The last record to keep (at most the last valid record); on a
        /// Raft log, the last log index to keep (at least the committed one).
        #[arg(long)]
        after: u64,
        /// Yes, drop the records after --after. Without it, only show what
        /// would be dropped.
        #[arg(long)]
        accept_loss: bool,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of our output
    // goes away (`exctl journal dump DIR | head`), instead of panicking.
    #[cfg(unix)]
    // Safety: restores the default disposition of one signal at start-up,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // The journal's warnings (a checkpoint it cannot write, ...) reach the
    // operator on standard error; EXCTL_LOG filters them (default: warn).
    let filter = std::env::var("EXCTL_LOG").unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder().parse(&filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let result = match cli.command {
        Top::Journal(JournalCommand::Inspect { dir }) => inspect(&dir),
        Top::Journal(JournalCommand::Dump { dir, from, limit, json }) => check_dir(&dir).and_then(|()| {
            if replication::log_file::is_raft_log(&journal_dir(&dir)) {
                cluster_log::dump(&journal_dir(&dir), &DataDir::new(&dir).snapshots(), from, limit, json)
            } else {
                dump::dump(&dir, &journal_dir(&dir), from.unwrap_or(1), limit, json)
            }
        }),
        Top::Journal(JournalCommand::Verify { dir }) => verify(&dir),
        Top::Journal(JournalCommand::Repair { dir, after, accept_loss }) => repair(&dir, after, accept_loss),
        Top::Replay { dir, to } => replay(&dir, to),
        Top::Snapshot { dir, keep, config } => snapshot(&dir, keep, config.as_deref()),
        Top::Migrate { database_url } => migrate(database_url),
        Top::Health { server, json } => status::health(&server, json),
        Top::Lag { server, json } => status::lag(&server, json),
        Top::Admin(command) => admin::run(command),
        Top::Seed { file, server, admin_token, keys_out } => {
            seed_command(&file, &server, admin_token, keys_out.as_deref())
        }
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// A data directory's journal, or the directory itself when it holds segments.
fn journal_dir(dir: &Path) -> PathBuf {
    let nested = DataDir::new(dir).journal();
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn check_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a directory", dir.display()))
    }
}

fn inspect(dir: &Path) -> Result<ExitCode, String> {
    check_dir(dir)?;
    let journal = journal_dir(dir);
    if replication::log_file::is_raft_log(&journal) {
        return cluster_log::inspect(&journal);
    }
    let report = journal::inspect(&journal, |_| {}).map_err(|e| e.to_string())?;
    println!("journal {}", journal.display());
    println!(
        "{:<26} {:>12} {:>12} {:>10} {:>12} {:>12}  {:<30}  {:<30}",
        "segment",
        "first seq",
        "last seq",
        "records",
        "used bytes",
        "capacity",
        "first timestamp",
        "last timestamp"
    );
    for segment in &report.segments {
        let scan = &segment.scan;
        let name = segment.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!(
            "{:<26} {:>12} {:>12} {:>10} {:>12} {:>12}  {:<30}  {:<30}",
            name,
            segment.first_seq,
            scan.last_seq.map_or("-".into(), |s| s.to_string()),
            scan.records,
            scan.end_offset,
            segment.capacity_bytes,
            scan.first_timestamp_ns.map_or("-".into(), time::format_timestamp_ns),
            scan.last_timestamp_ns.map_or("-".into(), time::format_timestamp_ns),
        );
    }
    println!(
        "{} segments, {} records, last sequence {}",
        report.segments.len(),
        report.records(),
        report.last_seq().map_or("-".into(), |s| s.to_string())
    );
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> Result<ExitCode, String> {
    check_dir(dir)?;
    if replication::log_file::is_raft_log(&journal_dir(dir)) {
        return cluster_check::verify(dir, &journal_dir(dir), &DataDir::new(dir).snapshots());
    }
    let data = DataDir::new(dir);
    // A data directory (its journal and its snapshots), or a journal directory.
    let is_data_dir = data.journal().is_dir() || data.snapshots().is_dir();
    let journal = if is_data_dir { data.journal() } else { dir.to_path_buf() };
    let mut report = if journal.is_dir() {
        journal::inspect(&journal, |_| {}).map_err(|e| e.to_string())?
    } else {
        journal::JournalReport::default()
    };
    if is_data_dir {
        let ahead = journal::snapshots_ahead(&data.snapshots(), &report).map_err(|e| e.to_string())?;
        report.problems.extend(ahead);
    }
    let records = report.records();
    let checkpoint = match report.checkpoint {
        Some(c) => format!(
            "checkpoint: durable sequence {}, segments from {} to {} ({} of them)",
            c.durable_seq, c.oldest_first_seq, c.newest_first_seq, c.segment_count
        ),
        None => "checkpoint: none (a journal from before checkpoints, or none yet): missing segments at \
                 either end and records lost before a durable point cannot be told from a crash; the \
                 server writes one when it opens the journal"
            .to_string(),
    };
    if report.problems.is_empty() {
        println!(
            "ok: {} segments, {records} records, every checksum and sequence number valid (last sequence {})",
            report.segments.len(),
            report.last_seq().map_or("-".into(), |s| s.to_string())
        );
        println!("{checkpoint}");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("damage: {problem}");
    }
    println!("{checkpoint}");
    if report.problems.iter().all(|p| p.is_torn_tail()) {
        println!(
            "verdict: a torn tail only, the shape a crash leaves; {records} records before it are valid"
        );
        Ok(ExitCode::from(1))
    } else {
        println!(
            "verdict: the journal is damaged; records from the first damaged place on cannot be trusted"
        );
        let keep = journal::last_valid_seq(&journal).map_err(|e| e.to_string())?.unwrap_or(0);
        println!(
            "way out: restore the journal from a replica or backup; or accept the loss of every record after \
             the last one to keep (at most {keep}, the end of the valid run): exctl journal repair {} --after \
             {keep} --accept-loss",
            dir.display()
        );
        Ok(ExitCode::from(2))
    }
}

fn repair(dir: &Path, after: u64, accept_loss: bool) -> Result<ExitCode, String> {
    check_dir(dir)?;
    if replication::log_file::is_raft_log(&journal_dir(dir)) {
        let request = cluster_check::RepairRequest {
            after_index: after,
            accept_loss,
            requested_by: requested_by(),
            when_utc: now_utc(),
        };
        return cluster_check::repair(dir, &journal_dir(dir), &request);
    }
    let data = DataDir::new(dir);
    if !accept_loss {
        let plan = journal::plan_repair(&data, after).map_err(|e| e.to_string())?;
        println!("a repair of {} after sequence {after} would do this:", dir.display());
        for line in plan.describe() {
            println!("  {line}");
        }
        return Err(format!(
            "refused without --accept-loss: the records after {after} would be dropped for good (the files are \
             moved aside, not deleted); restore from a replica or backup if you can, or rerun with \
             --accept-loss to accept the loss"
        ));
    }
    let request =
        journal::RepairRequest { after_seq: after, requested_by: requested_by(), when_utc: now_utc() };
    let report = journal::repair(&data, &request).map_err(|e| e.to_string())?;
    for line in &report.lines {
        println!("{line}");
    }
    println!("recorded in {}", report.log.display());
    Ok(ExitCode::SUCCESS)
}

/// The operator, for the repair log: user (uid) on host.
fn requested_by() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown user".into());
    let mut host = [0u8; 256];
    // Safety: the buffer is valid for its length; the name is NUL-terminated
    // on success (or truncated, which the search for NUL handles).
    let rc = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    let host = if rc == 0 {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "unknown host".into()
    };
    // Safety: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    format!("{user} (uid {uid}) on {host}")
}

/// Now in UTC, to the second: `2026-11-25T12:00:00Z`.
fn now_utc() -> String {
    let ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let full = time::format_timestamp_ns(ns);
    format!("{}Z", full.split('.').next().unwrap_or(&full))
}

fn progress_bar(data: &DataDir) -> ProgressBar {
    // The journal's last record, read from its newest segment alone (the
    // length is raised if the replay passes it: the journal may grow).
    let end_seq = journal::end_seq(&data.journal()).ok().flatten().unwrap_or(0);
    let bar = ProgressBar::new(end_seq);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} replaying [{bar:40}] seq {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn recover(dir: &Path, to: Option<u64>) -> Result<journal::Recovery, String> {
    recover_with::<()>(dir, to, &()).map(|(recovery, ())| recovery)
}

/// Recovers the engine (and `D`) as the server does: from an empty engine
/// with the default limits, the limits the journal records applied as the
/// replay reaches them.
fn recover_with<D: journal::Derived>(
    dir: &Path,
    to: Option<u64>,
    setup: &D::Setup,
) -> Result<(journal::Recovery, D), String> {
    check_dir(dir)?;
    let data = DataDir::new(dir);
    let bar = progress_bar(&data);
    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: to, mode: ReadMode::Follow };
    let recovery = journal::recover_with::<D>(&data, options, setup, |seq| {
        if seq > bar.length().unwrap_or(0) {
            bar.set_length(seq);
        }
        bar.set_position(seq);
    })
    .map_err(|e| e.to_string());
    bar.finish_and_clear();
    recovery
}

fn replay(dir: &Path, to: Option<u64>) -> Result<ExitCode, String> {
    if replication::log_file::is_raft_log(&journal_dir(dir)) {
        let replica = cluster_log::replay(&journal_dir(dir), &DataDir::new(dir).snapshots(), to)?;
        print_engine(replica.engine());
        return Ok(ExitCode::SUCCESS);
    }
    let recovery = recover(dir, to)?;
    for (path, why) in &recovery.skipped_snapshots {
        println!("skipped snapshot {}: {why}", path.display());
    }
    match &recovery.snapshot {
        Some(info) => println!("snapshot: {} (sequence {})", info.path.display(), info.seq),
        None => println!("snapshot: none (replayed from the first record)"),
    }
    let engine = &recovery.engine;
    let seconds = recovery.elapsed.as_secs_f64();
    println!(
        "replayed {} commands in {:.3} s ({:.0} commands/s)",
        recovery.replayed,
        seconds,
        recovery.replayed as f64 / seconds.max(1e-9)
    );
    print_engine(engine);
    Ok(ExitCode::SUCCESS)
}

/// The sequence reached, the state hash and each market's book.
fn print_engine(engine: &engine_core::Engine) {
    println!("sequence: {}", engine.last_seq());
    println!("state hash: {:016x}", engine.state_hash());
    println!("users: {}, resting orders: {}", engine.user_count(), engine.open_order_count());
    let snapshot = engine.snapshot();
    for market in engine.markets() {
        let symbol = |asset: engine_core::AssetId| {
            engine.assets().get(asset.0 as usize).map_or_else(|| asset.to_string(), |a| a.symbol.to_string())
        };
        let top = engine.top_of_book(market.id);
        let best = |level: Option<(engine_core::Ticks, engine_core::Lots)>| {
            level.map_or("-".to_string(), |(price, qty)| format!("{qty} lots @ {price} ticks"))
        };
        let orders = snapshot.orders.iter().filter(|o| o.market == market.id).count();
        println!(
            "market {} {} {:?}: bid {} | ask {} | {} bid levels, {} ask levels, {} orders",
            market.id,
            market_name::canonical(&symbol(market.rules.base), &symbol(market.rules.quote)),
            market.status,
            best(top.and_then(|t| t.bid)),
            best(top.and_then(|t| t.ask)),
            engine.depth(market.id, Side::Buy, usize::MAX).len(),
            engine.depth(market.id, Side::Sell, usize::MAX).len(),
            orders,
        );
    }
}

fn migrate(database_url: Option<String>) -> Result<ExitCode, String> {
    let url = database_url
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
        .ok_or("no database: pass --database-url or set DATABASE_URL")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        tokio::spawn(connection);
        let applied = persistence::migrate(&mut client).await.map_err(|e| e.to_string())?;
        if applied.is_empty() {
            println!("the database is up to date");
        } else {
            for name in applied {
                println!("applied {name}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn snapshot(dir: &Path, keep: usize, config: Option<&Path>) -> Result<ExitCode, String> {
    let config = gateway::Config::load(config, std::env::vars()).map_err(|e| e.to_string())?;
    check_dir(dir)?;
    let data = DataDir::new(dir);
    if !data.journal().is_dir() {
        return Err(format!("{} holds no journal/ directory", dir.display()));
    }
    // Held until the snapshot is written: no server may run meanwhile.
    let _lock = JournalLock::acquire(&data.journal()).map_err(|e| e.to_string())?;
    let (recovery, views) = recover_with::<gateway::views::Views>(dir, None, &config.retention_of_views())?;
    let views = views.state().encode()?;
    let info = journal::write_snapshot_with_views(
        &data.snapshots(),
        &recovery.engine,
        Some(&views),
        journal::SnapshotKeep::newest(keep),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "wrote {} (sequence {}, state hash {:016x}, {} bytes, of which {} of read views)",
        info.path.display(),
        info.seq,
        info.state_hash,
        info.bytes,
        info.views_bytes
    );
    Ok(ExitCode::SUCCESS)
}

fn seed_command(
    file: &Path,
    server: &str,
    admin_token: Option<String>,
    keys_out: Option<&Path>,
) -> Result<ExitCode, String> {
    let token = admin_token
        .or_else(|| std::env::var("EXCHANGE_ADMIN_TOKEN").ok())
        .ok_or("give --admin-token or set EXCHANGE_ADMIN_TOKEN")?;
    let seed_file = seed::load(file)?;
    let server = http::Server::parse(server)?;
    let users = seed::apply(&server, &token, &seed_file, |line| println!("{line}"))?;
    for user in &users {
        println!(
            "key for {} (user {}): api_key={} secret={}",
            user.name, user.user_id, user.api_key, user.secret
        );
    }
    if let Some(path) = keys_out {
        let text = serde_json::to_string_pretty(&users).map_err(|e| e.to_string())?;
        write_private(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("keys written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a file only its owner can read (it holds secrets).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
