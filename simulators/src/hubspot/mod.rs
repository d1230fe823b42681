//! HubSpot CRM API simulator (`engine hubspot-sim`), as strict as the real
//! API for what the engine uses, so that what passes here passes there.
//!
//! This file owns the public API (`Config`, `serve`, `Handle`, `Stats`,
//! `Contact`), the shared state, and the dispatcher: routing of the
//! `/crm/v3/…` paths and their date-versioned twins (`/crm/objects/2026-03/…`,
//! `/crm/properties/2026-09/…`), Bearer auth, rate limiting, failure
//! injection (502, 423 on writes, latency, stalls), JSON 404/405 for
//! anything else, and the test hooks under `/_sim/`:
//!
//! - `GET /_sim/contacts`, `/_sim/archived`, `/_sim/properties`, `/_sim/stats`
//! - `POST /_sim/consume?n=N`: another client spends N requests of the limits
//! - `POST /_sim/reset`: no records, fresh statistics, HubSpot's default
//!   properties only
//! - `POST /_sim/refuse {"ids":[…]}` / `DELETE /_sim/refuse`: refuse upsert
//!   inputs with these id values (a per-input VALIDATION_ERROR) until cleared
//! - `POST /_sim/token {"token":"…"}`: the private app's token is rotated;
//!   the old one is refused (401) from now on
//!
//! The other files: `wire.rs` (error bodies, timestamps), `limits.rs` (rate
//! limits and the daily reset in a time zone), `defs.rs` (property
//! definitions, HubSpot's defaults), `properties.rs` (property catalog and
//! properties API), `values.rs` (checks of property values), `objects.rs`
//! (records, upsert, read, get, archive), `search.rs` (search).
//!
//! Only contacts are simulated; other object types answer 404. Batch
//! create/update, list and single-record writes are not simulated (404).
//! Version `2026-09`'s portal validation rules are not simulated: both
//! date versions behave like `v3`.

mod defs;
mod limits;
mod objects;
mod properties;
mod search;
mod values;
mod wire;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use defs::{PropertyDef, PropertyGroup, PropertyOption, PropertyType, babynames_properties};

use limits::Limits;
use objects::Store;
use properties::{Catalog, PropertiesEndpoint};
use wire::{ApiError, Reply, correlation};

/// Behaviour of one simulator instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The private-app token clients must send as `Bearer`.
    pub token: String,
    /// The property whose value `Contact::id_value` reports.
    pub unique_property: String,
    /// Requests allowed per rolling window.
    pub window_requests: u32,
    pub window: Duration,
    /// Requests allowed per day.
    pub daily: u64,
    /// IANA time zone whose midnight resets the daily quota (the account's
    /// time zone in HubSpot).
    pub daily_reset_tz: String,
    /// Search requests allowed per second (HubSpot: 5 per account).
    pub search_per_second: u32,
    /// Send `Retry-After` with 429s (HubSpot does not always).
    pub retry_after: bool,
    /// Send the `X-HubSpot-RateLimit-*` headers (missing for some apps).
    pub rate_limit_headers: bool,
    /// Probability of answering 502 instead of processing.
    pub error_rate: f64,
    /// Probability of answering 423 Locked to a write (upsert, archive).
    pub locked_rate: f64,
    /// Added to every API answer.
    pub latency: Duration,
    /// Every n-th request stalls for `stall` before answering.
    pub stall_every: Option<u64>,
    pub stall: Duration,
    /// Property values longer than this are invalid.
    pub max_value_len: usize,
    /// Answer 207 with per-input errors when every input is traced. HubSpot
    /// documents this only loosely for upsert; `false` refuses the whole
    /// batch with 400 instead, the other behaviour clients must survive.
    pub partial_207: bool,
    pub seed: u64,
    /// Custom properties present at start (their groups are created).
    pub properties: Vec<PropertyDef>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "sim-token".into(),
            unique_property: "baby_key".into(),
            window_requests: 100,
            window: Duration::from_secs(10),
            daily: 250_000,
            daily_reset_tz: "UTC".into(),
            search_per_second: 5,
            retry_after: false,
            rate_limit_headers: true,
            error_rate: 0.0,
            locked_rate: 0.0,
            latency: Duration::ZERO,
            stall_every: None,
            stall: Duration::from_secs(5),
            max_value_len: 65_536,
            partial_207: true,
            seed: 42,
            properties: Vec::new(),
        }
    }
}

