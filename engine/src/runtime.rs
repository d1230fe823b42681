//! Runs a validated [`Pipeline`]: builds every operator, wires bounded
//! channels between them, spawns one task per operator inside its own span,
//! and supervises the run until it completes, fails or is interrupted.
//!
//! **Invariant:** an edge is a bounded channel; a full channel makes the
//! sender wait. That wait is the only flow control, and it is what keeps
//! memory bounded whatever the input size.
//!
//! **Invariant:** the first operator error cancels every task; sinks then
//! discard partial output (temp files) instead of publishing it.
//!
//! **Invariant:** a graceful stop (first SIGINT/SIGTERM) only stops the
//! sources; every batch already in flight is processed. Without
//! checkpoints, sinks then flush and publish as at a normal end of stream;
//! with checkpoints, a last barrier follows the last row read and the run
//! stops at that checkpoint, outputs staged for the next run to resume.
//!
//! **Invariant:** with checkpoints on, a source injects a barrier only
//! between two steps, after emitting every row before its offset; operators
//! align barriers across inputs and acknowledge to the coordinator
//! ([`crate::checkpoint`]).
//!
//! **Invariant:** after its last row a source sends `EndOfData` and goes on
//! injecting barriers until the coordinator wants no more (every operator
//! reported its `finish` done); operators run `finish` on `EndOfData`, so
//! checkpoints keep covering the end-of-input work while it lasts.
//!
//! **Invariant:** with timed checkpoints every edge is also bounded by rows
//! (`operators::flow`): its consumer sets the budget from its measured
//! throughput, so a barrier never queues behind minutes of rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures::FutureExt;
use futures::future::{BoxFuture, select_all};
use operators::flow::{Credit, Meter};
use operators::registry::{Built, Role};
use operators::{
    BuildContext, Collector, Message, Operator, OperatorError, OperatorStats, OutPort, Source, SourceState,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{self, Committed, Coordinator, OperatorLink, Report, Session, SourceLink};
use crate::config::Pipeline;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Stopped by a signal after draining what was in flight.
    Interrupted {
        signal: &'static str,
    },
    /// A second signal stopped everything at once; partial output discarded.
    Aborted {
        signal: &'static str,
    },
    Failed {
        operator: String,
        error: String,
    },
}

/// The drain reason of a run stopped at its `--timeout`.
pub const TIMEOUT: &str = "timeout";

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Completed => 0,
            // As coreutils' timeout(1).
            Outcome::Interrupted { signal: TIMEOUT } => 124,
            Outcome::Interrupted { signal: "SIGINT" } | Outcome::Aborted { signal: "SIGINT" } => 130,
            Outcome::Interrupted { .. } | Outcome::Aborted { .. } => 143,
            Outcome::Failed { .. } => 1,
        }
    }
}

/// One operator's figures at the end of a run.
#[derive(Debug, Clone)]
pub struct OperatorReport {
    pub id: String,
    pub kind: &'static str,
    pub role: Role,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_rejected: u64,
    pub rows_dropped: u64,
    pub elapsed: Duration,
    /// Share (0..=1) of a service's daily request quota used, when the
    /// operator reported one (the HubSpot sink).
    pub daily_quota: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub pipeline: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
    pub operators: Vec<OperatorReport>,
    /// Peak resident memory of the process (Linux), for the summary and
    /// benchmarks.
    pub peak_rss_bytes: Option<u64>,
    pub checkpoints: Option<CheckpointReport>,
    /// The run stopped before reading: every input is what the last
    /// completed run read.
    pub up_to_date: Option<String>,
    /// A dry run: what each sink would have done, in file order.
    pub plans: Vec<(String, operators::Plan)>,
    /// Operators' own lines for the summary ([`Operator::summary`]).
    pub notes: Vec<(String, String)>,
}

/// What the run did with checkpoints.
#[derive(Debug, Clone, Default)]
pub struct CheckpointReport {
    pub resumed_from: Option<u64>,
    /// Checkpoints this run committed, and the newest.
    pub committed: u64,
    pub last: Option<u64>,
    /// The epoch marking the run complete, when it completed.
    pub complete: Option<u64>,
}

/// VmHWM of this process: the most resident memory it ever held.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Signals from outside the run.
#[derive(Clone, Default)]
pub struct Control {
    /// Stop reading sources; drain and finish normally.
    pub drain: CancellationToken,
    /// Stop everything now.
    pub abort: CancellationToken,
    /// Which signal asked for the drain, for the outcome.
    pub drain_reason: Arc<std::sync::Mutex<Option<&'static str>>>,
}

impl Control {
    pub fn request_drain(&self, reason: &'static str) {
        if let Ok(mut r) = self.drain_reason.lock() {
            r.get_or_insert(reason);
        }
        self.drain.cancel();
    }
}

/// Shared view of a running pipeline, for the progress bar, health checks
/// and live figures (`engine run --live`).
pub struct Live {
    pub ready: AtomicBool,
    pub stats: Vec<(String, Role, Arc<OperatorStats>)>,
    /// Per edge: label, messages queued, capacity; sampled 4 times a second.
    pub channels: std::sync::Mutex<Vec<(String, usize, usize)>>,
    pub checkpoints: Arc<checkpoint::Progress>,
}

/// What a run does with its sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write every sink, take checkpoints, publish.
    Run,
    /// Read and transform everything, but no sink writes and nothing is
    /// checkpointed or carried: each sink counts what it would do
    /// ([`operators::Plan`]).
    Plan,
    /// A plan counted for the mass-delete guard, just before a new run:
    /// downloads are staged where that run will read them.
    Guard,
}

/// Builds everything, then runs. Build and open errors come back before any
/// row moves, as a failed outcome naming the operator.
pub async fn run(
    p: &Pipeline,
    control: Control,
    session: Option<Arc<Session>>,
    on_live: impl FnOnce(Arc<Live>),
) -> RunReport {
    execute(p, control, session, Mode::Run, on_live).await
}

