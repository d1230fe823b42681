//! Kaggle dataset-download API simulator.
//!
//! Serves the REST download paths the official `kaggle` client still
//! defines: `GET /api/v1/datasets/download/{owner}/{dataset}` (the whole
//! dataset as a zip) and `.../{owner}/{dataset}/{file_name}` (one file, zipped
//! as Kaggle does unless `raw=true`), with `datasetVersionNumber=N`, behind
//! HTTP Basic `username:key`. Like Kaggle, the API does not send the bytes: it
//! answers 302 to a signed storage URL on the same server (`/storage/...`)
//! that needs no credentials and serves the object with `Content-Length`,
//! `Last-Modified`, `Accept-Ranges: bytes`, single byte ranges (206, 416) and
//! HEAD. Each zip is built once and kept.
//!
//! Failure injection counts down, so tests are deterministic: broken
//! transfers (the full `Content-Length`, about half the body, then the
//! connection closes) and 503s with `Retry-After`. `Handle::publish_version`
//! updates a dataset while the simulator runs.
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
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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

/// Behaviour of one simulator instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Basic credentials clients must send (`KAGGLE_USERNAME`, `KAGGLE_KEY`).
    pub username: String,
    pub key: String,
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
    /// Every request to `/api/v1/datasets/download/...`, whatever its answer.
    pub api_requests: u64,
    /// Every request to `/storage/...`, GET and HEAD.
    pub storage_requests: u64,
    /// Storage requests that carried a `Range` header.
    pub range_requests: u64,
    /// Body bytes handed to connections (only the sent part of a broken one).
    pub bytes_sent: u64,
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
    /// `Authorization` value that passes, computed once.
    expected_auth: String,
    /// Built objects, so a version is zipped once however often it is fetched.
    objects: HashMap<ObjectKey, Bytes>,
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
    let app = Router::new()
        .route("/api/v1/datasets/download/{owner}/{dataset}", get(download_dataset))
        .route("/api/v1/datasets/download/{owner}/{dataset}/{*file_name}", get(download_file))
        // A GET route answers HEAD too; the handler tells them apart.
        .route("/storage/{version}/{*name}", get(storage))
        .route("/_sim/stats", get(stats))
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

async fn download_dataset(
    State(state): State<Shared>,
    Path((owner, dataset)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    download(&state, format!("{owner}/{dataset}"), None, &q, &headers).await
}

async fn download_file(
    State(state): State<Shared>,
    Path((owner, dataset, file_name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    download(&state, format!("{owner}/{dataset}"), Some(file_name), &q, &headers).await
}

/// Checks the request and redirects to the object's signed storage URL.
async fn download(
    state: &Shared,
    dataset: String,
    file: Option<String>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let (latency, fail) = {
        let mut s = lock(state);
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
    let mut s = lock(state);
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !auth.is_some_and(|a| basic_matches(a, &s.expected_auth)) {
        s.stats.unauthorized += 1;
        return api_error(StatusCode::UNAUTHORIZED, "Unauthenticated");
    }
    let asked = match q.get("datasetVersionNumber").map(|v| v.parse::<u32>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return api_error(StatusCode::BAD_REQUEST, "datasetVersionNumber must be a number"),
    };
    let Some(versions) = s.datasets.get(&dataset) else {
        return api_error(StatusCode::NOT_FOUND, &format!("Dataset {dataset} not found"));
    };
    let version = match asked {
        Some(n) => versions.iter().find(|v| v.number == n),
        None => versions.iter().max_by_key(|v| v.number),
    };
    let Some(version) = version else {
        let which = asked.map(|n| format!("version {n} of ")).unwrap_or_default();
        return api_error(StatusCode::NOT_FOUND, &format!("Dataset {which}{dataset} not found"));
    };
    if let Some(f) = &file
        && !version.files.iter().any(|(name, _)| name == f)
    {
        return api_error(StatusCode::NOT_FOUND, &format!("File {f} not found in {dataset}"));
    }
    // `raw` only means something for one file: a whole dataset is a zip.
    let raw = file.is_some() && q.get("raw").is_some_and(|v| v.eq_ignore_ascii_case("true"));
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

/// `Basic` is case-insensitive; the credentials are compared encoded.
fn basic_matches(header: &str, expected: &str) -> bool {
    let (Some((scheme, cred)), Some((_, want))) = (header.trim().split_once(' '), expected.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic") && cred.trim() == want
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
    let Some((bytes, last_modified)) = object(&state, &key).await else {
        return storage_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "Could not build the object.");
    };
    let total = bytes.len() as u64;
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(key.content_type()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (k, v) in [
        (header::LAST_MODIFIED, http_date(last_modified)),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", key.name().replace(['"', '\\'], "_"))),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
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

/// The object's bytes and date, built on first use and kept.
async fn object(state: &Shared, key: &ObjectKey) -> Option<(Bytes, SystemTime)> {
    let (version, cached) = {
        let s = lock(state);
        let version = s.datasets.get(&key.dataset)?.iter().find(|v| v.number == key.version)?.clone();
        (version, s.objects.get(key).cloned())
    };
    if let Some(bytes) = cached {
        return Some((bytes, version.last_modified));
    }
    // Deflating a large dataset takes a while: keep it off the async workers
    // and out of the lock. Two first requests may both build; one result wins.
    let (v, k) = (version.clone(), key.clone());
    let built = tokio::task::spawn_blocking(move || build(&v, &k)).await.ok()?;
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, dataset = %key.dataset, "kaggle simulator could not build a zip");
            return None;
        }
    };
    let bytes = lock(state).objects.entry(key.clone()).or_insert(built).clone();
    Some((bytes, version.last_modified))
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
        ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
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
}
