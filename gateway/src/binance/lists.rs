//! Binance's order lists: `POST /api/v3/orderList/oco` (the above/below
//! form), `POST /api/v3/orderList/oto`, `DELETE /api/v3/orderList`,
//! `GET /api/v3/orderList`, `openOrderList` and `allOrderList`, and their
//! WebSocket API methods. Each list is one engine command
//! ([`Command::PlaceOrderList`], [`Command::CancelOrderList`]); answers
//! come from the command's own events and captured orders, as for orders.

use std::sync::Mutex;

use engine_core::{
    ClientOrderId, Command, Contingency, EventKind, ListId, ListLeg, ListRef, NewOrderList, OrderKind, UserId,
};
use serde_json::{json, Value};

use super::error::{Action, BinanceError};
use super::market::{market, read_views};
use super::params::{Params, TradeRange};
use super::trading::{
    answer_of, cancelled_list, client_order_id, leg_kind, list_answer, list_json, new_order_answer, refused,
    side_of, stp_of, Answer, Leg,
};
use crate::app;
use crate::pipeline::Publisher;
use crate::state::AppState;
use crate::views::ListView;

const ALL_LISTS_LIMIT_DEFAULT: u64 = 500;
const ALL_LISTS_LIMIT_MAX: u64 = 1_000;

/// The parameters of `orderList/oco`.
const OCO_PARAMS: &[&str] = &[
    "symbol",
    "listClientOrderId",
    "side",
    "quantity",
    "aboveType",
    "aboveClientOrderId",
    "aboveIcebergQty",
    "abovePrice",
    "aboveStopPrice",
    "aboveTrailingDelta",
    "aboveTimeInForce",
    "belowType",
    "belowClientOrderId",
    "belowIcebergQty",
    "belowPrice",
    "belowStopPrice",
    "belowTrailingDelta",
    "belowTimeInForce",
    "newOrderRespType",
    "selfTradePreventionMode",
];

/// The parameters of `orderList/oto`.
const OTO_PARAMS: &[&str] = &[
    "symbol",
    "listClientOrderId",
    "newOrderRespType",
    "selfTradePreventionMode",
    "workingType",
    "workingSide",
    "workingClientOrderId",
    "workingPrice",
    "workingQuantity",
    "workingIcebergQty",
    "workingTimeInForce",
    "pendingType",
    "pendingSide",
    "pendingClientOrderId",
    "pendingPrice",
    "pendingStopPrice",
    "pendingTrailingDelta",
    "pendingQuantity",
    "pendingIcebergQty",
    "pendingTimeInForce",
];

/// The types of an OCO order whose price is above the other's for each
/// side (Binance's rule: a SELL OCO takes profit above and stops the loss
/// below, a BUY OCO the other way round).
const TAKE_PROFIT_TYPES: &[&str] = &["LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"];
const STOP_LOSS_TYPES: &[&str] = &["STOP_LOSS", "STOP_LOSS_LIMIT"];

fn oco_type_refused() -> BinanceError {
    BinanceError::bad_request(
        -1158,
        "Order type not supported in OCO: a SELL OCO's above order is LIMIT_MAKER, TAKE_PROFIT or \
         TAKE_PROFIT_LIMIT and its below order STOP_LOSS or STOP_LOSS_LIMIT; a BUY OCO's above order is \
         STOP_LOSS or STOP_LOSS_LIMIT and its below order LIMIT_MAKER, TAKE_PROFIT or TAKE_PROFIT_LIMIT.",
    )
}

fn optional_client_id(p: &Params, name: &str) -> Result<Option<ClientOrderId>, BinanceError> {
    p.get(name).map(|text| client_order_id(name, text)).transpose()
}

