//! End-to-end throughput: file source -> validate -> dedupe -> blackhole on
//! the full NationalNames.csv (1,924,665 rows) and on the same rows three
//! times over (5,773,995 rows, every key three times), release build, run as
//! a user runs it (the real `engine` binary). Prints rows/s and peak RSS, and
//! in the same run the references that are available:
//!
//! - DuckDB (`SELECT count(*) FROM (SELECT DISTINCT Name, Year, Gender …)`
//!   over `read_csv` with the validation rules as `WHERE`), when python3
//!   can import duckdb: the same filters and the same distinct keys, less
//!   work than ours (no rejects, no row kept whole); its time is the query
//!   alone, without starting python;
//! - `pyarrow.csv.read_csv` of the same file (parse only, no validation or
//!   dedupe), when python3 can import pyarrow;
//! - a baseline engine binary given as `ENGINE_BASELINE_BIN`, e.g. a build of
//!   the previous commit, to compare a change on the same machine and data.
//!
//! ```text
//! scripts/fetch-babynames             # once: builds bench-data/NationalNames.csv
//! pip install duckdb pyarrow          # optional references
//! cargo bench -p engine --bench throughput
//! ```
//! Env: `BENCH_CSV` (input path), `BENCH_RUNS` (best of N, default 3),
//! `BENCH_COPIES` (the larger input's copies of the file, default 3; 1 runs
//! the file alone).

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
    python_measure(script, csv)
}

/// Runs a python reference that prints "rows seconds peak_mib …".
fn python_measure(script: &str, csv: &Path) -> Option<Measure> {
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

fn duckdb(csv: &Path) -> Option<Measure> {
    let script = r#"
import resource, sys, time
import duckdb
t = time.perf_counter()
(n,) = duckdb.sql(f'''
  SELECT count(*) FROM (SELECT DISTINCT Name, Year, Gender FROM read_csv('{sys.argv[1]}', header = true,
    columns = {{'Id': 'BIGINT', 'Name': 'VARCHAR', 'Year': 'BIGINT', 'Gender': 'VARCHAR', 'Count': 'BIGINT'}})
  WHERE Name IS NOT NULL AND length(Name) BETWEEN 1 AND 64 AND Year BETWEEN 1880 AND 2100
    AND Gender IN ('M', 'F') AND Count >= 1)''').fetchall()[0]
dt = time.perf_counter() - t
rows = duckdb.sql(f"SELECT count(*) FROM read_csv('{sys.argv[1]}', header = true)").fetchall()[0][0]
print(rows, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n)
"#;
    python_measure(script, csv)
}

/// `copies` times the rows of `csv` under its one header: the same keys
/// again, which dedupe must drop.
fn repeated(csv: &Path, copies: usize, to: &Path) -> std::io::Result<()> {
    let text = std::fs::read(csv)?;
    let body = text.iter().position(|&b| b == b'\n').map_or(text.len(), |i| i + 1);
    let mut out = Vec::with_capacity(body + (text.len() - body) * copies);
    out.extend_from_slice(&text[..body]);
    for _ in 0..copies {
        out.extend_from_slice(&text[body..]);
    }
    std::fs::write(to, out)
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
    let copies: usize = std::env::var("BENCH_COPIES").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("engine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut inputs = vec![csv.clone()];
    if copies > 1 {
        let big = dir.join(format!("NationalNames.x{copies}.csv"));
        repeated(&csv, copies, &big).expect("write the repeated input");
        inputs.push(big);
    }
    let engine = PathBuf::from(env!("CARGO_BIN_EXE_engine"));
    for (n, input) in inputs.iter().enumerate() {
        let pipeline = dir.join(format!("throughput-{n}.toml"));
        std::fs::write(&pipeline, self::pipeline(input)).expect("write pipeline");
        println!(
            "\ninput: {} ({:.1} MB), best of {runs}",
            input.display(),
            std::fs::metadata(input).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
        );
        let first = n == 0;
        // The cost of live figures (what `engine serve` streams), on the
        // first input: the same run writing them 4 times a second. Runs
        // alternate with every reference, so that drift on a shared machine
        // (page cache, a neighbour's build) hits all alike.
        let live_file = dir.join("live.json");
        let live_flags = ["--live", live_file.to_str().unwrap_or("live.json")];
        let baseline = std::env::var_os("ENGINE_BASELINE_BIN").map(PathBuf::from);
        let (mut plain, mut live, mut base, mut duck) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            plain.extend(run_engine(&engine, &pipeline, &[]));
            if first {
                live.extend(run_engine(&engine, &pipeline, &live_flags));
            }
            if let Some(b) = &baseline {
                base.extend(run_engine(b, &pipeline, &[]));
            }
            duck.extend(duckdb(input));
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
        if let Some(b) = best(base) {
            report("baseline engine (ENGINE_BASELINE_BIN)", &b);
            if let Some(m) = &ours {
                println!("ratio engine / baseline: {:.2}x", m.rows_per_s() / b.rows_per_s());
            }
        }
        match best(duck) {
            Some(d) => {
                report("duckdb: SELECT DISTINCT key WHERE rules", &d);
                if let Some(m) = &ours {
                    println!(
                        "ratio engine / duckdb: {:.2}x rows/s, peak RSS {:.2}x of duckdb's",
                        m.rows_per_s() / d.rows_per_s(),
                        m.peak_mib / d.peak_mib
                    );
                }
            }
            None => println!("duckdb not available: `pip install duckdb` to add the reference"),
        }
        if first {
            match best_of(runs, || pyarrow(input)) {
                Some(p) => {
                    report("pyarrow.csv.read_csv (parse only)", &p);
                    if let Some(m) = &ours {
                        println!("ratio engine / pyarrow: {:.2}x", m.rows_per_s() / p.rows_per_s());
                    }
                }
                None => println!("pyarrow not available: `pip install pyarrow` to add the reference"),
            }
        }
    }
    let (micros, share) = live_update_cost(&dir);
    println!("\nlive figures: {micros:.0} µs per update; at 4 updates/s {share:.3}% of one core");
    let _ = std::fs::remove_dir_all(&dir);
}
