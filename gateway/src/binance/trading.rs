//! The signed endpoints, shared by REST (`/api/v3/...`) and the WebSocket
//! API (`order.place`, ...): each takes the caller's parameters and user
//! and returns Binance's answer. Orders go through the same pipeline and
//! engine commands as the native API; an answer describes what its own
//! command did (`crate::outcome`), never what later commands did.

use std::sync::Mutex;

use engine_core::{
    Amend, ClientOrderId, Command, Contingency, EventKind, ListId, ListRef, Lots, NewOrder, OrderId,
    OrderKind, OrderRef, SelfTradePrevention, Side, TimeInForce, Trigger, TriggerKind, UserId,
};
use serde_json::{json, Value};

use super::error::{Action, BinanceError};
use super::market::{market, read_views};
use super::params::{Params, TradeRange};
use super::{
    order_status_name, price_text, qty_text, side_name, stp_name, type_and_tif, units_text, STP_DEFAULT,
    STP_MODES,
};
use crate::amounts;
use crate::app::{self, Refusal};
use crate::clock::now_ms;
use crate::outcome::Outcome;
use crate::pipeline::Publisher;
use crate::state::AppState;
use crate::views::{FillView, ListView, MarketView, OrderStage, OrderView, Views};

const CLIENT_ID_RANGE: &str = "^[\\.A-Z\\:/a-z0-9_-]{1,36}$";
const ALL_ORDERS_LIMIT_DEFAULT: u64 = 500;
const ALL_ORDERS_LIMIT_MAX: u64 = 1_000;
const MY_TRADES_LIMIT_DEFAULT: u64 = 500;
const MY_TRADES_LIMIT_MAX: u64 = 1_000;
const NEW_ORDER_PARAMS: &[&str] = &[
    "symbol",
    "side",
    "type",
    "timeInForce",
    "quantity",
    "quoteOrderQty",
    "price",
    "newClientOrderId",
    "newOrderRespType",
    "selfTradePreventionMode",
    "stopPrice",
    "icebergQty",
    "trailingDelta",
];

/// A command's refusal as Binance's error for `action`.
pub(super) fn refused(action: Action) -> impl Fn(Refusal) -> BinanceError {
    move |refusal| match refusal {
        Refusal::Rejected { reason, message } => BinanceError::rejected(reason, message, action),
        Refusal::Failed(error) => BinanceError::from(error),
    }
}

pub(super) fn client_order_id(name: &str, text: &str) -> Result<ClientOrderId, BinanceError> {
    ClientOrderId::new(text).map_err(|_| BinanceError::illegal_characters(name, CLIENT_ID_RANGE))
}

/// What `newOrderRespType` asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Ack,
    Result,
    Full,
}

/// A checked new order, not yet sent.
struct Prepared {
    order: NewOrder,
    answer: Answer,
    symbol: String,
}

/// Checks a new order's parameters the way Binance does, before anything
/// reaches the engine. `prefix` is "" for an order, "cancel" names for
/// cancelReplace are read by the caller.
fn prepare(state: &AppState, views: &Views, user: UserId, p: &Params) -> Result<Prepared, BinanceError> {
    check_order(views, user, p, || state.binance.next_client_order_id())
}

/// A new order from Binance's parameters, checked the way Binance checks
/// them; `client_id` names an order sent without `newClientOrderId`.
/// Hostile parameters get Binance's error and never reach the engine.
pub fn order_from_params(
    views: &Views,
    user: UserId,
    p: &Params,
    client_id: impl FnOnce() -> String,
) -> Result<NewOrder, BinanceError> {
    check_order(views, user, p, client_id).map(|prepared| prepared.order)
}

fn check_order(
    views: &Views,
    user: UserId,
    p: &Params,
    client_id: impl FnOnce() -> String,
) -> Result<Prepared, BinanceError> {
    let view = market(views, p.required("symbol")?)?;
    let side = side_of(p.required("side")?)?;
    let order_type = p.required("type")?;
    let kind = leg_kind(view, p, &Leg::ORDER, order_type, "quantity", true)?;
    let stp = stp_of(p)?;
    let answer = answer_of(p, matches!(order_type, "MARKET" | "LIMIT"))?;
    let client = match p.get("newClientOrderId") {
        Some(text) => client_order_id("newClientOrderId", text)?,
        None => client_order_id("newClientOrderId", &client_id())?,
    };
    Ok(Prepared {
        order: NewOrder { user, market: view.market.id, side, kind, client_order_id: Some(client), stp },
        answer,
        symbol: view.symbol.clone(),
    })
}

pub(super) fn side_of(text: &str) -> Result<Side, BinanceError> {
    match text {
        "BUY" => Ok(Side::Buy),
        "SELL" => Ok(Side::Sell),
        _ => Err(BinanceError::invalid_side()),
    }
}

pub(super) fn stp_of(p: &Params) -> Result<SelfTradePrevention, BinanceError> {
    match p.get("selfTradePreventionMode") {
        None => Ok(STP_DEFAULT),
        Some(name) => {
            STP_MODES.iter().find(|(mode, _)| *mode == name).map(|(_, stp)| *stp).ok_or_else(|| {
                BinanceError::invalid_value(
                    "selfTradePreventionMode",
                    "NONE, EXPIRE_TAKER, EXPIRE_MAKER or EXPIRE_BOTH",
                )
            })
        }
    }
}

/// `newOrderRespType`; without it FULL for MARKET and LIMIT orders (and
/// order lists), ACK for the other types, as on Binance.
pub(super) fn answer_of(p: &Params, full_by_default: bool) -> Result<Answer, BinanceError> {
    match p.get("newOrderRespType") {
        None if full_by_default => Ok(Answer::Full),
        None => Ok(Answer::Ack),
        Some("ACK") => Ok(Answer::Ack),
        Some("RESULT") => Ok(Answer::Result),
        Some("FULL") => Ok(Answer::Full),
        Some(_) => Err(BinanceError::invalid_value("newOrderRespType", "ACK, RESULT or FULL")),
    }
}

/// Where one order's parameters are: a plain order's own names
/// (`price`), or an order list leg's, with the leg's prefix
/// (`abovePrice`, `pendingStopPrice`).
pub struct Leg {
    pub prefix: &'static str,
}

