//! The exchange with PostgreSQL: killed with SIGKILL while it trades and
//! writes, restarted, and the tables converge to the journal exactly; the
//! history endpoints answer from the database.

mod compat;
mod server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{Engine, EngineLimits, Event, UserId};
use journal::{JournalReader, ReadMode};
use persistence::cluster::Database;
use persistence::scale::Amount;
use persistence::{Balances, Catalog, RowSet, Stamp};
use serde_json::{json, Value};
use server::{Client, Exchange, Key};
use tokio_postgres::NoTls;

/// Places crossing orders of several users, counting them in `placed`.
/// Panics (in the client) when the server is gone.
fn trade(client: &Client, keys: &[Key], count: usize, seed: u64, placed: &AtomicUsize) {
    for i in 0..count {
        let key = &keys[(i + seed as usize) % keys.len()];
        let side = if (i / 3 + seed as usize).is_multiple_of(2) { "buy" } else { "sell" };
        let price = format!("{}.{:02}", 30_000 + (i % 7), i % 100);
        let market = if i % 5 == 0 { "ETH-USDT" } else { "BTC-USDT" };
        let (status, _) = client.place(
            key,
            json!({ "market": market, "side": side, "type": "limit", "price": price, "quantity": "0.0007",
                    "time_in_force": if i % 4 == 0 { "IOC" } else { "GTC" } }),
        );
        assert_eq!(status, 200);
        placed.fetch_add(1, Ordering::Relaxed);
    }
}

fn health(exchange: &Exchange) -> Value {
    exchange.get("/health").1
}

