//! The engine against a deliberately simple reference model.
//!
//! The model keeps open orders in one flat `Vec`, finds the best resting
//! order by scanning it, and keeps balances in a `BTreeMap`: slow and
//! obviously right. Long random command streams (several users and
//! markets, every order type, cancels, amends, deposits, withdrawals,
//! market status changes) go through both, and after every command the
//! tests compare rejections, trades, closed orders and every balance; at the
//! end, every book. The engine's own invariant checks (conservation, locks,
//! uncrossed books, snapshot round trip) run after every command too, and a
//! consumer that sees only the event stream must rebuild the same books,
//! open orders and balances.

use std::collections::BTreeMap;

use engine_core::*;
use proptest::prelude::*;

const USERS: u32 = 4;
const ASSETS: u32 = 3;
const DEPOSIT: u64 = 4_000;

// ----- the reference model ----------------------------------------------------

#[derive(Clone, Debug)]
struct MOrder {
    id: u64,
    user: u32,
    market: usize,
    side: Side,
    price: u64,
    remaining: u64,
    filled: u64,
    post_only: bool,
    stp: SelfTradePrevention,
    cid: Option<ClientOrderId>,
    /// Queue position: lower is earlier.
    time: u64,
}

#[derive(Clone, Debug, Default)]
struct Outcome {
    rejected: Option<RejectReason>,
    trades: Vec<(u64, u64, u64, u64, u64, u64)>,
    done: Vec<(u64, DoneReason, u64, u64)>,
}

#[derive(Clone, Debug)]
struct Model {
    markets: Vec<Market>,
    users: u32,
    balances: BTreeMap<(u32, u32), (u64, u64)>,
    fees: BTreeMap<u32, u64>,
    orders: Vec<MOrder>,
    next_id: u64,
    clock: u64,
    open_limit: u32,
}

#[derive(PartialEq)]
enum End {
    Complete,
    NoCross,
    Budget,
    SelfTrade,
}

impl Model {
    fn bal(&mut self, user: u32, asset: AssetId) -> &mut (u64, u64) {
        self.balances.entry((user, asset.0)).or_default()
    }

    fn lock_of(rules: &MarketRules, o: &MOrder) -> (AssetId, u64) {
        match o.side {
            Side::Buy => (rules.quote, o.price * o.remaining * rules.quote_units_per_tick),
            Side::Sell => (rules.base, o.remaining * rules.base_units_per_lot),
        }
    }

    fn crosses(taker: Side, limit: u64, resting: u64) -> bool {
        match taker {
            Side::Buy => resting <= limit,
            Side::Sell => resting >= limit,
        }
    }

    /// The index in `orders` of the best resting order on `side` of `market`.
    fn best(&self, market: usize, side: Side) -> Option<usize> {
        (0..self.orders.len())
            .filter(|&i| self.orders[i].market == market && self.orders[i].side == side)
            .min_by_key(|&i| {
                let o = &self.orders[i];
                let price_rank = match side {
                    Side::Buy => u64::MAX - o.price,
                    Side::Sell => o.price,
                };
                (price_rank, o.time)
            })
    }

    fn remove_order(&mut self, index: usize, reason: DoneReason, out: &mut Outcome) {
        let o = self.orders.remove(index);
        let rules = self.markets[o.market].rules;
        let (asset, amount) = Model::lock_of(&rules, &o);
        let b = self.bal(o.user, asset);
        b.1 -= amount;
        b.0 += amount;
        out.done.push((o.id, reason, o.filled, o.remaining));
    }