/// One contact record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    /// The record id (`hs_object_id`).
    pub id: String,
    /// The record's value of `Config::unique_property` (empty when unset).
    pub id_value: String,
    /// What was written (system properties such as `createdate` are not
    /// stored here).
    pub properties: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    /// How many upserts touched it.
    pub writes: u64,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub archived_at: Option<String>,
}

/// The simulator's own accounting, for tests and benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every API call (anything outside `/_sim/`).
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub upsert_requests: u64,
    pub archive_requests: u64,
    /// Batch reads and gets by id.
    pub read_requests: u64,
    pub search_requests: u64,
    /// Reads and writes of properties and property groups.
    pub property_requests: u64,
    pub rate_limited_window: u64,
    pub rate_limited_daily: u64,
    pub rate_limited_secondly: u64,
    /// Most requests ever admitted within one window: never above the limit.
    pub max_in_window: u64,
    /// Upsert inputs received.
    pub inputs_received: u64,
    /// Records archived.
    pub archived_records: u64,
    pub daily_used: u64,
    /// Times the daily quota was reset at midnight.
    pub daily_resets: u64,
    pub consumed_by_others: u64,
    /// Seconds from the first to the last admitted request.
    pub active_seconds: f64,
}

struct Sim {
    cfg: Config,
    catalog: Catalog,
    store: Store,
    limits: Limits,
    stats: Stats,
    rng: rand::rngs::StdRng,
    /// Upsert id values refused until cleared (`/_sim/refuse`).
    refused: HashSet<String>,
    /// An outage: every API call gets what HubSpot's edge answers when the
    /// service behind it is down (503, an HTML page), and changes nothing.
    down: bool,
}

type Shared = Arc<Mutex<Sim>>;

fn lock(state: &Shared) -> MutexGuard<'_, Sim> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

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
        lock(&self.state).stats.clone()
    }
    /// Records that are not archived, by `id_value`.
    pub fn contacts(&self) -> Vec<Contact> {
        sorted(lock(&self.state).store.records.values().filter(|c| !c.archived))
    }
    /// Archived records, by `id_value`.
    pub fn archived(&self) -> Vec<Contact> {
        sorted(lock(&self.state).store.records.values().filter(|c| c.archived))
    }
    /// Every contact property, HubSpot's own included, by name.
    pub fn properties(&self) -> Vec<PropertyDef> {
        lock(&self.state).catalog.defs()
    }
    /// Creates a property as `POST /crm/v3/properties/contacts` would
    /// (creating its group when missing); the error is HubSpot's message.
    pub fn create_property(&self, def: PropertyDef) -> Result<(), String> {
        lock(&self.state).catalog.create_direct(def)
    }
    /// Refuses upsert inputs with these id values until `accept_all`.
    /// Starts or ends an outage (see `down`); records stay.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }
    pub fn refuse(&self, ids: &[&str]) {
        lock(&self.state).refused.extend(ids.iter().map(|s| s.to_string()));
    }
    /// Rotates the token: requests with the old one get 401 from now on.
    pub fn set_token(&self, token: &str) {
        lock(&self.state).cfg.token = token.to_string();
    }
    pub fn accept_all(&self) {
        lock(&self.state).refused.clear();
    }
    /// A new rolling limit from now on, with the counters zeroed and the
    /// records kept: a benchmark fills the portal fast, then measures a
    /// sync at the real limit's pace.
    pub fn set_window(&self, requests: u32, window: Duration) {
        let mut s = lock(&self.state);
        s.cfg.window_requests = requests;
        s.cfg.window = window;
        s.limits.clear(SystemTime::now());
        s.stats = Stats::default();
    }
    pub fn stop(self) {
        self.task.abort();
    }
}

