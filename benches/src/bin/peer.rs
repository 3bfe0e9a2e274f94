//! The peer benchmark: one seeded workload replayed, in one process, through
//! this exchange's engine and through rust-order-book 0.0.2 (the fastest
//! open-source Rust order book we found), with both rates, their ratio,
//! latency percentiles and allocations per command.
//!
//! ```text
//! cargo run --release -p benches --bin peer                 # 2M commands, 5 runs
//! cargo run --release -p benches --bin peer -- --runs 9 --commands 4000000
//! ```
//!
//! The workload is the `peer` shape of the workload crate: one market,
//! 1,000 funded users, 70% GTC limit orders within ± 50 ticks of a
//! random-walk mid (1 to 100 lots), 25% cancels of resting orders, 5% market
//! orders, self-trade prevention off. The peer gets the same orders, prices
//! and quantities and cancels of the same orders (its own ids for them are
//! worked out by an untimed replay first). Our engine does all of its work:
//! balance checks and locks, fees, events for every change; the peer keeps
//! no balances and returns one report per command.
//!
//! Each engine reads its commands prepared before the clock starts: ours
//! as `StampedCommand`s, as the matcher finds them in its ring, the peer's
//! as a small enum of its calls.
//!
//! Each run, for each engine on a fresh book: an untimed warm-up, then a
//! throughput pass (no clock per command), then a latency pass (every
//! command timed with the monotonic clock, whose own cost is in every
//! figure; allocations counted). Which engine goes first alternates from
//! run to run. The two end states are compared after the first run: the
//! same price levels with the same quantities and numbers of orders, the
//! same traded volume and the same number of commands that traded. The
//! figures that count are the ratios within one run; the summary gives the
//! median of each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use benches::report::{
    clock_overhead_ns_p50, format_ns, format_rate, latency_histogram, machine, median, percentiles,
    rate_per_s, thread_cpu_ns, ReportArgs, Reports,
};
use clap::Parser;
use engine_core::{Command, Engine, Event, EventKind, MarketId, OrderKind, OrderRef, Side, StampedCommand};
use hdrhistogram::Histogram;
use rust_order_book as peer;
use workload::{Shape, Workload};

/// Counts heap allocations while [`COUNTING`] is set. The flag is one
/// relaxed load when off, so the timed passes pay nothing for the count.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[derive(Parser, Debug)]
#[command(
    about = "Replays one seeded workload through the exchange's engine and through rust-order-book 0.0.2 and compares them"
)]
struct Args {
    /// Measured commands to generate (ignored with --from).
    #[arg(long, default_value_t = 2_000_000)]
    commands: usize,
    /// Seed of the generator (ignored with --from).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run a workload file written by the `workload` binary (`--shape peer`)
    /// instead; it must hold one market and only limit, market and cancel
    /// commands.
    #[arg(long)]
    from: Option<PathBuf>,
    /// How many runs; the summary gives the median of each figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Commands run untimed on a fresh book before each pass. They count in
    /// the state but not in the figures.
    #[arg(long, default_value_t = 100_000)]
    warmup: usize,
    #[command(flatten)]
    report: ReportArgs,
}

/// A workload command in the peer's terms.
#[derive(Clone, Copy, Debug)]
enum PeerCommand {
    Limit { side: peer::Side, qty: u64, price: u64 },
    Market { side: peer::Side, qty: u64 },
    Cancel(peer::OrderId),
}

