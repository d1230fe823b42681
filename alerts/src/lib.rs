//! Alerts about pipeline runs: which conditions a run meets, what changed
//! since the last run (so a failure pages once and its recovery resolves
//! it), and delivery to the receivers a pipeline declares under
//! `[alerts.<name>]`.
//!
//! - [`AlertSpec`]: one `[alerts.<name>]` table (`pagerduty`, `slack`,
//!   `webhook`, `email`) and the conditions it wants (`on`: `failed`,
//!   `recovered`, `timeout`, `missed`, `rejects_ratio > R`,
//!   `hubspot_daily_quota > R`).
//! - [`RunFacts`] → [`events`]: the triggers and resolutions a run causes,
//!   given the conditions still open from earlier runs ([`Open`]).
//! - [`deliver`]: one event to one receiver (HTTP, or SMTP with STARTTLS
//!   for `email`, see [`email`]), retried with backoff; a failure is
//!   returned for the caller to log and count, never to fail the run.
//!
//! Nothing here reads the pipeline file or knows the engine's types; the
//! engine hands in facts, with secrets already resolved.

pub mod email;

pub use email::{EmailSpec, SmtpTls};

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One `[alerts.<name>]` table: the receiver (`kind` and its options) and
/// the options every kind has.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSpec {
    pub receiver: Receiver,
    /// Conditions to alert on; default `["failed", "recovered"]`.
    pub on: Vec<String>,
    /// The console's address: alerts link to the run there.
    pub public_url: Option<String>,
    /// Per attempt; default 10 s.
    pub timeout_ms: Option<u64>,
    /// Attempts per alert (5xx, 429, network errors); default 4.
    pub attempts: Option<u32>,
}

/// The options every kind has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    #[serde(default = "default_on")]
    on: Vec<String>,
    public_url: Option<String>,
    timeout_ms: Option<u64>,
    attempts: Option<u32>,
}

const COMMON: &[&str] = &["on", "public_url", "timeout_ms", "attempts"];

fn default_on() -> Vec<String> {
    vec!["failed".into(), "recovered".into()]
}

/// Where alerts go.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Receiver {
    /// PagerDuty Events API v2.
    Pagerduty {
        routing_key: String,
        #[serde(default = "pagerduty_url")]
        url: String,
    },
    /// A Slack incoming webhook.
    Slack { webhook_url: String },
    /// Any HTTP endpoint taking JSON; with `hmac_secret`, each body is
    /// signed (`X-Engine-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
    /// as GitHub signs its webhooks).
    Webhook { url: String, hmac_secret: Option<String> },
    /// Email over SMTP (STARTTLS by default), one plain-text message per
    /// alert.
    Email(EmailSpec),
}

fn pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

pub const KINDS: &[&str] = &["pagerduty", "slack", "webhook", "email"];

/// A condition a run can meet.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// The run failed.
    Failed,
    /// A run completed after `failed` was open: resolves it. Not a state of
    /// its own.
    Recovered,
    /// Rejected rows over rows read, above the bound.
    RejectsRatio(f64),
    /// The run was stopped at its timeout (it resumes on the next run).
    Timeout,
    /// Scheduled runs were missed (the service was down at their time).
    Missed,
    /// The fraction of the HubSpot daily API quota used, above the bound.
    HubspotDailyQuota(f64),
}

impl Condition {
    pub fn parse(s: &str) -> Result<Condition, String> {
        let t = s.trim();
        match t {
            "failed" => return Ok(Condition::Failed),
            "recovered" => return Ok(Condition::Recovered),
            "timeout" => return Ok(Condition::Timeout),
            "missed" => return Ok(Condition::Missed),
            _ => {}
        }
        let bounded = |name: &str, example: &str, make: fn(f64) -> Condition| {
            let rest = t.strip_prefix(name)?;
            let bound = rest.trim().strip_prefix('>').map(str::trim).and_then(|b| b.parse::<f64>().ok());
            Some(match bound {
                Some(b) if (0.0..1.0).contains(&b) => Ok(make(b)),
                _ => Err(format!("`{t}`: write {name} > {example} (a ratio from 0 to 1)")),
            })
        };
        if let Some(r) = bounded("rejects_ratio", "0.01", Condition::RejectsRatio) {
            return r;
        }
        if let Some(r) = bounded("hubspot_daily_quota", "0.8", Condition::HubspotDailyQuota) {
            return r;
        }
        Err(format!(
            "unknown alert condition `{t}`: one of failed, recovered, timeout, missed, rejects_ratio > <ratio>, \
             hubspot_daily_quota > <ratio>"
        ))
    }

