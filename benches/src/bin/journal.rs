//! Journal benchmarks: append throughput under each durability policy, the
//! latency of a `batch` sync, replay into the engine, and recovery of a
//! journal with and without a snapshot.
//!
//! ```text
//! cargo run --release -p benches --bin journal                 # 10M commands
//! cargo run --release -p benches --bin journal -- --commands 1000000 --dir /mnt/fast/bench
//! ```
//!
//! Files go to a fresh directory under `--dir` (default: the system's
//! temporary directory), removed at the end. Figures are with a warm page
//! cache: recovery right after a crash of the process, not of the machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use benches::report::{
    format_ns, format_rate, latency_histogram, percentiles, rate_per_s, ReportArgs, Reports,
};
use clap::Parser;
use engine_core::{Engine, EngineLimits, StampedCommand};
use journal::{
    recover, replay, write_snapshot, DataDir, Durability, JournalConfig, JournalWriter, ReadMode,
    RecoverOptions,
};
use workload::Shape;

#[derive(Parser, Debug)]
#[command(about = "Journal benchmarks: appends per durability policy, sync latency, replay and recovery")]
struct Args {
    /// Measured commands of the single-market workload (plus its setup).
    #[arg(long, default_value_t = 10_000_000)]
    commands: usize,
    /// Commands written under the `batch` policy, per batch size.
    #[arg(long, default_value_t = 200_000)]
    batch_commands: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to put the benchmark's files.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    report: ReportArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let base = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("exchange-journal-bench-{}", std::process::id()));
    let result = run(&args, &base);
    let _ = std::fs::remove_dir_all(&base);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn stamped(args: &Args) -> Vec<StampedCommand> {
    workload::generate(Shape::SingleMarket, args.commands, args.seed).stamped(0, 100)
}

fn journal_bytes(dir: &Path) -> Result<u64, String> {
    let report = journal::inspect(dir, |_| {}).map_err(|e| e.to_string())?;
    Ok(report.segments.iter().map(|s| (s.scan.end_offset - journal::SEGMENT_HEADER_BYTES) as u64).sum())
}

fn run(args: &Args, base: &Path) -> Result<(), String> {
    let commands = stamped(args);
    println!(
        "{} commands ({} setup + {} single-market workload, seed {})",
        commands.len(),
        commands.len() - args.commands,
        args.commands,
        args.seed
    );
    println!("files under {}", base.display());
    let mut reports = Reports::new("journal", &args.report);

    // --- appends under `none`: memory speed -------------------------------
    let data = DataDir::new(base.join("none"));
    let config = JournalConfig {
        dir: data.journal(),
        segment_bytes: journal::SEGMENT_BYTES_DEFAULT,
        durability: Durability::None,
        checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
    };
    let (mut writer, _) = JournalWriter::open(config).map_err(|e| e.to_string())?;
    let mut append_ns = latency_histogram();
    let started = Instant::now();
    for command in &commands {
        let t = Instant::now();
        writer.append(command).map_err(|e| e.to_string())?;
        append_ns.saturating_record((t.elapsed().as_nanos() as u64).max(1));
    }
    let elapsed = started.elapsed();
    drop(writer);
    let bytes = journal_bytes(&data.journal())?;
    println!(
        "append, none:       {} records/s, {:.0} MB/s ({} bytes/record, segments of 64 MiB preallocated as they fill)",
        format_rate(rate_per_s(commands.len() as u64, elapsed)),
        bytes as f64 / elapsed.as_secs_f64() / 1e6,
        bytes / commands.len() as u64
    );
    println!("  per append:       {}", percentiles(&append_ns));
    reports.add("append, none", &append_ns);

    // --- appends under `batch`: one sync per batch ------------------------
    let batch_commands = &commands[..args.batch_commands.min(commands.len())];
    for batch_size in [16usize, 64, 256, 1024] {
        let dir = base.join(format!("batch-{batch_size}"));
        let config = JournalConfig {
            dir: dir.clone(),
            segment_bytes: journal::SEGMENT_BYTES_DEFAULT,
            durability: Durability::Batch,
            checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
        };
        let (mut writer, _) = JournalWriter::open(config).map_err(|e| e.to_string())?;
        let mut sync_ns = latency_histogram();
        let started = Instant::now();
        for batch in batch_commands.chunks(batch_size) {
            for command in batch {
                writer.append(command).map_err(|e| e.to_string())?;
            }
            let t = Instant::now();
            writer.commit_batch().map_err(|e| e.to_string())?;
            sync_ns.saturating_record((t.elapsed().as_nanos() as u64).max(1));
        }
        let elapsed = started.elapsed();
        drop(writer);
        let bytes = journal_bytes(&dir)?;
        println!(
            "append, batch {batch_size:>4}: {} records/s, {:.1} MB/s, {} syncs/s",
            format_rate(rate_per_s(batch_commands.len() as u64, elapsed)),
            bytes as f64 / elapsed.as_secs_f64() / 1e6,
            format_rate(rate_per_s(sync_ns.len(), elapsed)),
        );
        println!("  sync per batch:   {}", percentiles(&sync_ns));
        reports.add(&format!("sync, batch of {batch_size}"), &sync_ns);
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }

    // --- appends under `interval` -------------------------------------------
    let dir = base.join("interval");
    let interval_ms = 5;
    let config = JournalConfig {
        dir: dir.clone(),
        segment_bytes: journal::SEGMENT_BYTES_DEFAULT,
        durability: Durability::Interval { interval_ms },
        checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
    };
    let (mut writer, _) = JournalWriter::open(config).map_err(|e| e.to_string())?;
    let interval_commands = &commands[..(args.batch_commands * 10).min(commands.len())];
    let started = Instant::now();
    for batch in interval_commands.chunks(256) {
        for command in batch {
            writer.append(command).map_err(|e| e.to_string())?;
        }
        writer.commit_batch().map_err(|e| e.to_string())?;
    }
    writer.sync().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    drop(writer);
    println!(
        "append, interval {interval_ms} ms (batches of 256): {} records/s",
        format_rate(rate_per_s(interval_commands.len() as u64, elapsed))
    );
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;

    reports.write()?;

    // --- replay and recovery of the `none` journal ---------------------------
    let mut engine = Engine::new(EngineLimits::default());
    let started = Instant::now();
    let replayed = replay(&data.journal(), &mut engine, None, ReadMode::Strict, &mut |_| {})
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    println!(
        "replay into the engine: {} commands in {:.2} s = {} commands/s",
        replayed,
        elapsed.as_secs_f64(),
        format_rate(rate_per_s(replayed, elapsed))
    );
    let final_hash = engine.state_hash();

    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Strict };
    let started = Instant::now();
    let recovery = recover(&data, options, |_| {}).map_err(|e| e.to_string())?;
    println!(
        "recover, no snapshot: {:.2} s to sequence {}",
        started.elapsed().as_secs_f64(),
        recovery.engine.last_seq()
    );
    check_hash(recovery.engine.state_hash(), final_hash)?;

