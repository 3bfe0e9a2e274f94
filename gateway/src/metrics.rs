//! What `GET /metrics` reports, as the pipeline's stages and the edges
//! record it: a latency histogram per stage (HdrHistogram, in ns, from
//! 1 ns to an hour at 3 significant digits) and counters.
//!
//! Recording must never slow a stage down. The matcher and the pipeline's
//! consumers record into a [`LocalHistograms`] of their own, without a
//! lock, and fold it into the shared histograms at most every
//! [`FOLD_EVERY`]; the request handlers, far slower, record into the shared
//! ones directly. Histograms are cumulative over the process's life, as a
//! Prometheus histogram's buckets are.
//!
//! This module only holds measurements; `exposition` writes them out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine_core::{Event, EventKind, RejectReason};
use hdrhistogram::Histogram;

/// The longest latency a histogram keeps exactly; longer ones are
/// recorded as this (saturated), never lost.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept of every recorded value.
const SIGNIFICANT_DIGITS: u8 = 3;
/// How often a stage's own histograms are folded into the shared ones.
pub const FOLD_EVERY: Duration = Duration::from_millis(250);

/// A step of an order's way through the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From a handler publishing a command to the matcher taking it.
    RingWait,
    /// The matcher appending a command to the journal (memory-mapped).
    JournalAppend,
    /// The engine applying a command (matching included).
    Match,
    /// The matcher publishing a batch's events to the outbound ring
    /// (waiting for room included).
    Publish,
    /// The durability stage's sync of a batch (`fdatasync` under `batch`).
    Sync,
    /// The views stage applying a batch and answering its requests.
    Views,
    /// A handler waiting for its command's outcome: ring, matcher,
    /// durability and views stages together.
    Reply,
    /// Writing a burst of frames to one WebSocket connection.
    WsSend,
    /// The matcher stopped to copy the engine for a snapshot.
    SnapshotStall,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::RingWait,
        Stage::JournalAppend,
        Stage::Match,
        Stage::Publish,
        Stage::Sync,
        Stage::Views,
        Stage::Reply,
        Stage::WsSend,
        Stage::SnapshotStall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::RingWait => "ring_wait",
            Stage::JournalAppend => "journal_append",
            Stage::Match => "match",
            Stage::Publish => "publish",
            Stage::Sync => "sync",
            Stage::Views => "views",
            Stage::Reply => "reply",
            Stage::WsSend => "ws_send",
            Stage::SnapshotStall => "snapshot_stall",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which REST API answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    Native,
    Binance,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::Binance => "binance",
        }
    }
}

/// Every measurement of the running exchange.
#[derive(Debug)]
pub struct Metrics {
    stages: [Mutex<Histogram<u64>>; Stage::ALL.len()],
    requests: [Mutex<Histogram<u64>>; 2],
    /// Answers per API and HTTP status.
    responses: Mutex<BTreeMap<(Api, u16), u64>>,
    /// Commands the engine refused, per reason.
    rejects: Mutex<BTreeMap<&'static str, u64>>,
    pub orders_accepted: AtomicU64,
    pub trades: AtomicU64,
    /// Commands published into the inbound ring, and taken by the matcher.
    pub inbound_published: AtomicU64,
    pub inbound_taken: AtomicU64,
    /// Events published into the outbound ring, and taken by the views stage.
    pub outbound_published: AtomicU64,
    pub outbound_taken: AtomicU64,
    /// Commands refused at once because the inbound ring was full.
    pub ring_full: AtomicU64,
    /// WebSocket connections closed as slow consumers.
    pub ws_slow_consumers: AtomicU64,
    /// Times the stream hub fell behind the pipeline and cut every subscriber.
    pub ws_hub_overflows: AtomicU64,
    /// WebSocket connections opened since the start.
    pub ws_opened: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            stages: std::array::from_fn(|_| Mutex::new(new_histogram())),
            requests: std::array::from_fn(|_| Mutex::new(new_histogram())),
            responses: Mutex::default(),
            rejects: Mutex::default(),
            orders_accepted: AtomicU64::new(0),
            trades: AtomicU64::new(0),
            inbound_published: AtomicU64::new(0),
            inbound_taken: AtomicU64::new(0),
            outbound_published: AtomicU64::new(0),
            outbound_taken: AtomicU64::new(0),
            ring_full: AtomicU64::new(0),
            ws_slow_consumers: AtomicU64::new(0),
            ws_hub_overflows: AtomicU64::new(0),
            ws_opened: AtomicU64::new(0),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// Nanoseconds of a duration, saturated to what a histogram keeps.
pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_NS)
}

