//! The operator contract: the traits sources and operators implement, the
//! [`Collector`] they emit through, and the error type they return.
//!
//! The runtime (engine crate) owns channels, tasks, shutdown and barrier
//! alignment; an operator only sees batches in and a collector out. Rejected
//! rows are data sent to a `rejects` port, never an `Err`: an `Err` stops the
//! whole run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::error::ArrowError;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::batch::{Barrier, Batch, Message};
use crate::flow::Credit;
use crate::plan::Plan;

/// Index of the default output port, the one an input reference names when
/// it gives no port (`inputs = ["valid"]`).
pub const OUT: usize = 0;

/// Why an operator stopped the run. The runtime prefixes the operator id.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Options that passed the schema check but cannot work (e.g. a regex
    /// that does not compile, a rule on a column of the wrong type).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing an object failed.
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: ArrowError,
    },
    #[error("{context}: {source}")]
    Parquet {
        context: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Input the operator was told not to tolerate (`on_error = "fail"`), or
    /// input it cannot make sense of at all (a header that does not match).
    #[error("{0}")]
    Data(String),
    /// The input is not the object a checkpoint was taken on: resuming would
    /// skip or repeat rows.
    #[error("{0}")]
    InputChanged(String),
    /// The state a resumed run needs is missing or does not match what the
    /// checkpoint says (e.g. a sink's table was reset since).
    #[error("{0}")]
    Resume(String),
    /// The run is stopping because of another operator or a signal; never the
    /// root cause of a failed run.
    #[error("stopped before completion")]
    Cancelled,
}

impl OperatorError {
    pub fn storage(context: impl Into<String>, source: object_store::Error) -> Self {
        OperatorError::Storage { context: context.into(), source }
    }
    pub fn arrow(context: impl Into<String>, source: ArrowError) -> Self {
        OperatorError::Arrow { context: context.into(), source }
    }
    pub fn parquet(context: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        OperatorError::Parquet { context: context.into(), source }
    }
}

/// Counters the runtime reads for the end-of-run summary and the progress
/// bar; the same numbers go to `metrics` under the operator's label.
#[derive(Debug, Default)]
pub struct OperatorStats {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub rows_dropped: AtomicU64,
    pub batches_in: AtomicU64,
    pub batches_out: AtomicU64,
    /// Share of a service's daily request quota used (the HubSpot sink), in
    /// parts per million plus one; 0 when unknown. Read it with
    /// [`OperatorStats::daily_quota`].
    pub daily_quota_ppm: AtomicU64,
    /// Messages and bytes waiting for this source in a queue (the `nats`
    /// source's consumer lag), plus one; 0 when unknown. Read them with
    /// [`OperatorStats::backlog`].
    pub backlog_messages: AtomicU64,
    pub backlog_bytes: AtomicU64,
}

impl OperatorStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// (messages, bytes) waiting in the queue this source reads, as last
    /// measured; None for sources without a queue.
    pub fn backlog(&self) -> Option<(u64, u64)> {
        match (self.backlog_messages.load(Ordering::Relaxed), self.backlog_bytes.load(Ordering::Relaxed)) {
            (0, _) => None,
            (m, b) => Some((m - 1, b.saturating_sub(1))),
        }
    }

    /// Records the messages and bytes waiting in the queue a source reads.
    pub fn set_backlog(&self, messages: u64, bytes: u64) {
        self.backlog_messages.store(messages.saturating_add(1), Ordering::Relaxed);
        self.backlog_bytes.store(bytes.saturating_add(1), Ordering::Relaxed);
    }

    /// Share (0..=1) of a service's daily request quota the operator last
    /// reported as used; None when it reported none.
    pub fn daily_quota(&self) -> Option<f64> {
        match self.daily_quota_ppm.load(Ordering::Relaxed) {
            0 => None,
            n => Some((n - 1) as f64 / 1e6),
        }
    }
}

