//! The WebSocket streams against the real `exchange` binary, with a real
//! WebSocket client.

mod server;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use server::{Exchange, Key};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(exchange: &Exchange) -> Socket {
    let (socket, _) =
        tungstenite::connect(format!("ws://{}/", exchange.ws_address)).expect("websocket connects");
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    socket
}

fn send(socket: &mut Socket, value: Value) {
    socket.send(Message::text(value.to_string())).unwrap();
}

/// The next text message as JSON (pings are answered by the client library).
fn next(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// The answer to request `id`, skipping stream messages (which are kept).
fn answer(socket: &mut Socket, id: u64, streams: &mut Vec<Value>) -> Value {
    loop {
        let message = next(socket);
        if message["id"] == id {
            return message;
        }
        streams.push(message);
    }
}

fn limit(market: &str, side: &str, price: &str, quantity: &str) -> Value {
    json!({ "market": market, "side": side, "type": "limit", "price": price, "quantity": quantity })
}

fn login(socket: &mut Socket, key: &Key, id: u64) -> Value {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let signed = format!("apiKey={}&timestamp={timestamp}", key.api_key);
    let signature = gateway::auth::sign(&key.secret, &signed, b"");
    send(
        socket,
        json!({ "method": "LOGIN", "params": { "apiKey": key.api_key, "timestamp": timestamp, "signature": signature }, "id": id }),
    );
    answer(socket, id, &mut Vec::new())
}

#[test]
fn subscribe_list_unsubscribe_and_request_errors() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    exchange.demo(1);
    let mut socket = connect(&exchange);
    send(
        &mut socket,
        json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@depth", "BTC-USDT@trade", "ETH-USDT@bookTicker"], "id": 1 }),
    );
    assert_eq!(answer(&mut socket, 1, &mut Vec::new()), json!({ "id": 1, "status": 200, "result": null }));
    send(&mut socket, json!({ "method": "LIST_SUBSCRIPTIONS", "id": 2 }));
    let listed = answer(&mut socket, 2, &mut Vec::new());
    assert_eq!(listed["result"], json!(["BTC-USDT@depth", "BTC-USDT@trade", "ETH-USDT@bookTicker"]));
    send(&mut socket, json!({ "method": "UNSUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 3 }));
    answer(&mut socket, 3, &mut Vec::new());
    send(&mut socket, json!({ "method": "LIST_SUBSCRIPTIONS", "id": 4 }));
    assert_eq!(
        answer(&mut socket, 4, &mut Vec::new())["result"],
        json!(["BTC-USDT@depth", "ETH-USDT@bookTicker"])
    );

    send(&mut socket, json!({ "method": "SUBSCRIBE", "params": ["DOGE-USDT@depth"], "id": 5 }));
    let error = answer(&mut socket, 5, &mut Vec::new());
    assert_eq!(
        (error["status"].as_u64(), error["error"]["code"].as_str()),
        (Some(404), Some("unknown_market"))
    );
    send(&mut socket, json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@kline"], "id": 6 }));
    assert_eq!(answer(&mut socket, 6, &mut Vec::new())["status"], 400);
    send(&mut socket, json!({ "method": "FLY", "id": 7 }));
    assert_eq!(answer(&mut socket, 7, &mut Vec::new())["error"]["code"], "unknown_method");
    send(&mut socket, json!({ "method": "order.place", "params": {}, "id": 8 }));
    assert_eq!(answer(&mut socket, 8, &mut Vec::new())["error"]["code"], "login_required");
    socket.send(Message::text("{not json")).unwrap();
    let error = next(&mut socket);
    assert_eq!((error["id"].clone(), error["error"]["code"].as_str()), (Value::Null, Some("invalid_json")));
    let too_many: Vec<String> = (0..60).map(|_| "BTC-USDT@depth20".to_string()).collect();
    send(&mut socket, json!({ "method": "SUBSCRIBE", "params": too_many, "id": 9 }));
    assert_eq!(
        answer(&mut socket, 9, &mut Vec::new())["status"],
        200,
        "the same stream twice is one subscription"
    );

    // An oversized message closes the connection with 1009; the server stays up.
    socket.send(Message::text("x".repeat(100_000))).unwrap();
    let closed = loop {
        match socket.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    assert!(closed.is_none() || closed == Some(1009), "{closed:?}");
    let mut again = connect(&exchange);
    send(&mut again, json!({ "method": "LIST_SUBSCRIPTIONS", "id": 1 }));
    assert_eq!(answer(&mut again, 1, &mut Vec::new())["result"], json!([]));
}

#[test]
fn a_local_book_from_depth_diffs_matches_the_rest_book_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_DURABILITY", "none"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "100000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "100000"),
        ],
    );
    let keys = exchange.demo(2);
    let mut socket = connect(&exchange);
    send(
        &mut socket,
        json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@depth", "BTC-USDT@trade"], "id": 1 }),
    );
    let mut buffered = Vec::new();
    answer(&mut socket, 1, &mut buffered);

    // Orders flow from another thread while the client syncs.
    let address = exchange.address;
    let placed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flow = {
        let exchange_keys = keys.clone();
        let placed = std::sync::Arc::clone(&placed);
        std::thread::spawn(move || {
            let client = server::Client::new(address);
            for i in 0..2_000u64 {
                let key = &exchange_keys[(i % 2) as usize];
                let side = if i % 3 == 0 { "sell" } else { "buy" };
                let price = format!("{}", 50_000 + (i * 7919) % 40);
                let (status, body) = client.place(key, limit("BTC-USDT", side, &price, "0.01"));
                assert_eq!(status, 200, "{body}");
                placed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // Take the snapshot mid-flow.
    while placed.load(std::sync::atomic::Ordering::SeqCst) < 1_000 && !flow.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, snapshot) = exchange.get("/depth?market=BTC-USDT&limit=1000");
    let snapshot_seq = snapshot["seq"].as_u64().unwrap();
    let mut book: BTreeMap<(bool, String), String> = BTreeMap::new();
    for (bids, side) in [(true, "bids"), (false, "asks")] {
        for level in snapshot[side].as_array().unwrap() {
            book.insert(
                (bids, level[0].as_str().unwrap().to_string()),
                level[1].as_str().unwrap().to_string(),
            );
        }
    }
    flow.join().unwrap();
    let final_seq = exchange.get("/health").1["seq"].as_u64().unwrap();

    // Apply buffered and new diffs after the snapshot, checking the chain.
    let mut last_u: Option<u64> = None;
    let mut trades = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending = buffered.into_iter();
    loop {
        let message = match pending.next() {
            Some(message) => message,
            None => next(&mut socket),
        };
        if message["stream"] == "BTC-USDT@trade" {
            trades.push(message["data"]["t"].as_u64().unwrap());
            continue;
        }
        if message["stream"] != "BTC-USDT@depth" {
            continue;
        }
        let data = &message["data"];
        let (first, last, previous) =
            (data["U"].as_u64().unwrap(), data["u"].as_u64().unwrap(), data["pu"].as_u64().unwrap());
        assert!(first <= last);
        if last <= snapshot_seq {
            // Already in the snapshot.
            if last >= final_seq {
                break;
            }
            continue;
        }
        match last_u {
            None => assert!(
                first > snapshot_seq && previous <= snapshot_seq,
                "first diff after the snapshot: {data}"
            ),
            Some(u) => assert_eq!(previous, u, "a gap in the depth stream"),
        }
        last_u = Some(last);
        for (bids, side) in [(true, "b"), (false, "a")] {
            for level in data[side].as_array().unwrap() {
                let key = (bids, level[0].as_str().unwrap().to_string());
                let qty = level[1].as_str().unwrap().to_string();
                if qty == "0" {
                    book.remove(&key);
                } else {
                    book.insert(key, qty);
                }
            }
        }
        if last >= final_seq || Instant::now() > deadline {
            break;
        }
    }
    let (_, depth) = exchange.get("/depth?market=BTC-USDT&limit=1000");
    let mut expected: BTreeMap<(bool, String), String> = BTreeMap::new();
    for (bids, side) in [(true, "bids"), (false, "asks")] {
        for level in depth[side].as_array().unwrap() {
            expected.insert(
                (bids, level[0].as_str().unwrap().to_string()),
                level[1].as_str().unwrap().to_string(),
            );
        }
    }
    assert!(last_u.is_some(), "diffs after the snapshot were applied");
    assert_eq!(book, expected, "the book rebuilt from the stream equals GET /depth");
    assert!(!expected.is_empty());

    // Every trade REST reports after the subscription appears once, in order
    // (a batch's trades may follow its depth diff: read until they are in).
    let (_, history) = exchange.get("/trade/history?market=BTC-USDT&limit=1000");
    let mut rest_ids: Vec<u64> =
        history["trades"].as_array().unwrap().iter().map(|t| t["trade_id"].as_u64().unwrap()).collect();
    rest_ids.reverse();
    while trades.len() < rest_ids.len() && Instant::now() < deadline {
        let message = next(&mut socket);
        if message["stream"] == "BTC-USDT@trade" {
            trades.push(message["data"]["t"].as_u64().unwrap());
        }
    }
    assert!(!rest_ids.is_empty());
    assert_eq!(trades, rest_ids, "trade stream: complete, once each, in order");
}

#[test]
fn private_streams_are_isolated_and_orders_work_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let mut alice_socket = connect(&exchange);
    let mut bob_socket = connect(&exchange);
    assert_eq!(login(&mut alice_socket, alice, 1)["result"]["user_id"], alice.user_id);
    assert_eq!(login(&mut bob_socket, bob, 1)["result"]["user_id"], bob.user_id);
    let forged = Key { secret: "f".repeat(64), ..bob.clone() };
    let mut forger = connect(&exchange);
    assert_eq!(login(&mut forger, &forged, 1)["error"]["code"], "invalid_signature");

    // Alice places and cancels over the socket: the answers are REST's.
    let mut order = limit("BTC-USDT", "buy", "40000", "0.01");
    order["client_order_id"] = json!("ws-1");
    send(&mut alice_socket, json!({ "method": "order.place", "params": order, "id": 2 }));
    let mut alice_streams = Vec::new();
    let placed = answer(&mut alice_socket, 2, &mut alice_streams);
    assert_eq!(
        (placed["status"].as_u64(), placed["result"]["status"].as_str()),
        (Some(200), Some("new")),
        "{placed}"
    );
    assert_eq!(placed["result"]["client_order_id"], "ws-1");
    send(
        &mut alice_socket,
        json!({ "method": "order.cancel", "params": { "client_order_id": "ws-1" }, "id": 3 }),
    );
    let cancelled = answer(&mut alice_socket, 3, &mut alice_streams);
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    send(
        &mut alice_socket,
        json!({ "method": "order.cancel", "params": { "client_order_id": "ws-1" }, "id": 4 }),
    );
    assert_eq!(answer(&mut alice_socket, 4, &mut alice_streams)["status"], 404);

    // A trade between them: each sees its own fill, never the other's order.
    let (_, ask) = exchange.place(bob, limit("BTC-USDT", "sell", "50000", "0.01"));
    let bob_order = ask["order_id"].as_u64().unwrap();
    exchange.place(alice, limit("BTC-USDT", "buy", "50000", "0.01"));
    send(&mut alice_socket, json!({ "method": "LIST_SUBSCRIPTIONS", "id": 5 }));
    answer(&mut alice_socket, 5, &mut alice_streams);
    let mut bob_streams = Vec::new();
    send(&mut bob_socket, json!({ "method": "LIST_SUBSCRIPTIONS", "id": 5 }));
    answer(&mut bob_socket, 5, &mut bob_streams);

    let kinds = |streams: &[Value]| {
        streams.iter().map(|m| m["data"]["e"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>()
    };
    assert!(kinds(&alice_streams).contains(&"fill".to_string()), "{alice_streams:?}");
    assert!(kinds(&alice_streams).contains(&"balance".to_string()));
    assert!(alice_streams.iter().all(|m| m["stream"] == "user"));
    assert!(alice_streams.iter().all(|m| m["data"]["order_id"] != bob_order), "alice never sees bob's order");
    assert!(
        bob_streams.iter().any(|m| m["data"]["e"] == "fill" && m["data"]["maker"] == true),
        "{bob_streams:?}"
    );
    assert!(
        bob_streams.iter().all(|m| m["data"]["client_order_id"] != "ws-1"),
        "bob never sees alice's orders"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_while_a_fast_one_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_DURABILITY", "none"),
            ("EXCHANGE_WS_QUEUE_MAX", "16"),
            // Long enough for the slow client to come back and read: the
            // close it then finds is the slow consumer's, not a reset.
            ("EXCHANGE_WS_SEND_TIMEOUT_MS", "120000"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "100000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "100000"),
        ],
    );
    let keys = exchange.demo(2);
    let streams = json!(["BTC-USDT@depth", "BTC-USDT@trade", "BTC-USDT@bookTicker"]);
    // A small receive buffer, as a client on a slow link would have.
    let stream = TcpStream::connect(exchange.ws_address).unwrap();
    {
        use std::os::fd::AsRawFd;
        let size: i32 = 16 * 1024;
        // Safety: a valid socket and a pointer to a live i32.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut slow, _) =
        tungstenite::client(format!("ws://{}/", exchange.ws_address), MaybeTlsStream::Plain(stream)).unwrap();
    send(&mut slow, json!({ "method": "SUBSCRIBE", "params": streams, "id": 1 }));
    answer(&mut slow, 1, &mut Vec::new());
    let mut fast = connect(&exchange);
    send(&mut fast, json!({ "method": "SUBSCRIBE", "params": streams, "id": 1 }));
    answer(&mut fast, 1, &mut Vec::new());

    // The fast client reads on its own thread, counting trades.
    const TRADES: u64 = 4_000;
    let reader = std::thread::spawn(move || {
        let mut trades = 0;
        while trades < TRADES {
            let message = next(&mut fast);
            if message["stream"] == "BTC-USDT@trade" {
                trades += 1;
            }
        }
        trades
    });
    // The slow one never reads while the orders flow: its kernel buffers
    // fill, then its queue of 16, and the server cuts it off.
    let client = server::Client::new(exchange.address);
    for n in 0..TRADES {
        let order = |side: &str| json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": "50000", "quantity": "0.0001", "client_order_id": format!("{side}{n}") });
        assert_eq!(client.place(&keys[0], order("sell")).0, 200);
        assert_eq!(client.place(&keys[1], order("buy")).0, 200);
    }
    assert_eq!(reader.join().unwrap(), TRADES, "the fast client received every trade");

    // Reading now, the slow client finds what its buffers held, then the
    // close frame the server queued behind them when its queue overflowed.
    let mut closed_code = None;
    let mut trades_seen = 0;
    loop {
        match slow.read() {
            Ok(Message::Text(text)) => {
                if text.contains("@trade") {
                    trades_seen += 1;
                }
            }
            Ok(Message::Close(frame)) => {
                closed_code = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(trades_seen < TRADES, "the slow client was cut off before the end ({trades_seen} trades)");
    assert_eq!(closed_code, Some((1008, "slow consumer".to_string())), "the slow client is told why");
    // The exchange is unaffected.
    assert_eq!(exchange.get("/health").1["status"], "ok");
}

/// A WebSocket client on `path` that never reads after its handshake. Its
/// receive buffer is made small before it connects, so that the window it
/// offers is small from its first segment, as on a stalled link.
fn never_reading(exchange: &Exchange, path: &str) -> Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    socket.connect(&exchange.ws_address.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (socket, _) =
        tungstenite::client(format!("ws://{}{path}", exchange.ws_address), MaybeTlsStream::Plain(stream))
            .expect("a WebSocket client connects");
    socket
}

/// Whether the server has closed or reset `socket`'s connection, seen
/// without reading from it: a hang-up or an error on the socket.
fn hung_up(socket: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    let MaybeTlsStream::Plain(stream) = socket.get_ref() else { return false };
    let mut poll = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // Safety: one valid pollfd, a zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// One framing of the stream server, as the slow-client test drives it.
struct Streams {
    /// The path the never-reading clients connect to, and what they send
    /// once connected (their subscription, if the path does not say it).
    slow_path: &'static str,
    slow_subscribe: Option<Value>,
    /// The same for the client that reads the trade stream.
    reader_path: &'static str,
    reader_subscribe: Option<Value>,
    /// The trade id a stream message carries, if it is a trade.
    trade_id: fn(&Value) -> Option<u64>,
}

/// Clients that never read are closed by the server within
/// `ws_send_timeout_ms` (plus the close handshake's bound) once their
/// buffers are full, whatever their kernel buffers hold; a reading client
/// on the same stream receives every trade, in order, without a gap.
fn clients_that_never_read_are_closed_in_time(streams: Streams) {
    const SLOW_CLIENTS: usize = 10;
    /// Enough trades that every never-reading client's kernel buffers
    /// (the server's send buffer is 256 KiB) fill several times over.
    const TRADES: u64 = 3_000;
    const SEND_TIMEOUT_MS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_DURABILITY", "none"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
            ("EXCHANGE_WS_SEND_TIMEOUT_MS", &SEND_TIMEOUT_MS.to_string()),
        ],
    );
    let keys = exchange.demo(2);
    let mut slow: Vec<Socket> =
        (0..SLOW_CLIENTS).map(|_| never_reading(&exchange, streams.slow_path)).collect();
    if let Some(subscribe) = &streams.slow_subscribe {
        for socket in &mut slow {
            send(socket, subscribe.clone());
        }
    }
    let (mut reader, _) =
        tungstenite::connect(format!("ws://{}{}", exchange.ws_address, streams.reader_path))
            .expect("websocket connects");
    if let MaybeTlsStream::Plain(stream) = reader.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    if let Some(subscribe) = &streams.reader_subscribe {
        send(&mut reader, subscribe.clone());
        answer(&mut reader, subscribe["id"].as_u64().unwrap(), &mut Vec::new());
    }
    let trade_id = streams.trade_id;
    let reading = std::thread::spawn(move || {
        let mut ids = Vec::new();
        while (ids.len() as u64) < TRADES {
            match reader.read() {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    ids.extend(trade_id(&message));
                }
                Ok(Message::Close(frame)) => panic!("the reading client was closed: {frame:?}"),
                Ok(_) => {}
                Err(error) => panic!("the reading client failed after {} trades: {error}", ids.len()),
            }
        }
        // The connection stays open: /health is to count it.
        (ids, reader)
    });

    // One resting ask, taken a lot at a time: one trade per request.
    let ask =
        json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "50000", "quantity": "1" });
    assert_eq!(exchange.place(&keys[1], ask).0, 200);
    for _ in 0..TRADES {
        let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.0001" });
        let (status, body) = exchange.place(&keys[0], buy);
        assert_eq!(status, 200, "{body}");
    }
    let traded = Instant::now();

    // Every never-reading client is closed within the send timeout, as
    // long again for the close handshake, and a generous slack for a
    // loaded machine.
    let bound = 2 * Duration::from_millis(SEND_TIMEOUT_MS) + Duration::from_secs(15);
    while slow.iter().any(|s| !hung_up(s)) && traded.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = slow.iter().filter(|s| !hung_up(s)).count();
    assert_eq!(
        open, 0,
        "{open} of {SLOW_CLIENTS} never-reading clients still connected {bound:?} after trading"
    );
    println!("{SLOW_CLIENTS} never-reading clients closed within {:?} after trading", traded.elapsed());
    // The server counts them gone: only the reader is left.
    let mut connections = exchange.get("/health").1["ws_connections"].as_u64();
    while connections != Some(1) && traded.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
        connections = exchange.get("/health").1["ws_connections"].as_u64();
    }
    assert_eq!(connections, Some(1), "/health counts the reading client alone");

    let (ids, _reader) = reading.join().unwrap();
    let first = ids[0];
    let expected: Vec<u64> = (first..first + TRADES).collect();
    assert_eq!(ids, expected, "the reading client got every trade, in order, without a gap");
    assert!(exchange.stderr().contains("ws_send_timeout_ms"), "the cut is logged: {}", exchange.stderr());
}

#[test]
fn native_clients_that_never_read_are_closed_in_time_and_a_reader_misses_nothing() {
    clients_that_never_read_are_closed_in_time(Streams {
        slow_path: "/",
        slow_subscribe: Some(
            json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade", "BTC-USDT@depth", "BTC-USDT@bookTicker"], "id": 1 }),
        ),
        reader_path: "/",
        reader_subscribe: Some(json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 1 })),
        trade_id: |message| {
            (message["stream"] == "BTC-USDT@trade").then(|| message["data"]["t"].as_u64()).flatten()
        },
    });
}

#[test]
fn binance_ws_clients_that_never_read_are_closed_in_time_and_a_reader_misses_nothing() {
    clients_that_never_read_are_closed_in_time(Streams {
        slow_path: "/ws/btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker/btcusdt@depth@100ms",
        slow_subscribe: None,
        reader_path: "/ws/btcusdt@trade",
        reader_subscribe: None,
        trade_id: |message| (message["e"] == "trade").then(|| message["t"].as_u64()).flatten(),
    });
}

/// The next depth diff of `stream` on a native (`/`) or Binance (`/ws`) socket.
fn next_depth_diff(socket: &mut Socket, stream: &str) -> Value {
    loop {
        let message = next(socket);
        if message["stream"] == stream {
            return message["data"].clone();
        }
        if message["e"] == "depthUpdate" {
            return message;
        }
    }
}

#[test]
fn depth_diffs_follow_on_across_a_restart() {
    // Each market's last book change is recovered with the views, so the
    // first diff after a restart names the last one before it: a client's
    // `pu` (native) and `U` = previous `u` + 1 (Binance) checks hold, and
    // a gap would show.
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let mut native = connect(&exchange);
    send(&mut native, json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@depth"], "id": 1 }));
    answer(&mut native, 1, &mut Vec::new());
    let (status, _) = exchange.place(&keys[0], limit("BTC-USDT", "buy", "100", "0.1"));
    assert_eq!(status, 200);
    let before = next_depth_diff(&mut native, "BTC-USDT@depth");
    let last_u = before["u"].as_u64().unwrap();

    let exchange = exchange.crash_and_restart();
    let mut native = connect(&exchange);
    send(&mut native, json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@depth"], "id": 1 }));
    answer(&mut native, 1, &mut Vec::new());
    let (mut binance, _) =
        tungstenite::connect(format!("ws://{}/ws/btcusdt@depth@100ms", exchange.ws_address)).unwrap();
    // Trading in another market moves the sequence on, not this book.
    let (status, _) = exchange.place(&keys[0], limit("ETH-USDT", "buy", "100", "0.1"));
    assert_eq!(status, 200);
    let (status, _) = exchange.place(&keys[0], limit("BTC-USDT", "buy", "101", "0.1"));
    assert_eq!(status, 200);
    let after = next_depth_diff(&mut native, "BTC-USDT@depth");
    assert_eq!(after["pu"], last_u, "the first diff after the restart follows the last before: {after}");
    assert!(after["U"].as_u64().unwrap() > last_u + 1, "{after}");
    let after = next_depth_diff(&mut binance, "");
    assert_eq!(after["U"], last_u + 1, "Binance's U is the previous u plus one: {after}");
}

#[test]
fn websocket_handshakes_are_served_on_the_rest_port_too() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let open = |path: &str| {
        let (socket, _) = tungstenite::connect(format!("ws://{}{path}", exchange.address))
            .unwrap_or_else(|e| panic!("a WebSocket on the REST port at {path}: {e}"));
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        socket
    };
    // The native protocol at / and Binance's raw stream at /ws/<stream>.
    let mut native = open("/");
    send(&mut native, json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 1 }));
    answer(&mut native, 1, &mut Vec::new());
    let mut binance = open("/ws/btcusdt@trade");
    // REST on the same port goes on as before.
    let (status, markets) = exchange.get("/markets");
    assert_eq!(status, 200, "{markets}");
    exchange.place(&keys[0], limit("BTC-USDT", "sell", "50000", "0.01"));
    exchange.place(&keys[1], limit("BTC-USDT", "buy", "50000", "0.01"));
    let trade = next(&mut native);
    assert_eq!(trade["stream"], "BTC-USDT@trade", "{trade}");
    let trade = next(&mut binance);
    assert_eq!(
        (trade["e"].as_str(), trade["p"].as_str()),
        (Some("trade"), Some("50000.00000000")),
        "{trade}"
    );
    // A request that is not a handshake is still a REST request.
    let (status, _, _) = exchange.raw("GET", "/ws/btcusdt@trade", &[], b"");
    assert_eq!(status, 404);

    // Shutdown closes these connections as it closes the WebSocket port's.
    let status = exchange.terminate();
    assert!(status.success(), "{status:?}");
    match native.read() {
        Ok(Message::Close(frame)) => assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001)),
        other => panic!("expected a going-away close, got {other:?}"),
    }
}

