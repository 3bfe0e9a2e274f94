//! The Binance-compatible API against the real `exchange` binary: Binance's
//! error codes and HTTP statuses for each common failure, the depth streams'
//! update ids continuing REST depth's `lastUpdateId`, and the WebSocket API
//! with its own signing scheme and user data stream.

mod server;

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use server::{Exchange, Key};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// Milliseconds, but never the same twice: two identical signed requests
/// in one millisecond would be one request replayed, which is refused.
fn fresh_timestamp() -> u128 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = now_ms() as u64;
    let previous = LAST.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
    if previous >= now {
        u128::from(LAST.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
    } else {
        u128::from(now)
    }
}

/// A signed `/api/v3` request with its parameters in the query (GET,
/// DELETE) or the form body (POST, PUT), as Binance clients send them.
fn signed(exchange: &Exchange, key: &Key, method: &str, path: &str, params: &str) -> (u16, String, Value) {
    let params = if params.is_empty() {
        format!("timestamp={}", fresh_timestamp())
    } else {
        format!("{params}&timestamp={}", fresh_timestamp())
    };
    signed_exactly(exchange, key, method, path, &params, &key.secret)
}

fn signed_exactly(
    exchange: &Exchange,
    key: &Key,
    method: &str,
    path: &str,
    params: &str,
    secret: &str,
) -> (u16, String, Value) {
    let signature = gateway::auth::sign(secret, params, b"");
    let signed = format!("{params}&signature={signature}");
    let headers =
        [("X-MBX-APIKEY", key.api_key.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    if method == "GET" || method == "DELETE" {
        exchange.raw(method, &format!("{path}?{signed}"), &headers, b"")
    } else {
        exchange.raw(method, path, &headers, signed.as_bytes())
    }
}

fn code(answer: &(u16, String, Value)) -> (u16, i64) {
    (answer.0, answer.2["code"].as_i64().unwrap_or(0))
}

#[test]
fn each_common_failure_has_binances_code_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let order = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price=50000";

    let good = signed(&exchange, alice, "POST", "/api/v3/order", order);
    assert_eq!(good.0, 200, "{good:?}");
    assert_eq!(good.2["status"], "NEW");
    assert_eq!(good.2["fills"], json!([]), "LIMIT orders answer FULL by default");
    assert!(good.1.to_ascii_lowercase().contains("x-mbx-used-weight-1m: "), "{}", good.1);

    // Signing.
    let params = format!("{order}&timestamp={}", now_ms());
    let wrong = signed_exactly(&exchange, alice, "POST", "/api/v3/order", &params, "not-the-secret");
    assert_eq!(code(&wrong), (400, -1022), "{wrong:?}");
    assert_eq!(wrong.2["msg"], "Signature for this request is not valid.");
    let replay_params = format!("{order}&newClientOrderId=replay-1&timestamp={}", now_ms());
    let first = signed_exactly(&exchange, alice, "POST", "/api/v3/order", &replay_params, &alice.secret);
    assert_eq!(first.0, 200, "{first:?}");
    // A signed request received twice is refused, in the form Binance
    // gives a duplicate: the order is not placed twice.
    let replay = signed_exactly(&exchange, alice, "POST", "/api/v3/order", &replay_params, &alice.secret);
    assert_eq!(
        (code(&replay), replay.2["msg"].as_str()),
        ((400, -2010), Some("Duplicate order sent.")),
        "{replay:?}"
    );
    let open = signed(&exchange, alice, "GET", "/api/v3/openOrders", "symbol=BTCUSDT");
    assert_eq!(open.2.as_array().map(Vec::len), Some(2), "two orders, not three: {open:?}");
    let replayed_id = first.2["orderId"].as_u64().unwrap();
    let cancel_params = format!("symbol=BTCUSDT&orderId={replayed_id}&timestamp={}", fresh_timestamp());
    let cancel = signed_exactly(&exchange, alice, "DELETE", "/api/v3/order", &cancel_params, &alice.secret);
    assert_eq!(cancel.2["status"], "CANCELED", "{cancel:?}");
    let again = signed_exactly(&exchange, alice, "DELETE", "/api/v3/order", &cancel_params, &alice.secret);
    assert_eq!(code(&again), (400, -2011), "a replayed cancel: {again:?}");
    let stale = format!("{order}&timestamp={}", now_ms() - 10_000);
    let stale = signed_exactly(&exchange, alice, "POST", "/api/v3/order", &stale, &alice.secret);
    assert_eq!(code(&stale), (400, -1021), "{stale:?}");
    assert_eq!(stale.2["msg"], "Timestamp for this request is outside of the recvWindow.");
    let ahead = format!("{order}&timestamp={}", now_ms() + 10_000);
    let ahead = signed_exactly(&exchange, alice, "POST", "/api/v3/order", &ahead, &alice.secret);
    assert_eq!(code(&ahead), (400, -1021), "{ahead:?}");
    let no_key =
        exchange.raw("GET", &format!("/api/v3/account?timestamp={}&signature=00", now_ms()), &[], b"");
    assert_eq!(code(&no_key), (401, -2014), "{no_key:?}");
    let nobody = Key { user_id: 0, api_key: "nobody0123456789nobody".into(), secret: "x".into() };
    let unknown_key = signed(&exchange, &nobody, "GET", "/api/v3/account", "");
    assert_eq!(code(&unknown_key), (401, -2015), "{unknown_key:?}");
    let unsigned = exchange.raw(
        "GET",
        &format!("/api/v3/account?timestamp={}", now_ms()),
        &[("X-MBX-APIKEY", &alice.api_key)],
        b"",
    );
    assert_eq!(code(&unsigned), (400, -1102), "{unsigned:?}");

    // Orders the engine refuses.
    let poor = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=100&price=50000",
    );
    assert_eq!(code(&poor), (400, -2010), "{poor:?}");
    assert_eq!(poor.2["msg"], "Account has insufficient balance for requested action.");
    let dup =
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=60000&newClientOrderId=dup-1";
    assert_eq!(signed(&exchange, bob, "POST", "/api/v3/order", dup).0, 200);
    let dup = signed(&exchange, bob, "POST", "/api/v3/order", dup);
    assert_eq!((code(&dup), dup.2["msg"].as_str()), ((400, -2010), Some("Duplicate order sent.")), "{dup:?}");
    let taking = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT_MAKER&quantity=0.1&price=60000",
    );
    assert_eq!(
        (code(&taking), taking.2["msg"].as_str()),
        ((400, -2010), Some("Order would immediately match and take."))
    );

    // Filters, checked at the edge or by the engine.
    for (params, filter) in [
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price=50000.001", "PRICE_FILTER"),
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.00015&price=50000", "LOT_SIZE"),
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.0001&price=1", "NOTIONAL"),
    ] {
        let refused = signed(&exchange, alice, "POST", "/api/v3/order", params);
        assert_eq!(code(&refused), (400, -1013), "{params}: {refused:?}");
        assert_eq!(refused.2["msg"], format!("Filter failure: {filter}"));
    }
    let test = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order/test",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.0001&price=1&newClientOrderId=test-1",
    );
    assert_eq!(
        (code(&test), test.2["msg"].as_str()),
        ((400, -1013), Some("Filter failure: NOTIONAL")),
        "order/test checks filters too"
    );
    let test = signed(&exchange, alice, "POST", "/api/v3/order/test", order);
    assert_eq!((test.0, &test.2), (200, &json!({})));

    // Unknown orders and symbols.
    let cancel = signed(&exchange, alice, "DELETE", "/api/v3/order", "symbol=BTCUSDT&orderId=999999");
    assert_eq!((code(&cancel), cancel.2["msg"].as_str()), ((400, -2011), Some("Unknown order sent.")));
    let query = signed(&exchange, alice, "GET", "/api/v3/order", "symbol=BTCUSDT&orderId=999999");
    assert_eq!((code(&query), query.2["msg"].as_str()), ((400, -2013), Some("Order does not exist.")));
    let bobs = good.2["orderId"].as_u64().unwrap();
    let theirs = signed(&exchange, bob, "DELETE", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={bobs}"));
    assert_eq!(code(&theirs), (400, -2011), "another user's order is unknown: {theirs:?}");
    let wrong_market =
        signed(&exchange, alice, "DELETE", "/api/v3/order", &format!("symbol=ETHUSDT&orderId={bobs}"));
    assert_eq!(code(&wrong_market), (400, -2011), "{wrong_market:?}");
    // A body over the limit is refused before anything reads it.
    let huge = vec![b'a'; 64 * 1024 + 1];
    let too_large = exchange.raw("POST", "/api/v3/order", &[("X-MBX-APIKEY", alice.api_key.as_str())], &huge);
    assert_eq!(code(&too_large), (413, -1000), "{:?}", too_large.2);
    let symbol = exchange.raw("GET", "/api/v3/depth?symbol=DOGEUSDT", &[], b"");
    assert_eq!((code(&symbol), symbol.2["msg"].as_str()), ((400, -1121), Some("Invalid symbol.")));
    let symbol =
        signed(&exchange, alice, "POST", "/api/v3/order", "symbol=btcusdt&side=BUY&type=MARKET&quantity=1");
    assert_eq!(code(&symbol), (400, -1121));

    // Malformed requests.
    for (params, expected) in [
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.1&price=50000", -1102), // no timeInForce
        ("symbol=BTCUSDT&side=BUY&type=STOP_LOSS&quantity=0.1", -1102), // no stopPrice or trailingDelta
        ("symbol=BTCUSDT&side=BUY&type=ICEBERG&quantity=0.1", -1116),
        ("symbol=BTCUSDT&side=UP&type=MARKET&quantity=0.1", -1117),
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTX&quantity=0.1&price=1", -1115),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=1e5", -1100),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.1&price=5", -1106),
        ("symbol=BTCUSDT&side=BUY&type=MARKET", -1102),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.1&timeInforce=GTC", -1104),
        ("symbol=BTCUSDT&symbol=ETHUSDT&side=BUY&type=MARKET&quantity=0.1", -1101),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.1&newClientOrderId=", -1105),
    ] {
        let refused = signed(&exchange, alice, "POST", "/api/v3/order", params);
        assert_eq!(code(&refused), (400, expected), "{params}: {refused:?}");
    }
    // Nothing of that changed alice's balance: only her first bid (0.1 at 50,000) locks USDT.
    let account = signed(&exchange, alice, "GET", "/api/v3/account", "omitZeroBalances=true");
    let usdt =
        account.2["balances"].as_array().unwrap().iter().find(|b| b["asset"] == "USDT").unwrap().clone();
    assert_eq!(usdt["locked"], "5000.00000000", "{account:?}");
}

