//! The HTTP API, JSON under `/api/`, described by `/api/openapi.json`
//! (`openapi.json` beside this file; a test checks that it and [`ROUTES`]
//! name the same operations, another walks it against a live service).
//!
//! Reads are open (the service listens on 127.0.0.1 by default); calls
//! that start or stop runs need `Authorization: Bearer <--api-token>`, and
//! are refused when the service has no token.
//!
//! Owns request parsing and response shapes; runs start and stop only
//! through the supervisor.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::runs::{StopError, Supervisor, Trigger, TriggerError, Triggered};
use crate::scheduler::Scheduler;

/// Every operation served: (method, path). The OpenAPI document names
/// exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/health"),
    ("get", "/api/openapi.json"),
    ("get", "/api/pipelines"),
    ("get", "/api/pipelines/{name}"),
    ("get", "/api/pipelines/{name}/graph"),
    ("get", "/api/pipelines/{name}/checkpoints"),
    ("get", "/api/pipelines/{name}/rejects"),
    ("post", "/api/pipelines/{name}/runs"),
    ("post", "/api/pipelines/{name}/replay"),
    ("get", "/api/runs"),
    ("get", "/api/runs/{id}"),
    ("post", "/api/runs/{id}/stop"),
    ("get", "/api/runs/{id}/log"),
    ("get", "/api/runs/{id}/log/follow"),
    ("get", "/api/runs/{id}/live"),
];

