//! The REST API: routing, request parsing at the edge, and answers built
//! from the engine's events and the read views.

use std::sync::Mutex;

use engine_core::{
    ApiKey, ApiSecret, AssetId, ClientOrderId, Command, Contingency, DoneReason, EventKind, ListId, ListLeg,
    ListRef, Lots, MarketId, MarketRules, MarketStatus, NewOrder, NewOrderList, OrderId, OrderKind, OrderRef,
    SelfTradePrevention, Side, Symbol, TimeInForce, Trigger, TriggerKind, UserId,
};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::amounts::{self, parse_decimal, Scale};
use crate::app;
use crate::auth::random_alphanumeric;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::exposition;
use crate::history;
use crate::pipeline::Publisher;
use crate::query::param;
use crate::response::{self, Body};
use crate::state::AppState;
use crate::views::{FillView, MarketView, OrderView, Views};

/// Every route: the OpenAPI description must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/assets"),
    ("GET", "/markets"),
    ("GET", "/depth"),
    ("GET", "/ticker"),
    ("GET", "/trade/history"),
    ("GET", "/candles"),
    ("GET", "/user/trades"),
    ("GET", "/orders/history"),
    ("POST", "/order"),
    ("DELETE", "/order"),
    ("PUT", "/order"),
    ("GET", "/order"),
    ("GET", "/orders/open"),
    ("POST", "/order/cancel_all"),
    ("GET", "/balance"),
    ("POST", "/order_list"),
    ("DELETE", "/order_list"),
    ("POST", "/admin/assets"),
    ("POST", "/admin/markets"),
    ("POST", "/admin/markets/status"),
    ("POST", "/admin/markets/fees"),
    ("POST", "/admin/users"),
    ("POST", "/admin/api_keys"),
    ("DELETE", "/admin/api_keys"),
    ("POST", "/admin/deposit"),
    ("POST", "/admin/withdraw"),
    ("GET", "/admin/limits"),
    ("PUT", "/admin/limits"),
    ("GET", "/admin/cluster"),
    ("POST", "/admin/cluster/members"),
    ("DELETE", "/admin/cluster/members"),
    ("POST", "/admin/database/seed"),
];

pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";
const LIST_LIMIT_DEFAULT: usize = 100;
const LIST_LIMIT_MAX: usize = 1_000;

/// A native API request, its body read.
pub struct Request<'r> {
    pub method: &'r Method,
    pub path: &'r str,
    pub query: &'r str,
    pub api_key: Option<&'r str>,
    pub admin_token: Option<&'r str>,
    pub body: &'r [u8],
}

/// Answers one request; never fails (errors become JSON answers).
pub async fn handle(state: &AppState, producer: &Mutex<Publisher>, request: Request<'_>) -> Response<Body> {
    if (request.method.as_str(), request.path) == ("GET", "/metrics") {
        return response::text(StatusCode::OK, exposition::CONTENT_TYPE, exposition::render(state));
    }
    match route(state, producer, &request).await {
        Ok((status, body)) => response::json(status, body.to_string()),
        Err(error) => {
            let mut answer = response::api_error(&error);
            if error.status == StatusCode::METHOD_NOT_ALLOWED {
                response::allow(&mut answer, ROUTES, request.path);
            }
            answer
        }
    }
}

async fn route(
    state: &AppState,
    producer: &Mutex<Publisher>,
    request: &Request<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let ok = |value: Value| Ok((StatusCode::OK, value));
    match (request.method.as_str(), request.path) {
        ("GET", "/health") => ok(health(state)),
        ("GET", "/openapi.json") => {
            serde_json::from_str(OPENAPI_JSON).map(|v| (StatusCode::OK, v)).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("openapi.json: {e}"))
            })
        }
        ("GET", "/assets") => ok(assets(state)),
        ("GET", "/markets") => ok(markets(state)),
        ("GET", "/depth") => depth(state, request.query).map(|v| (StatusCode::OK, v)),
        ("GET", "/ticker") => ticker(state, request.query).map(|v| (StatusCode::OK, v)),
        ("GET", "/trade/history") => {
            // Recent trades from the views (the freshest: the database may
            // lag behind); a time or id range, or a page past what the views
            // keep, from PostgreSQL. One shape either way.
            let from_views = !history::wants_database(request.query)?
                && (state.database.is_none() || recent_trades_cover(state, request.query)?);
            if !from_views {
                history::market_trades(state, request.query).await.map(|v| (StatusCode::OK, v))
            } else {
                trade_history(state, request.query).map(|v| (StatusCode::OK, v))
            }
        }
        ("GET", "/candles") => history::candles(state, request.query).await.map(|v| (StatusCode::OK, v)),
        ("GET", "/user/trades") => {
            let user = signed(state, request)?;
            history::user_trades(state, user, request.query).await.map(|v| (StatusCode::OK, v))
        }
        ("GET", "/orders/history") => {
            let user = signed(state, request)?;
            history::user_orders(state, user, request.query).await.map(|v| (StatusCode::OK, v))
        }
        ("POST", "/order") => {
            let user = signed(state, request)?;
            place_order(state, producer, user, request.body).await.map(|v| (StatusCode::OK, v))
        }
        ("DELETE", "/order") => {
            let user = signed(state, request)?;
            cancel_order(state, producer, user, request.query).await.map(|v| (StatusCode::OK, v))
        }
        ("PUT", "/order") => {
            let user = signed(state, request)?;
            amend_order(state, producer, user, request.body).await.map(|v| (StatusCode::OK, v))
        }
        ("GET", "/order") => {
            let user = signed(state, request)?;
            query_order(state, user, request.query).await.map(|v| (StatusCode::OK, v))
        }
        ("GET", "/orders/open") => {
            let user = signed(state, request)?;
            open_orders(state, user, request.query).map(|v| (StatusCode::OK, v))
        }
        ("POST", "/order/cancel_all") => {
            let user = signed(state, request)?;
            cancel_all(state, producer, user, request.body).await.map(|v| (StatusCode::OK, v))
        }
        ("GET", "/balance") => {
            let user = signed(state, request)?;
            ok(balance(state, user))
        }
        ("POST", "/order_list") => {
            let user = signed(state, request)?;
            place_order_list(state, producer, user, request.body).await.map(|v| (StatusCode::OK, v))
        }
        ("DELETE", "/order_list") => {
            let user = signed(state, request)?;
            cancel_order_list(state, producer, user, request.query).await.map(|v| (StatusCode::OK, v))
        }
        (_, path) if path.starts_with("/admin/cluster") => {
            admin_check(state, request)?;
            admin_cluster(state, request).await
        }
        (_, path) if path.starts_with("/admin/database") => {
            admin_check(state, request)?;
            admin_database(state, request).await
        }
        (_, path) if path.starts_with("/admin/") => {
            admin_check(state, request)?;
            admin(state, producer, request).await
        }
        (_, path) if ROUTES.iter().any(|(_, p)| *p == path) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", request.method),
        )),
        (_, path) => {
            Err(ApiError::not_found("no_such_endpoint", format!("no endpoint at {path}; see /openapi.json")))
        }
    }
}

