//! The engine: applies one stamped command at a time and reports what
//! happened as events.
//!
//! Every handler first validates everything it will need and only then
//! mutates, so a rejected command leaves the state exactly as it was.

use serde::{Deserialize, Serialize};

use crate::accounts::{Account, AssetTotals, Balance};
use crate::book::{BookSide, Order, OrderBook, OrderSlab, NIL};
use crate::command::{
    Amend, Command, NewOrder, OrderKind, OrderRef, SelfTradePrevention, StampedCommand, TimeInForce,
};
use crate::event::{Capacity, DoneReason, Event, EventKind, RejectReason};
use crate::index::OrderIndex;
use crate::limits::EngineLimits;
use crate::market::{fee, Asset, Market, MarketRules, MarketStatus, ASSET_DECIMALS_MAX, FEE_PPM_MAX};
use crate::units::{
    ApiKey, ApiSecret, AssetId, Lots, MarketId, OrderId, Side, Symbol, Ticks, TradeId, Units, UserId,
    API_KEY_LEN_MIN,
};

/// A command arrived out of order. This is a bug in whoever feeds the
/// engine, not bad input: the command was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceError {
    pub expected: u64,
    pub got: u64,
}

impl std::fmt::Display for SequenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command sequence {} applied where {} was expected", self.got, self.expected)
    }
}

impl std::error::Error for SequenceError {}

/// The best price on each side of a book, with the total quantity there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopOfBook {
    pub bid: Option<(Ticks, Lots)>,
    pub ask: Option<(Ticks, Lots)>,
}

#[derive(Clone, Debug)]
pub(crate) struct MarketState {
    pub market: Market,
    pub book: OrderBook,
}

/// The whole trading state. See the crate documentation for an example.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(crate) limits: EngineLimits,
    pub(crate) last_seq: u64,
    pub(crate) next_order_id: u64,
    pub(crate) next_trade_id: u64,
    pub(crate) assets: Vec<Asset>,
    pub(crate) totals: Vec<AssetTotals>,
    pub(crate) markets: Vec<MarketState>,
    pub(crate) accounts: Vec<Account>,
    pub(crate) orders: OrderSlab,
    /// Resting order id -> slab slot. Only looked up, never iterated.
    pub(crate) index: OrderIndex,
    /// Every API key, sorted by key.
    pub(crate) api_keys: Vec<ApiKeyEntry>,
}

/// One API key and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    pub key: ApiKey,
    pub secret: ApiSecret,
    pub user: UserId,
}

/// An incoming order (new, or re-entering after an amend) while it matches.
struct Taker {
    order: OrderId,
    user: UserId,
    market: MarketId,
    side: Side,
    /// `None` for market orders.
    limit: Option<Ticks>,
    /// What it still wants; `u64::MAX` for a market buy by quote.
    remaining: Lots,
    filled: Lots,
    /// What a market buy may still spend.
    quote_budget: Option<Units>,
    /// A market order by quote amount, which has no quantity of its own.
    by_quote: bool,
    /// The price of its last fill.
    last_price: Option<Ticks>,
    stp: SelfTradePrevention,
    timestamp_ns: u64,
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

/// Where events of the command being applied go.
struct Emitter<'a> {
    seq: u64,
    out: &'a mut Vec<Event>,
}

impl Emitter<'_> {
    #[inline]
    fn emit(&mut self, kind: EventKind) {
        self.out.push(Event { seq: self.seq, kind });
    }
}

impl Engine {
    /// An empty engine that expects sequence number 1 next.
    pub fn new(limits: EngineLimits) -> Engine {
        // Room for the working set up front, so that placing orders does
        // not grow (and copy) the slab.
        Engine::with_order_slots(limits, 1 << 16)
    }

    /// An empty engine whose order slab has room for `slots` orders.
    pub(crate) fn with_order_slots(limits: EngineLimits, slots: usize) -> Engine {
        Engine {
            limits,
            last_seq: 0,
            next_order_id: 1,
            next_trade_id: 1,
            assets: Vec::new(),
            totals: Vec::new(),
            markets: Vec::new(),
            accounts: Vec::new(),
            orders: OrderSlab::with_capacity(slots),
            index: OrderIndex::default(),
            api_keys: Vec::new(),
        }
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// The sequence number of the last command applied (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    pub fn market(&self, market: MarketId) -> Option<&Market> {
        self.markets.get(market.index()).map(|state| &state.market)
    }

