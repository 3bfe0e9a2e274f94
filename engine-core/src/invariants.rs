//! Checks of the invariants the engine promises: over its whole state
//! ([`Engine::check_invariants`]), and over what a command's events touched
//! ([`Engine::check_touched`], cheap enough to follow every command).
//!
//! Neither is for the hot path, and the matcher calls neither: they are
//! meant for tests, fuzzing and an operator's verification. A violation is
//! a bug in the engine, never a consequence of input.

use std::fmt;

use crate::accounts::Balance;
use crate::book::{BookSide, Order, NIL};
use crate::command::Contingency;
use crate::command::{OrderKind, TimeInForce};
use crate::engine::Engine;
use crate::event::{Event, EventKind};
use crate::extras::{Phase, NONE};
use crate::snapshot::SnapshotError;
use crate::units::{AssetId, Lots, MarketId, OrderId, Side, Ticks, Units, UserId};

/// The first broken invariant found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvariantViolation {
    /// The state does not pass the checks a snapshot load makes
    /// (conservation, locked funds, crossed books, references).
    Semantic(SnapshotError),
    LevelTotal {
        market: MarketId,
        side: Side,
        why: &'static str,
    },
    OrderIndex {
        order: OrderId,
        why: &'static str,
    },
    UserOrders {
        user: UserId,
        why: &'static str,
    },
    /// A snapshot of the state loads into a state with a different hash.
    HashChangedByReload {
        before: u64,
        after: u64,
    },
    /// The events of command `seq` disagree with the state they left, or
    /// break the rules of the event stream (which the read views rely on).
    EventStream {
        seq: u64,
        why: &'static str,
    },
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantViolation::Semantic(error) => write!(f, "{error}"),
            InvariantViolation::LevelTotal { market, side, why } => {
                write!(f, "market {market} {side} side: {why}")
            }
            InvariantViolation::OrderIndex { order, why } => write!(f, "order {order}: {why}"),
            InvariantViolation::UserOrders { user, why } => write!(f, "user {user}: {why}"),
            InvariantViolation::HashChangedByReload { before, after } => {
                write!(f, "state hash {before:016x} became {after:016x} through a snapshot")
            }
            InvariantViolation::EventStream { seq, why } => write!(f, "events of command {seq}: {why}"),
        }
    }
}

impl std::error::Error for InvariantViolation {}

impl Engine {
    /// Checks every invariant: for every asset, balances plus fees equal
    /// deposits minus withdrawals; locked funds equal what open orders need;
    /// no book is crossed; level totals, the order index and each user's
    /// order list agree with the orders on the books; and the state survives
    /// a snapshot round trip with its hash unchanged.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut resting = 0u32;
        for state in &self.markets {
            let market = state.market.id;
            for side in [Side::Buy, Side::Sell] {
                let book_side = state.book.side(side);
                let mut previous = None;
                for level in book_side.levels() {
                    let bad = |why| InvariantViolation::LevelTotal { market, side, why };
                    if let Some(previous) = previous {
                        let worse = match side {
                            Side::Buy => level.price < previous,
                            Side::Sell => level.price > previous,
                        };
                        if !worse {
                            return Err(bad("levels out of price order"));
                        }
                    }
                    previous = Some(level.price);
                    let mut total = 0u128;
                    let mut slot = level.head;
                    if slot == NIL {
                        return Err(bad("empty level kept"));
                    }
                    while slot != NIL {
                        let order = self.orders.get(slot);
                        if order.price != level.price || order.side != side || order.market != market {
                            return Err(bad("order queued at the wrong level"));
                        }
                        if order.remaining.0 == 0 {
                            return Err(bad("order with nothing left rests"));
                        }
                        if self.index.get(order.id) != Some(slot) {
                            return Err(InvariantViolation::OrderIndex {
                                order: order.id,
                                why: "not indexed at its slot",
                            });
                        }
                        total += u128::from(order.remaining.0);
                        resting += 1;
                        slot = BookSide::next_in_level(&self.orders, slot);
                    }
                    if total != u128::from(level.qty.0) {
                        return Err(bad("level total differs from its orders"));
                    }
                }
            }
        }
        let mut off_book = 0u32;
        for extra in self.extras.iter() {
            let bad = |why| InvariantViolation::OrderIndex { order: extra.order, why };
            let slot = self.index.get(extra.order).ok_or(bad("extras of an order that is not open"))?;
            let ext = self.orders.get(slot).ext;
            if self.extras.get_checked(ext) != Some(extra) {
                return Err(bad("its extras are not where it points"));
            }
            if extra.phase == Phase::Live && extra.visible.0 == 0 && extra.list == NONE {
                return Err(bad("a plain order keeps extras"));
            }
            if extra.phase != Phase::Live {
                off_book += 1;
            }
        }
        let waiting: usize = self.markets.iter().map(|state| state.triggers.len()).sum();
        let waiting_orders = self.extras.iter().filter(|e| matches!(e.phase, Phase::Waiting(_))).count();
        if waiting != waiting_orders {
            return Err(InvariantViolation::OrderIndex {
                order: OrderId(0),
                why: "triggers and waiting orders disagree on the count",
            });
        }
        for state in &self.markets {
            for entry in state.triggers.entries() {
                let bad = |why| InvariantViolation::OrderIndex { order: entry.order, why };
                let order = self.orders.get_checked(entry.slot).filter(|o| o.id == entry.order);
                let order = order.ok_or(bad("a trigger of no open order"))?;
                let waits = order.market == state.market.id
                    && order.ext != NIL
                    && matches!(self.extras.get(order.ext).phase, Phase::Waiting(_));
                if !waits {
                    return Err(bad("a trigger of an order that does not wait in its market"));
                }
                let Phase::Waiting(waiting) = self.extras.get(order.ext).phase else { unreachable!() };
                if waiting.tracking == Some(None) && !state.triggers.is_unstarted(order.id) {
                    return Err(bad("tracks with no trade seen but not on the trigger book as such"));
                }
            }
            state
                .triggers
                .check()
                .map_err(|why| InvariantViolation::OrderIndex { order: OrderId(0), why })?;
            for (node, entry) in state.triggers.stopped() {
                let order = self.orders.get(entry.slot);
                let Phase::Waiting(waiting) = self.extras.get(order.ext).phase else { unreachable!() };
                if waiting.node != node
                    || waiting.tracking.is_some()
                    || waiting.trigger.stop != Some(entry.stop)
                {
                    return Err(InvariantViolation::OrderIndex {
                        order: entry.order,
                        why: "a waiting order and its node on the trigger book disagree",
                    });
                }
            }
            for (node, entry, bips) in state.triggers.tracking() {
                let bad = |why| InvariantViolation::OrderIndex { order: entry.order, why };
                let order = self.orders.get(entry.slot);
                let Phase::Waiting(waiting) = self.extras.get(order.ext).phase else { unreachable!() };
                if waiting.node != node
                    || waiting.trigger.trailing_bips != bips
                    || waiting.tracking.flatten().is_none()
                {
                    return Err(bad("a tracking order and its node on the trigger book disagree"));
                }
            }
        }
        for list in self.lists.iter() {
            for (leg, &slot) in list.slots.iter().enumerate() {
                let bad = |why| InvariantViolation::OrderIndex { order: list.orders[leg], why };
                let order = self.orders.get_checked(slot).filter(|o| o.id == list.orders[leg]);
                let order = order.ok_or(bad("a list names an order that is not open"))?;
                if order.ext == NIL || self.extras.get(order.ext).list == NONE {
                    return Err(bad("a list's order does not know its list"));
                }
            }
        }
        let resting = resting + off_book;
        if resting != self.orders.len() || self.index.len() != resting as usize {
            return Err(InvariantViolation::OrderIndex {
                order: OrderId(0),
                why: "slab, index and books disagree on the count",
            });
        }

