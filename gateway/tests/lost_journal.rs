//! The real `exchange` on a journal that lost files: it refuses to start,
//! naming the file and the way out, instead of starting short and making
//! the loss permanent with its next snapshot; after the operator accepts
//! the loss (a repair after a named sequence number), it starts there.

mod server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use journal::DataDir;
use serde_json::json;
use server::Exchange;

const SETTINGS: [(&str, &str); 2] = [("EXCHANGE_SEGMENT_BYTES", "65536"), ("EXCHANGE_DURABILITY", "batch")];

/// Starts the exchange expecting it to stop on its own; returns whether it
/// succeeded and what it wrote to stderr. A server that starts anyway is
/// killed after a generous bound and reported.
fn start_expecting_exit(data_dir: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .env("EXCHANGE_DATA_DIR", data_dir)
        .env("EXCHANGE_LISTEN", "127.0.0.1:0")
        .env("EXCHANGE_WS_LISTEN", "127.0.0.1:0")
        .env("EXCHANGE_ADMIN_TOKEN", server::ADMIN_TOKEN)
        .env_remove("DATABASE_URL")
        .env_remove("EXCHANGE_DATABASE_URL")
        .envs(SETTINGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the exchange binary starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (status.success(), String::from_utf8_lossy(&output.stderr).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the exchange started on a journal that lost records; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_server_refuses_a_truncated_segment_by_name_and_starts_after_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &SETTINGS);
    let keys = exchange.demo(2);
    for i in 0..300u64 {
        let order = json!({
            "market": "BTC-USDT", "side": if i % 2 == 0 { "buy" } else { "sell" }, "type": "limit",
            "price": format!("{}", 100 + i % 50), "quantity": "0.01",
        });
        let (status, answer) = exchange.place(&keys[(i % 2) as usize], order);
        assert_eq!(status, 200, "{answer}");
    }
    let (_, health) = exchange.get("/health");
    let last_seq = health["seq"].as_u64().unwrap();
    assert!(exchange.terminate().success());

    // Cut the oldest segment (full of records) by hand in the middle.
    let data = DataDir::new(dir.path());
    let (_, segment) = journal::list_segments(&data.journal()).unwrap().remove(0);
    let bytes = std::fs::read(&segment).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let cut = (journal::SEGMENT_HEADER_BYTES + used) / 2;
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut as u64).unwrap();

    let (started, stderr) = start_expecting_exit(dir.path());
    assert!(!started, "{stderr}");
    assert!(stderr.contains(segment.to_str().unwrap()), "the file is named: {stderr}");
    assert!(stderr.contains(&format!("is {cut} bytes")) && stderr.contains("65536"), "{stderr}");
    assert!(stderr.contains("exctl journal repair") && stderr.contains("--accept-loss"), "{stderr}");
    // Refused again, not cut: nothing changed on disk.
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), cut as u64);
    assert!(!start_expecting_exit(dir.path()).0);

    // The operator accepts the loss of everything after the last whole record.
    let keep = journal::last_valid_seq(&data.journal()).unwrap().unwrap();
    assert!(keep < last_seq);
    let request = journal::RepairRequest {
        after_seq: keep,
        requested_by: "the crash test".into(),
        when_utc: "2026-11-25T12:00:00Z".into(),
    };
    journal::repair(&data, &request).unwrap();
    let exchange = Exchange::start(dir.path(), &SETTINGS);
    let (_, health) = exchange.get("/health");
    assert_eq!(health["seq"].as_u64(), Some(keep), "{health}");
    assert!(exchange.terminate().success());
}