    pub fn markets(&self) -> impl Iterator<Item = &Market> {
        self.markets.iter().map(|state| &state.market)
    }

    pub fn user_count(&self) -> u32 {
        self.accounts.len() as u32
    }

    /// The user's balance in `asset` (zero for unknown users and assets).
    pub fn balance(&self, user: UserId, asset: AssetId) -> Balance {
        self.accounts.get(user.index()).map(|account| account.balance(asset)).unwrap_or_default()
    }

    pub fn asset_totals(&self, asset: AssetId) -> Option<AssetTotals> {
        self.totals.get(asset.index()).copied()
    }

    /// Number of resting orders across all markets.
    pub fn open_order_count(&self) -> u32 {
        self.orders.len()
    }

    /// The best bid and ask of a market with the total quantity at each.
    pub fn top_of_book(&self, market: MarketId) -> Option<TopOfBook> {
        let state = self.markets.get(market.index())?;
        let best = |side: &BookSide| side.best().map(|level| (level.price, level.qty));
        Some(TopOfBook { bid: best(&state.book.bids), ask: best(&state.book.asks) })
    }

    /// Up to `depth_max` levels of one side, best first, as (price, total qty).
    pub fn depth(&self, market: MarketId, side: Side, depth_max: usize) -> Vec<(Ticks, Lots)> {
        let Some(state) = self.markets.get(market.index()) else { return Vec::new() };
        state.book.side(side).levels().take(depth_max).map(|level| (level.price, level.qty)).collect()
    }

    /// Applies `command`, appending its events to `out` (which is not
    /// cleared, so a caller can gather a batch). Every command yields at
    /// least one event.
    pub fn apply(&mut self, command: &StampedCommand, out: &mut Vec<Event>) -> Result<(), SequenceError> {
        let expected = self.last_seq + 1;
        if command.seq != expected {
            return Err(SequenceError { expected, got: command.seq });
        }
        self.last_seq = command.seq;
        let mut emitter = Emitter { seq: command.seq, out };
        let ts = command.timestamp_ns;
        let result = match command.command {
            Command::CreateAsset { symbol, decimals } => self.create_asset(symbol, decimals, &mut emitter),
            Command::CreateMarket { rules, status } => self.create_market(rules, status, &mut emitter),
            Command::SetMarketStatus { market, status } => {
                self.set_market_status(market, status, &mut emitter)
            }
            Command::SetMarketFees { market, maker_fee_ppm, taker_fee_ppm } => {
                self.set_market_fees(market, maker_fee_ppm, taker_fee_ppm, &mut emitter)
            }
            Command::CreateUser => self.create_user(&mut emitter),
            Command::CreateApiKey { user, key, secret } => {
                self.create_api_key(user, key, secret, &mut emitter)
            }
            Command::RevokeApiKey { user, key } => self.revoke_api_key(user, key, &mut emitter),
            Command::Deposit { user, asset, amount } => self.deposit(user, asset, amount, &mut emitter),
            Command::Withdraw { user, asset, amount } => self.withdraw(user, asset, amount, &mut emitter),
            Command::PlaceOrder(order) => self.place(&order, ts, &mut emitter),
            Command::CancelOrder { user, order } => self.cancel(user, order, &mut emitter),
            Command::CancelAll { user, market } => self.cancel_all(user, market, &mut emitter),
            Command::Amend(amend) => self.amend(&amend, ts, &mut emitter),
            Command::SetLimits { limits } => {
                self.limits = limits;
                emitter.emit(EventKind::LimitsChanged { limits });
                Ok(())
            }
            Command::PlaceOrderList(_) | Command::CancelOrderList { .. } => {
                Err(RejectReason::UnknownOrderList)
            }
        };
        if let Err(reason) = result {
            let (user, client_order_id) = match command.command {
                Command::Deposit { user, .. }
                | Command::Withdraw { user, .. }
                | Command::CreateApiKey { user, .. }
                | Command::RevokeApiKey { user, .. }
                | Command::CancelOrder { user, .. }
                | Command::CancelAll { user, .. } => (Some(user), None),
                Command::PlaceOrder(order) => (Some(order.user), order.client_order_id),
                Command::Amend(amend) => (Some(amend.user), None),
                Command::PlaceOrderList(list) => (Some(list.user), list.client_list_id),
                Command::CancelOrderList { user, .. } => (Some(user), None),
                _ => (None, None),
            };
            emitter.emit(EventKind::Rejected { user, client_order_id, reason });
        }
        Ok(())
    }