impl Metrics {
    /// Records one latency of `stage` into the shared histogram (for
    /// callers that are not on a hot path).
    pub fn record(&self, stage: Stage, duration: Duration) {
        if let Ok(mut histogram) = self.stages[stage.index()].lock() {
            histogram.saturating_record(duration_ns(duration));
        }
    }

    /// Records one answered REST request.
    pub fn request(&self, api: Api, status: u16, duration: Duration) {
        if let Ok(mut histogram) = self.requests[api as usize].lock() {
            histogram.saturating_record(duration_ns(duration));
        }
        if let Ok(mut responses) = self.responses.lock() {
            *responses.entry((api, status)).or_insert(0) += 1;
        }
    }

    /// Counts what a released batch of events holds: accepted orders,
    /// trades and the engine's rejections.
    pub fn count_events(&self, events: &[Event]) {
        let (mut accepted, mut trades) = (0, 0);
        for event in events {
            match event.kind {
                EventKind::OrderAccepted { .. } => accepted += 1,
                EventKind::Trade { .. } => trades += 1,
                EventKind::Rejected { reason, .. } => {
                    if let Ok(mut rejects) = self.rejects.lock() {
                        *rejects.entry(reject_name(reason)).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
        }
        self.orders_accepted.fetch_add(accepted, Ordering::Relaxed);
        self.trades.fetch_add(trades, Ordering::Relaxed);
    }

    /// A copy of `stage`'s histogram.
    pub fn stage(&self, stage: Stage) -> Histogram<u64> {
        self.stages[stage.index()].lock().map(|h| h.clone()).unwrap_or_else(|_| new_histogram())
    }

    /// A copy of the request histogram of `api`.
    pub fn requests(&self, api: Api) -> Histogram<u64> {
        self.requests[api as usize].lock().map(|h| h.clone()).unwrap_or_else(|_| new_histogram())
    }

    pub fn responses(&self) -> BTreeMap<(Api, u16), u64> {
        self.responses.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn rejects(&self) -> BTreeMap<&'static str, u64> {
        self.rejects.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A stage's own histograms, recorded without a lock and folded into the
/// shared [`Metrics`] at most every [`FOLD_EVERY`].
pub struct LocalHistograms {
    histograms: [Option<Histogram<u64>>; Stage::ALL.len()],
    folded_at: Instant,
}

impl LocalHistograms {
    /// Histograms for `stages` (recording any other stage is ignored).
    pub fn new(stages: &[Stage]) -> LocalHistograms {
        let mut histograms: [Option<Histogram<u64>>; Stage::ALL.len()] = Default::default();
        for stage in stages {
            histograms[stage.index()] = Some(new_histogram());
        }
        LocalHistograms { histograms, folded_at: Instant::now() }
    }

    #[inline]
    pub fn record_ns(&mut self, stage: Stage, ns: u64) {
        if let Some(histogram) = &mut self.histograms[stage.index()] {
            histogram.saturating_record(ns.clamp(1, LATENCY_MAX_NS));
        }
    }

    #[inline]
    pub fn record(&mut self, stage: Stage, duration: Duration) {
        self.record_ns(stage, duration_ns(duration));
    }

    /// Folds into `metrics` if [`FOLD_EVERY`] has passed since the last
    /// time (`now` is the caller's clock reading, to save one).
    pub fn fold_if_due(&mut self, metrics: &Metrics, now: Instant) {
        if now.duration_since(self.folded_at) >= FOLD_EVERY {
            self.fold(metrics);
            self.folded_at = now;
        }
    }

    pub fn fold(&mut self, metrics: &Metrics) {
        for (index, histogram) in self.histograms.iter_mut().enumerate() {
            let Some(histogram) = histogram.as_mut().filter(|h| !h.is_empty()) else { continue };
            if let Ok(mut shared) = metrics.stages[index].lock() {
                // Same bounds on both sides: adding cannot fail.
                let _ = shared.add(&*histogram);
            }
            histogram.reset();
        }
    }
}

/// A stable, snake_case name for each reason the engine refuses a command.
pub fn reject_name(reason: RejectReason) -> &'static str {
    use RejectReason::*;
    match reason {
        UnknownUser(_) => "unknown_user",
        UnknownAsset(_) => "unknown_asset",
        UnknownMarket(_) => "unknown_market",
        UnknownOrder => "unknown_order",
        MarketNotOpen { .. } => "market_not_open",
        MarketHalted { .. } => "market_halted",
        DuplicateAssetSymbol(_) => "duplicate_asset_symbol",
        AssetDecimalsTooLarge { .. } => "asset_decimals_too_large",
        MarketAssetsEqual => "market_assets_equal",
        DuplicateMarket { .. } => "duplicate_market",
        ZeroLotSize => "zero_lot_size",
        ZeroTickSize => "zero_tick_size",
        FeeRateTooHigh { .. } => "fee_rate_too_high",
        ZeroAmount => "zero_amount",
        ZeroQuantity => "zero_quantity",
        ZeroPrice => "zero_price",
        QuantityBelowMinimum { .. } => "quantity_below_minimum",
        NotionalBelowMinimum { .. } => "notional_below_minimum",
        Overflow => "overflow",
        SupplyOverflow { .. } => "supply_overflow",
        InsufficientFunds { .. } => "insufficient_funds",
        DuplicateClientOrderId(_) => "duplicate_client_order_id",
        OpenOrderLimit { .. } => "open_order_limit",
        EngineOrderCapacity { .. } => "engine_order_capacity",
        EngineCapacity { .. } => "engine_capacity",
        PostOnlyWouldTake => "post_only_would_take",
        AmendNoChange => "amend_no_change",
        DuplicateApiKey => "duplicate_api_key",
        UnknownApiKey => "unknown_api_key",
        ApiKeyTooShort { .. } => "api_key_too_short",
        ApiKeyLimit { .. } => "api_key_limit",
        WouldTriggerImmediately { .. } => "would_trigger_immediately",
        TriggerUnset => "trigger_unset",
        TrailingDeltaOutOfRange { .. } => "trailing_delta_out_of_range",
        NoReferencePrice => "no_reference_price",
        TimeInForceNotAllowed => "time_in_force_not_allowed",
        IcebergVisibleInvalid { .. } => "iceberg_visible_invalid",
        IcebergTooManyParts { .. } => "iceberg_too_many_parts",
        OrderListInvalid(_) => "order_list_invalid",
        DuplicateListClientId(_) => "duplicate_list_client_id",
        UnknownOrderList => "unknown_order_list",
        AmendNotAllowed => "amend_not_allowed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_histograms_reach_the_shared_ones_when_folded() {
        let metrics = Metrics::default();
        let mut local = LocalHistograms::new(&[Stage::Match]);
        local.record_ns(Stage::Match, 500);
        local.record_ns(Stage::Match, 0); // kept as 1 ns, not lost
        local.record_ns(Stage::Sync, 7); // not one of its stages: ignored
        assert_eq!(metrics.stage(Stage::Match).len(), 0, "nothing shared before folding");
        local.fold_if_due(&metrics, local.folded_at);
        assert_eq!(metrics.stage(Stage::Match).len(), 0, "not due yet");
        local.fold_if_due(&metrics, local.folded_at + FOLD_EVERY);
        let shared = metrics.stage(Stage::Match);
        assert_eq!((shared.len(), shared.min()), (2, 1));
        assert_eq!(metrics.stage(Stage::Sync).len(), 0);
        local.fold(&metrics);
        assert_eq!(metrics.stage(Stage::Match).len(), 2, "folding twice adds nothing twice");
    }

    #[test]
    fn an_hour_long_latency_saturates_instead_of_vanishing() {
        let metrics = Metrics::default();
        metrics.record(Stage::Reply, Duration::from_secs(10 * 3600));
        let histogram = metrics.stage(Stage::Reply);
        assert_eq!(histogram.len(), 1);
        assert!(histogram.max() >= LATENCY_MAX_NS - LATENCY_MAX_NS / 1000);
    }
}
