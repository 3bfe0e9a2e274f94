//! What every request handler shares, native or Binance, REST or
//! WebSocket: built once by the server, read by the handlers.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use hyper::StatusCode;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::pipeline::{Health, Pending};
use crate::subscribers::Subscribers;
use crate::views::Views;

/// What every request handler shares.
pub struct AppState {
    pub views: Arc<RwLock<Views>>,
    pub auth: Authenticator,
    pub pending: Arc<Pending>,
    pub health: Arc<Health>,
    pub admin_token: Option<String>,
    pub body_max_bytes: usize,
    pub request_timeout: Duration,
    /// The database writer's progress and the history it serves, when
    /// PostgreSQL is configured.
    pub database: Option<(Arc<persistence::WriterStatus>, Arc<persistence::History>)>,
    /// The Binance-compatible API's request weights, client order ids and
    /// listen keys.
    pub binance: crate::binance::state::State,
    /// Who listens to which WebSocket streams.
    pub subscribers: Arc<Subscribers>,
    /// Messages queued for one WebSocket connection (`ws_queue_max`), and
    /// how long one frame may take to be written (`ws_send_timeout_ms`),
    /// for connections upgraded on the REST port.
    pub ws_queue_max: usize,
    pub ws_send_timeout: Duration,
    /// This node's cluster, in cluster mode: order entry goes through its
    /// replicated log instead of straight into the ring.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    /// The read views; an internal error if a thread panicked while
    /// writing them.
    pub fn views(&self) -> Result<RwLockReadGuard<'_, Views>, ApiError> {
        self.views
            .read()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "views unavailable"))
    }
}
