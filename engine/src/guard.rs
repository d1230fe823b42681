//! The mass-delete guard: a run that would delete more than a sink's
//! `max_delete_ratio` of what it holds is refused before it writes anything
//! anywhere.
//!
//! Deleted keys are known only once the whole input was read (`changes`
//! names them at its end), while upserts stream out long before. So when a
//! run could delete (a sink reads `deletes` and a completed run left state
//! to compare with), a dry run ([`crate::runtime::plan`]) counts first; the
//! real run starts only if every sink is within its limit. A resumed run
//! already passed the guard when it started. Owns the decision, not the
//! counting (sinks do that in `Operator::plan`).

use std::sync::Arc;

use crate::checkpoint::Session;
use crate::config::Pipeline;
use crate::report::thousands;
use crate::runtime::{self, Control, Outcome, RunReport};

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refusing to run pipeline {pipeline}: {}\nnothing was written. If the input really lost those rows, run again with --allow-mass-delete; `engine run --dry-run {file}` shows examples",
        sinks.join("; ")
    )]
    MassDelete { pipeline: String, file: String, sinks: Vec<String> },
    #[error(
        "operator `{operator}` failed: {error} (while counting deletions for the mass-delete guard, before the run)"
    )]
    PlanFailed { operator: String, error: String },
}

/// Whether `p` needs the guard's dry run before this session's run.
pub fn needed(p: &Pipeline, session: Option<&Session>) -> bool {
    let Some(s) = session else { return false };
    let deletes = p.components.iter().any(|c| c.inputs.iter().any(|i| i.deletes));
    deletes && s.resume.is_none() && s.carried.is_some()
}

/// Runs the dry run and refuses when a sink would delete too much. Returns
/// the plan's report when the run may go ahead (it says, e.g., that the
/// input is up to date).
pub async fn check(p: &Pipeline, control: Control, session: Arc<Session>) -> Result<RunReport, Refusal> {
    tracing::info!("this run may delete: counting deletions first (mass-delete guard)");
    let report = runtime::plan(p, control, Some(session), false).await;
    match &report.outcome {
        Outcome::Completed => {}
        Outcome::Failed { operator, error } => {
            return Err(Refusal::PlanFailed { operator: operator.clone(), error: error.clone() });
        }
        // A partial count proves nothing: no run.
        Outcome::Interrupted { signal } | Outcome::Aborted { signal } => {
            return Err(Refusal::PlanFailed {
                operator: "<guard>".into(),
                error: format!("stopped by {signal} before every deletion was counted"),
            });
        }
    }
    let sinks: Vec<String> = report
        .plans
        .iter()
        .filter_map(|(id, plan)| {
            let (deletes, holds, max) = plan.guard_exceeded()?;
            let share = if holds == 0 { 100.0 } else { deletes as f64 * 100.0 / holds as f64 };
            Some(format!(
                "sink `{id}` would delete {} of the {} records it holds ({share:.1}%), more than max_delete_ratio = {max}",
                thousands(deletes),
                thousands(holds)
            ))
        })
        .collect();
    if sinks.is_empty() {
        return Ok(report);
    }
    Err(Refusal::MassDelete { pipeline: p.name.clone(), file: p.file.display().to_string(), sinks })
}
