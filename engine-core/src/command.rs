//! Commands: every change of trading state is one.
//!
//! Commands are plain `Copy` data so that they can travel through a ring
//! buffer and into the journal without allocation. The engine validates
//! every field itself; a command that breaks a rule becomes a
//! [`Rejected`](crate::EventKind::Rejected) event, never a panic.

use serde::{Deserialize, Serialize};

use crate::limits::EngineLimits;
use crate::market::{MarketRules, MarketStatus};
use crate::units::{
    ApiKey, ApiSecret, AssetId, ClientOrderId, Lots, MarketId, OrderId, Side, Symbol, Ticks, Units, UserId,
};

/// A command with the sequence number and time the matcher stamped on it.
/// Time comes in from outside: the engine has no clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedCommand {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds an asset; its id is the number of assets before it.
    CreateAsset {
        symbol: Symbol,
        decimals: u8,
    },
    /// Adds a market; its id is the number of markets before it.
    CreateMarket {
        rules: MarketRules,
        status: MarketStatus,
    },
    SetMarketStatus {
        market: MarketId,
        status: MarketStatus,
    },
    /// Changes fees for trades from now on; resting orders are not touched.
    SetMarketFees {
        market: MarketId,
        maker_fee_ppm: u32,
        taker_fee_ppm: u32,
    },
    /// Adds a user with empty balances; its id is the number of users before it.
    CreateUser,
    /// Gives a user an API key (at least 16 characters, unique across users).
    CreateApiKey {
        user: UserId,
        key: ApiKey,
        secret: ApiSecret,
    },
    RevokeApiKey {
        user: UserId,
        key: ApiKey,
    },
    Deposit {
        user: UserId,
        asset: AssetId,
        amount: Units,
    },
    /// Takes `amount` from the user's available balance (never from funds
    /// locked by open orders).
    Withdraw {
        user: UserId,
        asset: AssetId,
        amount: Units,
    },
    PlaceOrder(NewOrder),
    CancelOrder {
        user: UserId,
        order: OrderRef,
    },
    /// Cancels the user's open orders, in one market or in all markets that
    /// accept cancels.
    CancelAll {
        user: UserId,
        market: Option<MarketId>,
    },
    Amend(Amend),
    /// Replaces the engine's limits (the server journals one at start when
    /// its configuration names different limits, and the admin API sends
    /// one). New variants go last: the journal stores the variant's index.
    SetLimits {
        limits: EngineLimits,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    pub kind: OrderKind,
    /// Unique among the user's open orders when given.
    pub client_order_id: Option<ClientOrderId>,
    pub stp: SelfTradePrevention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderKind {
    /// A limit order: trades at `price` or better.
    Limit { price: Ticks, qty: Lots, tif: TimeInForce },
    /// Trades `qty` lots at whatever prices the book offers and never rests.
    /// A market buy stops early when the user's available quote runs out.
    Market { qty: Lots },
    /// A market order by quote amount, never resting: a buy spends at most
    /// `amount` of quote; a sell sells base until it has received at most
    /// `amount` of quote (before fees), or until the seller's available base
    /// runs out. It is filled when what is left of `amount` cannot pay for
    /// one more lot at the price it last traded at.
    MarketByQuote { amount: Units },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeInForce {
    /// Good till cancelled: what does not trade at once rests on the book.
    Gtc,
    /// Immediate or cancel: trades what it can at once, the rest is cancelled.
    Ioc,
    /// Fill or kill: trades all of its quantity at once or nothing at all.
    Fok,
    /// Rests on the book without trading; rejected if it would take liquidity.
    PostOnly,
}

/// What happens when an incoming order would trade with a resting order of
/// the same user. The incoming order's choice applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfTradePrevention {
    /// Stop matching; the rest of the incoming order is cancelled.
    CancelTaker,
    /// Cancel the resting order and keep matching.
    CancelMaker,
    /// Cancel the resting order and the rest of the incoming order.
    CancelBoth,
    /// Trade with oneself (fees are charged on both sides).
    Allow,
}

/// Names an open order: by the engine's id or by the user's client order id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderRef {
    Id(OrderId),
    Client(ClientOrderId),
}

/// Changes a resting order. A pure decrease of quantity (same price, or no
/// price given) keeps the order's place in the queue; a new price or a larger
/// quantity sends it to the back, and a new price may trade at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amend {
    pub user: UserId,
    pub order: OrderRef,
    /// The new open (unfilled) quantity.
    pub new_qty: Option<Lots>,
    pub new_price: Option<Ticks>,
}
