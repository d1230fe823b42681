//! Kaggle dataset-download API simulator.
//!
//! Serves both API surfaces of the official `kaggle` client, behind the same
//! credentials: HTTP Basic `username:key` or `Authorization: Bearer <token>`
//! (one of `Config::tokens`). Credentials are checked before routing: a
//! missing or wrong one is a 401 JSON error for any API path, whether the
//! dataset exists or not.
//!
//! **REST** (the older form the client still defines):
//! `GET /api/v1/datasets/download/{owner}/{dataset}` (the whole dataset as a
//! zip) and `.../{owner}/{dataset}/{file_name}` (one file, zipped as Kaggle
//! does unless `raw=true`), with `datasetVersionNumber=N`.
//!
//! **RPC** (the current client, built on `kagglesdk`): `POST
//! /v1/{service}/{method}` (also under `/api/v1/...`, where `kagglesdk`
//! puts it outside production), JSON in and out:
//!
//! - `datasets.DatasetApiService/GetDatasetMetadata`, body `{"ownerSlug",
//!   "datasetSlug"}` plus, a simulator extension, an optional
//!   `"datasetVersionNumber"`. Answer `{"info": DatasetInfo}`, the fields of
//!   kagglesdk's `DatasetInfo` (`datasetId`, `datasetSlug`, `ownerUser`,
//!   `title`, `subtitle`, `description`, `isPrivate`, `keywords`,
//!   `licenses`, `collaborators`, `data`: `[{"name", "totalBytes",
//!   "columns": []}]`, `totalViews`, `totalVotes`, `totalDownloads`); like
//!   the real one it names no version and no date.
//! - `datasets.DatasetApiService/GetDataset`, the same body: kagglesdk's
//!   `ApiDataset`, flat: `ref` ("owner/slug"), `currentVersionNumber` (the
//!   newest), `versionNumber` (the asked one, else the newest),
//!   `lastUpdated` (that version's date, ISO 8601 UTC with milliseconds),
//!   `totalBytes`, `files`. This is how a client learns "has it changed?"
//!   in one call.
//! - `datasets.DatasetApiService/DownloadDataset`, body `{"ownerSlug",
//!   "datasetSlug", "fileName": null|"...", "datasetVersionNumber": null|N,
//!   "raw": false, "hashLink": null}` (missing fields count as null/false;
//!   `hashLink` is accepted and ignored). Answer: 302 to the same signed
//!   storage URL the REST path gives for the same dataset, file, version and
//!   `raw`.
//! - `security.OAuthService/IntrospectToken`, body `{"token": "..."}` (or
//!   `{}`: then the request's own Bearer token). Answer `{"active": true,
//!   "clientId": "kaggle-sim", "username", "scope": "resources.*"}` for a
//!   known token, `{"active": false}` for an unknown one in the body.
//!
//! Errors are `{"code": 4xx, "message": "..."}` with `application/json`:
//! 400 for a body that is not the request's JSON, 404 for an unknown
//! dataset, version, file, service or method.
//!
//! Like Kaggle, the API does not send the bytes: it answers 302 to a signed
//! storage URL on the same server (`/storage/...`) that needs no credentials
//! and serves the object with `Content-Length`, `Last-Modified` (the
//! version's `last_modified`, never the process's start), `ETag` (the quoted
//! SHA-256 hex of the served bytes), `Accept-Ranges: bytes`, single byte
//! ranges (206, 416) validated by `If-Range` (an ETag or a date that does not
//! match gets the whole object with 200) and HEAD. Each object is built once
//! and kept; the same version always builds to the same bytes.
//!
//! Failure injection counts down, so tests are deterministic: broken
//! transfers (the full `Content-Length`, about half the body, then the
//! connection closes) and 503s with `Retry-After` (on any API path, before
//! credentials are looked at). `Handle::publish_version` updates a dataset
//! while the simulator runs.
//!
//! Test-only endpoint: `GET /_sim/stats`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Cursor, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// One published version of a dataset.
#[derive(Clone, Debug)]
pub struct Version {
    pub number: u32,
    /// Served as `Last-Modified`, which the client compares with its local
    /// copy to decide whether to download; also stamped on the zip entries.
    pub last_modified: SystemTime,
    /// `(name, bytes)`, in the order they go into the zip.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Version {
    /// A version dated by its content: the same files always get the same
    /// `last_modified` (a second between 2020-01-01 and 2029-12-31 taken from
    /// their SHA-256), whatever the clock says. For a version that has no
    /// date of its own; different content may be dated earlier, so a
    /// dataset that changes should be given real dates.
    pub fn dated_by_content(number: u32, files: Vec<(String, Vec<u8>)>) -> Version {
        let mut h = Sha256::new();
        for (name, data) in &files {
            h.update(&(name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update(&(data.len() as u64).to_be_bytes());
            h.update(data);
        }
        let d = h.finish();
        let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        const FROM: u64 = 1_577_836_800; // 2020-01-01T00:00:00Z
        const SPAN: u64 = 3_652 * 86_400; // ten years
        Version { number, last_modified: UNIX_EPOCH + Duration::from_secs(FROM + n % SPAN), files }
    }
}

/// Behaviour of one simulator instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Basic credentials clients must send (`KAGGLE_USERNAME`, `KAGGLE_KEY`).
    pub username: String,
    pub key: String,
    /// Access tokens accepted as `Authorization: Bearer <token>` (what
    /// `KAGGLE_API_TOKEN` or `~/.kaggle/access_token` holds), all standing
    /// for `username`.
    pub tokens: Vec<String>,
    /// Keyed by "owner/dataset". The highest version number is served when a
    /// request names none.
    pub datasets: BTreeMap<String, Vec<Version>>,
    /// The next N storage GETs send the full `Content-Length` but only about
    /// half the body before the connection closes.
    pub break_transfers: u32,
    /// The next N API calls answer 503 with `Retry-After: 1`.
    pub fail_5xx: u32,
    /// Added to every answer, API and storage.
    pub latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let mut datasets = BTreeMap::new();
        datasets.insert("kaggle/us-baby-names".to_string(), vec![us_baby_names_sample()]);
        Config {
            username: "sim-user".into(),
            key: "sim-key".into(),
            tokens: vec!["sim-token".into()],
            datasets,
            break_transfers: 0,
            fail_5xx: 0,
            latency: Duration::ZERO,
        }
    }
}

/// The first rows of the real `NationalNames.csv` (SSA counts for 1880),
/// dated at a fixed instant so `Last-Modified` is reproducible.
fn us_baby_names_sample() -> Version {
    let csv = "Id,Name,Year,Gender,Count\n1,Mary,1880,F,7065\n2,Anna,1880,F,2604\n3,Emma,1880,F,2003\n\
               4,Elizabeth,1880,F,1939\n5,Minnie,1880,F,1746\n6,Margaret,1880,F,1578\n7,Ida,1880,F,1472\n\
               8,Alice,1880,F,1414\n9,Bertha,1880,F,1320\n10,Sarah,1880,F,1288\n";
    Version {
        number: 1,
        last_modified: UNIX_EPOCH + Duration::from_secs(1_455_148_800),
        files: vec![("NationalNames.csv".into(), csv.as_bytes().to_vec())],
    }
}

