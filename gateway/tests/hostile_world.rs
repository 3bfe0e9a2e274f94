//! The exchange in a hostile world, against the real `exchange` binary:
//! an open-loop flood above what it can take, hundreds to thousands of
//! WebSocket clients that never read, a PostgreSQL server that stops
//! answering, a full disk under the journal, and users trying to reach
//! each other's orders, balances and streams, forge or replay signatures,
//! or call the admin API.
//!
//! Bounded by default (CI); `HOSTILE_SCALE=full` runs the long version
//! (a minute-long database stall, 5,000 idle WebSocket clients, a
//! 30-second flood): `HOSTILE_SCALE=full cargo test --release -p gateway
//! --test hostile_world -- --nocapture --test-threads 1`.

mod server;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use persistence::cluster::Database;
use serde_json::{json, Value};
use server::{Exchange, Key};

fn full() -> bool {
    std::env::var("HOSTILE_SCALE").is_ok_and(|v| v == "full")
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A signed native request that may fail (for floods), on a fresh connection.
fn try_signed(
    address: SocketAddr,
    key: &Key,
    method: &str,
    path: &str,
    body: &str,
    nonce: u64,
) -> Result<(u16, Value), String> {
    let query = format!("nonce={nonce}&timestamp={}", now_ms());
    let signature = gateway::auth::sign(&key.secret, &query, body.as_bytes());
    let target = format!("{path}?{query}&signature={signature}");
    server::try_raw(address, method, &target, &[("X-MBX-APIKEY", &key.api_key)], body.as_bytes())
        .map(|(status, _, value)| (status, value))
}

#[test]
fn a_flood_above_capacity_is_shed_with_busy_and_recovers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A small inbound ring and a sync per batch: the matcher is the
    // bottleneck, as it would be under a real flood.
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_INBOUND_RING_SIZE", "64"),
            ("EXCHANGE_DURABILITY", "batch"),
            ("EXCHANGE_CONNECTIONS_MAX", "100000"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
        ],
    );
    let keys = exchange.demo(8);
    let pid = exchange.pid();
    let rss_before = rss_kib(pid);
    let seconds = if full() { 30 } else { 4 };
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // ok, busy, rate-limited, other
    let mut threads = Vec::new();
    // Open loop: 64 senders, each firing without waiting for the others.
    for sender in 0..64u64 {
        let (stop, counts, key, address) =
            (Arc::clone(&stop), Arc::clone(&counts), keys[sender as usize % 8].clone(), exchange.address);
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // An IOC far from any price: the state does not grow.
                let body = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "10", "quantity": "0.1", "time_in_force": "IOC" });
                let slot = match try_signed(address, &key, "POST", "/order", &body.to_string(), sender * 1_000_000_000 + n) {
                    Ok((200, _)) => 0,
                    Ok((503, answer)) if answer["error"]["code"] == "busy" => 1,
                    Ok((429, _)) => 2,
                    other => {
                        eprintln!("unexpected answer under flood: {other:?}");
                        3
                    }
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut rss_peak = rss_before;
    while started.elapsed() < Duration::from_secs(seconds) {
        rss_peak = rss_peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let [ok, busy, limited, other] = [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    println!("flood of {seconds} s: {ok} accepted, {busy} busy, {limited} rate-limited, {other} other; RSS {rss_before} -> peak {rss_peak} KiB");
    assert_eq!(other, 0, "every answer under the flood is an order, busy or rate-limited");
    assert!(ok > 0, "orders still go through under the flood");
    assert!(
        rss_peak < rss_before + 256 * 1024,
        "memory stays bounded under the flood: {rss_before} -> {rss_peak} KiB"
    );
    // The moment the flood stops, an order goes through on the first try.
    let order =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "10", "quantity": "0.1" });
    let (status, answer) = exchange.place(&keys[0], order);
    assert_eq!(status, 200, "recovers at once: {answer}");
    let (status, health) = exchange.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

/// Raises this process's open-file limit (the exchange, its child,
/// inherits it) so that thousands of sockets fit.
fn raise_file_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: reading and setting this process's own limits.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn thousands_of_websocket_clients_that_never_read_cost_bounded_memory() {
    let clients = if full() { 5_000 } else { 1_000 };
    raise_file_limit(2 * clients as u64 + 1_024);
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("EXCHANGE_CONNECTIONS_MAX", "100000"),
            ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
        ],
    );
    let keys = exchange.demo(2);
    let pid = exchange.pid();
    let rss_before = rss_kib(pid);
    // Clients that subscribe to every stream and then never read.
    let subscribe = json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade", "BTC-USDT@depth", "BTC-USDT@bookTicker"], "id": 1 });
    let mut idle = Vec::with_capacity(clients);
    for _ in 0..clients {
        let stream = TcpStream::connect(exchange.ws_address).unwrap();
        let (mut socket, _) = tungstenite::client(
            format!("ws://{}/", exchange.ws_address),
            tungstenite::stream::MaybeTlsStream::Plain(stream),
        )
        .expect("a WebSocket client connects");
        socket.send(tungstenite::Message::text(subscribe.to_string())).unwrap();
        idle.push(socket);
    }
    // Trading that feeds every stream, while nobody reads.
    let trades = if full() { 20_000 } else { 3_000 };
    let ask =
        json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "100", "quantity": "5" });
    assert_eq!(exchange.place(&keys[1], ask).0, 200);
    let mut rss_peak = rss_before;
    for i in 0..trades {
        let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.0001" });
        let (status, answer) = exchange.place(&keys[0], buy);
        assert_eq!(status, 200, "the REST API keeps answering: {answer}");
        if i % 100 == 0 {
            rss_peak = rss_peak.max(rss_kib(pid));
        }
    }
    rss_peak = rss_peak.max(rss_kib(pid));
    // A fresh reader still gets the stream at once.
    let stream = TcpStream::connect(exchange.ws_address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut reader, _) = tungstenite::client(
        format!("ws://{}/", exchange.ws_address),
        tungstenite::stream::MaybeTlsStream::Plain(stream),
    )
    .unwrap();
    reader
        .send(tungstenite::Message::text(
            json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 2 }).to_string(),
        ))
        .unwrap();
    let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.0001" });
    assert_eq!(exchange.place(&keys[0], buy).0, 200);
    let mut got_trade = false;
    while let Ok(message) = reader.read() {
        if let tungstenite::Message::Text(text) = message {
            if text.contains("\"BTC-USDT@trade\"") {
                got_trade = true;
                break;
            }
        }
    }
    assert!(got_trade, "a reading client gets its trades while {clients} others never read");
    println!("{clients} idle WebSocket clients, {trades} trades: RSS {rss_before} -> peak {rss_peak} KiB");
    // Each idle client may hold its queue (4,096 shared messages) and its
    // socket buffers; far below that is the bound asserted.
    let per_client_kib = (rss_peak.saturating_sub(rss_before)) / clients as u64;
    assert!(per_client_kib < 512, "memory per idle client stays bounded: {per_client_kib} KiB");
    drop(idle);
}

