//! `[pipeline.schedule]`: when a pipeline runs on its own, and what the
//! service does when runs overlap, fail, run long or were missed.
//!
//! Cron patterns are croner's (Vixie cron and the Open Cron Pattern
//! Specification): 5 fields, or 6 with seconds first; names (`MON`, `JAN`),
//! ranges, steps, `L`, `W`, `#`, and `@daily`-style nicknames. When both
//! day-of-month and day-of-week are restricted, either matching fires (as
//! Vixie cron does).
//!
//! Time zones are IANA names read from the system's tz database by jiff.
//! Daylight saving time, as croner documents it:
//! - a fixed time in a gap (02:30 on the night clocks jump from 02:00 to
//!   03:00) fires once, at the first moment after the gap;
//! - a fixed time in a repeated hour fires once, on its first pass;
//! - wildcard and step fields (`*/5`) fire on every matching wall-clock time
//!   that exists, so in a repeated hour they fire on both passes.
//!
//! This file owns parsing and fire-time arithmetic; it does not run
//! anything (see `scheduler.rs`).

use std::cmp::Ordering;
use std::time::Duration;

use croner::errors::CronError;
use croner::parser::{CronParser, Seconds};
use croner::{CivilDate, CivilDateTime, CivilTime, Cron, CronDateTime, Resolution, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ZonedDateTime};
use serde::Serialize;

/// What to do when a fire time comes while the pipeline still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the slot (recorded in the history as `skipped`).
    Skip,
    /// Run once more when the current run ends (at most one waits).
    Queue,
}

/// What to do at start for slots missed while the service was down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// One run for all of them (trigger `catch-up`).
    Latest,
    /// Nothing; they are recorded as missed.
    None,
}

/// A failed run is started again (trigger `retry`); it resumes from its
/// checkpoint like any run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Extra runs after the first failure; 0: none.
    pub attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    #[serde(serialize_with = "secs")]
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 0, backoff: Duration::from_secs(60) }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A pipeline's schedule.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    /// The pattern as written.
    pub cron: String,
    #[serde(skip)]
    pattern: Cron,
    /// IANA name; `UTC` by default.
    pub timezone: String,
    #[serde(skip)]
    tz: TimeZone,
    pub on_overlap: Overlap,
    pub catch_up: CatchUp,
    /// A run still going after this long is stopped at a checkpoint (as by
    /// SIGTERM) and alerts `timeout`.
    #[serde(serialize_with = "opt_secs", rename = "timeout_s")]
    pub timeout: Option<Duration>,
    pub retry: Retry,
    /// Each fire is delayed by a random amount up to this, so many
    /// services on one schedule do not start at the same second.
    #[serde(serialize_with = "opt_secs", rename = "jitter_s")]
    pub jitter: Option<Duration>,
}

/// A schedule option that is wrong: the option's name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{option}`: {message}")]
pub struct ScheduleError {
    pub option: &'static str,
    pub message: String,
}

/// Parses a cron pattern: 5 fields, or 6 with seconds first.
pub fn parse_cron(pattern: &str) -> Result<Cron, String> {
    let fields = pattern.split_whitespace().count();
    if !pattern.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "`{pattern}` has {fields} field(s): write 5 (minute hour day-of-month month day-of-week) \
             or 6 (seconds first), e.g. \"0 2 * * *\" or \"*/10 * * * * *\""
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("`{pattern}` is not a cron pattern: {e}"))
}

/// Finds an IANA time zone in the system's tz database.
pub fn parse_timezone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| {
        format!("unknown time zone `{name}` (an IANA name such as \"Europe/Berlin\" or \"UTC\" is expected): {e}")
    })
}

impl Schedule {
    /// A schedule with the defaults: UTC, skip overlaps, catch up with one
    /// run, no timeout, no retry, no jitter.
    pub fn new(cron: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let pattern = parse_cron(cron).map_err(|message| ScheduleError { option: "cron", message })?;
        let name = timezone.unwrap_or("UTC");
        let tz = parse_timezone(name).map_err(|message| ScheduleError { option: "timezone", message })?;
        // A pattern that can never fire (`0 0 30 2 *`) is a mistake worth
        // stopping for, not a service that waits forever.
        let s = Schedule {
            cron: cron.to_string(),
            pattern,
            timezone: name.to_string(),
            tz,
            on_overlap: Overlap::Skip,
            catch_up: CatchUp::Latest,
            timeout: None,
            retry: Retry::default(),
            jitter: None,
        };
        if s.next_after(Timestamp::now()).is_none() {
            return Err(ScheduleError {
                option: "cron",
                message: format!("`{cron}` never fires (no date matches it in the coming years)"),
            });
        }
        Ok(s)
    }

