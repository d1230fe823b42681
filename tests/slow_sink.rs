//! Checkpoints keep up with a slow sink: a HubSpot sink paced by the rate
//! limit (the simulator at 100 requests per second, ten times the real
//! Starter limit) behind the default batch size and channel capacity.
//! Checkpoints commit within twice their interval, keep coming after the
//! source has read its last row, a kill -9 re-sends at most about one
//! interval of rows, and a SIGTERM stops within about two intervals.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use simulators::hubspot::{Config, Handle};

use crate::util::*;

const ROWS: usize = 60_000;
const INTERVAL_MS: u64 = 1000;

fn sim(rt: &tokio::runtime::Runtime) -> Handle {
    let cfg = Config {
        window_requests: 100,
        window: Duration::from_secs(1),
        daily: u64::MAX,
        properties: simulators::hubspot::babynames_properties(),
        ..Config::default()
    };
    rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("simulator")
}

fn pipeline(dir: &Path, sim: &Handle) -> String {
    let input = dir.join("in.csv");
    if !input.exists() {
        write_big_csv(&input, ROWS);
    }
    write_pipeline(
        dir,
        "slow.toml",
        &format!(
            r#"
[pipeline]
name = "slow-sink"
[pipeline.checkpoint]
interval = "{INTERVAL_MS}ms"
dir = "{dir}/checkpoints"
[sources.names]
kind = "file"
path = "{input}"
[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Count]
min = 1
[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]
[sinks.crm]
kind = "hubspot"
inputs = ["unique"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ baby_count = "{{Count}}" }}
rate_limit = {{ requests = 100, per = "1s" }}
"#,
            dir = dir.display(),
            input = input.display(),
            base = sim.base_url()
        ),
    )
}

/// `duration_ms` of every "checkpoint committed" log line.
fn commit_times(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("checkpoint committed"))
        .filter_map(|l| l.split("duration_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

#[test]
fn checkpoints_commit_within_two_intervals_behind_a_rate_limited_sink() {
    let rt = runtime();
    let sim = sim(&rt);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim);
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), ROWS);
    let times = commit_times(&stderr(&o));
    // About 6 s of sync at ~10k rows/s: a checkpoint every second, the
    // last after the source had read everything.
    assert!(times.len() >= 4, "{times:?}\n{}", stderr(&o));
    let worst = times.iter().copied().max().unwrap_or(0);
    assert!(worst <= 2 * INTERVAL_MS, "a checkpoint took {worst} ms: {times:?}");
}

/// Checkpoints go on after the source's last row while the sinks finish:
/// here 3,000 HubSpot archives at 20 requests a second (1.5 s) after a
/// version of the input without those names.
#[test]
fn checkpoints_go_on_while_the_sinks_finish_after_the_last_row() {
    let rt = runtime();
    let cfg = Config {
        window_requests: 40,
        window: Duration::from_secs(1),
        daily: u64::MAX,
        properties: simulators::hubspot::babynames_properties(),
        ..Config::default()
    };
    let sim = rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("simulator");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    write_big_csv(&input, 3_001);
    let p = write_pipeline(
        dir.path(),
        "tail.toml",
        &format!(
            r#"
[pipeline]
name = "tail"
[pipeline.checkpoint]
interval = "200ms"
dir = "{dir}/checkpoints"
[sources.names]
kind = "file"
path = "{input}"
[transforms.changed]
kind = "changes"
inputs = ["names"]
key = ["Name", "Year", "Gender"]
ignore = ["Id"]
[sinks.crm]
kind = "hubspot"
inputs = ["changed"]
deletes = ["changed.deleted"]
max_delete_ratio = 1.0
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ baby_count = "{{Count}}" }}
rate_limit = {{ requests = 20, per = "1s" }}
concurrency = 1
"#,
            dir = dir.path().display(),
            input = input.display(),
            base = sim.base_url()
        ),
    );
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), 3_001);
    // Version 2 keeps one name: 3,000 archives, 30 requests at 20/s.
    let text = std::fs::read_to_string(&input).unwrap();
    std::fs::write(&input, text.lines().take(2).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), 1);
    assert_eq!(sim.stats().archive_requests, 30);
    // The source read its one row at once; a checkpoint after that covers
    // the archives (a barrier passes `changes` once it has queued its
    // deleted keys, so it lands behind the last of them).
    let list = stdout(&run(&["checkpoints", "list", &p], &[]));
    let at_end =
        list.lines().filter(|l| l.contains("resumable") && l.contains("end of") && l.contains("(1 rows)")).count();
    assert!(at_end >= 1, "a checkpoint after the last row:\n{list}");
}

#[test]
fn a_kill_9_re_sends_about_one_interval_and_a_sigterm_stops_within_two() {
    let rt = runtime();
    let sim = sim(&rt);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim);

    // kill -9 half-way through.
    let mut child =
        engine().args(["run", "--no-progress", &p]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while sim.contacts().len() < ROWS / 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // SIGTERM in the resumed run: it stops at a checkpoint, quickly.
    let mut child =
        engine().args(["run", "--no-progress", &p]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(143));
    assert!(took <= Duration::from_millis(2 * INTERVAL_MS + 500), "the drain took {took:?}");

    // And to the end.
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), ROWS);
    // Rows sent more than once: the kill's replay plus the SIGTERM's (a
    // drain stops exactly at a checkpoint, so it replays nothing). At
    // ~9,800 rows/s, one interval is ~9,800 rows; 4 requests of 100 may be
    // in flight.
    let resent = sim.stats().inputs_received - ROWS as u64;
    let limit = 9_800 * INTERVAL_MS / 1000 + 4 * 100;
    assert!(resent <= limit, "{resent} rows re-sent; at most {limit} expected");
}
