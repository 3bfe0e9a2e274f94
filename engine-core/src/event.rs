//! Events: everything the engine tells the world.
//!
//! The stream is complete: a consumer that starts from an empty state (or
//! from a snapshot) and reads it in order can rebuild every L2 book, every
//! user's open orders and every balance without asking the engine.
//!
//! * Books: [`EventKind::BookLevel`] gives the new total at a price after
//!   each change (0 removes the level).
//! * Orders: [`EventKind::OrderAccepted`] opens an order, [`EventKind::Trade`]
//!   carries both orders' remaining quantities, [`EventKind::OrderAmended`]
//!   changes one, [`EventKind::OrderDone`] closes one. An accepted order with
//!   no `OrderDone` in the same command rests on the book.
//! * Balances: [`EventKind::Balance`] carries the new available and locked
//!   amounts of one user in one asset.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Contingency, OrderKind, SelfTradePrevention};
use crate::limits::EngineLimits;
use crate::market::{MarketRules, MarketStatus};
use crate::units::{
    ApiKey, AssetId, ClientOrderId, ListId, Lots, MarketId, OrderId, Side, Symbol, Ticks, TradeId, Units,
    UserId,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The sequence number of the command that caused the event.
    pub seq: u64,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    AssetCreated {
        asset: AssetId,
        symbol: Symbol,
        decimals: u8,
    },
    MarketCreated {
        market: MarketId,
        rules: MarketRules,
        status: MarketStatus,
    },
    MarketStatusChanged {
        market: MarketId,
        status: MarketStatus,
    },
    MarketFeesChanged {
        market: MarketId,
        maker_fee_ppm: u32,
        taker_fee_ppm: u32,
    },
    UserCreated {
        user: UserId,
    },
    /// The secret is not in the event: events leave the matcher for many
    /// consumers, and only the journal may hold secrets.
    ApiKeyCreated {
        user: UserId,
        key: ApiKey,
    },
    ApiKeyRevoked {
        user: UserId,
        key: ApiKey,
    },
    Deposited {
        user: UserId,
        asset: AssetId,
        amount: Units,
    },
    Withdrawn {
        user: UserId,
        asset: AssetId,
        amount: Units,
    },
    /// The command was refused and changed nothing.
    Rejected {
        user: Option<UserId>,
        client_order_id: Option<ClientOrderId>,
        reason: RejectReason,
    },
    OrderAccepted {
        order: OrderId,
        user: UserId,
        market: MarketId,
        side: Side,
        kind: OrderKind,
        client_order_id: Option<ClientOrderId>,
        stp: SelfTradePrevention,
        timestamp_ns: u64,
    },
    Trade {
        trade: TradeId,
        market: MarketId,
        /// The resting order's price.
        price: Ticks,
        qty: Lots,
        /// The side of the incoming order.
        taker_side: Side,
        maker_order: OrderId,
        maker_user: UserId,
        /// What the resting order still has open after this trade.
        maker_remaining: Lots,
        taker_order: OrderId,
        taker_user: UserId,
        /// What the incoming order still wants after this trade (0 for a
        /// market buy by quote, which has no quantity).
        taker_remaining: Lots,
        /// Charged in what the maker receives (base if it bought, quote if it sold).
        maker_fee: Units,
        /// Charged in what the taker receives.
        taker_fee: Units,
        timestamp_ns: u64,
    },
    /// A resting order changed by an amend. `priority_kept` is false when it
    /// went to the back of the queue at `price`.
    OrderAmended {
        order: OrderId,
        user: UserId,
        market: MarketId,
        side: Side,
        price: Ticks,
        remaining: Lots,
        priority_kept: bool,
    },
    /// The order is closed and off the book.
    OrderDone {
        order: OrderId,
        user: UserId,
        market: MarketId,
        reason: DoneReason,
        /// Total traded over the order's life.
        filled: Lots,
        /// Open quantity that was cancelled (0 when filled).
        cancelled: Lots,
    },
    /// The outcome of a cancel-all command (each order also gets its own
    /// `OrderDone`).
    CancelledAll {
        user: UserId,
        market: Option<MarketId>,
        count: u32,
    },
    /// The total open quantity at one price changed; 0 means the level is gone.
    BookLevel {
        market: MarketId,
        side: Side,
        price: Ticks,
        qty: Lots,
    },
    /// A user's balance in one asset after the command.
    Balance {
        user: UserId,
        asset: AssetId,
        available: Units,
        locked: Units,
    },
    /// The engine's limits from this command on.
    LimitsChanged {
        limits: EngineLimits,
    },
    /// A waiting stop or take-profit order fired: it enters the market now
    /// as the market or limit order it names, with a new place in time.
    /// Its trades, book changes and end follow as for a new order.
    OrderTriggered {
        order: OrderId,
        user: UserId,
        market: MarketId,
        /// The trade price that fired it.
        price: Ticks,
        timestamp_ns: u64,
    },
    /// A trailing order started tracking: from here on it follows the best
    /// trade price (highest for a sell, lowest for a buy), starting at
    /// `price`, and fires on the retracement.
    TrailingStarted {
        order: OrderId,
        user: UserId,
        market: MarketId,
        price: Ticks,
    },
    /// An iceberg's shown part was used up: the next part, `shown` lots,
    /// goes to the back of the queue at `price`, `hidden` lots stay behind
    /// it. Private to the owner: the hidden size is never public.
    OrderRefilled {
        order: OrderId,
        user: UserId,
        market: MarketId,
        side: Side,
        price: Ticks,
        shown: Lots,
        hidden: Lots,
    },
    /// An order list opened. Its orders' `OrderAccepted` events follow, in
    /// the order of `orders`. For an OTO, `orders[1]` is pending: it is not
    /// on the book, waits for nothing but `orders[0]`'s complete fill, and
    /// holds no funds until `OrderReleased`.
    OrderListAccepted {
        list: ListId,
        user: UserId,
        market: MarketId,
        contingency: Contingency,
        orders: [OrderId; 2],
        client_list_id: Option<ClientOrderId>,
        timestamp_ns: u64,
    },
    /// An OTO's working order filled: its pending order is placed now, as a
    /// new order would be (checked, funded, then resting, waiting or
    /// trading). If it cannot be, an `OrderDone` with `Refused` follows.
    OrderReleased {
        order: OrderId,
        user: UserId,
        market: MarketId,
        timestamp_ns: u64,
    },
    /// An order list is over: its orders are closed, or the one left goes
    /// on alone (an OCO leg that traded or fired, an OTO's released order).
    OrderListDone {
        list: ListId,
        user: UserId,
        market: MarketId,
    },
}

