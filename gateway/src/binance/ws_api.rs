//! Binance's WebSocket API at `/ws-api/v3`: order entry, queries and the
//! user data stream over one socket.
//!
//! Requests are `{"id": ..., "method": "order.place", "params": {...}}`;
//! answers `{"id": ..., "status": 200, "result": ..., "rateLimits": [...]}`
//! or `{"id": ..., "status": 400, "error": {"code": -2010, "msg": ...}}`.
//! Signed requests carry `apiKey`, `timestamp` and `signature` in their
//! params; the signed payload is every other parameter sorted by name as
//! `name=value` joined with `&` (Binance's scheme for this API), checked by
//! the exchange's one signing routine. `userDataStream.subscribe.signature`
//! makes the connection receive `executionReport`,
//! `outboundAccountPosition` and `balanceUpdate` events as
//! `{"subscriptionId": n, "event": {...}}`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use engine_core::UserId;
use serde_json::{json, Value};

use super::error::{Action, BinanceError};
use super::lists;
use super::market;
use super::params::Params;
use super::trading;
use crate::clock::now_ms;
use crate::pipeline::Publisher;
use crate::state::AppState;
use crate::subscribers::Subscribers;

/// The signed payload of a WebSocket API request: its parameters but the
/// signature, sorted by name, as `name=value` joined with `&`.
pub fn signature_payload(params: &serde_json::Map<String, Value>) -> String {
    let mut pairs: Vec<(&String, String)> = params
        .iter()
        .filter(|(name, _)| name.as_str() != "signature")
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("&")
}

pub struct Session {
    connection: u64,
    peer: IpAddr,
    subscribers: Arc<Subscribers>,
    next_subscription: u64,
}

#[derive(serde::Deserialize)]
struct Request {
    #[serde(default)]
    id: Value,
    method: String,
    #[serde(default)]
    params: Value,
}

impl Session {
    pub fn new(connection: u64, peer: IpAddr, subscribers: Arc<Subscribers>) -> Session {
        Session { connection, peer, subscribers, next_subscription: 0 }
    }

