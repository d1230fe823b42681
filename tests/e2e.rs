//! Integration tests: the real `engine` binary on real files.

mod alerts;
mod alerts_email;
mod config_limits;
mod crash;
mod csv_sink;
mod deploy;
mod history;
mod hubspot_golive;
mod hubspot_sim;
mod hubspot_sink;
mod kaggle;
mod locks;
mod parallel_csv;
mod parquet_damage;
mod queue;
mod rejects;
mod replay;
mod resume;
mod secret_scripts;
mod secrets;
mod serve;
mod slow_sink;
mod sql_sink;
mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::*;

/// Expected counts for pipelines/data/NationalNames.sample.csv, as listed in
/// pipelines/data/README.md (computed independently by scripts/make-sample.py).
const SAMPLE_LINES: usize = 3020;
const SAMPLE_READER_REJECTS: usize = 5;
const SAMPLE_RULE_REJECTS: usize = 6;
const SAMPLE_DUPLICATES: usize = 5;
const SAMPLE_UNIQUE: usize = 3004;

fn out_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Environment that sends every output of pipelines/babynames.toml into
/// `dir` (files and the SQLite database).
fn babynames_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("OUTPUT_DIR", dir.display().to_string()),
        ("DATABASE_URL", format!("sqlite://{}/babynames.db", dir.display())),
        ("CHECKPOINT_DIR", dir.join("checkpoints").display().to_string()),
    ]
}

fn run_babynames(dir: &Path, extra: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let env = babynames_env(dir);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    let mut a = args.to_vec();
    a.push("pipelines/babynames.toml");
    run(&a, &all)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l}: {e}")))
        .collect()
}

#[test]
fn babynames_sample_end_to_end_exact_counts() {
    let dir = out_dir();
    let o = run_babynames(dir.path(), &[], &["run"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));

    let out = dir.path().join("babynames.csv");
    assert_eq!(csv_rows(&out), SAMPLE_UNIQUE);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("Id,Name,Year,Gender,Count\n1,Mary,1880,F,7065\n"), "{}", &text[..80]);
    // Quoted field with a comma and a doubled quote survives the round trip.
    assert!(text.contains("\"O\"\"Brien, Jr\""), "quoted name lost");
    assert!(text.contains(",Nguyễn,") && text.contains(",Zoë,") && text.contains(",José,"));
    // First occurrence wins: no key twice.
    let mut keys = std::collections::HashSet::new();
    for line in text.lines().skip(1).filter(|l| !l.contains('"')) {
        let f: Vec<&str> = line.split(',').collect();
        assert!(keys.insert((f[1].to_string(), f[2].to_string(), f[3].to_string())), "duplicate key in {line}");
    }

    let rejects = json_lines(&dir.path().join("rejects.ndjson"));
    assert_eq!(rejects.len(), SAMPLE_READER_REJECTS + SAMPLE_RULE_REJECTS);
    let by_op = |op: &str| rejects.iter().filter(|r| r["operator"] == op).count();
    assert_eq!(by_op("names"), SAMPLE_READER_REJECTS);
    assert_eq!(by_op("valid"), SAMPLE_RULE_REJECTS);
    for r in &rejects {
        assert!(r["line"].as_u64().is_some_and(|l| l >= 2), "every reject has its line: {r}");
        assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // Line numbers are the file's: check them against the source text.
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let lines: Vec<&[u8]> = sample.split(|&b| b == b'\n').collect();
    for r in rejects.iter().filter(|r| r["operator"] == "names") {
        let n = r["line"].as_u64().unwrap() as usize;
        let raw = r["raw"].as_str().unwrap();
        assert_eq!(String::from_utf8_lossy(lines[n - 1]), raw, "line {n}");
    }
    let rules: std::collections::BTreeSet<&str> = rejects.iter().filter_map(|r| r["rule"].as_str()).collect();
    for rule in ["columns", "parse", "utf8", "max", "min", "one_of", "required", "max_len"] {
        assert!(rules.contains(rule), "no reject for rule {rule}: {rules:?}");
    }

    // The summary counts what happened.
    let s = stdout(&o);
    assert!(s.contains("pipeline babynames completed"), "{s}");
    let row =
        |id: &str| s.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no {id} row in {s}")).to_string();
    let nums =
        |l: String| -> Vec<String> { l.split_whitespace().skip(3).take(4).map(|x| x.replace(',', "")).collect() };
    assert_eq!(nums(row("names")), [SAMPLE_LINES.to_string(), "3015".into(), "5".into(), "0".into()]);
    assert_eq!(
        nums(row("unique")),
        ["3009".to_string(), SAMPLE_UNIQUE.to_string(), "0".into(), SAMPLE_DUPLICATES.to_string()]
    );
}