    #[allow(clippy::too_many_arguments)]
    fn match_taker(
        &mut self,
        id: u64,
        user: u32,
        market: usize,
        side: Side,
        limit: Option<u64>,
        remaining: &mut u64,
        filled: &mut u64,
        budget: &mut Option<u64>,
        stp: SelfTradePrevention,
        out: &mut Outcome,
    ) -> End {
        let rules = self.markets[market].rules;
        loop {
            if *remaining == 0 {
                return End::Complete;
            }
            let Some(best) = self.best(market, side.opposite()) else { return End::NoCross };
            let maker = self.orders[best].clone();
            if let Some(limit) = limit {
                if !Model::crosses(side, limit, maker.price) {
                    return End::NoCross;
                }
            }
            if maker.user == user {
                match stp {
                    SelfTradePrevention::Allow => {}
                    SelfTradePrevention::CancelTaker => return End::SelfTrade,
                    SelfTradePrevention::CancelMaker => {
                        self.remove_order(best, DoneReason::SelfTrade, out);
                        continue;
                    }
                    SelfTradePrevention::CancelBoth => {
                        self.remove_order(best, DoneReason::SelfTrade, out);
                        return End::SelfTrade;
                    }
                }
            }
            let mut qty = (*remaining).min(maker.remaining);
            if let Some(b) = budget {
                qty = qty.min(*b / (maker.price * rules.quote_units_per_tick));
                if qty == 0 {
                    return End::Budget;
                }
            }
            let base = qty * rules.base_units_per_lot;
            let quote = qty * maker.price * rules.quote_units_per_tick;
            let ceil = |amount: u64, ppm: u32| (amount as u128 * ppm as u128).div_ceil(1_000_000) as u64;
            let (maker_fee, taker_fee) = match maker.side {
                Side::Buy => (ceil(base, rules.maker_fee_ppm), ceil(quote, rules.taker_fee_ppm)),
                Side::Sell => (ceil(quote, rules.maker_fee_ppm), ceil(base, rules.taker_fee_ppm)),
            };
            match maker.side {
                Side::Buy => {
                    self.bal(maker.user, rules.quote).1 -= quote;
                    self.bal(maker.user, rules.base).0 += base - maker_fee;
                    self.bal(user, rules.base).0 -= base;
                    self.bal(user, rules.quote).0 += quote - taker_fee;
                    *self.fees.entry(rules.base.0).or_default() += maker_fee;
                    *self.fees.entry(rules.quote.0).or_default() += taker_fee;
                }
                Side::Sell => {
                    self.bal(maker.user, rules.base).1 -= base;
                    self.bal(maker.user, rules.quote).0 += quote - maker_fee;
                    self.bal(user, rules.quote).0 -= quote;
                    self.bal(user, rules.base).0 += base - taker_fee;
                    *self.fees.entry(rules.quote.0).or_default() += maker_fee;
                    *self.fees.entry(rules.base.0).or_default() += taker_fee;
                }
            }
            *remaining -= qty;
            *filled += qty;
            if let Some(b) = budget {
                *b -= quote;
            }
            out.trades.push((maker.id, id, maker.price, qty, maker_fee, taker_fee));
            let m = &mut self.orders[best];
            m.remaining -= qty;
            m.filled += qty;
            if m.remaining == 0 {
                let m = self.orders.remove(best);
                out.done.push((m.id, DoneReason::Filled, m.filled, 0));
            }
        }
    }

    fn size_check(rules: &MarketRules, price: u64, qty: u64) -> Result<u64, RejectReason> {
        if qty == 0 {
            return Err(RejectReason::ZeroQuantity);
        }
        if price == 0 {
            return Err(RejectReason::ZeroPrice);
        }
        if qty < rules.min_qty.0 {
            return Err(RejectReason::QuantityBelowMinimum { qty: Lots(qty), min: rules.min_qty });
        }
        let notional = price * qty * rules.quote_units_per_tick;
        if notional < rules.min_notional.0 {
            return Err(RejectReason::NotionalBelowMinimum {
                notional: Units(notional),
                min: rules.min_notional,
            });
        }
        Ok(notional)
    }

    fn place(&mut self, o: &NewOrder) -> Outcome {
        let mut out = Outcome::default();
        match self.try_place(o, &mut out) {
            Ok(()) => out,
            Err(reason) => Outcome { rejected: Some(reason), ..Outcome::default() },
        }
    }

