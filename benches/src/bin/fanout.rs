//! The WebSocket fan-out benchmark: N subscribers to one market's trade
//! stream while orders that trade flow at a fixed rate; reports messages
//! delivered per second and the latency from each trade's command
//! timestamp (the matcher's clock) to its receipt by each subscriber.
//!
//! ```text
//! cargo run --release -p benches --bin fanout                          # 100 and 1,000 subscribers
//! cargo run --release -p benches --bin fanout -- --subscribers 1000 --trades 1000 --rate 200
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::local_exchange::LocalExchange;
use benches::report::{format_rate, latency_histogram, percentiles};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "WebSocket fan-out: subscribers to one market's trades while orders flow")]
struct Args {
    /// Subscriber counts to run.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    subscribers: Vec<usize>,
    /// Trades per run.
    #[arg(long, default_value_t = 500)]
    trades: u64,
    /// Trades per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let exchange = match LocalExchange::start("fanout", &[("EXCHANGE_DURABILITY", "none")]) {
        Ok(exchange) => exchange,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addresses = exchange.addresses;
    let keys = match seed(addresses.rest, exchange.admin_token) {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("error: seeding: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "machine: {} cores; {} trades at {}/s per run; trade stream of one market",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.trades,
        args.rate
    );
    let mut ok = true;
    let mut first_trade = 0u64;
    for &count in &args.subscribers {
        match run(&args, addresses, &keys, count, first_trade) {
            Ok(()) => first_trade += args.trades,
            Err(error) => {
                eprintln!("error: {error}");
                ok = false;
                break;
            }
        }
    }
    drop(exchange);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(
    args: &Args,
    addresses: gateway::Addresses,
    keys: &[(String, String)],
    count: usize,
    trades_before: u64,
) -> Result<(), String> {
    let expected = args.trades;
    let (ready_sender, ready_receiver) = mpsc::channel();
    let mut threads = Vec::new();
    for _ in 0..count {
        let ready = ready_sender.clone();
        let ws = addresses.ws;
        threads.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || subscriber(ws, expected, ready))
                .map_err(|e| e.to_string())?,
        );
    }
    for _ in 0..count {
        ready_receiver
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "a subscriber did not connect".to_string())?;
    }
    // Orders that trade: a resting sell, then a buy that takes it.
    let started = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    for n in 0..expected {
        let due = started + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = trades_before + n;
        place(
            addresses.rest,
            &keys[0],
            json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "50000", "quantity": "0.001", "client_order_id": format!("s{id}") }),
        )?;
        place(
            addresses.rest,
            &keys[1],
            json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000", "quantity": "0.001", "client_order_id": format!("b{id}") }),
        )?;
    }
    let mut histogram = latency_histogram();
    let mut delivered = 0u64;
    for thread in threads {
        let (received, part) = thread.join().map_err(|_| "a subscriber panicked".to_string())??;
        delivered += received;
        let _ = histogram.add(&part);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let complete = delivered == expected * count as u64;
    println!(
        "{count:>5} subscribers: {} messages/s delivered ({} of {} expected){} | {}",
        format_rate(delivered as f64 / elapsed),
        delivered,
        expected * count as u64,
        if complete { "" } else { " INCOMPLETE" },
        percentiles(&histogram)
    );
    if complete {
        Ok(())
    } else {
        Err("some subscribers missed trades".into())
    }
}

fn subscriber(
    ws: SocketAddr,
    expected: u64,
    ready: mpsc::Sender<()>,
) -> Result<(u64, Histogram<u64>), String> {
    let (mut socket, _) = tungstenite::connect(format!("ws://{ws}/")).map_err(|e| e.to_string())?;
    socket
        .send(Message::text(
            json!({ "method": "SUBSCRIBE", "params": ["BTC-USDT@trade"], "id": 1 }).to_string(),
        ))
        .map_err(|e| e.to_string())?;
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    }
    let mut histogram = latency_histogram();
    let mut received = 0;
    let mut subscribed = false;
    while received < expected {
        let message = socket.read().map_err(|e| e.to_string())?;
        let Message::Text(text) = message else { continue };
        let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if !subscribed && value["id"] == 1 {
            subscribed = true;
            let _ = ready.send(());
            continue;
        }
        if let Some(sent_ns) = value["data"]["T_ns"].as_u64() {
            histogram.saturating_record(now_ns().saturating_sub(sent_ns).max(1));
            received += 1;
        }
    }
    let _ = socket.close(None);
    Ok((received, histogram))
}

fn http(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Value), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no body")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn seed(address: SocketAddr, admin_token: &str) -> Result<Vec<(String, String)>, String> {
    let admin = [("X-Admin-Token", admin_token)];
    let call = |path: &str, body: Value| -> Result<Value, String> {
        let (status, value) = http(address, "POST", path, &admin, &body.to_string())?;
        if status != 200 {
            return Err(format!("{path}: {status} {value}"));
        }
        Ok(value)
    };
    call("/admin/assets", json!({ "symbol": "BTC", "decimals": 8 }))?;
    call("/admin/assets", json!({ "symbol": "USDT", "decimals": 6 }))?;
    call(
        "/admin/markets",
        json!({ "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001" }),
    )?;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let user = call("/admin/users", json!({}))?["user_id"].as_u64().unwrap_or(0);
        let key = call("/admin/api_keys", json!({ "user_id": user }))?;
        call("/admin/deposit", json!({ "user_id": user, "asset": "USDT", "amount": "100000000" }))?;
        call("/admin/deposit", json!({ "user_id": user, "asset": "BTC", "amount": "1000" }))?;
        keys.push((
            key["api_key"].as_str().unwrap_or_default().to_string(),
            key["secret"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(keys)
}

fn place(address: SocketAddr, key: &(String, String), order: Value) -> Result<(), String> {
    let body = order.to_string();
    let query = format!("timestamp={}", now_ns() / 1_000_000);
    let signature = gateway::auth::sign(&key.1, &query, body.as_bytes());
    let (status, value) = http(
        address,
        "POST",
        &format!("/order?{query}&signature={signature}"),
        &[("X-MBX-APIKEY", &key.0)],
        &body,
    )?;
    if status != 200 {
        return Err(format!("order refused: {status} {value}"));
    }
    Ok(())
}
