//! End-to-end tests of the REST API against the real `exchange` binary.

mod server;

use serde_json::{json, Value};
use server::{balance_of, Exchange, Key};

fn limit(market: &str, side: &str, price: &str, quantity: &str) -> Value {
    json!({ "market": market, "side": side, "type": "limit", "price": price, "quantity": quantity })
}

fn order_id(answer: &Value) -> u64 {
    answer["order_id"].as_u64().unwrap_or_else(|| panic!("no order id in {answer}"))
}

#[test]
fn the_trading_day_of_two_users() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);

    let (status, health) = exchange.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    let (_, markets) = exchange.get("/markets");
    assert_eq!(markets[0]["market"], "BTC-USDT");
    assert_eq!(markets[0]["tick_size"], "0.01");
    let (_, assets) = exchange.get("/assets");
    assert_eq!(assets.as_array().unwrap().len(), 3);

    // Bob offers 0.5 BTC at 50,000; Alice buys 0.2 at up to 50,010.
    let mut ask = limit("BTC-USDT", "sell", "50000", "0.5");
    ask["client_order_id"] = json!("bob-ask-1");
    let (status, ask) = exchange.place(bob, ask);
    assert_eq!(status, 200, "{ask}");
    assert_eq!((ask["status"].as_str(), ask["remaining_quantity"].as_str()), (Some("new"), Some("0.5")));
    let (status, buy) = exchange.place(alice, limit("BTC-USDT", "buy", "50010", "0.2"));
    assert_eq!(status, 200, "{buy}");
    assert_eq!(buy["status"], "filled");
    let fill = &buy["fills"][0];
    assert_eq!((fill["price"].as_str(), fill["quantity"].as_str()), (Some("50000"), Some("0.2")));
    // The taker fee (0.2%) is charged in what the buyer receives: 0.0004 BTC.
    assert_eq!(
        (fill["fee"].as_str(), fill["fee_asset"].as_str(), fill["maker"].as_bool()),
        (Some("0.00040000"), Some("BTC"), Some(false))
    );

    let (_, balance) = exchange.signed(alice, "GET", "/balance", "", None);
    assert_eq!(balance_of(&balance, "BTC"), ("10.19960000".into(), "0.00000000".into()));
    assert_eq!(balance_of(&balance, "USDT"), ("990000.000000".into(), "0.000000".into()));
    let (_, balance) = exchange.signed(bob, "GET", "/balance", "", None);
    // 10,000 USDT less the 0.1% maker fee; 0.3 BTC still locked in the ask.
    assert_eq!(balance_of(&balance, "USDT"), ("1009990.000000".into(), "0.000000".into()));
    assert_eq!(balance_of(&balance, "BTC"), ("9.50000000".into(), "0.30000000".into()));

    // Market data reflects it, with the sequence number.
    let (_, depth) = exchange.get("/depth?market=BTC-USDT&limit=5");
    assert_eq!(depth["asks"], json!([["50000", "0.3"]]));
    assert!(depth["seq"].as_u64().unwrap() > 0);
    let (_, ticker) = exchange.get("/ticker?market=BTC-USDT");
    assert_eq!((ticker["last_price"].as_str(), ticker["volume_24h"].as_str()), (Some("50000"), Some("0.2")));
    assert_eq!(ticker["best_ask"]["price"], "50000");
    let (_, trades) = exchange.get("/trade/history?market=BTC-USDT");
    assert_eq!(trades["trades"][0]["quantity"], "0.2");
    assert_eq!(trades["trades"][0]["taker_side"], "buy");

    // Queries by id and by client order id.
    let (status, found) = exchange.signed(bob, "GET", "/order", "client_order_id=bob-ask-1", None);
    assert_eq!((status, found["status"].as_str()), (200, Some("partially_filled")), "{found}");
    let (_, found) = exchange.signed(bob, "GET", "/order", &format!("order_id={}", order_id(&ask)), None);
    assert_eq!(found["filled_quantity"], "0.2");

    // Amend down keeps the order; amend the price moves it.
    let (status, amended) = exchange.signed(
        bob,
        "PUT",
        "/order",
        "",
        Some(json!({ "client_order_id": "bob-ask-1", "quantity": "0.1" })),
    );
    assert_eq!((status, amended["remaining_quantity"].as_str()), (200, Some("0.1")), "{amended}");
    let (status, amended) = exchange.signed(
        bob,
        "PUT",
        "/order",
        "",
        Some(json!({ "order_id": order_id(&ask), "price": "50100" })),
    );
    assert_eq!((status, amended["price"].as_str()), (200, Some("50100")), "{amended}");

    // Open orders with pagination; cancel-all.
    for price in ["40000", "40001", "40002"] {
        assert_eq!(exchange.place(alice, limit("BTC-USDT", "buy", price, "0.01")).0, 200);
    }
    assert_eq!(exchange.place(alice, limit("ETH-USDT", "buy", "2000", "0.5")).0, 200);
    let (_, open) = exchange.signed(alice, "GET", "/orders/open", "market=BTC-USDT&limit=2&offset=1", None);
    assert_eq!(open["orders"].as_array().unwrap().len(), 2, "{open}");
    assert_eq!(open["orders"][0]["price"], "40001");
    let (status, cancelled) =
        exchange.signed(alice, "POST", "/order/cancel_all", "", Some(json!({ "market": "BTC-USDT" })));
    assert_eq!((status, cancelled["cancelled"].as_u64()), (200, Some(3)), "{cancelled}");
    let (_, open) = exchange.signed(alice, "GET", "/orders/open", "", None);
    assert_eq!(open["orders"].as_array().unwrap().len(), 1, "the ETH order stays");

    // Cancel one order.
    let (status, cancelled) =
        exchange.signed(bob, "DELETE", "/order", &format!("order_id={}", order_id(&ask)), None);
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let (_, balance) = exchange.signed(bob, "GET", "/balance", "", None);
    assert_eq!(balance_of(&balance, "BTC").1, "0.00000000");

    // Market orders by quantity and by quote amount.
    exchange.place(bob, limit("ETH-USDT", "sell", "2001", "1"));
    let (status, market) = exchange.place(
        alice,
        json!({ "market": "ETH-USDT", "side": "buy", "type": "market", "quote_amount": "1000.5" }),
    );
    assert_eq!((status, market["status"].as_str()), (200, Some("filled")), "{market}");
    assert_eq!(market["filled_quantity"], "0.5", "1000.5 USDT buys exactly 0.5 at 2001");
    let (status, market) = exchange
        .place(alice, json!({ "market": "ETH-USDT", "side": "sell", "type": "market", "quantity": "0.3" }));
    assert_eq!(status, 200, "{market}");
    // The best bid is Alice's own: self-trade prevention expires the taker.
    assert_eq!(market["status"], "expired_self_trade");
}