    // ----- reference data -------------------------------------------------

    fn create_asset(
        &mut self,
        symbol: Symbol,
        decimals: u8,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        if self.assets.len() >= self.limits.assets_max as usize {
            return Err(RejectReason::EngineCapacity {
                what: Capacity::Assets,
                limit: self.limits.assets_max,
            });
        }
        if decimals > ASSET_DECIMALS_MAX {
            return Err(RejectReason::AssetDecimalsTooLarge { decimals, max: ASSET_DECIMALS_MAX });
        }
        if self.assets.iter().any(|asset| asset.symbol == symbol) {
            return Err(RejectReason::DuplicateAssetSymbol(symbol));
        }
        let id = AssetId(self.assets.len() as u32);
        self.assets.push(Asset { id, symbol, decimals });
        self.totals.push(AssetTotals::default());
        emitter.emit(EventKind::AssetCreated { asset: id, symbol, decimals });
        Ok(())
    }

    fn create_market(
        &mut self,
        rules: MarketRules,
        status: MarketStatus,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        if self.markets.len() >= self.limits.markets_max as usize {
            return Err(RejectReason::EngineCapacity {
                what: Capacity::Markets,
                limit: self.limits.markets_max,
            });
        }
        for asset in [rules.base, rules.quote] {
            if asset.index() >= self.assets.len() {
                return Err(RejectReason::UnknownAsset(asset));
            }
        }
        if rules.base == rules.quote {
            return Err(RejectReason::MarketAssetsEqual);
        }
        if rules.base_units_per_lot == 0 {
            return Err(RejectReason::ZeroLotSize);
        }
        if rules.quote_units_per_tick == 0 {
            return Err(RejectReason::ZeroTickSize);
        }
        check_fees(rules.maker_fee_ppm, rules.taker_fee_ppm)?;
        if let Some(existing) = self
            .markets
            .iter()
            .find(|state| state.market.rules.base == rules.base && state.market.rules.quote == rules.quote)
        {
            return Err(RejectReason::DuplicateMarket { existing: existing.market.id });
        }
        let id = MarketId(self.markets.len() as u32);
        self.markets.push(MarketState { market: Market { id, rules, status }, book: OrderBook::new() });
        emitter.emit(EventKind::MarketCreated { market: id, rules, status });
        Ok(())
    }

    fn set_market_status(
        &mut self,
        market: MarketId,
        status: MarketStatus,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let state = self.markets.get_mut(market.index()).ok_or(RejectReason::UnknownMarket(market))?;
        state.market.status = status;
        emitter.emit(EventKind::MarketStatusChanged { market, status });
        Ok(())
    }

    fn set_market_fees(
        &mut self,
        market: MarketId,
        maker_fee_ppm: u32,
        taker_fee_ppm: u32,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        check_fees(maker_fee_ppm, taker_fee_ppm)?;
        let state = self.markets.get_mut(market.index()).ok_or(RejectReason::UnknownMarket(market))?;
        state.market.rules.maker_fee_ppm = maker_fee_ppm;
        state.market.rules.taker_fee_ppm = taker_fee_ppm;
        emitter.emit(EventKind::MarketFeesChanged { market, maker_fee_ppm, taker_fee_ppm });
        Ok(())
    }

    fn create_api_key(
        &mut self,
        user: UserId,
        key: ApiKey,
        secret: ApiSecret,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        let account = self.accounts.get(user.index()).ok_or(RejectReason::UnknownUser(user))?;
        for len in [key.as_str().len(), secret.expose().len()] {
            if len < API_KEY_LEN_MIN {
                return Err(RejectReason::ApiKeyTooShort { len: len as u32, min: API_KEY_LEN_MIN as u32 });
            }
        }
        if account.api_keys >= self.limits.api_keys_per_user_max {
            return Err(RejectReason::ApiKeyLimit { limit: self.limits.api_keys_per_user_max });
        }
        let Err(position) = self.api_keys.binary_search_by(|entry| entry.key.cmp(&key)) else {
            return Err(RejectReason::DuplicateApiKey);
        };
        self.api_keys.insert(position, ApiKeyEntry { key, secret, user });
        self.accounts[user.index()].api_keys += 1;
        emitter.emit(EventKind::ApiKeyCreated { user, key });
        Ok(())
    }

