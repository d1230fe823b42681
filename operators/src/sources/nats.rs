//! `kind = "nats"` (source): a sync worker's partition of a stream the
//! `nats` sink fills.
//!
//! **Exactly once.** The checkpoint holds the stream sequence of the last
//! message emitted and, per producer, the row sequences seen
//! ([`crate::queued::Seen`]). Messages are acknowledged only
//! once the checkpoint covering them committed ([`Source::committed`]); a
//! resumed worker re-creates its durable consumer right after its
//! checkpoint and skips what a message repeats. A new run after a completed
//! one starts from that run's last state (`previous_run`), so a crash
//! between its last checkpoint and its acknowledgement repeats nothing.
//!
//! **When a run ends** (`until`): `end` (default) at a producer's
//! end-of-run marker with nothing pending behind it, after checking that
//! every row it announced arrived; `idle` after `idle` without a message;
//! `never` (a long-running worker: stop it with SIGTERM).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use queue::consume::{Partition, PartitionSpec};
use serde::{Deserialize, Serialize};

use crate::api::{BuildContext, Collector, OUT, OperatorError, Resume, Snapshot, Source, SourceState};
use crate::batch::Batch;
use crate::duration::parse_duration;
use crate::queued::{self, Seen};

fn one_second() -> String {
    "1s".into()
}
fn ten_minutes() -> String {
    "10m".into()
}
fn thirty_seconds() -> String {
    "30s".into()
}
fn sixteen() -> usize {
    16
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// At a producer's end-of-run marker with nothing pending behind it.
    #[default]
    End,
    /// After `idle` without a message.
    Idle,
    /// Never: a long-running worker.
    Never,
}

/// A partition index, as a number or as text (`"${PARTITION}"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PartitionIndex {
    Number(u32),
    Text(String),
}

