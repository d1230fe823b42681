//! The `engine` command line. Thin on purpose: parse flags, set up logging,
//! call the library, turn the outcome into an exit code.
//!
//! Exit codes: 0 done; 1 the run failed; 2 the pipeline file is invalid
//! (or a secret it references did not resolve); 130/143 stopped by
//! SIGINT/SIGTERM after draining.
//!
//! Everything this file prints goes through the redaction of the `secrets`
//! crate: the print macros below shadow std's.

/// `println!` and friends, with every registered secret masked.
macro_rules! println {
    ($($t:tt)*) => { std::println!("{}", secrets::redact::redact(&format!($($t)*))) };
}
macro_rules! print {
    ($($t:tt)*) => { std::print!("{}", secrets::redact::redact(&format!($($t)*))) };
}
macro_rules! eprintln {
    ($($t:tt)*) => { std::eprintln!("{}", secrets::redact::redact(&format!($($t)*))) };
}
macro_rules! eprint {
    ($($t:tt)*) => { std::eprint!("{}", secrets::redact::redact(&format!($($t)*))) };
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine::config::{self, Severity, diagnostic};
use engine::graph;
use engine::observe::{self, LogFormat};
use engine::report::{self, Progress};
use engine::runtime::{self, Control};
use tracing::Instrument as _;

#[derive(Parser)]
#[command(name = "engine", version, about = "Dataflow streaming ETL: run pipelines described in TOML")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing syntax, e.g. `info`, `debug,operators=trace`); ENGINE_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    Run {
        file: PathBuf,
        /// Serve /metrics, /health/live and /health/ready at this address
        /// (a bare port means 127.0.0.1).
        #[arg(long)]
        metrics_addr: Option<String>,
        /// No progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Ignore (and erase) the checkpoint store: start from the first row.
        #[arg(long)]
        from_scratch: bool,
        /// Time between checkpoints (`5s`, `500ms`; 1ms to 24h) or `off`;
        /// overrides `[pipeline.checkpoint] interval`.
        #[arg(long, value_parser = checkpoint_interval)]
        checkpoint_interval: Option<Interval>,
        /// Checkpoint store folder; overrides `[pipeline.checkpoint] dir`.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Download inputs (kaggle sources) even when they look unchanged,
        /// and read them even when the last run already did.
        #[arg(long)]
        force_download: bool,
        /// Read and transform everything, write nothing: print per sink the
        /// rows it would create, update and delete. No checkpoint is taken
        /// and nothing is sent.
        #[arg(long)]
        dry_run: bool,
        /// Let a run delete more than a sink's `max_delete_ratio` of what it
        /// holds.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Record the run in the history under this directory
        /// (`history.db`, read with `engine runs --state DIR`).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Stop at a checkpoint after this long (`2h`, `90s`), as SIGTERM
        /// would; exit code 124 and the `timeout` alert. The next run
        /// resumes.
        #[arg(long, value_parser = operators::duration::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Write live figures (rows per operator, rows/s, channel fill,
        /// checkpoints) to this JSON file 4 times a second.
        #[arg(long)]
        live: Option<PathBuf>,
    },
    /// Send rejected rows through the pipeline again, once the data or the
    /// rules were fixed: rows that now pass reach the sinks (exactly once,
    /// with checkpoints as in any run), rows that still fail are rejected
    /// again at their original line, and the ledger beside the rejects file
    /// keeps a row from being replayed twice.
    Replay {
        file: PathBuf,
        /// The rejects file (NDJSON) whose rows to replay, with what earlier
        /// replays wrote beside it. Default: the pipeline's rejects file.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Which rows: `operator=valid,rule=one_of,column=Gender` (each key
        /// optional). Default: every row no replay took yet.
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
        /// Say what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Record the replay in the history under this directory.
        #[arg(long)]
        state: Option<PathBuf>,
        /// No progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Write live figures to this JSON file (as `run --live`).
        #[arg(long)]
        live: Option<PathBuf>,
    },
    /// Run the pipelines of a folder on their `[pipeline.schedule]`, keep
    /// their history and answer the HTTP API (SIGHUP reloads the files,
    /// SIGTERM stops at a checkpoint).
    Serve {
        /// A folder of pipeline files (`*.toml`), or one file.
        pipelines: PathBuf,
        /// Address of the API (a bare port means 127.0.0.1).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// History, run logs and the scheduler's memory.
        #[arg(long, default_value = "data/serve")]
        state: PathBuf,
        /// Bearer token of the calls that start and stop runs; may be a
        /// SECRET[backend.key] of a backend the pipeline files declare.
        /// Default: $ENGINE_API_TOKEN.
        #[arg(long)]
        api_token: Option<String>,
        /// How long SIGTERM waits for runs to stop at a checkpoint before
        /// killing them.
        #[arg(long, default_value = "60s", value_parser = operators::duration::parse_duration)]
        grace: std::time::Duration,
        /// Run logs older than this are deleted (`14d`, `12h`).
        #[arg(long, default_value = "14d", value_parser = server::schedule::parse_days)]
        log_retention: std::time::Duration,
        /// Print the next 5 fire times of every pipeline and exit.
        #[arg(long)]
        dry_run: bool,
    },
    /// The run history kept by `engine run --state DIR`, newest first.
    Runs {
        #[arg(long)]
        state: PathBuf,
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON object per run instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// HubSpot: prepare a portal for the pipeline's hubspot sinks.
    Hubspot {
        #[command(subcommand)]
        action: HubspotAction,
    },
    /// Inspect or erase a pipeline's checkpoints.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointsAction,
    },
    /// Check a pipeline file without running it.
    Validate {
        file: PathBuf,
        /// Also fetch every SECRET[...] reference and report which resolve
        /// (never their values).
        #[arg(long)]
        resolve: bool,
    },
    /// Database migrations of the pipeline's sql sinks.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Serve the HubSpot CRM API simulator (for tests, demos and CI).
    HubspotSim {
        /// Port on 127.0.0.1 (0 picks a free one; the address is printed).
        #[arg(long, default_value_t = 8089)]
        port: u16,
        /// Address to bind instead of 127.0.0.1.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Token clients must send as `Authorization: Bearer …`.
        #[arg(long, default_value = "sim-token")]
        token: String,
        /// Requests per rolling window.
        #[arg(long, default_value_t = 100)]
        requests: u32,
        /// Window length in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        window_ms: u64,
        /// Requests per day.
        #[arg(long, default_value_t = 250_000)]
        daily: u64,
        /// Send Retry-After with 429s.
        #[arg(long)]
        retry_after: bool,
        /// Probability (0..1) of answering 502.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Latency added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Refuse a whole batch with 400 instead of a 207 with per-input errors.
        #[arg(long)]
        whole_batch_400: bool,
        /// Omit the X-HubSpot-RateLimit-* headers.
        #[arg(long)]
        no_rate_limit_headers: bool,
        /// Probability (0..1) of answering 423 Locked to a write (upsert, archive).
        #[arg(long, default_value_t = 0.0)]
        locked_rate: f64,
        /// Every n-th request stalls for --stall-ms before answering.
        #[arg(long)]
        stall_every: Option<u64>,
        /// How long a stalled request waits, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        stall_ms: u64,
        /// IANA time zone whose midnight resets the daily quota.
        #[arg(long, default_value = "UTC")]
        daily_reset_tz: String,
        /// Search requests allowed per second.
        #[arg(long, default_value_t = 5)]
        search_per_second: u32,
        /// Seed of the injected failures and correlation ids.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Start with a portal already set up: `babynames` creates the baby_* properties.
        #[arg(long, value_parser = ["babynames"])]
        preset: Option<String>,
    },
    /// Serve the Kaggle dataset-download API simulator (for tests, demos and CI).
    KaggleSim {
        /// Port on 127.0.0.1 (0 picks a free one; the address is printed).
        #[arg(long, default_value_t = 8090)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Basic-auth user and key clients must send.
        #[arg(long, default_value = "sim-user")]
        username: String,
        #[arg(long, default_value = "sim-key")]
        key: String,
        /// Dataset the files below belong to.
        #[arg(long, default_value = "kaggle/us-baby-names")]
        dataset: String,
        /// `NAME=PATH`: serve the file at PATH as NAME (repeatable); without
        /// any, a small built-in NationalNames.csv.
        #[arg(long = "file")]
        files: Vec<String>,
        /// Access token clients may send as `Authorization: Bearer` (repeatable).
        #[arg(long = "token", default_value = "sim-token")]
        tokens: Vec<String>,
    },
    /// Probe a health endpoint: exit 0 when URL answers 2xx within the
    /// timeout, 1 otherwise (the image's HEALTHCHECK; it has no curl).
    Health {
        /// e.g. http://127.0.0.1:9464/health/ready
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = operators::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Draw the pipeline's DAG.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = graph::Format::Ascii)]
        format: graph::Format,
    },
}

