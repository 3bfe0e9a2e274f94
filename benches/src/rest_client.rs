//! The HTTP side of the load benchmarks: one keep-alive connection to an
//! exchange's REST API, signed native order placements, and the admin
//! calls that set up a market with funded users and their keys.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An API key and its secret, as the admin API returns them.
#[derive(Clone, Debug)]
pub struct Key {
    pub api_key: String,
    pub secret: String,
}

/// One answer: its status, the `X-Leader` header (a cluster node that is
/// not the leader names the leader in it) and the body.
pub struct Reply {
    pub status: u16,
    pub leader: Option<String>,
    pub body: Bytes,
}

/// A keep-alive HTTP/1.1 connection; its requests are serial.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    address: SocketAddr,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect(address).await.map_err(|e| format!("{address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends one request and reads the whole answer; the status and body.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Bytes), String> {
        self.request(method, target, headers, body).await.map(|reply| (reply.status, reply.body))
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<Reply, String> {
        let mut request =
            Request::builder().method(method).uri(target).header("host", self.address.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self.sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let leader =
            response.headers().get("x-leader").and_then(|value| value.to_str().ok()).map(str::to_string);
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, leader, body })
    }

    /// `POST /order` with `order` (a JSON body), signed with `key`. The
    /// query carries a per-connection request number as well as the time,
    /// so that two alike orders in one millisecond are not taken for a
    /// replay.
    pub async fn place_order(&mut self, key: &Key, order: &str, nonce: u64) -> Result<Reply, String> {
        let query = format!("nonce={nonce}&timestamp={}", now_ms());
        let signature = gateway::auth::sign(&key.secret, &query, order.as_bytes());
        let target = format!("/order?{query}&signature={signature}");
        self.request("POST", &target, &[("x-mbx-apikey", &key.api_key)], order.to_string()).await
    }

    /// A signed `GET` of `path` with `query` (without time and signature).
    pub async fn signed_get(&mut self, key: &Key, path: &str, query: &str) -> Result<Reply, String> {
        let query = format!("{query}&timestamp={}", now_ms());
        let signature = gateway::auth::sign(&key.secret, &query, b"");
        let target = format!("{path}?{query}&signature={signature}");
        self.request("GET", &target, &[("x-mbx-apikey", &key.api_key)], String::new()).await
    }

    /// A `GET` whose answer is JSON, any status.
    pub async fn get_json(&mut self, target: &str) -> Result<(u16, serde_json::Value), String> {
        let reply = self.request("GET", target, &[], String::new()).await?;
        let value = serde_json::from_slice(&reply.body).map_err(|e| format!("GET {target}: {e}"))?;
        Ok((reply.status, value))
    }
}

pub fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Sets up the market the load benchmarks trade: BTC (8 decimals), USDT
/// (6), BTC-USDT (tick 0.01, lot 0.0001, no minimum notional), and `users`
/// users, each with a key, 100,000 BTC and 1,000,000,000 USDT.
pub async fn seed(exchange: SocketAddr, admin_token: &str, users: usize) -> Result<Vec<Key>, String> {
    let mut connection = Connection::open(exchange).await?;
    let admin = [("x-admin-token", admin_token)];
    let mut call = async |path: &str, body: serde_json::Value| -> Result<serde_json::Value, String> {
        let (status, bytes) = connection.send("POST", path, &admin, body.to_string()).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{path}: {status} {value}"));
        }
        Ok(value)
    };
    call("/admin/assets", serde_json::json!({ "symbol": "BTC", "decimals": 8 })).await?;
    call("/admin/assets", serde_json::json!({ "symbol": "USDT", "decimals": 6 })).await?;
    call(
        "/admin/markets",
        serde_json::json!({ "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001" }),
    )
    .await?;
    let mut keys = Vec::new();
    for _ in 0..users {
        let user = call("/admin/users", serde_json::json!({})).await?["user_id"].as_u64().unwrap_or(0);
        let key = call("/admin/api_keys", serde_json::json!({ "user_id": user })).await?;
        for (asset, amount) in [("USDT", "1000000000"), ("BTC", "100000")] {
            call("/admin/deposit", serde_json::json!({ "user_id": user, "asset": asset, "amount": amount }))
                .await?;
        }
        keys.push(Key {
            api_key: key["api_key"].as_str().unwrap_or_default().to_string(),
            secret: key["secret"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(keys)
}