#[test]
fn running_twice_gives_identical_output() {
    let dir = out_dir();
    assert!(run_babynames(dir.path(), &[], &["run"]).status.success());
    let first = std::fs::read(dir.path().join("babynames.csv")).unwrap();
    assert!(run_babynames(dir.path(), &[], &["run"]).status.success());
    assert_eq!(first, std::fs::read(dir.path().join("babynames.csv")).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// Each invalid pipeline in tests/fixtures/invalid has its message snapshot.
#[test]
fn invalid_pipelines_are_reported_with_file_line_column() {
    let fixtures = repo().join("tests/fixtures/invalid");
    let mut names: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10);
    for name in names {
        let rel = format!("tests/fixtures/invalid/{name}");
        let o = run(&["validate", &rel], &[]);
        assert_eq!(o.status.code(), Some(2), "{name} should be refused: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(&format!("--> {rel}:")), "{name}: no file:line:column in\n{err}");
        assert_snapshot(&format!("validate/{}.txt", name.trim_end_matches(".toml")), &err);
    }
}

#[test]
fn every_error_in_a_file_is_reported_not_just_the_first() {
    let o = run(&["validate", "tests/fixtures/invalid/many_errors.toml"], &[]);
    let err = stderr(&o);
    for needle in [
        "unknown section `pipline`",
        "`pth`",
        "unknown transform kind `validat`",
        "unknown input `unknown_thing`",
        "missing field `path`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}

/// Every pipeline in pipelines/ gets a drawing snapshot in each format.
#[test]
fn graphs_of_every_pipeline_match_their_snapshots() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(files.contains(&"babynames.toml".to_string()));
    for f in files {
        for format in ["ascii", "dot", "mermaid"] {
            // A sync worker's file names its partition from the
            // environment, on purpose without a default.
            let o = run(&["graph", &format!("pipelines/{f}"), "--format", format], &[("PARTITION", "0")]);
            assert!(o.status.success(), "{f} {format}: {}", stderr(&o));
            assert_snapshot(&format!("graph/{}.{format}", f.trim_end_matches(".toml")), &stdout(&o));
        }
    }
}

/// A source much faster than its sink must wait for it: memory stays flat
/// whatever the input size.
#[test]
fn backpressure_keeps_memory_bounded_with_a_slow_sink() {
    let dir = out_dir();
    let pipeline = |csv: &Path| {
        format!(
            r#"
[pipeline]
batch_size = 8192
channel_capacity = 2
[sources.big]
kind = "file"
path = "{}"
{SCHEMA}
[sinks.slow]
kind = "blackhole"
inputs = ["big"]
delay_ms = 15
"#,
            csv.display()
        )
    };
    let small = dir.path().join("small.csv");
    let big = dir.path().join("big.csv");
    write_big_csv(&small, 20_000);
    write_big_csv(&big, 1_500_000);
    let big_bytes = std::fs::metadata(&big).unwrap().len();
    assert!(big_bytes > 40_000_000, "input must dwarf the allowance below: {big_bytes}");

    let p_small = write_pipeline(dir.path(), "small.toml", &pipeline(&small));
    let p_big = write_pipeline(dir.path(), "big.toml", &pipeline(&big));
    let o_small = run(&["run", &p_small], &[]);
    assert!(o_small.status.success(), "{}", stderr(&o_small));
    let t = Instant::now();
    let o_big = run(&["run", &p_big], &[]);
    assert!(o_big.status.success(), "{}", stderr(&o_big));
    // 184 batches at 15 ms: the sink really was the bottleneck.
    assert!(t.elapsed() >= Duration::from_millis(184 * 15));
    let (a, b) = (peak_mib(&stdout(&o_small)), peak_mib(&stdout(&o_big)));
    // Without backpressure the source would buffer most of ~60 MB of batches.
    assert!(b - a < 24.0, "peak memory grew from {a} MiB to {b} MiB with input size");
}

fn count_tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .count()
}

/// A pipeline in `dir`: `rows` generated rows into a CSV file sink `out.csv`
/// and, beside it, a blackhole that sleeps `delay_ms` per batch (so the
/// source is throttled by backpressure). Returns (pipeline path, output path).
fn slow_fanout(
    dir: &Path,
    rows: usize,
    batch_size: usize,
    capacity: usize,
    delay_ms: u64,
) -> (String, std::path::PathBuf) {
    let big = dir.join("big.csv");
    write_big_csv(&big, rows);
    let out = dir.join("out.csv");
    let p = write_pipeline(
        dir,
        "p.toml",
        &format!(
            r#"
[pipeline]
batch_size = {batch_size}
channel_capacity = {capacity}
[pipeline.checkpoint]
interval = "off"
[sources.big]
kind = "file"
path = "{}"
[sinks.out]
kind = "file"
inputs = ["big"]
path = "{}"
[sinks.slow]
kind = "blackhole"
inputs = ["big"]
delay_ms = {delay_ms}
"#,
            big.display(),
            out.display()
        ),
    );
    (p, out)
}

/// Starts `engine run p` with piped output and sends it `signals` SIGTERMs,
/// the first after `first`, then 100 ms apart.
fn run_and_sigterm(p: &str, first: Duration, signals: usize) -> (std::process::Output, Duration) {
    let child = engine()
        .args(["run", p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(first);
    let started = Instant::now();
    for _ in 0..signals {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    (o, started.elapsed())
}

/// SIGTERM mid-run: sources stop, what is in flight is drained, the output
/// file is complete (renamed into place, every line whole), exit code 143.
#[test]
fn sigterm_mid_run_drains_and_leaves_complete_files() {
    let dir = out_dir();
    let (p, out) = slow_fanout(dir.path(), 600_000, 4096, 2, 20);
    let (o, _) = run_and_sigterm(&p, Duration::from_millis(1200), 1);
    assert_eq!(o.status.code(), Some(143), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("SIGTERM"), "{}", stderr(&o));
    assert!(stdout(&o).contains("interrupted by SIGTERM"), "{}", stdout(&o));
    let text = std::fs::read_to_string(&out).expect("the output was published");
    assert!(text.ends_with('\n'));
    let rows = text.lines().count() - 1;
    assert!(rows > 0 && rows < 600_000, "partial but non-empty: {rows}");
    assert!(text.lines().skip(1).all(|l| l.split(',').count() == 5), "a torn line");
    assert_eq!(count_tmp_files(dir.path()), 0);
}

/// The first operator error stops everything; the message names the
/// operator; no half-written output is published.
#[test]
fn a_failing_operator_stops_the_run_and_publishes_nothing() {
    let dir = out_dir();
    let out = dir.path().join("out.csv");
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[sources.names]
kind = "file"
path = "pipelines/data/NationalNames.sample.csv"
on_error = "fail"
{SCHEMA}
[sinks.out]
kind = "file"
inputs = ["names"]
path = "{}"
"#,
            out.display()
        ),
    );
    let o = run(&["run", &p], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("operator `names` failed: bad line 123"), "{err}");
    assert!(!out.exists(), "a failed run must not publish its output");
    assert_eq!(count_tmp_files(dir.path()), 0);
}

#[test]
fn a_missing_input_file_fails_before_anything_runs() {
    let dir = out_dir();
    let o = run_babynames(dir.path(), &[("BABYNAMES_CSV", "/nonexistent/NationalNames.csv")], &["run"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("operator `names` failed: cannot open /nonexistent/NationalNames.csv"), "{err}");
}

/// CSV -> Parquet -> (select) -> CSV: the Parquet writer and reader agree,
/// and `select` reshapes as the fetch pipeline needs.
#[test]
fn parquet_round_trip_through_our_own_sinks_and_sources() {
    let dir = out_dir();
    let pq = dir.path().join("names.parquet");
    let back = dir.path().join("back.csv");
    let to_parquet = write_pipeline(
        dir.path(),
        "a.toml",
        &format!(
            r#"
[sources.names]
kind = "file"
path = "pipelines/data/NationalNames.sample.csv"
{SCHEMA}
[sinks.pq]
kind = "file"
inputs = ["names"]
path = "{}"
"#,
            pq.display()
        ),
    );
    assert!(run(&["run", &to_parquet], &[]).status.success());
    let from_parquet = write_pipeline(
        dir.path(),
        "b.toml",
        &format!(
            r#"
[sources.pq]
kind = "file"
path = "{}"
[transforms.shape]
kind = "select"
inputs = ["pq"]
row_number = "Row"
columns = [{{ name = "name", from = "Name" }}, {{ name = "year", from = "Year", type = "float64" }}]
[sinks.csv]
kind = "file"
inputs = ["shape"]
path = "{}"
"#,
            pq.display(),
            back.display()
        ),
    );
    let o = run(&["run", &from_parquet], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&back).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Row,name,year"));
    assert_eq!(lines.next(), Some("1,Mary,1880.0"));
    assert_eq!(csv_rows(&back), SAMPLE_LINES - SAMPLE_READER_REJECTS);
}

#[test]
fn json_logs_carry_the_operator_span() {
    let dir = out_dir();
    let o = run_babynames(dir.path(), &[], &["--log-format", "json", "run"]);
    assert!(o.status.success());
    let err = stderr(&o);
    let events: Vec<serde_json::Value> =
        err.lines().map(|l| serde_json::from_str(l).expect("each log line is JSON")).collect();
    assert!(
        events.iter().any(|e| e["span"]["operator"] == "names" && e["level"] == "INFO"),
        "no event inside the names operator span:\n{err}"
    );
}

/// /metrics, /health/live and /health/ready answer while a pipeline runs.
#[test]
fn metrics_endpoint_serves_prometheus_text_while_running() {
    use std::io::{Read, Write};
    let dir = out_dir();
    let big = dir.path().join("big.csv");
    write_big_csv(&big, 200_000);
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[pipeline]
batch_size = 4096
[sources.big]
kind = "file"
path = "{}"
[sinks.slow]
kind = "blackhole"
inputs = ["big"]
delay_ms = 40
"#,
            big.display()
        ),
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = engine()
        .args(["run", &p, "--metrics-addr", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Some(m) = get("/metrics")
            && m.contains("engine_rows_in_total")
            && m.contains("engine_channel_fill_ratio")
        {
            metrics = m;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = get("/health/live").unwrap_or_default();
    let ready = get("/health/ready").unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(metrics.contains("engine_rows_out_total{operator=\"big\",port=\"out\"}"), "{metrics}");
    assert!(metrics.contains("engine_rows_in_total{operator=\"slow\"}"), "{metrics}");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

/// A sink that finished early must not publish when another operator fails
/// later: outputs of a failed run stay as they were before it.
#[test]
fn a_failed_run_leaves_earlier_outputs_untouched() {
    let dir = out_dir();
    let rejects = dir.path().join("rejects.ndjson");
    std::fs::write(&rejects, "OLD\n").unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[sources.names]
kind = "file"
path = "pipelines/data/NationalNames.sample.csv"
{SCHEMA}
[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.NoSuchColumn]
required = true
[sinks.out]
kind = "blackhole"
inputs = ["valid"]
[sinks.rejects]
kind = "file"
inputs = ["names.rejects"]
path = "{}"
"#,
            rejects.display()
        ),
    );
    let o = run(&["run", &p], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("operator `valid` failed: invalid configuration: rules name column `NoSuchColumn`"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&rejects).unwrap(), "OLD\n");
    assert_eq!(count_tmp_files(dir.path()), 0);
}

/// A second SIGTERM while draining aborts: the batch in hand finishes, the
/// queue is not drained, exit 143, and the output is discarded, not
/// published half-done.
#[test]
fn a_second_sigterm_aborts_and_publishes_nothing() {
    let dir = out_dir();
    let (p, out) = slow_fanout(dir.path(), 100_000, 1024, 4, 400);
    let (o, elapsed) = run_and_sigterm(&p, Duration::from_millis(800), 2);
    // Draining 4 queued batches at 400 ms each would take over 1.5 s.
    assert!(elapsed < Duration::from_millis(1400), "abort was not prompt: {elapsed:?}");
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(stdout(&o).contains("aborted by a second SIGTERM"), "{}", stdout(&o));
    assert!(!out.exists(), "an aborted run must not publish");
    assert_eq!(count_tmp_files(dir.path()), 0);
}
