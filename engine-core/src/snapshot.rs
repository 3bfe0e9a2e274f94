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
use crate::book::{BookSide, Order, NIL};
use crate::command::{Contingency, OrderKind, SelfTradePrevention, TimeInForce, Trigger, TriggerKind};
use crate::engine::{ApiKeyEntry, Engine, MarketState};
use crate::extras::{OrderExtra, OrderList, Phase, Then, Waiting, NONE};
use crate::hash::StateHasher;
use crate::limits::EngineLimits;
use crate::market::{Asset, Market, MarketStatus, ASSET_DECIMALS_MAX, FEE_PPM_MAX};
use crate::orders::{Check, ICEBERG_PARTS_MAX, TRAILING_BIPS_MAX};
use crate::triggers::Entry;
use crate::units::{AssetId, ClientOrderId, ListId, Lots, MarketId, OrderId, Side, Ticks, Units, UserId};

/// The version of [`Snapshot`]'s layout; bumped on any change to it.
/// Version 2 added last prices, icebergs, waiting and pending orders and
/// order lists; version 1 snapshots are read as [`SnapshotFormat1`].
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

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
    // Format 2 from here.
    pub next_list_id: u64,
    /// Indexed by market id.
    pub last_prices: Vec<Option<Ticks>>,
    /// The hidden part of every iceberg on the book (its shown part is in
    /// `orders`), by order id.
    pub icebergs: Vec<IcebergPart>,
    /// Stop and take-profit orders waiting for their trigger, by order id.
    pub waiting: Vec<WaitingOrder>,
    /// OTO pending orders, by order id.
    pub pending: Vec<PendingOrder>,
    /// Open order lists, by list id.
    pub lists: Vec<ListRecord>,
}

/// A snapshot of format version 1, before waiting orders existed: what
/// files written by earlier versions decode to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFormat1 {
    pub format_version: u32,
    pub last_seq: u64,
    pub limits: EngineLimits,
    pub next_order_id: u64,
    pub next_trade_id: u64,
    pub assets: Vec<(Asset, AssetTotals)>,
    pub markets: Vec<Market>,
    pub balances: Vec<Vec<Balance>>,
    pub orders: Vec<RestingOrder>,
    pub api_keys: Vec<ApiKeyEntry>,
}

