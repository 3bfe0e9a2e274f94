//! What a hash mark costs the matcher: the time of `Engine::state_hash()` (a walk of the whole
//! state) on the state a seeded workload leaves, against the engine's own time per command, and
//! so the share of the matcher's time that hashing every N commands takes.
//!
//! ```text
//! cargo run --release -p replication --example hash_cost -- [commands] [hashes]
//! ```
//!
//! Both workload shapes run: `single-market` (1,000 users, about 5,000 resting orders) and
//! `many-markets` (32 markets, 10,000 users, about 32,000 resting orders). The per-command time
//! is the bare engine's (no ring, no views): the smallest the matcher's can be, so the share
//! printed is an upper bound of the real one.

use std::time::Instant;

use engine_core::Engine;
use workload::Shape;

/// The intervals whose cost is printed.
const INTERVALS_SEQS: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let commands: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let hashes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(21);
    for shape in [Shape::SingleMarket, Shape::ManyMarkets] {
        let workload = workload::generate(shape, commands, 42);
        let stamped = workload.stamped(1, 1);
        let mut engine = Engine::new(workload.limits);
        let mut events = Vec::with_capacity(256);
        let setup = workload.setup.len();
        for command in &stamped[..setup] {
            events.clear();
            engine.apply(command, &mut events)?;
        }
        let started = Instant::now();
        for command in &stamped[setup..] {
            events.clear();
            engine.apply(command, &mut events)?;
        }
        let command_ns = started.elapsed().as_nanos() as f64 / (stamped.len() - setup) as f64;
        let mut hash_ns: Vec<u128> = (0..hashes.max(1))
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(engine.state_hash());
                started.elapsed().as_nanos()
            })
            .collect();
        hash_ns.sort_unstable();
        let median_ns = hash_ns[hash_ns.len() / 2] as f64;
        let max_ns = *hash_ns.last().unwrap_or(&0) as f64;
        println!(
            "{}: {} users, {} open orders after {} commands; engine {:.0} ns/command; state_hash median {:.0} us, \
             max {:.0} us over {} runs",
            shape.name(),
            engine.user_count(),
            engine.open_order_count(),
            stamped.len(),
            command_ns,
            median_ns / 1_000.0,
            max_ns / 1_000.0,
            hash_ns.len()
        );
        for interval in INTERVALS_SEQS {
            let share = median_ns / (median_ns + interval as f64 * command_ns) * 100.0;
            println!("  every {interval} commands: {share:.3}% of the engine's time");
        }
    }
    Ok(())
}