/// The simulator's own accounting, for tests and benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Every request to an API path (`/api/...`, `/v1/...`: REST and RPC),
    /// whatever its answer.
    pub api_requests: u64,
    /// Authorized `GetDatasetMetadata` and `GetDataset` calls, whatever their answer.
    pub metadata_calls: u64,
    /// Authorized download calls, REST and RPC (`DownloadDataset`), whatever
    /// their answer.
    pub download_calls: u64,
    /// The `DownloadDataset` calls among `download_calls`.
    pub rpc_download_calls: u64,
    /// Authorized `IntrospectToken` calls.
    pub introspections: u64,
    /// Every request to `/storage/...`, GET and HEAD.
    pub storage_requests: u64,
    /// Storage requests that carried a `Range` header.
    pub range_requests: u64,
    /// Body bytes handed to connections (only the sent part of a broken one).
    pub bytes_sent: u64,
    /// API requests refused with 401 (missing or wrong credentials).
    pub unauthorized: u64,
    pub broken_transfers: u64,
    pub errors_5xx: u64,
    pub head_requests: u64,
}

/// What a signed storage URL points at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    dataset: String,
    version: u32,
    /// `None` for the whole dataset.
    file: Option<String>,
    raw: bool,
}

impl ObjectKey {
    /// The last segment of the storage URL: what a client that names its
    /// download after the URL ends up with (`{dataset}.zip` for the whole
    /// dataset, as Kaggle's client saves it).
    fn name(&self) -> String {
        match (&self.file, self.raw) {
            (None, _) => format!("{}.zip", self.dataset.rsplit('/').next().unwrap_or(&self.dataset)),
            (Some(f), false) => format!("{f}.zip"),
            (Some(f), true) => f.clone(),
        }
    }

    fn content_type(&self) -> &'static str {
        match &self.file {
            Some(f) if self.raw => {
                let ext = f.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
                match ext.as_str() {
                    "csv" => "text/csv",
                    "json" => "application/json",
                    "zip" => "application/zip",
                    _ => "application/octet-stream",
                }
            }
            _ => "application/zip",
        }
    }
}

struct Sim {
    cfg: Config,
    addr: SocketAddr,
    /// `cfg.datasets` moved here behind `Arc`s, so building a zip outside the
    /// lock does not copy the files.
    datasets: HashMap<String, Vec<Arc<Version>>>,
    /// Basic `Authorization` value that passes, computed once.
    expected_auth: String,
    /// Built objects and their ETags, so a version is zipped and hashed once
    /// however often it is fetched.
    objects: HashMap<ObjectKey, (Bytes, String)>,
    /// Signed-URL tokens both ways: the same object keeps the same URL, and a
    /// token opens only the object it was issued for.
    tokens: HashMap<ObjectKey, String>,
    signed: HashMap<String, ObjectKey>,
    stats: Stats,
}

type Shared = Arc<Mutex<Sim>>;

/// A panicking test thread must not wedge the server for the others.
fn lock(state: &Shared) -> MutexGuard<'_, Sim> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulator.
pub struct Handle {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The server's root: the REST API is under `{base_url}/api/v1`, and
    /// this is the RPC endpoint (`KAGGLE_API_ENDPOINT`) itself.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }
    /// Publishes the next version of `dataset` ("owner/dataset", created if
    /// new), dated now, and returns its number. Later requests without a
    /// version number get it; older versions stay downloadable by number.
    pub fn publish_version(&self, dataset: &str, files: Vec<(String, Vec<u8>)>) -> u32 {
        let mut s = lock(&self.state);
        let versions = s.datasets.entry(dataset.to_string()).or_default();
        let number = versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
        // `Last-Modified` has one-second resolution: a version published in
        // the same second as the one before must still look newer, or a
        // client comparing dates would keep its stale copy.
        let now = SystemTime::now();
        let last_modified =
            versions.iter().map(|v| v.last_modified + Duration::from_secs(1)).max().map_or(now, |floor| floor.max(now));
        versions.push(Arc::new(Version { number, last_modified, files }));
        number
    }
    /// Arms `Config::break_transfers` at run time (replaces what is left).
    pub fn break_next_transfers(&self, n: u32) {
        lock(&self.state).cfg.break_transfers = n;
    }
    /// Arms `Config::fail_5xx` at run time (replaces what is left).
    pub fn fail_next_api_calls(&self, n: u32) {
        lock(&self.state).cfg.fail_5xx = n;
    }
    pub fn stop(self) {
        self.task.abort();
    }
}

const METADATA: &str = "datasets.DatasetApiService/GetDatasetMetadata";
const GET_DATASET: &str = "datasets.DatasetApiService/GetDataset";
const DOWNLOAD: &str = "datasets.DatasetApiService/DownloadDataset";
const INTROSPECT: &str = "security.OAuthService/IntrospectToken";

/// Binds `addr` (port 0 for any) and serves in the background.
pub async fn serve(mut cfg: Config, addr: SocketAddr) -> std::io::Result<Handle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let datasets = std::mem::take(&mut cfg.datasets)
        .into_iter()
        .map(|(name, versions)| (name, versions.into_iter().map(Arc::new).collect()))
        .collect();
    let state: Shared = Arc::new(Mutex::new(Sim {
        expected_auth: format!("Basic {}", base64(format!("{}:{}", cfg.username, cfg.key).as_bytes())),
        cfg,
        addr,
        datasets,
        objects: HashMap::new(),
        tokens: HashMap::new(),
        signed: HashMap::new(),
        stats: Stats::default(),
    }));
    let mut app = Router::new()
        .route("/api/v1/datasets/download/{owner}/{dataset}", get(download_dataset))
        .route("/api/v1/datasets/download/{owner}/{dataset}/{*file_name}", get(download_file));
    // kagglesdk calls `{endpoint}/v1/...` in production and
    // `{endpoint}/api/v1/...` elsewhere.
    for prefix in ["/v1", "/api/v1"] {
        app = app
            .route(&format!("{prefix}/{METADATA}"), post(rpc_metadata))
            .route(&format!("{prefix}/{GET_DATASET}"), post(rpc_get_dataset))
            .route(&format!("{prefix}/{DOWNLOAD}"), post(rpc_download))
            .route(&format!("{prefix}/{INTROSPECT}"), post(rpc_introspect));
    }
    let app = app
        // A GET route answers HEAD too; the handler tells them apart.
        .route("/storage/{version}/{*name}", get(storage))
        .route("/_sim/stats", get(stats))
        .fallback(not_found)
        // Outside the routes, so credentials are checked before routing.
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "kaggle simulator stopped");
        }
    });
    Ok(Handle { addr, state, task })
}

/// Kaggle's error body.
fn api_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "code": status.as_u16(), "message": message }))).into_response()
}

/// An error to answer as `api_error`, small enough to pass around.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.0, &self.1)
    }
}

fn is_api_path(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/v1/")
}

/// Who a request's credentials stand for.
enum Caller {
    Basic,
    Bearer(String),
}

/// `Basic` and `Bearer` are case-insensitive; Basic credentials are
/// compared encoded.
fn authenticate(cfg: &Config, expected_basic: &str, header: Option<&str>) -> Option<Caller> {
    let (scheme, cred) = header?.trim().split_once(' ')?;
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let (_, want) = expected_basic.split_once(' ')?;
        (cred == want).then_some(Caller::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        cfg.tokens.iter().any(|t| !t.is_empty() && t == cred).then(|| Caller::Bearer(cred.to_string()))
    } else {
        None
    }
}