    pub async fn handle(&mut self, state: &AppState, publisher: &Mutex<Publisher>, payload: &[u8]) -> Value {
        let request: Request = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => {
                let error = BinanceError::bad_request(-1102, format!("Malformed request: {e}"));
                return json!({ "id": null, "status": 400, "error": error.body() });
            }
        };
        let weight = weight(&request.method);
        let used = state.binance.use_weight(self.peer, weight, now_ms());
        let wanted = wants_rate_limits(&request.params);
        let result = match (&used, &wanted) {
            (Err(error), _) | (_, Err(error)) => Err(error.clone()),
            (Ok(_), Ok(_)) => crate::app::handling_request(self.dispatch(state, publisher, &request)).await,
        };
        let count = used.unwrap_or(state.binance.weight_limit_per_minute() + 1);
        let mut answer = match result {
            Ok(result) => json!({ "id": request.id, "status": 200, "result": result }),
            Err(error) => {
                let mut answer =
                    json!({ "id": request.id, "status": error.status.as_u16(), "error": error.body() });
                if let (Some(seconds), Some(object)) = (error.retry_after_s, answer.as_object_mut()) {
                    object.insert("retryAfter".into(), json!(now_ms() + seconds * 1_000));
                }
                answer
            }
        };
        // Binance's default is to report them; `returnRateLimits: false` leaves them out.
        if let (true, Some(object)) = (wanted.unwrap_or(true), answer.as_object_mut()) {
            let rate_limits = json!([{
                "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                "limit": state.binance.weight_limit_per_minute(), "count": count,
            }]);
            object.insert("rateLimits".into(), rate_limits);
        }
        answer
    }

    fn signed(
        &self,
        state: &AppState,
        method: &str,
        params: &Value,
        changes_state: bool,
    ) -> Result<UserId, BinanceError> {
        let object = params.as_object().ok_or_else(|| BinanceError::mandatory("params"))?;
        let api_key =
            object.get("apiKey").and_then(Value::as_str).ok_or_else(|| BinanceError::mandatory("apiKey"))?;
        let signature = object
            .get("signature")
            .and_then(Value::as_str)
            .ok_or_else(|| BinanceError::mandatory("signature"))?;
        let query = format!("{}&signature={signature}", signature_payload(object));
        let action = match method {
            "order.place" | "order.test" | "order.cancelReplace" => Action::Place,
            "order.cancel" | "openOrders.cancelAll" => Action::Cancel,
            "order.amend.keepPriority" => Action::Amend,
            _ => Action::Other,
        };
        let signed = state
            .auth
            .authenticate(Some(api_key), &query, b"", now_ms(), changes_state)
            .map_err(|error| BinanceError::from_auth(error, action))?;
        crate::app::carry_replay_mark(signed.replay_mark);
        Ok(signed.user)
    }

    async fn dispatch(
        &mut self,
        state: &AppState,
        publisher: &Mutex<Publisher>,
        request: &Request,
    ) -> Result<Value, BinanceError> {
        let raw = &request.params;
        let mut params = Params::from_json(raw)?;
        // Read by `handle` for every method (and signed with the rest).
        params.remove(RETURN_RATE_LIMITS);
        let p = &params;
        match request.method.as_str() {
            "ping" => p.only(&[]).map(|_| json!({})),
            "time" => p.only(&[]).map(|_| market::time()),
            "exchangeInfo" => market::exchange_info(state, p),
            "depth" => market::depth(state, p),
            "trades.recent" => market::trades(state, p),
            "trades.aggregate" => market::agg_trades(state, p),
            "trades.historical" => market::historical_trades(state, p),
            "klines" => market::klines(state, p).await,
            "ticker.24hr" => market::ticker_24hr(state, p),
            "ticker.book" => market::book_ticker(state, p),
            "ticker.price" => market::price(state, p),
            "order.place" => {
                trading::place(state, publisher, self.signed(state, &request.method, raw, true)?, p, false)
                    .await
            }
            "order.test" => {
                trading::place(state, publisher, self.signed(state, &request.method, raw, true)?, p, true)
                    .await
            }
            "order.cancel" => {
                trading::cancel(state, publisher, self.signed(state, &request.method, raw, true)?, p).await
            }
            "order.cancelReplace" => {
                trading::cancel_replace(state, publisher, self.signed(state, &request.method, raw, true)?, p)
                    .await
            }
            "order.amend.keepPriority" => {
                trading::amend_keep_priority(
                    state,
                    publisher,
                    self.signed(state, &request.method, raw, true)?,
                    p,
                )
                .await
            }
            "order.status" => {
                trading::status(state, self.signed(state, &request.method, raw, false)?, p).await
            }
            "openOrders.status" => {
                trading::open_orders(state, self.signed(state, &request.method, raw, false)?, p)
            }
            "openOrders.cancelAll" => {
                trading::cancel_all(state, publisher, self.signed(state, &request.method, raw, true)?, p)
                    .await
            }
            "orderList.place.oco" => {
                lists::place_oco(state, publisher, self.signed(state, &request.method, raw, true)?, p).await
            }
            "orderList.place.oto" => {
                lists::place_oto(state, publisher, self.signed(state, &request.method, raw, true)?, p).await
            }
            "orderList.cancel" => {
                lists::cancel(state, publisher, self.signed(state, &request.method, raw, true)?, p).await
            }
            "orderList.status" => lists::status(state, self.signed(state, &request.method, raw, false)?, p),
            "openOrderLists.status" => {
                lists::open(state, self.signed(state, &request.method, raw, false)?, p)
            }
            "allOrderLists" => lists::all(state, self.signed(state, &request.method, raw, false)?, p),
            "account.status" => trading::account(state, self.signed(state, &request.method, raw, false)?, p),
            "myTrades" => {
                trading::my_trades(state, self.signed(state, &request.method, raw, false)?, p).await
            }
            "allOrders" => {
                trading::all_orders(state, self.signed(state, &request.method, raw, false)?, p).await
            }
            "userDataStream.subscribe.signature" => {
                p.only(&[])?;
                let user = self.signed(state, &request.method, raw, true)?;
                let subscription = self.next_subscription;
                self.next_subscription += 1;
                self.subscribers.set_binance_user(self.connection, Some((user, subscription)));
                Ok(json!({ "subscriptionId": subscription }))
            }
            // The listen key's lifecycle over the socket (the key's stream
            // itself is at /ws/<listenKey>), secured by the API key alone.
            "userDataStream.start" => {
                p.only(&["apiKey"])?;
                let user = state.auth.identify(p.get("apiKey"), now_ms()).map_err(BinanceError::from)?;
                Ok(json!({ "listenKey": state.binance.open_listen_key(user, now_ms())? }))
            }
            "userDataStream.ping" => {
                p.only(&["apiKey", "listenKey"])?;
                let user = state.auth.identify(p.get("apiKey"), now_ms()).map_err(BinanceError::from)?;
                state.binance.keep_listen_key(user, p.required("listenKey")?, now_ms()).map(|_| json!({}))
            }
            "userDataStream.stop" => {
                p.only(&["apiKey", "listenKey"])?;
                let user = state.auth.identify(p.get("apiKey"), now_ms()).map_err(BinanceError::from)?;
                let key = p.required("listenKey")?;
                state.binance.close_listen_key(user, key, now_ms())?;
                super::streams::close_listen_key(&self.subscribers, key);
                Ok(json!({}))
            }
            "userDataStream.unsubscribe" => {
                p.only(&["subscriptionId"])?;
                self.subscribers.set_binance_user(self.connection, None);
                Ok(json!({}))
            }
            other => Err(BinanceError::bad_request(
                -1020,
                format!("This operation is not supported: unknown method {other:?}."),
            )),
        }
    }
}

