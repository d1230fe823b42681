//! Alerts after a run: the facts of a `RunReport`, the conditions each
//! `[alerts.<name>]` receiver still has open from earlier runs (kept in
//! `<checkpoint dir>.alerts.json`), and delivery. A failed delivery is
//! logged and counted, never fails the run. Conditions and bodies are the
//! `alerts` crate's; this file only connects them to a run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use alerts::{AlertSpec, Open, RunFacts};

use crate::config::Pipeline;
use crate::runtime::{Outcome, RunReport};

/// Where receivers' open conditions are kept between runs: beside the
/// checkpoint store (not in it: sled owns that directory, and a reset
/// store must not forget that a failure is still paging someone).
fn state_file(p: &Pipeline) -> PathBuf {
    let store = crate::checkpoint::store_dir(p);
    let name = store.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.name.clone());
    store.with_file_name(format!("{name}.alerts.json"))
}

/// What alerts need to know of a finished run.
pub fn facts(p: &Pipeline, report: &RunReport, run_id: &str) -> RunFacts {
    let rows_read = report.operators.iter().filter(|o| o.role == operators::Role::Source).map(|o| o.rows_out).sum();
    let rows_rejected = report.operators.iter().map(|o| o.rows_rejected).sum();
    RunFacts {
        pipeline: p.name.clone(),
        run_id: run_id.to_string(),
        host: hostname(),
        failed: match &report.outcome {
            Outcome::Failed { operator, error } => Some((operator.clone(), error.clone())),
            _ => None,
        },
        rows_read,
        rows_rejected,
        timed_out: report.outcome == Outcome::Interrupted { signal: crate::runtime::TIMEOUT },
        // `engine serve` says how many scheduled runs a catch-up run
        // stands for.
        missed_slots: std::env::var("ENGINE_MISSED_SLOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        // The highest share any HubSpot sink of the run reported.
        hubspot_daily_quota: report
            .operators
            .iter()
            .filter(|o| o.kind == "hubspot")
            .filter_map(|o| o.daily_quota)
            .reduce(f64::max),
        ..Default::default()
    }
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "engine".into())
}

/// Sends what `report` causes to every receiver of `p`. A run stopped by a
/// signal says nothing: it is neither a failure nor a recovery. A run
/// stopped at its timeout says `timeout`.
pub async fn send(p: &Pipeline, report: &RunReport, run_id: &str) {
    let timed_out = report.outcome == Outcome::Interrupted { signal: crate::runtime::TIMEOUT };
    if p.alerts.is_empty()
        || (!timed_out && matches!(report.outcome, Outcome::Interrupted { .. } | Outcome::Aborted { .. }))
    {
        return;
    }
    send_facts(p, facts(p, report, run_id)).await
}

/// Sends what `facts` cause to every receiver of `p`, and keeps which
/// conditions are open. `engine serve` uses it for a run that died before
/// it could say anything itself (killed, or stopped before it started).
pub async fn send_facts(p: &Pipeline, facts: RunFacts) {
    if p.alerts.is_empty() {
        return;
    }
    let path = state_file(p);
    let mut state: BTreeMap<String, Open> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let http = alerts::http_client();
    for (name, table) in &p.alerts {
        let spec = match AlertSpec::from_json(table) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(alert = %name, error = %e, "alert receiver unusable");
                continue;
            }
        };
        let open = state.get(name).cloned().unwrap_or_default();
        let (events, now_open) = alerts::events(&spec.conditions(), &facts, &open, spec.public_url.as_deref());
        for e in &events {
            match alerts::deliver(&http, &spec, e).await {
                Ok(attempts) => {
                    tracing::info!(alert = %name, condition = %e.condition, action = ?e.action, attempts, "alert sent");
                    metrics::counter!("engine_alerts_sent_total", "alert" => name.clone(), "condition" => e.condition.clone())
                        .increment(1);
                }
                Err(why) => {
                    tracing::warn!(alert = %name, condition = %e.condition, error = %why, "alert not delivered");
                    metrics::counter!("engine_alert_failures_total", "alert" => name.clone()).increment(1);
                }
            }
        }
        state.insert(name.clone(), now_open);
    }
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "cannot record which alerts are open");
    }
}

/// A run id: the one `engine serve` gives its runs (`ENGINE_RUN_ID`), else
/// start time and process id, unique on one machine.
pub fn run_id() -> String {
    if let Ok(id) = std::env::var("ENGINE_RUN_ID") {
        if !id.is_empty() && id.len() <= 100 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return id;
        }
        tracing::warn!("ENGINE_RUN_ID is not a run id (letters, digits, `-`, `_`, `.`; at most 100): ignored");
    }
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{ms}-{}", std::process::id())
}