impl Leg {
    pub const ORDER: Leg = Leg { prefix: "" };

    /// The parameter name of `base` for this leg.
    pub fn name(&self, base: &str) -> String {
        if self.prefix.is_empty() {
            return base.to_string();
        }
        let mut chars = base.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase()).into_iter();
        format!("{}{}", self.prefix, first.chain(chars).collect::<String>())
    }
}

/// One order's kind from Binance's parameters for `order_type`, read under
/// `leg`'s names (the quantity under `quantity_name`), checked the way
/// Binance checks them: a parameter the type does not take is -1106, a
/// missing one -1102, a filter failure -1013. `quote` allows a MARKET
/// order by `quoteOrderQty`.
pub(super) fn leg_kind(
    view: &MarketView,
    p: &Params,
    leg: &Leg,
    order_type: &str,
    quantity_name: &str,
    quote: bool,
) -> Result<OrderKind, BinanceError> {
    let scale = view.scale;
    let get = |base: &str| -> (String, Option<&str>) {
        let name = leg.name(base);
        let value = p.get(&name);
        (name, value)
    };
    let decimal = |name: &str, text: Option<&str>| -> Result<Option<rust_decimal::Decimal>, BinanceError> {
        text.map(|t| {
            crate::amounts::parse_decimal("value", t).map_err(|_| BinanceError::illegal_decimal(name))
        })
        .transpose()
    };
    let (price_name, price_text_in) = get("price");
    let price = decimal(&price_name, price_text_in)?;
    let quantity = decimal(quantity_name, p.get(quantity_name))?;
    let (stop_name, stop_text) = get("stopPrice");
    let stop = decimal(&stop_name, stop_text)?;
    let (trailing_name, trailing_text) = get("trailingDelta");
    let trailing = trailing_text
        .map(|t| {
            t.parse::<u64>().map_err(|_| BinanceError::illegal_characters(&trailing_name, "^[0-9]{1,20}$"))
        })
        .transpose()?;
    let (iceberg_name, iceberg_text) = get("icebergQty");
    let iceberg = decimal(&iceberg_name, iceberg_text)?;
    let (tif_name, tif) = get("timeInForce");
    let quote_qty = if quote { p.decimal("quoteOrderQty")? } else { None };
    let to_ticks = |price| scale.to_ticks("price", price).map_err(|_| BinanceError::filter("PRICE_FILTER"));
    let to_lots = |qty| scale.to_lots("quantity", qty).map_err(|_| BinanceError::filter("LOT_SIZE"));
    let (limit, maker, stop_kind) = match order_type {
        "LIMIT" => (true, false, None),
        "LIMIT_MAKER" => (true, true, None),
        "MARKET" => (false, false, None),
        "STOP_LOSS" => (false, false, Some(TriggerKind::StopLoss)),
        "STOP_LOSS_LIMIT" => (true, false, Some(TriggerKind::StopLoss)),
        "TAKE_PROFIT" => (false, false, Some(TriggerKind::TakeProfit)),
        "TAKE_PROFIT_LIMIT" => (true, false, Some(TriggerKind::TakeProfit)),
        _ => return Err(BinanceError::invalid_order_type()),
    };
    // What the type does not take.
    if order_type != "MARKET" && quote_qty.is_some() {
        return Err(BinanceError::not_required("quoteOrderQty"));
    }
    if !limit && price.is_some() {
        return Err(BinanceError::not_required(&price_name));
    }
    if (!limit || maker) && tif.is_some() {
        return Err(BinanceError::not_required(&tif_name));
    }
    if stop_kind.is_none() && stop.is_some() {
        return Err(BinanceError::not_required(&stop_name));
    }
    if stop_kind.is_none() && trailing.is_some() {
        return Err(BinanceError::not_required(&trailing_name));
    }
    if !limit && iceberg.is_some() {
        return Err(BinanceError::not_required(&iceberg_name));
    }
    if order_type == "MARKET" {
        return match (quantity, quote_qty) {
            (Some(qty), None) => Ok(OrderKind::Market { qty: to_lots(qty)? }),
            (None, Some(amount)) => Ok(OrderKind::MarketByQuote {
                amount: amounts::to_units("quoteOrderQty", amount, scale.quote_decimals)
                    .map_err(|_| BinanceError::too_much_precision("quoteOrderQty"))?,
            }),
            (None, None) if quote => Err(BinanceError::one_of(quantity_name, "quoteOrderQty")),
            (None, None) => Err(BinanceError::mandatory(quantity_name)),
            (Some(_), Some(_)) => Err(BinanceError::not_required("quoteOrderQty")),
        };
    }
    let tif = if !limit || maker {
        if maker {
            TimeInForce::PostOnly
        } else {
            TimeInForce::Gtc
        }
    } else {
        match tif.ok_or_else(|| BinanceError::mandatory(&tif_name))? {
            "GTC" => TimeInForce::Gtc,
            "IOC" => TimeInForce::Ioc,
            "FOK" => TimeInForce::Fok,
            _ => return Err(BinanceError::invalid_tif()),
        }
    };
    let qty = to_lots(quantity.ok_or_else(|| BinanceError::mandatory(quantity_name))?)?;
    let price = if limit {
        Some(to_ticks(price.ok_or_else(|| BinanceError::mandatory(&price_name))?)?)
    } else {
        None
    };
    let visible = match iceberg {
        None => Lots(0),
        Some(iceberg) => {
            // Binance: an iceberg is good till cancelled.
            if tif != TimeInForce::Gtc && tif != TimeInForce::PostOnly {
                return Err(BinanceError::unsupported_combination());
            }
            let visible = to_lots(iceberg)?;
            if visible < view.market.rules.min_qty || visible.0 == 0 {
                return Err(BinanceError::filter("LOT_SIZE"));
            }
            if visible >= qty {
                return Err(BinanceError::new_order_rejected(format!(
                    "Order's {iceberg_name} must be below its quantity."
                )));
            }
            if qty.0.div_ceil(visible.0) > super::ICEBERG_PARTS_MAX {
                return Err(BinanceError::filter("ICEBERG_PARTS"));
            }
            visible
        }
    };
    let Some(trigger_kind) = stop_kind else {
        let price = price.ok_or_else(|| BinanceError::mandatory(&price_name))?;
        return Ok(if visible.0 > 0 {
            OrderKind::Iceberg { price, qty, visible, tif }
        } else {
            OrderKind::Limit { price, qty, tif }
        });
    };
    if stop.is_none() && trailing.is_none() {
        return Err(BinanceError::one_of(&stop_name, &trailing_name));
    }
    let stop = stop.map(to_ticks).transpose()?;
    let trailing_bips = match trailing {
        None => 0,
        Some(bips) => {
            let range = u64::from(super::TRAILING_DELTA_BIPS_MIN)..=u64::from(super::TRAILING_DELTA_BIPS_MAX);
            if !range.contains(&bips) {
                return Err(BinanceError::filter("TRAILING_DELTA"));
            }
            bips as u16
        }
    };
    let trigger = Trigger { kind: trigger_kind, stop, trailing_bips };
    Ok(match price {
        None => OrderKind::StopMarket { trigger, qty },
        Some(price) => OrderKind::StopLimit { trigger, price, qty, tif, visible },
    })
}

