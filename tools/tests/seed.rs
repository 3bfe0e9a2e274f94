//! `exctl seed` against a real exchange server (in-process, on a free port).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

fn get(address: SocketAddr, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn the_demo_seed_creates_markets_users_keys_and_deposits() {
    let dir = tempfile::tempdir().unwrap();
    let token = "seed-test-admin-token-123";
    let env = vec![
        ("EXCHANGE_DATA_DIR".to_string(), dir.path().display().to_string()),
        ("EXCHANGE_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("EXCHANGE_WS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("EXCHANGE_ADMIN_TOKEN".to_string(), token.to_string()),
    ];
    let config = gateway::Config::load(None, env).unwrap();
    let (address_sender, address_receiver) = std::sync::mpsc::channel();
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(gateway::run(
            config,
            async {
                let _ = stop_receiver.await;
            },
            move |address| {
                address_sender.send(address.rest).unwrap();
            },
        ))
    });
    let address = address_receiver.recv().unwrap();
    let seed_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-seed.toml");
    let keys_out = dir.path().join("keys.json");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_exctl"))
            .args(["seed", "--file", seed_file.to_str().unwrap(), "--server", &format!("http://{address}")])
            .args(["--admin-token", token, "--keys-out", keys_out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = run();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("market BTC-USDT created") && text.contains("market ETH-USDT created"), "{text}");
    assert_eq!(text.matches("api_key=").count(), 3, "{text}");

    let markets = get(address, "/markets");
    let names: Vec<&str> =
        markets.as_array().unwrap().iter().map(|m| m["market"].as_str().unwrap()).collect();
    assert_eq!(names, ["BTC-USDT", "ETH-USDT"]);
    assert_eq!(markets[1]["lot_size"], "0.001");
    assert_eq!(markets[0]["taker_fee"], "0.0005");
    let keys: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&keys_out).unwrap()).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&keys_out).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // A second run keeps the assets and markets and adds new users.
    let again = run();
    let text = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{text}");
    assert!(text.contains("market BTC-USDT exists already"), "{text}");

    // A wrong token is refused with the server's reason.
    let refused = Command::new(env!("CARGO_BIN_EXE_exctl"))
        .args(["seed", "--file", seed_file.to_str().unwrap(), "--server", &format!("http://{address}")])
        .args(["--admin-token", "wrong-token-0000000000"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("X-Admin-Token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    stop_sender.send(()).unwrap();
    server.join().unwrap().unwrap();
}
