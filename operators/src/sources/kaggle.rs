//! `kind = "kaggle"`: a Kaggle dataset file, downloaded, staged through
//! object_store (a local folder or S3), extracted, then read like a `file`
//! source from the staged copy.
//!
//! Owns credentials (environment, `kaggle.json` in the official client's
//! search order, or options), the download (redirect, timeouts, retries
//! with backoff and jitter, `Range` resume after a broken transfer, size
//! check, SHA-256), the staging layout and its manifest, and the decision
//! to skip a download when the remote file did not change. Reading the
//! staged CSV is [`super::file::FileSource`]'s job, and its checkpoint
//! offset refers to the staged object (size and ETag), not to Kaggle.
//!
//! Staging layout under `staging`: `<owner>/<dataset>/<archive>.zip`, the
//! extracted `<owner>/<dataset>/<file>`, and `<owner>/<dataset>/manifest.json`
//! (remote Last-Modified, size, SHA-256, staged objects), written last.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::csv::ColumnDecl;
use super::file::{self, FileSource, FileSourceConfig, FileSourceState, OnError};
use crate::api::{BuildContext, Collector, OperatorError, Resume, Snapshot, Source, SourceState};
use crate::storage::{Location, resolve};

fn default_staging() -> String {
    "data/staging".into()
}
/// Which of Kaggle's two API forms to speak.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KaggleApi {
    /// `POST {endpoint}/v1/datasets.DatasetApiService/…`, as the official
    /// client 2.x does (metadata, then download).
    #[default]
    Rpc,
    /// The older `GET {base}/datasets/download/{owner}/{dataset}`.
    Rest,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KaggleSourceConfig {
    /// `owner/dataset`, as in the dataset's URL.
    pub dataset: String,
    /// The file to read; by default the dataset's only CSV.
    pub file: Option<String>,
    /// A dataset version number; by default the newest (`dataset =
    /// "owner/slug/N"` pins it too).
    pub version: Option<u64>,
    /// `rpc` (the current API, default) or `rest` (the older one).
    #[serde(default)]
    pub api: KaggleApi,
    /// Where downloads are staged: a path, `file://…` or `s3://bucket/prefix`.
    #[serde(default = "default_staging")]
    pub staging: String,
    /// The API's address: for `rpc` by default KAGGLE_API_ENDPOINT or
    /// `https://api.kaggle.com`; for `rest` `https://www.kaggle.com/api/v1`.
    pub base_url: Option<String>,
    /// An access token (sent as `Bearer`); by default KAGGLE_API_TOKEN or
    /// `~/.kaggle/access_token`. Tried before `username`/`key`, as the
    /// official client does.
    pub token: Option<String>,
    /// Credentials; by default KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json.
    pub username: Option<String>,
    pub key: Option<String>,
    /// Download even when the remote file looks unchanged.
    #[serde(default)]
    pub force_download: bool,
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout_ms: Option<u64>,
    /// Attempts per request (and per broken transfer) before the run fails.
    pub max_attempts: Option<u32>,
    // CSV options, as for `kind = "file"`.
    pub header: Option<bool>,
    pub delimiter: Option<String>,
    pub quote: Option<String>,
    pub schema: Option<Vec<ColumnDecl>>,
    pub infer_rows: Option<usize>,
    #[serde(default)]
    pub on_error: OnError,
    pub max_record_bytes: Option<usize>,
    /// As the file source's: CSV segments decoded at once, and their size.
    pub decode_threads: Option<usize>,
    pub decode_segment_bytes: Option<usize>,
}

/// What the staging folder remembers of the last download.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub dataset: String,
    pub file: Option<String>,
    pub version: Option<u64>,
    pub last_modified: Option<String>,
    /// The version Kaggle's metadata named, and its last-updated time: what
    /// the next run compares first, with one call.
    #[serde(default)]
    pub remote_version: Option<u64>,
    #[serde(default)]
    pub last_updated: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub archive: String,
    pub csv: String,
    pub csv_size: u64,
}

/// A kaggle source's checkpoint: what was downloaded, and the staged file
/// source's own position.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KaggleState {
    manifest: Manifest,
    file: FileSourceState,
}

/// How requests to the API authenticate.
enum Secret {
    /// An access token, sent as `Authorization: Bearer`.
    Token(String),
    /// The older `username:key`, sent as HTTP Basic.
    Key { username: String, key: String },
}

struct Credentials {
    secret: Secret,
    /// Where they came from, for messages (never the values).
    from: String,
}

