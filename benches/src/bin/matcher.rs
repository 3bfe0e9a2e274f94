//! The matcher benchmark: feeds a seeded workload to the engine on one
//! thread and prints throughput and per-command latency percentiles.
//!
//! ```text
//! cargo run --release -p benches --bin matcher                         # 10M commands, single market
//! cargo run --release -p benches --bin matcher -- --workload many-markets
//! cargo run --release -p benches --bin matcher -- --from single.workload --runs 5
//! cargo run --release -p benches --bin matcher -- --special-percent 20
//! cargo run --release -p benches --bin matcher -- --only special    # e.g. under `perf record`
//! ```
//!
//! A generated workload runs twice per run, side by side: the plain mix and
//! the same shape, seed and length with `--special-percent` (10 by default)
//! of its commands spent on stops, take-profits, icebergs and order lists
//! (see the `workload` crate); the summary gives both rates and p99s and
//! their ratio, and the ratio of the rates per second of CPU time the
//! matcher thread got (steadier than the wall clock on a shared machine).
//! Each run also prints the work per command (events, trades, orders
//! accepted, fired and refilled): the special mix does more of it, and its
//! rate can only be compared fairly with that in view; its p99 is also
//! given over the commands that fire or release no order (a command that
//! fires stops enters each of them too). A counting allocator reports the
//! heap allocations per command of each timed pass after warm-up (the
//! steady state allocates nothing per command: every figure should be 0 or
//! close to it).
//!
//! Each run is two passes over the same commands on a fresh engine: one
//! untimed per command, for throughput; one timing every command with the
//! monotonic clock, for the latency histogram. The clock's own cost (its
//! p50 is printed) is inside every latency figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use benches::report::{
    clock_overhead_ns_p50, format_ns, format_rate, latency_histogram, machine, median, percentiles,
    rate_per_s, thread_cpu_ns, ReportArgs, Reports,
};
use clap::{Parser, ValueEnum};
use engine_core::{Engine, Event, EventKind, StampedCommand};
use workload::{self, Mix, Shape, Workload};

