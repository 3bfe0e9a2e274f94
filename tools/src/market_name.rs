//! The one spelling of a market in exctl's input and output: `BASE-QUOTE`
//! (`BTC-USDT`), as the native API names markets (`GET /markets`). Operators
//! may type any of the spellings in use elsewhere (`BTCUSDT` from the
//! Binance-compatible API, `BTC/USDT` from ccxt, lower case); exctl prints
//! only the canonical one. Binance endpoints keep `BTCUSDT`: that is
//! Binance's shape, not ours.

/// The canonical name of the market trading `base` against `quote`.
pub fn canonical(base: &str, quote: &str) -> String {
    format!("{}-{}", base.to_ascii_uppercase(), quote.to_ascii_uppercase())
}

/// `input` in the canonical spelling. A name with a separator (`-`, `/`,
/// `_`) is split there; one without (`BTCUSDT`) is matched against the
/// `known` canonical names with their dash removed. A name that matches
/// nothing comes back upper-cased as typed, for the server to refuse with
/// its own words.
pub fn parse<'k>(input: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    let input = input.trim();
    if let Some((base, quote)) = input.split_once(['-', '/', '_']) {
        return canonical(base, quote);
    }
    let joined = input.to_ascii_uppercase();
    known.into_iter().find(|name| name.replace('-', "") == joined).map_or(joined, str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_becomes_base_dash_quote() {
        let known = ["BTC-USDT", "ETH-BTC"];
        for typed in ["BTC-USDT", "BTCUSDT", "BTC/USDT", "btc-usdt", "btcusdt", "btc_usdt", " BTC/usdt "] {
            assert_eq!(parse(typed, known), "BTC-USDT", "{typed:?}");
        }
        assert_eq!(parse("ETHBTC", known), "ETH-BTC");
        assert_eq!(parse("DOGE/EUR", known), "DOGE-EUR", "split where the operator split it");
        assert_eq!(parse("dogeeur", known), "DOGEEUR", "unknown and unsplittable: the server says so");
    }
}
