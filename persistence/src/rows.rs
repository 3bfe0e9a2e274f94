//! From events to rows: what one transaction writes.
//!
//! [`RowSet::add`] reads events in sequence order and collects the rows of
//! every table. It is pure: the writer decides when and how they reach the
//! database. Reference data ([`Catalog`]) and the last balance of every
//! account (for the ledger's changes) are the state it carries between
//! batches; both are reloaded from the database after any failure, so that
//! they always match the tables as of the writer's cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::{
    AssetId, Contingency, DoneReason, Event, EventKind, ListId, Lots, MarketId, MarketRules, MarketStatus,
    OrderId, OrderKind, SelfTradePrevention, Side, Ticks, TimeInForce, TradeId, TriggerKind, Units, UserId,
};

use crate::scale::{self, Amount, MarketScale};

/// The sequence number and time the matcher stamped on one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub timestamp_ns: u64,
}

/// The events of consecutive commands and the stamp of each command, in
/// sequence order. Every command has at least one event.
#[derive(Clone, Debug)]
pub struct Batch {
    pub events: Arc<[Event]>,
    pub stamps: Arc<[Stamp]>,
}

impl Batch {
    pub fn first_seq(&self) -> Option<u64> {
        self.stamps.first().map(|s| s.seq)
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.stamps.last().map(|s| s.seq)
    }
}

/// A matcher timestamp as the database keeps it: `timestamptz` holds
/// microseconds, so rows carry microseconds too and compare equal to what
/// is read back.
pub fn time_of(timestamp_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(timestamp_ns / 1_000)
}

/// Assets and markets as far as the events have told.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// By asset id: (symbol, decimals).
    pub assets: Vec<(String, u8)>,
    /// By market id.
    pub markets: Vec<CatalogMarket>,
}

#[derive(Clone, Debug)]
pub struct CatalogMarket {
    pub name: String,
    pub base: AssetId,
    pub quote: AssetId,
    pub scale: MarketScale,
}

/// What a row set could not make sense of: the events and the database
/// disagree, and writing on would corrupt history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Catalog {
    pub fn decimals(&self, asset: AssetId) -> Result<u8, RowError> {
        self.assets
            .get(asset.0 as usize)
            .map(|(_, decimals)| *decimals)
            .ok_or_else(|| RowError(format!("event names asset {asset}, which the history does not have")))
    }

    pub fn market(&self, market: MarketId) -> Result<&CatalogMarket, RowError> {
        self.markets
            .get(market.0 as usize)
            .ok_or_else(|| RowError(format!("event names market {market}, which the history does not have")))
    }

    pub(crate) fn add_market(
        &mut self,
        market: MarketId,
        rules: &MarketRules,
    ) -> Result<&CatalogMarket, RowError> {
        if market.0 as usize != self.markets.len() {
            return Err(RowError(format!("market {market} created out of order")));
        }
        let (base_symbol, base_decimals) =
            self.assets.get(rules.base.0 as usize).cloned().unwrap_or_default();
        let (quote_symbol, quote_decimals) =
            self.assets.get(rules.quote.0 as usize).cloned().unwrap_or_default();
        if base_symbol.is_empty() || quote_symbol.is_empty() {
            return Err(RowError(format!("market {market} trades an asset the history does not have")));
        }
        self.markets.push(CatalogMarket {
            name: format!("{base_symbol}-{quote_symbol}"),
            base: rules.base,
            quote: rules.quote,
            scale: MarketScale::for_market(rules, base_decimals, quote_decimals),
        });
        Ok(&self.markets[market.0 as usize])
    }
}

