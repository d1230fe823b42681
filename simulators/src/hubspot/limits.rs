//! Rate limits: the rolling window (`TEN_SECONDLY_ROLLING`), the daily quota
//! (`DAILY`, reset at midnight in the account's time zone) and the search
//! endpoints' own `SECONDLY` limit; the `X-HubSpot-RateLimit-*` headers and
//! HubSpot's 429 bodies. Time is passed in (wall clock and monotonic) so the
//! day's reset can be tested with any instant.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;

use super::wire::{ApiError, Reply};
use super::{Config, Stats};

/// The search endpoints' window (their limit is per second).
const SEARCH_WINDOW: Duration = Duration::from_secs(1);

pub struct Limits {
    /// Admission times in the current rolling window.
    window: VecDeque<Instant>,
    /// Admission times of search requests in the last second.
    search: VecDeque<Instant>,
    tz: TimeZone,
    /// The next midnight in `tz`, when `daily_used` goes back to 0.
    day_ends: Timestamp,
    first_admitted: Option<Instant>,
}

/// Why a request was refused with 429.
#[derive(Debug, PartialEq)]
pub enum Limited {
    Daily { retry_after: u64 },
    Window { retry_after: u64 },
    Secondly,
}

/// Looks up an IANA time zone in the system's database.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    // UTC needs no database (a minimal container may have none).
    if name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|e| format!("daily_reset_tz `{name}`: {e}"))
}

/// The first midnight in `tz` strictly after `now`.
pub fn next_midnight(tz: &TimeZone, now: Timestamp) -> Timestamp {
    now.to_zoned_datetime(tz.clone())
        .tomorrow()
        .and_then(|d| d.start_of_day())
        .map(|d| d.timestamp())
        // Past the end of jiff's range: never reset.
        .unwrap_or(Timestamp::MAX)
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Limits {
    pub fn new(tz: TimeZone, wall: SystemTime) -> Limits {
        let day_ends = next_midnight(&tz, timestamp(wall));
        Limits { window: VecDeque::new(), search: VecDeque::new(), tz, day_ends, first_admitted: None }
    }

    /// Forgets every admission (for `/_sim/reset`).
    pub fn clear(&mut self, wall: SystemTime) {
        self.window.clear();
        self.search.clear();
        self.first_admitted = None;
        self.day_ends = next_midnight(&self.tz, timestamp(wall));
    }

    /// Starts a new day when midnight in the zone has passed.
    pub fn roll_day(&mut self, stats: &mut Stats, wall: SystemTime) {
        let now = timestamp(wall);
        if now >= self.day_ends {
            stats.daily_used = 0;
            stats.daily_resets += 1;
            self.day_ends = next_midnight(&self.tz, now);
        }
    }

    /// Whole seconds (rounded up) until the daily quota resets.
    pub fn seconds_to_midnight(&self, wall: SystemTime) -> u64 {
        let ms = self.day_ends.as_millisecond().saturating_sub(timestamp(wall).as_millisecond());
        (ms.max(0) as u64).div_ceil(1000).max(1)
    }

    fn expire(&mut self, window: Duration, now: Instant) {
        while self.window.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.window.pop_front();
        }
        while self.search.front().is_some_and(|t| now.duration_since(*t) >= SEARCH_WINDOW) {
            self.search.pop_front();
        }
    }

    /// Admits one API call or says which limit refused it. Every admitted
    /// call spends one request of the window and of the day; a search call
    /// also one of its per-second limit.
    pub fn admit(
        &mut self,
        cfg: &Config,
        stats: &mut Stats,
        wall: SystemTime,
        now: Instant,
        search: bool,
    ) -> Result<(), Limited> {
        self.roll_day(stats, wall);
        self.expire(cfg.window, now);
        if stats.daily_used >= cfg.daily {
            stats.rate_limited_daily += 1;
            return Err(Limited::Daily { retry_after: self.seconds_to_midnight(wall) });
        }
        if search && self.search.len() >= cfg.search_per_second as usize {
            stats.rate_limited_secondly += 1;
            return Err(Limited::Secondly);
        }
        if self.window.len() >= cfg.window_requests as usize {
            stats.rate_limited_window += 1;
            let wait =
                self.window.front().map(|t| cfg.window.saturating_sub(now.duration_since(*t))).unwrap_or_default();
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Limited::Window { retry_after: secs.max(1) });
        }
        self.window.push_back(now);
        if search {
            self.search.push_back(now);
        }
        let first = *self.first_admitted.get_or_insert(now);
        stats.active_seconds = now.duration_since(first).as_secs_f64();
        stats.daily_used += 1;
        stats.max_in_window = stats.max_in_window.max(self.window.len() as u64);
        Ok(())
    }

    /// Another client of the account spends `n` requests of the window and
    /// of the day.
    pub fn consume(&mut self, stats: &mut Stats, wall: SystemTime, now: Instant, n: u32) {
        self.roll_day(stats, wall);
        for _ in 0..n {
            self.window.push_back(now);
            stats.daily_used += 1;
            stats.consumed_by_others += 1;
        }
    }

    /// `X-HubSpot-RateLimit-*` for an answer (none when switched off).
    pub fn headers(&self, cfg: &Config, stats: &Stats) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !cfg.rate_limit_headers {
            return h;
        }
        let remaining = (cfg.window_requests as usize).saturating_sub(self.window.len());
        let daily_remaining = cfg.daily.saturating_sub(stats.daily_used);
        for (k, v) in [
            ("x-hubspot-ratelimit-max", cfg.window_requests.to_string()),
            ("x-hubspot-ratelimit-remaining", remaining.to_string()),
            ("x-hubspot-ratelimit-interval-milliseconds", cfg.window.as_millis().to_string()),
            ("x-hubspot-ratelimit-daily", cfg.daily.to_string()),
            ("x-hubspot-ratelimit-daily-remaining", daily_remaining.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        h
    }
}