/// The order checks the engine would make that can be made without it:
/// for `order/test`, which never reaches the engine.
fn check_filters(view: &MarketView, order: &NewOrder) -> Result<(), BinanceError> {
    let rules = &view.market.rules;
    match order.kind {
        OrderKind::Limit { price, qty, .. }
        | OrderKind::Iceberg { price, qty, .. }
        | OrderKind::StopLimit { price, qty, .. } => {
            if qty < rules.min_qty {
                return Err(BinanceError::filter("LOT_SIZE"));
            }
            if rules.quote_units(price, qty).is_none_or(|n| n < rules.min_notional) {
                return Err(BinanceError::filter("NOTIONAL"));
            }
        }
        OrderKind::Market { qty } | OrderKind::StopMarket { qty, .. } if qty < rules.min_qty => {
            return Err(BinanceError::filter("LOT_SIZE"))
        }
        OrderKind::MarketByQuote { amount } if amount < rules.min_notional => {
            return Err(BinanceError::filter("NOTIONAL"))
        }
        _ => {}
    }
    Ok(())
}

/// `POST /api/v3/order`, `order.place`; with `test`, `POST /api/v3/order/test`.
pub async fn place(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
    test: bool,
) -> Result<Value, BinanceError> {
    let mut allowed = NEW_ORDER_PARAMS.to_vec();
    if test {
        allowed.push("computeCommissionRates");
    }
    p.only(&allowed)?;
    let prepared = {
        let views = read_views(state)?;
        let prepared = prepare(state, &views, user, p)?;
        if test {
            let view = market(&views, &prepared.symbol)?;
            check_filters(view, &prepared.order)?;
            if p.flag("computeCommissionRates")?.unwrap_or(false) {
                let rules = &view.market.rules;
                let rate = |ppm: u32| super::fixed(rust_decimal::Decimal::new(i64::from(ppm), 6), 6);
                let zero = rate(0);
                return Ok(json!({
                    "standardCommissionForOrder": { "maker": rate(rules.maker_fee_ppm), "taker": rate(rules.taker_fee_ppm) },
                    "specialCommissionForOrder": { "maker": zero, "taker": zero },
                    "taxCommissionForOrder": { "maker": zero, "taker": zero },
                    "discount": { "enabledForAccount": false, "enabledForSymbol": false, "discountAsset": "", "discount": zero },
                }));
            }
            return Ok(json!({}));
        }
        prepared
    };
    place_prepared(state, producer, prepared).await
}

/// The answer to a new order: `order` as its own command left it, and
/// `fills`, the trades that command made.
pub(super) fn new_order_answer(
    views: &Views,
    order: &OrderView,
    answer: Answer,
    fills: &[FillView],
) -> Value {
    let Some(view) = views.markets.get(order.market.0 as usize) else { return Value::Null };
    let mut out = json!({
        "symbol": view.symbol,
        "orderId": order.order.0,
        "orderListId": list_id(order),
        "clientOrderId": client_id_text(order),
        "transactTime": order.created_ns / 1_000_000,
    });
    if answer == Answer::Ack {
        return out;
    }
    if let (Some(object), Value::Object(details)) = (out.as_object_mut(), order_fields(view, order)) {
        for (key, value) in details {
            object.entry(key).or_insert(value);
        }
        object.insert("workingTime".into(), json!(working_time(order)));
        if answer == Answer::Full {
            let decimals =
                |asset: engine_core::AssetId| views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals);
            let fills: Vec<Value> = fills
                .iter()
                .map(|f| {
                    json!({
                        "price": price_text(&view.scale, f.price),
                        "qty": qty_text(&view.scale, f.qty),
                        "commission": units_text(u128::from(f.fee.0), decimals(f.fee_asset)),
                        "commissionAsset": views.assets.get(f.fee_asset.0 as usize).map(|a| a.symbol.to_string()),
                        "tradeId": f.trade.0,
                    })
                })
                .collect();
            object.insert("fills".into(), Value::Array(fills));
        }
    }
    out
}

pub(super) fn client_id_text(order: &OrderView) -> String {
    order.client_order_id.map(|c| c.to_string()).unwrap_or_default()
}

/// The fields every order answer shares.
pub(super) fn order_fields(view: &MarketView, order: &OrderView) -> Value {
    let (order_type, tif) = type_and_tif(order.kind);
    let quote_decimals = view.scale.quote_decimals;
    let (orig_qty, orig_quote) = match order.kind {
        Some(OrderKind::MarketByQuote { amount }) => (order.filled, u128::from(amount.0)),
        _ => (order.quantity, 0),
    };
    let mut out = json!({
        "symbol": view.symbol,
        "orderId": order.order.0,
        "orderListId": list_id(order),
        "clientOrderId": client_id_text(order),
        "price": order.price.map_or_else(|| super::fixed(rust_decimal::Decimal::ZERO, 0), |p| price_text(&view.scale, p)),
        "origQty": qty_text(&view.scale, orig_qty),
        "executedQty": qty_text(&view.scale, order.filled),
        "cummulativeQuoteQty": units_text(order.quote_filled, quote_decimals),
        "status": order_status_name(order),
        "timeInForce": tif,
        "type": order_type,
        "side": side_name(order.side),
        "origQuoteOrderQty": units_text(orig_quote, quote_decimals),
        "selfTradePreventionMode": stp_name(order.stp.unwrap_or(STP_DEFAULT)),
    });
    // Binance shows these only on the orders that have them.
    if let Some(object) = out.as_object_mut() {
        for (name, value) in trigger_fields(&view.scale, order) {
            object.insert(name.into(), value);
        }
    }
    out
}

