//! Read views: what the read endpoints serve, kept up to date from the
//! outbound events by one consumer thread, never by touching the matcher.
//!
//! The views are derived from the journal exactly as the engine is: the
//! same events in the same order give the same views. A snapshot carries
//! their history (recent trades, minute bars, open and closed orders with
//! their fills, each market's last book change) next to the engine's state
//! ([`Views::state`]), and recovery replays the journal after it through
//! both ([`Views::restore`], [`journal::Derived`]), so that every read
//! endpoint answers after a restart as if the process had never stopped.
//! What the views keep is bounded by a [`Retention`], by count and by age;
//! ages are measured in the journal's own timestamps, so pruning is as
//! deterministic as the rest.

use std::collections::{BTreeMap, HashMap, VecDeque};

use engine_core::{
    Asset, AssetId, ClientOrderId, Contingency, DoneReason, Engine, Event, EventKind, ListId, Lots, Market,
    MarketId, MarketStatus, OrderId, OrderKind, OrderRef, SelfTradePrevention, Side, StampedCommand, Ticks,
    TradeId, Units, UserId,
};
use serde::{Deserialize, Serialize};

use crate::amounts::Scale;

/// A trade as the market data endpoints show it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TradeView {
    pub trade: TradeId,
    /// The incoming order that made the trade: consecutive trades of one
    /// taker order at one price form an aggregate trade.
    pub taker_order: OrderId,
    pub seq: u64,
    pub price: Ticks,
    pub qty: Lots,
    pub taker_side: Side,
    pub timestamp_ns: u64,
}

/// One fill of an order, from its owner's point of view.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FillView {
    pub trade: TradeId,
    pub price: Ticks,
    pub qty: Lots,
    pub fee: Units,
    /// The asset the fee was charged in (what the order received).
    pub fee_asset: AssetId,
    pub maker: bool,
    pub timestamp_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    New,
    PartiallyFilled,
    Filled,
    Cancelled,
    Expired,
    /// Cancelled by self-trade prevention.
    ExpiredSelfTrade,
    /// A market buy stopped by the user's funds.
    ExpiredFunds,
    /// Cancelled because the other order of its list traded, fired or closed.
    ExpiredContingent,
    /// An OTO's pending order that could not be placed when released.
    Rejected,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::ExpiredSelfTrade => "expired_self_trade",
            OrderStatus::ExpiredFunds => "expired_insufficient_funds",
            OrderStatus::ExpiredContingent => "expired_contingent",
            OrderStatus::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderView {
    pub order: OrderId,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    /// `None` when the order came from before the last restart and its
    /// original kind is not known (it is a resting limit order then).
    pub kind: Option<OrderKind>,
    pub price: Option<Ticks>,
    pub remaining: Lots,
    pub filled: Lots,
    /// The order's whole quantity (filled and open); an amend changes it.
    /// 0 for a market order by quote amount.
    pub quantity: Lots,
    pub client_order_id: Option<ClientOrderId>,
    /// `None` for orders from before the last restart (not in the snapshot).
    pub stp: Option<SelfTradePrevention>,
    pub status: OrderStatus,
    pub created_ns: u64,
    pub updated_seq: u64,
    /// When the command that last changed the order was stamped.
    pub updated_ns: u64,
    /// Quote units traded by this order's fills (all of them, not only the
    /// ones kept in `fills`), since the exchange started.
    pub quote_filled: u128,
    /// Fills seen since the exchange started (bounded).
    pub fills: Vec<FillView>,
    /// The order list (OCO, OTO) the order belongs to.
    pub list: Option<ListId>,
    /// Whether the order works (on the book or trading), waits for its
    /// trigger, or waits for its OTO's working order.
    pub stage: OrderStage,
    /// When the order started working: placed on the book or trading (its
    /// trigger fired, its OTO released it); `None` while it waits.
    pub working_ns: Option<u64>,
    /// When a trailing order started tracking the price.
    pub trailing_ns: Option<u64>,
}

/// Where an open order stands (a closed order keeps the stage it had).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStage {
    /// On the book, or trading.
    Working,
    /// A stop or take-profit order waiting off the book for its trigger.
    Waiting,
    /// An OTO's pending order, waiting for the working order's fill; it
    /// holds no funds.
    Pending,
}

impl OrderView {
    /// The order an `OrderAccepted` event opens (`None` for other events).
    pub fn accepted(event: &Event) -> Option<OrderView> {
        let EventKind::OrderAccepted { order, user, market, side, kind, client_order_id, stp, timestamp_ns } =
            event.kind
        else {
            return None;
        };
        let (price, quantity) = match kind {
            OrderKind::Limit { price, qty, .. }
            | OrderKind::Iceberg { price, qty, .. }
            | OrderKind::StopLimit { price, qty, .. } => (Some(price), qty),
            OrderKind::Market { qty } | OrderKind::StopMarket { qty, .. } => (None, qty),
            OrderKind::MarketByQuote { .. } => (None, Lots(0)),
        };
        let waits = kind.trigger().is_some();
        Some(OrderView {
            order,
            user,
            market,
            side,
            kind: Some(kind),
            price,
            remaining: quantity,
            filled: Lots(0),
            quantity,
            client_order_id,
            stp: Some(stp),
            status: OrderStatus::New,
            created_ns: timestamp_ns,
            updated_seq: event.seq,
            updated_ns: timestamp_ns,
            quote_filled: 0,
            fills: Vec::new(),
            list: None,
            stage: if waits { OrderStage::Waiting } else { OrderStage::Working },
            working_ns: if waits { None } else { Some(timestamp_ns) },
            trailing_ns: None,
        })
    }

