//! Orders that wait for something: stop and take-profit orders for a
//! price (trailing ones for a retracement), OTO pending orders for their
//! working order's fill; and order lists, whose orders cancel or release
//! each other. The rules are in docs/engine.md; this is their one
//! implementation.
//!
//! Nothing here runs in the middle of another order's matching except what
//! must be atomic with a fill (an OCO's other leg is cancelled at once).
//! Everything else (fired orders, released orders) is queued and enters
//! after the order whose trades caused it has finished: see
//! [`Engine::settle`].

use crate::book::{Order, NIL};
use crate::command::{Contingency, ListRef, NewOrderList, OrderKind, TimeInForce};
use crate::engine::Engine;
use crate::event::{emit_balance, DoneReason, Emitter, EventKind, ListRule, RejectReason};
use crate::extras::{OrderExtra, OrderList, Phase, Then, Waiting, NONE};
use crate::followups::FollowUp;
use crate::market::MarketStatus;
use crate::orders::{reached, Check, Checked, Entered};
use crate::triggers::Entry;
use crate::units::{ListId, Lots, MarketId, OrderId, Side, Ticks, Units, UserId};

impl Engine {
    /// Puts the waiting order in `slot` on its market's triggers and locks
    /// its hold (unless an OCO holds for it).
    pub(crate) fn start_waiting(&mut self, slot: u32, emitter: &mut Emitter) {
        let order = *self.orders.get(slot);
        let extra = self.extras.get(order.ext);
        let Phase::Waiting(waiting) = extra.phase else {
            unreachable!("only a waiting order starts waiting")
        };
        // What `holds` answers, from the extras in hand: its own hold, or
        // nothing for an OCO's leg (the list holds for both legs).
        let in_oco = extra.list != NONE && self.lists.get(extra.list).contingency == Contingency::Oco;
        let rules = &self.markets[order.market.index()].market.rules;
        let asset = match order.side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        let amount = if in_oco { Units(0) } else { waiting.hold };
        debug_assert_eq!(self.holds(slot), (asset, amount));
        self.accounts[order.user.index()].balance_mut(asset).lock(amount);
        match (waiting.tracking, waiting.trigger.stop) {
            (Some(best), _) => {
                self.start_tracking(slot, best);
                if let Some(price) = best {
                    emitter.emit(EventKind::TrailingStarted {
                        order: order.id,
                        user: order.user,
                        market: order.market,
                        price,
                    });
                }
            }
            (None, Some(stop)) => {
                let entry = Entry { stop, order: order.id, slot };
                let triggers = &mut self.markets[order.market.index()].triggers;
                let node = triggers.insert(waiting.trigger.rises(order.side), entry);
                let Phase::Waiting(waiting) = &mut self.extras.get_mut(order.ext).phase else {
                    unreachable!("only a waiting order starts waiting")
                };
                waiting.node = node;
            }
            (None, None) => unreachable!("a trigger without a stop price tracks from placement"),
        }
    }

    /// Puts the trailing order waiting in `slot` on its market's tracking
    /// orders, from best price `best` (`None`: from the market's next
    /// trade). Emits nothing: the callers say why it starts.
    fn start_tracking(&mut self, slot: u32, best: Option<Ticks>) {
        let order = *self.orders.get(slot);
        let Phase::Waiting(waiting) = &mut self.extras.get_mut(order.ext).phase else {
            unreachable!("only a waiting order tracks")
        };
        let entry = Entry { stop: Ticks(0), order: order.id, slot };
        let triggers = &mut self.markets[order.market.index()].triggers;
        waiting.tracking = Some(best);
        waiting.node = triggers.insert_tracking(order.side, waiting.trigger.trailing_bips, entry, best);
    }

    /// Takes a waiting order off its market's triggers (if it is still
    /// there: a fired order waiting for its turn is not).
    pub(crate) fn forget_trigger(&mut self, order: &Order, waiting: &Waiting) {
        let triggers = &mut self.markets[order.market.index()].triggers;
        match (waiting.tracking, waiting.trigger.stop) {
            (Some(_), _) => {
                triggers.remove_tracking(waiting.node, order.id);
            }
            (None, Some(stop)) => {
                triggers.remove(waiting.trigger.rises(order.side), stop, order.id, waiting.node);
            }
            (None, None) => {}
        }
    }

