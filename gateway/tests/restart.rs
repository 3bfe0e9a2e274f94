//! After a restart, clean (SIGTERM) or not (SIGKILL), every read endpoint
//! answers as if the process had never stopped: closed orders with their
//! fills, a user's trades (both sides of a self-trade), a market's trades
//! and aggregates, the 24-hour ticker, open orders, books and balances,
//! through the native and the Binance-compatible APIs. The views are
//! recovered from the snapshot (taken every few commands here, so that
//! both the snapshot's views and the replay after it are exercised) and
//! the journal after it.

mod server;

use serde_json::Value;
use server::{Exchange, Key};

/// Every order, trade and book of the data directory as both APIs show
/// them, without the fields that are the time of the request.
fn reads(exchange: &Exchange, keys: &[Key], orders: &[(usize, u64)]) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |name: String, (status, value): (u16, Value)| {
        assert_eq!(status, 200, "{name}: {value}");
        out.insert(name, value);
    };
    for &(owner, order) in orders {
        let key = &keys[owner];
        put(
            format!("native order {order}"),
            exchange.signed(key, "GET", "/order", &format!("order_id={order}"), None),
        );
        let (status, _, value) =
            exchange.binance(key, "GET", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={order}"));
        put(format!("binance order {order}"), (status, value));
    }
    for (index, key) in keys.iter().enumerate() {
        let (status, _, value) =
            exchange.binance(key, "GET", "/api/v3/myTrades", "symbol=BTCUSDT&limit=1000");
        put(format!("myTrades {index}"), (status, value));
        let (status, _, value) = exchange.binance(key, "GET", "/api/v3/openOrders", "symbol=BTCUSDT");
        put(format!("openOrders {index}"), (status, value));
        put(format!("native open {index}"), exchange.signed(key, "GET", "/orders/open", "", None));
        put(format!("balance {index}"), exchange.signed(key, "GET", "/balance", "", None));
    }
    put("trades".into(), exchange.get("/api/v3/trades?symbol=BTCUSDT&limit=1000"));
    put("aggTrades".into(), exchange.get("/api/v3/aggTrades?symbol=BTCUSDT&limit=1000"));
    let (status, mut ticker) = exchange.get("/api/v3/ticker/24hr?symbol=BTCUSDT");
    ticker.as_object_mut().unwrap().remove("closeTime");
    put("ticker 24hr".into(), (status, ticker));
    put("native trades".into(), exchange.get("/trade/history?market=BTC-USDT&limit=1000"));
    put("native ticker".into(), exchange.get("/ticker?market=BTC-USDT"));
    put("depth".into(), exchange.get("/api/v3/depth?symbol=BTCUSDT&limit=100"));
    Value::Object(out)
}

fn place(exchange: &Exchange, key: &Key, params: &str) -> u64 {
    let (status, _, answer) =
        exchange.binance(key, "POST", "/api/v3/order", &format!("symbol=BTCUSDT&{params}"));
    assert_eq!(status, 200, "{params}: {answer}");
    answer["orderId"].as_u64().unwrap()
}

