//! HubSpot requests made to succeed: paced by a client-side limiter
//! (governor, GCRA) and corrected by HubSpot's own rate-limit headers, 429s
//! waited out per policy, 423s backed off, 5xx and transport errors retried
//! with backoff behind a circuit breaker. On top of that one call
//! ([`Client::call`]): batch upserts (207s and 400s turned into per-record
//! rejects, the record ids kept), batch archive, batch read by the id
//! property, and the properties API. Knows nothing of Arrow or the pipeline.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

use super::OnDailyLimit;
use super::headers;
use crate::api::OperatorError;

/// One record to upsert.
#[derive(Clone, Debug)]
pub struct Input {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    /// objectWriteTraceId: how a 207 says which input failed.
    pub trace: String,
    pub line: Option<u64>,
    /// The row's source text, for the reject when HubSpot refuses it.
    pub raw: Option<String>,
}

impl Input {
    pub fn to_json(&self, id_property: &str) -> Value {
        json!({ "id": self.id, "idProperty": id_property, "properties": self.properties, "objectWriteTraceId": self.trace })
    }
}

pub struct Rejected {
    pub input: Input,
    pub category: String,
    pub message: String,
}

#[derive(Default)]
pub struct Outcome {
    pub delivered: u64,
    /// Of `delivered`: records HubSpot says it created (`new: true`).
    pub created: u64,
    /// id value → HubSpot record id, for every result that named both:
    /// what a later archive needs.
    pub ids: Vec<(String, u64)>,
    pub rejected: Vec<Rejected>,
}

/// Which of HubSpot's path schemes to call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/crm/v3/objects/contacts/...`, supported until September 2027.
    V3,
    /// A date version such as `2026-03`: `/crm/objects/2026-03/contacts/...`.
    Dated(String),
}

impl ApiVersion {
    pub fn parse(s: &str) -> Result<ApiVersion, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("v3") {
            return Ok(ApiVersion::V3);
        }
        let b = t.as_bytes();
        let dated = b.len() == 7
            && b[4] == b'-'
            && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
            && matches!(&t[5..], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12");
        if dated {
            Ok(ApiVersion::Dated(t.to_string()))
        } else {
            Err(format!("api_version `{s}` is neither `v3` nor a date version like `2026-03`"))
        }
    }

    /// Path of the objects API for `object`, e.g. `.../contacts`.
    pub fn objects(&self, object: &str) -> String {
        match self {
            ApiVersion::V3 => format!("/crm/v3/objects/{object}"),
            ApiVersion::Dated(d) => format!("/crm/objects/{d}/{object}"),
        }
    }

    /// Path of the properties API for `object`.
    pub fn properties(&self, object: &str) -> String {
        match self {
            ApiVersion::V3 => format!("/crm/v3/properties/{object}"),
            ApiVersion::Dated(d) => format!("/crm/properties/{d}/{object}"),
        }
    }
}

/// A final answer from HubSpot: a 2xx, or a 4xx that retrying cannot fix.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    fn field(&self, k: &str) -> String {
        self.body.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
    }

    /// `CATEGORY: message`, for errors.
    pub fn describe(&self) -> String {
        let (c, m) = (self.field("category"), self.field("message"));
        match (c.is_empty(), m.is_empty()) {
            (true, true) => format!("HTTP {}", self.status),
            (true, false) => format!("HTTP {}: {m}", self.status),
            (false, _) => format!("HTTP {} {c}: {m}", self.status),
        }
    }
}

