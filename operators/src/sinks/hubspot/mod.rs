//! `kind = "hubspot"`: upserts rows as CRM objects through HubSpot's batch
//! API, and archives the records whose keys arrive on its `deletes` input.
//! Owns batching (at most 100 inputs, no id twice in a batch), pacing
//! under the account's rate limit, retries, the circuit breaker, turning
//! HubSpot's per-record refusals into `rejects` rows, and offering refused
//! records again in the next run. Before the first record it makes sure the
//! properties it writes exist (`properties.rs`). With no token it writes
//! the exact request bodies to an outbox file instead (offline runs).
//!
//! Exactly-once: upserts on a unique property are idempotent, so a replayed
//! batch rewrites the same values; archiving an archived record changes
//! nothing; a barrier is acknowledged only after every request before it
//! got its final answer, and the ledger of record ids and refusals
//! (`ledger.rs`) is checkpointed with it.

mod client;
mod headers;
mod ledger;
mod properties;
mod template;

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::plan::Plan;
use crate::rejects::{Reject, RejectsBuilder};
use crate::sources::file::thousands;
use crate::staged::Parts;
use crate::storage::{Location, resolve};
pub use client::ApiVersion;
use client::{Client, Input, Outcome};
use ledger::{Ledger, Refusal};
pub use properties::{PropType, Setup, Wanted};
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
fn yes() -> bool {
    true
}
fn five_percent() -> f64 {
    0.05
}
fn contacts() -> String {
    "contacts".into()
}
fn outbox() -> String {
    "data/out/hubspot-outbox.ndjson".into()
}
fn v3() -> String {
    "v3".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per window (HubSpot Starter: 100 per 10 s).
    pub requests: u32,
    /// Window length: `10s`, `1s`, `500ms`.
    pub per: String,
    /// Requests per day (Starter: 250,000), counted over every run of the
    /// day (the count is kept with the checkpoints).
    pub daily: Option<u64>,
    /// The IANA time zone whose midnight resets the daily count (HubSpot:
    /// the account's time zone); default UTC.
    pub daily_reset_tz: Option<String>,
    /// One limit shared by several workers (the limit is per HubSpot
    /// account, not per process), through a NATS key-value bucket.
    pub shared: Option<SharedLimit>,
}

