//! The latency report every benchmark prints: HdrHistogram percentiles
//! p50, p99, p99.9, p99.99 and the maximum, plus throughput; and the files
//! each run leaves ([`Reports`]): one `.hgrm` per histogram (the percentile
//! distribution HdrHistogram's tools read) and one SVG plot of them all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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

/// CPU time the calling thread has used, in nanoseconds (0 if the clock
/// cannot be read). On a shared machine a rate per CPU second is steadier
/// than one per wall second: time the thread waited for a core is not in it.
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
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

/// `--out DIR`: where a benchmark writes its `.hgrm` files and plot.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Directory for one `.hgrm` file per measured histogram and one SVG
    /// plot of them (default: target/bench-reports/<benchmark>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The histograms of one benchmark invocation, written by [`Reports::write`]
/// as `<name>.hgrm` each and `<benchmark>.svg` for all.
pub struct Reports {
    bench: String,
    dir: PathBuf,
    runs: Vec<(String, Histogram<u64>)>,
}

/// The unit of the `.hgrm` values and the plot: microseconds, with three
/// decimals so that nothing of the nanosecond histogram is lost.
const VALUE_UNIT_NS: f64 = 1_000.0;
const VALUE_DECIMALS: usize = 3;

/// HdrHistogram's customary resolution of the percentile iteration: five
/// steps per halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

impl Reports {
    pub fn new(bench: &str, args: &ReportArgs) -> Reports {
        let dir = args.out.clone().unwrap_or_else(|| Path::new("target").join("bench-reports").join(bench));
        Reports { bench: bench.to_string(), dir, runs: Vec::new() }
    }

    /// Keeps `histogram` as the run or configuration `name` (which becomes
    /// its file name and its line's label in the plot).
    pub fn add(&mut self, name: &str, histogram: &Histogram<u64>) {
        self.runs.push((name.to_string(), histogram.clone()));
    }

    /// Writes the files and says on stdout where; an error names the file.
    pub fn write(&self) -> Result<Vec<PathBuf>, String> {
        if self.runs.is_empty() {
            return Ok(Vec::new());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut written = Vec::new();
        for (name, histogram) in &self.runs {
            let path = self.dir.join(format!("{}.hgrm", file_name(name)));
            std::fs::write(&path, hgrm(histogram)).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path);
        }
        let path = self.dir.join(format!("{}.svg", file_name(&self.bench)));
        let runs: Vec<(&str, &Histogram<u64>)> = self.runs.iter().map(|(n, h)| (n.as_str(), h)).collect();
        let svg = plot_svg(&format!("{}: latency by percentile", self.bench), &runs)?;
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
        println!(
            "reports: {} .hgrm files and {} in {}",
            self.runs.len(),
            file_name(&self.bench) + ".svg",
            self.dir.display()
        );
        Ok(written)
    }
}

/// `name` as a file name: letters, digits, `.`, `_` and `-` kept, the rest `-`.
fn file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect()
}

/// The percentile distribution in HdrHistogram's text form
/// (`outputPercentileDistribution`), values in microseconds: the columns
/// "Value Percentile TotalCount 1/(1-Percentile)" and the `#[Mean ...]`
/// footer that plotting tools read.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let p = VALUE_DECIMALS;
    let us = |ns: f64| ns / VALUE_UNIT_NS;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let value = us(histogram.highest_equivalent(step.value_iterated_to()) as f64);
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let _ =
                writeln!(out, "{value:>12.p$} {quantile:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(out, "{value:>12.p$} {quantile:>2.12} {total:>10}");
        }
    }
    // counts.len() is (buckets + 1) * sub_buckets / 2.
    let sub_buckets = 2 * histogram.distinct_values() / (usize::from(histogram.buckets()) + 1);
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.p$}, StdDeviation   = {:>12.p$}]",
        us(histogram.mean()),
        us(histogram.stdev())
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.p$}, Total count    = {:>12}]",
        us(histogram.highest_equivalent(histogram.max()) as f64),
        histogram.len()
    );
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", histogram.buckets(), sub_buckets);
    out
}

/// The highest 1/(1-p) a plot shows: p99.9999.
const PLOT_INVERSE_TAIL_MAX: f64 = 1e6;

