//! Orders' lives: checking a new order, matching it, resting what is left,
//! icebergs' refills, cancels and amends. Waiting orders and order lists
//! are in `contingent`; both work on the same slab of open orders.

use crate::accounts::Account;
use crate::book::{BookSide, Order, NIL};
use crate::command::{Amend, NewOrder, OrderKind, OrderRef, SelfTradePrevention, TimeInForce, Trigger};
use crate::engine::{Engine, MarketState};
use crate::event::{emit_balance, DoneReason, Emitter, EventKind, RejectReason};
use crate::extras::{OrderExtra, Phase, Then, Waiting, NONE};
use crate::market::{fee, MarketRules, MarketStatus};
use crate::units::{AssetId, ClientOrderId, Lots, MarketId, OrderId, Side, Ticks, TradeId, Units, UserId};

/// The most parts an iceberg may show one after another (Binance's
/// `ICEBERG_PARTS` filter).
pub const ICEBERG_PARTS_MAX: u64 = 100;
/// The largest trailing delta, in basis points (Binance's default
/// `TRAILING_DELTA` filter maximum).
pub const TRAILING_BIPS_MAX: u16 = 2_000;

/// An order while it matches: new, fired, released, or re-entering after
/// an amend.
pub(crate) struct Taker {
    pub order: OrderId,
    /// Its slot when it is already an open order; `NIL` for a new order,
    /// which gets a slot only if it rests.
    pub slot: u32,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    /// `None` for market orders.
    pub limit: Option<Ticks>,
    /// What it still wants; `u64::MAX` for a market buy by quote.
    pub remaining: Lots,
    pub filled: Lots,
    /// What a market buy may still spend.
    pub quote_budget: Option<Units>,
    /// A market order by quote amount, which has no quantity of its own.
    pub by_quote: bool,
    /// The price of its last fill.
    pub last_price: Option<Ticks>,
    pub stp: SelfTradePrevention,
    pub tif: TimeInForce,
    /// An iceberg's largest shown part; 0 for other orders.
    pub visible: Lots,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp_ns: u64,
}

impl Taker {
    /// Whether what is left of a quote budget cannot pay for one more lot
    /// at the price the order last traded at (never, before its first fill).
    fn quote_spent(&self, rules: &MarketRules) -> bool {
        match (self.quote_budget, self.last_price) {
            (Some(budget), Some(price)) => rules.lots_affordable(price, budget).0 == 0,
            _ => false,
        }
    }

    fn may_rest(&self) -> bool {
        matches!(self.tif, TimeInForce::Gtc | TimeInForce::PostOnly)
    }
}

/// Why matching stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchEnd {
    /// The taker wants nothing more.
    Complete,
    /// The opposite side is empty or no longer crosses the limit.
    NoCross,
    /// The quote budget cannot pay for one more lot.
    BudgetSpent,
    /// Self-trade prevention cancelled the taker.
    SelfTrade,
}

/// How an order came out of entering the market.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entered {
    Rested(u32),
    Done(DoneReason),
}

/// How much of a new order's checking applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Everything: a new order.
    Full,
    /// Sizes and shapes only, no funds, no look at the market: an OTO's
    /// pending order at placement.
    Static,
    /// Everything but the immediate-trigger refusal (a released pending
    /// stop whose condition holds fires at once instead).
    Released,
}

/// A new order checked against its market's rules (and, but for
/// [`Check::Static`], the user's funds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checked {
    pub limit: Option<Ticks>,
    pub qty: Lots,
    pub quote_budget: Option<Units>,
    pub tif: TimeInForce,
    pub by_quote: bool,
    pub visible: Lots,
    pub waiting: Option<Waiting>,
    /// What it locks while it rests or waits, in the asset it spends.
    pub need: Units,
}

impl Engine {
    pub(crate) fn next_order_id(&mut self) -> OrderId {
        let order = OrderId(self.next_order_id);
        self.next_order_id += 1;
        order
    }

