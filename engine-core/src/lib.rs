//! The exchange's trading state machine: assets, markets, users, order
//! books, matching, balances and fees.
//!
//! # What this crate owns
//!
//! All trading state, and the one way to change it: [`Engine::apply`] takes a
//! [`StampedCommand`] (a [`Command`] with the sequence number and time the
//! matcher stamped on it) and appends the [`Event`]s it caused. The engine
//! is deterministic: the same commands always produce the same events, byte
//! for byte, and the same [`Engine::state_hash`]. That is what makes
//! recovery by journal replay exact.
//!
//! # What it must never do
//!
//! No I/O, no clock, no threads, no randomness, no floating point. It never
//! panics on a command, however hostile: anything invalid, unfunded or
//! impossible becomes an [`EventKind::Rejected`] event with a
//! [`RejectReason`], and changes nothing. Arithmetic on money is checked; an
//! amount that would not fit is a rejection. (It does assert its own
//! invariants: an assertion failure is a bug in this crate, never input.)
//!
//! # Units
//!
//! Prices are [`Ticks`], quantities [`Lots`], balances [`Units`] of an
//! asset's smallest denomination; [`MarketRules`] ties them together.
//! Decimals exist only at the edges of the exchange.
//!
//! # Example
//!
//! ```
//! use engine_core::*;
//!
//! let mut engine = Engine::new(EngineLimits::default());
//! let mut events = Vec::new();
//! let mut seq = 0;
//! let mut run = |engine: &mut Engine, command: Command, events: &mut Vec<Event>| {
//!     seq += 1;
//!     events.clear();
//!     engine.apply(&StampedCommand { seq, timestamp_ns: seq * 1_000, command }, events).unwrap();
//! };
//!
//! run(&mut engine, Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 }, &mut events);
//! run(&mut engine, Command::CreateAsset { symbol: Symbol::new("USDT").unwrap(), decimals: 6 }, &mut events);
//! let rules = MarketRules {
//!     base: AssetId(0),
//!     quote: AssetId(1),
//!     base_units_per_lot: 10_000,  // 0.0001 BTC
//!     quote_units_per_tick: 1,     // a tick of 0.01 USDT on 0.0001 BTC
//!     min_qty: Lots(1),
//!     min_notional: Units(0),
//!     maker_fee_ppm: 0,
//!     taker_fee_ppm: 1_000,        // 0.1%
//! };
//! run(&mut engine, Command::CreateMarket { rules, status: MarketStatus::Open }, &mut events);
//! run(&mut engine, Command::CreateUser, &mut events);
//! run(&mut engine, Command::Deposit { user: UserId(0), asset: AssetId(1), amount: Units(1_000_000_000) }, &mut events);
//!
//! // Buy 0.01 BTC (100 lots) at 50,000.00 USDT (5,000,000 ticks).
//! let order = NewOrder {
//!     user: UserId(0),
//!     market: MarketId(0),
//!     side: Side::Buy,
//!     kind: OrderKind::Limit { price: Ticks(5_000_000), qty: Lots(100), tif: TimeInForce::Gtc },
//!     client_order_id: None,
//!     stp: SelfTradePrevention::CancelTaker,
//! };
//! run(&mut engine, Command::PlaceOrder(order), &mut events);
//! assert!(matches!(events[0].kind, EventKind::OrderAccepted { .. }));
//! // 500 USDT are now locked for the resting bid.
//! assert_eq!(engine.balance(UserId(0), AssetId(1)).locked, Units(500_000_000));
//! engine.check_invariants().unwrap();
//! ```

mod accounts;
mod book;
mod command;
mod contingent;
mod engine;
mod event;
mod extras;
mod followups;
mod hash;
mod index;
mod invariants;
mod limits;
mod market;
mod orders;
mod snapshot;
mod triggers;
mod units;

pub use accounts::{AssetTotals, Balance};
pub use command::{
    Amend, Command, Contingency, ListLeg, ListRef, NewOrder, NewOrderList, OrderKind, OrderRef,
    SelfTradePrevention, StampedCommand, TimeInForce, Trigger, TriggerKind,
};
pub use engine::{ApiKeyEntry, Engine, SequenceError, TopOfBook};
pub use event::{Capacity, DoneReason, Event, EventKind, ListRule, RejectReason};
pub use hash::StateHasher;
pub use invariants::{InvariantViolation, TouchedScratch};
pub use limits::EngineLimits;
pub use market::{fee, Asset, Market, MarketRules, MarketStatus, ASSET_DECIMALS_MAX, FEE_PPM_MAX};
pub use orders::{ICEBERG_PARTS_MAX, TRAILING_BIPS_MAX};
pub use snapshot::{
    IcebergPart, ListRecord, PendingOrder, RestingOrder, Snapshot, SnapshotError, SnapshotFormat1, ThenKind,
    WaitingOrder, SNAPSHOT_FORMAT_VERSION,
};
pub use units::{
    ApiKey, ApiSecret, AssetId, ClientOrderId, ListId, Lots, MarketId, NameError, OrderId, Side, Symbol,
    Ticks, TradeId, Units, UserId, API_KEY_LEN_MIN,
};