impl From<SnapshotFormat1> for Snapshot {
    /// Format 1 kept no last trade prices: a market's is unknown until its
    /// next trade (so a stop placed before then is never refused as
    /// immediate).
    fn from(old: SnapshotFormat1) -> Snapshot {
        Snapshot {
            format_version: if old.format_version == 1 {
                SNAPSHOT_FORMAT_VERSION
            } else {
                old.format_version
            },
            last_seq: old.last_seq,
            limits: old.limits,
            next_order_id: old.next_order_id,
            next_trade_id: old.next_trade_id,
            last_prices: vec![None; old.markets.len()],
            assets: old.assets,
            markets: old.markets,
            balances: old.balances,
            orders: old.orders,
            api_keys: old.api_keys,
            next_list_id: 1,
            icebergs: Vec::new(),
            waiting: Vec::new(),
            pending: Vec::new(),
            lists: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcebergPart {
    pub order: OrderId,
    pub visible: Lots,
    pub hidden: Lots,
}

/// What a waiting order becomes when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThenKind {
    Market,
    Limit(TimeInForce),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingOrder {
    pub id: OrderId,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    /// The limit price it enters at (0 for a market order).
    pub price: Ticks,
    pub qty: Lots,
    pub stp: SelfTradePrevention,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp_ns: u64,
    pub trigger: Trigger,
    pub then: ThenKind,
    pub visible: Lots,
    pub hold: Units,
    /// A trailing order's tracking: `None` waiting for its stop price,
    /// `Some(None)` tracking with no trade seen, `Some(Some(p))` best price.
    pub tracking: Option<Option<Ticks>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOrder {
    pub id: OrderId,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    pub kind: OrderKind,
    pub stp: SelfTradePrevention,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRecord {
    pub id: ListId,
    pub user: UserId,
    pub market: MarketId,
    pub contingency: Contingency,
    pub client_list_id: Option<ClientOrderId>,
    pub side: Side,
    pub orders: [OrderId; 2],
    pub held: Units,
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
    BadList { list: ListId, why: &'static str },
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
            BadList { list, why } => write!(f, "order list {list}: {why}"),
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
    /// Format 2's sections, each in id order.
    fn contingent(&mut self, engine: &Engine, parts: ContingentParts);
}

/// Format 2's sections of the state.
struct ContingentParts {
    icebergs: Vec<IcebergPart>,
    waiting: Vec<WaitingOrder>,
    pending: Vec<PendingOrder>,
    lists: Vec<ListRecord>,
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
        visitor.contingent(self, self.contingent_parts());
    }

    fn contingent_parts(&self) -> ContingentParts {
        let mut parts = ContingentParts {
            icebergs: Vec::new(),
            waiting: Vec::new(),
            pending: Vec::new(),
            lists: Vec::new(),
        };
        for extra in self.extras.iter() {
            let slot = self.index.get(extra.order).expect("extras belong to open orders");
            let order = self.orders.get(slot);
            match extra.phase {
                Phase::Live => {
                    if extra.visible.0 > 0 {
                        parts.icebergs.push(IcebergPart {
                            order: order.id,
                            visible: extra.visible,
                            hidden: order.hidden,
                        });
                    }
                }
                Phase::Waiting(waiting) => parts.waiting.push(WaitingOrder {
                    id: order.id,
                    user: order.user,
                    market: order.market,
                    side: order.side,
                    price: order.price,
                    qty: order.remaining,
                    stp: order.stp,
                    client_order_id: order.client_order_id,
                    timestamp_ns: order.timestamp_ns,
                    trigger: waiting.trigger,
                    then: match waiting.then {
                        Then::Market => ThenKind::Market,
                        Then::Limit(tif) => ThenKind::Limit(tif),
                    },
                    visible: extra.visible,
                    hold: waiting.hold,
                    tracking: waiting.tracking,
                }),
                Phase::Pending(kind) => parts.pending.push(PendingOrder {
                    id: order.id,
                    user: order.user,
                    market: order.market,
                    side: order.side,
                    kind,
                    stp: order.stp,
                    client_order_id: order.client_order_id,
                    timestamp_ns: order.timestamp_ns,
                }),
            }
        }
        for list in self.lists.iter() {
            parts.lists.push(ListRecord {
                id: list.id,
                user: list.user,
                market: list.market,
                contingency: list.contingency,
                client_list_id: list.client_list_id,
                side: list.side,
                orders: list.orders,
                held: list.held,
            });
        }
        parts.icebergs.sort_unstable_by_key(|part| part.order);
        parts.waiting.sort_unstable_by_key(|order| order.id);
        // A tracking order's best price is its group's, on the trigger book.
        let mut bests = Vec::new();
        for state in &self.markets {
            state.triggers.tracking_bests(&mut bests);
        }
        bests.sort_unstable_by_key(|&(order, _)| order);
        let mut bests = bests.into_iter().peekable();
        for order in &mut parts.waiting {
            if let Some(&(id, best)) = bests.peek() {
                if id == order.id {
                    order.tracking = Some(Some(best));
                    bests.next();
                }
            }
        }
        debug_assert!(bests.next().is_none(), "a tracking order that does not wait");
        parts.pending.sort_unstable_by_key(|order| order.id);
        parts.lists.sort_unstable_by_key(|list| list.id);
        parts
    }

    /// A fingerprint of the whole state. Two engines have the same hash when
    /// they hold the same state, whatever their history; replaying a journal
    /// must reproduce the hash the live engine reported at that sequence.
    pub fn state_hash(&self) -> u64 {
        let mut hasher = HashVisitor(StateHasher::new(), SNAPSHOT_FORMAT_VERSION);
        self.walk(&mut hasher);
        hasher.0.finish()
    }

    /// The state hash as builds before snapshot format 2 computed it
    /// (without last prices, icebergs, waiting orders and lists): to check
    /// a migration against a hash an older build recorded. Equal to what
    /// that build reported only for a state format 1 could hold.
    pub fn state_hash_of_format_1(&self) -> u64 {
        let mut hasher = HashVisitor(StateHasher::new(), 1);
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
            next_list_id: self.next_list_id,
            last_prices: self.markets.iter().map(|state| state.last_price).collect(),
            icebergs: Vec::new(),
            waiting: Vec::new(),
            pending: Vec::new(),
            lists: Vec::new(),
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
            engine.markets.push(MarketState::new(*market));
        }
        if snapshot.last_prices.len() != engine.markets.len() {
            return Err(SnapshotError::BadMarket {
                market: MarketId(snapshot.last_prices.len() as u32),
                why: "last prices do not match the markets",
            });
        }
        for (state, last) in engine.markets.iter_mut().zip(&snapshot.last_prices) {
            if *last == Some(Ticks(0)) {
                return Err(SnapshotError::BadMarket { market: state.market.id, why: "last price 0" });
            }
            state.last_price = *last;
        }
        engine.next_list_id = snapshot.next_list_id.max(1);

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
        engine.load_contingent(&snapshot, &mut owned)?;
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

        let mut needs: BTreeMap<(UserId, AssetId), u128> = BTreeMap::new();
        for &(user, _, slot) in &owned {
            let (asset, amount) = engine.holds(slot);
            *needs.entry((user, asset)).or_default() += u128::from(amount.0);
        }
        for list in engine.lists.iter() {
            let rules = engine.markets[list.market.index()].market.rules;
            let asset = match list.side {
                Side::Buy => rules.quote,
                Side::Sell => rules.base,
            };
            *needs.entry((list.user, asset)).or_default() += u128::from(list.held.0);
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

impl Engine {
    /// Loads format 2's sections of `snapshot` into an engine that holds
    /// its resting orders, checking each as hostile input; adds the slots
    /// of the orders it opens to `owned`.
    fn load_contingent(
        &mut self,
        snapshot: &Snapshot,
        owned: &mut Vec<(UserId, OrderId, u32)>,
    ) -> Result<(), SnapshotError> {
        for (position, part) in snapshot.icebergs.iter().enumerate() {
            let bad = |why| SnapshotError::BadOrder { order: part.order, why };
            if position > 0 && snapshot.icebergs[position - 1].order >= part.order {
                return Err(bad("icebergs not in id order"));
            }
            let slot = self.index.get(part.order).ok_or(bad("an iceberg part of no order on the book"))?;
            let order = *self.orders.get(slot);
            let rules = self.markets[order.market.index()].market.rules;
            let open = Lots(order.remaining.0.checked_add(part.hidden.0).ok_or(bad("size does not fit"))?);
            if part.visible.0 == 0 || order.remaining > part.visible {
                return Err(bad("iceberg parts out of proportion"));
            }
            if rules.quote_units(order.price, open).is_none() || rules.base_units(open).is_none() {
                return Err(bad("value does not fit"));
            }
            let ext = self.extras.insert(OrderExtra {
                order: order.id,
                visible: part.visible,
                phase: Phase::Live,
                list: NONE,
            });
            let entry = self.orders.get_mut(slot);
            entry.hidden = part.hidden;
            entry.ext = ext;
        }
        for (position, waiting) in snapshot.waiting.iter().enumerate() {
            let bad = |why| SnapshotError::BadOrder { order: waiting.id, why };
            if position > 0 && snapshot.waiting[position - 1].id >= waiting.id {
                return Err(bad("waiting orders not in id order"));
            }
            self.check_new_slot(waiting.id, waiting.user, waiting.market)?;
            let rules = self.markets[waiting.market.index()].market.rules;
            let trigger = waiting.trigger;
            if waiting.qty.0 == 0 || rules.base_units(waiting.qty).is_none() {
                return Err(bad("zero quantity or a size that does not fit"));
            }
            if (trigger.stop.is_none() && trigger.trailing_bips == 0)
                || trigger.stop == Some(Ticks(0))
                || trigger.trailing_bips > TRAILING_BIPS_MAX
            {
                return Err(bad("impossible trigger"));
            }
            match waiting.tracking {
                Some(_) if trigger.trailing_bips == 0 => return Err(bad("a fixed stop tracks")),
                None if trigger.stop.is_none() => return Err(bad("waits for no stop price")),
                Some(Some(Ticks(0))) => return Err(bad("tracks from price 0")),
                _ => {}
            }
            let limit_need = match waiting.then {
                ThenKind::Market if waiting.price.0 != 0 || waiting.visible.0 != 0 => {
                    return Err(bad("a stop-market order with a price or a visible part"))
                }
                ThenKind::Market => None,
                ThenKind::Limit(TimeInForce::PostOnly) => return Err(bad("a post-only stop")),
                ThenKind::Limit(tif) => {
                    if waiting.visible.0 > 0
                        && (tif != TimeInForce::Gtc
                            || waiting.visible >= waiting.qty
                            || waiting.qty.0.div_ceil(waiting.visible.0) > ICEBERG_PARTS_MAX)
                    {
                        return Err(bad("iceberg parts out of proportion"));
                    }
                    let quote =
                        rules.quote_units(waiting.price, waiting.qty).ok_or(bad("value does not fit"))?;
                    if waiting.price.0 == 0 {
                        return Err(bad("zero price"));
                    }
                    Some(quote)
                }
            };
            let exact = match (waiting.side, limit_need) {
                (Side::Sell, _) => rules.base_units(waiting.qty),
                (Side::Buy, Some(quote)) => Some(quote),
                // A stop-market buy holds at a reference price of its time.
                (Side::Buy, None) => None,
            };
            if exact.is_some_and(|need| need != waiting.hold) {
                return Err(bad("holds other than it needs"));
            }
            let mut order = Order::new(
                waiting.id,
                waiting.user,
                waiting.market,
                waiting.side,
                waiting.price,
                waiting.qty,
                Lots(0),
                false,
                waiting.stp,
                waiting.client_order_id,
                waiting.timestamp_ns,
            );
            let then = match waiting.then {
                ThenKind::Market => Then::Market,
                ThenKind::Limit(tif) => Then::Limit(tif),
            };
            let phase = Phase::Waiting(Waiting {
                trigger,
                then,
                hold: waiting.hold,
                tracking: waiting.tracking,
                node: NIL,
            });
            order.ext = self.extras.insert(OrderExtra {
                order: waiting.id,
                visible: waiting.visible,
                phase,
                list: NONE,
            });
            let order_ext = order.ext;
            let slot = self.orders.insert(order);
            self.index.insert(waiting.id, slot);
            let entry = Entry { stop: trigger.stop.unwrap_or_default(), order: waiting.id, slot };
            let triggers = &mut self.markets[waiting.market.index()].triggers;
            match waiting.tracking {
                Some(best) => {
                    let entry = Entry { stop: Ticks(0), ..entry };
                    let node = triggers.insert_tracking(waiting.side, trigger.trailing_bips, entry, best);
                    let Phase::Waiting(restored) = &mut self.extras.get_mut(order_ext).phase else {
                        unreachable!("restored as waiting")
                    };
                    restored.node = node;
                }
                None => {
                    let node = triggers.insert(trigger.rises(waiting.side), entry);
                    let Phase::Waiting(restored) = &mut self.extras.get_mut(order_ext).phase else {
                        unreachable!("restored as waiting")
                    };
                    restored.node = node;
                }
            }
            owned.push((waiting.user, waiting.id, slot));
        }
        for (position, pending) in snapshot.pending.iter().enumerate() {
            let bad = |why| SnapshotError::BadOrder { order: pending.id, why };
            if position > 0 && snapshot.pending[position - 1].id >= pending.id {
                return Err(bad("pending orders not in id order"));
            }
            self.check_new_slot(pending.id, pending.user, pending.market)?;
            let state = &self.markets[pending.market.index()];
            if matches!(pending.kind, OrderKind::MarketByQuote { .. }) {
                return Err(bad("a pending order by quote amount"));
            }
            Engine::check_kind(state, pending.side, pending.kind, Units(0), Check::Static)
                .map_err(|_| bad("a pending order its market's rules refuse"))?;
            let mut order = Order::new(
                pending.id,
                pending.user,
                pending.market,
                pending.side,
                pending.kind.price().unwrap_or_default(),
                pending.kind.qty().unwrap_or_default(),
                Lots(0),
                false,
                pending.stp,
                pending.client_order_id,
                pending.timestamp_ns,
            );
            order.ext = self.extras.insert(OrderExtra {
                order: pending.id,
                visible: Lots(0),
                phase: Phase::Pending(pending.kind),
                list: NONE,
            });
            let slot = self.orders.insert(order);
            self.index.insert(pending.id, slot);
            owned.push((pending.user, pending.id, slot));
        }
        for (position, record) in snapshot.lists.iter().enumerate() {
            let bad = |why| SnapshotError::BadList { list: record.id, why };
            if position > 0 && snapshot.lists[position - 1].id >= record.id {
                return Err(bad("lists not in id order"));
            }
            if record.id.0 == 0 || record.id.0 >= self.next_list_id {
                return Err(bad("id outside the ids handed out"));
            }
            let mut slots = [NIL; 2];
            let mut phases = [Phase::Live; 2];
            for (leg, &id) in record.orders.iter().enumerate() {
                let slot = self.index.get(id).ok_or(bad("an order that is not open"))?;
                let order = *self.orders.get(slot);
                if order.user != record.user || order.market != record.market {
                    return Err(bad("an order of another user or market"));
                }
                if order.ext != NIL && self.extras.get(order.ext).list != NONE {
                    return Err(bad("an order in two lists"));
                }
                if order.ext == NIL {
                    let ext = self.extras.insert(OrderExtra {
                        order: id,
                        visible: Lots(0),
                        phase: Phase::Live,
                        list: NONE,
                    });
                    self.orders.get_mut(slot).ext = ext;
                }
                phases[leg] = self.extras.get(self.orders.get(slot).ext).phase;
                slots[leg] = slot;
            }
            if slots[0] == slots[1] {
                return Err(bad("one order twice"));
            }
            let sides = [self.orders.get(slots[0]).side, self.orders.get(slots[1]).side];
            let shape_ok = match record.contingency {
                Contingency::Oco => {
                    sides == [record.side; 2]
                        && !phases.iter().any(|phase| matches!(phase, Phase::Pending(_)))
                        && phases.iter().filter(|phase| **phase == Phase::Live).count() <= 1
                }
                Contingency::Oto => {
                    sides[0] == record.side
                        && phases[0] == Phase::Live
                        && matches!(phases[1], Phase::Pending(_))
                        && record.held.0 == 0
                }
            };
            if !shape_ok {
                return Err(bad("its orders do not form its kind of list"));
            }
            if record.contingency == Contingency::Oco {
                let needs = slots.map(|slot| self.holds(slot).1);
                if record.held != needs[0].max(needs[1]) {
                    return Err(bad("holds other than its larger order needs"));
                }
            }
            let list_slot = self.lists.insert(OrderList {
                id: record.id,
                user: record.user,
                market: record.market,
                contingency: record.contingency,
                client_list_id: record.client_list_id,
                side: record.side,
                orders: record.orders,
                slots,
                held: record.held,
            });
            for slot in slots {
                let ext = self.orders.get(slot).ext;
                self.extras.get_mut(ext).list = list_slot;
            }
        }
        for extra in self.extras.iter() {
            if matches!(extra.phase, Phase::Pending(_)) && extra.list == NONE {
                return Err(SnapshotError::BadOrder {
                    order: extra.order,
                    why: "a pending order in no list",
                });
            }
        }
        Ok(())
    }

    /// The checks an order from a snapshot gets before it takes a slot.
    fn check_new_slot(&self, id: OrderId, user: UserId, market: MarketId) -> Result<(), SnapshotError> {
        let bad = |why| SnapshotError::BadOrder { order: id, why };
        if id.0 == 0 || id.0 >= self.next_order_id {
            return Err(bad("id outside the ids handed out"));
        }
        if self.index.contains(id) {
            return Err(bad("listed twice"));
        }
        if user.index() >= self.accounts.len() {
            return Err(bad("unknown user"));
        }
        if market.index() >= self.markets.len() {
            return Err(bad("unknown market"));
        }
        if self.orders.len() >= u32::MAX - 1 {
            return Err(bad("more orders than slots"));
        }
        Ok(())
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
    fn contingent(&mut self, _engine: &Engine, parts: ContingentParts) {
        self.0.icebergs = parts.icebergs;
        self.0.waiting = parts.waiting;
        self.0.pending = parts.pending;
        self.0.lists = parts.lists;
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

/// The hasher and the format version whose state it hashes.
struct HashVisitor(StateHasher, u32);

impl StateVisitor for HashVisitor {
    fn header(&mut self, engine: &Engine) {
        let h = &mut self.0;
        h.word(u64::from(self.1));
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
    fn contingent(&mut self, engine: &Engine, parts: ContingentParts) {
        if self.1 < 2 {
            return;
        }
        let h = &mut self.0;
        h.word(engine.next_list_id);
        for state in &engine.markets {
            h.word(state.last_price.map_or(u64::MAX, |price| price.0));
        }
        h.word(parts.icebergs.len() as u64);
        for part in &parts.icebergs {
            h.word(part.order.0);
            h.word(part.visible.0);
            h.word(part.hidden.0);
        }
        h.word(parts.waiting.len() as u64);
        for order in &parts.waiting {
            h.word(order.id.0);
            h.word(u64::from(order.user.0));
            h.word(u64::from(order.market.0));
            h.word(side_word(order.side));
            h.word(order.price.0);
            h.word(order.qty.0);
            h.word(stp_word(order.stp));
            hash_client_id(h, order.client_order_id);
            h.word(order.timestamp_ns);
            hash_trigger(h, order.trigger);
            h.word(match order.then {
                ThenKind::Market => 0,
                ThenKind::Limit(tif) => 1 + tif_word(tif),
            });
            h.word(order.visible.0);
            h.word(order.hold.0);
            h.word(match order.tracking {
                None => 0,
                Some(None) => 1,
                Some(Some(_)) => 2,
            });
            h.word(order.tracking.flatten().map_or(0, |price| price.0));
        }
        h.word(parts.pending.len() as u64);
        for order in &parts.pending {
            h.word(order.id.0);
            h.word(u64::from(order.user.0));
            h.word(u64::from(order.market.0));
            h.word(side_word(order.side));
            hash_kind(h, order.kind);
            h.word(stp_word(order.stp));
            hash_client_id(h, order.client_order_id);
            h.word(order.timestamp_ns);
        }
        h.word(parts.lists.len() as u64);
        for list in &parts.lists {
            h.word(list.id.0);
            h.word(u64::from(list.user.0));
            h.word(u64::from(list.market.0));
            h.word(match list.contingency {
                Contingency::Oco => 0,
                Contingency::Oto => 1,
            });
            hash_client_id(h, list.client_list_id);
            h.word(side_word(list.side));
            h.word(list.orders[0].0);
            h.word(list.orders[1].0);
            h.word(list.held.0);
        }
    }
}

fn side_word(side: Side) -> u64 {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

fn stp_word(stp: SelfTradePrevention) -> u64 {
    match stp {
        SelfTradePrevention::CancelTaker => 0,
        SelfTradePrevention::CancelMaker => 1,
        SelfTradePrevention::CancelBoth => 2,
        SelfTradePrevention::Allow => 3,
    }
}

fn tif_word(tif: TimeInForce) -> u64 {
    match tif {
        TimeInForce::Gtc => 0,
        TimeInForce::Ioc => 1,
        TimeInForce::Fok => 2,
        TimeInForce::PostOnly => 3,
    }
}

fn hash_client_id(h: &mut StateHasher, id: Option<ClientOrderId>) {
    match &id {
        Some(id) => h.bytes(id.as_bytes()),
        None => h.word(u64::MAX),
    }
}

fn hash_trigger(h: &mut StateHasher, trigger: Trigger) {
    h.word(match trigger.kind {
        TriggerKind::StopLoss => 0,
        TriggerKind::TakeProfit => 1,
    });
    h.word(trigger.stop.map_or(0, |stop| stop.0));
    h.word(u64::from(trigger.trailing_bips));
}

fn hash_kind(h: &mut StateHasher, kind: OrderKind) {
    match kind {
        OrderKind::Limit { price, qty, tif } => {
            h.word(0);
            h.word(price.0);
            h.word(qty.0);
            h.word(tif_word(tif));
        }
        OrderKind::Market { qty } => {
            h.word(1);
            h.word(qty.0);
        }
        OrderKind::MarketByQuote { amount } => {
            h.word(2);
            h.word(amount.0);
        }
        OrderKind::Iceberg { price, qty, visible, tif } => {
            h.word(3);
            h.word(price.0);
            h.word(qty.0);
            h.word(visible.0);
            h.word(tif_word(tif));
        }
        OrderKind::StopMarket { trigger, qty } => {
            h.word(4);
            hash_trigger(h, trigger);
            h.word(qty.0);
        }
        OrderKind::StopLimit { trigger, price, qty, tif, visible } => {
            h.word(5);
            hash_trigger(h, trigger);
            h.word(price.0);
            h.word(qty.0);
            h.word(tif_word(tif));
            h.word(visible.0);
        }
    }
}