        let mut listed = 0u32;
        for (user, account) in self.accounts.iter().enumerate() {
            let user = UserId(user as u32);
            let bad = |why| InvariantViolation::UserOrders { user, why };
            let mut count = 0u32;
            let mut last_id = OrderId(0);
            let mut slot = account.orders_head;
            let mut with_client_id = 0usize;
            while slot != NIL {
                let order = self.orders.get(slot);
                if order.user != user {
                    return Err(bad("lists another user's order"));
                }
                if order.id <= last_id {
                    return Err(bad("orders not in id order"));
                }
                if let Some(client_order_id) = &order.client_order_id {
                    if account.find_client_id(client_order_id) != Some(order.id) {
                        return Err(bad("client order id not registered"));
                    }
                    with_client_id += 1;
                }
                last_id = order.id;
                count += 1;
                slot = order.user_next;
            }
            if count != account.open_orders {
                return Err(bad("open order count differs from the list"));
            }
            if with_client_id != account.client_ids.len() {
                return Err(bad("client order ids of closed orders kept"));
            }
            listed += count;
        }
        if listed != resting {
            return Err(InvariantViolation::OrderIndex {
                order: OrderId(0),
                why: "user lists and books disagree on the count",
            });
        }

        let before = self.state_hash();
        let reloaded = Engine::from_snapshot(self.snapshot()).map_err(InvariantViolation::Semantic)?;
        let after = reloaded.state_hash();
        if before != after {
            return Err(InvariantViolation::HashChangedByReload { before, after });
        }
        Ok(())
    }
}

/// What one order's events say about it after the last of them.
#[derive(Clone, Copy, Debug)]
enum OrderFate {
    /// Closed: filled, cancelled or expired, and off every book.
    Closed,
    /// Open after the events, unless a later event closed it. `None` where
    /// the event does not say (a taker's price is its limit, which the
    /// trade does not carry).
    Open {
        user: UserId,
        market: MarketId,
        side: Side,
        price: Option<Ticks>,
        remaining: Option<Lots>,
        /// Market, IOC and FOK orders never rest.
        may_rest: bool,
    },
}

impl OrderFate {
    /// The fate after `self`, then `next`; `None` when they contradict.
    fn then(self, next: OrderFate) -> Option<OrderFate> {
        match (self, next) {
            (OrderFate::Closed, _) => None,
            (OrderFate::Open { .. }, OrderFate::Closed) => Some(OrderFate::Closed),
            (
                OrderFate::Open { user, market, side, .. },
                OrderFate::Open { user: next_user, market: next_market, side: next_side, .. },
            ) if (user, market, side) != (next_user, next_market, next_side) => None,
            (
                OrderFate::Open { price, remaining, may_rest, .. },
                OrderFate::Open {
                    user,
                    market,
                    side,
                    price: next_price,
                    remaining: next_remaining,
                    may_rest: next_may_rest,
                },
            ) => Some(OrderFate::Open {
                user,
                market,
                side,
                price: next_price.or(price),
                remaining: next_remaining.or(remaining),
                may_rest: may_rest && next_may_rest,
            }),
        }
    }
}

/// Space that [`Engine::check_touched_with`] reuses from one call to the
/// next, so that checking after every command allocates nothing once it
/// has grown to the largest command's events.
#[derive(Debug, Default)]
pub struct TouchedScratch {
    touched: Touched,
    /// Per asset, what one user's open orders need locked.
    needs: Vec<u128>,
}

/// Everything a slice of events names, each with what the last event
/// about it reported: the scope of [`Engine::check_touched`].
#[derive(Debug, Default)]
struct Touched {
    users: Vec<UserId>,
    assets: Vec<AssetId>,
    markets: Vec<MarketId>,
    /// ((market, is the ask side, price), event position, reported total).
    levels: Vec<((MarketId, bool, Ticks), usize, Lots)>,
    /// ((user, asset), event position, reported balance).
    balances: Vec<((UserId, AssetId), usize, Balance)>,
    /// (order, event position, fate).
    orders: Vec<(OrderId, usize, OrderFate)>,
}