/// An SVG of latency (us, log scale) against percentile on the log
/// "1/(1-p)" axis, one line per run.
pub fn plot_svg(title: &str, runs: &[(&str, &Histogram<u64>)]) -> Result<String, String> {
    use plotters::prelude::*;
    let lines: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, histogram)| {
            histogram
                .iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|step| {
                    let tail = (1.0 - step.quantile_iterated_to()).max(1.0 / PLOT_INVERSE_TAIL_MAX);
                    let value = histogram.highest_equivalent(step.value_iterated_to()) as f64;
                    (1.0 / tail, value / VALUE_UNIT_NS)
                })
                .collect()
        })
        .collect();
    // The axis ends a little past the rarest finite percentile; the maximum
    // (p = 1, where 1/(1-p) is infinite) is drawn at its end.
    let x_max =
        (lines.iter().flatten().map(|(x, _)| *x).filter(|x| *x < PLOT_INVERSE_TAIL_MAX).fold(10.0, f64::max)
            * 2.0)
            .min(PLOT_INVERSE_TAIL_MAX);
    let lines: Vec<Vec<(f64, f64)>> =
        lines.into_iter().map(|line| line.into_iter().map(|(x, y)| (x.min(x_max), y)).collect()).collect();
    // Latency on a log axis too: a tail four orders of magnitude above the
    // median would flatten everything else on a linear one.
    let y_max = lines.iter().flatten().map(|(_, y)| *y).fold(0.001, f64::max) * 1.2;
    let y_min = lines.iter().flatten().map(|(_, y)| *y).fold(y_max, f64::min).max(0.001) / 1.2;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        let error = |e: DrawingAreaErrorKind<_>| format!("plotting {title}: {e}");
        root.fill(&WHITE).map_err(error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(error)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (us)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()
            .map_err(error)?;
        for (index, ((name, _), points)) in runs.iter().zip(&lines).enumerate() {
            let color = LINE_COLORS[index % LINE_COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(error)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(error)?;
        root.present().map_err(error)?;
    }
    Ok(svg)
}

/// Dark, distinct line colours (no yellow on white).
const LINE_COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(23, 190, 207),
    plotters::style::RGBColor(127, 127, 127),
];

/// A point of the 1/(1-p) axis as a percentile: 10 is "90%", 1000 "99.9%".
fn percentile_label(inverse_tail: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / inverse_tail);
    let text = format!("{percent:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
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

    #[test]
    fn hgrm_has_hdrhistograms_columns_and_footer() {
        let mut h = latency_histogram();
        for ns in 1..=10_000u64 {
            h.record(ns * 1_000).unwrap();
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20, "{text}");
        // Values in microseconds; percentiles and counts rise to 1 and n.
        let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
        assert!((4_990.0..=5_010.0).contains(&median[0]), "{median:?}");
        assert!(rows.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1] && w[0][2] <= w[1][2]));
        let last = rows.last().unwrap();
        assert_eq!((last[1], last[2], last.len()), (1.0, 10_000.0, 3), "the last row has no 1/(1-p)");
        let row = &rows[rows.len() / 2];
        assert!((row[3] - 1.0 / (1.0 - row[1])).abs() / row[3] < 0.01, "{row:?}");
        assert!(
            text.contains("#[Mean    =     5000.") && text.contains("Total count    =        10000]"),
            "{text}"
        );
        assert!(text.contains("#[Buckets = ") && text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn reports_write_one_hgrm_per_run_and_one_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut reports = Reports::new("matcher", &ReportArgs { out: Some(dir.path().join("out")) });
        let mut h = latency_histogram();
        for ns in 1..=1_000u64 {
            h.record(ns * 7).unwrap();
        }
        reports.add("run 1", &h);
        reports.add("batch/none", &h);
        let written = reports.write().unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["run-1.hgrm", "batch-none.hgrm", "matcher.svg"]);
        let svg = std::fs::read_to_string(&written[2]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("batch/none") && svg.contains("percentile"), "{svg}");
        assert!(svg.contains("99.9%"), "the log 1/(1-p) axis is labelled in percentiles");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(10_000.0), "99.99%");
    }
}