fn signed(state: &AppState, request: &Request<'_>) -> Result<UserId, ApiError> {
    let changes_state = *request.method != Method::GET;
    let signed =
        state.auth.authenticate(request.api_key, request.query, request.body, now_ms(), changes_state)?;
    crate::app::carry_replay_mark(signed.replay_mark);
    Ok(signed.user)
}

fn admin_check(state: &AppState, request: &Request<'_>) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::forbidden("admin_disabled", "the admin API is off: configure admin_token"));
    };
    let given = request.admin_token.unwrap_or("");
    // Constant time in the token's content.
    let same = given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(ApiError::forbidden(
            "invalid_admin_token",
            "the X-Admin-Token header is missing or wrong",
        ));
    }
    Ok(())
}

// ----- query parameters ---------------------------------------------------------

fn required(query: &str, name: &'static str) -> Result<String, ApiError> {
    param(query, name)?
        .ok_or_else(|| ApiError::bad_request("missing_parameter", format!("{name} is required")))
}

fn list_limit(query: &str) -> Result<(usize, usize), ApiError> {
    let number = |name: &'static str, default: usize, max: usize| -> Result<usize, ApiError> {
        match param(query, name)? {
            None => Ok(default),
            Some(text) => {
                text.parse::<usize>().ok().filter(|n| *n <= max && (name != "limit" || *n > 0)).ok_or_else(
                    || ApiError::invalid(name, format!("{text:?} must be a whole number up to {max}")),
                )
            }
        }
    };
    Ok((number("limit", LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?, number("offset", 0, usize::MAX)?))
}

fn market_of<'v>(views: &'v Views, name: &str) -> Result<&'v MarketView, ApiError> {
    views.market_by_name(name).ok_or_else(|| {
        ApiError::not_found("unknown_market", format!("no market {name:?}; GET /markets lists them"))
    })
}

/// A request body: one JSON object with the fields of `T`. An array is
/// refused, though serde would take it as the fields in order.
fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::bad_request("invalid_json", format!("request body: {e}"));
    let value: Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_json", "request body: expected a JSON object"));
    }
    serde_json::from_value(value).map_err(invalid)
}

// ----- public endpoints ------------------------------------------------------------

fn health(state: &AppState) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let health = &state.health;
    // A journal failure stops trading; a database in trouble only makes
    // history stale or unavailable, while trading goes on.
    let (status, reason) = if health.journal_failed.load(Relaxed) {
        ("journal_failed", Some("the journal cannot be written: orders are refused".to_string()))
    } else {
        match history::degraded_reason(state) {
            Some(reason) => ("degraded", Some(reason)),
            None => ("ok", None),
        }
    };
    json!({
        "status": status,
        "reason": reason,
        "seq": health.last_seq.load(Relaxed),
        "durable_seq": health.durable_seq.load(Relaxed),
        "snapshot_seq": health.snapshot_seq.load(Relaxed),
        "snapshot_stall_us": health.snapshot_stall_ns.load(Relaxed) / 1_000,
        "ws_connections": health.ws_connections.load(Relaxed),
        "signed_changes_from_ms": state.auth.signed_after_ms(),
        "database": history::health(state),
        // In cluster mode: this node's role, the leader (and its API
        // address, where order entry goes), the term and the log indexes.
        "cluster": state.cluster.as_ref().map(|cluster| cluster_health(cluster.status(), health)),
    })
}

/// The cluster's status, with the hash marks this node checked (the
/// matcher counts them; docs/replication.md).
fn cluster_health(status: crate::cluster::ClusterStatus, health: &crate::pipeline::Health) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mut value = json!(status);
    value["hash_marks_checked"] = json!(health.hash_marks_checked.load(Relaxed));
    value["last_hash_mark_seq"] = json!(health.last_hash_mark_seq.load(Relaxed));
    value
}

fn assets(state: &AppState) -> Value {
    let Ok(views) = state.views() else { return json!([]) };
    Value::Array(
        views
            .assets
            .iter()
            .map(|a| json!({ "asset_id": a.id.0, "symbol": a.symbol.as_str(), "decimals": a.decimals }))
            .collect(),
    )
}

fn market_json(view: &MarketView) -> Value {
    let rules = &view.market.rules;
    let quote_decimals = view.scale.quote_decimals;
    json!({
        "market_id": view.market.id.0,
        "market": view.name,
        "status": status_name(view.market.status),
        "tick_size": view.scale.tick_size.to_string(),
        "lot_size": view.scale.lot_size.to_string(),
        "min_quantity": view.scale.qty(rules.min_qty),
        "min_notional": amounts::units_to_string(rules.min_notional, quote_decimals),
        "maker_fee": amounts::ppm_to_string(rules.maker_fee_ppm),
        "taker_fee": amounts::ppm_to_string(rules.taker_fee_ppm),
    })
}

fn status_name(status: MarketStatus) -> &'static str {
    match status {
        MarketStatus::Open => "open",
        MarketStatus::CancelOnly => "cancel_only",
        MarketStatus::Halted => "halted",
    }
}

fn markets(state: &AppState) -> Value {
    let Ok(views) = state.views() else { return json!([]) };
    Value::Array(views.markets.iter().map(market_json).collect())
}

fn depth(state: &AppState, query: &str) -> Result<Value, ApiError> {
    let name = required(query, "market")?;
    let (limit, _) = list_limit(query)?;
    let views = state.views()?;
    let market = market_of(&views, &name)?;
    let level = |(price, qty): (&engine_core::Ticks, &Lots)| {
        json!([market.scale.price(*price), market.scale.qty(*qty)])
    };
    Ok(json!({
        "market": market.name,
        "seq": views.last_seq,
        "bids": market.bids.iter().rev().take(limit).map(level).collect::<Vec<_>>(),
        "asks": market.asks.iter().take(limit).map(level).collect::<Vec<_>>(),
    }))
}

fn ticker(state: &AppState, query: &str) -> Result<Value, ApiError> {
    let name = required(query, "market")?;
    let views = state.views()?;
    let market = market_of(&views, &name)?;
    let best = |level: Option<(&engine_core::Ticks, &Lots)>| {
        level.map(|(p, q)| json!({ "price": market.scale.price(*p), "quantity": market.scale.qty(*q) }))
    };
    let volume = market.volume_24h();
    Ok(json!({
        "market": market.name,
        "seq": views.last_seq,
        "best_bid": best(market.bids.iter().next_back()),
        "best_ask": best(market.asks.iter().next()),
        "last_price": market.last_price.map(|p| market.scale.price(p)),
        "volume_24h": market.scale.qty(Lots(u64::try_from(volume).unwrap_or(u64::MAX))),
    }))
}

