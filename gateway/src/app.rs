//! The exchange's operations as typed functions, over the pipeline and the
//! read views: run a command, place, cancel, amend, cancel all, find an
//! order. The native API, the Binance API and the WebSocket order entry
//! are encodings over these: each turns its request into a typed call and
//! builds its answer from what the call returns. Nothing here knows a
//! route, a request or JSON.

use std::cell::Cell;
use std::future::Future;
use std::sync::Mutex;

use engine_core::{
    Amend, ClientOrderId, Command, Contingency, DoneReason, EventKind, ListId, ListRef, Lots, MarketId,
    NewOrder, NewOrderList, OrderId, OrderKind, OrderRef, RejectReason, SelfTradePrevention, Side,
    TimeInForce, TradeId, Trigger, TriggerKind, UserId,
};
use hyper::StatusCode;
use persistence::scale::Amount;
use replication::ReplayMark;

use crate::amounts;
use crate::clock::unix_ns;
use crate::cluster::ProposeError;
use crate::error::ApiError;
use crate::metrics::Stage;
use crate::outcome::Outcome;
use crate::pipeline::{self, PipelineFailure, Publisher};
use crate::state::AppState;
use crate::views::{FillView, OrderStatus, OrderView, Views};

/// Why an operation did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The engine refused the command; `message` says why, with amounts in
    /// decimals. Each API answers it in its own codes.
    Rejected { reason: RejectReason, message: String },
    /// The command got no answer (the ring was full, the journal failed,
    /// the engine did not answer in time, the exchange is stopping), or
    /// what it did could not be read.
    Failed(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal::Failed(error)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Rejected { reason, message } => ApiError::rejected(reason, message),
            Refusal::Failed(error) => error,
        }
    }
}

tokio::task_local! {
    /// The replay mark of the signed request being answered, until the
    /// command executing it takes it (see [`carry_replay_mark`]).
    static REPLAY_MARK: Cell<Option<ReplayMark>>;
}

/// Answers one client request (`answering`) so that the replay mark its
/// signature check yields reaches the command that executes it: the one
/// place where a request's signature and its command meet, without every
/// operation in between passing it along. Each HTTP request and each
/// WebSocket API request runs in its own.
pub async fn handling_request<F: Future>(answering: F) -> F::Output {
    REPLAY_MARK.scope(Cell::new(None), answering).await
}

/// Hands the replay mark of the request being answered (see
/// [`handling_request`]) to the first command it executes. On a cluster
/// node that command carries it into the log, and every node refuses the
/// same signed bytes from then on: a request is executed once, whichever
/// node leads when it is sent again.
pub fn carry_replay_mark(mark: Option<ReplayMark>) {
    let carried = REPLAY_MARK.try_with(|slot| slot.set(mark));
    debug_assert!(carried.is_ok() || mark.is_none(), "a signed change answered outside handling_request");
}

/// The replay mark of the request being answered, once.
fn take_replay_mark() -> Option<ReplayMark> {
    REPLAY_MARK.try_with(Cell::take).ok().flatten()
}

/// Publishes a command and waits for its outcome.
pub async fn execute(
    state: &AppState,
    producer: &Mutex<Publisher>,
    command: Command,
) -> Result<Outcome, ApiError> {
    if state.health.journal_failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(journal_unavailable());
    }
    let started = std::time::Instant::now();
    let (id, reply) = state.pending.register();
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    if let Some(cluster) = &state.cluster {
        // The command goes through the cluster's log; its outcome comes
        // back through the ring like any other once it is committed.
        let proposed =
            tokio::time::timeout_at(deadline, cluster.propose(id, command, take_replay_mark())).await;
        let refused = match proposed {
            Ok(Ok(())) => None,
            Ok(Err(ProposeError::NotLeader { leader })) => Some(ApiError::not_leader(leader)),
            Ok(Err(ProposeError::Unconfirmed(why))) => Some(ApiError::leader_unconfirmed(&why)),
            Ok(Err(ProposeError::Unknown(why))) => Some(outcome_unknown(&why)),
            Err(_) => Some(outcome_unknown("no majority of the cluster answered in time")),
        };
        if let Some(error) = refused {
            state.pending.forget(id);
            return Err(error);
        }
    } else {
        let published = match producer.lock() {
            Ok(mut producer) => pipeline::submit(&mut producer, id, command).is_ok(),
            Err(_) => false,
        };
        if !published {
            state.pending.forget(id);
            return Err(ApiError::busy());
        }
    }
    let answer = tokio::time::timeout_at(deadline, reply).await;
    state.health.metrics.record(Stage::Reply, started.elapsed());
    match answer {
        Ok(Ok(Ok(outcome))) => Ok(outcome),
        Ok(Ok(Err(PipelineFailure::JournalUnavailable))) => Err(journal_unavailable()),
        Ok(Err(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the exchange is stopping"))
        }
        Err(_) => {
            state.pending.forget(id);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "no answer from the matching engine in time; the command may still be applied: query it",
            ))
        }
    }
}

