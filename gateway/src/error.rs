//! API errors: an HTTP status, a stable machine-readable code and a message
//! a person can act on. The body is `{"error": {"code": ..., "message": ...}}`.

use engine_core::RejectReason;
use hyper::StatusCode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429: when to try again.
    pub retry_after_s: Option<u64>,
    /// For a cluster node that is not the leader: the leader's API address
    /// (`HOST:PORT`), sent as `X-Leader`, when this node knows it.
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after_s: None, leader: None }
    }

    /// A field that does not hold what it must (400).
    pub fn invalid(field: &'static str, why: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", format!("{field}: {why}"))
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn busy() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the matching engine's queue is full; retry shortly",
        )
    }

    /// Order entry on a cluster node that is not the leader (421): the
    /// command was not applied; send it to the leader.
    pub fn not_leader(leader: Option<String>) -> ApiError {
        let message = match &leader {
            Some(address) => format!(
                "this node is not the cluster's leader and did not apply the command; send it to the leader \
                 at {address} (also in the X-Leader header)"
            ),
            None => {
                "this node is not the cluster's leader and did not apply the command; no leader is known \
                     right now (an election is under way): retry shortly"
                    .to_string()
            }
        };
        ApiError { leader, ..ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", message) }
    }

    /// Order entry on a leader that cannot take orders right now (421, as
    /// a node that is not the leader: the command was not applied, and a
    /// client retries it as it would there).
    pub fn leader_unconfirmed(why: &str) -> ApiError {
        let message =
            format!("the command was not applied: {why}; retry shortly (at another node if this persists)");
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", message)
    }

    pub fn too_many_requests(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this API key; retry after {retry_after_s} s"),
            )
        }
    }

    /// The engine refused the command: 409 for conflicts, 404 for unknown
    /// things, 422 for everything else it rejected.
    pub fn rejected(reason: RejectReason, message: String) -> ApiError {
        use RejectReason::*;
        let (status, code) = match reason {
            DuplicateClientOrderId(_) => (StatusCode::CONFLICT, "duplicate_client_order_id"),
            DuplicateAssetSymbol(_) => (StatusCode::CONFLICT, "duplicate_asset"),
            DuplicateMarket { .. } => (StatusCode::CONFLICT, "duplicate_market"),
            DuplicateApiKey => (StatusCode::CONFLICT, "duplicate_api_key"),
            UnknownOrder => (StatusCode::NOT_FOUND, "unknown_order"),
            UnknownUser(_) => (StatusCode::NOT_FOUND, "unknown_user"),
            UnknownAsset(_) => (StatusCode::NOT_FOUND, "unknown_asset"),
            UnknownMarket(_) => (StatusCode::NOT_FOUND, "unknown_market"),
            UnknownApiKey => (StatusCode::NOT_FOUND, "unknown_api_key"),
            InsufficientFunds { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
            MarketNotOpen { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "market_not_open"),
            MarketHalted { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "market_halted"),
            PostOnlyWouldTake => (StatusCode::UNPROCESSABLE_ENTITY, "post_only_would_take"),
            QuantityBelowMinimum { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "quantity_below_minimum"),
            NotionalBelowMinimum { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "notional_below_minimum"),
            OpenOrderLimit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "open_order_limit"),
            EngineOrderCapacity { .. } | EngineCapacity { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "engine_capacity")
            }
            Overflow | SupplyOverflow { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too_large"),
            DuplicateListClientId(_) => (StatusCode::CONFLICT, "duplicate_list_client_id"),
            UnknownOrderList => (StatusCode::NOT_FOUND, "unknown_order_list"),
            WouldTriggerImmediately { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "would_trigger_immediately"),
            NoReferencePrice => (StatusCode::UNPROCESSABLE_ENTITY, "no_reference_price"),
            IcebergVisibleInvalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "iceberg_visible_invalid"),
            IcebergTooManyParts { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "iceberg_too_many_parts"),
            TimeInForceNotAllowed => (StatusCode::UNPROCESSABLE_ENTITY, "time_in_force_not_allowed"),
            OrderListInvalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_order_list"),
            AmendNotAllowed => (StatusCode::UNPROCESSABLE_ENTITY, "amend_not_allowed"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
        };
        ApiError::new(status, code, message)
    }

    pub fn body(&self) -> String {
        match &self.leader {
            Some(leader) => serde_json::json!({
                "error": { "code": self.code, "message": self.message, "leader": leader }
            })
            .to_string(),
            None => {
                serde_json::json!({ "error": { "code": self.code, "message": self.message } }).to_string()
            }
        }
    }
}