#[test]
fn too_much_weight_is_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_REQUEST_WEIGHT_PER_MINUTE", "30")]);
    exchange.demo(1);
    let info = exchange.raw("GET", "/api/v3/exchangeInfo", &[], b"");
    assert_eq!(info.0, 200);
    assert_eq!(info.2["rateLimits"][0]["limit"], 30);
    assert!(info.1.to_ascii_lowercase().contains("x-mbx-used-weight-1m: 20"), "{}", info.1);
    let second = exchange.raw("GET", "/api/v3/exchangeInfo", &[], b"");
    // Unless the minute turned in between, the second costs 40 of 30.
    if second.0 != 200 {
        assert_eq!(code(&second), (429, -1003), "{second:?}");
        let head = second.1.to_ascii_lowercase();
        assert!(head.contains("retry-after: "), "{head}");
        assert!(second.2["msg"].as_str().unwrap().starts_with("Too much request weight used"));
    } else {
        let third = exchange.raw("GET", "/api/v3/exchangeInfo", &[], b"");
        assert_eq!(code(&third), (429, -1003), "{third:?}");
    }
}

#[test]
fn per_key_request_rate_is_429_too() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[("EXCHANGE_RATE_LIMIT_PER_S", "1"), ("EXCHANGE_RATE_LIMIT_BURST", "2")],
    );
    let keys = exchange.demo(1);
    let answers: Vec<(u16, i64)> = (0..4)
        .map(|i| {
            code(&signed(&exchange, &keys[0], "GET", "/api/v3/openOrders", &format!("symbol=BTCUSDT&n={i}")))
        })
        .collect();
    assert!(answers.contains(&(429, -1003)), "{answers:?}");
}