#[derive(Subcommand)]
enum CheckpointsAction {
    /// Kept checkpoints: epoch, time, status, state size, duration, positions.
    List {
        file: PathBuf,
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
    /// One checkpoint in detail (default: the newest).
    Show {
        file: PathBuf,
        #[arg(long)]
        epoch: Option<u64>,
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
    /// Erase every checkpoint: the next run starts from the beginning.
    Reset {
        file: PathBuf,
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum HubspotAction {
    /// Check the properties the hubspot sinks write and create the missing
    /// ones (idempotent: a second call changes nothing).
    Setup { file: PathBuf },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// List applied and pending migrations.
    Status {
        file: PathBuf,
        /// Only this sink (default: every sql sink with `migrations`).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Apply pending migrations.
    Up {
        file: PathBuf,
        #[arg(long)]
        sink: Option<String>,
    },
    /// Roll back to a version (0 = everything).
    Down {
        file: PathBuf,
        #[arg(long)]
        to: i64,
        #[arg(long)]
        sink: Option<String>,
    },
}

/// `--checkpoint-interval`, read by clap so that a bad value is a usage
/// error (exit 2, like a bad pipeline file) before anything starts.
#[derive(Clone, Debug)]
struct Interval(Option<std::time::Duration>);

fn checkpoint_interval(s: &str) -> Result<Interval, String> {
    config::parse_interval(s).map(Interval)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Credentials in the environment are masked from the first log line on.
    secrets::redact::register_environment();
    observe::init_logging(cli.log_format, &cli.log_level);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, resolve } => {
            let code = validate(&file);
            if !resolve || code != ExitCode::SUCCESS {
                return Ok(code);
            }
            let Ok(p) = config::load(&file) else { return Ok(ExitCode::from(2)) };
            let (lines, ok) = current_thread()?.block_on(engine::secrets::check(&p));
            for l in lines {
                println!("  {l}");
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Graph { file, format } => match load(&file) {
            Ok(p) => {
                print!("{}", graph::render(&p, format));
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::HubspotSim {
            port,
            host,
            token,
            requests,
            window_ms,
            daily,
            retry_after,
            error_rate,
            latency_ms,
            whole_batch_400,
            no_rate_limit_headers,
            locked_rate,
            stall_every,
            stall_ms,
            daily_reset_tz,
            search_per_second,
            seed,
            preset,
        } => {
            let cfg = simulators::hubspot::Config {
                token,
                window_requests: requests,
                window: std::time::Duration::from_millis(window_ms),
                daily,
                daily_reset_tz,
                search_per_second,
                retry_after,
                rate_limit_headers: !no_rate_limit_headers,
                error_rate,
                locked_rate,
                latency: std::time::Duration::from_millis(latency_ms),
                stall_every,
                stall: std::time::Duration::from_millis(stall_ms),
                partial_207: !whole_batch_400,
                seed,
                properties: match preset.as_deref() {
                    Some("babynames") => simulators::hubspot::babynames_properties(),
                    _ => Vec::new(),
                },
                ..Default::default()
            };
            serve_until_ctrl_c(&host, port, |addr| async move {
                let handle =
                    simulators::hubspot::serve(cfg, addr).await.with_context(|| format!("cannot listen on {addr}"))?;
                println!("hubspot simulator listening on {}", handle.base_url());
                Ok(Box::new(move || handle.stop()) as Box<dyn FnOnce()>)
            })
        }
        Command::KaggleSim { port, host, username, key, dataset, files, tokens } => {
            let mut cfg = simulators::kaggle::Config { username, key, tokens, ..Default::default() };
            if !files.is_empty() {
                let mut served = Vec::new();
                // Dated by the files, never by the start: a restart serving
                // the same files keeps `Last-Modified`, an edit moves it on.
                let mut newest: Option<std::time::SystemTime> = Some(std::time::UNIX_EPOCH);
                for f in &files {
                    let (name, path) =
                        f.split_once('=').with_context(|| format!("--file `{f}`: expected NAME=PATH"))?;
                    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                    newest = newest.zip(modified).map(|(a, b)| a.max(b));
                    served.push((name.to_string(), bytes));
                }
                let mut version = simulators::kaggle::Version::dated_by_content(1, served);
                if let Some(t) = newest {
                    version.last_modified = t;
                }
                cfg.datasets.insert(dataset, vec![version]);
            }
            serve_until_ctrl_c(&host, port, |addr| async move {
                let handle =
                    simulators::kaggle::serve(cfg, addr).await.with_context(|| format!("cannot listen on {addr}"))?;
                let base = handle.base_url();
                println!("kaggle simulator listening on {base} (base_url = \"{base}/api/v1\")");
                println!("KAGGLE_API_ENDPOINT={base}");
                Ok(Box::new(move || handle.stop()) as Box<dyn FnOnce()>)
            })
        }
        Command::Migrate { action } => {
            let (file, sink) = match &action {
                MigrateAction::Status { file, sink }
                | MigrateAction::Up { file, sink }
                | MigrateAction::Down { file, sink, .. } => (file.clone(), sink.clone()),
            };
            let mut pipeline = match load(&file) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let rt = current_thread()?;
            if let Err(code) = rt.block_on(resolve_secrets(&mut pipeline)) {
                return Ok(code);
            }
            rt.block_on(migrate(pipeline, sink, action))
        }
        Command::Checkpoints { action } => {
            let (file, dir) = match &action {
                CheckpointsAction::List { file, checkpoint_dir }
                | CheckpointsAction::Show { file, checkpoint_dir, .. }
                | CheckpointsAction::Reset { file, checkpoint_dir } => (file.clone(), checkpoint_dir.clone()),
            };
            let mut pipeline = match load(&file) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            if let Some(d) = dir {
                pipeline.checkpoint.dir = d;
            }
            checkpoints_command(&pipeline, action)
        }
        Command::Run {
            file,
            metrics_addr,
            no_progress,
            from_scratch,
            checkpoint_interval,
            checkpoint_dir,
            force_download,
            dry_run,
            allow_mass_delete,
            state,
            timeout,
            live,
        } => {
            let mut pipeline = match load(&file) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            if force_download {
                for c in pipeline.components.iter_mut().filter(|c| c.kind.name == "kaggle") {
                    c.options["force_download"] = serde_json::Value::Bool(true);
                }
            }
            if let Some(Interval(i)) = checkpoint_interval {
                pipeline.checkpoint.interval = i;
                if pipeline.checkpoint.interval.is_none() {
                    pipeline.checkpoint.rows = None;
                }
            }
            if let Some(d) = checkpoint_dir {
                pipeline.checkpoint.dir = d;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("engine-worker")
                .build()
                .context("cannot start the async runtime")?;
            if let Err(code) = rt.block_on(resolve_secrets(&mut pipeline)) {
                return Ok(code);
            }
            let session = match open_session(&pipeline, from_scratch, dry_run) {
                Ok(s) => s.map(Arc::new),
                Err(code) => return Ok(code),
            };
            if dry_run {
                return rt.block_on(plan(pipeline, session));
            }
            let opts = RunOptions {
                metrics_addr,
                progress: !no_progress,
                allow_mass_delete,
                state,
                timeout,
                live,
                run_id: None,
                trigger: "cli",
            };
            rt.block_on(run(pipeline, session, opts))
        }
        Command::Replay { file, rejects, filter, dry_run, state, no_progress, live } => {
            let pipeline = match load(&file) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let filter: replays::Filter = match filter.as_deref().unwrap_or("").parse() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: --where: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let opts = ReplayOptions { rejects, filter, dry_run, state, progress: !no_progress, live };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("engine-worker")
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(replay(pipeline, opts))
        }
        Command::Serve { pipelines, listen, state, api_token, grace, log_retention, dry_run } => {
            serve(pipelines, listen, state, api_token, grace, log_retention, dry_run)
        }
        Command::Health { url, timeout } => match current_thread()?.block_on(engine::health::check(&url, timeout)) {
            Ok(()) => {
                println!("healthy: {url}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("unhealthy: {e}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Runs { state, pipeline, limit, json } => {
            current_thread()?.block_on(runs(&state, pipeline, limit, json))
        }
        Command::Hubspot { action: HubspotAction::Setup { file } } => {
            let mut pipeline = match load(&file) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let rt = current_thread()?;
            if let Err(code) = rt.block_on(resolve_secrets(&mut pipeline)) {
                return Ok(code);
            }
            rt.block_on(hubspot_setup(pipeline))
        }
    }
}

/// Where the run starts: `None` with checkpoints off. A dry run only reads
/// the store (and not at all when it does not exist yet or `--from-scratch`
/// is given): it must leave no trace.
fn open_session(
    pipeline: &config::Pipeline,
    from_scratch: bool,
    dry_run: bool,
) -> Result<Option<engine::checkpoint::Session>, ExitCode> {
    if !pipeline.checkpoint.enabled() {
        return Ok(None);
    }
    if dry_run && (from_scratch || !engine::checkpoint::store_dir(pipeline).exists()) {
        return Ok(None);
    }
    let opened = if from_scratch && !dry_run {
        engine::checkpoint::open_store_afresh(pipeline)
    } else {
        engine::checkpoint::open_store(pipeline)
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: {e}
the checkpoint store could not be opened; if it is damaged, `engine run --from-scratch {}` starts over (or set [pipeline.checkpoint] dir elsewhere)",
                pipeline.file.display()
            );
            return Err(ExitCode::from(1));
        }
    };
    match engine::checkpoint::begin(pipeline, Arc::new(store), from_scratch && !dry_run) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Runs a simulator on `host:port` until Ctrl-C: `start` binds and returns
/// how to stop it.
fn serve_until_ctrl_c<F, Fut>(host: &str, port: u16, start: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Box<dyn FnOnce()>>>,
{
    let addr: std::net::SocketAddr =
        format!("{host}:{port}").parse().with_context(|| format!("`{host}:{port}` is not an address"))?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let stop = start(addr).await?;
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        stop();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Loads and validates; prints diagnostics (warnings too) to stderr.
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// Fetches every `SECRET[...]` the pipeline uses, before anything runs; a
/// reference that does not resolve stops here, named, exit code 2.
async fn resolve_secrets(pipeline: &mut config::Pipeline) -> Result<(), ExitCode> {
    match engine::secrets::resolve(pipeline).await {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: {}: {e}", pipeline.file.display());
            Err(ExitCode::from(2))
        }
    }
}

fn load(file: &std::path::Path) -> Result<config::Pipeline, ExitCode> {
    match config::load(file) {
        Ok(p) => {
            if !p.warnings.is_empty() {
                eprint!("{}", diagnostic::render(&file.display().to_string(), &p.source_text, &p.warnings));
            }
            Ok(p)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match load(file) {
        Ok(p) => {
            let sources = p.components.iter().filter(|c| c.role == operators::Role::Source).count();
            let sinks = p.components.iter().filter(|c| c.role == operators::Role::Sink).count();
            let transforms = p.components.len() - sources - sinks;
            let warnings = p.warnings.iter().filter(|d| d.severity == Severity::Warning).count();
            println!(
                "{}: ok — pipeline `{}`: {sources} source(s), {transforms} transform(s), {sinks} sink(s), {warnings} warning(s)",
                file.display(),
                p.name
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn checkpoints_command(p: &config::Pipeline, action: CheckpointsAction) -> anyhow::Result<ExitCode> {
    use engine::checkpoint;
    let dir = checkpoint::store_dir(p);
    if !dir.exists() {
        println!("no checkpoints for pipeline {} (no store at {})", p.name, dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let store = checkpoint::open_store(p).with_context(|| format!("opening {}", dir.display()))?;
    let printed = match action {
        CheckpointsAction::List { .. } => {
            println!("pipeline {}: checkpoints in {}", p.name, dir.display());
            checkpoint::list(&store)
        }
        CheckpointsAction::Show { epoch, .. } => checkpoint::show(&store, epoch),
        CheckpointsAction::Reset { .. } => {
            use checkpoints::CheckpointStore;
            let n = store.epochs().map(|e| e.len()).unwrap_or(0);
            store.reset().with_context(|| format!("erasing {}", dir.display()))?;
            Ok(format!("erased {n} checkpoint(s) of pipeline {}; the next run starts from the beginning\n", p.name))
        }
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: {e}\n`engine checkpoints reset {}` erases the store; the next run then starts from the beginning",
                p.file.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `engine run`'s flags beyond the pipeline and where it starts.
struct RunOptions {
    metrics_addr: Option<String>,
    progress: bool,
    allow_mass_delete: bool,
    state: Option<PathBuf>,
    timeout: Option<std::time::Duration>,
    live: Option<PathBuf>,
    /// The run's id; by default `ENGINE_RUN_ID`, else a new one.
    run_id: Option<String>,
    /// What started it, for the history (`ENGINE_TRIGGER` overrides).
    trigger: &'static str,
}

async fn run(
    pipeline: config::Pipeline,
    session: Option<Arc<engine::checkpoint::Session>>,
    opts: RunOptions,
) -> anyhow::Result<ExitCode> {
    let RunOptions { metrics_addr, progress, allow_mass_delete, state, timeout, live, run_id, trigger } = opts;
    let live_slot: Arc<OnceLock<Arc<runtime::Live>>> = Arc::new(OnceLock::new());
    if let Some(addr) = metrics_addr {
        let addr = observe::parse_addr(&addr).map_err(anyhow::Error::msg)?;
        let handle = observe::install_recorder().map_err(anyhow::Error::msg)?;
        let bound = observe::serve(addr, handle, live_slot.clone()).await.map_err(anyhow::Error::msg)?;
        tracing::info!(addr = %bound, "serving /metrics, /health/live, /health/ready");
    }

    let control = Control::default();
    spawn_signal_handler(control.clone());
    if let Some(limit) = timeout {
        let c = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            tracing::warn!(timeout_s = limit.as_secs_f64(), "timeout: stopping at a checkpoint; the next run resumes");
            c.request_drain(runtime::TIMEOUT);
        });
    }

    let run_id = run_id.unwrap_or_else(engine::notify::run_id);
    tracing::info!(pipeline = %pipeline.name, file = %pipeline.file.display(), run = %run_id, "starting");
    match &session {
        Some(s) => tracing::info!(
            store = %engine::checkpoint::store_dir(&pipeline).display(),
            interval_ms = s.settings.interval.map(|d| d.as_millis() as u64),
            rows = s.settings.rows,
            "{}",
            s.describe()
        ),
        None => tracing::info!("checkpoints are off: an interrupted run starts over"),
    }
    if let Some(s) = session.as_ref().filter(|s| engine::guard::needed(&pipeline, Some(s))) {
        if allow_mass_delete {
            tracing::warn!("--allow-mass-delete: the mass-delete guard is off for this run");
        } else if let Err(e) = engine::guard::check(&pipeline, control.clone(), s.clone()).await {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    let resumed_from = session.as_ref().and_then(|s| s.resume.as_ref()).map(|r| r.epoch);
    let history = match &state {
        Some(dir) => engine::record::start(dir, &pipeline, &run_id, resumed_from, trigger).await,
        None => None,
    };
    let bar = Progress::start(progress);
    let stop_live = tokio_util::sync::CancellationToken::new();
    let mut live_writer = None;
    let report = runtime::run(&pipeline, control, session, |shared| {
        let _ = live_slot.set(shared.clone());
        if let Some(path) = &live {
            live_writer = Some(engine::live::spawn(
                path.clone(),
                run_id.clone(),
                pipeline.name.clone(),
                shared.clone(),
                stop_live.clone(),
            ));
        }
        bar.follow(shared);
    })
    // One span per run: every line of it carries the run id.
    .instrument(tracing::info_span!("run", run = %run_id, pipeline = %pipeline.name))
    .await;
    bar.finish();
    stop_live.cancel();
    if let Some(w) = live_writer {
        let _ = w.await;
    }

    print!("{}", report::summary(&report));
    if let Some(h) = history {
        engine::record::finish(h, &run_id, &report).await;
    }
    engine::notify::send(&pipeline, &report, &run_id).await;
    match &report.outcome {
        runtime::Outcome::Failed { operator, error } => eprintln!("error: operator `{operator}` failed: {error}"),
        runtime::Outcome::Interrupted { signal } | runtime::Outcome::Aborted { signal } => {
            eprintln!("stopped by {signal}; exit code {}", report.outcome.exit_code())
        }
        runtime::Outcome::Completed => {}
    }
    Ok(ExitCode::from(report.outcome.exit_code() as u8))
}

struct ReplayOptions {
    rejects: Option<PathBuf>,
    filter: replays::Filter,
    dry_run: bool,
    state: Option<PathBuf>,
    progress: bool,
    live: Option<PathBuf>,
}

/// `engine replay`: first the replays a crash left unfinished (same rows,
/// resumed from their checkpoints), then the rows `--where` picks, one
/// run per source and refusing sink.
async fn replay(pipeline: config::Pipeline, opts: ReplayOptions) -> anyhow::Result<ExitCode> {
    use engine::replay as rp;
    let family = match rp::family(&pipeline, opts.rejects.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let _lock = match (opts.dry_run, rp::lock_ledger(&family)) {
        (true, _) => None,
        (false, Ok(l)) => Some(l),
        (false, Err(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let ledger_path = family.ledger_path();
    let ledger = replays::Ledger::read(&ledger_path).with_context(|| "reading the replay ledger")?;
    if !opts.dry_run {
        for started in ledger.pending() {
            println!(
                "resuming replay {} ({} rows of source `{}`, {}), which did not finish",
                started.replay,
                started.rows.len(),
                started.source,
                started.filter
            );
            let code = replay_run(&pipeline, &family, started, &opts, None).await?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
        }
    }
    let ledger = replays::Ledger::read(&ledger_path).with_context(|| "reading the replay ledger")?;
    let selection = rp::select(&pipeline, &family, &ledger, &opts.filter)
        .with_context(|| format!("reading the rejects of {}", family.main().display()))?;
    println!(
        "{} rejected rows match ({}) in {} and the files of its replays; {} of them were replayed already",
        selection.matched,
        opts.filter,
        family.main().display(),
        selection.taken
    );
    for (why, n) in &selection.skipped {
        println!("  {n} cannot be replayed: {why}");
    }
    for g in &selection.groups {
        match &g.sink {
            Some(sink) => {
                println!("  {} rows of source `{}` refused by sink `{sink}`: to `{sink}` again", g.rows.len(), g.source)
            }
            None => println!("  {} rows of source `{}`: through the pipeline again", g.rows.len(), g.source),
        }
    }
    if selection.rows() == 0 {
        println!("nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    if opts.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let base_id = engine::notify::run_id();
    for (n, group) in selection.groups.into_iter().enumerate() {
        let id = if n == 0 { base_id.clone() } else { format!("{base_id}-{}", n + 1) };
        let input = rp::input_path(&family, &id);
        let header = match rp::header_line(&pipeline, &group.source).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        rp::write_input(&input, header.as_deref(), &group.rows)?;
        let started = replays::Started {
            replay: id.clone(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            pipeline: pipeline.name.clone(),
            source: group.source.clone(),
            sink: group.sink.clone(),
            filter: opts.filter.to_string(),
            input,
            rows: group.rows.iter().map(|r| r.picked.clone()).collect(),
        };
        // Before the run: from here on the rows are this replay's, and a
        // crash resumes it rather than picking them again.
        replays::Ledger::append(&ledger_path, &replays::Entry::Started(started.clone()))?;
        let code = replay_run(&pipeline, &family, &started, &opts, Some(id)).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One replay's run; on success, its end in the ledger and its input and
/// checkpoint store removed.
async fn replay_run(
    pipeline: &config::Pipeline,
    family: &replays::Family,
    started: &replays::Started,
    opts: &ReplayOptions,
    run_id: Option<String>,
) -> anyhow::Result<ExitCode> {
    use engine::replay as rp;
    let mut p = match rp::rewrite(pipeline, started, rp::has_header(pipeline, &started.source)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(code) = resolve_secrets(&mut p).await {
        return Ok(code);
    }
    let session = match open_session(&p, false, false) {
        Ok(s) => s.map(Arc::new),
        Err(code) => return Ok(code),
    };
    let run_opts = RunOptions {
        metrics_addr: None,
        progress: opts.progress,
        allow_mass_delete: false,
        state: opts.state.clone(),
        timeout: None,
        live: opts.live.clone(),
        run_id,
        trigger: "replay",
    };
    let code = run(p.clone(), session, run_opts).await?;
    if code != ExitCode::SUCCESS {
        eprintln!(
            "replay {} stopped; `engine replay {}` resumes it from its last checkpoint",
            started.replay,
            pipeline.file.display()
        );
        return Ok(code);
    }
    let again_file = family.replay_file(&started.replay);
    let again = rp::count_rows(&again_file);
    let finished = replays::Finished {
        replay: started.replay.clone(),
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        rows: started.rows.len() as u64,
        rejected_again: again,
    };
    replays::Ledger::append(&family.ledger_path(), &replays::Entry::Finished(finished))?;
    let _ = std::fs::remove_file(&started.input);
    if p.checkpoint.enabled() {
        let _ = std::fs::remove_dir_all(engine::checkpoint::store_dir(&p));
    }
    if again > 0 {
        println!(
            "replay {}: {} rows replayed, {again} rejected again (in {})",
            started.replay,
            started.rows.len(),
            again_file.display()
        );
    } else {
        println!("replay {}: {} rows replayed, none rejected again", started.replay, started.rows.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `engine serve`: checks every pipeline file first (exit 2 with their
/// errors), then serves until SIGTERM.
#[allow(clippy::too_many_arguments)]
fn serve(
    pipelines: PathBuf,
    listen: String,
    state: PathBuf,
    api_token: Option<String>,
    grace: std::time::Duration,
    log_retention: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = Arc::new(engine::service::Catalog);
    if dry_run {
        let files = match server::pipeline_files(&pipelines) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        return Ok(match server::load_all(catalog.as_ref(), &files) {
            Ok(defs) => {
                print!("{}", server::dry_run(&defs, 5));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        });
    }
    let listen = observe::parse_addr(&listen).map_err(anyhow::Error::msg)?;
    let opts = server::ServeOptions {
        pipelines,
        listen,
        state,
        api_token: api_token.or_else(|| std::env::var("ENGINE_API_TOKEN").ok().filter(|t| !t.is_empty())),
        grace,
        log_retention,
        engine_exe: std::env::current_exe().context("cannot find this program's path to start runs with")?,
        // Run logs are read back by the API: JSON lines whatever the
        // service's own format.
        run_log_format: "json".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("engine-serve")
        .build()
        .context("cannot start the async runtime")?;
    match rt.block_on(server::serve(opts, catalog)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ server::ServeError::Pipelines(_)) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

/// `engine runs`: the history, as a table or JSON lines.
async fn runs(state: &std::path::Path, pipeline: Option<String>, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
    if !state.join("history.db").exists() {
        anyhow::bail!(
            "no run history in {} (runs record it with `engine run --state {}`)",
            state.display(),
            state.display()
        );
    }
    let h = history::History::open(state).await?;
    let rows = h.list(pipeline.as_deref(), limit).await?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<22} {:<14} {:<9} {:<12} {:>9} {:>10} {:>8}  error",
            "run", "pipeline", "trigger", "outcome", "seconds", "rows read", "rejects"
        );
        for r in &rows {
            let secs =
                r.ended_at_ms.map(|e| format!("{:.1}", (e - r.started_at_ms) as f64 / 1000.0)).unwrap_or_default();
            let error = match (&r.failed_operator, &r.error) {
                (Some(op), Some(e)) => format!("{op}: {}", e.lines().next().unwrap_or_default()),
                _ => String::new(),
            };
            println!(
                "{:<22} {:<14} {:<9} {:<12} {:>9} {:>10} {:>8}  {error}",
                r.id,
                r.pipeline,
                r.trigger,
                r.outcome,
                secs,
                r.rows_read.map(|n| n.to_string()).unwrap_or_default(),
                r.rows_rejected.map(|n| n.to_string()).unwrap_or_default()
            );
        }
    }
    h.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `engine run --dry-run`: the plan, printed; exit 0 unless it failed.
async fn plan(
    pipeline: config::Pipeline,
    session: Option<Arc<engine::checkpoint::Session>>,
) -> anyhow::Result<ExitCode> {
    let control = Control::default();
    spawn_signal_handler(control.clone());
    let report = runtime::plan(&pipeline, control, session, true).await;
    print!("{}", report::plan(&report));
    Ok(match report.outcome {
        runtime::Outcome::Completed => ExitCode::SUCCESS,
        other => ExitCode::from(other.exit_code() as u8),
    })
}

/// `engine hubspot setup`: every hubspot sink's properties, checked and
/// created where missing.
async fn hubspot_setup(pipeline: config::Pipeline) -> anyhow::Result<ExitCode> {
    use operators::sinks::hubspot::{self, HubSpotConfig};
    let sinks: Vec<_> =
        pipeline.components.iter().filter(|c| c.kind.name == "hubspot" && c.role == operators::Role::Sink).collect();
    if sinks.is_empty() {
        anyhow::bail!("{} has no hubspot sink", pipeline.file.display());
    }
    let mut failed = false;
    for c in sinks {
        let cfg: HubSpotConfig = serde_json::from_value(c.options.clone())?;
        let ctx = operators::BuildContext {
            pipeline: pipeline.name.clone(),
            id: c.id.clone(),
            batch_size: c.batch_size,
            raw_options: c.raw_options.clone(),
            rotation: c.rotation.0.clone(),
        };
        let sink = hubspot::build(&ctx, cfg).with_context(|| format!("sink `{}`", c.id))?;
        match sink.setup().await {
            Ok(Some(done)) => println!("sink {}: {}", c.id, done.describe()),
            Ok(None) => {
                let raw = c.raw_options["token"].as_str().unwrap_or("the `token` option");
                eprintln!("error: sink `{}` has no token ({raw} is empty): nothing to set up offline", c.id);
                failed = true;
            }
            Err(e) => {
                eprintln!("error: sink `{}`: {e}", c.id);
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// First SIGINT/SIGTERM: drain. Second: abort.
fn spawn_signal_handler(control: Control) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        let mut count = 0;
        loop {
            #[cfg(unix)]
            let name = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            #[cfg(not(unix))]
            let name = {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            };
            count += 1;
            if count == 1 {
                tracing::warn!(
                    signal = name,
                    "stopping: sources stop reading, in-flight rows are drained and sinks flushed (send again to abort)"
                );
                control.request_drain(name);
            } else if count == 2 {
                tracing::error!(
                    signal = name,
                    "aborting now; sinks discard partial output (send again to exit at once)"
                );
                control.abort.cancel();
            } else {
                eprintln!("{name} received a third time: exiting without cleanup");
                std::process::exit(if name == "SIGINT" { 130 } else { 143 });
            }
        }
    });
}

async fn migrate(pipeline: config::Pipeline, only: Option<String>, action: MigrateAction) -> anyhow::Result<ExitCode> {
    use operators::sinks::sql::{SqlSinkConfig, db, migrate};
    let sinks: Vec<_> = pipeline
        .components
        .iter()
        .filter(|c| c.kind.name == "sql" && c.role == operators::Role::Sink)
        .filter(|c| only.as_ref().is_none_or(|o| o == &c.id))
        .collect();
    if sinks.is_empty() {
        anyhow::bail!(
            "{} has no sql sink{}",
            pipeline.file.display(),
            only.map(|o| format!(" named `{o}`")).unwrap_or_default()
        );
    }
    for c in sinks {
        let cfg: SqlSinkConfig = serde_json::from_value(c.options.clone())?;
        let Some(dir) = cfg.migrations.as_deref().map(PathBuf::from) else {
            println!("sink {}: no `migrations` folder configured; nothing to do", c.id);
            continue;
        };
        let tls = db::Tls { ssl_mode: cfg.ssl_mode.clone(), ssl_ca: cfg.ssl_ca.clone() };
        let pool = db::connect(&cfg.url, 1, &tls)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("sink `{}`", c.id))?;
        let folder = dir.join(pool.dialect().name());
        println!("sink {}: {} table {} (migrations in {})", c.id, db::redact(&cfg.url), cfg.table, folder.display());
        let result = match &action {
            MigrateAction::Status { .. } => migrate::status(&pool, &dir).await.map(|(applied, pending)| {
                for a in &applied {
                    println!("  applied  V{:03}  {}  (at unix time {})", a.version, a.name, a.applied_at);
                }
                for m in &pending {
                    println!("  pending  V{:03}  {}", m.version, m.name);
                }
                if applied.is_empty() && pending.is_empty() {
                    println!("  no migrations");
                }
            }),
            MigrateAction::Up { .. } => migrate::up(&pool, &dir).await.map(|done| {
                for m in &done {
                    println!("  applied  V{:03}  {}", m.version, m.name);
                }
                if done.is_empty() {
                    println!("  up to date");
                }
            }),
            MigrateAction::Down { to, .. } => migrate::down(&pool, &dir, *to).await.map(|rolled| {
                for v in &rolled {
                    println!("  rolled back  V{v:03}");
                }
                if rolled.is_empty() {
                    println!("  nothing above V{to:03}");
                }
            }),
        };
        pool.close().await;
        if let Err(e) = result {
            eprintln!("error: sink `{}`: {e}", c.id);
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