pub struct Settings {
    pub base_url: String,
    pub api_version: ApiVersion,
    pub id_property: String,
    pub object: String,
    pub token: String,
    /// How to name the token in messages (its variable), never its value.
    pub token_source: String,
    /// Resolves the token's secret again after a 401 (it was rotated).
    pub rotation: Option<std::sync::Arc<dyn crate::api::Rotation>>,
    /// (requests, per, daily)
    pub limit: Option<(u32, Duration, Option<u64>)>,
    /// Requests allowed per day: a client-side budget, so the daily limit
    /// is respected before HubSpot has to say so.
    pub daily: Option<u64>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub on_daily_limit: OnDailyLimit,
    /// Where the daily budget's day starts and ends (HubSpot resets it at
    /// midnight in the account's time zone).
    pub daily_tz: jiff::tz::TimeZone,
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    pub timeout: Duration,
    pub operator: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The share of the limit workers sharing it use together: 95%, not the
/// 98% of one process, because requests leave several processes and reach
/// HubSpot with more jitter between their slots (a loaded 2-core machine
/// running three workers saw one 429 in 2,300 requests at 96%).
pub const SHARED_SHARE: f64 = 0.95;

/// Evenly spaced requests at `share` of `requests` per `per`.
fn spacing_at(requests: u32, per: Duration, share: f64) -> Duration {
    per.mul_f64(1.0 / share) / requests.max(1)
}

pub struct Client {
    s: Settings,
    /// The token in use: replaced when a 401 finds its secret rotated.
    token: std::sync::RwLock<String>,
    /// One re-resolution at a time; requests refused meanwhile retry with
    /// whatever it found.
    rotating: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    /// The limit shared with other workers, when joined; replaces `limiter`.
    shared: std::sync::OnceLock<Arc<queue::limiter::SharedLimiter>>,
    /// This worker's share of the limit (NATS unreachable at start).
    alone: std::sync::OnceLock<DefaultDirectRateLimiter>,
    /// Set from HubSpot's headers: nobody sends before this instant.
    pause_until: Mutex<Option<Instant>>,
    circuit: Mutex<Circuit>,
    requests: AtomicU64,
    /// The daily budget: the day (in `daily_tz`) and requests made in it,
    /// this run and (restored from the checkpoint store) earlier runs.
    day: Mutex<(String, u64)>,
    /// Absurd rate-limit headers are reported once, not per request.
    warned_headers: std::sync::atomic::AtomicBool,
    /// Share of the daily quota used, as the latest response with both
    /// daily headers said.
    daily_reported: Mutex<Option<f64>>,
}

/// Why a single attempt did not produce a final answer.
enum Attempt {
    Done(Answer),
    /// Wait this long, then try again without counting an attempt.
    RateLimited(Duration),
    /// 401 with this token: rotated, or refused for good.
    Unauthorized {
        used: String,
        refusal: OperatorError,
    },
    /// 423: the records are locked by other writes; wait at least 2 s.
    Locked,
    /// Transient: counts against max_attempts and the breaker.
    Transient(String),
    Fatal(OperatorError),
}

impl Client {
    pub fn new(s: Settings) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let limiter = match s.limit {
            Some((requests, per, _)) => {
                // GCRA with no burst: requests evenly spaced at 98% of the
                // limit, so no rolling window ever holds more than allowed,
                // even with some jitter on the way to the server.
                let n = NonZeroU32::new(requests.max(1)).ok_or("requests must be at least 1")?;
                let spacing = spacing_at(n.get(), per, 0.98);
                let quota =
                    Quota::with_period(spacing).ok_or("rate limit period too small")?.allow_burst(NonZeroU32::MIN);
                Some(RateLimiter::direct(quota))
            }
            None => None,
        };
        metrics::gauge!("engine_hubspot_circuit_state", "operator" => s.operator.clone()).set(0.0);
        // Counters exist from the start (at 0), so that dashboards and
        // alerts see them, and `increase()` counts the first event too.
        for name in [
            "engine_hubspot_records_delivered_total",
            "engine_hubspot_records_rejected_total",
            "engine_hubspot_records_archived_total",
            "engine_hubspot_records_retried_total",
            "engine_hubspot_circuit_opened_total",
        ] {
            metrics::counter!(name, "operator" => s.operator.clone()).increment(0);
        }
        Ok(Client {
            token: std::sync::RwLock::new(s.token.clone()),
            rotating: tokio::sync::Mutex::new(()),
            s,
            http,
            limiter,
            shared: Default::default(),
            alone: Default::default(),
            pause_until: Mutex::new(None),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            requests: AtomicU64::new(0),
            day: Mutex::new((String::new(), 0)),
            warned_headers: Default::default(),
            daily_reported: Mutex::new(None),
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.s.base_url)
    }

    fn objects(&self, op: &str) -> String {
        format!("{}/batch/{op}", self.s.api_version.objects(&self.s.object))
    }

    /// Upserts `inputs`; splits refused batches to isolate bad records.
    pub async fn send(&self, inputs: Vec<Input>) -> Result<Outcome, OperatorError> {
        let mut total = Outcome::default();
        let mut work = vec![inputs];
        while let Some(batch) = work.pop() {
            match self.upsert(&batch).await? {
                Ok(o) => {
                    total.delivered += o.delivered;
                    total.created += o.created;
                    total.ids.extend(o.ids);
                    total.rejected.extend(o.rejected);
                }
                Err((category, message)) if batch.len() == 1 => {
                    let input = batch.into_iter().next().expect("one input");
                    total.rejected.push(Rejected { input, category, message });
                }
                Err(_) => {
                    // 400 for the whole batch: halve it until the bad
                    // records are alone, instead of dropping 99 good ones.
                    let mut a = batch;
                    let b = a.split_off(a.len() / 2);
                    work.push(b);
                    work.push(a);
                }
            }
        }
        metrics::counter!("engine_hubspot_records_delivered_total", "operator" => self.s.operator.clone())
            .increment(total.delivered);
        metrics::counter!("engine_hubspot_records_rejected_total", "operator" => self.s.operator.clone())
            .increment(total.rejected.len() as u64);
        Ok(total)
    }