    /// The stable name a condition is tracked (and deduplicated) under.
    pub fn key(&self) -> String {
        match self {
            Condition::Failed | Condition::Recovered => "failed".into(),
            Condition::RejectsRatio(_) => "rejects_ratio".into(),
            Condition::Timeout => "timeout".into(),
            Condition::Missed => "missed".into(),
            Condition::HubspotDailyQuota(_) => "hubspot_daily_quota".into(),
        }
    }
}

impl AlertSpec {
    pub fn from_json(v: &Value) -> Result<AlertSpec, String> {
        match v.get("kind").and_then(Value::as_str) {
            None => return Err(format!("`kind` is required: one of {}", KINDS.join(", "))),
            Some(k) if !KINDS.contains(&k) => {
                return Err(format!("unknown alert kind `{k}`: one of {}", KINDS.join(", ")));
            }
            _ => {}
        }
        let Value::Object(map) = v else { return Err("an alert must be a table".into()) };
        let (common, own): (serde_json::Map<String, Value>, serde_json::Map<String, Value>) =
            map.clone().into_iter().partition(|(k, _)| COMMON.contains(&k.as_str()));
        let c = Common::deserialize(Value::Object(common)).map_err(|e| e.to_string())?;
        let receiver = Receiver::deserialize(Value::Object(own)).map_err(|e| e.to_string())?;
        let spec =
            AlertSpec { receiver, on: c.on, public_url: c.public_url, timeout_ms: c.timeout_ms, attempts: c.attempts };
        for c in &spec.on {
            Condition::parse(c)?;
        }
        let url = match &spec.receiver {
            Receiver::Pagerduty { url, .. } | Receiver::Webhook { url, .. } => url,
            Receiver::Slack { webhook_url } => webhook_url,
            Receiver::Email(email) => return email.check().map(|_| spec),
        };
        if !url.starts_with("https://") && !url.starts_with("http://") && !url.contains("SECRET[") {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        }
        Ok(spec)
    }

    pub fn conditions(&self) -> Vec<Condition> {
        self.on.iter().filter_map(|c| Condition::parse(c).ok()).collect()
    }

    /// The values in this table that are credentials (for redaction): a
    /// routing key, a Slack webhook URL (its path is the secret), an SMTP
    /// password.
    pub fn credentials(&self) -> Vec<&str> {
        match &self.receiver {
            Receiver::Pagerduty { routing_key, .. } => vec![routing_key.as_str()],
            Receiver::Slack { webhook_url } => vec![webhook_url.as_str()],
            Receiver::Webhook { hmac_secret, .. } => hmac_secret.iter().map(String::as_str).collect(),
            Receiver::Email(email) => email.password.iter().map(String::as_str).collect(),
        }
    }
}

/// What the engine knows of a finished run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunFacts {
    pub pipeline: String,
    pub run_id: String,
    pub host: String,
    /// Failed: the operator that failed and its message.
    pub failed: Option<(String, String)>,
    pub rows_read: u64,
    pub rows_rejected: u64,
    /// The run was stopped at its timeout (not a failure: it resumes from
    /// its last checkpoint on the next run).
    pub timed_out: bool,
    /// Scheduled runs missed while the service was down, caught up by this
    /// one.
    pub missed_slots: u64,
    /// The fraction of the HubSpot daily API quota used (0 to 1), the
    /// highest over the run's HubSpot sinks; `None` without one.
    pub hubspot_daily_quota: Option<f64>,
}

/// Conditions left open by earlier runs, by key (`failed`,
/// `rejects_ratio`, `timeout`, `missed`, `hubspot_daily_quota`): what a
/// later run resolves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Open {
    pub conditions: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Trigger,
    Resolve,
}