/// A dry run: what each sink would do (`engine run --dry-run`). `session`
/// only lends the state carried from the last completed run (what
/// `changes` compares with, what a HubSpot sink knows it holds); nothing is
/// written to it.
///
/// With `apart`, a source that stages downloads stages them in a place of
/// its own (`<staging>/.dry-run`), so a paused run's staged copy stays as it
/// is; the mass-delete guard, which counts just before a new run, shares it.
pub async fn plan(p: &Pipeline, control: Control, session: Option<Arc<Session>>, apart: bool) -> RunReport {
    let mode = if apart { Mode::Plan } else { Mode::Guard };
    execute(p, control, session, mode, |_| {}).await
}

/// The phases, in order: build → restore → carry over → open sources (and
/// the up-to-date decision) → open operators → wire → spawn → supervise →
/// complete → publish → report.
async fn execute(
    p: &Pipeline,
    control: Control,
    session: Option<Arc<Session>>,
    mode: Mode,
    on_live: impl FnOnce(Arc<Live>),
) -> RunReport {
    // A dry run neither resumes nor checkpoints: only the carried state is read.
    if let (Mode::Plan | Mode::Guard, Some(r)) = (mode, session.as_ref().and_then(|s| s.resume.as_ref())) {
        tracing::info!(
            "a run is in progress (checkpoint {}); the plan is for a run from the start of the input",
            r.epoch
        );
    }
    let mut run = Runner::new(p, control, session, mode);
    let mut built = match run.build() {
        Ok(b) => b,
        Err(f) => return run.failed(f),
    };
    if let Err(f) = run.restore(&mut built).await {
        return run.failed(f);
    }
    // The up-to-date decision comes before the carried state is loaded:
    // an unchanged input costs no more than the sources' checks.
    let pending = run.pending_work();
    match run.open_sources(&mut built, pending).await {
        Ok(()) => {}
        Err(Early::Failed(f)) => return run.failed(f),
        Err(Early::Interrupted) => return run.interrupted(),
        Err(Early::UpToDate(why)) => return run.up_to_date(why),
    }
    if let Err(f) = run.carry_over(&mut built).await {
        return run.failed(f);
    }
    match run.open_operators(&mut built).await {
        Ok(()) => {}
        Err(Early::Interrupted) => return run.interrupted(),
        Err(Early::Failed(f)) => return run.failed(f),
        Err(Early::UpToDate(why)) => return run.up_to_date(why),
    }
    let mut wiring = run.wire();
    on_live(run.live.clone());
    let tasks = run.tasks(built, &mut wiring);
    let sampler = sample_channels(std::mem::take(&mut wiring.edges), run.live.clone());
    // Senders held here would keep channels open forever.
    drop(wiring);
    let mut ended = run.supervise(tasks).await;
    sampler.cancel();
    run.complete(&mut ended).await;
    run.publish(&mut ended).await;
    run.report(ended)
}

struct Edge {
    label: String,
    tx: Sender<Message>,
}

/// A failure before any task ran: the operator and the message.
type Failure = (String, String);

/// Why the run stopped while opening its sources.
enum Early {
    Failed(Failure),
    Interrupted,
    UpToDate(String),
}

/// The channels between operators and the checkpoint plumbing, before tasks
/// take their ends.
struct Wiring {
    senders: HashMap<(String, usize), Vec<(Sender<Message>, Arc<Credit>)>>,
    receivers: HashMap<String, Vec<(Receiver<Message>, Arc<Credit>)>>,
    edges: Vec<Edge>,
    requests_rx: tokio::sync::watch::Receiver<u64>,
    committed_rx: tokio::sync::watch::Receiver<u64>,
    reports_tx: Option<tokio::sync::mpsc::UnboundedSender<Report>>,
    no_more: CancellationToken,
}

/// What the tasks left for the end of the run.
struct Ended {
    failure: Option<Failure>,
    /// Operators that finished cleanly wait here for the verdict on the run.
    finished: Vec<(usize, Box<dyn Operator>)>,
    elapsed: Vec<Duration>,
    committed: Committed,
    cp_report: Option<CheckpointReport>,
    /// A drained run with checkpoints stops at its last checkpoint.
    stop_at_checkpoint: bool,
}

/// One run's shared state, passed from phase to phase.
struct Runner<'p> {
    p: &'p Pipeline,
    control: Control,
    session: Option<Arc<Session>>,
    mode: Mode,
    started: Instant,
    resumed_from: Option<u64>,
    abort: CancellationToken,
    stats: Vec<Arc<OperatorStats>>,
    live: Arc<Live>,
    /// Dry run: each sink's plan, filled by its task.
    plans: Vec<(String, Arc<std::sync::Mutex<operators::Plan>>)>,
    /// Made by `wire` (which creates its channels), started once the
    /// sources are open, so a run that stops early never starts one.
    pending: Option<Coordinator>,
    coordinator: Option<tokio::task::JoinHandle<Committed>>,
}

impl<'p> Runner<'p> {
    fn new(p: &'p Pipeline, control: Control, session: Option<Arc<Session>>, mode: Mode) -> Self {
        let stats: Vec<Arc<OperatorStats>> = p.components.iter().map(|_| Arc::new(OperatorStats::default())).collect();
        let live = Arc::new(Live {
            ready: AtomicBool::new(false),
            stats: p.components.iter().zip(&stats).map(|(c, s)| (c.id.clone(), c.role, s.clone())).collect(),
            channels: std::sync::Mutex::new(Vec::new()),
            checkpoints: Arc::new(checkpoint::Progress::default()),
        });
        Runner {
            p,
            resumed_from: session
                .as_ref()
                .filter(|_| mode == Mode::Run)
                .and_then(|s| s.resume.as_ref().map(|r| r.epoch)),
            abort: control.abort.clone(),
            control,
            session,
            mode,
            started: Instant::now(),
            stats,
            live,
            plans: Vec::new(),
            pending: None,
            coordinator: None,
        }
    }

    /// Work operators left at the end of the last completed run, as
    /// "id: what" (recorded in its completion, so no state is loaded).
    fn pending_work(&self) -> Vec<String> {
        self.session
            .as_ref()
            .map(|s| s.previous_pending.iter().map(|(id, w)| format!("{id}: {w}")).collect())
            .unwrap_or_default()
    }

