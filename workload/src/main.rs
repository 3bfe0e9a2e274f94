//! Writes a seeded workload to a file, for the matcher benchmark's `--from`
//! (or for any other consumer that reads the same format).
//!
//! ```text
//! cargo run --release -p workload -- --out single.workload
//! cargo run --release -p workload -- --shape many-markets --commands 1000000 --out many.workload
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
    let workload = workload::generate(shape, args.commands, args.seed);
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