impl Touched {
    /// Gathers what `events` name, checking on the way the rules of the
    /// event stream itself.
    fn gather(&mut self, engine: &Engine, events: &[Event]) -> Result<(), InvariantViolation> {
        let touched = self;
        touched.users.clear();
        touched.assets.clear();
        touched.markets.clear();
        touched.levels.clear();
        touched.balances.clear();
        touched.orders.clear();
        for (position, event) in events.iter().enumerate() {
            let seq = event.seq;
            let bad = |why| InvariantViolation::EventStream { seq, why };
            if seq == 0 || seq > engine.last_seq {
                return Err(bad("sequence number outside the commands applied"));
            }
            if let Some(previous) = position.checked_sub(1).map(|p| events[p].seq) {
                // Every command yields at least one event, in order.
                if seq != previous && seq != previous + 1 {
                    return Err(bad("sequence numbers not consecutive"));
                }
            }
            let same_command = |p: Option<usize>| p.and_then(|p| events.get(p)).is_some_and(|e| e.seq == seq);
            match event.kind {
                EventKind::AssetCreated { asset, .. } => touched.asset(engine, asset, seq)?,
                EventKind::MarketCreated { market, .. }
                | EventKind::MarketStatusChanged { market, .. }
                | EventKind::MarketFeesChanged { market, .. } => touched.market(engine, market, seq)?,
                EventKind::UserCreated { user }
                | EventKind::ApiKeyCreated { user, .. }
                | EventKind::ApiKeyRevoked { user, .. } => touched.user(engine, user, seq)?,
                EventKind::Deposited { user, asset, amount }
                | EventKind::Withdrawn { user, asset, amount } => {
                    if amount.0 == 0 {
                        return Err(bad("funds moved by zero"));
                    }
                    touched.user(engine, user, seq)?;
                    touched.asset(engine, asset, seq)?;
                }
                // Limits bound what comes next; nothing held changes.
                EventKind::LimitsChanged { .. } => {}
                EventKind::Rejected { .. } => {
                    // A refused command changes nothing, so it says nothing else.
                    if same_command(position.checked_sub(1)) || same_command(Some(position + 1)) {
                        return Err(bad("a rejected command emitted other events"));
                    }
                }
                EventKind::OrderAccepted { order, user, market, side, kind, .. } => {
                    touched.user(engine, user, seq)?;
                    touched.market(engine, market, seq)?;
                    // An OTO's pending order (named by the `OrderListAccepted`
                    // two events before) waits whatever its kind; what it
                    // becomes, `OrderReleased` and later events say.
                    let pending = position.checked_sub(2).and_then(|p| events.get(p)).is_some_and(|e| {
                        e.seq == seq
                            && matches!(e.kind, EventKind::OrderListAccepted {
                                contingency: Contingency::Oto, orders, ..
                            } if orders[1] == order)
                    });
                    let (price, remaining, may_rest) = match kind {
                        _ if pending => (None, kind.qty(), true),
                        OrderKind::Limit { price, qty, tif } => {
                            (Some(price), Some(qty), matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly))
                        }
                        OrderKind::Iceberg { price, qty, tif, .. } => {
                            (Some(price), Some(qty), matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly))
                        }
                        OrderKind::Market { .. } | OrderKind::MarketByQuote { .. } => (None, None, false),
                        // Waiting (or pending) is open; what they become, later events say.
                        OrderKind::StopMarket { qty, .. } | OrderKind::StopLimit { qty, .. } => {
                            (None, Some(qty), true)
                        }
                    };
                    let fate = OrderFate::Open { user, market, side, price, remaining, may_rest };
                    touched.orders.push((order, position, fate));
                }
                EventKind::Trade {
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
                    touched.market(engine, market, seq)?;
                    touched.user(engine, maker_user, seq)?;
                    touched.user(engine, taker_user, seq)?;
                    let rules = engine.markets[market.index()].market.rules;
                    touched.asset(engine, rules.base, seq)?;
                    touched.asset(engine, rules.quote, seq)?;
                    if qty.0 == 0 || price.0 == 0 {
                        return Err(bad("a trade of nothing or at no price"));
                    }
                    if maker_order == taker_order {
                        return Err(bad("an order traded with itself"));
                    }
                    let base = rules.base_units(qty).ok_or(bad("a trade's base amount does not fit"))?;
                    let quote =
                        rules.quote_units(price, qty).ok_or(bad("a trade's quote amount does not fit"))?;
                    // Each side pays its fee out of what it receives.
                    let (maker_receives, taker_receives) = match taker_side {
                        Side::Buy => (quote, base),
                        Side::Sell => (base, quote),
                    };
                    if maker_fee > maker_receives || taker_fee > taker_receives {
                        return Err(bad("a fee larger than what it is charged on"));
                    }
                    let maker = OrderFate::Open {
                        user: maker_user,
                        market,
                        side: taker_side.opposite(),
                        price: Some(price),
                        remaining: Some(maker_remaining),
                        may_rest: true,
                    };
                    let taker = OrderFate::Open {
                        user: taker_user,
                        market,
                        side: taker_side,
                        price: None,
                        remaining: Some(taker_remaining),
                        may_rest: true,
                    };
                    touched.orders.push((maker_order, position, maker));
                    touched.orders.push((taker_order, position, taker));
                }
                EventKind::OrderAmended { order, user, market, side, price, remaining, .. } => {
                    touched.user(engine, user, seq)?;
                    touched.market(engine, market, seq)?;
                    let fate = OrderFate::Open {
                        user,
                        market,
                        side,
                        price: Some(price),
                        remaining: Some(remaining),
                        may_rest: true,
                    };
                    touched.orders.push((order, position, fate));
                }
                EventKind::OrderDone { order, user, market, .. } => {
                    touched.user(engine, user, seq)?;
                    touched.market(engine, market, seq)?;
                    touched.orders.push((order, position, OrderFate::Closed));
                }
                EventKind::CancelledAll { user, market, .. } => {
                    touched.user(engine, user, seq)?;
                    if let Some(market) = market {
                        touched.market(engine, market, seq)?;
                    }
                }
                EventKind::OrderTriggered { user, market, .. }
                | EventKind::OrderReleased { user, market, .. }
                | EventKind::OrderListAccepted { user, market, .. }
                | EventKind::OrderListDone { user, market, .. }
                | EventKind::TrailingStarted { user, market, .. } => {
                    touched.user(engine, user, seq)?;
                    touched.market(engine, market, seq)?;
                }
                EventKind::OrderRefilled { order, user, market, side, price, shown, hidden } => {
                    touched.user(engine, user, seq)?;
                    touched.market(engine, market, seq)?;
                    if shown.0 == 0 {
                        return Err(bad("an iceberg refilled with nothing"));
                    }
                    let fate = OrderFate::Open {
                        user,
                        market,
                        side,
                        price: Some(price),
                        remaining: Some(Lots(shown.0 + hidden.0)),
                        may_rest: true,
                    };
                    touched.orders.push((order, position, fate));
                }
                EventKind::BookLevel { market, side, price, qty } => {
                    touched.market(engine, market, seq)?;
                    push_latest(&mut touched.levels, (market, side == Side::Sell, price), position, qty);
                }
                EventKind::Balance { user, asset, available, locked } => {
                    touched.user(engine, user, seq)?;
                    touched.asset(engine, asset, seq)?;
                    push_latest(
                        &mut touched.balances,
                        (user, asset),
                        position,
                        Balance { available, locked },
                    );
                }
            }
        }
        touched.users.sort_unstable();
        touched.users.dedup();
        touched.assets.sort_unstable();
        touched.assets.dedup();
        touched.markets.sort_unstable();
        touched.markets.dedup();
        // What the last event about each says is what must hold now.
        touched.levels.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        touched.levels.dedup_by_key(|entry| entry.0);
        touched.balances.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        touched.balances.dedup_by_key(|entry| entry.0);
        // An order's events add up: the latest price and quantity said,
        // closed if the last one closed it.
        let orders = &mut touched.orders;
        orders.sort_unstable_by_key(|&(order, position, _)| (order, position));
        let mut kept = 0;
        for next in 0..orders.len() {
            let (order, position, fate) = orders[next];
            if kept > 0 && orders[kept - 1].0 == order {
                let last = &mut orders[kept - 1];
                last.2 = last.2.then(fate).ok_or(InvariantViolation::EventStream {
                    seq: events[position].seq,
                    why: "events about an order after it closed, or disagreeing on its owner, market or side",
                })?;
                last.1 = position;
            } else {
                orders[kept] = orders[next];
                kept += 1;
            }
        }
        orders.truncate(kept);
        Ok(())
    }

    fn user(&mut self, engine: &Engine, user: UserId, seq: u64) -> Result<(), InvariantViolation> {
        if user.index() >= engine.accounts.len() {
            return Err(InvariantViolation::EventStream {
                seq,
                why: "an event names a user that does not exist",
            });
        }
        // Events name the same few again and again; the rest dedup later.
        if self.users.last() != Some(&user) {
            self.users.push(user);
        }
        Ok(())
    }

    fn asset(&mut self, engine: &Engine, asset: AssetId, seq: u64) -> Result<(), InvariantViolation> {
        if asset.index() >= engine.assets.len() {
            return Err(InvariantViolation::EventStream {
                seq,
                why: "an event names an asset that does not exist",
            });
        }
        // Events name the same few again and again; the rest dedup later.
        if self.assets.last() != Some(&asset) {
            self.assets.push(asset);
        }
        Ok(())
    }

    fn market(&mut self, engine: &Engine, market: MarketId, seq: u64) -> Result<(), InvariantViolation> {
        if market.index() >= engine.markets.len() {
            return Err(InvariantViolation::EventStream {
                seq,
                why: "an event names a market that does not exist",
            });
        }
        // Events name the same few again and again; the rest dedup later.
        if self.markets.last() != Some(&market) {
            self.markets.push(market);
        }
        Ok(())
    }
}