/// `stopPrice`, `icebergQty`, `trailingDelta` and `trailingTime` of an
/// order that has them (Binance's names).
pub fn trigger_fields(scale: &crate::amounts::Scale, order: &OrderView) -> Vec<(&'static str, Value)> {
    let mut fields = Vec::new();
    let trigger = order.kind.and_then(|k| k.trigger());
    if let Some(stop) = trigger.and_then(|t| t.stop) {
        fields.push(("stopPrice", json!(price_text(scale, stop))));
    }
    let visible = match order.kind {
        Some(OrderKind::Iceberg { visible, .. } | OrderKind::StopLimit { visible, .. }) => visible,
        _ => Lots(0),
    };
    if visible.0 > 0 {
        fields.push(("icebergQty", json!(qty_text(scale, visible))));
    }
    if let Some(trigger) = trigger.filter(|t| t.trailing_bips > 0) {
        fields.push(("trailingDelta", json!(trigger.trailing_bips)));
        fields.push(("trailingTime", json!(order.trailing_ns.map_or(-1, |ns| (ns / 1_000_000) as i64))));
    }
    fields
}

/// The order list id Binance shows (-1: none).
pub fn list_id(order: &OrderView) -> i64 {
    order.list.map_or(-1, |l| l.0 as i64)
}

/// When the order started working, in ms (-1 while it waits, as on Binance).
pub fn working_time(order: &OrderView) -> i64 {
    order.working_ns.map_or(-1, |ns| (ns / 1_000_000) as i64)
}

/// An order as `GET /api/v3/order` and `openOrders` show it.
pub fn order_json(views: &Views, order: &OrderView) -> Value {
    let Some(view) = views.markets.get(order.market.0 as usize) else { return Value::Null };
    let mut out = order_fields(view, order);
    if let Some(object) = out.as_object_mut() {
        let open = views.user(order.user).is_some_and(|u| u.open.contains_key(&order.order));
        object.entry("stopPrice").or_insert_with(|| json!(super::fixed(rust_decimal::Decimal::ZERO, 0)));
        object.entry("icebergQty").or_insert_with(|| json!(super::fixed(rust_decimal::Decimal::ZERO, 0)));
        object.insert("time".into(), json!(order.created_ns / 1_000_000));
        object.insert("updateTime".into(), json!(order.updated_ns / 1_000_000));
        object.insert("isWorking".into(), json!(open && order.stage == OrderStage::Working));
        object.insert("workingTime".into(), json!(working_time(order)));
    }
    out
}

/// A cancelled order as the cancel endpoints answer.
pub(super) fn cancel_json(views: &Views, order: &OrderView, transact_ms: u64) -> Value {
    let Some(view) = views.markets.get(order.market.0 as usize) else { return Value::Null };
    let mut out = order_fields(view, order);
    if let Some(object) = out.as_object_mut() {
        // The cancel itself has no client id of its own here: it is the order's.
        object.insert("origClientOrderId".into(), json!(client_id_text(order)));
        object.insert("transactTime".into(), json!(transact_ms));
    }
    out
}

fn find(views: &Views, user: UserId, order: OrderRef) -> Option<&OrderView> {
    views.find_order_ref(user, order)
}

/// `orderId` or `origClientOrderId` (or the names `cancelReplace` gives
/// them); the id wins when both are sent, as on Binance.
pub(super) fn order_ref(p: &Params, id_name: &str, client_name: &str) -> Result<OrderRef, BinanceError> {
    match (p.integer(id_name)?, p.get(client_name)) {
        (Some(id), _) => Ok(OrderRef::Id(OrderId(id))),
        (None, Some(client)) => Ok(OrderRef::Client(client_order_id(client_name, client)?)),
        (None, None) => Err(BinanceError::one_of(id_name, client_name)),
    }
}

/// The open order `order` of `user` in the symbol's market, or Binance's
/// "Unknown order sent." (cancels and amends answer that way).
fn open_in_market(
    views: &Views,
    user: UserId,
    market: engine_core::MarketId,
    order: OrderRef,
) -> Result<OrderId, BinanceError> {
    find(views, user, order)
        .filter(|o| o.market == market && views.user(user).is_some_and(|u| u.open.contains_key(&o.order)))
        .map(|o| o.order)
        .ok_or_else(BinanceError::cancel_unknown)
}

async fn cancel_one(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    symbol: &str,
    order: OrderRef,
) -> Result<Value, BinanceError> {
    let (id, list) = {
        let views = read_views(state)?;
        let view = market(&views, symbol)?;
        let id = open_in_market(&views, user, view.market.id, order)?;
        let open_list = find(&views, user, OrderRef::Id(id))
            .and_then(|o| o.list)
            .filter(|list| views.user(user).is_some_and(|u| u.lists.contains_key(list)));
        (id, open_list)
    };
    if let Some(list) = list {
        // Cancelling an order of a list cancels the list: Binance answers
        // with the list and a report of each order.
        let command = engine_core::Command::CancelOrder { user, order: OrderRef::Id(id) };
        return cancelled_list(state, producer, user, command, list).await;
    }
    let cancelled =
        app::cancel(state, producer, user, OrderRef::Id(id)).await.map_err(refused(Action::Cancel))?;
    let views = read_views(state)?;
    Ok(cancel_json(&views, &cancelled, cancelled.updated_ns / 1_000_000))
}

/// `DELETE /api/v3/order`, `order.cancel`.
pub async fn cancel(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderId", "origClientOrderId", "newClientOrderId", "cancelRestrictions"])?;
    if p.has("cancelRestrictions") {
        return Err(BinanceError::not_required("cancelRestrictions"));
    }
    let symbol = p.required("symbol")?;
    let order = order_ref(p, "orderId", "origClientOrderId")?;
    cancel_one(state, producer, user, symbol, order).await
}