/// What an operator is told when it is built.
#[derive(Clone, Debug)]
pub struct BuildContext {
    pub pipeline: String,
    /// The component id from the pipeline file.
    pub id: String,
    /// Rows per batch a source should aim for.
    pub batch_size: usize,
    /// The component's options as written, before `${VAR}` expansion: lets
    /// an operator name the variable behind a value (e.g. a refused token)
    /// without ever printing the value.
    pub raw_options: serde_json::Value,
    /// Resolves this component's secret references again, for an operator
    /// whose credential was refused (rotated). None: nothing to resolve.
    pub rotation: Option<std::sync::Arc<dyn Rotation>>,
}

/// A credential resolved again after the service refused it: a secret
/// rotated in the vault while the run went on.
#[async_trait::async_trait]
pub trait Rotation: Send + Sync + std::fmt::Debug {
    /// `option`'s value resolved afresh, when it holds secret references
    /// and the value changed; None when it did not (the refusal stands).
    async fn refresh(&self, option: &str) -> Result<Option<String>, String>;
    /// Names what `option` is resolved from (`SECRET[aws.crm#token]`), never
    /// its value.
    fn describe(&self, option: &str) -> String;
}

/// One output port and the edges leaving it.
pub struct OutPort {
    pub name: String,
    /// One sender per downstream edge; a batch is cloned (Arc'd arrays, no
    /// copy of the data) into each.
    pub senders: Vec<async_channel::Sender<Message>>,
    /// Each edge's row budget (see [`crate::flow`]).
    credits: Vec<Arc<Credit>>,
    rows: metrics::Counter,
    is_rejects: bool,
    /// A port that carries rows the operator removed (dedupe's
    /// `duplicates`): already counted as dropped, not as output.
    is_side: bool,
    warned_unconnected: bool,
    /// A batch went out on this port (see [`Collector::emit`]).
    sent: bool,
}

impl OutPort {
    pub fn new(operator: &str, name: &str, senders: Vec<async_channel::Sender<Message>>) -> Self {
        let rows = metrics::counter!(
            "engine_rows_out_total",
            "operator" => operator.to_string(),
            "port" => name.to_string()
        );
        OutPort {
            name: name.to_string(),
            credits: senders.iter().map(|_| Credit::unlimited()).collect(),
            senders,
            rows,
            is_rejects: name == "rejects",
            is_side: name == "duplicates",
            warned_unconnected: false,
            sent: false,
        }
    }
}

impl OutPort {
    /// Bounds each edge by rows too, with the consumer's budgets (one per
    /// sender, in order).
    pub fn with_credits(mut self, credits: Vec<Arc<Credit>>) -> Self {
        if credits.len() == self.senders.len() {
            self.credits = credits;
        }
        self
    }
}

/// How an operator emits. Sending waits while a downstream channel is full:
/// that wait is the backpressure that keeps memory bounded.
pub struct Collector {
    operator: String,
    ports: Vec<OutPort>,
    stats: Arc<OperatorStats>,
    cancel: CancellationToken,
    rejected: metrics::Counter,
    dropped: metrics::Counter,
    batches: metrics::Counter,
}

impl Collector {
    pub fn new(operator: &str, ports: Vec<OutPort>, stats: Arc<OperatorStats>, cancel: CancellationToken) -> Self {
        let label = operator.to_string();
        Collector {
            operator: label.clone(),
            ports,
            stats,
            cancel,
            rejected: metrics::counter!("engine_rows_rejected_total", "operator" => label.clone()),
            dropped: metrics::counter!("engine_rows_dropped_total", "operator" => label.clone()),
            batches: metrics::counter!("engine_batches_out_total", "operator" => label),
        }
    }

    /// Whether anything reads `port`: lets an operator skip building output
    /// nobody consumes (e.g. dedupe's `duplicates`).
    pub fn is_connected(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(|p| !p.senders.is_empty())
    }