fn connect(exchange: &Exchange, path: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let stream = TcpStream::connect(exchange.ws_address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (socket, _) =
        tungstenite::client(format!("ws://{}{path}", exchange.ws_address), MaybeTlsStream::Plain(stream))
            .unwrap();
    socket
}

fn send(socket: &mut WebSocket<MaybeTlsStream<TcpStream>>, message: Value) {
    socket.send(Message::text(message.to_string())).unwrap();
}

fn next(socket: &mut WebSocket<MaybeTlsStream<TcpStream>>) -> Value {
    loop {
        match socket.read().expect("a message in time") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The first message, already seen or still to come, that satisfies
/// `wanted`; the others are kept in `seen` (events and answers interleave).
fn until(
    socket: &mut WebSocket<MaybeTlsStream<TcpStream>>,
    seen: &mut Vec<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(at) = seen.iter().position(&wanted) {
        return seen.remove(at);
    }
    loop {
        let message = next(socket);
        if wanted(&message) {
            return message;
        }
        seen.push(message);
    }
}

#[test]
fn depth_diffs_continue_from_the_rest_snapshot_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    // Some book before anyone listens.
    for i in 0..5 {
        let params =
            format!("symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price={}", 50_000 + i);
        assert_eq!(signed(&exchange, bob, "POST", "/api/v3/order", &params).0, 200);
    }
    let mut raw = connect(&exchange, "/ws/btcusdt@depth@100ms");
    let mut combined = connect(&exchange, "/stream?streams=btcusdt@depth/btcusdt@trade");
    send(
        &mut combined,
        json!({ "method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@bookTicker"], "id": 7 }),
    );
    assert_eq!(next(&mut combined), json!({ "result": null, "id": 7 }));
    send(&mut combined, json!({ "method": "LIST_SUBSCRIPTIONS", "id": "list" }));
    assert_eq!(
        next(&mut combined),
        json!({ "result": ["btcusdt@aggTrade", "btcusdt@bookTicker", "btcusdt@depth", "btcusdt@trade"], "id": "list" })
    );
    send(&mut combined, json!({ "method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 8 }));
    let refused = next(&mut combined);
    assert_eq!((refused["error"]["code"].as_i64(), refused["id"].as_i64()), (Some(2), Some(8)), "{refused}");
    // A URL naming an unknown stream, or more than 50, is refused at the handshake.
    let too_many: Vec<String> = (0..51).map(|i| format!("btcusdt@depth{}", [5, 10, 20][i % 3])).collect();
    for query in ["btcusdt@nonsense".to_string(), too_many.join("/")] {
        let stream = TcpStream::connect(exchange.ws_address).unwrap();
        let refused = tungstenite::client(
            format!("ws://{}/stream?streams={query}", exchange.ws_address),
            MaybeTlsStream::Plain(stream),
        );
        match refused {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 400)
            }
            other => panic!("expected a 400 handshake for {query:.40}: {:?}", other.map(|_| ())),
        }
    }

    // Traffic on both markets while the snapshot is taken.
    let snapshot = exchange.raw("GET", "/api/v3/depth?symbol=BTCUSDT&limit=1000", &[], b"").2;
    let last_update_id = snapshot["lastUpdateId"].as_u64().unwrap();
    for i in 0..30 {
        let (side, price) = if i % 2 == 0 { ("BUY", 49_000 + i) } else { ("SELL", 50_010 + i) };
        let params =
            format!("symbol=BTCUSDT&side={side}&type=LIMIT&timeInForce=GTC&quantity=0.2&price={price}");
        assert_eq!(signed(&exchange, bob, "POST", "/api/v3/order", &params).0, 200);
        let other =
            format!("symbol=ETHUSDT&side={side}&type=LIMIT&timeInForce=GTC&quantity=0.2&price={}", 3_000 + i);
        assert_eq!(signed(&exchange, bob, "POST", "/api/v3/order", &other).0, 200);
    }
    let taken = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.35",
    );
    assert_eq!(taken.0, 200, "{taken:?}");
    let final_book = exchange.raw("GET", "/api/v3/depth?symbol=BTCUSDT&limit=1000", &[], b"").2;
    let final_id = final_book["lastUpdateId"].as_u64().unwrap();

    // Binance's procedure on the raw stream: drop u <= lastUpdateId; the
    // first kept has U <= lastUpdateId + 1 <= u; each next U is the last u + 1.
    let level = |l: &Value| (l[0].as_str().unwrap().to_string(), l[1].as_str().unwrap().to_string());
    let mut bids: std::collections::BTreeMap<String, String> =
        snapshot["bids"].as_array().unwrap().iter().map(level).collect();
    let mut asks: std::collections::BTreeMap<String, String> =
        snapshot["asks"].as_array().unwrap().iter().map(level).collect();
    let mut previous_u: Option<u64> = None;
    let mut applied_any = false;
    loop {
        let diff = next(&mut raw);
        assert_eq!(diff["e"], "depthUpdate", "{diff}");
        assert_eq!(diff["s"], "BTCUSDT");
        let (first, last) = (diff["U"].as_u64().unwrap(), diff["u"].as_u64().unwrap());
        assert!(first <= last, "{diff}");
        if let Some(previous) = previous_u {
            assert_eq!(first, previous + 1, "diffs continue each other: {diff}");
        }
        previous_u = Some(last);
        if last <= last_update_id {
            continue;
        }
        if !applied_any {
            assert!(first <= last_update_id + 1, "the first diff kept reaches back to the snapshot: {diff}");
            applied_any = true;
        }
        for (side, book) in [("b", &mut bids), ("a", &mut asks)] {
            for l in diff[side].as_array().unwrap() {
                let (price, qty) = level(l);
                if qty.trim_end_matches('0').trim_end_matches('.') == "0" {
                    book.remove(&price);
                } else {
                    book.insert(price, qty);
                }
            }
        }
        if last >= final_id {
            break;
        }
    }
    let expected = |side: &str| -> std::collections::BTreeMap<String, String> {
        final_book[side].as_array().unwrap().iter().map(level).collect()
    };
    assert_eq!(bids, expected("bids"), "the book kept from diffs equals the exchange's");
    assert_eq!(asks, expected("asks"));

    // The combined stream wraps each event with its stream name.
    let mut seen = Vec::new();
    let trade = until(&mut combined, &mut seen, |m| m["stream"] == "btcusdt@trade");
    assert_eq!((trade["data"]["e"].as_str(), trade["data"]["s"].as_str()), (Some("trade"), Some("BTCUSDT")));
    let agg = until(&mut combined, &mut seen, |m| m["stream"] == "btcusdt@aggTrade");
    assert_eq!(agg["data"]["e"], "aggTrade");
    assert!(agg["data"]["f"].as_u64() <= agg["data"]["l"].as_u64(), "{agg}");
    let rest_aggs = exchange.raw("GET", "/api/v3/aggTrades?symbol=BTCUSDT", &[], b"").2;
    assert!(
        rest_aggs.as_array().unwrap().iter().any(|a| a["a"] == agg["data"]["a"]),
        "REST aggTrades has the same aggregate ids"
    );
    let ticker = until(&mut combined, &mut seen, |m| m["stream"] == "btcusdt@bookTicker");
    assert_eq!(ticker["data"]["s"], "BTCUSDT", "{ticker}");
    assert!(ticker["data"]["u"].as_u64().is_some() && ticker["data"]["b"].is_string(), "{ticker}");

    // Partial books: the top levels every 100 ms, in REST depth's id space.
    let mut partial = connect(&exchange, "/ws/btcusdt@depth5@100ms");
    let top = next(&mut partial);
    assert!(top["lastUpdateId"].as_u64().unwrap() >= final_id, "{top}");
    assert_eq!(top["asks"].as_array().unwrap().len(), 5, "{top}");
    let rest_top = exchange.raw("GET", "/api/v3/depth?symbol=BTCUSDT&limit=5", &[], b"").2;
    assert_eq!((&top["bids"], &top["asks"]), (&rest_top["bids"], &rest_top["asks"]));
}

#[test]
fn the_websocket_api_places_orders_and_streams_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let request = |key: &Key, id: &str, method: &str, mut params: Value| -> Value {
        params["apiKey"] = json!(key.api_key);
        params["timestamp"] = json!(fresh_timestamp() as u64);
        let payload = gateway::binance::ws_api::signature_payload(params.as_object().unwrap());
        params["signature"] = json!(gateway::auth::sign(&key.secret, &payload, b""));
        json!({ "id": id, "method": method, "params": params })
    };
    let mut api = connect(&exchange, "/ws-api/v3");
    send(&mut api, request(alice, "sub", "userDataStream.subscribe.signature", json!({})));
    let subscribed = next(&mut api);
    assert_eq!(
        (subscribed["id"].as_str(), subscribed["status"].as_u64()),
        (Some("sub"), Some(200)),
        "{subscribed}"
    );
    let subscription = subscribed["result"]["subscriptionId"].as_u64().unwrap();
    assert_eq!(subscribed["rateLimits"][0]["rateLimitType"], "REQUEST_WEIGHT");

    let ask = signed(
        &exchange,
        bob,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.5&price=50000",
    );
    assert_eq!(ask.0, 200);
    send(
        &mut api,
        request(
            alice,
            "buy",
            "order.place",
            json!({
                "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                "quantity": "0.2", "price": "50000", "newClientOrderId": "ws-buy-1",
            }),
        ),
    );
    let mut events = Vec::new();
    let placed = until(&mut api, &mut events, |m| m["id"] == "buy");
    assert_eq!(placed["status"], 200, "{placed}");
    assert_eq!(
        (placed["result"]["status"].as_str(), placed["result"]["executedQty"].as_str()),
        (Some("FILLED"), Some("0.20000000"))
    );
    assert_eq!(placed["result"]["fills"][0]["commissionAsset"], "BTC");
    let order_id = placed["result"]["orderId"].as_u64().unwrap();

    // The user data stream: NEW, then TRADE with FILLED, and the balances.
    let report = |m: &Value, x: &str| {
        m["subscriptionId"] == subscription && m["event"]["e"] == "executionReport" && m["event"]["x"] == x
    };
    let new = until(&mut api, &mut events, |m| report(m, "NEW"));
    assert_eq!((new["event"]["i"].as_u64(), new["event"]["c"].as_str()), (Some(order_id), Some("ws-buy-1")));
    let fill = until(&mut api, &mut events, |m| report(m, "TRADE"));
    assert_eq!(
        (fill["event"]["X"].as_str(), fill["event"]["l"].as_str(), fill["event"]["z"].as_str()),
        (Some("FILLED"), Some("0.20000000"), Some("0.20000000"))
    );
    assert_eq!((fill["event"]["m"].as_bool(), fill["event"]["N"].as_str()), (Some(false), Some("BTC")));
    let position = |m: &Value| m["event"]["e"] == "outboundAccountPosition";
    let balances = until(&mut api, &mut events, position);
    assert!(balances["event"]["B"].as_array().unwrap().iter().any(|b| b["a"] == "BTC"), "{balances}");

    // Queries and cancels over the same socket.
    send(
        &mut api,
        request(
            alice,
            "status",
            "order.status",
            json!({ "symbol": "BTCUSDT", "origClientOrderId": "ws-buy-1" }),
        ),
    );
    let status = until(&mut api, &mut events, |m| m["id"] == "status");
    assert_eq!(
        (status["result"]["orderId"].as_u64(), status["result"]["status"].as_str()),
        (Some(order_id), Some("FILLED"))
    );
    send(
        &mut api,
        request(
            alice,
            "rest",
            "order.place",
            json!({
                "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1", "price": "40000",
            }),
        ),
    );
    let resting = until(&mut api, &mut events, |m| m["id"] == "rest")["result"]["orderId"].as_u64().unwrap();
    send(&mut api, request(alice, "open", "openOrders.status", json!({ "symbol": "BTCUSDT" })));
    let open = until(&mut api, &mut events, |m| m["id"] == "open");
    assert_eq!(open["result"].as_array().unwrap().len(), 1, "{open}");
    send(
        &mut api,
        request(alice, "cancel", "order.cancel", json!({ "symbol": "BTCUSDT", "orderId": resting })),
    );
    let cancelled = until(&mut api, &mut events, |m| m["id"] == "cancel");
    assert_eq!(cancelled["result"]["status"], "CANCELED", "{cancelled}");
    until(&mut api, &mut events, |m| report(m, "CANCELED"));
    // Cancel-replace and cancel-all over the socket.
    send(
        &mut api,
        request(
            alice,
            "two",
            "order.place",
            json!({
                "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1", "price": "41000",
                "newClientOrderId": "ws-two",
            }),
        ),
    );
    assert_eq!(until(&mut api, &mut events, |m| m["id"] == "two")["status"], 200);
    send(
        &mut api,
        request(
            alice,
            "replace",
            "order.cancelReplace",
            json!({
                "symbol": "BTCUSDT", "cancelReplaceMode": "STOP_ON_FAILURE", "cancelOrigClientOrderId": "ws-two",
                "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1", "price": "41500",
            }),
        ),
    );
    let replaced = until(&mut api, &mut events, |m| m["id"] == "replace");
    assert_eq!(
        (replaced["result"]["cancelResult"].as_str(), replaced["result"]["newOrderResult"].as_str()),
        (Some("SUCCESS"), Some("SUCCESS")),
        "{replaced}"
    );
    assert_eq!(replaced["result"]["cancelResponse"]["status"], "CANCELED");
    send(
        &mut api,
        request(
            alice,
            "replace-again",
            "order.cancelReplace",
            json!({
                "symbol": "BTCUSDT", "cancelReplaceMode": "STOP_ON_FAILURE", "cancelOrigClientOrderId": "ws-two",
                "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1", "price": "41600",
            }),
        ),
    );
    let failed = until(&mut api, &mut events, |m| m["id"] == "replace-again");
    assert_eq!(
        (failed["status"].as_u64(), failed["error"]["code"].as_i64()),
        (Some(400), Some(-2022)),
        "{failed}"
    );
    assert_eq!(failed["error"]["data"]["cancelResponse"]["code"], -2011);
    assert_eq!(failed["error"]["data"]["newOrderResult"], "NOT_ATTEMPTED");
    send(&mut api, request(alice, "all", "openOrders.cancelAll", json!({ "symbol": "BTCUSDT" })));
    let all = until(&mut api, &mut events, |m| m["id"] == "all");
    assert_eq!(all["result"].as_array().map(Vec::len), Some(1), "{all}");
    send(&mut api, request(alice, "none-left", "openOrders.cancelAll", json!({ "symbol": "BTCUSDT" })));
    let none_left = until(&mut api, &mut events, |m| m["id"] == "none-left");
    assert_eq!(none_left["error"]["code"], -2011, "{none_left}");

    send(&mut api, request(alice, "trades", "myTrades", json!({ "symbol": "BTCUSDT" })));
    let trades = until(&mut api, &mut events, |m| m["id"] == "trades");
    assert_eq!(trades["result"].as_array().unwrap().len(), 1, "{trades}");
    assert_eq!(
        (trades["result"][0]["isBuyer"].as_bool(), trades["result"][0]["isMaker"].as_bool()),
        (Some(true), Some(false))
    );
    send(&mut api, request(alice, "account", "account.status", json!({})));
    let account = until(&mut api, &mut events, |m| m["id"] == "account");
    assert_eq!(account["result"]["accountType"], "SPOT");

    // Refusals in the WebSocket API's envelope.
    let mut forged = request(alice, "forged", "account.status", json!({}));
    forged["params"]["signature"] = json!("00".repeat(32));
    send(&mut api, forged);
    let forged = until(&mut api, &mut events, |m| m["id"] == "forged");
    assert_eq!(
        (forged["status"].as_u64(), forged["error"]["code"].as_i64()),
        (Some(400), Some(-1022)),
        "{forged}"
    );
    send(
        &mut api,
        request(
            alice,
            "poor",
            "order.place",
            json!({
                "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "1000", "price": "50000",
            }),
        ),
    );
    let poor = until(&mut api, &mut events, |m| m["id"] == "poor");
    assert_eq!((poor["status"].as_u64(), poor["error"]["code"].as_i64()), (Some(400), Some(-2010)), "{poor}");
    send(&mut api, json!({ "id": "x", "method": "order.teleport", "params": {} }));
    let unknown = until(&mut api, &mut events, |m| m["id"] == "x");
    assert_eq!(unknown["status"], 400);
    api.send(Message::text("{not json")).unwrap();
    let garbage = until(&mut api, &mut events, |m| m["id"].is_null() && m["status"] == 400);
    assert!(garbage["error"]["msg"].as_str().unwrap().starts_with("Malformed request"));

    // Alice's subscription carries only her own orders, never bob's.
    let bobs_order = ask.2["orderId"].as_u64().unwrap();
    assert!(
        events.iter().all(|m| m["event"]["e"] != "executionReport" || m["event"]["i"] != bobs_order),
        "alice's stream never carries bob's order"
    );
}