/// `GET /api/v3/order`, `order.status`: from the views, or, for an order
/// past their retention, from the database when there is one.
pub async fn status(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderId", "origClientOrderId"])?;
    let order = order_ref(p, "orderId", "origClientOrderId")?;
    let market_id = market(&*read_views(state)?, p.required("symbol")?)?.market.id;
    match app::find_order(state, user, order, Some(market_id)).await? {
        Some(found) => Ok(order_json(&*read_views(state)?, &found)),
        None => Err(BinanceError::no_such_order()),
    }
}

/// `GET /api/v3/openOrders`, `openOrders.status`.
pub fn open_orders(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["symbol"])?;
    let views = read_views(state)?;
    let market_id = p.get("symbol").map(|s| market(&views, s).map(|m| m.market.id)).transpose()?;
    let Some(account) = views.user(user) else { return Ok(json!([])) };
    Ok(Value::Array(
        account
            .open
            .values()
            .filter(|o| market_id.is_none_or(|m| o.market == m))
            .map(|o| order_json(&views, o))
            .collect(),
    ))
}

/// `GET /api/v3/allOrders`, `allOrders`: the user's orders in one market,
/// open and closed, by order id. The views have the open orders and each
/// user's last `closed_orders_kept_per_user` closed ones; PostgreSQL, when
/// configured, has the rest. `orderId` starts at that id; `startTime` and
/// `endTime` bound the creation time; without either of `orderId` and
/// `startTime` the most recent `limit` come.
pub async fn all_orders(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderId", "startTime", "endTime", "limit"])?;
    let limit = p.bounded("limit", 1, ALL_ORDERS_LIMIT_MAX)?.unwrap_or(ALL_ORDERS_LIMIT_DEFAULT);
    let range = TradeRange {
        from_id: p.integer("orderId")?,
        start_ms: p.integer("startTime")?,
        end_ms: p.integer("endTime")?,
    };
    let (market_id, mut orders) = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let account = views.user(user);
        let known: std::collections::BTreeMap<u64, (u64, Value)> = account
            .into_iter()
            .flat_map(|a| a.open.values().chain(a.closed.iter()))
            .filter(|o| o.market == view.market.id)
            .map(|o| (o.order.0, (o.created_ns / 1_000_000, order_json(&views, o))))
            .collect();
        (view.market.id, known)
    };
    if let Some((_, history)) = &state.database {
        let stored = persistence::Range {
            from_ms: range.start_ms,
            to_ms: range.end_ms.map(|ms| ms + 1),
            from_id: range.from_id,
            limit: limit as u32,
            offset: 0,
        };
        match history.orders(user.0 as i32, Some(market_id.0 as i32), stored).await {
            Ok(rows) => {
                let views = read_views(state)?;
                for row in &rows {
                    // The views are current; the database may lag them.
                    if let Some(answer) = stored_order(&views, row) {
                        let created_ms = row
                            .created_at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        orders.entry(row.order_id as u64).or_insert((created_ms, answer));
                    }
                }
            }
            Err(error) => {
                tracing::warn!("allOrders: history query failed: {error}");
                return Err(BinanceError::new(
                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                    -1001,
                    "Internal error; unable to process your request. Please try again.",
                ));
            }
        }
    }
    let in_range: Vec<Value> = orders
        .into_iter()
        .filter(|(id, (created_ms, _))| range.contains(*id, *created_ms))
        .map(|(_, (_, answer))| answer)
        .collect();
    Ok(Value::Array(range.window(in_range, limit as usize)))
}

/// An order from the database in `GET /api/v3/order`'s shape.
fn stored_order(views: &Views, row: &persistence::OrderRecord) -> Option<Value> {
    let view = views.markets.get(row.market_id as usize)?;
    let text = |value: rust_decimal::Decimal| super::fixed(value, value.scale());
    let zero = || super::fixed(rust_decimal::Decimal::ZERO, 0);
    let ms = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    };
    let (order_type, tif) = match (row.order_type.as_str(), row.time_in_force.as_deref()) {
        ("limit", Some("POST_ONLY")) => ("LIMIT_MAKER", "GTC"),
        ("limit", Some(tif)) => ("LIMIT", tif),
        _ => ("MARKET", "GTC"),
    };
    let status = match row.status.as_str() {
        "new" => "NEW",
        "partially_filled" => "PARTIALLY_FILLED",
        "filled" => "FILLED",
        "cancelled" => "CANCELED",
        "expired_self_trade" => "EXPIRED_IN_MATCH",
        _ => "EXPIRED",
    };
    let stp = STP_MODES
        .iter()
        .find(|(_, mode)| persistence::stp_name(*mode) == row.self_trade_prevention)
        .map_or("NONE", |(name, _)| name);
    let open = matches!(row.status.as_str(), "new" | "partially_filled");
    Some(json!({
        "symbol": view.symbol,
        "orderId": row.order_id,
        "orderListId": -1,
        "clientOrderId": row.client_order_id.clone().unwrap_or_default(),
        "price": row.price.map_or_else(zero, |p| text(p.0)),
        "origQty": row.quantity.map_or_else(|| text(row.executed_quantity.0), |q| text(q.0)),
        "executedQty": text(row.executed_quantity.0),
        "cummulativeQuoteQty": text(row.executed_quote.0),
        "status": status,
        "timeInForce": tif,
        "type": order_type,
        "side": if row.side == "buy" { "BUY" } else { "SELL" },
        "origQuoteOrderQty": row.quote_amount.map_or_else(zero, |q| text(q.0)),
        "selfTradePreventionMode": stp,
        "stopPrice": zero(),
        "icebergQty": zero(),
        "time": ms(row.created_at),
        "updateTime": ms(row.updated_at),
        "isWorking": open,
        "workingTime": ms(row.created_at),
    }))
}

