//! Routing of `/api/v3/...` (and the two `/sapi/v1/...` wallet endpoints
//! ccxt reads): request weight, signing (the exchange's one
//! signing routine, with the signature in the query or the form body), and
//! answers with Binance's error body and rate-limit headers.

use std::net::IpAddr;
use std::sync::Mutex;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{Action, BinanceError};
use super::lists;
use super::market;
use super::params::Params;
use super::streams;
use super::trading;
use crate::clock::now_ms;
use crate::pipeline::Publisher;
use crate::response::{self, Body};
use crate::state::AppState;

/// How a route is secured (Binance's security types).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Security {
    /// Public market data.
    None,
    /// The API key alone (`USER_STREAM`: the listen key endpoints).
    ApiKey,
    /// The API key and an HMAC signature (`TRADE`, `USER_DATA`).
    Signed,
}

/// Every Binance route and how it is secured: the OpenAPI description
/// lists them.
const TABLE: &[(&str, &str, Security)] = &[
    ("GET", "/api/v3/ping", Security::None),
    ("GET", "/api/v3/time", Security::None),
    ("GET", "/api/v3/exchangeInfo", Security::None),
    ("GET", "/api/v3/depth", Security::None),
    ("GET", "/api/v3/trades", Security::None),
    ("GET", "/api/v3/aggTrades", Security::None),
    ("GET", "/api/v3/historicalTrades", Security::None),
    ("GET", "/api/v3/klines", Security::None),
    ("GET", "/api/v3/ticker/24hr", Security::None),
    ("GET", "/api/v3/ticker/bookTicker", Security::None),
    ("GET", "/api/v3/ticker/price", Security::None),
    ("POST", "/api/v3/order", Security::Signed),
    ("POST", "/api/v3/order/test", Security::Signed),
    ("DELETE", "/api/v3/order", Security::Signed),
    ("GET", "/api/v3/order", Security::Signed),
    ("GET", "/api/v3/openOrders", Security::Signed),
    ("DELETE", "/api/v3/openOrders", Security::Signed),
    ("POST", "/api/v3/order/cancelReplace", Security::Signed),
    ("PUT", "/api/v3/order/amend/keepPriority", Security::Signed),
    ("GET", "/api/v3/account", Security::Signed),
    ("GET", "/api/v3/myTrades", Security::Signed),
    ("GET", "/api/v3/allOrders", Security::Signed),
    ("POST", "/api/v3/orderList/oco", Security::Signed),
    ("POST", "/api/v3/orderList/oto", Security::Signed),
    ("DELETE", "/api/v3/orderList", Security::Signed),
    ("GET", "/api/v3/orderList", Security::Signed),
    ("GET", "/api/v3/openOrderList", Security::Signed),
    ("GET", "/api/v3/allOrderList", Security::Signed),
    ("POST", "/api/v3/userDataStream", Security::ApiKey),
    ("PUT", "/api/v3/userDataStream", Security::ApiKey),
    ("DELETE", "/api/v3/userDataStream", Security::ApiKey),
    // Binance's wallet API, where ccxt's fetch_status and fetch_trading_fees go.
    ("GET", "/sapi/v1/system/status", Security::None),
    ("GET", "/sapi/v1/asset/tradeFee", Security::Signed),
];

/// Every Binance route, with its methods.
pub const ROUTES: &[(&str, &str)] = &{
    let mut routes = [("", ""); TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        routes[i] = (TABLE[i].0, TABLE[i].1);
        i += 1;
    }
    routes
};

/// What a request to `/api/v3` carries, its body already read.
pub struct Request<'r> {
    pub method: &'r Method,
    pub path: &'r str,
    pub query: &'r str,
    pub api_key: Option<&'r str>,
    pub body: &'r [u8],
    pub peer: IpAddr,
}

