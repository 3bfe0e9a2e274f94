//! A history database attached to a cluster node after its log was
//! compacted, seeded from the node's snapshot image by the operator
//! (`exctl database seed-from-image`), with real processes and a real
//! PostgreSQL: the refusals, the seeding, and the writer going on after it.

#[path = "server/cluster.rs"]
mod cluster;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cluster::{market_trades, place_some, wait_written, Cluster};
use serde_json::Value;
use server::{balance_of, Client, ADMIN_TOKEN};

/// Images every 20 entries and 5 entries kept behind each.
const SMALL_IMAGES: &str = "snapshot_every_entries = 20\nlog_kept_after_snapshot_entries = 5\n";

/// The real `exctl`, built next to the `exchange` binary under test (the
/// tools crate is not a dependency of this one, so cargo is asked for it;
/// a build that is up to date does nothing).
fn exctl() -> PathBuf {
    let exchange = PathBuf::from(env!("CARGO_BIN_EXE_exchange"));
    let target = exchange.parent().and_then(|profile| profile.parent()).expect("the target directory");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "tools", "--bin", "exctl", "--manifest-path", manifest])
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building exctl failed");
    exchange.with_file_name("exctl")
}

fn seed_with_exctl(exctl: &Path, client: &Client, reason: &str) -> Output {
    Command::new(exctl)
        .args(["database", "seed-from-image", "--reason", reason, "--json", "--server"])
        .arg(format!("http://{}", client.address))
        .env("EXCHANGE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("exctl runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A decimal without trailing zeros (`1.50000000` is `1.5`).
fn plain(decimal: &str) -> String {
    if decimal.contains('.') {
        decimal.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        decimal.to_string()
    }
}

fn wait_health(client: &Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, health) = client.get("/health");
        if done(&health) {
            return health;
        }
        // A liveness bound, not a speed assertion.
        assert!(Instant::now() < deadline, "{what}: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db
}

/// What a seeding must not change: the cursor and every table's row count.
async fn footprint(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in ["writer_cursor", "seeded_from", "users", "orders", "trades", "ledger", "balances"] {
        let sql = if table == "writer_cursor" {
            "SELECT last_seq FROM writer_cursor".to_string()
        } else {
            format!("SELECT count(*) FROM {table}")
        };
        counts.push((table.to_string(), db.query_one(sql.as_str(), &[]).await.unwrap().get(0)));
    }
    counts
}

#[test]
fn a_database_attached_after_the_log_was_compacted_is_seeded_from_the_nodes_image_by_the_operator() {
    use persistence::cluster::Database;
    let exctl = exctl();
    let mut cluster = Cluster::start_configured(3, false, "", SMALL_IMAGES);
    let leader = cluster.leader();
    // One follower feeds a database from the start (its log reaches back to
    // sequence 1); the other gets one only after the log was compacted.
    let feeding = (leader + 1) % 3;
    let seeded = (leader + 2) % 3;
    let feeding_database = Database::throwaway().expect("a database");
    cluster.nodes[feeding].kill();
    cluster.nodes[feeding].start_with_env(&[("DATABASE_URL", feeding_database.url.as_str())]);

    let client = cluster.nodes[leader].client();
    let keys = client.demo(3);
    let mut acked = Vec::new();
    // Orders open at the image and still open at the end, one partly
    // filled before it (away from the prices the rounds trade at).
    for (key, side, price, quantity) in
        [(0, "buy", "50", "0.02"), (2, "sell", "300", "0.05"), (0, "buy", "300", "0.01")]
    {
        let order = serde_json::json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price,
                                        "quantity": quantity, "time_in_force": "GTC" });
        let (status, body) = client.place(&keys[key], order);
        assert_eq!(status, 200, "{body}");
    }
    // Trade until the seeded follower has compacted its log past its start.
    let mut round = 0;
    loop {
        place_some(&client, &keys, round, &mut acked);
        round += 1;
        let health = cluster.nodes[seeded].health().unwrap();
        if round > 12 && health["cluster"]["purged_index"].as_u64().is_some_and(|purged| purged > 10) {
            break;
        }
        assert!(round < 200, "the follower never compacts its log: {health}");
    }

    // A node that can feed its database from its log: nothing to seed.
    wait_written(&cluster, feeding, leader);
    let refused = seed_with_exctl(&exctl, &cluster.nodes[feeding].client(), "a database that needs none");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("seed_refused") && text(&refused).contains("feeds"),
        "{}",
        text(&refused)
    );

    // The database attached now: the writer reports the gap.
    let database = Database::throwaway().expect("a database");
    cluster.nodes[seeded].kill();
    cluster.nodes[seeded].start_with_env(&[("DATABASE_URL", database.url.as_str())]);
    let seeded_client = cluster.nodes[seeded].client();
    let health = wait_health(&seeded_client, "the writer reports no gap", |health| {
        health["database"]["last_error"].as_str().is_some_and(|error| error.contains("committed log"))
    });
    assert_eq!(health["database"]["written_seq"].as_u64(), Some(0), "{health}");

    // The operator seeds it.
    let output = seed_with_exctl(&exctl, &seeded_client, "reporting database attached after compaction");
    assert!(output.status.success(), "{}", text(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("exctl --json prints JSON");
    let image_seq = answer["image_seq"].as_u64().unwrap();
    assert!(image_seq > 0, "{answer}");
    assert_eq!(answer["node_id"].as_u64(), Some(cluster.nodes[seeded].id), "{answer}");

    // The writer goes on from the log after the image, through more trading.
    wait_written(&cluster, seeded, leader);
    for more in 0..8 {
        place_some(&client, &keys, round + more, &mut acked);
    }
    let seq = wait_written(&cluster, seeded, leader);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(connect(&database.url));

    // Balances: every user's and asset's, as the node's API has them, and
    // the ledger's changes add up to each.
    let assets = ["BTC", "USDT", "ETH"];
    for key in &keys {
        let (status, api) = seeded_client.signed(key, "GET", "/balance", "", None);
        assert_eq!(status, 200, "{api}");
        for asset in assets {
            let (available, locked) = balance_of(&api, asset);
            let row = runtime
                .block_on(db.query_opt(
                    "SELECT b.available::text, b.locked::text FROM balances b JOIN assets a USING (asset_id) \
                     WHERE b.user_id = $1 AND a.symbol = $2",
                    &[&(key.user_id as i32), &asset],
                ))
                .unwrap();
            let (db_available, db_locked): (String, String) =
                row.map_or(("0".into(), "0".into()), |row| (row.get(0), row.get(1)));
            assert_eq!(
                (plain(&db_available), plain(&db_locked)),
                (plain(&available), plain(&locked)),
                "user {} {asset}: the database's balance differs from the node's",
                key.user_id
            );
        }
    }
    let unexplained: i64 = runtime
        .block_on(db.query_one(
            "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, asset_id, sum(available_change) AS a, \
             sum(locked_change) AS l FROM ledger GROUP BY user_id, asset_id) s USING (user_id, asset_id) \
             WHERE s.a IS DISTINCT FROM b.available OR s.l IS DISTINCT FROM b.locked",
            &[],
        ))
        .unwrap()
        .get(0);
    assert_eq!(unexplained, 0, "balances the ledger does not add up to");

    // Open orders: the same as the node's API, with their quantities.
    let mut open_orders = 0;
    for key in &keys {
        let (status, api) = seeded_client.signed(key, "GET", "/orders/open", "", None);
        assert_eq!(status, 200, "{api}");
        let mut from_api: Vec<(u64, String, String, String, String)> = api["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|order| {
                (
                    order["order_id"].as_u64().unwrap(),
                    order["status"].as_str().unwrap().to_string(),
                    plain(order["remaining_quantity"].as_str().unwrap()),
                    plain(order["filled_quantity"].as_str().unwrap()),
                    plain(order["price"].as_str().unwrap()),
                )
            })
            .collect();
        from_api.sort();
        let mut from_db: Vec<(u64, String, String, String, String)> = runtime
            .block_on(db.query(
                "SELECT order_id, status, remaining_quantity::text, executed_quantity::text, price::text \
                 FROM orders \
                 WHERE user_id = $1 AND status IN ('new', 'partially_filled', 'pending_new')",
                &[&(key.user_id as i32)],
            ))
            .unwrap()
            .iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let text = |column: usize| plain(&row.get::<_, String>(column));
                (id as u64, row.get(1), text(2), text(3), text(4))
            })
            .collect();
        from_db.sort();
        open_orders += from_api.len();
        assert_eq!(from_db, from_api, "user {}: the database's open orders differ", key.user_id);
    }
    assert!(open_orders >= 2, "only {open_orders} open orders to compare");
    let (partly_filled_at_image, created_seq): (String, i64) = runtime
        .block_on(
            db.query_one("SELECT status, created_seq FROM orders WHERE price = 300 AND side = 'sell'", &[]),
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((partly_filled_at_image.as_str(), created_seq as u64), ("partially_filled", image_seq));

    // Trades: none from before the image, every one after it (the leader's
    // read views hold them all).
    let before: i64 = runtime
        .block_on(db.query_one("SELECT count(*) FROM trades WHERE seq <= $1", &[&(image_seq as i64)]))
        .unwrap()
        .get(0);
    assert_eq!(before, 0, "trades from before the image");
    let from_database = market_trades(&seeded_client, "&from=0");
    let from_views = market_trades(&client, "");
    assert!(from_views.len() < 1000, "the leader's views hold {} trades", from_views.len());
    let first = from_database.first().expect("trades after the image")["trade_id"].as_u64().unwrap();
    let after_image: Vec<Value> =
        from_views.into_iter().filter(|t| t["trade_id"].as_u64().unwrap() >= first).collect();
    assert_eq!(from_database, after_image, "the database's trades after the image differ from the cluster's");
    let first_seq: i64 = runtime.block_on(db.query_one("SELECT min(seq) FROM trades", &[])).unwrap().get(0);
    assert!(first_seq as u64 > image_seq);

    // Answers from the seeded database say where its history starts.
    let (_, body) = seeded_client.get("/trade/history?market=BTC-USDT&from=0&limit=1");
    assert_eq!(body["history_starts_after"]["seq"].as_u64(), Some(image_seq), "{body}");
    let (_, body) = seeded_client.signed(&keys[0], "GET", "/orders/history", "", None);
    assert_eq!(body["history_starts_after"]["seq"].as_u64(), Some(image_seq), "{body}");
    let (_, body) = cluster.nodes[feeding].client().get("/trade/history?market=BTC-USDT&from=0&limit=1");
    assert!(body.get("history_starts_after").is_none(), "a whole history is not marked: {body}");
    let (_, health) = seeded_client.get("/health");
    assert_eq!(health["database"]["history_starts_after"]["seq"].as_u64(), Some(image_seq), "{health}");
    let (_, health) = cluster.nodes[feeding].client().get("/health");
    assert!(health["database"]["history_starts_after"].is_null(), "a whole history is not marked: {health}");

    // The record of the action, and the cursor.
    let record = runtime
        .block_on(db.query_one("SELECT image_seq, node_id, reason, raft_index FROM seeded_from", &[]))
        .unwrap();
    assert_eq!(record.get::<_, i64>(0) as u64, image_seq);
    assert_eq!(record.get::<_, i64>(1) as u64, cluster.nodes[seeded].id);
    assert_eq!(record.get::<_, String>(2), "reporting database attached after compaction");
    assert_eq!(record.get::<_, i64>(3) as u64, answer["raft_index"].as_u64().unwrap());
    let cursor: i64 =
        runtime.block_on(db.query_one("SELECT last_seq FROM writer_cursor", &[])).unwrap().get(0);
    assert_eq!(cursor as u64, seq);

    // Seeding again, or seeding the database fed from the start: refused,
    // and nothing changes.
    let before = runtime.block_on(footprint(&db));
    let again = seed_with_exctl(&exctl, &seeded_client, "once more");
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("seed_refused"), "{}", text(&again));
    assert_eq!(runtime.block_on(footprint(&db)), before, "a refused seeding changed the database");
    let feeding_db = runtime.block_on(connect(&feeding_database.url));
    let before = runtime.block_on(footprint(&feeding_db));
    let refused = seed_with_exctl(&exctl, &cluster.nodes[feeding].client(), "a database with history");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert_eq!(runtime.block_on(footprint(&feeding_db)), before, "a refused seeding changed the database");
    let stderr = cluster.nodes[seeded].stderr();
    assert!(stderr.contains("seeded the empty database from the snapshot image"), "{stderr}");

    // After a restart the writer reads where the history starts from the
    // database itself.
    cluster.nodes[seeded].kill();
    cluster.nodes[seeded].start_with_env(&[("DATABASE_URL", database.url.as_str())]);
    wait_health(&cluster.nodes[seeded].client(), "the restarted writer reads the seeding", |health| {
        health["database"]["history_starts_after"]["seq"].as_u64() == Some(image_seq)
    });
}
