//! Starts the real `exchange` binary on a free port and talks to it over
//! real sockets, as a client would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct Exchange {
    child: Child,
    pub address: SocketAddr,
    pub ws_address: SocketAddr,
    pub data_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    pub stderr_path: PathBuf,
    pub client: Client,
}

/// An API key and its secret, as the admin API returns them.
#[derive(Clone, Debug)]
pub struct Key {
    pub user_id: u64,
    pub api_key: String,
    pub secret: String,
}

impl Exchange {
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Exchange {
        let extra_env: Vec<(String, String)> =
            extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let stderr_path = data_dir.with_extension(format!(
            "stderr-{}",
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
        ));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
            .env("EXCHANGE_DATA_DIR", data_dir)
            .env("EXCHANGE_LISTEN", "127.0.0.1:0")
            .env("EXCHANGE_WS_LISTEN", "127.0.0.1:0")
            .env("EXCHANGE_ADMIN_TOKEN", ADMIN_TOKEN)
            // Only tests that ask for a database get one.
            .env_remove("DATABASE_URL")
            .env_remove("EXCHANGE_DATABASE_URL")
            .envs(extra_env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the exchange binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut ws_line = String::new();
        stdout.read_line(&mut ws_line).unwrap();
        let ws_address = ws_line
            .trim()
            .strip_prefix("websocket on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected second line {ws_line:?}"));
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            })
            .parse()
            .unwrap();
        let client = Client::new(address);
        // After a restart, signed changes with a timestamp before this are
        // refused (they may be replays of requests already executed).
        let (_, health) = client.get("/health");
        wait_until_signable(health["signed_changes_from_ms"].as_u64().unwrap_or(0));
        Exchange {
            child,
            address,
            ws_address,
            data_dir: data_dir.to_path_buf(),
            extra_env,
            stderr_path,
            client,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (a crash) and starts it again.
    pub fn crash_and_restart(mut self) -> Exchange {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let env: Vec<(String, String)> = self.extra_env.clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Exchange::start(&self.data_dir, &env)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // Safety: sending a signal to our own child process.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the exchange did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until the clock reaches `from_ms`: a server refuses signed changes
/// signed before it started (they may be replays of requests it executed).
pub fn wait_until_signable(from_ms: u64) {
    loop {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        if now_ms >= from_ms {
            return;
        }
        std::thread::sleep(Duration::from_millis(from_ms - now_ms));
    }
}

/// Talks HTTP to the exchange; can be moved to another thread.
pub struct Client {
    pub address: SocketAddr,
    /// Signed requests sent so far.
    requests: std::cell::Cell<u64>,
}

impl Client {
    pub fn new(address: SocketAddr) -> Client {
        Client { address, requests: std::cell::Cell::new(0) }
    }

    /// BTC (8 decimals), USDT (6), ETH (8); BTC-USDT and ETH-USDT; `users`
    /// users, each with a key, 10 BTC, 100 ETH and 1,000,000 USDT.
    pub fn demo(&self, users: usize) -> Vec<Key> {
        for (symbol, decimals) in [("BTC", 8), ("USDT", 6), ("ETH", 8)] {
            self.admin_ok("POST", "/admin/assets", json!({ "symbol": symbol, "decimals": decimals }));
        }
        for base in ["BTC", "ETH"] {
            self.admin_ok(
                "POST",
                "/admin/markets",
                json!({
                    "base": base, "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
                    "min_quantity": "0.0001", "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.002"
                }),
            );
        }
        (0..users)
            .map(|_| {
                let user = self.admin_ok("POST", "/admin/users", json!({}))["user_id"].as_u64().unwrap();
                let key = self.admin_ok("POST", "/admin/api_keys", json!({ "user_id": user }));
                for (asset, amount) in [("BTC", "10"), ("ETH", "100"), ("USDT", "1000000")] {
                    self.admin_ok(
                        "POST",
                        "/admin/deposit",
                        json!({ "user_id": user, "asset": asset, "amount": amount }),
                    );
                }
                Key {
                    user_id: user,
                    api_key: key["api_key"].as_str().unwrap().to_string(),
                    secret: key["secret"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    /// One HTTP/1.1 request on a fresh connection; returns status, headers and JSON body.
    pub fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Value) {
        try_raw(self.address, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    pub fn get(&self, target: &str) -> (u16, Value) {
        let (status, _, body) = self.raw("GET", target, &[], b"");
        (status, body)
    }

    pub fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let (status, _, value) = self.raw(method, path, &[("X-Admin-Token", ADMIN_TOKEN)], body.as_bytes());
        (status, value)
    }

    /// Admin call that must succeed.
    pub fn admin_ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, value) = self.admin(method, path, body.clone());
        assert_eq!(status, 200, "{method} {path} {body}: {value}");
        value
    }

    /// A signed request: `query` without timestamp/signature; they are added.
    pub fn signed(
        &self,
        key: &Key,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let query = self.stamped(query);
        self.signed_raw(key, method, path, &query, body)
    }

    /// `query` with a request number and the time: a request number makes
    /// every request distinct, so that two alike in one millisecond are not
    /// taken for a replay.
    fn stamped(&self, query: &str) -> String {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let nonce = self.requests.get() + 1;
        self.requests.set(nonce);
        if query.is_empty() {
            format!("nonce={nonce}&timestamp={timestamp}")
        } else {
            format!("{query}&nonce={nonce}&timestamp={timestamp}")
        }
    }

    /// A signed request with the query exactly as given (plus the signature).
    pub fn signed_raw(
        &self,
        key: &Key,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let signature = gateway::auth::sign(&key.secret, query, body.as_bytes());
        let target = format!("{path}?{query}&signature={signature}");
        let (status, _, value) =
            self.raw(method, &target, &[("X-MBX-APIKEY", &key.api_key)], body.as_bytes());
        (status, value)
    }

    /// [`Client::signed`] for a node that may be down, paused or cut off:
    /// a failed connection is an error, silence longer than `timeout` too.
    pub fn try_signed(
        &self,
        key: &Key,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, String, Value), String> {
        let query = self.stamped(query);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let signature = gateway::auth::sign(&key.secret, &query, body.as_bytes());
        let target = format!("{path}?{query}&signature={signature}");
        try_raw_within(
            self.address,
            method,
            &target,
            &[("X-MBX-APIKEY", &key.api_key)],
            body.as_bytes(),
            timeout,
        )
    }

    pub fn place(&self, key: &Key, order: Value) -> (u16, Value) {
        self.signed(key, "POST", "/order", "", Some(order))
    }

    /// A signed `/api/v3` request with its parameters in the query (GET,
    /// DELETE) or the form body (POST, PUT), as Binance clients send them.
    pub fn binance(&self, key: &Key, method: &str, path: &str, params: &str) -> (u16, String, Value) {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        // A request number keeps two alike in one millisecond apart (a
        // replayed request is refused).
        let nonce = self.requests.get() + 1;
        self.requests.set(nonce);
        let params = if params.is_empty() {
            format!("timestamp={timestamp}&recvWindow={}", 50_000 + nonce % 10_000)
        } else {
            format!("{params}&timestamp={timestamp}&recvWindow={}", 50_000 + nonce % 10_000)
        };
        let signature = gateway::auth::sign(&key.secret, &params, b"");
        let signed = format!("{params}&signature={signature}");
        let headers =
            [("X-MBX-APIKEY", key.api_key.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
        if method == "GET" || method == "DELETE" {
            self.raw(method, &format!("{path}?{signed}"), &headers, b"")
        } else {
            self.raw(method, path, &headers, signed.as_bytes())
        }
    }
}

impl std::ops::Deref for Exchange {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// The balance of `asset` in a `/balance` answer, as (available, locked).
pub fn balance_of(answer: &Value, asset: &str) -> (String, String) {
    answer["balances"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["asset"] == asset))
        .map(|b| (b["available"].as_str().unwrap().to_string(), b["locked"].as_str().unwrap().to_string()))
        .unwrap_or_else(|| panic!("no {asset} in {answer}"))
}

/// One HTTP/1.1 request on a fresh connection that may fail (for clients of
/// a server that is being killed or flooded): status, head and JSON body
/// (a body that is not JSON comes back as a string).
pub fn try_raw(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, Value), String> {
    try_raw_within(address, method, target, headers, body, Duration::from_secs(20))
}

/// [`try_raw`] that gives up after `timeout` of silence (connecting takes
/// at most 5 s of it): for clients of nodes that may be paused or cut off.
pub fn try_raw_within(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String, Value), String> {
    let mut stream = TcpStream::connect_timeout(&address, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    stream.write_all(body).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    Ok((status, head.to_string(), value))
}
