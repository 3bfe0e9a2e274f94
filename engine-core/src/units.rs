//! Integer units and identifiers.
//!
//! Inside the engine every amount is an integer in a unit that has its own
//! type, so that a price can never be added to a quantity by accident:
//!
//! * [`Ticks`]: a price, as a count of the market's tick size.
//! * [`Lots`]: a base quantity, as a count of the market's lot size.
//! * [`Units`]: an amount of one asset in its smallest unit (satoshis for a
//!   coin with 8 decimals), which is what balances are kept in.
//!
//! Identifiers are dense: the engine hands out asset, market and user ids in
//! creation order starting at 0, and order and trade ids starting at 1.

use core::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

macro_rules! integer_newtype {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $int);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

integer_newtype!(
    /// A price in ticks of the market's tick size.
    Ticks(u64)
);
integer_newtype!(
    /// A base quantity in lots of the market's lot size.
    Lots(u64)
);
integer_newtype!(
    /// An amount of an asset in its smallest unit.
    Units(u64)
);
integer_newtype!(
    /// An asset, numbered from 0 in creation order.
    AssetId(u32)
);
integer_newtype!(
    /// A market (a pair of base and quote asset), numbered from 0 in creation order.
    MarketId(u32)
);
integer_newtype!(
    /// A user (an account holder), numbered from 0 in creation order.
    UserId(u32)
);
integer_newtype!(
    /// An order, numbered from 1 in acceptance order; never reused.
    OrderId(u64)
);
integer_newtype!(
    /// A trade, numbered from 1 in execution order; never reused.
    TradeId(u64)
);
integer_newtype!(
    /// An order list (OCO or OTO), numbered from 1 in acceptance order; never reused.
    ListId(u64)
);

impl AssetId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

impl MarketId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

impl UserId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The side of an order: a buy gives quote for base, a sell gives base for quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}

/// Why a string was refused as an asset symbol or a client order id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { len: usize, max: usize },
    BadCharacter { character: char, allowed: &'static str },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("must not be empty"),
            NameError::TooLong { len, max } => {
                write!(f, "is {len} characters long; at most {max} are allowed")
            }
            NameError::BadCharacter { character, allowed } => {
                write!(f, "contains {character:?}; only {allowed} are allowed")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Fixed-capacity ASCII names, so that commands and orders stay `Copy` and
/// placing an order never allocates.
macro_rules! ascii_name {
    ($(#[$doc:meta])* $name:ident, $cap:expr, $allowed_doc:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name {
            len: u8,
            bytes: [u8; $cap],
        }

        impl $name {
            /// The longest name accepted, in bytes.
            pub const LEN_MAX: usize = $cap;

            /// Checks `text` and stores it.
            pub fn new(text: &str) -> Result<Self, NameError> {
                if text.is_empty() {
                    return Err(NameError::Empty);
                }
                if text.len() > $cap {
                    return Err(NameError::TooLong { len: text.chars().count(), max: $cap });
                }
                if let Some(character) = text.chars().find(|&c| !($allowed)(c)) {
                    return Err(NameError::BadCharacter { character, allowed: $allowed_doc });
                }
                let mut bytes = [0u8; $cap];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Ok(Self { len: text.len() as u8, bytes })
            }

            pub fn as_str(&self) -> &str {
                // Only ASCII is ever stored (checked in `new`), so this cannot fail;
                // the fallback keeps the function total.
                core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
            }

            pub(crate) fn as_bytes(&self) -> &[u8] {
                &self.bytes[..self.len as usize]
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct NameVisitor;
                impl de::Visitor<'_> for NameVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a string of 1 to {} of {}", $cap, $allowed_doc)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(|e| E::custom(format_args!("{} {}", stringify!($name), e)))
                    }
                }
                deserializer.deserialize_str(NameVisitor)
            }
        }
    };
}

ascii_name!(
    /// An asset's ticker symbol such as `BTC`: 1 to 12 of `A-Z` and `0-9`.
    Symbol,
    12,
    "upper-case letters A-Z and digits 0-9",
    |c: char| c.is_ascii_uppercase() || c.is_ascii_digit()
);

ascii_name!(
    /// A user's own name for an order: 1 to 36 of `A-Z a-z 0-9 . _ : / -`
    /// (the alphabet market makers' client libraries already use).
    ClientOrderId,
    36,
    "letters, digits and . _ : / -",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
);

ascii_name!(
    /// The public half of an API key: 16 to 64 letters and digits, sent in
    /// a request header to say which key signed the request.
    ApiKey,
    64,
    "letters and digits",
    |c: char| c.is_ascii_alphanumeric()
);

ascii_name!(
    /// The text of an API secret; see [`ApiSecret`].
    SecretText,
    64,
    "letters and digits",
    |c: char| c.is_ascii_alphanumeric()
);

/// The private half of an API key, shared by the user and the exchange and
/// used to sign requests (HMAC-SHA256). It is journaled (the journal is the
/// state) but never printed: `Debug` shows `ApiSecret(***)`.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiSecret(SecretText);

impl ApiSecret {
    /// The longest secret accepted, in bytes.
    pub const LEN_MAX: usize = SecretText::LEN_MAX;

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn new(text: &str) -> Result<ApiSecret, NameError> {
        SecretText::new(text).map(ApiSecret)
    }

    /// The secret itself, for signing and verifying; never log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiSecret(***)")
    }
}

/// The shortest API key or secret accepted, in characters.
pub const API_KEY_LEN_MIN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_checked() {
        assert_eq!(Symbol::new("BTC").map(|s| s.to_string()), Ok("BTC".into()));
        assert_eq!(Symbol::new(""), Err(NameError::Empty));
        assert!(matches!(Symbol::new("btc"), Err(NameError::BadCharacter { character: 'b', .. })));
        assert!(matches!(Symbol::new("ABCDEFGHIJKLM"), Err(NameError::TooLong { len: 13, max: 12 })));
        assert!(matches!(Symbol::new("BTC€"), Err(NameError::BadCharacter { character: '€', .. })));
    }

    #[test]
    fn secrets_never_print() {
        let secret = ApiSecret::new("s3cretS3cretS3cretS3cret").unwrap();
        assert_eq!(format!("{secret:?}"), "ApiSecret(***)");
        assert_eq!(secret.expose(), "s3cretS3cretS3cretS3cret");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"s3cretS3cretS3cretS3cret\"");
    }

    #[test]
    fn client_order_ids_round_trip_through_json() {
        let id = ClientOrderId::new("mm-1:a/b_c.d").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"mm-1:a/b_c.d\"");
        assert_eq!(serde_json::from_str::<ClientOrderId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ClientOrderId>("\"has space\"").is_err());
        assert!(serde_json::from_str::<ClientOrderId>(&format!("\"{}\"", "x".repeat(37))).is_err());
    }
}