    /// Runs what the command's matching in `market` set off, until nothing
    /// is left: the triggers its trades reach fire, and fired and released
    /// orders enter one after another (each one's own trades may set off
    /// more, which queue behind).
    #[inline]
    pub(crate) fn settle(&mut self, market: MarketId, ts: u64, emitter: &mut Emitter) {
        // The common case: nothing is queued, and no trade price of the
        // command reaches any waiting order (or nothing waits in this
        // market); only the last price moves, and the evaluation would
        // change nothing else. Kept this small so that it stays inlined
        // where orders settle.
        if self.scratch.queue.is_empty() {
            let Some(&last) = self.scratch.prices.last() else { return };
            let state = &mut self.markets[market.index()];
            // Nothing waiting (the plain case) needs no look at the prices.
            let quiet = state.triggers.is_empty() || {
                // Most commands trade at one or two prices: their first and
                // last are their extremes, without a pass over the list.
                let prices = &self.scratch.prices;
                let first = prices[0];
                let (mut low, mut high) = if first <= last { (first, last) } else { (last, first) };
                if prices.len() > 2 {
                    for &price in &prices[1..prices.len() - 1] {
                        low = low.min(price);
                        high = high.max(price);
                    }
                }
                state.triggers.is_quiet_between(low, high)
            };
            if quiet {
                state.last_price = Some(last);
                self.scratch.prices.clear();
                return;
            }
        }
        self.settle_all(market, ts, emitter);
    }

    #[inline(never)]
    fn settle_all(&mut self, market: MarketId, ts: u64, emitter: &mut Emitter) {
        loop {
            if !self.scratch.prices.is_empty() {
                self.evaluate(market, emitter);
            }
            let Some(work) = self.scratch.queue.pop_front() else { break };
            match work {
                FollowUp::Enter { slot, order, price } => self.enter_fired(slot, order, price, ts, emitter),
                FollowUp::Release { slot, order } => self.release(slot, order, ts, emitter),
            }
        }
        debug_assert!(self.scratch.prices.is_empty());
    }

    /// Looks at the trade prices just seen in `market`, in order: moves the
    /// last price, starts trailing orders whose stop price is reached,
    /// updates the tracking ones, and fires what is reached.
    fn evaluate(&mut self, market: MarketId, emitter: &mut Emitter) {
        let prices = std::mem::take(&mut self.scratch.prices);
        let mut reached_now = std::mem::take(&mut self.scratch.reached);
        let mut fired = std::mem::take(&mut self.scratch.fired);
        for &price in &prices {
            let state = &mut self.markets[market.index()];
            state.last_price = Some(price);
            // Most prices of a command that reaches a waiting order reach
            // nothing themselves (the others before and after it): the kept
            // band answers for them as it does for a whole quiet command.
            if state.triggers.is_quiet_between(price, price) {
                continue;
            }
            reached_now.clear();
            state.triggers.pop_reached(price, &mut reached_now);
            // The tracking orders' best prices move to this price where it
            // is better, all of a group at once.
            state.triggers.track(price);
            for entry in reached_now.drain(..) {
                let ext = self.orders.get(entry.slot).ext;
                let Phase::Waiting(waiting) = self.extras.get(ext).phase else {
                    unreachable!("only waiting orders are on the triggers")
                };
                if waiting.trigger.trailing_bips > 0 {
                    // The stop price starts the tracking, at this trade's price.
                    self.start_tracking(entry.slot, Some(price));
                    let order = *self.orders.get(entry.slot);
                    emitter.emit(EventKind::TrailingStarted {
                        order: order.id,
                        user: order.user,
                        market,
                        price,
                    });
                } else {
                    fired.push(entry);
                }
            }
            let triggers = &mut self.markets[market.index()].triggers;
            triggers.fire_tracking(price, &mut fired);
            // Orders tracking from placement in a market that had not traded
            // start at its first trade (they cannot fire at it), oldest first.
            triggers.take_unstarted(&mut reached_now);
            for entry in reached_now.drain(..) {
                self.start_tracking(entry.slot, Some(price));
                let order = *self.orders.get(entry.slot);
                emitter.emit(EventKind::TrailingStarted { order: order.id, user: order.user, market, price });
            }
            // Among the orders one trade fires, the oldest first.
            fired.sort_unstable_by_key(|entry| entry.order);
            for entry in fired.drain(..) {
                self.fire(entry, price, emitter);
            }
        }
        let mut prices = prices;
        prices.clear();
        self.scratch.prices = prices;
        self.scratch.reached = reached_now;
        self.scratch.fired = fired;
    }