impl PartitionIndex {
    pub fn get(&self) -> Result<u32, String> {
        match self {
            PartitionIndex::Number(n) => Ok(*n),
            PartitionIndex::Text(t) => t.trim().parse().map_err(|_| {
                format!("partition must be a number (0, 1, …), got `{t}`; a worker's index comes from e.g. ${{PARTITION}} or JOB_COMPLETION_INDEX")
            }),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    #[serde(default = "queued::default_nats_url")]
    pub url: String,
    pub stream: String,
    pub partition: PartitionIndex,
    /// The durable consumer's name; default `<stream>-<partition>`.
    pub consumer: Option<String>,
    /// The partition's subject, when the stream was not made by an engine
    /// sink (default: learnt from the stream's layout).
    pub subject: Option<String>,
    #[serde(default)]
    pub until: Until,
    /// With `until = "idle"`: how long without a message ends the run.
    #[serde(default = "thirty_seconds")]
    pub idle: String,
    /// Messages per fetch.
    #[serde(default = "sixteen")]
    pub fetch: usize,
    /// Longest wait for a message in one step.
    #[serde(default = "one_second")]
    pub wait: String,
    /// The consumer's `ack_wait`: a delivered, unacknowledged message is
    /// delivered again after it (and skipped: the checkpoint has it).
    #[serde(default = "ten_minutes")]
    pub ack_wait: String,
    /// How long NATS may be unreachable before the run fails.
    #[serde(default = "queued::default_patience")]
    pub patience: String,
}

/// The checkpoint: the last stream sequence emitted, and the rows seen per
/// producer (most recent last; at most [`PRODUCERS`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    stream_seq: u64,
    producers: VecDeque<(String, Seen)>,
    /// A producer's end marker was the last message read.
    ended: Option<String>,
}

/// Producers remembered: only the newest can re-send, older ones finished.
const PRODUCERS: usize = 32;

impl State {
    fn seen(&mut self, producer: &str) -> &mut Seen {
        if let Some(i) = self.producers.iter().position(|(p, _)| p == producer) {
            let e = self.producers.remove(i).unwrap_or_default();
            self.producers.push_back(e);
        } else {
            if self.producers.len() >= PRODUCERS {
                self.producers.pop_front();
            }
            self.producers.push_back((producer.to_string(), Seen::default()));
        }
        &mut self.producers.back_mut().unwrap_or_else(|| unreachable!()).1
    }
}

pub struct NatsSource {
    cfg: NatsSourceConfig,
    operator: String,
    partition: u32,
    wait: Duration,
    idle: Duration,
    patience: Duration,
    ack_wait: Duration,
    state: State,
    reader: Option<Partition>,
    subject: String,
    schema: Option<SchemaRef>,
    announced: bool,
    /// Ack subjects of the messages read since the last snapshot, and of
    /// those snapshots covered (acknowledged when that checkpoint commits).
    unacked: Vec<String>,
    covered: Vec<String>,
    last_message: Instant,
    /// Messages not yet delivered, as the last message said.
    undelivered: u64,
    /// Messages waiting, as the sampler last read it.
    lag_shared: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    rows: u64,
    skipped_rows: u64,
    messages: u64,
    gauge_messages: metrics::Gauge,
    gauge_bytes: metrics::Gauge,
    gauge_unacked: metrics::Gauge,
    duplicates: metrics::Counter,
}

fn cfg_err(e: impl std::fmt::Display) -> OperatorError {
    OperatorError::Config(e.to_string())
}

fn queue_err(e: queue::QueueError) -> OperatorError {
    OperatorError::Data(e.to_string())
}

pub fn check(cfg: &NatsSourceConfig) -> Result<(), String> {
    queue::layout::check_stream_name(&cfg.stream)?;
    cfg.partition.get()?;
    for d in [&cfg.wait, &cfg.ack_wait, &cfg.patience, &cfg.idle] {
        parse_duration(d)?;
    }
    if cfg.fetch == 0 {
        return Err("fetch must be at least 1".into());
    }
    Ok(())
}

pub fn build(ctx: &BuildContext, cfg: NatsSourceConfig) -> Result<NatsSource, OperatorError> {
    check(&cfg).map_err(cfg_err)?;
    let partition = cfg.partition.get().map_err(cfg_err)?;
    let labels = [("operator", ctx.id.clone()), ("partition", partition.to_string())];
    Ok(NatsSource {
        operator: ctx.id.clone(),
        partition,
        wait: parse_duration(&cfg.wait).map_err(cfg_err)?,
        idle: parse_duration(&cfg.idle).map_err(cfg_err)?,
        patience: parse_duration(&cfg.patience).map_err(cfg_err)?,
        ack_wait: parse_duration(&cfg.ack_wait).map_err(cfg_err)?,
        cfg,
        state: State::default(),
        reader: None,
        subject: String::new(),
        schema: None,
        announced: false,
        unacked: Vec::new(),
        covered: Vec::new(),
        last_message: Instant::now(),
        undelivered: 0,
        lag_shared: Default::default(),
        sampler: None,
        rows: 0,
        skipped_rows: 0,
        messages: 0,
        gauge_messages: metrics::gauge!("engine_queue_lag_messages", &labels),
        gauge_bytes: metrics::gauge!("engine_queue_lag_bytes", &labels),
        gauge_unacked: metrics::gauge!("engine_queue_unacknowledged_messages", &labels),
        duplicates: metrics::counter!("engine_queue_duplicate_rows_total", &labels),
    })
}

fn header<'a>(m: &'a queue::async_nats::jetstream::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
    }
}

impl NatsSource {
    fn decode_state(bytes: &[u8]) -> Result<State, OperatorError> {
        serde_json::from_slice(bytes)
            .map_err(|e| OperatorError::Resume(format!("the nats source's checkpoint is unreadable: {e}")))
    }

    /// Emits the schema once, as an empty batch, for a partition that may
    /// carry no row.
    async fn announce(&mut self, schema: &SchemaRef, out: &mut Collector) -> Result<(), OperatorError> {
        if !self.announced {
            self.announced = true;
            out.emit(OUT, Batch::new(arrow::record_batch::RecordBatch::new_empty(schema.clone()))).await?;
        }
        Ok(())
    }

    fn check_schema(&mut self, schema: &SchemaRef, seq: u64) -> Result<(), OperatorError> {
        match &self.schema {
            None => {
                self.schema = Some(schema.clone());
                Ok(())
            }
            Some(s) if s.fields() == schema.fields() => Ok(()),
            Some(s) => Err(OperatorError::Data(format!(
                "message {seq} on {} has other columns ({}) than the rows before it ({}): the ingest pipeline changed; let this run end before the new rows (run the worker again)",
                self.subject,
                names(schema),
                names(s)
            ))),
        }
    }

