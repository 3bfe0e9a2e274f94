//! The HTTP load generator: signed order placements and cancels over
//! keep-alive connections, at fixed offered rates and flat out, against the
//! real exchange server (in this process, on a free port); and the same
//! load against a bare hyper handler that returns a fixed JSON body, so the
//! exchange's cost over the HTTP stack reads as a ratio.
//!
//! Round-trip latency is measured from each request's intended send time on
//! a uniform schedule (no coordinated omission): a connection that falls
//! behind carries its delay into every later request.
//!
//! Orders go through the native API (`/order`, JSON) and through the
//! Binance-compatible one (`/api/v3/order`, form-encoded, FULL answers);
//! `--apis` picks which.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen
//! cargo run --release -p benches --bin loadgen -- --rates 5000,10000 --seconds 10 --connections 8
//! cargo run --release -p benches --bin loadgen -- --apis binance --rates 10000,0
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::local_exchange::LocalExchange;
use benches::report::{format_rate, latency_histogram, percentiles, ReportArgs, Reports};
use benches::rest_client::{seed, Connection, Key};
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    about = "HTTP load generator: signed orders against the exchange, and a bare hyper handler for scale"
)]
struct Args {
    /// Offered rates in requests/s; 0 means closed loop, as fast as possible.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,0")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keep-alive connections (one signed-in user each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The journal's durability policy for the exchange: none, batch or interval.
    #[arg(long, default_value = "batch")]
    durability: String,
    /// Which order APIs to load: native, binance, or both.
    #[arg(long, value_delimiter = ',', default_value = "native,binance")]
    apis: Vec<Api>,
    #[command(flatten)]
    report: ReportArgs,
}

/// The API the orders go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    /// `POST /order` and `DELETE /order` with JSON bodies.
    Native,
    /// `POST /api/v3/order` and `DELETE /api/v3/order`, form-encoded.
    Binance,
}