    /// A waiting order's trigger fired at `price`: the other leg of its OCO
    /// goes now, and it queues to enter.
    fn fire(&mut self, entry: Entry, price: Ticks, emitter: &mut Emitter) {
        // An OCO leg fired by the same trade as its sibling was cancelled
        // when the sibling fired.
        let live = self.orders.get_checked(entry.slot).is_some_and(|order| order.id == entry.order);
        if !live {
            return;
        }
        let list = self.list_of(entry.slot);
        if list != NONE {
            self.dissolve_oco(list, entry.slot, emitter);
        }
        self.scratch.queue.push_back(FollowUp::Enter { slot: entry.slot, order: entry.order, price });
    }

    /// A fired order enters the market as what it names.
    fn enter_fired(&mut self, slot: u32, id: OrderId, price: Ticks, ts: u64, emitter: &mut Emitter) {
        let order = *self.orders.get(slot);
        assert_eq!(order.id, id, "a fired order's slot was reused before it entered");
        let extra = *self.extras.get(order.ext);
        let Phase::Waiting(waiting) = extra.phase else { unreachable!("a fired order was waiting") };
        // A fired order left its list when it fired (an OCO dissolves then;
        // a released OTO order left it at its release), so it holds its own
        // hold, in the asset it spends: what `holds` answers, without
        // looking the order, its extras and its list up again.
        debug_assert_eq!(extra.list, NONE, "a fired order is in no list");
        let rules = &self.markets[order.market.index()].market.rules;
        let asset = match order.side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        debug_assert_eq!(self.holds(slot), (asset, waiting.hold));
        let balance = self.accounts[order.user.index()].balance_mut(asset);
        balance.unlock(waiting.hold);
        let available = balance.available;
        // It enters as a plain order unless it shows an iceberg's part:
        // extras go at once rather than being marked live first.
        if extra.visible.0 == 0 {
            self.extras.remove(order.ext);
            self.orders.get_mut(slot).ext = NIL;
        } else {
            self.extras.get_mut(order.ext).phase = Phase::Live;
        }
        emitter.emit(EventKind::OrderTriggered {
            order: order.id,
            user: order.user,
            market: order.market,
            price,
            timestamp_ns: ts,
        });
        let checked = match waiting.then {
            Then::Market => Checked {
                limit: None,
                qty: order.remaining,
                quote_budget: (order.side == Side::Buy).then_some(available),
                tif: TimeInForce::Ioc,
                by_quote: false,
                visible: Lots(0),
                waiting: None,
                need: Units(0),
            },
            Then::Limit(tif) => Checked {
                limit: Some(order.price),
                qty: order.remaining,
                quote_budget: None,
                tif,
                by_quote: false,
                visible: extra.visible,
                waiting: None,
                need: Units(0),
            },
        };
        let taker = self.taker(
            order.id,
            slot,
            order.user,
            order.market,
            order.side,
            order.stp,
            &checked,
            order.client_order_id,
            ts,
        );
        self.enter(taker, emitter);
        self.emit_balances(order.user, order.market, emitter);
    }