/// The `order` (or `list`) messages of the user stream whose `key` is `id`.
fn user_messages<'s>(streams: &'s [Value], key: &str, id: &Value) -> Vec<&'s Value> {
    streams
        .iter()
        .filter(|m| m["stream"] == "user" && m["data"][key] == *id)
        .map(|m| &m["data"])
        .filter(|data| data["e"] == "order" || data["e"] == "list")
        .collect()
}

/// Reads stream messages until `done` holds for what was read (a liveness
/// bound, not a speed assertion).
fn read_until(socket: &mut Socket, streams: &mut Vec<Value>, done: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(streams) {
        assert!(Instant::now() < deadline, "not seen in 10 s: {streams:?}");
        streams.push(next(socket));
    }
}

#[test]
fn order_lists_over_the_socket_and_their_story_on_the_user_stream() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(3);
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    let mut socket = connect(&exchange);
    login(&mut socket, alice, 1);
    let mut streams = Vec::new();
    // The last price: 50,000.
    exchange.place(bob, limit("BTC-USDT", "sell", "50000", "0.001"));
    exchange.place(carol, limit("BTC-USDT", "buy", "50000", "0.001"));

    // An OCO over the socket: a take-profit maker at 52,000, a stop at 48,000.
    let oco = json!({
        "market": "BTC-USDT", "contingency": "oco", "list_client_id": "ws-oco",
        "orders": [
            { "side": "sell", "type": "iceberg", "time_in_force": "POST_ONLY", "price": "52000", "quantity": "0.1",
              "visible_quantity": "0.02" },
            { "side": "sell", "type": "stop_limit", "price": "47900", "quantity": "0.1",
              "trigger": { "kind": "stop_loss", "stop_price": "48000" } },
        ],
    });
    send(&mut socket, json!({ "method": "order_list.place", "params": oco, "id": 2 }));
    let placed = answer(&mut socket, 2, &mut streams);
    assert_eq!(placed["status"], 200, "{placed}");
    let list = placed["result"]["list_id"].clone();
    let (maker, stop) = (
        placed["result"]["orders"][0]["order_id"].clone(),
        placed["result"]["orders"][1]["order_id"].clone(),
    );
    assert_eq!(placed["result"]["orders"][0]["visible_quantity"], "0.02", "{placed}");

    // Bob buys 0.03 at 52,000: the iceberg trades (and refills), the stop
    // is cancelled by its list, and the list is over.
    exchange.place(bob, limit("BTC-USDT", "buy", "52000", "0.03"));
    read_until(&mut socket, &mut streams, |s| {
        user_messages(s, "order_id", &stop).iter().any(|m| m["status"] != "new")
            && user_messages(s, "list_id", &list).len() >= 2
    });
    let stop_story: Vec<&str> =
        user_messages(&streams, "order_id", &stop).iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(stop_story, ["new", "expired_contingent"], "{streams:?}");
    let maker_story: Vec<&str> =
        user_messages(&streams, "order_id", &maker).iter().filter_map(|m| m["status"].as_str()).collect();
    assert_eq!(maker_story, ["new", "refilled"], "{streams:?}");
    let refill =
        user_messages(&streams, "order_id", &maker).into_iter().find(|m| m["status"] == "refilled").unwrap();
    assert_eq!(
        (refill["visible_quantity"].as_str(), refill["hidden_quantity"].as_str()),
        (Some("0.02"), Some("0.06"))
    );
    let list_story: Vec<&str> =
        user_messages(&streams, "list_id", &list).iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(list_story, ["open", "done"], "{streams:?}");

    // An OTO whose pending order is a stop: released when the working
    // order fills, then fired by a later trade.
    let oto = json!({
        "market": "BTC-USDT", "contingency": "oto", "list_client_id": "ws-oto",
        "orders": [
            { "side": "buy", "type": "limit", "price": "50000", "quantity": "0.01" },
            { "side": "sell", "type": "stop_market", "quantity": "0.01",
              "trigger": { "kind": "stop_loss", "stop_price": "49000" } },
        ],
    });
    send(&mut socket, json!({ "method": "order_list.place", "params": oto, "id": 3 }));
    let placed = answer(&mut socket, 3, &mut streams);
    assert_eq!(placed["result"]["orders"][1]["status"], "pending_new", "{placed}");
    let pending = placed["result"]["orders"][1]["order_id"].clone();
    exchange.place(carol, limit("BTC-USDT", "sell", "50000", "0.01"));
    exchange.place(carol, limit("BTC-USDT", "buy", "48000", "0.05"));
    exchange.place(bob, limit("BTC-USDT", "sell", "48500", "0.001"));
    exchange.place(carol, limit("BTC-USDT", "buy", "48500", "0.001"));
    read_until(&mut socket, &mut streams, |s| {
        user_messages(s, "order_id", &pending).iter().any(|m| m["status"] == "filled")
    });
    let story: Vec<&str> =
        user_messages(&streams, "order_id", &pending).iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(story, ["pending_new", "released", "triggered", "filled"], "{streams:?}");
    let fired = user_messages(&streams, "order_id", &pending)
        .into_iter()
        .find(|m| m["status"] == "triggered")
        .unwrap();
    assert_eq!(fired["trigger_price"], "48500");

    // A list cancelled over the socket, by its client id.
    let oco = json!({
        "market": "BTC-USDT", "contingency": "oco", "list_client_id": "ws-oco-2",
        "orders": [
            { "side": "buy", "type": "limit", "time_in_force": "POST_ONLY", "price": "40000", "quantity": "0.01" },
            { "side": "buy", "type": "stop_market", "quantity": "0.01",
              "trigger": { "kind": "stop_loss", "trailing_bips": 200 } },
        ],
    });
    send(&mut socket, json!({ "method": "order_list.place", "params": oco, "id": 4 }));
    assert_eq!(answer(&mut socket, 4, &mut streams)["status"], 200);
    send(
        &mut socket,
        json!({ "method": "order_list.cancel", "params": { "list_client_id": "ws-oco-2" }, "id": 5 }),
    );
    let cancelled = answer(&mut socket, 5, &mut streams);
    assert_eq!(
        (cancelled["status"].as_u64(), cancelled["result"]["status"].as_str()),
        (Some(200), Some("done")),
        "{cancelled}"
    );
    send(
        &mut socket,
        json!({ "method": "order_list.cancel", "params": { "list_client_id": "ws-oco-2" }, "id": 6 }),
    );
    let again = answer(&mut socket, 6, &mut streams);
    assert_eq!(
        (again["status"].as_u64(), again["error"]["code"].as_str()),
        (Some(404), Some("unknown_order_list"))
    );
}
