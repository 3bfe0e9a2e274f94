//! The Binance-compatible API: the subset of Binance's Spot API v3 that
//! market makers' existing clients use, served by the same engine, views
//! and signing routine as the native API.
//!
//! * REST under `/api/v3` on the REST listener ([`rest`]);
//! * market streams at `/ws/<anything>` and `/stream?streams=...` on the
//!   WebSocket listener ([`streams`]);
//! * the WebSocket API at `/ws-api/v3` for order entry and the user data
//!   stream ([`ws_api`]).
//!
//! Symbols are the market's assets run together (`BTC-USDT` is `BTCUSDT`;
//! lower case in stream names). Amounts are decimal strings with at least
//! eight decimals, as Binance prints them. Stop-loss and take-profit
//! orders (market and limit, fixed or trailing), icebergs and the OCO and
//! OTO order lists are Binance's; where the exchange lacks a feature
//! (OTOCO, pegged orders, SOR) the answer is the error Binance gives for
//! an unsupported request.
//!
//! This module must never keep state of its own that the engine does not
//! have: every answer comes from the engine's events, the read views, or
//! the database, exactly as for the native API.

pub mod error;
pub mod lists;
pub mod market;
pub mod params;
pub mod rest;
pub mod state;
pub mod streams;
pub mod trading;
pub mod ws_api;

use engine_core::{Lots, OrderKind, SelfTradePrevention, Side, Ticks, TimeInForce};
use rust_decimal::Decimal;

use crate::amounts::Scale;
use crate::views::OrderStatus;

pub use error::BinanceError;

/// Every order type of every market (`exchangeInfo`'s `orderTypes`).
pub const ORDER_TYPES: [&str; 7] =
    ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"];
/// The `ICEBERG_PARTS` filter: an iceberg shows at most this many parts
/// (Binance's usual limit; the engine's own bound is the same).
pub const ICEBERG_PARTS_MAX: u64 = 100;
/// The `TRAILING_DELTA` filter, in basis points, both ways (Binance's
/// defaults; the engine accepts 1 to 2,000, this edge applies the filter).
pub const TRAILING_DELTA_BIPS_MIN: u16 = 10;
pub const TRAILING_DELTA_BIPS_MAX: u16 = 2_000;

/// The fewest decimals Binance prints in an amount.
const DECIMALS_MIN: u32 = 8;

/// `value` with at least eight decimals (`"0.10000000"`).
pub fn fixed(mut value: Decimal, decimals: u32) -> String {
    value.rescale(decimals.max(DECIMALS_MIN));
    value.to_string()
}

/// An integer amount of the smallest units of an asset with `decimals`,
/// printed with at least eight decimals; exact for any size.
pub fn units_text(value: u128, decimals: u8) -> String {
    let digits = value.to_string();
    let decimals = usize::from(decimals);
    let (whole, fraction) = if digits.len() > decimals {
        let (whole, fraction) = digits.split_at(digits.len() - decimals);
        (whole.to_string(), fraction.to_string())
    } else {
        ("0".to_string(), format!("{digits:0>decimals$}"))
    };
    let width = decimals.max(DECIMALS_MIN as usize);
    format!("{whole}.{fraction:0<width$}")
}

pub fn price_text(scale: &Scale, price: Ticks) -> String {
    Decimal::from(price.0)
        .checked_mul(scale.tick_size)
        .map_or_else(|| scale.price(price), |p| fixed(p, scale.tick_size.scale()))
}

pub fn qty_text(scale: &Scale, qty: Lots) -> String {
    Decimal::from(qty.0)
        .checked_mul(scale.lot_size)
        .map_or_else(|| scale.qty(qty), |q| fixed(q, scale.lot_size.scale()))
}

pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

pub fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::New => "NEW",
        OrderStatus::PartiallyFilled => "PARTIALLY_FILLED",
        OrderStatus::Filled => "FILLED",
        OrderStatus::Cancelled => "CANCELED",
        OrderStatus::Expired | OrderStatus::ExpiredFunds | OrderStatus::ExpiredContingent => "EXPIRED",
        OrderStatus::Rejected => "REJECTED",
        OrderStatus::ExpiredSelfTrade => "EXPIRED_IN_MATCH",
    }
}

/// Binance's status of an order: an OTO's pending order is PENDING_NEW
/// until its working order fills; a waiting stop order is NEW.
pub fn order_status_name(order: &crate::views::OrderView) -> &'static str {
    if order.stage == crate::views::OrderStage::Pending && order.status == OrderStatus::New {
        "PENDING_NEW"
    } else {
        status_name(order.status)
    }
}

/// Binance's order type and time in force for an order kind (`None`: an
/// order restored from a snapshot, which is a resting limit order).
pub fn type_and_tif(kind: Option<OrderKind>) -> (&'static str, &'static str) {
    match kind {
        Some(OrderKind::Limit { tif, .. }) => match tif {
            TimeInForce::Gtc => ("LIMIT", "GTC"),
            TimeInForce::Ioc => ("LIMIT", "IOC"),
            TimeInForce::Fok => ("LIMIT", "FOK"),
            TimeInForce::PostOnly => ("LIMIT_MAKER", "GTC"),
        },
        Some(OrderKind::Market { .. } | OrderKind::MarketByQuote { .. }) => ("MARKET", "GTC"),
        Some(OrderKind::Iceberg { tif: TimeInForce::PostOnly, .. }) => ("LIMIT_MAKER", "GTC"),
        Some(OrderKind::Iceberg { .. }) => ("LIMIT", "GTC"),
        Some(OrderKind::StopMarket { trigger, .. }) => match trigger.kind {
            engine_core::TriggerKind::StopLoss => ("STOP_LOSS", "GTC"),
            engine_core::TriggerKind::TakeProfit => ("TAKE_PROFIT", "GTC"),
        },
        Some(OrderKind::StopLimit { trigger, tif, .. }) => {
            let tif = match tif {
                TimeInForce::Ioc => "IOC",
                TimeInForce::Fok => "FOK",
                TimeInForce::Gtc | TimeInForce::PostOnly => "GTC",
            };
            match trigger.kind {
                engine_core::TriggerKind::StopLoss => ("STOP_LOSS_LIMIT", tif),
                engine_core::TriggerKind::TakeProfit => ("TAKE_PROFIT_LIMIT", tif),
            }
        }
        None => ("LIMIT", "GTC"),
    }
}

/// The self-trade prevention mode an order gets when it names none: the
/// same as the native API's default.
pub const STP_DEFAULT: SelfTradePrevention = SelfTradePrevention::CancelTaker;

pub const STP_MODES: &[(&str, SelfTradePrevention)] = &[
    ("NONE", SelfTradePrevention::Allow),
    ("EXPIRE_TAKER", SelfTradePrevention::CancelTaker),
    ("EXPIRE_MAKER", SelfTradePrevention::CancelMaker),
    ("EXPIRE_BOTH", SelfTradePrevention::CancelBoth),
];

pub fn stp_name(stp: SelfTradePrevention) -> &'static str {
    STP_MODES.iter().find(|(_, mode)| *mode == stp).map_or("NONE", |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_print_exactly_with_at_least_eight_decimals() {
        assert_eq!(units_text(0, 8), "0.00000000");
        assert_eq!(units_text(1, 8), "0.00000001");
        assert_eq!(units_text(123_456_789, 2), "1234567.89000000");
        assert_eq!(units_text(5, 18), "0.000000000000000005");
        assert_eq!(units_text(u128::MAX, 6).len(), u128::MAX.to_string().len() + 3);
        assert_eq!(fixed(Decimal::new(1, 1), 2), "0.10000000");
    }
}