/// Records what event `position` says of `key`, over the previous entry
/// when that was about the same key (a cancel-all reports one balance
/// again and again): fewer entries to sort.
fn push_latest<K: PartialEq, V>(entries: &mut Vec<(K, usize, V)>, key: K, position: usize, value: V) {
    match entries.last_mut() {
        Some(last) if last.0 == key => *last = (key, position, value),
        _ => entries.push((key, position, value)),
    }
}

impl Engine {
    /// Checks the invariants over what `events` touched, for a test or a
    /// fuzzer to call after every command (the full [`check_invariants`]
    /// walks everything and round-trips a snapshot: once per run is
    /// enough). `events` are what the latest commands emitted: one
    /// command's, or a batch's.
    ///
    /// For every asset the events name, balances plus fees equal deposits
    /// minus withdrawals (the engine keeps those totals; the balances are
    /// summed over every user). For every user, the orders on their list
    /// are theirs, in id order, as many as counted, and lock exactly their
    /// balances' locked amounts. For every order, it is closed and gone, or
    /// indexed and on its level's queue with what its events said. For
    /// every level, its total is the sum of its queue, every order of which
    /// belongs there; every book touched is not crossed. And the events
    /// tell the truth: the last balance and level reported are the state's,
    /// a rejected command emitted nothing else, sequence numbers follow.
    ///
    /// Its cost grows with the events, the touched users' open orders, the
    /// touched levels' queues, and the number of users (for conservation),
    /// never with the orders elsewhere. The matcher never calls it.
    ///
    /// [`check_invariants`]: Engine::check_invariants
    ///
    /// ```
    /// use engine_core::*;
    ///
    /// let mut engine = Engine::new(EngineLimits::default());
    /// let mut events = Vec::new();
    /// let command = Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 };
    /// engine.apply(&StampedCommand { seq: 1, timestamp_ns: 0, command }, &mut events).unwrap();
    /// engine.check_touched(&events).unwrap();
    ///
    /// // After every command of a long run, with the scratch space kept:
    /// let mut scratch = TouchedScratch::default();
    /// engine.check_touched_with(&events, &mut scratch).unwrap();
    /// ```
    pub fn check_touched(&self, events: &[Event]) -> Result<(), InvariantViolation> {
        self.check_touched_with(events, &mut TouchedScratch::default())
    }

