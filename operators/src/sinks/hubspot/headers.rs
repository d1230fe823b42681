//! What HubSpot's response headers say about waiting (and about the day's
//! quota), read defensively:
//! a header is the server's word, not ours, so absurd values (negative,
//! NaN, 1e30, a maximum of 2^32) are ignored or clamped, never trusted into
//! a panic or a year-long pause. Pure functions, fuzzed in the tests.

use std::time::Duration;

/// No header makes us wait longer than this (a daily limit resets within a
/// day).
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// `Retry-After` in seconds (HubSpot sends seconds; an HTTP date is not
/// used by it and is ignored). `None` when absent or absurd.
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs.min(MAX_WAIT.as_secs_f64())))
}

/// The rolling window's figures: requests left, the window's maximum, its
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub remaining: u64,
    pub max: u64,
    pub interval: Duration,
}

/// Reads `X-HubSpot-RateLimit-{Remaining,Max,Interval-Milliseconds}`;
/// `None` when absent or not believable (a maximum of 0 or over a million
/// requests, more remaining than the maximum).
pub fn window(remaining: Option<&str>, max: Option<&str>, interval_ms: Option<&str>) -> Option<Window> {
    let remaining: u64 = remaining?.trim().parse().ok()?;
    let max: u64 = max?.trim().parse().ok()?;
    if max == 0 || max > 1_000_000 || remaining > max {
        return None;
    }
    Some(Window { remaining, max, interval: interval(interval_ms).unwrap_or(Duration::from_secs(10)) })
}

/// `X-HubSpot-RateLimit-Interval-Milliseconds`, when believable (1 ms to a
/// day).
pub fn interval(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| (1..=MAX_WAIT.as_millis() as u64).contains(ms))
        .map(Duration::from_millis)
}

/// Share (0..=1) of the daily quota used, from `X-HubSpot-RateLimit-Daily`
/// and `X-HubSpot-RateLimit-Daily-Remaining`: `(daily - remaining) /
/// daily`. `None` when either is absent (OAuth apps get neither) or not
/// believable (not a whole number, a limit of 0 or over a billion, more
/// remaining than the limit).
pub fn daily_used(daily: Option<&str>, remaining: Option<&str>) -> Option<f64> {
    let daily: u64 = daily?.trim().parse().ok()?;
    let remaining: u64 = remaining?.trim().parse().ok()?;
    if daily == 0 || daily > 1_000_000_000 || remaining > daily {
        return None;
    }
    Some((daily - remaining) as f64 / daily as f64)
}

/// When the window is spent by others too: pause for the share our
/// requests in flight need, so they fit when it rolls.
pub fn pause_when_spent(w: Window, concurrency: usize) -> Option<Duration> {
    if w.remaining > 0 {
        return None;
    }
    let per_request = w.interval / (w.max.min(u32::MAX as u64) as u32).max(1);
    Some((per_request * (concurrency.min(1000) as u32 + 1)).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn absurd_values_are_ignored_or_clamped() {
        assert_eq!(retry_after(Some("-1")), None);
        assert_eq!(retry_after(Some("NaN")), None);
        assert_eq!(retry_after(Some("1e30")), Some(MAX_WAIT));
        assert_eq!(retry_after(Some(" 2.5 ")), Some(Duration::from_millis(2500)));
        assert_eq!(window(Some("0"), Some("4294967296"), None), None, "2^32 is not a believable maximum");
        assert_eq!(window(Some("5"), Some("0"), None), None);
        let w = window(Some("0"), Some("100"), Some("99999999999999")).expect("believable");
        assert_eq!(w.interval, Duration::from_secs(10), "an absurd interval falls back to HubSpot's 10 s");
        assert_eq!(pause_when_spent(w, 4), Some(Duration::from_millis(500)));
    }

    #[test]
    fn daily_use_is_read_from_the_daily_headers_or_not_at_all() {
        assert_eq!(daily_used(Some("250000"), Some("200000")), Some(0.2));
        assert_eq!(daily_used(Some(" 10 "), Some("0")), Some(1.0), "spent");
        assert_eq!(daily_used(Some("10"), Some("10")), Some(0.0));
        // Missing: an OAuth app gets neither header.
        assert_eq!(daily_used(None, None), None);
        assert_eq!(daily_used(Some("10"), None), None);
        assert_eq!(daily_used(None, Some("3")), None);
        // Bad values are ignored, never trusted.
        for (d, r) in [
            ("0", "0"),
            ("10", "11"),
            ("-10", "1"),
            ("10", "-1"),
            ("ten", "1"),
            ("10", ""),
            ("1e3", "1"),
            ("10.5", "1"),
            ("NaN", "1"),
            ("18446744073709551616", "1"),
            ("2000000000", "1"),
        ] {
            assert_eq!(daily_used(Some(d), Some(r)), None, "{d} / {r}");
        }
    }

    proptest! {
        #[test]
        fn no_header_value_panics(a in ".{0,24}", b in ".{0,24}", c in ".{0,24}", n in any::<usize>()) {
            let _ = retry_after(Some(&a));
            prop_assert!(daily_used(Some(&a), Some(&b)).is_none_or(|u| (0.0..=1.0).contains(&u)));
            if let Some(w) = window(Some(&a), Some(&b), Some(&c)) {
                let p = pause_when_spent(w, n);
                prop_assert!(p.is_none_or(|d| d <= MAX_WAIT));
            }
        }

        #[test]
        fn numeric_extremes_never_panic(r in any::<u64>(), m in any::<u64>(), i in any::<u64>(), f in any::<f64>()) {
            let _ = retry_after(Some(&f.to_string()));
            prop_assert!(daily_used(Some(&m.to_string()), Some(&r.to_string())).is_none_or(|u| (0.0..=1.0).contains(&u)));
            let w = window(Some(&r.to_string()), Some(&m.to_string()), Some(&i.to_string()));
            if let Some(w) = w {
                prop_assert!(w.max >= 1 && w.remaining <= w.max);
                let _ = pause_when_spent(w, usize::MAX);
            }
        }
    }
}
