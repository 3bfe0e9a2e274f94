//! The history endpoints served from PostgreSQL: a market's trades over any
//! time range, a user's trades and orders, and OHLCV candles. Without a
//! database they answer 503 `no_database` (recent trades still come from
//! the in-memory views through `GET /trade/history`).

use hyper::StatusCode;
use persistence::scale::Amount;
use persistence::{Range, CANDLE_INTERVALS};
use serde_json::{json, Value};

use crate::app::database_error;
use crate::clock::unix_ns;
use crate::error::ApiError;
use crate::query::param;
use crate::state::AppState;
use crate::views::Views;

const LIMIT_DEFAULT: u32 = 100;
const LIMIT_MAX: u32 = 1_000;
/// The deepest page a market's trades are read at by `offset`; deeper
/// pages are read by `from_id` or `to`, which an index serves.
pub const OFFSET_MAX: u32 = 100_000;

fn no_database() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_database",
        "history beyond recent trades needs PostgreSQL: start the exchange with DATABASE_URL set",
    )
}

/// Whether a request asks for more than the in-memory recent trades.
pub fn wants_database(query: &str) -> Result<bool, ApiError> {
    Ok(param(query, "from")?.is_some() || param(query, "to")?.is_some() || param(query, "from_id")?.is_some())
}

fn range(query: &str, offset_allowed: bool) -> Result<Range, ApiError> {
    let number = |name: &'static str| -> Result<Option<u64>, ApiError> {
        param(query, name)?
            .map(|text| {
                text.parse::<u64>()
                    .ok()
                    .filter(|n| *n <= i64::MAX as u64 / 1_000_000)
                    .ok_or_else(|| ApiError::invalid(name, format!("{text:?} is not a whole number")))
            })
            .transpose()
    };
    let limit = match param(query, "limit")? {
        None => LIMIT_DEFAULT,
        Some(text) => text.parse::<u32>().ok().filter(|n| (1..=LIMIT_MAX).contains(n)).ok_or_else(|| {
            ApiError::invalid("limit", format!("{text:?} must be a whole number from 1 to {LIMIT_MAX}"))
        })?,
    };
    let offset = match param(query, "offset")? {
        None => 0,
        Some(_) if !offset_allowed => {
            return Err(ApiError::invalid("offset", "this endpoint pages by from_id, from and to"));
        }
        Some(text) => text.parse::<u32>().ok().filter(|n| *n <= OFFSET_MAX).ok_or_else(|| {
            ApiError::invalid(
                "offset",
                format!("{text:?} must be a whole number up to {OFFSET_MAX}; page deeper with from_id or to"),
            )
        })?,
    };
    let range =
        Range { from_ms: number("from")?, to_ms: number("to")?, from_id: number("from_id")?, limit, offset };
    if let (Some(from), Some(to)) = (range.from_ms, range.to_ms) {
        if from >= to {
            return Err(ApiError::invalid(
                "to",
                format!("the range is empty: from {from} is not before to {to}"),
            ));
        }
    }
    Ok(range)
}

fn market_id(views: &Views, query: &str, required: bool) -> Result<Option<i32>, ApiError> {
    let Some(name) = param(query, "market")? else {
        return if required {
            Err(ApiError::bad_request("missing_parameter", "market is required"))
        } else {
            Ok(None)
        };
    };
    let market = views.market_by_name(&name).ok_or_else(|| {
        ApiError::not_found("unknown_market", format!("no market {name:?}; GET /markets lists them"))
    })?;
    Ok(Some(market.market.id.0 as i32))
}

/// The market and range a history request asks for, checked before the
/// database is asked (bad input is a 400 or 404 with or without one), and
/// the database to ask.
fn request<'s>(
    state: &'s AppState,
    query: &str,
    market_required: bool,
    offset_allowed: bool,
) -> Result<(Option<i32>, Range, &'s persistence::History), ApiError> {
    let (market, range) = {
        let views = state.views()?;
        (market_id(&views, query, market_required)?, range(query, offset_allowed)?)
    };
    let (_, history) = state.database.as_ref().ok_or_else(no_database)?;
    Ok((market, range, history))
}