    pub fn set_overlap(&mut self, v: &str) -> Result<(), ScheduleError> {
        self.on_overlap = match v {
            "skip" => Overlap::Skip,
            "queue" => Overlap::Queue,
            other => {
                return Err(ScheduleError {
                    option: "on_overlap",
                    message: format!("`{other}`: one of \"skip\", \"queue\""),
                });
            }
        };
        Ok(())
    }

    pub fn set_catch_up(&mut self, v: &str) -> Result<(), ScheduleError> {
        self.catch_up = match v {
            "latest" => CatchUp::Latest,
            "none" => CatchUp::None,
            other => {
                return Err(ScheduleError {
                    option: "catch_up",
                    message: format!("`{other}`: one of \"latest\", \"none\""),
                });
            }
        };
        Ok(())
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = At(t.to_zoned_datetime(self.tz.clone()));
        self.pattern.find_next_occurrence(&start, false).ok().map(|z| z.0.timestamp())
    }

    /// The next `n` fire times after `t`, in the schedule's zone.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<ZonedDateTime> {
        let mut out = Vec::with_capacity(n);
        let mut cur = t;
        while out.len() < n {
            let Some(next) = self.next_after(cur) else { break };
            out.push(next.to_zoned_datetime(self.tz.clone()));
            cur = next;
        }
        out
    }

    /// Fire times in `(after, until]`: how many (counting at most `cap`)
    /// and the last one.
    pub fn slots_between(&self, after: Timestamp, until: Timestamp, cap: u64) -> (u64, Option<Timestamp>) {
        let mut count = 0;
        let mut last = None;
        let mut cur = after;
        while count < cap {
            match self.next_after(cur) {
                Some(t) if t <= until => {
                    count += 1;
                    last = Some(t);
                    cur = t;
                }
                _ => break,
            }
        }
        (count, last)
    }
}

/// jiff's `ZonedDateTime` as croner's date type: croner's own jiff support is for
/// an older jiff, and this is all it takes.
#[derive(Clone, Debug)]
struct At(ZonedDateTime);

fn civil_of(d: jiff::civil::DateTime) -> CivilDateTime {
    CivilDateTime::new(
        CivilDate::from_parts_unchecked(i32::from(d.year()), d.month() as u32, d.day() as u32),
        CivilTime::from_parts_unchecked(d.hour() as u32, d.minute() as u32, d.second() as u32),
    )
}

