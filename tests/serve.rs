//! `engine serve` as a user runs it: the real binary, real child runs, the
//! HTTP API over a real socket, kill -9 of the service, MariaDB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const TOKEN: &str = "serve-test-token";

/// A running `engine serve`.
struct Service {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Service {
    fn start(pipelines: &Path, state: &Path, extra: &[&str]) -> Service {
        let log = state.with_extension("serve.log");
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let mut c = engine();
        c.args(["serve", pipelines.to_str().unwrap(), "--listen", "127.0.0.1:0", "--state", state.to_str().unwrap()])
            .args(["--grace", "20s"])
            .args(extra)
            .env("ENGINE_API_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = c.spawn().expect("engine serve starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("the listening line");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .filter(|_| line.contains("listening on"))
            .unwrap_or_else(|| {
                panic!("no listening line: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
            })
            .to_string();
        // Keep reading stdout so the service never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Service { child, addr, log }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (s, b) = http(&self.addr, "GET", path, None, "");
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, b) = http(&self.addr, "POST", path, token, "");
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    fn runs(&self, pipeline: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("/api/runs?pipeline={pipeline}&limit=1000"));
        assert_eq!(s, 200, "{v}");
        v["runs"].as_array().cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit code.
    fn stop(mut self) -> i32 {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().expect("wait").code().unwrap_or(-1);
        code
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the service");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Reads Server-Sent Events from `path` until an `end` event (or
/// `timeout`); returns (event, data) pairs with the time each arrived.
fn sse(addr: &str, path: &str, timeout: Duration) -> Vec<(String, String, Instant)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut events = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    let until = Instant::now() + timeout;
    let mut line = String::new();
    while Instant::now() < until {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => continue,
        }
        // Chunk-size lines of the chunked encoding carry no colon.
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if l.is_empty() && !event.is_empty() {
            let done = event == "end";
            events.push((std::mem::take(&mut event), std::mem::take(&mut data), Instant::now()));
            if done {
                break;
            }
        }
    }
    events
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// A pipeline of `rows` rows from `input` into a blackhole that waits
/// `delay_ms` per batch of 500, with a schedule (`cron`, or none) and
/// extra schedule options.
fn pipeline(
    dir: &Path,
    name: &str,
    input: &Path,
    delay_ms: u64,
    cron: Option<&str>,
    schedule_extra: &str,
    more: &str,
) -> String {
    let schedule = match cron {
        Some(c) => format!("[pipeline.schedule]\ncron = \"{c}\"\n{schedule_extra}\n"),
        None => String::new(),
    };
    write_pipeline(
        dir,
        &format!("{name}.toml"),
        &format!(
            r#"[pipeline]
name = "{name}"
batch_size = 500
{schedule}
[pipeline.checkpoint]
interval = "200ms"
dir = "{cp}/cp-{name}"

[sources.names]
kind = "file"
path = "{input}"
{SCHEMA}

[sinks.hole]
kind = "blackhole"
inputs = ["names"]
delay_ms = {delay_ms}
{more}"#,
            cp = dir.parent().unwrap().display(),
            input = input.display()
        ),
    )
}

fn small_input(dir: &Path, rows: usize) -> PathBuf {
    let p = dir.join(format!("names-{rows}.csv"));
    write_big_csv(&p, rows);
    p
}

fn no_process(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie is dead, only not yet reaped.
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_schedule_every_2s_runs_and_a_slow_one_skips_its_overlapping_slots() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 2_000);
    pipeline(&pipes, "quick", &input, 0, Some("*/2 * * * * *"), "", "");
    // 10 batches × 500 ms: each run takes ~5 s, so most slots find it busy.
    pipeline(&pipes, "slow", &input, 500, Some("*/2 * * * * *"), "on_overlap = \"skip\"", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    std::thread::sleep(Duration::from_secs(11));

    let quick = svc.runs("quick");
    let done = quick.iter().filter(|r| r["outcome"] == "completed" && r["trigger"] == "schedule").count();
    assert!(done >= 3, "quick ran {done} times in 11 s: {quick:#?}\n{}", svc.log());

    let slow = svc.runs("slow");
    let skipped: Vec<&Value> = slow.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert!(skipped.len() >= 2, "no skipped slots recorded: {slow:#?}");
    assert!(skipped.iter().all(|r| r["error"].as_str().unwrap_or("").contains("still running")), "{skipped:#?}");
    // Runs that did run never overlap.
    let mut ran: Vec<(i64, i64)> = slow
        .iter()
        .filter(|r| r["outcome"] != "skipped")
        .map(|r| (r["started_at_ms"].as_i64().unwrap(), r["ended_at_ms"].as_i64().unwrap_or(i64::MAX)))
        .collect();
    ran.sort();
    assert!(ran.len() >= 2, "{slow:#?}");
    for w in ran.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlap: {w:?}\n{slow:#?}");
    }

    // The pipeline list shows schedule and next fire times.
    let (s, list) = svc.get("/api/pipelines");
    assert_eq!(s, 200);
    let names: Vec<&str> = list["pipelines"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["quick", "slow"]);
    assert_eq!(list["pipelines"][0]["next_fire_times"].as_array().unwrap().len(), 5);
    assert_eq!(list["pipelines"][0]["schedule"]["cron"], "*/2 * * * * *");

    // SIGTERM: the slow run stops at a checkpoint, the service exits 0,
    // nothing is left running.
    let running = svc.get("/api/pipelines/slow").1["running"]["pid"].as_u64();
    let code = svc.stop();
    assert_eq!(code, 0);
    if let Some(pid) = running {
        assert!(no_process(pid), "run {pid} outlived the service");
    }
}

#[test]
fn catch_up_after_downtime_runs_once_and_none_records_the_missed_slots() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 500);
    // Every 2 s, but 6 s between the checks below fits a handful of slots.
    pipeline(&pipes, "latest", &input, 0, Some("*/2 * * * * *"), "catch_up = \"latest\"", "");
    pipeline(&pipes, "skipper", &input, 0, Some("*/2 * * * * *"), "catch_up = \"none\"", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    wait_for("a first scheduled run", Duration::from_secs(10), || {
        svc.runs("latest").iter().any(|r| r["outcome"] == "completed")
    });
    assert_eq!(svc.stop(), 0);
    std::thread::sleep(Duration::from_secs(6));

    let svc = Service::start(&pipes, &state, &[]);
    wait_for("the catch-up run", Duration::from_secs(10), || {
        svc.runs("latest").iter().any(|r| r["trigger"] == "catch-up" && r["outcome"] == "completed")
    });
    std::thread::sleep(Duration::from_secs(1));
    let latest = svc.runs("latest");
    let catch_ups = latest.iter().filter(|r| r["trigger"] == "catch-up").count();
    assert_eq!(catch_ups, 1, "{latest:#?}");
    let skipper = svc.runs("skipper");
    assert!(skipper.iter().all(|r| r["trigger"] != "catch-up"), "{skipper:#?}");
    let missed: Vec<&Value> = skipper.iter().filter(|r| r["outcome"] == "missed").collect();
    assert_eq!(missed.len(), 1, "{skipper:#?}");
    let why = missed[0]["error"].as_str().unwrap();
    assert!(why.contains("missed while the service was down"), "{why}");
    svc.stop();
}

#[test]
fn kill_9_of_the_service_kills_its_run_records_it_lost_and_the_next_run_resumes_into_mariadb() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = dir.path().join("names.csv");
    let expected = crate::crash::write_input(&input, 100_000);
    let db = crate::sql_sink::TestDb::new("serve");
    let sink = format!(
        r#"
[transforms.unique]
kind = "dedupe"
inputs = ["names"]
key = ["Name", "Year", "Gender"]

[sinks.db]
kind = "sql"
inputs = ["unique"]
url = "{}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
"#,
        db.url()
    );
    // No schedule: runs start through the API. 200 batches × 40 ms ≈ 8 s.
    pipeline(&pipes, "todb", &input, 40, None, "", &sink);
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    let (s, v) = svc.post("/api/pipelines/todb/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let mut pid = 0;
    wait_for("a committed checkpoint", Duration::from_secs(20), || {
        let (_, p) = svc.get("/api/pipelines/todb");
        pid = p["running"]["pid"].as_u64().unwrap_or(pid);
        let live = std::fs::read_to_string(state.join("live").join(format!("{run}.json"))).unwrap_or_default();
        serde_json::from_str::<Value>(&live).ok().and_then(|v| v["checkpoints"]["committed"].as_u64()).unwrap_or(0) >= 2
    });
    assert!(pid > 0);
    let mut svc = svc;
    svc.child.kill().unwrap(); // SIGKILL
    svc.child.wait().unwrap();
    wait_for("the run to die with the service", Duration::from_secs(5), || no_process(pid));

    let svc = Service::start(&pipes, &state, &[]);
    let lost = svc.runs("todb");
    assert_eq!(lost[0]["id"], run);
    assert_eq!(lost[0]["outcome"], "lost", "{lost:#?}");
    assert!(
        db.scalar("SELECT COUNT(*) FROM baby_names") < expected.len() as i64,
        "the first run was not stopped mid-way"
    );

    let (s, v) = svc.post("/api/pipelines/todb/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let second = v["run_id"].as_str().unwrap().to_string();
    wait_for("the second run to complete", Duration::from_secs(60), || {
        svc.get(&format!("/api/runs/{second}")).1["outcome"] == "completed"
    });
    let row = svc.get(&format!("/api/runs/{second}")).1;
    assert!(row["resumed_from"].as_i64().is_some_and(|e| e >= 2), "did not resume: {row:#}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), expected.len() as i64);
    let sum: i64 = db.scalar("SELECT CAST(SUM(source_id * 31 + count) AS SIGNED) FROM baby_names");
    assert_eq!(sum, expected.iter().map(|r| r.0 * 31 + r.4).sum::<i64>());
    svc.stop();
}

#[test]
fn the_api_needs_the_token_to_trigger_and_stop_and_streams_live_figures_that_match_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 8_000);
    // About 3 s.
    pipeline(&pipes, "api", &input, 60, None, "", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);

    let (s, v) = svc.post("/api/pipelines/api/runs", None);
    assert_eq!(s, 401, "{v}");
    let (s, _) = svc.post("/api/pipelines/api/runs", Some("wrong"));
    assert_eq!(s, 401);
    let (s, _) = svc.post("/api/pipelines/nope/runs", Some(TOKEN));
    assert_eq!(s, 404);
    assert!(svc.runs("api").is_empty(), "a refused call started a run");

    let (s, v) = svc.post("/api/pipelines/api/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let (s, _) = svc.post("/api/pipelines/api/runs", Some(TOKEN));
    assert_eq!(s, 409, "a second run of a running pipeline");

    let events = sse(&svc.addr, &format!("/api/runs/{run}/live"), Duration::from_secs(30));
    let figures: Vec<(Value, Instant)> =
        events.iter().filter(|e| e.0 == "figures").map(|e| (serde_json::from_str(&e.1).unwrap(), e.2)).collect();
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("end"), "{events:?}");
    assert!(figures.len() >= 4, "{} figure updates", figures.len());
    let span = figures.last().unwrap().1 - figures[0].1;
    let rate = (figures.len() - 1) as f64 / span.as_secs_f64().max(0.001);
    assert!(rate >= 2.0, "{rate:.1} updates/s");
    // Counts only grow, and never pass what the run reports at its end.
    let end: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(end["outcome"], "completed", "{end:#}");
    let report_rows = |id: &str, field: &str| {
        end["report"]["operators"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap()[field].as_u64().unwrap()
    };
    let live_rows = |f: &Value, id: &str, field: &str| {
        f["operators"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap()[field].as_u64().unwrap()
    };
    let mut last = 0;
    for (f, _) in &figures {
        let n = live_rows(f, "hole", "rows_in");
        assert!(n >= last && n <= report_rows("hole", "rows_in"));
        last = n;
        // Channel fill is sampled 4 times a second: none before the first sample.
        assert!(f["channels"].as_array().is_some_and(|c| c.len() <= 1), "{f}");
    }
    assert!(figures.iter().any(|(f, _)| f["channels"][0]["edge"] == "names.out->hole"), "{figures:?}");
    assert!(last > 0 && last <= 8_000);
    assert_eq!(report_rows("hole", "rows_in"), 8_000);
    let mid = &figures[figures.len() / 2].0;
    assert!(mid["operators"][0]["rows_per_s"].as_f64().is_some(), "{mid}");
    assert!(figures.last().unwrap().0["checkpoints"]["committed"].as_u64().unwrap() >= 1);

    // The history and the one-run call agree with the stream's end.
    let (s, one) = svc.get(&format!("/api/runs/{run}"));
    assert_eq!(s, 200);
    assert_eq!(one["outcome"], "completed");
    assert_eq!(one["trigger"], "api");
    assert_eq!(one["rows_read"], 8_000);
    let (s, log) = http(&svc.addr, "GET", &format!("/api/runs/{run}/log?tail=5"), None, "");
    assert_eq!(s, 200);
    // stdout (the summary) and stderr (JSON log lines) both land there.
    assert!(log.lines().count() <= 5 && log.contains("completed in"), "{log}");
    let (_, whole) = http(&svc.addr, "GET", &format!("/api/runs/{run}/log?tail=10000"), None, "");
    assert!(whole.lines().any(|l| l.starts_with('{') && l.contains("\"level\"")), "{whole}");

    // Stop: refused without the token, then the run stops at a checkpoint.
    let (s, v) = svc.post("/api/pipelines/api/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let second = v["run_id"].as_str().unwrap().to_string();
    wait_for("the second run to start", Duration::from_secs(10), || {
        svc.get("/api/pipelines/api").1["running"]["run_id"] == second.as_str()
    });
    std::thread::sleep(Duration::from_millis(800));
    // The store belongs to the run while it goes.
    let (s, v) = svc.get("/api/pipelines/api/checkpoints");
    assert_eq!(s, 409, "{v}");
    let (s, _) = svc.post(&format!("/api/runs/{second}/stop"), None);
    assert_eq!(s, 401);
    let (s, v) = svc.post(&format!("/api/runs/{second}/stop"), Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    wait_for("the stopped run to end", Duration::from_secs(20), || {
        svc.get(&format!("/api/runs/{second}")).1["outcome"] == "interrupted"
    });
    let row = svc.get(&format!("/api/runs/{second}")).1;
    assert_eq!(row["exit_code"], 143, "{row:#}");
    assert!(row["rows_read"].as_i64().unwrap() < 8_000, "{row:#}");
    // The run records its end just before its process exits.
    wait_for("the service to see the run end", Duration::from_secs(10), || {
        svc.get("/api/pipelines/api").1["busy"] == false
    });
    let (s, _) = svc.post(&format!("/api/runs/{second}/stop"), Some(TOKEN));
    assert_eq!(s, 409, "stopping a run that ended");
    // Afterwards: what `engine checkpoints list` and `show` print.
    let (s, v) = svc.get("/api/pipelines/api/checkpoints");
    assert_eq!(s, 200, "{v}");
    let text = v["text"].as_str().unwrap();
    let cli = stdout(&crate::util::run(&["checkpoints", "list", pipes.join("api.toml").to_str().unwrap()], &[]));
    assert!(text.starts_with(&cli), "API:\n{text}\nCLI:\n{cli}");
    assert!(text.contains("epoch"), "{text}");
    svc.stop();
}

#[test]
fn every_operation_in_the_openapi_document_is_served_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 100);
    pipeline(&pipes, "doc", &input, 0, Some("0 3 * * *"), "timezone = \"Europe/Berlin\"", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    let (s, doc) = svc.get("/api/openapi.json");
    assert_eq!(s, 200);
    // A real run id, so that run routes have something to show.
    let (s, v) = svc.post("/api/pipelines/doc/runs", Some(TOKEN));
    assert_eq!(s, 202);
    let run = v["run_id"].as_str().unwrap().to_string();
    wait_for("the run to end", Duration::from_secs(20), || {
        svc.get(&format!("/api/runs/{run}")).1["outcome"] == "completed"
    });

    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let concrete = path.replace("{name}", "doc").replace("{id}", &run);
            // A stop of a finished run is a documented 409; a POST run
            // starts one (documented 202).
            let (status, body) = http(&svc.addr, &method.to_uppercase(), &concrete, Some(TOKEN), "");
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|c| c.as_str() == status.to_string()),
                "{method} {concrete} answered {status}, documented {documented:?}: {body}"
            );
            // Unknown names and ids give a documented 404 where one exists.
            if path.contains('{') && documented.iter().any(|c| *c == "404") {
                let missing = path.replace("{name}", "no-such").replace("{id}", "no-such");
                let (status, _) = http(&svc.addr, &method.to_uppercase(), &missing, Some(TOKEN), "");
                assert_eq!(status, 404, "{method} {missing}");
            }
            walked += 1;
            if concrete.ends_with("/runs") && method == "post" {
                wait_for("the extra run to end", Duration::from_secs(20), || {
                    svc.get("/api/pipelines/doc").1["busy"] == false
                });
            }
        }
    }
    assert_eq!(walked, 15);
    let (s, _) = svc.get("/api/nothing-here");
    assert_eq!(s, 404);
    // The pipeline's next fire times are at 03:00 Berlin.
    let (_, p) = svc.get("/api/pipelines/doc");
    assert!(p["next_fire_times"][0].as_str().unwrap().contains("T03:00:00+01:00[Europe/Berlin]"), "{p:#}");
    let (_, g) = svc.get("/api/pipelines/doc/graph");
    assert_eq!(g["edges"][0]["from"], "names");
    assert_eq!(g["edges"][0]["to"], "hole");
    svc.stop();
}

#[test]
fn bad_schedules_fail_validate_and_serve_at_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_input(dir.path(), 10);
    let p = pipeline(
        dir.path(),
        "bad",
        &input,
        0,
        Some("0 2 * * *"),
        "timezone = \"Europe/Berlinn\"\non_overlap = \"wait\"",
        "",
    );
    let o = run(&["validate", &p], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("bad.toml:6:") && err.contains("Europe/Berlinn"), "{err}");
    assert!(err.contains("on_overlap") && err.contains("\"skip\", \"queue\""), "{err}");
    let o = run(&["serve", &p, "--listen", "127.0.0.1:0", "--state", dir.path().join("st").to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "serve started with a bad file: {}", stderr(&o));
    assert!(stderr(&o).contains("Europe/Berlinn"));
    assert!(!stdout(&o).contains("listening"));

    let good = pipeline(dir.path(), "good", &input, 0, Some("30 2 * * *"), "timezone = \"Europe/Berlin\"", "");
    let o = run(&["serve", &good, "--dry-run"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("good: cron \"30 2 * * *\" in Europe/Berlin"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" 02:30:00 +0")).count(), 5, "{out}");
}

#[test]
fn a_run_past_its_timeout_stops_at_a_checkpoint_alerts_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 20_000);
    let rx = crate::alerts::Receiver::start(vec![]);
    let url = rx.url("/hook");
    let alerts = format!(
        "\n[alerts.hook]\nkind = \"webhook\"\nurl = \"{url}\"\non = [\"failed\", \"recovered\", \"timeout\"]\n"
    );
    // 40 batches × 100 ms ≈ 4 s; the timeout stops it after 1.5 s.
    let file = pipeline(&pipes, "slowpoke", &input, 100, None, "", &alerts);
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let o = run(&["run", "--no-progress", "--timeout", "1500ms", "--state", st, &file], &[]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("timeout: stopping at a checkpoint"), "{}", stderr(&o));
    let hooks = rx.bodies();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    assert_eq!((hooks[0]["condition"].as_str(), hooks[0]["action"].as_str()), (Some("timeout"), Some("trigger")));
    assert_eq!(hooks[0]["dedup_key"], "engine/slowpoke/timeout");

