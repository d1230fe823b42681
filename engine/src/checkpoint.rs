//! The checkpoint protocol's engine side: deciding where a run starts
//! ([`begin`]: resume, start afresh, or refuse), and the coordinator that
//! asks sources for barriers, collects every operator's acknowledgement and
//! commits the epoch to the store.
//!
//! **Invariant:** a checkpoint is committed only after every operator,
//! sinks included, acknowledged its barrier; a sink acknowledges only once
//! everything before the barrier is durable on its side.
//!
//! **Invariant:** one checkpoint is in flight at a time; epochs are
//! consecutive and grow across runs of one store.
//!
//! Owns the `_meta` entry of a checkpoint (graph fingerprint, positions,
//! sizes) and the `op/<id>` keys; operator state bytes are opaque here.
//! Must not know how an operator encodes its state.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkpoints::{Checkpoint, CheckpointError, CheckpointStore, SledStore};
use operators::{OperatorStats, Resume, Role, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{CheckpointSettings, Pipeline};

const META: &str = "_meta";
/// Present in a complete checkpoint once every output of its run was
/// published.
const PUBLISHED: &str = "_published";

fn state_key(id: &str) -> String {
    format!("op/{id}")
}

/// Where a pipeline's store lives: `dir` as configured, relative paths
/// against the working directory.
pub fn store_dir(p: &Pipeline) -> PathBuf {
    p.checkpoint.dir.clone()
}

pub fn open_store(p: &Pipeline) -> Result<SledStore, CheckpointError> {
    let dir = store_dir(p);
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| CheckpointError::Open { location: dir.display().to_string(), reason: e.to_string() })?;
    }
    SledStore::open(&dir).map_err(|e| match e {
        // sled locks its folder: two runs of one pipeline would interleave
        // their checkpoints.
        CheckpointError::Open { location, reason } if reason.contains("could not acquire lock") => {
            CheckpointError::Open {
                location,
                reason:
                    "another `engine` process is running this pipeline (the store is locked); wait for it, or stop it"
                        .into(),
            }
        }
        other => other,
    })
}

/// `--from-scratch`: the old state is not wanted, even if it is too
/// damaged to open. Removes the folder when it cannot be opened.
pub fn open_store_afresh(p: &Pipeline) -> Result<SledStore, CheckpointError> {
    match open_store(p) {
        Ok(s) => Ok(s),
        Err(CheckpointError::Open { reason, .. }) if reason.contains("another `engine` process") => open_store(p),
        Err(e) => {
            let dir = store_dir(p);
            // Only ever remove what is recognisably a store.
            if !dir.join("conf").exists() && !dir.join("engine-latest").exists() {
                return Err(e);
            }
            tracing::warn!(store = %dir.display(), error = %e, "the checkpoint store cannot be opened; removing it (--from-scratch)");
            std::fs::remove_dir_all(&dir)
                .map_err(|io| CheckpointError::Open { location: dir.display().to_string(), reason: io.to_string() })?;
            open_store(p)
        }
    }
}

/// What a checkpoint says about the run besides operator state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub pipeline: String,
    /// First epoch of the run this checkpoint belongs to: deltas from there
    /// on make up incremental state.
    pub run_start: u64,
    /// Per component: kind, inputs and the state-relevant options.
    pub graph: BTreeMap<String, Value>,
    /// Per source: where it was, for people.
    pub positions: BTreeMap<String, String>,
    /// Bytes of state per operator in this checkpoint (deltas: this epoch's).
    pub sizes: BTreeMap<String, u64>,
    /// From barrier request to the store's commit, in milliseconds.
    pub duration_ms: u64,
    /// Longest time an operator held an input while aligning, in ms.
    pub alignment_ms: u64,
    /// Epochs of the last completed run before this one: where operators
    /// whose state outlives a run (`changes`) find it.
    #[serde(default)]
    pub carried: Option<(u64, u64)>,
    /// In a completed run's checkpoint: work operators left for the next
    /// run (`Operator::pending`), so the next run can decide whether it is
    /// up to date without loading their state.
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
}

pub fn read_meta(c: &Checkpoint) -> Option<Meta> {
    c.state.get(META).and_then(|b| serde_json::from_slice(b).ok())
}