    /// [`check_touched`](Engine::check_touched) in space kept by the caller.
    pub fn check_touched_with(
        &self,
        events: &[Event],
        scratch: &mut TouchedScratch,
    ) -> Result<(), InvariantViolation> {
        if let Some(last) = events.last() {
            if last.seq != self.last_seq {
                return Err(InvariantViolation::EventStream {
                    seq: last.seq,
                    why: "the events are not the latest command's",
                });
            }
        }
        scratch.touched.gather(self, events)?;
        let touched = &scratch.touched;
        for &asset in &touched.assets {
            self.check_conserved(asset)?;
        }
        for &market in &touched.markets {
            let book = &self.markets[market.index()].book;
            if let (Some(bid), Some(ask)) = (book.bids.best(), book.asks.best()) {
                if bid.price >= ask.price {
                    return Err(InvariantViolation::Semantic(SnapshotError::BadMarket {
                        market,
                        why: "book is crossed",
                    }));
                }
            }
        }
        for &user in &touched.users {
            self.check_user(user, &mut scratch.needs)?;
        }
        for &((market, sell, price), _, _) in &touched.levels {
            let side = if sell { Side::Sell } else { Side::Buy };
            self.check_level(market, side, price)?;
        }
        for &(order, position, fate) in &touched.orders {
            self.check_order(order, fate, events[position].seq)?;
        }
        // Last, whether the events describe the state they left.
        for &((market, sell, price), position, qty) in &touched.levels {
            let side = if sell { Side::Sell } else { Side::Buy };
            let on_book =
                self.markets[market.index()].book.side(side).level(price).map_or(Lots(0), |l| l.qty);
            if on_book != qty {
                return Err(InvariantViolation::EventStream {
                    seq: events[position].seq,
                    why: "a book level event differs from the book",
                });
            }
        }
        for &((user, asset), position, balance) in &touched.balances {
            if self.balance(user, asset) != balance {
                return Err(InvariantViolation::EventStream {
                    seq: events[position].seq,
                    why: "a balance event differs from the balance",
                });
            }
        }
        Ok(())
    }

    /// Balances of `asset` over every user, plus its fees, equal its
    /// deposits minus withdrawals.
    fn check_conserved(&self, asset: AssetId) -> Result<(), InvariantViolation> {
        let totals = self.totals[asset.index()];
        let Some(outstanding) = totals.deposited.checked_sub(totals.withdrawn) else {
            return Err(InvariantViolation::Semantic(SnapshotError::BadAsset {
                asset,
                why: "impossible deposit and withdrawal totals",
            }));
        };
        let held = self.accounts.iter().fold(u128::from(totals.fees.0), |held, account| {
            let balance = account.balance(asset);
            held + u128::from(balance.available.0) + u128::from(balance.locked.0)
        });
        if held != outstanding {
            return Err(InvariantViolation::Semantic(SnapshotError::NotConserved {
                asset,
                held,
                outstanding,
            }));
        }
        Ok(())
    }

    /// The user's list of open orders holds orders of theirs in id order,
    /// as many as counted, and their locked balances are exactly what those
    /// orders need. (Whether each is indexed and queued is checked for the
    /// orders the events name, and for all by the full check.) `needs` is
    /// scratch space.
    fn check_user(&self, user: UserId, needs: &mut Vec<u128>) -> Result<(), InvariantViolation> {
        let account = &self.accounts[user.index()];
        let bad = |why| InvariantViolation::UserOrders { user, why };
        if account.balances.len() > self.assets.len() {
            return Err(InvariantViolation::Semantic(SnapshotError::BalanceForUnknownAsset {
                user,
                asset_count: self.assets.len(),
            }));
        }
        needs.clear();
        needs.resize(self.assets.len(), 0);
        let mut count = 0u32;
        let mut with_client_id = 0usize;
        let mut previous = NIL;
        let mut last_id = OrderId(0);
        let mut slot = account.orders_head;
        while slot != NIL {
            if count == account.open_orders {
                return Err(bad("more orders listed than counted"));
            }
            let Some(order) = self.orders.get_checked(slot) else {
                return Err(bad("lists a free slot"));
            };
            if order.user != user {
                return Err(bad("lists another user's order"));
            }
            if order.id <= last_id {
                return Err(bad("orders not in id order"));
            }
            if order.user_prev != previous {
                return Err(bad("list links disagree"));
            }
            with_client_id += usize::from(order.client_order_id.is_some());
            let (asset, amount) = self.lock_needed(order)?;
            needs[asset.index()] += u128::from(amount.0);
            if order.ext != NIL {
                let extra = self.extras.get_checked(order.ext).ok_or(bad("an order's extras are gone"))?;
                // An OCO holds for both legs once: counted at its first leg.
                if let Some(list) = self.lists.get_checked(extra.list) {
                    if list.contingency == Contingency::Oco && list.orders[0] == order.id {
                        needs[asset.index()] += u128::from(list.held.0);
                    }
                }
            }
            count += 1;
            last_id = order.id;
            previous = slot;
            slot = order.user_next;
        }
        if count != account.open_orders {
            return Err(bad("open order count differs from the list"));
        }
        if previous != account.orders_tail {
            return Err(bad("list tail differs from its last order"));
        }
        if with_client_id != account.client_ids.len() {
            return Err(bad("client order ids of closed orders kept"));
        }
        for (asset, &need) in needs.iter().enumerate() {
            let asset = AssetId(asset as u32);
            let locked = account.balance(asset).locked.0;
            if u128::from(locked) != need {
                return Err(InvariantViolation::Semantic(SnapshotError::LockedMismatch {
                    user,
                    asset,
                    locked,
                    orders_need: need,
                }));
            }
        }
        Ok(())
    }