    let o = run(&["runs", "--state", st, "--json"], &[]);
    let first: Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(first["outcome"], "timeout");
    assert_eq!(first["exit_code"], 124);
    assert!(first["checkpoints"].as_i64().unwrap() >= 1, "{first:#}");

    // The next run resumes where the timeout stopped it, and resolves.
    let o = run(&["run", "--no-progress", "--state", st, &file], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming pipeline"), "{}", stderr(&o));
    let hooks = rx.bodies();
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert_eq!((hooks[1]["condition"].as_str(), hooks[1]["action"].as_str()), (Some("timeout"), Some("resolve")));
}

#[test]
fn a_failed_run_is_retried_with_backoff_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let missing = dir.path().join("not-there.csv");
    // Once a year: only the API starts it here.
    pipeline(&pipes, "flaky", &missing, 0, Some("0 0 1 1 *"), "retry = { attempts = 2, backoff = \"300ms\" }", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    let (s, v) = svc.post("/api/pipelines/flaky/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    wait_for("three failed runs", Duration::from_secs(30), || {
        svc.runs("flaky").iter().filter(|r| r["outcome"] == "failed").count() == 3
            && svc.get("/api/pipelines/flaky").1["busy"] == false
    });
    let mut runs = svc.runs("flaky");
    runs.reverse();
    let triggers: Vec<&str> = runs.iter().map(|r| r["trigger"].as_str().unwrap()).collect();
    assert_eq!(triggers, ["api", "retry", "retry"], "{runs:#?}");
    assert!(runs.iter().all(|r| r["failed_operator"] == "names"), "{runs:#?}");
    // Backoff doubles: ≥ 300 ms, then ≥ 600 ms between attempts.
    let gap = |a: &Value, b: &Value| b["started_at_ms"].as_i64().unwrap() - a["ended_at_ms"].as_i64().unwrap();
    assert!(gap(&runs[0], &runs[1]) >= 300 && gap(&runs[1], &runs[2]) >= 600, "{runs:#?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(svc.runs("flaky").len(), 3, "retried more than attempts");
    svc.stop();
}

#[test]
fn sighup_reloads_the_pipeline_folder_and_keeps_the_old_files_when_the_new_ones_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 10);
    pipeline(&pipes, "first", &input, 0, None, "", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    let names = |svc: &Service| -> Vec<String> {
        svc.get("/api/pipelines").1["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&svc), ["first"]);
    pipeline(&pipes, "second", &input, 0, Some("0 4 * * *"), "", "");
    unsafe { libc::kill(svc.child.id() as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(10), || names(&svc) == ["first", "second"]);

    std::fs::write(pipes.join("broken.toml"), "[pipeline]\nname = 3\n").unwrap();
    unsafe { libc::kill(svc.child.id() as i32, libc::SIGHUP) };
    wait_for("the refused reload to be logged", Duration::from_secs(10), || {
        svc.log().contains("the pipeline files have errors; the service keeps the ones it had")
    });
    assert!(svc.log().contains("broken.toml"), "the error names the file:\n{}", svc.log());
    assert_eq!(names(&svc), ["first", "second"]);
    // The API says so too, until a reload succeeds.
    let error = svc.get("/api/pipelines").1["reload_error"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("broken.toml") && error.contains("pipeline.name"), "{error}");
    std::fs::remove_file(pipes.join("broken.toml")).unwrap();
    unsafe { libc::kill(svc.child.id() as i32, libc::SIGHUP) };
    wait_for("a clean reload", Duration::from_secs(10), || svc.get("/api/pipelines").1["reload_error"].is_null());
    svc.stop();
}

#[test]
fn on_overlap_queue_runs_the_waiting_slot_right_after_the_current_run() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 1_500);
    // 3 batches × 1 s: each run outlasts the 2 s between slots.
    pipeline(&pipes, "queued", &input, 1000, Some("*/2 * * * * *"), "on_overlap = \"queue\"", "");
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    wait_for("three runs", Duration::from_secs(30), || {
        svc.runs("queued").iter().filter(|r| r["outcome"] == "completed").count() >= 2 && svc.runs("queued").len() >= 3
    });
    let mut runs = svc.runs("queued");
    runs.reverse();
    assert!(runs.iter().all(|r| r["outcome"] != "skipped"), "{runs:#?}");
    for w in runs.windows(2) {
        let (end, next) = (w[0]["ended_at_ms"].as_i64().unwrap(), w[1]["started_at_ms"].as_i64().unwrap());
        assert!(next >= end, "runs overlap: {runs:#?}");
        // The waiting slot starts as soon as the run before it ends.
        assert!(next - end < 1000, "a queued run waited {} ms: {runs:#?}", next - end);
    }
    svc.stop();
}

#[test]
fn a_run_that_dies_without_a_word_is_recorded_and_alerted_by_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 20_000);
    let rx = crate::alerts::Receiver::start(vec![]);
    let url = rx.url("/hook");
    let mounted = dir.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    let alerts = format!(
        "\n[secrets.files]\nkind = \"directory\"\npath = \"{}\"\n\n[alerts.hook]\nkind = \"webhook\"\nurl = \"{url}\"\n",
        mounted.display()
    );
    // A sink credential that is not there: the run stops before it starts.
    let bad = format!(
        "{alerts}\n[sinks.copy]\nkind = \"file\"\ninputs = [\"names\"]\npath = \"{}/SECRET[files.out_name].csv\"\n",
        dir.path().display()
    );
    pipeline(&pipes, "nosecret", &input, 0, None, "", &bad);
    // A slow one, to be killed.
    pipeline(&pipes, "victim", &input, 200, None, "", &alerts);
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);

    let (s, v) = svc.post("/api/pipelines/nosecret/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    wait_for("the alert", Duration::from_secs(20), || !rx.bodies().is_empty());
    let row = svc.get(&format!("/api/runs/{id}")).1;
    assert_eq!(row["outcome"], "invalid", "{row:#}");
    assert_eq!(row["exit_code"], 2);
    let hook = rx.bodies()[0].clone();
    assert_eq!((hook["condition"].as_str(), hook["run_id"].as_str()), (Some("failed"), Some(id.as_str())), "{hook:#}");
    assert!(hook["message"].as_str().unwrap().contains("files.out_name"), "{hook:#}");

    let (s, v) = svc.post("/api/pipelines/victim/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    let mut pid = 0;
    wait_for("the run's process", Duration::from_secs(10), || {
        pid = svc.get("/api/pipelines/victim").1["running"]["pid"].as_u64().unwrap_or(0);
        pid > 0
    });
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for("the killed run's alert", Duration::from_secs(20), || rx.bodies().len() >= 2);
    let row = svc.get(&format!("/api/runs/{id}")).1;
    assert_eq!(row["outcome"], "killed", "{row:#}");
    assert_eq!(row["exit_code"], 137);
    let hook = rx.bodies()[1].clone();
    assert_eq!(hook["pipeline"], "victim");
    assert!(hook["message"].as_str().unwrap().contains("killed by signal 9"), "{hook:#}");
    // The service is still up.
    assert_eq!(svc.get("/api/health").0, 200);
    svc.stop();
}

#[test]
fn the_console_in_a_real_browser_shows_the_dag_a_live_run_and_markup_as_text() {
    let chromium =
        std::process::Command::new(repo().join("scripts/ensure-chromium")).output().expect("scripts/ensure-chromium");
    assert!(chromium.status.success(), "scripts/ensure-chromium: {}", String::from_utf8_lossy(&chromium.stderr));
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 8_000);
    // No checkpoints: the message bound alone applies, so the slow sink's
    // input edge fills up and shows as the backpressure point.
    let slowed = write_pipeline(
        &pipes,
        "slowed.toml",
        &format!(
            r#"[pipeline]
name = "slowed"
batch_size = 500
channel_capacity = 2
[pipeline.checkpoint]
interval = "off"

[sources.names]
kind = "file"
path = "{}"
{SCHEMA}

[transforms.unique]
kind = "dedupe"
inputs = ["names"]
key = ["Id"]

[sinks.hole]
kind = "blackhole"
inputs = ["unique"]
delay_ms = 150

[sinks.rejects]
kind = "blackhole"
inputs = ["names.rejects"]
"#,
            input.display()
        ),
    );
    let xss = "<img src=x onerror=alert(1)>";
    let file = pipeline(&pipes, "xss", &input, 0, None, "", "");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("name = \"xss\"", &format!("name = \"xss\"\ndescription = \"{xss}\""));
    std::fs::write(&file, text).unwrap();
    let o = run(&["graph", &slowed, "--format", "json"], &[]);
    let graph: Value = serde_json::from_str(&stdout(&o)).expect("graph JSON");
    let (nodes, edges) = (graph["nodes"].as_array().unwrap().len(), graph["edges"].as_array().unwrap().len());
    assert_eq!((nodes, edges), (4, 3));

    // Rejected rows with markup in them, for the rejects page.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "Id,Name,Year,Gender,Count\n1,Ann,1990,F,5\n2,<b>Bo</b>,19x0,M,3\n3,Cy,1991,F,oops\n4,Di,1992,F\n",
    )
    .unwrap();
    let rejects_file = dir.path().join("rejects.ndjson");
    pipeline(
        &pipes,
        "rejecting",
        &bad,
        0,
        None,
        "",
        &format!(
            "\n[sinks.rejected]\nkind = \"file\"\ninputs = [\"names.rejects\"]\npath = \"{}\"\n",
            rejects_file.display()
        ),
    );
    let state = dir.path().join("state");
    let svc = Service::start(&pipes, &state, &[]);
    let (s, v) = svc.post("/api/pipelines/rejecting/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    wait_for("the rejecting run", Duration::from_secs(20), || {
        svc.runs("rejecting").first().is_some_and(|r| r["outcome"] == "completed")
    });
    let (s, r) = svc.get("/api/pipelines/rejecting/rejects?rule=parse");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["total"], 3, "{r:#}");
    assert_eq!(r["matching"], 2, "{r:#}");
    let (_, r) = svc.get("/api/pipelines/rejecting/rejects?q=%3Cb%3E");
    assert_eq!(r["matching"], 1, "{r:#}");
    assert_eq!(r["rows"][0]["line"], 3, "{r:#}");
    let (s, html) = http(&svc.addr, "GET", "/", None, "");
    assert_eq!(s, 200);
    assert!(html.contains("<script src=\"/console.js\""), "{html}");
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    let o = std::process::Command::new("node")
        .arg(repo().join("tests/browser/console.mjs"))
        .env("CONSOLE_URL", format!("http://{}/", svc.addr))
        .env("API_TOKEN", TOKEN)
        .env("OUT_DIR", &shots)
        .env("SLOW", "slowed")
        .env("NODES", nodes.to_string())
        .env("EDGES", edges.to_string())
        .env("ROWS", "8000")
        .env("XSS", "xss")
        .env("XSS_TEXT", xss)
        .output()
        .expect("node runs");
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "browser checks failed:\n{said}\nservice log:\n{}", svc.log());
    assert!(said.contains("ok: the run completed"), "{said}");
    assert!(shots.join("run-live.png").exists() && shots.join("run-done.png").exists());
    svc.stop();
}

