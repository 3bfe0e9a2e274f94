//! Binance's error answers: `{"code": -2010, "msg": "..."}` with its codes,
//! messages and HTTP statuses, translated from the exchange's own errors
//! so that clients written for Binance react to each failure as they would
//! there (retry on -1008, resync the clock on -1021, fix the order on -1013).

use engine_core::RejectReason;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinanceError {
    pub status: StatusCode,
    pub code: i32,
    pub msg: String,
    /// For 429: when to try again.
    pub retry_after_s: Option<u64>,
    /// Details some errors carry (cancelReplace's outcome of each step).
    pub data: Option<Value>,
    /// A cluster node that is not the leader: the leader's API address,
    /// sent as `X-Leader`.
    pub leader: Option<String>,
}

/// The most characters of an unread parameter's name that -1104 repeats.
const UNREAD_NAME_CHARS_MAX: usize = 64;

/// Binance's own wording for the parameter characters it accepts in decimals.
const DECIMAL_RANGE: &str = "^([0-9]{1,20})(\\.[0-9]{1,20})?$";

impl BinanceError {
    pub fn new(status: StatusCode, code: i32, msg: impl Into<String>) -> BinanceError {
        BinanceError { status, code, msg: msg.into(), retry_after_s: None, data: None, leader: None }
    }

    pub fn bad_request(code: i32, msg: impl Into<String>) -> BinanceError {
        BinanceError::new(StatusCode::BAD_REQUEST, code, msg)
    }

    pub fn body(&self) -> Value {
        let mut body = json!({ "code": self.code, "msg": self.msg });
        if let (Some(data), Some(object)) = (&self.data, body.as_object_mut()) {
            object.insert("data".into(), data.clone());
        }
        body
    }

    pub fn mandatory(name: &str) -> BinanceError {
        BinanceError::bad_request(
            -1102,
            format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
        )
    }

    pub fn one_of(a: &str, b: &str) -> BinanceError {
        BinanceError::bad_request(
            -1102,
            format!("Param '{a}' or '{b}' must be sent, but both were empty/null!"),
        )
    }

    pub fn not_required(name: &str) -> BinanceError {
        BinanceError::bad_request(-1106, format!("Parameter '{name}' sent when not required."))
    }

    pub fn empty(name: &str) -> BinanceError {
        BinanceError::bad_request(-1105, format!("Parameter '{name}' was empty."))
    }

    pub fn duplicate_parameter(name: &str) -> BinanceError {
        BinanceError::bad_request(-1101, format!("Duplicate values for a parameter detected: '{name}'."))
    }

    /// Binance's -1104 sentence, then the names of the parameters the
    /// endpoint does not read, so that the client knows which to remove.
    pub fn unread(read: usize, sent: usize, unread: &[&str]) -> BinanceError {
        // A hostile name is echoed only in part.
        let names: Vec<String> = unread
            .iter()
            .map(|name| match name.char_indices().nth(UNREAD_NAME_CHARS_MAX) {
                Some((cut, _)) => format!("'{}...'", &name[..cut]),
                None => format!("'{name}'"),
            })
            .collect();
        BinanceError::bad_request(
            -1104,
            format!(
                "Not all sent parameters were read; read '{read}' parameter(s) but was sent '{sent}'. \
                 Not read: {}.",
                names.join(", ")
            ),
        )
    }

    pub fn illegal_decimal(name: &str) -> BinanceError {
        BinanceError::bad_request(
            -1100,
            format!("Illegal characters found in parameter '{name}'; legal range is '{DECIMAL_RANGE}'."),
        )
    }

    pub fn illegal_characters(name: &str, range: &str) -> BinanceError {
        BinanceError::bad_request(
            -1100,
            format!("Illegal characters found in parameter '{name}'; legal range is '{range}'."),
        )
    }

    pub fn too_much_precision(name: &str) -> BinanceError {
        BinanceError::bad_request(-1111, format!("Parameter '{name}' has too much precision."))
    }

    pub fn invalid_value(name: &str, why: impl std::fmt::Display) -> BinanceError {
        BinanceError::bad_request(-1130, format!("Invalid data sent for a parameter: '{name}': {why}."))
    }

