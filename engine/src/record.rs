//! The run history of `engine run --state DIR`: a row when the run starts,
//! its outcome and figures when it ends, and earlier runs whose process is
//! gone marked `lost`. Writing history never fails a run: a problem is
//! logged and the run goes on. The schema and queries are the `history`
//! crate's.

use std::path::Path;

use history::{Finished, History, Started};

use crate::config::Pipeline;
use crate::runtime::{Outcome, RunReport};

/// Opens the history and records the start of run `id`; None (logged) when
/// the history cannot be written.
/// `trigger` is what started the run unless `ENGINE_TRIGGER` says (a
/// service starting it does).
pub async fn start(dir: &Path, p: &Pipeline, id: &str, resumed_from: Option<u64>, trigger: &str) -> Option<History> {
    let h = match History::open(dir).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "run history unavailable; the run goes on without it");
            return None;
        }
    };
    match h.mark_lost(&history::process_alive).await {
        Ok(lost) if !lost.is_empty() => {
            tracing::warn!(runs = ?lost, "earlier runs ended without a word (killed): recorded as lost")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot check the history for lost runs"),
    }
    let started = Started {
        id: id.to_string(),
        pipeline: p.name.clone(),
        trigger: std::env::var("ENGINE_TRIGGER").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| trigger.into()),
        by: std::env::var("ENGINE_TRIGGERED_BY").ok().filter(|b| !b.is_empty()).or_else(|| std::env::var("USER").ok()),
        started_at_ms: now_ms(),
        pid: std::process::id(),
        resumed_from,
    };
    if let Err(e) = h.started(&started).await {
        tracing::warn!(error = %e, "cannot record the run's start");
    }
    Some(h)
}

/// Records how run `id` ended.
pub async fn finish(h: History, id: &str, report: &RunReport) {
    let (outcome, failed_operator, error) = match &report.outcome {
        Outcome::Completed if report.up_to_date.is_some() => ("up_to_date", None, None),
        Outcome::Completed => ("completed", None, None),
        Outcome::Interrupted { signal: crate::runtime::TIMEOUT } => ("timeout", None, None),
        Outcome::Interrupted { .. } => ("interrupted", None, None),
        Outcome::Aborted { .. } => ("aborted", None, None),
        Outcome::Failed { operator, error } => ("failed", Some(operator.clone()), Some(error.clone())),
    };
    let operators: Vec<serde_json::Value> = report
        .operators
        .iter()
        .map(|o| {
            serde_json::json!({
                "id": o.id, "kind": o.kind, "rows_in": o.rows_in, "rows_out": o.rows_out,
                "rows_rejected": o.rows_rejected, "rows_dropped": o.rows_dropped,
                "elapsed_ms": o.elapsed.as_millis() as u64,
            })
        })
        .collect();
    let checkpoints = report.checkpoints.as_ref();
    let f = Finished {
        ended_at_ms: now_ms(),
        outcome: outcome.into(),
        exit_code: report.outcome.exit_code(),
        failed_operator,
        error: error.map(|e| secrets::redact::redact(&e).into_owned()),
        checkpoints: checkpoints.map(|c| c.committed).unwrap_or(0),
        rows_read: report.operators.iter().filter(|o| o.role == operators::Role::Source).map(|o| o.rows_out).sum(),
        rows_rejected: report.operators.iter().map(|o| o.rows_rejected).sum(),
        report: serde_json::json!({
            "operators": operators,
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "peak_rss_bytes": report.peak_rss_bytes,
            "resumed_from": checkpoints.and_then(|c| c.resumed_from),
            "last_checkpoint": checkpoints.and_then(|c| c.last),
            "hubspot_daily_quota": report
                .operators
                .iter()
                .filter(|o| o.kind == "hubspot")
                .filter_map(|o| o.daily_quota)
                .reduce(f64::max),
        }),
    };
    if let Err(e) = h.finished(id, &f).await {
        tracing::warn!(error = %e, "cannot record how the run ended");
    }
    h.close().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