fn sorted<'a>(c: impl Iterator<Item = &'a Contact>) -> Vec<Contact> {
    let mut v: Vec<Contact> = c.cloned().collect();
    v.sort_by(|a, b| a.id_value.cmp(&b.id_value).then(a.id.len().cmp(&b.id.len())).then(a.id.cmp(&b.id)));
    v
}

/// Binds `addr` (port 0 for any) and serves in the background. Fails on an
/// unknown `daily_reset_tz` or an invalid property in `Config::properties`.
pub async fn serve(cfg: Config, addr: SocketAddr) -> std::io::Result<Handle> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let tz = limits::time_zone(&cfg.daily_reset_tz).map_err(invalid)?;
    let mut catalog = Catalog::fresh();
    for d in &cfg.properties {
        catalog.create_direct(d.clone()).map_err(|m| invalid(format!("property `{}`: {m}", d.name)))?;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(Mutex::new(Sim {
        rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
        limits: Limits::new(tz, SystemTime::now()),
        cfg,
        catalog,
        store: Store::new(),
        stats: Stats::default(),
        refused: HashSet::new(),
        down: false,
    }));
    let app = Router::new().fallback(dispatch).with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "hubspot simulator stopped");
        }
    });
    Ok(Handle { addr, state, task })
}

/// The object endpoints.
#[derive(Debug, PartialEq)]
enum ObjectsEndpoint {
    Upsert,
    Read,
    Archive,
    Search,
    Get(String),
}

#[derive(Debug, PartialEq)]
enum Endpoint {
    Objects(ObjectsEndpoint),
    Properties(PropertiesEndpoint),
}

impl Endpoint {
    fn is_write(&self) -> bool {
        matches!(self, Endpoint::Objects(ObjectsEndpoint::Upsert | ObjectsEndpoint::Archive))
    }
    fn is_search(&self) -> bool {
        matches!(self, Endpoint::Objects(ObjectsEndpoint::Search))
    }
}

