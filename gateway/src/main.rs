//! `exchange`: the exchange server.
//!
//! ```text
//! exchange                      # 127.0.0.1:8080, journal under ./data
//! exchange --config exchange.toml
//! EXCHANGE_LISTEN=0.0.0.0:8080 EXCHANGE_ADMIN_TOKEN=... exchange
//! ```
//!
//! Stops on SIGTERM or SIGINT: no new requests, the ring drained, the
//! journal synced and a snapshot written, then exit status 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: exchange [--config FILE]\n\
     Settings come from FILE (TOML) and EXCHANGE_* environment variables; see the README."
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_file: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(path) => config_file = Some(PathBuf::from(path)),
                None => {
                    eprintln!("error: --config needs a file\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("error: unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    // Before the configuration is read there is no log: its own errors
    // are plain lines.
    let config = match gateway::Config::load(config_file.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    gateway::log::init(config.log_format, &config.log_level);
    // The matcher and the ring consumers have their own threads; the
    // runtime gets what is left.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!("cannot start the runtime: {}", gateway::log::chain(&error));
                return ExitCode::FAILURE;
            }
        };
    let result = runtime.block_on(gateway::run(config, shutdown_signal(), |addresses| {
        // Tests and scripts read the addresses from these lines.
        println!("listening on {}", addresses.rest);
        println!("websocket on {}", addresses.ws);
        let _ = std::io::stdout().flush();
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", gateway::log::chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