/// Waits until the database holds every command the exchange has.
fn wait_until_written(exchange: &Exchange) -> u64 {
    let started = Instant::now();
    loop {
        let health = health(exchange);
        let seq = health["seq"].as_u64().unwrap_or(0);
        if health["database"]["written_seq"].as_u64() == Some(seq) && health["database"]["lag_seq"] == 0 {
            return seq;
        }
        // A liveness bound, not a speed assertion.
        assert!(started.elapsed() < Duration::from_secs(120), "the database did not catch up: {health}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The journal replayed from its first record: every command's events.
fn replay_journal(journal_dir: &std::path::Path) -> (Engine, Vec<Event>, Vec<Stamp>) {
    let mut engine = Engine::new(EngineLimits::default());
    let mut reader = JournalReader::open(journal_dir, 1, ReadMode::Strict).expect("open the journal");
    let mut events = Vec::new();
    let mut stamps = Vec::new();
    while let Some(command) = reader.next().expect("read the journal") {
        engine.apply(&command, &mut events).expect("in order");
        stamps.push(Stamp { seq: command.seq, timestamp_ns: command.timestamp_ns });
    }
    (engine, events, stamps)
}

#[test]
fn after_sigkill_and_restart_the_tables_converge_to_the_journal() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let env = [("DATABASE_URL", database.url.as_str()), ("EXCHANGE_SNAPSHOT_EVERY_COMMANDS", "150")];
    let exchange = Exchange::start(data.path(), &env);
    let keys = exchange.demo(4);
    let placed = Arc::new(AtomicUsize::new(0));
    trade(&exchange.client, &keys, 300, 0, &placed);

    // Kill it while a client is trading (the client's next request fails).
    let address = exchange.address;
    let flood_keys = keys.clone();
    let flood_placed = Arc::clone(&placed);
    let flood = std::thread::spawn(move || {
        let _ =
            std::panic::catch_unwind(|| trade(&Client::new(address), &flood_keys, 5_000, 1, &flood_placed));
    });
    std::thread::sleep(Duration::from_millis(400));
    let exchange = exchange.crash_and_restart();
    let _ = flood.join();
    assert!(placed.load(Ordering::Relaxed) > 300, "orders were placed while the exchange was killed");
    trade(&exchange.client, &keys, 200, 2, &placed);
    let seq = wait_until_written(&exchange);

    // History endpoints answer from the database.
    let (status, trades) = exchange.get("/trade/history?market=BTC-USDT&from_id=1&limit=1000");
    assert_eq!(status, 200, "{trades}");
    let market_trades = trades["trades"].as_array().expect("trades").len();
    assert!(market_trades > 0);
    let (status, mine) = exchange.signed(&keys[0], "GET", "/user/trades", "limit=1000&from_id=1", None);
    assert_eq!(status, 200, "{mine}");
    let (status, orders) = exchange.signed(&keys[0], "GET", "/orders/history", "limit=1000&from_id=1", None);
    assert_eq!(status, 200, "{orders}");
    assert!(orders["orders"].as_array().is_some_and(|o| !o.is_empty()));
    let (status, candles) = exchange.get("/candles?market=BTC-USDT&interval=1h");
    assert_eq!(status, 200, "{candles}");
    let candle_trades: i64 = candles["candles"]
        .as_array()
        .expect("candles")
        .iter()
        .map(|c| c["trades"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(candle_trades as usize, market_trades, "candles count every trade of the market");
    let (status, error) = exchange.get("/candles?market=BTC-USDT&interval=7m");
    assert_eq!(status, 400, "{error}");
    assert_eq!(exchange.terminate().code(), Some(0));

    // The tables equal what a replay of the journal produces.
    let (engine, events, stamps) = replay_journal(&data.path().join("journal"));
    assert_eq!(engine.last_seq(), seq);
    let mut expected = RowSet::new();
    expected
        .add(&events, &stamps, &mut Catalog::default(), &mut Balances::new())
        .expect("rows from the journal");
    assert!(expected.trades.len() > 50, "the session traded ({} trades)", expected.trades.len());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&database.url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        let cursor: i64 = client.query_one("SELECT last_seq FROM writer_cursor", &[]).await.expect("cursor").get(0);
        assert_eq!(cursor as u64, seq);
        let rows = client
            .query("SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, maker_order_id, maker_user_id, taker_order_id, taker_user_id, maker_fee, maker_fee_asset_id, taker_fee, taker_fee_asset_id, executed_at FROM trades ORDER BY trade_id", &[])
            .await
            .expect("trades");
        let actual: Vec<String> =
            rows.iter().map(|r| format!("{:?}", persistence::trade_row(r).expect("a trade row"))).collect();
        let expected_trades: Vec<String> = expected.trades.iter().map(|t| format!("{t:?}")).collect();
        assert_eq!(actual.len(), expected_trades.len(), "same number of trades: none missing, none twice");
        for (actual, expected) in actual.iter().zip(&expected_trades) {
            assert_eq!(actual, expected);
        }
        let ledger: i64 = client.query_one("SELECT count(*) FROM ledger", &[]).await.expect("ledger").get(0);
        assert_eq!(ledger as usize, expected.ledger.len());
        let orders: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.expect("orders").get(0);
        assert_eq!(orders as usize, expected.orders.len());
        // Final balances as a replay of the journal reports them.
        let rows = client
            .query("SELECT b.user_id, b.asset_id, b.available, b.locked, a.decimals FROM balances b JOIN assets a USING (asset_id)", &[])
            .await
            .expect("balances");
        assert_eq!(rows.len(), keys.len() * 3);
        for row in rows {
            let user = UserId(row.get::<_, i32>(0) as u32);
            let asset = engine_core::AssetId(row.get::<_, i32>(1) as u32);
            let decimals = row.get::<_, i16>(4) as u8;
            let balance = engine.balance(user, asset);
            assert_eq!(row.get::<_, Amount>(2), Amount(persistence::scale::units(balance.available, decimals)));
            assert_eq!(row.get::<_, Amount>(3), Amount(persistence::scale::units(balance.locked, decimals)));
        }
    });
}

#[test]
fn without_a_database_the_history_endpoints_say_so() {
    let data = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::start(data.path(), &[]);
    let keys = exchange.demo(1);
    let (status, body) = exchange.get("/candles?market=BTC-USDT");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_database")), "{body}");
    let (status, body) = exchange.get("/trade/history?market=BTC-USDT&from=0");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_database")), "{body}");
    let (status, body) = exchange.signed(&keys[0], "GET", "/orders/history", "", None);
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_database")), "{body}");
    // Bad input is refused as such, before any database is asked.
    for (target, status, code) in [
        ("/candles?market=BTC-USDT&interval=7m", 400, "invalid_parameter"),
        ("/candles?market=NOPE-USDT", 404, "unknown_market"),
        ("/candles?interval=1m", 400, "missing_parameter"),
        ("/trade/history?market=BTC-USDT&limit=0&from=0", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&limit=1001&from=0", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&from=abc", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&from=-1", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&from=99999999999999999999999", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&from=10&to=5", 400, "invalid_parameter"),
        ("/trade/history?market=BTC-USDT&from_id=1.5", 400, "invalid_parameter"),
    ] {
        let (actual, body) = exchange.get(target);
        assert_eq!((actual, body["error"]["code"].as_str()), (status, Some(code)), "{target}: {body}");
    }
    let (status, body) = exchange.signed(&keys[0], "GET", "/user/trades", "market=NOPE-USDT", None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_market")), "{body}");
    let (status, _) = exchange.get("/orders/history");
    assert_eq!(status, 401, "history of a user needs a signature");
    // Recent trades still come from memory.
    let (status, _) = exchange.get("/trade/history?market=BTC-USDT");
    assert_eq!(status, 200);
    assert!(health(&exchange)["database"].is_null());
}

/// Runs `sql` as the database's owner.
fn admin_sql(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    });
}

/// Waits until `/health` satisfies `done` (a liveness bound, not a speed
/// assertion) and returns it.
fn wait_for_health(exchange: &Exchange, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let health = health(exchange);
        if done(&health) {
            return health;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what}: {health}\n{}", exchange.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Attempts the documented backoff allows within `window` after a failure:
/// waits of 100 ms doubling up to 5 s.
fn attempts_allowed(window: Duration) -> u64 {
    let (mut wait, mut elapsed, mut attempts) = (Duration::from_millis(100), Duration::ZERO, 1);
    while elapsed + wait <= window {
        elapsed += wait;
        wait = (wait * 2).min(Duration::from_secs(5));
        attempts += 1;
    }
    attempts
}

#[test]
fn a_table_dropped_under_load_backs_off_and_health_tells_the_truth() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
        ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
    ];
    let exchange = Exchange::start(data.path(), &env);
    let keys = exchange.demo(4);
    wait_until_written(&exchange);

    // Load: orders keep coming for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let placed = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, placed, keys, address) =
            (Arc::clone(&stop), Arc::clone(&placed), keys.clone(), exchange.address);
        std::thread::spawn(move || {
            let client = Client::new(address);
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                trade(&client, &keys, 5, round, &placed);
                round += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let admin = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&database.url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    });
    // Sessions opened on this database so far, as the server counts them.
    let sessions = || -> i64 {
        runtime.block_on(async {
            admin
                .query_one("SELECT sessions FROM pg_stat_database WHERE datname = current_database()", &[])
                .await
                .expect("sessions")
                .get(0)
        })
    };
    // The writer's every transaction writes ledger rows: without the table
    // each one fails after a good connection.
    runtime.block_on(admin.batch_execute("ALTER TABLE ledger RENAME TO ledger_away")).expect("rename");
    wait_for_health(&exchange, "the writer reports the missing table", |h| {
        h["database"]["last_error"].as_str().is_some_and(|e| e.contains("ledger"))
    });

    let window = Duration::from_secs(10);
    let sessions_before = sessions();
    let log_before = exchange.stderr().len();
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < window {
        let health = health(&exchange);
        let database = &health["database"];
        assert_eq!(database["connected"], false, "a writer that cannot write is not connected: {health}");
        assert!(
            database["last_error"].as_str().is_some_and(|e| e.contains("relation \"ledger\" does not exist")),
            "the error stays reported until a write succeeds: {health}"
        );
        assert_eq!(health["status"], "degraded", "{health}");
        assert!(
            health["reason"].as_str().is_some_and(|r| r.contains("failing") && r.contains("ledger")),
            "{health}"
        );
        assert!(database["failed_attempts"].as_u64().is_some_and(|n| n >= 1), "{health}");
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = (sessions() - sessions_before) as u64;
    let log = exchange.stderr()[log_before..].to_string();
    let log_lines = log.lines().filter(|l| l.contains("database writer")).count();
    println!(
        "{samples} /health samples over {window:?}: all degraded; {attempts} sessions opened; {log_lines} log lines"
    );
    // Slack of 2 for our own session and one counted late.
    let allowed = attempts_allowed(window) + 2;
    assert!(attempts <= allowed, "{attempts} attempts in {window:?}; the backoff allows {allowed}\n{log}");
    // The same error over and over: at most one summary per 10 s, plus a
    // line for an attempt that straddles the window's start.
    assert!(log_lines <= 3, "repeated errors are summarised, not logged per attempt:\n{log}");

    // The table is back: the writer catches up, and says so.
    runtime.block_on(admin.batch_execute("ALTER TABLE ledger_away RENAME TO ledger")).expect("rename back");
    let healthy = wait_for_health(&exchange, "the writer recovers", |h| {
        h["status"] == "ok" && h["database"]["connected"] == true && h["database"]["last_error"].is_null()
    });
    assert_eq!(healthy["database"]["failed_attempts"], 0, "{healthy}");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread");
    let seq = wait_until_written(&exchange);
    assert!(exchange.stderr().contains("writing again after"), "{}", exchange.stderr());
    let cursor: i64 =
        runtime.block_on(admin.query_one("SELECT last_seq FROM writer_cursor", &[])).expect("cursor").get(0);
    assert_eq!(cursor as u64, seq, "nothing lost while the table was away");
    let log = exchange.stderr();
    let writer_log: Vec<&str> = log.lines().filter(|l| l.contains("database writer")).collect();
    println!("the writer's log:\n{}", writer_log.join("\n"));
    assert!(placed.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_role_without_rights_reports_permission_denied() {
    let database = Database::throwaway().expect("a database");
    let role = format!("exchange_no_rights_{}", std::process::id());
    // PostgreSQL 15 gives PUBLIC no CREATE on the schema; older ones do.
    admin_sql(
        &database.url,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'no-rights-pw'; REVOKE CREATE ON SCHEMA public FROM PUBLIC"
        ),
    );
    let data = tempfile::tempdir().expect("tempdir");
    let url = database.url_as(&role, "no-rights-pw");
    let exchange = Exchange::start(data.path(), &[("DATABASE_URL", url.as_str())]);
    let health =
        wait_for_health(&exchange, "the migration fails", |h| !h["database"]["last_error"].is_null());
    println!("{health}");
    let error = health["database"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("permission denied") && error.contains("42501"), "{health}");
    assert_eq!(health["database"]["connected"], false, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reason"].as_str().is_some_and(|r| r.contains("permission denied")), "{health}");
    // Trading goes on without the history database.
    let keys = exchange.demo(1);
    let (status, answer) = exchange.place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "10", "quantity": "0.1" }),
    );
    assert_eq!(status, 200, "{answer}");
    let log = exchange.stderr();
    assert!(log.contains("permission denied for schema public"), "{log}");
    assert_eq!(exchange.terminate().code(), Some(0));
    admin_sql(&database.url, &format!("DROP ROLE {role}"));
}

#[test]
fn an_unparseable_database_url_is_a_configuration_error_at_start() {
    for url in [
        "postgres://exchange:hunter2@127.0.0.1:notaport/exchange",
        // An unquoted space in a password: its second half reads as an option.
        "host=127.0.0.1 user=exchange password=hunter twopart=1",
    ] {
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
            .env("EXCHANGE_DATA_DIR", data.path())
            .env("EXCHANGE_LISTEN", "127.0.0.1:0")
            .env("EXCHANGE_WS_LISTEN", "127.0.0.1:0")
            .env_remove("EXCHANGE_DATABASE_URL")
            .env("DATABASE_URL", url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the exchange binary starts");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the exchange kept running with the unparseable DATABASE_URL {url:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
        assert_eq!(status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("configuration") && stderr.contains("database_url"), "{url}: {stderr}");
        assert!(
            !stderr.contains("hunter") && !stderr.contains("twopart"),
            "the password is not echoed: {stderr}"
        );
    }
}

#[test]
fn before_the_first_connection_the_lag_is_unknown_not_since_1970() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("port").port();
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let data = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let exchange = Exchange::start(data.path(), &[("DATABASE_URL", url.as_str())]);
    // Commands after the start, so that the exchange's time is known.
    exchange.demo(1);
    let health =
        wait_for_health(&exchange, "the connection fails", |h| !h["database"]["last_error"].is_null());
    std::thread::sleep(Duration::from_secs(3));
    let health_later = exchange.get("/health").1;
    for health in [&health, &health_later] {
        let database = &health["database"];
        assert!(database["lag_ms"].is_null(), "lag is unknown, not the time since 1970: {health}");
        assert!(database["lag_seq"].is_null(), "lag is unknown, not the whole journal: {health}");
        assert!(database["written_seq"].is_null(), "{health}");
        assert!(database["lag_unknown"].as_str().is_some_and(|r| r.contains("cursor")), "{health}");
        assert_eq!(database["connected"], false, "{health}");
        assert_eq!(health["status"], "degraded", "{health}");
        assert!(
            health["reason"].as_str().is_some_and(|r| r.contains("unreachable") && r.contains("refused")),
            "{health}"
        );
    }
    // Several attempts in those seconds, as many as the backoff allows at
    // most, and one line in the log.
    let attempts = health_later["database"]["failed_attempts"].as_u64().unwrap_or(0);
    let allowed = attempts_allowed(started.elapsed());
    assert!((3..=allowed).contains(&attempts), "{attempts} attempts, {allowed} allowed: {health_later}");
    let log = exchange.stderr();
    assert_eq!(log.matches("Connection refused").count(), 1, "{log}");
}

/// A trade a user made with themself (self-trade prevention off) is two
/// rows of their history, the buyer's and the seller's, each with its own
/// order and fee, from the database too: with no closed order kept in
/// memory, `myTrades` and `allOrders` read the database alone. `limit`
/// counts rows.
#[test]
fn a_self_trade_is_both_sides_in_the_database_history() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let env = [("DATABASE_URL", database.url.as_str()), ("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "0")];
    let exchange = Exchange::start(data.path(), &env);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let mut orders = Vec::new();
    for side in ["sell", "buy"] {
        let (status, order) = exchange.place(
            alice,
            json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": "50000",
                    "quantity": "0.1", "self_trade_prevention": "allow" }),
        );
        assert_eq!(status, 200, "{order}");
        orders.push(order["order_id"].as_u64().unwrap());
    }
    let exchange = exchange.crash_and_restart();
    wait_until_written(&exchange);

    let (status, body) = exchange.signed(alice, "GET", "/user/trades", "market=BTC-USDT", None);
    assert_eq!(status, 200, "{body}");
    let rows = body["trades"].as_array().unwrap();
    let sides: Vec<(u64, &str, bool, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["order_id"].as_u64().unwrap(),
                r["side"].as_str().unwrap(),
                r["maker"].as_bool().unwrap(),
                r["fee"].as_str().unwrap(),
                r["fee_asset"].as_str().unwrap(),
            )
        })
        .collect();
    // Newest first: the buyer's row has the later order id.
    assert_eq!(
        sides,
        vec![(orders[1], "buy", false, "0.0002", "BTC"), (orders[0], "sell", true, "5", "USDT")],
        "{body}"
    );
    assert_eq!(rows[0]["trade_id"], rows[1]["trade_id"]);
    let (_, one) = exchange.signed(alice, "GET", "/user/trades", "market=BTC-USDT&limit=1", None);
    assert_eq!(one["trades"].as_array().map(Vec::len), Some(1), "limit counts rows: {one}");

    // Binance's myTrades, signed as Binance clients sign it.
    let query = format!(
        "symbol=BTCUSDT&timestamp={}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let (status, mine) = exchange.signed_raw(alice, "GET", "/api/v3/myTrades", &query, None);
    assert_eq!(status, 200, "{mine}");
    let mine: Vec<(u64, bool, bool, &str, &str)> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["orderId"].as_u64().unwrap(),
                r["isBuyer"].as_bool().unwrap(),
                r["isMaker"].as_bool().unwrap(),
                r["commission"].as_str().unwrap(),
                r["commissionAsset"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mine,
        vec![(orders[0], false, true, "5.00000000", "USDT"), (orders[1], true, false, "0.00020000", "BTC")]
    );

    // allOrders: the closed orders are the database's alone.
    let query = format!(
        "symbol=BTCUSDT&timestamp={}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let (status, all) = exchange.signed_raw(alice, "GET", "/api/v3/allOrders", &query, None);
    assert_eq!(status, 200, "{all}");
    let all: Vec<(u64, &str, &str, &str, &str, &str, bool)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["orderId"].as_u64().unwrap(),
                o["side"].as_str().unwrap(),
                o["type"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
                o["executedQty"].as_str().unwrap(),
                o["selfTradePreventionMode"].as_str().unwrap(),
                o["isWorking"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        all,
        vec![
            (orders[0], "SELL", "LIMIT", "FILLED", "0.10000000", "NONE", false),
            (orders[1], "BUY", "LIMIT", "FILLED", "0.10000000", "NONE", false),
        ]
    );
}

#[test]
fn trade_history_has_one_shape_from_memory_and_from_the_database() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    // The views keep 5 trades: a page past them comes from PostgreSQL.
    let env = [("DATABASE_URL", database.url.as_str()), ("EXCHANGE_RECENT_TRADES_MAX", "5")];
    let exchange = Exchange::start(data.path(), &env);
    let keys = exchange.demo(2);
    for i in 0..12 {
        let price = format!("{}.5", 30_000 + i);
        let sell = json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": price, "quantity": "0.0100" });
        assert_eq!(exchange.place(&keys[0], sell).0, 200);
        let buy = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": price, "quantity": "0.01" });
        assert_eq!(exchange.place(&keys[1], buy).0, 200);
    }
    wait_until_written(&exchange);

    let page = |target: &str| {
        let (status, body) = exchange.get(target);
        assert_eq!(status, 200, "{target}: {body}");
        body["trades"].as_array().expect("trades").clone()
    };
    // From memory (5 trades asked, 5 kept) and from the database (6 asked):
    // the same trades, field for field, digit for digit.
    let memory = page("/trade/history?market=BTC-USDT&limit=5");
    let stored = page("/trade/history?market=BTC-USDT&limit=6");
    assert_eq!(memory.len(), 5);
    assert_eq!(stored.len(), 6);
    assert_eq!(memory[..], stored[..5], "one shape with and without the database");
    assert_eq!(memory[0]["price"], "30011.5");
    assert_eq!(memory[0]["quantity"], "0.01");
    assert_eq!(memory[0]["quote_quantity"], "300.115");
    // `offset` pages on into the database, newest first.
    let older = page("/trade/history?market=BTC-USDT&limit=5&offset=5");
    let ids = |trades: &[Value]| trades.iter().map(|t| t["trade_id"].as_u64().unwrap()).collect::<Vec<_>>();
    let first = ids(&memory);
    assert_eq!(ids(&older), (first[4] - 5..first[4]).rev().collect::<Vec<_>>());
    let (status, body) = exchange.get("/trade/history?market=BTC-USDT&offset=100001");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{body}");
    let (status, body) = exchange.get("/candles?market=BTC-USDT&offset=1");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{body}");
}

#[test]
fn klines_older_than_the_views_day_come_from_the_database() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::start(data.path(), &[("DATABASE_URL", database.url.as_str())]);
    let keys = exchange.demo(2);
    let sell = json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "30000", "quantity": "0.01" });
    assert_eq!(exchange.place(&keys[0], sell).0, 200);
    let buy =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "30000", "quantity": "0.01" });
    assert_eq!(exchange.place(&keys[1], buy).0, 200);
    wait_until_written(&exchange);

    // Three days ago, as the writer would have stored it then: two minutes
    // of one hour.
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let hour_ms = 3_600_000;
    let old_hour_ms = (now_ms - 3 * 24 * hour_ms) / hour_ms * hour_ms;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&database.url, NoTls).await.unwrap();
        tokio::spawn(connection);
        for (minute, open, high, low, close, volume, quote, bought, bought_quote) in [
            (5u64, "25000", "25100", "24900", "25050", "0.5", "12525", "0.5", "12525"),
            (40, "25050", "25200", "25000", "25150.5", "0.25", "6287.625", "0", "0"),
        ] {
            let sql = format!(
                "INSERT INTO candles_1m (market_id, open_time, open, high, low, close, volume, quote_volume, trades, \
                 first_trade_id, last_trade_id, taker_buy_volume, taker_buy_quote_volume) VALUES (0, \
                 to_timestamp({}), {open}, {high}, {low}, {close}, {volume}, {quote}, 3, 0, 0, {bought}, {bought_quote})",
                (old_hour_ms + minute * 60_000) / 1_000
            );
            client.execute(sql.as_str(), &[]).await.unwrap();
        }
        // The writer's taker-buy volumes are what migration V4 derives from
        // the trades table for candles written before it.
        let migration = include_str!("../../migrations/V4__candles_taker_buy.sql");
        let derived = &migration[migration.find("SELECT market_id").unwrap()..migration.find(") AS t").unwrap()];
        let sql = format!(
            "SELECT c.taker_buy_volume::text, c.taker_buy_quote_volume::text, t.volume::text, t.quote_volume::text \
             FROM candles_1m c JOIN ({derived}) t ON c.market_id = t.market_id AND c.open_time = t.minute"
        );
        let rows = client.query(sql.as_str(), &[]).await.unwrap();
        assert_eq!(rows.len(), 1, "today's one minute with a taker buying");
        let numbers: Vec<f64> = (0..4).map(|i| rows[0].get::<_, String>(i).parse().unwrap()).collect();
        assert_eq!((numbers[0], numbers[1]), (numbers[2], numbers[3]), "{numbers:?}");
        assert_eq!((numbers[0], numbers[1]), (0.01, 300.0), "{numbers:?}");
    });
    let (status, _, klines) = exchange.raw(
        "GET",
        &format!("/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={}&limit=1000", old_hour_ms - hour_ms),
        &[],
        b"",
    );
    assert_eq!(status, 200, "{klines}");
    let klines = klines.as_array().unwrap();
    assert_eq!(klines.len(), 2, "the stored hour and today's from the views: {klines:?}");
    assert_eq!(
        klines[0],
        json!([
            old_hour_ms,
            "25000.00000000",
            "25200.00000000",
            "24900.00000000",
            "25150.50000000",
            "0.75000000",
            old_hour_ms + hour_ms - 1,
            "18812.62500000",
            6,
            "0.50000000",
            "12525.00000000",
            "0"
        ])
    );
    assert_eq!((klines[1][1].as_str(), klines[1][5].as_str()), (Some("30000.00000000"), Some("0.01000000")));

    // ccxt's fetch_ohlcv, unmodified, reads the same through `since`.
    let script = format!(
        "import ccxt\n\
         x = ccxt.binance()\n\
         x.urls['api']['public'] = 'http://{address}/api/v3'\n\
         x.options['fetchMarkets'] = {{'types': ['spot']}}\n\
         x.options['fetchCurrencies'] = False\n\
         rows = x.fetch_ohlcv('BTC/USDT', '1h', since={since}, limit=1000)\n\
         assert len(rows) == 2, rows\n\
         assert rows[0][0] == {old_hour_ms} and rows[0][4] == 25150.5 and rows[0][5] == 0.75, rows[0]\n\
         raw = x.publicGetKlines({{'symbol': 'BTCUSDT', 'interval': '1h', 'startTime': {since}}})\n\
         assert raw[0][9] == '0.50000000', raw[0]\n\
         print('ok', rows)\n",
        address = exchange.address,
        since = old_hour_ms - hour_ms,
    );
    let output = std::process::Command::new(compat::python()).arg("-c").arg(&script).output().unwrap();
    assert!(
        output.status.success(),
        "ccxt fetch_ohlcv: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops, icebergs and lists as the history database keeps them: in
/// `/orders/history` with their trigger, shown part, list and end, and in
/// `GET /order` from the database once the views keep no closed order
/// (`closed_orders_kept_per_user` 0), with their kind rebuilt.
#[test]
fn stops_icebergs_and_lists_in_the_history_and_from_the_database() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let env = [("DATABASE_URL", database.url.as_str()), ("EXCHANGE_CLOSED_ORDERS_KEPT_PER_USER", "0")];
    let exchange = Exchange::start(data.path(), &env);
    let keys = exchange.demo(3);
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    let limit = |side: &str, price: &str, quantity: &str| json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": quantity });
    let placed = |key: &Key, body: Value| {
        let (status, answer) = exchange.place(key, body.clone());
        assert_eq!(status, 200, "{body}: {answer}");
        answer
    };
    placed(bob, limit("sell", "50000", "0.001"));
    placed(carol, limit("buy", "50000", "0.001"));
    let stop = placed(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "stop_limit", "price": "48900", "quantity": "0.01",
                "trigger": { "kind": "stop_loss", "stop_price": "49000", "trailing_bips": 50 } }),
    );
    let iceberg = placed(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "iceberg", "price": "55000", "quantity": "0.1",
                "visible_quantity": "0.01" }),
    );
    let (status, oco) = exchange.signed(
        alice,
        "POST",
        "/order_list",
        "",
        Some(json!({
            "market": "BTC-USDT", "contingency": "oco",
            "orders": [
                { "side": "sell", "type": "limit", "time_in_force": "POST_ONLY", "price": "52000", "quantity": "0.01" },
                { "side": "sell", "type": "stop_market", "quantity": "0.01",
                  "trigger": { "kind": "stop_loss", "stop_price": "47000" } },
            ],
        })),
    );
    assert_eq!(status, 200, "{oco}");
    let list_id = oco["list_id"].as_u64().unwrap();
    let (maker_leg, stop_leg) =
        (oco["orders"][0]["order_id"].as_u64().unwrap(), oco["orders"][1]["order_id"].as_u64().unwrap());
    // The maker leg trades: the stop leg ends by its list.
    placed(bob, limit("buy", "52000", "0.01"));
    // 48,950 reaches the stop price: the tracking starts there; 48,700 is
    // more than 0.5% below: the trailing stop-limit fires and rests at
    // 48,900, where Carol buys it.
    placed(bob, limit("sell", "48950", "0.001"));
    placed(carol, limit("buy", "48950", "0.001"));
    placed(bob, limit("sell", "48700", "0.001"));
    placed(carol, limit("buy", "48700", "0.001"));
    placed(carol, limit("buy", "48900", "0.01"));
    wait_until_written(&exchange);

    let (status, history) = exchange.signed(alice, "GET", "/orders/history", "limit=100&from_id=1", None);
    assert_eq!(status, 200, "{history}");
    let orders = history["orders"].as_array().unwrap();
    let find =
        |id: u64| orders.iter().find(|o| o["order_id"] == id).unwrap_or_else(|| panic!("{id} in {history}"));
    let stop_row = find(stop["order_id"].as_u64().unwrap());
    assert_eq!(stop_row["type"], "stop_limit");
    assert_eq!(
        stop_row["trigger"],
        json!({ "kind": "stop_loss", "stop_price": "49000", "trailing_bips": 50 })
    );
    assert!(stop_row["triggered_at_ns"].as_u64().is_some(), "{stop_row}");
    assert_eq!(stop_row["trigger_price"], "48700", "{stop_row}");
    assert_eq!(stop_row["status"], "filled", "{stop_row}");
    let iceberg_row = find(iceberg["order_id"].as_u64().unwrap());
    assert_eq!(
        (iceberg_row["type"].as_str(), iceberg_row["visible_quantity"].as_str()),
        (Some("iceberg"), Some("0.01"))
    );
    assert_eq!(find(maker_leg)["list_id"], list_id);
    assert_eq!(
        (find(stop_leg)["status"].as_str(), find(stop_leg)["list_id"].as_u64()),
        (Some("expired_contingent"), Some(list_id))
    );

    // Closed orders come from the database: their kind is rebuilt.
    let (status, from_database) =
        exchange.signed(alice, "GET", "/order", &format!("order_id={}", stop["order_id"]), None);
    assert_eq!(status, 200, "{from_database}");
    assert_eq!(from_database["type"], "stop_limit", "{from_database}");
    assert_eq!(from_database["trigger"], stop_row["trigger"], "{from_database}");
    assert_eq!(from_database["filled_quantity"], "0.01", "{from_database}");
    let (_, leg) = exchange.signed(alice, "GET", "/order", &format!("order_id={stop_leg}"), None);
    assert_eq!(
        (leg["type"].as_str(), leg["remaining_quantity"].as_str()),
        (Some("stop_market"), Some("0")),
        "{leg}"
    );

    let client =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let (client, connection) = tokio_postgres::connect(&database.url, NoTls).await.expect("connect");
            tokio::spawn(connection);
            client
                .query_one(
                    "SELECT contingency, status, order_ids FROM order_lists WHERE list_id = $1",
                    &[&(list_id as i64)],
                )
                .await
                .expect("the list")
        });
    let (contingency, status, ids): (String, String, Vec<i64>) =
        (client.get(0), client.get(1), client.get(2));
    assert_eq!(
        (contingency.as_str(), status.as_str(), ids),
        ("oco", "done", vec![maker_leg as i64, stop_leg as i64])
    );
}