/// Why a request matched no endpoint.
#[derive(Clone, Debug, PartialEq)]
enum Miss {
    NotFound(String),
    /// The path exists for these methods.
    Method(&'static str),
}

/// Date versions served next to `v3`.
const VERSIONS: [&str; 2] = ["2026-03", "2026-09"];

fn route(method: &Method, path: &str) -> Result<Endpoint, Miss> {
    let segs: Vec<String> = path.trim_matches('/').split('/').map(wire::percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let not_found = || Miss::NotFound(format!("No endpoint at {method} {path}"));
    let (api, obj, rest) = match segs.as_slice() {
        ["crm", "v3", api @ ("objects" | "properties"), obj, rest @ ..] => (*api, *obj, rest),
        ["crm", api @ ("objects" | "properties"), version, obj, rest @ ..] => {
            if !VERSIONS.contains(version) {
                return Err(Miss::NotFound(format!(
                    "Unknown API version {version}: this API serves {} and v3",
                    VERSIONS.join(", ")
                )));
            }
            (*api, *obj, rest)
        }
        _ => return Err(not_found()),
    };
    if obj != "contacts" && obj != "0-1" {
        return Err(Miss::NotFound(format!("Unable to infer object type from: {obj} (only contacts are simulated)")));
    }
    let only =
        |m: Method, allow: &'static str, ep: Endpoint| if *method == m { Ok(ep) } else { Err(Miss::Method(allow)) };
    if api == "objects" {
        use ObjectsEndpoint::*;
        return match rest {
            ["batch", "upsert"] => only(Method::POST, "POST", Endpoint::Objects(Upsert)),
            ["batch", "read"] => only(Method::POST, "POST", Endpoint::Objects(Read)),
            ["batch", "archive"] => only(Method::POST, "POST", Endpoint::Objects(Archive)),
            ["search"] => only(Method::POST, "POST", Endpoint::Objects(Search)),
            [id] if !id.is_empty() && *id != "batch" => {
                only(Method::GET, "GET", Endpoint::Objects(Get(id.to_string())))
            }
            _ => Err(not_found()),
        };
    }
    use PropertiesEndpoint::*;
    let p = Endpoint::Properties;
    match (rest, method.clone()) {
        ([], Method::GET) => Ok(p(List)),
        ([], Method::POST) => Ok(p(Create)),
        ([], _) => Err(Miss::Method("GET, POST")),
        (["batch", "create"], _) => only(Method::POST, "POST", p(BatchCreate)),
        (["groups"], Method::GET) => Ok(p(GroupList)),
        (["groups"], Method::POST) => Ok(p(GroupCreate)),
        (["groups"], _) => Err(Miss::Method("GET, POST")),
        (["groups", name], _) => only(Method::GET, "GET", p(GroupGet(name.to_string()))),
        ([name], Method::GET) if !name.is_empty() => Ok(p(Get(name.to_string()))),
        ([name], Method::PATCH) if !name.is_empty() => Ok(p(Patch(name.to_string()))),
        ([name], _) if !name.is_empty() && *name != "batch" => Err(Miss::Method("GET, PATCH")),
        _ => Err(not_found()),
    }
}

fn miss_reply(miss: Miss, method: &Method, path: &str, cid: String) -> Reply {
    match miss {
        Miss::NotFound(m) => Reply::error(StatusCode::NOT_FOUND, ApiError::new("OBJECT_NOT_FOUND", m, cid)),
        Miss::Method(allow) => Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            ApiError::new(
                "METHOD_NOT_ALLOWED",
                format!("Method {method} is not allowed on {path} (allowed: {allow})"),
                cid,
            ),
        )
        .with_header("allow", allow),
    }
}

/// What the first look at a request decided.
enum Pre {
    Done(Reply, HeaderMap),
    Go { fail: bool, locked: bool, stall: bool, latency: Duration, stall_for: Duration },
}

async fn dispatch(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return sim_hook(&state, &method, &path, &uri, &body).into_response(HeaderMap::new());
    }
    if lock(&state).down {
        {
            let mut s = lock(&state);
            s.stats.requests += 1;
            *s.stats.by_status.entry(503).or_default() += 1;
        }
        let mut h = HeaderMap::new();
        h.insert("content-type", axum::http::HeaderValue::from_static("text/html"));
        return axum::response::IntoResponse::into_response((
            StatusCode::SERVICE_UNAVAILABLE,
            h,
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        ));
    }
    let query: Vec<(String, String)> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let route = route(&method, &path);
    let pre = {
        let mut s = lock(&state);
        let s = &mut *s;
        s.stats.requests += 1;
        let cid = correlation(&mut s.rng);
        match &route {
            Err(miss) => Pre::Done(miss_reply(miss.clone(), &method, &path, cid), HeaderMap::new()),
            Ok(ep) => {
                let counter = match ep {
                    Endpoint::Objects(ObjectsEndpoint::Upsert) => &mut s.stats.upsert_requests,
                    Endpoint::Objects(ObjectsEndpoint::Archive) => &mut s.stats.archive_requests,
                    Endpoint::Objects(ObjectsEndpoint::Read | ObjectsEndpoint::Get(_)) => &mut s.stats.read_requests,
                    Endpoint::Objects(ObjectsEndpoint::Search) => &mut s.stats.search_requests,
                    Endpoint::Properties(_) => &mut s.stats.property_requests,
                };
                *counter += 1;
                let expected = format!("Bearer {}", s.cfg.token);
                let token_ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
                if !token_ok {
                    Pre::Done(
                        Reply::error(
                            StatusCode::UNAUTHORIZED,
                            ApiError::new(
                                "INVALID_AUTHENTICATION",
                                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                                cid,
                            ),
                        ),
                        HeaderMap::new(),
                    )
                } else {
                    let search = ep.is_search();
                    match s.limits.admit(&s.cfg, &mut s.stats, SystemTime::now(), Instant::now(), search) {
                        Err(l) => {
                            let h = if search { HeaderMap::new() } else { s.limits.headers(&s.cfg, &s.stats) };
                            Pre::Done(limits::limited_reply(&s.cfg, &l, cid), h)
                        }
                        Ok(()) => Pre::Go {
                            fail: s.cfg.error_rate > 0.0 && s.rng.random::<f64>() < s.cfg.error_rate,
                            locked: ep.is_write()
                                && s.cfg.locked_rate > 0.0
                                && s.rng.random::<f64>() < s.cfg.locked_rate,
                            stall: s.cfg.stall_every.is_some_and(|n| n > 0 && s.stats.requests.is_multiple_of(n)),
                            latency: s.cfg.latency,
                            stall_for: s.cfg.stall,
                        },
                    }
                }
            }
        }
    };
    let (reply, extra) = match pre {
        Pre::Done(r, h) => (r, h),
        Pre::Go { fail, locked, stall, latency, stall_for } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if stall {
                tokio::time::sleep(stall_for).await;
            }
            let mut s = lock(&state);
            let s = &mut *s;
            let ep = route.as_ref().expect("routed");
            let cid = correlation(&mut s.rng);
            let reply = if fail {
                Reply::error(StatusCode::BAD_GATEWAY, ApiError::new("INTERNAL_ERROR", "internal error", cid))
            } else if locked {
                Reply::error(
                    StatusCode::LOCKED,
                    ApiError::new(
                        "LOCKED",
                        "The objects of this request are locked by other writes in progress; retry after at least 2 seconds.",
                        cid,
                    ),
                )
            } else {
                serve_endpoint(s, ep, &query, &body, cid)
            };
            let h = if ep.is_search() { HeaderMap::new() } else { s.limits.headers(&s.cfg, &s.stats) };
            (reply, h)
        }
    };
    let response = reply.into_response(extra);
    *lock(&state).stats.by_status.entry(response.status().as_u16()).or_default() += 1;
    response
}