    /// A dry run, for a person or for the guard: sinks only count.
    fn planning(&self) -> bool {
        matches!(self.mode, Mode::Plan | Mode::Guard)
    }

    /// Checkpoints are taken only in a real run with a store.
    fn checkpointing(&self) -> bool {
        self.mode == Mode::Run && self.session.is_some()
    }

    /// With timed checkpoints, each edge holds about `target` of its
    /// consumer's throughput (at most `max` rows): a barrier crosses the
    /// longest path (and the sink's requests in flight) in about half the
    /// interval however slow a sink is.
    fn debloat(&self) -> Option<(Duration, usize)> {
        if !self.checkpointing() {
            return None;
        }
        let interval = self.session.as_ref()?.settings.interval?;
        let depth = longest_path(self.p).max(1) as u32;
        // Not below 100 ms: a consumer with a cost per batch (a request, a
        // fixed delay) slows down as batches shrink, and a target shorter
        // than that cost would shrink its budget without end.
        let target = (interval / (2 * (depth + 1))).clamp(Duration::from_millis(100), Duration::from_secs(2));
        Some((target, self.p.channel_capacity.max(1) * self.p.batch_size.max(1)))
    }

    fn span(&self, i: usize) -> tracing::Span {
        let c = &self.p.components[i];
        tracing::info_span!("operator", operator = %c.id, kind = c.kind.name)
    }