    /// The most rows one batch on `port` should hold: the smallest budget of
    /// its edges ([`crate::flow`]). A source cuts its batches to it, so a
    /// barrier never waits behind one large batch crawling to a slow sink.
    pub fn preferred_rows(&self, port: usize) -> usize {
        self.ports.get(port).and_then(|p| p.credits.iter().map(|c| c.budget()).min()).unwrap_or(usize::MAX)
    }

    /// Sends `batch` to every edge of `port`. An empty batch is sent only
    /// as the first of a data port: it announces the schema when no row
    /// comes (a CSV sink writes its header from it), and every operator
    /// passes it on through this same rule. Otherwise empty batches are
    /// dropped, and rejects and side ports never carry one.
    pub async fn emit(&mut self, port: usize, batch: Batch) -> Result<(), OperatorError> {
        let n = batch.num_rows() as u64;
        let Some(p) = self.ports.get_mut(port) else {
            if n == 0 {
                return Ok(());
            }
            return Err(OperatorError::Config(format!("operator emitted on undeclared port {port}")));
        };
        if n == 0 && (p.sent || p.is_rejects || p.is_side) {
            return Ok(());
        }
        p.sent = true;
        p.rows.increment(n);
        if p.is_rejects {
            self.stats.rows_rejected.fetch_add(n, Ordering::Relaxed);
            self.rejected.increment(n);
        } else if !p.is_side {
            self.stats.rows_out.fetch_add(n, Ordering::Relaxed);
        }
        if p.senders.is_empty() {
            if p.is_rejects && !p.warned_unconnected {
                p.warned_unconnected = true;
                tracing::warn!(
                    operator = %self.operator,
                    "rows were rejected but the rejects port is not connected; they are counted, not kept"
                );
            }
            return Ok(());
        }
        self.stats.batches_out.fetch_add(1, Ordering::Relaxed);
        self.batches.increment(1);
        let rows = batch.num_rows();
        for (tx, credit) in p.senders.iter().zip(&p.credits) {
            // A batch larger than the edge's budget goes in slices: a slow
            // consumer then never has more than its budget queued.
            let budget = credit.budget().max(1);
            let mut offset = 0;
            // At least once: an empty batch (a schema announcement) goes too.
            loop {
                let len = budget.min(rows - offset);
                let part =
                    if offset == 0 && len == rows { batch.clone() } else { crate::flow::slice(&batch, offset, len) };
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Err(OperatorError::Cancelled),
                    _ = credit.acquire(len) => {}
                }
                send(tx, Message::Data(part), &self.cancel).await?;
                offset += len;
                if offset >= rows {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sends a control message on every edge of every port.
    pub async fn broadcast(&mut self, msg: Message) -> Result<(), OperatorError> {
        for p in &self.ports {
            for tx in &p.senders {
                send(tx, msg.clone(), &self.cancel).await?;
            }
        }
        Ok(())
    }

    /// Rows an operator removed on purpose (e.g. duplicates), for the summary.
    pub fn record_dropped(&mut self, n: u64) {
        self.stats.rows_dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped.increment(n);
    }

    /// Share (0..=1) of a service's daily request quota used, as last known
    /// (replaces what was recorded before; None leaves it), for the run's
    /// report and its alerts.
    pub fn record_daily_quota(&mut self, used: Option<f64>) {
        if let Some(u) = used.filter(|u| u.is_finite()) {
            let ppm = (u.clamp(0.0, 1.0) * 1e6).round() as u64;
            self.stats.daily_quota_ppm.store(ppm + 1, Ordering::Relaxed);
        }
    }

    /// The operator's counters, for a task of its own that reports beside
    /// the data path (a queue's lag sampler).
    pub fn stats(&self) -> Arc<OperatorStats> {
        self.stats.clone()
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

async fn send(
    tx: &async_channel::Sender<Message>,
    msg: Message,
    cancel: &CancellationToken,
) -> Result<(), OperatorError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(OperatorError::Cancelled),
        r = tx.send(msg) => r.map_err(|_| OperatorError::Cancelled),
    }
}

/// What an operator hands to a checkpoint when a barrier passes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Nothing to remember (a stateless transform).
    #[default]
    None,
    /// The whole state; replaces what earlier checkpoints held.
    Full(Vec<u8>),
    /// What was added since the previous checkpoint of this run; a resumed
    /// run gets every delta of the run, oldest first. Its cost follows the
    /// change, not the size of the state.
    Delta(Vec<u8>),
}

/// The state a resumed run hands an operator before any row moves.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// The checkpoint being resumed.
    pub epoch: u64,
    /// The operator's last [`Snapshot::Full`], if any.
    pub full: Option<Vec<u8>>,
    /// Every [`Snapshot::Delta`] of the run up to `epoch`, oldest first.
    pub deltas: Vec<Vec<u8>>,
}

/// Whether a source has more to read.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceState {
    More,
    Done,
}

