//! The REST listener's one entry point: reads a request (its body within
//! `request_body_max_bytes`) and hands it by path to the Binance router
//! (`/api/v3/`, `/sapi/v1/`) or to the native one (everything else), so
//! that neither router knows the other.

use std::convert::Infallible;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

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
    let response = answer(&state, &producer, peer, request, binance).await;
    state.health.metrics.request(api, response.status().as_u16(), started.elapsed());
    Ok(response)
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