fn serve_endpoint(s: &mut Sim, ep: &Endpoint, query: &[(String, String)], body: &[u8], cid: String) -> Reply {
    let archived = query.iter().any(|(k, v)| k == "archived" && v == "true");
    match ep {
        Endpoint::Objects(ObjectsEndpoint::Upsert) => objects::upsert(s, body, cid),
        Endpoint::Objects(ObjectsEndpoint::Read) => objects::batch_read(s, body, archived, cid),
        Endpoint::Objects(ObjectsEndpoint::Archive) => objects::archive(s, body, cid),
        Endpoint::Objects(ObjectsEndpoint::Search) => search::search(s, body, cid),
        Endpoint::Objects(ObjectsEndpoint::Get(id)) => objects::get(s, id, query, cid),
        Endpoint::Properties(p) => s.catalog.serve(p, body, cid),
    }
}

#[derive(Deserialize)]
struct ConsumeQuery {
    n: u32,
}

#[derive(Deserialize)]
struct RefuseBody {
    ids: Vec<String>,
}

#[derive(serde::Deserialize)]
struct TokenBody {
    token: String,
}

/// The test hooks under `/_sim/`.
fn sim_hook(state: &Shared, method: &Method, path: &str, uri: &Uri, body: &[u8]) -> Reply {
    let mut s = lock(state);
    let s = &mut *s;
    let cid = correlation(&mut s.rng);
    let bad = |m: String, cid: String| Reply::error(StatusCode::BAD_REQUEST, ApiError::new("VALIDATION_ERROR", m, cid));
    let contacts =
        |archived: bool, s: &Sim| Reply::ok(json!(sorted(s.store.records.values().filter(|c| c.archived == archived))));
    match (path.trim_end_matches('/'), method.clone()) {
        ("/_sim/contacts", Method::GET) => contacts(false, s),
        ("/_sim/archived", Method::GET) => contacts(true, s),
        ("/_sim/properties", Method::GET) => {
            Reply::ok(Value::Array(s.catalog.props.values().map(properties::Property::to_json).collect()))
        }
        ("/_sim/stats", Method::GET) => Reply::ok(json!(s.stats)),
        ("/_sim/consume", Method::POST) => match Query::<ConsumeQuery>::try_from_uri(uri) {
            Ok(q) => {
                s.limits.consume(&mut s.stats, SystemTime::now(), Instant::now(), q.0.n);
                Reply::empty(StatusCode::NO_CONTENT)
            }
            Err(e) => bad(format!("/_sim/consume?n=N: {e}"), cid),
        },
        ("/_sim/reset", Method::POST) => {
            s.catalog = Catalog::fresh();
            s.store = Store::new();
            s.stats = Stats::default();
            s.refused.clear();
            s.limits.clear(SystemTime::now());
            Reply::empty(StatusCode::NO_CONTENT)
        }
        ("/_sim/refuse", Method::POST) => match serde_json::from_slice::<RefuseBody>(body) {
            Ok(b) => {
                s.refused.extend(b.ids);
                Reply::empty(StatusCode::NO_CONTENT)
            }
            Err(e) => bad(format!("/_sim/refuse takes {{\"ids\": [..]}}: {e}"), cid),
        },
        ("/_sim/token", Method::POST) => match serde_json::from_slice::<TokenBody>(body) {
            Ok(b) if !b.token.is_empty() => {
                s.cfg.token = b.token;
                Reply::empty(StatusCode::NO_CONTENT)
            }
            _ => bad("/_sim/token takes {\"token\": \"<new token>\"}".into(), cid),
        },
        ("/_sim/refuse", Method::DELETE) => {
            s.refused.clear();
            Reply::empty(StatusCode::NO_CONTENT)
        }
        (p, m) => {
            let allow = match p {
                "/_sim/contacts" | "/_sim/archived" | "/_sim/properties" | "/_sim/stats" => Some("GET"),
                "/_sim/consume" | "/_sim/reset" | "/_sim/token" => Some("POST"),
                "/_sim/refuse" => Some("POST, DELETE"),
                _ => None,
            };
            match allow {
                Some(a) => miss_reply(Miss::Method(a), &m, path, cid),
                None => miss_reply(Miss::NotFound(format!("No simulator hook at {m} {path}")), &m, path, cid),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_in_v3_and_in_the_date_versions() {
        let post = Method::POST;
        let up = Ok(Endpoint::Objects(ObjectsEndpoint::Upsert));
        assert_eq!(route(&post, "/crm/v3/objects/contacts/batch/upsert"), up);
        assert_eq!(route(&post, "/crm/objects/2026-03/contacts/batch/upsert"), up);
        assert_eq!(route(&post, "/crm/objects/2026-09/0-1/batch/upsert"), up);
        assert!(matches!(route(&post, "/crm/objects/2025-01/contacts/batch/upsert"), Err(Miss::NotFound(_))));
        assert!(matches!(route(&post, "/crm/v3/objects/companies/batch/upsert"), Err(Miss::NotFound(_))));
        assert_eq!(route(&Method::GET, "/crm/v3/objects/contacts/batch/upsert"), Err(Miss::Method("POST")));
        assert_eq!(
            route(&Method::GET, "/crm/v3/objects/contacts/Mary%7CF%7C1880"),
            Ok(Endpoint::Objects(ObjectsEndpoint::Get("Mary|F|1880".into())))
        );
        assert_eq!(
            route(&Method::GET, "/crm/properties/2026-09/contacts"),
            Ok(Endpoint::Properties(PropertiesEndpoint::List))
        );
        assert_eq!(
            route(&post, "/crm/v3/properties/contacts/batch/create"),
            Ok(Endpoint::Properties(PropertiesEndpoint::BatchCreate))
        );
        assert_eq!(route(&Method::GET, "/crm/v3/properties/contacts/batch/create"), Err(Miss::Method("POST")));
        assert_eq!(
            route(&Method::PATCH, "/crm/v3/properties/contacts/baby_key"),
            Ok(Endpoint::Properties(PropertiesEndpoint::Patch("baby_key".into())))
        );
        assert_eq!(
            route(&post, "/crm/v3/properties/contacts/groups"),
            Ok(Endpoint::Properties(PropertiesEndpoint::GroupCreate))
        );
        assert_eq!(route(&Method::DELETE, "/crm/v3/properties/contacts/baby_key"), Err(Miss::Method("GET, PATCH")));
        assert!(matches!(route(&post, "/crm/v4/objects/contacts/batch/upsert"), Err(Miss::NotFound(_))));
        assert!(matches!(route(&Method::GET, "/nope"), Err(Miss::NotFound(_))));
    }
}
