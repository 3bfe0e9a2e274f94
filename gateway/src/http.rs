//! The REST listener's one entry point: reads a request (its body within
//! `request_body_max_bytes`) and hands it by path to the Binance router
//! (`/api/v3/`, `/sapi/v1/`) or to the native one (everything else), so
//! that neither router knows the other.

use std::convert::Infallible;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument;

use crate::auth::API_KEY_HEADER;
use crate::binance::BinanceError;
use crate::error::ApiError;
use crate::metrics::Api;
use crate::pipeline::Publisher;
use crate::response::{self, Body};
use crate::state::AppState;
use crate::{binance, rest, ws};

/// Where the Binance-compatible REST API lives.
const BINANCE_PREFIXES: [&str; 2] = ["/api/v3/", "/sapi/v1/"];

/// Who sent a request: the address, and the connection's socket (for a
/// WebSocket upgrade, which takes the connection over).
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub peer: IpAddr,
    pub socket: RawFd,
}

/// Answers one request; never fails (errors become JSON answers). A
/// WebSocket handshake is handed to the WebSocket server.
pub async fn handle(
    state: Arc<AppState>,
    producer: Arc<Mutex<Publisher>>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if fastwebsockets::upgrade::is_upgrade_request(&request) {
        let publisher = match producer.lock() {
            Ok(publisher) => publisher.clone(),
            Err(_) => return Ok(response::api_error(&ApiError::busy())),
        };
        let answer = ws::upgrade(request, state, publisher, client.peer, client.socket);
        return Ok(answer.map(|_| Body::new(Bytes::new())));
    }
    let peer = client.peer;
    let binance = BINANCE_PREFIXES.iter().any(|prefix| request.uri().path().starts_with(prefix));
    let api = if binance { Api::Binance } else { Api::Native };
    let started = Instant::now();
    // Every line logged while the request is served names it.
    let id = request_id(&request);
    let span =
        tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let answering = crate::app::handling_request(answer(&state, &producer, peer, request, binance));
    let mut response = answering.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    state.health.metrics.request(api, response.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_us = elapsed.as_micros() as u64,
            "answered"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

/// The header a request's id travels in: a client may send its own (it is
/// used if it is 1 to 64 letters, digits, `-`, `_` or `.`), and every
/// answer carries the one its log lines name.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
const REQUEST_ID_MAX_BYTES: usize = 64;

/// The client's request id if it is usable, else a new one: a random
/// prefix per process and a counter, unique across restarts.
fn request_id(request: &Request<Incoming>) -> String {
    let sent = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
    let usable = |id: &&str| {
        (1..=REQUEST_ID_MAX_BYTES).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if let Some(id) = sent.filter(usable) {
        return id.to_string();
    }
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| crate::auth::random_alphanumeric(8).unwrap_or_else(|_| "r".into()));
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn answer(
    state: &AppState,
    producer: &Mutex<Publisher>,
    peer: IpAddr,
    request: Request<Incoming>,
    binance: bool,
) -> Response<Body> {
    let read = match read(state, request).await {
        Ok(read) => read,
        Err(error) if binance => {
            let error = BinanceError::from(error);
            return response::json(error.status, error.body().to_string());
        }
        Err(error) => return response::api_error(&error),
    };
    if binance {
        let request = binance::rest::Request {
            method: &read.method,
            path: &read.path,
            query: &read.query,
            api_key: read.api_key.as_deref(),
            body: &read.body,
            peer,
        };
        binance::rest::handle(state, producer, request).await
    } else {
        let request = rest::Request {
            method: &read.method,
            path: &read.path,
            query: &read.query,
            api_key: read.api_key.as_deref(),
            admin_token: read.admin_token.as_deref(),
            body: &read.body,
        };
        rest::handle(state, producer, request).await
    }
}

/// A request with its body read (within the limit).
struct Read {
    method: Method,
    path: String,
    query: String,
    api_key: Option<String>,
    admin_token: Option<String>,
    body: Bytes,
}

async fn read(state: &AppState, request: Request<Incoming>) -> Result<Read, ApiError> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = Limited::new(body, state.body_max_bytes).collect().await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {} bytes", state.body_max_bytes),
        )
    })?;
    Ok(Read {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        api_key: header(API_KEY_HEADER),
        admin_token: header(rest::ADMIN_TOKEN_HEADER),
        body: body.to_bytes(),
    })
}