    fn revoke_api_key(
        &mut self,
        user: UserId,
        key: ApiKey,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        if user.index() >= self.accounts.len() {
            return Err(RejectReason::UnknownUser(user));
        }
        let position = match self.api_keys.binary_search_by(|entry| entry.key.cmp(&key)) {
            Ok(position) if self.api_keys[position].user == user => position,
            _ => return Err(RejectReason::UnknownApiKey),
        };
        self.api_keys.remove(position);
        self.accounts[user.index()].api_keys -= 1;
        emitter.emit(EventKind::ApiKeyRevoked { user, key });
        Ok(())
    }

    /// Every API key with its owner, sorted by key (to rebuild an
    /// authentication table after recovery).
    pub fn api_keys(&self) -> &[ApiKeyEntry] {
        &self.api_keys
    }

    fn create_user(&mut self, emitter: &mut Emitter) -> Result<(), RejectReason> {
        if self.accounts.len() >= self.limits.users_max as usize {
            return Err(RejectReason::EngineCapacity { what: Capacity::Users, limit: self.limits.users_max });
        }
        let user = UserId(self.accounts.len() as u32);
        self.accounts.push(Account::new());
        emitter.emit(EventKind::UserCreated { user });
        Ok(())
    }

    // ----- funds ------------------------------------------------------------

    /// The checks a deposit and a withdrawal share.
    fn check_funds_movement(&self, user: UserId, asset: AssetId, amount: Units) -> Result<(), RejectReason> {
        if user.index() >= self.accounts.len() {
            return Err(RejectReason::UnknownUser(user));
        }
        if asset.index() >= self.assets.len() {
            return Err(RejectReason::UnknownAsset(asset));
        }
        if amount.0 == 0 {
            return Err(RejectReason::ZeroAmount);
        }
        Ok(())
    }

    fn deposit(
        &mut self,
        user: UserId,
        asset: AssetId,
        amount: Units,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        self.check_funds_movement(user, asset, amount)?;
        let totals = &mut self.totals[asset.index()];
        if totals.outstanding() + u128::from(amount.0) > u128::from(u64::MAX) {
            return Err(RejectReason::SupplyOverflow { asset });
        }
        totals.deposited += u128::from(amount.0);
        let balance = self.accounts[user.index()].balance_mut(asset);
        balance.credit_available(amount);
        let balance = *balance;
        emitter.emit(EventKind::Deposited { user, asset, amount });
        emit_balance(emitter, user, asset, balance);
        Ok(())
    }

    fn withdraw(
        &mut self,
        user: UserId,
        asset: AssetId,
        amount: Units,
        emitter: &mut Emitter,
    ) -> Result<(), RejectReason> {
        self.check_funds_movement(user, asset, amount)?;
        let balance = self.accounts[user.index()].balance_mut(asset);
        if balance.available < amount {
            return Err(RejectReason::InsufficientFunds {
                asset,
                needed: amount,
                available: balance.available,
            });
        }
        balance.debit_available(amount);
        let balance = *balance;
        self.totals[asset.index()].withdrawn += u128::from(amount.0);
        emitter.emit(EventKind::Withdrawn { user, asset, amount });
        emit_balance(emitter, user, asset, balance);
        Ok(())
    }

    // ----- orders -----------------------------------------------------------

