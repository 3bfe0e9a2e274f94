//! The on-disk encoding (`codec`) alone: a command encoded into a slice (the
//! journal's append) and decoded (replay), and a whole snapshot encoded and
//! decoded, on the many-markets workload. Each figure is the best of
//! `--trials` passes, so that a noisy machine shows the code's cost rather
//! than its neighbours'.
//!
//! ```text
//! cargo run --release -p benches --bin codec
//! ```

use std::time::Instant;

use clap::Parser;
use engine_core::{Command, Engine, EngineLimits, StampedCommand};
use workload::Shape;

#[derive(Parser, Debug)]
#[command(about = "Encode and decode times of journal records and snapshots (the codec crate)")]
struct Args {
    /// Measured commands of the many-markets workload (plus its setup).
    #[arg(long, default_value_t = 1_000_000)]
    commands: usize,
    #[arg(long, default_value_t = 7)]
    trials: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    let workload = workload::generate(Shape::ManyMarkets, args.commands, args.seed);
    let commands: Vec<Command> = workload.setup.iter().chain(&workload.commands).copied().collect();
    let mut scratch = [0u8; journal::PAYLOAD_MAX_BYTES];
    let mut encoded = Vec::new();
    let mut spans = Vec::with_capacity(commands.len());
    for command in &commands {
        let len = codec::encode_into_slice(command, &mut scratch).expect("a command fits a record");
        spans.push((encoded.len(), len));
        encoded.extend_from_slice(&scratch[..len]);
    }
    let trials = args.trials.max(1);
    let (mut encode_ns, mut decode_ns) = (f64::MAX, f64::MAX);
    for _ in 0..trials {
        let started = Instant::now();
        let mut total = 0usize;
        for command in &commands {
            total += codec::encode_into_slice(std::hint::black_box(command), &mut scratch).unwrap_or(0);
        }
        std::hint::black_box(total);
        encode_ns = encode_ns.min(started.elapsed().as_nanos() as f64 / commands.len() as f64);
        let started = Instant::now();
        for &(at, len) in &spans {
            std::hint::black_box(codec::decode::<Command>(&encoded[at..at + len]).ok());
        }
        decode_ns = decode_ns.min(started.elapsed().as_nanos() as f64 / commands.len() as f64);
    }
    println!(
        "commands: {} ({} bytes, {:.1} bytes each); encode {encode_ns:.1} ns, decode {decode_ns:.1} ns per command (best of {trials})",
        commands.len(),
        encoded.len(),
        encoded.len() as f64 / commands.len() as f64,
    );

    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        events.clear();
        let seq = index as u64 + 1;
        let _ = engine.apply(&StampedCommand { seq, timestamp_ns: seq, command: *command }, &mut events);
    }
    let snapshot = engine.snapshot();
    let (mut encode_ms, mut decode_ms, mut bytes) = (f64::MAX, f64::MAX, 0);
    for _ in 0..trials {
        let started = Instant::now();
        let payload = codec::encode_to_vec(&snapshot).expect("a snapshot encodes");
        encode_ms = encode_ms.min(started.elapsed().as_secs_f64() * 1e3);
        bytes = payload.len();
        let started = Instant::now();
        std::hint::black_box(codec::decode::<engine_core::Snapshot>(&payload).ok());
        decode_ms = decode_ms.min(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "snapshot: {} resting orders, {bytes} bytes; encode {encode_ms:.2} ms, decode {decode_ms:.2} ms (best of {trials})",
        engine.open_order_count(),
    );
}
