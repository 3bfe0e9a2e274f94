//! Decimal strings at the edge, integers inside: the conversions between
//! what clients send (`"0.0015"`) and the engine's ticks, lots and units.
//! Every conversion is exact or refused; nothing is rounded.

use engine_core::{Lots, MarketRules, Ticks, Units};
use rust_decimal::Decimal;

use crate::error::ApiError;

/// The longest decimal string accepted.
const DECIMAL_LEN_MAX: usize = 40;

/// Parses a plain non-negative decimal (`123`, `0.0015`): digits with at
/// most one point. No sign, exponent, spaces or separators.
pub fn parse_decimal(field: &'static str, text: &str) -> Result<Decimal, ApiError> {
    let invalid = || ApiError::invalid(field, format!("{text:?} is not a decimal number such as \"0.0015\""));
    if text.is_empty() || text.len() > DECIMAL_LEN_MAX {
        return Err(invalid());
    }
    let mut points = 0;
    for byte in text.bytes() {
        match byte {
            b'0'..=b'9' => {}
            b'.' => points += 1,
            _ => return Err(invalid()),
        }
    }
    if points > 1 || text.starts_with('.') || text.ends_with('.') {
        return Err(invalid());
    }
    text.parse::<Decimal>().map_err(|_| ApiError::invalid(field, format!("{text:?} has too many digits")))
}

fn pow10(exponent: u32) -> Decimal {
    Decimal::from_i128_with_scale(10i128.pow(exponent), 0)
}

/// A whole number of `unit` in `value`, or an error that says which.
fn whole_multiple(field: &'static str, value: Decimal, unit: Decimal, what: &str) -> Result<u64, ApiError> {
    let remainder =
        value.checked_rem(unit).ok_or_else(|| ApiError::invalid(field, format!("{value} is too large")))?;
    if !remainder.is_zero() {
        return Err(ApiError::invalid(
            field,
            format!("{value} is not a multiple of the {what} {}", unit.normalize()),
        ));
    }
    let count =
        value.checked_div(unit).ok_or_else(|| ApiError::invalid(field, format!("{value} is too large")))?;
    u64::try_from(count).map_err(|_| ApiError::invalid(field, format!("{value} is too large")))
}

/// Amounts of an asset: `decimals` places.
pub fn to_units(field: &'static str, amount: Decimal, decimals: u8) -> Result<Units, ApiError> {
    let unit = Decimal::from_i128_with_scale(1, u32::from(decimals));
    whole_multiple(field, amount, unit, "asset's smallest unit").map(Units)
}

pub fn units_to_string(units: Units, decimals: u8) -> String {
    persistence::scale::units(units, decimals).to_string()
}

/// A market's tick and lot sizes as decimals.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub tick_size: Decimal,
    pub lot_size: Decimal,
    pub base_decimals: u8,
    pub quote_decimals: u8,
}

impl Scale {
    /// The lot size is `base_units_per_lot` base units; the tick size is the
    /// price at which one lot costs `quote_units_per_tick` quote units.
    pub fn for_market(rules: &MarketRules, base_decimals: u8, quote_decimals: u8) -> Scale {
        // One conversion for the API and the database.
        let market = persistence::scale::MarketScale::for_market(rules, base_decimals, quote_decimals);
        Scale { tick_size: market.tick_size, lot_size: market.lot_size, base_decimals, quote_decimals }
    }

    pub fn to_ticks(&self, field: &'static str, price: Decimal) -> Result<Ticks, ApiError> {
        whole_multiple(field, price, self.tick_size, "tick size").map(Ticks)
    }

    pub fn to_lots(&self, field: &'static str, qty: Decimal) -> Result<Lots, ApiError> {
        whole_multiple(field, qty, self.lot_size, "lot size").map(Lots)
    }

    pub fn price(&self, ticks: Ticks) -> String {
        Decimal::from(ticks.0)
            .checked_mul(self.tick_size)
            .map_or_else(|| format!("{ticks} ticks"), |p| p.normalize().to_string())
    }

    /// What `lots` at `ticks` cost in the quote asset.
    pub fn quote(&self, ticks: Ticks, lots: Lots) -> String {
        Decimal::from(ticks.0)
            .checked_mul(self.tick_size)
            .and_then(|price| price.checked_mul(Decimal::from(lots.0) * self.lot_size))
            .map_or_else(|| format!("{lots} lots at {ticks} ticks"), |q| q.normalize().to_string())
    }

    pub fn qty(&self, lots: Lots) -> String {
        Decimal::from(lots.0)
            .checked_mul(self.lot_size)
            .map_or_else(|| format!("{lots} lots"), |q| q.normalize().to_string())
    }
}