/// Why an order left the book or ended without resting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoneReason {
    Filled,
    /// Cancelled by its owner (cancel or cancel-all).
    Cancelled,
    /// An IOC, FOK or market order's remainder, or a market order that found
    /// no more liquidity.
    Expired,
    /// Cancelled by self-trade prevention.
    SelfTrade,
    /// A market buy by quantity stopped because the user's available quote
    /// could not pay for the next lot, or a market sell by quote amount
    /// sold all of the user's available base before reaching its amount.
    FundsExhausted,
    /// Cancelled because the other order of its list traded, fired or
    /// closed (an OCO's other leg; an OTO's pending order when the working
    /// order ends unfilled).
    Contingent,
    /// An OTO's pending order could not be placed when it was released
    /// (the reason says why); it never held funds.
    Refused(RejectReason),
}

/// Why a command was refused. Each names the rule and the numbers involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    UnknownUser(UserId),
    UnknownAsset(AssetId),
    UnknownMarket(MarketId),
    /// No open order of this user matches the reference.
    UnknownOrder,
    MarketNotOpen {
        market: MarketId,
        status: MarketStatus,
    },
    MarketHalted {
        market: MarketId,
    },
    DuplicateAssetSymbol(Symbol),
    AssetDecimalsTooLarge {
        decimals: u8,
        max: u8,
    },
    MarketAssetsEqual,
    DuplicateMarket {
        existing: MarketId,
    },
    ZeroLotSize,
    ZeroTickSize,
    FeeRateTooHigh {
        fee_ppm: u32,
        max_ppm: u32,
    },
    ZeroAmount,
    ZeroQuantity,
    ZeroPrice,
    QuantityBelowMinimum {
        qty: Lots,
        min: Lots,
    },
    NotionalBelowMinimum {
        notional: Units,
        min: Units,
    },
    /// The order's value or size does not fit the engine's 64-bit integers.
    Overflow,
    /// A deposit would take the asset's total above what the engine can hold.
    SupplyOverflow {
        asset: AssetId,
    },
    InsufficientFunds {
        asset: AssetId,
        needed: Units,
        available: Units,
    },
    DuplicateClientOrderId(ClientOrderId),
    OpenOrderLimit {
        limit: u32,
    },
    /// The engine holds as many resting orders as it is configured for.
    EngineOrderCapacity {
        limit: u32,
    },
    EngineCapacity {
        what: Capacity,
        limit: u32,
    },
    PostOnlyWouldTake,
    /// An amend that asks for no change.
    AmendNoChange,
    DuplicateApiKey,
    /// No such key belongs to this user.
    UnknownApiKey,
    ApiKeyTooShort {
        len: u32,
        min: u32,
    },
    ApiKeyLimit {
        limit: u32,
    },
    /// The stop price's condition already holds at the last trade price.
    WouldTriggerImmediately {
        stop: Ticks,
        last: Ticks,
    },
    /// A stop or take-profit order needs a stop price, a trailing delta, or both.
    TriggerUnset,
    TrailingDeltaOutOfRange {
        bips: u16,
        min: u16,
        max: u16,
    },
    /// A stop-market buy holds its value at a reference price: its stop
    /// price, or the last trade price for a trailing order without one.
    NoReferencePrice,
    /// The time in force is not one this kind of order takes.
    TimeInForceNotAllowed,
    /// An iceberg's visible part must be at least the market's minimum
    /// quantity and below the order's quantity.
    IcebergVisibleInvalid {
        visible: Lots,
        qty: Lots,
    },
    IcebergTooManyParts {
        parts: u64,
        max: u64,
    },
    /// The two orders of a list do not form an OCO or OTO (the text says
    /// which rule).
    OrderListInvalid(ListRule),
    DuplicateListClientId(ClientOrderId),
    /// No open order list of this user matches the reference.
    UnknownOrderList,
    /// Orders that wait (triggers, pending orders) and orders of a list
    /// cannot be amended; cancel and place again.
    AmendNotAllowed,
}