/// Counts of the history tables, to see that a refused request wrote nothing.
fn footprint(url: &str) -> Vec<i64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        let mut counts = Vec::new();
        for table in ["seeded_from", "orders", "trades", "ledger", "balances", "users"] {
            let row = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect(table);
            counts.push(row.get(0));
        }
        counts
    })
}

#[test]
fn a_seeding_request_with_bad_input_or_for_a_whole_history_is_refused_and_writes_nothing() {
    let database = Database::throwaway().expect("a database");
    let data = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::start(data.path(), &[("DATABASE_URL", database.url.as_str())]);
    let keys = exchange.demo(2);
    trade(&exchange.client, &keys, 20, 0, &AtomicUsize::new(0));
    let written = wait_until_written(&exchange);
    let before = footprint(&database.url);

    let seed = |body: &[u8]| {
        let (status, _, answer) = exchange.raw(
            "POST",
            "/admin/database/seed",
            &[("X-Admin-Token", server::ADMIN_TOKEN), ("Content-Type", "application/json")],
            body,
        );
        (status, answer["error"]["code"].as_str().unwrap_or_default().to_string(), answer)
    };
    let too_long = json!({ "reason": "x".repeat(501) }).to_string();
    for (body, code) in [
        (&b"reason=because"[..], "invalid_json"),
        (b"", "invalid_json"),
        (b"[\"because\"]", "invalid_json"),
        (b"{}", "invalid_json"),
        (b"{\"reason\": 5}", "invalid_json"),
        (b"{\"reason\": null}", "invalid_json"),
        (b"{\"reason\": \"because\", \"force\": true}", "invalid_json"),
        (b"{\"reason\": \"because\"", "invalid_json"),
        (b"{\"reason\": \"   \"}", "invalid_parameter"),
        (too_long.as_bytes(), "invalid_parameter"),
    ] {
        let (status, actual, answer) = seed(body);
        assert_eq!((status, actual.as_str()), (400, code), "{}: {answer}", String::from_utf8_lossy(body));
    }
    // Without the admin token: refused before the body is read.
    let (status, _, answer) = exchange.raw("POST", "/admin/database/seed", &[], b"{\"reason\": \"because\"}");
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("invalid_admin_token")), "{answer}");
    // A well-formed request for a database this node feeds from its own
    // journal (the whole history): refused, with the way out.
    let (status, code, answer) = seed(b"{\"reason\": \"the auditors asked\"}");
    assert_eq!((status, code.as_str()), (409, "seed_refused"), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("nothing to seed"), "{answer}");

    // Nothing was written, the writer still feeds, the history is whole.
    assert_eq!(footprint(&database.url), before, "a refused seeding changed the database");
    trade(&exchange.client, &keys, 4, 1, &AtomicUsize::new(0));
    assert!(wait_until_written(&exchange) > written);
    let health = health(&exchange);
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["database"]["history_starts_after"].is_null(), "{health}");
}