impl Credentials {
    fn key(username: String, key: String, from: impl Into<String>) -> Credentials {
        Credentials { secret: Secret::Key { username, key }, from: from.into() }
    }

    fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.secret {
            Secret::Token(t) => r.bearer_auth(t),
            Secret::Key { username, key } => r.basic_auth(username, Some(key)),
        }
    }
}

/// The download and staging half: everything here is Sync, so its futures
/// can be sent between worker threads while the reading half is not.
struct Fetcher {
    cfg: KaggleSourceConfig,
    id: String,
    owner: String,
    slug: String,
    staging: Location,
    /// The API's address, resolved from the options and environment.
    base: String,
}

/// What Kaggle's metadata says of the dataset now.
#[derive(Debug, Default)]
struct Remote {
    version: Option<u64>,
    last_updated: Option<String>,
}

pub struct KaggleSource {
    ctx: BuildContext,
    fetcher: Fetcher,
    inner: Option<FileSource>,
    resume: Option<(Resume, KaggleState)>,
    /// The last completed run read exactly this staged download.
    previous: Option<Manifest>,
    manifest: Option<Manifest>,
    up_to_date: bool,
}

pub fn build(ctx: &BuildContext, cfg: KaggleSourceConfig) -> Result<KaggleSource, OperatorError> {
    let mut cfg = cfg;
    let parts: Vec<&str> = cfg.dataset.split('/').collect();
    let (owner, slug, pinned) = match parts.as_slice() {
        [o, s] if !o.is_empty() && !s.is_empty() => (o.to_string(), s.to_string(), None),
        [o, s, v] if !o.is_empty() && !s.is_empty() => match v.parse::<u64>() {
            Ok(n) if n > 0 => (o.to_string(), s.to_string(), Some(n)),
            _ => {
                return Err(OperatorError::Config(format!(
                    "dataset `{}`: `{v}` is not a version number (owner/dataset/N pins version N)",
                    cfg.dataset
                )));
            }
        },
        _ => {
            return Err(OperatorError::Config(format!(
                "dataset `{}` must be `owner/dataset` (or `owner/dataset/N` for version N), e.g. `kaggle/us-baby-names`",
                cfg.dataset
            )));
        }
    };
    match (pinned, cfg.version) {
        (Some(a), Some(b)) if a != b => {
            return Err(OperatorError::Config(format!(
                "dataset `{}` pins version {a} but `version` says {b}",
                cfg.dataset
            )));
        }
        (Some(a), _) => cfg.version = Some(a),
        _ => {}
    }
    let base = match (&cfg.base_url, cfg.api) {
        (Some(b), _) if !b.is_empty() => b.trim_end_matches('/').to_string(),
        (_, KaggleApi::Rpc) => std::env::var("KAGGLE_API_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "https://api.kaggle.com".into())
            .trim_end_matches('/')
            .to_string(),
        (_, KaggleApi::Rest) => "https://www.kaggle.com/api/v1".into(),
    };
    let staging = resolve(&cfg.staging)?;
    Ok(KaggleSource {
        fetcher: Fetcher { cfg, id: ctx.id.clone(), owner, slug, staging, base },
        ctx: ctx.clone(),
        inner: None,
        resume: None,
        previous: None,
        manifest: None,
        up_to_date: false,
    })
}

/// Credentials in the official client's order: an access token (the
/// `token` option, KAGGLE_API_TOKEN, `~/.kaggle/access_token`), then
/// `username`/`key` (options, KAGGLE_USERNAME and KAGGLE_KEY, kaggle.json in
/// $KAGGLE_CONFIG_DIR, ~/.kaggle, $XDG_CONFIG_HOME/kaggle).
fn credentials(cfg: &KaggleSourceConfig) -> Result<Credentials, OperatorError> {
    let found = find_credentials(cfg)?;
    // Read from files and variables the config never saw: masked in every
    // output from here on.
    match &found.secret {
        Secret::Token(t) => secrets::redact::register(t),
        Secret::Key { key, .. } => secrets::redact::register(key),
    }
    Ok(found)
}

fn find_credentials(cfg: &KaggleSourceConfig) -> Result<Credentials, OperatorError> {
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    if let Some(t) = cfg.token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Credentials { secret: Secret::Token(t.clone()), from: "the `token` option".into() });
    }
    if let Some(t) = env("KAGGLE_API_TOKEN") {
        return Ok(Credentials { secret: Secret::Token(t), from: "KAGGLE_API_TOKEN".into() });
    }
    let mut looked = vec!["the `token` option".to_string(), "KAGGLE_API_TOKEN (unset)".to_string()];
    if let Some(h) = env("HOME") {
        let path = PathBuf::from(h).join(".kaggle/access_token");
        if path.exists() {
            return read_access_token(&path);
        }
        looked.push(format!("{} (not found)", path.display()));
    }
    if let (Some(u), Some(k)) = (&cfg.username, &cfg.key)
        && !u.is_empty()
        && !k.is_empty()
    {
        return Ok(Credentials::key(u.clone(), k.clone(), "the `username`/`key` options"));
    }
    if let (Some(u), Some(k)) = (env("KAGGLE_USERNAME"), env("KAGGLE_KEY")) {
        return Ok(Credentials::key(u, k, "KAGGLE_USERNAME/KAGGLE_KEY"));
    }
    looked.extend(["the `username`/`key` options".to_string(), "KAGGLE_USERNAME/KAGGLE_KEY (unset)".to_string()]);
    let mut candidates: Vec<PathBuf> = Vec::new();
    match env("KAGGLE_CONFIG_DIR") {
        Some(d) => candidates.push(PathBuf::from(d).join("kaggle.json")),
        None => looked.push("$KAGGLE_CONFIG_DIR/kaggle.json (unset)".into()),
    }
    if let Some(h) = env("HOME") {
        candidates.push(PathBuf::from(h).join(".kaggle/kaggle.json"));
    }
    if let Some(x) = env("XDG_CONFIG_HOME") {
        candidates.push(PathBuf::from(x).join("kaggle/kaggle.json"));
    }
    for path in candidates {
        if !path.exists() {
            looked.push(format!("{} (not found)", path.display()));
            continue;
        }
        return read_kaggle_json(&path);
    }
    Err(OperatorError::Config(format!("no Kaggle credentials found; looked in: {}", looked.join(", "))))
}