/// Every API request: latency, injected 503s, then credentials, all before
/// routing. Storage and `/_sim` pass untouched.
async fn gate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    if !is_api_path(req.uri().path()) {
        return next.run(req).await;
    }
    let (latency, fail) = {
        let mut s = lock(&state);
        s.stats.api_requests += 1;
        let fail = s.cfg.fail_5xx > 0;
        if fail {
            s.cfg.fail_5xx -= 1;
            s.stats.errors_5xx += 1;
        }
        (s.cfg.latency, fail)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // An overloaded front end refuses before it looks at credentials.
    if fail {
        let mut r = api_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let caller = {
        let mut s = lock(&state);
        let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let caller = authenticate(&s.cfg, &s.expected_auth, auth);
        if caller.is_none() {
            s.stats.unauthorized += 1;
        }
        caller
    };
    let Some(caller) = caller else {
        return api_error(StatusCode::UNAUTHORIZED, "Unauthenticated");
    };
    req.extensions_mut().insert(Arc::new(caller));
    next.run(req).await
}

async fn not_found(uri: Uri) -> Response {
    if is_api_path(uri.path()) {
        api_error(StatusCode::NOT_FOUND, &format!("No such method: {}", uri.path()))
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn download_dataset(
    State(state): State<Shared>,
    Path((owner, dataset)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    rest_download(&state, format!("{owner}/{dataset}"), None, &q, &headers)
}

async fn download_file(
    State(state): State<Shared>,
    Path((owner, dataset, file_name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    rest_download(&state, format!("{owner}/{dataset}"), Some(file_name), &q, &headers)
}

/// The REST download: the query's version and `raw`, then the redirect.
fn rest_download(
    state: &Shared,
    dataset: String,
    file: Option<String>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let mut s = lock(state);
    s.stats.download_calls += 1;
    let asked = match q.get("datasetVersionNumber").map(|v| v.parse::<u32>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return api_error(StatusCode::BAD_REQUEST, "datasetVersionNumber must be a number"),
    };
    let raw = q.get("raw").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    redirect(&mut s, dataset, file, asked, raw, headers)
}

/// The asked version of `dataset` (the newest when none is asked), or the
/// 404 to answer.
fn find_version(s: &Sim, dataset: &str, asked: Option<u32>) -> Result<(Arc<Version>, u32), ApiError> {
    let Some(versions) = s.datasets.get(dataset) else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("Dataset {dataset} not found")));
    };
    let newest = versions.iter().map(|v| v.number).max().unwrap_or(0);
    let version = match asked {
        Some(n) => versions.iter().find(|v| v.number == n),
        None => versions.iter().max_by_key(|v| v.number),
    };
    match version {
        Some(v) => Ok((v.clone(), newest)),
        None => {
            let which = asked.map(|n| format!("version {n} of ")).unwrap_or_default();
            Err(ApiError(StatusCode::NOT_FOUND, format!("Dataset {which}{dataset} not found")))
        }
    }
}

/// Checks what is asked for and redirects to the object's signed storage
/// URL; REST and RPC downloads end here, so they get the same URLs.
fn redirect(
    s: &mut Sim,
    dataset: String,
    file: Option<String>,
    asked: Option<u32>,
    raw: bool,
    headers: &HeaderMap,
) -> Response {
    let version = match find_version(s, &dataset, asked) {
        Ok((v, _)) => v,
        Err(e) => return e.into_response(),
    };
    if let Some(f) = &file
        && !version.files.iter().any(|(name, _)| name == f)
    {
        return api_error(StatusCode::NOT_FOUND, &format!("File {f} not found in {dataset}"));
    }
    // `raw` only means something for one file: a whole dataset is a zip.
    let raw = file.is_some() && raw;
    let key = ObjectKey { dataset, version: version.number, file, raw };
    let token = match s.tokens.get(&key) {
        Some(t) => t.clone(),
        None => {
            let t = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
            s.tokens.insert(key.clone(), t.clone());
            s.signed.insert(t.clone(), key.clone());
            t
        }
    };
    // Absolute, like Kaggle's storage URLs, and on the host the client used,
    // so `localhost` and `127.0.0.1` both work (HTTP/1.0 may send no Host).
    let host =
        headers.get(header::HOST).and_then(|v| v.to_str().ok()).map_or_else(|| s.addr.to_string(), str::to_string);
    let location = format!("http://{host}/storage/{}/{}?token={token}", key.version, encode_path(&key.name()));
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Parses an RPC body; an empty body is `{}`, as protobuf JSON allows.
fn rpc_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("Invalid request body: {e}")))
}

/// `owner/slug`, both required.
fn dataset_ref(owner: &str, slug: &str) -> Result<String, ApiError> {
    if owner.is_empty() || slug.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "ownerSlug and datasetSlug are required".into()));
    }
    Ok(format!("{owner}/{slug}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataRequest {
    #[serde(default)]
    owner_slug: String,
    #[serde(default)]
    dataset_slug: String,
    #[serde(default)]
    dataset_version_number: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DownloadRequest {
    #[serde(default)]
    owner_slug: String,
    #[serde(default)]
    dataset_slug: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    dataset_version_number: Option<u32>,
    #[serde(default)]
    raw: Option<bool>,
    /// Accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    hash_link: Option<String>,
}

#[derive(Deserialize)]
struct IntrospectRequest {
    #[serde(default)]
    token: Option<String>,
}

/// `GetDatasetMetadata`: kagglesdk's `DatasetInfo`, which names no
/// version and no date (the real service's answer).
async fn rpc_metadata(State(state): State<Shared>, body: Bytes) -> Response {
    describe(state, body, false)
}

/// `GetDataset`: kagglesdk's `ApiDataset`, flat, with `ref`,
/// `currentVersionNumber`, `lastUpdated` and `totalBytes`: how a client
/// learns the version and date in one call.
async fn rpc_get_dataset(State(state): State<Shared>, body: Bytes) -> Response {
    describe(state, body, true)
}

fn describe(state: Shared, body: Bytes, api_dataset: bool) -> Response {
    let mut s = lock(&state);
    s.stats.metadata_calls += 1;
    let req: MetadataRequest = match rpc_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let dataset = match dataset_ref(&req.owner_slug, &req.dataset_slug) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let (version, newest) = match find_version(&s, &dataset, req.dataset_version_number) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let total: u64 = version.files.iter().map(|(_, d)| d.len() as u64).sum();
    let data: Vec<_> = version
        .files
        .iter()
        .map(|(name, d)| json!({ "name": name, "description": null, "totalBytes": d.len(), "columns": [] }))
        .collect();
    // A stable id, so two simulators agree.
    let digest = sha256(dataset.as_bytes());
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x7fff_ffff;
    if api_dataset {
        return axum::Json(json!({
            "id": id,
            "ref": dataset,
            "ownerRef": req.owner_slug,
            "ownerName": req.owner_slug,
            "title": title_of(&req.dataset_slug),
            "subtitle": null,
            "url": format!("https://www.kaggle.com/datasets/{dataset}"),
            "isPrivate": false,
            "currentVersionNumber": newest,
            "versionNumber": version.number,
            "lastUpdated": iso_date(version.last_modified),
            "totalBytes": total,
            "files": data,
        }))
        .into_response();
    }
    axum::Json(json!({
        "info": {
            "datasetId": id,
            "datasetSlug": req.dataset_slug,
            "ownerUser": req.owner_slug,
            "title": title_of(&req.dataset_slug),
            "subtitle": null,
            "description": null,
            "isPrivate": false,
            "keywords": [],
            "licenses": [],
            "collaborators": [],
            "data": data,
            "totalViews": 0,
            "totalVotes": 0,
            "totalDownloads": 0,
            "usabilityRating": null,
        }
    }))
    .into_response()
}

async fn rpc_download(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut s = lock(&state);
    s.stats.download_calls += 1;
    s.stats.rpc_download_calls += 1;
    let req: DownloadRequest = match rpc_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let dataset = match dataset_ref(&req.owner_slug, &req.dataset_slug) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let file = req.file_name.filter(|f| !f.is_empty());
    redirect(&mut s, dataset, file, req.dataset_version_number, req.raw.unwrap_or(false), &headers)
}

async fn rpc_introspect(
    State(state): State<Shared>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    s.stats.introspections += 1;
    let req: IntrospectRequest = match rpc_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let token = match (req.token.filter(|t| !t.is_empty()), &*caller) {
        (Some(t), _) => t,
        (None, Caller::Bearer(t)) => t.clone(),
        (None, Caller::Basic) => return api_error(StatusCode::BAD_REQUEST, "token is required"),
    };
    if !s.cfg.tokens.contains(&token) {
        return axum::Json(json!({ "active": false })).into_response();
    }
    axum::Json(json!({
        "active": true,
        "clientId": "kaggle-sim",
        "username": s.cfg.username,
        "scope": "resources.*",
    }))
    .into_response()
}

/// "us-baby-names" → "Us Baby Names": the simulator knows no real titles.
fn title_of(slug: &str) -> String {
    slug.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Storage errors come as XML, like the cloud storage Kaggle redirects to.
fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        format!("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>");
    (status, [(header::CONTENT_TYPE, "application/xml; charset=UTF-8")], body).into_response()
}

/// How long a broken transfer waits between its last byte and the cut. hyper
/// drops what it has buffered when a body fails, so without a pause the
/// client gets no response at all (not even the headers) rather than a short
/// body; the margin lets large halves drain to the socket.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct StorageQuery {
    token: Option<String>,
}

/// Serves a signed object: no credentials, byte ranges, HEAD.
async fn storage(
    State(state): State<Shared>,
    method: Method,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<StorageQuery>,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (latency, key) = {
        let mut s = lock(&state);
        s.stats.storage_requests += 1;
        s.stats.head_requests += u64::from(head);
        s.stats.range_requests += u64::from(headers.contains_key(header::RANGE));
        // The token opens exactly the object it was issued for.
        let key = q
            .token
            .and_then(|t| s.signed.get(&t).cloned())
            .filter(|k| k.version.to_string() == version && k.name() == name);
        (s.cfg.latency, key)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(key) = key else {
        return storage_error(StatusCode::FORBIDDEN, "AccessDenied", "Invalid or missing signature.");
    };
    let Some((bytes, etag, last_modified)) = object(&state, &key).await else {
        return storage_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "Could not build the object.");
    };
    let total = bytes.len() as u64;
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(key.content_type()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let last_modified = http_date(last_modified);
    for (k, v) in [
        (header::LAST_MODIFIED, last_modified.clone()),
        (header::ETAG, etag.clone()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", key.name().replace(['"', '\\'], "_"))),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    // A resume validated by `If-Range` that no longer matches gets the whole
    // object: the client's part belongs to other bytes (RFC 9110 13.1.5).
    let if_range = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
    let range_header = range_header.filter(|_| if_range.is_none_or(|v| if_range_matches(v, &etag, &last_modified)));
    let (status, part) = match parse_range(range_header, total) {
        RangeAsk::Whole => (StatusCode::OK, bytes),
        RangeAsk::Part(start, end) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, bytes.slice(start as usize..=end as usize))
        }
        RangeAsk::Unsatisfiable => {
            let mut r = storage_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range cannot be satisfied.",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    // Set by hand so HEAD carries it too, and so a broken transfer announces
    // the full length it will not deliver.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
    if head {
        return (status, h, Body::empty()).into_response();
    }
    let broken = {
        let mut s = lock(&state);
        let broken = s.cfg.break_transfers > 0 && !part.is_empty();
        if broken {
            s.cfg.break_transfers -= 1;
            s.stats.broken_transfers += 1;
        }
        s.stats.bytes_sent += if broken { part.len() / 2 } else { part.len() } as u64;
        broken
    };
    if !broken {
        return (status, h, Body::from(part)).into_response();
    }
    // A stream has no known size, so hyper trusts our Content-Length; when
    // the stream then fails, hyper closes the connection mid-body.
    let half = part.slice(..part.len() / 2);
    let sent = futures::stream::once(async move { Ok::<_, std::io::Error>(half) });
    let cut = futures::stream::once(async {
        tokio::time::sleep(FLUSH_BEFORE_CUT).await;
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "simulated broken transfer"))
    });
    (status, h, Body::from_stream(sent.chain(cut))).into_response()
}

/// `If-Range` holds an entity tag (strong comparison: a weak one never
/// matches) or a date, which must be the `Last-Modified` exactly.
fn if_range_matches(value: &str, etag: &str, last_modified: &str) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") { value == etag } else { value == last_modified }
}

/// The object's bytes, ETag and date, built on first use and kept.
async fn object(state: &Shared, key: &ObjectKey) -> Option<(Bytes, String, SystemTime)> {
    let (version, cached) = {
        let s = lock(state);
        let version = s.datasets.get(&key.dataset)?.iter().find(|v| v.number == key.version)?.clone();
        (version, s.objects.get(key).cloned())
    };
    if let Some((bytes, etag)) = cached {
        return Some((bytes, etag, version.last_modified));
    }
    // Deflating a large dataset takes a while: keep it off the async workers
    // and out of the lock. Two first requests may both build; one result wins.
    let (v, k) = (version.clone(), key.clone());
    let built = tokio::task::spawn_blocking(move || {
        build(&v, &k).map(|b| {
            let etag = format!("\"{}\"", hex(&sha256(&b)));
            (b, etag)
        })
    })
    .await
    .ok()?;
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, dataset = %key.dataset, "kaggle simulator could not build a zip");
            return None;
        }
    };
    let (bytes, etag) = lock(state).objects.entry(key.clone()).or_insert(built).clone();
    Some((bytes, etag, version.last_modified))
}