/// Counts heap allocations (and reallocations), so that a pass can say how
/// many it made per command.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    SingleMarket,
    ManyMarkets,
    Peer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnlyArg {
    Plain,
    Special,
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
    /// Percent of the commands of the second, side-by-side workload spent
    /// on stops, take-profits, icebergs and order lists (0: plain mix only;
    /// ignored with --from).
    #[arg(long, default_value_t = 10)]
    special_percent: u64,
    /// Run only one of the two workloads (to profile one alone).
    #[arg(long, value_enum)]
    only: Option<OnlyArg>,
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
    let plain = match benches::workload_from(args.from.as_deref(), shape, args.commands, args.seed)
        .and_then(|workload| benches::runnable(workload, args.runs, args.warmup))
    {
        Ok(workload) => workload,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut workloads = vec![("plain", plain)];
    if args.from.is_none() && args.special_percent > 0 {
        if args.special_percent > 70 {
            eprintln!("error: --special-percent is at most 70 (the special orders replace limit orders)");
            return ExitCode::FAILURE;
        }
        let started = Instant::now();
        let mix = Mix { special_percent: args.special_percent };
        let special = workload::generate_mix(shape, args.commands, args.seed, mix);
        eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
        workloads.push(("special", special));
    }
    match args.only {
        Some(OnlyArg::Plain) => workloads.truncate(1),
        Some(OnlyArg::Special) if workloads.len() == 2 => {
            workloads.remove(0);
        }
        Some(OnlyArg::Special) => {
            eprintln!("error: --only special needs a generated workload with --special-percent above 0");
            return ExitCode::FAILURE;
        }
        None => {}
    }
    for (name, workload) in &workloads {
        println!("{name}: {}", workload.description);
    }
    println!("machine: {}", machine());
    println!("clock overhead: p50 {}", format_ns(clock_overhead_ns_p50()));

    let mut summaries: Vec<Summary> = workloads.iter().map(|_| Summary::default()).collect();
    let mut reports = Reports::new("matcher", &args.report);
    for run in 1..=args.runs {
        // Side by side: each run measures every workload, so that drift of
        // the machine hits both alike.
        for ((name, workload), summary) in workloads.iter().zip(&mut summaries) {
            let (per_s, stats) = throughput_pass(workload, args.warmup);
            let (histogram, single) = latency_pass(workload, args.warmup);
            println!(
                "run {run} {name}: {} commands/s ({} per CPU second; {} events/s, {} trades, {} fired, {} orders open at the end, {:.4} allocations per command)",
                format_rate(per_s),
                format_rate(stats.cpu_per_s),
                format_rate(per_s * stats.events as f64 / stats.commands as f64),
                stats.trades,
                stats.fired,
                stats.resting_end,
                stats.allocations as f64 / stats.commands as f64,
            );
            let per_command = |count: u64| count as f64 / stats.commands as f64;
            println!(
                "       work per command: {:.3} events, {:.4} trades, {:.4} orders accepted, {:.4} fired, {:.4} refilled; {:.1} ns per event",
                per_command(stats.events),
                per_command(stats.trades),
                per_command(stats.accepted),
                per_command(stats.fired),
                per_command(stats.refilled),
                1e9 / (per_s * per_command(stats.events)),
            );
            println!("       latency per command: {}", percentiles(&histogram));
            if single.len() < histogram.len() {
                println!("       of the commands that fire or release nothing: {}", percentiles(&single));
            }
            reports.add(&format!("run {run} {name}"), &histogram);
            summary.throughputs.push(per_s);
            summary.cpu_throughputs.push(stats.cpu_per_s);
            summary.p50s.push(histogram.value_at_quantile(0.5) as f64);
            summary.p99s.push(histogram.value_at_quantile(0.99) as f64);
            summary.single_p99s.push(single.value_at_quantile(0.99) as f64);
            summary.events_per_command = stats.events as f64 / stats.commands as f64;
            summary.allocations_per_command =
                summary.allocations_per_command.max(stats.allocations as f64 / stats.commands as f64);
        }
    }
    let mut medians = Vec::new();
    for ((name, _), summary) in workloads.iter().zip(&mut summaries) {
        let (rate, p50, p99) =
            (median(&mut summary.throughputs), median(&mut summary.p50s), median(&mut summary.p99s));
        let cpu_rate = median(&mut summary.cpu_throughputs);
        println!(
            "median of {} runs, {name}: {} commands/s ({} per CPU second), p50 {}, p99 {}; at most {:.4} allocations per command",
            args.runs,
            format_rate(rate),
            format_rate(cpu_rate),
            format_ns(p50 as u64),
            format_ns(p99 as u64),
            summary.allocations_per_command,
        );
        medians.push((rate, cpu_rate, p99, summary.events_per_command, median(&mut summary.single_p99s)));
    }
    if let [(plain_rate, plain_cpu, plain_p99, plain_events, _), (special_rate, special_cpu, special_p99, special_events, special_single_p99)] =
        medians[..]
    {
        println!(
            "special / plain: rate x{:.3}, p99 x{:.3} ({}% stops, icebergs and lists); per CPU second x{:.3}; events per command x{:.3}, events per CPU second x{:.3}; p99 of the special commands that fire or release nothing x{:.3}",
            special_rate / plain_rate,
            special_p99 / plain_p99,
            args.special_percent,
            special_cpu / plain_cpu,
            special_events / plain_events,
            (special_cpu * special_events) / (plain_cpu * plain_events),
            special_single_p99 / plain_p99,
        );
    }
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[derive(Default)]
struct Summary {
    throughputs: Vec<f64>,
    cpu_throughputs: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    /// Of the commands that fire or release nothing.
    single_p99s: Vec<f64>,
    allocations_per_command: f64,
    /// The same in every run: the engine is deterministic.
    events_per_command: f64,
}

struct PassStats {
    commands: u64,
    /// Commands per second of CPU time the thread used.
    cpu_per_s: f64,
    events: u64,
    trades: u64,
    fired: u64,
    accepted: u64,
    refilled: u64,
    resting_end: u32,
    /// Heap allocations during the timed commands.
    allocations: u64,
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
    let mut fired = 0u64;
    let mut accepted = 0u64;
    let mut refilled = 0u64;
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let cpu_before_ns = thread_cpu_ns();
    let started = Instant::now();
    for index in warmup..workload.commands.len() {
        events.clear();
        let _ = engine.apply(&stamped(workload, index), &mut events);
        event_count += events.len() as u64;
        // Reading the events is what a consumer must do anyway; it keeps the
        // optimiser from discarding them.
        for event in &events {
            match event.kind {
                EventKind::Trade { .. } => trades += 1,
                EventKind::OrderTriggered { .. } => fired += 1,
                EventKind::OrderAccepted { .. } => accepted += 1,
                EventKind::OrderRefilled { .. } => refilled += 1,
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu_ns = thread_cpu_ns().saturating_sub(cpu_before_ns).max(1);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let commands = (workload.commands.len() - warmup) as u64;
    let stats = PassStats {
        cpu_per_s: commands as f64 * 1e9 / cpu_ns as f64,
        commands,
        events: event_count,
        trades,
        fired,
        accepted,
        refilled,
        resting_end: engine.open_order_count(),
        allocations,
    };
    (rate_per_s(commands, elapsed), stats)
}

/// The latency of every command, and of those that neither fire nor
/// release an order (the work of one order at most: a command that fires
/// stops also enters each of them).
fn latency_pass(
    workload: &Workload,
    warmup: usize,
) -> (hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>) {
    let mut events = Vec::with_capacity(1024);
    let mut engine = engine_after_setup(workload, &mut events);
    let mut histogram = latency_histogram();
    let mut single = latency_histogram();
    for index in 0..workload.commands.len() {
        let command = stamped(workload, index);
        events.clear();
        let started = Instant::now();
        let _ = engine.apply(&command, &mut events);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        if index >= warmup {
            histogram.saturating_record(elapsed_ns.max(1));
            let sets_off = events.iter().any(|e| {
                matches!(e.kind, EventKind::OrderTriggered { .. } | EventKind::OrderReleased { .. })
            });
            if !sets_off {
                single.saturating_record(elapsed_ns.max(1));
            }
        }
    }
    (histogram, single)
}