    fn try_place(&mut self, o: &NewOrder, out: &mut Outcome) -> Result<(), RejectReason> {
        if o.user.0 >= self.users {
            return Err(RejectReason::UnknownUser(o.user));
        }
        let Some(market) = self.markets.get(o.market.0 as usize).copied() else {
            return Err(RejectReason::UnknownMarket(o.market));
        };
        if market.status != MarketStatus::Open {
            return Err(RejectReason::MarketNotOpen { market: market.id, status: market.status });
        }
        let rules = market.rules;
        let spend = if o.side == Side::Buy { rules.quote } else { rules.base };
        let available = self.bal(o.user.0, spend).0;
        let short = |needed: u64| RejectReason::InsufficientFunds {
            asset: spend,
            needed: Units(needed),
            available: Units(available),
        };
        let (limit, qty, mut budget, tif) = match o.kind {
            OrderKind::Limit { price, qty, tif } => {
                let notional = Model::size_check(&rules, price.0, qty.0)?;
                let need = if o.side == Side::Buy { notional } else { qty.0 * rules.base_units_per_lot };
                if available < need {
                    return Err(short(need));
                }
                (Some(price.0), qty.0, None, tif)
            }
            OrderKind::Market { qty } => {
                if qty.0 == 0 {
                    return Err(RejectReason::ZeroQuantity);
                }
                if qty < rules.min_qty {
                    return Err(RejectReason::QuantityBelowMinimum { qty, min: rules.min_qty });
                }
                let base = qty.0 * rules.base_units_per_lot;
                let budget = match o.side {
                    Side::Sell if available < base => return Err(short(base)),
                    Side::Sell => None,
                    Side::Buy if available == 0 => return Err(short(1)),
                    Side::Buy => Some(available),
                };
                (None, qty.0, budget, TimeInForce::Ioc)
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
                let lots = match o.side {
                    Side::Buy if available < amount.0 => return Err(short(amount.0)),
                    Side::Buy => u64::MAX,
                    Side::Sell if available < rules.base_units_per_lot => {
                        return Err(short(rules.base_units_per_lot))
                    }
                    Side::Sell => available / rules.base_units_per_lot,
                };
                (None, lots, Some(amount.0), TimeInForce::Ioc)
            }
            _ => unreachable!("the model does not generate these kinds yet"),
        };
        if let Some(cid) = o.client_order_id {
            if self.orders.iter().any(|x| x.user == o.user.0 && x.cid == Some(cid)) {
                return Err(RejectReason::DuplicateClientOrderId(cid));
            }
        }
        let may_rest = matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly);
        if may_rest && self.orders.iter().filter(|x| x.user == o.user.0).count() as u32 >= self.open_limit {
            return Err(RejectReason::OpenOrderLimit { limit: self.open_limit });
        }
        let m = market.id.0 as usize;
        if tif == TimeInForce::PostOnly {
            if let Some(best) = self.best(m, o.side.opposite()) {
                if Model::crosses(o.side, limit.unwrap_or(0), self.orders[best].price) {
                    return Err(RejectReason::PostOnlyWouldTake);
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let fillable = tif != TimeInForce::Fok || {
            // Try it on a copy: fillable when it would fill completely.
            let mut trial = self.clone();
            let (mut remaining, mut filled, mut b) = (qty, 0, budget);
            let mut scratch = Outcome::default();
            trial.match_taker(
                id,
                o.user.0,
                m,
                o.side,
                limit,
                &mut remaining,
                &mut filled,
                &mut b,
                o.stp,
                &mut scratch,
            );
            remaining == 0
        };
        let (mut remaining, mut filled) = (qty, 0);
        let end = if fillable {
            self.match_taker(
                id,
                o.user.0,
                m,
                o.side,
                limit,
                &mut remaining,
                &mut filled,
                &mut budget,
                o.stp,
                out,
            )
        } else {
            End::NoCross
        };
        if may_rest && end != End::SelfTrade && remaining > 0 {
            self.clock += 1;
            let order = MOrder {
                id,
                user: o.user.0,
                market: m,
                side: o.side,
                price: limit.unwrap_or(0),
                remaining,
                filled,
                post_only: tif == TimeInForce::PostOnly,
                stp: o.stp,
                cid: o.client_order_id,
                time: self.clock,
            };
            let (asset, amount) = Model::lock_of(&rules, &order);
            let b = self.bal(o.user.0, asset);
            b.0 -= amount;
            b.1 += amount;
            self.orders.push(order);
        } else {
            let by_quote = matches!(o.kind, OrderKind::MarketByQuote { .. });
            // By quote: filled once the rest of the amount cannot pay for a
            // lot at the price of the order's last trade.
            let last_price = out.trades.iter().rev().find(|t| t.1 == id).map(|t| t.2);
            let spent = match (budget, last_price) {
                (Some(left), Some(price)) => left < price * rules.quote_units_per_tick,
                _ => false,
            };
            let reason = match end {
                End::SelfTrade => DoneReason::SelfTrade,
                End::Budget if by_quote => DoneReason::Filled,
                _ if by_quote && spent => DoneReason::Filled,
                End::Complete if by_quote => DoneReason::FundsExhausted,
                End::Complete => DoneReason::Filled,
                End::Budget => DoneReason::FundsExhausted,
                End::NoCross => DoneReason::Expired,
            };
            out.done.push((id, reason, filled, if by_quote { 0 } else { remaining }));
        }
        Ok(())
    }

    fn find(&self, user: UserId, r: OrderRef) -> Result<usize, RejectReason> {
        if user.0 >= self.users {
            return Err(RejectReason::UnknownUser(user));
        }
        self.orders
            .iter()
            .position(|o| {
                o.user == user.0
                    && match r {
                        OrderRef::Id(id) => o.id == id.0,
                        OrderRef::Client(cid) => o.cid == Some(cid),
                    }
            })
            .ok_or(RejectReason::UnknownOrder)
    }

    fn cancel(&mut self, user: UserId, r: OrderRef) -> Outcome {
        let mut out = Outcome::default();
        let index = match self.find(user, r) {
            Ok(index) => index,
            Err(reason) => return Outcome { rejected: Some(reason), ..out },
        };
        let market = self.markets[self.orders[index].market];
        if market.status == MarketStatus::Halted {
            return Outcome { rejected: Some(RejectReason::MarketHalted { market: market.id }), ..out };
        }
        self.remove_order(index, DoneReason::Cancelled, &mut out);
        out
    }

    fn cancel_all(&mut self, user: UserId, only: Option<MarketId>) -> Outcome {
        let mut out = Outcome::default();
        if user.0 >= self.users {
            return Outcome { rejected: Some(RejectReason::UnknownUser(user)), ..out };
        }
        if let Some(m) = only {
            match self.markets.get(m.0 as usize) {
                None => return Outcome { rejected: Some(RejectReason::UnknownMarket(m)), ..out },
                Some(mk) if mk.status == MarketStatus::Halted => {
                    return Outcome { rejected: Some(RejectReason::MarketHalted { market: m }), ..out }
                }
                _ => {}
            }
        }
        let mut ids: Vec<u64> = self
            .orders
            .iter()
            .filter(|o| {
                o.user == user.0
                    && only.is_none_or(|m| m.0 as usize == o.market)
                    && self.markets[o.market].status != MarketStatus::Halted
            })
            .map(|o| o.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let index = self.orders.iter().position(|o| o.id == id).unwrap();
            self.remove_order(index, DoneReason::Cancelled, &mut out);
        }
        out
    }

    fn amend(&mut self, a: &Amend) -> Outcome {
        let mut out = Outcome::default();
        match self.try_amend(a, &mut out) {
            Ok(()) => out,
            Err(reason) => Outcome { rejected: Some(reason), ..Outcome::default() },
        }
    }

    fn try_amend(&mut self, a: &Amend, out: &mut Outcome) -> Result<(), RejectReason> {
        let index = self.find(a.user, a.order)?;
        let o = self.orders[index].clone();
        let market = self.markets[o.market];
        let rules = market.rules;
        let price = a.new_price.map_or(o.price, |p| p.0);
        let qty = a.new_qty.map_or(o.remaining, |q| q.0);
        if qty == 0 {
            return Err(RejectReason::ZeroQuantity);
        }
        if price == 0 {
            return Err(RejectReason::ZeroPrice);
        }
        if price == o.price && qty == o.remaining {
            return Err(RejectReason::AmendNoChange);
        }
        let keeps = price == o.price && qty < o.remaining;
        match market.status {
            MarketStatus::Halted => return Err(RejectReason::MarketHalted { market: market.id }),
            MarketStatus::CancelOnly if !keeps => {
                return Err(RejectReason::MarketNotOpen { market: market.id, status: market.status })
            }
            _ => {}
        }
        let (asset, old_lock) = Model::lock_of(&rules, &o);
        if keeps {
            let mut shrunk = o.clone();
            shrunk.remaining = qty;
            let (_, new_lock) = Model::lock_of(&rules, &shrunk);
            self.orders[index].remaining = qty;
            let b = self.bal(o.user, asset);
            b.1 -= old_lock - new_lock;
            b.0 += old_lock - new_lock;
            return Ok(());
        }
        let notional = Model::size_check(&rules, price, qty)?;
        let new_lock = if o.side == Side::Buy { notional } else { qty * rules.base_units_per_lot };
        let available = self.bal(o.user, asset).0;
        if available + old_lock < new_lock {
            return Err(RejectReason::InsufficientFunds {
                asset,
                needed: Units(new_lock - old_lock),
                available: Units(available),
            });
        }
        if o.post_only {
            if let Some(best) = self.best(o.market, o.side.opposite()) {
                if Model::crosses(o.side, price, self.orders[best].price) {
                    return Err(RejectReason::PostOnlyWouldTake);
                }
            }
        }
        self.orders.remove(index);
        let b = self.bal(o.user, asset);
        b.1 -= old_lock;
        b.0 += old_lock;
        let (mut remaining, mut filled, mut budget) = (qty, o.filled, None);
        let end = self.match_taker(
            o.id,
            o.user,
            o.market,
            o.side,
            Some(price),
            &mut remaining,
            &mut filled,
            &mut budget,
            o.stp,
            out,
        );
        if end != End::SelfTrade && remaining > 0 {
            self.clock += 1;
            let order = MOrder { price, remaining, filled, time: self.clock, ..o };
            let (asset, amount) = Model::lock_of(&rules, &order);
            let b = self.bal(order.user, asset);
            b.0 -= amount;
            b.1 += amount;
            self.orders.push(order);
        } else {
            let reason = if end == End::SelfTrade { DoneReason::SelfTrade } else { DoneReason::Filled };
            out.done.push((o.id, reason, filled, remaining));
        }
        Ok(())
    }

    fn funds(&mut self, user: UserId, asset: AssetId, amount: Units, deposit: bool) -> Outcome {
        let reject = |reason| Outcome { rejected: Some(reason), ..Outcome::default() };
        if user.0 >= self.users {
            return reject(RejectReason::UnknownUser(user));
        }
        if asset.0 >= ASSETS {
            return reject(RejectReason::UnknownAsset(asset));
        }
        if amount.0 == 0 {
            return reject(RejectReason::ZeroAmount);
        }
        let b = self.bal(user.0, asset);
        if deposit {
            b.0 += amount.0;
        } else if b.0 < amount.0 {
            let available = Units(b.0);
            return reject(RejectReason::InsufficientFunds { asset, needed: amount, available });
        } else {
            b.0 -= amount.0;
        }
        Outcome::default()
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        match *command {
            Command::PlaceOrder(o) => self.place(&o),
            Command::CancelOrder { user, order } => self.cancel(user, order),
            Command::CancelAll { user, market } => self.cancel_all(user, market),
            Command::Amend(a) => self.amend(&a),
            Command::Deposit { user, asset, amount } => self.funds(user, asset, amount, true),
            Command::Withdraw { user, asset, amount } => self.funds(user, asset, amount, false),
            Command::SetMarketStatus { market, status } => {
                self.markets[market.0 as usize].status = status;
                Outcome::default()
            }
            Command::SetLimits { limits } => {
                self.open_limit = limits.open_orders_per_user_max;
                Outcome::default()
            }
            _ => unreachable!("the generator makes no other commands"),
        }
    }

    /// Each market's book as (price, [(order id, remaining)]) per level, best first.
    fn book(&self, market: usize, side: Side) -> Vec<(u64, Vec<(u64, u64)>)> {
        let mut orders: Vec<&MOrder> =
            self.orders.iter().filter(|o| o.market == market && o.side == side).collect();
        orders.sort_by_key(|o| (if side == Side::Buy { u64::MAX - o.price } else { o.price }, o.time));
        let mut levels: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        for o in orders {
            match levels.last_mut() {
                Some((price, queue)) if *price == o.price => queue.push((o.id, o.remaining)),
                _ => levels.push((o.price, vec![(o.id, o.remaining)])),
            }
        }
        levels
    }
}

// ----- what the engine reported -------------------------------------------------

fn outcome(events: &[Event]) -> Outcome {
    let mut out = Outcome::default();
    for e in events {
        match e.kind {
            EventKind::Rejected { reason, .. } => out.rejected = Some(reason),
            EventKind::Trade { maker_order, taker_order, price, qty, maker_fee, taker_fee, .. } => {
                out.trades.push((maker_order.0, taker_order.0, price.0, qty.0, maker_fee.0, taker_fee.0))
            }
            EventKind::OrderDone { order, reason, filled, cancelled, .. } => {
                out.done.push((order.0, reason, filled.0, cancelled.0))
            }
            _ => {}
        }
    }
    out
}

/// What a downstream consumer can know from events alone.
#[derive(Default)]
struct EventView {
    levels: BTreeMap<(u32, bool, u64), u64>,
    balances: BTreeMap<(u32, u32), (u64, u64)>,
    /// order id -> (user, open quantity); absent once done.
    open: BTreeMap<u64, (u32, u64)>,
}

impl EventView {
    fn follow(&mut self, events: &[Event]) {
        for e in events {
            match e.kind {
                EventKind::BookLevel { market, side, price, qty } => {
                    let key = (market.0, side == Side::Buy, price.0);
                    if qty.0 == 0 {
                        self.levels.remove(&key);
                    } else {
                        self.levels.insert(key, qty.0);
                    }
                }
                EventKind::Balance { user, asset, available, locked } => {
                    self.balances.insert((user.0, asset.0), (available.0, locked.0));
                }
                EventKind::OrderAccepted { order, user, kind, .. } => {
                    let qty = match kind {
                        OrderKind::Limit { qty, .. } | OrderKind::Market { qty } => qty.0,
                        OrderKind::MarketByQuote { .. } => 0,
                        other => other.qty().map_or(0, |q| q.0),
                    };
                    self.open.insert(order.0, (user.0, qty));
                }
                EventKind::Trade { maker_order, maker_remaining, taker_order, taker_remaining, .. } => {
                    if let Some(entry) = self.open.get_mut(&maker_order.0) {
                        entry.1 = maker_remaining.0;
                    }
                    if let Some(entry) = self.open.get_mut(&taker_order.0) {
                        entry.1 = taker_remaining.0;
                    }
                }
                EventKind::OrderAmended { order, remaining, .. } => {
                    if let Some(entry) = self.open.get_mut(&order.0) {
                        entry.1 = remaining.0;
                    }
                }
                EventKind::OrderDone { order, .. } => {
                    self.open.remove(&order.0);
                }
                _ => {}
            }
        }
    }
}

// ----- the random streams ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Place {
        user: u32,
        market: u32,
        buy: bool,
        kind: u8,
        price: u64,
        qty: u64,
        cid: Option<u8>,
        stp: u8,
    },
    Cancel {
        pick: usize,
        by_cid: bool,
        foreign: Option<u32>,
    },
    CancelAll {
        user: u32,
        market: Option<u32>,
    },
    Amend {
        pick: usize,
        qty: Option<u64>,
        price: Option<u64>,
        foreign: Option<u32>,
    },
    Deposit {
        user: u32,
        asset: u32,
        amount: u64,
    },
    Withdraw {
        user: u32,
        asset: u32,
        amount: u64,
    },
    Status {
        market: u32,
        status: u8,
    },
    /// A new open-orders limit per user, lowered below what users hold at times.
    Limits {
        open: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = prop_oneof![40 => 0..USERS, 1 => Just(USERS)];
    let market = prop_oneof![40 => 0u32..3, 1 => Just(3u32)];
    prop_oneof![
        60 => (user.clone(), market.clone(), any::<bool>(), 0u8..12, 0u64..24, 0u64..16,
               prop::option::weighted(0.3, 0u8..4), 0u8..4)
            .prop_map(|(user, market, buy, kind, price, qty, cid, stp)| Op::Place {
                user, market, buy, kind, price, qty, cid, stp
            }),
        8 => (any::<usize>(), any::<bool>(), prop::option::weighted(0.1, 0..USERS))
            .prop_map(|(pick, by_cid, foreign)| Op::Cancel { pick, by_cid, foreign }),
        2 => (user.clone(), prop::option::of(market.clone())).prop_map(|(user, market)| Op::CancelAll { user, market }),
        8 => (any::<usize>(), prop::option::of(0u64..24), prop::option::of(0u64..24),
               prop::option::weighted(0.1, 0..USERS))
            .prop_map(|(pick, qty, price, foreign)| Op::Amend { pick, qty, price, foreign }),
        5 => (user.clone(), 0..ASSETS + 1, 0u64..3_000).prop_map(|(user, asset, amount)| Op::Deposit { user, asset, amount }),
        5 => (user, 0..ASSETS + 1, 0u64..3_000).prop_map(|(user, asset, amount)| Op::Withdraw { user, asset, amount }),
        1 => (0u32..3, 0u8..8).prop_map(|(market, status)| Op::Status { market, status }),
        1 => (0u32..12).prop_map(|open| Op::Limits { open }),
    ]
}

fn setup_commands(fees: &[(u32, u32)]) -> Vec<Command> {
    let mut commands = Vec::new();
    for symbol in ["AAA", "BBB", "CCC"] {
        commands.push(Command::CreateAsset { symbol: Symbol::new(symbol).unwrap(), decimals: 6 });
    }
    // (base, quote, units per lot, units per tick, min qty, min notional)
    let shapes = [(0, 1, 10, 1, 1, 0), (2, 1, 1, 3, 2, 10), (2, 0, 5, 2, 1, 4)];
    for (i, &(base, quote, lot, tick, min_qty, min_notional)) in shapes.iter().enumerate() {
        let rules = MarketRules {
            base: AssetId(base),
            quote: AssetId(quote),
            base_units_per_lot: lot,
            quote_units_per_tick: tick,
            min_qty: Lots(min_qty),
            min_notional: Units(min_notional),
            maker_fee_ppm: fees[i].0,
            taker_fee_ppm: fees[i].1,
        };
        commands.push(Command::CreateMarket { rules, status: MarketStatus::Open });
    }
    for user in 0..USERS {
        commands.push(Command::CreateUser);
        for asset in 0..ASSETS {
            commands.push(Command::Deposit {
                user: UserId(user),
                asset: AssetId(asset),
                amount: Units(DEPOSIT),
            });
        }
    }
    commands
}

/// Turns an abstract operation into a command, resolving "pick an open
/// order" against the model's current open orders.
fn to_command(op: &Op, model: &Model) -> Command {
    let cid = |n: u8| ClientOrderId::new(&format!("c{n}")).unwrap();
    let target = |pick: usize, by_cid: bool, foreign: Option<u32>| -> (UserId, OrderRef) {
        if model.orders.is_empty() {
            return (UserId(foreign.unwrap_or(0)), OrderRef::Id(OrderId(pick as u64 % 50 + 1)));
        }
        let o = &model.orders[pick % model.orders.len()];
        let reference = match (by_cid, o.cid) {
            (true, Some(c)) => OrderRef::Client(c),
            _ => OrderRef::Id(OrderId(o.id)),
        };
        (UserId(foreign.unwrap_or(o.user)), reference)
    };
    match *op {
        Op::Place { user, market, buy, kind, price, qty, cid: c, stp } => {
            let limit = |tif| OrderKind::Limit { price: Ticks(price), qty: Lots(qty), tif };
            // Mostly orders that rest, so that books fill up and trade.
            let kind = match kind {
                0..=5 => limit(TimeInForce::Gtc),
                6 => limit(TimeInForce::Ioc),
                7 => limit(TimeInForce::Fok),
                8 | 9 => limit(TimeInForce::PostOnly),
                10 => OrderKind::Market { qty: Lots(qty) },
                _ => OrderKind::MarketByQuote { amount: Units(price * qty * 3) },
            };
            let stp = [
                SelfTradePrevention::CancelTaker,
                SelfTradePrevention::CancelMaker,
                SelfTradePrevention::CancelBoth,
                SelfTradePrevention::Allow,
            ][stp as usize];
            Command::PlaceOrder(NewOrder {
                user: UserId(user),
                market: MarketId(market),
                side: if buy { Side::Buy } else { Side::Sell },
                kind,
                client_order_id: c.map(cid),
                stp,
            })
        }
        Op::Cancel { pick, by_cid, foreign } => {
            let (user, order) = target(pick, by_cid, foreign);
            Command::CancelOrder { user, order }
        }
        Op::CancelAll { user, market } => {
            Command::CancelAll { user: UserId(user), market: market.map(MarketId) }
        }
        Op::Amend { pick, qty, price, foreign } => {
            let (user, order) = target(pick, pick % 3 == 0, foreign);
            Command::Amend(Amend { user, order, new_qty: qty.map(Lots), new_price: price.map(Ticks) })
        }
        Op::Deposit { user, asset, amount } => {
            Command::Deposit { user: UserId(user), asset: AssetId(asset), amount: Units(amount) }
        }
        Op::Withdraw { user, asset, amount } => {
            Command::Withdraw { user: UserId(user), asset: AssetId(asset), amount: Units(amount) }
        }
        Op::Status { market, status } => Command::SetMarketStatus {
            market: MarketId(market),
            // Mostly open, so that trading goes on.
            status: match status {
                0 => MarketStatus::Halted,
                1 => MarketStatus::CancelOnly,
                _ => MarketStatus::Open,
            },
        },
        Op::Limits { open } => Command::SetLimits {
            limits: EngineLimits { open_orders_per_user_max: open, ..EngineLimits::default() },
        },
    }
}

fn engine_book(engine: &Engine, market: usize) -> [Vec<(u64, u64)>; 2] {
    [Side::Buy, Side::Sell].map(|side| {
        engine.depth(MarketId(market as u32), side, usize::MAX).into_iter().map(|(p, q)| (p.0, q.0)).collect()
    })
}

fn run_stream(fees: &[(u32, u32)], ops: &[Op], open_limit: u32) -> Result<(), TestCaseError> {
    let limits = EngineLimits { open_orders_per_user_max: open_limit, ..EngineLimits::default() };
    let mut engine = Engine::new(limits);
    let mut view = EventView::default();
    let mut events = Vec::new();
    let mut seq = 0u64;
    let mut step = |engine: &mut Engine, view: &mut EventView, command: Command, events: &mut Vec<Event>| {
        seq += 1;
        events.clear();
        engine.apply(&StampedCommand { seq, timestamp_ns: seq, command }, events).unwrap();
        view.follow(events);
    };
    for command in setup_commands(fees) {
        step(&mut engine, &mut view, command, &mut events);
        prop_assert!(outcome(&events).rejected.is_none(), "setup rejected: {events:?}");
    }
    let mut model = Model {
        markets: engine.markets().copied().collect(),
        users: USERS,
        balances: (0..USERS).flat_map(|u| (0..ASSETS).map(move |a| ((u, a), (DEPOSIT, 0)))).collect(),
        fees: BTreeMap::new(),
        orders: Vec::new(),
        next_id: 1,
        clock: 0,
        open_limit,
    };

    for op in ops {
        let command = to_command(op, &model);
        step(&mut engine, &mut view, command, &mut events);
        let expected = model.apply(&command);
        let got = outcome(&events);
        prop_assert_eq!(&got.rejected, &expected.rejected, "rejection differs for {:?}", command);
        prop_assert_eq!(&got.trades, &expected.trades, "trades differ for {:?}", command);
        prop_assert_eq!(&got.done, &expected.done, "closed orders differ for {:?}", command);
        if let Err(violation) = engine.check_touched(&events) {
            return Err(TestCaseError::fail(format!("after {command:?}: {violation}")));
        }
        if let Err(violation) = engine.check_invariants() {
            return Err(TestCaseError::fail(format!("after {command:?}: {violation}")));
        }
        for (&(user, asset), &(available, locked)) in &model.balances {
            let b = engine.balance(UserId(user), AssetId(asset));
            prop_assert_eq!(
                (b.available.0, b.locked.0),
                (available, locked),
                "user {} asset {} after {:?}",
                user,
                asset,
                command
            );
        }
        for asset in 0..ASSETS {
            let fees = engine.asset_totals(AssetId(asset)).unwrap().fees.0;
            prop_assert_eq!(fees, model.fees.get(&asset).copied().unwrap_or(0));
        }
    }

    // Every book, level by level and order by order.
    let snapshot = engine.snapshot();
    for market in 0..model.markets.len() {
        let [bids, asks] = engine_book(&engine, market);
        for (side, levels) in [(Side::Buy, bids), (Side::Sell, asks)] {
            let expected = model.book(market, side);
            let totals: Vec<(u64, u64)> =
                expected.iter().map(|(p, queue)| (*p, queue.iter().map(|o| o.1).sum())).collect();
            prop_assert_eq!(&levels, &totals, "market {} {:?} levels", market, side);
            let queued: Vec<(u64, u64)> = snapshot
                .orders
                .iter()
                .filter(|o| o.market.0 as usize == market && o.side == side)
                .map(|o| (o.id.0, o.remaining.0))
                .collect();
            let model_queued: Vec<(u64, u64)> = expected.into_iter().flat_map(|(_, q)| q).collect();
            prop_assert_eq!(queued, model_queued, "market {} {:?} queue order", market, side);
        }
    }

    // The event stream alone rebuilds books, balances and open orders.
    let mut levels_from_engine = BTreeMap::new();
    for market in 0..model.markets.len() {
        let [bids, asks] = engine_book(&engine, market);
        for (p, q) in bids {
            levels_from_engine.insert((market as u32, true, p), q);
        }
        for (p, q) in asks {
            levels_from_engine.insert((market as u32, false, p), q);
        }
    }
    prop_assert_eq!(&view.levels, &levels_from_engine);
    for (&(user, asset), &balance) in &view.balances {
        let b = engine.balance(UserId(user), AssetId(asset));
        prop_assert_eq!(balance, (b.available.0, b.locked.0));
    }
    let open_from_engine: BTreeMap<u64, (u32, u64)> =
        snapshot.orders.iter().map(|o| (o.id.0, (o.user.0, o.remaining.0))).collect();
    prop_assert_eq!(&view.open, &open_from_engine);
    Ok(())
}

fn fee_rates() -> impl Strategy<Value = Vec<(u32, u32)>> {
    let rate = prop_oneof![Just(0u32), Just(1_000), Just(2_500), Just(FEE_PPM_MAX)];
    prop::collection::vec((rate.clone(), rate), 3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(fees in fee_rates(), ops in prop::collection::vec(op(), 1..600)) {
        run_stream(&fees, &ops, 12)?;
    }

    #[test]
    fn engine_matches_the_reference_model_with_a_tight_open_order_limit(
        fees in fee_rates(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run_stream(&fees, &ops, 2)?;
    }
}