/// The fingerprint of every component: what a checkpoint's state depends on.
pub fn fingerprint(p: &Pipeline) -> BTreeMap<String, Value> {
    p.components
        .iter()
        .map(|c| {
            // Options as written, references unresolved: a rotated secret
            // does not change the graph, and no resolved value reaches the
            // store.
            let written = c.unresolved.as_ref().unwrap_or(&c.options);
            let mut opts: serde_json::Map<String, Value> = c
                .kind
                .state_options
                .iter()
                .filter_map(|k| written.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            // Whether a sink's token is set (a HubSpot sink online or
            // writing an outbox), never the token: resuming an online run
            // offline would send the rest to a file. (A source's token only
            // says how it logs in.)
            if let Some(t) = written.get("token").filter(|_| c.role == Role::Sink) {
                opts.insert(
                    "token".into(),
                    json!(if t.as_str().is_some_and(|t| !t.is_empty()) { "set" } else { "unset" }),
                );
            }
            let inputs: Vec<String> = c
                .inputs
                .iter()
                .map(|i| format!("{}{}.{}", if i.deletes { "deletes:" } else { "" }, i.from, i.port_name))
                .collect();
            let role = match c.role {
                Role::Source => "source",
                Role::Transform => "transform",
                Role::Sink => "sink",
            };
            (c.id.clone(), json!({ "role": role, "kind": c.kind.name, "inputs": inputs, "options": opts }))
        })
        .collect()
}

/// Why the graph of a checkpoint and the pipeline differ, one line each.
pub fn graph_changes(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, n) in new {
        match old.get(id) {
            None => out.push(format!("component `{id}` was added")),
            Some(o) => {
                for field in ["role", "kind", "inputs"] {
                    if o[field] != n[field] {
                        out.push(format!("`{id}`: {field} changed from {} to {}", o[field], n[field]));
                    }
                }
                let (oo, no) = (&o["options"], &n["options"]);
                let mut keys: Vec<&String> = oo.as_object().into_iter().flat_map(|m| m.keys()).collect();
                keys.extend(no.as_object().into_iter().flat_map(|m| m.keys()));
                keys.sort();
                keys.dedup();
                for k in keys {
                    if oo.get(k) != no.get(k) {
                        let show = |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into());
                        out.push(format!(
                            "`{id}`: option `{k}` changed from {} to {}",
                            show(oo.get(k)),
                            show(no.get(k))
                        ));
                    }
                }
            }
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        out.push(format!("component `{id}` was removed"));
    }
    out
}

/// Why a run cannot start from its store.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "checkpoint store {dir}: {source}\nthe run will not guess where to resume; look with `engine checkpoints list {file}`, or start over with `engine run --from-scratch {file}`"
    )]
    Store {
        dir: String,
        file: String,
        #[source]
        source: CheckpointError,
    },
    #[error(
        "cannot resume pipeline {pipeline} from checkpoint {epoch}: the pipeline changed since it was taken:\n{}\nits state would not mean the same thing; start over with `engine run --from-scratch {file}` (or undo the change to resume)",
        reasons.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
    )]
    Changed { pipeline: String, epoch: u64, file: String, reasons: Vec<String> },
}

/// Where this run starts.
pub struct Session {
    pub store: Arc<dyn CheckpointStore>,
    pub settings: CheckpointSettings,
    pub pipeline: String,
    pub graph: BTreeMap<String, Value>,
    pub run_start: u64,
    /// The checkpoint resumed from, if any.
    pub resume: Option<ResumePoint>,
    /// Epochs of the last completed run, whose deltas are the carried
    /// state (read per operator, only when a run goes ahead: `previous`).
    pub carried: Option<(u64, u64)>,
    /// Work the last completed run left, per operator (`Operator::pending`).
    pub previous_pending: BTreeMap<String, String>,
    /// Each source's last snapshot in the last completed run.
    pub previous_states: HashMap<String, Vec<u8>>,
}

pub struct ResumePoint {
    pub epoch: u64,
    /// Taken by each operator's restore: its deltas (all the keys a dedupe
    /// saw) are freed once the operator holds them, not kept for the run.
    pub states: std::sync::Mutex<HashMap<String, Resume>>,
    pub positions: BTreeMap<String, String>,
}