/// Answers one `/api/v3` request; never fails.
pub async fn handle(state: &AppState, producer: &Mutex<Publisher>, request: Request<'_>) -> Response<Body> {
    let weight = weight(&request);
    let used = state.binance.use_weight(request.peer, weight, now_ms());
    let result = match &used {
        Ok(_) => route(state, producer, &request).await,
        Err(error) => Err(error.clone()),
    };
    let used_weight = match used {
        Ok(total) => total,
        Err(_) => state.binance.weight_limit_per_minute() + 1,
    };
    let (status, body, retry_after_s, leader) = match result {
        Ok(value) => (StatusCode::OK, value, None, None),
        Err(error) => (error.status, error.body(), error.retry_after_s, error.leader),
    };
    let mut answer = response::json(status, body.to_string());
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    if let Ok(value) = HeaderValue::from_str(&used_weight.to_string()) {
        headers.insert("x-mbx-used-weight", value.clone());
        headers.insert("x-mbx-used-weight-1m", value);
    }
    if let Some(seconds) = retry_after_s {
        response::retry_after(&mut answer, seconds);
    }
    if let Some(leader) = &leader {
        response::x_leader(&mut answer, leader);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response::allow(&mut answer, ROUTES, request.path);
    }
    answer
}

/// Binance's request weight of each endpoint.
fn weight(request: &Request<'_>) -> u64 {
    let has = |name: &str| crate::auth::query_pairs(request.query).any(|(n, v)| n == name && !v.is_empty());
    let limit = || {
        crate::auth::query_pairs(request.query)
            .find(|(n, _)| *n == "limit")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(market::DEPTH_LIMIT_DEFAULT)
    };
    match (request.method.as_str(), request.path) {
        ("GET", "/api/v3/exchangeInfo") => 20,
        ("GET", "/api/v3/depth") => match limit() {
            0..=100 => 5,
            101..=500 => 25,
            501..=1_000 => 50,
            _ => 250,
        },
        ("GET", "/api/v3/trades" | "/api/v3/historicalTrades") => 25,
        ("GET", "/api/v3/klines") => 2,
        ("GET", "/api/v3/aggTrades") => 4,
        ("GET", "/api/v3/ticker/24hr") => {
            if has("symbol") {
                2
            } else {
                80
            }
        }
        ("GET", "/api/v3/ticker/bookTicker" | "/api/v3/ticker/price") => {
            if has("symbol") {
                2
            } else {
                4
            }
        }
        ("GET", "/api/v3/order") => 4,
        ("GET", "/api/v3/openOrders") => {
            if has("symbol") {
                6
            } else {
                80
            }
        }
        ("PUT", "/api/v3/order/amend/keepPriority") => 4,
        ("GET", "/api/v3/orderList") => 4,
        ("GET", "/api/v3/openOrderList") => 6,
        ("GET", "/api/v3/allOrderList") => 20,
        ("GET", "/api/v3/account" | "/api/v3/myTrades" | "/api/v3/allOrders") => 20,
        (_, "/api/v3/userDataStream") => 2,
        _ => 1,
    }
}

