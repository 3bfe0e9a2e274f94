//! Request parameters the way Binance takes them: from the query string and
//! a form-encoded body (REST), or from a JSON `params` object (WebSocket
//! API). Each endpoint names the parameters it reads; anything else is
//! refused (-1104) rather than silently ignored, so a misspelt
//! `timeInforce` is an error and not a GTC order.

use rust_decimal::Decimal;
use serde_json::Value;

use super::error::BinanceError;
use crate::amounts::parse_decimal;

/// Parameters every signed request may carry besides its own.
const SIGNING: &[&str] = &["timestamp", "recvWindow", "signature", "apiKey"];

pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// From a raw query string and body; the body counts only when it is
    /// form-encoded (`form`).
    pub fn from_http(query: &str, body: &[u8], form: bool) -> Result<Params, BinanceError> {
        let mut pairs = Vec::new();
        let body = if form {
            std::str::from_utf8(body).map_err(|_| BinanceError::illegal_characters("body", "UTF-8"))?
        } else {
            ""
        };
        for part in [query, body] {
            for (name, value) in crate::auth::query_pairs(part) {
                let name = crate::query::decode(name)
                    .ok_or_else(|| BinanceError::illegal_characters(name, "percent-encoded UTF-8"))?;
                let value = crate::query::decode(value)
                    .ok_or_else(|| BinanceError::illegal_characters(&name, "percent-encoded UTF-8"))?;
                pairs.push((name, value));
            }
        }
        Params::checked(pairs)
    }

    /// From the WebSocket API's `params` object: strings, numbers and
    /// booleans as their text, arrays as JSON (as `symbols` is sent).
    pub fn from_json(params: &Value) -> Result<Params, BinanceError> {
        let object = match params {
            Value::Null => return Ok(Params { pairs: Vec::new() }),
            Value::Object(object) => object,
            _ => return Err(BinanceError::invalid_value("params", "must be an object")),
        };
        let mut pairs = Vec::with_capacity(object.len());
        for (name, value) in object {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                Value::Array(_) => value.to_string(),
                Value::Null => String::new(),
                Value::Object(_) => return Err(BinanceError::invalid_value(name, "must not be an object")),
            };
            pairs.push((name.clone(), text));
        }
        Params::checked(pairs)
    }

    /// Refuses a parameter sent twice (-1101) or sent empty (-1105), as
    /// Binance does: `type=` is not the default type.
    fn checked(pairs: Vec<(String, String)>) -> Result<Params, BinanceError> {
        for (i, (name, value)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(other, _)| other == name) {
                return Err(BinanceError::duplicate_parameter(name));
            }
            if value.is_empty() {
                return Err(BinanceError::empty(name));
            }
        }
        Ok(Params { pairs })
    }

    /// Refuses parameters outside `allowed` (and the signing ones).
    pub fn only(&self, allowed: &[&str]) -> Result<(), BinanceError> {
        let unread: Vec<&str> = self
            .pairs
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !allowed.contains(name) && !SIGNING.contains(name))
            .collect();
        if unread.is_empty() {
            Ok(())
        } else {
            let sent = self.pairs.len();
            Err(BinanceError::unread(sent - unread.len(), sent, &unread))
        }
    }

    /// Takes `name` out: a parameter read before the endpoint's own.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.remove(at).1)
    }

    /// The parameter's text (never empty: see `checked`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn required(&self, name: &str) -> Result<&str, BinanceError> {
        self.get(name).ok_or_else(|| BinanceError::mandatory(name))
    }

    pub fn decimal(&self, name: &'static str) -> Result<Option<Decimal>, BinanceError> {
        self.get(name)
            .map(|text| parse_decimal(name, text).map_err(|_| BinanceError::illegal_decimal(name)))
            .transpose()
    }

    pub fn integer(&self, name: &str) -> Result<Option<u64>, BinanceError> {
        self.get(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| BinanceError::illegal_characters(name, "^[0-9]{1,20}$"))
            })
            .transpose()
    }

    /// A whole number within `min..=max` (Binance answers -1130 outside).
    pub fn bounded(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, BinanceError> {
        match self.integer(name)? {
            Some(n) if n < min || n > max => {
                Err(BinanceError::invalid_value(name, format!("must be from {min} to {max}")))
            }
            other => Ok(other),
        }
    }

    /// `true`/`false` (Binance's spelling, any case).
    pub fn flag(&self, name: &str) -> Result<Option<bool>, BinanceError> {
        self.get(name)
            .map(|text| match text.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(BinanceError::invalid_value(name, "must be true or false")),
            })
            .transpose()
    }
}

/// `fromId`, or `startTime`/`endTime`, as the trade lists take them.
#[derive(Clone, Copy, Debug, Default)]
pub struct TradeRange {
    pub from_id: Option<u64>,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
}

impl TradeRange {
    /// Reads the range; `fromId` with a time is Binance's -1128.
    pub fn read(p: &Params) -> Result<TradeRange, BinanceError> {
        let range = TradeRange {
            from_id: p.integer("fromId")?,
            start_ms: p.integer("startTime")?,
            end_ms: p.integer("endTime")?,
        };
        if range.from_id.is_some() && (range.start_ms.is_some() || range.end_ms.is_some()) {
            return Err(BinanceError::bad_request(-1128, "Combination of optional parameters invalid."));
        }
        Ok(range)
    }

    pub fn contains(&self, id: u64, time_ms: u64) -> bool {
        self.from_id.is_none_or(|from| id >= from)
            && self.start_ms.is_none_or(|start| time_ms >= start)
            && self.end_ms.is_none_or(|end| time_ms <= end)
    }

    /// At most `limit` of `items` (oldest first, already in the range):
    /// the first ones from an id or a start time, else the most recent.
    pub fn window<T>(&self, items: Vec<T>, limit: usize) -> Vec<T> {
        if self.from_id.is_some() || self.start_ms.is_some() {
            items.into_iter().take(limit).collect()
        } else {
            let skip = items.len().saturating_sub(limit);
            items.into_iter().skip(skip).collect()
        }
    }
}