    /// What an open order must hold locked on its own (as `holds`
    /// computes it), without assuming the order is sound.
    fn lock_needed(&self, order: &Order) -> Result<(AssetId, Units), InvariantViolation> {
        let bad = |why| InvariantViolation::OrderIndex { order: order.id, why };
        let Some(state) = self.markets.get(order.market.index()) else {
            return Err(bad("rests in a market that does not exist"));
        };
        let rules = &state.market.rules;
        let spend = match order.side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        if order.ext != NIL {
            let extra = self.extras.get_checked(order.ext).ok_or(bad("its extras are gone"))?;
            if let Some(list) = self.lists.get_checked(extra.list) {
                if list.contingency == Contingency::Oco {
                    return Ok((spend, Units(0)));
                }
            }
            match extra.phase {
                Phase::Waiting(waiting) => return Ok((spend, waiting.hold)),
                Phase::Pending(_) => return Ok((spend, Units(0))),
                Phase::Live => {}
            }
        }
        let open = order.open();
        let (asset, amount) = match order.side {
            Side::Buy => (rules.quote, rules.quote_units(order.price, open)),
            Side::Sell => (rules.base, rules.base_units(open)),
        };
        Ok((asset, amount.ok_or(bad("its value does not fit"))?))
    }

    /// The level at `price` is in its place among its neighbours, holds at
    /// least one order, and its total is the sum of its queue, every order
    /// of which belongs there.
    fn check_level(&self, market: MarketId, side: Side, price: Ticks) -> Result<(), InvariantViolation> {
        let book_side = self.markets[market.index()].book.side(side);
        let bad = |why| InvariantViolation::LevelTotal { market, side, why };
        if !book_side.ordered_around(price) {
            return Err(bad("levels out of price order"));
        }
        let Some(level) = book_side.level(price) else { return Ok(()) };
        if level.head == NIL {
            return Err(bad("empty level kept"));
        }
        let mut total = 0u128;
        let mut queued = 0u32;
        let mut slot = level.head;
        while slot != NIL {
            // A queue longer than the slab loops.
            if queued == self.orders.len() {
                return Err(bad("queue loops"));
            }
            let Some(order) = self.orders.get_checked(slot) else {
                return Err(bad("queues a free slot"));
            };
            if order.price != price || order.side != side || order.market != market {
                return Err(bad("order queued at the wrong level"));
            }
            if order.remaining.0 == 0 {
                return Err(bad("order with nothing left rests"));
            }
            if self.index.get(order.id) != Some(slot) {
                return Err(InvariantViolation::OrderIndex {
                    order: order.id,
                    why: "not indexed at its slot",
                });
            }
            total += u128::from(order.remaining.0);
            queued += 1;
            slot = BookSide::next_in_level(&self.orders, slot);
        }
        if total != u128::from(level.qty.0) {
            return Err(bad("level total differs from its orders"));
        }
        Ok(())
    }