/// The rule of [`RejectReason::OrderListInvalid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListRule {
    /// An OCO's legs must have the same side and quantity.
    OcoLegsDiffer,
    /// An OCO leg is a post-only limit or iceberg, or a stop or take-profit.
    OcoLegKind,
    /// At most one OCO leg may rest on the book.
    OcoTwoMakers,
    /// An OTO's working order is a limit or iceberg order.
    OtoWorkingKind,
    /// An OTO's pending order is a limit, iceberg, market by quantity, stop
    /// or take-profit order.
    OtoPendingKind,
    /// The two orders of a list share a client order id.
    SameClientOrderId,
}

impl fmt::Display for ListRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListRule::OcoLegsDiffer => "the two orders of an OCO must have the same side and quantity",
            ListRule::OcoLegKind => {
                "an OCO order must be a post-only limit (or iceberg) or a stop or take-profit order"
            }
            ListRule::OcoTwoMakers => "at most one order of an OCO may rest on the book",
            ListRule::OtoWorkingKind => "an OTO's working order must be a limit or iceberg order",
            ListRule::OtoPendingKind => {
                "an OTO's pending order must be a limit, iceberg, market (by quantity), stop or take-profit order"
            }
            ListRule::SameClientOrderId => "the two orders of a list need different client order ids",
        })
    }
}