/// The OpenAPI 3.1 document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How often live figures and followed logs are read (4 per second).
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Api {
    pub sup: Arc<Supervisor>,
    pub sched: Arc<Scheduler>,
    pub token: Option<String>,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/api/openapi.json", get(openapi))
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}", get(pipeline))
        .route("/api/pipelines/{name}/graph", get(graph))
        .route("/api/pipelines/{name}/checkpoints", get(checkpoints))
        .route("/api/pipelines/{name}/rejects", get(rejects))
        .route("/api/pipelines/{name}/runs", post(trigger))
        .route("/api/pipelines/{name}/replay", post(replay))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/stop", post(stop))
        .route("/api/runs/{id}/log", get(log))
        .route("/api/runs/{id}/log/follow", get(log_follow))
        .route("/api/runs/{id}/live", get(live))
        .route("/metrics", get(metrics))
        .merge(crate::console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route; see /api/openapi.json") })
        .with_state(api)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Prometheus text for the runs of every pipeline in the history and the
/// pipelines served: `engine_runs_total{pipeline,outcome}` (runs ended),
/// `engine_run_last_success_timestamp_seconds{pipeline}` (end of the newest
/// completed or up-to-date run), `engine_run_last_failure_timestamp_seconds`
/// (newest failed, killed, timeout, invalid or lost run),
/// `engine_run_running{pipeline}` and `engine_pipeline_info{pipeline,schedule}`.
async fn metrics(State(api): State<Api>) -> Response {
    let rows = match api.sup.history().outcomes().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    fn label(v: &str) -> String {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }
    let mut runs = String::new();
    let mut success: std::collections::BTreeMap<&str, i64> = Default::default();
    let mut failure: std::collections::BTreeMap<&str, i64> = Default::default();
    for (pipeline, outcome, count, ended) in &rows {
        if outcome == "running" {
            continue;
        }
        runs.push_str(&format!(
            "engine_runs_total{{pipeline=\"{}\",outcome=\"{}\"}} {count}\n",
            label(pipeline),
            label(outcome)
        ));
        let last = match outcome.as_str() {
            "completed" | "up_to_date" => &mut success,
            "failed" | "killed" | "timeout" | "invalid" | "lost" => &mut failure,
            _ => continue,
        };
        if let Some(ended) = ended {
            let t = last.entry(pipeline).or_insert(*ended);
            *t = (*t).max(*ended);
        }
    }
    let mut out = String::from(
        "# HELP engine_runs_total Runs ended, per pipeline and outcome.\n# TYPE engine_runs_total counter\n",
    );
    out.push_str(&runs);
    for (name, help, last) in [
        ("engine_run_last_success_timestamp_seconds", "End of the newest completed (or up-to-date) run.", &success),
        (
            "engine_run_last_failure_timestamp_seconds",
            "End of the newest failed, killed, timed-out, invalid or lost run.",
            &failure,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (pipeline, ms) in last {
            out.push_str(&format!("{name}{{pipeline=\"{}\"}} {}\n", label(pipeline), *ms as f64 / 1000.0));
        }
    }
    let defs = api.sup.defs();
    out.push_str(
        "# HELP engine_run_running Whether a run of the pipeline is going.\n# TYPE engine_run_running gauge\n",
    );
    for d in &defs {
        let running = u8::from(api.sup.running(&d.name).is_some());
        out.push_str(&format!("engine_run_running{{pipeline=\"{}\"}} {running}\n", label(&d.name)));
    }
    out.push_str("# HELP engine_pipeline_info The pipelines served, with their schedule (empty: none).\n# TYPE engine_pipeline_info gauge\n");
    for d in &defs {
        let cron = d.schedule.as_ref().map(|s| s.cron.as_str()).unwrap_or("");
        out.push_str(&format!(
            "engine_pipeline_info{{pipeline=\"{}\",schedule=\"{}\"}} 1\n",
            label(&d.name),
            label(cron)
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `None` when the caller may mutate; else the refusal.
fn refuse(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &api.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "starting and stopping runs is disabled: start `engine serve` with --api-token (or ENGINE_API_TOKEN)",
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => None,
        Some(_) => Some(unauthorized("the bearer token is not the service's")),
        None => Some(unauthorized("this call needs `Authorization: Bearer <token>`")),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn pipeline_json(api: &Api, def: &crate::PipelineDef) -> Value {
    let last = api.sup.history().list(Some(&def.name), 1).await.ok().and_then(|mut v| v.pop());
    // The last reload's errors about this pipeline's file.
    let file = def.file.display().to_string();
    let reload_error =
        api.sup.reload_error().filter(|(_, e)| e.contains(&file)).map(|(at, e)| json!({ "at_ms": at, "error": e }));
    json!({
        "reload_error": reload_error,
        "name": def.name,
        "file": def.file.display().to_string(),
        "description": def.description,
        "schedule": def.schedule,
        "next_fire_times": api.sched.upcoming(def, 5),
        "running": api.sup.running(&def.name),
        "busy": api.sup.busy(&def.name),
        "last_run": last,
    })
}

async fn pipelines(State(api): State<Api>) -> Response {
    let mut out = Vec::new();
    for d in api.sup.defs() {
        out.push(pipeline_json(&api, &d).await);
    }
    let reload_error = api.sup.reload_error().map(|(at, e)| json!({ "at_ms": at, "error": e }));
    Json(json!({ "pipelines": out, "reload_error": reload_error })).into_response()
}

async fn pipeline(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.sup.def(&name) {
        Some(d) => Json(pipeline_json(&api, &d).await).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")),
    }
}

async fn graph(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.sup.def(&name) {
        Some(d) => Json(d.graph.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")),
    }
}

async fn checkpoints(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.sup.checkpoints(&name).await {
        Ok(text) => Json(json!({ "pipeline": name, "text": text })).into_response(),
        Err(e @ TriggerError::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(TriggerError::Busy { run_id, .. }) => error(
            StatusCode::CONFLICT,
            format!("run {run_id} holds the checkpoint store; its checkpoints are on its live feed"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectsQuery {
    operator: Option<String>,
    rule: Option<String>,
    /// Text to find in the reason, the value or the raw row.
    q: Option<String>,
    /// Only rows a replay took (`true`) or did not take (`false`).
    replayed: Option<bool>,
    /// The rejects that completed run wrote (kept by the service), instead
    /// of the files as they are now.
    run: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// Rejected rows read from a rejects family stop here: a page is for people.
const REJECTS_READ_MAX: usize = 200_000;

/// What the pipeline's rejects families hold (the last run's rejects and
/// each replay's), with the ledger's word on each row: counts by operator,
/// rule and reason, one filtered page, the rows a replay would take, and
/// the replays so far.
async fn rejects(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<RejectsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let mains = match api.sup.rejects_files(&name) {
        None => return error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")),
        Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Some(Ok(f)) => f,
    };
    let kept = match &q.run {
        Some(id) if !is_run_id(id) => return error(StatusCode::BAD_REQUEST, format!("`{id}` is not a run id")),
        Some(id) => {
            let files = api.sup.run_rejects(&name, id);
            if files.is_empty() {
                return error(StatusCode::NOT_FOUND, format!("no rejects kept for run {id} of `{name}`"));
            }
            Some(files)
        }
        None => None,
    };
    let fam = match read_rejects_blocking(mains, kept).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut counts: std::collections::BTreeMap<(&str, &str, &str), u64> = Default::default();
    for r in &fam.rows {
        *counts.entry((&r.reject.operator, &r.reject.rule, &r.reject.reason)).or_default() += 1;
    }
    let needle = q.q.as_deref().map(str::to_lowercase).filter(|n| !n.is_empty());
    let filter = replays::Filter { operator: q.operator.clone(), rule: q.rule.clone(), column: None };
    let matching: Vec<&replays::Row> = fam
        .rows
        .iter()
        .filter(|r| filter.matches(&r.reject))
        .filter(|r| q.replayed.is_none_or(|want| want == r.replayed_by.is_some()))
        .filter(|r| {
            needle.as_ref().is_none_or(|n| {
                let x = &r.reject;
                [Some(&x.reason), x.value.as_ref(), x.raw.as_ref(), x.column.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|t| t.to_lowercase().contains(n.as_str()))
            })
        })
        .collect();
    let replayable = fam.rows.iter().filter(|r| filter.matches(&r.reject) && replayable(r)).count();
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(50).clamp(1, 500));
    Json(json!({
        "pipeline": name,
        "files": fam.files.iter().map(|(f, by)| json!({ "path": f.display().to_string(), "written_by": by })).collect::<Vec<_>>(),
        "total": fam.rows.len(),
        "truncated": fam.truncated,
        "counts": counts.iter().map(|((o, r, why), n)| json!({ "operator": o, "rule": r, "reason": why, "rows": n })).collect::<Vec<_>>(),
        "matching": matching.len(),
        "replayable": replayable,
        "offset": offset,
        "rows": matching.iter().skip(offset).take(limit).collect::<Vec<_>>(),
        "replays": fam.replays,
        "run": q.run,
        "runs": api.sup.runs_with_rejects(&name).into_iter().take(50).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Run ids are `<ms>-<pid>-<n>`: letters, digits, `-`, `_`, `.` (never a
/// path).
fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A row a replay would take: nobody took it, and its text was kept.
fn replayable(r: &replays::Row) -> bool {
    r.replayed_by.is_none() && r.reject.raw.is_some()
}

struct Rejects {
    files: Vec<(std::path::PathBuf, Option<String>)>,
    rows: Vec<replays::Row>,
    truncated: bool,
    replays: Vec<Value>,
}

/// [`read_rejects`] on the blocking pool; an error as the response.
async fn read_rejects_blocking(
    mains: Vec<std::path::PathBuf>,
    kept: Option<Vec<std::path::PathBuf>>,
) -> Result<Rejects, Response> {
    match tokio::task::spawn_blocking(move || read_rejects(&mains, kept.as_deref())).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// A POST body: empty means the defaults; otherwise JSON of `T`, or a 400
/// that shows `example`.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8], example: &str) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body must be JSON like {example}: {e}")))
}

/// Who asked, as the history keeps it: no control characters, at most 100.
fn who(by: Option<String>) -> Option<String> {
    by.map(|b| b.chars().filter(|c| !c.is_control()).take(100).collect())
}

/// Reads the families of `mains`, or (`kept`) the files kept for a run,
/// with the families' ledgers (blocking file reads).
fn read_rejects(mains: &[std::path::PathBuf], kept: Option<&[std::path::PathBuf]>) -> Result<Rejects, replays::Error> {
    let mut out = Rejects { files: Vec::new(), rows: Vec::new(), truncated: false, replays: Vec::new() };
    let mut ledgers = Vec::new();
    for main in mains {
        let fam = replays::Family::new(main);
        let ledger = replays::Ledger::read(&fam.ledger_path())?;
        for s in ledger.started() {
            let end = ledger.finished(&s.replay);
            out.replays.push(json!({
                "replay": s.replay,
                "at_ms": s.at_ms,
                "filter": s.filter,
                "source": s.source,
                "sink": s.sink,
                "rows": s.rows.len(),
                "finished": end.is_some(),
                "rejected_again": end.map(|e| e.rejected_again),
            }));
        }
        ledgers.push((fam, ledger));
    }
    let mut take = |row: replays::Row| {
        if out.rows.len() >= REJECTS_READ_MAX {
            out.truncated = true;
            return false;
        }
        out.rows.push(row);
        true
    };
    match kept {
        // A run's files: what the ledger of the family says of each row.
        Some(files) => {
            let empty = replays::Ledger::default();
            let ledger = ledgers.first().map(|(_, l)| l).unwrap_or(&empty);
            for f in files {
                out.files.push((f.clone(), None));
                if !replays::read_file(f, None, ledger, &mut take)? {
                    break;
                }
            }
        }
        None => {
            for (fam, ledger) in &ledgers {
                out.files.extend(fam.files()?);
                fam.for_each(ledger, &mut take)?;
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    operator: Option<String>,
    rule: Option<String>,
    column: Option<String>,
    /// Who asks, for the history.
    by: Option<String>,
}

/// Starts `engine replay` of the rejects that match, as a run of the
/// pipeline (one at a time with its other runs).
async fn replay(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&api, &headers) {
        return r;
    }
    let body: ReplayBody = match json_body(&body, r#"{"operator": "valid", "rule": "one_of"}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mains = match api.sup.rejects_files(&name) {
        None => return error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")),
        Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Some(Ok(f)) => f,
    };
    let filter = replays::Filter { operator: body.operator, rule: body.rule, column: body.column };
    let fam = match read_rejects_blocking(mains, None).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let pending = fam.replays.iter().any(|r| r["finished"] == false);
    let rows = fam.rows.iter().filter(|r| filter.matches(&r.reject) && replayable(r)).count();
    if rows == 0 && !pending {
        let matched = fam.rows.iter().filter(|r| filter.matches(&r.reject)).count();
        return error(
            StatusCode::CONFLICT,
            format!("nothing to replay ({filter}): {matched} rejected rows match, none that a replay has not taken"),
        );
    }
    let by = who(body.by);
    let trigger = Trigger { by: by.or(Some("api".into())), replay: Some(filter.clone()), ..Trigger::new("replay") };
    match api.sup.trigger(&name, trigger, false) {
        Ok(Triggered::Started { run_id }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "pipeline": name, "filter": filter.to_string(), "rows": rows, "links": { "run": format!("/api/runs/{run_id}"), "live": format!("/api/runs/{run_id}/live") } })),
        )
            .into_response(),
        Ok(Triggered::Queued { .. }) => error(StatusCode::INTERNAL_SERVER_ERROR, "a replay is never queued"),
        Err(e) => trigger_error(e),
    }
}

fn trigger_error(e: TriggerError) -> Response {
    match e {
        e @ TriggerError::Unknown(_) => error(StatusCode::NOT_FOUND, e),
        TriggerError::Busy { pipeline, run_id } => (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("pipeline `{pipeline}` is running ({run_id}); one run at a time"), "running": run_id })),
        )
            .into_response(),
        e @ TriggerError::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    /// Who asks, for the history.
    by: Option<String>,
}

async fn trigger(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&api, &headers) {
        return r;
    }
    let body: TriggerBody = match json_body(&body, r#"{"by": "alice"}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let by = who(body.by);
    match api.sup.trigger(&name, Trigger { by: by.or(Some("api".into())), ..Trigger::new("api") }, false) {
        Ok(Triggered::Started { run_id }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "pipeline": name, "links": { "run": format!("/api/runs/{run_id}"), "live": format!("/api/runs/{run_id}/live") } })),
        )
            .into_response(),
        Ok(Triggered::Queued { behind }) => {
            (StatusCode::ACCEPTED, Json(json!({ "queued_behind": behind, "pipeline": name }))).into_response()
        }
        Err(e) => trigger_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    pipeline: Option<String>,
    outcome: Option<String>,
    trigger: Option<String>,
    limit: Option<u32>,
}

async fn runs(
    State(api): State<Api>,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let f = history::Filter {
        pipeline: q.pipeline,
        outcome: q.outcome,
        trigger: q.trigger,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    match api.sup.history().find(&f).await {
        Ok(rows) => Json(json!({ "runs": rows })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn run(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.sup.history().get(&id).await {
        Ok(Some(r)) => {
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            v["live"] = json!(api.sup.running_run(&id));
            v["log"] = json!(format!("/api/runs/{id}/log"));
            Json(v).into_response()
        }
        Ok(None) => match api.sup.running_run(&id) {
            // Started, not yet recorded by its process.
            Some(r) => {
                Json(json!({ "id": id, "pipeline": r.pipeline, "outcome": "starting", "live": r })).into_response()
            }
            None => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn stop(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&api, &headers) {
        return r;
    }
    match api.sup.stop(&id) {
        Ok(r) => (StatusCode::ACCEPTED, Json(json!({ "stopping": r.run_id, "pipeline": r.pipeline }))).into_response(),
        Err(e @ StopError::NotRunning(_)) => {
            let known = matches!(api.sup.history().get(&id).await, Ok(Some(_)));
            error(if known { StatusCode::CONFLICT } else { StatusCode::NOT_FOUND }, e)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    tail: Option<usize>,
}

/// The last `tail` lines of `text`.
fn tail_lines(text: &str, n: usize) -> &str {
    let mut idx = text.len();
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut count = 0;
    for (i, _) in body.rmatch_indices('\n') {
        count += 1;
        if count == n {
            idx = i + 1;
            break;
        }
    }
    if count < n { text } else { &text[idx..] }
}

async fn log(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match tokio::fs::read(api.sup.log_path(&id)).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let out = tail_lines(&text, q.tail.unwrap_or(200).clamp(1, 100_000)).to_string();
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response()
        }
        Err(_) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no log for run `{id}` (runs started by `engine serve` have one; old ones are deleted after the retention)"
            ),
        ),
    }
}

fn sse(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// The log as Server-Sent Events: the last 100 lines, then each new line
/// (`event: log`), then `event: end` once the run is over.
async fn log_follow(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let path = api.sup.log_path(&id);
    if !path.exists() {
        return error(StatusCode::NOT_FOUND, format!("no log for run `{id}`"));
    }
    struct S {
        api: Api,
        id: String,
        path: std::path::PathBuf,
        offset: usize,
        first: bool,
        pending: std::collections::VecDeque<String>,
        done: bool,
    }
    let st = S { api, id, path, offset: 0, first: true, pending: Default::default(), done: false };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok(Event::default().event("log").data(line)), st));
            }
            if st.done {
                return None;
            }
            if !st.first {
                tokio::time::sleep(TICK).await;
            }
            let running = st.api.sup.running_run(&st.id).is_some();
            let bytes = tokio::fs::read(&st.path).await.unwrap_or_default();
            // Whole lines only; a half-written last line waits.
            let end = bytes[st.offset.min(bytes.len())..].iter().rposition(|b| *b == b'\n').map(|p| st.offset + p + 1);
            if let Some(end) = end {
                let text = String::from_utf8_lossy(&bytes[st.offset..end]).into_owned();
                let text = if st.first { tail_lines(&text, 100).to_string() } else { text };
                st.pending.extend(text.lines().map(str::to_string));
                st.offset = end;
            }
            st.first = false;
            if st.pending.is_empty() && !running {
                st.done = true;
                return Some((Ok(Event::default().event("end").data("{}")), st));
            }
        }
    });
    sse(stream)
}

/// Live figures of a running run as Server-Sent Events (`event: figures`,
/// 4 per second), then `event: end` with the run's history row.
async fn live(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if api.sup.running_run(&id).is_none() {
        return match api.sup.history().get(&id).await {
            Ok(Some(r)) => sse(futures::stream::iter([Ok(Event::default()
                .event("end")
                .data(serde_json::to_string(&r).unwrap_or_default()))])),
            _ => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        };
    }
    let path = api.sup.live_path(&id);
    let stream =
        futures::stream::unfold((api, id, path, String::new(), false), |(api, id, path, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let running = api.sup.running_run(&id).is_some();
                if !running {
                    let row = api.sup.history().get(&id).await.ok().flatten();
                    let data = serde_json::to_string(&row).unwrap_or_default();
                    return Some((Ok(Event::default().event("end").data(data)), (api, id, path, last, true)));
                }
                let now = tokio::fs::read_to_string(&path).await.unwrap_or_default();
                if !now.is_empty() && now != last {
                    return Some((
                        Ok(Event::default().event("figures").data(now.trim_end())),
                        (api, id, path, now, false),
                    ));
                }
                tokio::time::sleep(TICK).await;
            }
        });
    sse(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_exactly_the_served_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "an OpenAPI 3.1 document");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                documented.push((method.clone(), path.clone()));
                assert!(op["operationId"].is_string(), "{method} {path}: operationId");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: responses");
                // Every {param} of the path is declared.
                for seg in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = seg.trim_matches(|c| c == '{' || c == '}');
                    let declared = item["parameters"]
                        .as_array()
                        .into_iter()
                        .chain(op["parameters"].as_array())
                        .flatten()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
                    assert!(declared, "{method} {path}: path parameter `{name}` declared as required");
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        served.sort();
        assert_eq!(documented, served);
        // Every $ref points at something that exists.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local $ref");
            assert!(doc.pointer(pointer).is_some(), "$ref {r} resolves");
        }
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 1), "c");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