#[test]
fn the_console_is_served_with_a_strict_content_security_policy() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = small_input(dir.path(), 10);
    pipeline(&pipes, "csp", &input, 0, None, "", "");
    let svc = Service::start(&pipes, &dir.path().join("state"), &[]);
    for path in ["/", "/console.js", "/console.css"] {
        let mut s = TcpStream::connect(&svc.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{path}: {head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{path}: {head}");
    }
    // No inline script or handler the policy would have to allow.
    let (_, html) = http(&svc.addr, "GET", "/", None, "");
    assert!(!html.contains("<script>") && !html.contains(" onclick=") && !html.contains("style="), "{html}");
    svc.stop();
}

/// Rejects fixed and replayed from the console: a pipeline rejected the F
/// rows (rule one_of), its fixed version (a second file) replays them from
/// the rejects page, and MariaDB ends with exactly what the fixed pipeline
/// writes from the start.
#[test]
fn the_console_replays_fixed_rejects_and_the_rows_reach_mariadb_once() {
    let chromium =
        std::process::Command::new(repo().join("scripts/ensure-chromium")).output().expect("scripts/ensure-chromium");
    assert!(chromium.status.success(), "scripts/ensure-chromium: {}", String::from_utf8_lossy(&chromium.stderr));
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let input = repo().join("pipelines/data/NationalNames.sample.csv");
    let db = crate::sql_sink::TestDb::new("console_replay");
    let strict = r#"["M"]"#;
    let fixed = r#"["M", "F"]"#;
    crate::replay::pipeline(dir.path(), "pipelines/names.toml", "names", &input, strict, &db, 0);
    // Slowed, so that its checkpoints commit while it runs.
    crate::replay::pipeline(dir.path(), "pipelines/names_fixed.toml", "names_fixed", &input, fixed, &db, 300);
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_db = crate::sql_sink::TestDb::new("console_replay_ref");
    let reference = crate::replay::pipeline(ref_dir.path(), "fixed.toml", "names", &input, fixed, &ref_db, 0);
    let o = run(&["run", &reference], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = ref_db.rows();

    let svc = Service::start(&pipes, &dir.path().join("state"), &[]);
    let (s, v) = svc.post("/api/pipelines/names/runs", Some(TOKEN));
    assert_eq!(s, 202, "{v}");
    wait_for("the strict run", Duration::from_secs(30), || {
        svc.runs("names").first().is_some_and(|r| r["outcome"] == "completed")
    });
    assert!(db.rows().iter().all(|r| r.2 == "M"));
    let (s, r) = svc.get("/api/pipelines/names_fixed/rejects?rule=one_of");
    assert_eq!(s, 200, "{r}");
    let one_of = r["matching"].as_u64().unwrap();
    assert!(one_of > 1000, "{r:#}");
    assert_eq!(r["replayable"], one_of, "{r:#}");
    let (s, _) = svc.post("/api/pipelines/names_fixed/replay", None);
    assert_eq!(s, 401);

    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    let o = std::process::Command::new("node")
        .arg(repo().join("tests/browser/replay.mjs"))
        .env("CONSOLE_URL", format!("http://{}/", svc.addr))
        .env("API_TOKEN", TOKEN)
        .env("OUT_DIR", &shots)
        .env("PIPELINE", "names_fixed")
        .env("ONE_OF", one_of.to_string())
        .output()
        .expect("node runs");
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "browser checks failed:\n{said}\nservice log:\n{}", svc.log());
    assert!(said.contains("ok: the replay run completed"), "{said}");
    assert_eq!(db.rows(), want, "after the replay MariaDB holds what the fixed pipeline writes");
    let runs = svc.runs("names_fixed");
    assert_eq!((runs[0]["trigger"].as_str(), runs[0]["outcome"].as_str()), (Some("replay"), Some("completed")));

    // Asking again replays only what was rejected again, which reaches
    // nothing: the database is unchanged.
    let (_, r) = svc.get("/api/pipelines/names_fixed/rejects?rule=one_of&replayed=false");
    let left = r["replayable"].as_u64().unwrap();
    assert!(left < one_of, "{r:#}");
    assert!(r["rows"].as_array().unwrap().iter().all(|x| x["replays"] == 1), "{r:#}");
    let (s, v) = http(&svc.addr, "POST", "/api/pipelines/names_fixed/replay", Some(TOKEN), r#"{"rule":"one_of"}"#);
    let v: Value = serde_json::from_str(&v).unwrap();
    if left == 0 {
        assert_eq!(s, 409, "{v}");
    } else {
        assert_eq!((s, v["rows"].as_u64()), (202, Some(left)), "{v}");
        let id = v["run_id"].as_str().unwrap().to_string();
        wait_for("the second replay", Duration::from_secs(30), || {
            svc.get(&format!("/api/runs/{id}")).1["outcome"] == "completed"
        });
    }
    assert_eq!(db.rows(), want);
    svc.stop();
}

/// The rejects file is rewritten by every run; the service keeps each
/// completed run's (hard links), so the rejects of an earlier run can
/// still be read.
#[test]
fn the_rejects_of_each_completed_run_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "Id,Name,Year,Gender,Count\n1,Ann,1990,F,5\n2,Bo,19x0,M,3\n3,Cy,1991,F,oops\n").unwrap();
    let rejects_file = dir.path().join("rejects.ndjson");
    let more = format!(
        "\n[sinks.rejected]\nkind = \"file\"\ninputs = [\"names.rejects\"]\npath = \"{}\"\n",
        rejects_file.display()
    );
    pipeline(&pipes, "kept", &bad, 0, None, "", &more);
    let svc = Service::start(&pipes, &dir.path().join("state"), &[]);
    let mut ids = Vec::new();
    for input in ["", "Id,Name,Year,Gender,Count\n1,Ann,1990,F,5\n2,Bo,1990,M,3\n4,Di,1992,F,x4\n"] {
        if !input.is_empty() {
            std::fs::write(&bad, input).unwrap();
        }
        let (s, v) = svc.post("/api/pipelines/kept/runs", Some(TOKEN));
        assert_eq!(s, 202, "{v}");
        let id = v["run_id"].as_str().unwrap().to_string();
        wait_for("the run", Duration::from_secs(20), || {
            svc.get(&format!("/api/runs/{id}")).1["outcome"] == "completed"
        });
        wait_for("the service to see it end", Duration::from_secs(10), || {
            svc.get("/api/pipelines/kept").1["busy"] == false
        });
        ids.push(id);
    }
    let (s, now) = svc.get("/api/pipelines/kept/rejects");
    assert_eq!(s, 200, "{now}");
    assert_eq!(now["total"], 1, "{now:#}");
    assert_eq!(now["runs"], serde_json::json!([ids[1], ids[0]]), "{now:#}");
    let (s, first) = svc.get(&format!("/api/pipelines/kept/rejects?run={}", ids[0]));
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["total"], 2, "{first:#}");
    let lines: Vec<u64> = first["rows"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [3, 4]);
    let (_, second) = svc.get(&format!("/api/pipelines/kept/rejects?run={}", ids[1]));
    assert_eq!((second["total"].as_u64(), second["rows"][0]["line"].as_u64()), (Some(1), Some(4)), "{second:#}");
    assert_eq!(svc.get("/api/pipelines/kept/rejects?run=..%2Fx").0, 400);
    assert_eq!(svc.get("/api/pipelines/kept/rejects?run=123-4-5").0, 404);
    svc.stop();
}