    /// One message: rows (only those not seen), or an end marker. Returns
    /// whether the run should end here.
    async fn handle(
        &mut self,
        m: queue::async_nats::jetstream::Message,
        out: &mut Collector,
    ) -> Result<bool, OperatorError> {
        let info = m.info().map_err(|e| OperatorError::Data(format!("a message without JetStream metadata: {e}")))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if let Some(r) = &m.reply {
            self.unacked.push(r.to_string());
        }
        if seq <= self.state.stream_seq {
            // Delivered again (after ack_wait, or a consumer made anew
            // before our acknowledgement reached it): the checkpoint has it.
            return Ok(false);
        }
        self.messages += 1;
        let producer = header(&m, queue::PRODUCER).map(str::to_string);
        let first: Option<u64> = header(&m, queue::SEQUENCE).and_then(|s| s.parse().ok());
        let (schema, batches) = if m.payload.is_empty() {
            (None, Vec::new())
        } else {
            let (s, b) = queued::decode(&m.payload).map_err(|e| {
                OperatorError::Data(format!(
                    "message {seq} on {} is not an engine payload (Arrow IPC): {e}",
                    self.subject
                ))
            })?;
            (Some(s), b)
        };
        if let Some(s) = &schema {
            self.check_schema(s, seq)?;
            self.announce(s, out).await?;
        }
        let is_end = header(&m, queue::END).is_some();
        if is_end {
            if let (Some(p), Some(total)) = (&producer, first) {
                let known = self.state.producers.iter().any(|(q, _)| q == p);
                let seen = self.state.seen(p);
                if known && let Some((a, b)) = seen.hole_below(total) {
                    return Err(OperatorError::Data(format!(
                        "rows {a}..{b} of producer {p} never arrived on {} (its end marker says {total} rows): messages expired (max_age) or were purged; re-run the ingest with --from-scratch to send everything again",
                        self.subject
                    )));
                }
                self.state.ended = Some(p.clone());
            }
        } else {
            self.state.ended = None;
            let mut rows = 0u64;
            for b in &batches {
                rows += b.num_rows() as u64;
            }
            match (&producer, first) {
                (Some(p), Some(first)) => {
                    let fresh = self.state.seen(p).claim(first, first + rows);
                    let mut emitted = 0u64;
                    // Batches are concatenated in order: row i of the message
                    // is sequence first + i.
                    let mut offset = first;
                    for b in batches {
                        let (a, z) = (offset, offset + b.num_rows() as u64);
                        for &(x, y) in &fresh {
                            let (x, y) = (x.max(a), y.min(z));
                            if x < y {
                                let part = crate::flow::slice(&b, (x - a) as usize, (y - x) as usize);
                                emitted += part.num_rows() as u64;
                                out.emit(OUT, part).await?;
                            }
                        }
                        offset = z;
                    }
                    let dup = rows - emitted;
                    if dup > 0 {
                        self.skipped_rows += dup;
                        self.duplicates.increment(dup);
                    }
                    self.rows += emitted;
                }
                _ => {
                    // A message from another publisher: rows as they are.
                    for b in batches {
                        self.rows += b.num_rows() as u64;
                        out.emit(OUT, b).await?;
                    }
                }
            }
        }
        self.state.stream_seq = seq;
        self.undelivered = pending;
        Ok(is_end && self.cfg.until == Until::End && pending == 0)
    }

