//! `engine serve`: the service that runs pipelines on their schedules,
//! keeps their history, and answers an HTTP API.
//!
//! - [`schedule`]: `[pipeline.schedule]` (cron, time zone, overlap,
//!   catch-up, timeout, retry, jitter) and fire-time arithmetic.
//! - [`runs`]: the supervisor. Every run is a child process of the same
//!   binary (`engine run`, its own process group, killed with the service),
//!   so a panic, OOM kill or kill -9 of a run never takes the service down
//!   and resuming is what `engine run` already does.
//! - [`scheduler`]: one task per scheduled pipeline; catch-up after
//!   downtime from `<state>/scheduler.json`.
//! - [`api`]: JSON under `/api/`, described by `/api/openapi.json`.
//!
//! This crate does not read pipeline files: the engine hands it a
//! [`Catalog`] that does. It shares the run history (`history` crate) with
//! the runs themselves, which record their own start and end.

pub mod api;
pub mod console;
pub mod runs;
pub mod schedule;
pub mod scheduler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use schedule::Schedule;

/// What the service knows of one pipeline file.
#[derive(Clone, Debug)]
pub struct PipelineDef {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub schedule: Option<Schedule>,
    /// The DAG: `{"nodes": [{id, kind, role}], "edges": [{from, to, port}]}`.
    pub graph: serde_json::Value,
}

/// Reads pipeline files for the service.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// One pipeline file, validated. The error is what `engine validate`
    /// prints for it.
    fn load(&self, file: &Path) -> Result<PipelineDef, String>;

    /// A run died without a word (killed, or exited before it could
    /// record itself and alert): alert its receivers `failed` with `why`.
    async fn run_died(&self, file: &Path, run_id: &str, why: &str);

    /// What `engine checkpoints list` and `show` print for the pipeline of
    /// `file`. Opens the store: the caller makes sure no run has it.
    async fn checkpoints(&self, file: &Path) -> Result<String, String>;

    /// The NDJSON files the pipeline's file sinks write rejected rows to
    /// (sinks reading a `.rejects` port), as the file names them now.
    fn rejects_files(&self, file: &Path) -> Result<Vec<PathBuf>, String>;

    /// Resolves a `SECRET[backend.key]` reference with the backends the
    /// loaded pipeline files declare (for `--api-token`).
    async fn resolve_secret(&self, files: &[PathBuf], reference: &str) -> Result<String, String>;
}

/// `engine serve`'s options.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A folder of pipeline files (`*.toml`), or one file.
    pub pipelines: PathBuf,
    pub listen: std::net::SocketAddr,
    /// History, logs, live figures and the scheduler's memory.
    pub state: PathBuf,
    /// Bearer token of mutating API calls; None: they are refused.
    pub api_token: Option<String>,
    /// How long a graceful stop waits for runs to reach a checkpoint.
    pub grace: Duration,
    /// Run logs older than this are deleted.
    pub log_retention: Duration,
    /// The binary runs are started with (this one).
    pub engine_exe: PathBuf,
    /// Log format passed to runs (`json` keeps their log files parseable).
    pub run_log_format: String,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Pipelines(String),
    #[error("state directory {path}: {cause}")]
    State { path: String, cause: String },
    #[error("cannot listen on {addr}: {cause}")]
    Listen { addr: String, cause: String },
    #[error("--api-token: {0}")]
    Token(String),
    #[error(transparent)]
    History(#[from] history::HistoryError),
}

/// The pipeline files of `path`: the file itself, or every `*.toml` in the
/// folder (not below), sorted.
pub fn pipeline_files(path: &Path) -> Result<Vec<PathBuf>, ServeError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| ServeError::Pipelines(format!("cannot read the pipeline folder {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ServeError::Pipelines(format!("no pipeline files (*.toml) in {}", path.display())));
    }
    Ok(files)
}