/// `DELETE /api/v3/openOrders`, `openOrders.cancelAll`.
pub async fn cancel_all(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(&["symbol"])?;
    let market_id = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let any_open = views.user(user).is_some_and(|u| u.open.values().any(|o| o.market == view.market.id));
        if !any_open {
            return Err(BinanceError::cancel_unknown());
        }
        view.market.id
    };
    let closed =
        app::cancel_all(state, producer, user, Some(market_id)).await.map_err(refused(Action::Cancel))?;
    let views = read_views(state)?;
    // Each order as the cancel closed it: the views keep a bounded number
    // of closed orders, fewer than a cancel-all may close. The orders of a
    // list are answered as their list with a report of each, as Binance
    // does (a list the cancel ended; a list that had ended before has
    // only its surviving order here, answered as an order).
    let mut answers = Vec::with_capacity(closed.len());
    let mut lists_done = Vec::new();
    for order in &closed {
        let report = cancel_json(&views, order, order.updated_ns / 1_000_000);
        let list = order.list.and_then(|id| views.find_list(user, engine_core::ListRef::Id(id)));
        let Some(list) = list.filter(|l| closed.iter().filter(|o| l.orders.contains(&o.order)).count() == 2)
        else {
            answers.push(report);
            continue;
        };
        if lists_done.contains(&list.list) {
            continue;
        }
        lists_done.push(list.list);
        let mut list_answer = list_json(&views, list, true);
        if let Some(object) = list_answer.as_object_mut() {
            let reports: Vec<Value> = closed
                .iter()
                .filter(|o| list.orders.contains(&o.order))
                .map(|o| cancel_json(&views, o, o.updated_ns / 1_000_000))
                .collect();
            object.insert("orderReports".into(), Value::Array(reports));
        }
        answers.push(list_answer);
    }
    Ok(Value::Array(answers))
}

/// `POST /api/v3/order/cancelReplace`, `order.cancelReplace`: cancels an
/// order, then places a new one, as Binance does (two steps, each
/// reported). The new order is checked before the cancel is sent.
pub async fn cancel_replace(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    let mut allowed = NEW_ORDER_PARAMS.to_vec();
    allowed.extend([
        "cancelReplaceMode",
        "cancelOrderId",
        "cancelOrigClientOrderId",
        "cancelNewClientOrderId",
        "cancelRestrictions",
        "orderRateLimitExceededMode",
    ]);
    p.only(&allowed)?;
    let allow_failure = match p.required("cancelReplaceMode")? {
        "STOP_ON_FAILURE" => false,
        "ALLOW_FAILURE" => true,
        _ => {
            return Err(BinanceError::invalid_value("cancelReplaceMode", "STOP_ON_FAILURE or ALLOW_FAILURE"))
        }
    };
    if p.has("cancelRestrictions") {
        return Err(BinanceError::not_required("cancelRestrictions"));
    }
    let cancel_ref = order_ref(p, "cancelOrderId", "cancelOrigClientOrderId")?;
    let prepared = {
        let views = read_views(state)?;
        prepare(state, &views, user, p)?
    };
    let cancel = cancel_one(state, producer, user, &prepared.symbol, cancel_ref).await;
    let cancel_response = match &cancel {
        Ok(value) => value.clone(),
        Err(error) => error.body(),
    };
    if cancel.is_err() && !allow_failure {
        return Err(BinanceError {
            data: Some(json!({
                "cancelResult": "FAILURE",
                "newOrderResult": "NOT_ATTEMPTED",
                "cancelResponse": cancel_response,
                "newOrderResponse": null,
            })),
            ..BinanceError::bad_request(-2022, "Order cancel-replace failed.")
        });
    }
    let placed = place_prepared(state, producer, prepared).await;
    let cancel_result = if cancel.is_ok() { "SUCCESS" } else { "FAILURE" };
    match placed {
        Ok(new_order) if cancel.is_ok() => Ok(json!({
            "cancelResult": cancel_result,
            "newOrderResult": "SUCCESS",
            "cancelResponse": cancel_response,
            "newOrderResponse": new_order,
        })),
        Ok(new_order) => Err(BinanceError {
            data: Some(json!({
                "cancelResult": cancel_result,
                "newOrderResult": "SUCCESS",
                "cancelResponse": cancel_response,
                "newOrderResponse": new_order,
            })),
            ..BinanceError::new(hyper::StatusCode::CONFLICT, -2021, "Order cancel-replace partially failed.")
        }),
        Err(error) => {
            let (code, msg) = if cancel.is_ok() {
                (-2021, "Order cancel-replace partially failed.")
            } else {
                (-2022, "Order cancel-replace failed.")
            };
            let status =
                if cancel.is_ok() { hyper::StatusCode::CONFLICT } else { hyper::StatusCode::BAD_REQUEST };
            Err(BinanceError {
                data: Some(json!({
                    "cancelResult": cancel_result,
                    "newOrderResult": "FAILURE",
                    "cancelResponse": cancel_response,
                    "newOrderResponse": error.body(),
                })),
                ..BinanceError::new(status, code, msg)
            })
        }
    }
}

async fn place_prepared(
    state: &AppState,
    producer: &Mutex<Publisher>,
    prepared: Prepared,
) -> Result<Value, BinanceError> {
    let placed = app::place(state, producer, prepared.order).await.map_err(refused(Action::Place))?;
    let views = read_views(state)?;
    Ok(new_order_answer(&views, &placed.order, prepared.answer, &placed.fills))
}

/// `PUT /api/v3/order/amend/keepPriority`, `order.amend.keepPriority`:
/// lowers an open order's quantity and keeps its place in the queue.
pub async fn amend_keep_priority(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderId", "origClientOrderId", "newClientOrderId", "newQty"])?;
    let new_qty = p.decimal("newQty")?.ok_or_else(|| BinanceError::mandatory("newQty"))?;
    let (id, open_qty) = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let id = open_in_market(&views, user, view.market.id, order_ref(p, "orderId", "origClientOrderId")?)?;
        let order = find(&views, user, OrderRef::Id(id)).ok_or_else(BinanceError::cancel_unknown)?;
        if let Some(rename) = p.get("newClientOrderId") {
            if Some(rename) != order.client_order_id.as_ref().map(|c| c.as_str()) {
                return Err(BinanceError::unsupported(
                    "This operation is not supported: an amend keeps the order's clientOrderId; omit newClientOrderId or send the current one.",
                ));
            }
        }
        let new_total =
            view.scale.to_lots("newQty", new_qty).map_err(|_| BinanceError::filter("LOT_SIZE"))?;
        if new_total == order.quantity {
            return Err(BinanceError::amend_rejected(
                "The requested action would change no state; rejecting",
            ));
        }
        if new_total > order.quantity {
            return Err(BinanceError::amend_rejected("Order amend (quantity increase) is not supported."));
        }
        if new_total <= order.filled {
            return Err(BinanceError::filter("LOT_SIZE"));
        }
        (id, Lots(new_total.0 - order.filled.0))
    };
    let amend = Amend { user, order: OrderRef::Id(id), new_qty: Some(open_qty), new_price: None };
    let order = &app::amend(state, producer, amend).await.map_err(refused(Action::Amend))?;
    let views = read_views(state)?;
    let view =
        views.markets.get(order.market.0 as usize).ok_or_else(|| BinanceError::internal("no market"))?;
    let mut amended = order_fields(view, order);
    if let Some(object) = amended.as_object_mut() {
        if let Some(qty) = object.remove("origQty") {
            object.insert("qty".into(), qty);
        }
        object.insert("origClientOrderId".into(), json!(client_id_text(order)));
        object.insert("preventedQty".into(), json!(qty_text(&view.scale, Lots(0))));
        object.insert("workingTime".into(), json!(order.created_ns / 1_000_000));
    }
    Ok(
        json!({ "transactTime": order.updated_ns / 1_000_000, "executionId": order.updated_seq, "amendedOrder": amended }),
    )
}

