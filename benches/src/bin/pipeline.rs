//! The in-process pipeline benchmark: commands published into the inbound
//! ring at fixed offered rates (and flat out), through the matcher and the
//! journal, to the last consumer of the outbound ring. Latency is measured
//! from each command's intended publish time (no coordinated omission) to
//! the moment the last consumer sees its last event. The matcher alone, on
//! the same commands, is printed first, so that the pipeline's own cost is
//! visible.
//!
//! ```text
//! cargo run --release -p benches --bin pipeline
//! cargo run --release -p benches --bin pipeline -- --durability batch --rates 100000,500000
//! cargo run --release -p benches --bin pipeline -- --busy-spin --matcher-core 1
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use benches::report::{format_rate, latency_histogram, percentiles, rate_per_s, ReportArgs, Reports};
use clap::{Parser, ValueEnum};
use engine_core::{Engine, StampedCommand};
use gateway::pipeline::{self, PipelineConfig, Work};
use gateway::views::Views;
use hdrhistogram::Histogram;
use journal::{Durability, JournalConfig, JournalWriter, SegmentRetention};
use workload::Shape;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DurabilityArg {
    None,
    Batch,
    Interval,
}

#[derive(Parser, Debug)]
#[command(about = "Pipeline benchmark: offered load through matcher and journal to the outbound consumers")]
struct Args {
    /// Commands per run.
    #[arg(long, default_value_t = 2_000_000)]
    commands: usize,
    /// Offered rates in commands/s; 0 means as fast as possible.
    #[arg(long, value_delimiter = ',', default_value = "100000,500000,1000000,2000000,0")]
    rates: Vec<u64>,
    /// Durability policies to run (each with every rate).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none,batch,interval")]
    durability: Vec<DurabilityArg>,
    /// Busy-spin every pipeline thread instead of backing off.
    #[arg(long)]
    busy_spin: bool,
    #[arg(long)]
    matcher_core: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How the publisher waits for each command's due time: `spin` (exact,
    /// but it takes a core) or `sleep` (bursts every ~100 us; frees the core,
    /// adds up to the sleep's granularity to every latency).
    #[arg(long, value_enum, default_value = "spin")]
    pacing: Pacing,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Pacing {
    Spin,
    Sleep,
}

fn main() {
    let args = Args::parse();
    let workload = workload::generate(Shape::SingleMarket, args.commands, args.seed);
    println!("{} ({} setup commands applied first)", workload.description, workload.setup.len());
    println!(
        "machine: {} cores; matcher wait strategy: {}; publisher pacing: {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.busy_spin { "busy-spin" } else { "backoff (spin, yield, sleep)" },
        args.pacing
    );
    let mut reports = Reports::new("pipeline", &args.report);
    reports.add("matcher alone", &matcher_alone(&workload));
    for durability in &args.durability {
        for &rate in &args.rates {
            if let Some(histogram) = run(&args, &workload, *durability, rate) {
                let offered = if rate == 0 { "max".to_string() } else { rate.to_string() };
                reports.add(
                    &format!("{} at {offered} per s", format!("{durability:?}").to_lowercase()),
                    &histogram,
                );
            }
        }
    }
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn engine_after_setup(workload: &workload::Workload) -> Engine {
    let mut engine = Engine::new(workload.limits);
    let mut events = Vec::new();
    for (i, command) in workload.setup.iter().enumerate() {
        events.clear();
        let _ = engine
            .apply(&StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command }, &mut events);
    }
    engine
}

fn matcher_alone(workload: &workload::Workload) -> Histogram<u64> {
    let mut engine = engine_after_setup(workload);
    let mut events = Vec::with_capacity(256);
    let mut histogram = latency_histogram();
    let started = Instant::now();
    for command in &workload.commands {
        let t = Instant::now();
        events.clear();
        let stamped = StampedCommand { seq: engine.last_seq() + 1, timestamp_ns: 0, command: *command };
        let _ = engine.apply(&stamped, &mut events);
        histogram.saturating_record((t.elapsed().as_nanos() as u64).max(1));
    }
    let elapsed = started.elapsed();
    println!(
        "matcher alone:                 {} commands/s | {}",
        format_rate(rate_per_s(workload.commands.len() as u64, elapsed)),
        percentiles(&histogram)
    );
    histogram
}

/// One policy at one offered rate; the latency histogram, or `None` when
/// the run could not start.
fn run(
    args: &Args,
    workload: &workload::Workload,
    durability: DurabilityArg,
    rate: u64,
) -> Option<Histogram<u64>> {
    let dir = std::env::temp_dir().join(format!("exchange-pipeline-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal_dir = dir.join("journal");
    let policy = match durability {
        DurabilityArg::None => Durability::None,
        DurabilityArg::Batch => Durability::Batch,
        DurabilityArg::Interval => Durability::Interval { interval_ms: 10 },
    };
    let config = JournalConfig {
        dir: journal_dir.clone(),
        segment_bytes: journal::SEGMENT_BYTES_DEFAULT,
        durability: policy,
        checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
    };
    let Ok((mut writer, _)) = JournalWriter::open(config) else {
        eprintln!("cannot open a journal under {}", dir.display());
        return None;
    };
    let engine = engine_after_setup(workload);
    // The journal carries the setup too, so that sequence numbers line up.
    for (i, command) in workload.setup.iter().enumerate() {
        let _ = writer.append(&StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command });
    }
    let _ = writer.sync();
    let views = Arc::new(RwLock::new(Views::from_engine(&engine, gateway::views::Retention::default())));

    let count = workload.commands.len();
    let epoch = Instant::now();
    let intended: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let done = Arc::new(AtomicU64::new(0));
    let observer = {
        let intended = Arc::clone(&intended);
        let done = Arc::clone(&done);
        let histogram = Arc::clone(&histogram);
        let mut local: Histogram<u64> = latency_histogram();
        Box::new(move |slot: &pipeline::Outbound| {
            if slot.last && slot.request_id > 0 {
                let index = (slot.request_id - 1) as usize;
                let now_ns = epoch.elapsed().as_nanos() as u64;
                let sent_ns = intended[index].load(Ordering::Relaxed);
                local.saturating_record(now_ns.saturating_sub(sent_ns).max(1));
                let finished = done.fetch_add(1, Ordering::Release) + 1;
                if finished as usize == count {
                    if let Ok(mut shared) = histogram.lock() {
                        let _ = shared.add(&local);
                    }
                }
            }
        })
    };
    let started_pipeline = pipeline::start(
        engine,
        writer,
        views,
        PipelineConfig {
            inbound_ring_size: 1 << 16,
            outbound_ring_size: 1 << 18,
            busy_spin: args.busy_spin,
            matcher_core: args.matcher_core,
            snapshot_every_commands: 0,
            snapshots_dir: dir.join("snapshots"),
            snapshots_keep: 1,
            journal_dir,
            retention: SegmentRetention::Keep,
            observer: Some(observer),
            downstream: Vec::new(),
            database_status: None,
            last_timestamp_ns: 0,
            health: Default::default(),
            images: None,
        },
    );
    let mut producer = started_pipeline.publisher;
    let interval_ns = 1_000_000_000u64.checked_div(rate).unwrap_or(0);
    let start_ns = epoch.elapsed().as_nanos() as u64 + 1_000_000;
    // The publisher sleeps between bursts and publishes whatever has come
    // due, each command stamped with its intended time on a uniform
    // schedule: open loop, and it leaves the cores to the pipeline.
    let mut index = 0;
    while index < count {
        let now_ns = epoch.elapsed().as_nanos() as u64;
        while index < count {
            let due_ns = start_ns + index as u64 * interval_ns;
            if interval_ns > 0 && due_ns > now_ns {
                break;
            }
            let sent_ns = if interval_ns > 0 { due_ns } else { epoch.elapsed().as_nanos() as u64 };
            intended[index].store(sent_ns, Ordering::Relaxed);
            let request_id = index as u64 + 1;
            let command = workload.commands[index];
            // A full ring delays the send; the delay counts in the latency.
            while producer.try_publish(request_id, Work::Command(command)).is_err() {
                std::thread::yield_now();
            }
            index += 1;
        }
        if interval_ns > 0 {
            match args.pacing {
                Pacing::Sleep => std::thread::sleep(Duration::from_micros(100)),
                Pacing::Spin => std::hint::spin_loop(),
            }
        }
    }
    while (done.load(Ordering::Acquire) as usize) < count {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed_ns = epoch.elapsed().as_nanos() as u64 - start_ns;
    drop(producer);
    let histogram = histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram());
    let offered = if rate == 0 { "max".to_string() } else { format_rate(rate as f64) };
    println!(
        "{:<8} offered {:>7}/s: {} commands/s | {}",
        format!("{durability:?}").to_lowercase(),
        offered,
        format_rate(rate_per_s(count as u64, Duration::from_nanos(elapsed_ns))),
        percentiles(&histogram)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Some(histogram)
}
