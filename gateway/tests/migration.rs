//! The exchange starts on a data directory written before the project's
//! codec (bincode 2: journal segment format 1, snapshot file version 2 with
//! views version 1) and every read answers as the bincode-era exchange
//! answered on the same directory; then it trades on, writing new-format
//! files beside the old ones, and a restart reads both.
//!
//! The directory is `journal/tests/fixtures/v1/data`; `reads.json` beside it
//! is what the bincode-era `exchange` binary answered (see the fixture's
//! README for how both were made).

mod server;

use std::path::Path;

use serde_json::{json, Value};
use server::{Exchange, Key};

fn fixture() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../journal/tests/fixtures/v1"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn key() -> Key {
    Key { user_id: 0, api_key: "fixturekey0000000000".into(), secret: "fixturesecret0000000000".into() }
}

/// The same reads as the fixture's `reads.json`.
fn reads(exchange: &Exchange) -> Value {
    let key = key();
    let ok = |name: &str, (status, value): (u16, Value)| {
        assert_eq!(status, 200, "{name}: {value}");
        value
    };
    json!({
        "balance": ok("balance", exchange.signed(&key, "GET", "/balance", "", None)),
        "open": ok("open", exchange.signed(&key, "GET", "/orders/open", "", None)),
        "order131": ok("order131", exchange.signed(&key, "GET", "/order", "order_id=131", None)),
        "trades": ok("trades", exchange.get("/trade/history?market=BTC-USDT&limit=1000")),
        "depth": ok("depth", exchange.get("/api/v3/depth?symbol=ETHUSDT&limit=100")),
        "klines": ok("klines", exchange.get("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=10")),
    })
}

fn header_version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

#[test]
fn a_bincode_era_data_directory_is_served_as_the_old_exchange_served_it() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    copy_dir(&fixture().join("data"), &data);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reads.json")).unwrap()).unwrap();

    let exchange = Exchange::start(&data, &[]);
    let got = reads(&exchange);
    // /trade/history has gained quote_quantity since (the shape it has with
    // a database too): the old answer is what remains without it.
    let mut got_as_before = got.clone();
    for trade in got_as_before["trades"]["trades"].as_array_mut().unwrap() {
        let trade = trade.as_object_mut().unwrap();
        let quote: f64 = trade.remove("quote_quantity").unwrap().as_str().unwrap().parse().unwrap();
        let price: f64 = trade["price"].as_str().unwrap().parse().unwrap();
        let quantity: f64 = trade["quantity"].as_str().unwrap().parse().unwrap();
        assert!((quote - price * quantity).abs() < 1e-9, "{trade:?}");
    }
    // Orders have gained the fields of stop, iceberg and list orders since,
    // null for the limit orders of then: the old answer is what remains
    // without them.
    let set_aside = |order: &mut Value| {
        let order = order.as_object_mut().unwrap();
        for field in ["visible_quantity", "trigger", "list_id", "reject_reason"] {
            assert_eq!(order.remove(field), Some(Value::Null), "{field} of {order:?}");
        }
    };
    got_as_before["open"]["orders"].as_array_mut().unwrap().iter_mut().for_each(set_aside);
    set_aside(&mut got_as_before["order131"]);
    // The klines' taker-buy volumes were 0 then; now the minute bar counts
    // what takers bought in the trades replayed after the snapshot (277):
    // the old snapshot's bars did not keep it.
    let replayed_buys: f64 = got["trades"]["trades"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["taker_side"] == "buy" && t["seq"].as_u64() > Some(277))
        .map(|t| t["quantity"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    let bar = got_as_before["klines"][0].as_array_mut().unwrap();
    let bought: f64 = bar[9].as_str().unwrap().parse().unwrap();
    assert!((bought - replayed_buys).abs() < 1e-9, "{bought} vs {replayed_buys}");
    assert!(bought > 0.0);
    bar[9] = json!("0.00000000");
    bar[10] = json!("0.00000000");
    for (name, want) in expected.as_object().unwrap() {
        let got = &got_as_before;
        assert_eq!(&got[name], want, "{name} differs from what the bincode-era exchange answered");
    }
    // The old snapshot's views were used: trades from before it are there.
    let trades = got["trades"]["trades"].as_array().unwrap();
    assert!(trades.iter().any(|t| t["seq"].as_u64() < Some(277)), "{}", got["trades"]);

    // Trading goes on, into a new-format segment beside the old one.
    let (status, placed) = exchange.place(
        &key(),
        json!({"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "0.01", "quantity": "0.0001"}),
    );
    assert_eq!(status, 200, "{placed}");
    let order_id = placed["order_id"].as_u64().unwrap();
    assert!(exchange.terminate().success());

    let segments = journal::list_segments(&data.join("journal")).unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    assert_eq!(header_version(&segments[0].1), journal::SEGMENT_FORMAT_VERSION_BINCODE);
    for (_, path) in &segments[1..] {
        assert_eq!(header_version(path), journal::SEGMENT_FORMAT_VERSION, "{}", path.display());
    }
    let snapshots = journal::list_snapshots(&data.join("snapshots")).unwrap();
    assert_eq!(
        header_version(&snapshots[0].1),
        journal::SNAPSHOT_FILE_VERSION,
        "the shutdown snapshot is new"
    );

    // After a restart from the new snapshot, the old history is still served.
    let exchange = Exchange::start(&data, &[]);
    let again = reads(&exchange);
    for name in ["order131", "trades", "klines"] {
        assert_eq!(again[name], got[name], "{name} after the restart");
    }
    // The ETH book is as it was (its update id is the sequence number, which moved on).
    for side in ["bids", "asks"] {
        assert_eq!(again["depth"][side], got["depth"][side], "ETH {side} after the restart");
    }
    let (status, order) = exchange.signed(&key(), "GET", "/order", &format!("order_id={order_id}"), None);
    assert_eq!(status, 200, "{order}");
}