/// A file holding a secret must be readable by its owner only.
fn check_private(path: &FsPath, what: &str) -> Result<(), OperatorError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0o600);
        if mode & 0o077 != 0 {
            return Err(OperatorError::Config(format!(
                "{} is readable by other users (mode {:o}): it holds {what}; run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
    }
    Ok(())
}

fn read_access_token(path: &FsPath) -> Result<Credentials, OperatorError> {
    check_private(path, "an access token")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| OperatorError::Config(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(OperatorError::Config(format!("{} is empty", path.display())));
    }
    Ok(Credentials { secret: Secret::Token(token.to_string()), from: path.display().to_string() })
}

fn read_kaggle_json(path: &FsPath) -> Result<Credentials, OperatorError> {
    check_private(path, "an API key")?;
    #[derive(Deserialize)]
    struct Json {
        username: String,
        key: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| OperatorError::Config(format!("cannot read {}: {e}", path.display())))?;
    let j: Json = serde_json::from_str(&text).map_err(|e| {
        OperatorError::Config(format!("{} is not {{\"username\": …, \"key\": …}}: {e}", path.display()))
    })?;
    Ok(Credentials::key(j.username, j.key, path.display().to_string()))
}

impl Fetcher {
    fn attempts(&self) -> u32 {
        self.cfg.max_attempts.unwrap_or(5).max(1)
    }

    fn client(&self, redirects: bool) -> Result<reqwest::Client, OperatorError> {
        let b = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(self.cfg.connect_timeout_ms.unwrap_or(10_000)))
            .read_timeout(Duration::from_millis(self.cfg.read_timeout_ms.unwrap_or(60_000)))
            .redirect(if redirects {
                reqwest::redirect::Policy::limited(5)
            } else {
                reqwest::redirect::Policy::none()
            });
        b.build().map_err(|e| OperatorError::Config(format!("cannot build the HTTP client: {e}")))
    }

    fn api_url(&self) -> String {
        if self.cfg.api == KaggleApi::Rpc {
            return self.rpc_url("DownloadDataset");
        }
        let mut u = format!("{}/datasets/download/{}/{}", self.base, self.owner, self.slug);
        if let Some(f) = &self.cfg.file {
            u.push('/');
            u.push_str(f);
        }
        if let Some(v) = self.cfg.version {
            u.push_str(&format!("?datasetVersionNumber={v}"));
        }
        u
    }

    fn rpc_url(&self, method: &str) -> String {
        format!("{}/v1/datasets.DatasetApiService/{method}", self.base)
    }

    /// The API call that leads to the file: a GET (REST) or the
    /// `DownloadDataset` POST (RPC), with credentials.
    fn api_request(&self, client: &reqwest::Client, creds: &Credentials) -> reqwest::RequestBuilder {
        let url = self.api_url();
        let r = match self.cfg.api {
            KaggleApi::Rest => client.get(&url),
            KaggleApi::Rpc => client.post(&url).json(&serde_json::json!({
                "ownerSlug": self.owner,
                "datasetSlug": self.slug,
                "fileName": self.cfg.file,
                "datasetVersionNumber": self.cfg.version,
                "raw": false,
                "hashLink": null,
            })),
        };
        creds.apply(r)
    }

    /// The dataset's current version and last-updated time, in one call
    /// (RPC only; the REST form has no such call here).
    async fn metadata(&self, creds: &Credentials) -> Result<Remote, OperatorError> {
        if self.cfg.api != KaggleApi::Rpc {
            return Ok(Remote::default());
        }
        let client = self.client(false)?;
        // `GetDataset` (kagglesdk's ApiDataset) names the current version
        // and its last-updated time; `GetDatasetMetadata` does not.
        let url = self.rpc_url("GetDataset");
        let mut attempt = 1;
        loop {
            let body = serde_json::json!({ "ownerSlug": self.owner, "datasetSlug": self.slug });
            let r = creds.apply(client.post(&url).json(&body)).send().await;
            let (why, hint) = match r {
                Ok(resp) if resp.status().is_success() => {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    let info = &v;
                    let version =
                        info.get("currentVersionNumber").and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()));
                    let last_updated = info.get("lastUpdated").and_then(|t| t.as_str()).map(str::to_string);
                    return Ok(Remote { version, last_updated });
                }
                Ok(resp) => self.refusal(resp, creds, &url).await?,
                Err(e) => (e.without_url().to_string(), None),
            };
            if attempt >= self.attempts() {
                return Err(OperatorError::Data(format!("{url}: {why} (gave up after {attempt} attempts)")));
            }
            tracing::warn!(attempt, error = %why, "kaggle metadata request failed; retrying");
            self.backoff(attempt, hint).await;
            attempt += 1;
        }
    }

    /// An API answer that is not what was asked for: an error for good
    /// (credentials, no such dataset), or why to try again and how long
    /// the server asked to wait (429, 5xx).
    async fn refusal(
        &self,
        resp: reqwest::Response,
        creds: &Credentials,
        url: &str,
    ) -> Result<(String, Option<Duration>), OperatorError> {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect());
        match status.as_u16() {
            401 | 403 => Err(OperatorError::Config(format!(
                "Kaggle refused the credentials from {} (HTTP {status}: {message}); check the token, or the username and key",
                creds.from
            ))),
            404 => Err(OperatorError::Data(format!(
                "Kaggle has no dataset `{}`{}{} (HTTP 404: {message})",
                self.cfg.dataset,
                self.cfg.file.as_ref().map(|f| format!(" file `{f}`")).unwrap_or_default(),
                self.cfg.version.map(|v| format!(" version {v}")).unwrap_or_default()
            ))),
            429 | 500..=599 => Ok((format!("HTTP {status}: {message}"), retry_after)),
            _ => Err(OperatorError::Data(format!("{}: HTTP {status}: {message}", strip_query(url)))),
        }
    }

    fn obj(&self, name: &str) -> object_store::path::Path {
        self.staging.path.clone().join(self.owner.as_str()).join(self.slug.as_str()).join(name)
    }

    fn obj_url(&self, name: &str) -> String {
        format!("{}/{}/{}/{}", self.cfg.staging.trim_end_matches('/'), self.owner, self.slug, name)
    }

    async fn backoff(&self, attempt: u32, hint: Option<Duration>) {
        let jitter = crate::backoff::full_jitter(crate::backoff::cap(Duration::from_millis(200), attempt, 6));
        // A server may ask for a long pause; a daily job should fail and say
        // so rather than hang for hours.
        let hint = hint.unwrap_or_default().min(Duration::from_secs(60));
        tokio::time::sleep(hint.max(jitter)).await;
    }

    /// Asks the API where the file is: the redirect target (or the API URL
    /// itself when it answers with the bytes).
    async fn locate(&self, creds: &Credentials) -> Result<String, OperatorError> {
        let client = self.client(false)?;
        let url = self.api_url();
        let mut attempt = 1;
        loop {
            let r = self.api_request(&client, creds).send().await;
            // Worth another attempt (5xx, 429, connection or timeout): why,
            // and how long the server asked us to wait.
            let (why, hint) = match r {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_redirection() {
                        let loc = resp
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .ok_or_else(|| OperatorError::Data(format!("{url}: redirect without a Location")))?;
                        let base = reqwest::Url::parse(&url)
                            .map_err(|e| OperatorError::Config(format!("base_url `{}`: {e}", strip_query(&url))))?;
                        let target = base
                            .join(loc)
                            .map_err(|e| OperatorError::Data(format!("bad redirect `{}`: {e}", strip_query(loc))))?;
                        return Ok(target.to_string());
                    }
                    if status.is_success() {
                        if self.cfg.api == KaggleApi::Rpc {
                            return Err(OperatorError::Data(format!(
                                "{url}: Kaggle answered {status} instead of a redirect to the file"
                            )));
                        }
                        return Ok(url);
                    }
                    self.refusal(resp, creds, &url).await?
                }
                Err(e) => (e.without_url().to_string(), None),
            };
            if attempt >= self.attempts() {
                return Err(OperatorError::Data(format!("{url}: {why} (gave up after {attempt} attempts)")));
            }
            tracing::warn!(attempt, error = %why, "kaggle API request failed; retrying");
            self.backoff(attempt, hint).await;
            attempt += 1;
        }
    }

    /// Credentials go only to the API itself; a redirect target is a
    /// signed storage URL that must not receive them.
    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        creds: &Credentials,
    ) -> reqwest::RequestBuilder {
        let r = client.request(method, url);
        if url == self.api_url() { creds.apply(r) } else { r }
    }

    /// Size and Last-Modified of the file behind `url`.
    async fn probe(&self, url: &str, creds: &Credentials) -> Result<(Option<u64>, Option<String>), OperatorError> {
        let client = self.client(true)?;
        let mut attempt = 1;
        loop {
            match self.request(&client, reqwest::Method::HEAD, url, creds).send().await {
                Ok(r) if r.status().is_success() => {
                    let h = r.headers();
                    let size = h.get(reqwest::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                    let lm = h.get(reqwest::header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_string);
                    return Ok((size, lm));
                }
                Ok(r) if attempt < self.attempts() && (r.status().is_server_error() || r.status() == 429) => {}
                Ok(r) => return Err(OperatorError::Data(format!("HEAD {}: HTTP {}", strip_query(url), r.status()))),
                Err(e) if attempt < self.attempts() => {
                    tracing::warn!(attempt, error = %e.without_url(), "HEAD failed; retrying")
                }
                Err(e) => return Err(OperatorError::Data(format!("HEAD {}: {}", strip_query(url), e.without_url()))),
            }
            self.backoff(attempt, None).await;
            attempt += 1;
        }
    }

    /// Streams `url` into `dest`, resuming with `Range` after a broken
    /// transfer; returns (bytes, SHA-256).
    async fn download(
        &self,
        url: &str,
        creds: &Credentials,
        dest: &FsPath,
        expected: Option<u64>,
        last_modified: Option<&str>,
    ) -> Result<(u64, String), OperatorError> {
        use std::io::{Seek, SeekFrom};
        let client = self.client(true)?;
        let io = |e: std::io::Error| OperatorError::Data(format!("writing {}: {e}", dest.display()));
        let mut file = std::fs::File::create(dest).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut have: u64 = 0;
        let mut attempt = 1;
        loop {
            // Whatever a failed attempt half-wrote is cut off: the file holds
            // exactly the `have` bytes the hash covers.
            file.set_len(have).map_err(io)?;
            file.seek(SeekFrom::Start(have)).map_err(io)?;
            let mut req = self.request(&client, reqwest::Method::GET, url, creds);
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
                // Only the same version may be continued.
                if let Some(lm) = last_modified {
                    req = req.header(reqwest::header::IF_RANGE, lm);
                }
            }
            let outcome: Result<bool, String> = async {
                let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
                let status = resp.status();
                if have > 0 && status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && expected == Some(have) {
                    return Ok(true);
                }
                let starts_at = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
                if have > 0 && (status == reqwest::StatusCode::OK || starts_at != Some(have)) {
                    // The server ignored the range (or the object changed):
                    // start over.
                    tracing::warn!(
                        status = status.as_u16(),
                        "the server did not continue the range; downloading from the start"
                    );
                    file.set_len(0).map_err(|e| e.to_string())?;
                    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                    hasher = Sha256::new();
                    have = 0;
                    if status != reqwest::StatusCode::OK {
                        return Ok(false);
                    }
                } else if !status.is_success() {
                    return Err(format!("HTTP {status}"));
                }
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| e.without_url().to_string())?;
                    file.write_all(&chunk).map_err(|e| e.to_string())?;
                    hasher.update(&chunk);
                    have += chunk.len() as u64;
                }
                Ok(expected.is_none_or(|n| have >= n))
            }
            .await;
            match outcome {
                Ok(true) => break,
                Ok(false) | Err(_) if attempt < self.attempts() => {
                    let why = outcome.err().unwrap_or_else(|| "the transfer ended early".into());
                    tracing::warn!(attempt, bytes = have, error = %why, "download interrupted; resuming with Range");
                    self.backoff(attempt, None).await;
                    attempt += 1;
                }
                Ok(false) => {
                    return Err(OperatorError::Data(format!(
                        "download of {} stopped at {have} of {} bytes after {attempt} attempts",
                        self.cfg.dataset,
                        expected.unwrap_or_default()
                    )));
                }
                Err(e) => {
                    return Err(OperatorError::Data(format!(
                        "downloading {}: {e} (gave up after {attempt} attempts, {have} bytes in)",
                        self.cfg.dataset
                    )));
                }
            }
        }
        file.sync_all().map_err(io)?;
        if let Some(n) = expected
            && n != have
        {
            return Err(OperatorError::Data(format!(
                "downloaded {have} bytes of {} but the server announced {n}",
                self.cfg.dataset
            )));
        }
        Ok((have, format!("{:x}", hasher.finalize())))
    }

    /// Copies a local file into the staging store.
    async fn stage(&self, local: &FsPath, name: &str) -> Result<(), OperatorError> {
        let mut w = BufWriter::new(self.staging.store.clone(), self.obj(name));
        let mut f = tokio::fs::File::open(local)
            .await
            .map_err(|e| OperatorError::Data(format!("reading {}: {e}", local.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            use tokio::io::AsyncReadExt;
            let n =
                f.read(&mut buf).await.map_err(|e| OperatorError::Data(format!("reading {}: {e}", local.display())))?;
            if n == 0 {
                break;
            }
            w.put(bytes::Bytes::copy_from_slice(&buf[..n]))
                .await
                .map_err(|e| OperatorError::storage(format!("staging {}", self.obj_url(name)), e))?;
        }
        w.shutdown().await.map_err(|e| OperatorError::Data(format!("staging {}: {e}", self.obj_url(name))))
    }

    async fn read_manifest(&self) -> Option<Manifest> {
        let got = self.staging.store.get(&self.obj("manifest.json")).await.ok()?;
        let bytes = got.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Downloads (unless unchanged), stages and extracts; returns the manifest.
    async fn fetch(&self) -> Result<Manifest, OperatorError> {
        let creds = credentials(&self.cfg)?;
        let remote = self.metadata(&creds).await?;
        let staged = self.read_manifest().await;
        // One metadata call decides an unchanged dataset: same version, same
        // last-updated time, staged copy intact. No download call, no HEAD.
        if let Some(m) = &staged
            && !self.cfg.force_download
            && remote.version.is_some()
            && remote.last_updated.is_some()
            && m.file == self.cfg.file
            && m.version == self.cfg.version
            && (self.cfg.version.is_some() || m.remote_version == remote.version)
            && (self.cfg.version.is_some() || m.last_updated == remote.last_updated)
            && self.staging.store.head(&self.obj(&m.csv)).await.is_ok_and(|h| h.size == m.csv_size)
        {
            tracing::info!(
                dataset = %self.cfg.dataset,
                version = remote.version,
                last_updated = remote.last_updated.as_deref().unwrap_or("-"),
                "unchanged since the last download (metadata): not downloading (force_download = true to fetch anyway)"
            );
            return Ok(m.clone());
        }
        let url = self.locate(&creds).await?;
        let (size, last_modified) = self.probe(&url, &creds).await?;
        if let Some(m) = &staged
            && !self.cfg.force_download
            && m.file == self.cfg.file
            && m.version == self.cfg.version
            && Some(m.size) == size
            && m.last_modified.is_some()
            && m.last_modified == last_modified
            && self.staging.store.head(&self.obj(&m.csv)).await.is_ok_and(|h| h.size == m.csv_size)
        {
            tracing::info!(
                dataset = %self.cfg.dataset,
                last_modified = m.last_modified.as_deref().unwrap_or("-"),
                bytes = m.size,
                "unchanged since the last download: not downloading (force_download = true to fetch anyway)"
            );
            return Ok(Manifest { remote_version: remote.version, last_updated: remote.last_updated, ..m.clone() });
        }
        let tmp = std::env::temp_dir().join(format!("engine-kaggle-{}-{}", std::process::id(), self.id));
        std::fs::create_dir_all(&tmp).map_err(|e| OperatorError::Data(format!("creating {}: {e}", tmp.display())))?;
        let result = self.fetch_into(&tmp, &url, &creds, size, last_modified, remote).await;
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    async fn fetch_into(
        &self,
        tmp: &FsPath,
        url: &str,
        creds: &Credentials,
        size: Option<u64>,
        last_modified: Option<String>,
        remote: Remote,
    ) -> Result<Manifest, OperatorError> {
        let archive = format!("{}.zip", self.cfg.file.clone().unwrap_or_else(|| self.slug.clone()));
        let zip_path = tmp.join(&archive);
        tracing::info!(dataset = %self.cfg.dataset, bytes = size, "downloading");
        let t = std::time::Instant::now();
        let (bytes, sha256) = self.download(url, creds, &zip_path, size, last_modified.as_deref()).await?;
        tracing::info!(bytes, sha256 = %sha256, seconds = t.elapsed().as_secs_f64(), "downloaded");
        let is_zip = std::fs::File::open(&zip_path)
            .and_then(|mut f| {
                let mut m = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut m).map(|_| m == *b"PK\x03\x04")
            })
            .unwrap_or(false);
        let (csv_name, csv_local) = if is_zip {
            self.stage(&zip_path, &archive).await?;
            let want = self.cfg.file.clone();
            let out_dir = tmp.to_path_buf();
            let zp = zip_path.clone();
            tokio::task::spawn_blocking(move || extract(&zp, want.as_deref(), &out_dir))
                .await
                .map_err(|e| OperatorError::Data(format!("extracting: {e}")))??
        } else {
            let name = self.cfg.file.clone().unwrap_or_else(|| format!("{}.csv", self.slug));
            (name, zip_path.clone())
        };
        self.stage(&csv_local, &csv_name).await?;
        let csv_size = std::fs::metadata(&csv_local).map(|m| m.len()).unwrap_or(0);
        let manifest = Manifest {
            dataset: self.cfg.dataset.clone(),
            file: self.cfg.file.clone(),
            version: self.cfg.version,
            last_modified,
            remote_version: remote.version,
            last_updated: remote.last_updated,
            size: bytes,
            sha256,
            archive: if is_zip { archive } else { String::new() },
            csv: csv_name,
            csv_size,
        };
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        self.staging
            .store
            .put(&self.obj("manifest.json"), json.into())
            .await
            .map_err(|e| OperatorError::storage(format!("writing {}", self.obj_url("manifest.json")), e))?;
        tracing::info!(staged = %self.obj_url(&manifest.csv), bytes = csv_size, "staged");
        Ok(manifest)
    }
}

impl KaggleSource {
    fn inner_config(&self, csv: &str) -> FileSourceConfig {
        FileSourceConfig {
            path: self.fetcher.obj_url(csv),
            format: Some(file::Format::Csv),
            header: self.fetcher.cfg.header.unwrap_or(true),
            delimiter: self.fetcher.cfg.delimiter.clone(),
            quote: self.fetcher.cfg.quote.clone().unwrap_or_else(|| "\"".into()),
            schema: self.fetcher.cfg.schema.clone(),
            infer_rows: self.fetcher.cfg.infer_rows.unwrap_or(1000),
            on_error: self.fetcher.cfg.on_error,
            max_record_bytes: self.fetcher.cfg.max_record_bytes.unwrap_or(1 << 20),
            decode_threads: self.fetcher.cfg.decode_threads,
            decode_segment_bytes: self.fetcher.cfg.decode_segment_bytes,
        }
    }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Extracts the wanted CSV (or the archive's only CSV) into `dir`.
fn extract(zip_path: &FsPath, want: Option<&str>, dir: &FsPath) -> Result<(String, PathBuf), OperatorError> {
    let bad = |e: String| OperatorError::Data(format!("{}: {e}", zip_path.display()));
    let f = std::fs::File::open(zip_path).map_err(|e| bad(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let names: Vec<String> = archive.file_names().filter_map(|n| n.ok()).map(|n| n.to_string()).collect();
    let name = match want {
        Some(w) => names.iter().find(|n| n.as_str() == w || n.rsplit('/').next() == Some(w)).cloned(),
        None => {
            let csvs: Vec<&String> = names.iter().filter(|n| n.to_ascii_lowercase().ends_with(".csv")).collect();
            match csvs.as_slice() {
                [one] => Some((*one).clone()),
                _ => {
                    return Err(bad(format!(
                        "set `file`: the archive holds {} CSV files ({})",
                        csvs.len(),
                        names.join(", ")
                    )));
                }
            }
        }
    };
    let Some(name) = name else {
        return Err(bad(format!("no `{}` in the archive (it holds {})", want.unwrap_or_default(), names.join(", "))));
    };
    let mut entry = archive.by_name(&name).map_err(|e| bad(e.to_string()))?;
    let short = name.rsplit('/').next().unwrap_or(&name).to_string();
    let out = dir.join(&short);
    let mut w = std::fs::File::create(&out).map_err(|e| bad(e.to_string()))?;
    std::io::copy(&mut entry, &mut w).map_err(|e| bad(format!("extracting {name}: {e}")))?;
    Ok((short, out))
}

#[async_trait]
impl Source for KaggleSource {
    async fn open(&mut self) -> Result<(), OperatorError> {
        let manifest = match &self.resume {
            // A resumed run goes on with what it was reading: the staged
            // copy, checked by the file source against its size and ETag.
            Some((_, state)) => state.manifest.clone(),
            None => self.fetcher.fetch().await?,
        };
        if self.resume.is_none()
            && !self.fetcher.cfg.force_download
            && self.previous.as_ref().is_some_and(|p| p == &manifest)
        {
            self.up_to_date = true;
        }
        let mut inner = file::build(&self.ctx, self.inner_config(&manifest.csv))?;
        if let Some((resume, state)) = &self.resume {
            let bytes = serde_json::to_vec(&state.file).unwrap_or_default();
            inner.restore(&Resume { epoch: resume.epoch, full: Some(bytes), deltas: Vec::new() })?;
        }
        // Opened even when up to date: the runtime skips the run only when
        // every source is; otherwise this one reads like any other.
        inner.open().await?;
        self.inner = Some(inner);
        self.manifest = Some(manifest);
        Ok(())
    }

    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        match &mut self.inner {
            Some(s) => s.next(out).await,
            None => Err(OperatorError::Data("source read before it was opened".into())),
        }
    }

    fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        let Some(bytes) = &resume.full else {
            return Err(OperatorError::Resume(format!(
                "checkpoint {} holds no position for `{}`",
                resume.epoch, self.ctx.id
            )));
        };
        let state: KaggleState = serde_json::from_slice(bytes).map_err(|e| {
            OperatorError::Resume(format!("checkpoint {} of source `{}` is unreadable: {e}", resume.epoch, self.ctx.id))
        })?;
        self.resume = Some((resume.clone(), state));
        Ok(())
    }

    async fn snapshot(&mut self, out: &mut Collector) -> Result<Snapshot, OperatorError> {
        let (Some(inner), Some(manifest)) = (&mut self.inner, &self.manifest) else {
            return Err(OperatorError::Data("snapshot of a source that is not open".into()));
        };
        let Snapshot::Full(bytes) = inner.snapshot(out).await? else {
            return Err(OperatorError::Data("the staged file gave no position".into()));
        };
        let file: FileSourceState =
            serde_json::from_slice(&bytes).map_err(|e| OperatorError::Data(format!("position: {e}")))?;
        let state = KaggleState { manifest: manifest.clone(), file };
        Ok(Snapshot::Full(serde_json::to_vec(&state).unwrap_or_default()))
    }

    fn position(&self) -> String {
        self.inner.as_ref().map(|s| s.position()).unwrap_or_default()
    }

    fn previous_run(&mut self, state: &[u8]) {
        // The final snapshot of the last completed run.
        self.previous = serde_json::from_slice::<KaggleState>(state).ok().map(|s| s.manifest);
    }

    fn up_to_date(&self) -> Option<String> {
        let m = self.manifest.as_ref()?;
        self.up_to_date.then(|| {
            format!(
                "dataset {} unchanged since the last completed run (Last-Modified {}, {} bytes, sha256 {}…)",
                self.fetcher.cfg.dataset,
                m.last_modified.as_deref().unwrap_or("-"),
                m.size,
                &m.sha256[..m.sha256.len().min(12)]
            )
        })
    }
}