    /// Ok(Ok) final answer, Ok(Err) the batch was refused as a whole.
    async fn upsert(&self, batch: &[Input]) -> Result<Result<Outcome, (String, String)>, OperatorError> {
        let body = json!({ "inputs": batch.iter().map(|i| i.to_json(&self.s.id_property)).collect::<Vec<_>>() });
        let answer = self.call(reqwest::Method::POST, &self.objects("upsert"), Some(&body)).await?;
        match answer.status {
            200 | 201 | 207 => Ok(Ok(self.outcome(batch, &answer.body))),
            400 | 409 | 422 => Ok(Err((answer.field("category"), answer.field("message")))),
            _ => Err(OperatorError::Data(format!("HubSpot refused an upsert: {}", answer.describe()))),
        }
    }

    /// Archives records by HubSpot record id, at most 100 per request.
    pub async fn archive(&self, ids: &[u64]) -> Result<(), OperatorError> {
        for chunk in ids.chunks(100) {
            let body = json!({ "inputs": chunk.iter().map(|id| json!({ "id": id.to_string() })).collect::<Vec<_>>() });
            let answer = self.call(reqwest::Method::POST, &self.objects("archive"), Some(&body)).await?;
            if !(200..300).contains(&answer.status) {
                return Err(OperatorError::Data(format!("HubSpot refused an archive: {}", answer.describe())));
            }
            metrics::counter!("engine_hubspot_records_archived_total", "operator" => self.s.operator.clone())
                .increment(chunk.len() as u64);
        }
        Ok(())
    }

    /// Record ids of the given id values (batch read by the id property);
    /// values HubSpot does not know are left out.
    pub async fn lookup(&self, values: &[String]) -> Result<Vec<(String, u64)>, OperatorError> {
        let mut found = Vec::new();
        for chunk in values.chunks(100) {
            let body = json!({
                "idProperty": self.s.id_property,
                "properties": [self.s.id_property],
                "inputs": chunk.iter().map(|v| json!({ "id": v })).collect::<Vec<_>>(),
            });
            let answer = self.call(reqwest::Method::POST, &self.objects("read"), Some(&body)).await?;
            if !matches!(answer.status, 200 | 207) {
                return Err(OperatorError::Data(format!(
                    "HubSpot refused a read by {}: {}",
                    self.s.id_property,
                    answer.describe()
                )));
            }
            for r in answer.body.get("results").and_then(Value::as_array).into_iter().flatten() {
                let key = r.pointer(&format!("/properties/{}", self.s.id_property)).and_then(Value::as_str);
                if let (Some(key), Some(id)) = (key, record_id(r)) {
                    found.push((key.to_string(), id));
                }
            }
        }
        Ok(found)
    }