impl Session {
    /// The deltas operator `id` carried from the last completed run,
    /// oldest first; read from the store now (they can be large, and an
    /// up-to-date run never needs them).
    pub fn previous(&self, id: &str) -> Result<Vec<Vec<u8>>, CheckpointError> {
        let Some((from, to)) = self.carried else { return Ok(Vec::new()) };
        Ok(self.store.deltas(id, from, to)?.into_iter().map(|(_, d)| d).collect())
    }

    /// The epoch before this run's first barrier: epochs continue after
    /// the checkpoint resumed (whose run, and `run_start`, this run extends).
    pub fn last_epoch(&self) -> u64 {
        match &self.resume {
            Some(r) => r.epoch,
            None => self.run_start - 1,
        }
    }

    /// "resuming pipeline babynames from checkpoint 41: source names at row 1,203,456".
    pub fn describe(&self) -> String {
        match &self.resume {
            Some(r) => {
                let at =
                    r.positions.iter().map(|(id, pos)| format!("source {id} at {pos}")).collect::<Vec<_>>().join("; ");
                format!("resuming pipeline {} from checkpoint {}: {at}", self.pipeline, r.epoch)
            }
            None => format!("starting pipeline {} from the beginning (epoch {})", self.pipeline, self.run_start),
        }
    }
}

/// Reads the store and decides: resume the last checkpoint, start a new run
/// (none yet, the last run completed, or `from_scratch`), or refuse.
pub fn begin(p: &Pipeline, store: Arc<dyn CheckpointStore>, from_scratch: bool) -> Result<Session, StartError> {
    let store_err = |source| StartError::Store {
        dir: store_dir(p).display().to_string(),
        file: p.file.display().to_string(),
        source,
    };
    let graph = fingerprint(p);
    let fresh = |store: Arc<dyn CheckpointStore>, run_start: u64| Session {
        store,
        settings: p.checkpoint.clone(),
        pipeline: p.name.clone(),
        graph: graph.clone(),
        run_start,
        resume: None,
        carried: None,
        previous_pending: BTreeMap::new(),
        previous_states: HashMap::new(),
    };
    if from_scratch {
        // Nothing of the old state is wanted, damaged or not.
        store.reset().map_err(store_err)?;
        return Ok(fresh(store, 1));
    }
    let Some(latest) = store.latest().map_err(store_err)? else {
        return Ok(fresh(store, 1));
    };
    if latest.complete {
        // A new run; state that outlives runs comes from the one completed,
        // if its outputs were all published and the pipeline is the same.
        let next = latest.epoch + 1;
        let meta = read_meta(&latest).unwrap_or_default();
        let changes = graph_changes(&meta.graph, &graph);
        if !latest.state.contains_key(PUBLISHED) {
            tracing::warn!(
                epoch = latest.epoch,
                "the last run completed but did not finish publishing its outputs: starting without its state"
            );
            return Ok(fresh(store, next));
        }
        if !changes.is_empty() {
            tracing::info!(
                changes = %changes.join("; "),
                "the pipeline changed since the last completed run: starting without its state"
            );
            return Ok(fresh(store, next));
        }
        let carried = Some((meta.run_start, latest.epoch));
        let mut s = fresh(store, next);
        s.carried = carried;
        s.previous_pending = meta.pending.clone();
        s.previous_states = p
            .components
            .iter()
            .filter_map(|c| latest.state.get(&state_key(&c.id)).map(|b| (c.id.clone(), b.clone())))
            .collect();
        return Ok(s);
    }
    let meta = read_meta(&latest).ok_or_else(|| {
        store_err(CheckpointError::Corrupted {
            epoch: latest.epoch,
            reason: "its `_meta` entry is missing or unreadable".into(),
        })
    })?;
    let reasons = graph_changes(&meta.graph, &graph);
    if !reasons.is_empty() {
        return Err(StartError::Changed {
            pipeline: p.name.clone(),
            epoch: latest.epoch,
            file: p.file.display().to_string(),
            reasons,
        });
    }
    let mut states = HashMap::new();
    for c in &p.components {
        let deltas =
            store.deltas(&c.id, meta.run_start, latest.epoch).map_err(store_err)?.into_iter().map(|(_, d)| d).collect();
        let full = latest.state.get(&state_key(&c.id)).cloned();
        states.insert(c.id.clone(), Resume { epoch: latest.epoch, full, deltas });
    }
    // A resumed run carries what its start carried; what the last completed
    // run left to do is in that run's completion record.
    let previous_pending = meta
        .carried
        .and_then(|(_, to)| store.get(to).ok().flatten())
        .and_then(|c| read_meta(&c))
        .map(|m| m.pending)
        .unwrap_or_default();
    Ok(Session {
        store,
        settings: p.checkpoint.clone(),
        pipeline: p.name.clone(),
        graph,
        run_start: meta.run_start,
        resume: Some(ResumePoint { epoch: latest.epoch, states: states.into(), positions: meta.positions }),
        carried: meta.carried,
        previous_pending,
        previous_states: HashMap::new(),
    })
}