fn limits_bucket() -> String {
    "engine_rate_limits".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLimit {
    #[serde(default = "crate::queued::default_nats_url")]
    pub url: String,
    #[serde(default = "limits_bucket")]
    pub bucket: String,
    /// The account's name in the bucket; default: the `base_url`'s host.
    /// Workers that share it share the limit.
    pub key: Option<String>,
    /// Workers sharing the limit: each paces itself at 1/workers of it
    /// while NATS is unreachable.
    pub workers: u32,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDailyLimit {
    /// Pause until the quota resets (Retry-After, else next UTC midnight).
    #[default]
    Wait,
    Fail,
}

/// What to do with keys on the `deletes` input.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Archive the records (HubSpot keeps them 90 days in its recycle bin).
    #[default]
    Archive,
    /// Count them, touch nothing.
    Ignore,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    pub base_url: String,
    /// Private-app token or service key. Empty or absent: offline, bodies
    /// go to `outbox`.
    pub token: Option<String>,
    #[serde(default = "contacts")]
    pub object: String,
    /// The unique property the id values belong to.
    pub id_property: String,
    /// Template of the id value over input columns, e.g. `{Name}|{Gender}|{Year}`.
    pub id: String,
    /// Property name → template.
    pub properties: BTreeMap<String, String>,
    /// Property name → HubSpot type (`string`, `number`, `date`,
    /// `datetime`, `bool`, `enumeration`) for the properties the sink
    /// creates; default `string`.
    #[serde(default)]
    pub property_types: BTreeMap<String, String>,
    /// Property name → the values of an enumeration (implies its type).
    #[serde(default)]
    pub property_options: BTreeMap<String, Vec<String>>,
    /// Filled by the engine from `one_of` rules upstream: enumeration
    /// values used only when the sink creates a property nobody typed; an
    /// existing property keeps its type.
    #[serde(default)]
    pub derived_property_options: BTreeMap<String, Vec<String>>,
    /// Create missing properties before the first record (else refuse to
    /// start, naming them).
    #[serde(default = "yes")]
    pub create_properties: bool,
    /// Group of the created properties; default named after the pipeline.
    pub property_group: Option<String>,
    /// `v3` or a date version such as `2026-03`.
    #[serde(default = "v3")]
    pub api_version: String,
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Refuse a run that would archive more than this share of the records
    /// the sink holds (`--allow-mass-delete` overrides; 1.0 turns it off).
    #[serde(default = "five_percent")]
    pub max_delete_ratio: f64,
    pub rate_limit: Option<RateLimit>,
    /// Inputs per request, at most 100.
    #[serde(default = "hundred")]
    pub batch_size: usize,
    /// Requests in flight at once.
    #[serde(default = "four")]
    pub concurrency: usize,
    /// Attempts per request on 5xx, 423, timeouts and connection errors.
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

// Moved to a shared module (checkpoint intervals read durations too);
// re-exported so existing callers keep compiling.
pub use crate::duration::parse_duration;

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

/// What a request task hands back.
enum Done {
    /// The ids the request carried, and what became of them.
    Upserted(Vec<String>, Outcome),
    /// Keys whose records were archived, and keys HubSpot did not know.
    Archived { keys: Vec<String>, absent: Vec<String> },
}

/// What the sink did this run, for the summary and the log.
#[derive(Default)]
struct Counts {
    delivered: u64,
    created: u64,
    archived: u64,
    /// Deleted keys HubSpot had no record of.
    absent: u64,
    ignored: u64,
    retried: u64,
    retried_ok: u64,
}

pub struct HubSpotSink {
    cfg: HubSpotConfig,
    pipeline: String,
    id: Template,
    properties: Vec<(String, Template)>,
    wanted: Vec<Wanted>,
    mode: Mode,
    /// The batch being filled: inputs in arrival order, and where each id sits.
    pending: Vec<Input>,
    by_id: HashMap<String, usize>,
    /// Keys to archive: with a known record id, and without (looked up first).
    to_archive: Vec<(String, u64)>,
    to_look_up: Vec<String>,
    in_flight: JoinSet<Result<Done, OperatorError>>,
    /// Ids with an upsert in flight: a newer row for one of them waits for
    /// the older request's answer, so the later row always lands last.
    in_flight_ids: HashMap<String, u32>,
    ledger: Ledger,
    /// Keys offered again this run after an earlier refusal.
    retrying: HashSet<String>,
    next_trace: u64,
    operator: String,
    /// The outbox's lock (offline): one run writes it at a time.
    lock: Option<crate::lock::OutputLock>,
    counts: Counts,
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
    if !(0.0..=1.0).contains(&cfg.max_delete_ratio) {
        return Err(cfg_err(format!("max_delete_ratio must be between 0 and 1, got {}", cfg.max_delete_ratio)));
    }
    let api_version = ApiVersion::parse(&cfg.api_version).map_err(cfg_err)?;
    let id = Template::parse(&cfg.id).map_err(cfg_err)?;
    let properties = cfg
        .properties
        .iter()
        .map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cfg_err)?;
    let wanted = wanted(&cfg).map_err(cfg_err)?;
    // Checked even offline: `engine validate` must catch it either way.
    if let Some(r) = &cfg.rate_limit {
        parse_duration(&r.per).map_err(cfg_err)?;
    }
    let token = cfg.token.clone().unwrap_or_default();
    let mode = if token.is_empty() {
        let loc = resolve(&cfg.outbox)?;
        let parts = Parts::new(&loc, &ctx.id);
        Mode::Outbox { loc, parts, writer: None }
    } else {
        let vars = variables(&ctx.raw_options["token"]);
        let token_source = match (vars.first(), &ctx.rotation) {
            (_, Some(r)) if r.describe("token").starts_with("SECRET[") => {
                format!("the token from {}", r.describe("token"))
            }
            (Some(v), _) => format!("the token from ${v}"),
            _ => "the `token` option's value".to_string(),
        };
        let limit = match &cfg.rate_limit {
            Some(r) => Some((r.requests, parse_duration(&r.per).map_err(cfg_err)?, r.daily)),
            None => None,
        };
        let daily_tz = match cfg.rate_limit.as_ref().and_then(|r| r.daily_reset_tz.as_deref()) {
            None => jiff::tz::TimeZone::UTC,
            Some(z) if z.eq_ignore_ascii_case("UTC") => jiff::tz::TimeZone::UTC,
            Some(z) => jiff::tz::TimeZone::get(z).map_err(|e| {
                cfg_err(format!("rate_limit.daily_reset_tz `{z}` is not a known time zone (an IANA name such as America/New_York): {e}"))
            })?,
        };
        let client = Client::new(client::Settings {
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            api_version,
            id_property: cfg.id_property.clone(),
            object: cfg.object.clone(),
            token,
            token_source,
            rotation: ctx.rotation.clone(),
            limit,
            daily: cfg.rate_limit.as_ref().and_then(|r| r.daily),
            concurrency: cfg.concurrency,
            max_attempts: cfg.max_attempts.max(1),
            on_daily_limit: cfg.on_daily_limit,
            daily_tz,
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
        pipeline: ctx.pipeline.clone(),
        id,
        properties,
        wanted,
        mode,
        pending: Vec::new(),
        by_id: HashMap::new(),
        to_archive: Vec::new(),
        to_look_up: Vec::new(),
        in_flight: JoinSet::new(),
        in_flight_ids: HashMap::new(),
        ledger: Ledger::default(),
        retrying: HashSet::new(),
        next_trace: 0,
        operator: ctx.id.clone(),
        lock: None,
        counts: Counts::default(),
        announced: false,
    })
}

/// The properties the sink writes: the id property (unique) and every key
/// of `properties`, typed as declared.
fn wanted(cfg: &HubSpotConfig) -> Result<Vec<Wanted>, String> {
    for k in cfg.property_types.keys().chain(cfg.property_options.keys()) {
        if !cfg.properties.contains_key(k) && *k != cfg.id_property {
            return Err(format!("property_types/property_options name `{k}`, which is not in `properties`"));
        }
    }
    let mut out = Vec::new();
    let names = std::iter::once(&cfg.id_property).chain(cfg.properties.keys().filter(|k| **k != cfg.id_property));
    for name in names {
        let declared_options = cfg.property_options.get(name).cloned().unwrap_or_default();
        let derived = cfg.derived_property_options.get(name).filter(|_| !cfg.property_types.contains_key(name));
        let options =
            if declared_options.is_empty() { derived.cloned().unwrap_or_default() } else { declared_options.clone() };
        let kind = match cfg.property_types.get(name) {
            Some(t) => PropType::parse(t)?,
            None if !options.is_empty() => PropType::Enumeration,
            None => PropType::String,
        };
        if kind == PropType::Enumeration && options.is_empty() {
            return Err(format!("`{name}` is an enumeration: list its values in property_options"));
        }
        let unique = *name == cfg.id_property;
        if unique && !matches!(kind, PropType::String | PropType::Number) {
            return Err(format!("the id property `{name}` must be a string or a number to hold unique values"));
        }
        let declared = cfg.property_types.contains_key(name) || !declared_options.is_empty();
        out.push(Wanted { name: name.clone(), kind, declared, options, unique });
    }
    Ok(out)
}

impl HubSpotSink {
    /// With `rate_limit.shared`: joins the limit the other workers share
    /// (or, NATS unreachable, paces this worker at 1/workers of it).
    async fn share_limit(&mut self) {
        let (Mode::Online(client), Some(r)) = (&self.mode, self.cfg.rate_limit.as_ref()) else { return };
        let Some(shared) = &r.shared else { return };
        let Some(spacing) = client.spacing(client::SHARED_SHARE) else { return };
        let key = shared.key.clone().unwrap_or_else(|| {
            url::Url::parse(&self.cfg.base_url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
        });
        let workers = shared.workers.max(1);
        let joined = async {
            let c =
                queue::connect(&shared.url, &format!("engine {} rate limit", self.operator), Duration::from_secs(5))
                    .await?;
            let js = queue::jetstream(c, Duration::from_secs(5));
            queue::limiter::SharedLimiter::new(&js, &shared.bucket, &key, spacing, workers).await
        }
        .await;
        match joined {
            Ok(l) => {
                tracing::info!(bucket = %shared.bucket, key = %key, workers, "hubspot rate limit shared through NATS");
                client.share(Arc::new(l));
            }
            Err(e) => {
                tracing::warn!(error = %e, workers, "cannot join the shared rate limit; pacing this worker at 1/{workers} of it");
                client.pace_alone(workers);
            }
        }
    }

    /// Says at start which mode the sink is in.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Online(_) => format!("upserting {} to {}", self.cfg.object, self.cfg.base_url),
            Mode::Outbox { loc, .. } => {
                format!("no token: writing request bodies to {} instead of sending", loc.display)
            }
        }
    }

    /// Checks the properties the sink writes and creates the missing ones
    /// (unless `create_properties = false`); `None` offline.
    pub fn setup(&self) -> impl Future<Output = Result<Option<Setup>, OperatorError>> + Send + 'static {
        // Owns what it needs: the sink itself (its outbox writer) is not Sync.
        let client = match &self.mode {
            Mode::Online(c) => Some(c.clone()),
            Mode::Outbox { .. } => None,
        };
        let group = self.cfg.property_group.clone().unwrap_or_else(|| properties::group_name(&self.pipeline));
        let (object, wanted, pipeline, create) =
            (self.cfg.object.clone(), self.wanted.clone(), self.pipeline.clone(), self.cfg.create_properties);
        async move {
            let Some(client) = client else { return Ok(None) };
            let done = properties::setup(&client, &object, &wanted, &group, &pipeline, create).await?;
            Ok(Some(done))
        }
    }

    fn input(
        &mut self,
        id: String,
        properties: BTreeMap<String, String>,
        line: Option<u64>,
        raw: Option<String>,
    ) -> Input {
        self.next_trace += 1;
        Input { id, properties, trace: self.next_trace.to_string(), line, raw }
    }

    /// Adds one record to the batch being filled; sends it when full.
    async fn push(&mut self, input: Input, out: &mut Collector) -> Result<(), OperatorError> {
        // HubSpot refuses a batch with the same id twice: the later row
        // replaces the earlier one, as the upsert would have.
        match self.by_id.get(&input.id) {
            Some(&at) => self.pending[at] = input,
            None => {
                self.by_id.insert(input.id.clone(), self.pending.len());
                self.pending.push(input);
            }
        }
        if self.pending.len() >= self.cfg.batch_size {
            self.flush(out).await?;
        }
        Ok(())
    }

    /// Sends (or writes out) the pending batch.
    async fn flush(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let inputs = std::mem::take(&mut self.pending);
        self.by_id.clear();
        match &mut self.mode {
            Mode::Outbox { .. } => {
                let body =
                    json!({ "inputs": inputs.iter().map(|i| i.to_json(&self.cfg.id_property)).collect::<Vec<_>>() });
                self.counts.delivered += inputs.len() as u64;
                self.write_outbox(&body).await?;
            }
            Mode::Online(client) => {
                let client = client.clone();
                self.make_room(out).await?;
                while inputs.iter().any(|i| self.in_flight_ids.contains_key(&i.id)) {
                    self.reap_one(out).await?;
                }
                let ids: Vec<String> = inputs.iter().map(|i| i.id.clone()).collect();
                for id in &ids {
                    *self.in_flight_ids.entry(id.clone()).or_default() += 1;
                }
                self.in_flight.spawn(async move { client.send(inputs).await.map(|o| Done::Upserted(ids, o)) });
            }
        }
        Ok(())
    }

    /// Sends the keys waiting to be archived (all of them with `all`, else
    /// only full requests of 100).
    async fn flush_archives(&mut self, all: bool, out: &mut Collector) -> Result<(), OperatorError> {
        let Mode::Online(client) = &self.mode else { return Ok(()) };
        let client = client.clone();
        while self.to_archive.len() >= 100 || (all && !self.to_archive.is_empty()) {
            let n = self.to_archive.len().min(100);
            let chunk: Vec<(String, u64)> = self.to_archive.drain(..n).collect();
            self.make_room(out).await?;
            let c = client.clone();
            self.in_flight.spawn(async move {
                let ids: Vec<u64> = chunk.iter().map(|(_, id)| *id).collect();
                c.archive(&ids).await?;
                Ok(Done::Archived { keys: chunk.into_iter().map(|(k, _)| k).collect(), absent: Vec::new() })
            });
        }
        while self.to_look_up.len() >= 100 || (all && !self.to_look_up.is_empty()) {
            let n = self.to_look_up.len().min(100);
            let chunk: Vec<String> = self.to_look_up.drain(..n).collect();
            self.make_room(out).await?;
            let c = client.clone();
            self.in_flight.spawn(async move {
                // Keys the ledger has no record id for (records written
                // before it existed, or by someone else): ask HubSpot.
                let found = c.lookup(&chunk).await?;
                let ids: Vec<u64> = found.iter().map(|(_, id)| *id).collect();
                c.archive(&ids).await?;
                let keys: HashSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
                let absent = chunk.iter().filter(|k| !keys.contains(k.as_str())).cloned().collect();
                Ok(Done::Archived { keys: found.into_iter().map(|(k, _)| k).collect(), absent })
            });
        }
        Ok(())
    }

    async fn make_room(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        while self.in_flight.len() >= self.cfg.concurrency {
            self.reap_one(out).await?;
        }
        Ok(())
    }

    async fn write_outbox(&mut self, body: &Value) -> Result<(), OperatorError> {
        let Mode::Outbox { loc, parts, writer } = &mut self.mode else { return Ok(()) };
        let mut line =
            serde_json::to_vec(body).map_err(|e| OperatorError::Data(format!("encoding a request body: {e}")))?;
        line.push(b'\n');
        if writer.is_none() {
            parts.prepare().await?;
        }
        let w = writer.get_or_insert_with(|| parts.writer());
        w.put(Bytes::from(line)).await.map_err(|e| OperatorError::storage(format!("writing {}", loc.display), e))
    }

    /// The day's quota use as the client knows it now, for the run's report
    /// (recorded after every answer, also when the request failed).
    fn note_quota(&self, out: &mut Collector) {
        if let Mode::Online(c) = &self.mode {
            out.record_daily_quota(c.daily_quota());
        }
    }

    async fn reap_one(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let Some(joined) = self.in_flight.join_next().await else { return Ok(()) };
        self.note_quota(out);
        let done = joined.map_err(|e| OperatorError::Data(format!("a request task failed: {e}")))??;
        match done {
            Done::Upserted(ids, outcome) => {
                for id in ids {
                    if let Some(n) = self.in_flight_ids.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            self.in_flight_ids.remove(&id);
                        }
                    }
                }
                self.upserted(outcome, out).await
            }
            Done::Archived { keys, absent } => {
                self.counts.archived += keys.len() as u64;
                self.counts.absent += absent.len() as u64;
                for k in keys.iter().chain(&absent) {
                    self.ledger.remove(k);
                }
                Ok(())
            }
        }
    }

    async fn upserted(&mut self, outcome: Outcome, out: &mut Collector) -> Result<(), OperatorError> {
        self.counts.delivered += outcome.delivered;
        self.counts.created += outcome.created;
        for (key, id) in &outcome.ids {
            if self.retrying.contains(key) {
                self.counts.retried_ok += 1;
            }
            self.ledger.put(key, *id);
        }
        if outcome.rejected.is_empty() {
            return Ok(());
        }
        let mut rb = RejectsBuilder::new(&self.operator);
        for r in outcome.rejected {
            let mut reason = format!("HubSpot {}: {}", r.category, r.message);
            // The source text when the row had one (replay feeds it back);
            // else what was sent.
            let raw =
                r.input.raw.clone().unwrap_or_else(|| {
                    serde_json::to_string(&r.input.to_json(&self.cfg.id_property)).unwrap_or_default()
                });
            let attempts = self.ledger.refuse(
                &r.input.id,
                Refusal {
                    properties: r.input.properties.clone(),
                    attempts: 0,
                    line: r.input.line,
                    reason: reason.clone(),
                    raw: r.input.raw.clone(),
                    superseded: true,
                },
            );
            if attempts > 1 {
                reason.push_str(&format!(" (refused {attempts} times; offered again in the next run)"));
            } else {
                reason.push_str(" (offered again in the next run)");
            }
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
        Ok(())
    }

    async fn drain(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        while !self.in_flight.is_empty() {
            self.reap_one(out).await?;
        }
        Ok(())
    }

    /// Records refused in earlier runs and not sent again by this one are
    /// offered once more, as they were last refused.
    async fn retry_refused(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let retry = self.ledger.to_retry();
        if retry.is_empty() {
            return Ok(());
        }
        tracing::info!(records = retry.len(), "offering records HubSpot refused earlier again");
        metrics::counter!("engine_hubspot_records_retried_total", "operator" => self.operator.clone())
            .increment(retry.len() as u64);
        self.counts.retried += retry.len() as u64;
        for (key, r) in retry {
            self.ledger.supersede(&key);
            self.retrying.insert(key.clone());
            let input = self.input(key, r.properties, r.line, r.raw);
            self.push(input, out).await?;
        }
        self.flush(out).await?;
        self.drain(out).await
    }

    fn check_columns(&self, batch: &Batch, deletes: bool) -> Result<(), OperatorError> {
        let schema = batch.records.schema();
        self.id.check(&schema).map_err(|e| {
            if deletes {
                OperatorError::Config(format!(
                    "the id template `{}` cannot be rendered from the `deletes` input: {e} (a deletes input carries only the key columns)",
                    self.cfg.id
                ))
            } else {
                OperatorError::Config(e)
            }
        })?;
        if !deletes {
            for (_, t) in &self.properties {
                t.check(&schema).map_err(OperatorError::Config)?;
            }
        }
        Ok(())
    }

    /// Offline, the outbox file is an output like any other: locked.
    fn lock_outbox(&mut self) -> Result<(), OperatorError> {
        if let (Mode::Outbox { loc, .. }, None) = (&self.mode, &self.lock)
            && loc.is_local
        {
            let holder = crate::lock::holder(&self.pipeline, &self.operator);
            let target = std::path::PathBuf::from(&loc.display);
            self.lock = Some(crate::lock::OutputLock::acquire(&target, &loc.display, &holder)?);
        }
        Ok(())
    }

    /// Earlier runs' requests of today count against today's budget.
    fn restore_day(&self) {
        if let (Mode::Online(c), Some((day, used))) = (&self.mode, self.ledger.quota()) {
            c.restore_day(day, used);
        }
    }

    fn render(&self, batch: &Batch, i: usize) -> (String, BTreeMap<String, String>) {
        let records = &batch.records;
        let id = self.id.render(records, i);
        let properties = self.properties.iter().map(|(k, t)| (k.clone(), t.render(records, i))).collect();
        (id, properties)
    }
}