    /// Checks `kind` for an order on `side` of `state`'s market by a user
    /// with `available` of the asset it spends.
    pub(crate) fn check_kind(
        state: &MarketState,
        side: Side,
        kind: OrderKind,
        available: Units,
        check: Check,
    ) -> Result<Checked, RejectReason> {
        let rules = state.market.rules;
        let spend_asset = match side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        let funded = |needed: Units| {
            if check != Check::Static && available < needed {
                Err(RejectReason::InsufficientFunds { asset: spend_asset, needed, available })
            } else {
                Ok(())
            }
        };
        let limit_need = |price: Ticks, qty: Lots| -> Result<Units, RejectReason> {
            let notional = check_order_size(&rules, price, qty)?;
            match side {
                Side::Buy => Ok(notional),
                Side::Sell => rules.base_units(qty).ok_or(RejectReason::Overflow),
            }
        };
        let plain = |limit, qty, tif, need| Checked {
            limit,
            qty,
            quote_budget: None,
            tif,
            by_quote: false,
            visible: Lots(0),
            waiting: None,
            need,
        };
        match kind {
            OrderKind::Limit { price, qty, tif } => {
                let need = limit_need(price, qty)?;
                funded(need)?;
                Ok(plain(Some(price), qty, tif, need))
            }
            OrderKind::Iceberg { price, qty, visible, tif } => {
                let need = limit_need(price, qty)?;
                if !matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
                    return Err(RejectReason::TimeInForceNotAllowed);
                }
                check_iceberg(&rules, qty, visible)?;
                funded(need)?;
                Ok(Checked { visible, ..plain(Some(price), qty, tif, need) })
            }
            OrderKind::Market { qty } => {
                check_market_qty(&rules, qty)?;
                let base = rules.base_units(qty).ok_or(RejectReason::Overflow)?;
                let budget = match side {
                    Side::Sell => {
                        funded(base)?;
                        None
                    }
                    Side::Buy => {
                        funded(Units(1))?;
                        // A market buy by quantity spends what it needs, at
                        // most everything available.
                        Some(available)
                    }
                };
                Ok(Checked { quote_budget: budget, ..plain(None, qty, TimeInForce::Ioc, Units(0)) })
            }
            OrderKind::MarketByQuote { amount } => {
                if amount.0 == 0 {
                    return Err(RejectReason::ZeroAmount);
                }
                if amount < rules.min_notional {
                    return Err(RejectReason::NotionalBelowMinimum {
                        notional: amount,
                        min: rules.min_notional,
                    });
                }
                let lots = match side {
                    Side::Buy => {
                        funded(amount)?;
                        // The budget bounds a buy; its quantity is unbounded.
                        Lots(u64::MAX)
                    }
                    // A sell stops at the quote amount or when the seller's
                    // available base runs out, whichever comes first.
                    Side::Sell => {
                        let lots = available.0 / rules.base_units_per_lot;
                        if lots == 0 && check != Check::Static {
                            return Err(RejectReason::InsufficientFunds {
                                asset: spend_asset,
                                needed: Units(rules.base_units_per_lot),
                                available,
                            });
                        }
                        Lots(lots)
                    }
                };
                Ok(Checked {
                    quote_budget: Some(amount),
                    by_quote: true,
                    ..plain(None, lots, TimeInForce::Ioc, Units(0))
                })
            }
            OrderKind::StopMarket { trigger, qty } => {
                check_market_qty(&rules, qty)?;
                let base = rules.base_units(qty).ok_or(RejectReason::Overflow)?;
                check_trigger(state, side, trigger, check)?;
                let hold = match side {
                    Side::Sell => base,
                    Side::Buy => {
                        let reference = match (trigger.stop, state.last_price) {
                            (Some(stop), _) => Some(stop),
                            (None, last) => last,
                        };
                        match reference {
                            Some(price) => rules.quote_units(price, qty).ok_or(RejectReason::Overflow)?,
                            // Priced when it is released.
                            None if check == Check::Static => Units(0),
                            None => return Err(RejectReason::NoReferencePrice),
                        }
                    }
                };
                funded(hold)?;
                let waiting = waiting(state, side, trigger, Then::Market, hold);
                Ok(Checked { waiting: Some(waiting), ..plain(None, qty, TimeInForce::Ioc, hold) })
            }
            OrderKind::StopLimit { trigger, price, qty, tif, visible } => {
                let need = limit_need(price, qty)?;
                if tif == TimeInForce::PostOnly || (visible.0 > 0 && tif != TimeInForce::Gtc) {
                    return Err(RejectReason::TimeInForceNotAllowed);
                }
                if visible.0 > 0 {
                    check_iceberg(&rules, qty, visible)?;
                }
                check_trigger(state, side, trigger, check)?;
                funded(need)?;
                let waiting = waiting(state, side, trigger, Then::Limit(tif), need);
                Ok(Checked { visible, waiting: Some(waiting), ..plain(Some(price), qty, tif, need) })
            }
        }
    }

    pub(crate) fn place(
        &mut self,
        new: &NewOrder,
        ts: u64,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let account = self.accounts.get(new.user.index()).ok_or(RejectReason::UnknownUser(new.user))?;
        let state = self.markets.get(new.market.index()).ok_or(RejectReason::UnknownMarket(new.market))?;
        let market = state.market;
        if market.status != MarketStatus::Open {
            return Err(RejectReason::MarketNotOpen { market: market.id, status: market.status });
        }
        let rules = market.rules;
        let (spend_asset, get_asset) = match new.side {
            Side::Buy => (rules.quote, rules.base),
            Side::Sell => (rules.base, rules.quote),
        };
        let available = account.balance(spend_asset).available;
        let checked = Engine::check_kind(state, new.side, new.kind, available, Check::Full)?;
        if let Some(client_order_id) = new.client_order_id {
            if account.find_client_id(&client_order_id).is_some() {
                return Err(RejectReason::DuplicateClientOrderId(client_order_id));
            }
        }
        let waits = checked.waiting.is_some();
        if waits || matches!(checked.tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
            self.check_room(account, 1)?;
        }
        if !waits && checked.tif == TimeInForce::PostOnly {
            if let Some(price) = checked.limit {
                if state.book.side(new.side.opposite()).crosses(price) {
                    return Err(RejectReason::PostOnlyWouldTake);
                }
            }
        }

        // Validated: from here on the command is accepted and cannot fail.
        let order = self.next_order_id();
        emitter.emit(EventKind::OrderAccepted {
            order,
            user: new.user,
            market: market.id,
            side: new.side,
            kind: new.kind,
            client_order_id: new.client_order_id,
            stp: new.stp,
            timestamp_ns: ts,
        });
        match checked.waiting {
            Some(waiting) => {
                let slot = self.open_slot(
                    Order::new(
                        order,
                        new.user,
                        market.id,
                        new.side,
                        checked.limit.unwrap_or_default(),
                        checked.qty,
                        Lots(0),
                        false,
                        new.stp,
                        new.client_order_id,
                        ts,
                    ),
                    OrderExtra {
                        order,
                        visible: checked.visible,
                        phase: Phase::Waiting(waiting),
                        list: NONE,
                    },
                );
                self.start_waiting(slot, emitter);
            }
            None => {
                let taker = self.taker(
                    order,
                    NIL,
                    new.user,
                    market.id,
                    new.side,
                    new.stp,
                    &checked,
                    new.client_order_id,
                    ts,
                );
                self.enter(taker, emitter);
            }
        }
        self.settle(market.id, ts, emitter);
        let account = &self.accounts[new.user.index()];
        emit_balance(emitter, new.user, spend_asset, account.balance(spend_asset));
        emit_balance(emitter, new.user, get_asset, account.balance(get_asset));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn taker(
        &self,
        order: OrderId,
        slot: u32,
        user: UserId,
        market: MarketId,
        side: Side,
        stp: SelfTradePrevention,
        checked: &Checked,
        client_order_id: Option<ClientOrderId>,
        ts: u64,
    ) -> Taker {
        Taker {
            order,
            slot,
            user,
            market,
            side,
            limit: checked.limit,
            remaining: checked.qty,
            filled: Lots(0),
            quote_budget: checked.quote_budget,
            by_quote: checked.by_quote,
            last_price: None,
            stp,
            tif: checked.tif,
            visible: checked.visible,
            client_order_id,
            timestamp_ns: ts,
        }
    }

    /// Stores a new open order with extras, indexed and listed under its
    /// user, and returns its slot.
    pub(crate) fn open_slot(&mut self, order: Order, extra: OrderExtra) -> u32 {
        let slot = self.open_slot_unlisted(order, extra);
        self.attach_to_user(slot);
        slot
    }

    /// [`open_slot`](Engine::open_slot) without listing it under its user
    /// yet (which must follow, in order id order).
    pub(crate) fn open_slot_unlisted(&mut self, mut order: Order, extra: OrderExtra) -> u32 {
        let id = order.id;
        order.ext = self.extras.insert(extra);
        let slot = self.orders.insert(order);
        self.index.insert(id, slot);
        slot
    }

    /// Whether the user and the engine have room for `count` more open orders.
    pub(crate) fn check_room(&self, account: &Account, count: u32) -> Result<(), RejectReason> {
        if account.open_orders + count > self.limits.open_orders_per_user_max {
            return Err(RejectReason::OpenOrderLimit { limit: self.limits.open_orders_per_user_max });
        }
        if self.orders.len() + count > self.limits.orders_max {
            return Err(RejectReason::EngineOrderCapacity { limit: self.limits.orders_max });
        }
        Ok(())
    }

    /// Matches `taker` and rests what may rest, or closes it. Funds were
    /// checked; a taker with a slot is an open order already (fired,
    /// released or amended), listed and indexed, with nothing locked.
    pub(crate) fn enter(&mut self, mut taker: Taker, emitter: &mut Emitter) -> Entered {
        let rules = self.markets[taker.market.index()].market.rules;
        let fillable = match (taker.tif, taker.limit) {
            (TimeInForce::Fok, Some(price)) => self.fok_fillable(&taker, price),
            _ => true,
        };
        let end = if fillable { self.match_taker(&mut taker, emitter) } else { MatchEnd::NoCross };
        if taker.may_rest() && end != MatchEnd::SelfTrade && taker.remaining.0 > 0 {
            let price = taker.limit.expect("only limit orders rest");
            let slot = if taker.slot == NIL {
                let slot = self.orders.insert(Order::new(
                    taker.order,
                    taker.user,
                    taker.market,
                    taker.side,
                    price,
                    taker.remaining,
                    taker.filled,
                    taker.tif == TimeInForce::PostOnly,
                    taker.stp,
                    taker.client_order_id,
                    taker.timestamp_ns,
                ));
                self.index.insert(taker.order, slot);
                self.attach_to_user(slot);
                slot
            } else {
                let entry = self.orders.get_mut(taker.slot);
                entry.price = price;
                entry.remaining = taker.remaining;
                entry.hidden = Lots(0);
                entry.filled = taker.filled;
                entry.post_only = taker.tif == TimeInForce::PostOnly;
                entry.timestamp_ns = taker.timestamp_ns;
                taker.slot
            };
            if taker.visible.0 > 0 {
                let ext = self.orders.get(slot).ext;
                if ext == NIL {
                    let ext = self.extras.insert(OrderExtra {
                        order: taker.order,
                        visible: taker.visible,
                        phase: Phase::Live,
                        list: NONE,
                    });
                    self.orders.get_mut(slot).ext = ext;
                } else {
                    let extra = self.extras.get_mut(ext);
                    extra.visible = taker.visible;
                    extra.phase = Phase::Live;
                }
            }
            self.rest(slot, emitter);
            return Entered::Rested(slot);
        }
        let reason = if taker.by_quote {
            // An order by quote amount is filled when its amount is used
            // up, however the matching ended.
            match end {
                MatchEnd::SelfTrade => DoneReason::SelfTrade,
                MatchEnd::BudgetSpent => DoneReason::Filled,
                _ if taker.quote_spent(&rules) => DoneReason::Filled,
                // A sell that sold all the base its owner had.
                MatchEnd::Complete => DoneReason::FundsExhausted,
                MatchEnd::NoCross => DoneReason::Expired,
            }
        } else {
            match end {
                MatchEnd::Complete => DoneReason::Filled,
                MatchEnd::SelfTrade => DoneReason::SelfTrade,
                MatchEnd::BudgetSpent => DoneReason::FundsExhausted,
                MatchEnd::NoCross => DoneReason::Expired,
            }
        };
        if taker.slot != NIL {
            debug_assert!(self.list_of(taker.slot) == NONE, "a list member enters alone");
            self.retire(taker.slot);
        }
        emitter.emit(EventKind::OrderDone {
            order: taker.order,
            user: taker.user,
            market: taker.market,
            reason,
            filled: taker.filled,
            cancelled: if taker.by_quote { Lots(0) } else { taker.remaining },
        });
        Entered::Done(reason)
    }

    /// Whether a fill-or-kill taker would fill completely, walking the book
    /// exactly as matching will: resting orders of the same user are
    /// skipped or stop the walk according to its STP mode, and icebergs'
    /// hidden lots count (they would refill and trade).
    fn fok_fillable(&self, taker: &Taker, limit: Ticks) -> bool {
        let opposite = self.markets[taker.market.index()].book.side(taker.side.opposite());
        let user_has_orders = self.accounts[taker.user.index()].open_orders > 0;
        let walk_levels_only = !user_has_orders || taker.stp == SelfTradePrevention::Allow;
        if walk_levels_only {
            // Shown lots alone may do; only when they do not are hidden ones counted.
            let mut wanted = taker.remaining.0;
            for level in opposite.levels() {
                if !limit_crosses(taker.side, limit, level.price) {
                    break;
                }
                wanted = wanted.saturating_sub(level.qty.0);
                if wanted == 0 {
                    return true;
                }
            }
        }
        let mut wanted = taker.remaining.0;
        for level in opposite.levels() {
            if !limit_crosses(taker.side, limit, level.price) {
                return false;
            }
            // Icebergs' hidden lots refill at the back of this level: they
            // count only once the whole queue is passed, never beyond an
            // order of the taker's own that stops it.
            let mut hidden = 0u64;
            let mut slot = level.head;
            while slot != NIL {
                let maker = self.orders.get(slot);
                if maker.user == taker.user && taker.stp != SelfTradePrevention::Allow {
                    if taker.stp != SelfTradePrevention::CancelMaker {
                        return false;
                    }
                } else {
                    wanted = wanted.saturating_sub(maker.remaining.0);
                    if wanted == 0 {
                        return true;
                    }
                    hidden = hidden.saturating_add(maker.hidden.0);
                }
                slot = BookSide::next_in_level(&self.orders, slot);
            }
            wanted = wanted.saturating_sub(hidden);
            if wanted == 0 {
                return true;
            }
        }
        false
    }

    /// Trades `taker` against the opposite side until it is satisfied, the
    /// book stops crossing, its budget runs out, or self-trade prevention
    /// stops it.
    fn match_taker(&mut self, taker: &mut Taker, emitter: &mut Emitter) -> MatchEnd {
        let market = taker.market.index();
        let rules = self.markets[market].market.rules;
        let maker_side = taker.side.opposite();
        loop {
            if taker.remaining.0 == 0 {
                return MatchEnd::Complete;
            }
            let Some(level) = self.markets[market].book.side(maker_side).best() else {
                return MatchEnd::NoCross;
            };
            let (price, slot) = (level.price, level.head);
            if let Some(limit) = taker.limit {
                if !limit_crosses(taker.side, limit, price) {
                    return MatchEnd::NoCross;
                }
            }
            let maker = *self.orders.get(slot);
            if maker.user == taker.user {
                match taker.stp {
                    SelfTradePrevention::Allow => {}
                    SelfTradePrevention::CancelTaker => return MatchEnd::SelfTrade,
                    SelfTradePrevention::CancelMaker => {
                        self.cancel_order(slot, DoneReason::SelfTrade, emitter);
                        continue;
                    }
                    SelfTradePrevention::CancelBoth => {
                        self.cancel_order(slot, DoneReason::SelfTrade, emitter);
                        return MatchEnd::SelfTrade;
                    }
                }
            }
            let mut qty = taker.remaining.min(maker.remaining);
            if let Some(budget) = taker.quote_budget {
                qty = qty.min(rules.lots_affordable(price, budget));
                if qty.0 == 0 {
                    return MatchEnd::BudgetSpent;
                }
            }
            self.fill(taker, &rules, slot, price, qty, emitter);
        }
    }

    /// Executes one trade of `qty` lots at `price` between `taker` and the
    /// resting order in `slot`.
    fn fill(
        &mut self,
        taker: &mut Taker,
        rules: &MarketRules,
        slot: u32,
        price: Ticks,
        qty: Lots,
        emitter: &mut Emitter,
    ) {
        // Both fit: the maker's base and quote amounts for its whole open
        // quantity were checked when it rested, and qty is at most that.
        let base = rules.base_units(qty).expect("checked when the maker rested");
        let quote = rules.quote_units(price, qty).expect("checked when the maker rested");
        let maker_side = taker.side.opposite();
        let (maker_fee, taker_fee) = match maker_side {
            Side::Buy => (fee(base, rules.maker_fee_ppm), fee(quote, rules.taker_fee_ppm)),
            Side::Sell => (fee(quote, rules.maker_fee_ppm), fee(base, rules.taker_fee_ppm)),
        };
        let (maker_id, maker_user, maker_remaining, maker_hidden, maker_ext) = {
            let maker = self.orders.get_mut(slot);
            maker.remaining.0 -= qty.0;
            maker.filled.0 += qty.0;
            (maker.id, maker.user, maker.remaining, maker.hidden, maker.ext)
        };
        let maker_open = Lots(maker_remaining.0 + maker_hidden.0);

        // The maker spends from its lock; the taker spends from available
        // (its funds were checked before matching began).
        {
            let account = &mut self.accounts[maker_user.index()];
            match maker_side {
                Side::Buy => {
                    account.balance_mut(rules.quote).debit_locked(quote);
                    account.balance_mut(rules.base).credit_available(Units(base.0 - maker_fee.0));
                }
                Side::Sell => {
                    account.balance_mut(rules.base).debit_locked(base);
                    account.balance_mut(rules.quote).credit_available(Units(quote.0 - maker_fee.0));
                }
            }
        }
        {
            let account = &mut self.accounts[taker.user.index()];
            match taker.side {
                Side::Buy => {
                    account.balance_mut(rules.quote).debit_available(quote);
                    account.balance_mut(rules.base).credit_available(Units(base.0 - taker_fee.0));
                }
                Side::Sell => {
                    account.balance_mut(rules.base).debit_available(base);
                    account.balance_mut(rules.quote).credit_available(Units(quote.0 - taker_fee.0));
                }
            }
        }
        let (buyer_fee, seller_fee) = match maker_side {
            Side::Buy => (maker_fee, taker_fee),
            Side::Sell => (taker_fee, maker_fee),
        };
        self.totals[rules.base.index()].fees.0 += buyer_fee.0;
        self.totals[rules.quote.index()].fees.0 += seller_fee.0;

        taker.remaining.0 -= qty.0;
        taker.filled.0 += qty.0;
        if let Some(budget) = &mut taker.quote_budget {
            budget.0 -= quote.0;
        }
        taker.last_price = Some(price);
        let trade = TradeId(self.next_trade_id);
        self.next_trade_id += 1;
        emitter.emit(EventKind::Trade {
            trade,
            market: taker.market,
            price,
            qty,
            taker_side: taker.side,
            maker_order: maker_id,
            maker_user,
            maker_remaining: maker_open,
            taker_order: taker.order,
            taker_user: taker.user,
            taker_remaining: if taker.by_quote { Lots(0) } else { taker.remaining },
            maker_fee,
            taker_fee,
            timestamp_ns: taker.timestamp_ns,
        });
        self.scratch.note_trade(price);

        let book = &mut self.markets[taker.market.index()].book;
        let mut level_qty = book.side_mut(maker_side).reduce(price, qty);
        if maker_remaining.0 == 0 {
            // Nothing is left to subtract: this only dequeues it.
            level_qty = book.side_mut(maker_side).unlink(&mut self.orders, slot);
            if maker_hidden.0 > 0 {
                // An iceberg's next part goes to the back of the queue.
                let visible = self.extras.get(maker_ext).visible;
                let shown = Lots(visible.0.min(maker_hidden.0));
                let entry = self.orders.get_mut(slot);
                entry.remaining = shown;
                entry.hidden.0 -= shown.0;
                let hidden = entry.hidden;
                level_qty = self.markets[taker.market.index()]
                    .book
                    .side_mut(maker_side)
                    .push_back(&mut self.orders, slot);
                emitter.emit(EventKind::OrderRefilled {
                    order: maker_id,
                    user: maker_user,
                    market: taker.market,
                    side: maker_side,
                    price,
                    shown,
                    hidden,
                });
            }
        }
        emitter.emit(EventKind::BookLevel { market: taker.market, side: maker_side, price, qty: level_qty });
        if maker_ext != NIL && self.extras.get(maker_ext).list != NONE {
            let spent = match maker_side {
                Side::Buy => quote,
                Side::Sell => base,
            };
            self.list_leg_traded(slot, spent, emitter);
        }
        if maker_open.0 == 0 {
            let maker = self.retire(slot);
            emitter.emit(EventKind::OrderDone {
                order: maker.id,
                user: maker.user,
                market: maker.market,
                reason: DoneReason::Filled,
                filled: maker.filled,
                cancelled: Lots(0),
            });
        }
        let account = &self.accounts[maker_user.index()];
        emit_balance(emitter, maker_user, rules.base, account.balance(rules.base));
        emit_balance(emitter, maker_user, rules.quote, account.balance(rules.quote));
    }

    /// Locks what the order in `slot` needs and queues it on its book; an
    /// iceberg (its `remaining` is then its whole open quantity) shows its
    /// first part.
    pub(crate) fn rest(&mut self, slot: u32, emitter: &mut Emitter) {
        let ext = self.orders.get(slot).ext;
        if ext != NIL {
            let visible = self.extras.get(ext).visible;
            if visible.0 > 0 {
                let entry = self.orders.get_mut(slot);
                let open = entry.open();
                entry.remaining = Lots(visible.0.min(open.0));
                entry.hidden = Lots(open.0 - entry.remaining.0);
            }
        }
        let (asset, amount) = self.holds(slot);
        let order = *self.orders.get(slot);
        self.accounts[order.user.index()].balance_mut(asset).lock(amount);
        let book = &mut self.markets[order.market.index()].book;
        let qty = book.side_mut(order.side).push_back(&mut self.orders, slot);
        emitter.emit(EventKind::BookLevel {
            market: order.market,
            side: order.side,
            price: order.price,
            qty,
        });
    }

    /// The asset and amount the open order in `slot` holds locked on its
    /// own: on the book, what its open quantity can spend; waiting, its
    /// hold; pending, nothing; a leg of an OCO, nothing (the list holds
    /// for both legs).
    pub(crate) fn holds(&self, slot: u32) -> (AssetId, Units) {
        let order = self.orders.get(slot);
        let rules = &self.markets[order.market.index()].market.rules;
        let asset = match order.side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        if order.ext != NIL {
            let extra = self.extras.get(order.ext);
            if extra.list != NONE && self.lists.get(extra.list).contingency == crate::Contingency::Oco {
                return (asset, Units(0));
            }
            match extra.phase {
                Phase::Waiting(waiting) => return (asset, waiting.hold),
                Phase::Pending(_) => return (asset, Units(0)),
                Phase::Live => {}
            }
        }
        lock_for(rules, order)
    }

    /// The list slot of the order in `slot`, or `NONE`.
    pub(crate) fn list_of(&self, slot: u32) -> u32 {
        let ext = self.orders.get(slot).ext;
        if ext == NIL {
            NONE
        } else {
            self.extras.get(ext).list
        }
    }

    /// Appends the order in `slot` to its owner's list of open orders.
    pub(crate) fn attach_to_user(&mut self, slot: u32) {
        let (user, id, client_order_id) = {
            let order = self.orders.get(slot);
            (order.user, order.id, order.client_order_id)
        };
        let account = &mut self.accounts[user.index()];
        let tail = account.orders_tail;
        account.orders_tail = slot;
        if tail == NIL {
            account.orders_head = slot;
        }
        account.open_orders += 1;
        if let Some(client_order_id) = client_order_id {
            account.add_client_id(client_order_id, id);
        }
        if tail != NIL {
            self.orders.get_mut(tail).user_next = slot;
        }
        let order = self.orders.get_mut(slot);
        order.user_prev = tail;
        order.user_next = NIL;
    }

    /// Frees the slot of an order that is on no queue (book or triggers)
    /// any more, with its extras, and removes every reference to it.
    pub(crate) fn retire(&mut self, slot: u32) -> Order {
        let order = self.orders.remove(slot);
        if order.ext != NIL {
            self.extras.remove(order.ext);
        }
        self.index.remove(order.id);
        let account = &mut self.accounts[order.user.index()];
        account.open_orders -= 1;
        if let Some(client_order_id) = &order.client_order_id {
            account.remove_client_id(client_order_id);
        }
        if order.user_prev == NIL {
            account.orders_head = order.user_next;
        } else {
            self.orders.get_mut(order.user_prev).user_next = order.user_next;
        }
        if order.user_next == NIL {
            account.orders_tail = order.user_prev;
        } else {
            self.orders.get_mut(order.user_next).user_prev = order.user_prev;
        }
        order
    }

    /// Closes one open order wherever it is (on the book, waiting, pending),
    /// unlocks what it held on its own, and reports it. List bookkeeping is
    /// the caller's.
    pub(crate) fn close_single(&mut self, slot: u32, reason: DoneReason, emitter: &mut Emitter) {
        let (asset, amount) = self.holds(slot);
        let order = *self.orders.get(slot);
        let phase = if order.ext == NIL { Phase::Live } else { self.extras.get(order.ext).phase };
        match phase {
            Phase::Live => {
                let book = &mut self.markets[order.market.index()].book;
                let qty = book.side_mut(order.side).unlink(&mut self.orders, slot);
                emitter.emit(EventKind::BookLevel {
                    market: order.market,
                    side: order.side,
                    price: order.price,
                    qty,
                });
            }
            Phase::Waiting(waiting) => self.forget_trigger(&order, &waiting),
            Phase::Pending(_) => {}
        }
        self.retire(slot);
        let balance = self.accounts[order.user.index()].balance_mut(asset);
        balance.unlock(amount);
        let balance = *balance;
        emitter.emit(EventKind::OrderDone {
            order: order.id,
            user: order.user,
            market: order.market,
            reason,
            filled: order.filled,
            cancelled: order.open(),
        });
        emit_balance(emitter, order.user, asset, balance);
    }

    /// Cancels the open order in `slot`, and with it the rest of its list.
    pub(crate) fn cancel_order(&mut self, slot: u32, reason: DoneReason, emitter: &mut Emitter) {
        let list = self.list_of(slot);
        if list == NONE {
            self.close_single(slot, reason, emitter);
        } else {
            self.cancel_list(list, Some(slot), reason, emitter);
        }
    }

    /// The slot of `user`'s open order named by `reference`.
    pub(crate) fn find_order(&self, user: UserId, reference: OrderRef) -> Result<u32, RejectReason> {
        let account = self.accounts.get(user.index()).ok_or(RejectReason::UnknownUser(user))?;
        let id = match reference {
            OrderRef::Id(id) => id,
            OrderRef::Client(client_order_id) => {
                account.find_client_id(&client_order_id).ok_or(RejectReason::UnknownOrder)?
            }
        };
        let slot = self.index.get(id).ok_or(RejectReason::UnknownOrder)?;
        // Another user's order answers exactly like a missing one, so ids
        // cannot be probed.
        if self.orders.get(slot).user != user {
            return Err(RejectReason::UnknownOrder);
        }
        Ok(slot)
    }

    pub(crate) fn cancel(
        &mut self,
        user: UserId,
        reference: OrderRef,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let slot = self.find_order(user, reference)?;
        let market = self.orders.get(slot).market;
        if self.markets[market.index()].market.status == MarketStatus::Halted {
            return Err(RejectReason::MarketHalted { market });
        }
        self.cancel_order(slot, DoneReason::Cancelled, emitter);
        Ok(())
    }

    /// Cancels, oldest first, every open order of `user` in `only_market`
    /// (or in every market that is not halted); an order list goes whole.
    pub(crate) fn cancel_all(
        &mut self,
        user: UserId,
        only_market: Option<MarketId>,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let account = self.accounts.get(user.index()).ok_or(RejectReason::UnknownUser(user))?;
        if let Some(market) = only_market {
            let state = self.markets.get(market.index()).ok_or(RejectReason::UnknownMarket(market))?;
            if state.market.status == MarketStatus::Halted {
                return Err(RejectReason::MarketHalted { market });
            }
        }
        let before = account.open_orders;
        // Gathered first: cancelling one leg of a list closes the other too.
        let mut open = std::mem::take(&mut self.scratch.slots);
        open.clear();
        let mut slot = account.orders_head;
        while slot != NIL {
            let order = self.orders.get(slot);
            let wanted = only_market.is_none_or(|market| market == order.market);
            if wanted && self.markets[order.market.index()].market.status != MarketStatus::Halted {
                open.push((order.id, slot));
            }
            slot = order.user_next;
        }
        for &(id, slot) in &open {
            if self.index.get(id) == Some(slot) {
                self.cancel_order(slot, DoneReason::Cancelled, emitter);
            }
        }
        self.scratch.slots = open;
        let count = before - self.accounts[user.index()].open_orders;
        emitter.emit(EventKind::CancelledAll { user, market: only_market, count });
        Ok(())
    }

    pub(crate) fn amend(
        &mut self,
        amend: &Amend,
        ts: u64,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let slot = self.find_order(amend.user, amend.order)?;
        let order = *self.orders.get(slot);
        if order.ext != NIL {
            let extra = self.extras.get(order.ext);
            if extra.phase != Phase::Live || extra.list != NONE {
                return Err(RejectReason::AmendNotAllowed);
            }
        }
        let state = &self.markets[order.market.index()];
        let market = state.market;
        let rules = market.rules;
        let open = order.open();
        let new_price = amend.new_price.unwrap_or(order.price);
        let new_qty = amend.new_qty.unwrap_or(open);
        if new_qty.0 == 0 {
            return Err(RejectReason::ZeroQuantity);
        }
        if new_price.0 == 0 {
            return Err(RejectReason::ZeroPrice);
        }
        if new_price == order.price && new_qty == open {
            return Err(RejectReason::AmendNoChange);
        }
        let keeps_priority = new_price == order.price && new_qty < open;
        match market.status {
            MarketStatus::Halted => return Err(RejectReason::MarketHalted { market: market.id }),
            // Shrinking an order only lowers risk, so it is allowed while a
            // market winds down.
            MarketStatus::CancelOnly if !keeps_priority => {
                return Err(RejectReason::MarketNotOpen { market: market.id, status: market.status })
            }
            _ => {}
        }

        if keeps_priority {
            let (asset, old_lock) = lock_for(&rules, &order);
            // An iceberg gives up hidden lots first, then shown ones.
            let (shown, hidden) = if new_qty >= order.remaining {
                (order.remaining, Lots(new_qty.0 - order.remaining.0))
            } else {
                (new_qty, Lots(0))
            };
            let entry = self.orders.get_mut(slot);
            entry.remaining = shown;
            entry.hidden = hidden;
            let (_, new_lock) = lock_for(&rules, entry);
            let level_qty = self.markets[market.id.index()]
                .book
                .side_mut(order.side)
                .reduce(order.price, Lots(order.remaining.0 - shown.0));
            let balance = self.accounts[order.user.index()].balance_mut(asset);
            balance.unlock(Units(old_lock.0 - new_lock.0));
            let balance = *balance;
            emitter.emit(EventKind::OrderAmended {
                order: order.id,
                user: order.user,
                market: market.id,
                side: order.side,
                price: new_price,
                remaining: new_qty,
                priority_kept: true,
            });
            emitter.emit(EventKind::BookLevel {
                market: market.id,
                side: order.side,
                price: order.price,
                qty: level_qty,
            });
            emit_balance(emitter, order.user, asset, balance);
            return Ok(());
        }

        // Anything else re-enters the book at the back, and may trade first:
        // check it as a new order would be checked.
        let notional = check_order_size(&rules, new_price, new_qty)?;
        let (asset, old_lock) = lock_for(&rules, &order);
        let new_lock = match order.side {
            Side::Buy => notional,
            Side::Sell => rules.base_units(new_qty).ok_or(RejectReason::Overflow)?,
        };
        let available = self.accounts[order.user.index()].balance(asset).available;
        if u128::from(available.0) + u128::from(old_lock.0) < u128::from(new_lock.0) {
            return Err(RejectReason::InsufficientFunds {
                asset,
                needed: Units(new_lock.0 - old_lock.0),
                available,
            });
        }
        let visible = if order.ext == NIL { Lots(0) } else { self.extras.get(order.ext).visible };
        // An iceberg moved with no more than it shows just shows it all.
        if visible.0 > 0 && new_qty > visible {
            check_iceberg(&rules, new_qty, visible)?;
        }
        if order.post_only && state.book.side(order.side.opposite()).crosses(new_price) {
            return Err(RejectReason::PostOnlyWouldTake);
        }

        let book = &mut self.markets[market.id.index()].book;
        let level_qty = book.side_mut(order.side).unlink(&mut self.orders, slot);
        self.accounts[order.user.index()].balance_mut(asset).unlock(old_lock);
        emitter.emit(EventKind::OrderAmended {
            order: order.id,
            user: order.user,
            market: market.id,
            side: order.side,
            price: new_price,
            remaining: new_qty,
            priority_kept: false,
        });
        emitter.emit(EventKind::BookLevel {
            market: market.id,
            side: order.side,
            price: order.price,
            qty: level_qty,
        });
        let taker = Taker {
            order: order.id,
            slot,
            user: order.user,
            market: market.id,
            side: order.side,
            limit: Some(new_price),
            remaining: new_qty,
            filled: order.filled,
            quote_budget: None,
            by_quote: false,
            last_price: None,
            stp: order.stp,
            tif: if order.post_only { TimeInForce::PostOnly } else { TimeInForce::Gtc },
            visible,
            client_order_id: order.client_order_id,
            timestamp_ns: ts,
        };
        self.enter(taker, emitter);
        self.settle(market.id, ts, emitter);
        let account = &self.accounts[order.user.index()];
        emit_balance(emitter, order.user, rules.base, account.balance(rules.base));
        emit_balance(emitter, order.user, rules.quote, account.balance(rules.quote));
        Ok(())
    }
}

