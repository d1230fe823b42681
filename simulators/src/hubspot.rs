//! HubSpot CRM batch API simulator (`engine hubspot-sim`).
//!
//! Serves `POST /crm/v3/objects/contacts/batch/upsert` as HubSpot does:
//! Bearer auth, at most 100 inputs, the whole batch refused when an id
//! repeats, property validation (a 400 for the batch, or a 207 with per-input
//! errors when every input carries an `objectWriteTraceId`), contacts kept
//! by the unique property with upsert semantics, a rolling 10-second window
//! and a daily quota with HubSpot's headers and 429 bodies.
//!
//! Test-only endpoints: `GET /_sim/contacts`, `GET /_sim/stats`,
//! `POST /_sim/consume?n=N` (another client spending the shared limit),
//! `POST /_sim/reset`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Behaviour of one simulator instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The private-app token clients must send as `Bearer`.
    pub token: String,
    /// The property holding each contact's unique id value.
    pub unique_property: String,
    /// Requests allowed per rolling window.
    pub window_requests: u32,
    pub window: Duration,
    /// Requests allowed per day (the simulator's day starts with it).
    pub daily: u64,
    /// Send `Retry-After` with 429s (HubSpot does not always).
    pub retry_after: bool,
    /// Probability of answering 502 instead of processing.
    pub error_rate: f64,
    /// Added to every API answer.
    pub latency: Duration,
    /// Every n-th request stalls for `stall` before answering.
    pub stall_every: Option<u64>,
    pub stall: Duration,
    /// Properties whose values must be numbers.
    pub numeric_properties: Vec<String>,
    /// Property values longer than this are invalid.
    pub max_value_len: usize,
    /// Answer 207 with per-input errors when every input is traced. HubSpot
    /// documents this only loosely for upsert; `false` refuses the whole
    /// batch with 400 instead, the other behaviour clients must survive.
    pub partial_207: bool,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "sim-token".into(),
            unique_property: "baby_key".into(),
            window_requests: 100,
            window: Duration::from_secs(10),
            daily: 250_000,
            retry_after: false,
            error_rate: 0.0,
            latency: Duration::ZERO,
            stall_every: None,
            stall: Duration::from_secs(5),
            numeric_properties: vec!["baby_year".into(), "baby_count".into()],
            max_value_len: 65_536,
            partial_207: true,
            seed: 42,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    pub id: String,
    pub id_value: String,
    pub properties: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    /// How many upserts touched it.
    pub writes: u64,
}

/// The simulator's own accounting, for tests and benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub rate_limited_window: u64,
    pub rate_limited_daily: u64,
    /// Most requests ever admitted within one window: never above the limit.
    pub max_in_window: u64,
    pub inputs_received: u64,
    pub daily_used: u64,
    pub consumed_by_others: u64,
    /// Seconds from the first to the last admitted request.
    pub active_seconds: f64,
}

struct Sim {
    cfg: Config,
    contacts: HashMap<String, Contact>,
    next_id: u64,
    /// Admission times of requests in the current rolling window.
    window: VecDeque<Instant>,
    first_admitted: Option<Instant>,
    stats: Stats,
    rng: rand::rngs::StdRng,
}

type Shared = Arc<Mutex<Sim>>;

/// A running simulator.
pub struct Handle {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn stats(&self) -> Stats {
        self.state.lock().map(|s| s.stats.clone()).unwrap_or_default()
    }
    pub fn contacts(&self) -> Vec<Contact> {
        self.state.lock().map(|s| sorted(&s.contacts)).unwrap_or_default()
    }
    pub fn stop(self) {
        self.task.abort();
    }
}

fn sorted(c: &HashMap<String, Contact>) -> Vec<Contact> {
    let mut v: Vec<Contact> = c.values().cloned().collect();
    v.sort_by(|a, b| a.id_value.cmp(&b.id_value));
    v
}