#[test]
fn engine_rejections_have_their_status_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let alice = &keys[0];
    let check = |(status, body): (u16, Value), want_status: u16, want_code: &str| {
        assert_eq!((status, body["error"]["code"].as_str()), (want_status, Some(want_code)), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    check(exchange.place(alice, limit("BTC-USDT", "buy", "50000", "100")), 422, "insufficient_funds");
    let (_, body) = exchange.place(alice, limit("BTC-USDT", "buy", "50000", "100"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("insufficient USDT balance: 5000000.000000 needed"), "{message}");
    check(exchange.place(alice, limit("BTC-USDT", "buy", "1", "0.0001")), 422, "notional_below_minimum");
    let mut dup = limit("BTC-USDT", "buy", "100", "0.1");
    dup["client_order_id"] = json!("same");
    assert_eq!(exchange.place(alice, dup.clone()).0, 200);
    check(exchange.place(alice, dup), 409, "duplicate_client_order_id");
    exchange.place(&keys[1], limit("BTC-USDT", "sell", "200", "0.1"));
    let mut post_only = limit("BTC-USDT", "buy", "200", "0.1");
    post_only["time_in_force"] = json!("POST_ONLY");
    check(exchange.place(alice, post_only), 422, "post_only_would_take");
    check(exchange.signed(alice, "DELETE", "/order", "order_id=999", None), 404, "unknown_order");
    exchange.admin_ok("POST", "/admin/markets/status", json!({ "market": "BTC-USDT", "status": "halted" }));
    check(exchange.place(alice, limit("BTC-USDT", "buy", "100", "0.1")), 422, "market_not_open");
    check(
        exchange.admin("POST", "/admin/assets", json!({ "symbol": "BTC", "decimals": 8 })),
        409,
        "duplicate_asset",
    );
    check(
        exchange.admin("POST", "/admin/withdraw", json!({ "user_id": 0, "asset": "BTC", "amount": "11" })),
        422,
        "insufficient_funds",
    );
}

#[test]
fn every_authentication_failure_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let code =
        |(status, body): (u16, Value)| (status, body["error"]["code"].as_str().unwrap_or("").to_string());

    // No key; an unknown key; a wrong secret.
    let (status, _, body) = exchange.raw("GET", "/balance?timestamp=1&signature=00", &[], b"");
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_api_key")));
    let stranger = Key { user_id: 0, api_key: "Z".repeat(64), secret: alice.secret.clone() };
    assert_eq!(
        code(exchange.signed(&stranger, "GET", "/balance", "", None)),
        (401, "invalid_api_key".into())
    );
    let forger = Key { secret: "x".repeat(64), ..alice.clone() };
    assert_eq!(
        code(exchange.signed(&forger, "GET", "/balance", "", None)),
        (401, "invalid_signature".into())
    );

    // A body changed after signing.
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let query = format!("timestamp={timestamp}");
    let signed_body = limit("BTC-USDT", "buy", "100", "0.1").to_string();
    let signature = gateway::auth::sign(&alice.secret, &query, signed_body.as_bytes());
    let tampered = limit("BTC-USDT", "buy", "100", "9").to_string();
    let (status, _, body) = exchange.raw(
        "POST",
        &format!("/order?{query}&signature={signature}"),
        &[("X-MBX-APIKEY", &alice.api_key)],
        tampered.as_bytes(),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_signature")));
    // The same request as signed goes through once, and is refused when replayed.
    let target = format!("/order?{query}&signature={signature}");
    let (status, _, _) =
        exchange.raw("POST", &target, &[("X-MBX-APIKEY", &alice.api_key)], signed_body.as_bytes());
    assert_eq!(status, 200);
    let (status, _, body) =
        exchange.raw("POST", &target, &[("X-MBX-APIKEY", &alice.api_key)], signed_body.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("replayed_signature")));

    // Stale and future timestamps.
    let stale = format!("timestamp={}", timestamp - 10_000);
    assert_eq!(
        code(exchange.signed_raw(alice, "GET", "/balance", &stale, None)),
        (401, "timestamp_outside_recv_window".into())
    );
    let future = format!("timestamp={}", timestamp + 60_000);
    assert_eq!(
        code(exchange.signed_raw(alice, "GET", "/balance", &future, None)),
        (401, "timestamp_ahead".into())
    );

    // Another user's order can be neither seen, amended nor cancelled.
    let (_, order) = exchange.place(bob, limit("BTC-USDT", "sell", "60000", "0.1"));
    let id = order["order_id"].as_u64().unwrap();
    assert_eq!(code(exchange.signed(alice, "GET", "/order", &format!("order_id={id}"), None)).0, 404);
    assert_eq!(code(exchange.signed(alice, "DELETE", "/order", &format!("order_id={id}"), None)).0, 404);
    assert_eq!(
        code(exchange.signed(
            alice,
            "PUT",
            "/order",
            "",
            Some(json!({ "order_id": id, "quantity": "0.05" }))
        ))
        .0,
        404
    );
    let (_, open) = exchange.signed(bob, "GET", "/orders/open", "", None);
    assert_eq!(open["orders"][0]["remaining_quantity"], "0.1", "untouched");
    let (_, open) = exchange.signed(alice, "GET", "/orders/open", "", None);
    assert!(open["orders"].as_array().unwrap().iter().all(|o| o["order_id"] != id));

    // Admin endpoints refuse user keys and wrong tokens.
    let (status, _, body) = exchange.raw("POST", "/admin/users", &[("X-MBX-APIKEY", &alice.api_key)], b"{}");
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("invalid_admin_token")));
    let (status, _, _) =
        exchange.raw("POST", "/admin/users", &[("X-Admin-Token", "test-admin-token-0123456780")], b"{}");
    assert_eq!(status, 403);
    // A revoked key stops working at once.
    exchange.admin_ok(
        "DELETE",
        "/admin/api_keys",
        json!({ "user_id": alice.user_id, "api_key": alice.api_key }),
    );
    assert_eq!(code(exchange.signed(alice, "GET", "/balance", "", None)), (401, "invalid_api_key".into()));
}