#[async_trait]
impl Operator for HubSpotSink {
    async fn open(&mut self) -> Result<(), OperatorError> {
        self.lock_outbox()?;
        self.share_limit().await;
        if let Some(done) = self.setup().await? {
            tracing::info!(properties = %done.describe(), "hubspot properties checked");
        }
        Ok(())
    }

    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        if !self.announced {
            self.announced = true;
            tracing::info!(mode = %self.describe(), "hubspot sink started");
        }
        self.check_columns(&batch, false)?;
        for i in 0..batch.num_rows() {
            let (id, properties) = self.render(&batch, i);
            self.ledger.supersede(&id);
            let raw = Some(crate::rejects::raw_of(&batch, i));
            let input = self.input(id, properties, batch.line(i), raw);
            self.push(input, out).await?;
        }
        Ok(())
    }

    async fn delete(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.check_columns(&batch, true)?;
        let keys: Vec<String> = (0..batch.num_rows()).map(|i| self.id.render(&batch.records, i)).collect();
        if self.cfg.on_delete == OnDelete::Ignore {
            self.counts.ignored += keys.len() as u64;
            return Ok(());
        }
        if let Mode::Outbox { .. } = self.mode {
            // Offline there are no record ids: the outbox names the keys.
            let body = json!({ "archive": { "idProperty": self.cfg.id_property,
                "inputs": keys.iter().map(|k| json!({ "id": k })).collect::<Vec<_>>() } });
            self.counts.archived += keys.len() as u64;
            return self.write_outbox(&body).await;
        }
        for key in keys {
            match self.ledger.record_id(&key) {
                Some(id) => self.to_archive.push((key, id)),
                None => self.to_look_up.push(key),
            }
        }
        self.flush_archives(false, out).await
    }

    async fn on_barrier(&mut self, barrier: Barrier, out: &mut Collector) -> Result<Snapshot, OperatorError> {
        // Every request of the epoch is answered before the barrier is
        // acknowledged, and the ledger's entries go with it. The outbox
        // closes its part, like the file sink.
        self.flush(out).await?;
        self.flush_archives(true, out).await?;
        self.drain(out).await?;
        match &mut self.mode {
            Mode::Outbox { loc, parts, writer } => {
                if let Some(mut w) = writer.take() {
                    w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", loc.display)))?;
                }
                parts.sealed(barrier.epoch);
                Ok(Snapshot::None)
            }
            Mode::Online(client) => {
                let (day, used) = client.day_used();
                self.ledger.set_quota(&day, used);
                Ok(Snapshot::Delta(self.ledger.take_delta()))
            }
        }
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        self.lock_outbox()?;
        match &mut self.mode {
            Mode::Outbox { parts, .. } => {
                parts.resume(resume.epoch);
                parts.kept().await?;
            }
            Mode::Online(_) => self.ledger.restore(&resume.deltas).map_err(|e| {
                OperatorError::Resume(format!("checkpoint {}: the record ids are damaged: {e}", resume.epoch))
            })?,
        }
        self.restore_day();
        Ok(())
    }

    fn carries_state(&self) -> bool {
        matches!(self.mode, Mode::Online(_))
    }

    async fn carry_over(&mut self, previous: &[Vec<u8>]) -> Result<(), OperatorError> {
        self.ledger.carry_over(previous).map_err(|e| {
            OperatorError::Resume(format!("the record ids kept by the last completed run are damaged: {e}"))
        })?;
        tracing::info!(
            records = self.ledger.holds(),
            refused = self.ledger.refused_len(),
            "hubspot: record ids and refusals carried from the last completed run"
        );
        self.restore_day();
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
        self.flush_archives(true, out).await?;
        self.drain(out).await?;
        self.retry_refused(out).await?;
        if let Mode::Outbox { loc, writer, .. } = &mut self.mode
            && let Some(mut w) = writer.take()
        {
            w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", loc.display)))?;
        }
        // Also when no row came: checking the properties made requests.
        self.note_quota(out);
        if let Mode::Online(c) = &self.mode {
            tracing::info!(
                delivered = self.counts.delivered,
                archived = self.counts.archived,
                requests = c.requests(),
                "hubspot sink finished"
            );
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), OperatorError> {
        if let Mode::Outbox { loc, parts, .. } = &mut self.mode {
            parts.publish(false).await?;
            tracing::info!(path = %loc.display, inputs = self.counts.delivered, "hubspot outbox written (no token: nothing was sent)");
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

    fn plan_start(&mut self, plan: &mut Plan) {
        match &self.mode {
            Mode::Online(_) => {
                plan.holds = Some(self.ledger.holds());
                if self.cfg.on_delete == OnDelete::Archive {
                    plan.max_delete_ratio = Some(self.cfg.max_delete_ratio);
                }
                plan.basis = format!(
                    "create/update from the record ids this sink kept from its last completed run ({} records); HubSpot was not called",
                    self.ledger.holds()
                );
            }
            Mode::Outbox { loc, .. } => {
                plan.basis =
                    format!("no token: request bodies would go to {}; every row counts as created", loc.display)
            }
        }
    }

    fn plan(&mut self, batch: &Batch, deletes: bool, plan: &mut Plan) -> Result<(), OperatorError> {
        self.check_columns(batch, deletes)?;
        for i in 0..batch.num_rows() {
            if deletes {
                if self.cfg.on_delete == OnDelete::Archive {
                    let key = self.id.render(&batch.records, i);
                    plan.count("delete", || key);
                }
                continue;
            }
            let (id, properties) = self.render(batch, i);
            self.ledger.supersede(&id);
            let what = if self.ledger.record_id(&id).is_some() { "update" } else { "create" };
            plan.count(what, || format!("{id} {}", serde_json::to_string(&properties).unwrap_or_default()));
        }
        Ok(())
    }

    fn plan_end(&mut self, plan: &mut Plan) {
        let retry = self.ledger.to_retry();
        if retry.is_empty() {
            return;
        }
        for (key, r) in &retry {
            let what = if self.ledger.record_id(key).is_some() { "update" } else { "create" };
            plan.count(what, || format!("{key} (refused {} time(s) before: {})", r.attempts, r.reason));
        }
        plan.basis.push_str(&format!("; includes {} record(s) HubSpot refused before, offered again", retry.len()));
    }

    fn pending(&self) -> Option<String> {
        // Every refusal the ledger holds is offered again next run.
        let n = self.ledger.refused_len();
        (n > 0).then(|| format!("{n} record(s) HubSpot refused before are to be offered again"))
    }

    fn summary(&self) -> Option<String> {
        let c = &self.counts;
        let mut parts = match &self.mode {
            Mode::Online(_) => vec![
                format!("{} created", thousands(c.created)),
                format!("{} updated", thousands(c.delivered.saturating_sub(c.created))),
            ],
            Mode::Outbox { .. } => vec![format!("{} written to the outbox", thousands(c.delivered))],
        };
        if c.archived > 0 || c.absent > 0 {
            parts.push(format!("{} archived", thousands(c.archived)));
        }
        if c.absent > 0 {
            parts.push(format!("{} deleted keys already absent", c.absent));
        }
        if c.ignored > 0 {
            parts.push(format!("{} deletions ignored (on_delete = \"ignore\")", c.ignored));
        }
        if c.retried > 0 {
            parts.push(format!("{} refused earlier and retried ({} accepted)", c.retried, c.retried_ok));
        }
        if let Mode::Online(client) = &self.mode {
            parts.push(format!("{} requests", client.requests()));
            if let Some(used) = client.daily_quota() {
                parts.push(format!("{:.1}% of the daily quota used", used * 100.0));
            }
        }
        Some(parts.join(", "))
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
        let portal = simulators::hubspot::Config {
            properties: simulators::hubspot::babynames_properties(),
            ..Default::default()
        };
        let sim = simulators::hubspot::serve(portal, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let cfg: HubSpotConfig = serde_json::from_value(json!({
            "base_url": sim.base_url(), "token": "sim-token", "id_property": "baby_key",
            "id": "{Name}", "properties": { "firstname": "{Name}" }, "linger_ms": 50
        }))
        .unwrap();
        let ctx = BuildContext {
            pipeline: "p".into(),
            id: "crm".into(),
            batch_size: 10,
            raw_options: Value::Null,
            rotation: None,
        };
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