/// The signing of the WebSocket API: `params` with `apiKey`, `timestamp`
/// and `signature` added.
fn ws_request(key: &Key, id: &str, method: &str, mut params: Value) -> Value {
    params["apiKey"] = json!(key.api_key);
    params["timestamp"] = json!(fresh_timestamp() as u64);
    let payload = gateway::binance::ws_api::signature_payload(params.as_object().unwrap());
    params["signature"] = json!(gateway::auth::sign(&key.secret, &payload, b""));
    json!({ "id": id, "method": method, "params": params })
}

/// A self-trade (self-trade prevention NONE) has a buyer and a seller, both
/// the same user: `myTrades` lists both rows, each with its own order,
/// side, maker flag and commission, as Binance does, so balances plus
/// commissions add up to deposits; the user stream reports both orders.
#[test]
fn a_self_trade_is_both_rows_in_my_trades_and_both_orders_in_the_user_stream() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let mut api = connect(&exchange, "/ws-api/v3");
    send(&mut api, ws_request(alice, "sub", "userDataStream.subscribe.signature", json!({})));
    let mut events = Vec::new();
    assert_eq!(until(&mut api, &mut events, |m| m["id"] == "sub")["status"], 200);

    let mut trade_ids = Vec::new();
    let mut orders = Vec::new();
    for price in ["50000", "50010"] {
        let sell = signed(
            &exchange,
            alice,
            "POST",
            "/api/v3/order",
            &format!("symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price={price}"),
        );
        assert_eq!(sell.2["status"], "NEW", "{sell:?}");
        let buy = signed(
            &exchange,
            alice,
            "POST",
            "/api/v3/order",
            &format!(
                "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price={price}\
                 &selfTradePreventionMode=NONE"
            ),
        );
        assert_eq!(buy.2["status"], "FILLED", "{buy:?}");
        trade_ids.push(buy.2["fills"][0]["tradeId"].as_u64().unwrap());
        orders.push((sell.2["orderId"].as_u64().unwrap(), buy.2["orderId"].as_u64().unwrap()));
    }

    let mine = signed(&exchange, alice, "GET", "/api/v3/myTrades", "symbol=BTCUSDT");
    let rows = mine.2.as_array().unwrap_or_else(|| panic!("{mine:?}"));
    assert_eq!(rows.len(), 4, "two rows per self-trade: {rows:?}");
    for (trade, (sell, buy)) in trade_ids.iter().zip(&orders) {
        let row = |order: u64| {
            rows.iter()
                .find(|r| r["id"] == *trade && r["orderId"] == order)
                .unwrap_or_else(|| panic!("no row of order {order} in trade {trade}: {rows:?}"))
        };
        let (seller, buyer) = (row(*sell), row(*buy));
        assert_eq!(
            (seller["isBuyer"].as_bool(), seller["isMaker"].as_bool(), seller["commissionAsset"].as_str()),
            (Some(false), Some(true), Some("USDT")),
            "{seller}"
        );
        assert_eq!(
            (buyer["isBuyer"].as_bool(), buyer["isMaker"].as_bool(), buyer["commissionAsset"].as_str()),
            (Some(true), Some(false), Some("BTC")),
            "{buyer}"
        );
    }
    // The outside check that found it: deposits = balances + commissions.
    let decimal = |v: &Value| v.as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap();
    let account = signed(&exchange, alice, "GET", "/api/v3/account", "omitZeroBalances=true");
    for (asset, deposited) in [("BTC", "10"), ("USDT", "1000000")] {
        let balance = account.2["balances"].as_array().unwrap().iter().find(|b| b["asset"] == asset).unwrap();
        let commissions: rust_decimal::Decimal =
            rows.iter().filter(|r| r["commissionAsset"] == asset).map(|r| decimal(&r["commission"])).sum();
        assert_eq!(
            decimal(&balance["free"]) + decimal(&balance["locked"]) + commissions,
            deposited.parse::<rust_decimal::Decimal>().unwrap(),
            "{asset}: {balance} and commissions {commissions}"
        );
    }
    // Pages never end between the two rows of a trade: three rows asked
    // from the first trade on are its two; the next page has the others.
    let first = signed(
        &exchange,
        alice,
        "GET",
        "/api/v3/myTrades",
        &format!("symbol=BTCUSDT&fromId={}&limit=3", trade_ids[0]),
    );
    let ids: Vec<u64> = first.2.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![trade_ids[0]; 2], "{first:?}");
    // Filtered by order: that order's row only.
    let one = signed(
        &exchange,
        alice,
        "GET",
        "/api/v3/myTrades",
        &format!("symbol=BTCUSDT&orderId={}", orders[0].0),
    );
    assert_eq!(one.2.as_array().map(Vec::len), Some(1), "{one:?}");
    assert_eq!(one.2[0]["isBuyer"], false);

    // The user data stream: a TRADE report for each of the two orders.
    for (sell, buy) in &orders {
        for order in [*sell, *buy] {
            let report = until(&mut api, &mut events, |m| {
                m["event"]["e"] == "executionReport" && m["event"]["x"] == "TRADE" && m["event"]["i"] == order
            });
            assert_eq!(report["event"]["X"], "FILLED", "{report}");
            assert_eq!(report["event"]["m"].as_bool(), Some(order == *sell), "{report}");
        }
    }
}