/// One alert to send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub pipeline: String,
    pub run_id: String,
    /// `failed`, `recovered`, `rejects_ratio`, `timeout`, `missed`,
    /// `hubspot_daily_quota`.
    pub condition: String,
    pub action: Action,
    pub summary: String,
    pub operator: Option<String>,
    pub message: Option<String>,
    /// One key per pipeline and condition: PagerDuty groups a trigger and
    /// its resolve by it.
    pub dedup_key: String,
    pub link: Option<String>,
    pub host: String,
}

/// The events `facts` cause for a receiver wanting `conditions`, and the
/// conditions open afterwards.
pub fn events(conditions: &[Condition], facts: &RunFacts, open: &Open, public_url: Option<&str>) -> (Vec<Event>, Open) {
    let mut now_open = open.clone();
    let mut out = Vec::new();
    let link = public_url.map(|u| format!("{}/runs/{}", u.trim_end_matches('/'), facts.run_id));
    let event = |condition: &str, action, summary: String| Event {
        pipeline: facts.pipeline.clone(),
        run_id: facts.run_id.clone(),
        condition: condition.to_string(),
        action,
        summary,
        operator: facts.failed.as_ref().map(|(o, _)| o.clone()),
        message: facts.failed.as_ref().map(|(_, m)| m.clone()),
        dedup_key: format!("engine/{}/{}", facts.pipeline, if condition == "recovered" { "failed" } else { condition }),
        link: link.clone(),
        host: facts.host.clone(),
    };
    let wants = |c: &Condition| conditions.contains(c);
    // A run that failed or was stopped at its timeout did not complete: it
    // resolves nothing that needs a completed run.
    let completed = facts.failed.is_none() && !facts.timed_out;
    match &facts.failed {
        Some((op, msg)) => {
            if wants(&Condition::Failed) {
                out.push(event(
                    "failed",
                    Action::Trigger,
                    format!("pipeline {} failed: operator `{op}`: {msg}", facts.pipeline),
                ));
            }
            now_open.conditions.insert("failed".into());
        }
        None => {
            if completed && open.conditions.contains("failed") {
                if wants(&Condition::Recovered) {
                    out.push(event(
                        "recovered",
                        Action::Resolve,
                        format!("pipeline {} recovered: run {} completed", facts.pipeline, facts.run_id),
                    ));
                }
                now_open.conditions.remove("failed");
            }
        }
    }
    // A condition turns on (trigger) or, if open and `resolvable`, off.
    let mut transition = |key: &str, on: bool, resolvable: bool, trigger: String, resolve: String| {
        if on {
            out.push(event(key, Action::Trigger, trigger));
            now_open.conditions.insert(key.into());
        } else if resolvable && open.conditions.contains(key) {
            out.push(event(key, Action::Resolve, resolve));
            now_open.conditions.remove(key);
        }
    };
    for c in conditions {
        let Condition::RejectsRatio(bound) = c else { continue };
        if facts.failed.is_some() {
            continue;
        }
        let ratio = if facts.rows_read == 0 { 0.0 } else { facts.rows_rejected as f64 / facts.rows_read as f64 };
        transition(
            "rejects_ratio",
            ratio > *bound,
            true,
            format!(
                "pipeline {}: {} of {} rows rejected ({:.2}%, above {:.2}%)",
                facts.pipeline,
                facts.rows_rejected,
                facts.rows_read,
                ratio * 100.0,
                bound * 100.0
            ),
            format!("pipeline {}: rejects back to {:.2}%", facts.pipeline, ratio * 100.0),
        );
    }
    if wants(&Condition::Timeout) {
        transition(
            "timeout",
            facts.timed_out,
            completed,
            format!(
                "pipeline {}: run {} was stopped at its timeout; it resumes from its last checkpoint on the next run",
                facts.pipeline, facts.run_id
            ),
            format!("pipeline {}: run {} completed within its timeout", facts.pipeline, facts.run_id),
        );
    }
    if wants(&Condition::Missed) {
        let n = facts.missed_slots;
        transition(
            "missed",
            n > 0,
            completed,
            format!(
                "pipeline {}: {n} scheduled run{} missed while the service was down",
                facts.pipeline,
                if n == 1 { " was" } else { "s were" }
            ),
            format!("pipeline {}: run {} completed on schedule", facts.pipeline, facts.run_id),
        );
    }
    for c in conditions {
        let Condition::HubspotDailyQuota(bound) = c else { continue };
        // A run without a HubSpot figure (it failed before any call) says
        // nothing either way.
        let Some(used) = facts.hubspot_daily_quota else { continue };
        transition(
            "hubspot_daily_quota",
            used > *bound,
            true,
            format!(
                "pipeline {}: {:.1}% of the HubSpot daily API quota used (above {:.1}%)",
                facts.pipeline,
                used * 100.0,
                bound * 100.0
            ),
            format!("pipeline {}: HubSpot daily API quota use back to {:.1}%", facts.pipeline, used * 100.0),
        );
    }
    (out, now_open)
}