/// A history answer from a database seeded from a snapshot image says
/// where its history starts (`history_starts_after`: the image's sequence
/// number and time); nothing before it is in the database, and an answer
/// without it must not look like "there was nothing".
async fn mark_seeded(history: &persistence::History, mut answer: Value) -> Result<Value, ApiError> {
    if let Some(seeded) = history.seeded_from().await.map_err(database_error)? {
        answer["history_starts_after"] = json!({
            "seq": seeded.image_seq,
            "timestamp_ns": seeded.image_command_at.map(unix_ns),
        });
    }
    Ok(answer)
}

/// A stored amount as the in-memory views print it: without the column's
/// trailing zeros, so an answer has one shape with or without a database.
fn amount(value: Amount) -> String {
    value.0.normalize().to_string()
}

fn market_name(views: &Views, id: i32) -> String {
    views.markets.get(id as usize).map_or_else(|| id.to_string(), |m| m.name.clone())
}

fn asset_symbol(views: &Views, id: i32) -> String {
    views.assets.get(id as usize).map_or_else(|| id.to_string(), |a| a.symbol.to_string())
}

/// `GET /trade/history` with a database: a market's trades.
pub async fn market_trades(state: &AppState, query: &str) -> Result<Value, ApiError> {
    let (market, range, history) = request(state, query, true, true)?;
    let trades = history.trades(market, None, range).await.map_err(database_error)?;
    let answer = {
        let views = state.views()?;
        let trades: Vec<Value> = trades
            .iter()
            .map(|t| {
                json!({
                    "trade_id": t.trade_id,
                    "seq": t.seq,
                    "price": amount(t.price),
                    "quantity": amount(t.quantity),
                    "quote_quantity": amount(t.quote_quantity),
                    "taker_side": t.taker_side,
                    "timestamp_ns": unix_ns(t.executed_at),
                })
            })
            .collect();
        json!({ "market": market.map(|m| market_name(&views, m)), "trades": trades })
    };
    mark_seeded(history, answer).await
}

/// `GET /user/trades`: the signed-in user's trades, one row per order of
/// theirs in each: a trade they made with themself is two rows, the
/// buyer's and the seller's, each with its own order and fee.
pub async fn user_trades(
    state: &AppState,
    user: engine_core::UserId,
    query: &str,
) -> Result<Value, ApiError> {
    let (market, range, history) = request(state, query, false, false)?;
    let trades = history.user_trades(user.0 as i32, market, range).await.map_err(database_error)?;
    let answer = {
        let views = state.views()?;
        let trades: Vec<Value> = trades
            .iter()
            .map(|t| {
                json!({
                    "trade_id": t.trade_id,
                    "order_id": t.order_id,
                    "market": market_name(&views, t.market_id),
                    "side": if t.buyer { "buy" } else { "sell" },
                    "maker": t.maker,
                    "price": amount(t.price),
                    "quantity": amount(t.quantity),
                    "quote_quantity": amount(t.quote_quantity),
                    "fee": amount(t.fee),
                    "fee_asset": asset_symbol(&views, t.fee_asset_id),
                    "timestamp_ns": unix_ns(t.executed_at),
                })
            })
            .collect();
        json!({ "trades": trades })
    };
    mark_seeded(history, answer).await
}