    fn place(&mut self, new: &NewOrder, ts: u64, emitter: &mut Emitter) -> Result<(), RejectReason> {
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
        let insufficient =
            |needed: Units| RejectReason::InsufficientFunds { asset: spend_asset, needed, available };

        let (limit, qty, quote_budget, tif) = match new.kind {
            OrderKind::Limit { price, qty, tif } => {
                let notional = check_order_size(&rules, price, qty)?;
                let needed = match new.side {
                    Side::Buy => notional,
                    Side::Sell => rules.base_units(qty).ok_or(RejectReason::Overflow)?,
                };
                if available < needed {
                    return Err(insufficient(needed));
                }
                (Some(price), qty, None, tif)
            }
            OrderKind::Market { qty } => {
                if qty.0 == 0 {
                    return Err(RejectReason::ZeroQuantity);
                }
                if qty < rules.min_qty {
                    return Err(RejectReason::QuantityBelowMinimum { qty, min: rules.min_qty });
                }
                let base = rules.base_units(qty).ok_or(RejectReason::Overflow)?;
                let budget = match new.side {
                    Side::Sell if available < base => return Err(insufficient(base)),
                    Side::Sell => None,
                    Side::Buy if available.0 == 0 => return Err(insufficient(Units(1))),
                    // A market buy by quantity spends what it needs, at most
                    // everything available.
                    Side::Buy => Some(available),
                };
                (None, qty, budget, TimeInForce::Ioc)
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
                let lots = match new.side {
                    Side::Buy if available < amount => return Err(insufficient(amount)),
                    // The budget bounds a buy; its quantity is unbounded.
                    Side::Buy => Lots(u64::MAX),
                    // A sell stops at the quote amount or when the seller's
                    // available base runs out, whichever comes first.
                    Side::Sell => {
                        let lots = available.0 / rules.base_units_per_lot;
                        if lots == 0 {
                            return Err(insufficient(Units(rules.base_units_per_lot)));
                        }
                        Lots(lots)
                    }
                };
                (None, lots, Some(amount), TimeInForce::Ioc)
            }
            OrderKind::Iceberg { .. } | OrderKind::StopMarket { .. } | OrderKind::StopLimit { .. } => {
                return Err(RejectReason::TimeInForceNotAllowed)
            }
        };
        if let Some(client_order_id) = new.client_order_id {
            if account.find_client_id(&client_order_id).is_some() {
                return Err(RejectReason::DuplicateClientOrderId(client_order_id));
            }
        }
        let may_rest = matches!(tif, TimeInForce::Gtc | TimeInForce::PostOnly);
        if may_rest {
            self.check_room_to_rest(account)?;
        }
        let opposite = state.book.side(new.side.opposite());
        if tif == TimeInForce::PostOnly {
            if let Some(price) = limit {
                if opposite.crosses(price) {
                    return Err(RejectReason::PostOnlyWouldTake);
                }
            }
        }
        let fillable = match (tif, limit) {
            (TimeInForce::Fok, Some(price)) => {
                self.fok_fillable(opposite, new.side, new.user, account.open_orders > 0, new.stp, price, qty)
            }
            _ => true,
        };

        // Validated: from here on the command is accepted and cannot fail.
        let order = OrderId(self.next_order_id);
        self.next_order_id += 1;
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
        let mut taker = Taker {
            order,
            user: new.user,
            market: market.id,
            side: new.side,
            limit,
            remaining: qty,
            filled: Lots(0),
            quote_budget,
            by_quote: matches!(new.kind, OrderKind::MarketByQuote { .. }),
            last_price: None,
            stp: new.stp,
            timestamp_ns: ts,
        };
        let end = if fillable { self.match_taker(&mut taker, emitter) } else { MatchEnd::NoCross };
        let rest = may_rest && end != MatchEnd::SelfTrade && taker.remaining.0 > 0;
        if rest {
            let slot = self.orders.insert(Order::new(
                order,
                new.user,
                market.id,
                new.side,
                taker.limit.unwrap_or_default(),
                taker.remaining,
                taker.filled,
                tif == TimeInForce::PostOnly,
                new.stp,
                new.client_order_id,
                ts,
            ));
            self.index.insert(order, slot);
            self.attach_to_user(slot);
            self.rest(slot, emitter);
        } else {
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
            let cancelled = match new.kind {
                OrderKind::MarketByQuote { .. } => Lots(0),
                _ => taker.remaining,
            };
            emitter.emit(EventKind::OrderDone {
                order,
                user: new.user,
                market: market.id,
                reason,
                filled: taker.filled,
                cancelled,
            });
        }
        let account = &self.accounts[new.user.index()];
        emit_balance(emitter, new.user, spend_asset, account.balance(spend_asset));
        emit_balance(emitter, new.user, get_asset, account.balance(get_asset));
        Ok(())
    }

    fn check_room_to_rest(&self, account: &Account) -> Result<(), RejectReason> {
        if account.open_orders >= self.limits.open_orders_per_user_max {
            return Err(RejectReason::OpenOrderLimit { limit: self.limits.open_orders_per_user_max });
        }
        if self.orders.len() >= self.limits.orders_max {
            return Err(RejectReason::EngineOrderCapacity { limit: self.limits.orders_max });
        }
        Ok(())
    }