/// Whether the views hold the page of recent trades `query` asks for.
fn recent_trades_cover(state: &AppState, query: &str) -> Result<bool, ApiError> {
    let name = required(query, "market")?;
    let (limit, offset) = list_limit(query)?;
    let views = state.views()?;
    Ok(offset.saturating_add(limit) <= market_of(&views, &name)?.trades.len())
}

fn trade_history(state: &AppState, query: &str) -> Result<Value, ApiError> {
    let name = required(query, "market")?;
    let (limit, offset) = list_limit(query)?;
    let views = state.views()?;
    let market = market_of(&views, &name)?;
    let trades: Vec<Value> = market
        .trades
        .iter()
        .rev()
        .skip(offset)
        .take(limit)
        .map(|t| {
            json!({
                "trade_id": t.trade.0,
                "seq": t.seq,
                "price": market.scale.price(t.price),
                "quantity": market.scale.qty(t.qty),
                "quote_quantity": market.scale.quote(t.price, t.qty),
                "taker_side": side_name(t.taker_side),
                // To the microsecond, the history database's precision, so
                // that both sources give the same answer.
                "timestamp_ns": t.timestamp_ns / 1_000 * 1_000,
            })
        })
        .collect();
    Ok(json!({ "market": market.name, "trades": trades }))
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

// ----- orders ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrderBody {
    market: String,
    side: SideField,
    #[serde(rename = "type")]
    order_type: TypeField,
    price: Option<String>,
    quantity: Option<String>,
    quote_amount: Option<String>,
    time_in_force: Option<TifField>,
    visible_quantity: Option<String>,
    trigger: Option<TriggerBody>,
    client_order_id: Option<String>,
    self_trade_prevention: Option<StpField>,
}

impl PlaceOrderBody {
    fn leg(self) -> (String, Option<StpField>, LegBody) {
        let leg = LegBody {
            side: self.side,
            order_type: self.order_type,
            price: self.price,
            quantity: self.quantity,
            quote_amount: self.quote_amount,
            time_in_force: self.time_in_force,
            visible_quantity: self.visible_quantity,
            trigger: self.trigger,
            client_order_id: self.client_order_id,
        };
        (self.market, self.self_trade_prevention, leg)
    }
}

/// One order of a `POST /order_list`: a `POST /order` body without the
/// market and self-trade prevention, which are the list's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegBody {
    side: SideField,
    #[serde(rename = "type")]
    order_type: TypeField,
    price: Option<String>,
    quantity: Option<String>,
    quote_amount: Option<String>,
    time_in_force: Option<TifField>,
    visible_quantity: Option<String>,
    trigger: Option<TriggerBody>,
    client_order_id: Option<String>,
}

/// `trigger` of a stop order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    kind: TriggerKindField,
    stop_price: Option<String>,
    /// Taken wide so that an out-of-range number gets the range in its
    /// error rather than serde's "expected u16".
    trailing_bips: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum TriggerKindField {
    StopLoss,
    TakeProfit,
}

