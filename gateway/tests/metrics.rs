//! `GET /metrics` read by the Prometheus project's own parser
//! (`prometheus_client`), after real traffic: orders that rest, trade and
//! are refused, Binance requests up to a 429, a WebSocket subscriber.

mod compat;
mod server;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::Exchange;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// Every sample of the page, as the parser read it.
struct Page {
    samples: Vec<Value>,
}

impl Page {
    fn fetch(exchange: &Exchange) -> Page {
        let (status, head, body) = exchange.raw("GET", "/metrics", &[], b"");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
            "Prometheus' content type: {head}"
        );
        let Value::String(text) = body else { panic!("/metrics is text, not JSON: {body}") };
        let mut parser = Command::new(compat::python())
            .arg(format!("{}/parse_metrics.py", compat::DIR))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = parser.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the Prometheus parser refused the page: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        assert!(!samples.is_empty());
        Page { samples }
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .and_then(|s| s["value"].as_f64())
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// A latency histogram's buckets (`le` → cumulative count) for `label`.
    fn buckets(&self, name: &str, label: (&str, &str)) -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s["name"] == format!("{name}_bucket") && s["labels"][label.0] == label.1)
            .map(|s| {
                let le = s["labels"]["le"].as_str().unwrap();
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s["value"].as_f64().unwrap())
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

fn families_and_types(page: &Page) -> BTreeMap<String, String> {
    page.samples
        .iter()
        .map(|s| (s["family"].as_str().unwrap().to_string(), s["type"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn metrics_parse_and_count_what_happened() {
    // The parser's environment first: installing it can take a minute.
    compat::python();
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_REQUEST_WEIGHT_PER_MINUTE", "40")]);
    let keys = exchange.demo(2);
    let (maker, taker) = (&keys[0], &keys[1]);

    // A WebSocket subscriber to the trades, which the trade below reaches.
    let (mut socket, _) = tungstenite::connect(format!("ws://{}/", exchange.ws_address)).unwrap();
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    socket
        .send(Message::text(
            json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 1 }).to_string(),
        ))
        .unwrap();
    let _subscribed = socket.read().unwrap();

    let order = |price: &str, side: &str| json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": "0.5" });
    assert_eq!(exchange.place(maker, order("100", "sell")).0, 200);
    assert_eq!(exchange.place(taker, order("100", "buy")).0, 200);
    let too_big =
        json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "100", "quantity": "1000" });
    let (status, refused) = exchange.place(maker, too_big);
    assert_eq!(status, 422, "{refused}");
    let trade = loop {
        match socket.read().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert!(trade.to_string().contains("trade"), "{trade}");

    // Binance requests until the weight limit answers 429.
    let mut limited = false;
    for _ in 0..50 {
        let (status, _, _) = exchange.binance(maker, "GET", "/api/v3/account", "");
        if status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the weight limit of 40 per minute was never reached");

    // The stages' own histograms reach the page within a fold interval
    // (250 ms) of their next batch: keep a little traffic going.
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = Page::fetch(&exchange);
        let stages = ["ring_wait", "journal_append", "match", "publish", "sync", "views", "reply", "ws_send"];
        if stages
            .iter()
            .all(|stage| page.count("exchange_stage_duration_seconds_count", &[("stage", stage)]) >= 1.0)
        {
            break page;
        }
        assert!(Instant::now() < deadline, "stages missing from the page: {:?}", page.samples);
        std::thread::sleep(Duration::from_millis(100));
        exchange.get("/orders/open?market=BTC-USDT");
        exchange.place(
            maker,
            json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "0", "quantity": "1" }),
        );
    };

    let types = families_and_types(&page);
    assert_eq!(types.get("exchange_stage_duration_seconds").map(String::as_str), Some("histogram"));
    assert_eq!(types.get("exchange_stage_latency_seconds").map(String::as_str), Some("summary"));
    assert_eq!(types.get("exchange_http_request_duration_seconds").map(String::as_str), Some("histogram"));
    // The parser names counter families without the `_total` suffix.
    assert_eq!(types.get("exchange_rejects").map(String::as_str), Some("counter"));

    assert!(page.count("exchange_orders_accepted_total", &[]) >= 2.0);
    assert!(page.count("exchange_trades_total", &[]) >= 1.0);
    assert!(page.count("exchange_rejects_total", &[("reason", "insufficient_funds")]) >= 1.0);
    assert!(page.count("exchange_http_responses_total", &[("api", "native"), ("status", "200")]) >= 3.0);
    assert!(page.count("exchange_http_responses_total", &[("api", "native"), ("status", "422")]) >= 1.0);
    assert!(page.count("exchange_http_responses_total", &[("api", "binance"), ("status", "429")]) >= 1.0);
    assert!(page.count("exchange_request_weight_total", &[]) > 40.0);
    assert_eq!(page.count("exchange_ws_connections", &[]), 1.0);
    assert!(page.count("exchange_ws_connections_opened_total", &[]) >= 1.0);
    assert_eq!(page.count("exchange_journal_failed", &[]), 0.0);
    let matched = page.count("exchange_sequence", &[("kind", "matched")]);
    assert!(matched >= 10.0, "{matched}");
    assert!(page.count("exchange_sequence", &[("kind", "durable")]) <= matched);
    assert!(page.value("exchange_ring_occupancy", &[("ring", "inbound")]).is_some());

    // Every histogram: cumulative buckets that never decrease and end at
    // the count; every summary's percentiles in order.
    for (name, label) in [
        ("exchange_stage_duration_seconds", ("stage", "match")),
        ("exchange_stage_duration_seconds", ("stage", "reply")),
        ("exchange_http_request_duration_seconds", ("api", "native")),
    ] {
        let buckets = page.buckets(name, label);
        assert!(buckets.len() > 10, "{name} {label:?}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name} {label:?}: {buckets:?}");
        let count = page.count(&format!("{name}_count"), &[label]);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
        assert!(page.count(&format!("{name}_sum"), &[label]) > 0.0);
    }
    let p50 =
        page.value("exchange_stage_latency_seconds", &[("stage", "reply"), ("quantile", "0.5")]).unwrap();
    let p99 =
        page.value("exchange_stage_latency_seconds", &[("stage", "reply"), ("quantile", "0.99")]).unwrap();
    let max = page.value("exchange_stage_latency_seconds", &[("stage", "reply"), ("quantile", "1")]).unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");

    // Every metric the Grafana dashboard in deploy/ queries is one the
    // exchange serves (those of the history database only with one).
    let dashboard: Value = serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json")).unwrap();
    let names: Vec<&str> = page.samples.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                queried += 1;
                let served = names.contains(&name.as_str())
                    || (name.starts_with("exchange_database_")
                        && include_str!("../src/exposition.rs").contains(&format!("\"{name}\"")));
                assert!(
                    served,
                    "the dashboard's panel {:?} queries {name}, which /metrics lacks",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried}");
}

/// The metric names (`exchange_...`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("exchange_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}