    /// An OTO's working order filled: its pending order is placed now.
    fn release(&mut self, slot: u32, id: OrderId, ts: u64, emitter: &mut Emitter) {
        let order = *self.orders.get(slot);
        assert_eq!(order.id, id, "a released order's slot was reused before its turn");
        let extra = *self.extras.get(order.ext);
        let Phase::Pending(kind) = extra.phase else { unreachable!("only pending orders are released") };
        let list = *self.lists.get(extra.list);
        self.lists.remove(extra.list);
        self.extras.get_mut(order.ext).list = NONE;
        emitter.emit(EventKind::OrderListDone { list: list.id, user: list.user, market: list.market });
        emitter.emit(EventKind::OrderReleased {
            order: order.id,
            user: order.user,
            market: order.market,
            timestamp_ns: ts,
        });
        let state = &self.markets[order.market.index()];
        let rules = state.market.rules;
        let spend = match order.side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        let available = self.accounts[order.user.index()].balance(spend).available;
        let checked = if state.market.status == MarketStatus::Open {
            Engine::check_kind(state, order.side, kind, available, Check::Released).and_then(|checked| {
                let crosses = checked.waiting.is_none()
                    && checked.tif == TimeInForce::PostOnly
                    && state.book.side(order.side.opposite()).crosses(order.price);
                if crosses {
                    Err(RejectReason::PostOnlyWouldTake)
                } else {
                    Ok(checked)
                }
            })
        } else {
            Err(RejectReason::MarketNotOpen { market: state.market.id, status: state.market.status })
        };
        match checked {
            Err(reason) => {
                self.retire(slot);
                emitter.emit(EventKind::OrderDone {
                    order: order.id,
                    user: order.user,
                    market: order.market,
                    reason: DoneReason::Refused(reason),
                    filled: Lots(0),
                    cancelled: order.remaining,
                });
            }
            Ok(checked) => match checked.waiting {
                Some(waiting) => {
                    let extra = self.extras.get_mut(order.ext);
                    extra.phase = Phase::Waiting(waiting);
                    extra.visible = checked.visible;
                    let entry = self.orders.get_mut(slot);
                    entry.price = checked.limit.unwrap_or_default();
                    entry.timestamp_ns = ts;
                    self.start_waiting(slot, emitter);
                    // A stop whose condition already holds fires at once.
                    let last = self.markets[order.market.index()].last_price;
                    if let (None, Some(stop), Some(last)) = (waiting.tracking, waiting.trigger.stop, last) {
                        if reached(waiting.trigger.rises(order.side), stop, last) {
                            let Phase::Waiting(started) = self.extras.get(order.ext).phase else {
                                unreachable!("it just started waiting")
                            };
                            let triggers = &mut self.markets[order.market.index()].triggers;
                            triggers.remove(waiting.trigger.rises(order.side), stop, order.id, started.node);
                            if waiting.trigger.trailing_bips > 0 {
                                self.start_tracking(slot, Some(last));
                                emitter.emit(EventKind::TrailingStarted {
                                    order: order.id,
                                    user: order.user,
                                    market: order.market,
                                    price: last,
                                });
                            } else {
                                self.scratch.queue.push_back(FollowUp::Enter {
                                    slot,
                                    order: order.id,
                                    price: last,
                                });
                            }
                        }
                    }
                }
                None => {
                    self.extras.get_mut(order.ext).phase = Phase::Live;
                    self.drop_extras_if_plain(slot);
                    let taker = self.taker(
                        order.id,
                        slot,
                        order.user,
                        order.market,
                        order.side,
                        order.stp,
                        &checked,
                        order.client_order_id,
                        ts,
                    );
                    self.enter(taker, emitter);
                }
            },
        }
        self.emit_balances(order.user, order.market, emitter);
    }

    /// Frees the extras of an order that no longer needs them (a plain
    /// order on the book), so that extras exist only where they mean
    /// something.
    pub(crate) fn drop_extras_if_plain(&mut self, slot: u32) {
        let ext = self.orders.get(slot).ext;
        if ext == NIL {
            return;
        }
        let extra = self.extras.get(ext);
        if extra.visible.0 == 0 && extra.phase == Phase::Live && extra.list == NONE {
            self.extras.remove(ext);
            self.orders.get_mut(slot).ext = NIL;
        }
    }

    fn emit_balances(&self, user: UserId, market: MarketId, emitter: &mut Emitter) {
        let rules = self.markets[market.index()].market.rules;
        let account = &self.accounts[user.index()];
        emit_balance(emitter, user, rules.base, account.balance(rules.base));
        emit_balance(emitter, user, rules.quote, account.balance(rules.quote));
    }