/// Orders of every fate between three users: resting, partly and wholly
/// filled, cancelled, amended, expired IOC and market orders, market
/// orders by quote amount on both sides, and trades with oneself.
fn trade(exchange: &Exchange, keys: &[Key], round: u64, orders: &mut Vec<(usize, u64)>) {
    let limit = |side: &str, qty: &str, price: u64| {
        format!("side={side}&type=LIMIT&timeInForce=GTC&quantity={qty}&price={}", 30_000 + price + round)
    };
    let mut order = |who: usize, params: String| {
        let id = place(exchange, &keys[who], &params);
        orders.push((who, id));
        id
    };
    order(0, limit("SELL", "0.5", 10));
    let partly = order(0, limit("SELL", "0.3", 11));
    order(1, limit("BUY", "0.2", 1));
    let cancelled = order(1, limit("BUY", "0.1", 0));
    // Takes the first ask whole and part of the second.
    order(2, limit("BUY", "0.6", 11));
    // Another user's IOC that finds nothing at its price.
    order(2, format!("side=BUY&type=LIMIT&timeInForce=IOC&quantity=0.1&price={}", 29_000 + round));
    // A self-trade allowed (Binance's selfTradePreventionMode NONE).
    order(1, format!("{}&selfTradePreventionMode=NONE", limit("SELL", "0.1", 1)));
    // Market orders: by quantity, and by quote amount on both sides.
    order(0, "side=SELL&type=MARKET&quantity=0.05".into());
    order(2, "side=BUY&type=MARKET&quoteOrderQty=300".into());
    order(0, "side=SELL&type=MARKET&quoteOrderQty=100".into());
    let (status, _, answer) =
        exchange.binance(&keys[1], "DELETE", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={cancelled}"));
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = exchange.binance(
        &keys[0],
        "PUT",
        "/api/v3/order/amend/keepPriority",
        &format!("symbol=BTCUSDT&orderId={partly}&newQty=0.15"),
    );
    assert_eq!(status, 200, "{answer}");
}

fn check_restarts(restart: fn(Exchange) -> Exchange) {
    let dir = tempfile::tempdir().unwrap();
    let env = [("EXCHANGE_SNAPSHOT_EVERY_COMMANDS", "7")];
    let mut exchange = Exchange::start(dir.path(), &env);
    let keys = exchange.demo(3);
    let mut orders = Vec::new();
    for round in 0..3 {
        trade(&exchange, &keys, round, &mut orders);
        let before = reads(&exchange, &keys, &orders);
        exchange = restart(exchange);
        let after = reads(&exchange, &keys, &orders);
        for (name, value) in before.as_object().unwrap() {
            assert_eq!(&after[name], value, "{name} differs after restart {round}");
        }
    }
    // Closed orders really were among them: every fate answers the same.
    let statuses: std::collections::BTreeSet<String> = orders
        .iter()
        .map(|&(owner, order)| {
            let (_, _, value) = exchange.binance(
                &keys[owner],
                "GET",
                "/api/v3/order",
                &format!("symbol=BTCUSDT&orderId={order}"),
            );
            value["status"].as_str().unwrap().to_string()
        })
        .collect();
    for status in ["FILLED", "CANCELED", "EXPIRED", "PARTIALLY_FILLED"] {
        assert!(statuses.contains(status), "no {status} order among {statuses:?}");
    }
    // Both sides of each self-trade are among the user's trades.
    let (_, _, trades) = exchange.binance(&keys[1], "GET", "/api/v3/myTrades", "symbol=BTCUSDT&limit=1000");
    let trades = trades.as_array().unwrap();
    let both_sides =
        trades.iter().filter(|t| trades.iter().filter(|u| u["id"] == t["id"]).count() == 2).count();
    assert!(both_sides >= 2 * 3, "a self-trade in each round: {trades:?}");
}

#[test]
fn every_read_answers_the_same_after_sigterm() {
    check_restarts(|exchange| {
        let dir = exchange.data_dir.clone();
        let status = exchange.terminate();
        assert!(status.success(), "{status}");
        let exchange = Exchange::start(&dir, &[("EXCHANGE_SNAPSHOT_EVERY_COMMANDS", "7")]);
        let (_, health) = exchange.get("/health");
        assert_eq!(health["snapshot_seq"], health["seq"], "the shutdown snapshot is known: {health}");
        exchange
    });
}

#[test]
fn every_read_answers_the_same_after_sigkill() {
    check_restarts(Exchange::crash_and_restart);
}

#[test]
fn a_request_executed_before_a_crash_is_not_executed_again_after_it() {
    // The replay cache starts empty with the process; without more, a
    // signed order sent again after the restart (a client retrying a
    // request whose answer the crash lost, or anyone who saw it) would be
    // a second order.
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let key = &keys[0];
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let params = format!(
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price=100&timestamp={timestamp}&recvWindow=60000"
    );
    let signature = gateway::auth::sign(&key.secret, &params, b"");
    let body = format!("{params}&signature={signature}");
    let headers =
        [("X-MBX-APIKEY", key.api_key.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, first) = exchange.raw("POST", "/api/v3/order", &headers, body.as_bytes());
    assert_eq!(status, 200, "{first}");
    let exchange = exchange.crash_and_restart();
    let (status, _, again) = exchange.raw("POST", "/api/v3/order", &headers, body.as_bytes());
    assert_eq!(status, 400, "the same signed order after the restart: {again}");
    assert_eq!(again["code"], -1021, "{again}");
    let (_, _, open) = exchange.binance(key, "GET", "/api/v3/openOrders", "symbol=BTCUSDT");
    assert_eq!(open.as_array().unwrap().len(), 1, "one order, not two: {open}");
    // A request signed now goes through.
    place(&exchange, key, "side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price=101");
}