/// A cluster node proposed the command but cannot tell whether it
/// committed (the leader changed under it, or no majority answered).
fn outcome_unknown(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!("the cluster did not confirm the command ({why}); it may still be applied: query it"),
    )
}

fn journal_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "journal_unavailable",
        "the exchange cannot journal commands (disk full or failing) and accepts none until restarted",
    )
}

/// Runs `command` through the pipeline; the engine's rejection of it is a
/// [`Refusal::Rejected`].
pub async fn run(
    state: &AppState,
    producer: &Mutex<Publisher>,
    command: Command,
) -> Result<Outcome, Refusal> {
    let outcome = execute(state, producer, command).await?;
    let rejected = outcome.events.iter().find_map(|event| match event.kind {
        EventKind::Rejected { reason, .. } => Some(reason),
        _ => None,
    });
    match rejected {
        Some(reason) => Err(Refusal::Rejected { reason, message: describe(&*state.views()?, reason) }),
        None => Ok(outcome),
    }
}

/// The engine's reason for a rejection, with amounts in decimals.
pub fn describe(views: &Views, reason: RejectReason) -> String {
    match reason {
        RejectReason::InsufficientFunds { asset, needed, available } => {
            match views.assets.get(asset.0 as usize) {
                Some(a) => format!(
                    "insufficient {} balance: {} needed, {} available",
                    a.symbol,
                    amounts::units_to_string(needed, a.decimals),
                    amounts::units_to_string(available, a.decimals)
                ),
                None => reason.to_string(),
            }
        }
        _ => reason.to_string(),
    }
}

/// An order as the command that placed it left it, and the fills that
/// command made: later changes reach the client through the streams and
/// the queries (see [`crate::outcome`]).
pub struct Placed {
    pub order: OrderView,
    pub fills: Vec<FillView>,
}

/// Places `order`.
pub async fn place(
    state: &AppState,
    producer: &Mutex<Publisher>,
    order: NewOrder,
) -> Result<Placed, Refusal> {
    let user = order.user;
    let mut outcome = run(state, producer, Command::PlaceOrder(order)).await?;
    let id = outcome
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::OrderAccepted { order, user: owner, .. } if owner == user => Some(order),
            _ => None,
        })
        .ok_or_else(|| internal("no order in the outcome"))?;
    let fills = outcome.fills(&*state.views()?, id);
    let order = take_order(&mut outcome, id).ok_or_else(|| internal("the placed order was not captured"))?;
    Ok(Placed { order, fills })
}

/// Cancels `user`'s order `order`; the order as the cancel left it.
pub async fn cancel(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    order: OrderRef,
) -> Result<OrderView, Refusal> {
    change(state, producer, Command::CancelOrder { user, order }).await
}

/// Amends an order; the order as the amend left it (a later command of
/// the same batch may have changed it since).
pub async fn amend(
    state: &AppState,
    producer: &Mutex<Publisher>,
    amend: Amend,
) -> Result<OrderView, Refusal> {
    change(state, producer, Command::Amend(amend)).await
}

async fn change(
    state: &AppState,
    producer: &Mutex<Publisher>,
    command: Command,
) -> Result<OrderView, Refusal> {
    let named = match command {
        Command::CancelOrder { user, order } | Command::Amend(Amend { user, order, .. }) => {
            Some((user, order))
        }
        _ => None,
    };
    let mut outcome = run(state, producer, command).await?;
    let changed: Vec<OrderId> = outcome
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderDone { order, .. } | EventKind::OrderAmended { order, .. } => Some(order),
            _ => None,
        })
        .collect();
    // Cancelling one order of a list closes the other too, maybe first:
    // the answer is about the order the request named.
    let id = changed
        .iter()
        .copied()
        .find(|id| match (named, outcome.order(*id)) {
            (Some((_, OrderRef::Id(named))), _) => *id == named,
            (Some((user, OrderRef::Client(client))), Some(order)) => {
                order.user == user && order.client_order_id == Some(client)
            }
            _ => false,
        })
        .or(changed.first().copied())
        .ok_or_else(|| internal("no order"))?;
    take_order(&mut outcome, id).ok_or_else(|| internal("the changed order was not captured").into())
}