/// A source reads in steps so the runtime can stop it (shutdown) or inject a
/// barrier between two steps; each step emits at most a few batches.
#[async_trait]
pub trait Source: Send {
    /// Opens the input; errors here (missing file, bad header) fail the run
    /// before any row moves.
    async fn open(&mut self) -> Result<(), OperatorError>;
    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError>;
    /// Called before `open` when a run resumes: the source continues after
    /// what the checkpoint covers. `open` must refuse (with
    /// [`OperatorError::InputChanged`]) if the input is not the one the
    /// checkpoint was taken on.
    fn restore(&mut self, _resume: &Resume) -> Result<(), OperatorError> {
        Err(OperatorError::Config("this source kind cannot resume from a checkpoint".into()))
    }
    /// A barrier is due: emit everything decoded so far, then return the
    /// offset right after the last row emitted.
    async fn snapshot(&mut self, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        Err(OperatorError::Config("this source kind cannot take part in checkpoints".into()))
    }
    /// Where the source is, for people ("row 1,203,456 of data.csv").
    fn position(&self) -> String {
        String::new()
    }
    /// Before `open` in a new run: the source's last snapshot of the last
    /// completed run, to tell whether its input changed since.
    fn previous_run(&mut self, _state: &[u8]) {}
    /// After `open`: `Some(why)` when the input is exactly what the last
    /// completed run read. When every source says so the run stops there:
    /// nothing to read, nothing to write.
    fn up_to_date(&self) -> Option<String> {
        None
    }
    /// The checkpoint that took this source's latest snapshot is durable
    /// (epoch `epoch`): a source whose input must be told (a queue's
    /// acknowledgements) does it now, never earlier. Called between steps.
    async fn committed(&mut self, _epoch: u64) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// A transform or a sink.
#[async_trait]
pub trait Operator: Send {
    /// Called with every batch from any input.
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError>;
    /// Called once every input delivered this barrier, before it is
    /// forwarded: return the state as of the barrier. A sink makes
    /// everything before the barrier durable before returning: returning is
    /// its acknowledgement.
    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        Ok(Snapshot::None)
    }
    /// Called once before any row moves (not in a dry run): check and
    /// prepare what the operator needs from outside (e.g. the properties a
    /// HubSpot sink writes), so a problem stops the run before anything is
    /// written anywhere.
    async fn open(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Called with every batch from the component's `deletes` inputs: keys
    /// whose rows vanished from the input, to delete from the target. Only
    /// kinds whose [`crate::KindSpec::deletes`] is set receive them.
    async fn delete(&mut self, _batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        Err(OperatorError::Config("this operator cannot apply deletions".into()))
    }
    /// Dry run: count what [`Operator::process`] (or, with `deletes`,
    /// [`Operator::delete`]) would do with `batch`, writing nothing and
    /// calling nobody. The default counts every row as written (or deleted).
    fn plan(&mut self, batch: &Batch, deletes: bool, plan: &mut Plan) -> Result<(), OperatorError> {
        plan.count_many(if deletes { "delete" } else { "write" }, batch.num_rows() as u64);
        Ok(())
    }
    /// Dry run: the sink's settings that belong in its plan (what it holds,
    /// its delete guard), called once before the first [`Operator::plan`].
    fn plan_start(&mut self, _plan: &mut Plan) {}
    /// Dry run: every input ended; add what the sink would do at its end
    /// (e.g. records refused earlier and offered again).
    fn plan_end(&mut self, _plan: &mut Plan) {}
    /// After `finish` in a completed run: work this operator leaves for the
    /// next run, which must do it even when its input is unchanged (e.g.
    /// records HubSpot refused, to offer again). Recorded with the run's
    /// completion; `Some(what)` there stops the next run's up-to-date skip.
    fn pending(&self) -> Option<String> {
        None
    }
    /// One line for the end-of-run summary about what the operator did
    /// beyond rows in and out (records created, updated, archived).
    fn summary(&self) -> Option<String> {
        None
    }
    /// Called before any row when a run resumes from a checkpoint.
    async fn restore(&mut self, _resume: &Resume) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Whether this operator's state outlives a run (see
    /// [`Operator::carry_over`]): the runtime then keeps its deltas when the
    /// run completes, and asks for a last one after `finish`.
    fn carries_state(&self) -> bool {
        false
    }
    /// Called before any row with the deltas of the last completed run
    /// (for operators that [`Operator::carries_state`]).
    async fn carry_over(&mut self, _previous: &[Vec<u8>]) -> Result<(), OperatorError> {
        Ok(())
    }
    /// How long without input before [`Operator::on_idle`] is called
    /// (e.g. a batcher's linger); `None` never.
    fn idle_after(&self) -> Option<std::time::Duration> {
        None
    }
    /// No input arrived for `idle_after`: flush what waits for more.
    async fn on_idle(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Every input ended: flush what is buffered and make output durable.
    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Every operator of the run finished without error: publish what
    /// `finish` staged (e.g. rename a temp file into place).
    async fn commit(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
    /// The run failed: discard partial or staged output (temp files).
    async fn abort(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    /// A daily quota share is kept to the millionth; None or NaN keep
    /// what was recorded; out-of-range shares are clamped.
    #[test]
    fn the_daily_quota_share_round_trips() {
        let stats = Arc::new(OperatorStats::default());
        let mut out = Collector::new("op", Vec::new(), stats.clone(), Default::default());
        assert_eq!(stats.daily_quota(), None);
        out.record_daily_quota(Some(0.0));
        assert_eq!(stats.daily_quota(), Some(0.0));
        out.record_daily_quota(Some(0.75));
        out.record_daily_quota(None);
        out.record_daily_quota(Some(f64::NAN));
        assert_eq!(stats.daily_quota(), Some(0.75));
        out.record_daily_quota(Some(3.0));
        assert_eq!(stats.daily_quota(), Some(1.0));
    }

    /// An empty batch goes out once, first, on a data port (it carries the
    /// schema of an input with no rows); never again, never on rejects.
    #[tokio::test]
    async fn an_empty_batch_is_sent_only_to_announce_the_schema() {
        let (tx, rx) = async_channel::unbounded();
        let (rtx, rrx) = async_channel::unbounded();
        let ports = vec![OutPort::new("op", "out", vec![tx]), OutPort::new("op", "rejects", vec![rtx])];
        let mut out = Collector::new("op", ports, Arc::new(OperatorStats::default()), Default::default());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let empty = || Batch::new(RecordBatch::new_empty(schema.clone()));
        out.emit(OUT, empty()).await.unwrap();
        out.emit(OUT, empty()).await.unwrap();
        out.emit(1, empty()).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Message::Data(b)) if b.num_rows() == 0 && b.records.schema() == schema));
        assert!(rx.try_recv().is_err(), "a second empty batch is dropped");
        assert!(rrx.try_recv().is_err(), "rejects never carry an empty batch");
    }
}