/// A waiting order's state at placement.
fn waiting(state: &MarketState, side: Side, trigger: Trigger, then: Then, hold: Units) -> Waiting {
    let _ = side;
    let tracking = (trigger.trailing_bips > 0 && trigger.stop.is_none()).then_some(state.last_price);
    Waiting { trigger, then, hold, tracking, node: NIL }
}

/// The checks every trigger gets; with [`Check::Full`] also the refusal of
/// one whose stop price's condition already holds.
fn check_trigger(
    state: &MarketState,
    side: Side,
    trigger: Trigger,
    check: Check,
) -> Result<(), RejectReason> {
    if trigger.stop.is_none() && trigger.trailing_bips == 0 {
        return Err(RejectReason::TriggerUnset);
    }
    if trigger.stop == Some(Ticks(0)) {
        return Err(RejectReason::ZeroPrice);
    }
    if trigger.trailing_bips > TRAILING_BIPS_MAX {
        return Err(RejectReason::TrailingDeltaOutOfRange {
            bips: trigger.trailing_bips,
            min: 1,
            max: TRAILING_BIPS_MAX,
        });
    }
    if check == Check::Full {
        if let (Some(stop), Some(last)) = (trigger.stop, state.last_price) {
            if reached(trigger.rises(side), stop, last) {
                return Err(RejectReason::WouldTriggerImmediately { stop, last });
            }
        }
    }
    Ok(())
}