    /// GET on the properties API (`suffix` after `/properties/<object>`).
    pub async fn get_properties(&self, suffix: &str) -> Result<Answer, OperatorError> {
        let path = format!("{}{suffix}", self.s.api_version.properties(&self.s.object));
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// POST on the properties API.
    pub async fn post_properties(&self, suffix: &str, body: &Value) -> Result<Answer, OperatorError> {
        let path = format!("{}{suffix}", self.s.api_version.properties(&self.s.object));
        self.call(reqwest::Method::POST, &path, Some(body)).await
    }

    /// One request made to get a final answer: paced, retried on 5xx,
    /// transport errors, 429 and 423, behind the breaker. Returns 2xx and
    /// the 4xx that retrying cannot fix; 401/403 are errors naming the
    /// token's source.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, OperatorError> {
        let mut attempt = 0;
        loop {
            self.wait_turn().await;
            self.daily_budget().await?;
            match self.attempt(method.clone(), path, body).await {
                Attempt::Done(a) => {
                    self.circuit_success();
                    return Ok(a);
                }
                Attempt::RateLimited(wait) => {
                    self.pause(wait);
                }
                Attempt::Locked => {
                    attempt += 1;
                    if attempt >= self.s.max_attempts {
                        return Err(OperatorError::Data(format!(
                            "HubSpot answered 423 (records locked by other writes) {attempt} times; giving up (max_attempts = {})",
                            self.s.max_attempts
                        )));
                    }
                    // HubSpot asks for at least 2 s; more when it keeps saying so.
                    let wait = Duration::from_secs(2)
                        + crate::backoff::full_jitter(crate::backoff::cap(Duration::from_millis(500), attempt, 4));
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "HubSpot answered 423 Locked; waiting");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Transient(why) => {
                    attempt += 1;
                    self.circuit_failure();
                    if attempt >= self.s.max_attempts {
                        return Err(OperatorError::Data(format!(
                            "HubSpot request failed {attempt} times, last: {why}; giving up (max_attempts = {})",
                            self.s.max_attempts
                        )));
                    }
                    let wait =
                        crate::backoff::equal_jitter(crate::backoff::cap(Duration::from_millis(200), attempt, 6));
                    tracing::warn!(attempt, error = %why, wait_ms = wait.as_millis() as u64, "HubSpot request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Unauthorized { used, refusal } => {
                    if !self.rotated(&used).await {
                        return Err(refusal);
                    }
                }
                Attempt::Fatal(e) => return Err(e),
            }
        }
    }

    /// After a 401: whether the token's secret resolves to a new value now
    /// (then it is in use and the request goes again). Resolved once per
    /// refusal; a value that did not change means the refusal stands.
    async fn rotated(&self, used: &str) -> bool {
        let Some(rotation) = &self.s.rotation else { return false };
        let _one = self.rotating.lock().await;
        if *self.token.read().unwrap_or_else(|e| e.into_inner()) != used {
            // Another request already found the new value.
            return true;
        }
        match rotation.refresh("token").await {
            Ok(Some(fresh)) if fresh != used && !fresh.is_empty() => {
                *self.token.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::warn!(
                    credential = %rotation.describe("token"),
                    "HubSpot refused the token (401) and its secret now holds a new value: the credential was rotated; going on with it"
                );
                metrics::counter!("engine_secret_rotations_total", "operator" => self.s.operator.clone()).increment(1);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(credential = %rotation.describe("token"), error = %e, "resolving the token again after a 401 failed");
                false
            }
        }
    }

    /// Waits for the breaker, HubSpot's pause and our limiter, in that order.
    async fn wait_turn(&self) {
        loop {
            let open_until = {
                let mut c = self.circuit.lock().unwrap_or_else(|p| p.into_inner());
                match *c {
                    Circuit::Open { until } if Instant::now() >= until => {
                        *c = Circuit::HalfOpen;
                        self.circuit_gauge(2.0);
                        tracing::info!("circuit breaker half-open: probing HubSpot");
                        None
                    }
                    Circuit::Open { until } => Some(until),
                    _ => None,
                }
            };
            if let Some(until) = open_until {
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            let paused = *self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = paused
                && t > Instant::now()
            {
                tokio::time::sleep_until(t.into()).await;
                continue;
            }
            break;
        }
        if let Some(s) = self.shared.get() {
            s.until_ready().await;
        } else if let Some(l) = self.alone.get() {
            l.until_ready().await;
        } else if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
    }

    /// The spacing between two requests at `share` (0..1) of the
    /// configured limit, if one is set.
    pub fn spacing(&self, share: f64) -> Option<Duration> {
        let (requests, per, _) = self.s.limit?;
        Some(spacing_at(requests, per, share))
    }

    /// Paces requests through a limiter shared with other workers.
    pub fn share(&self, limiter: Arc<queue::limiter::SharedLimiter>) {
        let _ = self.shared.set(limiter);
    }

    /// Paces this worker alone at `1/workers` of the limit.
    pub fn pace_alone(&self, workers: u32) {
        if let Some(spacing) = self.spacing(SHARED_SHARE)
            && let Some(q) = Quota::with_period(spacing * workers.max(1))
        {
            let _ = self.alone.set(RateLimiter::direct(q.allow_burst(NonZeroU32::MIN)));
        }
    }

    /// Counts a request against the daily budget; past it, pause until the
    /// quota resets or fail, as configured.
    async fn daily_budget(&self) -> Result<(), OperatorError> {
        let Some(daily) = self.s.daily else { return Ok(()) };
        loop {
            let today = self.today();
            {
                let mut day = self.day.lock().unwrap_or_else(|p| p.into_inner());
                if day.0 != today {
                    *day = (today, 0);
                }
                if day.1 < daily {
                    day.1 += 1;
                    return Ok(());
                }
            }
            if self.s.on_daily_limit == OnDailyLimit::Fail {
                return Err(OperatorError::Data(format!(
                    "the daily budget of {daily} HubSpot requests is spent (rate_limit.daily, counted over every run of the day); on_daily_limit = \"fail\""
                )));
            }
            let wait = until_midnight(&self.s.daily_tz);
            tracing::warn!(daily, wait_s = wait.as_secs(), "daily request budget spent: pausing until it resets");
            tokio::time::sleep(wait).await;
        }
    }

    /// Today's date where the daily budget is counted.
    fn today(&self) -> String {
        jiff::Timestamp::now().to_zoned_datetime(self.s.daily_tz.clone()).date().to_string()
    }

    /// The day and the requests counted against its budget.
    pub fn day_used(&self) -> (String, u64) {
        let day = self.day.lock().unwrap_or_else(|p| p.into_inner());
        if day.0.is_empty() { (self.today(), 0) } else { day.clone() }
    }

    /// Share (0..=1) of the daily quota used: as HubSpot's daily headers
    /// last said; else, without them (an OAuth app), the requests counted in
    /// today's client-side budget over that budget; else unknown.
    pub fn daily_quota(&self) -> Option<f64> {
        if let Some(used) = *self.daily_reported.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(used);
        }
        let daily = self.s.daily.filter(|d| *d > 0)?;
        let (day, used) = self.day_used();
        let used = if day == self.today() { used } else { 0 };
        Some((used as f64 / daily as f64).min(1.0))
    }

    /// Requests earlier runs made on `date`: they count when it is today.
    pub fn restore_day(&self, date: &str, used: u64) {
        if date == self.today() {
            *self.day.lock().unwrap_or_else(|p| p.into_inner()) = (date.to_string(), used);
        }
    }

    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }

