//! The crash loop: the real `exchange` under a seeded random workload from
//! several concurrent clients (REST orders, cancels and amends; a WebSocket
//! trade reader), killed with SIGKILL at random moments, many times, and
//! restarted on the same data directory. After every kill, with the
//! process dead, the journal and snapshots on disk are checked:
//!
//! * the state recovered as the server recovers it (newest snapshot plus
//!   journal) has the same state hash as a clean replay of the whole
//!   journal, and both hold the engine's invariants;
//! * every asset is conserved: users' balances plus fees equal deposits
//!   less withdrawals;
//! * every order the server acknowledged is in the journal, with the
//!   outcome the client was told (filled, cancelled, amended), and every
//!   fill a client received is a trade of the replay, at its price and
//!   quantity;
//! * the trades seen over the WebSocket are trades of the replay, never
//!   twice, and without a gap within a connection.
//!
//! After every restart, before the clients go on, the live server is asked
//! about every order a client was ever acknowledged: each one is found,
//! with the final status and exactly the fills the journal gives it, and
//! each user's `myTrades` is exactly the journal's trades of that user,
//! as if the process had never stopped. With PostgreSQL, the views keep
//! only a few closed orders per user, so most are answered from the
//! database.
//!
//! With PostgreSQL configured, the database must hold exactly the
//! journal's trades and orders once the writer catches up after the last
//! restart.
//!
//! The power-cut variant runs the `batch` policy and, at each kill, also
//! throws away everything after the last sync (at least the last durable
//! sequence number the server reported before the kill: zeroing the
//! journal's records after it, keeping the segment files, dropping newer
//! snapshots), restarts on that (the journal's checks accept it: nothing
//! synced was lost), and checks that every order acknowledged before that
//! report survived.
//!
//! `HOSTILE_CYCLES` sets the number of kills (default 6, a bounded run for
//! CI); `HOSTILE_SEED` the workload's seed. The full run:
//! `HOSTILE_CYCLES=200 cargo test --release -p gateway --test crash_loop -- --nocapture`.

mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine_core::{AssetId, DoneReason, Engine, EngineLimits, Event, EventKind, UserId};
use journal::{DataDir, JournalReader, ReadMode, RecoverOptions};
use persistence::cluster::Database;
use serde_json::{json, Value};
use server::{Exchange, Key};

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One HTTP request that may fail (the server dies under the clients).
fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    key: &Key,
    body: &str,
) -> Result<(u16, Value), String> {
    server::try_raw(address, method, target, &[("X-MBX-APIKEY", &key.api_key)], body.as_bytes())
        .map(|(status, _, value)| (status, value))
}

fn signed(
    address: SocketAddr,
    key: &Key,
    method: &str,
    path: &str,
    query: &str,
    body: &str,
    nonce: u64,
) -> Result<(u16, Value), String> {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let query = if query.is_empty() {
        format!("nonce={nonce}&timestamp={timestamp}")
    } else {
        format!("{query}&nonce={nonce}&timestamp={timestamp}")
    };
    let signature = gateway::auth::sign(&key.secret, &query, body.as_bytes());
    request(address, method, &format!("{path}?{query}&signature={signature}"), key, body)
}

/// What a client was told about one of its orders.
#[derive(Clone, Debug)]
struct Ack {
    /// The index of the client (and of its key).
    client: usize,
    order_id: u64,
    client_order_id: Option<String>,
    /// The status in the answer (`new`, `filled`, `cancelled`, ...).
    status: String,
    /// The kind of request that was answered.
    action: &'static str,
    /// Fills in the answer: trade id, price, quantity (decimal strings).
    fills: Vec<(u64, String, String)>,
    /// The number of the durable-sequence readings asked for so far,
    /// loaded after the answer arrived.
    generation: u64,
}

struct Shared {
    address: RwLock<Option<SocketAddr>>,
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    /// Bumped after each reading of `/health`'s `durable_seq`.
    generation: AtomicU64,
    /// (generation, durable_seq) of the readings.
    durable: Mutex<Vec<(u64, u64)>>,
}