    fn ended_report(&self, outcome: Outcome, up_to_date: Option<String>) -> RunReport {
        RunReport {
            pipeline: self.p.name.clone(),
            outcome,
            elapsed: self.started.elapsed(),
            operators: Vec::new(),
            peak_rss_bytes: peak_rss_bytes(),
            checkpoints: self
                .checkpointing()
                .then(|| CheckpointReport { resumed_from: self.resumed_from, ..Default::default() }),
            up_to_date,
            plans: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn failed(&self, (operator, error): Failure) -> RunReport {
        self.ended_report(Outcome::Failed { operator, error }, None)
    }

    fn signal(&self) -> &'static str {
        self.control.drain_reason.lock().ok().and_then(|r| *r).unwrap_or("SIGTERM")
    }

    fn interrupted(&self) -> RunReport {
        self.ended_report(Outcome::Interrupted { signal: self.signal() }, None)
    }

    /// Every source reads exactly what the last completed run read: nothing
    /// to do. The previous run's outputs and state stay as they are.
    fn up_to_date(&self, why: String) -> RunReport {
        RunReport { checkpoints: None, ..self.ended_report(Outcome::Completed, Some(why)) }
    }

    /// Builds every operator first: a bad option fails the run with nothing
    /// started.
    fn build(&self) -> Result<Vec<(usize, Built)>, Failure> {
        let p = self.p;
        let mut built = Vec::with_capacity(p.components.len());
        for (i, c) in p.components.iter().enumerate() {
            // A queue source acknowledges only committed checkpoints: with
            // none, it would read its partition again on every run.
            if self.mode == Mode::Run && !self.checkpointing() && c.role == Role::Source && c.kind.name == "nats" {
                return Err((
                    c.id.clone(),
                    "a `nats` source needs checkpoints ([pipeline.checkpoint] interval is off): it acknowledges messages only once a checkpoint covering them committed".into(),
                ));
            }
            let ctx = BuildContext {
                pipeline: p.name.clone(),
                id: c.id.clone(),
                batch_size: c.batch_size,
                raw_options: c.raw_options.clone(),
                rotation: c.rotation.0.clone(),
            };
            let mut options = c.options.clone();
            if self.mode == Mode::Plan
                && let Some(staging) = options.get("staging").and_then(|v| v.as_str()).map(str::to_string)
            {
                // A dry run downloads into a staging area of its own: the
                // staged copy a paused run resumes from stays as it is.
                options["staging"] = serde_json::Value::String(format!("{}/.dry-run", staging.trim_end_matches('/')));
            }
            match (c.kind.build)(&ctx, options) {
                Ok(b) => built.push((i, b)),
                Err(e) => return Err((c.id.clone(), e.to_string())),
            }
        }
        Ok(built)
    }

    /// A resumed run hands every operator its state before any row moves.
    async fn restore(&self, built: &mut [(usize, Built)]) -> Result<(), Failure> {
        let Some(r) = self.session.as_ref().filter(|_| self.mode == Mode::Run).and_then(|s| s.resume.as_ref()) else {
            return Ok(());
        };
        for (i, b) in built.iter_mut() {
            let c = &self.p.components[*i];
            // A poisoned lock still holds every state: take it regardless.
            let taken = r.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&c.id);
            let Some(state) = taken else { continue };
            let span = self.span(*i);
            let restored = match b {
                Built::Source(s) => span.in_scope(|| s.restore(&state)),
                Built::Operator(op) => op.restore(&state).instrument(span).await,
            };
            restored.map_err(|e| (c.id.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// State carried over from the last completed run (e.g. `changes`).
    async fn carry_over(&self, built: &mut [(usize, Built)]) -> Result<(), Failure> {
        let Some(s) = &self.session else { return Ok(()) };
        for (i, b) in built.iter_mut() {
            let c = &self.p.components[*i];
            if let Built::Operator(op) = b
                && op.carries_state()
            {
                let prev = s
                    .previous(&c.id)
                    .map_err(|e| (c.id.clone(), format!("reading the state of the last completed run: {e}")))?;
                op.carry_over(&prev).instrument(self.span(*i)).await.map_err(|e| (c.id.clone(), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Operators check what they need from outside (a HubSpot portal's
    /// properties) before any row moves. A dry run asks nobody.
    async fn open_operators(&self, built: &mut [(usize, Built)]) -> Result<(), Early> {
        if self.planning() {
            return Ok(());
        }
        for (i, b) in built.iter_mut() {
            if let Built::Operator(op) = b {
                let opened = tokio::select! {
                    r = op.open().instrument(self.span(*i)) => r,
                    _ = self.control.drain.cancelled() => Err(OperatorError::Cancelled),
                    _ = self.abort.cancelled() => Err(OperatorError::Cancelled),
                };
                match opened {
                    Ok(()) => {}
                    Err(OperatorError::Cancelled) => return Err(Early::Interrupted),
                    Err(e) => return Err(Early::Failed((self.p.components[*i].id.clone(), e.to_string()))),
                }
            }
        }
        Ok(())
    }

    /// Channels: one per edge, sized by the consumer's channel_capacity;
    /// barrier requests to sources, reports back.
    fn wire(&mut self) -> Wiring {
        let mut senders: HashMap<(String, usize), Vec<(Sender<Message>, Arc<Credit>)>> = HashMap::new();
        let mut receivers: HashMap<String, Vec<(Receiver<Message>, Arc<Credit>)>> = HashMap::new();
        let mut edges = Vec::new();
        for c in &self.p.components {
            for inp in &c.inputs {
                let (tx, rx) = async_channel::bounded(c.channel_capacity);
                // With checkpoints, edges start small and follow their
                // consumer's throughput (see `debloat`); without, the
                // message bound alone applies, as it always did.
                let credit = match self.debloat() {
                    Some(_) => Credit::new(operators::flow::INITIAL_BUDGET),
                    None => Credit::unlimited(),
                };
                senders.entry((inp.from.clone(), inp.port)).or_default().push((tx.clone(), credit.clone()));
                receivers.entry(c.id.clone()).or_default().push((rx, credit));
                edges.push(Edge { label: format!("{}.{}->{}", inp.from, inp.port_name, c.id), tx });
            }
        }
        let (requests_tx, requests_rx) =
            tokio::sync::watch::channel(self.session.as_ref().map(|s| s.last_epoch()).unwrap_or(0));
        let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel::<Report>();
        let no_more = CancellationToken::new();
        let (committed_tx, committed_rx) =
            tokio::sync::watch::channel(self.session.as_ref().map(|s| s.last_epoch()).unwrap_or(0));
        let mut wiring = Wiring { senders, receivers, edges, requests_rx, committed_rx, reports_tx: None, no_more };
        if self.checkpointing() {
            wiring.reports_tx = Some(reports_tx);
            self.pending = self.coordinator_for(requests_tx, committed_tx, reports_rx, wiring.no_more.clone());
        }
        wiring
    }

    fn coordinator_for(
        &self,
        requests: tokio::sync::watch::Sender<u64>,
        committed: tokio::sync::watch::Sender<u64>,
        reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
        no_more: CancellationToken,
    ) -> Option<Coordinator> {
        let s = self.session.as_ref()?;
        let p = self.p;
        let c = Coordinator {
            session: s.clone(),
            ids: p.components.iter().map(|c| c.id.clone()).collect(),
            roles: p.components.iter().map(|c| c.role).collect(),
            source_stats: p
                .components
                .iter()
                .zip(&self.stats)
                .filter(|(c, _)| c.role == Role::Source)
                .map(|(_, s)| s.clone())
                .collect(),
            requests,
            committed,
            reports,
            no_more,
            drain: self.control.drain.clone(),
            stop: self.abort.clone(),
            progress: self.live.checkpoints.clone(),
        };
        Some(c)
    }

    /// Opens sources (a missing file fails here, cleanly) and decides
    /// whether there is anything to do: when every source reads what the
    /// last completed run read and no operator has work left, the run stops
    /// here.
    async fn open_sources(&self, built: &mut [(usize, Built)], pending: Vec<String>) -> Result<(), Early> {
        let p = self.p;
        let mut up_to_date: Vec<String> = Vec::new();
        for (i, b) in built.iter_mut() {
            let Built::Source(s) = b else { continue };
            let c = &p.components[*i];
            if let Some(prev) = self
                .session
                .as_ref()
                .filter(|s| s.resume.is_none() || self.planning())
                .and_then(|s| s.previous_states.get(&c.id))
            {
                s.previous_run(prev);
            }
            // Opening may wait on the network (S3, a Parquet footer): a
            // signal must still stop the run here.
            let opened = tokio::select! {
                r = s.open().instrument(self.span(*i)) => r,
                _ = self.control.drain.cancelled() => Err(OperatorError::Cancelled),
                _ = self.abort.cancelled() => Err(OperatorError::Cancelled),
            };
            match opened {
                Ok(()) => {}
                Err(OperatorError::Cancelled) => return Err(Early::Interrupted),
                Err(e) => return Err(Early::Failed((c.id.clone(), e.to_string()))),
            }
            if let Some(why) = s.up_to_date() {
                up_to_date.push(why);
            }
        }
        let sources = p.components.iter().filter(|c| c.role == Role::Source).count();
        if sources > 0 && up_to_date.len() == sources {
            if pending.is_empty() {
                for why in &up_to_date {
                    tracing::info!("{why}");
                }
                return Err(Early::UpToDate(up_to_date.join("; ")));
            }
            tracing::info!(pending = %pending.join("; "), "the input is unchanged but work is left from an earlier run: running");
        }
        Ok(())
    }

    /// Turns every operator into its task, joined to its channels, and
    /// starts the coordinator.
    fn tasks(&mut self, built: Vec<(usize, Built)>, w: &mut Wiring) -> Vec<(usize, BoxFuture<'static, TaskResult>)> {
        let p = self.p;
        let mut tasks: Vec<(usize, BoxFuture<'static, TaskResult>)> = Vec::new();
        for (i, b) in built {
            let c = &p.components[i];
            let ports = c
                .kind
                .ports
                .iter()
                .enumerate()
                .map(|(pi, name)| {
                    let (txs, credits): (Vec<_>, Vec<_>) =
                        w.senders.remove(&(c.id.clone(), pi)).unwrap_or_default().into_iter().unzip();
                    OutPort::new(&c.id, name, txs).with_credits(credits)
                })
                .collect();
            let out = Collector::new(&c.id, ports, self.stats[i].clone(), self.abort.clone());
            let fut = match b {
                Built::Source(s) => {
                    let link = w.reports_tx.as_ref().map(|tx| SourceLink {
                        op: i,
                        requests: w.requests_rx.clone(),
                        committed: w.committed_rx.clone(),
                        start_epoch: self.session.as_ref().map(|s| s.last_epoch()).unwrap_or(0),
                        reports: tx.clone(),
                        no_more: w.no_more.clone(),
                    });
                    source_task(s, out, self.control.drain.clone(), self.abort.clone(), link)
                        .map(|r| r.map(|()| None))
                        .boxed()
                }
                Built::Operator(mut op) => {
                    let inputs = w.receivers.remove(&c.id).unwrap_or_default();
                    let deletes = c.inputs.iter().map(|inp| inp.deletes).collect();
                    if self.planning() && c.role == Role::Sink {
                        let plan = Arc::new(std::sync::Mutex::new(operators::Plan::default()));
                        if let Ok(mut pl) = plan.lock() {
                            op.plan_start(&mut pl);
                        }
                        self.plans.push((c.id.clone(), plan.clone()));
                        op = Box::new(PlanSink { inner: op, plan });
                    }
                    let link = w.reports_tx.as_ref().map(|tx| OperatorLink { op: i, reports: tx.clone() });
                    let stop = self.checkpointing().then(|| self.control.drain.clone());
                    let inputs = Inputs::new(inputs, deletes);
                    let meter = self.debloat().map(|(target, max)| Meter::new(target, max));
                    let task = OperatorTask {
                        id: c.id.clone(),
                        stats: self.stats[i].clone(),
                        abort: self.abort.clone(),
                        link,
                        stop_at_checkpoint: stop,
                        meter,
                    };
                    task.run(op, inputs, out).boxed()
                }
            };
            tasks.push((i, fut));
        }
        self.live.ready.store(true, Ordering::Relaxed);
        // The coordinator holds no report sender: when every task is done,
        // its channel closes and it returns what it committed.
        w.reports_tx = None;
        if let Some(c) = self.pending.take() {
            self.coordinator = Some(tokio::spawn(c.run().instrument(tracing::info_span!("checkpoint"))));
        }
        tasks
    }

    /// Spawns every task and waits for all of them; the first error cancels
    /// the others.
    async fn supervise(&mut self, tasks: Vec<(usize, BoxFuture<'static, TaskResult>)>) -> Ended {
        let p = self.p;
        let mut set = JoinSet::new();
        let mut task_ids = HashMap::new();
        let mut elapsed = vec![Duration::ZERO; p.components.len()];
        for (i, fut) in tasks {
            let handle = set.spawn(
                async move {
                    let t = Instant::now();
                    let r = fut.await;
                    (i, t.elapsed(), r)
                }
                .instrument(self.span(i)),
            );
            task_ids.insert(handle.id(), i);
        }
        let mut failure: Option<Failure> = None;
        let mut finished: Vec<(usize, Box<dyn Operator>)> = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, took, r)) => {
                    elapsed[i] = took;
                    match r {
                        Ok(op) => {
                            tracing::debug!(operator = %p.components[i].id, "finished");
                            finished.extend(op.map(|op| (i, op)));
                        }
                        Err(OperatorError::Cancelled) => {}
                        Err(e) => {
                            if failure.is_none() {
                                tracing::error!(operator = %p.components[i].id, error = %e, "operator failed; stopping the run");
                                failure = Some((p.components[i].id.clone(), e.to_string()));
                            }
                            self.abort.cancel();
                        }
                    }
                }
                Err(join_err) => {
                    if failure.is_none() {
                        let who = task_ids.get(&join_err.id()).map(|&i| p.components[i].id.clone());
                        failure =
                            Some((who.unwrap_or_else(|| "<runtime>".into()), format!("the task panicked: {join_err}")));
                    }
                    self.abort.cancel();
                }
            }
        }
        let committed: Committed = match self.coordinator.take() {
            Some(h) => h.await.unwrap_or_else(|e| Committed {
                error: Some(format!("the coordinator panicked: {e}")),
                ..Default::default()
            }),
            None => Committed::default(),
        };
        if let Some(e) = &committed.error
            && failure.is_none()
        {
            failure = Some(("<checkpoint>".into(), e.clone()));
        }
        let cp_report = self.checkpointing().then(|| CheckpointReport {
            resumed_from: self.resumed_from,
            committed: committed.count,
            last: committed.last,
            complete: None,
        });
        Ended {
            failure,
            finished,
            elapsed,
            committed,
            cp_report,
            stop_at_checkpoint: self.checkpointing() && self.control.drain.is_cancelled(),
        }
    }

    /// A completed run is marked complete before its outputs are published:
    /// a crash while publishing then means a fresh, complete rerun, never a
    /// resume into outputs that are already gone.
    async fn complete(&self, e: &mut Ended) {
        let Some(s) = self.session.as_ref().filter(|_| self.checkpointing()) else { return };
        if e.failure.is_some() || self.abort.is_cancelled() || e.stop_at_checkpoint {
            return;
        }
        let last = e.committed.last.unwrap_or_else(|| s.last_epoch());
        // The last state of operators whose state outlives the run.
        let mut carry = std::collections::BTreeMap::new();
        let mut dummy =
            Collector::new("<complete>", Vec::new(), Arc::new(OperatorStats::default()), self.abort.clone());
        for (i, op) in &mut e.finished {
            if !op.carries_state() {
                continue;
            }
            match op.on_barrier(operators::Barrier { epoch: last + 1 }, &mut dummy).await {
                Ok(operators::Snapshot::Delta(d)) => {
                    // Deltas concatenate: entries of abandoned epochs first.
                    let id = &self.p.components[*i].id;
                    let mut all = e.committed.orphan_deltas.get(id).cloned().unwrap_or_default();
                    all.extend_from_slice(&d);
                    carry.insert(id.clone(), all);
                }
                Ok(_) => {}
                Err(err) => {
                    e.failure = Some((self.p.components[*i].id.clone(), err.to_string()));
                }
            }
        }
        // What operators leave to the next run, recorded so that run can
        // tell whether it is up to date without loading their state.
        let pending = e
            .finished
            .iter()
            .filter_map(|(i, op)| op.pending().map(|w| (self.p.components[*i].id.clone(), w)))
            .collect();
        let completed = if e.failure.is_none() {
            checkpoint::complete(s, last, &e.committed, carry, pending).await
        } else {
            Err("an operator failed its last snapshot".into())
        };
        match completed {
            Ok(epoch) => {
                if let Some(r) = e.cp_report.as_mut() {
                    r.complete = Some(epoch);
                }
            }
            Err(err) => e.failure = Some(("<checkpoint>".into(), format!("marking the run complete: {err}"))),
        }
    }

    /// Publishes only when the whole run succeeded (or drained cleanly): a
    /// failed run leaves every previous output as it was. A dry run
    /// publishes nothing.
    async fn publish(&self, e: &mut Ended) {
        if e.cp_report.as_ref().is_some_and(|r| r.complete.is_some()) {
            checkpoints::fault::hit("before-publish");
        }
        let publishing =
            self.mode == Mode::Run && e.failure.is_none() && !self.abort.is_cancelled() && !e.stop_at_checkpoint;
        if publishing {
            for (i, op) in &mut e.finished {
                let id = &self.p.components[*i].id;
                if let Err(err) = op.commit().instrument(tracing::info_span!("operator", operator = %id)).await {
                    tracing::error!(operator = %id, error = %err, "publishing output failed");
                    e.failure = Some((id.clone(), err.to_string()));
                    break;
                }
            }
        }
        if e.failure.is_some() || self.abort.is_cancelled() || e.stop_at_checkpoint || self.planning() {
            for (_, op) in &mut e.finished {
                op.abort().await;
            }
        } else if let (Some(s), Some(epoch)) = (&self.session, e.cp_report.as_ref().and_then(|r| r.complete)) {
            // Until this lands, the next run neither trusts this run's
            // outputs (no up-to-date skip) nor compares with its state.
            if let Err(err) = checkpoint::mark_published(s, epoch).await {
                e.failure = Some(("<checkpoint>".into(), format!("marking run {epoch} published: {err}")));
            }
        }
    }

    fn report(&self, e: Ended) -> RunReport {
        let outcome = match e.failure {
            Some((operator, error)) => Outcome::Failed { operator, error },
            None if self.abort.is_cancelled() => Outcome::Aborted { signal: self.signal() },
            None if self.control.drain.is_cancelled() => Outcome::Interrupted { signal: self.signal() },
            None => Outcome::Completed,
        };
        let operators = self
            .p
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = &self.stats[i];
                let get = OperatorStats::get;
                let (out, rej) = (get(&s.rows_out), get(&s.rows_rejected));
                OperatorReport {
                    id: c.id.clone(),
                    kind: c.kind.name,
                    role: c.role,
                    // A source's input is what it read: good rows plus rejects.
                    rows_in: if c.role == Role::Source { out + rej } else { get(&s.rows_in) },
                    rows_out: out,
                    rows_rejected: rej,
                    rows_dropped: get(&s.rows_dropped),
                    elapsed: e.elapsed[i],
                    daily_quota: s.daily_quota(),
                }
            })
            .collect();
        let notes = e
            .finished
            .iter()
            .filter_map(|(i, op)| op.summary().map(|n| (self.p.components[*i].id.clone(), n)))
            .collect();
        let plans =
            self.plans.iter().map(|(id, pl)| (id.clone(), pl.lock().map(|p| p.clone()).unwrap_or_default())).collect();
        RunReport {
            pipeline: self.p.name.clone(),
            outcome,
            elapsed: self.started.elapsed(),
            operators,
            peak_rss_bytes: peak_rss_bytes(),
            checkpoints: e.cp_report,
            up_to_date: None,
            plans,
            notes,
        }
    }
}

/// Edges on the longest path from a source to a sink: how many channels a
/// barrier crosses.
fn longest_path(p: &Pipeline) -> usize {
    let mut depth: HashMap<&str, usize> = HashMap::new();
    for c in crate::graph::topo_order(&p.components) {
        let d = c.inputs.iter().map(|i| depth.get(i.from.as_str()).copied().unwrap_or(0) + 1).max().unwrap_or(0);
        depth.insert(c.id.as_str(), d);
    }
    depth.values().copied().max().unwrap_or(0)
}

/// Channel fill gauges, sampled: reading a length is cheap, but not free
/// enough to do on every send.
fn sample_channels(edges: Vec<Edge>, live: Arc<Live>) -> CancellationToken {
    let gauges: Vec<(String, metrics::Gauge, Sender<Message>)> = edges
        .into_iter()
        .map(|e| (e.label.clone(), metrics::gauge!("engine_channel_fill_ratio", "edge" => e.label), e.tx))
        .collect();
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = s2.cancelled() => break,
                _ = tick.tick() => {
                    let mut fill = Vec::with_capacity(gauges.len());
                    for (label, g, tx) in &gauges {
                        let cap = tx.capacity().unwrap_or(1).max(1);
                        g.set(tx.len() as f64 / cap as f64);
                        fill.push((label.clone(), tx.len(), cap));
                    }
                    if let Ok(mut c) = live.channels.lock() {
                        *c = fill;
                    }
                }
            }
        }
    });
    stop
}

/// A sink in a dry run: counts what the sink would do, writes nothing.
struct PlanSink {
    inner: Box<dyn Operator>,
    plan: Arc<std::sync::Mutex<operators::Plan>>,
}

impl PlanSink {
    fn count(&mut self, batch: &operators::Batch, deletes: bool) -> Result<(), OperatorError> {
        let mut plan = self.plan.lock().map_err(|_| OperatorError::Data("the plan was poisoned".into()))?;
        self.inner.plan(batch, deletes, &mut plan)
    }
}

#[async_trait::async_trait]
impl Operator for PlanSink {
    async fn process(&mut self, batch: operators::Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        self.count(&batch, false)
    }
    async fn delete(&mut self, batch: operators::Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        self.count(&batch, true)
    }
    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        let mut plan = self.plan.lock().map_err(|_| OperatorError::Data("the plan was poisoned".into()))?;
        self.inner.plan_end(&mut plan);
        Ok(())
    }
}

/// Snapshots the source and sends the barrier of `epoch` after its rows.
async fn inject(
    source: &mut Box<dyn Source>,
    out: &mut Collector,
    link: &SourceLink,
    epoch: u64,
) -> Result<(), OperatorError> {
    let snapshot = source.snapshot(out).await?;
    let position = Some(source.position());
    let _ = link.reports.send(Report::Ack { op: link.op, epoch, snapshot, position, aligned_in: Duration::ZERO });
    out.broadcast(Message::Barrier(operators::Barrier { epoch })).await
}

async fn source_task(
    mut source: Box<dyn Source>,
    mut out: Collector,
    drain: CancellationToken,
    abort: CancellationToken,
    mut link: Option<SourceLink>,
) -> Result<(), OperatorError> {
    // Not `requests.borrow()`: the coordinator may already have asked for
    // the first epoch, and reading that as served would leave it waiting
    // forever for this source's barrier.
    let mut injected = link.as_ref().map(|l| l.start_epoch).unwrap_or(0);
    let complete = loop {
        // Checked between steps, never mid-step, so a batch is either sent to
        // every edge of its port or to none, and a barrier never splits one.
        if let Some(l) = &mut link {
            // A commit is handled before the next barrier: the source's
            // latest snapshot is then the one that commit covers.
            tell_committed(&mut source, l).await?;
            let want = *l.requests.borrow_and_update();
            if want > injected {
                inject(&mut source, &mut out, l, want).await?;
                injected = want;
            }
        }
        if drain.is_cancelled() {
            tracing::info!("stopping: drain requested");
            // With checkpoints: wait for the last barrier, so the run stops
            // exactly at a checkpoint.
            if let Some(l) = &mut link {
                serve_barriers(&mut source, &mut out, l, &abort, injected, true).await?;
            }
            break false;
        }
        let step = tokio::select! {
            biased;
            _ = abort.cancelled() => return Err(OperatorError::Cancelled),
            r = source.next(&mut out) => r?,
        };
        if step == SourceState::Done {
            break true;
        }
    };
    if complete {
        // Operators do their end-of-input work now. With checkpoints, this
        // source keeps injecting barriers until the coordinator has
        // committed one that followed every source's last row, so that work
        // is durable too; then the run may end.
        out.broadcast(Message::EndOfData).await?;
        if let Some(l) = &mut link {
            let _ = l.reports.send(Report::AtEnd { op: l.op });
            serve_barriers(&mut source, &mut out, l, &abort, injected, false).await?;
        }
    }
    if let Some(l) = &link {
        // At the end of the input, the last snapshot tells the next run what
        // this one read (nothing is left to emit, so no barrier follows).
        let state = if drain.is_cancelled() {
            None
        } else {
            match source.snapshot(&mut out).await {
                Ok(operators::Snapshot::Full(b)) => Some(b),
                _ => None,
            }
        };
        let _ = l.reports.send(Report::SourceEnded { op: l.op, position: source.position(), state });
    }
    out.broadcast(Message::End).await
}

/// Tells the source about a checkpoint committed since it last heard.
async fn tell_committed(source: &mut Box<dyn Source>, l: &mut SourceLink) -> Result<(), OperatorError> {
    if l.committed.has_changed().unwrap_or(false) {
        let epoch = *l.committed.borrow_and_update();
        source.committed(epoch).await?;
    }
    Ok(())
}

/// Injects the barriers the coordinator asks for (after `injected`) until
/// it wants no more; with `one`, stops after the first. Commits are passed
/// on meanwhile, and once more at the end (the last checkpoint's).
async fn serve_barriers(
    source: &mut Box<dyn Source>,
    out: &mut Collector,
    l: &mut SourceLink,
    abort: &CancellationToken,
    mut injected: u64,
    one: bool,
) -> Result<(), OperatorError> {
    loop {
        tell_committed(source, l).await?;
        let want = *l.requests.borrow_and_update();
        if want > injected {
            inject(source, out, l, want).await?;
            injected = want;
            if one {
                return Ok(());
            }
        }
        tokio::select! {
            _ = abort.cancelled() => return Err(OperatorError::Cancelled),
            _ = l.no_more.cancelled() => return tell_committed(source, l).await,
            r = l.requests.changed() => if r.is_err() { return tell_committed(source, l).await },
            r = l.committed.changed(), if !one => if r.is_err() { return Ok(()) } else { l.committed.mark_changed() },
        }
    }
}

/// The inputs of one operator, merged. Ended inputs are no longer polled.
struct Inputs {
    rxs: Vec<Receiver<Message>>,
    /// Each input's row budget: released as rows are processed, set from
    /// this operator's throughput.
    credits: Vec<Arc<Credit>>,
    /// Which inputs carry keys to delete (a sink's `deletes`).
    deletes: Vec<bool>,
    /// Inputs that sent `EndOfData`: their data is complete.
    data_ended: Vec<bool>,
    open: Vec<bool>,
    /// Inputs that delivered the barrier of the epoch being aligned.
    barrier_seen: Vec<bool>,
}

enum Next {
    Msg(usize, Message),
    /// Every input sent End.
    AllEnded,
    /// An upstream task vanished without End: the run is being torn down.
    Broken,
}

impl Inputs {
    fn new(inputs: Vec<(Receiver<Message>, Arc<Credit>)>, deletes: Vec<bool>) -> Self {
        let n = inputs.len();
        let (rxs, credits) = inputs.into_iter().unzip();
        Inputs { rxs, credits, deletes, data_ended: vec![false; n], open: vec![true; n], barrier_seen: vec![false; n] }
    }