    fn circuit_gauge(&self, v: f64) {
        metrics::gauge!("engine_hubspot_circuit_state", "operator" => self.s.operator.clone()).set(v);
    }

    fn circuit_success(&self) {
        let mut c = self.circuit.lock().unwrap_or_else(|p| p.into_inner());
        if *c != (Circuit::Closed { failures: 0 }) {
            if matches!(*c, Circuit::HalfOpen) {
                tracing::info!("circuit breaker closed: HubSpot answers again");
            }
            *c = Circuit::Closed { failures: 0 };
            self.circuit_gauge(0.0);
        }
    }

    fn circuit_failure(&self) {
        let mut c = self.circuit.lock().unwrap_or_else(|p| p.into_inner());
        let next = match *c {
            Circuit::Closed { failures } if failures + 1 >= self.s.circuit_failures => Some(failures + 1),
            Circuit::Closed { failures } => {
                *c = Circuit::Closed { failures: failures + 1 };
                None
            }
            Circuit::HalfOpen => Some(self.s.circuit_failures),
            Circuit::Open { .. } => None,
        };
        if let Some(failures) = next {
            *c = Circuit::Open { until: Instant::now() + self.s.circuit_open };
            self.circuit_gauge(1.0);
            tracing::warn!(
                failures,
                open_ms = self.s.circuit_open.as_millis() as u64,
                "circuit breaker open: pausing requests to HubSpot"
            );
            metrics::counter!("engine_hubspot_circuit_opened_total", "operator" => self.s.operator.clone())
                .increment(1);
        }
    }

    async fn attempt(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Attempt {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let token = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut req = self.http.request(method, self.url(path)).bearer_auth(&token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await;
        metrics::histogram!("engine_hubspot_request_seconds", "operator" => self.s.operator.clone())
            .record(started.elapsed().as_secs_f64());
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("engine_hubspot_requests_total", "operator" => self.s.operator.clone(), "status" => "error").increment(1);
                return Attempt::Transient(error_chain(e));
            }
        };
        let status = resp.status().as_u16();
        metrics::counter!("engine_hubspot_requests_total", "operator" => self.s.operator.clone(), "status" => status.to_string()).increment(1);
        self.read_limit_headers(resp.headers());
        if let Some(used) = self.daily_quota() {
            metrics::gauge!("engine_hubspot_daily_quota_used_ratio", "operator" => self.s.operator.clone()).set(used);
        }
        let retry_after = headers::retry_after(header(resp.headers(), "retry-after"));
        let interval = headers::interval(header(resp.headers(), "x-hubspot-ratelimit-interval-milliseconds"));
        let body: Value = match resp.text().await {
            Ok(t) if t.trim().is_empty() => Value::Null,
            Ok(t) => serde_json::from_str(&t).unwrap_or(Value::String(t.chars().take(300).collect())),
            Err(e) => return Attempt::Transient(format!("reading the response: {}", error_chain(e))),
        };
        let answer = Answer { status, body };
        match status {
            200..=299 => Attempt::Done(answer),
            401 | 403 => {
                let refusal = OperatorError::Data(format!(
                    "HubSpot refused {} ({}): check that it is a valid private-app token or service key with the CRM scopes the sink needs (contacts read/write, and schema read/write to create properties)",
                    self.s.token_source,
                    answer.describe()
                ));
                // 403 is a missing scope: a new value of the same secret
                // would not fix it.
                if status == 401 { Attempt::Unauthorized { used: token, refusal } } else { Attempt::Fatal(refusal) }
            }
            423 => Attempt::Locked,
            429 => {
                let policy = answer.field("policyName");
                metrics::counter!("engine_hubspot_rate_limited_total", "operator" => self.s.operator.clone(), "policy" => policy.clone())
                    .increment(1);
                if policy == "DAILY" {
                    if self.s.on_daily_limit == OnDailyLimit::Fail {
                        return Attempt::Fatal(OperatorError::Data(
                            "HubSpot's daily request limit is exhausted (policy DAILY); on_daily_limit = \"fail\""
                                .into(),
                        ));
                    }
                    let wait = retry_after.unwrap_or_else(|| until_midnight(&self.s.daily_tz));
                    tracing::warn!(wait_s = wait.as_secs(), "HubSpot daily limit reached: pausing until it resets");
                    return Attempt::RateLimited(wait);
                }
                let wait = retry_after.or(interval).unwrap_or(Duration::from_secs(10));
                tracing::warn!(policy = %policy, wait_ms = wait.as_millis() as u64, "HubSpot rate limit hit; waiting");
                Attempt::RateLimited(wait)
            }
            s if s >= 500 => Attempt::Transient(format!("HubSpot answered {s}: {}", answer.field("message"))),
            _ => Attempt::Done(answer),
        }
    }

