//! The canonical view of the whole state: the snapshot that is saved and
//! loaded, and the state hash, both taken by one walk in one fixed order.
//!
//! The walk visits: the counters and limits; assets with their totals, by
//! id; markets, by id; each user's balances, by user id; then every resting
//! order, market by market, bids from best to worst price and then asks,
//! each level in queue order. Nothing in that order depends on where an
//! order happens to sit in memory, so an engine loaded from a snapshot has
//! the same hash as the one that wrote it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::accounts::{Account, AssetTotals, Balance};
use crate::book::{BookSide, Order, OrderBook, NIL};
use crate::command::SelfTradePrevention;
use crate::engine::{lock_for, ApiKeyEntry, Engine, MarketState};
use crate::hash::StateHasher;
use crate::limits::EngineLimits;
use crate::market::{Asset, Market, MarketStatus, ASSET_DECIMALS_MAX, FEE_PPM_MAX};
use crate::units::{AssetId, ClientOrderId, Lots, MarketId, OrderId, Side, Ticks, UserId};

/// The version of [`Snapshot`]'s layout; bumped on any change to it.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// The full state at one sequence number, as plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format_version: u32,
    pub last_seq: u64,
    pub limits: EngineLimits,
    pub next_order_id: u64,
    pub next_trade_id: u64,
    pub assets: Vec<(Asset, AssetTotals)>,
    pub markets: Vec<Market>,
    /// Indexed by user id; each list indexed by asset id, without trailing
    /// zero balances.
    pub balances: Vec<Vec<Balance>>,
    /// Every resting order in walk order (see the module documentation).
    pub orders: Vec<RestingOrder>,
    /// Every API key, sorted by key. Secrets included: a snapshot file is
    /// as private as the journal.
    pub api_keys: Vec<ApiKeyEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    pub id: OrderId,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    pub price: Ticks,
    pub remaining: Lots,
    pub filled: Lots,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp_ns: u64,
}