    /// Follows an event that changes how the order works: a fired
    /// trigger, an OTO's release, a trailing start (others change nothing).
    pub fn follow(&mut self, event: &Event, timestamp_ns: u64) {
        match event.kind {
            EventKind::OrderTriggered { .. } => {
                self.stage = OrderStage::Working;
                self.working_ns = Some(timestamp_ns);
            }
            EventKind::OrderReleased { .. } => {
                if self.kind.and_then(|k| k.trigger()).is_some() {
                    self.stage = OrderStage::Waiting;
                } else {
                    self.stage = OrderStage::Working;
                    self.working_ns = Some(timestamp_ns);
                }
            }
            EventKind::TrailingStarted { .. } => self.trailing_ns = Some(timestamp_ns),
            _ => return,
        }
        self.updated_seq = event.seq;
        self.updated_ns = timestamp_ns;
    }
}

/// An order list (OCO or OTO) as the views follow it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView {
    pub list: ListId,
    pub user: UserId,
    pub market: MarketId,
    pub contingency: Contingency,
    /// For an OTO, the working order then the pending one.
    pub orders: [OrderId; 2],
    pub client_list_id: Option<ClientOrderId>,
    pub created_ns: u64,
    /// When the list ended (`None` while it is open).
    pub done_ns: Option<u64>,
    pub updated_seq: u64,
}

/// Fills kept per order in the view; an order with more still has its totals.
const FILLS_KEPT_PER_ORDER: usize = 100;
const NANOS_PER_MINUTE: u64 = 60_000_000_000;
pub const MINUTES_PER_DAY: u64 = 24 * 60;

pub struct MarketView {
    pub market: Market,
    /// `BASE-QUOTE`, the native API's name.
    pub name: String,
    /// `BASEQUOTE`, the name Binance-compatible clients use.
    pub symbol: String,
    pub scale: Scale,
    pub bids: BTreeMap<Ticks, Lots>,
    pub asks: BTreeMap<Ticks, Lots>,
    pub trades: VecDeque<TradeView>,
    pub last_price: Option<Ticks>,
    pub last_qty: Option<Lots>,
    /// One bar per minute with trades, over the last day.
    pub minutes: VecDeque<MinuteBar>,
    /// The sequence number of the last command that changed this book (0:
    /// none yet): depth diffs carry it, so that a client can check that the
    /// diffs it receives, across a restart too, follow each other.
    pub depth_seq: u64,
}

/// The trades of one minute of one market.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MinuteBar {
    /// Minutes since the epoch.
    pub minute: u64,
    pub open: Ticks,
    pub high: Ticks,
    pub low: Ticks,
    pub close: Ticks,
    pub volume: u128,
    /// Quote units traded.
    pub quote_volume: u128,
    pub trades: u64,
    pub first_trade: TradeId,
    pub last_trade: TradeId,
    /// What takers bought: base lots and quote units (Binance's taker-buy
    /// volumes; 0 in bars restored from a views section of format 1 or 2,
    /// which did not keep them).
    pub taker_buy_volume: u128,
    pub taker_buy_quote_volume: u128,
}

/// A minute bar as views formats 1 and 2 kept it: without the taker-buy
/// volumes.
#[derive(Clone, Copy, Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct MinuteBarV2 {
    minute: u64,
    open: Ticks,
    high: Ticks,
    low: Ticks,
    close: Ticks,
    volume: u128,
    quote_volume: u128,
    trades: u64,
    first_trade: TradeId,
    last_trade: TradeId,
}

impl From<MinuteBarV2> for MinuteBar {
    fn from(old: MinuteBarV2) -> MinuteBar {
        let MinuteBarV2 {
            minute,
            open,
            high,
            low,
            close,
            volume,
            quote_volume,
            trades,
            first_trade,
            last_trade,
        } = old;
        MinuteBar {
            minute,
            open,
            high,
            low,
            close,
            volume,
            quote_volume,
            trades,
            first_trade,
            last_trade,
            taker_buy_volume: 0,
            taker_buy_quote_volume: 0,
        }
    }
}

/// A market's trading over the last day (the minutes kept in the view).
#[derive(Clone, Copy, Debug)]
pub struct DayStats {
    pub open: Ticks,
    pub high: Ticks,
    pub low: Ticks,
    pub close: Ticks,
    pub volume: u128,
    pub quote_volume: u128,
    pub trades: u64,
    pub first_trade: TradeId,
    pub last_trade: TradeId,
    pub open_time_ms: u64,
}

impl MarketView {
    /// Base lots traded in the 24 hours before the last trade's minute.
    pub fn volume_24h(&self) -> u128 {
        self.minutes.iter().map(|bar| bar.volume).sum()
    }

    /// Open, high, low, close and volumes over the minutes kept (the last
    /// day); `None` when nothing traded in that day.
    pub fn day_stats(&self) -> Option<DayStats> {
        let first = self.minutes.front()?;
        let last = self.minutes.back()?;
        let mut stats = DayStats {
            open: first.open,
            high: first.high,
            low: first.low,
            close: last.close,
            volume: 0,
            quote_volume: 0,
            trades: 0,
            first_trade: first.first_trade,
            last_trade: last.last_trade,
            open_time_ms: first.minute * 60_000,
        };
        for bar in &self.minutes {
            stats.high = stats.high.max(bar.high);
            stats.low = stats.low.min(bar.low);
            stats.volume += bar.volume;
            stats.quote_volume += bar.quote_volume;
            stats.trades += bar.trades;
        }
        Some(stats)
    }
}

#[derive(Default)]
pub struct UserView {
    /// (available, locked) indexed by asset id; assets never touched are zero.
    pub balances: Vec<(Units, Units)>,
    pub open: BTreeMap<OrderId, OrderView>,
    pub closed: VecDeque<OrderView>,
    /// Open order lists by id.
    pub lists: BTreeMap<ListId, ListView>,
    /// Closed order lists, oldest first, kept as closed orders are.
    pub closed_lists: VecDeque<ListView>,
}

