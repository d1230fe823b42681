//! The supervisor: starts runs as child processes, at most one per
//! pipeline, retries failed ones, stops them, and records in the history
//! what a run's own process could not (it was killed, or exited before it
//! could record itself).
//!
//! A run is `engine run <file> --state <state> --live <file> ...` with
//! `ENGINE_RUN_ID`, `ENGINE_TRIGGER`, `ENGINE_TRIGGERED_BY` and
//! `ENGINE_MISSED_SLOTS` in its environment, stdout and stderr in
//! `<state>/logs/<run id>.log`.
//!
//! **Invariant:** a child is in its own process group (a signal to the
//! group reaches what it started too) and dies with the service: the kernel
//! sends it SIGKILL when the service's thread that spawned it exits
//! (`PR_SET_PDEATHSIG`; tokio's worker threads live as long as the
//! runtime). So a kill -9 of the service leaves no orphan, and the next
//! start finds those runs `running` with no process and marks them `lost`.
//!
//! Owns the child processes and `<state>/logs`, `<state>/live`; must not
//! read pipeline files (the catalog did) or decide when runs start (the
//! scheduler and the API do).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use history::{History, Started};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{Catalog, PipelineDef, ServeError, ServeOptions, now_ms};

/// Why a run starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trigger {
    /// `schedule`, `catch-up`, `retry`, `api`.
    pub kind: String,
    /// Who asked (the API caller's name, if it gave one).
    pub by: Option<String>,
    /// Scheduled runs missed before this one (catch-up).
    pub missed: u64,
    /// A replay of rejected rows: which ones (`engine replay --where`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<replays::Filter>,
}

impl Trigger {
    pub fn new(kind: &str) -> Trigger {
        Trigger { kind: kind.into(), by: None, missed: 0, replay: None }
    }
}

/// A run going on now.
#[derive(Clone, Debug, Serialize)]
pub struct Running {
    pub run_id: String,
    pub pipeline: String,
    pub pid: u32,
    pub started_at_ms: i64,
    pub trigger: Trigger,
    /// 0 for the first attempt, then 1, 2… for retries.
    pub attempt: u32,
    /// A stop was asked for (API or shutdown).
    pub stopping: bool,
}

struct Slot {
    def: Arc<PipelineDef>,
    /// Busy from the moment a run is started until its last retry ends.
    busy: bool,
    running: Option<Running>,
    queued: Option<Trigger>,
    /// Gone from the pipeline folder at the last reload (kept while a run
    /// of it still goes).
    removed: bool,
    /// Its checkpoint store is being read (the store takes one process at
    /// a time): no run starts meanwhile.
    held: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("no pipeline named `{0}`")]
    Unknown(String),
    #[error("pipeline `{pipeline}` is running ({run_id}); one run at a time")]
    Busy { pipeline: String, run_id: String },
    #[error("the service is stopping")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StopError {
    #[error("run `{0}` is not running")]
    NotRunning(String),
}

/// What `trigger` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Triggered {
    Started { run_id: String },
    Queued { behind: String },
}

pub struct Supervisor {
    opts: ServeOptions,
    catalog: Arc<dyn Catalog>,
    history: Arc<History>,
    slots: Mutex<HashMap<String, Slot>>,
    seq: AtomicU64,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    /// The errors of the last reload that failed (the service kept the
    /// files it had), and when; None once a reload succeeds.
    reload_error: Mutex<Option<(i64, String)>>,
}

/// Holds `<state>/serve.lock` (flock) for the life of the service: two
/// services on one state directory would run every pipeline twice.
pub fn lock_state(state: &Path) -> Result<std::fs::File, ServeError> {
    use std::os::fd::AsRawFd;
    let err = |cause: String| ServeError::State { path: state.display().to_string(), cause };
    std::fs::create_dir_all(state.join("logs")).map_err(|e| err(e.to_string()))?;
    std::fs::create_dir_all(state.join("live")).map_err(|e| err(e.to_string()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("serve.lock"))
        .map_err(|e| err(e.to_string()))?;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(err("another `engine serve` uses it (serve.lock is held)".into()));
    }
    Ok(f)
}