/// The trailing deltas the API takes, in basis points: the range of
/// Binance's default `TRAILING_DELTA` filter, so that both APIs agree
/// (the engine itself takes 1 to 2,000).
pub const TRAILING_BIPS_MIN: u64 = 10;
pub const TRAILING_BIPS_MAX: u64 = 2_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceListBody {
    market: String,
    contingency: ContingencyField,
    list_client_id: Option<String>,
    self_trade_prevention: Option<StpField>,
    orders: Vec<LegBody>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ContingencyField {
    Oco,
    Oto,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SideField {
    Buy,
    Sell,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum TypeField {
    Limit,
    Market,
    Iceberg,
    StopMarket,
    StopLimit,
}

#[derive(Deserialize, Clone, Copy)]
enum TifField {
    #[serde(rename = "GTC")]
    Gtc,
    #[serde(rename = "IOC")]
    Ioc,
    #[serde(rename = "FOK")]
    Fok,
    #[serde(rename = "POST_ONLY")]
    PostOnly,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StpField {
    CancelTaker,
    CancelMaker,
    CancelBoth,
    Allow,
}

fn client_order_id(text: &str) -> Result<ClientOrderId, ApiError> {
    ClientOrderId::new(text).map_err(|e| ApiError::invalid("client_order_id", e))
}

pub(crate) async fn place_order(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    body: &[u8],
) -> Result<Value, ApiError> {
    let order = new_order(&*state.views()?, user, body)?;
    let placed = app::place(state, producer, order).await?;
    Ok(order_json_with_fills(&*state.views()?, &placed.order, &placed.fills))
}

/// The new order a `POST /order` body asks for, checked at the edge:
/// hostile bytes get a precise error and never reach the engine.
pub fn new_order(views: &Views, user: UserId, body: &[u8]) -> Result<NewOrder, ApiError> {
    let body: PlaceOrderBody = json_body(body)?;
    let (market, stp, leg) = body.leg();
    let market = market_of(views, &market)?;
    let (side, kind, client_order_id) = order_leg(&market.scale, leg)?;
    Ok(NewOrder { user, market: market.market.id, side, kind, client_order_id, stp: stp_of(stp) })
}

fn stp_of(field: Option<StpField>) -> SelfTradePrevention {
    match field.unwrap_or(StpField::CancelTaker) {
        StpField::CancelTaker => SelfTradePrevention::CancelTaker,
        StpField::CancelMaker => SelfTradePrevention::CancelMaker,
        StpField::CancelBoth => SelfTradePrevention::CancelBoth,
        StpField::Allow => SelfTradePrevention::Allow,
    }
}

fn tif_of(field: TifField) -> TimeInForce {
    match field {
        TifField::Gtc => TimeInForce::Gtc,
        TifField::Ioc => TimeInForce::Ioc,
        TifField::Fok => TimeInForce::Fok,
        TifField::PostOnly => TimeInForce::PostOnly,
    }
}

/// The side, kind and client order id one order body asks for, in the
/// market's units; every combination the order's type does not take is
/// refused with the field that is wrong.
fn order_leg(scale: &Scale, leg: LegBody) -> Result<(Side, OrderKind, Option<ClientOrderId>), ApiError> {
    let side = match leg.side {
        SideField::Buy => Side::Buy,
        SideField::Sell => Side::Sell,
    };
    let decimal =
        |field: &'static str, text: &Option<String>| -> Result<Option<rust_decimal::Decimal>, ApiError> {
            text.as_deref().map(|t| parse_decimal(field, t)).transpose()
        };
    let price = decimal("price", &leg.price)?;
    let quantity = decimal("quantity", &leg.quantity)?;
    let quote_amount = decimal("quote_amount", &leg.quote_amount)?;
    let visible = decimal("visible_quantity", &leg.visible_quantity)?;
    let type_name = match leg.order_type {
        TypeField::Limit => "a limit order",
        TypeField::Market => "a market order",
        TypeField::Iceberg => "an iceberg order",
        TypeField::StopMarket => "a stop_market order",
        TypeField::StopLimit => "a stop_limit order",
    };
    let refuse = |field: &'static str| ApiError::invalid(field, format!("{type_name} does not take {field}"));
    let needs = |field: &'static str| ApiError::invalid(field, format!("{type_name} needs {field}"));
    let is_market = leg.order_type == TypeField::Market;
    if quote_amount.is_some() && !is_market {
        return Err(ApiError::invalid("quote_amount", "only market orders take a quote amount"));
    }
    let stop = matches!(leg.order_type, TypeField::StopMarket | TypeField::StopLimit);
    if leg.trigger.is_some() && !stop {
        return Err(ApiError::invalid(
            "trigger",
            format!("{type_name} does not take a trigger; use type stop_market or stop_limit"),
        ));
    }
    let lots = |field: &'static str, value: rust_decimal::Decimal| scale.to_lots(field, value);
    let limit_parts = || -> Result<(engine_core::Ticks, Lots), ApiError> {
        let price = price.ok_or_else(|| needs("price"))?;
        let qty = quantity.ok_or_else(|| needs("quantity"))?;
        Ok((scale.to_ticks("price", price)?, lots("quantity", qty)?))
    };
    let visible_lots = |qty: Lots| -> Result<Option<Lots>, ApiError> {
        let Some(visible) = visible else { return Ok(None) };
        let visible = lots("visible_quantity", visible)?;
        if visible.0 == 0 || visible >= qty {
            return Err(ApiError::invalid(
                "visible_quantity",
                "the visible quantity must be above zero and below the quantity",
            ));
        }
        Ok(Some(visible))
    };
    let kind = match leg.order_type {
        TypeField::Limit | TypeField::Iceberg => {
            let (price, qty) = limit_parts()?;
            let tif = tif_of(leg.time_in_force.unwrap_or(TifField::Gtc));
            match visible_lots(qty)? {
                None if leg.order_type == TypeField::Iceberg => return Err(needs("visible_quantity")),
                None => OrderKind::Limit { price, qty, tif },
                Some(visible) => {
                    if !matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
                        return Err(ApiError::invalid(
                            "time_in_force",
                            "an iceberg order rests: its time in force is GTC or POST_ONLY",
                        ));
                    }
                    OrderKind::Iceberg { price, qty, visible, tif }
                }
            }
        }
        TypeField::Market => {
            if price.is_some() || leg.time_in_force.is_some() {
                return Err(ApiError::invalid(
                    "price",
                    "a market order takes neither price nor time_in_force",
                ));
            }
            if visible.is_some() {
                return Err(refuse("visible_quantity"));
            }
            match (quantity, quote_amount) {
                (Some(qty), None) => OrderKind::Market { qty: lots("quantity", qty)? },
                (None, Some(amount)) => OrderKind::MarketByQuote {
                    amount: amounts::to_units("quote_amount", amount, scale.quote_decimals)?,
                },
                _ => {
                    return Err(ApiError::invalid(
                        "quantity",
                        "give exactly one of quantity and quote_amount",
                    ))
                }
            }
        }
        TypeField::StopMarket => {
            let trigger = trigger_of(scale, leg.trigger, type_name)?;
            if price.is_some() {
                return Err(refuse("price"));
            }
            if leg.time_in_force.is_some() {
                return Err(refuse("time_in_force"));
            }
            if visible.is_some() {
                return Err(refuse("visible_quantity"));
            }
            let qty = lots("quantity", quantity.ok_or_else(|| needs("quantity"))?)?;
            OrderKind::StopMarket { trigger, qty }
        }
        TypeField::StopLimit => {
            let trigger = trigger_of(scale, leg.trigger, type_name)?;
            let (price, qty) = limit_parts()?;
            let tif =
                match leg.time_in_force.unwrap_or(TifField::Gtc) {
                    TifField::PostOnly => return Err(ApiError::invalid(
                        "time_in_force",
                        "a stop_limit order enters when it fires, so it takes GTC, IOC or FOK, not POST_ONLY",
                    )),
                    other => tif_of(other),
                };
            let visible = visible_lots(qty)?;
            if visible.is_some() && tif != TimeInForce::Gtc {
                return Err(ApiError::invalid(
                    "visible_quantity",
                    "only a GTC stop_limit order can enter as an iceberg",
                ));
            }
            OrderKind::StopLimit { trigger, price, qty, tif, visible: visible.unwrap_or(Lots(0)) }
        }
    };
    let client_order_id = leg.client_order_id.as_deref().map(client_order_id).transpose()?;
    Ok((side, kind, client_order_id))
}

fn trigger_of(scale: &Scale, trigger: Option<TriggerBody>, type_name: &str) -> Result<Trigger, ApiError> {
    let trigger = trigger.ok_or_else(|| {
        ApiError::invalid(
            "trigger",
            format!("{type_name} needs a trigger: {{\"kind\": \"stop_loss\" or \"take_profit\", \"stop_price\", \"trailing_bips\"}}"),
        )
    })?;
    let kind = match trigger.kind {
        TriggerKindField::StopLoss => TriggerKind::StopLoss,
        TriggerKindField::TakeProfit => TriggerKind::TakeProfit,
    };
    let stop = trigger
        .stop_price
        .as_deref()
        .map(|p| parse_decimal("trigger.stop_price", p).and_then(|p| scale.to_ticks("trigger.stop_price", p)))
        .transpose()?;
    let trailing_bips = match trigger.trailing_bips {
        None => 0,
        Some(bips) if (TRAILING_BIPS_MIN..=TRAILING_BIPS_MAX).contains(&bips) => bips as u16,
        Some(bips) => {
            return Err(ApiError::invalid(
                "trigger.trailing_bips",
                format!(
                    "{bips} is outside {TRAILING_BIPS_MIN} to {TRAILING_BIPS_MAX} basis points (0.1% to 20%)"
                ),
            ))
        }
    };
    if stop.is_none() && trailing_bips == 0 {
        return Err(ApiError::invalid(
            "trigger",
            "give stop_price, trailing_bips, or both (a trailing stop that starts at once)",
        ));
    }
    Ok(Trigger { kind, stop, trailing_bips })
}

/// The order list a `POST /order_list` body asks for, checked at the edge
/// as each of its orders would be by `POST /order`; the rules that bind
/// the two orders together are the engine's.
pub fn new_order_list(views: &Views, user: UserId, body: &[u8]) -> Result<NewOrderList, ApiError> {
    let body: PlaceListBody = json_body(body)?;
    let market = market_of(views, &body.market)?;
    let count = body.orders.len();
    let Ok([first, second]) = <[LegBody; 2]>::try_from(body.orders) else {
        return Err(ApiError::invalid(
            "orders",
            format!("an order list has exactly two orders, not {count}"),
        ));
    };
    let leg = |body: LegBody, index: usize| -> Result<ListLeg, ApiError> {
        let (side, kind, client_order_id) = order_leg(&market.scale, body).map_err(|mut error| {
            error.message = format!("orders[{index}].{}", error.message);
            error
        })?;
        Ok(ListLeg { side, kind, client_order_id })
    };
    let legs = [leg(first, 0)?, leg(second, 1)?];
    let contingency = match body.contingency {
        ContingencyField::Oco => Contingency::Oco,
        ContingencyField::Oto => Contingency::Oto,
    };
    let client_list_id = body
        .list_client_id
        .as_deref()
        .map(|text| ClientOrderId::new(text).map_err(|e| ApiError::invalid("list_client_id", e)))
        .transpose()?;
    Ok(NewOrderList {
        user,
        market: market.market.id,
        contingency,
        client_list_id,
        stp: stp_of(body.self_trade_prevention),
        legs,
    })
}

pub(crate) async fn place_order_list(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    body: &[u8],
) -> Result<Value, ApiError> {
    let list = new_order_list(&*state.views()?, user, body)?;
    let placed = app::place_list(state, producer, list).await?;
    Ok(list_json(&*state.views()?, &placed))
}

pub(crate) async fn cancel_order_list(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    query: &str,
) -> Result<Value, ApiError> {
    let list = match (param(query, "list_id")?, param(query, "list_client_id")?) {
        (Some(id), None) => id
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(|id| ListRef::Id(ListId(id)))
            .ok_or_else(|| ApiError::invalid("list_id", format!("{id:?} is not an order list id")))?,
        (None, Some(client)) => {
            ListRef::Client(ClientOrderId::new(&client).map_err(|e| ApiError::invalid("list_client_id", e))?)
        }
        _ => return Err(ApiError::invalid("list_id", "give exactly one of list_id and list_client_id")),
    };
    let cancelled = app::cancel_list(state, producer, user, list).await?;
    Ok(list_json(&*state.views()?, &cancelled))
}

fn contingency_name(contingency: Contingency) -> &'static str {
    match contingency {
        Contingency::Oco => "oco",
        Contingency::Oto => "oto",
    }
}

/// An order list as the command that placed or cancelled it left it.
fn list_json(views: &Views, list: &app::ListOutcome) -> Value {
    let market = views.markets.get(list.market.0 as usize).map(|m| m.name.clone());
    let orders: Vec<Value> = list
        .orders
        .iter()
        .map(|(order, fills)| {
            let facts = OrderFacts {
                list: Some(list.list),
                done: list.done_reason(order.order),
                pending: list.pending == Some(order.order),
            };
            order_json_with(views, order, fills, &facts)
        })
        .collect();
    json!({
        "list_id": list.list.0,
        "list_client_id": list.client_list_id.map(|c| c.to_string()),
        "market": market,
        "contingency": list.contingency.map(contingency_name),
        "status": if list.done { "done" } else { "open" },
        "seq": list.seq,
        "orders": orders,
    })
}

/// What a command's events say about an order that the views may not:
/// the list it belongs to and how it ended.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OrderFacts {
    pub list: Option<ListId>,
    pub done: Option<DoneReason>,
    /// An OTO's pending order, not released yet.
    pub pending: bool,
}