/// The parameter every method takes: whether the answer carries `rateLimits`.
const RETURN_RATE_LIMITS: &str = "returnRateLimits";

/// `returnRateLimits`: true (Binance's default) unless sent false; a JSON
/// boolean or its text.
fn wants_rate_limits(params: &Value) -> Result<bool, BinanceError> {
    match params.get(RETURN_RATE_LIMITS) {
        None => Ok(true),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(Value::String(text)) if text.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(text)) if text.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(BinanceError::invalid_value(RETURN_RATE_LIMITS, "must be true or false")),
    }
}

/// Binance's request weight of each WebSocket API method.
fn weight(method: &str) -> u64 {
    match method {
        "exchangeInfo" | "account.status" | "myTrades" | "allOrders" => 20,
        "depth" => 5,
        "trades.recent" | "trades.historical" => 25,
        "klines" => 2,
        "trades.aggregate" | "order.status" | "order.amend.keepPriority" | "orderList.status" => 4,
        "allOrderLists" => 20,
        "ticker.24hr" => 2,
        "openOrders.status" | "openOrderLists.status" => 6,
        "ticker.book" | "ticker.price" => 2,
        "userDataStream.start" | "userDataStream.ping" | "userDataStream.stop" => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Binance's WebSocket API documentation (HMAC).
    #[test]
    fn the_payload_and_signature_of_binances_documented_example() {
        let params = json!({
            "symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC",
            "quantity": "0.01000000", "price": "52000.00", "newOrderRespType": "ACK",
            "recvWindow": 100, "timestamp": 1645423376532u64,
            "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
            "signature": "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a",
        });
        let payload = signature_payload(params.as_object().unwrap());
        assert_eq!(
            payload,
            "apiKey=vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A&newOrderRespType=ACK\
             &price=52000.00&quantity=0.01000000&recvWindow=100&side=SELL&symbol=BTCUSDT&timeInForce=GTC\
             &timestamp=1645423376532&type=LIMIT"
        );
        let secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
        assert_eq!(
            crate::auth::sign(secret, &payload, b""),
            "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a"
        );
        // And the exchange's one signing routine accepts it.
        let keys = crate::auth::KeyTable::default();
        let key =
            engine_core::ApiKey::new("vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A")
                .unwrap();
        keys.insert(key, UserId(9), engine_core::ApiSecret::new(secret).unwrap());
        let auth = crate::auth::Authenticator::new(keys, 60_000, 10, 100);
        let query =
            format!("{payload}&signature=cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a");
        assert_eq!(
            auth.authenticate(Some(key.as_str()), &query, b"", 1_645_423_376_532 + 50, true).map(|a| a.user),
            Ok(UserId(9))
        );
        let late =
            auth.authenticate(Some(key.as_str()), &query, b"", 1_645_423_376_532 + 150, true).unwrap_err();
        assert_eq!(late.code, "timestamp_outside_recv_window", "recvWindow 100 ms is honoured");
    }
}