/// Why a balance changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Deposit,
    Withdrawal,
    /// Placing an order: its lock, and the taker's side of its trades.
    Order(OrderId),
    /// The maker's side of one trade.
    Trade(OrderId, TradeId),
    Cancel(OrderId),
    Amend(OrderId),
    /// The balance a database seeded from a snapshot image opens with.
    Opening,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Deposit => "deposit",
            Cause::Withdrawal => "withdrawal",
            Cause::Order(_) => "order",
            Cause::Trade(..) => "trade",
            Cause::Cancel(_) => "cancel",
            Cause::Amend(_) => "amend",
            Cause::Opening => "opening",
        }
    }

    pub fn order(self) -> Option<OrderId> {
        match self {
            Cause::Deposit | Cause::Withdrawal | Cause::Opening => None,
            Cause::Order(order) | Cause::Trade(order, _) | Cause::Cancel(order) | Cause::Amend(order) => {
                Some(order)
            }
        }
    }

    pub fn trade(self) -> Option<TradeId> {
        match self {
            Cause::Trade(_, trade) => Some(trade),
            _ => None,
        }
    }
}

/// Reference data changes, applied in order (they are rare).
#[derive(Clone, Debug)]
pub enum Reference {
    Asset {
        asset: AssetId,
        symbol: String,
        decimals: u8,
        seq: u64,
        at: SystemTime,
    },
    Market {
        market: MarketId,
        name: String,
        rules: MarketRules,
        scale: MarketScale,
        status: MarketStatus,
        seq: u64,
        at: SystemTime,
    },
    MarketStatus {
        market: MarketId,
        status: MarketStatus,
        seq: u64,
    },
    MarketFees {
        market: MarketId,
        maker_fee_ppm: u32,
        taker_fee_ppm: u32,
        seq: u64,
    },
    ApiKey {
        user: UserId,
        key: String,
        seq: u64,
        at: SystemTime,
    },
    ApiKeyRevoked {
        user: UserId,
        key: String,
        seq: u64,
        at: SystemTime,
    },
}

pub fn status_name(status: MarketStatus) -> &'static str {
    match status {
        MarketStatus::Open => "open",
        MarketStatus::CancelOnly => "cancel_only",
        MarketStatus::Halted => "halted",
    }
}

pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

pub fn tif_name(tif: TimeInForce) -> &'static str {
    match tif {
        TimeInForce::Gtc => "GTC",
        TimeInForce::Ioc => "IOC",
        TimeInForce::Fok => "FOK",
        TimeInForce::PostOnly => "POST_ONLY",
    }
}

pub fn stp_name(stp: SelfTradePrevention) -> &'static str {
    match stp {
        SelfTradePrevention::CancelTaker => "cancel_taker",
        SelfTradePrevention::CancelMaker => "cancel_maker",
        SelfTradePrevention::CancelBoth => "cancel_both",
        SelfTradePrevention::Allow => "allow",
    }
}

pub fn trigger_kind_name(kind: TriggerKind) -> &'static str {
    match kind {
        TriggerKind::StopLoss => "stop_loss",
        TriggerKind::TakeProfit => "take_profit",
    }
}

pub fn contingency_name(contingency: Contingency) -> &'static str {
    match contingency {
        Contingency::Oco => "oco",
        Contingency::Oto => "oto",
    }
}

/// An OTO's pending order until it is released: the status the API and
/// the `orders` table give it.
pub const PENDING_STATUS: &str = "pending_new";

/// The order status names, as the API and the `orders` table spell them
/// (docs/api.md lists them).
pub fn done_status(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Filled => "filled",
        DoneReason::Cancelled => "cancelled",
        DoneReason::Expired => "expired",
        DoneReason::SelfTrade => "expired_self_trade",
        DoneReason::FundsExhausted => "expired_insufficient_funds",
        DoneReason::Contingent => "expired_contingent",
        DoneReason::Refused(_) => "rejected",
    }
}

/// An order first seen in this row set: every column of its row.
#[derive(Clone, Debug)]
pub struct OrderOpening {
    pub side: Side,
    pub kind: OrderKind,
    pub client_order_id: Option<String>,
    pub stp: SelfTradePrevention,
    pub created_seq: u64,
    pub created_at: SystemTime,
    /// The order list it was placed in.
    pub list: Option<ListId>,
}

