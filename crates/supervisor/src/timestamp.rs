//! Timestamps of worker log lines, in UTC, with a strftime-like format (`--log-date-format`),
//! so chatctl needs no time-zone database and every host writes the same clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// ISO 8601 in UTC with milliseconds, as the master's own lines are stamped.
pub const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%LZ";

/// The conversions [`format_utc`] knows, for the error message of a bad format.
const KNOWN: &str = "%Y %m %d %H %M %S %L (milliseconds) %f (microseconds) %F (%Y-%m-%d) \
                     %T (%H:%M:%S) %s (Unix seconds) %z (+0000) %Z (UTC) %%";

/// Checks a format before it is used, so a typo is a startup error, not a garbled log.
pub fn check_format(format: &str) -> Result<(), String> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('Y' | 'm' | 'd' | 'H' | 'M' | 'S' | 'L' | 'f' | 'F' | 'T' | 's' | 'z'
                | 'Z' | '%') => {}
                other => {
                    return Err(format!(
                        "log date format {format:?}: unknown conversion %{}; use {KNOWN}, or `none` for no timestamp",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        }
    }
    Ok(())
}

/// `time` in UTC per `format` (checked by [`check_format`]; unknown conversions are copied).
pub fn format_utc(time: SystemTime, format: &str) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let micros = since_epoch.subsec_micros();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => format!("{year:04}"),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('H') => format!("{hour:02}"),
            Some('M') => format!("{minute:02}"),
            Some('S') => format!("{second:02}"),
            Some('L') => format!("{:03}", micros / 1000),
            Some('f') => format!("{micros:06}"),
            Some('F') => format!("{year:04}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('s') => seconds.to_string(),
            Some('z') => "+0000".into(),
            Some('Z') => "UTC".into(),
            Some('%') => "%".into(),
            Some(other) => format!("%{other}"),
            None => "%".into(),
        };
        out.push_str(&piece);
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        // 2026-12-03T19:50:13.123456Z
        let time = UNIX_EPOCH + Duration::from_micros(1_796_327_413_123_456);
        assert_eq!(
            format_utc(time, DEFAULT_DATE_FORMAT),
            "2026-12-03T19:50:13.123Z"
        );
        assert_eq!(
            format_utc(time, "%F %T.%f %z %Z %s %%"),
            "2026-12-03 19:50:13.123456 +0000 UTC 1796327413 %"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(leap, "%F"), "2000-02-29");
        assert_eq!(format_utc(UNIX_EPOCH, "%F %T"), "1970-01-01 00:00:00");
    }

    #[test]
    fn refuses_unknown_conversions() {
        assert!(check_format(DEFAULT_DATE_FORMAT).is_ok());
        assert!(check_format("%Y-%q").is_err());
        assert!(check_format("50%").is_err());
    }
}