/// `-1104` names the parameters the endpoint does not read, on REST and
/// on the WebSocket API, after Binance's own sentence.
#[test]
fn an_unread_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let refused = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.1&timeInforce=GTC",
    );
    assert_eq!(code(&refused), (400, -1104), "{refused:?}");
    assert_eq!(
        refused.2["msg"],
        "Not all sent parameters were read; read '6' parameter(s) but was sent '7'. Not read: 'timeInforce'.",
        "the signature and timestamp are read too"
    );
    let public = exchange.raw("GET", "/api/v3/depth?symbol=BTCUSDT&limitt=5&foo=1", &[], b"");
    assert_eq!(code(&public), (400, -1104), "{public:?}");
    assert!(public.2["msg"].as_str().unwrap().ends_with("Not read: 'limitt', 'foo'."), "{public:?}");

    let mut api = connect(&exchange, "/ws-api/v3");
    send(
        &mut api,
        ws_request(alice, "open", "openOrders.status", json!({ "symbol": "BTCUSDT", "side": "BUY" })),
    );
    let answer = next(&mut api);
    assert_eq!(answer["error"]["code"], -1104, "{answer}");
    assert!(answer["error"]["msg"].as_str().unwrap().ends_with("Not read: 'side'."), "{answer}");
}

/// ccxt.pro sends `returnRateLimits` with every WebSocket API request:
/// every method takes it (signed with the rest), and the answer carries
/// `rateLimits` unless it is false (Binance's default is true).
#[test]
fn every_websocket_api_method_takes_return_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let mut api = connect(&exchange, "/ws-api/v3");
    let order = json!({
        "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
        "quantity": "0.1", "price": "40000", "newClientOrderId": "rl-1",
    });
    let mut quiet = order.clone();
    quiet["returnRateLimits"] = json!(false);
    send(&mut api, ws_request(alice, "place", "order.place", quiet));
    let placed = next(&mut api);
    assert_eq!(placed["status"], 200, "{placed}");
    assert!(placed.get("rateLimits").is_none(), "false leaves them out: {placed}");

    let mut loud = json!({ "symbol": "BTCUSDT", "origClientOrderId": "rl-1" });
    loud["returnRateLimits"] = json!(true);
    send(&mut api, ws_request(alice, "status", "order.status", loud));
    let status = next(&mut api);
    assert_eq!(status["result"]["clientOrderId"], "rl-1", "{status}");
    let limits = status["rateLimits"].as_array().unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        (&limits[0]["rateLimitType"], &limits[0]["interval"], &limits[0]["intervalNum"]),
        (&json!("REQUEST_WEIGHT"), &json!("MINUTE"), &json!(1)),
        "{status}"
    );
    assert!(limits[0]["limit"].as_u64().unwrap() > 0 && limits[0]["count"].as_u64().unwrap() > 0);

    // Unsigned methods, its text form, errors, and a value that is no flag.
    send(&mut api, json!({ "id": "t", "method": "time", "params": { "returnRateLimits": "false" } }));
    let time = next(&mut api);
    assert!(time["result"]["serverTime"].as_u64().is_some() && time.get("rateLimits").is_none(), "{time}");
    send(&mut api, json!({ "id": "d", "method": "depth", "params": { "symbol": "BTCUSDT" } }));
    assert!(next(&mut api)["rateLimits"].is_array(), "the default is true");
    send(
        &mut api,
        json!({ "id": "e", "method": "depth", "params": { "symbol": "NOPE", "returnRateLimits": false } }),
    );
    let error = next(&mut api);
    assert_eq!((error["error"]["code"].as_i64(), error.get("rateLimits")), (Some(-1121), None), "{error}");
    send(&mut api, json!({ "id": "b", "method": "ping", "params": { "returnRateLimits": 3 } }));
    let bad = next(&mut api);
    assert_eq!(bad["error"]["code"], -1130, "{bad}");
    assert!(bad["error"]["msg"].as_str().unwrap().contains("returnRateLimits"), "{bad}");
}

