//! The WebSocket fan-out benchmark: N subscribers to one market's trade
//! stream while orders that trade flow at a fixed rate; reports messages
//! delivered per second, the latency from each trade's command timestamp
//! (the matcher's clock) to its receipt by each subscriber, and the
//! server's CPU time per delivered message.
//!
//! The subscribers run in a child process (this program started again
//! with `--subscribe-to`), so that the server's CPU time is its own: the
//! process's CPU time less that of the thread placing the orders.
//!
//! ```text
//! cargo run --release -p benches --bin fanout                          # 100 and 1,000 subscribers
//! cargo run --release -p benches --bin fanout -- --subscribers 1000 --trades 1000 --rate 200
//! ```

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::local_exchange::LocalExchange;
use benches::report::{format_rate, latency_histogram, percentiles, ReportArgs, Reports};
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
    /// Run as the subscribers' process: connect to this WebSocket address,
    /// say `ready` once every subscriber is subscribed, and report what
    /// they received on standard output.
    #[arg(long, hide = true)]
    subscribe_to: Option<SocketAddr>,
    #[command(flatten)]
    report: ReportArgs,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(ws) = args.subscribe_to {
        return match subscribers_process(ws, args.subscribers.first().copied().unwrap_or(0), args.trades) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: subscribers: {error}");
                ExitCode::FAILURE
            }
        };
    }
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
    let mut reports = Reports::new("fanout", &args.report);
    for &count in &args.subscribers {
        match run(&args, addresses, &keys, count, first_trade) {
            Ok(histogram) => {
                first_trade += args.trades;
                reports.add(&format!("{count} subscribers"), &histogram);
            }
            Err(error) => {
                eprintln!("error: {error}");
                ok = false;
                break;
            }
        }
    }
    drop(exchange);
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        ok = false;
    }
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
) -> Result<Histogram<u64>, String> {
    let expected = args.trades;
    let mut child = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--subscribe-to", &addresses.ws.to_string()])
        .args(["--subscribers", &count.to_string(), "--trades", &expected.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the subscribers' process: {e}"))?;
    let mut lines =
        std::io::BufReader::new(child.stdout.take().ok_or("no pipe from the subscribers")?).lines();
    if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
        let _ = child.kill();
        return Err("the subscribers did not all subscribe".into());
    }
    let cpu_before = server_cpu();
    let subscribers_cpu_before = children_cpu().as_secs_f64();
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
    for line in lines {
        let line = line.map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|w| w.parse::<u64>().ok())) {
            (Some("delivered"), Some(count)) => delivered += count,
            (Some("latency_ns"), Some(value)) => {
                let times = words.next().and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
                histogram.saturating_record_n(value, times);
            }
            _ => return Err(format!("the subscribers said {line:?}")),
        }
    }
    let server_cpu_s = (server_cpu() - cpu_before).as_secs_f64();
    let exited = child.wait().map_err(|e| e.to_string())?;
    if !exited.success() {
        return Err(format!("the subscribers' process failed ({exited})"));
    }
    let subscribers_cpu_s = children_cpu().as_secs_f64() - subscribers_cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    let complete = delivered == expected * count as u64;
    println!(
        "{count:>5} subscribers: {} messages/s delivered ({} of {} expected){} | server CPU {:.2} s, {:.1} us per message (subscribers' CPU {:.2} s) | {}",
        format_rate(delivered as f64 / elapsed),
        delivered,
        expected * count as u64,
        if complete { "" } else { " INCOMPLETE" },
        server_cpu_s,
        server_cpu_s * 1e6 / delivered.max(1) as f64,
        subscribers_cpu_s,
        percentiles(&histogram)
    );
    if complete {
        Ok(histogram)
    } else {
        Err("some subscribers missed trades".into())
    }
}

/// CPU time (user and system) of this process less that of the calling
/// thread: the server's, when the caller is the thread placing orders.
fn server_cpu() -> Duration {
    cpu(libc::RUSAGE_SELF).saturating_sub(cpu(libc::RUSAGE_THREAD))
}

/// CPU time of the child processes that have exited and been waited for.
fn children_cpu() -> Duration {
    cpu(libc::RUSAGE_CHILDREN)
}

fn cpu(who: libc::c_int) -> Duration {
    // Safety: getrusage writes one plain struct that we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The subscribers' process: `count` subscribers, each on its own thread
/// and connection; reports on standard output what they received.
fn subscribers_process(ws: SocketAddr, count: usize, expected: u64) -> Result<(), String> {
    use std::io::Write;
    let (ready_sender, ready_receiver) = mpsc::channel();
    let mut threads = Vec::new();
    for _ in 0..count {
        let ready = ready_sender.clone();
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
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    let mut histogram = latency_histogram();
    let mut delivered = 0u64;
    for thread in threads {
        let (received, part) = thread.join().map_err(|_| "a subscriber panicked".to_string())??;
        delivered += received;
        let _ = histogram.add(&part);
    }
    writeln!(out, "delivered {delivered}").map_err(|e| e.to_string())?;
    for value in histogram.iter_recorded() {
        writeln!(out, "latency_ns {} {}", value.value_iterated_to(), value.count_at_value())
            .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
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
        if !subscribed {
            let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if value["id"] == 1 {
                subscribed = true;
                let _ = ready.send(());
            }
            continue;
        }
        // Only the stamp is read (a full parse of every message would make
        // the subscribers, not the server, what bounds the run).
        if let Some(sent_ns) = trade_stamp_ns(&text) {
            histogram.saturating_record(now_ns().saturating_sub(sent_ns).max(1));
            received += 1;
        }
    }
    let _ = socket.close(None);
    Ok((received, histogram))
}

/// The `"T_ns"` of a trade message, found without parsing the rest.
fn trade_stamp_ns(text: &str) -> Option<u64> {
    let digits = &text[text.find("\"T_ns\":")? + "\"T_ns\":".len()..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
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