    /// Whether a fill-or-kill order would fill completely, walking the book
    /// exactly as matching will (resting orders of the same user are skipped
    /// or stop the walk according to `stp`).
    #[allow(clippy::too_many_arguments)]
    fn fok_fillable(
        &self,
        opposite: &BookSide,
        taker_side: Side,
        user: UserId,
        user_has_orders: bool,
        stp: SelfTradePrevention,
        limit: Ticks,
        qty: Lots,
    ) -> bool {
        let mut wanted = qty.0;
        for level in opposite.levels() {
            if !limit_crosses(taker_side, limit, level.price) {
                return false;
            }
            if !user_has_orders || stp == SelfTradePrevention::Allow {
                wanted = wanted.saturating_sub(level.qty.0);
            } else {
                let mut slot = level.head;
                while slot != NIL {
                    let maker = self.orders.get(slot);
                    if maker.user == user {
                        if stp != SelfTradePrevention::CancelMaker {
                            return false;
                        }
                    } else {
                        wanted = wanted.saturating_sub(maker.remaining.0);
                        if wanted == 0 {
                            return true;
                        }
                    }
                    slot = BookSide::next_in_level(&self.orders, slot);
                }
            }
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
                        self.cancel_slot(slot, DoneReason::SelfTrade, emitter);
                        continue;
                    }
                    SelfTradePrevention::CancelBoth => {
                        self.cancel_slot(slot, DoneReason::SelfTrade, emitter);
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
        let (maker_order, maker_user, maker_remaining) = {
            let maker = self.orders.get_mut(slot);
            maker.remaining.0 -= qty.0;
            maker.filled.0 += qty.0;
            (maker.id, maker.user, maker.remaining)
        };

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
            maker_order,
            maker_user,
            maker_remaining,
            taker_order: taker.order,
            taker_user: taker.user,
            taker_remaining: if taker.by_quote { Lots(0) } else { taker.remaining },
            maker_fee,
            taker_fee,
            timestamp_ns: taker.timestamp_ns,
        });

