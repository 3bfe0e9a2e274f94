//! Runs the real `exctl` binary on a real data directory and checks what it
//! prints and how it exits.

use std::path::Path;
use std::process::{Command as Process, Output};

use engine_core::{Engine, EngineLimits, StampedCommand};
use journal::{write_snapshot, DataDir, Durability, JournalConfig, JournalLock, JournalWriter};
use workload::Shape;

fn exctl(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_exctl")).args(args).output().expect("exctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A data directory with `count` measured commands, small segments and a
/// snapshot at `snapshot_at`. Returns the stamped commands and the final
/// state hash.
fn data_dir(root: &Path, count: usize, snapshot_at: Option<u64>) -> (Vec<StampedCommand>, u64) {
    let data = DataDir::new(root);
    let commands = workload::generate(Shape::SingleMarket, count, 5).stamped(1_795_608_000_000_000_000, 1);
    let config = JournalConfig {
        segment_bytes: 128 * 1024,
        durability: Durability::Batch,
        ..JournalConfig::new(data.journal())
    };
    let (mut writer, _) = JournalWriter::open(config).unwrap();
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for command in &commands {
        writer.append(command).unwrap();
        engine.apply(command, &mut events).unwrap();
        events.clear();
        if Some(command.seq) == snapshot_at {
            writer.commit_batch().unwrap();
            write_snapshot(&data.snapshots(), &engine, journal::SnapshotKeep::newest(3)).unwrap();
        }
    }
    writer.commit_batch().unwrap();
    (commands, engine.state_hash())
}

#[test]
fn inspect_lists_segments_ranges_and_counts() {
    let root = tempfile::tempdir().unwrap();
    let (commands, _) = data_dir(root.path(), 10_000, None);
    let output = exctl(&["journal", "inspect", root.path().to_str().unwrap()]);
    assert!(output.status.success());
    let text = stdout(&output);
    let segments = journal::list_segments(&DataDir::new(root.path()).journal()).unwrap();
    assert!(segments.len() > 2);
    for (first_seq, path) in &segments {
        let name = path.file_name().unwrap().to_str().unwrap();
        let line =
            text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(line.split_whitespace().nth(1) == Some(&first_seq.to_string()), "{line}");
    }
    let total =
        format!("{} segments, {} records, last sequence {}", segments.len(), commands.len(), commands.len());
    assert!(text.contains(&total), "{text}");
    assert!(text.contains("2026-11-25T12:00:00.000000000Z"), "first timestamp shown:\n{text}");
    assert!(!text.contains("problem:"), "{text}");
}

#[test]
fn dump_prints_text_or_json_lines_from_a_sequence() {
    let root = tempfile::tempdir().unwrap();
    // A snapshot before --from: the dump learns the scales from it.
    let (commands, _) = data_dir(root.path(), 6_000, Some(4_000));
    let dir = root.path().to_str().unwrap();
    let output = exctl(&["journal", "dump", dir, "--from", "2500", "--limit", "7", "--json"]);
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect();
    let records: Vec<StampedCommand> =
        lines.iter().map(|line| serde_json::from_value(line.clone()).expect("the raw record")).collect();
    assert_eq!(records, commands[2_499..2_506]);
    // Past the setup (users and deposits): orders.
    let output = exctl(&["journal", "dump", dir, "--from", "4500", "--limit", "50", "--json"]);
    let text = stdout(&output);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let order = lines
        .iter()
        .find(|l| l["command"]["PlaceOrder"].is_object())
        .unwrap_or_else(|| panic!("no order:\n{text}"));
    assert_eq!(order["decimal"]["market"], "BTC-USDT", "{order}");
    let price = order["decimal"]["price"].as_str().or(order["decimal"]["qty"].as_str()).unwrap_or_default();
    assert!(price.parse::<f64>().is_ok(), "decimal strings: {order}");

    // Text: decimals and names, never raw ticks or lots.
    let output = exctl(&["journal", "dump", dir, "--from", "4500", "--limit", "50"]);
    let text = stdout(&output);
    assert!(text.contains("PlaceOrder user ") && text.contains(" BTC-USDT "), "{text}");
    assert!(!text.contains("Ticks(") && !text.contains("Lots(") && !text.contains("Units("), "{text}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));

    let output = exctl(&["journal", "dump", dir, "--from", "3", "--limit", "2"]);
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().next().unwrap().trim_start().starts_with("3  2026-11-25T"), "{text}");
    assert!(text.contains("CreateMarket") || text.contains("CreateAsset"), "{text}");
}

#[test]
fn verify_exit_status_tells_clean_torn_and_damaged_apart() {
    let root = tempfile::tempdir().unwrap();
    data_dir(root.path(), 5_000, None);
    let dir = root.path().to_str().unwrap();
    let clean = exctl(&["journal", "verify", dir]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(stdout(&clean).starts_with("ok: "), "{}", stdout(&clean));

    let segments = journal::list_segments(&DataDir::new(root.path()).journal()).unwrap();
    // A torn tail: garbage right after the last record of the newest segment.
    let (_, newest) = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let end = (end + 7) & !7;
    bytes[end..end + 30].fill(0xAB);
    std::fs::write(newest, &bytes).unwrap();
    let torn = exctl(&["journal", "verify", dir]);
    assert_eq!(torn.status.code(), Some(1), "{}", stdout(&torn));
    assert!(stdout(&torn).contains("torn tail"), "{}", stdout(&torn));

    // Damage in an older segment.
    let (_, older) = &segments[1];
    let mut bytes = std::fs::read(older).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(older, &bytes).unwrap();
    let damaged = exctl(&["journal", "verify", dir]);
    assert_eq!(damaged.status.code(), Some(2));
    let text = stdout(&damaged);
    assert!(text.contains(older.file_name().unwrap().to_str().unwrap()) && text.contains("offset"), "{text}");
    assert!(text.contains("verdict: the journal is damaged"), "{text}");

    let missing = exctl(&["journal", "verify", "/nonexistent/place"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not a directory"));
}

#[test]
fn replay_prints_the_sequence_the_hash_and_the_books() {
    let root = tempfile::tempdir().unwrap();
    let (commands, hash) = data_dir(root.path(), 8_000, Some(6_000));
    let dir = root.path().to_str().unwrap();
    let output = exctl(&["replay", dir]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(text.contains(&format!("sequence: {}", commands.len())), "{text}");
    assert!(text.contains(&format!("state hash: {hash:016x}")), "{text}");
    assert!(text.contains("(sequence 6000)"), "started from the snapshot:\n{text}");
    assert!(text.contains(&format!("replayed {} commands", commands.len() - 6_000)), "{text}");
    assert!(text.contains("market 0 BTC-USDT Open: bid "), "{text}");

    // --to: the state at an earlier sequence, equal to a live engine's there.
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for command in &commands[..4_321] {
        engine.apply(command, &mut events).unwrap();
    }
    let output = exctl(&["replay", dir, "--to", "4321"]);
    let text = stdout(&output);
    assert!(text.contains("sequence: 4321"), "{text}");
    assert!(text.contains(&format!("state hash: {:016x}", engine.state_hash())), "{text}");
    assert!(text.contains("snapshot: none"), "the snapshot is past --to:\n{text}");
}

#[test]
fn snapshot_offline_then_replay_starts_from_it() {
    let root = tempfile::tempdir().unwrap();
    let (commands, hash) = data_dir(root.path(), 4_000, None);
    let dir = root.path().to_str().unwrap();
    let output = exctl(&["snapshot", dir]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(text.contains(&format!("(sequence {}, state hash {hash:016x}", commands.len())), "{text}");
    let replayed = stdout(&exctl(&["replay", dir]));
    assert!(replayed.contains("replayed 0 commands"), "{replayed}");
    assert!(replayed.contains(&format!("state hash: {hash:016x}")), "{replayed}");
}

#[test]
fn a_closed_pipe_ends_the_dump_quietly() {
    use std::io::{BufRead, BufReader};
    let root = tempfile::tempdir().unwrap();
    data_dir(root.path(), 3_000, None);
    let mut child = Process::new(env!("CARGO_BIN_EXE_exctl"))
        .args(["journal", "dump", root.path().to_str().unwrap(), "--limit", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.trim_start().starts_with('1'), "{first}");
    // The reader is gone now; the rest of the dump hits a closed pipe.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn migrate_applies_the_schema_once() {
    let database = persistence::cluster::Database::throwaway().expect("a database");
    let first = Process::new(env!("CARGO_BIN_EXE_exctl"))
        .args(["migrate", "--database-url", &database.url])
        .output()
        .expect("exctl runs");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied V1__initial"));
    let second = Process::new(env!("CARGO_BIN_EXE_exctl"))
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .output()
        .expect("exctl runs");
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
    let refused = Process::new(env!("CARGO_BIN_EXE_exctl"))
        .args(["migrate", "--database-url", "host=127.0.0.1 port=1 user=nobody connect_timeout=2"])
        .output()
        .expect("exctl runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot connect"));
}

fn cut_to(path: &Path, bytes: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(bytes).unwrap();
}

#[test]
fn verify_tells_lost_files_from_a_crash() {
    let base = tempfile::tempdir().unwrap();
    let make = |label: &str| {
        let root = base.path().join(label);
        let (commands, _) = data_dir(&root, 5_000, Some(4_000));
        let segments = journal::list_segments(&DataDir::new(&root).journal()).unwrap();
        (root, commands, segments)
    };
    let damage = |root: &Path| {
        let output = exctl(&["journal", "verify", root.to_str().unwrap()]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(!text.contains("torn tail"), "{text}");
        assert!(text.contains("exctl journal repair"), "the way out is shown: {text}");
        text
    };

    // Cut by hand to fewer bytes than preallocated: never a torn tail.
    let (root, _, segments) = make("cut");
    let (_, newest) = segments.last().unwrap();
    cut_to(newest, 100_000);
    let text = damage(&root);
    let name = newest.file_name().unwrap().to_str().unwrap();
    let line = text.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not named:\n{text}"));
    assert!(line.contains("100000 bytes") && line.contains("131072"), "{line}");

    // The newest segment deleted.
    let (root, _, segments) = make("deleted");
    let (_, newest) = segments.last().unwrap();
    std::fs::remove_file(newest).unwrap();
    let text = damage(&root);
    assert!(
        text.contains(&format!("{} (records from", newest.display())) && text.contains("missing"),
        "{text}"
    );

    // Zeroed back to a record boundary before the recorded durable point.
    let (root, commands, segments) = make("zeroed");
    let (_, newest) = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let mut offset = journal::SEGMENT_HEADER_BYTES;
    let mut kept = 0;
    while let journal::Frame::Record { command, next_offset, .. } = journal::read_frame(&bytes, offset) {
        if command.seq + 200 > commands.len() as u64 {
            break;
        }
        kept = command.seq;
        offset = next_offset;
    }
    bytes[offset..].fill(0);
    std::fs::write(newest, &bytes).unwrap();
    let text = damage(&root);
    assert!(
        text.contains(&format!("the journal ends at sequence {kept}")) && text.contains("CHECKPOINT"),
        "{text}"
    );
    assert!(text.contains(&format!("--after {kept} --accept-loss")), "{text}");

    // A snapshot ahead of an empty journal.
    let (root, _, _) = make("empty");
    let data = DataDir::new(&root);
    std::fs::remove_dir_all(data.journal()).unwrap();
    let text = damage(&root);
    assert!(text.contains("00000000000000004000.snap") && text.contains("ends at 0"), "{text}");
    assert!(!text.contains("ok:"), "{text}");
}

#[test]
fn repair_asks_for_accept_loss_waits_for_the_lock_and_records_what_it_dropped() {
    let root = tempfile::tempdir().unwrap();
    let (commands, _) = data_dir(root.path(), 5_000, Some(2_000));
    let dir = root.path().to_str().unwrap();
    let data = DataDir::new(root.path());
    let segments = journal::list_segments(&data.journal()).unwrap();
    // A full segment cut by hand; the newest one after it is whole.
    let (_, newest) = &segments[segments.len() - 2];
    cut_to(newest, 70_000);
    let keep = journal::last_valid_seq(&data.journal()).unwrap().unwrap();
    assert!(keep < commands.len() as u64);
    let before = std::fs::read(newest).unwrap();
    let after = keep.to_string();

    // Without --accept-loss: what would go, and a refusal; nothing changes.
    let dry = exctl(&["journal", "repair", dir, "--after", &after]);
    assert_eq!(dry.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(stderr.contains("--accept-loss"), "{stderr}");
    assert!(stdout(&dry).contains(&format!("drops {}..{}", keep + 1, commands.len())), "{}", stdout(&dry));
    assert_eq!(std::fs::read(newest).unwrap(), before);
    assert!(!root.path().join("repairs.log").exists());

    // Past the last valid record: refused, saying which it is.
    let beyond = exctl(&["journal", "repair", dir, "--after", &(keep + 1).to_string(), "--accept-loss"]);
    assert_eq!(beyond.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&beyond.stderr).contains(&format!("last valid record, {keep}")));

    // While a server (here: a writer in this process) holds the journal.
    let held = JournalLock::acquire(&data.journal()).unwrap();
    let locked = exctl(&["journal", "repair", dir, "--after", &after, "--accept-loss"]);
    assert_eq!(locked.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&locked.stderr).contains("another process"));
    let snapshot = exctl(&["snapshot", dir]);
    assert_eq!(snapshot.status.code(), Some(2), "exctl snapshot must not write beside a running server");
    assert!(String::from_utf8_lossy(&snapshot.stderr).contains("another process"));
    assert_eq!(std::fs::read(newest).unwrap(), before);
    drop(held);

    let done = exctl(&["journal", "repair", dir, "--after", &after, "--accept-loss"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let log = std::fs::read_to_string(root.path().join("repairs.log")).unwrap();
    assert!(log.contains(&format!("drops {}..{}", keep + 1, commands.len())), "{log}");
    assert!(log.contains("asked by") && log.contains(newest.file_name().unwrap().to_str().unwrap()), "{log}");
    let aside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("repair-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].join("journal").join(newest.file_name().unwrap())).unwrap(), before);

    let verify = exctl(&["journal", "verify", dir]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    let replayed = stdout(&exctl(&["replay", dir]));
    assert!(replayed.contains(&format!("sequence: {keep}")), "{replayed}");
}

/// The server in this process on free ports, for the tests that need one
/// beside `exctl`; stopped (with its shutdown snapshot) by `stop`.
struct Server {
    runtime: tokio::runtime::Runtime,
    address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

const ADMIN_TOKEN: &str = "exctl-test-admin-token-0123";

impl Server {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(None, dir, env)
    }

    /// A server with a configuration file too (the environment wins).
    fn start_with(file: Option<&Path>, dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut vars: Vec<(String, String)> = vec![
            ("EXCHANGE_DATA_DIR".into(), dir.display().to_string()),
            ("EXCHANGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("EXCHANGE_WS_LISTEN".into(), "127.0.0.1:0".into()),
            ("EXCHANGE_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = gateway::Config::load(file, vars).unwrap();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (listening, address) = std::sync::mpsc::channel();
        let (finished, done) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let result = gateway::run(
                config,
                async {
                    let _ = stopped.await;
                },
                move |addresses| {
                    let _ = listening.send(addresses.rest);
                },
            )
            .await;
            let _ = finished.send(result.map_err(|e| e.to_string()));
        });
        let address = address.recv_timeout(std::time::Duration::from_secs(60)).expect("the server listens");
        let server = Server { runtime, address, stop: Some(stop), done: Some(done) };
        // After a restart, signed changes stamped before this are refused
        // (they may be replays of requests executed before the stop).
        let (_, health) = server.request("GET", "/health", &[], "");
        let from_ms = health["signed_changes_from_ms"].as_u64().unwrap_or(0);
        loop {
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                    as u64;
            if now_ms >= from_ms {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(from_ms - now_ms));
        }
        server
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = self.done.take().unwrap();
        self.runtime.block_on(done).unwrap().expect("a clean stop");
    }

    /// One HTTP/1.1 request; status and JSON body.
    fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.address).unwrap();
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    }

    fn admin(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, answer) =
            self.request(method, path, &[("X-Admin-Token", ADMIN_TOKEN)], &body.to_string());
        assert_eq!(status, 200, "{path}: {answer}");
        answer
    }

    fn signed(
        &self,
        key: &(String, String),
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let query = format!("nonce={nonce}&timestamp={timestamp}");
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let signature = gateway::auth::sign(&key.1, &query, body.as_bytes());
        self.request(
            method,
            &format!("{path}?{query}&signature={signature}"),
            &[("X-MBX-APIKEY", &key.0)],
            &body,
        )
    }
}

#[test]
fn replay_by_any_tool_reaches_the_live_state_with_the_servers_limits() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let data = DataDir::new(dir);
    let server = Server::start(dir, &[("EXCHANGE_OPEN_ORDERS_PER_USER_MAX", "1")]);
    for (symbol, decimals) in [("BTC", 8), ("USDT", 6)] {
        server.admin("POST", "/admin/assets", serde_json::json!({ "symbol": symbol, "decimals": decimals }));
    }
    server.admin(
        "POST",
        "/admin/markets",
        serde_json::json!({ "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
                            "min_quantity": "0.0001", "min_notional": "1", "maker_fee": "0", "taker_fee": "0" }),
    );
    let user = server.admin("POST", "/admin/users", serde_json::json!({}))["user_id"].as_u64().unwrap();
    let key = server.admin("POST", "/admin/api_keys", serde_json::json!({ "user_id": user }));
    let key = (key["api_key"].as_str().unwrap().to_string(), key["secret"].as_str().unwrap().to_string());
    server.admin(
        "POST",
        "/admin/deposit",
        serde_json::json!({ "user_id": user, "asset": "USDT", "amount": "100000" }),
    );
    let order = |price: &str| serde_json::json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": price, "quantity": "0.01" });
    let (status, first) = server.signed(&key, "POST", "/order", order("100"));
    assert_eq!(status, 200, "{first}");
    let (status, second) = server.signed(&key, "POST", "/order", order("101"));
    assert_eq!(status, 422, "the limit of one open order refuses the second live: {second}");
    assert_eq!(server.admin("GET", "/admin/limits", serde_json::Value::Null)["open_orders_per_user_max"], 1);
    server.stop();

    // The live state at shutdown, as its snapshot recorded it.
    let (_, live) =
        journal::load_snapshot(&journal::list_snapshots(&data.snapshots()).unwrap()[0].1).unwrap();
    // Every tool replays from the journal alone, whatever its defaults.
    std::fs::remove_dir_all(data.snapshots()).unwrap();
    let text = stdout(&exctl(&["replay", dir.to_str().unwrap()]));
    assert!(text.contains(&format!("sequence: {}", live.seq)), "{text}");
    assert!(
        text.contains(&format!("state hash: {:016x}", live.state_hash)),
        "replay equals the live server:\n{text}"
    );
    assert!(text.contains("1 orders"), "one resting order, as live:\n{text}");
    let output = exctl(&["snapshot", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains(&format!("state hash {:016x}", live.state_hash)));

    // A server started on that snapshot without the setting keeps the
    // journal's limit and serves only the order it accepted.
    let server = Server::start(dir, &[]);
    let (_, open) = server.signed(&key, "GET", "/orders/open", serde_json::Value::Null);
    assert_eq!(open["orders"].as_array().unwrap().len(), 1, "{open}");
    assert_eq!(server.admin("GET", "/admin/limits", serde_json::Value::Null)["open_orders_per_user_max"], 1);
    let (status, _) = server.signed(&key, "POST", "/order", order("102"));
    assert_eq!(status, 422);
    server.stop();

    // A changed limit applies from the restart on, never to the history
    // before it: the journal records the change where it happened.
    let server = Server::start(dir, &[("EXCHANGE_OPEN_ORDERS_PER_USER_MAX", "5")]);
    let (_, open) = server.signed(&key, "GET", "/orders/open", serde_json::Value::Null);
    assert_eq!(open["orders"].as_array().unwrap().len(), 1, "{open}");
    let (status, answer) = server.signed(&key, "POST", "/order", order("103"));
    assert_eq!(status, 200, "{answer}");
    server.stop();
    let dump = stdout(&exctl(&["journal", "dump", dir.to_str().unwrap(), "--limit", "1000"]));
    let changes: Vec<&str> = dump.lines().filter(|l| l.contains("SetLimits")).collect();
    assert_eq!(changes.len(), 2, "the limits at the start and the change:\n{dump}");
    assert!(dump.lines().next().unwrap().contains("SetLimits"), "the first record:\n{dump}");
    assert!(changes[1].contains("open_orders_per_user_max: 5"), "{dump}");
    let text = stdout(&exctl(&["replay", dir.to_str().unwrap()]));
    assert!(text.contains("2 orders"), "{text}");
}

#[test]
fn health_and_lag_report_a_running_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = format!("http://{}", server.address);
    server.admin("POST", "/admin/assets", serde_json::json!({ "symbol": "BTC", "decimals": 8 }));
    let (_, live) = server.request("GET", "/health", &[], "");

    let health = exctl(&["health", "--server", &url]);
    let text = stdout(&health);
    assert!(health.status.success(), "{text}{}", String::from_utf8_lossy(&health.stderr));
    assert!(text.contains("status      ok"), "{text}");
    assert!(text.contains(&format!("sequence    {}", live["seq"])), "{text}");
    assert!(text.contains("database    not configured"), "{text}");

    let json = exctl(&["health", "--server", &url, "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["seq"], live["seq"]);

    let lag = exctl(&["lag", "--server", &url, "--json"]);
    assert!(lag.status.success());
    let lag: serde_json::Value = serde_json::from_str(&stdout(&lag)).unwrap();
    assert_eq!(lag["seq"], live["seq"]);
    assert_eq!(lag["durable_lag_seq"], 0, "an idle exchange under batch has synced everything: {lag}");
    assert!(lag["database_lag_seq"].is_null());
    let text = stdout(&exctl(&["lag", "--server", &url]));
    assert!(text.contains("0 commands not yet durable"), "{text}");
    server.stop();

    // Nobody listens: an error that names the address, exit status 2.
    let gone = exctl(&["health", "--server", &url]);
    assert_eq!(gone.status.code(), Some(2));
    let error = String::from_utf8_lossy(&gone.stderr);
    assert!(error.contains("error:") && error.contains(&url), "{error}");
    let refused = exctl(&["health", "--server", "https://example.invalid"]);
    assert_eq!(refused.status.code(), Some(2));
}

/// `exctl` with the admin token in its environment, against `url`.
fn exctl_admin(url: &str, args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_exctl"))
        .args(args)
        .args(["--server", url])
        .env("EXCHANGE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("exctl runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn admin_verbs_drive_a_running_exchange_and_the_dump_shows_decimals() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let server = Server::start(dir, &[]);
    let url = format!("http://{}", server.address);
    let ok = |args: &[&str]| {
        let output = exctl_admin(&url, args);
        assert!(output.status.success(), "{args:?}: {}{}", stdout(&output), stderr(&output));
        stdout(&output)
    };
    let refused = |args: &[&str]| {
        let output = exctl_admin(&url, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}{}", stdout(&output), stderr(&output));
        stderr(&output)
    };

    let text = ok(&["asset", "add", "BTC", "--decimals", "8"]);
    assert!(text.contains("asset BTC created (id 0, 8 decimals)"), "{text}");
    ok(&["asset", "add", "USDT", "--decimals", "6"]);
    let text = ok(&["asset", "list"]);
    assert!(text.lines().any(|l| l.split_whitespace().eq(["1", "USDT", "6"])), "{text}");

    // Any spelling in, BTC-USDT out.
    let text = ok(&[
        "market",
        "add",
        "btcusdt",
        "--tick-size",
        "0.01",
        "--lot-size",
        "0.0001",
        "--min-notional",
        "1",
        "--maker-fee",
        "0.001",
        "--taker-fee",
        "0.002",
    ]);
    assert!(text.contains("market BTC-USDT created (id 0)"), "{text}");
    let text = ok(&["market", "list"]);
    let line = text.lines().find(|l| l.starts_with("BTC-USDT")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.split_whitespace()
            .eq(["BTC-USDT", "0", "open", "0.01", "0.0001", "0.0001", "1", "0.001", "0.002"]),
        "{line}"
    );
    let listed: serde_json::Value = serde_json::from_str(&ok(&["market", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["market"], "BTC-USDT");
    let text = ok(&["market", "status", "BTC/USDT", "halted"]);
    assert!(text.contains("market BTC-USDT is now halted"), "{text}");
    assert!(ok(&["market", "status", "BTCUSDT", "open"]).contains("market BTC-USDT is now open"));
    let text = ok(&["market", "fees", "btc-usdt", "--maker-fee", "0.0005", "--taker-fee", "0.001"]);
    assert!(text.contains("market BTC-USDT: maker fee 0.0005, taker fee 0.001"), "{text}");

    assert!(ok(&["user", "add"]).contains("user 0 created"));
    let second: serde_json::Value = serde_json::from_str(&ok(&["user", "add", "--json"])).unwrap();
    assert_eq!(second["user_id"], 1);
    let text = ok(&["key", "add", "0"]);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
            .to_string()
    };
    let key = (field("api_key="), field("secret="));
    let text = ok(&["deposit", "0", "100000", "USDT"]);
    assert!(text.contains("deposited 100000 USDT for user 0: available 100000"), "{text}");
    ok(&["deposit", "0", "1.5", "btc"]);
    let text = ok(&["withdraw", "0", "0.5", "BTC"]);
    assert!(text.contains("withdrew 0.5 BTC for user 0: available 1 BTC, locked 0 BTC"), "{text}");

    let text = ok(&["limits", "set", "--open-orders-per-user-max", "7"]);
    assert!(text.lines().any(|l| l.split_whitespace().eq(["open_orders_per_user_max", "7"])), "{text}");
    let limits: serde_json::Value = serde_json::from_str(&ok(&["limits", "show", "--json"])).unwrap();
    assert_eq!(limits["open_orders_per_user_max"], 7);

    let order = serde_json::json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100", "quantity": "0.01" });
    let (status, placed) = server.signed(&key, "POST", "/order", order.clone());
    assert_eq!(status, 200, "{placed}");

    // Refusals: the server's words, exit status 1, nothing changed.
    let error = {
        let output = Process::new(env!("CARGO_BIN_EXE_exctl"))
            .args(["user", "add", "--server", &url, "--admin-token", "wrong-token-0000000000"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        stderr(&output)
    };
    assert!(
        error.contains("the X-Admin-Token header is missing or wrong")
            && error.contains("invalid_admin_token"),
        "{error}"
    );
    let error = refused(&["market", "status", "DOGE-EUR", "halted"]);
    assert!(error.contains(r#"no market "DOGE-EUR"; GET /markets lists them"#), "{error}");
    let error = refused(&["deposit", "0", "1.0000001", "USDT"]);
    assert!(error.contains("not a multiple of the asset's smallest unit"), "{error}");
    let error = refused(&["withdraw", "0", "1000", "BTC"]);
    assert!(error.starts_with("error: "), "{error}");
    let output = exctl_admin(&url, &["market", "status", "DOGEEUR", "halted", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(answer["error"]["code"], "unknown_market", "{answer}");
    // Not asked at all: exit status 2.
    let output = Process::new(env!("CARGO_BIN_EXE_exctl"))
        .args(["user", "add", "--server", &url])
        .env_remove("EXCHANGE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("give --admin-token or set EXCHANGE_ADMIN_TOKEN"));
    let output = exctl_admin(&url, &["limits", "set"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--open-orders-per-user-max"), "{}", stderr(&output));
    assert_eq!(server.admin("GET", "/admin/limits", serde_json::Value::Null)["open_orders_per_user_max"], 7);

    // A revoked key signs nothing.
    assert!(ok(&["key", "revoke", "0", &key.0]).contains(&format!("key {} of user 0 revoked", key.0)));
    let (status, _) = server.signed(&key, "POST", "/order", order);
    assert_eq!(status, 401);
    server.stop();

    // The journal as an operator reads it: names and decimals.
    let path = dir.to_str().unwrap();
    let dump = stdout(&exctl(&["journal", "dump", path, "--limit", "1000"]));
    for expected in [
        "CreateAsset BTC decimals 8",
        "CreateMarket BTC-USDT tick_size 0.01 lot_size 0.0001 min_quantity 0.0001 min_notional 1 maker_fee 0.001 \
         taker_fee 0.002 Open",
        "SetMarketStatus BTC-USDT Halted",
        "SetMarketFees BTC-USDT maker_fee 0.0005 taker_fee 0.001",
        "Deposit user 0 100000 USDT",
        "Deposit user 0 1.5 BTC",
        "Withdraw user 0 0.5 BTC\n",
        "Withdraw user 0 1000 BTC -> rejected: ",
        "PlaceOrder user 0 BTC-USDT buy limit 0.01 BTC @ 100 USDT Gtc",
    ] {
        assert!(dump.contains(expected), "{expected:?} missing:\n{dump}");
    }
    assert!(!dump.contains("ticks") && !dump.contains("Lots("), "{dump}");

    // From a later sequence the scales still come from before it.
    let placed = dump.lines().find(|l| l.contains("PlaceOrder")).unwrap();
    let seq = placed.split_whitespace().next().unwrap();
    let text = stdout(&exctl(&["journal", "dump", path, "--from", seq, "--limit", "1"]));
    assert_eq!(text.trim_end(), placed.trim_end());
    let output = exctl(&["journal", "dump", path, "--from", seq, "--limit", "1", "--json"]);
    let line: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(line["decimal"], serde_json::json!({ "market": "BTC-USDT", "price": "100", "qty": "0.01" }));
    let record: StampedCommand = serde_json::from_value(line).expect("still the raw record");
    assert_eq!(record.seq.to_string(), seq);
}

#[test]
fn dump_describes_stops_icebergs_and_order_lists_in_decimals() {
    use engine_core::{
        AssetId, ClientOrderId, Command, Contingency, ListLeg, ListRef, Lots, MarketId, MarketRules,
        MarketStatus, NewOrder, NewOrderList, OrderKind, SelfTradePrevention, Side, Symbol, Ticks,
        TimeInForce, Trigger, TriggerKind, Units, UserId,
    };
    let root = tempfile::tempdir().unwrap();
    let data = DataDir::new(root.path());
    // BTC-USDT: lot 0.0001 BTC, tick 0.01 USDT.
    let rules = MarketRules {
        base: AssetId(0),
        quote: AssetId(1),
        base_units_per_lot: 10_000,
        quote_units_per_tick: 1,
        min_qty: Lots(1),
        min_notional: Units(1),
        maker_fee_ppm: 0,
        taker_fee_ppm: 0,
    };
    let (user, market, stp) = (UserId(0), MarketId(0), SelfTradePrevention::CancelTaker);
    let stop_loss = Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(4_900_000)), trailing_bips: 0 };
    let trailing = Trigger { kind: TriggerKind::TakeProfit, stop: None, trailing_bips: 150 };
    let place = |kind: OrderKind| {
        Command::PlaceOrder(NewOrder { user, market, side: Side::Sell, kind, client_order_id: None, stp })
    };
    let client = |id: &str| Some(ClientOrderId::new(id).unwrap());
    let commands = [
        Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 },
        Command::CreateAsset { symbol: Symbol::new("USDT").unwrap(), decimals: 6 },
        Command::CreateMarket { rules, status: MarketStatus::Open },
        Command::CreateUser,
        Command::Deposit { user, asset: AssetId(0), amount: Units(100_000_000) },
        place(OrderKind::Iceberg {
            price: Ticks(5_000_000),
            qty: Lots(1_000),
            visible: Lots(250),
            tif: TimeInForce::Gtc,
        }),
        place(OrderKind::StopMarket { trigger: trailing, qty: Lots(500) }),
        place(OrderKind::StopLimit {
            trigger: stop_loss,
            price: Ticks(4_890_000),
            qty: Lots(1_000),
            tif: TimeInForce::Gtc,
            visible: Lots(100),
        }),
        Command::PlaceOrderList(NewOrderList {
            user,
            market,
            contingency: Contingency::Oco,
            client_list_id: client("exit-1"),
            stp,
            legs: [
                ListLeg {
                    side: Side::Sell,
                    kind: OrderKind::Limit {
                        price: Ticks(5_200_000),
                        qty: Lots(1_000),
                        tif: TimeInForce::PostOnly,
                    },
                    client_order_id: client("take"),
                },
                ListLeg {
                    side: Side::Sell,
                    kind: OrderKind::StopMarket { trigger: stop_loss, qty: Lots(1_000) },
                    client_order_id: None,
                },
            ],
        }),
        Command::CancelOrderList { user, list: ListRef::Client(ClientOrderId::new("exit-1").unwrap()) },
    ];
    let (mut writer, _) = JournalWriter::open(JournalConfig::new(data.journal())).unwrap();
    for (index, command) in commands.iter().enumerate() {
        let seq = index as u64 + 1;
        writer
            .append(&StampedCommand { seq, timestamp_ns: 1_795_608_000_000_000_000 + seq, command: *command })
            .unwrap();
    }
    writer.commit_batch().unwrap();
    drop(writer);
    let dir = root.path().to_str().unwrap();

    let output = exctl(&["journal", "dump", dir, "--from", "6"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for expected in [
        "BTC-USDT sell iceberg 0.1 BTC @ 50000 USDT showing 0.025 Gtc",
        "stop_market 0.05 BTC take_profit trailing 150 bips",
        "stop_limit 0.1 BTC @ 48900 USDT Gtc showing 0.01 stop_loss at 49000 USDT",
        "PlaceOrderList user 0 BTC-USDT Oco list client id exit-1 stp CancelTaker: \
         1) sell limit 0.1 BTC @ 52000 USDT PostOnly client order id take; 2) sell stop_market 0.1 BTC stop_loss at 49000 USDT",
        "CancelOrderList user 0 list client id exit-1",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(!text.contains("Ticks(") && !text.contains("Lots(") && !text.contains("Trigger {"), "{text}");

    let output = exctl(&["journal", "dump", dir, "--from", "6", "--json"]);
    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[0]["decimal"],
        serde_json::json!({ "market": "BTC-USDT", "price": "50000", "qty": "0.1", "visible_qty": "0.025" })
    );
    assert_eq!(lines[2]["decimal"]["stop_price"], "49000", "{}", lines[2]);
    assert_eq!(
        lines[3]["decimal"]["legs"],
        serde_json::json!([{ "price": "52000", "qty": "0.1" }, { "qty": "0.1", "stop_price": "49000" }]),
        "{}",
        lines[3]
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn cluster_verbs_show_add_and_remove_members() {
    let dir = tempfile::tempdir().unwrap();
    // An exchange running alone has no cluster: refused, exit status 1.
    let alone = Server::start(&dir.path().join("alone"), &[]);
    let refused = exctl_admin(&format!("http://{}", alone.address), &["cluster", "status"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("not_a_cluster"), "{}", stderr(&refused));
    alone.stop();

    // A cluster of one voter (node 1), and node 2 started to join it as a
    // learner: each a server in this process, on loopback ports.
    let (api, raft) = ([free_port(), free_port()], [free_port(), free_port()]);
    let member = |i: usize, learner: bool| {
        format!(
            "{{ id = {}, raft = \"127.0.0.1:{}\", api = \"127.0.0.1:{}\", learner = {learner} }}",
            i + 1,
            raft[i],
            api[i]
        )
    };
    let start = |i: usize, members: String| {
        let file = dir.path().join(format!("node{}.toml", i + 1));
        std::fs::write(
            &file,
            format!(
                "durability = \"replicated\"\n[cluster]\nnode_id = {}\nraft_listen = \"127.0.0.1:{}\"\n\
                 bootstrap = {}\nmembers = [{members}]\n",
                i + 1,
                raft[i],
                i == 0
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", api[i]);
        Server::start_with(
            Some(&file),
            &dir.path().join(format!("node{}", i + 1)),
            &[("EXCHANGE_LISTEN", &listen)],
        )
    };
    let one = start(0, member(0, false));
    let url = format!("http://{}", one.address);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let output = exctl_admin(&url, &["cluster", "status", "--json"]);
        let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap_or_default();
        if answer["role"] == "leader" {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "node 1 does not lead: {answer}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status["members"].as_array().unwrap().len(), 1, "{status}");

    let two = start(1, format!("{}, {}", member(0, false), member(1, true)));
    let raft_two = format!("127.0.0.1:{}", raft[1]);
    let api_two = format!("127.0.0.1:{}", api[1]);
    let added =
        exctl_admin(&url, &["cluster", "add", "2", "--raft", &raft_two, "--api", &api_two, "--learner"]);
    let text = stdout(&added);
    assert!(added.status.success(), "{text}{}", stderr(&added));
    assert!(text.contains("node 2 added as a learner"), "{text}");
    assert!(text.contains("is leader"), "{text}");
    let table: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).collect();
    assert_eq!(table.len(), 2, "{text}");
    assert!(
        table[1].contains("learner") && table[1].contains(&raft_two) && table[1].contains(&api_two),
        "{text}"
    );

    // A change asked of the learner is refused and names the leader (once
    // the learner has heard from it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while two.request("GET", "/health", &[], "").1["cluster"]["leader"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the learner does not know the leader");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let misdirected = exctl_admin(&format!("http://{}", two.address), &["cluster", "remove", "2"]);
    assert_eq!(misdirected.status.code(), Some(1));
    assert!(
        stderr(&misdirected).contains("not_leader")
            && stderr(&misdirected).contains(&one.address.to_string())
    );
    // Bad input: a precise refusal, nothing changed.
    let bad = exctl_admin(&url, &["cluster", "add", "3", "--raft", "nowhere", "--api", &api_two]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("raft: \"nowhere\" is not HOST:PORT"), "{}", stderr(&bad));
    let last = exctl_admin(&url, &["cluster", "remove", "1"]);
    assert!(stderr(&last).contains("last voter"), "{}", stderr(&last));

    let removed = exctl_admin(&url, &["cluster", "remove", "2", "--json"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&removed)).unwrap();
    assert_eq!(answer["members"].as_array().unwrap().len(), 1, "{answer}");
    two.stop();

    // The journal of a cluster node is its Raft log: inspect and replay read it.
    one.admin("POST", "/admin/assets", serde_json::json!({ "symbol": "BTC", "decimals": 8 }));
    one.admin("POST", "/admin/assets", serde_json::json!({ "symbol": "USDT", "decimals": 6 }));
    let (_, health) = one.request("GET", "/health", &[], "");
    one.stop();
    let node_dir = dir.path().join("node1");
    let inspect = exctl(&["journal", "inspect", node_dir.to_str().unwrap()]);
    let text = stdout(&inspect);
    assert!(inspect.status.success(), "{text}{}", stderr(&inspect));
    assert!(text.contains("a cluster node's journal") && text.contains("raft-"), "{text}");
    assert!(text.contains("membership") && text.contains("commands: 2"), "{text}");
    let replay = exctl(&["replay", node_dir.to_str().unwrap()]);
    let text = stdout(&replay);
    assert!(replay.status.success(), "{text}{}", stderr(&replay));
    assert!(text.contains(&format!("sequence: {}", health["seq"])), "{text}");
}