/// The body `receiver` gets for `e`.
pub fn body(receiver: &Receiver, e: &Event) -> Value {
    match receiver {
        Receiver::Pagerduty { routing_key, .. } => {
            let mut v = json!({
                "routing_key": routing_key,
                "event_action": e.action,
                "dedup_key": e.dedup_key,
            });
            if e.action == Action::Trigger {
                v["payload"] = json!({
                    "summary": truncate(&e.summary, 1024),
                    "source": e.host,
                    "severity": if e.condition == "failed" { "critical" } else { "warning" },
                    "component": e.pipeline,
                    "group": "engine",
                    "class": e.condition,
                    "custom_details": {
                        "pipeline": e.pipeline, "run_id": e.run_id, "operator": e.operator, "message": e.message,
                    },
                });
                if let Some(l) = &e.link {
                    v["links"] = json!([{ "href": l, "text": "the run in the console" }]);
                }
            }
            v
        }
        Receiver::Slack { .. } => {
            let icon = if e.action == Action::Trigger { ":red_circle:" } else { ":large_green_circle:" };
            let mut fields = vec![
                json!({ "type": "mrkdwn", "text": format!("*Pipeline*\n{}", e.pipeline) }),
                json!({ "type": "mrkdwn", "text": format!("*Run*\n{}", e.run_id) }),
            ];
            if let Some(op) = &e.operator {
                fields.push(json!({ "type": "mrkdwn", "text": format!("*Operator*\n{op}") }));
            }
            let mut blocks = vec![
                json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("{icon} {}", slack_escape(&e.summary)) } }),
                json!({ "type": "section", "fields": fields }),
            ];
            if let Some(l) = &e.link {
                blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": format!("<{l}|the run in the console>") }] }));
            }
            json!({ "text": e.summary, "blocks": blocks })
        }
        Receiver::Webhook { .. } => serde_json::to_value(e).unwrap_or(Value::Null),
        Receiver::Email(_) => json!({ "subject": email::subject(e), "text": email::text(e) }),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The HTTP client deliveries share.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::new()
}

/// The wait before attempt `attempt` (2, 3…): 0.5 s, 1 s, 2 s… up to 16 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500) * (1 << attempt.saturating_sub(2).min(5))
}

/// Sends `e` to `spec`'s receiver: retried with backoff (0.5 s, 1 s, 2 s…),
/// at most `attempts` times, on 5xx, 429 and network errors (HTTP) or on
/// connection errors and 4xx replies (SMTP). The error says what the
/// receiver answered last.
pub async fn deliver(http: &reqwest::Client, spec: &AlertSpec, e: &Event) -> Result<u32, String> {
    let url = match &spec.receiver {
        Receiver::Pagerduty { url, .. } | Receiver::Webhook { url, .. } => url,
        Receiver::Slack { webhook_url } => webhook_url,
        Receiver::Email(email) => return email::deliver(spec, email, e).await,
    };
    // The exact bytes sent are the bytes signed.
    let payload = serde_json::to_vec(&body(&spec.receiver, e)).map_err(|e| e.to_string())?;
    let signature = match &spec.receiver {
        Receiver::Webhook { hmac_secret: Some(key), .. } => Some(format!("sha256={}", sign(key, &payload))),
        _ => None,
    };
    let attempts = spec.attempts.unwrap_or(4).max(1);
    let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(10_000));
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let mut req = http.post(url).timeout(timeout).header("content-type", "application/json").body(payload.clone());
        if let Some(s) = &signature {
            req = req.header("x-engine-signature-256", s);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => {
                let status = r.status();
                let text: String = r.text().await.unwrap_or_default().chars().take(200).collect();
                last = format!("HTTP {}: {}", status.as_u16(), text.trim());
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(last);
                }
            }
            Err(err) => last = error_chain(&err),
        }
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