/// An order list as the command that placed or cancelled it left it.
pub struct ListOutcome {
    pub list: ListId,
    pub market: MarketId,
    /// Known when the command placed the list (a cancel's events do not
    /// name it).
    pub contingency: Option<Contingency>,
    pub client_list_id: Option<ClientOrderId>,
    /// The list ended within the command (`OrderListDone`).
    pub done: bool,
    pub seq: u64,
    /// The list's orders as the command left them, with the fills it made.
    pub orders: Vec<(OrderView, Vec<FillView>)>,
    /// How each order the command closed ended.
    pub ends: Vec<(OrderId, DoneReason)>,
    /// An OTO's pending order that the command left pending.
    pub pending: Option<OrderId>,
}

impl ListOutcome {
    pub fn done_reason(&self, order: OrderId) -> Option<DoneReason> {
        self.ends.iter().find(|(o, _)| *o == order).map(|(_, reason)| *reason)
    }
}

/// Places an OCO or OTO.
pub async fn place_list(
    state: &AppState,
    producer: &Mutex<Publisher>,
    list: NewOrderList,
) -> Result<ListOutcome, Refusal> {
    let user = list.user;
    let outcome = run(state, producer, Command::PlaceOrderList(list)).await?;
    let (id, market, contingency, orders, client_list_id) = outcome
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::OrderListAccepted {
                list,
                user: owner,
                market,
                contingency,
                orders,
                client_list_id,
                ..
            } if owner == user => Some((list, market, contingency, orders, client_list_id)),
            _ => None,
        })
        .ok_or_else(|| internal("no order list in the outcome"))?;
    list_outcome(state, outcome, id, market, Some(contingency), client_list_id, &orders)
}

/// Cancels `user`'s open order list `list`: both its open orders.
pub async fn cancel_list(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    list: ListRef,
) -> Result<ListOutcome, Refusal> {
    let outcome = run(state, producer, Command::CancelOrderList { user, list }).await?;
    let (id, market) = outcome
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::OrderListDone { list, user: owner, market } if owner == user => Some((list, market)),
            _ => None,
        })
        .ok_or_else(|| internal("no order list ended in the outcome"))?;
    let closed: Vec<OrderId> = outcome
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderDone { order, user: owner, .. } if owner == user => Some(order),
            _ => None,
        })
        .collect();
    let client_list_id = match list {
        ListRef::Client(client) => Some(client),
        ListRef::Id(_) => None,
    };
    list_outcome(state, outcome, id, market, None, client_list_id, &closed)
}

fn list_outcome(
    state: &AppState,
    mut outcome: Outcome,
    list: ListId,
    market: MarketId,
    contingency: Option<Contingency>,
    client_list_id: Option<ClientOrderId>,
    orders: &[OrderId],
) -> Result<ListOutcome, Refusal> {
    let mut done = false;
    let mut ends = Vec::new();
    let mut seq = 0;
    let mut pending = (contingency == Some(Contingency::Oto)).then(|| orders.get(1).copied()).flatten();
    for event in &outcome.events {
        seq = event.seq;
        match event.kind {
            EventKind::OrderListDone { list: ended, .. } if ended == list => done = true,
            EventKind::OrderDone { order, reason, .. } if orders.contains(&order) => {
                ends.push((order, reason));
                pending = pending.filter(|p| *p != order);
            }
            EventKind::OrderReleased { order, .. } => pending = pending.filter(|p| *p != order),
            _ => {}
        }
    }
    let views = state.views()?;
    let mut taken = Vec::with_capacity(orders.len());
    for id in orders {
        let fills = outcome.fills(&views, *id);
        let order =
            take_order(&mut outcome, *id).ok_or_else(|| internal("an order of the list was not captured"))?;
        taken.push((order, fills));
    }
    Ok(ListOutcome { list, market, contingency, client_list_id, done, seq, orders: taken, ends, pending })
}

