//! Benchmarks of the exchange, and the seeded workloads they run.
//!
//! This crate owns the benchmarks and the latency report ([`report`]) that
//! every one of them prints; the workloads come from the `workload` crate.
//! It must never be a dependency of the exchange itself.
//!
//! Run the matcher benchmark (10 million commands, one thread):
//!
//! ```text
//! cargo run --release -p benches --bin matcher
//! cargo run --release -p benches --bin matcher -- --workload many-markets
//! ```
//!
//! Write a workload to a file and run exactly that file:
//!
//! ```text
//! cargo run --release -p workload -- --out single.workload
//! cargo run --release -p benches --bin matcher -- --from single.workload
//! ```

pub mod local_exchange;
pub mod report;
