//! Live figures of a run (`engine run --live FILE`): four times a second,
//! per operator rows in/out/rejected and rows/s, per edge the channel
//! fill, and checkpoints committed, written to FILE as one JSON object
//! (to a temporary file, then renamed: a reader never sees half of one).
//! `engine serve` streams them to the API.
//!
//! Reads the run's shared counters only; never touches the data path, so
//! its cost is one small file write per tick, on the blocking pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use operators::OperatorStats;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime::Live;

pub const TICK: Duration = Duration::from_millis(250);

/// Writes `live` to `path` every [`TICK`] until `stop`; a last write when
/// it stops. A write that fails is logged once and retried at the next tick.
pub fn spawn(
    path: PathBuf,
    run_id: String,
    pipeline: String,
    live: Arc<Live>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut before: Vec<(u64, Instant)> = Vec::new();
        let mut warned = false;
        let tmp = path.with_extension("json.tmp");
        let mut tick = tokio::time::interval(TICK);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            let body = snapshot(&run_id, &pipeline, &live, started, &mut before).to_string();
            // File I/O on the blocking pool, never on a worker the
            // operators run on.
            let (t, p) = (tmp.clone(), path.clone());
            let written =
                tokio::task::spawn_blocking(move || std::fs::write(&t, body).and_then(|_| std::fs::rename(&t, &p)))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written
                && !warned
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot write live figures");
                warned = true;
            }
            if last {
                return;
            }
        }
    })
}

/// The figures now; `before` carries each operator's last count for rates.
pub fn snapshot(
    run_id: &str,
    pipeline: &str,
    live: &Live,
    started: Instant,
    before: &mut Vec<(u64, Instant)>,
) -> serde_json::Value {
    let now = Instant::now();
    let get = OperatorStats::get;
    if before.len() != live.stats.len() {
        *before = vec![(0, started); live.stats.len()];
    }
    let operators: Vec<serde_json::Value> = live
        .stats
        .iter()
        .zip(before.iter_mut())
        .map(|((id, role, s), prev)| {
            let (rows_in, rows_out, rejected) = (get(&s.rows_in), get(&s.rows_out), get(&s.rows_rejected));
            // Sources count what they read, others what they received.
            let moved = if *role == operators::Role::Source { rows_out + rejected } else { rows_in };
            let secs = now.duration_since(prev.1).as_secs_f64();
            let rate = if secs > 0.0 { moved.saturating_sub(prev.0) as f64 / secs } else { 0.0 };
            *prev = (moved, now);
            let mut o = json!({
                "id": id,
                "role": format!("{role:?}").to_lowercase(),
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_rejected": rejected,
                "rows_per_s": (rate * 10.0).round() / 10.0,
            });
            // A queue source's consumer lag (the API serves this file).
            if let Some((messages, bytes)) = s.backlog() {
                o["backlog"] = json!({ "messages": messages, "bytes": bytes });
            }
            o
        })
        .collect();
    let channels: Vec<serde_json::Value> = live
        .channels
        .lock()
        .map(|c| c.iter().map(|(edge, len, cap)| json!({ "edge": edge, "len": len, "capacity": cap })).collect())
        .unwrap_or_default();
    let last_epoch = live.checkpoints.last_epoch.load(Ordering::Relaxed);
    json!({
        "run_id": run_id,
        "pipeline": pipeline,
        "elapsed_ms": now.duration_since(started).as_millis() as u64,
        "ready": live.ready.load(Ordering::Relaxed),
        "operators": operators,
        "channels": channels,
        "checkpoints": {
            "committed": live.checkpoints.committed.load(Ordering::Relaxed),
            "last_epoch": (last_epoch > 0).then_some(last_epoch),
        },
    })
}
