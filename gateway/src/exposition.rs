//! `GET /metrics`: the exchange's measurements in the Prometheus text
//! exposition format (version 0.0.4), read from [`Metrics`], the health
//! counters and the database writer's status.
//!
//! Latencies are written twice from the same HdrHistogram data: as a
//! Prometheus histogram (`*_duration_seconds`, cumulative buckets, for
//! `histogram_quantile` over a `rate` window) and as a summary
//! (`*_latency_seconds`, exact percentiles since the start). No label
//! value comes from a client, so none needs escaping.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;

use crate::metrics::{Api, Stage};
use crate::state::AppState;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of the latency histograms, in seconds: from 100 ns (the
/// matcher's stages) to 10 s (a stalled disk).
const BUCKETS_S: [f64; 25] = [
    0.000_000_1,
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

/// Percentiles of the summaries.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// The whole page.
pub fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let health = &state.health;
    let metrics = &health.metrics;

    family(
        &mut out,
        "exchange_sequence",
        "gauge",
        "Sequence numbers: the matcher's last command, the last durable one, the newest snapshot's.",
    );
    for (kind, value) in [
        ("matched", health.last_seq.load(Relaxed)),
        ("durable", health.durable_seq.load(Relaxed)),
        ("snapshot", health.snapshot_seq.load(Relaxed)),
    ] {
        sample(&mut out, "exchange_sequence", &[("kind", kind)], value as f64);
    }
    family(
        &mut out,
        "exchange_journal_failed",
        "gauge",
        "1 once the journal failed: orders are refused until a restart.",
    );
    sample(
        &mut out,
        "exchange_journal_failed",
        &[],
        f64::from(u8::from(health.journal_failed.load(Relaxed))),
    );

    family(
        &mut out,
        "exchange_stage_duration_seconds",
        "histogram",
        "Latency of each stage of the pipeline.",
    );
    for stage in Stage::ALL {
        histogram(
            &mut out,
            "exchange_stage_duration_seconds",
            ("stage", stage.name()),
            &metrics.stage(stage),
        );
    }
    family(
        &mut out,
        "exchange_stage_latency_seconds",
        "summary",
        "Percentiles of each stage's latency since the start (HdrHistogram, 3 significant digits).",
    );
    for stage in Stage::ALL {
        summary(&mut out, "exchange_stage_latency_seconds", ("stage", stage.name()), &metrics.stage(stage));
    }
    family(
        &mut out,
        "exchange_http_request_duration_seconds",
        "histogram",
        "Time from a REST request read to its answer, per API.",
    );
    for api in [Api::Native, Api::Binance] {
        histogram(
            &mut out,
            "exchange_http_request_duration_seconds",
            ("api", api.name()),
            &metrics.requests(api),
        );
    }
    family(
        &mut out,
        "exchange_http_responses_total",
        "counter",
        "REST answers per API and HTTP status (429: request weight or rate limit).",
    );
    for ((api, status), count) in metrics.responses() {
        let status = status.to_string();
        sample(
            &mut out,
            "exchange_http_responses_total",
            &[("api", api.name()), ("status", &status)],
            count as f64,
        );
    }
    family(
        &mut out,
        "exchange_request_weight_total",
        "counter",
        "Request weight used on the Binance-compatible API.",
    );
    sample(&mut out, "exchange_request_weight_total", &[], state.binance.weight_used() as f64);

    family(&mut out, "exchange_orders_accepted_total", "counter", "Orders the engine accepted.");
    sample(&mut out, "exchange_orders_accepted_total", &[], metrics.orders_accepted.load(Relaxed) as f64);
    family(&mut out, "exchange_trades_total", "counter", "Trades.");
    sample(&mut out, "exchange_trades_total", &[], metrics.trades.load(Relaxed) as f64);
    family(&mut out, "exchange_rejects_total", "counter", "Commands the engine refused, per reason.");
    for (reason, count) in metrics.rejects() {
        sample(&mut out, "exchange_rejects_total", &[("reason", reason)], count as f64);
    }

    family(
        &mut out,
        "exchange_ring_occupancy",
        "gauge",
        "Entries published into a ring and not yet taken by its consumer.",
    );
    let occupancy = |published: u64, taken: u64| published.saturating_sub(taken) as f64;
    sample(
        &mut out,
        "exchange_ring_occupancy",
        &[("ring", "inbound")],
        occupancy(metrics.inbound_published.load(Relaxed), metrics.inbound_taken.load(Relaxed)),
    );
    sample(
        &mut out,
        "exchange_ring_occupancy",
        &[("ring", "outbound")],
        occupancy(metrics.outbound_published.load(Relaxed), metrics.outbound_taken.load(Relaxed)),
    );
    family(
        &mut out,
        "exchange_ring_full_total",
        "counter",
        "Commands refused at once (503) because the inbound ring was full.",
    );
    sample(&mut out, "exchange_ring_full_total", &[], metrics.ring_full.load(Relaxed) as f64);
    family(
        &mut out,
        "exchange_snapshot_stall_seconds",
        "gauge",
        "How long the matcher stopped for the last snapshot.",
    );
    sample(
        &mut out,
        "exchange_snapshot_stall_seconds",
        &[],
        health.snapshot_stall_ns.load(Relaxed) as f64 / 1e9,
    );

    family(
        &mut out,
        "exchange_hash_marks_checked_total",
        "counter",
        "Cluster mode: hash marks in the log that this node's own state hash agreed with.",
    );
    sample(
        &mut out,
        "exchange_hash_marks_checked_total",
        &[],
        health.hash_marks_checked.load(Relaxed) as f64,
    );

    if let Some(cluster) = &state.cluster {
        let packing = cluster.packing();
        for (name, kind, help, value) in [
            (
                "exchange_cluster_entries_proposed_total",
                "counter",
                "Raft entries of commands this node proposed as leader (committed or not).",
                &packing.entries,
            ),
            (
                "exchange_cluster_commands_proposed_total",
                "counter",
                "Commands in those entries: divided by the entries, the commands packed per entry.",
                &packing.commands,
            ),
            (
                "exchange_cluster_commands_per_entry_max",
                "gauge",
                "The most commands one proposed entry held since the start.",
                &packing.commands_per_entry_max,
            ),
        ] {
            family(&mut out, name, kind, help);
            sample(&mut out, name, &[], value.load(Relaxed) as f64);
        }
    }

    family(&mut out, "exchange_ws_connections", "gauge", "Open WebSocket connections.");
    sample(&mut out, "exchange_ws_connections", &[], health.ws_connections.load(Relaxed) as f64);
    family(&mut out, "exchange_ws_connections_opened_total", "counter", "WebSocket connections accepted.");
    sample(&mut out, "exchange_ws_connections_opened_total", &[], metrics.ws_opened.load(Relaxed) as f64);
    family(
        &mut out,
        "exchange_ws_slow_consumers_total",
        "counter",
        "WebSocket connections closed because their queue overflowed or a write timed out.",
    );
    sample(&mut out, "exchange_ws_slow_consumers_total", &[], metrics.ws_slow_consumers.load(Relaxed) as f64);
    family(
        &mut out,
        "exchange_ws_hub_overflows_total",
        "counter",
        "Times the stream hub fell behind the pipeline and cut every subscriber.",
    );
    sample(&mut out, "exchange_ws_hub_overflows_total", &[], metrics.ws_hub_overflows.load(Relaxed) as f64);

    if let Some((status, _)) = &state.database {
        family(
            &mut out,
            "exchange_database_connected",
            "gauge",
            "1 while the history writer's session is open and committing.",
        );
        sample(
            &mut out,
            "exchange_database_connected",
            &[],
            f64::from(u8::from(status.connected.load(Relaxed))),
        );
        family(
            &mut out,
            "exchange_database_lag_commands",
            "gauge",
            "Commands released but not yet in the history database (absent while unknown).",
        );
        if let Some(lag) = status.lag_seq() {
            sample(&mut out, "exchange_database_lag_commands", &[], lag as f64);
        }
        family(
            &mut out,
            "exchange_database_lag_seconds",
            "gauge",
            "How far behind the history database is, in the matcher's time (absent while unknown).",
        );
        if let Some(lag_ms) = status.lag_ms() {
            sample(&mut out, "exchange_database_lag_seconds", &[], lag_ms as f64 / 1e3);
        }
        for (name, help, value) in [
            (
                "exchange_database_rows_written_total",
                "Rows the history writer inserted or updated.",
                &status.rows_written,
            ),
            (
                "exchange_database_transactions_total",
                "Transactions the history writer committed.",
                &status.transactions,
            ),
            (
                "exchange_database_batches_dropped_total",
                "Batches the feed dropped because the writer was behind (regenerated from the journal).",
                &status.batches_dropped,
            ),
            (
                "exchange_database_failed_attempts_total",
                "Failed attempts to connect or write.",
                &status.failed_attempts,
            ),
        ] {
            family(&mut out, name, "counter", help);
            sample(&mut out, name, &[], value.load(Relaxed) as f64);
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{value}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Cumulative buckets from the histogram's recorded values (each counted
/// at its HdrHistogram bucket's middle value).
fn histogram(out: &mut String, name: &str, label: (&str, &str), histogram: &Histogram<u64>) {
    let mut counts = [0u64; BUCKETS_S.len()];
    for value in histogram.iter_recorded() {
        let at_s = seconds(histogram.median_equivalent(value.value_iterated_to()));
        if let Some(first) = BUCKETS_S.iter().position(|bound| at_s <= *bound) {
            counts[first] += value.count_at_value();
        }
    }
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (bound, count) in BUCKETS_S.iter().zip(counts) {
        cumulative += count;
        let le = bound.to_string();
        sample(out, &bucket, &[label, ("le", &le)], cumulative as f64);
    }
    sample(out, &bucket, &[label, ("le", "+Inf")], histogram.len() as f64);
    sample(out, &format!("{name}_sum"), &[label], histogram.mean() * histogram.len() as f64 / 1e9);
    sample(out, &format!("{name}_count"), &[label], histogram.len() as f64);
}

fn summary(out: &mut String, name: &str, label: (&str, &str), histogram: &Histogram<u64>) {
    for quantile in QUANTILES {
        let at = quantile.to_string();
        let value =
            if histogram.is_empty() { f64::NAN } else { seconds(histogram.value_at_quantile(quantile)) };
        sample(out, name, &[label, ("quantile", &at)], value);
    }
    sample(out, &format!("{name}_sum"), &[label], histogram.mean() * histogram.len() as f64 / 1e9);
    sample(out, &format!("{name}_count"), &[label], histogram.len() as f64);
}