impl Supervisor {
    pub fn new(opts: ServeOptions, history: Arc<History>, catalog: Arc<dyn Catalog>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            opts,
            catalog,
            history,
            slots: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            reload_error: Mutex::new(None),
        })
    }

    pub fn set_reload_error(&self, error: Option<String>) {
        *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = error.map(|e| (now_ms(), e));
    }

    /// (when, errors) of the last failed reload, if the files are still bad.
    pub fn reload_error(&self) -> Option<(i64, String)> {
        self.reload_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves plain data behind; going on
        // with it beats taking the service down.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the pipelines of a (re)load: new ones are added, changed ones
    /// replaced (a running run keeps the file it started with), missing
    /// ones dropped once idle.
    pub fn set_defs(&self, defs: &[Arc<PipelineDef>]) {
        let mut slots = self.slots();
        for s in slots.values_mut() {
            s.removed = true;
        }
        for d in defs {
            match slots.get_mut(&d.name) {
                Some(s) => {
                    s.def = d.clone();
                    s.removed = false;
                }
                None => {
                    slots.insert(
                        d.name.clone(),
                        Slot { def: d.clone(), busy: false, running: None, queued: None, removed: false, held: false },
                    );
                }
            }
        }
        slots.retain(|_, s| !s.removed || s.busy);
    }

    /// The pipelines served, by name.
    pub fn defs(&self) -> Vec<Arc<PipelineDef>> {
        let mut v: Vec<_> = self.slots().values().filter(|s| !s.removed).map(|s| s.def.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn def(&self, name: &str) -> Option<Arc<PipelineDef>> {
        self.slots().get(name).filter(|s| !s.removed).map(|s| s.def.clone())
    }

    /// The run of `pipeline` going on now.
    pub fn running(&self, pipeline: &str) -> Option<Running> {
        self.slots().get(pipeline).and_then(|s| s.running.clone())
    }

    /// Whether `pipeline` has a run going or waiting for a retry.
    pub fn busy(&self, pipeline: &str) -> bool {
        self.slots().get(pipeline).is_some_and(|s| s.busy)
    }

    /// The rejects files of `pipeline` (see [`crate::Catalog::rejects_files`]).
    pub fn rejects_files(&self, pipeline: &str) -> Option<Result<Vec<PathBuf>, String>> {
        let def = self.def(pipeline)?;
        Some(self.catalog.rejects_files(&def.file))
    }

    /// The run `run_id` if it is going on now.
    pub fn running_run(&self, run_id: &str) -> Option<Running> {
        self.slots().values().filter_map(|s| s.running.clone()).find(|r| r.run_id == run_id)
    }

    /// Where the rejects files of a completed run of `pipeline` are kept.
    pub fn run_rejects_dir(&self, pipeline: &str, run_id: &str) -> PathBuf {
        self.opts.state.join("rejects").join(pipeline).join(run_id)
    }

    /// The rejects files kept for run `run_id` of `pipeline` (none when
    /// the run wrote none, or they were pruned).
    pub fn run_rejects(&self, pipeline: &str, run_id: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.run_rejects_dir(pipeline, run_id))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Runs of `pipeline` whose rejects files are kept, newest first.
    pub fn runs_with_rejects(&self, pipeline: &str) -> Vec<String> {
        let mut runs: Vec<(std::time::SystemTime, String)> =
            std::fs::read_dir(self.opts.state.join("rejects").join(pipeline))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| {
                            let at = e.metadata().and_then(|m| m.modified()).ok()?;
                            Some((at, e.file_name().to_string_lossy().into_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
        runs.sort_by(|a, b| b.cmp(a));
        runs.into_iter().map(|(_, id)| id).collect()
    }

    /// Keeps the rejects files a completed run wrote, hard-linked: the next
    /// run replaces the files (a rename), not their contents, so the link
    /// keeps this run's rows at no cost. A copy where links cannot go.
    fn keep_rejects(&self, def: &PipelineDef, run_id: &str, started_at_ms: i64) {
        let Ok(files) = self.catalog.rejects_files(&def.file) else { return };
        let dir = self.run_rejects_dir(&def.name, run_id);
        for (i, f) in files.iter().enumerate() {
            // Written by this run (an up-to-date run writes nothing).
            let written = std::fs::metadata(f)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| d.as_millis() as i64 >= started_at_ms - 1000);
            if !written {
                continue;
            }
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let to = dir.join(format!("{i}-{name}"));
            let kept = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::hard_link(f, &to).or_else(|_| std::fs::copy(f, &to).map(|_| ())));
            if let Err(e) = kept {
                tracing::warn!(run = %run_id, file = %f.display(), error = %e, "cannot keep the run's rejects");
            }
        }
    }

    pub fn log_path(&self, run_id: &str) -> PathBuf {
        self.opts.state.join("logs").join(format!("{run_id}.log"))
    }

    pub fn live_path(&self, run_id: &str) -> PathBuf {
        self.opts.state.join("live").join(format!("{run_id}.json"))
    }

    fn new_run_id(&self) -> String {
        format!("{}-{}-{}", now_ms(), std::process::id(), self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Starts a run of `pipeline` now. When one is going: with `queue`,
    /// one more run waits for it (a second waiting trigger is dropped);
    /// without, `Busy`.
    pub fn trigger(self: &Arc<Self>, pipeline: &str, trigger: Trigger, queue: bool) -> Result<Triggered, TriggerError> {
        if self.shutdown.is_cancelled() {
            return Err(TriggerError::ShuttingDown);
        }
        let run_id = self.new_run_id();
        let def = {
            let mut slots = self.slots();
            let slot =
                slots.get_mut(pipeline).filter(|s| !s.removed).ok_or_else(|| TriggerError::Unknown(pipeline.into()))?;
            if slot.busy || slot.held {
                let current = match (&slot.running, slot.held) {
                    (Some(r), _) => r.run_id.clone(),
                    (None, true) => "a read of its checkpoints".into(),
                    (None, false) => "a retry".into(),
                };
                if queue {
                    slot.queued.get_or_insert(trigger);
                    return Ok(Triggered::Queued { behind: current });
                }
                return Err(TriggerError::Busy { pipeline: pipeline.into(), run_id: current });
            }
            slot.busy = true;
            // Known as running from now on, so that the caller can follow
            // it at once; the pid comes when the process starts.
            slot.running = Some(Running {
                run_id: run_id.clone(),
                pipeline: pipeline.to_string(),
                pid: 0,
                started_at_ms: now_ms(),
                trigger: trigger.clone(),
                attempt: 0,
                stopping: false,
            });
            slot.def.clone()
        };
        let me = self.clone();
        let id = run_id.clone();
        self.tasks.spawn(async move { me.drive(def, trigger, id).await });
        Ok(Triggered::Started { run_id })
    }

    /// A run and its retries; then the queued run, if any.
    async fn drive(self: Arc<Self>, def: Arc<PipelineDef>, first: Trigger, first_id: String) {
        let retry = def.schedule.as_ref().map(|s| s.retry).unwrap_or_default();
        let mut trigger = first;
        let mut run_id = first_id;
        let mut attempt = 0;
        loop {
            let end = self.run_once(&def, &run_id, &trigger, attempt).await;
            // A replay is not retried: its rows wait in the ledger, and the
            // next replay resumes it.
            let retryable =
                matches!(end, End::Failed | End::Killed) && trigger.replay.is_none() && !self.shutdown.is_cancelled();
            if !retryable || attempt >= retry.attempts {
                break;
            }
            attempt += 1;
            let wait = retry.backoff.saturating_mul(1 << (attempt - 1).min(16));
            tracing::warn!(pipeline = %def.name, run = %run_id, attempt, of = retry.attempts, wait_s = wait.as_secs_f64(), "run failed; retrying (it resumes from its checkpoint)");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => break,
            }
            trigger = Trigger::new("retry");
            run_id = self.new_run_id();
            if let Some(s) = self.slots().get_mut(&def.name) {
                s.running = Some(Running {
                    run_id: run_id.clone(),
                    pipeline: def.name.clone(),
                    pid: 0,
                    started_at_ms: now_ms(),
                    trigger: trigger.clone(),
                    attempt,
                    stopping: false,
                });
            }
        }
        let next = {
            let mut slots = self.slots();
            match slots.get_mut(&def.name) {
                Some(s) => {
                    s.busy = false;
                    s.running = None;
                    if s.removed {
                        slots.remove(&def.name);
                        None
                    } else {
                        s.queued.take()
                    }
                }
                None => None,
            }
        };
        if let Some(t) = next.filter(|_| !self.shutdown.is_cancelled())
            && let Err(e) = self.trigger(&def.name, t, false)
        {
            tracing::warn!(pipeline = %def.name, error = %e, "the queued run did not start");
        }
    }

    /// One child process, from spawn to exit.
    async fn run_once(&self, def: &PipelineDef, run_id: &str, trigger: &Trigger, attempt: u32) -> End {
        let started = Started {
            id: run_id.to_string(),
            pipeline: def.name.clone(),
            trigger: trigger.kind.clone(),
            by: trigger.by.clone(),
            started_at_ms: now_ms(),
            pid: 0,
            resumed_from: None,
        };
        let mut child = match self.spawn(def, run_id, trigger) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pipeline = %def.name, run = %run_id, error = %e, "cannot start the run");
                self.record_end(&started, "failed", None, &format!("the service could not start the run: {e}")).await;
                return End::Other;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(pipeline = %def.name, run = %run_id, pid, trigger = %trigger.kind, attempt, "run started");
        if let Some(s) = self.slots().get_mut(&def.name) {
            // A stop asked for before the process existed applies now.
            let stopping = s.running.as_ref().is_some_and(|r| r.run_id == run_id && r.stopping);
            s.running = Some(Running {
                run_id: run_id.to_string(),
                pipeline: def.name.clone(),
                pid,
                started_at_ms: started.started_at_ms,
                trigger: trigger.clone(),
                attempt,
                stopping,
            });
            if stopping {
                signal_group(pid, libc::SIGTERM);
            }
        }
        let status = child.wait().await;
        let _ = std::fs::remove_file(self.live_path(run_id));
        let started = Started { pid, ..started };
        use std::os::unix::process::ExitStatusExt;
        let end = match status {
            Err(e) => {
                self.record_end(&started, "failed", None, &format!("waiting for the run's process: {e}")).await;
                End::Other
            }
            Ok(st) => match (st.code(), st.signal()) {
                (Some(code), _) => {
                    let (outcome, end) = match code {
                        0 => ("completed", End::Completed),
                        1 => ("failed", End::Failed),
                        2 => ("invalid", End::Other),
                        124 => ("timeout", End::Other),
                        130 | 143 => ("interrupted", End::Other),
                        _ => ("failed", End::Failed),
                    };
                    // Only writes when the run could not record itself
                    // (it exited before it opened the history).
                    let last = last_line(&self.log_path(run_id));
                    let why = format!("exited with code {code} before recording the run: {last}");
                    self.record_end(&started, outcome, Some(code), &why).await;
                    if code == 0 && trigger.replay.is_none() {
                        self.keep_rejects(def, run_id, started.started_at_ms);
                    }
                    tracing::info!(pipeline = %def.name, run = %run_id, code, outcome, "run ended");
                    end
                }
                (None, sig) => {
                    let sig = sig.unwrap_or(0);
                    let why = format!(
                        "killed by signal {sig}{}",
                        if sig == libc::SIGKILL { " (SIGKILL: out of memory, or kill -9)" } else { "" }
                    );
                    tracing::error!(pipeline = %def.name, run = %run_id, signal = sig, "run killed");
                    self.record_end(&started, "killed", Some(128 + sig), &why).await;
                    End::Killed
                }
            },
        };
        let stopped = self.slots().get(&def.name).and_then(|s| s.running.as_ref().map(|r| r.stopping)).unwrap_or(false);
        if stopped { End::Other } else { end }
    }

    fn spawn(&self, def: &PipelineDef, run_id: &str, trigger: &Trigger) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(run_id))?;
        let mut cmd = tokio::process::Command::new(&self.opts.engine_exe);
        cmd.arg("--log-format").arg(&self.opts.run_log_format);
        match &trigger.replay {
            Some(filter) => {
                cmd.arg("replay").arg(&def.file);
                if !filter.is_empty() {
                    cmd.arg("--where").arg(filter.to_string());
                }
            }
            None => {
                cmd.arg("run").arg(&def.file);
                if let Some(t) = def.schedule.as_ref().and_then(|s| s.timeout) {
                    cmd.arg("--timeout").arg(format!("{}ms", t.as_millis()));
                }
            }
        }
        cmd.arg("--state").arg(&self.opts.state).arg("--no-progress").arg("--live").arg(self.live_path(run_id));
        // Runs need no API token: least privilege.
        cmd.env_remove("ENGINE_API_TOKEN")
            .env("ENGINE_RUN_ID", run_id)
            .env("ENGINE_TRIGGER", &trigger.kind)
            .env("ENGINE_MISSED_SLOTS", trigger.missed.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        match &trigger.by {
            Some(by) => cmd.env("ENGINE_TRIGGERED_BY", by),
            None => cmd.env_remove("ENGINE_TRIGGERED_BY"),
        };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The service died between fork and prctl: do not outlive it.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// Records an end the run could not record itself; then, since it could
    /// not alert either, alerts `failed` for it (unless it was stopped).
    async fn record_end(&self, s: &Started, outcome: &str, code: Option<i32>, why: &str) {
        let wrote = match self.history.end_if_running(s, now_ms(), outcome, code, why).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(run = %s.id, error = %e, "cannot record how the run ended");
                // Unknown: alert rather than stay silent about a failure.
                true
            }
        };
        let stopped =
            self.slots().get(&s.pipeline).and_then(|x| x.running.as_ref().map(|r| r.stopping)).unwrap_or(false);
        if wrote && matches!(outcome, "failed" | "killed" | "invalid") && !stopped {
            let file = self.def(&s.pipeline).map(|d| d.file.clone());
            if let Some(file) = file {
                self.catalog.run_died(&file, &s.id, why).await;
            }
        }
    }

    /// What `engine checkpoints list|show` says of `pipeline`, read while
    /// no run of it goes (none starts meanwhile).
    pub async fn checkpoints(&self, pipeline: &str) -> Result<String, TriggerError> {
        let file = {
            let mut slots = self.slots();
            let slot =
                slots.get_mut(pipeline).filter(|s| !s.removed).ok_or_else(|| TriggerError::Unknown(pipeline.into()))?;
            if slot.busy || slot.held {
                let run_id = slot.running.as_ref().map(|r| r.run_id.clone()).unwrap_or_else(|| "a retry".into());
                return Err(TriggerError::Busy { pipeline: pipeline.into(), run_id });
            }
            slot.held = true;
            slot.def.file.clone()
        };
        let text = self.catalog.checkpoints(&file).await;
        if let Some(s) = self.slots().get_mut(pipeline) {
            s.held = false;
        }
        Ok(text.unwrap_or_else(|e| format!("error: {e}\n")))
    }

    /// Asks run `run_id` to stop at its next checkpoint (SIGTERM to its
    /// process group); it will not be retried.
    pub fn stop(&self, run_id: &str) -> Result<Running, StopError> {
        let mut slots = self.slots();
        let r = slots
            .values_mut()
            .filter_map(|s| s.running.as_mut())
            .find(|r| r.run_id == run_id)
            .ok_or_else(|| StopError::NotRunning(run_id.into()))?;
        r.stopping = true;
        signal_group(r.pid, libc::SIGTERM);
        Ok(r.clone())
    }

    /// Stops everything: no new runs or retries, SIGTERM to every run,
    /// SIGKILL to what is left after `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        self.shutdown.cancel();
        let pids: Vec<u32> = {
            let mut slots = self.slots();
            slots
                .values_mut()
                .filter_map(|s| s.running.as_mut())
                .map(|r| {
                    r.stopping = true;
                    r.pid
                })
                .collect()
        };
        for pid in &pids {
            signal_group(*pid, libc::SIGTERM);
        }
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            let left: Vec<u32> = self.slots().values().filter_map(|s| s.running.as_ref().map(|r| r.pid)).collect();
            tracing::error!(
                runs = left.len(),
                grace_s = grace.as_secs(),
                "runs still going after the grace period: killed"
            );
            for pid in left {
                signal_group(pid, libc::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        }
    }

    /// Deletes run logs, and the rejects kept for runs, older than the
    /// retention.
    pub fn prune_logs(&self) {
        let dir = self.opts.state.join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let cutoff = std::time::SystemTime::now().checked_sub(self.opts.log_retention);
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().zip(cutoff).is_some_and(|(m, c)| m < c);
            if old && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "old run logs deleted");
        }
        // Kept rejects go with the logs.
        let pipelines = std::fs::read_dir(self.opts.state.join("rejects")).into_iter().flatten().flatten();
        for runs in pipelines.filter_map(|p| std::fs::read_dir(p.path()).ok()) {
            for e in runs.flatten() {
                let old = e.metadata().and_then(|m| m.modified()).ok().zip(cutoff).is_some_and(|(m, c)| m < c);
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// How a run ended, for the retry decision.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Completed,
    /// Exit code 1: a failure the next attempt may not meet.
    Failed,
    /// A signal the service did not send (OOM killer, kill -9).
    Killed,
    /// Stopped, timed out, invalid, or never started: not retried.
    Other,
}

/// The last line a run wrote (its error, when it stopped early), cut to
/// 500 characters; run output is already redacted by the run.
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no output; see its log)");
    line.chars().take(500).collect()
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group the
    // child leads (it was started with process_group(0)).
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}