fn parse_fills(answer: &Value) -> Vec<(u64, String, String)> {
    answer["fills"]
        .as_array()
        .map(|fills| {
            fills
                .iter()
                .filter_map(|f| {
                    Some((
                        f["trade_id"].as_u64()?,
                        f["price"].as_str()?.to_string(),
                        f["quantity"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One trading client: limit and market orders, cancels and amends of its
/// own orders, at random, until told to stop; survives the server's death.
fn client(shared: Arc<Shared>, key: Key, index: u64, seed: u64) {
    let mut rng = Rng::new(seed ^ (index + 1).wrapping_mul(0x1234_5678_9ABC));
    let mut open: Vec<u64> = Vec::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(address) = *shared.address.read().unwrap() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        n += 1;
        let nonce = index * 1_000_000_000 + n;
        let side = if rng.below(2) == 0 { "buy" } else { "sell" };
        let roll = rng.below(100);
        let (action, result) = if roll < 50 || open.is_empty() {
            let client_order_id = format!("c{index}-{seed}-{n}");
            let body = json!({
                "market": "BTC-USDT", "side": side, "type": "limit",
                "price": format!("{}", 95 + rng.below(11)), "quantity": format!("0.0{}", 1 + rng.below(5)),
                "client_order_id": client_order_id,
            });
            ("place", signed(address, &key, "POST", "/order", "", &body.to_string(), nonce))
        } else if roll < 60 {
            let body = json!({ "market": "BTC-USDT", "side": side, "type": "market", "quantity": "0.01" });
            ("market", signed(address, &key, "POST", "/order", "", &body.to_string(), nonce))
        } else if roll < 88 {
            let order = open.swap_remove(rng.below(open.len() as u64) as usize);
            ("cancel", signed(address, &key, "DELETE", "/order", &format!("order_id={order}"), "", nonce))
        } else {
            let order = open[rng.below(open.len() as u64) as usize];
            let body = json!({ "order_id": order, "quantity": "0.01" });
            ("amend", signed(address, &key, "PUT", "/order", "", &body.to_string(), nonce))
        };
        let generation = shared.generation.load(Ordering::SeqCst);
        if let Ok((200, answer)) = result {
            let Some(order_id) = answer["order_id"].as_u64() else { continue };
            let status = answer["status"].as_str().unwrap_or_default().to_string();
            if matches!(status.as_str(), "new" | "partially_filled") && !open.contains(&order_id) {
                open.push(order_id);
            }
            shared.acks.lock().unwrap().push(Ack {
                client: index as usize,
                order_id,
                client_order_id: answer["client_order_id"].as_str().map(str::to_string),
                status,
                action,
                fills: parse_fills(&answer),
                generation,
            });
        }
        // Refusals (funds, unknown order after a fill) and lost answers
        // (the server died mid-request) assert nothing: the outcome of an
        // unanswered request is unknown to its client, as on any exchange.
    }
}

/// Reads `durable_seq` from `/health` over and over, numbering readings.
/// A reading's number is taken before its request is sent: an answer a
/// client received before it loaded a smaller number arrived before this
/// reading was even asked for, so the reading covers it.
fn durable_watcher(shared: Arc<Shared>) {
    let nobody = Key { user_id: 0, api_key: "none0123456789ABCDEF".into(), secret: String::new() };
    while !shared.stop.load(Ordering::Relaxed) {
        let address = *shared.address.read().unwrap();
        if let Some(address) = address {
            let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            if let Ok((200, health)) = request(address, "GET", "/health", &nobody, "") {
                if let Some(durable) = health["durable_seq"].as_u64() {
                    shared.durable.lock().unwrap().push((generation, durable));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// A trade as streamed: id, price, quantity.
type Streamed = (u64, String, String);

/// Trades received over the native WebSocket trade stream, per connection.
fn trade_reader(
    shared: Arc<Shared>,
    ws_address: Arc<RwLock<Option<SocketAddr>>>,
    sessions: Arc<Mutex<Vec<Vec<Streamed>>>>,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(address) = *ws_address.read().unwrap() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let Ok((mut socket, _)) = tungstenite::client(
            format!("ws://{address}/"),
            tungstenite::stream::MaybeTlsStream::Plain(stream),
        ) else {
            continue;
        };
        let subscribe = json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 1 });
        if socket.send(tungstenite::Message::text(subscribe.to_string())).is_err() {
            continue;
        }
        let session = {
            let mut sessions = sessions.lock().unwrap();
            sessions.push(Vec::new());
            sessions.len() - 1
        };
        while !shared.stop.load(Ordering::Relaxed) {
            match socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                    if message["stream"] != "BTC-USDT@trade" {
                        continue;
                    }
                    let data = &message["data"];
                    if let (Some(id), Some(p), Some(q)) =
                        (data["t"].as_u64(), data["p"].as_str(), data["q"].as_str())
                    {
                        sessions.lock().unwrap()[session].push((id, p.to_string(), q.to_string()));
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    // Quiet: is the server still the one we connected to?
                    if *ws_address.read().unwrap() != Some(address) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// One side of a trade, as the user who made it sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UserTrade {
    trade: u64,
    order: u64,
    price_ticks: u64,
    qty_lots: u64,
    fee_units: u64,
    maker: bool,
    buyer: bool,
}

/// A clean replay of the whole journal: the engine and every event.
struct Replay {
    engine: Engine,
    accepted: HashMap<u64, Option<String>>,
    done: HashMap<u64, DoneReason>,
    amended: HashSet<u64>,
    trades: BTreeMap<u64, (u64, u64)>,
    /// Each user's sides of trades, in trade order.
    user_trades: BTreeMap<u32, Vec<UserTrade>>,
    /// Each order's trades, in order.
    order_trades: HashMap<u64, Vec<u64>>,
}

fn replay(journal_dir: &Path) -> Replay {
    let mut engine = Engine::new(EngineLimits::default());
    let mut reader = JournalReader::open(journal_dir, 1, ReadMode::Follow).expect("journal opens");
    let mut events: Vec<Event> = Vec::new();
    let mut out = Replay {
        engine: Engine::new(EngineLimits::default()),
        accepted: HashMap::new(),
        done: HashMap::new(),
        amended: HashSet::new(),
        trades: BTreeMap::new(),
        user_trades: BTreeMap::new(),
        order_trades: HashMap::new(),
    };
    while let Some(command) = reader.next().expect("journal reads") {
        events.clear();
        engine.apply(&command, &mut events).expect("records in order");
        for event in &events {
            match event.kind {
                EventKind::OrderAccepted { order, client_order_id, .. } => {
                    out.accepted.insert(order.0, client_order_id.map(|c| c.to_string()));
                }
                EventKind::OrderDone { order, reason, .. } => {
                    out.done.insert(order.0, reason);
                }
                EventKind::OrderAmended { order, .. } => {
                    out.amended.insert(order.0);
                }
                EventKind::Trade {
                    trade,
                    price,
                    qty,
                    taker_side,
                    maker_order,
                    maker_user,
                    taker_order,
                    taker_user,
                    maker_fee,
                    taker_fee,
                    ..
                } => {
                    out.trades.insert(trade.0, (price.0, qty.0));
                    let taker_buys = taker_side == engine_core::Side::Buy;
                    for (user, order, fee, maker) in [
                        (maker_user, maker_order, maker_fee, true),
                        (taker_user, taker_order, taker_fee, false),
                    ] {
                        out.user_trades.entry(user.0).or_default().push(UserTrade {
                            trade: trade.0,
                            order: order.0,
                            price_ticks: price.0,
                            qty_lots: qty.0,
                            fee_units: fee.0,
                            maker,
                            buyer: taker_buys != maker,
                        });
                        out.order_trades.entry(order.0).or_default().push(trade.0);
                    }
                }
                _ => {}
            }
        }
    }
    out.engine = engine;
    out
}

/// Ticks and lots of the demo market (tick 0.01, lot 0.0001) from decimals.
fn ticks_lots(price: &str, qty: &str) -> (u64, u64) {
    let scaled = |text: &str, places: u32| -> u64 {
        let value: rust_decimal::Decimal = text.parse().expect("decimal");
        (value * rust_decimal::Decimal::from(10u64.pow(places))).try_into().expect("whole")
    };
    (scaled(price, 2), scaled(qty, 4))
}

/// The checks on a dead server's data directory; returns the replay.
fn check_data_dir(dir: &Path, acks: &[Ack], trade_sessions: &[Vec<Streamed>]) -> Replay {
    let data = DataDir::new(dir);
    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Follow };
    let recovered = journal::recover(&data, options, |_| {}).expect("the data directory recovers");
    let clean = replay(&data.journal());
    assert_eq!(
        recovered.engine.state_hash(),
        clean.engine.state_hash(),
        "snapshot + journal and a clean replay agree (recovered to {}, replayed to {})",
        recovered.engine.last_seq(),
        clean.engine.last_seq()
    );
    recovered.engine.check_invariants().expect("the recovered state holds the invariants");
    clean.engine.check_invariants().expect("the replayed state holds the invariants");
    for asset in clean.engine.assets() {
        let totals = clean.engine.asset_totals(asset.id).expect("totals");
        let held: u128 = (0..clean.engine.user_count())
            .map(|u| {
                let b = clean.engine.balance(UserId(u), AssetId(asset.id.0));
                u128::from(b.available.0) + u128::from(b.locked.0)
            })
            .sum();
        assert_eq!(held + u128::from(totals.fees.0), totals.outstanding(), "{} is conserved", asset.symbol);
    }
    for ack in acks {
        let accepted = clean.accepted.get(&ack.order_id);
        assert!(accepted.is_some(), "acknowledged order {} is in the journal: {ack:?}", ack.order_id);
        if ack.action == "place" {
            assert_eq!(accepted.cloned().flatten(), ack.client_order_id, "{ack:?}");
        }
        match ack.status.as_str() {
            "filled" => assert_eq!(clean.done.get(&ack.order_id), Some(&DoneReason::Filled), "{ack:?}"),
            "cancelled" => assert_eq!(clean.done.get(&ack.order_id), Some(&DoneReason::Cancelled), "{ack:?}"),
            _ => {}
        }
        if ack.action == "amend" {
            assert!(
                clean.amended.contains(&ack.order_id),
                "the acknowledged amend is in the journal: {ack:?}"
            );
        }
        for (trade, price, qty) in &ack.fills {
            assert_eq!(clean.trades.get(trade), Some(&ticks_lots(price, qty)), "fill {trade} of {ack:?}");
        }
    }
    let mut seen = HashSet::new();
    for session in trade_sessions {
        for pair in session.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "no gap within a WebSocket connection");
        }
        for (trade, price, qty) in session {
            assert!(seen.insert(*trade), "trade {trade} arrived twice over the WebSocket");
            assert_eq!(clean.trades.get(trade), Some(&ticks_lots(price, qty)), "streamed trade {trade}");
        }
    }
    clean
}

/// The native status name of an order the replay knows.
fn status_name(clean: &Replay, order: u64) -> &'static str {
    match clean.done.get(&order) {
        Some(DoneReason::Filled) => "filled",
        Some(DoneReason::Cancelled) => "cancelled",
        Some(DoneReason::Expired) => "expired",
        Some(DoneReason::SelfTrade) => "expired_self_trade",
        Some(DoneReason::FundsExhausted) => "expired_insufficient_funds",
        Some(DoneReason::Contingent) => "expired_contingent",
        Some(DoneReason::Refused(_)) => "rejected",
        None if clean.order_trades.contains_key(&order) => "partially_filled",
        None => "new",
    }
}

/// Asks the restarted server about every acknowledged order and every
/// user's trades, and compares with the journal's replay.
fn check_live_reads(exchange: &Exchange, keys: &[Key], acks: &[Ack], clean: &Replay) {
    let mut asked = HashSet::new();
    for ack in acks {
        if !asked.insert(ack.order_id) {
            continue;
        }
        let key = &keys[ack.client];
        let (status, order) =
            exchange.signed(key, "GET", "/order", &format!("order_id={}", ack.order_id), None);
        assert_eq!(status, 200, "acknowledged order {} is found after the restart: {order}", ack.order_id);
        assert_eq!(order["status"], status_name(clean, ack.order_id), "status of {}: {order}", ack.order_id);
        let fills: Vec<u64> =
            order["fills"].as_array().unwrap().iter().map(|f| f["trade_id"].as_u64().unwrap()).collect();
        let expected = clean.order_trades.get(&ack.order_id).cloned().unwrap_or_default();
        assert_eq!(fills, expected, "fills of {}: {order}", ack.order_id);
    }
    for key in keys {
        let mut got = Vec::new();
        let mut from_id = 0u64;
        loop {
            let (status, _, page) = exchange.binance(
                key,
                "GET",
                "/api/v3/myTrades",
                &format!("symbol=BTCUSDT&fromId={from_id}&limit=1000"),
            );
            assert_eq!(status, 200, "{page}");
            let page = page.as_array().unwrap().clone();
            let Some(last) = page.last() else { break };
            from_id = last["id"].as_u64().unwrap() + 1;
            for t in &page {
                let (price_ticks, qty_lots) =
                    ticks_lots(t["price"].as_str().unwrap(), t["qty"].as_str().unwrap());
                let fee: rust_decimal::Decimal = t["commission"].as_str().unwrap().parse().unwrap();
                let places = if t["commissionAsset"] == "BTC" { 8 } else { 6 };
                got.push(UserTrade {
                    trade: t["id"].as_u64().unwrap(),
                    order: t["orderId"].as_u64().unwrap(),
                    price_ticks,
                    qty_lots,
                    fee_units: (fee * rust_decimal::Decimal::from(10u64.pow(places))).try_into().unwrap(),
                    maker: t["isMaker"].as_bool().unwrap(),
                    buyer: t["isBuyer"].as_bool().unwrap(),
                });
            }
        }
        let expected = clean.user_trades.get(&(key.user_id as u32)).cloned().unwrap_or_default();
        assert_eq!(got, expected, "myTrades of user {} after the restart", key.user_id);
    }
}

/// What a power cut leaves: nothing after the last sync reached the disk.
/// The last sync is at least what the server reported before the kill,
/// what its checkpoint recorded (only synced numbers go there), and the
/// record before its newest segment (a segment is created only once every
/// record before it is synced, and is synced with its directory). Records
/// after that point are zeroed; segment files stay (renamed into place and
/// synced, they survive, empty); newer snapshots go. Returns the point.
fn cut_power(dir: &Path, reported_durable_seq: u64) -> u64 {
    let data = DataDir::new(dir);
    let segments = journal::list_segments(&data.journal()).expect("segments");
    let recorded =
        journal::read_checkpoint(&data.journal()).expect("checkpoint").map_or(0, |c| c.durable_seq);
    let newest_start = segments.last().map_or(0, |(first_seq, _)| first_seq - 1);
    let durable_seq = reported_durable_seq.max(recorded).max(newest_start);
    for (_, path) in &segments {
        let mut bytes = std::fs::read(path).expect("segment");
        let mut offset = journal::SEGMENT_HEADER_BYTES;
        while let journal::Frame::Record { command, next_offset, .. } = journal::read_frame(&bytes, offset) {
            if command.seq > durable_seq {
                break;
            }
            offset = next_offset;
        }
        if bytes[offset..].iter().any(|&b| b != 0) {
            bytes[offset..].fill(0);
            std::fs::write(path, &bytes).expect("rewrite segment");
        }
    }
    for (seq, path) in journal::list_snapshots(&data.snapshots()).expect("snapshots") {
        if seq > durable_seq {
            std::fs::remove_file(path).expect("remove snapshot");
        }
    }
    durable_seq
}

fn run(durability: &str, power_cut: bool, database: Option<&Database>) {
    let cycles = env_number("HOSTILE_CYCLES", 6);
    let seed = env_number("HOSTILE_SEED", 0x5EED);
    let clients = 4u64;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vec![
        ("EXCHANGE_DURABILITY", durability),
        ("EXCHANGE_SNAPSHOT_EVERY_COMMANDS", "300"),
        // The checks after each restart ask about every order at once.
        ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
        ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
    ];
    match database {
        Some(database) => {
            settings.push(("DATABASE_URL", database.url.as_str()));
            // Most closed orders fall out of the views: the database answers.
            settings.push(("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "5"));
        }
        // Without a database, the views answer for every order of the run.
        None => settings.push(("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "1000000")),
    }
    let mut exchange = Exchange::start(dir.path(), &settings);
    let keys = exchange.demo(clients as usize);
    let all_keys = keys.clone();
    let shared = Arc::new(Shared {
        address: RwLock::new(Some(exchange.address)),
        stop: AtomicBool::new(false),
        acks: Mutex::new(Vec::new()),
        generation: AtomicU64::new(0),
        durable: Mutex::new(Vec::new()),
    });
    let ws_address = Arc::new(RwLock::new(Some(exchange.ws_address)));
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (index, key) in keys.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || client(shared, key, index as u64, seed)));
    }
    {
        let watcher = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || durable_watcher(watcher)));
        let (reader, ws_address, sessions) =
            (Arc::clone(&shared), Arc::clone(&ws_address), Arc::clone(&sessions));
        threads.push(std::thread::spawn(move || trade_reader(reader, ws_address, sessions)));
    }
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut kept_after_cut = 0usize;
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        // The last durable sequence reported before the kill, and which
        // answers had arrived before that report.
        let (generation, durable_seq) = shared.durable.lock().unwrap().last().copied().unwrap_or((0, 0));
        *shared.address.write().unwrap() = None;
        *ws_address.write().unwrap() = None;
        drop(exchange); // SIGKILL
        let acks = shared.acks.lock().unwrap().clone();
        let trade_sessions = sessions.lock().unwrap().clone();
        let clean = check_data_dir(dir.path(), &acks, &trade_sessions);
        let mut cut_at = durable_seq;
        if power_cut {
            // Every answer that arrived before the server reported
            // `durable_seq` was for a command synced by then: the cut must
            // keep it, with the outcome the client was told.
            cut_at = cut_power(dir.path(), durable_seq);
            let survivors = replay(&DataDir::new(dir.path()).journal());
            let before: Vec<Ack> = acks.iter().filter(|a| a.generation < generation).cloned().collect();
            let mut streamed = trade_sessions.clone();
            streamed.iter_mut().for_each(|s| s.retain(|(t, _, _)| survivors.trades.contains_key(t)));
            check_data_dir(dir.path(), &before, &streamed);
            kept_after_cut += before.len();
            // Answers after that report may be lost with the cut: they
            // are not checked again.
            *shared.acks.lock().unwrap() = before;
            *sessions.lock().unwrap() = streamed;
        }
        println!(
            "cycle {cycle}: killed at sequence {} ({} acknowledged answers, {} trades so far{})",
            clean.engine.last_seq(),
            acks.len(),
            clean.trades.len(),
            if power_cut {
                format!("; power cut at sequence {cut_at} (reported durable: {durable_seq})")
            } else {
                String::new()
            }
        );
        exchange = Exchange::start(dir.path(), &settings);
        if database.is_some() {
            wait_for_database(&exchange);
        }
        let acks = shared.acks.lock().unwrap().clone();
        let clean = replay(&DataDir::new(dir.path()).journal());
        check_live_reads(&exchange, &all_keys, &acks, &clean);
        *shared.address.write().unwrap() = Some(exchange.address);
        *ws_address.write().unwrap() = Some(exchange.ws_address);
    }
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    if database.is_some() {
        wait_for_database(&exchange);
    }
    // The live server agrees with a replay of its journal.
    let status = exchange.terminate();
    assert!(status.success(), "a clean stop after the crash loop: {status:?}");
    let acks = shared.acks.lock().unwrap().clone();
    let clean = check_data_dir(dir.path(), &acks, &sessions.lock().unwrap());
    if let Some(database) = database {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (trades, orders): (Vec<i64>, i64) = runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let trades = client.query("SELECT trade_id FROM trades ORDER BY trade_id", &[]).await.unwrap();
            let orders = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap();
            (trades.iter().map(|row| row.get(0)).collect(), orders.get(0))
        });
        let replayed: Vec<i64> = clean.trades.keys().map(|id| *id as i64).collect();
        assert_eq!(trades, replayed, "the database holds exactly the journal's trades, once each");
        assert_eq!(orders as usize, clean.accepted.len(), "and exactly its orders");
        println!("the database converged: {} trades, {orders} orders", trades.len());
    }
    let placed = acks.iter().filter(|a| a.action == "place" || a.action == "market").count();
    assert!(placed > 0 && !clean.trades.is_empty(), "the workload traded");
    println!(
        "{cycles} SIGKILL cycles in {:.1} s: {} answers checked ({placed} orders), {} trades, {} WebSocket sessions{}",
        started.elapsed().as_secs_f64(),
        acks.len(),
        clean.trades.len(),
        sessions.lock().unwrap().len(),
        if power_cut { format!(", {kept_after_cut} answers checked against power cuts") } else { String::new() }
    );
}

/// Waits until the history writer has caught up with the journal.
fn wait_for_database(exchange: &Exchange) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, health) = exchange.get("/health");
        if health["database"]["lag_seq"] == 0 && health["database"]["connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the database never caught up: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    run("none", false, None);
}

#[test]
fn power_cuts_under_the_batch_policy_lose_nothing_acknowledged() {
    run("batch", true, None);
}

#[test]
fn with_postgresql_the_database_converges_after_every_kill() {
    let database = Database::throwaway().expect("a database");
    run("batch", false, Some(&database));
}
