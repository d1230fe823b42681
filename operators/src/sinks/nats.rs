//! `kind = "nats"` (sink): rows into a NATS JetStream stream, split into
//! partitions by key, for sync workers to read (`kind = "nats"` source).
//!
//! **Exactly once across the queue.** A producer (one per run, kept across
//! the run's resumes: it is in the checkpoint) numbers each partition's rows
//! 0, 1, 2, …; a message carries rows `[first, first + rows)` of one
//! partition and the id `<producer>.<partition>.<first>.<rows>`. Messages
//! are cut every `message_rows` rows of a partition and at each barrier.
//! The barrier is acknowledged only once the server stored every message
//! before it ([`queue::publish::Publisher::flush`]). A resumed run starts
//! numbering again at the checkpoint's counts and re-sends what the crashed
//! run sent after it: a message identical to one the stream holds (same
//! id) is dropped by the stream's duplicate window; one cut elsewhere (the
//! crashed run's barrier fell elsewhere) overlaps, and the worker keeps
//! only rows it has not seen ([`crate::queued::Seen`]). This relies on the
//! rows after a checkpoint being the same in a resumed run, which the
//! engine's sources and transforms guarantee (they resume at their exact
//! offsets and state).
//!
//! Not the epoch in the id: a resumed run's epoch N+1 covers other rows
//! than the crashed run's epoch N+1, so an id made of (epoch, sequence)
//! would have the stream drop rows it never stored.
//!
//! At the end of the input (`finish`) an end-of-run marker goes to every
//! partition: the partition's row count and the schema. A worker reading
//! `until = "end"` stops at it, and checks that it saw every row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::UInt64Array;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use queue::async_nats::HeaderMap;
use queue::layout::{Layout, Retention, Storage, StreamSpec};
use queue::publish::Publisher;
use serde::{Deserialize, Serialize};