/// What happened to one order within the row set.
#[derive(Clone, Debug)]
pub struct OrderChange {
    pub order: OrderId,
    pub user: UserId,
    pub market: MarketId,
    /// Set when the order was accepted within this row set.
    pub opening: Option<OrderOpening>,
    /// The limit price now (set at acceptance and by amends).
    pub price: Option<Ticks>,
    /// For an amend: lots executed within this row set up to the amend
    /// plus the new open quantity (the new total is what was executed
    /// before the row set plus this).
    pub amended_quantity: Option<Lots>,
    /// `None`: unchanged.
    pub status: Option<&'static str>,
    pub remaining: Option<Lots>,
    pub executed_lots: u64,
    pub executed_quote_units: u128,
    pub updated_seq: u64,
    pub updated_at: SystemTime,
    pub closed_at: Option<SystemTime>,
    /// A stop order fired: the trade price that fired it, and when.
    pub triggered: Option<(Ticks, SystemTime)>,
    /// Why an OTO's pending order could not be placed.
    pub reject_reason: Option<String>,
}

/// What happened to one order list within the row set.
#[derive(Clone, Debug)]
pub struct ListChange {
    pub list: ListId,
    /// Set when the list was accepted within this row set.
    pub opening: Option<ListOpening>,
    pub done: bool,
    pub updated_seq: u64,
    pub updated_at: SystemTime,
}

/// A list first seen in this row set: the columns of its row.
#[derive(Clone, Debug)]
pub struct ListOpening {
    pub user: UserId,
    pub market: MarketId,
    pub contingency: Contingency,
    pub client_list_id: Option<String>,
    pub orders: [OrderId; 2],
    pub created_seq: u64,
    pub created_at: SystemTime,
}

/// A row of `trades`, in the columns' own types.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeRow {
    pub trade_id: i64,
    pub seq: i64,
    pub market_id: i32,
    pub price: Amount,
    pub quantity: Amount,
    pub quote_quantity: Amount,
    pub taker_side: &'static str,
    pub maker_order_id: i64,
    pub maker_user_id: i32,
    pub taker_order_id: i64,
    pub taker_user_id: i32,
    pub maker_fee: Amount,
    pub maker_fee_asset_id: i32,
    pub taker_fee: Amount,
    pub taker_fee_asset_id: i32,
    pub executed_at: SystemTime,
}

/// A row of `ledger`, in the columns' own types.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerRow {
    pub seq: i64,
    pub event_index: i32,
    pub user_id: i32,
    pub asset_id: i32,
    pub available: Amount,
    pub locked: Amount,
    pub available_change: Amount,
    pub locked_change: Amount,
    pub cause: &'static str,
    pub order_id: Option<i64>,
    pub trade_id: Option<i64>,
    pub recorded_at: SystemTime,
}

/// An id or sequence number as PostgreSQL's `bigint`.
pub fn int8(value: u64) -> Result<i64, RowError> {
    i64::try_from(value).map_err(|_| RowError(format!("{value} does not fit a bigint column")))
}

/// An engine id (`u32`) as PostgreSQL's `integer` (ids are dense from 0;
/// past 2^31 the column would need widening).
pub fn int4(value: u32) -> Result<i32, RowError> {
    i32::try_from(value).map_err(|_| RowError(format!("{value} does not fit an integer column")))
}