fn order_json(views: &Views, order: &OrderView) -> Value {
    order_json_with(views, order, &order.fills, &OrderFacts::default())
}

/// An order with `fills` as its list of fills.
fn order_json_with_fills(views: &Views, order: &OrderView, fills: &[FillView]) -> Value {
    order_json_with(views, order, fills, &OrderFacts::default())
}

/// An order with `fills` as its list of fills and what the command's
/// events said about it.
pub(crate) fn order_json_with(
    views: &Views,
    order: &OrderView,
    fills: &[FillView],
    facts: &OrderFacts,
) -> Value {
    let Some(market) = views.markets.get(order.market.0 as usize) else { return Value::Null };
    let scale: &Scale = &market.scale;
    let (order_type, tif, quantity, quote_amount) = match order.kind {
        Some(OrderKind::Limit { qty, tif, .. }) => ("limit", Some(tif_name(tif)), Some(scale.qty(qty)), None),
        Some(OrderKind::Market { qty }) => ("market", None, Some(scale.qty(qty)), None),
        Some(OrderKind::Iceberg { qty, tif, .. }) => {
            ("iceberg", Some(tif_name(tif)), Some(scale.qty(qty)), None)
        }
        Some(OrderKind::StopLimit { qty, tif, .. }) => {
            ("stop_limit", Some(tif_name(tif)), Some(scale.qty(qty)), None)
        }
        Some(OrderKind::StopMarket { qty, .. }) => ("stop_market", None, Some(scale.qty(qty)), None),
        Some(OrderKind::MarketByQuote { amount }) => {
            ("market", None, None, Some(amounts::units_to_string(amount, scale.quote_decimals)))
        }
        None => ("limit", None, Some(scale.qty(Lots(order.remaining.0 + order.filled.0))), None),
    };
    let visible = match order.kind {
        Some(OrderKind::Iceberg { visible, .. }) => Some(visible),
        Some(OrderKind::StopLimit { visible, .. }) if visible.0 > 0 => Some(visible),
        _ => None,
    };
    let trigger = order.kind.and_then(|kind| kind.trigger()).map(|trigger| {
        json!({
            "kind": trigger_kind_name(trigger.kind),
            "stop_price": trigger.stop.map(|p| scale.price(p)),
            "trailing_bips": (trigger.trailing_bips > 0).then_some(trigger.trailing_bips),
        })
    });
    // The command's own end of the order is the truth; the views' status
    // for the newer reasons may be coarser.
    let pending = facts.pending || order.stage == crate::views::OrderStage::Pending;
    let status = match facts.done {
        Some(reason) => persistence::done_status(reason),
        None if pending && order.status == crate::views::OrderStatus::New => persistence::PENDING_STATUS,
        None => order.status.as_str(),
    };
    let reject_reason = match facts.done {
        Some(DoneReason::Refused(reason)) => Some(app::describe(views, reason)),
        _ => None,
    };
    let decimals = |asset: AssetId| views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals);
    let symbol =
        |asset: AssetId| views.assets.get(asset.0 as usize).map_or(String::new(), |a| a.symbol.to_string());
    let fills: Vec<Value> = fills
        .iter()
        .map(|f| {
            json!({
                "trade_id": f.trade.0,
                "price": scale.price(f.price),
                "quantity": scale.qty(f.qty),
                "fee": amounts::units_to_string(f.fee, decimals(f.fee_asset)),
                "fee_asset": symbol(f.fee_asset),
                "maker": f.maker,
            })
        })
        .collect();
    json!({
        "order_id": order.order.0,
        "client_order_id": order.client_order_id.map(|c| c.to_string()),
        "market": market.name,
        "side": side_name(order.side),
        "type": order_type,
        "time_in_force": tif,
        "price": order.price.map(|p| scale.price(p)),
        "quantity": quantity,
        "quote_amount": quote_amount,
        "visible_quantity": visible.map(|v| scale.qty(v)),
        "trigger": trigger,
        "list_id": facts.list.or(order.list).map(|l| l.0),
        "filled_quantity": scale.qty(order.filled),
        "remaining_quantity": scale.qty(order.remaining),
        "status": status,
        "reject_reason": reject_reason,
        "created_at_ns": order.created_ns,
        "seq": order.updated_seq,
        "fills": fills,
    })
}