#[test]
fn a_database_that_stops_answering_stalls_nothing_and_converges() {
    let database = Database::on_own_cluster().expect("a private PostgreSQL cluster (the test freezes it)");
    let cluster = database.cluster().expect("a cluster of our own");
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(
        dir.path(),
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
            ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
            // Shorter than the stall: the writer gives up on its write,
            // reconnects, and must still find everything it missed.
            ("EXCHANGE_DATABASE_TRANSACTION_TIMEOUT_MS", "3000"),
        ],
    );
    let keys = exchange.demo(2);
    let trade = |n: usize| {
        for i in 0..n {
            // The two users take turns selling, so neither runs out.
            let (seller, buyer) = if i % 2 == 0 { (&keys[1], &keys[0]) } else { (&keys[0], &keys[1]) };
            let ask = json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": format!("{}", 100 + i % 3), "quantity": "0.01" });
            let (status, answer) = exchange.place(seller, ask);
            assert_eq!(status, 200, "{answer}");
            let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.01" });
            let (status, answer) = exchange.place(buyer, buy);
            assert_eq!(status, 200, "orders are accepted while the database hangs: {answer}");
        }
    };
    trade(20);
    // The writer is writing before the database freezes (until it has read
    // the database's cursor, its lag is unknown).
    let deadline = Instant::now() + Duration::from_secs(60);
    while exchange.get("/health").1["database"]["connected"] != true {
        assert!(Instant::now() < deadline, "the writer never connected: {}", exchange.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stall = Duration::from_secs(if full() { 60 } else { 8 });
    cluster.pause().expect("freeze the database server");
    let frozen = Instant::now();
    let mut rounds = 0;
    while frozen.elapsed() < stall {
        trade(10);
        rounds += 1;
    }
    let (_, health) = exchange.get("/health");
    let lag = health["database"]["lag_seq"].as_u64().unwrap_or(0);
    cluster.resume().expect("thaw the database server");
    assert!(lag > 0, "the writer fell behind while the database hung: {health}");
    // After the stall the writer catches up (reconnecting if it gave up).
    let deadline = Instant::now() + Duration::from_secs(120);
    let caught_up = loop {
        let (_, health) = exchange.get("/health");
        if health["database"]["lag_seq"].as_u64() == Some(0) && health["database"]["connected"] == true {
            break health;
        }
        assert!(Instant::now() < deadline, "the writer never caught up: {health}\n{}", exchange.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    // And the database holds every trade the exchange made.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stored: i64 = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.query_one("SELECT count(*) FROM trades", &[]).await.unwrap().get(0)
    });
    let (_, history) = exchange.get("/trade/history?market=BTC-USDT&limit=1");
    let newest = history["trades"][0]["trade_id"].as_i64().unwrap_or(0);
    println!("database frozen {:.1} s: {rounds} rounds of trading went on, lag {lag}; then {caught_up}; {stored} trades stored", stall.as_secs_f64());
    assert_eq!(stored, newest, "every trade reached the database, once");
    assert_eq!(stored as usize, 20 + rounds * 10);
}

#[test]
fn a_full_disk_stops_orders_with_a_clear_error_and_loses_nothing_acknowledged() {
    // A small tmpfs under the data directory: the journal's next segment
    // cannot be allocated once it is full.
    let mount = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"])
        .arg(mount.path())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "this test mounts a 512 KiB tmpfs to fill: it needs root (CAP_SYS_ADMIN), as CI runs"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mount.path());
    let data = mount.path().join("data");
    let settings = [
        ("EXCHANGE_SEGMENT_BYTES", "65536"),
        ("EXCHANGE_SNAPSHOT_EVERY_COMMANDS", "1000000"),
        ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
        ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
    ];
    let exchange = Exchange::start(&data, &settings);
    let keys = exchange.demo(2);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..100_000 {
        // IOC against an empty book: nothing rests, the journal still grows.
        let order = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "10", "quantity": "0.1", "time_in_force": "IOC", "client_order_id": format!("fill-{i}") });
        let (status, answer) = exchange.place(&keys[0], order);
        match status {
            200 => acknowledged.push(answer["order_id"].as_u64().unwrap()),
            _ => {
                refusal = Some((status, answer));
                break;
            }
        }
    }
    let (status, answer) = refusal.expect("the disk filled up");
    assert_eq!((status, answer["error"]["code"].as_str()), (503, Some("journal_unavailable")), "{answer}");
    // Every later command is refused too; reads still work.
    let order =
        json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "90", "quantity": "0.1" });
    assert_eq!(exchange.place(&keys[1], order).0, 503);
    assert_eq!(exchange.get("/depth?market=BTC-USDT").0, 200);
    let (_, health) = exchange.get("/health");
    assert_eq!(health["status"], "journal_failed", "{health}");
    assert!(exchange.stderr().contains("journal"), "the failure is logged: {}", exchange.stderr());
    drop(exchange);
    // On a disk with room, the data recovers with every acknowledged order.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    let recovered = journal::recover(
        &journal::DataDir::new(copy.path()),
        journal::RecoverOptions {
            limits: engine_core::EngineLimits::default(),
            to_seq: None,
            mode: journal::ReadMode::Follow,
        },
        |_| {},
    )
    .expect("the full disk's data recovers");
    recovered.engine.check_invariants().expect("the recovered state holds the invariants");
    let mut reader =
        journal::JournalReader::open(&copy.path().join("journal"), 1, journal::ReadMode::Follow).unwrap();
    let mut engine = engine_core::Engine::new(engine_core::EngineLimits::default());
    let (mut events, mut accepted) = (Vec::new(), HashSet::new());
    while let Some(command) = reader.next().unwrap() {
        events.clear();
        engine.apply(&command, &mut events).unwrap();
        for event in &events {
            if let engine_core::EventKind::OrderAccepted { order, .. } = event.kind {
                accepted.insert(order.0);
            }
        }
    }
    assert_eq!(engine.state_hash(), recovered.engine.state_hash());
    for id in &acknowledged {
        assert!(accepted.contains(id), "acknowledged order {id} survived the full disk");
    }
    let restarted = Exchange::start(copy.path(), &settings);
    let order =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "10", "quantity": "0.1" });
    assert_eq!(restarted.place(&keys[0], order).0, 200, "with room again, orders are accepted");
    println!("{} orders acknowledged before the 512 KiB disk filled; all recovered", acknowledged.len());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn users_cannot_reach_each_other_and_secrets_stay_secret() {
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[("DATABASE_URL", database.url.as_str())]);
    // An order the views do not hold is looked up in the database, which
    // answers 503 until the writer has connected and created its tables.
    let wait = Instant::now();
    while exchange.get("/health").1["database"]["connected"] != true {
        assert!(wait.elapsed() < Duration::from_secs(60), "the database writer connects");
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = exchange.demo(2);
    let (alice, mallory) = (&keys[0], &keys[1]);
    let order = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100", "quantity": "0.5", "client_order_id": "alice-1" });
    let (_, placed) = exchange.place(alice, order);
    let id = placed["order_id"].as_u64().unwrap();

    // Another user's order, through every native endpoint that names one.
    let (status, _) = exchange.signed(mallory, "GET", "/order", &format!("order_id={id}"), None);
    assert_eq!(status, 404, "reading another user's order");
    let (status, _) = exchange.signed(mallory, "GET", "/order", "client_order_id=alice-1", None);
    assert_eq!(status, 404, "reading it by its client id");
    let (status, _) = exchange.signed(mallory, "DELETE", "/order", &format!("order_id={id}"), None);
    assert_eq!(status, 404, "cancelling another user's order");
    let (status, _) =
        exchange.signed(mallory, "PUT", "/order", "", Some(json!({ "order_id": id, "quantity": "0.1" })));
    assert_eq!(status, 404, "amending another user's order");
    let (_, open) = exchange.signed(mallory, "GET", "/orders/open", "", None);
    assert_eq!(open["orders"], json!([]), "open orders are one's own");
    let (_, cancelled) = exchange.signed(mallory, "POST", "/order/cancel_all", "", Some(json!({})));
    assert_eq!(cancelled["cancelled"], 0, "cancel-all touches one's own orders only");
    let (_, balance) = exchange.signed(mallory, "GET", "/balance", "", None);
    assert_eq!(balance["user_id"].as_u64(), Some(mallory.user_id), "a balance is one's own");
    // Through the Binance API.
    let binance = |key: &Key, method: &str, path: &str, params: &str| {
        let params = format!("{params}&timestamp={}", now_ms());
        let signature = gateway::auth::sign(&key.secret, &params, b"");
        exchange.raw(
            method,
            &format!("{path}?{params}&signature={signature}"),
            &[("X-MBX-APIKEY", &key.api_key)],
            b"",
        )
    };
    assert_eq!(
        binance(mallory, "GET", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={id}")).2["code"],
        -2013
    );
    assert_eq!(
        binance(mallory, "DELETE", "/api/v3/order", "symbol=BTCUSDT&origClientOrderId=alice-1").2["code"],
        -2011
    );
    assert_eq!(binance(mallory, "GET", "/api/v3/openOrders", "symbol=BTCUSDT").2, json!([]));
    let (_, _, account) = binance(mallory, "GET", "/api/v3/account", "");
    assert_eq!(account["uid"].as_u64(), Some(mallory.user_id));
    // The order is untouched.
    let (status, mine) = exchange.signed(alice, "GET", "/order", &format!("order_id={id}"), None);
    assert_eq!((status, mine["status"].as_str()), (200, Some("new")));

    // Stale and replayed signatures.
    let stale = format!("timestamp={}", now_ms() - 120_000);
    let (status, answer) = exchange.signed_raw(alice, "GET", "/balance", &stale, None);
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("timestamp_outside_recv_window")));
    let query = format!("nonce=replay&timestamp={}", now_ms());
    let body =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "99", "quantity": "0.1" });
    assert_eq!(exchange.signed_raw(alice, "POST", "/order", &query, Some(body.clone())).0, 200);
    let (status, answer) = exchange.signed_raw(alice, "POST", "/order", &query, Some(body));
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("replayed_signature")));

    // The admin API refuses user keys, signed or not.
    let (status, _) = exchange.signed(
        alice,
        "POST",
        "/admin/deposit",
        "",
        Some(json!({ "user_id": alice.user_id, "asset": "BTC", "amount": "1000" })),
    );
    assert_eq!(status, 403, "a signed user request is not an admin request");
    let body = json!({ "user_id": alice.user_id, "asset": "BTC", "amount": "1000" }).to_string();
    let (status, _, _) =
        exchange.raw("POST", "/admin/deposit", &[("X-Admin-Token", &alice.secret)], body.as_bytes());
    assert_eq!(status, 403, "a user's secret is not the admin token");

    // Streams: a login with another user's key and a wrong signature fails.
    let stream = TcpStream::connect(exchange.ws_address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut socket, _) = tungstenite::client(
        format!("ws://{}/", exchange.ws_address),
        tungstenite::stream::MaybeTlsStream::Plain(stream),
    )
    .unwrap();
    let login = json!({ "method": "LOGIN", "params": { "apiKey": alice.api_key, "timestamp": now_ms() as u64, "signature": "00".repeat(32) }, "id": 1 });
    socket.send(tungstenite::Message::text(login.to_string())).unwrap();
    let answer: Value = loop {
        if let tungstenite::Message::Text(text) = socket.read().unwrap() {
            break serde_json::from_str(&text).unwrap();
        }
    };
    assert_eq!(answer["status"], 401, "{answer}");

    // Secrets never in logs, error bodies or the database.
    let wait = Instant::now();
    while exchange.get("/health").1["database"]["lag_seq"] != 0 && wait.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = exchange.stderr();
    for key in &keys {
        assert!(!stderr.contains(&key.secret), "a secret in the exchange's log");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dump: String = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let tables: Vec<String> = client
            .query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut dump = String::new();
        for table in tables {
            for row in client.query(&format!("SELECT t::text FROM {table} t"), &[]).await.unwrap() {
                dump.push_str(row.get::<_, &str>(0));
                dump.push('\n');
            }
        }
        dump
    });
    assert!(dump.contains(&alice.api_key), "the database names keys by their public half");
    for key in &keys {
        assert!(!dump.contains(&key.secret), "a secret in the database");
    }

    // Files the exchange writes are not world- or group-readable.
    let status = exchange.terminate();
    assert!(status.success());
    let mut checked = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} is readable by others: {:o}",
                entry.path().display(),
                mode & 0o777
            );
            checked += 1;
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    assert!(checked >= 3, "the data directory has files");
}