    pub fn bad_symbol() -> BinanceError {
        BinanceError::bad_request(-1121, "Invalid symbol.")
    }

    pub fn invalid_side() -> BinanceError {
        BinanceError::bad_request(-1117, "Invalid side.")
    }

    pub fn invalid_order_type() -> BinanceError {
        BinanceError::bad_request(-1116, "Invalid orderType.")
    }

    pub fn invalid_tif() -> BinanceError {
        BinanceError::bad_request(-1115, "Invalid timeInForce.")
    }

    pub fn unsupported_combination() -> BinanceError {
        BinanceError::bad_request(-1014, "Unsupported order combination.")
    }

    pub fn filter(name: &str) -> BinanceError {
        BinanceError::bad_request(-1013, format!("Filter failure: {name}"))
    }

    /// A cancel of an order that is not open (or not yours).
    pub fn cancel_unknown() -> BinanceError {
        BinanceError::bad_request(-2011, "Unknown order sent.")
    }

    /// A query for an order that does not exist (or not yours).
    pub fn no_such_order() -> BinanceError {
        BinanceError::bad_request(-2013, "Order does not exist.")
    }

    pub fn new_order_rejected(msg: impl Into<String>) -> BinanceError {
        BinanceError::bad_request(-2010, msg)
    }

    pub fn amend_rejected(msg: impl Into<String>) -> BinanceError {
        BinanceError::bad_request(-2038, msg)
    }

    pub fn unsupported(msg: impl Into<String>) -> BinanceError {
        BinanceError::bad_request(-1020, msg)
    }

    pub fn internal(msg: impl Into<String>) -> BinanceError {
        BinanceError::new(StatusCode::INTERNAL_SERVER_ERROR, -1000, msg)
    }

    pub fn too_much_weight(limit: u64, retry_after_s: u64) -> BinanceError {
        BinanceError {
            retry_after_s: Some(retry_after_s),
            ..BinanceError::new(
                StatusCode::TOO_MANY_REQUESTS,
                -1003,
                format!(
                    "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. \
                     Please use WebSocket Streams for live updates to avoid polling the API."
                ),
            )
        }
    }

    /// The engine refused an order (or a cancel, amend, ...): Binance's
    /// code for the action and its message for the reason. `detail` is the
    /// exchange's own description, kept where Binance's message is generic.
    pub fn rejected(reason: RejectReason, detail: String, action: Action) -> BinanceError {
        use RejectReason::*;
        match reason {
            UnknownOrder => match action {
                Action::Cancel => BinanceError::cancel_unknown(),
                Action::Amend => BinanceError::bad_request(-2011, "Unknown order sent."),
                Action::Place | Action::Other => BinanceError::no_such_order(),
            },
            QuantityBelowMinimum { .. } => BinanceError::filter("LOT_SIZE"),
            NotionalBelowMinimum { .. } => BinanceError::filter("NOTIONAL"),
            OpenOrderLimit { .. } => BinanceError::filter("MAX_NUM_ORDERS"),
            TrailingDeltaOutOfRange { .. } => BinanceError::filter("TRAILING_DELTA"),
            IcebergTooManyParts { .. } => BinanceError::filter("ICEBERG_PARTS"),
            UnknownOrderList => match action {
                Action::Cancel => BinanceError::bad_request(-2011, "Unknown order list sent."),
                _ => BinanceError::bad_request(-2013, "Order list does not exist."),
            },
            UnknownMarket(_) => BinanceError::bad_symbol(),
            _ => {
                let msg = match reason {
                    InsufficientFunds { .. } => {
                        "Account has insufficient balance for requested action.".to_string()
                    }
                    DuplicateClientOrderId(_) => "Duplicate order sent.".to_string(),
                    PostOnlyWouldTake => "Order would immediately match and take.".to_string(),
                    WouldTriggerImmediately { .. } => "Order would trigger immediately.".to_string(),
                    DuplicateListClientId(_) => "Duplicate order list sent.".to_string(),
                    MarketNotOpen { .. } | MarketHalted { .. } => "Market is closed.".to_string(),
                    _ => detail,
                };
                match action {
                    Action::Cancel => BinanceError::bad_request(-2011, msg),
                    Action::Amend => BinanceError::amend_rejected(msg),
                    Action::Place | Action::Other => BinanceError::new_order_rejected(msg),
                }
            }
        }
    }
}