/// Loads every pipeline file. All errors are reported together; two files
/// with one pipeline name are an error too (runs and history go by name).
pub fn load_all(catalog: &dyn Catalog, files: &[PathBuf]) -> Result<Vec<Arc<PipelineDef>>, String> {
    let mut defs: Vec<Arc<PipelineDef>> = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match catalog.load(f) {
            Ok(d) => {
                if let Some(other) = defs.iter().find(|o| o.name == d.name) {
                    errors.push(format!(
                        "{}: pipeline `{}` is also defined by {} (names must be unique)",
                        f.display(),
                        d.name,
                        other.file.display()
                    ));
                } else {
                    defs.push(Arc::new(d));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(defs) } else { Err(errors.join("\n")) }
}

/// `engine serve --dry-run`: the next `n` fire times of every scheduled
/// pipeline, one block per pipeline.
pub fn dry_run(defs: &[Arc<PipelineDef>], n: usize) -> String {
    use std::fmt::Write as _;
    let now = jiff::Timestamp::now();
    let mut out = String::new();
    for d in defs {
        match &d.schedule {
            None => {
                let _ = writeln!(out, "{}: no schedule (runs only when triggered through the API)", d.name);
            }
            Some(s) => {
                let _ = writeln!(out, "{}: cron \"{}\" in {} ({})", d.name, s.cron, s.timezone, d.file.display());
                for z in s.upcoming(now, n) {
                    let _ =
                        writeln!(out, "  {}  ({} UTC)", z.strftime("%F %T %:z %a"), z.timestamp().strftime("%F %T"));
                }
            }
        }
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Serves until SIGTERM or SIGINT: schedules, runs, API. SIGHUP reloads
/// the pipeline files.
pub async fn serve(opts: ServeOptions, catalog: Arc<dyn Catalog>) -> Result<(), ServeError> {
    let files = pipeline_files(&opts.pipelines)?;
    let defs = load_all(catalog.as_ref(), &files).map_err(ServeError::Pipelines)?;
    let _lock = runs::lock_state(&opts.state)?;
    let history = Arc::new(history::History::open(&opts.state).await?);
    let lost = history.mark_lost(&history::process_alive).await?;
    if !lost.is_empty() {
        tracing::warn!(runs = ?lost, "runs that were going when the service stopped are recorded as lost; their pipelines resume from their checkpoints");
    }
    let token = match &opts.api_token {
        Some(t) if t.contains("SECRET[") => {
            // The catalog registers the value for redaction.
            Some(catalog.resolve_secret(&files, t).await.map_err(ServeError::Token)?)
        }
        Some(t) if t.is_empty() => return Err(ServeError::Token("the token is empty".into())),
        other => other.clone(),
    };
    if token.is_none() {
        tracing::warn!(
            "no --api-token (or ENGINE_API_TOKEN): the API answers reads, and refuses to trigger or stop runs"
        );
    }
    let sup = runs::Supervisor::new(opts.clone(), history.clone(), catalog.clone());
    sup.prune_logs();
    let sched = scheduler::Scheduler::new(sup.clone(), &opts.state);
    sched.install(&defs).await;

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServeError::Listen { addr: opts.listen.to_string(), cause: e.to_string() })?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Listen { addr: opts.listen.to_string(), cause: e.to_string() })?;
    let app = api::router(api::Api { sup: sup.clone(), sched: sched.clone(), token });
    let stop_api = CancellationToken::new();
    let stopped = stop_api.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
    });
    // Watched before the service says it listens: a SIGHUP sent as soon as
    // it does must reload, not kill it (the default action).
    use tokio::signal::unix::{SignalKind, signal};
    let watched = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::hangup())?)));
    tracing::info!(addr = %bound, pipelines = defs.len(), state = %opts.state.display(), "engine serve: listening");
    // The line tests and scripts wait for.
    println!("engine serve listening on http://{bound}");

    signals(watched, &sup, &sched, catalog.as_ref(), &opts).await;

    tracing::info!(grace_s = opts.grace.as_secs(), "stopping: no new runs; running ones stop at a checkpoint");
    sched.stop().await;
    sup.stop_all(opts.grace).await;
    stop_api.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("engine serve stopped");
    Ok(())
}

/// Waits for SIGTERM/SIGINT (returns) and reloads on SIGHUP.
async fn signals(
    watched: std::io::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    sup: &Arc<runs::Supervisor>,
    sched: &Arc<scheduler::Scheduler>,
    catalog: &dyn Catalog,
    opts: &ServeOptions,
) {
    let Ok((mut term, mut hup)) = watched else {
        tracing::error!("cannot watch signals; stopping at Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                let loaded = pipeline_files(&opts.pipelines)
                    .map_err(|e| e.to_string())
                    .and_then(|files| load_all(catalog, &files));
                match loaded {
                    Ok(defs) => {
                        tracing::info!(pipelines = defs.len(), "SIGHUP: pipeline files reloaded");
                        sup.set_reload_error(None);
                        sched.install(&defs).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the pipeline files have errors; the service keeps the ones it had");
                        sup.set_reload_error(Some(e));
                    }
                }
                sup.prune_logs();
            }
        }
    }
}