/// A cancel-all answers every order it cancelled, as the cancel left it,
/// though the views keep fewer closed orders per user.
#[test]
fn cancel_all_answers_every_order_it_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "2")]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let mut api = connect(&exchange, "/ws-api/v3");
    send(&mut api, ws_request(alice, "sub", "userDataStream.subscribe.signature", json!({})));
    let mut events = Vec::new();
    assert_eq!(until(&mut api, &mut events, |m| m["id"] == "sub")["status"], 200);
    let mut placed = Vec::new();
    for i in 0..5 {
        let order = signed(
            &exchange,
            alice,
            "POST",
            "/api/v3/order",
            &format!("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price={}", 40_000 + i),
        );
        placed.push(order.2["orderId"].as_u64().unwrap());
    }
    let all = signed(&exchange, alice, "DELETE", "/api/v3/openOrders", "symbol=BTCUSDT");
    let mut cancelled: Vec<u64> =
        all.2.as_array().unwrap().iter().map(|o| o["orderId"].as_u64().unwrap()).collect();
    cancelled.sort_unstable();
    assert_eq!(cancelled, placed, "{all:?}");
    assert!(all
        .2
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["status"] == "CANCELED" && o["price"] != "0.00000000"));
    // And the user stream reports each cancel (its reports are made from
    // the events, not from the views, which no longer have three of them).
    for (i, order) in placed.iter().enumerate() {
        let report = until(&mut api, &mut events, |m| {
            m["event"]["e"] == "executionReport" && m["event"]["x"] == "CANCELED" && m["event"]["i"] == *order
        });
        assert_eq!(
            (report["event"]["q"].as_str(), report["event"]["p"].as_str(), report["event"]["X"].as_str()),
            (Some("0.10000000"), Some(format!("{}.00000000", 40_000 + i).as_str()), Some("CANCELED")),
            "{report}"
        );
    }
}

