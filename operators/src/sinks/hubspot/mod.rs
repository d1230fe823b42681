//! `kind = "hubspot"`: upserts rows as CRM objects through HubSpot's batch
//! API. Owns batching (at most 100 inputs, no id twice in a batch), pacing
//! under the account's rate limit, retries, the circuit breaker and turning
//! HubSpot's per-record refusals into `rejects` rows. With no token it
//! writes the exact request bodies to an outbox file instead (offline runs).
//!
//! Exactly-once: upserts on a unique property are idempotent, so a replayed
//! batch rewrites the same values; a barrier is acknowledged only after
//! every batch before it got its final answer.

mod client;
mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::api::{BuildContext, Collector, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::rejects::{Reject, RejectsBuilder};
use crate::staged::Parts;
use crate::storage::{Location, resolve};
use client::{Client, Input, Outcome};
pub use template::Template;

/// The sink's only output port.
pub const REJECTS: usize = 0;

fn hundred() -> usize {
    100
}
fn four() -> usize {
    4
}
fn eight() -> u32 {
    8
}
fn contacts() -> String {
    "contacts".into()
}
fn outbox() -> String {
    "data/out/hubspot-outbox.ndjson".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per window (HubSpot Starter: 100 per 10 s).
    pub requests: u32,
    /// Window length: `10s`, `1s`, `500ms`.
    pub per: String,
    /// Requests per day (Starter: 250,000).
    pub daily: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDailyLimit {
    /// Pause until the quota resets (Retry-After, else next UTC midnight).
    #[default]
    Wait,
    Fail,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    pub base_url: String,
    /// Private-app token. Empty or absent: offline, bodies go to `outbox`.
    pub token: Option<String>,
    #[serde(default = "contacts")]
    pub object: String,
    /// The unique property the id values belong to.
    pub id_property: String,
    /// Template of the id value over input columns, e.g. `{Name}|{Gender}|{Year}`.
    pub id: String,
    /// Property name → template.
    pub properties: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
    /// Inputs per request, at most 100.
    #[serde(default = "hundred")]
    pub batch_size: usize,
    /// Requests in flight at once.
    #[serde(default = "four")]
    pub concurrency: usize,
    /// Attempts per request on 5xx, timeouts and connection errors.
    #[serde(default = "eight")]
    pub max_attempts: u32,
    #[serde(default)]
    pub on_daily_limit: OnDailyLimit,
    /// Consecutive failures that open the circuit breaker.
    pub circuit_failures: Option<u32>,
    /// How long the breaker stays open before a probe, in milliseconds.
    pub circuit_open_ms: Option<u64>,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Where bodies go when there is no token.
    #[serde(default = "outbox")]
    pub outbox: String,
    /// Send a part-filled batch after this long without new rows.
    pub linger_ms: Option<u64>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    if secs <= 0.0 {
        return Err(format!("`{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The `${VAR}` names in a raw option string, for messages about its value.
fn variables(raw: &Value) -> Vec<String> {
    let Some(s) = raw.as_str() else { return Vec::new() };
    s.split("${")
        .skip(1)
        .filter_map(|rest| rest.split(['}', ':']).next())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

enum Mode {
    Online(Arc<Client>),
    Outbox { loc: Location, parts: Parts, writer: Option<BufWriter> },
}

pub struct HubSpotSink {
    cfg: HubSpotConfig,
    id: Template,
    properties: Vec<(String, Template)>,
    mode: Mode,
    /// The batch being filled: inputs in arrival order, and where each id sits.
    pending: Vec<Input>,
    by_id: HashMap<String, usize>,
    in_flight: JoinSet<Result<Outcome, OperatorError>>,
    next_trace: u64,
    operator: String,
    delivered: u64,
    announced: bool,
}

pub fn build(ctx: &BuildContext, cfg: HubSpotConfig) -> Result<HubSpotSink, OperatorError> {
    let cfg_err = |m: String| OperatorError::Config(m);
    if cfg.batch_size == 0 || cfg.batch_size > 100 {
        return Err(cfg_err(format!("batch_size must be 1..=100 (HubSpot's limit), got {}", cfg.batch_size)));
    }
    if cfg.concurrency == 0 {
        return Err(cfg_err("concurrency must be at least 1".into()));
    }
    let id = Template::parse(&cfg.id).map_err(cfg_err)?;
    let properties = cfg
        .properties
        .iter()
        .map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cfg_err)?;
    let token = cfg.token.clone().unwrap_or_default();
    let mode = if token.is_empty() {
        let loc = resolve(&cfg.outbox)?;
        let parts = Parts::new(&loc, &ctx.id);
        Mode::Outbox { loc, parts, writer: None }
    } else {
        let vars = variables(&ctx.raw_options["token"]);
        let token_source = match vars.first() {
            Some(v) => format!("the token from ${v}"),
            None => "the `token` option's value".to_string(),
        };
        let limit = match &cfg.rate_limit {
            Some(r) => Some((r.requests, parse_duration(&r.per).map_err(cfg_err)?, r.daily)),
            None => None,
        };
        let client = Client::new(client::Settings {
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            id_property: cfg.id_property.clone(),
            object: cfg.object.clone(),
            token,
            token_source,
            limit,
            daily: cfg.rate_limit.as_ref().and_then(|r| r.daily),
            concurrency: cfg.concurrency,
            max_attempts: cfg.max_attempts.max(1),
            on_daily_limit: cfg.on_daily_limit,
            circuit_failures: cfg.circuit_failures.unwrap_or(5).max(1),
            circuit_open: Duration::from_millis(cfg.circuit_open_ms.unwrap_or(2000)),
            timeout: Duration::from_millis(cfg.timeout_ms.unwrap_or(30_000)),
            operator: ctx.id.clone(),
        })
        .map_err(cfg_err)?;
        Mode::Online(Arc::new(client))
    };
    Ok(HubSpotSink {
        cfg,
        id,
        properties,
        mode,
        pending: Vec::new(),
        by_id: HashMap::new(),
        in_flight: JoinSet::new(),
        next_trace: 0,
        operator: ctx.id.clone(),
        delivered: 0,
        announced: false,
    })
}

impl HubSpotSink {
    /// Sends (or writes out) the pending batch.
    async fn flush(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let inputs = std::mem::take(&mut self.pending);
        self.by_id.clear();
        match &mut self.mode {
            Mode::Outbox { loc, parts, writer } => {
                let body =
                    json!({ "inputs": inputs.iter().map(|i| i.to_json(&self.cfg.id_property)).collect::<Vec<_>>() });
                let mut line = serde_json::to_vec(&body)
                    .map_err(|e| OperatorError::Data(format!("encoding a request body: {e}")))?;
                line.push(b'\n');
                if writer.is_none() {
                    parts.prepare().await?;
                }
                let w = writer.get_or_insert_with(|| parts.writer());
                w.put(Bytes::from(line))
                    .await
                    .map_err(|e| OperatorError::storage(format!("writing {}", loc.display), e))?;
                self.delivered += inputs.len() as u64;
            }
            Mode::Online(client) => {
                let client = client.clone();
                while self.in_flight.len() >= self.cfg.concurrency {
                    self.reap_one(out).await?;
                }
                self.in_flight.spawn(async move { client.send(inputs).await });
            }
        }
        Ok(())
    }

    async fn reap_one(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let Some(joined) = self.in_flight.join_next().await else { return Ok(()) };
        let outcome = joined.map_err(|e| OperatorError::Data(format!("a request task failed: {e}")))??;
        self.delivered += outcome.delivered;
        if !outcome.rejected.is_empty() {
            let mut rb = RejectsBuilder::new(&self.operator);
            for r in &outcome.rejected {
                let reason = format!("HubSpot {}: {}", r.category, r.message);
                let raw = serde_json::to_string(&r.input.to_json(&self.cfg.id_property)).unwrap_or_default();
                rb.push(Reject {
                    line: r.input.line,
                    column: None,
                    rule: "hubspot",
                    value: Some(&r.input.id),
                    reason: &reason,
                    raw: Some(&raw),
                });
            }
            if let Some(b) = rb.finish() {
                out.emit(REJECTS, b).await?;
            }
        }
        Ok(())
    }

    async fn drain(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        while !self.in_flight.is_empty() {
            self.reap_one(out).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for HubSpotSink {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        if !self.announced {
            self.announced = true;
            tracing::info!(mode = %self.describe(), "hubspot sink started");
        }
        let records = &batch.records;
        let schema = records.schema();
        self.id.check(&schema).map_err(OperatorError::Config)?;
        for (_, t) in &self.properties {
            t.check(&schema).map_err(OperatorError::Config)?;
        }
        for i in 0..batch.num_rows() {
            let id = self.id.render(records, i);
            let properties: BTreeMap<String, String> =
                self.properties.iter().map(|(k, t)| (k.clone(), t.render(records, i))).collect();
            self.next_trace += 1;
            let input = Input { id: id.clone(), properties, trace: self.next_trace.to_string(), line: batch.line(i) };
            // HubSpot refuses a batch with the same id twice: the later row
            // replaces the earlier one, as the upsert would have.
            match self.by_id.get(&id) {
                Some(&at) => self.pending[at] = input,
                None => {
                    self.by_id.insert(id, self.pending.len());
                    self.pending.push(input);
                }
            }
            if self.pending.len() >= self.cfg.batch_size {
                self.flush(out).await?;
            }
        }
        Ok(())
    }

    async fn on_barrier(&mut self, barrier: Barrier, out: &mut Collector) -> Result<Snapshot, OperatorError> {
        // Every upsert of the epoch is answered before the barrier is
        // acknowledged. Online, that is all: an upsert by id is idempotent,
        // so rows a resumed run sends again change nothing. The outbox
        // closes its part, like the file sink.
        self.flush(out).await?;
        self.drain(out).await?;
        if let Mode::Outbox { loc, parts, writer } = &mut self.mode {
            if let Some(mut w) = writer.take() {
                w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", loc.display)))?;
            }
            parts.sealed(barrier.epoch);
        }
        Ok(Snapshot::None)
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        if let Mode::Outbox { parts, .. } = &mut self.mode {
            parts.resume(resume.epoch);
            parts.kept().await?;
        }
        Ok(())
    }

    fn idle_after(&self) -> Option<Duration> {
        (!self.pending.is_empty()).then(|| Duration::from_millis(self.cfg.linger_ms.unwrap_or(1000)))
    }

    async fn on_idle(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        self.flush(out).await
    }

    async fn finish(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        self.flush(out).await?;
        self.drain(out).await?;
        if let Mode::Outbox { loc, writer, .. } = &mut self.mode
            && let Some(mut w) = writer.take()
        {
            w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", loc.display)))?;
        }
        if let Mode::Online(c) = &self.mode {
            tracing::info!(delivered = self.delivered, requests = c.requests(), "hubspot sink finished");
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), OperatorError> {
        if let Mode::Outbox { loc, parts, .. } = &mut self.mode {
            parts.publish(false).await?;
            tracing::info!(path = %loc.display, inputs = self.delivered, "hubspot outbox written (no token: nothing was sent)");
        }
        Ok(())
    }

    async fn abort(&mut self) {
        self.in_flight.abort_all();
        if let Mode::Outbox { writer, .. } = &mut self.mode
            && let Some(mut w) = writer.take()
        {
            let _ = w.abort().await;
        }
    }
}

impl HubSpotSink {
    /// Says at start which mode the sink is in.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Online(_) => format!("upserting {} to {}", self.cfg.object, self.cfg.base_url),
            Mode::Outbox { loc, .. } => {
                format!("no token: writing request bodies to {} instead of sending", loc.display)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OperatorStats;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    #[test]
    fn durations_and_variables_are_read_as_written() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("ten").is_err());
        assert_eq!(variables(&json!("${HUBSPOT_TOKEN}")), ["HUBSPOT_TOKEN"]);
        assert_eq!(variables(&json!("${A:-x}-${B}")), ["A", "B"]);
        assert!(variables(&json!("literal")).is_empty());
    }

    /// The linger: rows that do not fill a batch are sent once the runtime
    /// reports the input idle, not only at the end of the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_filled_batch_is_sent_when_the_input_goes_idle() {
        let sim = simulators::hubspot::serve(Default::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let cfg: HubSpotConfig = serde_json::from_value(json!({
            "base_url": sim.base_url(), "token": "sim-token", "id_property": "baby_key",
            "id": "{Name}", "properties": { "firstname": "{Name}" }, "linger_ms": 50
        }))
        .unwrap();
        let ctx = BuildContext { pipeline: "p".into(), id: "crm".into(), batch_size: 10, raw_options: Value::Null };
        let mut sink = build(&ctx, cfg).unwrap();
        let mut out = Collector::new("crm", vec![], Arc::new(OperatorStats::default()), Default::default());
        assert_eq!(sink.idle_after(), None, "nothing pending, nothing to linger for");
        let schema = Arc::new(Schema::new(vec![Field::new("Name", DataType::Utf8, false)]));
        let rb = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["Ann", "Bob", "Ann"]))]).unwrap();
        sink.process(Batch::new(rb), &mut out).await.unwrap();
        assert_eq!(sim.stats().requests, 0, "3 rows do not fill a batch of 100");
        assert_eq!(sink.idle_after(), Some(Duration::from_millis(50)));
        sink.on_idle(&mut out).await.unwrap();
        sink.drain(&mut out).await.unwrap();
        assert_eq!(sim.stats().requests, 1);
        assert_eq!(sim.stats().inputs_received, 2, "Ann twice in one batch became one input");
        assert_eq!(sim.contacts().len(), 2);
        sink.finish(&mut out).await.unwrap();
        assert_eq!(sim.stats().requests, 1, "nothing left to send at the end");
    }
}