/// Why a snapshot cannot be loaded. A snapshot comes from a file, so every
/// field is checked as hostile input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    UnsupportedVersion { found: u32, supported: u32 },
    AssetOutOfPlace { position: usize, id: AssetId },
    BadAsset { asset: AssetId, why: &'static str },
    MarketOutOfPlace { position: usize, id: MarketId },
    BadMarket { market: MarketId, why: &'static str },
    TooManyUsers { users: usize },
    BalanceForUnknownAsset { user: UserId, asset_count: usize },
    BadOrder { order: OrderId, why: &'static str },
    LockedMismatch { user: UserId, asset: AssetId, locked: u64, orders_need: u128 },
    NotConserved { asset: AssetId, held: u128, outstanding: u128 },
    BadApiKey { position: usize, why: &'static str },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SnapshotError::*;
        match self {
            UnsupportedVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads version {supported})"
            ),
            AssetOutOfPlace { position, id } => write!(f, "asset at position {position} has id {id}"),
            BadAsset { asset, why } => write!(f, "asset {asset}: {why}"),
            MarketOutOfPlace { position, id } => write!(f, "market at position {position} has id {id}"),
            BadMarket { market, why } => write!(f, "market {market}: {why}"),
            TooManyUsers { users } => write!(f, "{users} users do not fit in 32-bit user ids"),
            BalanceForUnknownAsset { user, asset_count } => {
                write!(f, "user {user} has balances for more than the {asset_count} assets")
            }
            BadOrder { order, why } => write!(f, "order {order}: {why}"),
            LockedMismatch { user, asset, locked, orders_need } => write!(
                f,
                "user {user} has {locked} units of asset {asset} locked but open orders need {orders_need}"
            ),
            BadApiKey { position, why } => write!(f, "API key at position {position}: {why}"),
            NotConserved { asset, held, outstanding } => write!(
                f,
                "asset {asset}: balances and fees hold {held} units but deposits minus withdrawals are {outstanding}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// What the canonical walk hands out, in order.
trait StateVisitor {
    fn header(&mut self, engine: &Engine);
    fn asset(&mut self, asset: &Asset, totals: &AssetTotals);
    fn market(&mut self, market: &Market);
    fn balances(&mut self, balances: &[Balance]);
    fn order(&mut self, order: &Order);
    fn api_key(&mut self, entry: &ApiKeyEntry);
}

impl Engine {
    fn walk(&self, visitor: &mut impl StateVisitor) {
        visitor.header(self);
        for (asset, totals) in self.assets.iter().zip(&self.totals) {
            visitor.asset(asset, totals);
        }
        for state in &self.markets {
            visitor.market(&state.market);
        }
        for account in &self.accounts {
            let used = account.balances.iter().rposition(|b| *b != Balance::default()).map_or(0, |i| i + 1);
            visitor.balances(&account.balances[..used]);
        }
        for state in &self.markets {
            for side in [&state.book.bids, &state.book.asks] {
                for level in side.levels() {
                    let mut slot = level.head;
                    while slot != NIL {
                        visitor.order(self.orders.get(slot));
                        slot = BookSide::next_in_level(&self.orders, slot);
                    }
                }
            }
        }
        for entry in &self.api_keys {
            visitor.api_key(entry);
        }
    }

    /// A fingerprint of the whole state. Two engines have the same hash when
    /// they hold the same state, whatever their history; replaying a journal
    /// must reproduce the hash the live engine reported at that sequence.
    pub fn state_hash(&self) -> u64 {
        let mut hasher = HashVisitor(StateHasher::new());
        self.walk(&mut hasher);
        hasher.0.finish()
    }

    /// The whole state as plain data, ready to be serialized.
    pub fn snapshot(&self) -> Snapshot {
        let mut builder = SnapshotBuilder(Snapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            last_seq: 0,
            limits: self.limits,
            next_order_id: 0,
            next_trade_id: 0,
            assets: Vec::with_capacity(self.assets.len()),
            markets: Vec::with_capacity(self.markets.len()),
            balances: Vec::with_capacity(self.accounts.len()),
            orders: Vec::with_capacity(self.orders.len() as usize),
            api_keys: Vec::with_capacity(self.api_keys.len()),
        });
        self.walk(&mut builder);
        builder.0
    }

    /// Rebuilds an engine from a snapshot after checking that it is whole
    /// and consistent: ids in place, references resolved, every order within
    /// the rules, locked funds equal to what open orders need, and every
    /// asset conserved.
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Engine, SnapshotError> {
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: snapshot.format_version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        // A slab the size of the snapshot's orders, not a new engine's
        // (which would be allocated only to be thrown away).
        let mut engine = Engine::with_order_slots(snapshot.limits, snapshot.orders.len());
        engine.last_seq = snapshot.last_seq;
        engine.next_order_id = snapshot.next_order_id.max(1);
        engine.next_trade_id = snapshot.next_trade_id.max(1);

        for (position, (asset, totals)) in snapshot.assets.iter().enumerate() {
            if asset.id.index() != position {
                return Err(SnapshotError::AssetOutOfPlace { position, id: asset.id });
            }
            let bad = |why| SnapshotError::BadAsset { asset: asset.id, why };
            if asset.decimals > ASSET_DECIMALS_MAX {
                return Err(bad("too many decimals"));
            }
            if engine.assets.iter().any(|a| a.symbol == asset.symbol) {
                return Err(bad("symbol used twice"));
            }
            if totals.withdrawn > totals.deposited || totals.outstanding() > u128::from(u64::MAX) {
                return Err(bad("impossible deposit and withdrawal totals"));
            }
            engine.assets.push(*asset);
            engine.totals.push(*totals);
        }

        for (position, market) in snapshot.markets.iter().enumerate() {
            if market.id.index() != position {
                return Err(SnapshotError::MarketOutOfPlace { position, id: market.id });
            }
            let bad = |why| SnapshotError::BadMarket { market: market.id, why };
            let rules = &market.rules;
            if rules.base.index() >= engine.assets.len() || rules.quote.index() >= engine.assets.len() {
                return Err(bad("unknown asset"));
            }
            if rules.base == rules.quote {
                return Err(bad("base and quote are the same asset"));
            }
            if rules.base_units_per_lot == 0 || rules.quote_units_per_tick == 0 {
                return Err(bad("zero lot or tick size"));
            }
            if rules.maker_fee_ppm > FEE_PPM_MAX || rules.taker_fee_ppm > FEE_PPM_MAX {
                return Err(bad("fee rate above the maximum"));
            }
            engine.markets.push(MarketState { market: *market, book: OrderBook::new() });
        }

        if snapshot.balances.len() > u32::MAX as usize {
            return Err(SnapshotError::TooManyUsers { users: snapshot.balances.len() });
        }
        for (user, balances) in snapshot.balances.iter().enumerate() {
            if balances.len() > engine.assets.len() {
                return Err(SnapshotError::BalanceForUnknownAsset {
                    user: UserId(user as u32),
                    asset_count: engine.assets.len(),
                });
            }
            let mut account = Account::new();
            account.balances = balances.clone();
            engine.accounts.push(account);
        }

        // (user, order id, slot), to link each user's orders in id order.
        let mut owned: Vec<(UserId, OrderId, u32)> = Vec::with_capacity(snapshot.orders.len());
        let mut needs: BTreeMap<(UserId, AssetId), u128> = BTreeMap::new();
        for resting in &snapshot.orders {
            let bad = |why| SnapshotError::BadOrder { order: resting.id, why };
            if resting.id.0 == 0 || resting.id.0 >= engine.next_order_id {
                return Err(bad("id outside the ids handed out"));
            }
            if engine.index.contains(resting.id) {
                return Err(bad("listed twice"));
            }
            if resting.user.index() >= engine.accounts.len() {
                return Err(bad("unknown user"));
            }
            let Some(state) = engine.markets.get(resting.market.index()) else {
                return Err(bad("unknown market"));
            };
            let rules = state.market.rules;
            if resting.remaining.0 == 0 || resting.price.0 == 0 {
                return Err(bad("zero price or quantity"));
            }
            if rules.quote_units(resting.price, resting.remaining).is_none()
                || rules.base_units(resting.remaining).is_none()
            {
                return Err(bad("value does not fit"));
            }
            if engine.orders.len() >= u32::MAX - 1 {
                return Err(bad("more orders than slots"));
            }
            let order = Order::new(
                resting.id,
                resting.user,
                resting.market,
                resting.side,
                resting.price,
                resting.remaining,
                resting.filled,
                resting.post_only,
                resting.stp,
                resting.client_order_id,
                resting.timestamp_ns,
            );
            let (asset, amount) = lock_for(&rules, &order);
            *needs.entry((resting.user, asset)).or_default() += u128::from(amount.0);
            let slot = engine.orders.insert(order);
            engine.index.insert(resting.id, slot);
            engine.markets[resting.market.index()]
                .book
                .side_mut(resting.side)
                .push_back(&mut engine.orders, slot);
            owned.push((resting.user, resting.id, slot));
        }
        for state in &engine.markets {
            if let (Some(bid), Some(ask)) = (state.book.bids.best(), state.book.asks.best()) {
                if bid.price >= ask.price {
                    return Err(SnapshotError::BadMarket { market: state.market.id, why: "book is crossed" });
                }
            }
        }
        owned.sort_unstable_by_key(|&(user, id, _)| (user, id));
        for &(user, id, slot) in &owned {
            if let Some(client_order_id) = engine.orders.get(slot).client_order_id {
                if engine.accounts[user.index()].find_client_id(&client_order_id).is_some() {
                    return Err(SnapshotError::BadOrder {
                        order: id,
                        why: "client order id used twice by one user",
                    });
                }
            }
            engine.attach_to_user(slot);
        }

        for (position, entry) in snapshot.api_keys.iter().enumerate() {
            let bad = |why| SnapshotError::BadApiKey { position, why };
            if position > 0 && snapshot.api_keys[position - 1].key >= entry.key {
                return Err(bad("keys not sorted or listed twice"));
            }
            let Some(account) = engine.accounts.get_mut(entry.user.index()) else {
                return Err(bad("unknown user"));
            };
            // A user may hold more keys than a limit lowered after they were made.
            account.api_keys += 1;
            engine.api_keys.push(*entry);
        }

        let mut held = vec![0u128; engine.assets.len()];
        for (user, account) in engine.accounts.iter().enumerate() {
            let user = UserId(user as u32);
            for (asset, balance) in account.balances.iter().enumerate() {
                let asset = AssetId(asset as u32);
                let need = needs.get(&(user, asset)).copied().unwrap_or(0);
                if u128::from(balance.locked.0) != need {
                    return Err(SnapshotError::LockedMismatch {
                        user,
                        asset,
                        locked: balance.locked.0,
                        orders_need: need,
                    });
                }
                held[asset.index()] += u128::from(balance.available.0) + u128::from(balance.locked.0);
            }
        }
        // Needs for assets past the end of a user's balance list have no lock at all.
        for (&(user, asset), &need) in &needs {
            if need > 0 && engine.accounts[user.index()].balances.len() <= asset.index() {
                return Err(SnapshotError::LockedMismatch { user, asset, locked: 0, orders_need: need });
            }
        }
        for (asset, totals) in engine.totals.iter().enumerate() {
            let held = held[asset] + u128::from(totals.fees.0);
            if held != totals.outstanding() {
                return Err(SnapshotError::NotConserved {
                    asset: AssetId(asset as u32),
                    held,
                    outstanding: totals.outstanding(),
                });
            }
        }
        Ok(engine)
    }
}

struct SnapshotBuilder(Snapshot);

impl StateVisitor for SnapshotBuilder {
    fn header(&mut self, engine: &Engine) {
        self.0.last_seq = engine.last_seq;
        self.0.limits = engine.limits;
        self.0.next_order_id = engine.next_order_id;
        self.0.next_trade_id = engine.next_trade_id;
    }
    fn asset(&mut self, asset: &Asset, totals: &AssetTotals) {
        self.0.assets.push((*asset, *totals));
    }
    fn market(&mut self, market: &Market) {
        self.0.markets.push(*market);
    }
    fn balances(&mut self, balances: &[Balance]) {
        self.0.balances.push(balances.to_vec());
    }
    fn api_key(&mut self, entry: &ApiKeyEntry) {
        self.0.api_keys.push(*entry);
    }
    fn order(&mut self, order: &Order) {
        self.0.orders.push(RestingOrder {
            id: order.id,
            user: order.user,
            market: order.market,
            side: order.side,
            price: order.price,
            remaining: order.remaining,
            filled: order.filled,
            post_only: order.post_only,
            stp: order.stp,
            client_order_id: order.client_order_id,
            timestamp_ns: order.timestamp_ns,
        });
    }
}

struct HashVisitor(StateHasher);

impl StateVisitor for HashVisitor {
    fn header(&mut self, engine: &Engine) {
        let h = &mut self.0;
        h.word(u64::from(SNAPSHOT_FORMAT_VERSION));
        h.word(engine.last_seq);
        h.word(engine.next_order_id);
        h.word(engine.next_trade_id);
        let limits = engine.limits;
        for limit in [
            limits.open_orders_per_user_max,
            limits.orders_max,
            limits.assets_max,
            limits.markets_max,
            limits.users_max,
            limits.api_keys_per_user_max,
        ] {
            h.word(u64::from(limit));
        }
        h.word(engine.assets.len() as u64);
        h.word(engine.markets.len() as u64);
        h.word(engine.accounts.len() as u64);
        h.word(u64::from(engine.orders.len()));
        h.word(engine.api_keys.len() as u64);
    }
    fn asset(&mut self, asset: &Asset, totals: &AssetTotals) {
        let h = &mut self.0;
        h.word(u64::from(asset.id.0));
        h.bytes(asset.symbol.as_bytes());
        h.word(u64::from(asset.decimals));
        h.wide(totals.deposited);
        h.wide(totals.withdrawn);
        h.word(totals.fees.0);
    }
    fn market(&mut self, market: &Market) {
        let h = &mut self.0;
        let rules = &market.rules;
        h.word(u64::from(market.id.0));
        h.word(u64::from(rules.base.0));
        h.word(u64::from(rules.quote.0));
        h.word(rules.base_units_per_lot);
        h.word(rules.quote_units_per_tick);
        h.word(rules.min_qty.0);
        h.word(rules.min_notional.0);
        h.word(u64::from(rules.maker_fee_ppm));
        h.word(u64::from(rules.taker_fee_ppm));
        h.word(match market.status {
            MarketStatus::Open => 0,
            MarketStatus::CancelOnly => 1,
            MarketStatus::Halted => 2,
        });
    }
    fn balances(&mut self, balances: &[Balance]) {
        let h = &mut self.0;
        h.word(balances.len() as u64);
        for balance in balances {
            h.word(balance.available.0);
            h.word(balance.locked.0);
        }
    }
    fn api_key(&mut self, entry: &ApiKeyEntry) {
        let h = &mut self.0;
        h.bytes(entry.key.as_bytes());
        h.bytes(entry.secret.as_bytes());
        h.word(u64::from(entry.user.0));
    }
    fn order(&mut self, order: &Order) {
        let h = &mut self.0;
        h.word(order.id.0);
        h.word(u64::from(order.user.0));
        h.word(u64::from(order.market.0));
        h.word(match order.side {
            Side::Buy => 0,
            Side::Sell => 1,
        });
        h.word(order.price.0);
        h.word(order.remaining.0);
        h.word(order.filled.0);
        h.word(u64::from(order.post_only));
        h.word(match order.stp {
            SelfTradePrevention::CancelTaker => 0,
            SelfTradePrevention::CancelMaker => 1,
            SelfTradePrevention::CancelBoth => 2,
            SelfTradePrevention::Allow => 3,
        });
        match &order.client_order_id {
            Some(id) => h.bytes(id.as_bytes()),
            None => h.word(u64::MAX),
        }
        h.word(order.timestamp_ns);
    }
}