use crate::api::{BuildContext, Collector, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::duration::parse_duration;
use crate::queued::{self, Partitioner};

fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}
fn two_minutes() -> String {
    "2m".into()
}
fn message_rows() -> usize {
    4096
}
fn in_flight() -> usize {
    64
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:port` (user and password may be in it; never logged).
    #[serde(default = "queued::default_nats_url")]
    pub url: String,
    pub stream: String,
    /// Subject of partition `p`; `{partition}` stands for it. Default
    /// `<stream>.{partition}`.
    pub subject: Option<String>,
    /// Key columns that choose a row's partition; required with more than
    /// one partition.
    #[serde(default)]
    pub partition_by: Vec<String>,
    #[serde(default = "one")]
    pub partitions: u32,
    /// When the stream is created: `workqueue` (a message is removed once
    /// its worker acknowledged it) or `limits` (kept to `max_age`/`max_bytes`).
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default = "one_usize")]
    pub replicas: usize,
    pub max_age: Option<String>,
    pub max_bytes: Option<i64>,
    /// The stream's duplicate window: a message re-sent within it (same id)
    /// is stored once.
    #[serde(default = "two_minutes")]
    pub duplicate_window: String,
    /// Rows per message (fewer at a barrier and at the end).
    #[serde(default = "message_rows")]
    pub message_rows: usize,
    /// Messages awaiting the server's acknowledgement at once.
    #[serde(default = "in_flight")]
    pub in_flight: usize,
    /// How long NATS may be unreachable before the run fails.
    #[serde(default = "queued::default_patience")]
    pub patience: String,
}

/// What the checkpoint holds: the producer and each partition's row count.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    producer: String,
    sequences: Vec<u64>,
}

/// Rows of one partition waiting for a message.
#[derive(Default)]
struct Pending {
    batches: Vec<Batch>,
    rows: usize,
}

pub struct NatsSink {
    cfg: NatsSinkConfig,
    operator: String,
    layout: Layout,
    spec: StreamSpec,
    patience: Duration,
    state: State,
    publisher: Option<Publisher>,
    partitioner: Option<Partitioner>,
    schema: Option<SchemaRef>,
    pending: Vec<Pending>,
    rows_published: u64,
    max_payload: usize,
    published: metrics::Counter,
    duplicates: metrics::Counter,
    bytes: metrics::Counter,
}

fn cfg_err(e: impl std::fmt::Display) -> OperatorError {
    OperatorError::Config(e.to_string())
}

pub fn check(cfg: &NatsSinkConfig) -> Result<(Layout, StreamSpec), String> {
    queue::layout::check_stream_name(&cfg.stream)?;
    let subject = cfg.subject.clone().unwrap_or_else(|| format!("{}.{{partition}}", cfg.stream));
    Layout::check_subject(&subject)?;
    if !(1..=1024).contains(&cfg.partitions) {
        return Err(format!("partitions must be 1..=1024, got {}", cfg.partitions));
    }
    if cfg.partitions > 1 && cfg.partition_by.is_empty() {
        return Err(format!(
            "partition_by is required with {} partitions: name the key columns, so every key has one worker",
            cfg.partitions
        ));
    }
    if cfg.message_rows == 0 || cfg.in_flight == 0 {
        return Err("message_rows and in_flight must be at least 1".into());
    }
    let duplicate_window = parse_duration(&cfg.duplicate_window)?;
    let max_age = cfg.max_age.as_deref().map(parse_duration).transpose()?;
    parse_duration(&cfg.patience)?;
    let layout = Layout {
        subject,
        partitions: cfg.partitions,
        partition_by: cfg.partition_by.clone(),
        hash: queue::layout::HASH.into(),
    };
    let spec = StreamSpec {
        name: cfg.stream.clone(),
        layout: layout.clone(),
        retention: cfg.retention,
        storage: cfg.storage,
        replicas: cfg.replicas,
        max_age,
        max_bytes: cfg.max_bytes,
        duplicate_window,
    };
    Ok((layout, spec))
}

pub fn build(ctx: &BuildContext, cfg: NatsSinkConfig) -> Result<NatsSink, OperatorError> {
    let (layout, spec) = check(&cfg).map_err(cfg_err)?;
    let patience = parse_duration(&cfg.patience).map_err(cfg_err)?;
    let label = || ctx.id.clone();
    Ok(NatsSink {
        operator: ctx.id.clone(),
        pending: (0..cfg.partitions).map(|_| Pending::default()).collect(),
        cfg,
        layout,
        spec,
        patience,
        state: State::default(),
        publisher: None,
        partitioner: None,
        schema: None,
        rows_published: 0,
        max_payload: 1 << 20,
        published: metrics::counter!("engine_queue_messages_published_total", "operator" => label()),
        duplicates: metrics::counter!("engine_queue_publish_duplicates_total", "operator" => label()),
        bytes: metrics::counter!("engine_queue_published_bytes_total", "operator" => label()),
    })
}

fn queue_err(e: queue::QueueError) -> OperatorError {
    OperatorError::Data(e.to_string())
}

impl NatsSink {
    fn publisher(&mut self) -> Result<&mut Publisher, OperatorError> {
        self.publisher.as_mut().ok_or_else(|| OperatorError::Config("the nats sink was not opened".into()))
    }

    /// Publishes rows of partition `p` while a full message's worth waits
    /// (all of them with `all`).
    async fn cut(&mut self, p: usize, all: bool) -> Result<(), OperatorError> {
        loop {
            let waiting = self.pending[p].rows;
            if waiting == 0 || (!all && waiting < self.cfg.message_rows) {
                return Ok(());
            }
            let take = waiting.min(self.cfg.message_rows);
            let rows = take_rows(&mut self.pending[p], take)?;
            self.send(p, rows).await?;
        }
    }

    /// One message of rows (split in halves while it exceeds the server's
    /// payload limit; a split is cut the same way by every run).
    async fn send(&mut self, p: usize, rows: Batch) -> Result<(), OperatorError> {
        let payload = queued::encode(&rows).map_err(|e| OperatorError::arrow("encoding rows for NATS", e))?;
        let n = rows.num_rows();
        if payload.len() > self.max_payload && n > 1 {
            let half = n / 2;
            Box::pin(self.send(p, crate::flow::slice(&rows, 0, half))).await?;
            return Box::pin(self.send(p, crate::flow::slice(&rows, half, n - half))).await;
        }
        if payload.len() > self.max_payload {
            return Err(OperatorError::Data(format!(
                "one row encodes to {} bytes, above the NATS server's max_payload ({} bytes with headers): raise max_payload in nats-server.conf",
                payload.len(),
                self.max_payload
            )));
        }
        let first = self.state.sequences[p];
        let mut h = HeaderMap::new();
        h.insert(queue::PRODUCER, self.state.producer.as_str());
        h.insert(queue::SEQUENCE, first.to_string().as_str());
        h.insert(queue::ROWS, n.to_string().as_str());
        let id = format!("{}.{p}.{first}.{n}", self.state.producer);
        let subject = self.layout.subject_for(p as u32);
        let len = payload.len() as u64;
        self.publisher()?.publish(subject, id, h, payload).await.map_err(queue_err)?;
        self.state.sequences[p] += n as u64;
        self.rows_published += n as u64;
        self.published.increment(1);
        self.bytes.increment(len);
        Ok(())
    }

    /// Publishes every partial message and waits for every acknowledgement.
    async fn flush_all(&mut self) -> Result<(), OperatorError> {
        for p in 0..self.pending.len() {
            self.cut(p, true).await?;
        }
        let before = self.publisher()?.duplicates;
        self.publisher()?.flush().await.map_err(queue_err)?;
        let dups = self.publisher()?.duplicates - before;
        self.duplicates.increment(dups);
        Ok(())
    }
}

/// The first `n` rows waiting in `p`, as one batch.
fn take_rows(p: &mut Pending, n: usize) -> Result<Batch, OperatorError> {
    let mut parts = Vec::new();
    let mut got = 0;
    while got < n {
        let b = p.batches.remove(0);
        let want = n - got;
        if b.num_rows() <= want {
            got += b.num_rows();
            parts.push(b);
        } else {
            parts.push(crate::flow::slice(&b, 0, want));
            p.batches.insert(0, crate::flow::slice(&b, want, b.num_rows() - want));
            got = n;
        }
    }
    p.rows -= n;
    concat(parts)
}

fn concat(parts: Vec<Batch>) -> Result<Batch, OperatorError> {
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_else(|| unreachable!()));
    }
    let schema = parts[0].records.schema();
    let records = arrow::compute::concat_batches(&schema, parts.iter().map(|b| &b.records))
        .map_err(|e| OperatorError::arrow("joining rows for a message", e))?;
    let lines: Vec<Option<u64>> = parts.iter().flat_map(|b| (0..b.num_rows()).map(move |i| b.line(i))).collect();
    Ok(Batch::with_lines(records, UInt64Array::from(lines)))
}

fn new_producer() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

#[async_trait]
impl Operator for NatsSink {
    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        if let Some(full) = &resume.full {
            let s: State = serde_json::from_slice(full)
                .map_err(|e| OperatorError::Resume(format!("the nats sink's checkpoint is unreadable: {e}")))?;
            if s.sequences.len() != self.cfg.partitions as usize {
                return Err(OperatorError::Resume(format!(
                    "the checkpoint has {} partitions, the sink {}",
                    s.sequences.len(),
                    self.cfg.partitions
                )));
            }
            self.state = s;
        }
        Ok(())
    }

    async fn open(&mut self) -> Result<(), OperatorError> {
        let client = queue::connect(&self.cfg.url, &format!("engine {}", self.operator), self.patience)
            .await
            .map_err(queue_err)?;
        let js = queue::jetstream(client, Duration::from_secs(10));
        queue::layout::ensure(&js, &self.spec).await.map_err(queue_err)?;
        if self.state.producer.is_empty() {
            self.state = State { producer: new_producer(), sequences: vec![0; self.cfg.partitions as usize] };
        }
        let publisher = Publisher::new(js, self.cfg.in_flight, self.patience);
        self.max_payload = publisher.max_payload();
        self.publisher = Some(publisher);
        tracing::info!(
            stream = %self.cfg.stream,
            producer = %self.state.producer,
            partitions = self.cfg.partitions,
            "publishing to NATS"
        );
        Ok(())
    }

    async fn process(&mut self, batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        if self.partitioner.is_none() {
            let schema = batch.records.schema();
            self.partitioner =
                Some(Partitioner::new(&schema, &self.cfg.partition_by, self.cfg.partitions).map_err(cfg_err)?);
            self.schema = Some(schema);
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let partitioner = self.partitioner.as_mut().ok_or_else(|| cfg_err("no partitioner"))?;
        if self.cfg.partitions == 1 {
            self.pending[0].rows += batch.num_rows();
            self.pending[0].batches.push(batch);
            return self.cut(0, false).await;
        }
        let assigned = partitioner.assign(&batch.records);
        let mut by: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (i, p) in assigned.iter().enumerate() {
            by.entry(*p).or_default().push(i as u32);
        }
        for (p, rows) in by {
            let idx = arrow::array::UInt32Array::from(rows);
            let part = take(&batch, &idx)?;
            let pend = &mut self.pending[p as usize];
            pend.rows += part.num_rows();
            pend.batches.push(part);
            self.cut(p as usize, false).await?;
        }
        Ok(())
    }

    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        self.flush_all().await?;
        let state = serde_json::to_vec(&self.state).map_err(|e| cfg_err(format!("encoding the sink's state: {e}")))?;
        Ok(Snapshot::Full(state))
    }

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        self.flush_all().await?;
        let schema = match &self.schema {
            Some(s) => queued::encode_schema(s).map_err(|e| OperatorError::arrow("encoding the schema", e))?,
            None => bytes::Bytes::new(),
        };
        for p in 0..self.cfg.partitions {
            let total = self.state.sequences[p as usize];
            let mut h = HeaderMap::new();
            h.insert(queue::PRODUCER, self.state.producer.as_str());
            h.insert(queue::SEQUENCE, total.to_string().as_str());
            h.insert(queue::END, "1");
            let id = format!("{}.{p}.end.{total}", self.state.producer);
            let subject = self.layout.subject_for(p);
            self.publisher()?.publish(subject, id, h, schema.clone()).await.map_err(queue_err)?;
        }
        self.publisher()?.flush().await.map_err(queue_err)?;
        tracing::info!(stream = %self.cfg.stream, rows = self.rows_published, "end-of-run markers published");
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        let p = self.publisher.as_ref()?;
        Some(format!(
            "{} messages ({} rows, {} bytes) to stream {}, {} re-sent copies dropped by the stream",
            p.published, self.rows_published, p.bytes, self.cfg.stream, p.duplicates
        ))
    }
}

fn take(batch: &Batch, idx: &arrow::array::UInt32Array) -> Result<Batch, OperatorError> {
    let records = arrow::compute::take_record_batch(&batch.records, idx)
        .map_err(|e| OperatorError::arrow("partitioning rows", e))?;
    let mut out = Batch::new(records);
    if let Some(l) = &batch.lines {
        let taken =
            arrow::compute::take(l.as_ref(), idx, None).map_err(|e| OperatorError::arrow("partitioning rows", e))?;
        if let Some(t) = arrow::array::AsArray::as_primitive_opt::<arrow::datatypes::UInt64Type>(&taken) {
            out.lines = Some(Arc::new(t.clone()));
        }
    }
    Ok(out)
}