/// Messages from operator tasks to the coordinator.
pub enum Report {
    /// The operator passed the barrier of `epoch` with this state.
    Ack { op: usize, epoch: u64, snapshot: Snapshot, position: Option<String>, aligned_in: Duration },
    /// A source sent its last row (and `EndOfData`); it still injects the
    /// barriers asked for, until the coordinator wants no more.
    AtEnd { op: usize },
    /// An operator did its end-of-input work (`finish`) and passed
    /// `EndOfData` on.
    Finished { op: usize },
    /// A source ended its stream: no barrier will come from it again.
    SourceEnded { op: usize, position: String, state: Option<Vec<u8>> },
}

/// What a source task needs to take part.
pub struct SourceLink {
    pub op: usize,
    pub requests: watch::Receiver<u64>,
    /// The newest committed epoch (the source is told, between steps).
    pub committed: watch::Receiver<u64>,
    /// The last epoch before this run's first: every request above it is
    /// this run's to serve. Fixed when the run is wired, never read from
    /// `requests`: a coordinator quick enough to ask for the first epoch
    /// before the source task first runs must still get its barrier.
    pub start_epoch: u64,
    pub reports: mpsc::UnboundedSender<Report>,
    /// The coordinator will ask for no more barriers.
    pub no_more: CancellationToken,
}

/// What an operator task needs to take part.
#[derive(Clone)]
pub struct OperatorLink {
    pub op: usize,
    pub reports: mpsc::UnboundedSender<Report>,
}

/// The outcome of the coordinator's work, for the end of the run.
#[derive(Debug, Default, Clone)]
pub struct Committed {
    /// The newest epoch committed by this run.
    pub last: Option<u64>,
    pub count: u64,
    pub error: Option<String>,
    /// Where each source ended, for the checkpoint that marks the run complete.
    pub final_positions: BTreeMap<String, String>,
    /// Each source's last snapshot: the next run compares its input with it.
    pub final_states: BTreeMap<String, Vec<u8>>,
    /// Deltas handed over for epochs that were abandoned (a source ended
    /// before its barrier): part of the run's state all the same.
    pub orphan_deltas: BTreeMap<String, Vec<u8>>,
}

impl Committed {
    fn source_ended(&mut self, id: &str, position: String, state: Option<Vec<u8>>) {
        self.final_positions.insert(id.to_string(), position);
        if let Some(s) = state {
            self.final_states.insert(id.to_string(), s);
        }
    }

    /// Keeps the delta of a barrier that will never be committed (deltas
    /// concatenate).
    fn orphan(&mut self, id: &str, snapshot: Snapshot) {
        if let Snapshot::Delta(d) = snapshot {
            self.orphan_deltas.entry(id.to_string()).or_default().extend_from_slice(&d);
        }
    }
}

pub struct Coordinator {
    pub session: Arc<Session>,
    pub ids: Vec<String>,
    pub roles: Vec<Role>,
    /// Source stats, to count rows for a `rows` interval.
    pub source_stats: Vec<Arc<OperatorStats>>,
    pub requests: watch::Sender<u64>,
    /// Each epoch once committed, for sources that act on it.
    pub committed: watch::Sender<u64>,
    pub reports: mpsc::UnboundedReceiver<Report>,
    pub no_more: CancellationToken,
    pub drain: CancellationToken,
    /// The run is being aborted: stop waiting; also cancelled by the
    /// coordinator when a commit fails (the run must not go on unprotected).
    pub stop: CancellationToken,
    /// Checkpoints committed so far, for live figures.
    pub progress: Arc<Progress>,
}

/// Checkpoints committed by a run so far (live figures read it).
#[derive(Debug, Default)]
pub struct Progress {
    pub committed: std::sync::atomic::AtomicU64,
    /// The newest committed epoch; 0 before the first.
    pub last_epoch: std::sync::atomic::AtomicU64,
}