/// How much history the views keep: each bound by count and by age (in the
/// journal's timestamps; an item older than its age bound is dropped when
/// a newer one of the same user or market arrives). Minute bars cover the
/// last 24 hours, which the 24-hour tickers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub closed_orders_per_user_max: usize,
    pub closed_order_age_max_ms: u64,
    pub trades_per_market_max: usize,
    pub trade_age_max_ms: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            closed_orders_per_user_max: 1_000,
            closed_order_age_max_ms: 7 * 24 * 3_600_000,
            trades_per_market_max: 10_000,
            trade_age_max_ms: 24 * 3_600_000,
        }
    }
}

pub struct Views {
    /// The sequence number of the last command these views reflect.
    pub last_seq: u64,
    pub assets: Vec<Asset>,
    pub markets: Vec<MarketView>,
    pub market_names: HashMap<String, MarketId>,
    pub market_symbols: HashMap<String, MarketId>,
    pub users: Vec<UserView>,
    /// The engine's limits as of `last_seq`.
    pub limits: engine_core::EngineLimits,
    /// The open list of each order of an open list (looked up only).
    list_of: HashMap<OrderId, ListId>,
    retention: Retention,
}

/// The version of the views section of a snapshot ([`Views::encode`]):
/// a `u32` (little-endian), then [`ViewsState`] in the project's codec.
/// Bump it when [`ViewsState`] changes shape; a snapshot of another
/// version is skipped by recovery (which falls back to an older one).
const VIEWS_FORMAT_VERSION: u32 = 4;
/// Format 4 less the order lists and the orders' list, stage and working
/// times (from before stop, iceberg and list orders); still read.
const VIEWS_FORMAT_VERSION_WITHOUT_LISTS: u32 = 3;
/// Format 3 less the taker-buy volumes of the minute bars; still read.
const VIEWS_FORMAT_VERSION_WITHOUT_TAKER_BUY: u32 = 2;
/// The same state in bincode 2's standard layout (before the project's
/// codec); still read.
const VIEWS_FORMAT_VERSION_BINCODE: u32 = 1;

/// What the views hold that the engine does not: the part of the views a
/// snapshot carries. Everything else (balances, books, assets, markets) is
/// rebuilt from the snapshot's engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewsState {
    pub last_seq: u64,
    /// By market id.
    pub markets: Vec<MarketHistory>,
    /// By user id.
    pub users: Vec<UserHistory>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarketHistory {
    pub trades: VecDeque<TradeView>,
    pub last_price: Option<Ticks>,
    pub last_qty: Option<Lots>,
    pub minutes: VecDeque<MinuteBar>,
    pub depth_seq: u64,
}

/// [`ViewsState`] as formats 1 and 2 kept it (minute bars without the
/// taker-buy volumes).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ViewsStateV2 {
    last_seq: u64,
    markets: Vec<MarketHistoryV2>,
    users: Vec<UserHistoryV3>,
}

/// [`ViewsState`] as format 3 kept it (no order lists).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ViewsStateV3 {
    last_seq: u64,
    markets: Vec<MarketHistory>,
    users: Vec<UserHistoryV3>,
}

impl From<ViewsStateV3> for ViewsState {
    fn from(old: ViewsStateV3) -> ViewsState {
        ViewsState {
            last_seq: old.last_seq,
            markets: old.markets,
            users: old.users.into_iter().map(UserHistory::from).collect(),
        }
    }
}

/// [`UserHistory`] as formats 1 to 3 kept it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct UserHistoryV3 {
    open: Vec<OrderViewV3>,
    closed: VecDeque<OrderViewV3>,
}

impl From<UserHistoryV3> for UserHistory {
    fn from(old: UserHistoryV3) -> UserHistory {
        UserHistory {
            open: old.open.into_iter().map(OrderView::from).collect(),
            closed: old.closed.into_iter().map(OrderView::from).collect(),
            lists: Vec::new(),
            closed_lists: VecDeque::new(),
        }
    }
}

/// [`OrderView`] as formats 1 to 3 kept it: every order then worked from
/// its creation and belonged to no list.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct OrderViewV3 {
    order: OrderId,
    user: UserId,
    market: MarketId,
    side: Side,
    kind: Option<OrderKind>,
    price: Option<Ticks>,
    remaining: Lots,
    filled: Lots,
    quantity: Lots,
    client_order_id: Option<ClientOrderId>,
    stp: Option<SelfTradePrevention>,
    status: OrderStatus,
    created_ns: u64,
    updated_seq: u64,
    updated_ns: u64,
    quote_filled: u128,
    fills: Vec<FillView>,
}

