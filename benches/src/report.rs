//! The latency report every benchmark prints: HdrHistogram percentiles
//! p50, p99, p99.9, p99.99 and the maximum, plus throughput.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A histogram of latencies in nanoseconds, 1 ns to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("the bounds are constants and valid")
}

/// One line of percentiles, e.g. `p50 142 ns  p99 611 ns  ...`.
pub fn percentiles(histogram: &Histogram<u64>) -> String {
    let q = |quantile: f64| format_ns(histogram.value_at_quantile(quantile));
    format!(
        "p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (n={})",
        q(0.50),
        q(0.99),
        q(0.999),
        q(0.9999),
        format_ns(histogram.max()),
        histogram.len()
    )
}

pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

/// Events (or commands) per second over `elapsed`.
pub fn rate_per_s(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// A rate as `12.35M` or `812.4k`; the caller says what per second.
pub fn format_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// The median of a non-empty list (the lower middle for even lengths).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// The median cost of reading the monotonic clock twice, which is inside
/// every latency a benchmark records.
pub fn clock_overhead_ns_p50() -> u64 {
    let mut histogram = latency_histogram();
    for _ in 0..100_000 {
        let started = Instant::now();
        histogram.saturating_record((started.elapsed().as_nanos() as u64).max(1));
    }
    histogram.value_at_quantile(0.5)
}

/// The CPU model and the cores this process may run on, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores available")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_read_back_what_was_recorded() {
        let mut h = latency_histogram();
        for ns in 1..=10_000u64 {
            h.record(ns).unwrap();
        }
        // Three significant digits: within 0.1% of the truth.
        assert!((4_995..=5_005).contains(&h.value_at_quantile(0.5)));
        assert!((9_890..=9_910).contains(&h.value_at_quantile(0.99)));
        let line = percentiles(&h);
        assert!(line.starts_with("p50 50") && line.contains("p99.99 "), "{line}");
        assert!(line.contains("max 10.0 us"), "{line}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(format_rate(12_345_678.0), "12.35M");
    }
}