impl CronDateTime for At {
    fn to_civil(&self) -> CivilDateTime {
        civil_of(self.0.datetime())
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(&self, c: CivilDateTime) -> Result<Resolution<Self>, CronError> {
        let year = i16::try_from(c.year()).map_err(|_| CronError::InvalidDate)?;
        let dt = jiff::civil::DateTime::new(
            year,
            c.month() as i8,
            c.day() as i8,
            c.hour() as i8,
            c.minute() as i8,
            c.second() as i8,
            0,
        )
        .map_err(|_| CronError::InvalidDate)?;
        let amb = self.0.time_zone().to_ambiguous_zoned_datetime(dt);
        Ok(match amb.offset() {
            AmbiguousOffset::Unambiguous { .. } => {
                Resolution::Single(At(amb.unambiguous().map_err(|_| CronError::InvalidTime)?))
            }
            AmbiguousOffset::Fold { .. } => {
                let earlier = amb.clone().earlier().map_err(|_| CronError::InvalidTime)?;
                let later = amb.later().map_err(|_| CronError::InvalidTime)?;
                Resolution::Ambiguous(At(earlier), At(later))
            }
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0.checked_add(SignedDuration::from_secs(seconds)).ok().map(At)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

/// Reads a duration with a unit: `90s`, `15m`, `2h`, `7d`.
pub fn parse_days(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}`: write a number and a unit, e.g. \"14d\" or \"12h\""))?;
    let secs = match unit.trim() {
        "s" => n,
        "m" | "min" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit is one of s, m, h, d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fires(cron: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(cron, Some(tz)).unwrap();
        s.upcoming(ts(from), n).iter().map(|z| z.strftime("%F %T %:z").to_string()).collect()
    }

    #[test]
    fn five_and_six_fields_and_nicknames() {
        assert_eq!(
            fires("0 2 * * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01 02:00:00 +00:00", "2026-01-02 02:00:00 +00:00"]
        );
        assert_eq!(
            fires("*/2 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            ["2026-01-01 00:00:02 +00:00", "2026-01-01 00:00:04 +00:00", "2026-01-01 00:00:06 +00:00"]
        );
        assert_eq!(fires("@daily", "UTC", "2026-01-01T10:00:00Z", 1), ["2026-01-02 00:00:00 +00:00"]);
        // Day of week as in Unix cron: 1 is Monday, 0 and 7 are Sunday.
        assert_eq!(fires("0 9 * * 1", "UTC", "2026-11-29T00:00:00Z", 1), ["2026-11-30 09:00:00 +00:00"]);
        assert_eq!(fires("0 9 * * 7", "UTC", "2026-11-24T00:00:00Z", 1), ["2026-11-29 09:00:00 +00:00"]);
    }

    #[test]
    fn bad_patterns_and_zones_name_the_option() {
        let e = Schedule::new("0 2 * *", None).unwrap_err();
        assert_eq!(e.option, "cron");
        assert!(e.message.contains("4 field(s)"), "{e}");
        let e = Schedule::new("0 25 * * *", None).unwrap_err();
        assert_eq!(e.option, "cron");
        let e = Schedule::new("0 2 30 2 *", None).unwrap_err();
        assert!(e.message.contains("never fires"), "{e}");
        let e = Schedule::new("0 2 * * *", Some("Europe/Berlinn")).unwrap_err();
        assert_eq!(e.option, "timezone");
        assert!(e.message.contains("Europe/Berlinn"), "{e}");
    }

    #[test]
    fn berlin_local_time_follows_daylight_saving() {
        // 02:00 Berlin is 01:00 UTC in winter, 00:00 UTC in summer.
        assert_eq!(fires("0 2 * * *", "Europe/Berlin", "2026-01-10T12:00:00Z", 1), ["2026-01-11 02:00:00 +01:00"]);
        assert_eq!(fires("0 2 * * *", "Europe/Berlin", "2026-07-10T12:00:00Z", 1), ["2026-07-11 02:00:00 +02:00"]);
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_once_after_it() {
        // 2026-03-29 Berlin: 02:00 → 03:00. 02:30 does not exist that night.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 3),
            ["2026-03-29 03:00:00 +02:00", "2026-03-30 02:30:00 +02:00", "2026-03-31 02:30:00 +02:00"]
        );
    }

    #[test]
    fn a_fixed_time_in_the_autumn_repeat_fires_once() {
        // 2026-10-25 Berlin: 03:00 → 02:00. 02:30 happens twice.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25 02:30:00 +02:00", "2026-10-26 02:30:00 +01:00"]
        );
        // An hourly step fires on both passes of the repeated hour.
        assert_eq!(
            fires("0 * * * *", "Europe/Berlin", "2026-10-24T22:30:00Z", 4),
            [
                "2026-10-25 01:00:00 +02:00",
                "2026-10-25 02:00:00 +02:00",
                "2026-10-25 02:00:00 +01:00",
                "2026-10-25 03:00:00 +01:00"
            ]
        );
    }

    #[test]
    fn slots_between_counts_missed_fires() {
        let s = Schedule::new("*/10 * * * * *", None).unwrap();
        let (n, last) = s.slots_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:01:05Z"), 1000);
        assert_eq!(n, 6);
        assert_eq!(last, Some(ts("2026-01-01T00:01:00Z")));
        let (n, _) = s.slots_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z"), 100);
        assert_eq!(n, 100, "counting stops at the cap");
    }

    #[test]
    fn durations_with_days() {
        assert_eq!(parse_days("14d").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_days("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_days("14 weeks").is_err());
    }
}