async fn route(
    state: &AppState,
    producer: &Mutex<Publisher>,
    request: &Request<'_>,
) -> Result<Value, BinanceError> {
    let action = match (request.method.as_str(), request.path) {
        ("POST", _) => Action::Place,
        ("DELETE", _) => Action::Cancel,
        ("PUT", _) => Action::Amend,
        _ => Action::Other,
    };
    // The route first (405, 404), then a signed endpoint authenticates,
    // then the parameters are read: a request without valid credentials
    // learns nothing else.
    let route =
        TABLE.iter().find(|(method, path, _)| *method == request.method.as_str() && *path == request.path);
    let Some(&(_, _, security)) = route else {
        return Err(if ROUTES.iter().any(|(_, known)| *known == request.path) {
            BinanceError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                -1020,
                format!("This operation is not supported: {} {}.", request.method, request.path),
            )
        } else {
            BinanceError::new(
                StatusCode::NOT_FOUND,
                -1020,
                format!("This operation is not supported: no endpoint {} (see /openapi.json).", request.path),
            )
        });
    };
    let user = match security {
        Security::None => None,
        Security::ApiKey => Some(state.auth.identify(request.api_key, now_ms()).map_err(BinanceError::from)?),
        Security::Signed => {
            let changes_state = request.method != Method::GET;
            let signed = state
                .auth
                .authenticate(request.api_key, request.query, request.body, now_ms(), changes_state)
                .map_err(|error| BinanceError::from_auth(error, action))?;
            crate::app::carry_replay_mark(signed.replay_mark);
            Some(signed.user)
        }
    };
    let signed =
        || user.ok_or_else(|| BinanceError::internal("an unsigned request reached a signed endpoint"));
    let params = Params::from_http(request.query, request.body, true)?;
    let p = &params;
    match (request.method.as_str(), request.path) {
        ("GET", "/api/v3/ping") => p.only(&[]).map(|_| json!({})),
        ("GET", "/api/v3/time") => p.only(&[]).map(|_| market::time()),
        ("GET", "/api/v3/exchangeInfo") => market::exchange_info(state, p),
        ("GET", "/api/v3/depth") => market::depth(state, p),
        ("GET", "/api/v3/trades") => market::trades(state, p),
        ("GET", "/api/v3/aggTrades") => market::agg_trades(state, p),
        ("GET", "/api/v3/historicalTrades") => market::historical_trades(state, p),
        ("GET", "/api/v3/klines") => market::klines(state, p).await,
        ("GET", "/api/v3/ticker/24hr") => market::ticker_24hr(state, p),
        ("GET", "/api/v3/ticker/bookTicker") => market::book_ticker(state, p),
        ("GET", "/api/v3/ticker/price") => market::price(state, p),
        ("POST", "/api/v3/order") => trading::place(state, producer, signed()?, p, false).await,
        ("POST", "/api/v3/order/test") => trading::place(state, producer, signed()?, p, true).await,
        ("DELETE", "/api/v3/order") => trading::cancel(state, producer, signed()?, p).await,
        ("GET", "/api/v3/order") => trading::status(state, signed()?, p).await,
        ("GET", "/api/v3/openOrders") => trading::open_orders(state, signed()?, p),
        ("DELETE", "/api/v3/openOrders") => trading::cancel_all(state, producer, signed()?, p).await,
        ("POST", "/api/v3/order/cancelReplace") => {
            trading::cancel_replace(state, producer, signed()?, p).await
        }
        ("PUT", "/api/v3/order/amend/keepPriority") => {
            trading::amend_keep_priority(state, producer, signed()?, p).await
        }
        ("GET", "/api/v3/account") => trading::account(state, signed()?, p),
        ("GET", "/api/v3/myTrades") => trading::my_trades(state, signed()?, p).await,
        ("GET", "/api/v3/allOrders") => trading::all_orders(state, signed()?, p).await,
        ("POST", "/api/v3/orderList/oco") => lists::place_oco(state, producer, signed()?, p).await,
        ("POST", "/api/v3/orderList/oto") => lists::place_oto(state, producer, signed()?, p).await,
        ("DELETE", "/api/v3/orderList") => lists::cancel(state, producer, signed()?, p).await,
        ("GET", "/api/v3/orderList") => lists::status(state, signed()?, p),
        ("GET", "/api/v3/openOrderList") => lists::open(state, signed()?, p),
        ("GET", "/api/v3/allOrderList") => lists::all(state, signed()?, p),
        ("POST", "/api/v3/userDataStream") => {
            p.only(&[])?;
            let key = state.binance.open_listen_key(signed()?, now_ms())?;
            Ok(json!({ "listenKey": key }))
        }
        ("PUT", "/api/v3/userDataStream") => {
            p.only(&["listenKey"])?;
            state.binance.keep_listen_key(signed()?, p.required("listenKey")?, now_ms()).map(|_| json!({}))
        }
        ("DELETE", "/api/v3/userDataStream") => {
            p.only(&["listenKey"])?;
            let key = p.required("listenKey")?;
            state.binance.close_listen_key(signed()?, key, now_ms())?;
            streams::close_listen_key(&state.subscribers, key);
            Ok(json!({}))
        }
        ("GET", "/sapi/v1/system/status") => market::system_status(state, p),
        ("GET", "/sapi/v1/asset/tradeFee") => trading::trade_fee(state, signed()?, p),
        _ => Err(BinanceError::internal("a listed route without a handler")),
    }
}