/// HubSpot's 429 body for a refusal, with `Retry-After` when configured
/// (never for `SECONDLY`: search answers carry no rate-limit headers).
pub fn limited_reply(cfg: &Config, limited: &Limited, correlation_id: String) -> Reply {
    let (message, policy, group, retry) = match limited {
        Limited::Daily { retry_after } => {
            ("You have reached your daily limit.", "DAILY", "api-calls-daily", Some(*retry_after))
        }
        Limited::Window { retry_after } => (
            "You have reached your ten_secondly_rolling limit.",
            "TEN_SECONDLY_ROLLING",
            "api-calls",
            Some(*retry_after),
        ),
        Limited::Secondly => ("You have reached your secondly limit.", "SECONDLY", "publicapi-crm-search", None),
    };
    let body = ApiError::new("RATE_LIMITS", message, correlation_id)
        .extra("errorType", json!("RATE_LIMIT"))
        .extra("policyName", json!(policy))
        .extra("groupName", json!(group))
        .into_body();
    let reply = Reply::json(StatusCode::TOO_MANY_REQUESTS, body);
    match retry {
        Some(secs) if cfg.retry_after => reply.with_header("retry-after", &secs.to_string()),
        _ => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        SystemTime::try_from(s.parse::<Timestamp>().unwrap()).unwrap()
    }

    #[test]
    fn midnight_is_computed_in_the_accounts_zone() {
        // Kolkata is UTC+05:30 all year: midnight there is 18:30 UTC.
        let tz = time_zone("Asia/Kolkata").unwrap();
        assert_eq!(
            next_midnight(&tz, "2026-03-01T20:00:00Z".parse().unwrap()),
            "2026-03-02T18:30:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            next_midnight(&tz, "2026-03-01T18:00:00Z".parse().unwrap()),
            "2026-03-01T18:30:00Z".parse::<Timestamp>().unwrap()
        );
        // New York on the day DST starts (23 hours long) and in winter.
        let ny = time_zone("America/New_York").unwrap();
        assert_eq!(
            next_midnight(&ny, "2026-03-08T12:00:00Z".parse().unwrap()),
            "2026-03-09T04:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            next_midnight(&ny, "2026-01-10T04:59:59Z".parse().unwrap()),
            "2026-01-10T05:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(time_zone("Mars/Olympus_Mons").is_err());
    }

    #[test]
    fn the_daily_quota_resets_at_midnight_in_the_zone_and_retry_after_counts_down_to_it() {
        let cfg = Config { daily: 2, daily_reset_tz: "Asia/Kolkata".into(), ..Config::default() };
        let mut stats = Stats::default();
        let start = at("2026-03-01T18:00:00Z"); // 23:30 in Kolkata
        let mut l = Limits::new(time_zone(&cfg.daily_reset_tz).unwrap(), start);
        let t0 = Instant::now();
        assert_eq!(l.admit(&cfg, &mut stats, start, t0, false), Ok(()));
        assert_eq!(l.admit(&cfg, &mut stats, start, t0, false), Ok(()));
        // 30 minutes (1800 s) to midnight in Kolkata.
        assert_eq!(l.admit(&cfg, &mut stats, start, t0, false), Err(Limited::Daily { retry_after: 1800 }));
        let later = at("2026-03-01T18:29:58.500Z");
        assert_eq!(l.admit(&cfg, &mut stats, later, t0, false), Err(Limited::Daily { retry_after: 2 }));
        assert_eq!((stats.daily_used, stats.daily_resets, stats.rate_limited_daily), (2, 0, 2));
        // 00:00:01 in Kolkata: a new day.
        let next_day = at("2026-03-01T18:30:01Z");
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(l.admit(&cfg, &mut stats, next_day, t1, false), Ok(()));
        assert_eq!((stats.daily_used, stats.daily_resets), (1, 1));
        // The next reset is 24 hours later.
        assert_eq!(l.seconds_to_midnight(next_day), 86_400 - 1);
    }

    #[test]
    fn search_has_its_own_per_second_limit() {
        let cfg = Config::default();
        let mut stats = Stats::default();
        let wall = SystemTime::now();
        let mut l = Limits::new(TimeZone::UTC, wall);
        let t0 = Instant::now();
        for _ in 0..cfg.search_per_second {
            assert_eq!(l.admit(&cfg, &mut stats, wall, t0, true), Ok(()));
        }
        assert_eq!(l.admit(&cfg, &mut stats, wall, t0, true), Err(Limited::Secondly));
        assert_eq!(l.admit(&cfg, &mut stats, wall, t0, false), Ok(()), "other calls are not held back");
        let t1 = t0 + Duration::from_millis(1001);
        assert_eq!(l.admit(&cfg, &mut stats, wall, t1, true), Ok(()));
        assert_eq!((stats.rate_limited_secondly, stats.daily_used), (1, 7));
    }
}
