//! The matcher benchmark: feeds a seeded workload to the engine on one
//! thread and prints throughput and per-command latency percentiles.
//!
//! ```text
//! cargo run --release -p benches --bin matcher                         # 10M commands, single market
//! cargo run --release -p benches --bin matcher -- --workload many-markets
//! cargo run --release -p benches --bin matcher -- --from single.workload --runs 5
//! ```
//!
//! Each run is two passes over the same commands on a fresh engine: one
//! untimed per command, for throughput; one timing every command with the
//! monotonic clock, for the latency histogram. The clock's own cost (its
//! p50 is printed) is inside every latency figure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use benches::report::{
    clock_overhead_ns_p50, format_ns, format_rate, latency_histogram, machine, median, percentiles,
    rate_per_s, ReportArgs, Reports,
};
use clap::{Parser, ValueEnum};
use engine_core::{Engine, Event, EventKind, StampedCommand};
use workload::{self, Shape, Workload};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    SingleMarket,
    ManyMarkets,
    Peer,
}

#[derive(Parser, Debug)]
#[command(
    about = "Feeds a seeded workload to the matching engine and prints throughput and latency percentiles"
)]
struct Args {
    /// Which generated workload to run (ignored with --from).
    #[arg(long, value_enum, default_value = "single-market")]
    workload: WorkloadArg,
    /// Measured commands to generate (ignored with --from).
    #[arg(long, default_value_t = 10_000_000)]
    commands: usize,
    /// Seed of the generator (ignored with --from).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run a workload file written by the `workload` binary instead.
    #[arg(long)]
    from: Option<PathBuf>,
    /// How many times to run it; the summary gives the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Commands run untimed before each pass, to warm caches and the allocator.
    /// They are taken from the start of the workload and also count in the state.
    #[arg(long, default_value_t = 100_000)]
    warmup: usize,
    #[command(flatten)]
    report: ReportArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let shape = match args.workload {
        WorkloadArg::SingleMarket => Shape::SingleMarket,
        WorkloadArg::ManyMarkets => Shape::ManyMarkets,
        WorkloadArg::Peer => Shape::Peer,
    };
    let workload = match benches::workload_from(args.from.as_deref(), shape, args.commands, args.seed)
        .and_then(|workload| benches::runnable(workload, args.runs, args.warmup))
    {
        Ok(workload) => workload,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", workload.description);
    println!("machine: {}", machine());
    println!("clock overhead: p50 {}", format_ns(clock_overhead_ns_p50()));

    let mut throughputs = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut reports = Reports::new("matcher", &args.report);
    for run in 1..=args.runs {
        let (per_s, stats) = throughput_pass(&workload, args.warmup);
        let histogram = latency_pass(&workload, args.warmup);
        println!(
            "run {run}: {} commands/s ({} events/s, {} trades, {} orders resting at the end)",
            format_rate(per_s),
            format_rate(per_s * stats.events as f64 / stats.commands as f64),
            stats.trades,
            stats.resting_end,
        );
        println!("       latency per command: {}", percentiles(&histogram));
        reports.add(&format!("run {run}"), &histogram);
        throughputs.push(per_s);
        p50s.push(histogram.value_at_quantile(0.5) as f64);
        p99s.push(histogram.value_at_quantile(0.99) as f64);
    }
    println!(
        "median of {} runs: {} commands/s, p50 {}, p99 {}",
        args.runs,
        format_rate(median(&mut throughputs)),
        format_ns(median(&mut p50s) as u64),
        format_ns(median(&mut p99s) as u64),
    );
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

struct PassStats {
    commands: u64,
    events: u64,
    trades: u64,
    resting_end: u32,
}

fn engine_after_setup(workload: &Workload, events: &mut Vec<Event>) -> Engine {
    let mut engine = Engine::new(workload.limits);
    for (i, command) in workload.setup.iter().enumerate() {
        events.clear();
        let stamped = StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command };
        // The setup is generated in order: a sequence error is a bug here.
        engine.apply(&stamped, events).expect("setup commands are numbered in order");
    }
    engine
}

fn stamped(workload: &Workload, index: usize) -> StampedCommand {
    let seq = (workload.setup.len() + index) as u64 + 1;
    StampedCommand { seq, timestamp_ns: seq * 100, command: workload.commands[index] }
}

fn throughput_pass(workload: &Workload, warmup: usize) -> (f64, PassStats) {
    let mut events = Vec::with_capacity(1024);
    let mut engine = engine_after_setup(workload, &mut events);
    for index in 0..warmup {
        events.clear();
        let _ = engine.apply(&stamped(workload, index), &mut events);
    }
    let mut event_count = 0u64;
    let mut trades = 0u64;
    let started = Instant::now();
    for index in warmup..workload.commands.len() {
        events.clear();
        let _ = engine.apply(&stamped(workload, index), &mut events);
        event_count += events.len() as u64;
        // Reading the events is what a consumer must do anyway; it keeps the
        // optimiser from discarding them.
        trades += events.iter().filter(|e| matches!(e.kind, EventKind::Trade { .. })).count() as u64;
    }
    let elapsed = started.elapsed();
    let commands = (workload.commands.len() - warmup) as u64;
    let stats = PassStats { commands, events: event_count, trades, resting_end: engine.open_order_count() };
    (rate_per_s(commands, elapsed), stats)
}

fn latency_pass(workload: &Workload, warmup: usize) -> hdrhistogram::Histogram<u64> {
    let mut events = Vec::with_capacity(1024);
    let mut engine = engine_after_setup(workload, &mut events);
    let mut histogram = latency_histogram();
    for index in 0..workload.commands.len() {
        let command = stamped(workload, index);
        events.clear();
        let started = Instant::now();
        let _ = engine.apply(&command, &mut events);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        if index >= warmup {
            histogram.saturating_record(elapsed_ns.max(1));
        }
    }
    histogram
}