    /// A leg of a list traded as a maker, spending `spent` from the locked
    /// funds: an OCO ends (the other leg is cancelled); an OTO's working
    /// order that is now completely filled releases its pending order.
    pub(crate) fn list_leg_traded(&mut self, slot: u32, spent: Units, emitter: &mut Emitter) {
        let list_slot = self.list_of(slot);
        let list = self.lists.get_mut(list_slot);
        match list.contingency {
            Contingency::Oco => {
                list.held =
                    Units(list.held.0.checked_sub(spent.0).expect("an OCO holds what its legs spend"));
                self.dissolve_oco(list_slot, slot, emitter);
            }
            Contingency::Oto => {
                if self.orders.get(slot).open().0 == 0 {
                    let list = self.lists.get_mut(list_slot);
                    list.slots[0] = NIL;
                    let (pending, pending_id) = (list.slots[1], list.orders[1]);
                    let ext = self.orders.get(slot).ext;
                    self.extras.get_mut(ext).list = NONE;
                    self.scratch.queue.push_back(FollowUp::Release { slot: pending, order: pending_id });
                }
            }
        }
    }

    /// Ends an OCO whose leg in `survivor` traded or fired: the other leg
    /// is cancelled, the survivor goes on alone holding exactly its own
    /// need, and the rest of the list's hold is released.
    pub(crate) fn dissolve_oco(&mut self, list_slot: u32, survivor: u32, emitter: &mut Emitter) {
        let list = *self.lists.get(list_slot);
        let other = if list.slots[0] == survivor { list.slots[1] } else { list.slots[0] };
        self.close_single(other, DoneReason::Contingent, emitter);
        let ext = self.orders.get(survivor).ext;
        self.extras.get_mut(ext).list = NONE;
        let (asset, need) = self.holds(survivor);
        let release = list.held.0.checked_sub(need.0).expect("an OCO holds what its larger leg needs");
        let balance = self.accounts[list.user.index()].balance_mut(asset);
        balance.unlock(Units(release));
        let balance = *balance;
        self.drop_extras_if_plain(survivor);
        self.lists.remove(list_slot);
        emitter.emit(EventKind::OrderListDone { list: list.id, user: list.user, market: list.market });
        emit_balance(emitter, list.user, asset, balance);
    }

    /// Cancels every open order of a list (`first` with `reason`, the other
    /// with `Cancelled` when the owner cancelled, else `Contingent`) and
    /// ends it.
    pub(crate) fn cancel_list(
        &mut self,
        list_slot: u32,
        first: Option<u32>,
        reason: DoneReason,
        emitter: &mut Emitter,
    ) {
        let list = *self.lists.get(list_slot);
        let first = first.unwrap_or(list.slots[0]);
        let others =
            if reason == DoneReason::Cancelled { DoneReason::Cancelled } else { DoneReason::Contingent };
        let legs = if list.slots[1] == first {
            [list.slots[1], list.slots[0]]
        } else {
            [list.slots[0], list.slots[1]]
        };
        for (position, slot) in legs.into_iter().enumerate() {
            if slot != NIL {
                self.close_single(slot, if position == 0 { reason } else { others }, emitter);
            }
        }
        let asset = {
            let rules = self.markets[list.market.index()].market.rules;
            match list.side {
                Side::Buy => rules.quote,
                Side::Sell => rules.base,
            }
        };
        if list.held.0 > 0 {
            self.accounts[list.user.index()].balance_mut(asset).unlock(list.held);
        }
        self.lists.remove(list_slot);
        emitter.emit(EventKind::OrderListDone { list: list.id, user: list.user, market: list.market });
        let balance = self.accounts[list.user.index()].balance(asset);
        emit_balance(emitter, list.user, asset, balance);
    }

    /// The list slot of `user`'s open list named by `reference`.
    fn find_list(&self, user: UserId, reference: ListRef) -> Result<u32, RejectReason> {
        let account = self.accounts.get(user.index()).ok_or(RejectReason::UnknownUser(user))?;
        let mut slot = account.orders_head;
        while slot != NIL {
            let order = self.orders.get(slot);
            let list = self.list_of(slot);
            if list != NONE {
                let entry = self.lists.get(list);
                let matches = match reference {
                    ListRef::Id(id) => entry.id == id,
                    ListRef::Client(client) => entry.client_list_id == Some(client),
                };
                if matches {
                    return Ok(list);
                }
            }
            slot = order.user_next;
        }
        Err(RejectReason::UnknownOrderList)
    }