        let book = &mut self.markets[taker.market.index()].book;
        let mut level_qty = book.side_mut(maker_side).reduce(price, qty);
        if maker_remaining.0 == 0 {
            // Nothing is left to subtract: this only dequeues it.
            level_qty = book.side_mut(maker_side).unlink(&mut self.orders, slot);
        }
        emitter.emit(EventKind::BookLevel { market: taker.market, side: maker_side, price, qty: level_qty });
        if maker_remaining.0 == 0 {
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

    /// Locks what the order in `slot` needs and queues it on its book.
    fn rest(&mut self, slot: u32, emitter: &mut Emitter) {
        let order = *self.orders.get(slot);
        let rules = self.markets[order.market.index()].market.rules;
        let (asset, amount) = lock_for(&rules, &order);
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

    /// Frees the slot of an order that is no longer on its level's queue and
    /// removes every reference to it.
    fn retire(&mut self, slot: u32) -> Order {
        let order = self.orders.remove(slot);
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

    /// Takes a resting order off the book, unlocks its funds and closes it.
    fn cancel_slot(&mut self, slot: u32, reason: DoneReason, emitter: &mut Emitter) {
        let order = *self.orders.get(slot);
        let rules = self.markets[order.market.index()].market.rules;
        let (asset, amount) = lock_for(&rules, &order);
        let book = &mut self.markets[order.market.index()].book;
        let qty = book.side_mut(order.side).unlink(&mut self.orders, slot);
        self.retire(slot);
        let balance = self.accounts[order.user.index()].balance_mut(asset);
        balance.unlock(amount);
        let balance = *balance;
        emitter.emit(EventKind::BookLevel {
            market: order.market,
            side: order.side,
            price: order.price,
            qty,
        });
        emitter.emit(EventKind::OrderDone {
            order: order.id,
            user: order.user,
            market: order.market,
            reason,
            filled: order.filled,
            cancelled: order.remaining,
        });
        emit_balance(emitter, order.user, asset, balance);
    }

    /// The slot of `user`'s open order named by `reference`.
    fn find_order(&self, user: UserId, reference: OrderRef) -> Result<u32, RejectReason> {
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

    fn cancel(
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
        self.cancel_slot(slot, DoneReason::Cancelled, emitter);
        Ok(())
    }

    /// Cancels, oldest first, every open order of `user` in `only_market`
    /// (or in every market that is not halted).
    fn cancel_all(
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
        let mut count = 0u32;
        let mut slot = account.orders_head;
        while slot != NIL {
            let order = *self.orders.get(slot);
            let next = order.user_next;
            let wanted = only_market.is_none_or(|market| market == order.market);
            if wanted && self.markets[order.market.index()].market.status != MarketStatus::Halted {
                self.cancel_slot(slot, DoneReason::Cancelled, emitter);
                count += 1;
            }
            slot = next;
        }
        emitter.emit(EventKind::CancelledAll { user, market: only_market, count });
        Ok(())
    }

    fn amend(&mut self, amend: &Amend, ts: u64, emitter: &mut Emitter) -> Result<(), RejectReason> {
        let slot = self.find_order(amend.user, amend.order)?;
        let order = *self.orders.get(slot);
        let state = &self.markets[order.market.index()];
        let market = state.market;
        let rules = market.rules;
        let new_price = amend.new_price.unwrap_or(order.price);
        let new_qty = amend.new_qty.unwrap_or(order.remaining);
        if new_qty.0 == 0 {
            return Err(RejectReason::ZeroQuantity);
        }
        if new_price.0 == 0 {
            return Err(RejectReason::ZeroPrice);
        }
        if new_price == order.price && new_qty == order.remaining {
            return Err(RejectReason::AmendNoChange);
        }
        let keeps_priority = new_price == order.price && new_qty < order.remaining;
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
            let mut shrunk = order;
            shrunk.remaining = new_qty;
            let (_, new_lock) = lock_for(&rules, &shrunk);
            self.orders.get_mut(slot).remaining = new_qty;
            let level_qty = self.markets[market.id.index()]
                .book
                .side_mut(order.side)
                .reduce(order.price, Lots(order.remaining.0 - new_qty.0));
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
        let mut taker = Taker {
            order: order.id,
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
            timestamp_ns: ts,
        };
        let end = self.match_taker(&mut taker, emitter);
        if end != MatchEnd::SelfTrade && taker.remaining.0 > 0 {
            let entry = self.orders.get_mut(slot);
            entry.price = new_price;
            entry.remaining = taker.remaining;
            entry.filled = taker.filled;
            entry.timestamp_ns = ts;
            self.rest(slot, emitter);
        } else {
            let retired = self.retire(slot);
            emitter.emit(EventKind::OrderDone {
                order: retired.id,
                user: retired.user,
                market: retired.market,
                reason: if end == MatchEnd::SelfTrade { DoneReason::SelfTrade } else { DoneReason::Filled },
                filled: taker.filled,
                cancelled: taker.remaining,
            });
        }
        let account = &self.accounts[order.user.index()];
        emit_balance(emitter, order.user, rules.base, account.balance(rules.base));
        emit_balance(emitter, order.user, rules.quote, account.balance(rules.quote));
        Ok(())
    }
}

fn check_fees(maker_fee_ppm: u32, taker_fee_ppm: u32) -> Result<(), RejectReason> {
    for fee_ppm in [maker_fee_ppm, taker_fee_ppm] {
        if fee_ppm > FEE_PPM_MAX {
            return Err(RejectReason::FeeRateTooHigh { fee_ppm, max_ppm: FEE_PPM_MAX });
        }
    }
    Ok(())
}

/// Checks a limit order's price and quantity against the market's rules and
/// returns its value in quote units. Both the quote value and the base
/// amount must fit in a u64, so that every later fill of it fits too.
fn check_order_size(rules: &MarketRules, price: Ticks, qty: Lots) -> Result<Units, RejectReason> {
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

/// The asset and amount a resting order holds locked: quote at its own
/// price for a buy, base for a sell.
pub(crate) fn lock_for(rules: &MarketRules, order: &Order) -> (AssetId, Units) {
    match order.side {
        Side::Buy => (
            rules.quote,
            rules.quote_units(order.price, order.remaining).expect("checked when the order rested"),
        ),
        Side::Sell => (rules.base, rules.base_units(order.remaining).expect("checked when the order rested")),
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

fn emit_balance(emitter: &mut Emitter, user: UserId, asset: AssetId, balance: Balance) {
    emitter.emit(EventKind::Balance { user, asset, available: balance.available, locked: balance.locked });
}