    /// The results of a 200 or 207: what was written (and each record's
    /// id), and the inputs the errors' trace ids name as rejected.
    fn outcome(&self, batch: &[Input], body: &Value) -> Outcome {
        let mut rejected = Vec::new();
        let errors = body.get("errors").and_then(Value::as_array).cloned().unwrap_or_default();
        for e in &errors {
            let traces: Vec<&str> = e
                .pointer("/context/objectWriteTraceId")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for t in traces {
                // A trace named twice (two errors about one input) is one
                // rejected record, not two.
                if rejected.iter().any(|r: &Rejected| r.input.trace == t) {
                    continue;
                }
                if let Some(input) = batch.iter().find(|i| i.trace == t) {
                    rejected.push(Rejected {
                        input: input.clone(),
                        category: e.get("category").and_then(Value::as_str).unwrap_or("ERROR").to_string(),
                        message: e.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
                    });
                }
            }
        }
        let by_trace: std::collections::HashMap<&str, &str> =
            batch.iter().map(|i| (i.trace.as_str(), i.id.as_str())).collect();
        let mut ids = Vec::new();
        let mut created = 0;
        for r in body.get("results").and_then(Value::as_array).into_iter().flatten() {
            created += u64::from(r.get("new").and_then(Value::as_bool).unwrap_or(false));
            // The trace id names the input; the id property's value is the
            // fallback where HubSpot does not echo it.
            let key = r
                .get("objectWriteTraceId")
                .and_then(Value::as_str)
                .and_then(|t| by_trace.get(t).copied())
                .or_else(|| r.pointer(&format!("/properties/{}", self.s.id_property)).and_then(Value::as_str));
            if let (Some(key), Some(id)) = (key, record_id(r)) {
                ids.push((key.to_string(), id));
            }
        }
        Outcome { delivered: batch.len().saturating_sub(rejected.len()) as u64, created, ids, rejected }
    }

    /// Other clients share the account's limit: when HubSpot says little is
    /// left, everyone here waits for the window to roll. Also notes how much
    /// of the day's quota is used.
    fn read_limit_headers(&self, h: &reqwest::header::HeaderMap) {
        if let Some(used) = headers::daily_used(
            header(h, "x-hubspot-ratelimit-daily"),
            header(h, "x-hubspot-ratelimit-daily-remaining"),
        ) {
            *self.daily_reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(used);
        }
        let remaining = header(h, "x-hubspot-ratelimit-remaining");
        let max = header(h, "x-hubspot-ratelimit-max");
        let Some(w) = headers::window(remaining, max, header(h, "x-hubspot-ratelimit-interval-milliseconds")) else {
            if (remaining.is_some() || max.is_some()) && !self.warned_headers.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    remaining = remaining.unwrap_or_default(),
                    max = max.unwrap_or_default(),
                    "HubSpot's rate-limit headers make no sense; ignoring them (the client-side limiter still paces)"
                );
            }
            return;
        };
        metrics::gauge!("engine_hubspot_quota_remaining", "operator" => self.s.operator.clone())
            .set(w.remaining as f64);
        // Our own pacing keeps the window just short of full, so an empty
        // window means someone else spends it too: let it roll by the share
        // our in-flight requests need before sending more.
        if let Some(d) = headers::pause_when_spent(w, self.s.concurrency) {
            self.pause(d);
        }
    }
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name)?.to_str().ok()
}