impl From<OrderViewV3> for OrderView {
    fn from(old: OrderViewV3) -> OrderView {
        let OrderViewV3 {
            order,
            user,
            market,
            side,
            kind,
            price,
            remaining,
            filled,
            quantity,
            client_order_id,
            stp,
            status,
            created_ns,
            updated_seq,
            updated_ns,
            quote_filled,
            fills,
        } = old;
        OrderView {
            order,
            user,
            market,
            side,
            kind,
            price,
            remaining,
            filled,
            quantity,
            client_order_id,
            stp,
            status,
            created_ns,
            updated_seq,
            updated_ns,
            quote_filled,
            fills,
            list: None,
            stage: OrderStage::Working,
            working_ns: Some(created_ns),
            trailing_ns: None,
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct MarketHistoryV2 {
    trades: VecDeque<TradeView>,
    last_price: Option<Ticks>,
    last_qty: Option<Lots>,
    minutes: VecDeque<MinuteBarV2>,
    depth_seq: u64,
}

impl From<ViewsStateV2> for ViewsState {
    fn from(old: ViewsStateV2) -> ViewsState {
        ViewsState {
            last_seq: old.last_seq,
            markets: old
                .markets
                .into_iter()
                .map(|m| MarketHistory {
                    trades: m.trades,
                    last_price: m.last_price,
                    last_qty: m.last_qty,
                    minutes: m.minutes.into_iter().map(MinuteBar::from).collect(),
                    depth_seq: m.depth_seq,
                })
                .collect(),
            users: old.users.into_iter().map(UserHistory::from).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserHistory {
    /// Open orders as the views know them (kind, STP, fills), in id order.
    pub open: Vec<OrderView>,
    /// Closed orders, oldest first.
    pub closed: VecDeque<OrderView>,
    /// Open order lists, in id order.
    pub lists: Vec<ListView>,
    /// Closed order lists, oldest first.
    pub closed_lists: VecDeque<ListView>,
}

impl ViewsState {
    /// The bytes of a snapshot's views section.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut bytes = VIEWS_FORMAT_VERSION.to_le_bytes().to_vec();
        codec::encode_append(self, &mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// Reads a snapshot's views section; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<ViewsState, String> {
        let Some((version, body)) = bytes.split_first_chunk::<4>() else {
            return Err("shorter than its version".into());
        };
        let version = u32::from_le_bytes(*version);
        let decoded = match version {
            VIEWS_FORMAT_VERSION => codec::decode(body),
            VIEWS_FORMAT_VERSION_WITHOUT_LISTS => codec::decode::<ViewsStateV3>(body).map(ViewsState::from),
            VIEWS_FORMAT_VERSION_WITHOUT_TAKER_BUY => {
                codec::decode::<ViewsStateV2>(body).map(ViewsState::from)
            }
            VIEWS_FORMAT_VERSION_BINCODE => {
                codec::decode_bincode_standard::<ViewsStateV2>(body).map(ViewsState::from)
            }
            _ => {
                return Err(format!(
                    "format version {version}; this build reads {VIEWS_FORMAT_VERSION_BINCODE} to \
                     {VIEWS_FORMAT_VERSION}"
                ))
            }
        };
        decoded.map_err(|e| format!("format version {version}: {e}"))
    }
}

/// The views recovered with the engine (see [`journal::recover_with`]).
impl journal::Derived for Views {
    type Setup = Retention;

    fn load(retention: &Retention, engine: &Engine, views: Option<&[u8]>) -> Result<Views, String> {
        match views {
            Some(bytes) => Views::restore(engine, ViewsState::decode(bytes)?, *retention),
            // A snapshot from before views were kept (or none at all):
            // history starts at the snapshot.
            None => Ok(Views::from_engine(engine, *retention)),
        }
    }

    fn apply(&mut self, command: &StampedCommand, events: &[Event]) {
        for event in events {
            Views::apply(self, event, command.timestamp_ns);
        }
    }
}

impl Views {
    /// The views of an engine without any history: open orders without
    /// their kind or fills, no trades. For a data directory whose snapshot
    /// carries no views (and for tests); see [`Views::restore`].
    pub fn from_engine(engine: &Engine, retention: Retention) -> Views {
        let mut views = Views {
            last_seq: engine.last_seq(),
            assets: engine.assets().to_vec(),
            markets: Vec::new(),
            market_names: HashMap::new(),
            market_symbols: HashMap::new(),
            users: Vec::new(),
            limits: engine.limits(),
            list_of: HashMap::new(),
            retention,
        };
        for market in engine.markets() {
            views.add_market(*market);
            let view = &mut views.markets[market.id.0 as usize];
            for (side, levels) in [(Side::Buy, &mut view.bids), (Side::Sell, &mut view.asks)] {
                levels.extend(engine.depth(market.id, side, usize::MAX));
            }
        }
        let snapshot = engine.snapshot();
        for balances in &snapshot.balances {
            views.users.push(UserView {
                balances: balances.iter().map(|b| (b.available, b.locked)).collect(),
                ..UserView::default()
            });
        }
        // An iceberg's book order is its shown part; the views count its
        // whole open quantity.
        let hidden: HashMap<OrderId, Lots> =
            snapshot.icebergs.iter().map(|part| (part.order, part.hidden)).collect();
        for order in &snapshot.orders {
            if let Some(user) = views.users.get_mut(order.user.0 as usize) {
                let remaining = Lots(order.remaining.0 + hidden.get(&order.id).map_or(0, |h| h.0));
                user.open.insert(
                    order.id,
                    OrderView {
                        order: order.id,
                        user: order.user,
                        market: order.market,
                        side: order.side,
                        kind: None,
                        price: Some(order.price),
                        remaining,
                        filled: order.filled,
                        quantity: Lots(remaining.0 + order.filled.0),
                        client_order_id: order.client_order_id,
                        stp: None,
                        quote_filled: 0,
                        status: if order.filled.0 > 0 {
                            OrderStatus::PartiallyFilled
                        } else {
                            OrderStatus::New
                        },
                        created_ns: order.timestamp_ns,
                        updated_seq: engine.last_seq(),
                        updated_ns: order.timestamp_ns,
                        fills: Vec::new(),
                        list: None,
                        stage: OrderStage::Working,
                        working_ns: Some(order.timestamp_ns),
                        trailing_ns: None,
                    },
                );
            }
        }
        // Orders that wait off the book: their kind is known from the
        // engine; their times of creation are, not of a trailing start.
        let waiting = snapshot.waiting.iter().map(|w| {
            let kind = match w.then {
                engine_core::ThenKind::Market => OrderKind::StopMarket { trigger: w.trigger, qty: w.qty },
                engine_core::ThenKind::Limit(tif) => OrderKind::StopLimit {
                    trigger: w.trigger,
                    price: w.price,
                    qty: w.qty,
                    tif,
                    visible: w.visible,
                },
            };
            (
                w.id,
                w.user,
                w.market,
                w.side,
                kind,
                w.stp,
                w.client_order_id,
                w.timestamp_ns,
                OrderStage::Waiting,
            )
        });
        let pending = snapshot.pending.iter().map(|p| {
            (
                p.id,
                p.user,
                p.market,
                p.side,
                p.kind,
                p.stp,
                p.client_order_id,
                p.timestamp_ns,
                OrderStage::Pending,
            )
        });
        for (order, user, market, side, kind, stp, client_order_id, timestamp_ns, stage) in
            waiting.chain(pending)
        {
            let accepted = Event {
                seq: engine.last_seq(),
                kind: EventKind::OrderAccepted {
                    order,
                    user,
                    market,
                    side,
                    kind,
                    client_order_id,
                    stp,
                    timestamp_ns,
                },
            };
            if let (Some(view), Some(mut order_view)) =
                (views.users.get_mut(user.0 as usize), OrderView::accepted(&accepted))
            {
                order_view.stage = stage;
                order_view.working_ns = None;
                view.open.insert(order, order_view);
            }
        }
        for list in &snapshot.lists {
            let Some(view) = views.users.get_mut(list.user.0 as usize) else { continue };
            let created_ns = list.orders.iter().filter_map(|o| view.open.get(o)).map(|o| o.created_ns).min();
            for order in list.orders {
                views.list_of.insert(order, list.id);
                if let Some(order_view) = view.open.get_mut(&order) {
                    order_view.list = Some(list.id);
                }
            }
            view.lists.insert(
                list.id,
                ListView {
                    list: list.id,
                    user: list.user,
                    market: list.market,
                    contingency: list.contingency,
                    orders: list.orders,
                    client_list_id: list.client_list_id,
                    created_ns: created_ns.unwrap_or(0),
                    done_ns: None,
                    updated_seq: engine.last_seq(),
                },
            );
        }
        views
    }

    /// The views at a snapshot: what `engine` holds, plus the history of
    /// `state`, which must be the views of the same sequence number. A
    /// state that disagrees with the engine is refused.
    pub fn restore(engine: &Engine, state: ViewsState, retention: Retention) -> Result<Views, String> {
        let mut views = Views::from_engine(engine, retention);
        if state.last_seq != engine.last_seq() {
            return Err(format!(
                "views at sequence {} beside an engine at {}",
                state.last_seq,
                engine.last_seq()
            ));
        }
        if state.markets.len() != views.markets.len() || state.users.len() != views.users.len() {
            return Err(format!(
                "views of {} markets and {} users beside an engine with {} and {}",
                state.markets.len(),
                state.users.len(),
                views.markets.len(),
                views.users.len()
            ));
        }
        for (view, history) in views.markets.iter_mut().zip(state.markets) {
            view.trades = history.trades;
            view.last_price = history.last_price;
            view.last_qty = history.last_qty;
            view.minutes = history.minutes;
            view.depth_seq = history.depth_seq;
        }
        for (index, (view, history)) in views.users.iter_mut().zip(state.users).enumerate() {
            if history.open.len() != view.open.len() || history.lists.len() != view.lists.len() {
                return Err(format!(
                    "user {index} has {} open orders and {} lists in the views and {} and {} in the engine",
                    history.open.len(),
                    history.lists.len(),
                    view.open.len(),
                    view.lists.len()
                ));
            }
            for order in history.open {
                let agrees = view.open.get(&order.order).is_some_and(|engine_view| {
                    engine_view.user == order.user
                        && engine_view.market == order.market
                        && engine_view.side == order.side
                        && engine_view.price == order.price
                        && engine_view.remaining == order.remaining
                        && engine_view.filled == order.filled
                        && engine_view.stage == order.stage
                });
                if !agrees {
                    return Err(format!(
                        "open order {} of user {index} differs from the engine's",
                        order.order
                    ));
                }
                view.open.insert(order.order, order);
            }
            view.closed = history.closed;
            for list in history.lists {
                let agrees = view.lists.get(&list.list).is_some_and(|engine_list| {
                    engine_list.orders == list.orders && engine_list.contingency == list.contingency
                });
                if !agrees {
                    return Err(format!(
                        "order list {} of user {index} differs from the engine's",
                        list.list.0
                    ));
                }
                view.lists.insert(list.list, list);
            }
            view.closed_lists = history.closed_lists;
        }
        views.prune_all();
        Ok(views)
    }

    /// The history a snapshot carries (see [`ViewsState`]).
    pub fn state(&self) -> ViewsState {
        ViewsState {
            last_seq: self.last_seq,
            markets: self
                .markets
                .iter()
                .map(|view| MarketHistory {
                    trades: view.trades.clone(),
                    last_price: view.last_price,
                    last_qty: view.last_qty,
                    minutes: view.minutes.clone(),
                    depth_seq: view.depth_seq,
                })
                .collect(),
            users: self
                .users
                .iter()
                .map(|view| UserHistory {
                    open: view.open.values().cloned().collect(),
                    closed: view.closed.clone(),
                    lists: view.lists.values().cloned().collect(),
                    closed_lists: view.closed_lists.clone(),
                })
                .collect(),
        }
    }

    /// Applies the count bounds of the retention everywhere (after a
    /// restart with smaller bounds; age bounds apply as new items arrive).
    fn prune_all(&mut self) {
        let retention = self.retention;
        for view in &mut self.markets {
            while view.trades.len() > retention.trades_per_market_max {
                view.trades.pop_front();
            }
        }
        for view in &mut self.users {
            while view.closed.len() > retention.closed_orders_per_user_max {
                view.closed.pop_front();
            }
            while view.closed_lists.len() > retention.closed_orders_per_user_max {
                view.closed_lists.pop_front();
            }
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    fn add_market(&mut self, market: Market) {
        let symbol =
            |asset: AssetId| self.assets.get(asset.0 as usize).map(|a| (a.symbol.to_string(), a.decimals));
        let (Some((base, base_decimals)), Some((quote, quote_decimals))) =
            (symbol(market.rules.base), symbol(market.rules.quote))
        else {
            return;
        };
        let name = format!("{base}-{quote}");
        let symbol = format!("{base}{quote}");
        let scale = Scale::for_market(&market.rules, base_decimals, quote_decimals);
        self.market_names.insert(name.clone(), market.id);
        // Two markets can spell the same symbol (AB-C and A-BC): the first keeps it.
        self.market_symbols.entry(symbol.clone()).or_insert(market.id);
        self.markets.push(MarketView {
            market,
            name,
            symbol,
            scale,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            trades: VecDeque::new(),
            last_price: None,
            last_qty: None,
            minutes: VecDeque::new(),
            depth_seq: 0,
        });
    }

    pub fn market_by_name(&self, name: &str) -> Option<&MarketView> {
        self.market_names.get(name).and_then(|id| self.markets.get(id.0 as usize))
    }

    /// A market by its Binance-style symbol (`BTCUSDT`).
    pub fn market_by_symbol(&self, symbol: &str) -> Option<&MarketView> {
        self.market_symbols.get(symbol).and_then(|id| self.markets.get(id.0 as usize))
    }

    pub fn asset_by_symbol(&self, symbol: &str) -> Option<&Asset> {
        self.assets.iter().find(|asset| asset.symbol.as_str() == symbol)
    }

    pub fn user(&self, user: UserId) -> Option<&UserView> {
        self.users.get(user.0 as usize)
    }

    /// Finds one of `user`'s orders, open or recently closed.
    pub fn find_order(&self, user: UserId, matches: impl Fn(&OrderView) -> bool) -> Option<&OrderView> {
        let view = self.user(user)?;
        view.open.values().find(|o| matches(o)).or_else(|| view.closed.iter().rev().find(|o| matches(o)))
    }

    /// One of `user`'s orders, open or recently closed, by id or client id.
    /// Whether an order just closed is kept (as the newest of its user's
    /// closed orders): only a retention of no closed orders drops it at
    /// once; the age bound never drops the newest.
    pub fn keeps_closed_orders(&self) -> bool {
        self.retention.closed_orders_per_user_max > 0
    }

    pub fn find_order_ref(&self, user: UserId, order: OrderRef) -> Option<&OrderView> {
        self.find_order(user, |o| match order {
            OrderRef::Id(id) => o.order == id,
            OrderRef::Client(client) => o.client_order_id == Some(client),
        })
    }

    /// The list (open or recently closed) that `order` of `user` belongs to.
    pub fn list_of_order(&self, user: UserId, order: OrderId) -> Option<&ListView> {
        let view = self.user(user)?;
        if let Some(list) = self.list_of.get(&order).and_then(|id| view.lists.get(id)) {
            return Some(list);
        }
        view.closed_lists.iter().rev().find(|l| l.orders.contains(&order))
    }

    /// One of `user`'s order lists, open or recently closed, by id or list
    /// client id (the open one first: a closed list's client id may be
    /// used again).
    pub fn find_list(&self, user: UserId, list: engine_core::ListRef) -> Option<&ListView> {
        let view = self.user(user)?;
        let matches = |l: &&ListView| match list {
            engine_core::ListRef::Id(id) => l.list == id,
            engine_core::ListRef::Client(client) => l.client_list_id == Some(client),
        };
        view.lists.values().find(matches).or_else(|| view.closed_lists.iter().rev().find(matches))
    }

    /// Follows one event of a command stamped at `timestamp_ns`.
    pub fn apply(&mut self, event: &Event, timestamp_ns: u64) {
        self.last_seq = self.last_seq.max(event.seq);
        match event.kind {
            EventKind::AssetCreated { asset, symbol, decimals } => {
                self.assets.push(Asset { id: asset, symbol, decimals });
            }
            EventKind::MarketCreated { market, rules, status } => {
                self.add_market(Market { id: market, rules, status });
            }
            EventKind::MarketStatusChanged { market, status } => {
                if let Some(view) = self.markets.get_mut(market.0 as usize) {
                    view.market.status = status;
                }
            }
            EventKind::MarketFeesChanged { market, maker_fee_ppm, taker_fee_ppm } => {
                if let Some(view) = self.markets.get_mut(market.0 as usize) {
                    view.market.rules.maker_fee_ppm = maker_fee_ppm;
                    view.market.rules.taker_fee_ppm = taker_fee_ppm;
                }
            }
            EventKind::UserCreated { .. } => self.users.push(UserView::default()),
            EventKind::Balance { user, asset, available, locked } => {
                if let Some(view) = self.users.get_mut(user.0 as usize) {
                    let index = asset.0 as usize;
                    if view.balances.len() <= index {
                        view.balances.resize(index + 1, (Units(0), Units(0)));
                    }
                    view.balances[index] = (available, locked);
                }
            }
            EventKind::BookLevel { market, side, price, qty } => {
                if let Some(view) = self.markets.get_mut(market.0 as usize) {
                    view.depth_seq = event.seq;
                    let levels = if side == Side::Buy { &mut view.bids } else { &mut view.asks };
                    if qty.0 == 0 {
                        levels.remove(&price);
                    } else {
                        levels.insert(price, qty);
                    }
                }
            }
            EventKind::OrderAccepted { order, user, .. } => {
                if let (Some(view), Some(mut accepted)) =
                    (self.users.get_mut(user.0 as usize), OrderView::accepted(event))
                {
                    if let Some(list) = self.list_of.get(&order).and_then(|id| view.lists.get(id)) {
                        accepted.list = Some(list.list);
                        // An OTO's pending order waits for the working one.
                        if list.contingency == Contingency::Oto && list.orders[1] == order {
                            accepted.stage = OrderStage::Pending;
                            accepted.working_ns = None;
                        }
                    }
                    view.open.insert(order, accepted);
                }
            }
            EventKind::OrderTriggered { order, user, .. }
            | EventKind::OrderReleased { order, user, .. }
            | EventKind::TrailingStarted { order, user, .. } => {
                if let Some(order_view) =
                    self.users.get_mut(user.0 as usize).and_then(|view| view.open.get_mut(&order))
                {
                    order_view.follow(event, timestamp_ns);
                }
            }
            EventKind::OrderListAccepted {
                list, user, market, contingency, orders, client_list_id, ..
            } => {
                if let Some(view) = self.users.get_mut(user.0 as usize) {
                    for order in orders {
                        self.list_of.insert(order, list);
                    }
                    view.lists.insert(
                        list,
                        ListView {
                            list,
                            user,
                            market,
                            contingency,
                            orders,
                            client_list_id,
                            created_ns: timestamp_ns,
                            done_ns: None,
                            updated_seq: event.seq,
                        },
                    );
                }
            }
            EventKind::OrderListDone { list, user, .. } => {
                let retention = self.retention;
                let Some(view) = self.users.get_mut(user.0 as usize) else { return };
                let Some(mut done) = view.lists.remove(&list) else { return };
                for order in done.orders {
                    self.list_of.remove(&order);
                }
                done.done_ns = Some(timestamp_ns);
                done.updated_seq = event.seq;
                view.closed_lists.push_back(done);
                let oldest_ns = timestamp_ns.saturating_sub(retention.closed_order_age_max_ms * 1_000_000);
                while view.closed_lists.len() > retention.closed_orders_per_user_max
                    || view.closed_lists.front().is_some_and(|l| l.done_ns.unwrap_or(0) < oldest_ns)
                {
                    view.closed_lists.pop_front();
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
                timestamp_ns,
            } => {
                let Some(view) = self.markets.get_mut(market.0 as usize) else { return };
                let rules = view.market.rules;
                view.last_price = Some(price);
                view.last_qty = Some(qty);
                view.trades.push_back(TradeView {
                    trade,
                    taker_order,
                    seq: event.seq,
                    price,
                    qty,
                    taker_side,
                    timestamp_ns,
                });
                let oldest_ns = timestamp_ns.saturating_sub(self.retention.trade_age_max_ms * 1_000_000);
                while view.trades.len() > self.retention.trades_per_market_max
                    || view.trades.front().is_some_and(|t| t.timestamp_ns < oldest_ns)
                {
                    view.trades.pop_front();
                }
                let minute = timestamp_ns / NANOS_PER_MINUTE;
                let quote = u128::from(price.0) * u128::from(qty.0) * u128::from(rules.quote_units_per_tick);
                let (bought, bought_quote) =
                    if taker_side == Side::Buy { (u128::from(qty.0), quote) } else { (0, 0) };
                match view.minutes.back_mut() {
                    Some(bar) if bar.minute == minute => {
                        bar.high = bar.high.max(price);
                        bar.low = bar.low.min(price);
                        bar.close = price;
                        bar.volume += u128::from(qty.0);
                        bar.quote_volume += quote;
                        bar.taker_buy_volume += bought;
                        bar.taker_buy_quote_volume += bought_quote;
                        bar.trades += 1;
                        bar.last_trade = trade;
                    }
                    _ => view.minutes.push_back(MinuteBar {
                        minute,
                        open: price,
                        high: price,
                        low: price,
                        close: price,
                        volume: u128::from(qty.0),
                        quote_volume: quote,
                        trades: 1,
                        first_trade: trade,
                        last_trade: trade,
                        taker_buy_volume: bought,
                        taker_buy_quote_volume: bought_quote,
                    }),
                }
                while view.minutes.front().is_some_and(|bar| bar.minute + MINUTES_PER_DAY <= minute) {
                    view.minutes.pop_front();
                }
                let received = |side: Side| if side == Side::Buy { rules.base } else { rules.quote };
                let maker_side = taker_side.opposite();
                let sides = [
                    (maker_user, maker_order, maker_remaining, maker_fee, received(maker_side), true),
                    (taker_user, taker_order, taker_remaining, taker_fee, received(taker_side), false),
                ];
                for (user, order, remaining, fee, fee_asset, maker) in sides {
                    let Some(user_view) = self.users.get_mut(user.0 as usize) else { continue };
                    let Some(order_view) = user_view.open.get_mut(&order) else { continue };
                    order_view.filled.0 += qty.0;
                    order_view.quote_filled +=
                        u128::from(price.0) * u128::from(qty.0) * u128::from(rules.quote_units_per_tick);
                    order_view.remaining = remaining;
                    order_view.status = OrderStatus::PartiallyFilled;
                    order_view.updated_seq = event.seq;
                    if order_view.fills.len() < FILLS_KEPT_PER_ORDER {
                        order_view.fills.push(FillView {
                            trade,
                            price,
                            qty,
                            fee,
                            fee_asset,
                            maker,
                            timestamp_ns,
                        });
                    }
                }
            }
            EventKind::OrderAmended { order, user, price, remaining, .. } => {
                if let Some(order_view) =
                    self.users.get_mut(user.0 as usize).and_then(|view| view.open.get_mut(&order))
                {
                    order_view.price = Some(price);
                    order_view.remaining = remaining;
                    order_view.quantity = Lots(order_view.filled.0 + remaining.0);
                    order_view.updated_seq = event.seq;
                    order_view.updated_ns = timestamp_ns;
                }
            }
            EventKind::OrderDone { order, user, reason, filled, .. } => {
                let retention = self.retention;
                let Some(view) = self.users.get_mut(user.0 as usize) else { return };
                let Some(mut order_view) = view.open.remove(&order) else { return };
                order_view.filled = filled;
                order_view.updated_seq = event.seq;
                order_view.updated_ns = timestamp_ns;
                order_view.status = match reason {
                    DoneReason::Filled => OrderStatus::Filled,
                    DoneReason::Cancelled => OrderStatus::Cancelled,
                    DoneReason::Expired => OrderStatus::Expired,
                    DoneReason::Contingent => OrderStatus::ExpiredContingent,
                    DoneReason::Refused(_) => OrderStatus::Rejected,
                    DoneReason::SelfTrade => OrderStatus::ExpiredSelfTrade,
                    DoneReason::FundsExhausted => OrderStatus::ExpiredFunds,
                };
                if reason != DoneReason::Filled {
                    order_view.remaining = Lots(0);
                }
                view.closed.push_back(order_view);
                let oldest_ns = timestamp_ns.saturating_sub(retention.closed_order_age_max_ms * 1_000_000);
                while view.closed.len() > retention.closed_orders_per_user_max
                    || view.closed.front().is_some_and(|o| o.updated_ns < oldest_ns)
                {
                    view.closed.pop_front();
                }
            }
            EventKind::LimitsChanged { limits } => self.limits = limits,
            // The hidden part of an iceberg stays in `remaining`; depth
            // follows the shown part through `BookLevel`.
            EventKind::OrderRefilled { .. } => {}
            EventKind::Deposited { .. }
            | EventKind::Withdrawn { .. }
            | EventKind::ApiKeyCreated { .. }
            | EventKind::ApiKeyRevoked { .. }
            | EventKind::Rejected { .. }
            | EventKind::CancelledAll { .. } => {}
        }
    }

    pub fn market_status(&self, market: MarketId) -> Option<MarketStatus> {
        self.markets.get(market.0 as usize).map(|view| view.market.status)
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_views_section_of_format_3_is_read_with_working_orders_and_no_lists() {
        let order = OrderViewV3 {
            order: OrderId(4),
            user: UserId(1),
            market: MarketId(0),
            side: Side::Sell,
            kind: Some(OrderKind::Limit {
                price: Ticks(10),
                qty: Lots(3),
                tif: engine_core::TimeInForce::Gtc,
            }),
            price: Some(Ticks(10)),
            remaining: Lots(3),
            filled: Lots(0),
            quantity: Lots(3),
            client_order_id: None,
            stp: None,
            status: OrderStatus::New,
            created_ns: 7_000_000,
            updated_seq: 2,
            updated_ns: 7_000_000,
            quote_filled: 0,
            fills: Vec::new(),
        };
        let old = ViewsStateV3 {
            last_seq: 9,
            markets: Vec::new(),
            users: vec![UserHistoryV3 { open: vec![order], closed: VecDeque::new() }],
        };
        let mut bytes = VIEWS_FORMAT_VERSION_WITHOUT_LISTS.to_le_bytes().to_vec();
        codec::encode_append(&old, &mut bytes).unwrap();
        let state = ViewsState::decode(&bytes).unwrap();
        let user = &state.users[0];
        assert!(user.lists.is_empty() && user.closed_lists.is_empty());
        let order = &user.open[0];
        assert_eq!((order.order, order.list, order.stage), (OrderId(4), None, OrderStage::Working));
        assert_eq!(order.working_ns, Some(7_000_000), "it worked from its creation");
        // Format 4 keeps lists and stages.
        let mut state = state;
        state.users[0].open[0].stage = OrderStage::Waiting;
        state.users[0].lists.push(ListView {
            list: ListId(1),
            user: UserId(1),
            market: MarketId(0),
            contingency: Contingency::Oco,
            orders: [OrderId(4), OrderId(5)],
            client_list_id: None,
            created_ns: 1,
            done_ns: None,
            updated_seq: 2,
        });
        let again = ViewsState::decode(&state.encode().unwrap()).unwrap();
        assert_eq!(again.users[0].open[0].stage, OrderStage::Waiting);
        assert_eq!(again.users[0].lists, state.users[0].lists);
    }

    #[test]
    fn a_views_section_of_format_2_is_read_with_taker_buy_volumes_of_zero() {
        let bar = MinuteBarV2 {
            minute: 7,
            open: Ticks(10),
            high: Ticks(12),
            low: Ticks(9),
            close: Ticks(11),
            volume: 5,
            quote_volume: 50,
            trades: 2,
            first_trade: TradeId(1),
            last_trade: TradeId(2),
        };
        let old = ViewsStateV2 {
            last_seq: 9,
            markets: vec![MarketHistoryV2 {
                trades: VecDeque::new(),
                last_price: Some(Ticks(11)),
                last_qty: None,
                minutes: VecDeque::from([bar]),
                depth_seq: 3,
            }],
            users: Vec::new(),
        };
        let mut bytes = VIEWS_FORMAT_VERSION_WITHOUT_TAKER_BUY.to_le_bytes().to_vec();
        codec::encode_append(&old, &mut bytes).unwrap();
        let state = ViewsState::decode(&bytes).unwrap();
        let bar = state.markets[0].minutes[0];
        assert_eq!((bar.minute, bar.volume, bar.trades, bar.last_trade), (7, 5, 2, TradeId(2)));
        assert_eq!((bar.taker_buy_volume, bar.taker_buy_quote_volume), (0, 0));
        // And format 3 keeps them.
        let mut state = state;
        state.markets[0].minutes[0].taker_buy_volume = 4;
        let again = ViewsState::decode(&state.encode().unwrap()).unwrap();
        assert_eq!(again.markets[0].minutes[0].taker_buy_volume, 4);
        assert_eq!(
            u32::from_le_bytes(state.encode().unwrap()[..4].try_into().unwrap()),
            VIEWS_FORMAT_VERSION
        );
    }
}