/// `POST /api/v3/orderList/oco`, `orderList.place.oco`.
pub async fn place_oco(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(OCO_PARAMS)?;
    let list = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let side = side_of(p.required("side")?)?;
        let above_type = p.required("aboveType")?;
        let below_type = p.required("belowType")?;
        let known = |t: &str| TAKE_PROFIT_TYPES.contains(&t) || STOP_LOSS_TYPES.contains(&t);
        if !known(above_type) || !known(below_type) {
            return Err(oco_type_refused());
        }
        let (above_ok, below_ok) = match side {
            engine_core::Side::Sell => (TAKE_PROFIT_TYPES, STOP_LOSS_TYPES),
            engine_core::Side::Buy => (STOP_LOSS_TYPES, TAKE_PROFIT_TYPES),
        };
        if !above_ok.contains(&above_type) || !below_ok.contains(&below_type) {
            return Err(oco_type_refused());
        }
        let above = leg_kind(view, p, &Leg { prefix: "above" }, above_type, "quantity", false)?;
        let below = leg_kind(view, p, &Leg { prefix: "below" }, below_type, "quantity", false)?;
        // The limit order must be on the right side of the stop.
        let reference = |kind: &OrderKind| match kind.trigger().and_then(|t| t.stop) {
            Some(stop) => Some(stop),
            None => kind.price(),
        };
        if let (Some(high), Some(low)) = (reference(&above), reference(&below)) {
            if high <= low {
                return Err(match side {
                    engine_core::Side::Buy => {
                        BinanceError::bad_request(-1165, "A limit order in a buy OCO must be below.")
                    }
                    engine_core::Side::Sell => {
                        BinanceError::bad_request(-1166, "A limit order in a sell OCO must be above.")
                    }
                });
            }
        }
        let leg_id = |name: &str| -> Result<ClientOrderId, BinanceError> {
            match optional_client_id(p, name)? {
                Some(id) => Ok(id),
                None => client_order_id(name, &state.binance.next_client_order_id()),
            }
        };
        NewOrderList {
            user,
            market: view.market.id,
            contingency: Contingency::Oco,
            client_list_id: Some(list_client_id(state, p)?),
            stp: stp_of(p)?,
            // The below order first: Binance lists it first too.
            legs: [
                ListLeg { side, kind: below, client_order_id: Some(leg_id("belowClientOrderId")?) },
                ListLeg { side, kind: above, client_order_id: Some(leg_id("aboveClientOrderId")?) },
            ],
        }
    };
    let answer = answer_of(p, true)?;
    place(state, producer, list, answer).await
}

/// `POST /api/v3/orderList/oto`, `orderList.place.oto`.
pub async fn place_oto(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(OTO_PARAMS)?;
    let list = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let working_type = p.required("workingType")?;
        if !matches!(working_type, "LIMIT" | "LIMIT_MAKER") {
            return Err(BinanceError::bad_request(
                -1158,
                "Order type not supported in OTO: the working order is LIMIT or LIMIT_MAKER.",
            ));
        }
        let pending_type = p.required("pendingType")?;
        let working = leg_kind(view, p, &Leg { prefix: "working" }, working_type, "workingQuantity", false)?;
        let pending = leg_kind(view, p, &Leg { prefix: "pending" }, pending_type, "pendingQuantity", false)?;
        let leg_id = |name: &str| -> Result<ClientOrderId, BinanceError> {
            match optional_client_id(p, name)? {
                Some(id) => Ok(id),
                None => client_order_id(name, &state.binance.next_client_order_id()),
            }
        };
        NewOrderList {
            user,
            market: view.market.id,
            contingency: Contingency::Oto,
            client_list_id: Some(list_client_id(state, p)?),
            stp: stp_of(p)?,
            legs: [
                ListLeg {
                    side: side_of(p.required("workingSide")?)?,
                    kind: working,
                    client_order_id: Some(leg_id("workingClientOrderId")?),
                },
                ListLeg {
                    side: side_of(p.required("pendingSide")?)?,
                    kind: pending,
                    client_order_id: Some(leg_id("pendingClientOrderId")?),
                },
            ],
        }
    };
    let answer = answer_of(p, true)?;
    place(state, producer, list, answer).await
}

fn list_client_id(state: &AppState, p: &Params) -> Result<ClientOrderId, BinanceError> {
    match optional_client_id(p, "listClientOrderId")? {
        Some(id) => Ok(id),
        None => client_order_id("listClientOrderId", &state.binance.next_client_order_id()),
    }
}