fn build(version: &Version, key: &ObjectKey) -> zip::result::ZipResult<Bytes> {
    let wanted = |name: &str| key.file.as_deref().is_none_or(|f| f == name);
    if key.raw {
        let data = version.files.iter().find(|(n, _)| wanted(n)).map(|(_, d)| d.as_slice()).unwrap_or_default();
        return Ok(Bytes::copy_from_slice(data));
    }
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    // Entries carry the version's date rather than "now", so the same
    // version always zips to the same bytes.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(zip_time(version.last_modified));
    for (name, data) in version.files.iter().filter(|(n, _)| wanted(n)) {
        w.start_file(name.as_str(), options.large_file(data.len() as u64 >= u64::from(u32::MAX)))?;
        w.write_all(data)?;
    }
    Ok(Bytes::from(w.finish()?.into_inner()))
}

#[derive(Debug, PartialEq)]
enum RangeAsk {
    Whole,
    /// Inclusive, within the object.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range: `N-`, `N-M` or the suffix `-S`. Anything else, several
/// ranges included, is ignored and the whole object sent, which RFC 9110
/// allows and which clients that send one range never notice.
fn parse_range(header: Option<&str>, total: u64) -> RangeAsk {
    let Some((unit, spec)) = header.and_then(|h| h.trim().split_once('=')) else { return RangeAsk::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match last.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(_) if total == 0 => RangeAsk::Unsatisfiable,
            Ok(suffix) => RangeAsk::Part(total - suffix.min(total), total - 1),
            Err(_) => RangeAsk::Whole,
        };
    }
    let Ok(start) = first.parse::<u64>() else { return RangeAsk::Whole };
    let end = if last.is_empty() {
        None
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => Some(end),
            _ => return RangeAsk::Whole,
        }
    };
    if start >= total {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start, end.map_or(total - 1, |e| e.min(total - 1)))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Splits a time into UTC (days since the epoch, seconds into the day);