    pub(crate) fn cancel_order_list(
        &mut self,
        user: UserId,
        reference: ListRef,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let list_slot = self.find_list(user, reference)?;
        let market = self.lists.get(list_slot).market;
        if self.markets[market.index()].market.status == MarketStatus::Halted {
            return Err(RejectReason::MarketHalted { market });
        }
        self.cancel_list(list_slot, None, DoneReason::Cancelled, emitter);
        Ok(())
    }

    pub(crate) fn place_list(
        &mut self,
        new: &NewOrderList,
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
        let invalid = |rule| Err(RejectReason::OrderListInvalid(rule));
        let [first, second] = new.legs;
        if let (Some(a), Some(b)) = (first.client_order_id, second.client_order_id) {
            if a == b {
                return invalid(ListRule::SameClientOrderId);
            }
        }
        let spend = |side| match side {
            Side::Buy => rules.quote,
            Side::Sell => rules.base,
        };
        let checked: [Checked; 2] = match new.contingency {
            Contingency::Oco => {
                if first.side != second.side || first.kind.qty() != second.kind.qty() {
                    return invalid(ListRule::OcoLegsDiffer);
                }
                let rests = |kind: OrderKind| match kind {
                    OrderKind::Limit { tif, .. } | OrderKind::Iceberg { tif, .. } => {
                        (tif == TimeInForce::PostOnly).then_some(true)
                    }
                    OrderKind::StopMarket { .. } | OrderKind::StopLimit { .. } => Some(false),
                    OrderKind::Market { .. } | OrderKind::MarketByQuote { .. } => None,
                };
                let (Some(a), Some(b)) = (rests(first.kind), rests(second.kind)) else {
                    return invalid(ListRule::OcoLegKind);
                };
                if a && b {
                    return invalid(ListRule::OcoTwoMakers);
                }
                // Funds are checked once, for the list, below.
                let unlimited = Units(u64::MAX);
                let mut checked = [first, second]
                    .map(|leg| Engine::check_kind(state, leg.side, leg.kind, unlimited, Check::Full));
                for (leg, result) in [first, second].iter().zip(&mut checked) {
                    if let Ok(c) = result {
                        if c.waiting.is_none()
                            && state.book.side(leg.side.opposite()).crosses(c.limit.unwrap_or_default())
                        {
                            *result = Err(RejectReason::PostOnlyWouldTake);
                        }
                    }
                }
                let [a, b] = checked;
                let (a, b) = (a?, b?);
                let available = account.balance(spend(first.side)).available;
                let needed = a.need.max(b.need);
                if available < needed {
                    return Err(RejectReason::InsufficientFunds {
                        asset: spend(first.side),
                        needed,
                        available,
                    });
                }
                [a, b]
            }
            Contingency::Oto => {
                if !matches!(first.kind, OrderKind::Limit { .. } | OrderKind::Iceberg { .. }) {
                    return invalid(ListRule::OtoWorkingKind);
                }
                if matches!(second.kind, OrderKind::MarketByQuote { .. }) {
                    return invalid(ListRule::OtoPendingKind);
                }
                let available = account.balance(spend(first.side)).available;
                let working = Engine::check_kind(state, first.side, first.kind, available, Check::Full)?;
                if working.tif == TimeInForce::PostOnly
                    && state.book.side(first.side.opposite()).crosses(working.limit.unwrap_or_default())
                {
                    return Err(RejectReason::PostOnlyWouldTake);
                }
                let pending = Engine::check_kind(state, second.side, second.kind, Units(0), Check::Static)?;
                [working, pending]
            }
        };
        for leg in &new.legs {
            if let Some(client_order_id) = leg.client_order_id {
                if account.find_client_id(&client_order_id).is_some() {
                    return Err(RejectReason::DuplicateClientOrderId(client_order_id));
                }
            }
        }
        if let Some(client) = new.client_list_id {
            if self.find_list(new.user, ListRef::Client(client)).is_ok() {
                return Err(RejectReason::DuplicateListClientId(client));
            }
        }
        self.check_room(account, 2)?;

        // Validated: from here on the command is accepted and cannot fail.
        let list_id = ListId(self.next_list_id);
        self.next_list_id += 1;
        let ids = [self.next_order_id(), self.next_order_id()];
        emitter.emit(EventKind::OrderListAccepted {
            list: list_id,
            user: new.user,
            market: market.id,
            contingency: new.contingency,
            orders: ids,
            client_list_id: new.client_list_id,
            timestamp_ns: ts,
        });
        for (leg, id) in new.legs.iter().zip(ids) {
            emitter.emit(EventKind::OrderAccepted {
                order: id,
                user: new.user,
                market: market.id,
                side: leg.side,
                kind: leg.kind,
                client_order_id: leg.client_order_id,
                stp: new.stp,
                timestamp_ns: ts,
            });
        }
        let held = match new.contingency {
            Contingency::Oco => checked[0].need.max(checked[1].need),
            Contingency::Oto => Units(0),
        };
        let list_slot = self.lists.insert(OrderList {
            id: list_id,
            user: new.user,
            market: market.id,
            contingency: new.contingency,
            client_list_id: new.client_list_id,
            side: first.side,
            orders: ids,
            slots: [NIL, NIL],
            held,
        });
        let new_order = |leg: &crate::ListLeg, id: OrderId, checked: &Checked| {
            Order::new(
                id,
                new.user,
                market.id,
                leg.side,
                checked.limit.unwrap_or_default(),
                checked.qty,
                Lots(0),
                checked.tif == TimeInForce::PostOnly,
                new.stp,
                leg.client_order_id,
                ts,
            )
        };
        match new.contingency {
            Contingency::Oco => {
                let spend_asset = spend(first.side);
                self.accounts[new.user.index()].balance_mut(spend_asset).lock(held);
                for position in 0..2 {
                    let (leg, id, checked) = (&new.legs[position], ids[position], checked[position]);
                    let phase = checked.waiting.map_or(Phase::Live, Phase::Waiting);
                    let extra = OrderExtra { order: id, visible: checked.visible, phase, list: list_slot };
                    let slot = self.open_slot(new_order(leg, id, &checked), extra);
                    self.lists.get_mut(list_slot).slots[position] = slot;
                    match phase {
                        Phase::Waiting(_) => self.start_waiting(slot, emitter),
                        _ => self.rest(slot, emitter),
                    }
                }
            }
            Contingency::Oto => {
                let pending_extra = OrderExtra {
                    order: ids[1],
                    visible: checked[1].visible,
                    phase: Phase::Pending(second.kind),
                    list: list_slot,
                };
                // Opened first so that a working order filled at once finds
                // it; listed under its user after the working order, whose
                // id is older.
                let pending = self.open_slot_unlisted(new_order(&second, ids[1], &checked[1]), pending_extra);
                self.lists.get_mut(list_slot).slots[1] = pending;
                let taker = self.taker(
                    ids[0],
                    NIL,
                    new.user,
                    market.id,
                    first.side,
                    new.stp,
                    &checked[0],
                    first.client_order_id,
                    ts,
                );
                let entered = self.enter(taker, emitter);
                self.attach_to_user(pending);
                match entered {
                    Entered::Rested(slot) => {
                        let ext = self.orders.get(slot).ext;
                        if ext == NIL {
                            let ext = self.extras.insert(OrderExtra {
                                order: ids[0],
                                visible: Lots(0),
                                phase: Phase::Live,
                                list: list_slot,
                            });
                            self.orders.get_mut(slot).ext = ext;
                        } else {
                            self.extras.get_mut(ext).list = list_slot;
                        }
                        self.lists.get_mut(list_slot).slots[0] = slot;
                    }
                    Entered::Done(DoneReason::Filled) => {
                        self.scratch.queue.push_back(FollowUp::Release { slot: pending, order: ids[1] });
                    }
                    Entered::Done(_) => {
                        self.close_single(pending, DoneReason::Contingent, emitter);
                        self.lists.remove(list_slot);
                        emitter.emit(EventKind::OrderListDone {
                            list: list_id,
                            user: new.user,
                            market: market.id,
                        });
                    }
                }
            }
        }
        self.settle(market.id, ts, emitter);
        self.emit_balances(new.user, market.id, emitter);
        Ok(())
    }
}