    /// A closed order is nowhere; an open one rests where its events put
    /// it: indexed, on its level's queue, with what they said.
    fn check_order(&self, id: OrderId, fate: OrderFate, seq: u64) -> Result<(), InvariantViolation> {
        let bad = |why| InvariantViolation::OrderIndex { order: id, why };
        let differs = |why| InvariantViolation::EventStream { seq, why };
        let OrderFate::Open { user, market, side, price, remaining, may_rest } = fate else {
            if self.index.contains(id) {
                return Err(bad("closed but still indexed"));
            }
            return Ok(());
        };
        let Some(slot) = self.index.get(id) else {
            return Err(bad("neither closed nor resting"));
        };
        let Some(order) = self.orders.get_checked(slot).filter(|order| order.id == id) else {
            return Err(bad("indexed at a slot that holds no such order"));
        };
        if order.user != user || order.market != market || order.side != side {
            return Err(differs("an order rests with another owner, market or side than its events said"));
        }
        if remaining.is_some_and(|remaining| remaining != order.open()) {
            return Err(differs("an order rests with another quantity than its events said"));
        }
        if order.ext != NIL && self.extras.get_checked(order.ext).is_some_and(|e| e.phase != Phase::Live) {
            // Waiting or pending (an OTO's pending market order too): open,
            // on no book.
            return Ok(());
        }
        if !may_rest {
            return Err(bad("a market, IOC or FOK order rests"));
        }
        if price.is_some_and(|price| price != order.price) {
            return Err(differs("an order rests at another price than its events said"));
        }
        let Some(level) = self.markets[market.index()].book.side(side).level(order.price) else {
            return Err(bad("rests at a price with no level"));
        };
        let mut queued = level.head;
        let mut steps = 0u32;
        while queued != slot {
            if queued == NIL || steps == self.orders.len() {
                return Err(bad("not on its level's queue"));
            }
            queued = BookSide::next_in_level(&self.orders, queued);
            steps += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Each invariant broken on purpose, by corrupting the state the way a
    //! bug would, after a command whose events touch it: the cheap check
    //! must name it (and the full check must fail too).

    use super::*;
    use crate::command::{Command, NewOrder, OrderRef, SelfTradePrevention, StampedCommand};
    use crate::event::RejectReason;
    use crate::limits::EngineLimits;
    use crate::market::{MarketRules, MarketStatus};
    use crate::units::{ClientOrderId, Symbol};

    const BTC: AssetId = AssetId(0);
    const USDT: AssetId = AssetId(1);
    const MARKET: MarketId = MarketId(0);

    /// One market, three funded users, and the events of the last command.
    struct Driver {
        engine: Engine,
        events: Vec<Event>,
    }

    impl Driver {
        fn new() -> Driver {
            let mut driver = Driver { engine: Engine::new(EngineLimits::default()), events: Vec::new() };
            for symbol in ["BTC", "USDT"] {
                driver.run(Command::CreateAsset { symbol: Symbol::new(symbol).unwrap(), decimals: 8 });
            }
            let rules = MarketRules {
                base: BTC,
                quote: USDT,
                base_units_per_lot: 10,
                quote_units_per_tick: 1,
                min_qty: Lots(1),
                min_notional: Units(1),
                maker_fee_ppm: 1_000,
                taker_fee_ppm: 2_000,
            };
            driver.run(Command::CreateMarket { rules, status: MarketStatus::Open });
            for user in 0..3 {
                driver.run(Command::CreateUser);
                for asset in [BTC, USDT] {
                    driver.run(Command::Deposit { user: UserId(user), asset, amount: Units(1_000_000) });
                }
            }
            driver
        }

        /// Applies `command`; the cheap and the full check both pass.
        fn run(&mut self, command: Command) -> &[Event] {
            self.events.clear();
            let seq = self.engine.last_seq() + 1;
            self.engine.apply(&StampedCommand { seq, timestamp_ns: seq, command }, &mut self.events).unwrap();
            assert_eq!(self.engine.check_touched(&self.events), Ok(()), "after {command:?}");
            assert_eq!(self.engine.check_invariants(), Ok(()), "after {command:?}");
            &self.events
        }

        fn place(
            &mut self,
            user: u32,
            side: Side,
            price: u64,
            qty: u64,
            stp: SelfTradePrevention,
        ) -> OrderId {
            let order = NewOrder {
                user: UserId(user),
                market: MARKET,
                side,
                kind: OrderKind::Limit { price: Ticks(price), qty: Lots(qty), tif: TimeInForce::Gtc },
                client_order_id: ClientOrderId::new(&format!("u{user}-{price}-{qty}")).ok(),
                stp,
            };
            let events = self.run(Command::PlaceOrder(order));
            match events[0].kind {
                EventKind::OrderAccepted { order, .. } => order,
                other => panic!("{order:?} was not accepted: {other:?}"),
            }
        }

        fn rest(&mut self, user: u32, side: Side, price: u64, qty: u64) -> OrderId {
            self.place(user, side, price, qty, SelfTradePrevention::CancelTaker)
        }

        fn slot(&self, order: OrderId) -> u32 {
            self.engine.index.get(order).expect("the order rests")
        }

        /// What the cheap check says of the last command's events, once the
        /// full check agreed that something is wrong.
        fn broken(&self) -> InvariantViolation {
            assert!(self.engine.check_invariants().is_err(), "the full check finds it too");
            self.engine.check_touched(&self.events).expect_err("the cheap check finds it")
        }
    }

    #[test]
    fn a_sound_engine_passes_after_every_kind_of_command() {
        let mut d = Driver::new();
        let client = |text| OrderRef::Client(ClientOrderId::new(text).unwrap());
        let amend = |order, new_qty, new_price| {
            Command::Amend(crate::command::Amend { user: UserId(1), order, new_qty, new_price })
        };
        d.rest(0, Side::Buy, 100, 5);
        d.rest(1, Side::Buy, 100, 3);
        d.rest(1, Side::Sell, 103, 4);
        // Fills one maker and part of the next at the same level.
        d.place(2, Side::Sell, 100, 6, SelfTradePrevention::CancelTaker);
        // Amends: down in place, then to a new price (the back of its queue).
        d.run(amend(client("u1-103-4"), Some(Lots(2)), None));
        d.run(amend(client("u1-103-4"), None, Some(Ticks(102))));
        // Self-trade prevention: the own maker at 101 is cancelled, the
        // order trades at 102 and rests; then a sell meets that bid and
        // both are cancelled.
        d.rest(0, Side::Sell, 101, 2);
        d.place(0, Side::Buy, 102, 3, SelfTradePrevention::CancelMaker);
        d.place(0, Side::Sell, 100, 5, SelfTradePrevention::CancelBoth);
        d.run(Command::CancelOrder { user: UserId(1), order: client("u1-100-3") });
        d.rest(1, Side::Buy, 98, 1);
        d.rest(1, Side::Sell, 104, 1);
        d.run(Command::SetMarketStatus { market: MARKET, status: MarketStatus::Halted });
        let refused = d.run(Command::CancelAll { user: UserId(1), market: Some(MARKET) }).to_vec();
        assert!(matches!(
            refused[0].kind,
            EventKind::Rejected { reason: RejectReason::MarketHalted { .. }, .. }
        ));
        d.run(Command::SetMarketStatus { market: MARKET, status: MarketStatus::Open });
        let cancelled = d.run(Command::CancelAll { user: UserId(1), market: None }).to_vec();
        assert!(matches!(cancelled.last().unwrap().kind, EventKind::CancelledAll { count: 2, .. }));
        d.run(Command::Withdraw { user: UserId(2), asset: USDT, amount: Units(10) });
        assert_eq!(d.engine.open_order_count(), 0);
    }

    #[test]
    fn finds_an_asset_not_conserved() {
        let mut d = Driver::new();
        d.rest(0, Side::Sell, 100, 5);
        d.place(1, Side::Buy, 100, 5, SelfTradePrevention::CancelTaker);
        // Quote appears in the balance of a user the trade did not touch.
        d.engine.accounts[2].balance_mut(USDT).available.0 += 1;
        assert!(matches!(
            d.broken(),
            InvariantViolation::Semantic(SnapshotError::NotConserved { asset: USDT, .. })
        ));
    }

    #[test]
    fn finds_fees_not_conserved() {
        let mut d = Driver::new();
        d.rest(0, Side::Sell, 100, 5);
        d.place(1, Side::Buy, 100, 5, SelfTradePrevention::CancelTaker);
        d.engine.totals[BTC.index()].fees.0 += 1;
        assert!(matches!(
            d.broken(),
            InvariantViolation::Semantic(SnapshotError::NotConserved { asset: BTC, .. })
        ));
    }

    #[test]
    fn finds_a_lock_that_differs_from_the_orders() {
        let mut d = Driver::new();
        d.rest(0, Side::Buy, 100, 5);
        // Conserved, but one unit more locked than the order needs.
        d.engine.accounts[0].balance_mut(USDT).lock(Units(1));
        assert_eq!(
            d.broken(),
            InvariantViolation::Semantic(SnapshotError::LockedMismatch {
                user: UserId(0),
                asset: USDT,
                locked: 501,
                orders_need: 500
            })
        );
    }

    #[test]
    fn finds_an_order_off_its_level() {
        let mut d = Driver::new();
        d.rest(1, Side::Buy, 100, 3);
        let order = d.rest(0, Side::Buy, 100, 5);
        // Dequeued but still indexed, listed and locked for.
        let slot = d.slot(order);
        d.engine.markets[0].book.side_mut(Side::Buy).unlink(&mut d.engine.orders, slot);
        assert_eq!(d.broken(), InvariantViolation::OrderIndex { order, why: "not on its level's queue" });
    }

    #[test]
    fn finds_a_crossed_book() {
        let mut d = Driver::new();
        d.rest(0, Side::Buy, 100, 5);
        let ask = d.rest(1, Side::Sell, 105, 5);
        // The ask moves below the bid (a sell's lock does not depend on its price).
        let slot = d.slot(ask);
        let asks = d.engine.markets[0].book.side_mut(Side::Sell);
        asks.unlink(&mut d.engine.orders, slot);
        d.engine.orders.get_mut(slot).price = Ticks(99);
        d.engine.markets[0].book.side_mut(Side::Sell).push_back(&mut d.engine.orders, slot);
        assert_eq!(
            d.broken(),
            InvariantViolation::Semantic(SnapshotError::BadMarket { market: MARKET, why: "book is crossed" })
        );
    }

    #[test]
    fn finds_a_level_total_that_differs_from_its_queue() {
        let mut d = Driver::new();
        d.rest(0, Side::Sell, 100, 5);
        d.rest(1, Side::Sell, 100, 2);
        d.engine.markets[0].book.side_mut(Side::Sell).level_mut(Ticks(100)).unwrap().qty.0 += 1;
        assert_eq!(
            d.broken(),
            InvariantViolation::LevelTotal {
                market: MARKET,
                side: Side::Sell,
                why: "level total differs from its orders"
            }
        );
    }

    #[test]
    fn finds_a_closed_order_still_indexed() {
        let mut d = Driver::new();
        let kept = d.rest(1, Side::Buy, 99, 1);
        let order = d.rest(0, Side::Buy, 100, 5);
        d.run(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(order) });
        let slot = d.slot(kept);
        d.engine.index.insert(order, slot);
        assert_eq!(d.broken(), InvariantViolation::OrderIndex { order, why: "closed but still indexed" });
    }

    #[test]
    fn finds_an_open_order_count_that_differs_from_the_list() {
        let mut d = Driver::new();
        d.rest(0, Side::Buy, 100, 5);
        d.engine.accounts[0].open_orders += 1;
        assert_eq!(
            d.broken(),
            InvariantViolation::UserOrders { user: UserId(0), why: "open order count differs from the list" }
        );
    }

    #[test]
    fn finds_an_order_that_kept_what_a_trade_took() {
        let mut d = Driver::new();
        let maker = d.rest(0, Side::Sell, 100, 5);
        d.place(1, Side::Buy, 100, 2, SelfTradePrevention::CancelTaker);
        // The trade left 3; the order still says 5, with the level and the
        // lock to match, so only the events tell.
        let slot = d.slot(maker);
        d.engine.orders.get_mut(slot).remaining = Lots(5);
        d.engine.markets[0].book.side_mut(Side::Sell).level_mut(Ticks(100)).unwrap().qty = Lots(5);
        d.engine.accounts[0].balance_mut(BTC).lock(Units(20));
        assert_eq!(d.engine.check_invariants(), Ok(()), "the state agrees with itself");
        assert!(matches!(
            d.engine.check_touched(&d.events),
            Err(InvariantViolation::EventStream { why, .. }) if why.contains("quantity")
        ));
    }

    #[test]
    fn finds_events_that_differ_from_the_state() {
        let mut d = Driver::new();
        d.run(Command::Deposit { user: UserId(0), asset: BTC, amount: Units(7) });
        let mut lying = d.events.clone();
        for event in &mut lying {
            if let EventKind::Balance { available, .. } = &mut event.kind {
                available.0 += 1;
            }
        }
        assert_eq!(
            d.engine.check_touched(&lying),
            Err(InvariantViolation::EventStream {
                seq: d.engine.last_seq(),
                why: "a balance event differs from the balance"
            })
        );

        d.run(Command::Withdraw { user: UserId(0), asset: BTC, amount: Units(u64::MAX) });
        let mut half_applied = d.events.clone();
        half_applied
            .insert(0, Event { seq: d.engine.last_seq(), kind: EventKind::UserCreated { user: UserId(0) } });
        assert_eq!(
            d.engine.check_touched(&half_applied),
            Err(InvariantViolation::EventStream {
                seq: d.engine.last_seq(),
                why: "a rejected command emitted other events"
            })
        );
        let stale: Vec<Event> = d.events.iter().map(|event| Event { seq: event.seq - 1, ..*event }).collect();
        assert!(matches!(
            d.engine.check_touched(&stale),
            Err(InvariantViolation::EventStream { why: "the events are not the latest command's", .. })
        ));
    }

    #[test]
    fn looks_only_at_what_the_events_touched() {
        let mut d = Driver::new();
        d.rest(0, Side::Buy, 99, 5);
        let order = d.rest(1, Side::Buy, 100, 5);
        d.engine.markets[0].book.side_mut(Side::Buy).level_mut(Ticks(99)).unwrap().qty.0 += 1;
        // An amend at 100 touches neither the level at 99 nor user 0.
        d.events.clear();
        let amend = Command::Amend(crate::command::Amend {
            user: UserId(1),
            order: OrderRef::Id(order),
            new_qty: Some(Lots(4)),
            new_price: None,
        });
        let seq = d.engine.last_seq() + 1;
        d.engine.apply(&StampedCommand { seq, timestamp_ns: seq, command: amend }, &mut d.events).unwrap();
        assert_eq!(d.engine.check_touched(&d.events), Ok(()));
        assert!(d.engine.check_invariants().is_err());
    }
}