/// times before the epoch count as the epoch.
fn utc_parts(t: SystemTime) -> (i64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    ((secs / 86_400) as i64, secs % 86_400)
}

/// IMF-fixdate, the form `Last-Modified` takes.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, secs) = utc_parts(t);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The zip entries' DOS time; outside 1980..=2107 it cannot be said, and the
/// format's 1980-01-01 stands in.
fn zip_time(t: SystemTime) -> zip::DateTime {
    let (days, secs) = utc_parts(t);
    let (year, month, day) = civil_from_days(days);
    u16::try_from(year)
        .ok()
        .and_then(|y| {
            zip::DateTime::from_date_and_time(
                y,
                month as u8,
                day as u8,
                (secs / 3600) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
            )
            .ok()
        })
        .unwrap_or_default()
}

/// ISO 8601 UTC with milliseconds, as kagglesdk writes dates.
fn iso_date(t: SystemTime) -> String {
    let (days, secs) = utc_parts(t);
    let (year, month, day) = civil_from_days(days);
    let millis = t.duration_since(UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// SHA-256 (FIPS 180-4), for ETags and content dates; the crate keeps its
/// dependencies to what the outside world it stands for needs.
struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

impl Sha256 {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    fn new() -> Sha256 {
        Sha256 {
            state: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 64 {
                let block = self.block;
                self.compress(&block);
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for (k, wi) in Self::K.into_iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(k).wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]) } else { '=' });
        }
    }
    out
}

/// Percent-encodes a storage object name for the URL path, keeping `/`.
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