#[test]
fn shutdown_does_not_wait_out_a_hung_database_and_loses_nothing() {
    let database = Database::on_own_cluster().expect("a private PostgreSQL cluster (the test freezes it)");
    let cluster = database.cluster().expect("a cluster of our own");
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", database.url.as_str())];
    let exchange = Exchange::start(dir.path(), &env);
    let keys = exchange.demo(2);
    let trade = |exchange: &Exchange, n: usize| {
        for i in 0..n {
            let ask = json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": format!("{}", 100 + i % 3), "quantity": "0.01" });
            assert_eq!(exchange.place(&keys[1], ask).0, 200);
            let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.01" });
            assert_eq!(exchange.place(&keys[0], buy).0, 200);
        }
    };
    trade(&exchange, 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    while exchange.get("/health").1["database"]["lag_seq"] != 0 {
        assert!(Instant::now() < deadline, "the writer never caught up: {}", exchange.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.pause().expect("freeze the database server");
    trade(&exchange, 10);
    std::thread::sleep(Duration::from_millis(300));
    let stderr_path = exchange.stderr_path.clone();
    let stopping = Instant::now();
    let status = exchange.terminate();
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    cluster.resume().expect("thaw the database server");
    assert!(status.success(), "{status:?}\n{log}");
    // The writer's wait is bounded by its progress (1 s without any), not
    // by its 10 s deadline plus a transaction timeout.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?} with the database hung:\n{log}");
    assert!(
        log.contains("written from the journal at the next start"),
        "the shutdown says what it left:\n{log}"
    );

    // Nothing is lost: the next start writes what the hung database missed.
    let exchange = Exchange::start(dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while exchange.get("/health").1["database"]["lag_seq"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the writer never caught up after the restart: {}",
            exchange.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stored: i64 = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.query_one("SELECT count(*) FROM trades", &[]).await.unwrap().get(0)
    });
    assert_eq!(stored, 20, "every trade reached the database, once");
    println!("shutdown with the database hung took {took:?}");
}