/// Whether a trade at `price` meets a stop condition on `stop`.
pub(crate) fn reached(rises: bool, stop: Ticks, price: Ticks) -> bool {
    if rises {
        price >= stop
    } else {
        price <= stop
    }
}

fn check_market_qty(rules: &MarketRules, qty: Lots) -> Result<(), RejectReason> {
    if qty.0 == 0 {
        return Err(RejectReason::ZeroQuantity);
    }
    if qty < rules.min_qty {
        return Err(RejectReason::QuantityBelowMinimum { qty, min: rules.min_qty });
    }
    Ok(())
}

fn check_iceberg(rules: &MarketRules, qty: Lots, visible: Lots) -> Result<(), RejectReason> {
    if visible.0 == 0 || visible < rules.min_qty || visible >= qty {
        return Err(RejectReason::IcebergVisibleInvalid { visible, qty });
    }
    let parts = qty.0.div_ceil(visible.0);
    if parts > ICEBERG_PARTS_MAX {
        return Err(RejectReason::IcebergTooManyParts { parts, max: ICEBERG_PARTS_MAX });
    }
    Ok(())
}

/// Checks a limit order's price and quantity against the market's rules and
/// returns its value in quote units. Both the quote value and the base
/// amount must fit in a u64, so that every later fill of it fits too.
pub(crate) fn check_order_size(rules: &MarketRules, price: Ticks, qty: Lots) -> Result<Units, RejectReason> {
    if qty.0 == 0 {
        return Err(RejectReason::ZeroQuantity);
    }
    if price.0 == 0 {
        return Err(RejectReason::ZeroPrice);
    }
    if qty < rules.min_qty {
        return Err(RejectReason::QuantityBelowMinimum { qty, min: rules.min_qty });
    }
    let notional = rules.quote_units(price, qty).ok_or(RejectReason::Overflow)?;
    rules.base_units(qty).ok_or(RejectReason::Overflow)?;
    if notional < rules.min_notional {
        return Err(RejectReason::NotionalBelowMinimum { notional, min: rules.min_notional });
    }
    Ok(notional)
}

/// The asset and amount an order on the book holds locked for its open
/// quantity (shown and hidden): quote at its own price for a buy, base
/// for a sell.
pub(crate) fn lock_for(rules: &MarketRules, order: &Order) -> (AssetId, Units) {
    let open = order.open();
    match order.side {
        Side::Buy => {
            (rules.quote, rules.quote_units(order.price, open).expect("checked when the order rested"))
        }
        Side::Sell => (rules.base, rules.base_units(open).expect("checked when the order rested")),
    }
}

/// Whether a taker on `taker_side` with `limit` trades with a resting price.
#[inline]
fn limit_crosses(taker_side: Side, limit: Ticks, resting: Ticks) -> bool {
    match taker_side {
        Side::Buy => resting <= limit,
        Side::Sell => resting >= limit,
    }
}