fn trigger_kind_name(kind: TriggerKind) -> &'static str {
    match kind {
        TriggerKind::StopLoss => "stop_loss",
        TriggerKind::TakeProfit => "take_profit",
    }
}

fn tif_name(tif: TimeInForce) -> &'static str {
    match tif {
        TimeInForce::Gtc => "GTC",
        TimeInForce::Ioc => "IOC",
        TimeInForce::Fok => "FOK",
        TimeInForce::PostOnly => "POST_ONLY",
    }
}

/// `order_id` or `client_order_id` from a query or body.
fn order_ref(order_id: Option<&str>, client: Option<&str>) -> Result<OrderRef, ApiError> {
    match (order_id, client) {
        (Some(id), None) => id
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(|id| OrderRef::Id(OrderId(id)))
            .ok_or_else(|| ApiError::invalid("order_id", format!("{id:?} is not an order id"))),
        (None, Some(client)) => Ok(OrderRef::Client(client_order_id(client)?)),
        _ => Err(ApiError::invalid("order_id", "give exactly one of order_id and client_order_id")),
    }
}

pub(crate) async fn cancel_order(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    query: &str,
) -> Result<Value, ApiError> {
    let id = param(query, "order_id")?;
    let client = param(query, "client_order_id")?;
    let order = order_ref(id.as_deref(), client.as_deref())?;
    let cancelled = app::cancel(state, producer, user, order).await?;
    Ok(order_json(&*state.views()?, &cancelled))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmendBody {
    order_id: Option<u64>,
    client_order_id: Option<String>,
    quantity: Option<String>,
    price: Option<String>,
}

async fn amend_order(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    body: &[u8],
) -> Result<Value, ApiError> {
    let body: AmendBody = json_body(body)?;
    let id = body.order_id.map(|id| id.to_string());
    let order = order_ref(id.as_deref(), body.client_order_id.as_deref())?;
    let amend = {
        let views = state.views()?;
        let current = views
            .find_order_ref(user, order)
            .filter(|o| views.user(user).is_some_and(|u| u.open.contains_key(&o.order)))
            .ok_or_else(|| ApiError::not_found("unknown_order", "no open order of yours with that id"))?;
        let scale = views.markets.get(current.market.0 as usize).map(|m| m.scale).ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "order of an unknown market")
        })?;
        let new_qty = body
            .quantity
            .as_deref()
            .map(|q| parse_decimal("quantity", q).and_then(|q| scale.to_lots("quantity", q)))
            .transpose()?;
        let new_price = body
            .price
            .as_deref()
            .map(|p| parse_decimal("price", p).and_then(|p| scale.to_ticks("price", p)))
            .transpose()?;
        if new_qty.is_none() && new_price.is_none() {
            return Err(ApiError::invalid("quantity", "give a new quantity, a new price, or both"));
        }
        engine_core::Amend { user, order, new_qty, new_price }
    };
    let amended = app::amend(state, producer, amend).await?;
    Ok(order_json(&*state.views()?, &amended))
}

/// `GET /order`: from the views, or, for an order past their retention,
/// from the database when there is one.
async fn query_order(state: &AppState, user: UserId, query: &str) -> Result<Value, ApiError> {
    let id = param(query, "order_id")?;
    let client = param(query, "client_order_id")?;
    let order = order_ref(id.as_deref(), client.as_deref())?;
    let found = app::find_order(state, user, order, None).await?.ok_or_else(|| {
        let why = if state.database.is_some() {
            "no order of yours with that id"
        } else {
            "no order of yours with that id (orders closed longer ago than the retention window are only \
             kept with PostgreSQL configured)"
        };
        ApiError::not_found("unknown_order", why)
    })?;
    Ok(order_json(&*state.views()?, &found))
}