/// Cancels `user`'s open orders (in `market`, or in every market); each
/// order as the cancel closed it, in the order they were closed.
pub async fn cancel_all(
    state: &AppState,
    producer: &Mutex<Publisher>,
    user: UserId,
    market: Option<MarketId>,
) -> Result<Vec<OrderView>, Refusal> {
    let mut outcome = run(state, producer, Command::CancelAll { user, market }).await?;
    let closed: Vec<OrderId> = outcome
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderDone { order, .. } => Some(order),
            _ => None,
        })
        .collect();
    Ok(closed.into_iter().filter_map(|id| take_order(&mut outcome, id)).collect())
}

/// `order` out of the outcome, without copying it.
fn take_order(outcome: &mut Outcome, order: OrderId) -> Option<OrderView> {
    let at = outcome.orders.iter().position(|o| o.order == order)?;
    Some(outcome.orders.swap_remove(at))
}

/// `user`'s order `order` (in `market`, when named): from the views, or,
/// for an order past their retention, from the database when there is
/// one. `None` when neither has it.
pub async fn find_order(
    state: &AppState,
    user: UserId,
    order: OrderRef,
    market: Option<MarketId>,
) -> Result<Option<OrderView>, ApiError> {
    let in_market = |o: &OrderView| market.is_none_or(|m| o.market == m);
    if let Some(found) = state.views()?.find_order_ref(user, order).filter(|o| in_market(o)) {
        return Ok(Some(found.clone()));
    }
    Ok(stored_order(state, user, order).await?.filter(in_market))
}