/// Binds `addr` (port 0 for any) and serves in the background.
pub async fn serve(cfg: Config, addr: SocketAddr) -> std::io::Result<Handle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(Mutex::new(Sim {
        rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
        cfg,
        contacts: HashMap::new(),
        next_id: 1,
        window: VecDeque::new(),
        first_admitted: None,
        stats: Stats::default(),
    }));
    let app = Router::new()
        .route("/crm/v3/objects/contacts/batch/upsert", post(upsert))
        .route("/_sim/contacts", get(contacts))
        .route("/_sim/stats", get(stats))
        .route("/_sim/consume", post(consume))
        .route("/_sim/reset", post(reset))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "hubspot simulator stopped");
        }
    });
    Ok(Handle { addr, state, task })
}

fn now_iso() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{}.{:03}Z", ms / 1000, ms % 1000)
}

fn correlation(rng: &mut rand::rngs::StdRng) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>() & 0xfff,
        rng.random::<u16>() & 0xfff,
        rng.random::<u64>() & 0xffff_ffff_ffff
    )
}

fn error_body(status: &str, message: String, category: &str, correlation_id: String, context: Option<Value>) -> Value {
    let mut v = json!({ "status": status, "message": message, "correlationId": correlation_id, "category": category });
    if let Some(c) = context {
        v["context"] = c;
    }
    v
}

