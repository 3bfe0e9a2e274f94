//! The server's log, read as an operator's log shipper reads it: with
//! `log_format = "json"` every line on standard error is one JSON object
//! with a time, a level and a message; failures carry their cause; and no
//! secret (the admin token, an API secret, a request signature, the
//! database password) appears anywhere in it, whatever the requests did.

mod server;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::{Exchange, ADMIN_TOKEN};

#[test]
fn json_lines_with_causes_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    // A database nobody listens on: the writer's failures are logged with
    // the reason the connection failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let password = "pw-Secret-7f3a9c21";
    let url = format!("postgres://exchange:{password}@127.0.0.1:{port}/exchange");
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_LOG_FORMAT", "json"),
            ("DATABASE_URL", &url),
            ("EXCHANGE_LOG_LEVEL", "info,gateway::http=debug"),
        ],
    );
    let keys = exchange.demo(2);
    let order =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000", "quantity": "0.01" });
    let (status, _) = exchange.client.place(&keys[0], order);
    assert_eq!(status, 200);
    // A request refused (a timestamp long past) still carries its signature.
    let (status, body) =
        exchange.client.signed_raw(&keys[1], "POST", "/order", "timestamp=1", Some(json!({})));
    assert_ne!(status, 200, "{body}");
    let signature = gateway::auth::sign(&keys[1].secret, "timestamp=1", b"{}");
    let (status, _, _) = exchange.client.binance(
        &keys[1],
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.01&price=50000",
    );
    assert_eq!(status, 200);
    // A client's request id is used and returned; one is made up otherwise.
    let (status, head, _) = exchange.client.raw("GET", "/markets", &[("X-Request-Id", "trace-me-42")], b"");
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("x-request-id: trace-me-42"), "{head}");
    let (_, head, _) =
        exchange.client.raw("GET", "/ticker?market=BTC-USDT", &[("X-Request-Id", "bad id!")], b"");
    let made_up = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-request-id: ").map(str::to_string))
        .unwrap_or_else(|| panic!("no request id: {head}"));
    assert!(made_up != "bad id!" && !made_up.is_empty(), "{made_up}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exchange.stderr().contains("database writer") {
        assert!(Instant::now() < deadline, "the writer's failure was not logged: {}", exchange.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr_path = exchange.stderr_path.clone();
    exchange.terminate();
    let log = std::fs::read_to_string(stderr_path).unwrap();

    let mut levels = Vec::new();
    for line in log.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "no timestamp: {line}");
        assert!(value["message"].is_string(), "no message: {line}");
        levels.push(value["level"].as_str().unwrap_or_else(|| panic!("no level: {line}")).to_string());
    }
    assert!(levels.iter().any(|l| l == "INFO") && levels.iter().any(|l| l == "WARN"), "{levels:?}");
    assert!(log.contains("ready after") && log.contains("stopped at sequence"), "{log}");
    let writer_failure = log.lines().find(|l| l.contains("database writer")).unwrap();
    assert!(writer_failure.contains("refused"), "the failure names its cause: {writer_failure}");

    // Each request's lines name it (its span: id, method, path).
    let answered: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["message"] == "answered")
        .collect();
    let traced =
        answered.iter().find(|v| v["span"]["id"] == "trace-me-42").expect("the client's id is logged");
    assert_eq!(
        (traced["span"]["method"].as_str(), traced["span"]["path"].as_str()),
        (Some("GET"), Some("/markets"))
    );
    assert_eq!(traced["status"], 200);
    assert!(
        answered.iter().any(|v| v["span"]["id"].as_str().is_some_and(|id| id.eq_ignore_ascii_case(&made_up))),
        "the made-up id {made_up} is logged"
    );

    let mut secrets = vec![password.to_string(), ADMIN_TOKEN.to_string(), signature];
    secrets.extend(keys.iter().map(|k| k.secret.clone()));
    for secret in secrets {
        assert!(!log.contains(&secret), "a secret was logged: {secret}\n{log}");
    }
}