fn open_orders(state: &AppState, user: UserId, query: &str) -> Result<Value, ApiError> {
    let market = param(query, "market")?;
    let (limit, offset) = list_limit(query)?;
    let views = state.views()?;
    let market: Option<MarketId> =
        market.map(|name| market_of(&views, &name).map(|m| m.market.id)).transpose()?;
    let Some(view) = views.user(user) else { return Ok(json!({ "orders": [] })) };
    let orders: Vec<Value> = view
        .open
        .values()
        .filter(|o| market.is_none_or(|m| o.market == m))
        .skip(offset)
        .take(limit)
        .map(|o| order_json(&views, o))
        .collect();
    Ok(json!({ "orders": orders }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelAllBody {
    market: Option<String>,
}

async fn cancel_all(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    body: &[u8],
) -> Result<Value, ApiError> {
    let body: CancelAllBody = if body.is_empty() { CancelAllBody { market: None } } else { json_body(body)? };
    let market = match &body.market {
        Some(name) => Some(market_of(&*state.views()?, name)?.market.id),
        None => None,
    };
    let cancelled: Vec<u64> =
        app::cancel_all(state, producer, user, market).await?.iter().map(|o| o.order.0).collect();
    Ok(json!({ "cancelled": cancelled.len(), "order_ids": cancelled }))
}

fn balance(state: &AppState, user: UserId) -> Value {
    let Ok(views) = state.views() else { return json!({ "balances": [] }) };
    let Some(view) = views.user(user) else { return json!({ "balances": [] }) };
    let balances: Vec<Value> = view
        .balances
        .iter()
        .enumerate()
        .filter(|(_, (available, locked))| available.0 > 0 || locked.0 > 0)
        .filter_map(|(asset, (available, locked))| {
            let a = views.assets.get(asset)?;
            Some(json!({
                "asset": a.symbol.as_str(),
                "available": amounts::units_to_string(*available, a.decimals),
                "locked": amounts::units_to_string(*locked, a.decimals),
            }))
        })
        .collect();
    json!({ "user_id": user.0, "seq": views.last_seq, "balances": balances })
}

// ----- admin -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssetBody {
    symbol: String,
    decimals: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarketBody {
    base: String,
    quote: String,
    tick_size: String,
    lot_size: String,
    min_quantity: Option<String>,
    min_notional: Option<String>,
    maker_fee: Option<String>,
    taker_fee: Option<String>,
    status: Option<StatusField>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StatusField {
    Open,
    CancelOnly,
    Halted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    market: String,
    status: StatusField,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeesBody {
    market: String,
    maker_fee: String,
    taker_fee: String,
}

/// `POST /admin/api_keys`: the key and secret are made by the exchange.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    user_id: u32,
}

/// `DELETE /admin/api_keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeKeyBody {
    user_id: u32,
    api_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FundsBody {
    user_id: u32,
    asset: String,
    amount: String,
}

fn market_status(status: StatusField) -> MarketStatus {
    match status {
        StatusField::Open => MarketStatus::Open,
        StatusField::CancelOnly => MarketStatus::CancelOnly,
        StatusField::Halted => MarketStatus::Halted,
    }
}

/// A method the admin route does not take, or no admin route at all.
fn admin_route_unknown(method: &str, path: &str) -> ApiError {
    if ROUTES.iter().any(|(_, p)| *p == path) {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    } else {
        ApiError::not_found("no_such_endpoint", format!("no admin endpoint {method} {path}"))
    }
}

/// How long `POST /admin/cluster/members` waits for a new voter to catch
/// up before it promotes it (it stays a learner if it has not).
const MEMBER_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `GET /admin/cluster`, `POST` and `DELETE /admin/cluster/members`: the
/// cluster's membership (changes on the leader only).
async fn admin_cluster(state: &AppState, request: &Request<'_>) -> Result<(StatusCode, Value), ApiError> {
    use crate::cluster::{MemberChange, MembershipError};
    let known = matches!(
        (request.method.as_str(), request.path),
        ("GET", "/admin/cluster") | ("POST", "/admin/cluster/members") | ("DELETE", "/admin/cluster/members")
    );
    if !known {
        return Err(admin_route_unknown(request.method.as_str(), request.path));
    }
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::not_found(
            "not_a_cluster",
            "this exchange runs alone: it has no [cluster] section (docs/replication.md)",
        ));
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RemoveBody {
        id: u64,
    }
    let changed = match (request.method.as_str(), request.path) {
        ("GET", "/admin/cluster") => return Ok((StatusCode::OK, json!(cluster.membership()))),
        ("POST", "/admin/cluster/members") => {
            let change: MemberChange = json_body(request.body)?;
            cluster.add_member(change, MEMBER_CATCH_UP_TIMEOUT).await
        }
        ("DELETE", "/admin/cluster/members") => {
            let body: RemoveBody = json_body(request.body)?;
            cluster.remove_member(body.id).await
        }
        (method, path) => return Err(admin_route_unknown(method, path)),
    };
    match changed {
        Ok(membership) => Ok((StatusCode::OK, json!(membership))),
        Err(MembershipError::NotLeader { leader }) => Err(ApiError::not_leader(leader)),
        Err(MembershipError::Unconfirmed(why)) => Err(ApiError::leader_unconfirmed(&why)),
        Err(MembershipError::Invalid(why)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_member", why))
        }
        Err(MembershipError::NotCaughtUp(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "member_not_caught_up", why))
        }
        Err(MembershipError::Failed(why)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "membership_change_failed", why))
        }
    }
}

/// How long `POST /admin/database/seed` waits for the writer's answer: it
/// takes the request when it next connects (within its retry wait, 5 s at
/// most by default), then writes one transaction. Below `exctl`'s own
/// request timeout (30 s), so that the operator reads the server's answer.
const SEED_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// `POST /admin/database/seed`: asks this node's database writer to seed
/// its empty database from the node's snapshot image (docs/persistence.md,
/// "Seeding from a snapshot image").
async fn admin_database(state: &AppState, request: &Request<'_>) -> Result<(StatusCode, Value), ApiError> {
    use persistence::seed::{SeedError, SeedRequest};
    if (request.method.as_str(), request.path) != ("POST", "/admin/database/seed") {
        return Err(admin_route_unknown(request.method.as_str(), request.path));
    }
    let Some((writer, _)) = &state.database else {
        return Err(ApiError::not_found(
            "no_database",
            "this node has no database_url: configure the database on the node (and restart it), then seed",
        ));
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SeedBody {
        reason: String,
    }
    let body: SeedBody = json_body(request.body)?;
    if let Err(SeedError::Refused(why) | SeedError::Failed(why)) =
        persistence::seed::check_reason(&body.reason)
    {
        return Err(ApiError::bad_request("invalid_parameter", why));
    }
    let node_id = state.cluster.as_ref().map_or(0, |cluster| cluster.node_id());
    let refused = |error: SeedError| match error {
        SeedError::Refused(why) => ApiError::new(StatusCode::CONFLICT, "seed_refused", why),
        SeedError::Failed(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "seed_failed", why),
    };
    let answer = writer.request_seed(SeedRequest { reason: body.reason, node_id }).map_err(refused)?;
    match tokio::time::timeout(SEED_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(seeded))) => Ok((
            StatusCode::OK,
            json!({
                "seeded": true,
                "image_seq": seeded.image_seq,
                "raft_index": seeded.raft_index,
                "raft_term": seeded.raft_term,
                "node_id": node_id,
                "assets": seeded.assets,
                "markets": seeded.markets,
                "users": seeded.users,
                "balances": seeded.balances,
                "open_orders": seeded.orders,
                "order_lists": seeded.order_lists,
            }),
        )),
        Ok(Ok(Err(error))) => Err(refused(error)),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "seed_failed",
            "the database writer stopped before answering (the node is shutting down); look at the database's \
             seeded_from table and /health before asking again",
        )),
        Err(_) if writer.withdraw_seed() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "seed_failed",
            format!(
                "the database writer did not take the request within {} s (is the database reachable? see \
                 /health); it was withdrawn and nothing was written",
                SEED_ANSWER_TIMEOUT.as_secs()
            ),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "seed_failed",
            format!(
                "the database writer took the request but did not answer within {} s; look at the database's \
                 seeded_from table and /health before asking again",
                SEED_ANSWER_TIMEOUT.as_secs()
            ),
        )),
    }
}

