//! PostgreSQL writer benchmark: the sustained write rate (rows/s of all
//! the history tables, events/s and trades/s) with binary COPY versus multi-row INSERT, and the writer's lag
//! while the matcher produces events at full speed.
//!
//! ```text
//! cargo run --release -p benches --bin persistence                     # 1M commands
//! cargo run --release -p benches --bin persistence -- --commands 200000 --modes copy
//! DATABASE_URL=postgres://... cargo run --release -p benches --bin persistence
//! ```
//!
//! The database is a throwaway one: on `DATABASE_URL`'s server, or a
//! private cluster started for the run (fsync off: the figures are the
//! writer's and PostgreSQL's CPU, not the disk's). The workload is the
//! single-market one of the matcher benchmark; its events are produced by
//! the engine first and journaled (so that the writer can regenerate what
//! its feed drops), then offered to the writer's feed as fast as the
//! matcher made them, in batches of `--batch-commands`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use benches::report::{format_rate, rate_per_s};
use clap::Parser;
use engine_core::{Engine, Event, EventKind};
use journal::{DataDir, Durability, JournalConfig, JournalWriter};
use persistence::cluster::Database;
use persistence::{Batch, Stamp, WriteMode, Writer, WriterConfig};
use workload::Shape;

#[derive(Parser, Debug)]
#[command(about = "PostgreSQL writer: COPY vs INSERT write rates and lag behind the matcher")]
struct Args {
    /// Measured commands of the single-market workload (plus its setup).
    #[arg(long, default_value_t = 1_000_000)]
    commands: usize,
    /// Commands per batch offered to the writer (a ring batch of the matcher).
    #[arg(long, default_value_t = 256)]
    batch_commands: usize,
    /// `copy`, `insert` or both, comma-separated.
    #[arg(long, default_value = "copy,insert")]
    modes: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Session {
    batches: Vec<Batch>,
    events: usize,
    trades: usize,
    last_seq: u64,
}

fn produce(data: &DataDir, args: &Args) -> Result<Session, String> {
    let workload = workload::generate(Shape::SingleMarket, args.commands, args.seed);
    let mut config = JournalConfig::new(data.journal());
    config.durability = Durability::None;
    let (mut journal, _) = JournalWriter::open(config).map_err(|e| e.to_string())?;
    let mut engine = Engine::new(workload.limits);
    let stamped = workload.stamped(1_700_000_000_000_000_000, 1_000);
    let mut batches = Vec::new();
    let (mut events_total, mut trades) = (0usize, 0usize);
    for chunk in stamped.chunks(args.batch_commands.max(1)) {
        let mut events: Vec<Event> = Vec::new();
        let mut stamps = Vec::with_capacity(chunk.len());
        for command in chunk {
            journal.append(command).map_err(|e| e.to_string())?;
            engine.apply(command, &mut events).map_err(|e| format!("{e:?}"))?;
            stamps.push(Stamp { seq: command.seq, timestamp_ns: command.timestamp_ns });
        }
        journal.commit_batch().map_err(|e| e.to_string())?;
        events_total += events.len();
        trades += events.iter().filter(|e| matches!(e.kind, EventKind::Trade { .. })).count();
        batches.push(Batch { events: events.into(), stamps: stamps.into() });
    }
    Ok(Session { batches, events: events_total, trades, last_seq: engine.last_seq() })
}

fn run(args: Args) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = DataDir::new(root.path());
    let produced_at = Instant::now();
    let session = produce(&data, &args)?;
    println!(
        "workload: {} commands, {} events, {} trades (made and journaled in {:.2} s)",
        session.last_seq,
        session.events,
        session.trades,
        produced_at.elapsed().as_secs_f64()
    );
    println!(
        "{:<7} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "mode", "seconds", "rows", "rows/s", "events/s", "trades/s", "lag max", "lag at end", "regenerated"
    );
    for mode in args.modes.split(',') {
        let mode = match mode.trim() {
            "copy" => WriteMode::Copy,
            "insert" => WriteMode::Insert,
            other => return Err(format!("unknown mode {other:?}: copy or insert")),
        };
        let database = Database::throwaway().map_err(|e| e.to_string())?;
        let mut config = WriterConfig::new(database.url.clone(), data.clone(), workload_limits(&args));
        config.mode = mode;
        let writer = Writer::start(config, Stamp { seq: 0, timestamp_ns: 0 }).map_err(|e| e.to_string())?;
        // Connected and migrated before the clock starts.
        let ready = Instant::now();
        while !writer.status.connected.load(Ordering::Relaxed) {
            if ready.elapsed() > Duration::from_secs(60) {
                return Err(format!("the writer did not connect: {:?}", writer.status.last_error()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let mut lag_max = 0u64;
        for batch in &session.batches {
            writer.feed.offer(batch.clone());
            lag_max = lag_max.max(writer.status.lag_seq().unwrap_or(0));
        }
        let lag_at_end = writer.status.lag_seq().unwrap_or(0);
        while writer.status.cursor_seq.load(Ordering::Relaxed) < session.last_seq {
            lag_max = lag_max.max(writer.status.lag_seq().unwrap_or(0));
            if let Some(error) = writer.status.last_error() {
                eprintln!("writer: {error}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = started.elapsed();
        let regenerated = writer.status.commands_replayed.load(Ordering::Relaxed);
        let rows = writer.status.rows_written.load(Ordering::Relaxed);
        writer.stop(Duration::from_secs(1));
        println!(
            "{:<7} {:>10.2} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
            format!("{mode:?}").to_lowercase(),
            elapsed.as_secs_f64(),
            rows,
            format_rate(rate_per_s(rows, elapsed)),
            format_rate(rate_per_s(session.events as u64, elapsed)),
            format_rate(rate_per_s(session.trades as u64, elapsed)),
            lag_max,
            lag_at_end,
            regenerated
        );
    }
    println!("rows: inserted or updated in the history tables (orders, trades, ledger, balances, candles, reference)");
    println!("lag: commands between the matcher's last published batch and the database's cursor");
    Ok(())
}

fn workload_limits(args: &Args) -> engine_core::EngineLimits {
    // The same limits the events were produced with (a regeneration replays
    // from an empty engine).
    workload::generate(Shape::SingleMarket, 0, args.seed).limits
}