/// Hex HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(failed: bool, read: u64, rejected: u64) -> RunFacts {
        RunFacts {
            pipeline: "babynames".into(),
            run_id: "r1".into(),
            host: "h".into(),
            failed: failed.then(|| ("db".to_string(), "connection refused".to_string())),
            rows_read: read,
            rows_rejected: rejected,
            ..Default::default()
        }
    }

    #[test]
    fn a_failure_triggers_once_and_a_success_resolves_it() {
        let on = [Condition::Failed, Condition::Recovered];
        let (ev, open) = events(&on, &facts(true, 0, 0), &Open::default(), Some("https://ops.example/"));
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].action, ev[0].dedup_key.as_str()), (Action::Trigger, "engine/babynames/failed"));
        assert_eq!(ev[0].link.as_deref(), Some("https://ops.example/runs/r1"));
        assert!(ev[0].summary.contains("operator `db`: connection refused"));
        // Still failing: triggered again (PagerDuty deduplicates by key).
        let (ev2, open2) = events(&on, &facts(true, 0, 0), &open, None);
        assert_eq!(ev2.len(), 1);
        let (ev3, open3) = events(&on, &facts(false, 10, 0), &open2, None);
        assert_eq!(ev3.len(), 1);
        assert_eq!((ev3[0].action, ev3[0].dedup_key.as_str()), (Action::Resolve, "engine/babynames/failed"));
        assert!(open3.conditions.is_empty());
        let (ev4, _) = events(&on, &facts(false, 10, 0), &open3, None);
        assert!(ev4.is_empty(), "a second success says nothing");
    }

    #[test]
    fn rejects_ratio_triggers_above_its_bound_and_resolves_below() {
        let on = [Condition::parse("rejects_ratio > 0.01").unwrap()];
        let (ev, open) = events(&on, &facts(false, 1000, 11), &Open::default(), None);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].summary.contains("11 of 1000 rows rejected (1.10%, above 1.00%)"), "{}", ev[0].summary);
        let (ev, open) = events(&on, &facts(false, 1000, 10), &open, None);
        assert_eq!(ev[0].action, Action::Resolve);
        assert!(open.conditions.is_empty());
    }

    #[test]
    fn timeout_and_missed_trigger_and_only_a_completed_run_resolves_them() {
        let on = [Condition::parse("timeout").unwrap(), Condition::parse(" missed ").unwrap()];
        assert_eq!((on[0].key(), on[1].key()), ("timeout".to_string(), "missed".to_string()));
        let stopped = RunFacts { timed_out: true, missed_slots: 3, ..facts(false, 10, 0) };
        let (ev, open) = events(&on, &stopped, &Open::default(), None);
        let got: Vec<(&str, Action)> = ev.iter().map(|e| (e.condition.as_str(), e.action)).collect();
        assert_eq!(got, [("timeout", Action::Trigger), ("missed", Action::Trigger)]);
        assert!(
            ev[0].summary.contains("stopped at its timeout") && ev[0].summary.contains("next run"),
            "{}",
            ev[0].summary
        );
        assert_eq!(ev[1].summary, "pipeline babynames: 3 scheduled runs were missed while the service was down");
        assert_eq!(ev[1].dedup_key, "engine/babynames/missed");
        let one = RunFacts { missed_slots: 1, ..facts(false, 10, 0) };
        assert!(events(&on, &one, &Open::default(), None).0[0].summary.contains("1 scheduled run was missed"));
        // A failed run resolves neither.
        let (ev, open) = events(&on, &facts(true, 0, 0), &open, None);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(open.conditions.contains("timeout") && open.conditions.contains("missed"));
        // A completed run resolves both, with the same keys.
        let (ev, open) = events(&on, &facts(false, 10, 0), &open, None);
        let got: Vec<(&str, Action)> = ev.iter().map(|e| (e.dedup_key.as_str(), e.action)).collect();
        assert_eq!(got, [("engine/babynames/timeout", Action::Resolve), ("engine/babynames/missed", Action::Resolve)]);
        assert!(open.conditions.is_empty());
    }

    #[test]
    fn a_timed_out_run_does_not_resolve_a_failure() {
        let on = [Condition::Failed, Condition::Recovered];
        let (_, open) = events(&on, &facts(true, 0, 0), &Open::default(), None);
        let stopped = RunFacts { timed_out: true, ..facts(false, 10, 0) };
        let (ev, open) = events(&on, &stopped, &open, None);
        assert!(ev.is_empty() && open.conditions.contains("failed"), "{ev:?}");
        let (ev, _) = events(&on, &facts(false, 10, 0), &open, None);
        assert_eq!(ev[0].condition, "recovered");
    }

    #[test]
    fn hubspot_daily_quota_triggers_above_its_bound_and_resolves_below() {
        let on = [Condition::parse("hubspot_daily_quota > 0.8").unwrap()];
        assert_eq!(on[0], Condition::HubspotDailyQuota(0.8));
        let with = |q: Option<f64>| RunFacts { hubspot_daily_quota: q, ..facts(false, 10, 0) };
        let (ev, open) = events(&on, &with(Some(0.85)), &Open::default(), None);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].summary, "pipeline babynames: 85.0% of the HubSpot daily API quota used (above 80.0%)");
        // No figure (no HubSpot call made): nothing changes.
        let (ev, open) = events(&on, &with(None), &open, None);
        assert!(ev.is_empty() && open.conditions.contains("hubspot_daily_quota"));
        let (ev, open) = events(&on, &with(Some(0.5)), &open, None);
        assert_eq!((ev[0].action, ev[0].dedup_key.as_str()), (Action::Resolve, "engine/babynames/hubspot_daily_quota"));
        assert!(open.conditions.is_empty());
        let (ev, _) = events(&on, &with(Some(0.5)), &open, None);
        assert!(ev.is_empty());
        for bad in ["hubspot_daily_quota > 1.5", "hubspot_daily_quota", "hubspot_daily_quota > x"] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(e.contains("write hubspot_daily_quota > 0.8"), "{e}");
        }
    }

    #[test]
    fn specs_and_conditions_are_checked() {
        let s = AlertSpec::from_json(&json!({"kind": "pagerduty", "routing_key": "R", "on": ["failed"]})).unwrap();
        assert_eq!(s.receiver, Receiver::Pagerduty { routing_key: "R".into(), url: pagerduty_url() });
        assert!(AlertSpec::from_json(&json!({"kind": "sms"})).unwrap_err().contains("unknown alert kind `sms`"));
        let e =
            AlertSpec::from_json(&json!({"kind": "slack", "webhook_url": "https://x", "on": ["faild"]})).unwrap_err();
        assert!(e.contains("unknown alert condition `faild`"), "{e}");
        let e = AlertSpec::from_json(&json!({"kind": "webhook", "url": "ftp://x"})).unwrap_err();
        assert!(e.contains("not an http"), "{e}");
        let e = AlertSpec::from_json(&json!({"kind": "webhook", "url": "https://x", "colour": 1})).unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(Condition::parse("rejects_ratio > 2").is_err());
    }

    #[test]
    fn signatures_match_the_published_hmac_sha256_test_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_have_each_receivers_shape() {
        let (ev, _) = events(&[Condition::Failed], &facts(true, 0, 0), &Open::default(), Some("https://c"));
        let pd = body(&Receiver::Pagerduty { routing_key: "RK".into(), url: pagerduty_url() }, &ev[0]);
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["payload"]["severity"], "critical");
        assert_eq!(pd["payload"]["source"], "h");
        assert_eq!(pd["links"][0]["href"], "https://c/runs/r1");
        let slack = body(&Receiver::Slack { webhook_url: "https://hooks".into() }, &ev[0]);
        assert!(
            slack["blocks"][0]["text"]["text"].as_str().unwrap().starts_with(":red_circle: pipeline babynames failed")
        );
        let hook = body(&Receiver::Webhook { url: "https://x".into(), hmac_secret: None }, &ev[0]);
        assert_eq!(hook["condition"], "failed");
        assert_eq!(hook["operator"], "db");
    }
}