/// What one engine's book looked like at the end, and what it traded.
#[derive(Debug, PartialEq, Eq)]
struct EndState {
    /// (price, total quantity, orders), best first, bids then asks.
    bids: Vec<(u64, u64, usize)>,
    asks: Vec<(u64, u64, usize)>,
    /// Lots traded, over every command including the warm-up.
    volume_lots: u64,
    /// Commands whose order traded at least once.
    commands_traded: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workload = match benches::workload_from(args.from.as_deref(), Shape::Peer, args.commands, args.seed)
        .and_then(|workload| benches::runnable(workload, args.runs, args.warmup))
    {
        Ok(workload) => workload,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stamped = stamp(&workload);
    let peer_commands = match translate(&workload) {
        Ok(commands) => commands,
        Err(why) => {
            eprintln!("error: the workload cannot be replayed through the peer: {why}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", workload.description);
    println!("machine: {}", machine());
    println!("peer: rust-order-book 0.0.2 (no balances, no fees, no events; one report per command)");
    println!("clock overhead: p50 {}", format_ns(clock_overhead_ns_p50()));

    let measured = (workload.commands.len() - args.warmup) as u64;
    let mut ours_rates = Vec::new();
    let mut peer_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    let mut ours_latency = Vec::new();
    let mut peer_latency = Vec::new();
    let mut ours_allocations = 0u64;
    let mut peer_allocations = 0u64;
    let mut reports = Reports::new("peer", &args.report);
    for run in 1..=args.runs {
        let ours_first = run % 2 == 1;
        let (ours, peer) = if ours_first {
            let ours = ours_throughput(&workload, &stamped, args.warmup);
            (ours, peer_throughput(&peer_commands, args.warmup))
        } else {
            let peer = peer_throughput(&peer_commands, args.warmup);
            (ours_throughput(&workload, &stamped, args.warmup), peer)
        };
        let (ours_rate, ours_end) = match ours {
            Ok(result) => result,
            Err(why) => {
                eprintln!("error: {why}");
                return ExitCode::FAILURE;
            }
        };
        let (peer_rate, peer_end) = peer;
        if run == 1 {
            if ours_end != peer_end {
                eprintln!("error: the two engines ended in different states");
                eprintln!("  ours: {}", summary(&ours_end));
                eprintln!("  peer: {}", summary(&peer_end));
                return ExitCode::FAILURE;
            }
            println!("same end state: {}", summary(&ours_end));
        }
        let ((ours_hist, ours_allocs), (peer_hist, peer_allocs)) = if ours_first {
            let ours = ours_latency_pass(&workload, &stamped, args.warmup);
            (ours, peer_latency_pass(&peer_commands, args.warmup))
        } else {
            let peer = peer_latency_pass(&peer_commands, args.warmup);
            (ours_latency_pass(&workload, &stamped, args.warmup), peer)
        };
        let (ours_per_s, peer_per_s) = (ours_rate.wall, peer_rate.wall);
        let ratio = ours_per_s / peer_per_s;
        let cpu_ratio = ours_rate.cpu / peer_rate.cpu;
        println!(
            "run {run}: ours {} commands/s, peer {} commands/s, ratio {ratio:.2}x (per CPU second: {} and {}, ratio {cpu_ratio:.2}x)",
            format_rate(ours_per_s),
            format_rate(peer_per_s),
            format_rate(ours_rate.cpu),
            format_rate(peer_rate.cpu)
        );
        println!("       ours: {}", percentiles(&ours_hist));
        println!("       peer: {}", percentiles(&peer_hist));
        reports.add(&format!("ours run {run}"), &ours_hist);
        reports.add(&format!("peer run {run}"), &peer_hist);
        ours_rates.push(ours_per_s);
        peer_rates.push(peer_per_s);
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
        ours_latency.push(ours_hist);
        peer_latency.push(peer_hist);
        ours_allocations += ours_allocs;
        peer_allocations += peer_allocs;
    }
    let per_command = |allocations: u64| allocations as f64 / (measured * args.runs as u64) as f64;
    println!("median of {} runs ({measured} measured commands each):", args.runs);
    println!(
        "  ours {} commands/s, peer {} commands/s, ratio {:.2}x",
        format_rate(median(&mut ours_rates)),
        format_rate(median(&mut peer_rates)),
        median(&mut ratios)
    );
    println!("  ratio per CPU second of this thread: {:.2}x", median(&mut cpu_ratios));
    println!("  ours latency: {}", median_percentiles(&ours_latency));
    println!("  peer latency: {}", median_percentiles(&peer_latency));
    println!(
        "  allocations per command: ours {:.4} ({ours_allocations} in all), peer {:.4} ({peer_allocations} in all)",
        per_command(ours_allocations),
        per_command(peer_allocations)
    );
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Each percentile's median over the runs.
fn median_percentiles(histograms: &[Histogram<u64>]) -> String {
    let at = |quantile: Option<f64>| {
        let mut values: Vec<f64> =
            histograms.iter().map(|h| quantile.map_or(h.max(), |q| h.value_at_quantile(q)) as f64).collect();
        format_ns(median(&mut values) as u64)
    };
    format!(
        "p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        at(Some(0.5)),
        at(Some(0.99)),
        at(Some(0.999)),
        at(Some(0.9999)),
        at(None)
    )
}

fn summary(end: &EndState) -> String {
    let orders = |levels: &[(u64, u64, usize)]| levels.iter().map(|l| l.2).sum::<usize>();
    format!(
        "{} bid levels with {} orders, {} ask levels with {} orders, {} lots traded by {} commands",
        end.bids.len(),
        orders(&end.bids),
        end.asks.len(),
        orders(&end.asks),
        end.volume_lots,
        end.commands_traded
    )
}

fn peer_side(side: Side) -> peer::Side {
    match side {
        Side::Buy => peer::Side::Buy,
        Side::Sell => peer::Side::Sell,
    }
}

/// The workload in the peer's terms. Our engine numbers every accepted
/// order from 1 (the workload's are all accepted); the peer numbers from 0
/// and skips a market order that meets an empty book, so an untimed replay
/// learns which of its ids each cancel names.
fn translate(workload: &Workload) -> Result<Vec<PeerCommand>, String> {
    if workload.setup.iter().any(|command| matches!(command, Command::PlaceOrder(_))) {
        return Err("the setup places orders".to_string());
    }
    let mut book = peer::OrderBookBuilder::new("BTCUSDT").build();
    let mut ids: Vec<Option<peer::OrderId>> = vec![None];
    let mut commands = Vec::with_capacity(workload.commands.len());
    for (index, command) in workload.commands.iter().enumerate() {
        let translated = match *command {
            Command::PlaceOrder(order) if order.market == MarketId(0) => {
                let side = peer_side(order.side);
                let (translated, report) = match order.kind {
                    OrderKind::Limit { price, qty, tif: engine_core::TimeInForce::Gtc } => {
                        let translated = PeerCommand::Limit { side, qty: qty.0, price: price.0 };
                        (translated, book.limit_raw(side, qty.0, price.0, None, None))
                    }
                    OrderKind::Market { qty } => {
                        (PeerCommand::Market { side, qty: qty.0 }, book.market_raw(side, qty.0))
                    }
                    other => return Err(format!("command {index}: {other:?} has no peer counterpart")),
                };
                ids.push(report.ok().map(|report| report.order_id));
                translated
            }
            Command::CancelOrder { order: OrderRef::Id(id), .. } => {
                let Some(Some(peer_id)) = ids.get(id.0 as usize).copied() else {
                    return Err(format!("command {index} cancels order {id}, which the peer never had"));
                };
                book.cancel(peer_id)
                    .map_err(|e| format!("command {index}: the peer cannot cancel: {e:?}"))?;
                PeerCommand::Cancel(peer_id)
            }
            other => return Err(format!("command {index}: {other:?} has no peer counterpart")),
        };
        commands.push(translated);
    }
    Ok(commands)
}

fn engine_after_setup(workload: &Workload, events: &mut Vec<Event>) -> Engine {
    let mut engine = Engine::new(workload.limits);
    for (i, command) in workload.setup.iter().enumerate() {
        events.clear();
        let stamped = StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command };
        engine.apply(&stamped, events).expect("setup commands are numbered in order");
    }
    engine
}

/// The measured commands as the matcher finds them in its ring: stamped
/// already, so that no pass times copying them into a `StampedCommand`.
fn stamp(workload: &Workload) -> Vec<StampedCommand> {
    (0..workload.commands.len())
        .map(|index| {
            let seq = (workload.setup.len() + index) as u64 + 1;
            StampedCommand { seq, timestamp_ns: seq * 100, command: workload.commands[index] }
        })
        .collect()
}

/// What our engine's events say it traded; a rejection is an error here,
/// since the peer would have taken the command.
#[derive(Default)]
struct OursTally {
    volume_lots: u64,
    commands_traded: u64,
    rejected: u64,
}

impl OursTally {
    #[inline]
    fn add(&mut self, events: &[Event]) {
        let mut traded = false;
        for event in events {
            match event.kind {
                EventKind::Trade { qty, .. } => {
                    self.volume_lots += qty.0;
                    traded = true;
                }
                EventKind::Rejected { .. } => self.rejected += 1,
                _ => {}
            }
        }
        self.commands_traded += u64::from(traded);
    }
}

fn ours_throughput(
    workload: &Workload,
    stamped: &[StampedCommand],
    warmup: usize,
) -> Result<(Rate, EndState), String> {
    let mut events = Vec::with_capacity(1024);
    let mut engine = engine_after_setup(workload, &mut events);
    let mut tally = OursTally::default();
    for command in &stamped[..warmup] {
        events.clear();
        let _ = engine.apply(command, &mut events);
        tally.add(&events);
    }
    let cpu_before = thread_cpu_s();
    let started = Instant::now();
    for command in &stamped[warmup..] {
        events.clear();
        let _ = engine.apply(command, &mut events);
        // Reading the events is what a consumer must do anyway.
        tally.add(&events);
    }
    let elapsed = started.elapsed();
    let cpu_s = thread_cpu_s() - cpu_before;
    if tally.rejected > 0 {
        return Err(format!("our engine rejected {} commands the peer takes", tally.rejected));
    }
    let rate = Rate::of((workload.commands.len() - warmup) as u64, elapsed, cpu_s);
    Ok((rate, ours_end_state(&engine, &tally)))
}

fn ours_end_state(engine: &Engine, tally: &OursTally) -> EndState {
    let mut orders_at: HashMap<(Side, u64), usize> = HashMap::new();
    for order in engine.snapshot().orders {
        *orders_at.entry((order.side, order.price.0)).or_default() += 1;
    }
    let levels = |side: Side| -> Vec<(u64, u64, usize)> {
        engine
            .depth(MarketId(0), side, usize::MAX)
            .into_iter()
            .map(|(price, qty)| (price.0, qty.0, orders_at.get(&(side, price.0)).copied().unwrap_or(0)))
            .collect()
    };
    EndState {
        bids: levels(Side::Buy),
        asks: levels(Side::Sell),
        volume_lots: tally.volume_lots,
        commands_traded: tally.commands_traded,
    }
}

/// What the peer's reports say it traded.
#[derive(Default)]
struct PeerTally {
    volume_lots: u64,
    commands_traded: u64,
}

impl PeerTally {
    #[inline]
    fn add(&mut self, report: Option<peer::ExecutionReport>) {
        if let Some(report) = report {
            let executed = report.executed_qty.value();
            self.volume_lots += executed;
            self.commands_traded += u64::from(executed > 0);
        }
    }
}

#[inline]
fn peer_apply(book: &mut peer::OrderBook, command: PeerCommand) -> Option<peer::ExecutionReport> {
    let report = match command {
        PeerCommand::Limit { side, qty, price } => book.limit_raw(side, qty, price, None, None),
        PeerCommand::Market { side, qty } => book.market_raw(side, qty),
        PeerCommand::Cancel(id) => {
            // A cancel trades nothing; its report says what the order had
            // executed before, which is counted already.
            let _ = book.cancel(id);
            return None;
        }
    };
    report.ok()
}

fn peer_throughput(commands: &[PeerCommand], warmup: usize) -> (Rate, EndState) {
    let mut book = peer::OrderBookBuilder::new("BTCUSDT").build();
    let mut tally = PeerTally::default();
    for &command in &commands[..warmup] {
        tally.add(peer_apply(&mut book, command));
    }
    let cpu_before = thread_cpu_s();
    let started = Instant::now();
    for &command in &commands[warmup..] {
        tally.add(peer_apply(&mut book, command));
    }
    let elapsed = started.elapsed();
    let rate = Rate::of((commands.len() - warmup) as u64, elapsed, thread_cpu_s() - cpu_before);
    let depth = book.depth(None);
    let levels = |levels: &[(peer::Price, peer::Quantity)], side: peer::Side| -> Vec<(u64, u64, usize)> {
        levels
            .iter()
            .map(|&(price, qty)| (price.value(), qty.value(), book.get_orders_at_price(price, side).len()))
            .collect()
    };
    let end = EndState {
        bids: levels(&depth.bids, peer::Side::Buy),
        asks: levels(&depth.asks, peer::Side::Sell),
        volume_lots: tally.volume_lots,
        commands_traded: tally.commands_traded,
    };
    (rate, end)
}

/// Times every measured command; counts the allocations they make.
fn ours_latency_pass(
    workload: &Workload,
    stamped: &[StampedCommand],
    warmup: usize,
) -> (Histogram<u64>, u64) {
    let mut events = Vec::with_capacity(1024);
    let mut engine = engine_after_setup(workload, &mut events);
    let mut histogram = latency_histogram();
    for command in &stamped[..warmup] {
        events.clear();
        let _ = engine.apply(command, &mut events);
    }
    let allocations_before = start_counting();
    for command in &stamped[warmup..] {
        events.clear();
        let started = Instant::now();
        let _ = engine.apply(command, &mut events);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        histogram.saturating_record(elapsed_ns.max(1));
    }
    let allocations = stop_counting(allocations_before);
    (histogram, allocations)
}

fn peer_latency_pass(commands: &[PeerCommand], warmup: usize) -> (Histogram<u64>, u64) {
    let mut book = peer::OrderBookBuilder::new("BTCUSDT").build();
    let mut histogram = latency_histogram();
    for &command in &commands[..warmup] {
        drop(peer_apply(&mut book, command));
    }
    let allocations_before = start_counting();
    for &command in &commands[warmup..] {
        let started = Instant::now();
        let report = peer_apply(&mut book, command);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        drop(report);
        histogram.saturating_record(elapsed_ns.max(1));
    }
    let allocations = stop_counting(allocations_before);
    (histogram, allocations)
}

/// A throughput pass's rate by the wall clock and per second of CPU time
/// this thread got: on a shared machine the second is the steadier figure,
/// since time the thread waited for a core is not in it.
#[derive(Clone, Copy, Debug)]
struct Rate {
    wall: f64,
    cpu: f64,
}

impl Rate {
    fn of(commands: u64, elapsed: std::time::Duration, cpu_s: f64) -> Rate {
        Rate { wall: rate_per_s(commands, elapsed), cpu: commands as f64 / cpu_s.max(0.01) }
    }
}

/// CPU time of the calling thread in seconds.
fn thread_cpu_s() -> f64 {
    thread_cpu_ns() as f64 / 1e9
}

/// The histogram records without allocating (its buckets exist from the
/// start), so what is counted between these two is the engine's.
fn start_counting() -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    before
}

fn stop_counting(before: u64) -> u64 {
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}