/// One operator's acknowledgement: its state, a source's position, how long
/// it waited to align its inputs.
type Acked = (Snapshot, Option<String>, Duration);

/// Where the coordinator is, between its phases.
struct Phase {
    done: Committed,
    epoch: u64,
    /// Sources that ended their stream, and sources past their last row.
    ended: Vec<bool>,
    at_end: Vec<bool>,
    /// Operators (not sources) that did their end-of-input work.
    finished: Vec<bool>,
    drain_seen: bool,
    last_at: Instant,
    last_rows: u64,
}

enum Trigger {
    Epoch { final_one: bool },
    WindDown,
    Stop,
}

enum Collected {
    All(Vec<Option<Acked>>),
    Abandoned(Vec<Option<Acked>>),
    Stop,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Coordinator {
    fn source_rows(&self) -> u64 {
        self.source_stats.iter().map(|s| OperatorStats::get(&s.rows_out) + OperatorStats::get(&s.rows_rejected)).sum()
    }

    /// Runs until `stop`: one checkpoint at a time, on the interval (or row
    /// count), also while the operators do their end-of-input work after
    /// the sources' last row; one last one when a drain is requested. Once
    /// every source is at its end and every operator finished, it wants no
    /// more: the run ends. Phases: `trigger` → `collect` → `commit`.
    pub async fn run(mut self) -> Committed {
        if let Some(i) = self.session.settings.interval {
            metrics::gauge!("engine_checkpoint_interval_seconds").set(i.as_secs_f64());
        }
        let mut p = Phase {
            done: Committed::default(),
            epoch: self.session.last_epoch(),
            ended: vec![false; self.ids.len()],
            at_end: vec![false; self.ids.len()],
            finished: vec![false; self.ids.len()],
            drain_seen: false,
            last_at: Instant::now(),
            last_rows: 0,
        };
        loop {
            let final_one = match self.trigger(&mut p).await {
                Trigger::Epoch { final_one } => final_one,
                Trigger::WindDown => {
                    // A source ended without us: barriers can no longer
                    // reach every operator. The final state is written when
                    // the run completes.
                    self.no_more.cancel();
                    return self.wind_down(p.done).await;
                }
                Trigger::Stop => return p.done,
            };
            p.epoch += 1;
            let started = Instant::now();
            p.last_at = started;
            p.last_rows = self.source_rows();
            tracing::debug!(epoch = p.epoch, "checkpoint: injecting barriers");
            self.requests.send_replace(p.epoch);
            let acks = match self.collect(&mut p).await {
                Collected::All(acks) => acks,
                Collected::Abandoned(acks) => {
                    tracing::debug!(epoch = p.epoch, "checkpoint abandoned: a source ended before its barrier");
                    // Operators still handed over what they added: keep it
                    // for the run's last checkpoint, or it is lost to the
                    // next run. Acks still on their way arrive in
                    // `wind_down`.
                    for (op, a) in acks.into_iter().enumerate() {
                        if let Some((snap, ..)) = a {
                            p.done.orphan(&self.ids[op], snap);
                        }
                    }
                    continue;
                }
                Collected::Stop => return p.done,
            };
            if let Err(e) = self.commit(p.epoch, acks, started).await {
                p.done.error = Some(e);
                self.stop.cancel();
                return p.done;
            }
            p.done.last = Some(p.epoch);
            p.done.count += 1;
            if self.all_sources_at_end(&p) {
                // Every row is durable; a resume starts at the end.
                checkpoints::fault::hit("after-checkpoint-at-end");
            }
            if final_one {
                self.no_more.cancel();
                return self.wind_down(p.done).await;
            }
        }
    }

    fn all_sources_at_end(&self, p: &Phase) -> bool {
        self.roles.iter().zip(&p.at_end).all(|(r, e)| *r != Role::Source || *e)
    }

    /// Every source read its last row and every operator did its
    /// end-of-input work: nothing is left that a checkpoint could protect.
    fn all_done(&self, p: &Phase) -> bool {
        self.all_sources_at_end(p) && self.roles.iter().zip(&p.finished).all(|(r, f)| *r == Role::Source || *f)
    }

    /// Waits for the next checkpoint to be due.
    async fn trigger(&mut self, p: &mut Phase) -> Trigger {
        let settings = self.session.settings.clone();
        loop {
            if p.ended.iter().any(|e| *e) {
                return Trigger::WindDown;
            }
            if self.all_done(p) {
                return Trigger::WindDown;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Trigger::Stop,
                _ = self.drain.cancelled(), if !p.drain_seen => {
                    p.drain_seen = true;
                    return Trigger::Epoch { final_one: true };
                }
                r = self.reports.recv() => match r {
                    Some(Report::SourceEnded { op, position, state }) => {
                        p.ended[op] = true;
                        p.done.source_ended(&self.ids[op], position, state);
                    }
                    Some(Report::AtEnd { op }) => p.at_end[op] = true,
                    Some(Report::Finished { op }) => p.finished[op] = true,
                    Some(Report::Ack { .. }) => {}
                    None => return Trigger::Stop,
                },
                _ = tokio::time::sleep(settings.interval.unwrap_or(Duration::from_millis(50)).min(Duration::from_millis(50))) => {
                    let by_time = settings.interval.is_some_and(|i| p.last_at.elapsed() >= i);
                    let by_rows = settings.rows.is_some_and(|r| self.source_rows().saturating_sub(p.last_rows) >= r);
                    if by_time || by_rows {
                        return Trigger::Epoch { final_one: false };
                    }
                }
            }
        }
    }

    /// Waits for every operator's acknowledgement of `p.epoch`.
    async fn collect(&mut self, p: &mut Phase) -> Collected {
        let n = self.ids.len();
        let mut acks: Vec<Option<Acked>> = (0..n).map(|_| None).collect();
        let mut got = 0;
        while got < n {
            tokio::select! {
                _ = self.stop.cancelled() => return Collected::Stop,
                r = self.reports.recv() => match r {
                    Some(Report::Ack { op, epoch: e, snapshot, position, aligned_in }) if e == p.epoch => {
                        if acks[op].is_none() {
                            got += 1;
                        }
                        acks[op] = Some((snapshot, position, aligned_in));
                    }
                    Some(Report::Ack { .. }) => {}
                    Some(Report::AtEnd { op }) => p.at_end[op] = true,
                    Some(Report::Finished { op }) => p.finished[op] = true,
                    Some(Report::SourceEnded { op, position, state }) => {
                        p.ended[op] = true;
                        p.done.source_ended(&self.ids[op], position, state);
                        if acks[op].is_none() {
                            return Collected::Abandoned(acks);
                        }
                    }
                    None => return Collected::Stop,
                },
            }
        }
        Collected::All(acks)
    }

    /// Every operator acknowledged: builds the checkpoint and commits it.
    async fn commit(&self, epoch: u64, acks: Vec<Option<Acked>>, started: Instant) -> Result<(), String> {
        let mut meta = Meta {
            pipeline: self.session.pipeline.clone(),
            run_start: self.session.run_start,
            graph: self.session.graph.clone(),
            carried: self.session.carried,
            ..Default::default()
        };
        let mut state = BTreeMap::new();
        let mut deltas = BTreeMap::new();
        for (i, a) in acks.into_iter().enumerate() {
            let Some((snap, position, aligned)) = a else { continue };
            let id = &self.ids[i];
            meta.alignment_ms = meta.alignment_ms.max(aligned.as_millis() as u64);
            if let (Some(p), Role::Source) = (position, self.roles[i]) {
                meta.positions.insert(id.clone(), p);
            }
            match snap {
                Snapshot::None => {}
                Snapshot::Full(b) => {
                    meta.sizes.insert(id.clone(), b.len() as u64);
                    state.insert(state_key(id), b);
                }
                Snapshot::Delta(b) => {
                    meta.sizes.insert(id.clone(), b.len() as u64);
                    deltas.insert(id.clone(), b);
                }
            }
        }
        meta.duration_ms = started.elapsed().as_millis() as u64;
        let size: u64 = meta.sizes.values().sum();
        let m = serde_json::to_vec(&meta).map_err(|e| format!("encoding checkpoint {epoch}: {e}"))?;
        state.insert(META.to_string(), m);
        let cp = Checkpoint { epoch, committed_at_ms: now_ms(), complete: false, state, deltas };
        let store = self.session.store.clone();
        let keep = self.session.settings.keep;
        // sled's flush is blocking disk I/O: off the async workers.
        checkpoints::fault::hit("before-store-commit");
        let acked_in = started.elapsed();
        let committed = tokio::task::spawn_blocking(move || {
            store.commit(&cp)?;
            checkpoints::fault::hit("after-store-commit");
            store.prune(keep)
        })
        .await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(epoch, error = %e, "checkpoint commit failed; stopping the run");
                return Err(format!("committing checkpoint {epoch}: {e}"));
            }
            Err(e) => return Err(format!("committing checkpoint {epoch}: {e}")),
        }
        let took = started.elapsed();
        metrics::counter!("engine_checkpoints_total").increment(1);
        metrics::histogram!("engine_checkpoint_duration_seconds").record(took.as_secs_f64());
        metrics::histogram!("engine_checkpoint_size_bytes").record(size as f64);
        metrics::histogram!("engine_checkpoint_alignment_seconds").record(meta.alignment_ms as f64 / 1000.0);
        metrics::gauge!("engine_checkpoint_last_epoch").set(epoch as f64);
        metrics::gauge!("engine_checkpoint_last_commit_timestamp_seconds").set(now_ms() as f64 / 1000.0);
        self.progress.committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.progress.last_epoch.store(epoch, std::sync::atomic::Ordering::Relaxed);
        self.committed.send_replace(epoch);
        tracing::info!(
            epoch,
            duration_ms = took.as_millis() as u64,
            acknowledged_ms = acked_in.as_millis() as u64,
            state_bytes = size,
            "checkpoint committed"
        );
        Ok(())
    }

    /// No more checkpoints: wait for the tasks to finish (their report
    /// senders close the channel), noting where sources end and keeping
    /// deltas of barriers that will never be committed.
    async fn wind_down(mut self, mut done: Committed) -> Committed {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return done,
                r = self.reports.recv() => match r {
                    Some(Report::SourceEnded { op, position, state }) => {
                        done.source_ended(&self.ids[op], position, state)
                    }
                    Some(Report::Ack { op, snapshot, .. }) => done.orphan(&self.ids[op], snapshot),
                    Some(Report::AtEnd { .. } | Report::Finished { .. }) => {}
                    None => return done,
                },
            }
        }
    }
}