/// `GET /orders/history`: the signed-in user's orders, open and closed.
pub async fn user_orders(
    state: &AppState,
    user: engine_core::UserId,
    query: &str,
) -> Result<Value, ApiError> {
    let (market, range, history) = request(state, query, false, false)?;
    let orders = history.orders(user.0 as i32, market, range).await.map_err(database_error)?;
    let answer = {
        let views = state.views()?;
        let orders: Vec<Value> = orders
            .iter()
            .map(|o| {
                json!({
                    "order_id": o.order_id,
                    "client_order_id": o.client_order_id,
                    "market": market_name(&views, o.market_id),
                    "side": o.side,
                    "type": o.order_type,
                    "time_in_force": o.time_in_force,
                    "price": o.price.map(amount),
                    "quantity": o.quantity.map(amount),
                    "quote_amount": o.quote_amount.map(amount),
                    "visible_quantity": o.visible_quantity.map(amount),
                    "trigger": o.trigger_kind.as_ref().map(|kind| json!({
                        "kind": kind,
                        "stop_price": o.stop_price.map(amount),
                        "trailing_bips": o.trailing_bips,
                    })),
                    "triggered_at_ns": o.triggered_at.map(unix_ns),
                    "trigger_price": o.trigger_price.map(amount),
                    "list_id": o.list_id,
                    "self_trade_prevention": o.self_trade_prevention,
                    "status": o.status,
                    "reject_reason": o.reject_reason,
                    "filled_quantity": amount(o.executed_quantity),
                    "filled_quote": amount(o.executed_quote),
                    "remaining_quantity": amount(o.remaining_quantity),
                    "created_at_ns": unix_ns(o.created_at),
                    "updated_at_ns": unix_ns(o.updated_at),
                    "closed_at_ns": o.closed_at.map(unix_ns),
                    "seq": o.updated_seq,
                })
            })
            .collect();
        json!({ "orders": orders })
    };
    mark_seeded(history, answer).await
}

/// `GET /candles`: OHLCV candles of a market.
pub async fn candles(state: &AppState, query: &str) -> Result<Value, ApiError> {
    let interval = param(query, "interval")?.unwrap_or_else(|| "1m".to_string());
    let minutes =
        CANDLE_INTERVALS.iter().find(|(name, _)| *name == interval).map(|(_, m)| *m).ok_or_else(|| {
            let names: Vec<&str> = CANDLE_INTERVALS.iter().map(|(name, _)| *name).collect();
            ApiError::invalid("interval", format!("{interval:?} is not one of {}", names.join(", ")))
        })?;
    let (market, range, history) = request(state, query, true, false)?;
    let market = market.unwrap_or_default();
    let candles = history.candles(market, minutes, range).await.map_err(database_error)?;
    let answer = {
        let views = state.views()?;
        let candles: Vec<Value> = candles
            .iter()
            .map(|c| {
                json!({
                    "open_time_ms": unix_ns(c.open_time) / 1_000_000,
                    "open": amount(c.open),
                    "high": amount(c.high),
                    "low": amount(c.low),
                    "close": amount(c.close),
                    "volume": amount(c.volume),
                    "quote_volume": amount(c.quote_volume),
                    "taker_buy_volume": amount(c.taker_buy_volume),
                    "taker_buy_quote_volume": amount(c.taker_buy_quote_volume),
                    "trades": c.trades,
                })
            })
            .collect();
        json!({ "market": market_name(&views, market), "interval": interval, "candles": candles })
    };
    mark_seeded(history, answer).await
}

/// The database writer's part of `/health` (see docs/persistence.md).
pub fn health(state: &AppState) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    match &state.database {
        None => Value::Null,
        Some((status, _)) => json!({
            "connected": status.connected.load(Relaxed),
            "written_seq": status.lag_seq().map(|_| status.cursor_seq.load(Relaxed)),
            "lag_seq": status.lag_seq(),
            "lag_ms": status.lag_ms(),
            "lag_unknown": status.lag_unknown(),
            "batches_dropped": status.batches_dropped.load(Relaxed),
            "commands_replayed": status.commands_replayed.load(Relaxed),
            "history_starts_after": status
                .history_starts_after()
                .map(|(seq, timestamp_ns)| json!({ "seq": seq, "timestamp_ns": timestamp_ns })),
            "failed_attempts": status.failed_attempts.load(Relaxed),
            "last_error": status.last_error(),
        }),
    }
}

/// Why the history database makes the exchange `degraded`, if it does.
pub fn degraded_reason(state: &AppState) -> Option<String> {
    state.database.as_ref().and_then(|(status, _)| status.degraded_reason())
}
