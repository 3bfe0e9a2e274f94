//! Timestamps (nanoseconds since the Unix epoch) as UTC date-times.

/// `2026-11-25T12:00:00.123456789Z`.
pub fn format_timestamp_ns(ns: u64) -> String {
    let seconds = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_timestamp_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_timestamp_ns(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(format_timestamp_ns(1_795_608_000_500_000_000), "2026-11-25T12:00:00.500000000Z");
        assert_eq!(format_timestamp_ns(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }
}