    // A snapshot 100,000 commands before the end, as periodic snapshots leave it.
    let snapshot_at = commands.len().saturating_sub(100_000);
    let mut engine = Engine::new(EngineLimits::default());
    replay(&data.journal(), &mut engine, Some(snapshot_at as u64), ReadMode::Strict, &mut |_| {})
        .map_err(|e| e.to_string())?;
    // What the matcher stops for when it snapshots: a clone of the state.
    let started = Instant::now();
    let copy = engine.clone();
    let clone_ns = started.elapsed().as_nanos() as u64;
    drop(copy);
    println!("snapshot stall on the matcher (state clone): {}", format_ns(clone_ns));
    let started = Instant::now();
    let info = write_snapshot(&data.snapshots(), &engine, journal::SnapshotKeep::newest(1))
        .map_err(|e| e.to_string())?;
    println!(
        "snapshot write: {} at sequence {} ({} resting orders, {} bytes)",
        format_ns(started.elapsed().as_nanos() as u64),
        info.seq,
        engine.open_order_count(),
        info.bytes
    );
    let started = Instant::now();
    let recovery = recover(&data, options, |_| {}).map_err(|e| e.to_string())?;
    println!(
        "recover, snapshot + {} records: {:.3} s to sequence {}",
        recovery.replayed,
        started.elapsed().as_secs_f64(),
        recovery.engine.last_seq()
    );
    check_hash(recovery.engine.state_hash(), final_hash)
}

fn check_hash(got: u64, expected: u64) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("recovered state hash {got:016x} differs from the replayed {expected:016x}"))
    }
}