/// Numbers each run, so that client order ids never repeat across runs.
static RUN: AtomicU64 = AtomicU64::new(0);
/// Requests that failed, in any run: the benchmark then exits non-zero.
static FAILED: AtomicU64 = AtomicU64::new(0);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The server: the exchange and the bare handler share one runtime with
    // one worker; the load has its own. The matcher and its consumer have
    // their own threads. Everything shares the machine's cores.
    let local = match LocalExchange::start("loadgen", &[("EXCHANGE_DURABILITY", &args.durability)]) {
        Ok(local) => local,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let exchange = local.addresses.rest;
    let admin_token = local.admin_token;
    let bare = local.runtime().block_on(async { bare_server().await });

    let client_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut reports = Reports::new("loadgen", &args.report);
    client_runtime.block_on(async {
        let keys = match seed(exchange, admin_token, args.connections).await {
            Ok(keys) => keys,
            Err(error) => {
                eprintln!("error: seeding the exchange: {error}");
                FAILED.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        println!(
            "machine: {} cores; {} keep-alive connections; exchange durability {}; {} s per rate",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.connections,
            args.durability,
            args.seconds
        );
        for &rate in &args.rates {
            let offered = if rate == 0 { "max".to_string() } else { format_rate(rate as f64) };
            let (done, histogram) = load(bare, None, rate, args.seconds, args.connections).await;
            println!(
                "bare hyper handler, offered {offered:>6}/s: {} req/s | {}",
                format_rate(done),
                percentiles(&histogram)
            );
            reports.add(&format!("bare hyper at {offered} per s"), &histogram);
            for &api in &args.apis {
                let (done, histogram) =
                    load(exchange, Some((&keys, api)), rate, args.seconds, args.connections).await;
                let label = match api {
                    Api::Native => "exchange /order,       ",
                    Api::Binance => "exchange /api/v3/order,",
                };
                println!(
                    "{label} offered {offered:>6}/s: {} req/s | {}",
                    format_rate(done),
                    percentiles(&histogram)
                );
                reports.add(&format!("{api:?} at {offered} per s").to_lowercase(), &histogram);
            }
        }
    });
    drop(client_runtime);
    drop(local);
    if let Err(error) = reports.write() {
        eprintln!("error: {error}");
        return std::process::ExitCode::FAILURE;
    }
    if FAILED.load(Ordering::Relaxed) > 0 {
        eprintln!("error: {} requests failed", FAILED.load(Ordering::Relaxed));
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// A hyper server whose one handler returns a fixed JSON body.
async fn bare_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
                    let body =
                        r#"{"order_id":1,"status":"new","filled_quantity":"0","remaining_quantity":"0.001"}"#;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Runs one rate for `seconds` over `connections`; returns completed
/// requests per second and the round-trip histogram. With keys, requests
/// alternate between placing a resting buy and cancelling it by its client
/// order id, through `api`; without, they go to the bare handler.
async fn load(
    address: SocketAddr,
    keys: Option<(&[Key], Api)>,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> (f64, Histogram<u64>) {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let epoch = Instant::now() + Duration::from_millis(20);
    let deadline = epoch + Duration::from_secs(seconds);
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..connections {
        let key = keys.map(|(keys, api)| (keys[index].api_key.clone(), keys[index].secret.clone(), api));
        let completed = Arc::clone(&completed);
        // Each connection has its share of the schedule, offset so that
        // together they are uniform.
        let interval =
            Duration::from_nanos((1_000_000_000 * connections as u64).checked_div(rate).unwrap_or(0));
        let offset = Duration::from_nanos((1_000_000_000 * index as u64).checked_div(rate).unwrap_or(0));
        tasks.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let Ok(mut connection) = Connection::open(address).await else { return histogram };
            let mut n: u64 = 0;
            loop {
                let intended = epoch + offset + interval * n as u32;
                if intended >= deadline {
                    break;
                }
                if rate > 0 {
                    // The runtime's timer ticks in milliseconds: sleep to
                    // just before the send time, then yield until it.
                    if let Some(early) = intended.checked_sub(Duration::from_millis(2)) {
                        tokio::time::sleep_until(early.into()).await;
                    }
                    while Instant::now() < intended {
                        tokio::task::yield_now().await;
                    }
                }
                let started = if rate > 0 { intended } else { Instant::now() };
                let result = match &key {
                    None => connection.send("POST", "/order", &[], String::from("{}")).await,
                    Some((api_key, secret, Api::Binance)) => {
                        let client_order_id = format!("lg{run}-{index}-{}", n / 2);
                        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                        let headers = [("x-mbx-apikey", api_key.as_str()), ("content-type", "application/x-www-form-urlencoded")];
                        if n.is_multiple_of(2) {
                            let params = format!(
                                "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price={}&newClientOrderId={client_order_id}&timestamp={now_ms}",
                                1000 + (n % 500)
                            );
                            let signature = gateway::auth::sign(secret, &params, b"");
                            let body = format!("{params}&signature={signature}");
                            connection.send("POST", "/api/v3/order", &headers, body).await
                        } else {
                            let params = format!("symbol=BTCUSDT&origClientOrderId={client_order_id}&timestamp={now_ms}");
                            let signature = gateway::auth::sign(secret, &params, b"");
                            let uri = format!("/api/v3/order?{params}&signature={signature}");
                            connection.send("DELETE", &uri, &headers, String::new()).await
                        }
                    }
                    Some((api_key, secret, Api::Native)) => {
                        let client_order_id = format!("lg{run}-{index}-{}", n / 2);
                        // Requests differ by their client order id, so two in
                        // one millisecond are not replays of each other.
                        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                        let (method, target, body) = if n.is_multiple_of(2) {
                            let body = format!(
                                r#"{{"market":"BTC-USDT","side":"buy","type":"limit","price":"{}","quantity":"0.001","client_order_id":"{client_order_id}"}}"#,
                                1000 + (n % 500)
                            );
                            let query = format!("timestamp={now_ms}");
                            ("POST", query, body)
                        } else {
                            ("DELETE", format!("client_order_id={client_order_id}&timestamp={now_ms}"), String::new())
                        };
                        let signature = gateway::auth::sign(secret, &target, body.as_bytes());
                        let uri = format!("/order?{target}&signature={signature}");
                        connection.send(method, &uri, &[("x-mbx-apikey", api_key)], body).await
                    }
                };
                match result {
                    Ok((200, _)) => {
                        histogram.saturating_record((started.elapsed().as_nanos() as u64).max(1));
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => {
                        eprintln!("request failed: {status} {}", String::from_utf8_lossy(&body));
                        FAILED.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        eprintln!("request failed: {error}");
                        FAILED.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                n += 1;
                if rate == 0 && Instant::now() >= deadline {
                    break;
                }
            }
            histogram
        }));
    }
    let mut histogram = latency_histogram();
    for task in tasks {
        if let Ok(part) = task.await {
            let _ = histogram.add(&part);
        }
    }
    let elapsed = Instant::now().saturating_duration_since(epoch).as_secs_f64().max(1e-9);
    (completed.load(Ordering::Relaxed) as f64 / elapsed, histogram)
}
