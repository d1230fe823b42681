//! Durations as written in pipeline files and on the command line (`5s`,
//! `500ms`, `1m`, `2h`): one reader for every option that takes one, so
//! every option accepts the same units and the same range, and a typo
//! such as `99999999999999999999s` is refused with the range instead of
//! overflowing `Duration` (which panics).

use std::time::Duration;

/// The shortest duration an option may take. Below a millisecond a
/// checkpoint interval or a rate-limit window is a typo, not a setting.
pub const MIN: Duration = Duration::from_millis(1);
/// The longest: a day. Every duration option is an interval or a window
/// within one run; a longer one is a typo (and would overflow deadlines).
pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The allowed range, as shown in messages.
pub const RANGE: &str = "between 1ms and 24h";

/// Reads `10s`, `500ms`, `1.5s`, `2m` (or `2min`), `1h`; a bare number is
/// seconds. Refuses anything outside [`MIN`]..=[`MAX`], naming the range.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    // Only digits and dots reach `parse`, so `nan`, `inf` and signs are
    // refused here rather than read as floats.
    let n: f64 = match num.parse() {
        Ok(n) if !num.is_empty() => n,
        _ => return Err(format!("`{s}` is not a duration like 10s or 500ms")),
    };
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    // Compared as floats before any conversion: a huge number of digits
    // parses to a huge (or infinite) float, never to a Duration.
    if !(MIN.as_secs_f64()..=MAX.as_secs_f64()).contains(&secs) {
        return Err(format!("`{s}` is out of range: a duration must be {RANGE}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range: a duration must be {RANGE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_every_unit() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration(" 500ms ").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("24h").unwrap(), MAX);
        assert_eq!(parse_duration("1ms").unwrap(), MIN);
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    }

    /// Each of these once reached `Duration::from_secs_f64` and panicked,
    /// or was read as something it is not.
    #[test]
    fn absurd_durations_are_refused_with_the_range_never_a_panic() {
        for s in ["99999999999999999999s", "99999999999999999999ms", "25h", "86401s", "1441m", "0.5ms", "0s", "0"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("out of range") && e.contains(RANGE), "{s}: {e}");
        }
        let huge = format!("{}s", "9".repeat(400));
        assert!(parse_duration(&huge).unwrap_err().contains("out of range"));
        for s in ["", "s", "-5s", "nan", "NaNs", "inf", "infs", "1e3s", ".", "..s", "1.2.3s", "ten"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("is not a duration") || e.contains("unknown unit"), "{s}: {e}");
        }
        assert!(parse_duration("5 s").unwrap_err().contains("unknown unit"));
    }
}