async fn stats(State(state): State<Shared>) -> Response {
    axum::Json(lock(&state).stats.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{
        ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LAST_MODIFIED,
        LOCATION, RANGE, RETRY_AFTER,
    };
    use std::io::Read;

    const DATASET: &str = "kaggle/us-baby-names";
    /// 2016-02-11 00:00:00 UTC, a Thursday.
    const V1_SECS: u64 = 1_455_148_800;
    const V1_DATE: &str = "Thu, 11 Feb 2016 00:00:00 GMT";

    /// A names CSV big enough that the zip spans many TCP segments.
    fn names_csv(rows: usize, salt: u64) -> Vec<u8> {
        let mut s = String::from("Id,Name,Year,Gender,Count\n");
        for i in 0..rows as u64 {
            let _ = writeln!(
                s,
                "{},Name{},{},{},{}",
                i + 1,
                (i * 7919 + salt) % 5003,
                1880 + i % 135,
                "FM".as_bytes()[(i % 2) as usize] as char,
                (i * 31 + salt) % 9000
            );
        }
        s.into_bytes()
    }

    fn config(files: Vec<(String, Vec<u8>)>) -> Config {
        let mut datasets = BTreeMap::new();
        datasets.insert(
            DATASET.to_string(),
            vec![Version { number: 1, last_modified: UNIX_EPOCH + Duration::from_secs(V1_SECS), files }],
        );
        Config { datasets, ..Config::default() }
    }

    async fn start(cfg: Config) -> Handle {
        serve(cfg, "127.0.0.1:0".parse().expect("addr")).await.expect("serve")
    }

    /// Shows the 302 instead of following it.
    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
    }

    async fn api(h: &Handle, path_and_query: &str) -> reqwest::Response {
        client()
            .get(format!("{}/api/v1/datasets/download/{path_and_query}", h.base_url()))
            .basic_auth("sim-user", Some("sim-key"))
            .send()
            .await
            .expect("api call")
    }

    /// The storage URL the API redirects to.
    async fn location(h: &Handle, path_and_query: &str) -> String {
        let r = api(h, path_and_query).await;
        assert_eq!(r.status(), 302, "{path_and_query}");
        r.headers()[LOCATION].to_str().expect("ascii").to_string()
    }

    async fn get(url: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = client().get(url);
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        req.send().await.expect("storage call")
    }

    fn header(r: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
        r.headers().get(name).map(|v| v.to_str().expect("ascii").to_string()).unwrap_or_default()
    }

    fn unzip(bytes: &[u8]) -> BTreeMap<String, (Vec<u8>, CompressionMethod)> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
        let mut out = BTreeMap::new();
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).expect("entry");
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("inflate");
            out.insert(f.name().expect("entry name").to_string(), (data, f.compression()));
        }
        out
    }

    async fn json(r: reqwest::Response) -> serde_json::Value {
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json body")
    }

    #[tokio::test]
    async fn download_requires_basic_auth() {
        let h = start(Config::default()).await;
        let url = format!("{}/api/v1/datasets/download/{DATASET}", h.base_url());
        let none = client().get(&url).send().await.expect("call");
        assert_eq!(none.status(), 401);
        assert_eq!(json(none).await, json!({"code": 401, "message": "Unauthenticated"}));
        let wrong = client().get(&url).basic_auth("sim-user", Some("nope")).send().await.expect("call");
        assert_eq!(wrong.status(), 401);
        let bearer = client().get(&url).bearer_auth("sim-key").send().await.expect("call");
        assert_eq!(bearer.status(), 401);
        let right = client().get(&url).basic_auth("sim-user", Some("sim-key")).send().await.expect("call");
        assert_eq!(right.status(), 302);
        let s = h.stats();
        assert_eq!((s.api_requests, s.unauthorized, s.storage_requests), (4, 3, 0));
        h.stop();
    }

    #[tokio::test]
    async fn redirect_then_full_download_unzips_to_the_exact_csv() {
        let csv = names_csv(5_000, 1);
        let h = start(config(vec![("NationalNames.csv".into(), csv.clone())])).await;
        let loc = location(&h, DATASET).await;
        let prefix = format!("{}/storage/1/us-baby-names.zip?token=", h.base_url());
        assert!(loc.starts_with(&prefix), "{loc}");

        // No credentials: the signed URL is enough.
        let r = get(&loc, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, CONTENT_TYPE), "application/zip");
        assert_eq!(header(&r, ACCEPT_RANGES), "bytes");
        assert_eq!(header(&r, LAST_MODIFIED), V1_DATE);
        let length: usize = header(&r, CONTENT_LENGTH).parse().expect("Content-Length");
        let body = r.bytes().await.expect("body");
        assert_eq!(body.len(), length);
        assert!(body.len() < csv.len() / 2, "deflated: {} of {}", body.len(), csv.len());
        let entries = unzip(&body);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["NationalNames.csv"]);
        assert_eq!(entries["NationalNames.csv"], (csv, CompressionMethod::Deflated));

        // A client that follows redirects gets the same bytes.
        let followed = reqwest::Client::new()
            .get(format!("{}/api/v1/datasets/download/{DATASET}", h.base_url()))
            .basic_auth("sim-user", Some("sim-key"))
            .send()
            .await
            .expect("call");
        assert_eq!(followed.status(), 200);
        assert_eq!(followed.bytes().await.expect("body"), body);

        // The token opens only its own object.
        let forged = get(&format!("{prefix}{}", "0".repeat(32)), None).await;
        assert_eq!(forged.status(), 403);
        let other = get(&loc.replace("/storage/1/", "/storage/2/"), None).await;
        assert_eq!(other.status(), 403);
        let s = h.stats();
        assert_eq!((s.api_requests, s.storage_requests, s.bytes_sent), (2, 4, 2 * length as u64));
        h.stop();
    }

    #[tokio::test]
    async fn range_requests_return_the_exact_bytes_with_206() {
        let h = start(config(vec![("NationalNames.csv".into(), names_csv(2_000, 2))])).await;
        let loc = location(&h, DATASET).await;
        let full = get(&loc, None).await.bytes().await.expect("body");
        let total = full.len();

        let r = get(&loc, Some("bytes=100-")).await;
        assert_eq!(r.status(), 206);
        assert_eq!(header(&r, CONTENT_RANGE), format!("bytes 100-{}/{total}", total - 1));
        assert_eq!(header(&r, CONTENT_LENGTH), (total - 100).to_string());
        assert_eq!(r.bytes().await.expect("body"), full.slice(100..));

        let r = get(&loc, Some("bytes=10-19")).await;
        assert_eq!(r.status(), 206);
        assert_eq!(header(&r, CONTENT_RANGE), format!("bytes 10-19/{total}"));
        assert_eq!(r.bytes().await.expect("body"), full.slice(10..20));

        let r = get(&loc, Some(&format!("bytes={total}-"))).await;
        assert_eq!(r.status(), 416);
        assert_eq!(header(&r, CONTENT_RANGE), format!("bytes */{total}"));
        assert_eq!(h.stats().range_requests, 3);
        h.stop();
    }

    #[tokio::test]
    async fn broken_transfer_is_short_and_a_range_resume_completes_it() {
        let csv = names_csv(20_000, 3);
        let mut cfg = config(vec![("NationalNames.csv".into(), csv.clone())]);
        cfg.break_transfers = 1;
        let h = start(cfg).await;
        let loc = location(&h, DATASET).await;

        // HEAD is not a transfer: it neither breaks nor uses up the injection.
        let head = client().head(&loc).send().await.expect("head");
        assert_eq!(head.status(), 200);
        let total: usize = header(&head, CONTENT_LENGTH).parse().expect("Content-Length");

        let mut r = get(&loc, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, CONTENT_LENGTH), total.to_string());
        let mut got = Vec::new();
        let failed = loop {
            match r.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(failed, "the cut must surface as an error");
        assert_eq!(got.len(), total / 2);

        let rest = get(&loc, Some(&format!("bytes={}-", got.len()))).await;
        assert_eq!(rest.status(), 206);
        got.extend_from_slice(&rest.bytes().await.expect("rest"));
        let whole = get(&loc, None).await.bytes().await.expect("whole");
        assert_eq!(got, whole);
        assert_eq!(unzip(&got)["NationalNames.csv"].0, csv);
        let s = h.stats();
        assert_eq!((s.broken_transfers, s.head_requests, s.range_requests), (1, 1, 1));
        assert_eq!(s.bytes_sent, (total / 2 + (total - total / 2) + total) as u64);

        // Armed again at run time, the next GET breaks too.
        h.break_next_transfers(1);
        assert!(get(&loc, None).await.bytes().await.is_err());
        assert_eq!(h.stats().broken_transfers, 2);
        h.stop();
    }

    #[tokio::test]
    async fn injected_503s_carry_retry_after_then_recover() {
        let h = start(Config { fail_5xx: 2, ..Config::default() }).await;
        for _ in 0..2 {
            let r = api(&h, DATASET).await;
            assert_eq!(r.status(), 503);
            assert_eq!(header(&r, RETRY_AFTER), "1");
            assert_eq!(json(r).await["code"], 503);
        }
        assert_eq!(api(&h, DATASET).await.status(), 302);
        h.fail_next_api_calls(1);
        assert_eq!(api(&h, DATASET).await.status(), 503);
        let s = h.stats();
        assert_eq!((s.api_requests, s.errors_5xx), (4, 3));
        h.stop();
    }

    #[tokio::test]
    async fn publish_version_serves_new_bytes_with_a_newer_last_modified() {
        let old = names_csv(100, 4);
        let h = start(config(vec![("NationalNames.csv".into(), old.clone())])).await;
        let v1 = location(&h, DATASET).await;
        let head = client().head(&v1).send().await.expect("head");
        assert_eq!(header(&head, LAST_MODIFIED), V1_DATE);
        let v1_len = header(&head, CONTENT_LENGTH);
        assert_eq!(head.bytes().await.expect("body").len(), 0);
        assert_eq!(v1_len, get(&v1, None).await.bytes().await.expect("body").len().to_string());

        let new = names_csv(120, 5);
        assert_eq!(h.publish_version(DATASET, vec![("NationalNames.csv".into(), new.clone())]), 2);
        let v2 = location(&h, DATASET).await;
        assert!(v2.contains("/storage/2/us-baby-names.zip?token="), "{v2}");
        let r = get(&v2, None).await;
        let v2_date = header(&r, LAST_MODIFIED);
        assert_ne!(v2_date, V1_DATE);
        assert_eq!(unzip(&r.bytes().await.expect("body"))["NationalNames.csv"].0, new);

        // Published within the same second, yet still dated later.
        assert_eq!(h.publish_version(DATASET, vec![("NationalNames.csv".into(), old.clone())]), 3);
        let v3 = location(&h, DATASET).await;
        assert_ne!(header(&get(&v3, None).await, LAST_MODIFIED), v2_date);

        // Older versions stay reachable by number; unknown ones are 404.
        let again = location(&h, &format!("{DATASET}?datasetVersionNumber=1")).await;
        assert_eq!(again, v1);
        let r = api(&h, &format!("{DATASET}?datasetVersionNumber=9")).await;
        assert_eq!(r.status(), 404);
        assert_eq!(json(r).await["code"], 404);
        h.stop();
    }

    #[tokio::test]
    async fn unknown_dataset_or_file_is_a_404_json() {
        let h = start(Config::default()).await;
        for path in ["kaggle/no-such-dataset", "kaggle/us-baby-names/NoSuchFile.csv", "nobody/us-baby-names"] {
            let r = api(&h, path).await;
            assert_eq!(r.status(), 404, "{path}");
            let body = json(r).await;
            assert_eq!(body["code"], 404, "{path}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        }
        assert!(location(&h, "kaggle/us-baby-names/NationalNames.csv").await.contains("NationalNames.csv.zip"));
        assert_eq!(h.stats().storage_requests, 0);
        h.stop();
    }

    #[tokio::test]
    async fn one_file_comes_zipped_alone_or_raw_with_raw_true() {
        let national = names_csv(300, 6);
        let state = b"Id,Name,Year,Gender,State,Count\n1,Mary,1910,F,AK,14\n".to_vec();
        let h = start(config(vec![
            ("NationalNames.csv".into(), national.clone()),
            ("StateNames.csv".into(), state.clone()),
        ]))
        .await;

        let zipped = location(&h, &format!("{DATASET}/StateNames.csv")).await;
        assert!(zipped.contains("/storage/1/StateNames.csv.zip?token="), "{zipped}");
        let r = get(&zipped, None).await;
        assert_eq!(header(&r, CONTENT_TYPE), "application/zip");
        let entries = unzip(&r.bytes().await.expect("body"));
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["StateNames.csv"]);
        assert_eq!(entries["StateNames.csv"].0, state);

        let raw = location(&h, &format!("{DATASET}/NationalNames.csv?raw=true")).await;
        assert!(raw.contains("/storage/1/NationalNames.csv?token="), "{raw}");
        let r = get(&raw, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, CONTENT_TYPE), "text/csv");
        assert_eq!(header(&r, CONTENT_LENGTH), national.len().to_string());
        assert_eq!(r.bytes().await.expect("body"), national);

        // The whole dataset holds both files.
        let all = get(&location(&h, DATASET).await, None).await.bytes().await.expect("body");
        assert_eq!(unzip(&all).keys().collect::<Vec<_>>(), ["NationalNames.csv", "StateNames.csv"]);
        h.stop();
    }

    #[test]
    fn http_date_matches_the_rfc_example() {
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(V1_SECS)), V1_DATE);
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        use RangeAsk::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=3-"), 10), Part(3, 9));
        assert_eq!(parse_range(Some("bytes=3-5"), 10), Part(3, 5));
        assert_eq!(parse_range(Some("bytes=3-50"), 10), Part(3, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Part(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-3"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
    }

    fn endpoint(h: &Handle, method: &str) -> String {
        format!("{}/v1/{method}", h.base_url())
    }

    async fn rpc(h: &Handle, method: &str, body: serde_json::Value) -> reqwest::Response {
        client().post(endpoint(h, method)).bearer_auth("sim-token").json(&body).send().await.expect("rpc call")
    }

    fn two_versions() -> (Config, Vec<u8>) {
        let old = names_csv(200, 7);
        (config(vec![("NationalNames.csv".into(), old.clone())]), old)
    }

    #[tokio::test]
    async fn metadata_by_bearer_and_by_basic() {
        let h = start(config(vec![("NationalNames.csv".into(), names_csv(50, 1))])).await;
        let body = json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names"});
        let by_bearer = rpc(&h, METADATA, body.clone()).await;
        assert_eq!(by_bearer.status(), 200);
        assert_eq!(header(&by_bearer, CONTENT_TYPE), "application/json");
        let meta = json(by_bearer).await;
        let info = &meta["info"];
        assert_eq!(info["ownerUser"], "kaggle");
        assert_eq!(info["datasetSlug"], "us-baby-names");
        assert_eq!(info["title"], "Us Baby Names");
        assert_eq!(info["data"][0]["name"], "NationalNames.csv");
        assert!(info.get("currentVersionNumber").is_none(), "DatasetInfo names no version, as on Kaggle");
        let d = json(rpc(&h, GET_DATASET, body.clone()).await).await;
        assert_eq!(d["ref"], DATASET);
        assert_eq!(d["currentVersionNumber"], 1);
        assert_eq!(d["lastUpdated"], "2016-02-11T00:00:00.000Z");
        assert_eq!(d["totalBytes"], names_csv(50, 1).len());

        let by_basic = client()
            .post(endpoint(&h, METADATA))
            .basic_auth("sim-user", Some("sim-key"))
            .json(&body)
            .send()
            .await
            .expect("call");
        assert_eq!(by_basic.status(), 200);
        assert_eq!(json(by_basic).await, meta);

        // Also where kagglesdk puts it outside production.
        let under_api = client()
            .post(format!("{}/api/v1/{METADATA}", h.base_url()))
            .bearer_auth("sim-token")
            .json(&body)
            .send()
            .await
            .expect("call");
        assert_eq!(json(under_api).await, meta);

        let missing = rpc(&h, METADATA, json!({"ownerSlug": "kaggle", "datasetSlug": "nope"})).await;
        assert_eq!(missing.status(), 404);
        assert_eq!(header(&missing, CONTENT_TYPE), "application/json");
        assert_eq!(json(missing).await["code"], 404);
        let bad = client().post(endpoint(&h, METADATA)).bearer_auth("sim-token").body("{").send().await.expect("call");
        assert_eq!(bad.status(), 400);
        assert_eq!(json(bad).await["code"], 400);
        let unknown = rpc(&h, "datasets.DatasetApiService/NoSuchMethod", json!({})).await;
        assert_eq!(unknown.status(), 404);
        assert_eq!(json(unknown).await["code"], 404);

        let s = h.stats();
        assert_eq!((s.metadata_calls, s.download_calls, s.storage_requests, s.unauthorized), (6, 0, 0, 0));
        h.stop();
    }

    #[tokio::test]
    async fn wrong_credentials_are_401_before_routing() {
        let h = start(Config::default()).await;
        let cases = [
            (METADATA, json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names"})),
            (METADATA, json!({"ownerSlug": "kaggle", "datasetSlug": "no-such-dataset"})),
            (DOWNLOAD, json!({"ownerSlug": "nobody", "datasetSlug": "nothing"})),
            ("no.Such/Method", json!({})),
        ];
        for (method, body) in &cases {
            for auth in [Some("Bearer wrong-token"), Some("Basic c2ltLXVzZXI6bm9wZQ=="), Some("Bearer "), None] {
                let mut req = client().post(endpoint(&h, method)).json(body);
                if let Some(a) = auth {
                    req = req.header(AUTHORIZATION, a);
                }
                let r = req.send().await.expect("call");
                assert_eq!(r.status(), 401, "{method} {body} {auth:?}");
                assert_eq!(header(&r, CONTENT_TYPE), "application/json");
                assert_eq!(json(r).await, json!({"code": 401, "message": "Unauthenticated"}));
            }
        }
        // REST too: a wrong token on a dataset that does not exist is 401.
        let r = client()
            .get(format!("{}/api/v1/datasets/download/kaggle/no-such-dataset", h.base_url()))
            .bearer_auth("wrong-token")
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 401);
        // And the right token works on REST.
        let r = client()
            .get(format!("{}/api/v1/datasets/download/{DATASET}", h.base_url()))
            .bearer_auth("sim-token")
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 302);
        let s = h.stats();
        assert_eq!((s.unauthorized, s.metadata_calls, s.download_calls), (17, 0, 1));
        h.stop();
    }

    #[tokio::test]
    async fn rpc_download_current_and_pinned_versions() {
        let (cfg, old) = two_versions();
        let h = start(cfg).await;
        let v1_rest = location(&h, DATASET).await;
        let body = |v: serde_json::Value| {
            json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names", "fileName": null,
                   "datasetVersionNumber": v, "raw": false, "hashLink": null})
        };
        let r = rpc(&h, DOWNLOAD, body(json!(null))).await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(&r, LOCATION), v1_rest, "the same signed URL as REST");

        let new = names_csv(300, 8);
        assert_eq!(h.publish_version(DATASET, vec![("NationalNames.csv".into(), new.clone())]), 2);
        // null and a missing field both mean the newest.
        for b in [body(json!(null)), json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names"})] {
            let r = rpc(&h, DOWNLOAD, b).await;
            assert_eq!(r.status(), 302);
            let loc = header(&r, LOCATION);
            assert!(loc.contains("/storage/2/us-baby-names.zip?token="), "{loc}");
            assert_eq!(unzip(&get(&loc, None).await.bytes().await.expect("body"))["NationalNames.csv"].0, new);
        }
        let pinned = rpc(&h, DOWNLOAD, body(json!(1))).await;
        assert_eq!(pinned.status(), 302);
        let loc = header(&pinned, LOCATION);
        assert_eq!(loc, v1_rest);
        let r = get(&loc, None).await;
        assert_eq!(header(&r, LAST_MODIFIED), V1_DATE);
        assert_eq!(unzip(&r.bytes().await.expect("body"))["NationalNames.csv"].0, old);

        let r = rpc(&h, DOWNLOAD, body(json!(9))).await;
        assert_eq!(r.status(), 404);
        assert_eq!(json(r).await["code"], 404);

        // One file, zipped or raw, like REST.
        let mut one = body(json!(null));
        one["fileName"] = json!("NationalNames.csv");
        one["raw"] = json!(true);
        let r = rpc(&h, DOWNLOAD, one.clone()).await;
        assert_eq!(r.status(), 302);
        assert_eq!(get(&header(&r, LOCATION), None).await.bytes().await.expect("body"), new);
        one["fileName"] = json!("NoSuchFile.csv");
        assert_eq!(rpc(&h, DOWNLOAD, one).await.status(), 404);

        // Metadata follows the publish; a pinned version is described as such.
        let info =
            json(rpc(&h, GET_DATASET, json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names"})).await).await;
        assert_eq!(info["currentVersionNumber"], 2);
        assert_ne!(info["lastUpdated"], "2016-02-11T00:00:00.000Z");
        assert_eq!(info["totalBytes"], new.len());
        let pinned = json(
            rpc(
                &h,
                GET_DATASET,
                json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names", "datasetVersionNumber": 1}),
            )
            .await,
        )
        .await;
        assert_eq!(pinned["versionNumber"], 1);
        assert_eq!(pinned["currentVersionNumber"], 2);
        assert_eq!(pinned["lastUpdated"], "2016-02-11T00:00:00.000Z");

        let s = h.stats();
        assert_eq!((s.download_calls, s.rpc_download_calls, s.metadata_calls), (8, 7, 2));
        h.stop();
    }

    #[tokio::test]
    async fn etag_and_if_range() {
        let h = start(config(vec![("NationalNames.csv".into(), names_csv(1_000, 9))])).await;
        let loc = location(&h, DATASET).await;
        let r = get(&loc, None).await;
        let etag = header(&r, ETAG);
        let full = r.bytes().await.expect("body");
        assert_eq!(etag, format!("\"{}\"", hex(&sha256(&full))));
        assert_eq!(header(&client().head(&loc).send().await.expect("head"), ETAG), etag);

        let ranged = |if_range: String| {
            let loc = loc.clone();
            async move { client().get(&loc).header(RANGE, "bytes=100-").header(IF_RANGE, if_range).send().await }
        };
        // Matching validators: the part.
        for v in [etag.clone(), V1_DATE.to_string()] {
            let r = ranged(v.clone()).await.expect("call");
            assert_eq!(r.status(), 206, "{v}");
            assert_eq!(r.bytes().await.expect("body"), full.slice(100..));
        }
        // Anything else, a weak tag of the same value included: all of it.
        for v in ["\"0123\"".to_string(), format!("W/{etag}"), "Fri, 12 Feb 2016 00:00:00 GMT".to_string()] {
            let r = ranged(v.clone()).await.expect("call");
            assert_eq!(r.status(), 200, "{v}");
            assert_eq!(header(&r, CONTENT_RANGE), "");
            assert_eq!(header(&r, CONTENT_LENGTH), full.len().to_string());
            assert_eq!(r.bytes().await.expect("body"), full);
        }
        h.stop();
    }

    #[tokio::test]
    async fn last_modified_and_etag_are_the_same_across_instances() {
        let csv = names_csv(500, 10);
        let a = start(config(vec![("NationalNames.csv".into(), csv.clone())])).await;
        let b = start(config(vec![("NationalNames.csv".into(), csv.clone())])).await;
        let (ra, rb) = (get(&location(&a, DATASET).await, None).await, get(&location(&b, DATASET).await, None).await);
        assert_eq!(header(&ra, LAST_MODIFIED), V1_DATE);
        assert_eq!(header(&ra, LAST_MODIFIED), header(&rb, LAST_MODIFIED));
        assert!(!header(&ra, ETAG).is_empty());
        assert_eq!(header(&ra, ETAG), header(&rb, ETAG));
        let body = json!({"ownerSlug": "kaggle", "datasetSlug": "us-baby-names"});
        assert_eq!(json(rpc(&a, METADATA, body.clone()).await).await, json(rpc(&b, METADATA, body).await).await);
        a.stop();
        b.stop();

        // A version with no date of its own is dated by its content alone.
        let files = vec![("NationalNames.csv".to_string(), csv.clone())];
        let (x, y) = (Version::dated_by_content(1, files.clone()), Version::dated_by_content(1, files));
        assert_eq!(x.last_modified, y.last_modified);
        assert!(x.last_modified >= UNIX_EPOCH + Duration::from_secs(1_577_836_800));
        let z = Version::dated_by_content(1, vec![("NationalNames.csv".to_string(), names_csv(500, 11))]);
        assert_ne!(x.last_modified, z.last_modified);
    }

    #[tokio::test]
    async fn introspection() {
        let h = start(Config { tokens: vec!["tok-a".into(), "tok-b".into()], ..Config::default() }).await;
        let call = |auth: &'static str, body: serde_json::Value| {
            let url = endpoint(&h, INTROSPECT);
            async move { client().post(url).header(AUTHORIZATION, auth).json(&body).send().await.expect("call") }
        };
        let r = call("Bearer tok-b", json!({})).await;
        assert_eq!(r.status(), 200);
        let body = json(r).await;
        assert_eq!((body["active"].clone(), body["username"].clone()), (json!(true), json!("sim-user")));
        let r = call("Bearer tok-a", json!({"token": "tok-b"})).await;
        assert_eq!(json(r).await["active"], true);
        let r = call("Bearer tok-a", json!({"token": "stolen"})).await;
        assert_eq!(json(r).await, json!({"active": false}));
        assert_eq!(call("Bearer sim-token", json!({})).await.status(), 401, "not one of this instance's tokens");
        assert_eq!(call("bearer  tok-a ", json!({})).await.status(), 200, "scheme is case-insensitive");
        let s = h.stats();
        assert_eq!((s.introspections, s.unauthorized), (4, 1));
        h.stop();
    }

    #[test]
    fn sha256_matches_fips_180_examples() {
        assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let mut h = Sha256::new();
        for _ in 0..1000 {
            h.update(&[b'a'; 1000]);
        }
        assert_eq!(hex(&h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }

    #[test]
    fn iso_dates_carry_milliseconds() {
        assert_eq!(iso_date(UNIX_EPOCH + Duration::from_secs(V1_SECS)), "2016-02-11T00:00:00.000Z");
        assert_eq!(iso_date(UNIX_EPOCH + Duration::from_millis(951_782_400_042)), "2000-02-29T00:00:00.042Z");
    }
}