/// A HubSpot record id (a decimal string).
fn record_id(result: &Value) -> Option<u64> {
    match result.get("id")? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The whole cause chain of a transport error ("connection failed: dns
/// error: failed to lookup address …", "… invalid peer certificate …"),
/// without the URL (short messages; and a URL may carry a query).
pub fn error_chain(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut parts = vec![kind.to_string()];
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Time to the next midnight in `tz` (at least a second).
fn until_midnight(tz: &jiff::tz::TimeZone) -> Duration {
    let now = jiff::Timestamp::now();
    let next = now
        .to_zoned_datetime(tz.clone())
        .tomorrow()
        .and_then(|d| d.start_of_day())
        .map(|d| d.timestamp())
        .unwrap_or(now + jiff::SignedDuration::from_hours(24));
    let secs = (next.as_second() - now.as_second()).clamp(1, 90_000);
    Duration::from_secs(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base_url: String) -> Settings {
        Settings {
            base_url,
            api_version: ApiVersion::V3,
            id_property: "baby_key".into(),
            object: "contacts".into(),
            token: "sim-token".into(),
            token_source: "the token".into(),
            rotation: None,
            limit: None,
            daily: None,
            concurrency: 1,
            max_attempts: 6,
            on_daily_limit: OnDailyLimit::Fail,
            daily_tz: jiff::tz::TimeZone::UTC,
            circuit_failures: 3,
            circuit_open: Duration::from_millis(150),
            timeout: Duration::from_secs(5),
            operator: "crm".into(),
        }
    }

    /// A portal that already has the babynames properties.
    fn portal() -> simulators::hubspot::Config {
        simulators::hubspot::Config { properties: simulators::hubspot::babynames_properties(), ..Default::default() }
    }

    fn one() -> Vec<Input> {
        vec![Input { id: "a".into(), properties: BTreeMap::new(), trace: "1".into(), line: Some(2), raw: None }]
    }

    /// Repeated 5xx open the breaker: requests stop for `circuit_open`, a
    /// half-open probe follows, and the request gives up after max_attempts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_failures_open_the_circuit_and_attempts_are_bounded() {
        let cfg = simulators::hubspot::Config { error_rate: 1.0, ..portal() };
        let sim = simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::new(settings(sim.base_url())).unwrap();
        let started = Instant::now();
        let err = client.send(one()).await.err().expect("gives up").to_string();
        assert!(err.contains("failed 6 times") && err.contains("502"), "{err}");
        assert_eq!(sim.stats().requests, 6);
        assert!(matches!(*client.circuit.lock().unwrap(), Circuit::Open { .. }), "a failed half-open probe reopens");
        // The third failure opens the breaker and the failed half-open probe
        // reopens it: at least two open periods on top of the backoff.
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    /// A transport failure says what failed underneath, not only "error
    /// sending request": refused connection, DNS, TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transport_errors_carry_their_cause_chain() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let http = reqwest::Client::new();
        let e = http.get(format!("http://{closed}/x")).send().await.expect_err("nothing listens");
        let text = error_chain(e);
        assert!(text.starts_with("connection failed") && text.to_lowercase().contains("refused"), "{text}");
        let e = http.get("http://no-such-host.invalid/x").send().await.expect_err("no such host");
        let text = error_chain(e);
        assert!(text.contains("dns error"), "{text}");
        // A plain-HTTP server spoken to over https: the TLS handshake fails.
        let sim = simulators::hubspot::serve(portal(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let e = http.get(format!("https://{}/x", sim.addr)).send().await.expect_err("not TLS");
        let text = error_chain(e);
        assert!(text.to_lowercase().contains("tls") || text.contains("InvalidContentType"), "{text}");
        assert!(!text.contains(&sim.addr.to_string()), "no URL in the message: {text}");
    }

    proptest::proptest! {
        /// Whatever a 200/207 body holds (errors naming unknown, repeated
        /// or missing traces; results without ids; wrong types), reading it
        /// never panics and never counts more rejects than inputs.
        #[test]
        fn no_response_body_panics(
            traces in proptest::collection::vec("[0-9]{1,2}", 0..6),
            ids in proptest::collection::vec(proptest::option::of(any_id()), 0..6),
            junk in ".{0,40}",
        ) {
            let client = Client::new(settings("http://127.0.0.1:9".into())).unwrap();
            let batch: Vec<Input> = (0..3)
                .map(|i| Input { id: format!("k{i}"), properties: BTreeMap::new(), trace: i.to_string(), line: None, raw: None })
                .collect();
            let errors: Vec<Value> = traces.iter().map(|t| json!({ "context": { "objectWriteTraceId": [t, t] } })).collect();
            let results: Vec<Value> = ids.iter().map(|id| json!({ "id": id, "objectWriteTraceId": "1", "new": junk.len() % 2 == 0 })).collect();
            for body in [json!({ "errors": errors, "results": results }), json!(junk), serde_json::from_str(&junk).unwrap_or(Value::Null)] {
                let o = client.outcome(&batch, &body);
                proptest::prop_assert!(o.rejected.len() <= batch.len());
                proptest::prop_assert_eq!(o.delivered as usize + o.rejected.len(), batch.len());
            }
        }
    }

    fn any_id() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(|n| json!(n.to_string())),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,8}".prop_map(|s| json!(s))
        ]
    }

    /// 423 Locked is waited out for at least 2 s per answer, and bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locked_records_back_off_at_least_two_seconds() {
        let cfg = simulators::hubspot::Config { locked_rate: 1.0, ..portal() };
        let sim = simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = settings(sim.base_url());
        s.max_attempts = 2;
        let client = Client::new(s).unwrap();
        let started = Instant::now();
        let err = client.send(one()).await.err().expect("gives up").to_string();
        assert!(err.contains("423"), "{err}");
        assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(sim.stats().by_status.get(&423), Some(&2));
    }

    /// `api_version` switches every path to HubSpot's date-versioned scheme.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn date_versions_change_the_paths() {
        assert!(ApiVersion::parse("2026-13").is_err() && ApiVersion::parse("v4").is_err());
        let sim = simulators::hubspot::serve(portal(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = settings(sim.base_url());
        s.api_version = ApiVersion::parse("2026-03").unwrap();
        let client = Client::new(s).unwrap();
        let out = client.send(one()).await.unwrap();
        assert_eq!((out.delivered, out.created, out.ids.len()), (1, 1, 1));
        let (_, id) = out.ids[0].clone();
        assert_eq!(client.lookup(&["a".into()]).await.unwrap(), [("a".to_string(), id)]);
        client.archive(&[id]).await.unwrap();
        assert!(client.lookup(&["a".into()]).await.unwrap().is_empty(), "archived");
        assert_eq!(client.get_properties("/baby_key").await.unwrap().status, 200);
        let mut s = settings(sim.base_url());
        s.api_version = ApiVersion::parse("2025-01").unwrap();
        let err = Client::new(s).unwrap().send(one()).await.err().expect("unknown version").to_string();
        assert!(err.contains("404"), "{err}");
    }

    /// The day's quota use: from the daily headers of the latest response
    /// that had both (missing or bad ones change nothing), else from the
    /// client-side budget, else unknown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daily_quota_use_comes_from_the_headers_else_the_budget() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let cfg = simulators::hubspot::Config { daily: 10, ..portal() };
        let sim = simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::new(settings(sim.base_url())).unwrap();
        assert_eq!(client.daily_quota(), None, "no answer yet, no budget");
        client.send(one()).await.unwrap();
        client.send(one()).await.unwrap();
        assert_eq!(client.daily_quota(), Some(0.2), "2 of 10 used");

        let daily = |d: Option<&[u8]>, r: Option<&[u8]>| {
            let mut h = HeaderMap::new();
            if let Some(d) = d {
                h.insert("x-hubspot-ratelimit-daily", HeaderValue::from_bytes(d).unwrap());
            }
            if let Some(r) = r {
                h.insert("x-hubspot-ratelimit-daily-remaining", HeaderValue::from_bytes(r).unwrap());
            }
            h
        };
        let ignored: [(Option<&[u8]>, Option<&[u8]>); 8] = [
            (None, None),
            (Some(b"10"), None),
            (None, Some(b"1")),
            (Some(b"ten"), Some(b"1")),
            (Some(b"10"), Some(b"11")),
            (Some(b"0"), Some(b"0")),
            (Some(b"-5"), Some(b"1")),
            (Some(b"10\xff"), Some(b"1")),
        ];
        for (d, r) in ignored {
            client.read_limit_headers(&daily(d, r));
            assert_eq!(client.daily_quota(), Some(0.2), "{d:?} / {r:?} is ignored");
        }
        client.read_limit_headers(&daily(Some(b"1000"), Some(b" 250")));
        assert_eq!(client.daily_quota(), Some(0.75), "the latest believable answer counts");

        // No daily headers (an OAuth app): the client-side budget says.
        let cfg = simulators::hubspot::Config { rate_limit_headers: false, ..portal() };
        let sim = simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = settings(sim.base_url());
        s.daily = Some(4);
        let client = Client::new(s).unwrap();
        assert_eq!(client.daily_quota(), Some(0.0));
        client.send(one()).await.unwrap();
        assert_eq!(client.daily_quota(), Some(0.25));
        // Neither: unknown.
        let client = Client::new(settings(sim.base_url())).unwrap();
        client.send(one()).await.unwrap();
        assert_eq!(client.daily_quota(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_daily_budget_is_kept_client_side() {
        let sim = simulators::hubspot::serve(portal(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = settings(sim.base_url());
        s.daily = Some(2);
        let client = Client::new(s).unwrap();
        client.send(one()).await.unwrap();
        client.send(one()).await.unwrap();
        let err = client.send(one()).await.err().expect("budget spent").to_string();
        assert!(err.contains("daily budget of 2"), "{err}");
        assert_eq!(sim.stats().requests, 2, "the third request was never sent");
    }
}
