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
    ApiKey, ApiSecret, AssetId, ClientOrderId, ListId, Lots, MarketId, OrderId, Side, Symbol, Ticks, Units,
    UserId,
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
    /// Places two orders bound together: an OCO (one cancels the other) or
    /// an OTO (one triggers the other). See [`NewOrderList`].
    PlaceOrderList(NewOrderList),
    /// Cancels every open order of an order list (cancelling one order of a
    /// list with [`Command::CancelOrder`] does the same).
    CancelOrderList {
        user: UserId,
        list: ListRef,
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
    /// A limit order that shows at most `visible` lots on the book at a
    /// time (an iceberg). Each time the shown part is used up the next one,
    /// `visible` lots or what is left, goes to the back of the queue at
    /// `price`. `tif` is GTC or post-only.
    Iceberg { price: Ticks, qty: Lots, visible: Lots, tif: TimeInForce },
    /// Waits off the book until `trigger` fires, then enters as a market
    /// order for `qty`.
    StopMarket { trigger: Trigger, qty: Lots },
    /// Waits off the book until `trigger` fires, then enters as a limit
    /// order (GTC, IOC or FOK); an iceberg showing `visible` lots when
    /// `visible` is not 0 (GTC only).
    StopLimit { trigger: Trigger, price: Ticks, qty: Lots, tif: TimeInForce, visible: Lots },
}

impl OrderKind {
    /// The order's quantity (`None` for a market order by quote amount).
    pub fn qty(&self) -> Option<Lots> {
        match *self {
            OrderKind::Limit { qty, .. }
            | OrderKind::Market { qty }
            | OrderKind::Iceberg { qty, .. }
            | OrderKind::StopMarket { qty, .. }
            | OrderKind::StopLimit { qty, .. } => Some(qty),
            OrderKind::MarketByQuote { .. } => None,
        }
    }

    /// The limit price (`None` for market kinds).
    pub fn price(&self) -> Option<Ticks> {
        match *self {
            OrderKind::Limit { price, .. }
            | OrderKind::Iceberg { price, .. }
            | OrderKind::StopLimit { price, .. } => Some(price),
            _ => None,
        }
    }

    /// The trigger of an order that waits for one.
    pub fn trigger(&self) -> Option<Trigger> {
        match *self {
            OrderKind::StopMarket { trigger, .. } | OrderKind::StopLimit { trigger, .. } => Some(trigger),
            _ => None,
        }
    }
}

/// When a stop or take-profit order leaves its wait, by the last trade
/// price of its market (Binance's rules):
///
/// | kind | side | fires when the last price |
/// | --- | --- | --- |
/// | stop-loss | buy | rises to `stop` or above |
/// | stop-loss | sell | falls to `stop` or below |
/// | take-profit | buy | falls to `stop` or below |
/// | take-profit | sell | rises to `stop` or above |
///
/// A trailing order (`trailing_bips` > 0) first waits for that condition
/// on `stop` (or starts at once when `stop` is `None`), then tracks the
/// best price since (highest for a sell, lowest for a buy) and fires when
/// the price moves back from it by `trailing_bips` basis points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub kind: TriggerKind,
    /// The stop price; for a trailing order the price that starts the
    /// tracking, or `None` to start it at placement.
    pub stop: Option<Ticks>,
    /// The trailing delta in basis points (0.01%); 0 for a fixed stop.
    pub trailing_bips: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerKind {
    StopLoss,
    TakeProfit,
}

impl Trigger {
    /// Whether the trigger condition on the stop price waits for the price
    /// to rise (`true`) or to fall (`false`) for an order on `side`.
    pub fn rises(&self, side: Side) -> bool {
        matches!(
            (self.kind, side),
            (TriggerKind::StopLoss, Side::Buy) | (TriggerKind::TakeProfit, Side::Sell)
        )
    }
}

/// Two orders placed together and bound to each other.
///
/// * [`Contingency::Oco`]: one cancels the other. Both legs have the same
///   side and quantity; at most one rests on the book (a post-only limit or
///   iceberg), the others wait for a trigger. When one leg trades (even in
///   part) or fires, the other is cancelled in the same command. The list
///   holds what its larger leg needs, once.
/// * [`Contingency::Oto`]: one triggers the other. `legs[0]` is the working
///   order (a limit or an iceberg), `legs[1]` the pending order (limit,
///   iceberg, market by quantity, stop or take-profit, either side). The
///   pending order is placed, checked and funded like a new order when the
///   working order is completely filled; it holds nothing before.
///
/// Cancelling either order cancels the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderList {
    pub user: UserId,
    pub market: MarketId,
    pub contingency: Contingency,
    /// Unique among the user's open order lists when given.
    pub client_list_id: Option<ClientOrderId>,
    pub stp: SelfTradePrevention,
    pub legs: [ListLeg; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListLeg {
    pub side: Side,
    pub kind: OrderKind,
    pub client_order_id: Option<ClientOrderId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contingency {
    /// One cancels the other.
    Oco,
    /// One triggers the other.
    Oto,
}

/// Names an open order list: by the engine's id or by the user's list client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListRef {
    Id(ListId),
    Client(ClientOrderId),
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

// Commands travel by value through the ring and the journal writer: the
// largest (an order list with two legs and three client ids) sets the size.
const _: () = assert!(core::mem::size_of::<StampedCommand>() <= 256, "a command fits 4 cache lines");