async fn admin(
    state: &AppState,
    producer: &Mutex<Publisher>,
    request: &Request<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let body = request.body;
    let (command, new_key) = match (request.method.as_str(), request.path) {
        ("GET", "/admin/limits") => return Ok((StatusCode::OK, limits_json(state.views()?.limits))),
        ("PUT", "/admin/limits") => {
            // Named limits change; the others keep their current values.
            let body: crate::config::LimitsConfig = json_body(body)?;
            body.check().map_err(|(field, why)| ApiError::invalid(field, why))?;
            (Command::SetLimits { limits: body.apply_to(state.views()?.limits) }, None)
        }
        ("POST", "/admin/assets") => {
            let body: AssetBody = json_body(body)?;
            let symbol = Symbol::new(&body.symbol).map_err(|e| ApiError::invalid("symbol", e))?;
            (Command::CreateAsset { symbol, decimals: body.decimals }, None)
        }
        ("POST", "/admin/markets") => (create_market(state, json_body(body)?)?, None),
        ("POST", "/admin/markets/status") => {
            let body: StatusBody = json_body(body)?;
            let market = market_of(&*state.views()?, &body.market)?.market.id;
            (Command::SetMarketStatus { market, status: market_status(body.status) }, None)
        }
        ("POST", "/admin/markets/fees") => {
            let body: FeesBody = json_body(body)?;
            let market = market_of(&*state.views()?, &body.market)?.market.id;
            let maker = amounts::fee_ppm("maker_fee", parse_decimal("maker_fee", &body.maker_fee)?)?;
            let taker = amounts::fee_ppm("taker_fee", parse_decimal("taker_fee", &body.taker_fee)?)?;
            (Command::SetMarketFees { market, maker_fee_ppm: maker, taker_fee_ppm: taker }, None)
        }
        ("POST", "/admin/users") => (Command::CreateUser, None),
        ("POST", "/admin/api_keys") => {
            let body: NewKeyBody = json_body(body)?;
            let key = ApiKey::new(&random_alphanumeric(64)?).map_err(|e| ApiError::invalid("api_key", e))?;
            let secret =
                ApiSecret::new(&random_alphanumeric(64)?).map_err(|e| ApiError::invalid("secret", e))?;
            (Command::CreateApiKey { user: UserId(body.user_id), key, secret }, Some((key, secret)))
        }
        ("DELETE", "/admin/api_keys") => {
            let body: RevokeKeyBody = json_body(body)?;
            let key = ApiKey::new(&body.api_key).map_err(|e| ApiError::invalid("api_key", e))?;
            (Command::RevokeApiKey { user: UserId(body.user_id), key }, None)
        }
        ("POST", "/admin/deposit") | ("POST", "/admin/withdraw") => {
            let body: FundsBody = json_body(body)?;
            let views = state.views()?;
            let asset = views
                .asset_by_symbol(&body.asset)
                .ok_or_else(|| ApiError::not_found("unknown_asset", format!("no asset {:?}", body.asset)))?;
            let amount = amounts::to_units("amount", parse_decimal("amount", &body.amount)?, asset.decimals)?;
            let user = UserId(body.user_id);
            if request.path == "/admin/deposit" {
                (Command::Deposit { user, asset: asset.id, amount }, None)
            } else {
                (Command::Withdraw { user, asset: asset.id, amount }, None)
            }
        }
        (method, path) => return Err(admin_route_unknown(method, path)),
    };
    let events = app::run(state, producer, command).await?.events;
    let views = state.views()?;
    let answer = events.iter().find_map(|event| match event.kind {
        EventKind::AssetCreated { asset, .. } => Some(json!({ "asset_id": asset.0 })),
        EventKind::MarketCreated { market, .. } => {
            views.markets.get(market.0 as usize).map(market_json)
        }
        EventKind::MarketStatusChanged { market, status } => {
            Some(json!({ "market_id": market.0, "status": status_name(status) }))
        }
        EventKind::MarketFeesChanged { market, .. } => views.markets.get(market.0 as usize).map(market_json),
        EventKind::UserCreated { user } => Some(json!({ "user_id": user.0 })),
        EventKind::LimitsChanged { limits } => Some(limits_json(limits)),
        EventKind::ApiKeyCreated { user, key } => {
            let secret = new_key.map(|(_, secret)| secret);
            if let Some(secret) = secret {
                state.auth.keys.insert(key, user, secret);
            }
            // The only time the secret leaves the exchange.
            Some(json!({ "user_id": user.0, "api_key": key.as_str(), "secret": secret.map(|s| s.expose().to_string()) }))
        }
        EventKind::ApiKeyRevoked { user, key } => {
            state.auth.keys.remove(&key);
            Some(json!({ "user_id": user.0, "revoked": key.as_str() }))
        }
        EventKind::Balance { user, asset, available, locked } => {
            let decimals = views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals);
            Some(json!({
                "user_id": user.0,
                "asset": views.assets.get(asset.0 as usize).map(|a| a.symbol.to_string()),
                "available": amounts::units_to_string(available, decimals),
                "locked": amounts::units_to_string(locked, decimals),
            }))
        }
        _ => None,
    });
    Ok((StatusCode::OK, answer.unwrap_or(Value::Null)))
}

fn limits_json(limits: engine_core::EngineLimits) -> Value {
    json!({
        "open_orders_per_user_max": limits.open_orders_per_user_max,
        "orders_max": limits.orders_max,
        "assets_max": limits.assets_max,
        "markets_max": limits.markets_max,
        "users_max": limits.users_max,
        "api_keys_per_user_max": limits.api_keys_per_user_max,
    })
}

fn create_market(state: &AppState, body: MarketBody) -> Result<Command, ApiError> {
    let views = state.views()?;
    let asset = |field: &'static str, symbol: &str| {
        views
            .asset_by_symbol(symbol)
            .copied()
            .ok_or_else(|| ApiError::invalid(field, format!("no asset {symbol:?}")))
    };
    let base = asset("base", &body.base)?;
    let quote = asset("quote", &body.quote)?;
    let tick_size = parse_decimal("tick_size", &body.tick_size)?;
    let lot_size = parse_decimal("lot_size", &body.lot_size)?;
    let (base_units_per_lot, quote_units_per_tick) =
        amounts::rules_scale(tick_size, lot_size, base.decimals, quote.decimals)?;
    let mut rules = MarketRules {
        base: base.id,
        quote: quote.id,
        base_units_per_lot,
        quote_units_per_tick,
        min_qty: Lots(1),
        min_notional: engine_core::Units(0),
        maker_fee_ppm: 0,
        taker_fee_ppm: 0,
    };
    let scale = Scale::for_market(&rules, base.decimals, quote.decimals);
    if let Some(text) = &body.min_quantity {
        rules.min_qty = scale.to_lots("min_quantity", parse_decimal("min_quantity", text)?)?;
    }
    if let Some(text) = &body.min_notional {
        rules.min_notional =
            amounts::to_units("min_notional", parse_decimal("min_notional", text)?, quote.decimals)?;
    }
    if let Some(text) = &body.maker_fee {
        rules.maker_fee_ppm = amounts::fee_ppm("maker_fee", parse_decimal("maker_fee", text)?)?;
    }
    if let Some(text) = &body.taker_fee {
        rules.taker_fee_ppm = amounts::fee_ppm("taker_fee", parse_decimal("taker_fee", text)?)?;
    }
    let status = market_status(body.status.unwrap_or(StatusField::Open));
    Ok(Command::CreateMarket { rules, status })
}