/// Which table of reference data is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capacity {
    Assets,
    Markets,
    Users,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RejectReason::*;
        match self {
            UnknownUser(user) => write!(f, "user {user} does not exist"),
            UnknownAsset(asset) => write!(f, "asset {asset} does not exist"),
            UnknownMarket(market) => write!(f, "market {market} does not exist"),
            UnknownOrder => f.write_str("no open order of this user has that id"),
            MarketNotOpen { market, status } => {
                write!(f, "market {market} is {status:?}; it accepts no new orders or amends")
            }
            MarketHalted { market } => {
                write!(f, "market {market} is halted; not even cancels are accepted")
            }
            DuplicateAssetSymbol(symbol) => write!(f, "an asset named {symbol} exists already"),
            AssetDecimalsTooLarge { decimals, max } => {
                write!(f, "an asset may have at most {max} decimals, not {decimals}")
            }
            MarketAssetsEqual => f.write_str("a market's base and quote assets must differ"),
            DuplicateMarket { existing } => {
                write!(f, "market {existing} already trades this base and quote")
            }
            ZeroLotSize => f.write_str("the lot size must be at least one unit of base"),
            ZeroTickSize => f.write_str("the tick size must be worth at least one unit of quote per lot"),
            FeeRateTooHigh { fee_ppm, max_ppm } => {
                write!(f, "fee rate {fee_ppm} ppm is above the maximum {max_ppm} ppm")
            }
            ZeroAmount => f.write_str("the amount must be greater than zero"),
            ZeroQuantity => f.write_str("the quantity must be greater than zero"),
            ZeroPrice => f.write_str("the price must be greater than zero"),
            QuantityBelowMinimum { qty, min } => {
                write!(f, "quantity {qty} lots is below the market's minimum of {min} lots")
            }
            NotionalBelowMinimum { notional, min } => {
                write!(f, "order value {notional} quote units is below the market's minimum of {min}")
            }
            Overflow => f.write_str("the order's value or size is too large"),
            SupplyOverflow { asset } => {
                write!(f, "the deposit would take asset {asset}'s total supply past the engine's limit")
            }
            InsufficientFunds { asset, needed, available } => write!(
                f,
                "insufficient balance of asset {asset}: {needed} units needed, {available} available"
            ),
            DuplicateClientOrderId(id) => {
                write!(f, "client order id {id} is already used by an open order")
            }
            OpenOrderLimit { limit } => {
                write!(f, "the user has {limit} open orders, the most allowed")
            }
            EngineOrderCapacity { limit } => {
                write!(f, "the engine holds {limit} open orders, its configured capacity")
            }
            EngineCapacity { what, limit } => {
                write!(f, "the engine holds {limit} {what:?}, its configured capacity")
            }
            PostOnlyWouldTake => f.write_str("post-only order would trade at once"),
            AmendNoChange => f.write_str("the amend changes neither price nor quantity"),
            DuplicateApiKey => f.write_str("that API key exists already"),
            UnknownApiKey => f.write_str("the user has no such API key"),
            ApiKeyTooShort { len, min } => {
                write!(f, "API keys and secrets need at least {min} characters, not {len}")
            }
            ApiKeyLimit { limit } => write!(f, "the user has {limit} API keys, the most allowed"),
            WouldTriggerImmediately { stop, last } => {
                write!(f, "order would trigger immediately: stop price {stop} against last price {last}")
            }
            TriggerUnset => f.write_str("a stop or take-profit order needs a stop price or a trailing delta"),
            TrailingDeltaOutOfRange { bips, min, max } => {
                write!(f, "trailing delta {bips} basis points is outside {min}..={max}")
            }
            NoReferencePrice => f.write_str(
                "a trailing stop-market buy without a stop price needs a last trade price to hold funds at",
            ),
            TimeInForceNotAllowed => f.write_str("this kind of order does not take that time in force"),
            IcebergVisibleInvalid { visible, qty } => write!(
                f,
                "iceberg visible quantity {visible} lots must be at least the minimum and below the quantity {qty}"
            ),
            IcebergTooManyParts { parts, max } => {
                write!(f, "iceberg would show {parts} parts; at most {max} are allowed")
            }
            OrderListInvalid(rule) => write!(f, "{rule}"),
            DuplicateListClientId(id) => {
                write!(f, "list client order id {id} is already used by an open order list")
            }
            UnknownOrderList => f.write_str("no open order list of this user has that id"),
            AmendNotAllowed => f.write_str(
                "waiting, pending and order-list orders cannot be amended; cancel and place again",
            ),
        }
    }
}

/// Where events of the command being applied go.
pub(crate) struct Emitter<'a> {
    seq: u64,
    out: &'a mut Vec<Event>,
}

impl Emitter<'_> {
    #[inline]
    pub(crate) fn emit(&mut self, kind: EventKind) {
        self.out.push(Event { seq: self.seq, kind });
    }
}

impl<'a> Emitter<'a> {
    pub(crate) fn new(seq: u64, out: &'a mut Vec<Event>) -> Emitter<'a> {
        Emitter { seq, out }
    }
}

pub(crate) fn emit_balance(emitter: &mut Emitter, user: UserId, asset: AssetId, balance: crate::Balance) {
    emitter.emit(EventKind::Balance { user, asset, available: balance.available, locked: balance.locked });
}