async fn place(
    state: &AppState,
    producer: &Mutex<Publisher>,
    list: NewOrderList,
    answer: Answer,
) -> Result<Value, BinanceError> {
    let user = list.user;
    let outcome =
        app::run(state, producer, Command::PlaceOrderList(list)).await.map_err(refused(Action::Place))?;
    let id = outcome
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::OrderListAccepted { list, user: owner, .. } if owner == user => Some(list),
            _ => None,
        })
        .ok_or_else(|| BinanceError::internal("no order list in the outcome"))?;
    let views = read_views(state)?;
    let list = views
        .find_list(user, ListRef::Id(id))
        .ok_or_else(|| BinanceError::internal("the placed order list is not in the views"))?;
    let mut out = list_answer(&views, list, &outcome);
    if let Some(object) = out.as_object_mut() {
        object.insert("transactionTime".into(), json!(list.created_ns / 1_000_000));
        let reports: Vec<Value> = list
            .orders
            .iter()
            .filter_map(|order| {
                let captured = outcome.order(*order)?;
                let fills = outcome.fills(&views, *order);
                // Binance's reports are RESULT's fields (FULL adds fills).
                let shown = if answer == Answer::Ack { Answer::Result } else { answer };
                let mut report = new_order_answer(&views, captured, shown, &fills);
                if let Some(report) = report.as_object_mut() {
                    report.insert("transactTime".into(), json!(list.created_ns / 1_000_000));
                }
                Some(report)
            })
            .collect();
        if answer != Answer::Ack {
            object.insert("orderReports".into(), Value::Array(reports));
        }
    }
    Ok(out)
}

/// A list's fields, its status as of the command of `outcome`.
/// `orderListId` or the list client id under `client_name`.
fn list_ref(p: &Params, client_name: &str) -> Result<ListRef, BinanceError> {
    match (p.integer("orderListId")?, p.get(client_name)) {
        (Some(id), _) => Ok(ListRef::Id(ListId(id))),
        (None, Some(client)) => Ok(ListRef::Client(client_order_id(client_name, client)?)),
        (None, None) => Err(BinanceError::one_of("orderListId", client_name)),
    }
}

fn unknown_list() -> BinanceError {
    BinanceError::bad_request(-2011, "Unknown order list sent.")
}

/// `DELETE /api/v3/orderList`, `orderList.cancel`.
pub async fn cancel(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    p: &Params,
) -> Result<Value, BinanceError> {
    p.only(&["symbol", "orderListId", "listClientOrderId", "newClientOrderId"])?;
    let id = {
        let views = read_views(state)?;
        let view = market(&views, p.required("symbol")?)?;
        let list = list_ref(p, "listClientOrderId")?;
        let open = views.user(user).and_then(|u| {
            u.lists.values().find(|l| match list {
                ListRef::Id(id) => l.list == id,
                ListRef::Client(client) => l.client_list_id == Some(client),
            })
        });
        match open {
            Some(list) if list.market == view.market.id => list.list,
            _ => return Err(unknown_list()),
        }
    };
    cancelled_list(state, producer, user, Command::CancelOrderList { user, list: ListRef::Id(id) }, id).await
}

/// `GET /api/v3/orderList`, `orderList.status`: an open or recently
/// closed list.
pub fn status(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["orderListId", "origClientOrderId"])?;
    let list = list_ref(p, "origClientOrderId")?;
    let views = read_views(state)?;
    let found = views
        .find_list(user, list)
        .ok_or_else(|| BinanceError::bad_request(-2013, "Order list does not exist."))?;
    Ok(list_json(&views, found, found.done_ns.is_some()))
}

/// `GET /api/v3/openOrderList`, `openOrderLists.status`.
pub fn open(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&[])?;
    let views = read_views(state)?;
    let Some(account) = views.user(user) else { return Ok(json!([])) };
    Ok(Value::Array(account.lists.values().map(|l| list_json(&views, l, false)).collect()))
}

/// `GET /api/v3/allOrderList`, `allOrderLists`: open and recently closed
/// lists by id (`fromId`, or `startTime`/`endTime` on their creation).
pub fn all(state: &AppState, user: UserId, p: &Params) -> Result<Value, BinanceError> {
    p.only(&["fromId", "startTime", "endTime", "limit"])?;
    let limit = p.bounded("limit", 1, ALL_LISTS_LIMIT_MAX)?.unwrap_or(ALL_LISTS_LIMIT_DEFAULT);
    let range = TradeRange::read(p)?;
    let views = read_views(state)?;
    let Some(account) = views.user(user) else { return Ok(json!([])) };
    let mut lists: Vec<&ListView> = account.lists.values().chain(account.closed_lists.iter()).collect();
    lists.sort_by_key(|l| l.list);
    let in_range: Vec<Value> = lists
        .into_iter()
        .filter(|l| range.contains(l.list.0, l.created_ns / 1_000_000))
        .map(|l| list_json(&views, l, l.done_ns.is_some()))
        .collect();
    Ok(Value::Array(range.window(in_range, limit as usize)))
}