/// `GET /api/v3/account`, `account.status`.
pub fn account(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["omitZeroBalances"])?;
    let omit_zero = p.flag("omitZeroBalances")?.unwrap_or(false);
    let views = read_views(state)?;
    let balances: Vec<Value> = views
        .assets
        .iter()
        .map(|asset| {
            let (available, locked) = views
                .user(user)
                .and_then(|u| u.balances.get(asset.id.0 as usize).copied())
                .unwrap_or_default();
            (asset, available, locked)
        })
        .filter(|(_, available, locked)| !omit_zero || available.0 > 0 || locked.0 > 0)
        .map(|(asset, available, locked)| {
            json!({
                "asset": asset.symbol.as_str(),
                "free": units_text(u128::from(available.0), asset.decimals),
                "locked": units_text(u128::from(locked.0), asset.decimals),
            })
        })
        .collect();
    // Fees are per market here; the account-wide figures are the common
    // rate when every market has the same one, and 0 otherwise (see
    // `order/test` with computeCommissionRates for a market's own).
    let common = |fee: fn(&MarketView) -> u32| {
        let mut rates = views.markets.iter().map(fee);
        let first = rates.next().unwrap_or(0);
        if rates.all(|r| r == first) {
            first
        } else {
            0
        }
    };
    let maker_ppm = common(|m| m.market.rules.maker_fee_ppm);
    let taker_ppm = common(|m| m.market.rules.taker_fee_ppm);
    let rate = |ppm: u32| super::fixed(rust_decimal::Decimal::new(i64::from(ppm), 6), 6);
    Ok(json!({
        "makerCommission": maker_ppm / 100,
        "takerCommission": taker_ppm / 100,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": { "maker": rate(maker_ppm), "taker": rate(taker_ppm), "buyer": rate(0), "seller": rate(0) },
        "canTrade": true,
        "canWithdraw": false,
        "canDeposit": false,
        "brokered": false,
        "requireSelfTradePrevention": false,
        "preventSor": false,
        "updateTime": now_ms(),
        "accountType": "SPOT",
        "balances": balances,
        "permissions": ["SPOT"],
        "uid": user.0,
    }))
}

/// `GET /sapi/v1/asset/tradeFee` (Binance's wallet API, where ccxt's
/// `fetch_trading_fees` asks): each market's maker and taker fee rates.
pub fn trade_fee(state: &AppState, _user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["symbol"])?;
    let views = read_views(state)?;
    let rate = |ppm: u32| rust_decimal::Decimal::new(i64::from(ppm), 6).normalize().to_string();
    let fees = super::market::markets_named(&views, p)?
        .iter()
        .map(|m| {
            json!({
                "symbol": m.symbol,
                "makerCommission": rate(m.market.rules.maker_fee_ppm),
                "takerCommission": rate(m.market.rules.taker_fee_ppm),
            })
        })
        .collect();
    Ok(Value::Array(fees))
}

/// One of the user's trades, from the views or the database.
struct MyTrade {
    id: u64,
    order: u64,
    price: String,
    qty: String,
    quote_qty: String,
    commission: String,
    commission_asset: String,
    time_ms: u64,
    buyer: bool,
    maker: bool,
}

/// `GET /api/v3/myTrades`, `myTrades`: the user's trades in one market,
/// oldest first. Recent fills come from the views (always current); older
/// ones from the database when one is configured.
pub async fn my_trades(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderId", "startTime", "endTime", "fromId", "limit"])?;
    let limit = p.bounded("limit", 1, MY_TRADES_LIMIT_MAX)?.unwrap_or(MY_TRADES_LIMIT_DEFAULT);
    let order_id = p.integer("orderId")?;
    let range = TradeRange::read(p)?;
    let (market_id, symbol, mut trades) = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        (view.market.id, view.symbol.clone(), recent_fills(&views, user, view))
    };
    if let Some((_, history)) = &state.database {
        let stored = persistence::Range {
            from_ms: range.start_ms,
            to_ms: range.end_ms.map(|ms| ms + 1),
            from_id: range.from_id,
            limit: limit as u32,
            offset: 0,
        };
        match history.user_trades(user.0 as i32, Some(market_id.0 as i32), stored).await {
            Ok(rows) => {
                let views = read_views(state)?;
                trades.extend(rows.iter().map(|row| stored_trade(&views, row)));
            }
            Err(error) => {
                tracing::warn!("myTrades: history query failed: {error}");
                return Err(BinanceError::new(
                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                    -1001,
                    "Internal error; unable to process your request. Please try again.",
                ));
            }
        }
    }
    // One row per order of the user in each trade: a trade the user made
    // with themself is two rows (the buyer's and the seller's), as on
    // Binance. The views and the database may both have a row.
    trades.sort_by_key(|t| (t.id, t.order));
    trades.dedup_by_key(|t| (t.id, t.order));
    let in_range: Vec<&MyTrade> = trades
        .iter()
        .filter(|t| order_id.is_none_or(|id| t.order == id) && range.contains(t.id, t.time_ms))
        .collect();
    let ids: Vec<u64> = in_range.iter().map(|t| t.id).collect();
    let mut chosen: Vec<&MyTrade> = range.window(in_range, limit as usize);
    whole_trades(&mut chosen, &ids);
    Ok(Value::Array(
        chosen
            .iter()
            .map(|t| {
                json!({
                    "symbol": symbol, "id": t.id, "orderId": t.order, "orderListId": -1,
                    "price": t.price, "qty": t.qty, "quoteQty": t.quote_qty,
                    "commission": t.commission, "commissionAsset": t.commission_asset,
                    "time": t.time_ms, "isBuyer": t.buyer, "isMaker": t.maker, "isBestMatch": true,
                })
            })
            .collect(),
    ))
}