/// Marks the run complete: the next `engine run` starts a new run. Written
/// once every operator finished, before outputs are published. `carry`
/// holds the last deltas of operators whose state outlives the run; their
/// deltas of this run are kept for the next one, everything else is
/// dropped.
pub async fn complete(
    session: &Session,
    last: u64,
    committed: &Committed,
    carry: BTreeMap<String, Vec<u8>>,
    pending: BTreeMap<String, String>,
) -> Result<u64, String> {
    let positions = committed.final_positions.clone();
    let epoch = last + 1;
    let meta = Meta {
        pipeline: session.pipeline.clone(),
        run_start: session.run_start,
        graph: session.graph.clone(),
        positions,
        sizes: carry.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect(),
        pending,
        ..Default::default()
    };
    let mut state = BTreeMap::new();
    state.insert(META.to_string(), serde_json::to_vec(&meta).map_err(|e| e.to_string())?);
    for (id, s) in &committed.final_states {
        state.insert(state_key(id), s.clone());
    }
    let carriers: Vec<String> = carry.keys().cloned().collect();
    let ids: Vec<String> = session.graph.keys().cloned().collect();
    let run_start = session.run_start;
    let cp = Checkpoint { epoch, committed_at_ms: now_ms(), complete: true, state, deltas: carry };
    let store = session.store.clone();
    let keep = session.settings.keep;
    tokio::task::spawn_blocking(move || {
        store.commit(&cp)?;
        store.prune(keep)?;
        for id in &ids {
            // A carrier keeps this run's deltas (the next run compares with
            // them) and drops the previous run's; nothing else builds on
            // any delta any more.
            let before = if carriers.contains(id) { run_start } else { epoch + 1 };
            store.drop_operator_deltas(id, before)?;
        }
        Ok::<(), CheckpointError>(())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(epoch)
}

/// Records that every output of the completed run `epoch` was published.
pub async fn mark_published(session: &Session, epoch: u64) -> Result<(), String> {
    let store = session.store.clone();
    tokio::task::spawn_blocking(move || {
        let Some(mut cp) = store.get(epoch)? else { return Ok(()) };
        cp.state.insert(PUBLISHED.to_string(), vec![1]);
        store.commit(&cp)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// One line per kept checkpoint, for `engine checkpoints list`.
pub fn list(store: &dyn CheckpointStore) -> Result<String, CheckpointError> {
    let mut out = String::new();
    let epochs = store.epochs()?;
    if epochs.is_empty() {
        return Ok("no checkpoints\n".into());
    }
    out.push_str(&format!(
        "{:>8}  {:<24}  {:<9}  {:>12}  {:>9}  positions\n",
        "epoch", "committed (UTC)", "status", "state bytes", "took ms"
    ));
    for e in epochs {
        let line = match store.get(e) {
            Ok(Some(c)) => {
                let meta = read_meta(&c).unwrap_or_default();
                let size: u64 = meta.sizes.values().sum();
                let positions = meta.positions.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ");
                format!(
                    "{:>8}  {:<24}  {:<9}  {:>12}  {:>9}  {}\n",
                    c.epoch,
                    utc(c.committed_at_ms),
                    if c.complete { "complete" } else { "resumable" },
                    size,
                    meta.duration_ms,
                    positions
                )
            }
            Ok(None) => continue,
            Err(err) => format!("{e:>8}  DAMAGED: {err}\n"),
        };
        out.push_str(&line);
    }
    Ok(out)
}

/// Everything about one checkpoint, for `engine checkpoints show`.
pub fn show(store: &dyn CheckpointStore, epoch: Option<u64>) -> Result<String, CheckpointError> {
    let c = match epoch {
        Some(e) => store.get(e)?,
        None => store.latest()?,
    };
    let Some(c) = c else {
        return Ok(match epoch {
            Some(e) => format!("no checkpoint {e} (see `engine checkpoints list`)\n"),
            None => "no checkpoints\n".into(),
        });
    };
    let meta = read_meta(&c).unwrap_or_default();
    let mut out = format!(
        "checkpoint {}\n  pipeline:   {}\n  committed:  {} UTC\n  status:     {}\n  run start:  epoch {}\n  took:       {} ms (longest alignment {} ms)\n",
        c.epoch,
        meta.pipeline,
        utc(c.committed_at_ms),
        if c.complete { "complete (the next run starts afresh)" } else { "resumable" },
        meta.run_start,
        meta.duration_ms,
        meta.alignment_ms
    );
    if !meta.positions.is_empty() {
        out.push_str("  sources:\n");
        for (k, v) in &meta.positions {
            out.push_str(&format!("    {k}: {v}\n"));
        }
    }
    out.push_str("  state:\n");
    for id in meta.graph.keys() {
        let full = c.state.get(&state_key(id)).map(|b| b.len() as u64);
        let deltas = store.delta_bytes(id, meta.run_start, c.epoch)?;
        if full.is_none() && deltas == 0 {
            out.push_str(&format!("    {id}: stateless\n"));
            continue;
        }
        let mut parts = Vec::new();
        if let Some(f) = full {
            parts.push(format!("{f} bytes"));
        }
        if deltas > 0 {
            parts.push(format!("{deltas} bytes of deltas since epoch {}", meta.run_start));
        }
        out.push_str(&format!("    {id}: {}\n", parts.join(", ")));
    }
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS` from Unix milliseconds (civil-from-days).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn graph_changes_name_what_changed() {
        let old: BTreeMap<String, Value> = [
            ("a".to_string(), json!({"role": "source", "kind": "file", "inputs": [], "options": {"format": "csv"}})),
            (
                "b".to_string(),
                json!({"role": "transform", "kind": "dedupe", "inputs": ["a.out"], "options": {"key": ["x"]}}),
            ),
        ]
        .into();
        let mut new = old.clone();
        assert!(graph_changes(&old, &new).is_empty());
        new.insert(
            "b".into(),
            json!({"role": "transform", "kind": "dedupe", "inputs": ["a.out"], "options": {"key": ["y"]}}),
        );
        new.insert("c".into(), json!({"role": "sink", "kind": "blackhole", "inputs": ["b.out"], "options": {}}));
        let r = graph_changes(&old, &new);
        assert_eq!(
            r,
            vec!["`b`: option `key` changed from [\"x\"] to [\"y\"]".to_string(), "component `c` was added".into()]
        );
    }
}