#[test]
fn hostile_input_gets_a_precise_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_REQUEST_BODY_MAX_BYTES", "4096")]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let before = exchange.signed(alice, "GET", "/balance", "", None).1;
    let seq_before = exchange.get("/health").1["seq"].as_u64().unwrap();
    let code =
        |(status, body): (u16, Value)| (status, body["error"]["code"].as_str().unwrap_or("").to_string());
    let place_raw = |body: &str| {
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let query = format!("timestamp={}&nonce={timestamp}", timestamp / 1_000_000);
        let signature = gateway::auth::sign(&alice.secret, &query, body.as_bytes());
        let (status, _, value) = exchange.raw(
            "POST",
            &format!("/order?{query}&signature={signature}"),
            &[("X-MBX-APIKEY", &alice.api_key)],
            body.as_bytes(),
        );
        (status, value)
    };
    assert_eq!(code(place_raw("{not json")), (400, "invalid_json".into()));
    assert_eq!(code(place_raw("[]")), (400, "invalid_json".into()));
    assert_eq!(
        code(place_raw(r#"{"market":"BTC-USDT","side":"buy","type":"limit","price":50000,"quantity":"1"}"#)),
        (400, "invalid_json".into()),
        "a JSON number where a decimal string belongs"
    );
    assert_eq!(
        code(place_raw(
            r#"{"market":"BTC-USDT","side":"buy","type":"limit","price":"1","quantity":"1","extra":1}"#
        )),
        (400, "invalid_json".into())
    );
    assert_eq!(
        code(place_raw(r#"{"market":"BTC-USDT","side":"up","type":"limit"}"#)),
        (400, "invalid_json".into())
    );
    for (price, quantity) in [
        ("50000.001", "0.1"),
        ("-1", "0.1"),
        ("1e5", "0.1"),
        ("50000", "0.00001"),
        ("99999999999999999999999999", "0.1"),
        ("50000", "184467440737095516160"),
    ] {
        let (status, body) = exchange.place(alice, limit("BTC-USDT", "buy", price, quantity));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{price} {quantity}: {body}"
        );
    }
    let (status, body) = exchange.place(alice, limit("DOGE-USDT", "buy", "1", "1"));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_market")));
    let (status, body) = exchange.place(alice, json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "1", "quote_amount": "5" }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = exchange
        .place(alice, json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "quantity": "1" }));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_parameter")),
        "a limit order without a price"
    );
    let big = format!(r#"{{"market":"BTC-USDT","pad":"{}"}}"#, "x".repeat(5_000));
    assert_eq!(code(place_raw(&big)), (413, "body_too_large".into()));
    let (status, body) = exchange.get("/depth?market=BTC-USDT&limit=0");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = exchange.get("/depth?market=BTC-USDT&limit=abc");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = exchange.get("/depth");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("missing_parameter")));
    let (status, body) = exchange.get("/depth?market=%ZZ");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = exchange.get("/no/such/thing");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_such_endpoint")));
    let (status, _, body) = exchange.raw("PATCH", "/order", &[], b"");
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    let (status, body) = exchange.admin(
        "POST",
        "/admin/deposit",
        json!({ "user_id": 0, "asset": "BTC", "amount": "0.000000001" }),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = exchange.admin(
        "POST",
        "/admin/markets",
        json!({ "base": "BTC", "quote": "ETH", "tick_size": "0.0000000001", "lot_size": "0.0001" }),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{body}");

    // Nothing changed, and the server is still up.
    assert_eq!(exchange.signed(alice, "GET", "/balance", "", None).1["balances"], before["balances"]);
    assert_eq!(exchange.get("/health").1["seq"].as_u64().unwrap(), seq_before);
}

#[test]
fn a_crash_and_restart_recovers_orders_and_balances_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_DURABILITY", "batch")]);
    let keys = exchange.demo(3);
    for (i, key) in keys.iter().enumerate() {
        for step in 0..5 {
            let price = format!("{}", 49_990 + i * 7 + step);
            exchange.place(
                key,
                limit("BTC-USDT", if (i + step) % 2 == 0 { "buy" } else { "sell" }, &price, "0.01"),
            );
        }
    }
    let snapshot = |exchange: &Exchange| {
        let books: Vec<Value> =
            ["BTC-USDT", "ETH-USDT"].iter().map(|m| exchange.get(&format!("/depth?market={m}")).1).collect();
        let users: Vec<(Value, Value)> = keys
            .iter()
            .map(|k| {
                (
                    exchange.signed(k, "GET", "/balance", "", None).1,
                    exchange.signed(k, "GET", "/orders/open", "", None).1,
                )
            })
            .collect();
        (books, users)
    };
    let before = snapshot(&exchange);
    let exchange = exchange.crash_and_restart();
    let after = snapshot(&exchange);
    assert_eq!(before.0, after.0, "books");
    for ((balance_before, open_before), (balance_after, open_after)) in before.1.iter().zip(&after.1) {
        assert_eq!(balance_before["balances"], balance_after["balances"]);
        let ids = |open: &Value| {
            assert!(open["orders"].is_array(), "{open}");
            open["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["order_id"].clone(), o["remaining_quantity"].clone(), o["price"].clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(open_before), ids(open_after));
    }
    // The restarted exchange keeps trading, with the keys it had.
    let (status, _) = exchange.place(&keys[0], limit("BTC-USDT", "buy", "50100", "0.02"));
    assert_eq!(status, 200);
    assert!(exchange.stderr().contains("recovered sequence"), "{}", exchange.stderr());
}

#[test]
fn sigterm_drains_writes_a_snapshot_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    exchange.place(&keys[0], limit("BTC-USDT", "buy", "100", "0.5"));
    let seq = exchange.get("/health").1["seq"].as_u64().unwrap();
    let stderr_path = exchange.stderr_path.clone();
    let status = exchange.terminate();
    assert!(
        status.success(),
        "exit status {status}: {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let snapshots = journal::list_snapshots(&dir.path().join("snapshots")).unwrap();
    assert_eq!(snapshots.first().map(|(s, _)| *s), Some(seq), "a snapshot at the last sequence");
    let exchange = Exchange::start(dir.path(), &[]);
    assert!(exchange.stderr().contains(&format!("recovered sequence {seq}")), "{}", exchange.stderr());
    assert!(exchange.stderr().contains("0 commands replayed"), "{}", exchange.stderr());
    let (_, open) = exchange.signed(&keys[0], "GET", "/orders/open", "", None);
    assert_eq!(open["orders"][0]["price"], "100");
}

#[test]
fn the_openapi_description_lists_exactly_the_served_routes() {
    let description: Value = serde_json::from_str(gateway::rest::OPENAPI_JSON).unwrap();
    assert_eq!(description["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    let mut described: Vec<(String, String)> = Vec::new();
    for (path, item) in description["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push((method.to_uppercase(), path.clone()));
        }
    }
    described.sort();
    let mut served: Vec<(String, String)> = gateway::rest::ROUTES
        .iter()
        .chain(gateway::binance::rest::ROUTES)
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(described, served);
    // And the server serves it.
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let (status, served) = exchange.get("/openapi.json");
    assert_eq!((status, &served), (200, &description));
}

#[test]
fn connections_over_the_limit_are_closed_and_the_server_stays_up() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_CONNECTIONS_MAX", "2")]);
    // Two idle connections take both places.
    let held: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(exchange.address).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut third = std::net::TcpStream::connect(exchange.address).unwrap();
    third.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut buffer = [0u8; 16];
    assert_eq!(third.read(&mut buffer).unwrap_or(0), 0, "the third connection is closed without an answer");
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(exchange.get("/health").0, 200, "places free up when connections close");
}