    /// The stream's layout; a worker started before the ingest's first run
    /// waits for the stream (up to `patience`).
    async fn wait_for_stream(
        &self,
        js: &queue::async_nats::jetstream::Context,
    ) -> Result<(queue::layout::Layout, queue::async_nats::jetstream::stream::Info), OperatorError> {
        let started = Instant::now();
        let mut told = false;
        loop {
            match queue::layout::read(js, &self.cfg.stream).await {
                Ok(l) => return Ok(l),
                Err(queue::QueueError::Layout(why))
                    if why.contains("does not exist") && started.elapsed() < self.patience =>
                {
                    if !told {
                        told = true;
                        tracing::info!(stream = %self.cfg.stream, "waiting for the stream: the ingest has not published yet");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(queue_err(e)),
            }
        }
    }

    /// Starts the task that reads the consumer's lag every 2 s into the
    /// gauges and the operator's stats (it keeps going while emitting waits
    /// on a slow sink, which is when the backlog matters).
    fn start_sampler(&mut self, out: &Collector) {
        if self.sampler.is_some() {
            return;
        }
        let Some(probe) = self.reader.as_ref().map(|r| r.probe()) else { return };
        let stats = out.stats();
        let (gm, gb, gu) = (self.gauge_messages.clone(), self.gauge_bytes.clone(), self.gauge_unacked.clone());
        let lag = self.lag_shared.clone();
        self.sampler = Some(tokio::spawn(async move {
            loop {
                if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(2), probe.lag()).await {
                    gm.set(l.messages as f64);
                    gb.set(l.bytes as f64);
                    gu.set(l.unacknowledged as f64);
                    stats.set_backlog(l.messages, l.bytes);
                    lag.store(l.messages, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }

    /// Messages waiting, as the server says now.
    async fn pending_now(&mut self) -> u64 {
        if let Some(r) = self.reader.as_ref()
            && let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(2), r.probe().lag()).await
        {
            return l.messages - l.unacknowledged;
        }
        self.undelivered
    }
}

fn names(s: &SchemaRef) -> String {
    s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl Source for NatsSource {
    fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        if let Some(full) = &resume.full {
            self.state = Self::decode_state(full)?;
        }
        Ok(())
    }

    fn previous_run(&mut self, state: &[u8]) {
        if self.state == State::default()
            && let Ok(s) = Self::decode_state(state)
        {
            self.state = s;
            self.state.ended = None;
        }
    }

    async fn open(&mut self) -> Result<(), OperatorError> {
        let client = queue::connect(&self.cfg.url, &format!("engine {}", self.operator), self.patience)
            .await
            .map_err(queue_err)?;
        let js = queue::jetstream(client, Duration::from_secs(10));
        self.subject = match &self.cfg.subject {
            Some(s) => s.replace("{partition}", &self.partition.to_string()),
            None => {
                let (layout, _) = self.wait_for_stream(&js).await?;
                if self.partition >= layout.partitions {
                    return Err(cfg_err(format!(
                        "partition {} does not exist: stream {} has {} partitions (0..={})",
                        self.partition,
                        self.cfg.stream,
                        layout.partitions,
                        layout.partitions - 1
                    )));
                }
                layout.subject_for(self.partition)
            }
        };
        let durable = self.cfg.consumer.clone().unwrap_or_else(|| format!("{}-{}", self.cfg.stream, self.partition));
        if durable.is_empty() || durable.contains(['.', '*', '>', ' ']) {
            return Err(cfg_err(format!(
                "consumer name `{durable}` is not valid for NATS (no `.`, `*`, `>` or spaces)"
            )));
        }
        let spec = PartitionSpec {
            stream: self.cfg.stream.clone(),
            durable,
            subject: self.subject.clone(),
            ack_wait: self.ack_wait,
            patience: self.patience,
        };
        self.reader = Some(Partition::open(js, spec, self.state.stream_seq).await.map_err(queue_err)?);
        self.last_message = Instant::now();
        Ok(())
    }

    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        let after = self.state.stream_seq;
        let reader = self.reader.as_mut().ok_or_else(|| cfg_err("the nats source was not opened"))?;
        let msgs = reader.fetch(self.cfg.fetch, self.wait, after).await.map_err(queue_err)?;
        self.start_sampler(out);
        if msgs.is_empty() {
            let ended = self.cfg.until == Until::End && self.state.ended.is_some();
            if self.cfg.until == Until::Idle && self.last_message.elapsed() >= self.idle {
                tracing::info!(idle = ?self.idle, "no message for the idle time; ending the run");
                return Ok(SourceState::Done);
            }
            if ended && self.pending_now().await == 0 {
                // Resumed right after the end marker: nothing came since.
                return Ok(SourceState::Done);
            }
            return Ok(SourceState::More);
        }
        self.last_message = Instant::now();
        for m in msgs {
            if self.handle(m, out).await? {
                tracing::info!(rows = self.rows, "end-of-run marker read and nothing pending: the run ends");
                return Ok(SourceState::Done);
            }
        }
        Ok(SourceState::More)
    }

    async fn snapshot(&mut self, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        self.covered.append(&mut self.unacked);
        let s = serde_json::to_vec(&self.state).map_err(|e| cfg_err(format!("encoding the source's state: {e}")))?;
        Ok(Snapshot::Full(s))
    }

    async fn committed(&mut self, _epoch: u64) -> Result<(), OperatorError> {
        if let Some(r) = self.reader.as_ref() {
            r.ack(&self.covered).await.map_err(queue_err)?;
            self.covered.clear();
        }
        Ok(())
    }

    fn position(&self) -> String {
        format!(
            "stream sequence {} of {} ({} rows, {} repeated rows skipped, {} messages waiting)",
            self.state.stream_seq,
            self.subject,
            self.rows,
            self.skipped_rows,
            self.lag_shared.load(std::sync::atomic::Ordering::Relaxed)
        )
    }
}
