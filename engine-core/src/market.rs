//! Reference data: assets and the rules of each market.

use serde::{Deserialize, Serialize};

use crate::units::{AssetId, Lots, MarketId, Symbol, Ticks, Units};

/// The largest number of decimals an asset may have. 18 keeps one whole
/// unit (10^18 smallest units) inside a `u64`.
pub const ASSET_DECIMALS_MAX: u8 = 18;

/// The highest maker or taker fee rate, in parts per million (10%).
pub const FEE_PPM_MAX: u32 = 100_000;

/// One million: fee rates are parts of it.
const PPM: u128 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub id: AssetId,
    pub symbol: Symbol,
    /// How many decimals one whole unit has: balances are kept in units of
    /// 10^-decimals.
    pub decimals: u8,
}

/// What a market currently allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarketStatus {
    /// Everything: new orders, amends and cancels.
    Open,
    /// Cancels only; new orders and amends are rejected. Use to wind a market down.
    CancelOnly,
    /// Nothing: the book is frozen, even cancels are rejected (for an
    /// incident, while the operator investigates).
    Halted,
}

/// The trading rules of a market, all in integers.
///
/// The two scale factors tie the market's ticks and lots to the assets'
/// smallest units: `q` lots are `q * base_units_per_lot` units of base, and
/// `q` lots at a price of `p` ticks cost `p * q * quote_units_per_tick` units
/// of quote. For BTC (8 decimals) against USDT (6 decimals) with a lot size
/// of 0.0001 BTC and a tick size of 0.01 USDT, `base_units_per_lot` is
/// 10,000 and `quote_units_per_tick` is 0.01 * 0.0001 * 10^6 = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketRules {
    pub base: AssetId,
    pub quote: AssetId,
    /// Smallest units of base in one lot.
    pub base_units_per_lot: u64,
    /// Smallest units of quote that one lot costs per tick of price.
    pub quote_units_per_tick: u64,
    /// The smallest quantity an order may have.
    pub min_qty: Lots,
    /// The smallest value (price times quantity, in quote units) a limit
    /// order may have, and the smallest amount a market buy by quote may spend.
    pub min_notional: Units,
    /// Fee charged to the resting side of a trade, in parts per million of
    /// what it receives.
    pub maker_fee_ppm: u32,
    /// Fee charged to the incoming side of a trade, in parts per million of
    /// what it receives.
    pub taker_fee_ppm: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Market {
    pub id: MarketId,
    pub rules: MarketRules,
    pub status: MarketStatus,
}

impl MarketRules {
    /// Base units in `qty` lots, or `None` on overflow.
    pub fn base_units(&self, qty: Lots) -> Option<Units> {
        qty.0.checked_mul(self.base_units_per_lot).map(Units)
    }

    /// Quote units that `qty` lots cost at `price`, or `None` on overflow.
    pub fn quote_units(&self, price: Ticks, qty: Lots) -> Option<Units> {
        price
            .0
            .checked_mul(qty.0)
            .and_then(|ticks_lots| ticks_lots.checked_mul(self.quote_units_per_tick))
            .map(Units)
    }

    /// How many whole lots `budget` quote units buy at `price`.
    pub fn lots_affordable(&self, price: Ticks, budget: Units) -> Lots {
        let lot_cost = u128::from(price.0) * u128::from(self.quote_units_per_tick);
        if lot_cost == 0 {
            return Lots(0);
        }
        // The quotient is at most `budget`, which fits in a u64.
        Lots((u128::from(budget.0) / lot_cost) as u64)
    }
}

/// The fee on `received` units at `rate_ppm`, rounded up so that the fee
/// account never loses to rounding. Never more than `received` while
/// `rate_ppm <= 1,000,000`.
pub fn fee(received: Units, rate_ppm: u32) -> Units {
    debug_assert!(u128::from(rate_ppm) <= PPM);
    // The 64-bit path avoids a 128-bit division in the common case.
    if let Some(product) = received.0.checked_mul(u64::from(rate_ppm)) {
        return Units(product.div_ceil(PPM as u64));
    }
    let product = u128::from(received.0) * u128::from(rate_ppm);
    // At most `received`, so it fits in a u64.
    Units(product.div_ceil(PPM) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_up_and_never_exceed_the_amount() {
        assert_eq!(fee(Units(1_000_000), 1_000), Units(1_000));
        assert_eq!(fee(Units(1), 1), Units(1));
        assert_eq!(fee(Units(0), 1_000), Units(0));
        assert_eq!(fee(Units(999), 1_000), Units(1));
        assert_eq!(fee(Units(u64::MAX), 1_000_000), Units(u64::MAX));
        // Both paths (64-bit product and 128-bit product) round up alike.
        assert_eq!(
            fee(Units(u64::MAX / 2), 3),
            Units((u128::from(u64::MAX / 2) * 3).div_ceil(1_000_000) as u64)
        );
        assert_eq!(fee(Units(1_000_001), 3), Units(4));
    }

    #[test]
    fn notional_overflow_is_reported() {
        let rules = MarketRules {
            base: AssetId(0),
            quote: AssetId(1),
            base_units_per_lot: 10,
            quote_units_per_tick: 3,
            min_qty: Lots(1),
            min_notional: Units(0),
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        };
        assert_eq!(rules.quote_units(Ticks(5), Lots(7)), Some(Units(105)));
        assert_eq!(rules.quote_units(Ticks(u64::MAX), Lots(2)), None);
        assert_eq!(rules.base_units(Lots(u64::MAX)), None);
        assert_eq!(rules.lots_affordable(Ticks(5), Units(104)), Lots(6));
    }
}