/// Keeps a page of `myTrades` from ending between the two rows of a
/// self-trade (a client that pages on with `fromId` = last id + 1 would
/// never see the second): the split trade's rows at either edge are left
/// to the neighbouring page, unless they are all the page has. `ids` are
/// the ids of every row in range, in order; `page` is a window of them.
fn whole_trades(page: &mut Vec<&MyTrade>, ids: &[u64]) {
    let (Some(first), Some(last)) = (page.first().map(|t| t.id), page.last().map(|t| t.id)) else {
        return;
    };
    if first == last {
        return;
    }
    for edge in [last, first] {
        let on_page = page.iter().filter(|t| t.id == edge).count();
        if on_page < ids.iter().filter(|id| **id == edge).count() {
            page.retain(|t| t.id != edge);
        }
    }
}

fn recent_fills(views: &Views, user: UserId, view: &MarketView) -> Vec<MyTrade> {
    let Some(account) = views.user(user) else { return Vec::new() };
    let decimals = |asset: engine_core::AssetId| views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals);
    account
        .open
        .values()
        .chain(account.closed.iter())
        .filter(|o| o.market == view.market.id)
        .flat_map(|o| o.fills.iter().map(move |f| (o, f)))
        .map(|(o, f)| MyTrade {
            id: f.trade.0,
            order: o.order.0,
            price: price_text(&view.scale, f.price),
            qty: qty_text(&view.scale, f.qty),
            quote_qty: units_text(
                u128::from(f.price.0)
                    * u128::from(f.qty.0)
                    * u128::from(view.market.rules.quote_units_per_tick),
                view.scale.quote_decimals,
            ),
            commission: units_text(u128::from(f.fee.0), decimals(f.fee_asset)),
            commission_asset: views
                .assets
                .get(f.fee_asset.0 as usize)
                .map_or_else(String::new, |a| a.symbol.to_string()),
            time_ms: f.timestamp_ns / 1_000_000,
            buyer: o.side == Side::Buy,
            maker: f.maker,
        })
        .collect()
}

fn stored_trade(views: &Views, row: &persistence::UserTradeRow) -> MyTrade {
    let asset = views.assets.get(row.fee_asset_id as usize);
    let text = |value: rust_decimal::Decimal| super::fixed(value, value.scale());
    MyTrade {
        id: row.trade_id as u64,
        order: row.order_id as u64,
        price: text(row.price.0),
        qty: text(row.quantity.0),
        quote_qty: text(row.quote_quantity.0),
        commission: text(row.fee.0),
        commission_asset: asset.map_or_else(String::new, |a| a.symbol.to_string()),
        time_ms: row.executed_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        buyer: row.buyer,
        maker: row.maker,
    }
}

// ----- order lists as Binance shows them (shared with `lists`) -----

pub(crate) fn list_answer(views: &Views, list: &ListView, outcome: &Outcome) -> Value {
    let done = outcome
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::OrderListDone { list: done, .. } if done == list.list));
    list_json(views, list, done)
}

/// Binance's `contingencyType` of a list.
pub fn contingency_name(contingency: Contingency) -> &'static str {
    match contingency {
        Contingency::Oco => "OCO",
        Contingency::Oto => "OTO",
    }
}

/// `listStatusType` and `listOrderStatus` of an open or done list.
pub fn list_statuses(done: bool) -> (&'static str, &'static str) {
    if done {
        ("ALL_DONE", "ALL_DONE")
    } else {
        ("EXEC_STARTED", "EXECUTING")
    }
}

/// A list as `GET /api/v3/orderList` shows it (`done`: ended).
pub fn list_json(views: &Views, list: &ListView, done: bool) -> Value {
    let symbol = views.markets.get(list.market.0 as usize).map_or("", |m| m.symbol.as_str());
    let (status_type, order_status) = list_statuses(done);
    let orders: Vec<Value> = list
        .orders
        .iter()
        .map(|order| {
            let client = views
                .find_order_ref(list.user, engine_core::OrderRef::Id(*order))
                .and_then(|o| o.client_order_id)
                .map(|c| c.to_string())
                .unwrap_or_default();
            json!({ "symbol": symbol, "orderId": order.0, "clientOrderId": client })
        })
        .collect();
    json!({
        "orderListId": list.list.0,
        "contingencyType": contingency_name(list.contingency),
        "listStatusType": status_type,
        "listOrderStatus": order_status,
        "listClientOrderId": list.client_list_id.map(|c| c.to_string()).unwrap_or_default(),
        "transactionTime": list.done_ns.unwrap_or(list.created_ns) / 1_000_000,
        "symbol": symbol,
        "orders": orders,
    })
}

/// Runs a command that cancels the list `id` (the list, or one of its
/// orders) and answers with the list and a report of each order it closed,
/// Binance's shape for a cancelled list.
pub async fn cancelled_list(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    command: Command,
    id: ListId,
) -> Result<Value, BinanceError> {
    let outcome = app::run(state, producer, command).await.map_err(refused(Action::Cancel))?;
    let views = read_views(state)?;
    let list = views
        .find_list(user, ListRef::Id(id))
        .ok_or_else(|| BinanceError::internal("the cancelled order list is not in the views"))?;
    let mut out = list_answer(&views, list, &outcome);
    let closed: Vec<Value> = outcome
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderDone { order, .. } => outcome.order(order),
            _ => None,
        })
        .map(|order| cancel_json(&views, order, order.updated_ns / 1_000_000))
        .collect();
    if let Some(object) = out.as_object_mut() {
        object.insert("orderReports".into(), Value::Array(closed));
    }
    Ok(out)
}
