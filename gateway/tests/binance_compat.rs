//! The Binance-compatible API driven by an unmodified Binance client
//! library: ccxt from PyPI, pinned in `tests/compat/requirements.txt`,
//! with its URLs pointed at the real `exchange` on free ports.
//!
//! Python and the pinned package come from `compat` (installed on first use).

mod compat;
mod server;

use std::process::Command;

use compat::{python, run};
use server::Exchange;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/ccxt_suite.py");

#[test]
fn ccxt_trades_through_the_binance_api_and_streams_unmodified() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (maker, taker) = (&keys[0], &keys[1]);
    let result = run(Command::new(python)
        .arg(SUITE)
        .env("EXCHANGE_REST", format!("http://{}", exchange.address))
        .env("EXCHANGE_WS", format!("ws://{}", exchange.ws_address))
        .env("MAKER_KEY", &maker.api_key)
        .env("MAKER_SECRET", &maker.secret)
        .env("TAKER_KEY", &taker.api_key)
        .env("TAKER_SECRET", &taker.secret));
    match result {
        Ok(output) => {
            println!("{output}");
            assert!(output.contains("all checks passed"), "{output}");
        }
        Err(error) => panic!("{error}\nexchange stderr:\n{}", exchange.stderr()),
    }
}
