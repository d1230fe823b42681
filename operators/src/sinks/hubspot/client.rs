//! One HubSpot batch request, made to succeed: paced by a client-side
//! limiter (governor, GCRA) and corrected by HubSpot's own rate-limit
//! headers, 429s waited out per policy, 5xx and transport errors retried
//! with backoff behind a circuit breaker, 207s and 400s turned into
//! per-record rejects. Knows nothing of Arrow or the pipeline.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

use super::OnDailyLimit;
use crate::api::OperatorError;

/// One record to upsert.
#[derive(Clone, Debug)]
pub struct Input {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    /// objectWriteTraceId: how a 207 says which input failed.
    pub trace: String,
    pub line: Option<u64>,
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
    pub rejected: Vec<Rejected>,
}

pub struct Settings {
    pub base_url: String,
    pub id_property: String,
    pub object: String,
    pub token: String,
    /// How to name the token in messages (its variable), never its value.
    pub token_source: String,
    /// (requests, per, daily)
    pub limit: Option<(u32, Duration, Option<u64>)>,
    /// Requests allowed per day: a client-side budget, so the daily limit
    /// is respected before HubSpot has to say so.
    pub daily: Option<u64>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub on_daily_limit: OnDailyLimit,
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

pub struct Client {
    s: Settings,
    http: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Set from HubSpot's headers: nobody sends before this instant.
    pause_until: Mutex<Option<Instant>>,
    circuit: Mutex<Circuit>,
    requests: AtomicU64,
}

/// Why a single attempt did not produce a final answer.
enum Attempt {
    Done(Outcome),
    /// Wait this long, then try again without counting an attempt.
    RateLimited(Duration),
    /// Transient: counts against max_attempts and the breaker.
    Transient(String),
    /// The batch as a whole was refused (400): split it.
    Refused {
        category: String,
        message: String,
    },
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
                let spacing = per.mul_f64(1.0 / 0.98) / n.get();
                let quota =
                    Quota::with_period(spacing).ok_or("rate limit period too small")?.allow_burst(NonZeroU32::MIN);
                Some(RateLimiter::direct(quota))
            }
            None => None,
        };
        metrics::gauge!("engine_hubspot_circuit_state", "operator" => s.operator.clone()).set(0.0);
        Ok(Client {
            s,
            http,
            limiter,
            pause_until: Mutex::new(None),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            requests: AtomicU64::new(0),
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn url(&self) -> String {
        format!("{}/crm/v3/objects/{}/batch/upsert", self.s.base_url, self.s.object)
    }

    /// Upserts `inputs`; splits refused batches to isolate bad records.
    pub async fn send(&self, inputs: Vec<Input>) -> Result<Outcome, OperatorError> {
        let mut total = Outcome::default();
        let mut work = vec![inputs];
        while let Some(batch) = work.pop() {
            match self.send_one(&batch).await? {
                Ok(o) => {
                    total.delivered += o.delivered;
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
    async fn send_one(&self, batch: &[Input]) -> Result<Result<Outcome, (String, String)>, OperatorError> {
        let mut attempt = 0;
        loop {
            self.wait_turn().await;
            self.daily_budget().await?;
            match self.attempt(batch).await {
                Attempt::Done(o) => {
                    self.circuit_success();
                    return Ok(Ok(o));
                }
                Attempt::Refused { category, message } => {
                    self.circuit_success();
                    return Ok(Err((category, message)));
                }
                Attempt::RateLimited(wait) => {
                    self.pause(wait);
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
                Attempt::Fatal(e) => return Err(e),
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
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
    }

    /// Counts a request against the daily budget; past it, pause until the
    /// quota resets or fail, as configured.
    async fn daily_budget(&self) -> Result<(), OperatorError> {
        let Some(daily) = self.s.daily else { return Ok(()) };
        if self.requests.load(Ordering::Relaxed) < daily {
            return Ok(());
        }
        if self.s.on_daily_limit == OnDailyLimit::Fail {
            return Err(OperatorError::Data(format!(
                "the daily budget of {daily} HubSpot requests is spent (rate_limit.daily); on_daily_limit = \"fail\""
            )));
        }
        let wait = until_utc_midnight();
        tracing::warn!(daily, wait_s = wait.as_secs(), "daily request budget spent: pausing until it resets");
        tokio::time::sleep(wait).await;
        self.requests.store(0, Ordering::Relaxed);
        Ok(())
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

    async fn attempt(&self, batch: &[Input]) -> Attempt {
        let body = json!({ "inputs": batch.iter().map(|i| i.to_json(&self.s.id_property)).collect::<Vec<_>>() });
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let resp = self.http.post(self.url()).bearer_auth(&self.s.token).json(&body).send().await;
        metrics::histogram!("engine_hubspot_request_seconds", "operator" => self.s.operator.clone())
            .record(started.elapsed().as_secs_f64());
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("engine_hubspot_requests_total", "operator" => self.s.operator.clone(), "status" => "error").increment(1);
                return Attempt::Transient(format!("{}", without_url(&e)));
            }
        };
        let status = resp.status().as_u16();
        metrics::counter!("engine_hubspot_requests_total", "operator" => self.s.operator.clone(), "status" => status.to_string()).increment(1);
        self.read_limit_headers(resp.headers());
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let interval =
            header_u64(resp.headers(), "x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis);
        let body: Value = match resp.text().await {
            Ok(t) => serde_json::from_str(&t).unwrap_or(Value::Null),
            Err(e) => return Attempt::Transient(format!("reading the response: {}", without_url(&e))),
        };
        let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        match status {
            200 | 201 => Attempt::Done(Outcome { delivered: batch.len() as u64, rejected: Vec::new() }),
            207 => Attempt::Done(self.partial(batch, &body)),
            401 | 403 => Attempt::Fatal(OperatorError::Data(format!(
                "HubSpot refused {} ({status} {}): check that it is a valid private-app token with CRM write scope",
                self.s.token_source,
                field("category")
            ))),
            429 => {
                let policy = field("policyName");
                metrics::counter!("engine_hubspot_rate_limited_total", "operator" => self.s.operator.clone(), "policy" => policy.clone())
                    .increment(1);
                if policy == "DAILY" {
                    if self.s.on_daily_limit == OnDailyLimit::Fail {
                        return Attempt::Fatal(OperatorError::Data(
                            "HubSpot's daily request limit is exhausted (policy DAILY); on_daily_limit = \"fail\""
                                .into(),
                        ));
                    }
                    let wait = retry_after.unwrap_or_else(until_utc_midnight);
                    tracing::warn!(wait_s = wait.as_secs(), "HubSpot daily limit reached: pausing until it resets");
                    return Attempt::RateLimited(wait);
                }
                let wait = retry_after.or(interval).unwrap_or(Duration::from_secs(10));
                tracing::warn!(policy = %policy, wait_ms = wait.as_millis() as u64, "HubSpot rate limit hit; waiting");
                Attempt::RateLimited(wait)
            }
            400 | 422 => Attempt::Refused { category: field("category"), message: field("message") },
            s if s >= 500 => Attempt::Transient(format!("HubSpot answered {s}: {}", field("message"))),
            s => Attempt::Fatal(OperatorError::Data(format!("HubSpot answered {s}: {}", field("message")))),
        }
    }

    /// 207: the inputs named by the errors' trace ids are rejected; the
    /// others were written.
    fn partial(&self, batch: &[Input], body: &Value) -> Outcome {
        let mut rejected = Vec::new();
        let errors = body.get("errors").and_then(Value::as_array).cloned().unwrap_or_default();
        for e in &errors {
            let traces: Vec<&str> = e
                .pointer("/context/objectWriteTraceId")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for t in traces {
                if let Some(input) = batch.iter().find(|i| i.trace == t) {
                    rejected.push(Rejected {
                        input: input.clone(),
                        category: e.get("category").and_then(Value::as_str).unwrap_or("ERROR").to_string(),
                        message: e.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
                    });
                }
            }
        }
        Outcome { delivered: (batch.len() - rejected.len()) as u64, rejected }
    }

    /// Other clients share the account's limit: when HubSpot says little is
    /// left, everyone here waits for the window to roll.
    fn read_limit_headers(&self, h: &reqwest::header::HeaderMap) {
        let (Some(remaining), Some(max)) =
            (header_u64(h, "x-hubspot-ratelimit-remaining"), header_u64(h, "x-hubspot-ratelimit-max"))
        else {
            return;
        };
        metrics::gauge!("engine_hubspot_quota_remaining", "operator" => self.s.operator.clone()).set(remaining as f64);
        let interval = header_u64(h, "x-hubspot-ratelimit-interval-milliseconds").unwrap_or(10_000);
        if remaining == 0 {
            // Our own pacing keeps the window just short of full, so an empty
            // window means someone else spends it too: let it roll by the
            // share our in-flight requests need before sending more.
            let per_request = Duration::from_millis(interval) / (max.max(1) as u32);
            self.pause(per_request * (self.s.concurrency as u32 + 1));
        }
    }
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// reqwest errors print the URL; ours carries no secret, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") }
}

fn until_utc_midnight() -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Duration::from_secs(86_400 - now % 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base_url: String) -> Settings {
        Settings {
            base_url,
            id_property: "baby_key".into(),
            object: "contacts".into(),
            token: "sim-token".into(),
            token_source: "the token".into(),
            limit: None,
            daily: None,
            concurrency: 1,
            max_attempts: 6,
            on_daily_limit: OnDailyLimit::Fail,
            circuit_failures: 3,
            circuit_open: Duration::from_millis(150),
            timeout: Duration::from_secs(5),
            operator: "crm".into(),
        }
    }

    fn one() -> Vec<Input> {
        vec![Input { id: "a".into(), properties: BTreeMap::new(), trace: "1".into(), line: Some(2) }]
    }

    /// Repeated 5xx open the breaker: requests stop for `circuit_open`, a
    /// half-open probe follows, and the request gives up after max_attempts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_failures_open_the_circuit_and_attempts_are_bounded() {
        let cfg = simulators::hubspot::Config { error_rate: 1.0, ..Default::default() };
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_daily_budget_is_kept_client_side() {
        let sim = simulators::hubspot::serve(Default::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
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
