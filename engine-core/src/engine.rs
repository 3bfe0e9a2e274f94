//! The engine: applies one stamped command at a time and reports what
//! happened as events.
//!
//! Every handler first validates everything it will need and only then
//! mutates, so a rejected command leaves the state exactly as it was.

use serde::{Deserialize, Serialize};

use crate::accounts::{Account, AssetTotals, Balance};
use crate::book::{BookSide, OrderBook, OrderSlab};
use crate::command::{Command, StampedCommand};
use crate::event::{emit_balance, Capacity, Emitter, Event, EventKind, RejectReason};
use crate::extras::{OrderExtra, OrderList, Slab};
use crate::followups::Scratch;
use crate::index::OrderIndex;
use crate::limits::EngineLimits;
use crate::market::{Asset, Market, MarketRules, MarketStatus, ASSET_DECIMALS_MAX, FEE_PPM_MAX};
use crate::triggers::TriggerBook;
use crate::units::{
    ApiKey, ApiSecret, AssetId, Lots, MarketId, Side, Symbol, Ticks, Units, UserId, API_KEY_LEN_MIN,
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
    /// The price of the market's last trade; `None` before the first.
    pub last_price: Option<Ticks>,
    /// Stop and take-profit orders waiting for the price.
    pub triggers: TriggerBook,
}

impl MarketState {
    pub fn new(market: Market) -> MarketState {
        MarketState { market, book: OrderBook::new(), last_price: None, triggers: TriggerBook::default() }
    }
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
    /// What icebergs, waiting, pending and list orders carry beyond a plain order.
    pub(crate) extras: Slab<OrderExtra>,
    /// Open order lists.
    pub(crate) lists: Slab<OrderList>,
    pub(crate) next_list_id: u64,
    /// Reused space; not state.
    pub(crate) scratch: Scratch,
}

/// One API key and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    pub key: ApiKey,
    pub secret: ApiSecret,
    pub user: UserId,
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
            extras: Slab::default(),
            lists: Slab::default(),
            next_list_id: 1,
            scratch: Scratch::default(),
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

    /// Number of open orders (resting, waiting and pending) across all markets.
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
        let mut emitter = Emitter::new(command.seq, out);
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
            Command::PlaceOrder(ref order) => self.place(order, ts, &mut emitter),
            Command::CancelOrder { user, order } => self.cancel(user, order, &mut emitter),
            Command::CancelAll { user, market } => self.cancel_all(user, market, &mut emitter),
            Command::Amend(ref amend) => self.amend(amend, ts, &mut emitter),
            Command::SetLimits { limits } => {
                self.limits = limits;
                emitter.emit(EventKind::LimitsChanged { limits });
                Ok(())
            }
            Command::PlaceOrderList(ref list) => self.place_list(list, ts, &mut emitter),
            Command::CancelOrderList { user, list } => self.cancel_order_list(user, list, &mut emitter),
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
        self.markets.push(MarketState::new(Market { id, rules, status }));
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
}

fn check_fees(maker_fee_ppm: u32, taker_fee_ppm: u32) -> Result<(), RejectReason> {
    for fee_ppm in [maker_fee_ppm, taker_fee_ppm] {
        if fee_ppm > FEE_PPM_MAX {
            return Err(RejectReason::FeeRateTooHigh { fee_ppm, max_ppm: FEE_PPM_MAX });
        }
    }
    Ok(())
}
