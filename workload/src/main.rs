//! Writes a seeded workload to a file, for the matcher benchmark's `--from`
//! (or for any other consumer that reads the same format).
//!
//! ```text
//! cargo run --release -p workload -- --out single.workload
//! cargo run --release -p workload -- --shape many-markets --commands 1000000 --out many.workload
//! cargo run --release -p workload -- --special-percent 10 --out special.workload
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use workload::Shape;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ShapeArg {
    SingleMarket,
    ManyMarkets,
    Peer,
}

#[derive(Parser, Debug)]
#[command(about = "Generates a seeded matcher workload and writes it to a file")]
struct Args {
    #[arg(long, value_enum, default_value = "single-market")]
    shape: ShapeArg,
    #[arg(long, default_value_t = 10_000_000)]
    commands: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Percent of the commands spent on stops, take-profits, icebergs and
    /// order lists (taken from the limit orders; at most 70).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=70))]
    special_percent: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let shape = match args.shape {
        ShapeArg::SingleMarket => Shape::SingleMarket,
        ShapeArg::ManyMarkets => Shape::ManyMarkets,
        ShapeArg::Peer => Shape::Peer,
    };
    let mix = workload::Mix { special_percent: args.special_percent };
    let workload = workload::generate_mix(shape, args.commands, args.seed, mix);
    match workload::write(&workload, &args.out) {
        Ok(()) => {
            println!(
                "wrote {}: {} ({} setup + {} commands)",
                args.out.display(),
                workload.description,
                workload.setup.len(),
                workload.commands.len()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}: {error}", args.out.display());
            ExitCode::FAILURE
        }
    }
}
