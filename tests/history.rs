//! `engine run --state DIR` keeps a run history (SQLite) that
//! `engine runs --state DIR` reads: outcomes, exit codes, the failing
//! operator, figures; a run killed with SIGKILL is recorded as lost by the
//! next run, which resumes from its checkpoint.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::out_dir;
use crate::util::*;

fn pipeline(dir: &std::path::Path, slow_ms: u64) -> String {
    write_pipeline(
        dir,
        "hist.toml",
        &format!(
            r#"[pipeline]
name = "hist"
batch_size = 1000
[pipeline.checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[sources.names]
kind = "file"
path = "${{INPUT}}"
{SCHEMA}

[sinks.out]
kind = "file"
inputs = ["names"]
path = "{dir}/out.csv"

[sinks.slow]
kind = "blackhole"
inputs = ["names"]
delay_ms = {slow_ms}
"#,
            dir = dir.display()
        ),
    )
}

fn history(state: &str) -> Vec<Value> {
    let o = run(&["runs", "--state", state, "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).lines().map(|l| serde_json::from_str(l).expect("a JSON line per run")).collect()
}

#[test]
fn history_records_outcomes_and_the_failing_operator() {
    let dir = out_dir();
    let state = dir.path().join("state").display().to_string();
    let file = pipeline(dir.path(), 0);
    let missing = dir.path().join("missing.csv").display().to_string();
    let sample = repo().join("pipelines/data/NationalNames.sample.csv").display().to_string();
    let o = run(&["run", "--no-progress", "--state", &state, &file], &[("INPUT", &missing)]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["run", "--no-progress", "--state", &state, &file], &[("INPUT", &sample)]);
    assert!(o.status.success(), "{}", stderr(&o));

    let runs = history(&state);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (ok, failed) = (&runs[0], &runs[1]);
    assert_eq!((ok["outcome"].as_str(), ok["exit_code"].as_i64()), (Some("completed"), Some(0)));
    assert_eq!((failed["outcome"].as_str(), failed["exit_code"].as_i64()), (Some("failed"), Some(1)));
    assert_eq!(failed["failed_operator"], "names");
    assert!(failed["error"].as_str().unwrap().contains("missing.csv"), "{failed}");
    assert_eq!(ok["trigger"], "cli");
    assert_eq!(ok["pipeline"], "hist");
    // The figures are the end-of-run report's: 3,020 lines, 5 unreadable.
    assert_eq!(ok["rows_read"], 3015);
    assert_eq!(ok["rows_rejected"], 5);
    let ops: Vec<&str> =
        ok["report"]["operators"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ops, ["names", "out", "slow"]);
    assert!(ok["ended_at_ms"].as_i64().unwrap() >= ok["started_at_ms"].as_i64().unwrap());

    let table = stdout(&run(&["runs", "--state", &state], &[]));
    assert!(table.lines().nth(1).unwrap().contains("completed"), "{table}");
    assert!(table.lines().nth(2).unwrap().contains("failed") && table.contains("names: "), "{table}");
    let o = run(&["runs", "--state", &dir.path().join("nowhere").display().to_string()], &[]);
    assert!(stderr(&o).contains("no run history in"), "{}", stderr(&o));
}

#[test]
fn history_records_a_killed_run_as_lost_and_the_next_one_resumes() {
    let dir = out_dir();
    let state = dir.path().join("state").display().to_string();
    let csv = dir.path().join("big.csv");
    write_big_csv(&csv, 60_000);
    let file = pipeline(dir.path(), 50);
    let mut c = engine();
    c.args(["run", "--no-progress", "--state", &state, &file])
        .env("INPUT", &csv)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    // Running (its store is locked while it runs, so the history says so),
    // then long enough for checkpoints every 100 ms to be taken.
    let t = Instant::now();
    while !std::path::Path::new(&state).join("history.db").exists() || history(&state)[0]["outcome"] != "running" {
        assert!(t.elapsed() < Duration::from_secs(60), "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(history(&state)[0]["outcome"], "running", "the run is still going (a slow sink)");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let o = run(&["run", "--no-progress", "--state", &state, &file], &[("INPUT", csv.to_str().unwrap())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("recorded as lost"), "{}", stderr(&o));
    let runs = history(&state);
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["outcome"], "lost");
    assert_eq!(runs[0]["outcome"], "completed");
    assert!(runs[0]["resumed_from"].as_i64().is_some_and(|e| e >= 1), "the next run resumed: {}", runs[0]);
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 60_000);
}