/// A signed Binance `POST` from any thread: the parameters in the form body.
fn post_from(address: std::net::SocketAddr, key: &Key, path: &str, params: &str) -> (u16, Value) {
    let params = format!("{params}&timestamp={}", fresh_timestamp());
    let signature = gateway::auth::sign(&key.secret, &params, b"");
    let body = format!("{params}&signature={signature}");
    let headers =
        [("X-MBX-APIKEY", key.api_key.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, value) = server::try_raw(address, "POST", path, &headers, body.as_bytes()).unwrap();
    (status, value)
}

/// Many clients place crossing orders at once, over both APIs. Each answer
/// describes what its own command did: a resting order's answer never
/// lists the trade a later order made with it (that order's answer does),
/// so every trade is in exactly one answer, the taker's, and each answer's
/// executed quantity is the sum of its own fills.
#[test]
fn each_order_answer_describes_only_its_own_command() {
    use rust_decimal::Decimal;
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_RECENT_TRADES_MAX", "100000")]);
    let keys = exchange.demo(8);
    let address = exchange.address;
    const ORDERS_PER_CLIENT: usize = 120;
    let answers: Vec<(bool, Value)> = std::thread::scope(|scope| {
        let clients: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(n, key)| {
                scope.spawn(move || {
                    let native = n % 2 == 0;
                    let mut answers = Vec::new();
                    for i in 0..ORDERS_PER_CLIENT {
                        let buy = (i + n) % 2 == 0;
                        // Prices that cross often; some IOC, some market.
                        let price = 50_000 + (i * 7 + n * 3) % 5;
                        let qty = format!("0.0{}", 1 + (i + n) % 3);
                        let kind = i % 10;
                        let (status, answer) = if native {
                            let mut order = json!({
                                "market": "BTC-USDT", "side": if buy { "buy" } else { "sell" },
                                "type": "limit", "price": price.to_string(), "quantity": qty,
                                "time_in_force": if kind == 0 { "IOC" } else { "GTC" },
                            });
                            if kind == 1 {
                                order = json!({ "market": "BTC-USDT", "side": if buy { "buy" } else { "sell" },
                                                "type": "market", "quantity": qty });
                            }
                            let client = server::Client::new(address);
                            client.place(key, order)
                        } else {
                            let side = if buy { "BUY" } else { "SELL" };
                            let params = match kind {
                                0 => format!(
                                    "symbol=BTCUSDT&side={side}&type=LIMIT&timeInForce=IOC&quantity={qty}&price={price}"
                                ),
                                1 => format!("symbol=BTCUSDT&side={side}&type=MARKET&quantity={qty}"),
                                _ => format!(
                                    "symbol=BTCUSDT&side={side}&type=LIMIT&timeInForce=GTC&quantity={qty}&price={price}\
                                     &newOrderRespType=FULL"
                                ),
                            };
                            post_from(address, key, "/api/v3/order", &params)
                        };
                        assert_eq!(status, 200, "{answer}");
                        answers.push((native, answer));
                    }
                    answers
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(answers.len(), keys.len() * ORDERS_PER_CLIENT);

    let decimal = |v: &Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    let mut answered_trades = std::collections::BTreeMap::new();
    for (native, answer) in &answers {
        let (fills, executed, qty_field) = if *native {
            (answer["fills"].as_array().unwrap(), decimal(&answer["filled_quantity"]), "quantity")
        } else {
            (answer["fills"].as_array().unwrap(), decimal(&answer["executedQty"]), "qty")
        };
        let filled: Decimal = fills.iter().map(|f| decimal(&f[qty_field])).sum();
        assert_eq!(executed, filled, "executed quantity is the sum of its own fills: {answer}");
        for fill in fills {
            if *native {
                assert_eq!(fill["maker"], false, "a new order takes in its own command: {answer}");
            }
            let trade = if *native { &fill["trade_id"] } else { &fill["tradeId"] };
            let trade = trade.as_u64().unwrap();
            if let Some(other) = answered_trades.insert(trade, answer.clone()) {
                panic!("trade {trade} is in two answers:\n{other}\n{answer}");
            }
        }
        if !*native {
            let status = answer["status"].as_str().unwrap();
            if filled.is_zero() {
                assert!(
                    ["NEW", "EXPIRED", "EXPIRED_IN_MATCH"].contains(&status),
                    "nothing filled by its command: {answer}"
                );
            }
            if status == "FILLED" {
                assert_eq!(executed, decimal(&answer["origQty"]), "{answer}");
            }
            let quote: Decimal = fills.iter().map(|f| decimal(&f["price"]) * decimal(&f["qty"])).sum();
            assert_eq!(decimal(&answer["cummulativeQuoteQty"]), quote, "{answer}");
        }
    }
    // And every trade of the market is in one answer: its taker's.
    let mut all = Vec::new();
    loop {
        let page = exchange.get(&format!("/trade/history?market=BTC-USDT&limit=1000&offset={}", all.len())).1;
        let page: Vec<u64> =
            page["trades"].as_array().unwrap().iter().map(|t| t["trade_id"].as_u64().unwrap()).collect();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    all.sort_unstable();
    assert!(!all.is_empty());
    assert_eq!(all, answered_trades.keys().copied().collect::<Vec<u64>>());
}

/// With no closed orders kept in memory (`closed_orders_kept_per_user` 0),
/// an order that closes within its own command and a cancel are still
/// answered, as their command left them.
#[test]
fn answers_do_not_need_closed_orders_kept() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "0")]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let ask = signed(
        &exchange,
        bob,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=50000",
    );
    assert_eq!(ask.2["status"], "NEW", "{ask:?}");
    let ioc = signed(
        &exchange,
        alice,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=IOC&quantity=0.05&price=50000",
    );
    assert_eq!(
        (ioc.0, ioc.2["status"].as_str(), ioc.2["executedQty"].as_str()),
        (200, Some("FILLED"), Some("0.05000000")),
        "{ioc:?}"
    );
    let (status, native) = exchange
        .place(alice, json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.02" }));
    assert_eq!((status, native["status"].as_str()), (200, Some("filled")), "{native}");
    let id = ask.2["orderId"].as_u64().unwrap();
    let cancel = signed(&exchange, bob, "DELETE", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={id}"));
    assert_eq!(
        (cancel.0, cancel.2["status"].as_str(), cancel.2["executedQty"].as_str()),
        (200, Some("CANCELED"), Some("0.07000000")),
        "{cancel:?}"
    );
}

#[test]
fn listen_keys_over_the_websocket_api_and_the_combined_stream() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (owner, other) = (&keys[0], &keys[1]);

    // An unknown key shaped like one is refused at the upgrade, not
    // served as a silent stream.
    let made_up = "A".repeat(60);
    let refused = tungstenite::connect(format!("ws://{}/ws/{made_up}", exchange.ws_address));
    assert!(
        matches!(refused, Err(tungstenite::Error::Http(ref response)) if response.status() == 400),
        "{refused:?}"
    );
    // Without the API key, and for another user's key, the REST endpoints refuse.
    let (status, _, body) = exchange.raw("POST", "/api/v3/userDataStream", &[], b"");
    assert_eq!((status, body["code"].as_i64()), (401, Some(-2014)), "{body}");

    // userDataStream.start / ping / stop over the WebSocket API.
    let mut api = connect(&exchange, "/ws-api/v3");
    send(
        &mut api,
        json!({ "id": "s", "method": "userDataStream.start", "params": { "apiKey": owner.api_key } }),
    );
    let started = next(&mut api);
    let listen_key =
        started["result"]["listenKey"].as_str().unwrap_or_else(|| panic!("{started}")).to_string();
    send(
        &mut api,
        json!({ "id": "p", "method": "userDataStream.ping", "params": { "apiKey": other.api_key, "listenKey": listen_key } }),
    );
    let refused = next(&mut api);
    assert_eq!(refused["error"]["code"], -1125, "another user's key: {refused}");
    send(
        &mut api,
        json!({ "id": "p", "method": "userDataStream.ping", "params": { "apiKey": owner.api_key, "listenKey": listen_key } }),
    );
    assert_eq!(next(&mut api)["status"], 200);

    // The combined stream wraps each event with the key as its stream name.
    let mut stream = connect(&exchange, &format!("/stream?streams={listen_key}/btcusdt@trade"));
    let (status, _, placed) = signed(
        &exchange,
        owner,
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=100",
    );
    assert_eq!(status, 200, "{placed}");
    let report = until(&mut stream, &mut Vec::new(), |m| m["data"]["e"] == "executionReport");
    assert_eq!(report["stream"], listen_key.as_str());
    assert_eq!(report["data"]["i"], placed["orderId"]);

    send(
        &mut api,
        json!({ "id": "x", "method": "userDataStream.stop", "params": { "apiKey": owner.api_key, "listenKey": listen_key } }),
    );
    assert_eq!(next(&mut api)["status"], 200);
    loop {
        match stream.read() {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.reason.to_string()).as_deref(), Some("listenKey closed"));
                break;
            }
            Ok(_) => continue,
            Err(error) => panic!("the stream should be closed with a reason: {error}"),
        }
    }
}

#[test]
fn klines_count_what_takers_bought_and_keep_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let order = |key: &Key, side: &str, quantity: &str, price: &str| {
        let params = format!(
            "symbol=BTCUSDT&side={side}&type=LIMIT&timeInForce=GTC&quantity={quantity}&price={price}"
        );
        let (status, _, body) = signed(&exchange, key, "POST", "/api/v3/order", &params);
        assert_eq!(status, 200, "{body}");
    };
    // A taker buys 0.01 at 100, a taker sells 0.02 at 90.
    order(&keys[0], "SELL", "0.01", "100");
    order(&keys[1], "BUY", "0.01", "100");
    order(&keys[0], "BUY", "0.02", "90");
    order(&keys[1], "SELL", "0.02", "90");
    let kline = |exchange: &Exchange| {
        let (status, _, body) = exchange.raw("GET", "/api/v3/klines?symbol=BTCUSDT&interval=1d", &[], b"");
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().last().cloned().unwrap()
    };
    let before = kline(&exchange);
    assert_eq!(before[5], "0.03000000", "{before}");
    assert_eq!(
        (before[9].as_str(), before[10].as_str()),
        (Some("0.01000000"), Some("1.00000000")),
        "{before}"
    );
    // The views' snapshot at shutdown keeps them.
    assert!(exchange.terminate().success());
    let exchange = Exchange::start(dir.path(), &[]);
    assert_eq!(kline(&exchange), before);
}
