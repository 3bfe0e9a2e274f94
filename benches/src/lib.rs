//! Benchmarks of the exchange, and the seeded workloads they run.
//!
//! This crate owns the benchmarks, the latency report ([`report`]) that
//! every one of them prints, the real `exchange` processes the cluster
//! benchmark starts ([`exchange_process`]) and the signed REST client the
//! load benchmarks drive servers with ([`rest_client`]); the workloads come
//! from the `workload` crate.
//! It must never be a dependency of the exchange itself.
//!
//! Run the matcher benchmark (10 million commands, one thread):
//!
//! ```text
//! cargo run --release -p benches --bin matcher
//! cargo run --release -p benches --bin matcher -- --workload many-markets
//! ```
//!
//! Each latency histogram is also written as `<run>.hgrm` (HdrHistogram's
//! percentile distribution) with one `<benchmark>.svg` plot of them all,
//! under `--out DIR` (default `target/bench-reports/<benchmark>/`):
//!
//! ```text
//! cargo run --release -p benches --bin pipeline -- --durability none,batch --out /tmp/pipeline
//! ```
//!
//! Write a workload to a file and run exactly that file:
//!
//! ```text
//! cargo run --release -p workload -- --out single.workload
//! cargo run --release -p benches --bin matcher -- --from single.workload
//! ```

pub mod exchange_process;
pub mod local_exchange;
pub mod report;
pub mod rest_client;

/// The workload a benchmark runs: read from `from` when given, else
/// generated (`shape`, `commands`, `seed`), saying on stderr how long that
/// took. The error names the file and what is wrong with it.
pub fn workload_from(
    from: Option<&std::path::Path>,
    shape: workload::Shape,
    commands: usize,
    seed: u64,
) -> Result<workload::Workload, String> {
    match from {
        Some(path) => workload::read(path).map_err(|error| format!("{}: {error}", path.display())),
        None => {
            let started = std::time::Instant::now();
            let workload = workload::generate(shape, commands, seed);
            eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
            Ok(workload)
        }
    }
}

/// `workload`, if a benchmark of `runs` runs after `warmup` commands of
/// warm-up can measure something on it.
pub fn runnable(
    workload: workload::Workload,
    runs: usize,
    warmup: usize,
) -> Result<workload::Workload, String> {
    if runs == 0 || workload.commands.len() <= warmup {
        return Err(format!("need at least one run and more commands than --warmup ({warmup})"));
    }
    Ok(workload)
}