/// What a request was doing when the engine refused it: Binance answers
/// the same refusal with a different code for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Place,
    Cancel,
    Amend,
    Other,
}

impl BinanceError {
    /// An authentication failure of a request doing `action`. A signed
    /// request received twice is refused (a replay); Binance has no such
    /// check, so the refusal takes the form Binance gives a duplicate of
    /// the action: "Duplicate order sent." for a new order, "Unknown order
    /// sent." for a second cancel. Clients then treat a retry that raced
    /// its original as the duplicate it is, not as bad credentials.
    pub fn from_auth(error: ApiError, action: Action) -> BinanceError {
        if error.code != "replayed_signature" {
            return BinanceError::from(error);
        }
        match action {
            Action::Place => BinanceError::new_order_rejected("Duplicate order sent."),
            Action::Cancel => BinanceError::cancel_unknown(),
            Action::Amend => BinanceError::amend_rejected("Duplicate amend sent."),
            Action::Other => BinanceError::from(error),
        }
    }
}

impl From<ApiError> for BinanceError {
    /// The exchange's own errors (authentication, overload, journal) in
    /// Binance's codes.
    fn from(error: ApiError) -> BinanceError {
        let status = error.status;
        let same = |code: i32, msg: &str| BinanceError::new(status, code, msg);
        let mut out = match error.code {
            "missing_api_key" => BinanceError::new(StatusCode::UNAUTHORIZED, -2014, "API-key format invalid."),
            "invalid_api_key" => BinanceError::new(
                StatusCode::UNAUTHORIZED,
                -2015,
                "Invalid API-key, IP, or permissions for action.",
            ),
            "missing_signature" => BinanceError::mandatory("signature"),
            "invalid_signature" => BinanceError::bad_request(-1022, "Signature for this request is not valid."),
            "replayed_signature" => BinanceError::bad_request(
                -1022,
                "Signature for this request is not valid: this signed request was already received.",
            ),
            "signed_before_restart" => BinanceError::bad_request(
                -1021,
                "Timestamp for this request is outside of the recvWindow: it was signed before the server \
                 restarted or caught up from a snapshot image.",
            ),
            "timestamp_outside_recv_window" => {
                BinanceError::bad_request(-1021, "Timestamp for this request is outside of the recvWindow.")
            }
            "timestamp_ahead" => {
                BinanceError::bad_request(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
            }
            "missing_timestamp" | "invalid_timestamp" => BinanceError::mandatory("timestamp"),
            "invalid_recv_window" => BinanceError::bad_request(-1131, error.message.as_str()),
            "rate_limited" => BinanceError::new(
                StatusCode::TOO_MANY_REQUESTS,
                -1003,
                format!("Too many requests; {}", error.message),
            ),
            "busy" => same(-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
            "timeout" => same(
                -1007,
                "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
            ),
            "shutting_down" => same(-1016, "This service is no longer available."),
            // Binance answers 503 when a request may be retried elsewhere
            // or later; clients written for it retry on it.
            "not_leader" => BinanceError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                -1001,
                format!("Internal error; unable to process your request. Please try again. {}", error.message),
            ),
            "journal_unavailable" => same(-1001, &format!("Internal error; unable to process your request. {}", error.message)),
            "body_too_large" => same(-1000, &error.message),
            "unknown_market" => BinanceError::bad_symbol(),
            "internal" => BinanceError::internal(format!("An unknown error occurred while processing the request: {}", error.message)),
            _ if status.is_server_error() => same(-1000, &error.message),
            _ => BinanceError::bad_request(-1130, format!("Invalid data sent for a parameter: {}", error.message)),
        };
        out.retry_after_s = error.retry_after_s;
        out.leader = error.leader;
        out
    }
}