/// Rate-limit headers for an admitted request.
fn limit_headers(s: &Sim) -> HeaderMap {
    let mut h = HeaderMap::new();
    let remaining = (s.cfg.window_requests as usize).saturating_sub(s.window.len());
    let daily_remaining = s.cfg.daily.saturating_sub(s.stats.daily_used);
    for (k, v) in [
        ("x-hubspot-ratelimit-max", s.cfg.window_requests.to_string()),
        ("x-hubspot-ratelimit-remaining", remaining.to_string()),
        ("x-hubspot-ratelimit-interval-milliseconds", s.cfg.window.as_millis().to_string()),
        ("x-hubspot-ratelimit-daily", s.cfg.daily.to_string()),
        ("x-hubspot-ratelimit-daily-remaining", daily_remaining.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    h
}

fn respond(status: StatusCode, headers: HeaderMap, body: Value) -> Response {
    (status, headers, axum::Json(body)).into_response()
}

enum Admission {
    Admitted { stall: bool, fail: bool, latency: Duration },
    Limited(Response),
}

/// Auth is checked by the caller; this applies the window, the daily quota
/// and failure injection, under the lock.
fn admit(s: &mut Sim) -> Admission {
    let now = Instant::now();
    while s.window.front().is_some_and(|t| now.duration_since(*t) >= s.cfg.window) {
        s.window.pop_front();
    }
    if s.stats.daily_used >= s.cfg.daily {
        s.stats.rate_limited_daily += 1;
        let id = correlation(&mut s.rng);
        let mut h = limit_headers(s);
        if s.cfg.retry_after {
            // The day resets at midnight; the simulator's "day" never does.
            h.insert("retry-after", HeaderValue::from_static("86400"));
        }
        let body = json!({"status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT",
            "correlationId": id, "policyName": "DAILY", "groupName": "api-calls-daily"});
        return Admission::Limited(respond(StatusCode::TOO_MANY_REQUESTS, h, body));
    }
    if s.window.len() >= s.cfg.window_requests as usize {
        s.stats.rate_limited_window += 1;
        let id = correlation(&mut s.rng);
        let mut h = limit_headers(s);
        if s.cfg.retry_after {
            let wait =
                s.window.front().map(|t| s.cfg.window.saturating_sub(now.duration_since(*t))).unwrap_or_default();
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                h.insert("retry-after", v);
            }
        }
        let body = json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT", "correlationId": id, "policyName": "TEN_SECONDLY_ROLLING", "groupName": "api-calls"});
        return Admission::Limited(respond(StatusCode::TOO_MANY_REQUESTS, h, body));
    }
    s.window.push_back(now);
    let first = *s.first_admitted.get_or_insert(now);
    s.stats.active_seconds = now.duration_since(first).as_secs_f64();
    s.stats.daily_used += 1;
    s.stats.max_in_window = s.stats.max_in_window.max(s.window.len() as u64);
    let fail = s.cfg.error_rate > 0.0 && s.rng.random::<f64>() < s.cfg.error_rate;
    let stall = s.cfg.stall_every.is_some_and(|n| n > 0 && s.stats.requests % n == 0);
    Admission::Admitted { stall, fail, latency: s.cfg.latency }
}

#[derive(Deserialize)]
struct UpsertBody {
    inputs: Vec<Value>,
}

async fn upsert(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (admission, token_ok, stall_for) = {
        let Ok(mut s) = state.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
        s.stats.requests += 1;
        let expected = format!("Bearer {}", s.cfg.token);
        let token_ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
        let admission = if token_ok { Some(admit(&mut s)) } else { None };
        (admission, token_ok, s.cfg.stall)
    };
    let response = if !token_ok {
        let mut s = state.lock().expect("lock");
        let id = correlation(&mut s.rng);
        respond(
            StatusCode::UNAUTHORIZED,
            HeaderMap::new(),
            error_body("error", "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview".into(), "INVALID_AUTHENTICATION", id, None),
        )
    } else {
        match admission {
            Some(Admission::Limited(r)) => r,
            Some(Admission::Admitted { stall, fail, latency }) => {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                if stall {
                    tokio::time::sleep(stall_for).await;
                }
                if fail {
                    let mut s = state.lock().expect("lock");
                    let id = correlation(&mut s.rng);
                    let h = limit_headers(&s);
                    respond(
                        StatusCode::BAD_GATEWAY,
                        h,
                        error_body("error", "internal error".into(), "INTERNAL_ERROR", id, None),
                    )
                } else {
                    process(&state, &body)
                }
            }
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    if let Ok(mut s) = state.lock() {
        *s.stats.by_status.entry(response.status().as_u16()).or_default() += 1;
    }
    response
}

/// Validates and applies an admitted upsert.
fn process(state: &Shared, body: &str) -> Response {
    let Ok(mut s) = state.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let headers = limit_headers(&s);
    let id = correlation(&mut s.rng);
    let parsed: UpsertBody = match serde_json::from_str(body) {
        Ok(b) => b,
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                headers,
                error_body("error", format!("Invalid input JSON on line 1: {e}"), "VALIDATION_ERROR", id, None),
            );
        }
    };
    s.stats.inputs_received += parsed.inputs.len() as u64;
    if parsed.inputs.len() > 100 {
        return respond(
            StatusCode::BAD_REQUEST,
            headers,
            error_body(
                "error",
                format!(
                    "The maximum number of inputs supported in a batch is 100. Received {} inputs.",
                    parsed.inputs.len()
                ),
                "VALIDATION_ERROR",
                id,
                None,
            ),
        );
    }
    // The whole batch fails on a repeated id.
    let ids: Vec<String> = parsed.inputs.iter().map(|i| i["id"].as_str().unwrap_or_default().to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<String> = ids.iter().filter(|i| !seen.insert(i.as_str())).cloned().collect();
    if !dups.is_empty() {
        return respond(
            StatusCode::BAD_REQUEST,
            headers,
            error_body(
                "error",
                format!("Duplicate IDs found in batch input: {dups:?}. IDs must be unique"),
                "VALIDATION_ERROR",
                id,
                Some(json!({ "ids": dups })),
            ),
        );
    }
    // Per-input validation.
    let mut problems: Vec<(usize, String)> = Vec::new();
    for (n, input) in parsed.inputs.iter().enumerate() {
        if input["id"].as_str().is_none_or(str::is_empty) {
            problems.push((n, "id is required".into()));
            continue;
        }
        if input["idProperty"].as_str() != Some(s.cfg.unique_property.as_str()) {
            problems.push((n, format!("idProperty must be the unique property {}", s.cfg.unique_property)));
            continue;
        }
        let Some(props) = input["properties"].as_object() else {
            problems.push((n, "properties must be an object".into()));
            continue;
        };
        for (k, v) in props {
            let Some(text) = v.as_str() else {
                problems.push((n, format!("{k} must be a string")));
                break;
            };
            if s.cfg.numeric_properties.contains(k) && text.parse::<f64>().is_err() {
                problems.push((n, format!("{text} was not a valid number for property {k}")));
                break;
            }
            if text.len() > s.cfg.max_value_len {
                problems.push((n, format!("{k} is longer than {} characters", s.cfg.max_value_len)));
                break;
            }
        }
    }
    let traced = s.cfg.partial_207 && parsed.inputs.iter().all(|i| i["objectWriteTraceId"].as_str().is_some());
    if !problems.is_empty() && !traced {
        let msgs: Vec<String> = problems.iter().map(|(_, m)| m.clone()).collect();
        return respond(
            StatusCode::BAD_REQUEST,
            headers,
            error_body("error", format!("Property values were not valid: {msgs:?}"), "VALIDATION_ERROR", id, None),
        );
    }
    let started = now_iso();
    let mut results = Vec::new();
    for (n, input) in parsed.inputs.iter().enumerate() {
        if problems.iter().any(|(p, _)| *p == n) {
            continue;
        }
        let id_value = input["id"].as_str().unwrap_or_default().to_string();
        let props: BTreeMap<String, String> = input["properties"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let now = now_iso();
        let is_new = !s.contacts.contains_key(&id_value);
        let next_id = s.next_id;
        let unique = s.cfg.unique_property.clone();
        let c = s.contacts.entry(id_value.clone()).or_insert_with(|| Contact {
            id: next_id.to_string(),
            id_value: id_value.clone(),
            properties: BTreeMap::new(),
            created_at: now.clone(),
            updated_at: now.clone(),
            writes: 0,
        });
        c.properties.extend(props);
        c.properties.insert(unique, id_value.clone());
        c.updated_at = now;
        c.writes += 1;
        let result = json!({ "id": c.id, "properties": c.properties, "createdAt": c.created_at, "updatedAt": c.updated_at, "archived": false, "new": is_new });
        if is_new {
            s.next_id += 1;
        }
        results.push(result);
    }
    let completed = now_iso();
    if problems.is_empty() {
        return respond(
            StatusCode::OK,
            headers,
            json!({ "status": "COMPLETE", "results": results, "startedAt": started, "completedAt": completed }),
        );
    }
    let errors: Vec<Value> = problems
        .iter()
        .map(|(n, m)| {
            let trace = parsed.inputs[*n]["objectWriteTraceId"].as_str().unwrap_or_default();
            json!({ "status": "error", "category": "VALIDATION_ERROR", "message": format!("Property values were not valid: {m}"),
                "context": { "objectWriteTraceId": [trace] }, "errors": [{ "message": m, "code": "INVALID_PROPERTY", "in": "properties" }] })
        })
        .collect();
    respond(
        StatusCode::MULTI_STATUS,
        headers,
        json!({ "status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors, "startedAt": started, "completedAt": completed }),
    )
}

async fn contacts(State(state): State<Shared>) -> Response {
    let v = state.lock().map(|s| sorted(&s.contacts)).unwrap_or_default();
    axum::Json(v).into_response()
}

async fn stats(State(state): State<Shared>) -> Response {
    let v = state.lock().map(|s| s.stats.clone()).unwrap_or_default();
    axum::Json(v).into_response()
}

#[derive(Deserialize)]
struct ConsumeQuery {
    n: u32,
}

/// Another client of the same account spends `n` requests of the window.
async fn consume(State(state): State<Shared>, Query(q): Query<ConsumeQuery>) -> Response {
    let Ok(mut s) = state.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let now = Instant::now();
    for _ in 0..q.n {
        s.window.push_back(now);
        s.stats.daily_used += 1;
        s.stats.consumed_by_others += 1;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<Shared>) -> Response {
    if let Ok(mut s) = state.lock() {
        s.contacts.clear();
        s.window.clear();
        s.stats = Stats::default();
        s.first_admitted = None;
        s.next_id = 1;
    }
    StatusCode::NO_CONTENT.into_response()
}