#[derive(Clone, Copy, Debug)]
pub struct BalanceRow {
    pub available: Units,
    pub locked: Units,
    pub decimals: u8,
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub struct CandleRow {
    pub market: MarketId,
    pub minute: u64,
    pub open: Ticks,
    pub high: Ticks,
    pub low: Ticks,
    pub close: Ticks,
    pub volume_units: u128,
    pub quote_units: u128,
    /// What takers bought: base and quote units.
    pub taker_buy_units: u128,
    pub taker_buy_quote_units: u128,
    pub trades: u64,
    pub first_trade: TradeId,
    pub last_trade: TradeId,
}

/// The last balance of every account, as the ledger has it.
pub type Balances = HashMap<(UserId, AssetId), (Units, Units)>;

/// Everything one transaction writes.
#[derive(Debug, Default)]
pub struct RowSet {
    /// The last command whose events are in the set (the new cursor).
    pub last: Option<Stamp>,
    pub events: usize,
    pub reference: Vec<Reference>,
    pub users: Vec<(UserId, u64, SystemTime)>,
    pub orders: Vec<OrderChange>,
    order_index: HashMap<OrderId, usize>,
    pub lists: Vec<ListChange>,
    pub trades: Vec<TradeRow>,
    pub ledger: Vec<LedgerRow>,
    pub balances: HashMap<(UserId, AssetId), BalanceRow>,
    pub candles: Vec<CandleRow>,
    candle_index: HashMap<(MarketId, u64), usize>,
    command: CommandContext,
}

/// What the events of the current command said so far, for ledger causes.
#[derive(Debug, Default)]
struct CommandContext {
    seq: u64,
    at: Option<SystemTime>,
    event_index: u32,
    cause: Option<Cause>,
    /// A change of this user's balances the next events report: (user,
    /// cause, how many balance events it explains).
    pending: Option<(UserId, Cause, u8)>,
    /// The order list the command placed: its orders' `OrderAccepted`
    /// events follow its own.
    list: Option<(ListId, Contingency, [OrderId; 2])>,
}

const NANOS_PER_MINUTE: u64 = 60_000_000_000;

impl RowSet {
    pub fn new() -> RowSet {
        RowSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Adds `events` (in order, all after what the set holds) with the
    /// stamps of their commands. Updates `catalog` and `balances`.
    pub fn add(
        &mut self,
        events: &[Event],
        stamps: &[Stamp],
        catalog: &mut Catalog,
        balances: &mut Balances,
    ) -> Result<(), RowError> {
        let mut stamp_at = 0usize;
        for event in events {
            if event.seq != self.command.seq {
                while stamps.get(stamp_at).is_some_and(|s| s.seq < event.seq) {
                    stamp_at += 1;
                }
                let stamp = stamps.get(stamp_at).filter(|s| s.seq == event.seq).ok_or_else(|| {
                    RowError(format!("no stamp for the command with sequence {}", event.seq))
                })?;
                if self.last.is_some_and(|last| last.seq >= event.seq) {
                    return Err(RowError(format!("event of sequence {} arrived out of order", event.seq)));
                }
                self.command = CommandContext {
                    seq: event.seq,
                    at: Some(time_of(stamp.timestamp_ns)),
                    ..CommandContext::default()
                };
                self.last = Some(*stamp);
            }
            self.add_event(event, catalog, balances)?;
            self.command.event_index += 1;
            self.events += 1;
        }
        Ok(())
    }

    fn add_event(
        &mut self,
        event: &Event,
        catalog: &mut Catalog,
        balances: &mut Balances,
    ) -> Result<(), RowError> {
        let seq = event.seq;
        let at = self.command.at.unwrap_or(UNIX_EPOCH);
        let timestamp_ns = self.last.map_or(0, |s| s.timestamp_ns);
        match event.kind {
            EventKind::AssetCreated { asset, symbol, decimals } => {
                if asset.0 as usize != catalog.assets.len() {
                    return Err(RowError(format!("asset {asset} created out of order")));
                }
                catalog.assets.push((symbol.to_string(), decimals));
                self.reference.push(Reference::Asset {
                    asset,
                    symbol: symbol.to_string(),
                    decimals,
                    seq,
                    at,
                });
            }
            EventKind::MarketCreated { market, rules, status } => {
                let entry = catalog.add_market(market, &rules)?;
                self.reference.push(Reference::Market {
                    market,
                    name: entry.name.clone(),
                    rules,
                    scale: entry.scale,
                    status,
                    seq,
                    at,
                });
            }
            EventKind::MarketStatusChanged { market, status } => {
                self.reference.push(Reference::MarketStatus { market, status, seq });
            }
            EventKind::MarketFeesChanged { market, maker_fee_ppm, taker_fee_ppm } => {
                self.reference.push(Reference::MarketFees { market, maker_fee_ppm, taker_fee_ppm, seq });
            }
            EventKind::UserCreated { user } => self.users.push((user, seq, at)),
            EventKind::ApiKeyCreated { user, key } => {
                self.reference.push(Reference::ApiKey { user, key: key.to_string(), seq, at });
            }
            EventKind::ApiKeyRevoked { user, key } => {
                self.reference.push(Reference::ApiKeyRevoked { user, key: key.to_string(), seq, at });
            }
            EventKind::Deposited { .. } => self.command.cause = Some(Cause::Deposit),
            EventKind::Withdrawn { .. } => self.command.cause = Some(Cause::Withdrawal),
            EventKind::Rejected { .. }
            | EventKind::BookLevel { .. }
            | EventKind::CancelledAll { .. }
            | EventKind::LimitsChanged { .. }
            // Private to the owner, and nothing the tables keep: the high
            // or low a trailing stop tracks follows from the trades, an
            // iceberg's shown part from its quantities.
            | EventKind::TrailingStarted { .. }
            | EventKind::OrderRefilled { .. } => {}
            EventKind::OrderTriggered { order, user, market, price, .. } => {
                // The fired order enters now: its lock, fills and fees
                // follow, as a new order's would.
                self.command.cause = Some(Cause::Order(order));
                let change = self.order_mut(order, user, market, seq, at);
                change.triggered = Some((price, at));
            }
            EventKind::OrderReleased { order, user, market, .. } => {
                self.command.cause = Some(Cause::Order(order));
                let change = self.order_mut(order, user, market, seq, at);
                change.status = Some("new");
            }
            EventKind::OrderListAccepted { list, user, market, contingency, orders, client_list_id, .. } => {
                catalog.market(market)?;
                self.command.list = Some((list, contingency, orders));
                self.lists.push(ListChange {
                    list,
                    opening: Some(ListOpening {
                        user,
                        market,
                        contingency,
                        client_list_id: client_list_id.map(|c| c.to_string()),
                        orders,
                        created_seq: seq,
                        created_at: at,
                    }),
                    done: false,
                    updated_seq: seq,
                    updated_at: at,
                });
            }
            EventKind::OrderListDone { list, .. } => {
                let change = match self.lists.iter_mut().rev().find(|l| l.list == list) {
                    Some(change) => change,
                    None => {
                        self.lists.push(ListChange {
                            list,
                            opening: None,
                            done: false,
                            updated_seq: seq,
                            updated_at: at,
                        });
                        self.lists.last_mut().expect("just pushed")
                    }
                };
                change.done = true;
                change.updated_seq = seq;
                change.updated_at = at;
            }
            EventKind::OrderAccepted { order, user, market, side, kind, client_order_id, stp, .. } => {
                catalog.market(market)?;
                self.command.cause = Some(Cause::Order(order));
                let list = self.command.list.filter(|(_, _, orders)| orders.contains(&order));
                // An OTO's pending order waits for its working order.
                let pending = list.is_some_and(|(_, contingency, orders)| {
                    contingency == Contingency::Oto && orders[1] == order
                });
                let (price, remaining) = match kind {
                    OrderKind::Limit { price, qty, .. }
                    | OrderKind::Iceberg { price, qty, .. }
                    | OrderKind::StopLimit { price, qty, .. } => (Some(price), qty),
                    OrderKind::Market { qty } | OrderKind::StopMarket { qty, .. } => (None, qty),
                    OrderKind::MarketByQuote { .. } => (None, Lots(0)),
                };
                let index = self.orders.len();
                self.orders.push(OrderChange {
                    order,
                    user,
                    market,
                    opening: Some(OrderOpening {
                        side,
                        kind,
                        client_order_id: client_order_id.map(|c| c.to_string()),
                        stp,
                        created_seq: seq,
                        created_at: at,
                        list: list.map(|(list, _, _)| list),
                    }),
                    price,
                    amended_quantity: None,
                    status: Some(if pending { PENDING_STATUS } else { "new" }),
                    remaining: Some(remaining),
                    executed_lots: 0,
                    executed_quote_units: 0,
                    updated_seq: seq,
                    updated_at: at,
                    closed_at: None,
                    triggered: None,
                    reject_reason: None,
                });
                if self.order_index.insert(order, index).is_some() {
                    return Err(RowError(format!("order {order} accepted twice")));
                }
            }
            EventKind::Trade {
                trade,
                market,
                price,
                qty,
                taker_side,
                maker_order,
                maker_user,
                maker_remaining,
                taker_order,
                taker_user,
                taker_remaining,
                maker_fee,
                taker_fee,
                ..
            } => {
                let entry = catalog.market(market)?;
                let scale = entry.scale;
                let quote_units = scale.quote_units(price, qty);
                let base_units = u128::from(qty.0) * u128::from(scale.base_units_per_lot);
                // Each side pays its fee in what it receives.
                let (maker_fee_asset, taker_fee_asset) = match taker_side {
                    Side::Buy => (entry.quote, entry.base),
                    Side::Sell => (entry.base, entry.quote),
                };
                let overflow = || RowError(format!("trade {trade} does not fit a decimal"));
                self.trades.push(TradeRow {
                    trade_id: int8(trade.0)?,
                    seq: int8(seq)?,
                    market_id: int4(market.0)?,
                    price: Amount(scale.price(price).ok_or_else(overflow)?),
                    quantity: Amount(
                        scale::wide_units(base_units, scale.base_decimals).ok_or_else(overflow)?,
                    ),
                    quote_quantity: Amount(
                        scale::wide_units(quote_units, scale.quote_decimals).ok_or_else(overflow)?,
                    ),
                    taker_side: side_name(taker_side),
                    maker_order_id: int8(maker_order.0)?,
                    maker_user_id: int4(maker_user.0)?,
                    taker_order_id: int8(taker_order.0)?,
                    taker_user_id: int4(taker_user.0)?,
                    maker_fee: Amount(scale::units(maker_fee, catalog.decimals(maker_fee_asset)?)),
                    maker_fee_asset_id: int4(maker_fee_asset.0)?,
                    taker_fee: Amount(scale::units(taker_fee, catalog.decimals(taker_fee_asset)?)),
                    taker_fee_asset_id: int4(taker_fee_asset.0)?,
                    executed_at: at,
                });
                for (order, user, remaining) in
                    [(maker_order, maker_user, maker_remaining), (taker_order, taker_user, taker_remaining)]
                {
                    let change = self.order_mut(order, user, market, seq, at);
                    change.executed_lots += qty.0;
                    change.executed_quote_units += quote_units;
                    change.remaining = Some(remaining);
                    change.status = Some("partially_filled");
                }
                self.command.pending = Some((maker_user, Cause::Trade(maker_order, trade), 2));
                let taker_bought = taker_side == Side::Buy;
                self.add_candle(market, timestamp_ns, trade, price, (base_units, quote_units), taker_bought);
            }
            EventKind::OrderAmended { order, user, market, price, remaining, .. } => {
                self.command.cause = Some(Cause::Amend(order));
                let change = self.order_mut(order, user, market, seq, at);
                change.price = Some(price);
                change.remaining = Some(remaining);
                change.amended_quantity = Some(Lots(change.executed_lots.saturating_add(remaining.0)));
            }
            EventKind::OrderDone { order, user, market, reason, .. } => {
                let own = self.command.cause.and_then(Cause::order) == Some(order);
                if !own && matches!(reason, DoneReason::Cancelled | DoneReason::SelfTrade | DoneReason::Contingent)
                {
                    // A cancel, a cancel-all, self-trade prevention
                    // cancelling a resting order, or a list cancelling its
                    // other order: the owner's unlock follows.
                    self.command.pending = Some((user, Cause::Cancel(order), 1));
                    // Cancelling a list closes two orders and may unlock
                    // their shared hold once, after both: that change is
                    // the cancel's too.
                    if self.command.cause.is_none() {
                        self.command.cause = Some(Cause::Cancel(order));
                    }
                }
                let change = self.order_mut(order, user, market, seq, at);
                change.status = Some(done_status(reason));
                change.remaining = Some(Lots(0));
                change.closed_at = Some(at);
                if let DoneReason::Refused(why) = reason {
                    change.reject_reason = Some(why.to_string());
                }
            }
            EventKind::Balance { user, asset, available, locked } => {
                let decimals = catalog.decimals(asset)?;
                let cause = match self.command.pending {
                    Some((pending_user, cause, uses)) if pending_user == user && uses > 0 => {
                        self.command.pending = (uses > 1).then_some((pending_user, cause, uses - 1));
                        cause
                    }
                    _ => self.command.cause.ok_or_else(|| {
                        RowError(format!("balance change at sequence {seq} has no cause among its events"))
                    })?,
                };
                let (before_available, before_locked) =
                    balances.insert((user, asset), (available, locked)).unwrap_or((Units(0), Units(0)));
                self.ledger.push(LedgerRow {
                    seq: int8(seq)?,
                    event_index: i32::try_from(self.command.event_index).unwrap_or(i32::MAX),
                    user_id: int4(user.0)?,
                    asset_id: int4(asset.0)?,
                    available: Amount(scale::units(available, decimals)),
                    locked: Amount(scale::units(locked, decimals)),
                    available_change: Amount(scale::units_change(available, before_available, decimals)),
                    locked_change: Amount(scale::units_change(locked, before_locked, decimals)),
                    cause: cause.name(),
                    order_id: cause.order().map(|o| int8(o.0)).transpose()?,
                    trade_id: cause.trade().map(|t| int8(t.0)).transpose()?,
                    recorded_at: at,
                });
                self.balances.insert((user, asset), BalanceRow { available, locked, decimals, seq });
            }
        }
        Ok(())
    }

    fn order_mut(
        &mut self,
        order: OrderId,
        user: UserId,
        market: MarketId,
        seq: u64,
        at: SystemTime,
    ) -> &mut OrderChange {
        let index = *self.order_index.entry(order).or_insert_with(|| {
            self.orders.push(OrderChange {
                order,
                user,
                market,
                opening: None,
                price: None,
                amended_quantity: None,
                status: None,
                remaining: None,
                executed_lots: 0,
                executed_quote_units: 0,
                updated_seq: seq,
                updated_at: at,
                closed_at: None,
                triggered: None,
                reject_reason: None,
            });
            self.orders.len() - 1
        });
        let change = &mut self.orders[index];
        change.updated_seq = seq;
        change.updated_at = at;
        change
    }

    fn add_candle(
        &mut self,
        market: MarketId,
        timestamp_ns: u64,
        trade: TradeId,
        price: Ticks,
        (base_units, quote_units): (u128, u128),
        taker_bought: bool,
    ) {
        let minute = timestamp_ns / NANOS_PER_MINUTE;
        let index = *self.candle_index.entry((market, minute)).or_insert_with(|| {
            self.candles.push(CandleRow {
                market,
                minute,
                open: price,
                high: price,
                low: price,
                close: price,
                volume_units: 0,
                quote_units: 0,
                taker_buy_units: 0,
                taker_buy_quote_units: 0,
                trades: 0,
                first_trade: trade,
                last_trade: trade,
            });
            self.candles.len() - 1
        });
        let candle = &mut self.candles[index];
        candle.high = candle.high.max(price);
        candle.low = candle.low.min(price);
        candle.close = price;
        candle.volume_units += base_units;
        candle.quote_units += quote_units;
        if taker_bought {
            candle.taker_buy_units += base_units;
            candle.taker_buy_quote_units += quote_units;
        }
        candle.trades += 1;
        candle.last_trade = trade;
    }
}

pub fn minute_start(minute: u64) -> SystemTime {
    time_of(minute.saturating_mul(NANOS_PER_MINUTE))
}