/// Market rules from decimal tick and lot sizes, or why they do not fit the
/// assets' decimals.
pub fn rules_scale(
    tick_size: Decimal,
    lot_size: Decimal,
    base_decimals: u8,
    quote_decimals: u8,
) -> Result<(u64, u64), ApiError> {
    let base_units_per_lot = lot_size
        .checked_mul(pow10(u32::from(base_decimals)))
        .filter(|v| v.fract().is_zero() && *v >= Decimal::ONE)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "lot_size",
                format!("{lot_size} is not a whole number of the base asset's smallest unit"),
            )
        })?;
    let quote_units_per_tick = tick_size
        .checked_mul(lot_size)
        .and_then(|v| v.checked_mul(pow10(u32::from(quote_decimals))))
        .filter(|v| v.fract().is_zero() && *v >= Decimal::ONE)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "tick_size",
                format!(
                    "one lot ({lot_size}) at one tick ({tick_size}) must be worth a whole number of the quote asset's \
                     smallest unit"
                ),
            )
        })?;
    Ok((base_units_per_lot, quote_units_per_tick))
}

/// A fee rate as a decimal fraction (`"0.001"` is 0.1%) in parts per million.
pub fn fee_ppm(field: &'static str, rate: Decimal) -> Result<u32, ApiError> {
    let ppm = rate.checked_mul(pow10(6)).filter(|v| v.fract().is_zero()).ok_or_else(|| {
        ApiError::invalid(field, format!("{rate} has more than 6 decimal places (fees are in millionths)"))
    })?;
    u32::try_from(ppm).map_err(|_| ApiError::invalid(field, format!("{rate} is too large")))
}

pub fn ppm_to_string(ppm: u32) -> String {
    Decimal::from_i128_with_scale(i128::from(ppm), 6).normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::AssetId;

    fn btc_usdt() -> Scale {
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
        Scale::for_market(&rules, 8, 6)
    }

    #[test]
    fn strict_decimal_strings() {
        assert_eq!(parse_decimal("price", "0.0015").unwrap().to_string(), "0.0015");
        assert_eq!(parse_decimal("price", "42").unwrap().to_string(), "42");
        for bad in ["", "-1", "+1", "1e5", "1.2.3", ".5", "5.", " 1", "1_000", "0x10", "NaN", "１"] {
            assert!(parse_decimal("price", bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_decimal("price", &"9".repeat(41)).is_err());
        assert!(parse_decimal("price", &"9".repeat(35)).is_err(), "more digits than a decimal holds");
    }

    #[test]
    fn exact_conversions_or_a_reason() {
        let scale = btc_usdt();
        assert_eq!(scale.tick_size.to_string(), "0.01");
        assert_eq!(scale.lot_size.to_string(), "0.0001");
        let d = |s: &str| parse_decimal("x", s).unwrap();
        assert_eq!(scale.to_ticks("price", d("50000.01")).unwrap(), Ticks(5_000_001));
        assert_eq!(scale.to_lots("quantity", d("0.0015")).unwrap(), Lots(15));
        let error = scale.to_ticks("price", d("50000.005")).unwrap_err();
        assert!(error.message.contains("not a multiple of the tick size 0.01"), "{}", error.message);
        let error = scale.to_lots("quantity", d("0.00015")).unwrap_err();
        assert!(error.message.contains("lot size 0.0001"), "{}", error.message);
        assert!(scale.to_lots("quantity", d("99999999999999999999999")).is_err(), "beyond u64 lots");
        assert_eq!(scale.price(Ticks(5_000_001)), "50000.01");
        assert_eq!(scale.qty(Lots(15)), "0.0015");
        assert_eq!(to_units("amount", d("1.5"), 6).unwrap(), Units(1_500_000));
        assert!(to_units("amount", d("1.0000001"), 6).is_err());
        assert_eq!(units_to_string(Units(1_500_000), 6), "1.500000");
    }

    #[test]
    fn market_scales_from_decimals() {
        let d = |s: &str| parse_decimal("x", s).unwrap();
        assert_eq!(rules_scale(d("0.01"), d("0.0001"), 8, 6).unwrap(), (10_000, 1));
        assert!(rules_scale(d("0.01"), d("0.000000001"), 8, 6).is_err(), "lot below one satoshi");
        assert!(rules_scale(d("0.0001"), d("0.0001"), 8, 6).is_err(), "a tick-lot worth less than one unit");
        assert_eq!(fee_ppm("maker_fee", d("0.001")).unwrap(), 1_000);
        assert!(fee_ppm("maker_fee", d("0.0000001")).is_err());
        assert_eq!(ppm_to_string(1_000), "0.001");
    }
}
