//! End-to-end throughput: file source -> validate -> dedupe -> blackhole on
//! the full NationalNames.csv (1,924,665 rows), release build, run as a user
//! runs it (the real `engine` binary). Prints rows/s and peak RSS, and in the
//! same run the references that are available:
//!
//! - `pyarrow.csv.read_csv` of the same file (parse only, no validation or
//!   dedupe), when python3 can import pyarrow;
//! - a baseline engine binary given as `ENGINE_BASELINE_BIN`, e.g. a build of
//!   the previous commit, to compare a change on the same machine and data.
//!
//! ```text
//! scripts/fetch-babynames             # once: builds bench-data/NationalNames.csv
//! cargo bench -p engine --bench throughput
//! ```
//! Env: `BENCH_CSV` (input path), `BENCH_RUNS` (best of N, default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{input_csv, repo, source_validate_dedupe, summary_peak_mib, summary_source_rows};

fn pipeline(csv: &Path) -> String {
    format!(
        "[pipeline]\nname = \"bench-throughput\"\n{}\n[sinks.null]\nkind = \"blackhole\"\ninputs = [\"unique\"]\n",
        source_validate_dedupe(csv)
    )
}

struct Measure {
    rows: u64,
    seconds: f64,
    peak_mib: f64,
}

impl Measure {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// Runs the pipeline once with `bin` and `extra` flags; wall time includes
/// process start.
fn run_engine(bin: &Path, pipeline: &Path, extra: &[&str]) -> Option<Measure> {
    let t = Instant::now();
    let o = Command::new(bin)
        .args(["run", pipeline.to_str()?, "--no-progress", "--log-level", "warn"])
        .args(extra)
        .current_dir(repo())
        .output()
        .ok()?;
    let seconds = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        eprintln!("{} failed: {}{}", bin.display(), out, String::from_utf8_lossy(&o.stderr));
        return None;
    }
    let peak_mib = summary_peak_mib(&out);
    let rows = summary_source_rows(&out, "names");
    Some(Measure { rows, seconds, peak_mib })
}

fn best_of(n: usize, mut f: impl FnMut() -> Option<Measure>) -> Option<Measure> {
    (0..n).filter_map(|_| f()).min_by(|a, b| a.seconds.total_cmp(&b.seconds))
}

fn pyarrow(csv: &Path) -> Option<Measure> {
    let script = r#"
import resource, sys, time
import pyarrow.csv as pc
t = time.perf_counter()
table = pc.read_csv(sys.argv[1])
dt = time.perf_counter() - t
print(table.num_rows, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"#;
    let o = Command::new("python3").args(["-c", script]).arg(csv).output().ok()?;
    if !o.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut it = text.split_whitespace();
    Some(Measure {
        rows: it.next()?.parse().ok()?,
        seconds: it.next()?.parse().ok()?,
        peak_mib: it.next()?.parse().ok()?,
    })
}

fn report(label: &str, m: &Measure) {
    println!(
        "{label:<44} {:>10} rows  {:>7.3} s  {:>12.0} rows/s  peak RSS {:>7.1} MiB",
        m.rows,
        m.seconds,
        m.rows_per_s(),
        m.peak_mib
    );
}

/// The work one live-figures update does (snapshot of 8 operators and 7
/// edges, JSON, write, rename), timed over many updates: its share of one
/// core at 4 updates a second bounds what `--live` can cost a run, however
/// noisy the whole-run timings are.
fn live_update_cost(dir: &Path) -> (f64, f64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stats: Vec<(String, operators::Role, Arc<operators::OperatorStats>)> = (0..8)
        .map(|i| {
            let s = Arc::new(operators::OperatorStats::default());
            s.rows_in.store(1_000_000 + i, Ordering::Relaxed);
            (format!("op{i}"), operators::Role::Transform, s)
        })
        .collect();
    let live = engine::runtime::Live {
        ready: AtomicBool::new(true),
        stats,
        channels: std::sync::Mutex::new((0..7).map(|i| (format!("op{i}.out->op{}", i + 1), 3, 4)).collect()),
        checkpoints: Arc::default(),
    };
    let path = dir.join("live-cost.json");
    let tmp = dir.join("live-cost.json.tmp");
    let started = Instant::now();
    let mut before = Vec::new();
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        let body = engine::live::snapshot("run", "bench", &live, started, &mut before);
        std::fs::write(&tmp, body.to_string()).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    let per_update = t.elapsed().as_secs_f64() / n as f64;
    let updates_per_s = 1.0 / engine::live::TICK.as_secs_f64();
    (per_update * 1e6, per_update * updates_per_s * 100.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: only
    // run when asked for benchmarks.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("engine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pipeline = dir.join("throughput.toml");
    std::fs::write(&pipeline, self::pipeline(&csv)).expect("write pipeline");

    println!(
        "input: {} ({:.1} MB), best of {runs}",
        csv.display(),
        std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    let engine = PathBuf::from(env!("CARGO_BIN_EXE_engine"));
    // The cost of live figures (what `engine serve` streams): the same run
    // writing them 4 times a second. Runs alternate, so that drift on a
    // shared machine (page cache, a neighbour's build) hits both alike.
    let live_file = dir.join("live.json");
    let live_flags = ["--live", live_file.to_str().unwrap_or("live.json")];
    let (mut plain, mut live) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plain.extend(run_engine(&engine, &pipeline, &[]));
        live.extend(run_engine(&engine, &pipeline, &live_flags));
    }
    let best = |v: Vec<Measure>| v.into_iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let ours = best(plain);
    match &ours {
        Some(m) => report("engine: file -> validate -> dedupe -> null", m),
        None => println!("engine run failed"),
    }
    if let (Some(m), Some(l)) = (&ours, best(live)) {
        report("engine with --live (4 writes/s)", &l);
        println!(
            "ratio with --live / without: {:.3}x (whole runs; run-to-run noise here is several %)",
            l.rows_per_s() / m.rows_per_s()
        );
    }
    let (micros, share) = live_update_cost(&dir);
    println!("live figures: {micros:.0} µs per update; at 4 updates/s {share:.3}% of one core");
    if let Some(base) = std::env::var_os("ENGINE_BASELINE_BIN") {
        if let Some(b) = best_of(runs, || run_engine(Path::new(&base), &pipeline, &[])) {
            report("baseline engine (ENGINE_BASELINE_BIN)", &b);
            if let Some(m) = &ours {
                println!("ratio engine / baseline: {:.2}x", m.rows_per_s() / b.rows_per_s());
            }
        }
    }
    match best_of(runs, || pyarrow(&csv)) {
        Some(p) => {
            report("pyarrow.csv.read_csv (parse only)", &p);
            if let Some(m) = &ours {
                println!("ratio engine / pyarrow: {:.2}x", m.rows_per_s() / p.rows_per_s());
            }
        }
        None => println!("pyarrow not available: `pip install pyarrow` to add the reference"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
