//! Exact conversion of the engine's integers into decimals: the one place
//! where ticks, lots and smallest units become prices and amounts.

use engine_core::{Lots, MarketRules, Ticks, Units};
use rust_decimal::Decimal;

/// An amount of an asset at the asset's own scale (`decimals` places).
/// Exact: a `u64` of units always fits a decimal's 96-bit mantissa.
pub fn units(amount: Units, decimals: u8) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(amount.0), u32::from(decimals))
}

/// A signed change of an amount, at the asset's scale.
pub fn units_change(after: Units, before: Units, decimals: u8) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(after.0) - i128::from(before.0), u32::from(decimals))
}

/// A decimal amount back into smallest units: `None` unless it is a
/// whole, non-negative number of units that fits.
pub fn to_units(amount: Decimal, decimals: u8) -> Option<Units> {
    let mut scaled = amount;
    scaled.rescale(u32::from(decimals));
    if scaled != amount || scaled.is_sign_negative() && !scaled.is_zero() {
        return None;
    }
    u64::try_from(scaled.mantissa()).ok().map(Units)
}

/// How one market's ticks and lots map onto decimal prices and quantities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarketScale {
    /// Price of one tick, in quote per whole base (normalized).
    pub tick_size: Decimal,
    /// Base in one lot (normalized).
    pub lot_size: Decimal,
    pub base_units_per_lot: u64,
    pub quote_units_per_tick: u64,
    pub base_decimals: u8,
    pub quote_decimals: u8,
}

impl MarketScale {
    pub fn for_market(rules: &MarketRules, base_decimals: u8, quote_decimals: u8) -> MarketScale {
        let lot_size = units(Units(rules.base_units_per_lot), base_decimals);
        let tick_value = units(Units(rules.quote_units_per_tick), quote_decimals);
        // Exact for every market created through the API (its tick size is
        // a decimal); rounded at 28 digits for a hand-made one.
        let tick_size = tick_value.checked_div(lot_size).unwrap_or(Decimal::ZERO).normalize();
        MarketScale {
            tick_size,
            lot_size: lot_size.normalize(),
            base_units_per_lot: rules.base_units_per_lot,
            quote_units_per_tick: rules.quote_units_per_tick,
            base_decimals,
            quote_decimals,
        }
    }

    /// The decimal price of `ticks`, or `None` past a decimal's range.
    pub fn price(&self, ticks: Ticks) -> Option<Decimal> {
        Decimal::from(ticks.0).checked_mul(self.tick_size).map(|p| p.normalize())
    }

    /// `lots` in base, at the base asset's scale; `None` on overflow.
    pub fn base(&self, lots: Lots) -> Option<Decimal> {
        let amount = u128::from(lots.0) * u128::from(self.base_units_per_lot);
        u64::try_from(amount).ok().map(|a| units(Units(a), self.base_decimals))
    }

    /// Quote units that `lots` cost at `ticks` (exact, in a u128).
    pub fn quote_units(&self, ticks: Ticks, lots: Lots) -> u128 {
        u128::from(ticks.0) * u128::from(lots.0) * u128::from(self.quote_units_per_tick)
    }
}

/// A sum of units (which may pass `u64` over many trades) at `decimals`.
pub fn wide_units(amount: u128, decimals: u8) -> Option<Decimal> {
    i128::try_from(amount).ok().and_then(|a| Decimal::try_from_i128_with_scale(a, u32::from(decimals)).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::AssetId;

    #[test]
    fn amounts_keep_the_asset_scale_and_come_back_exactly() {
        for decimals in 0..=18u8 {
            for raw in [0u64, 1, 7, 10u64.pow(u32::from(decimals.min(19))), u64::MAX] {
                let decimal = units(Units(raw), decimals);
                assert_eq!(decimal.scale(), u32::from(decimals));
                assert_eq!(to_units(decimal, decimals), Some(Units(raw)));
            }
        }
        assert_eq!(to_units(Decimal::new(15, 1), 0), None, "1.5 is not a whole unit");
        assert_eq!(to_units(Decimal::new(-1, 0), 2), None);
    }

    #[test]
    fn prices_and_quantities_of_a_market() {
        let rules = MarketRules {
            base: AssetId(0),
            quote: AssetId(1),
            base_units_per_lot: 10_000,
            quote_units_per_tick: 1,
            min_qty: Lots(1),
            min_notional: Units(0),
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        };
        let scale = MarketScale::for_market(&rules, 8, 6);
        assert_eq!(scale.tick_size.to_string(), "0.01");
        assert_eq!(scale.lot_size.to_string(), "0.0001");
        assert_eq!(scale.price(Ticks(3_000_012)).map(|p| p.to_string()), Some("30000.12".to_string()));
        assert_eq!(scale.base(Lots(15)).map(|q| q.to_string()), Some("0.00150000".to_string()));
        assert_eq!(scale.quote_units(Ticks(3_000_012), Lots(15)), 45_000_180);
    }
}

/// A decimal as PostgreSQL `NUMERIC`, keeping its scale even when it is
/// zero (the plain `Decimal` conversion sends a zero as `0`, so a zero fee
/// of a 6-decimal asset would come back as `0` rather than `0.000000`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub Decimal);

impl std::fmt::Debug for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl From<Decimal> for Amount {
    fn from(value: Decimal) -> Amount {
        Amount(value)
    }
}

mod sql {
    use super::Amount;
    use bytes::{BufMut, BytesMut};
    use rust_decimal::Decimal;
    use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

    type BoxError = Box<dyn std::error::Error + Sync + Send>;

    impl ToSql for Amount {
        fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
            if self.0.is_zero() {
                // ndigits 0, weight 0, sign positive, then the scale.
                out.put_u16(0);
                out.put_i16(0);
                out.put_u16(0);
                out.put_u16(u16::try_from(self.0.scale()).unwrap_or(0));
                return Ok(IsNull::No);
            }
            self.0.to_sql(ty, out)
        }

        accepts!(NUMERIC);
        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for Amount {
        fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Amount, BoxError> {
            let mut value = Decimal::from_sql(ty, raw)?;
            // A zero's scale is its display scale, the fourth field.
            if value.is_zero() && raw.len() >= 8 {
                value.rescale(u32::from(u16::from_be_bytes([raw[6], raw[7]])));
            }
            Ok(Amount(value))
        }

        accepts!(NUMERIC);
    }
}