fn internal(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// The history database failed a query: logged, and answered 503.
pub fn database_error(error: persistence::StoreError) -> ApiError {
    tracing::warn!("history query failed: {error}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the history database is not answering; retry later",
    )
}

/// Fills of an order read back from the database, at most.
const STORED_FILLS_MAX: u32 = 100;

/// One of `user`'s orders from the database, for an order past the views'
/// retention: `Ok(None)` without a database or when it has no such order.
/// Its fills come from the trades table.
async fn stored_order(
    state: &AppState,
    user: UserId,
    order: OrderRef,
) -> Result<Option<OrderView>, ApiError> {
    let Some((_, history)) = &state.database else { return Ok(None) };
    let (id, client) = match order {
        OrderRef::Id(id) => (Some(i64::try_from(id.0).unwrap_or(i64::MAX)), None),
        OrderRef::Client(client) => (None, Some(client.to_string())),
    };
    let user_id = user.0 as i32;
    let Some(record) = history.order(user_id, id, client.as_deref()).await.map_err(database_error)? else {
        return Ok(None);
    };
    let trades = history.order_trades(&record, STORED_FILLS_MAX).await.map_err(database_error)?;
    let views = state.views()?;
    order_view(&views, &record, &trades).map(Some)
}

/// An order as the `orders` table and its trades describe it, in the
/// views' terms (ticks, lots, units).
fn order_view(
    views: &Views,
    record: &persistence::OrderRecord,
    trades: &[persistence::TradeRow],
) -> Result<OrderView, ApiError> {
    let corrupt = |what: &str| {
        tracing::error!("history: order {} has {what} the exchange cannot read", record.order_id);
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "a stored order cannot be read")
    };
    let market = views.markets.get(record.market_id as usize).ok_or_else(|| corrupt("an unknown market"))?;
    let scale = market.scale;
    let lots = |amount: Amount| scale.to_lots("quantity", amount.0).map_err(|_| corrupt("a quantity"));
    let quote_units = |amount: Amount| {
        amounts::to_units("quote", amount.0, scale.quote_decimals).map_err(|_| corrupt("a quote amount"))
    };
    let price =
        record.price.map(|p| scale.to_ticks("price", p.0).map_err(|_| corrupt("a price"))).transpose()?;
    let side = if record.side == "buy" { Side::Buy } else { Side::Sell };
    let remaining = lots(record.remaining_quantity)?;
    let filled = lots(record.executed_quantity)?;
    let quantity = record.quantity.map(lots).transpose()?.unwrap_or(Lots(0));
    let tif = match record.time_in_force.as_deref() {
        Some("IOC") => TimeInForce::Ioc,
        Some("FOK") => TimeInForce::Fok,
        Some("POST_ONLY") => TimeInForce::PostOnly,
        _ => TimeInForce::Gtc,
    };
    let visible = record.visible_quantity.map(lots).transpose()?;
    let trigger = match record.trigger_kind.as_deref() {
        None => None,
        Some(kind) => Some(Trigger {
            kind: if kind == "take_profit" { TriggerKind::TakeProfit } else { TriggerKind::StopLoss },
            stop: record
                .stop_price
                .map(|p| scale.to_ticks("stop_price", p.0).map_err(|_| corrupt("a stop price")))
                .transpose()?,
            trailing_bips: record
                .trailing_bips
                .map_or(Ok(0), u16::try_from)
                .map_err(|_| corrupt("a trailing delta"))?,
        }),
    };
    let kind = match (record.order_type.as_str(), price) {
        ("limit", Some(price)) => Some(OrderKind::Limit { price, qty: quantity, tif }),
        ("iceberg", Some(price)) => {
            visible.map(|visible| OrderKind::Iceberg { price, qty: quantity, visible, tif })
        }
        ("stop_limit", Some(price)) => trigger.map(|trigger| OrderKind::StopLimit {
            trigger,
            price,
            qty: quantity,
            tif,
            visible: visible.unwrap_or(Lots(0)),
        }),
        ("stop_market", _) => trigger.map(|trigger| OrderKind::StopMarket { trigger, qty: quantity }),
        ("market", _) => Some(OrderKind::Market { qty: quantity }),
        ("market_by_quote", _) => record
            .quote_amount
            .map(quote_units)
            .transpose()?
            .map(|amount| OrderKind::MarketByQuote { amount }),
        _ => None,
    };
    let stp = match record.self_trade_prevention.as_str() {
        "cancel_maker" => Some(SelfTradePrevention::CancelMaker),
        "cancel_both" => Some(SelfTradePrevention::CancelBoth),
        "allow" => Some(SelfTradePrevention::Allow),
        "cancel_taker" => Some(SelfTradePrevention::CancelTaker),
        _ => None,
    };
    let status = match record.status.as_str() {
        "new" => OrderStatus::New,
        "partially_filled" => OrderStatus::PartiallyFilled,
        "filled" => OrderStatus::Filled,
        "cancelled" => OrderStatus::Cancelled,
        "expired_self_trade" => OrderStatus::ExpiredSelfTrade,
        "expired_insufficient_funds" => OrderStatus::ExpiredFunds,
        "expired_contingent" => OrderStatus::ExpiredContingent,
        "rejected" => OrderStatus::Rejected,
        _ => OrderStatus::Expired,
    };
    let mut fills = Vec::with_capacity(trades.len());
    for trade in trades {
        let maker = trade.maker_order_id == record.order_id && trade.maker_user_id == record.user_id;
        let (fee, fee_asset) = if maker {
            (trade.maker_fee, trade.maker_fee_asset_id)
        } else {
            (trade.taker_fee, trade.taker_fee_asset_id)
        };
        let decimals = views.assets.get(fee_asset as usize).map_or(0, |a| a.decimals);
        fills.push(FillView {
            trade: TradeId(trade.trade_id as u64),
            price: scale.to_ticks("price", trade.price.0).map_err(|_| corrupt("a trade price"))?,
            qty: lots(trade.quantity)?,
            fee: amounts::to_units("fee", fee.0, decimals).map_err(|_| corrupt("a fee"))?,
            fee_asset: engine_core::AssetId(fee_asset as u32),
            maker,
            timestamp_ns: unix_ns(trade.executed_at),
        });
    }
    // Where it stands, from its status and trigger: an OTO's pending
    // order, a stop that has not fired (while open), or working since it
    // fired or was placed.
    let (stage, working_ns) = if record.status == persistence::PENDING_STATUS {
        (crate::views::OrderStage::Pending, None)
    } else if record.trigger_kind.is_some() && record.triggered_at.is_none() {
        (crate::views::OrderStage::Waiting, None)
    } else {
        (crate::views::OrderStage::Working, Some(unix_ns(record.triggered_at.unwrap_or(record.created_at))))
    };
    Ok(OrderView {
        order: OrderId(record.order_id as u64),
        user: UserId(record.user_id as u32),
        market: MarketId(record.market_id as u32),
        side,
        kind,
        price,
        remaining,
        filled,
        quantity,
        client_order_id: record.client_order_id.as_deref().and_then(|c| ClientOrderId::new(c).ok()),
        stp,
        status,
        created_ns: unix_ns(record.created_at),
        updated_seq: record.updated_seq as u64,
        updated_ns: unix_ns(record.updated_at),
        quote_filled: u128::from(quote_units(record.executed_quote)?.0),
        fills,
        list: record.list_id.map(|id| ListId(id as u64)),
        stage,
        working_ns,
        trailing_ns: None,
    })
}