    async fn recv(&mut self) -> Next {
        let active: Vec<usize> = (0..self.rxs.len()).filter(|&i| self.open[i] && !self.barrier_seen[i]).collect();
        if active.is_empty() {
            return Next::AllEnded;
        }
        let (i, r) = if active.len() == 1 {
            let i = active[0];
            (i, self.rxs[i].recv().await)
        } else {
            let futs = active.iter().map(|&i| {
                let rx = self.rxs[i].clone();
                Box::pin(async move { (i, rx.recv().await) })
            });
            select_all(futs).await.0
        };
        match r {
            Ok(Message::End) => {
                self.open[i] = false;
                Next::Msg(i, Message::End)
            }
            Ok(m) => Next::Msg(i, m),
            Err(_) => Next::Broken,
        }
    }
}

/// What a task hands back: an operator that finished cleanly, to be
/// committed or aborted once the run's outcome is known.
type TaskResult = Result<Option<Box<dyn Operator>>, OperatorError>;

/// One transform or sink task: what it needs besides the operator, its
/// inputs and its collector.
struct OperatorTask {
    id: String,
    stats: Arc<OperatorStats>,
    abort: CancellationToken,
    link: Option<OperatorLink>,
    /// Set when a drain with checkpoints stops the run at its last barrier.
    stop_at_checkpoint: Option<CancellationToken>,
    /// Measures throughput to size the input edges (checkpoints on).
    meter: Option<Meter>,
}

impl OperatorTask {
    async fn run(mut self, mut op: Box<dyn Operator>, mut inputs: Inputs, mut out: Collector) -> TaskResult {
        let result = self.run_loop(&mut op, &mut inputs, &mut out).await;
        match result {
            Ok(()) => Ok(Some(op)),
            Err(e) => {
                op.abort().await;
                Err(e)
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop_at_checkpoint.as_ref().is_some_and(|t| t.is_cancelled())
    }

    async fn run_loop(
        &mut self,
        op: &mut Box<dyn Operator>,
        inputs: &mut Inputs,
        out: &mut Collector,
    ) -> Result<(), OperatorError> {
        let rows_in = metrics::counter!("engine_rows_in_total", "operator" => self.id.clone());
        let batches_in = metrics::counter!("engine_batches_in_total", "operator" => self.id.clone());
        let n = inputs.rxs.len();
        let mut pending: Option<(operators::Barrier, Instant)> = None;
        let mut finished = false;
        // Busy time for the meter: everything but waiting for input
        // (processing, waiting to emit, barriers), so a consumer slowed by
        // its requests in flight is measured as slow.
        let mut busy_since = Instant::now();
        let mut waited = Duration::ZERO;
        loop {
            let idle = op.idle_after();
            let wait_started = Instant::now();
            let next = tokio::select! {
                biased;
                _ = self.abort.cancelled() => return Err(OperatorError::Cancelled),
                m = inputs.recv() => m,
                _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => {
                    op.on_idle(out).await?;
                    continue;
                }
            };
            match next {
                Next::Msg(i, Message::Data(b)) => {
                    waited += wait_started.elapsed();
                    let rows = b.num_rows();
                    self.stats.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
                    self.stats.batches_in.fetch_add(1, Ordering::Relaxed);
                    rows_in.increment(rows as u64);
                    batches_in.increment(1);
                    // Not raced with abort: a call dropped halfway (a file
                    // write on the blocking pool) could leave a stray temp
                    // file that abort() no longer knows about. A call ends
                    // within one batch, or the third signal exits.
                    if inputs.deletes[i] {
                        op.delete(b, out).await?;
                    } else {
                        op.process(b, out).await?;
                    }
                    inputs.credits[i].release(rows);
                    if let Some(m) = self.meter.as_mut() {
                        let busy = busy_since.elapsed().saturating_sub(waited);
                        busy_since = Instant::now();
                        waited = Duration::ZERO;
                        if let Some(budget) = m.observe(rows, busy) {
                            tracing::trace!(budget, "input budget");
                            inputs.credits.iter().for_each(|c| c.set_budget(budget));
                        }
                    }
                }
                Next::Msg(i, Message::Barrier(b)) => {
                    waited += wait_started.elapsed();
                    // Alignment: hold this input until every open input has
                    // delivered the same barrier, then act on it once.
                    inputs.barrier_seen[i] = true;
                    if pending.is_none() {
                        pending = Some((b, Instant::now()));
                    }
                }
                Next::Msg(_, Message::End) => {}
                Next::Msg(i, Message::EndOfData) => {
                    inputs.data_ended[i] = true;
                    if !finished && inputs.data_ended.iter().all(|e| *e) {
                        // Every input is complete: the end-of-input work
                        // runs now, and barriers that follow cover it.
                        finished = true;
                        op.finish(out).await?;
                        out.broadcast(Message::EndOfData).await?;
                        if let Some(l) = &self.link {
                            let _ = l.reports.send(Report::Finished { op: l.op });
                        }
                    }
                }
                Next::AllEnded => break,
                Next::Broken => return Err(OperatorError::Cancelled),
            }
            if let Some((b, since)) = pending
                && (0..n).all(|k| !inputs.open[k] || inputs.barrier_seen[k])
            {
                pending = None;
                self.barrier(op, b, since.elapsed(), out).await?;
                inputs.barrier_seen.iter_mut().for_each(|s| *s = false);
            }
        }
        // Inputs that ended without `EndOfData` (a source stopped by a
        // drain): with checkpoints the run stops at the last barrier and the
        // next run resumes there, so nothing after it is flushed, and
        // end-of-input work (e.g. `changes` naming deleted keys) must not
        // happen on a partial input.
        if !finished && !self.stopped() {
            op.finish(out).await?;
        }
        out.broadcast(Message::End).await
    }

    /// Every open input delivered barrier `b`: snapshot, acknowledge,
    /// forward.
    async fn barrier(
        &self,
        op: &mut Box<dyn Operator>,
        b: operators::Barrier,
        aligned_in: Duration,
        out: &mut Collector,
    ) -> Result<(), OperatorError> {
        let snapshot = op.on_barrier(b, out).await?;
        // A sink has committed its side of the epoch; the store has not.
        checkpoints::fault::hit_for("after-barrier", &self.id);
        if let Some(l) = &self.link {
            let _ = l.reports.send(Report::Ack { op: l.op, epoch: b.epoch, snapshot, position: None, aligned_in });
        }
        out.broadcast(Message::Barrier(b)).await
    }
}
