//! API fuzzing: schemathesis (pinned in `tests/compat/requirements.txt`)
//! generates requests from `openapi.json` (native and Binance-compatible
//! routes, valid and invalid, with and without credentials) against the
//! real `exchange`, with PostgreSQL so that the history endpoints answer.
//! Signed operations are signed by `tests/compat/api_fuzz_hooks.py` when
//! the fuzzer sends credentials at all. Checks: no 5xx, no crash, every
//! status code, content type and body as the description says, the
//! `Allow` header on 405, unsupported methods refused, invalid data
//! refused, missing credentials refused, one user's objects unreachable by
//! another.
//!
//! Not checked: that every schema-valid request is accepted
//! (`positive_data_acceptance`): validity here depends on state the schema
//! cannot express (which markets exist, balances, which orders are open).
//!
//! `HOSTILE_API_EXAMPLES` sets the examples per operation (default 25, the
//! bounded run); the full run:
//! `HOSTILE_API_EXAMPLES=500 cargo test --release -p gateway --test api_fuzz -- --nocapture`.

mod compat;
mod server;

use std::process::Command;

use persistence::cluster::Database;
use serde_json::json;
use server::{Exchange, ADMIN_TOKEN};

#[test]
fn the_api_holds_against_schemathesis() {
    let python = compat::python();
    let schemathesis = python.with_file_name("st");
    let examples = std::env::var("HOSTILE_API_EXAMPLES").unwrap_or_else(|_| "25".into());
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().unwrap();
    // The fuzzer is one client sending thousands of requests a minute:
    // the request weight and key rate limits would answer most with 429.
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("EXCHANGE_REQUEST_WEIGHT_PER_MINUTE", "100000000"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
        ],
    );
    let keys = exchange.demo(2);
    // Some book and trades, so that reads have something to show.
    for (key, side, price) in [(&keys[1], "sell", "101"), (&keys[1], "sell", "102"), (&keys[0], "buy", "99")]
    {
        let order =
            json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": "0.5" });
        assert_eq!(exchange.place(key, order).0, 200);
    }
    let taker = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.2" });
    assert_eq!(exchange.place(&keys[0], taker).0, 200);

    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let result = compat::run(
        Command::new(&schemathesis)
            .current_dir(compat::DIR)
            .env("SCHEMATHESIS_HOOKS", "api_fuzz_hooks")
            .env("FUZZ_SCHEMA", schema)
            .env("FUZZ_API_KEY", &keys[0].api_key)
            .env("FUZZ_SECRET", &keys[0].secret)
            .env("FUZZ_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1")
            .arg("run")
            .arg(format!("http://{}/openapi.json", exchange.address))
            .args(["--header", &format!("X-MBX-APIKEY: {}", keys[0].api_key)])
            .args(["--header", &format!("X-Admin-Token: {ADMIN_TOKEN}")])
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", &examples, "--seed", "1", "--workers", "1"])
            .args(["--request-timeout", "20", "--suppress-health-check", "all"]),
    );
    let output = match result {
        Ok(output) => output,
        Err(error) => panic!("{error}\nexchange stderr:\n{}", exchange.stderr()),
    };
    let summary: Vec<&str> =
        output.lines().filter(|l| l.contains("generated") || l.contains("Tested")).collect();
    println!("{}", summary.join("\n"));
    assert!(output.contains("generated"), "{output}");
    // And the exchange is still up and answering.
    assert_eq!(exchange.get("/health").0, 200);
}
