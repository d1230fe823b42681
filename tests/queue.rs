//! The queue between ingest and sync (NATS JetStream): the real binary as
//! one ingest process and several sync workers, against the local NATS
//! (127.0.0.1:4222, or `NATS_URL`; `scripts/ensure-nats` starts one), the
//! real MariaDB and the HubSpot simulator. Each test publishes to a stream
//! of its own and deletes it.
//!
//! - kill -9 of random processes, restarted each time, until all complete:
//!   the table and the contacts are exact, the simulator never said 429;
//! - HubSpot down while the ingest completes: the backlog is visible and
//!   drains when HubSpot returns;
//! - NATS itself killed and restarted mid-run (a server of the test's own).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::crash::{Row, write_input};
use crate::sql_sink::TestDb;
use crate::util::*;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("t_{tag}_{}_{nanos}", std::process::id())
}

/// Deletes the test's stream and consumers (and its limiter key) at the end.
struct Stream {
    url: String,
    name: String,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            if let Ok(c) = queue::async_nats::connect(self.url.as_str()).await {
                let js = queue::async_nats::jetstream::new(c);
                let _ = js.delete_stream(&self.name).await;
            }
        });
    }
}

/// The ingest: file → dedupe → nats (3 partitions), slowed by a blackhole
/// beside it so that it lasts long enough to be killed.
fn ingest_pipeline(dir: &Path, input: &Path, url: &str, stream: &str, partitions: u32, delay_ms: u64) -> String {
    write_pipeline(
        dir,
        "ingest.toml",
        &format!(
            r#"
[pipeline]
name = "ingest"
batch_size = 500
channel_capacity = 2
[pipeline.checkpoint]
interval = "200ms"
dir = "{dir}/checkpoints-ingest"

[sources.names]
kind = "file"
path = "{input}"
{SCHEMA}

[transforms.unique]
kind = "dedupe"
inputs = ["names"]
key = ["Name", "Year", "Gender"]

[sinks.slow]
kind = "blackhole"
inputs = ["unique"]
delay_ms = {delay_ms}

[sinks.queue]
kind = "nats"
inputs = ["unique"]
url = "{url}"
stream = "{stream}"
subject = "{stream}.rows.{{partition}}"
partition_by = ["Name", "Year", "Gender"]
partitions = {partitions}
message_rows = 1000
"#,
            dir = dir.display(),
            input = input.display()
        ),
    )
}

/// A sync worker: its partition into `sinks` (TOML), checkpoints every 200 ms.
fn worker_pipeline(dir: &Path, url: &str, stream: &str, sinks: &str) -> String {
    write_pipeline(
        dir,
        "sync.toml",
        &format!(
            r#"
[pipeline]
name = "sync-${{PARTITION}}"
[pipeline.checkpoint]
interval = "200ms"
dir = "{dir}/checkpoints-sync-${{PARTITION}}"

[sources.queue]
kind = "nats"
url = "{url}"
stream = "{stream}"
partition = "${{PARTITION}}"
wait = "200ms"

{sinks}
"#,
            dir = dir.display()
        ),
    )
}

/// One process of the job, restarted after each kill.
struct Proc {
    name: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    attempt: usize,
    done: bool,
    dir: PathBuf,
}

impl Proc {
    fn new(dir: &Path, name: &str, pipeline: &str, envs: &[(&str, String)]) -> Proc {
        Proc {
            name: name.to_string(),
            args: vec!["run".into(), "--no-progress".into(), pipeline.to_string()],
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            child: None,
            attempt: 0,
            done: false,
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self, attempt: usize) -> PathBuf {
        self.dir.join(format!("{}-{attempt}.stderr", self.name))
    }

    fn start(&mut self) {
        self.attempt += 1;
        let mut c = engine();
        c.args(&self.args).stdout(Stdio::null()).stderr(std::fs::File::create(self.log(self.attempt)).expect("log"));
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        self.child = Some(c.spawn().expect("spawn engine"));
    }

    /// Whether it is running; panics when it failed (not killed by us).
    fn poll(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else { return false };
        match c.try_wait().expect("wait") {
            None => true,
            Some(s) => {
                self.child = None;
                if s.success() {
                    self.done = true;
                } else if s.signal() != Some(9) {
                    panic!(
                        "{} attempt {} failed with {s:?}:\n{}",
                        self.name,
                        self.attempt,
                        std::fs::read_to_string(self.log(self.attempt)).unwrap_or_default()
                    );
                }
                false
            }
        }
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            c.wait().expect("wait");
            self.child = None;
        }
    }

    fn all_logs(&self) -> String {
        (1..=self.attempt).map(|a| std::fs::read_to_string(self.log(a)).unwrap_or_default()).collect()
    }
}

/// Runs every process to completion, killing a random running one every
/// 150–900 ms until `kills` were done, restarting each killed one at once.
fn run_all(procs: &mut [Proc], kills: usize, seed: u64, limit: Duration) -> Vec<String> {
    let mut rng = seed.max(1);
    let mut next = || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for p in procs.iter_mut() {
        p.start();
    }
    let started = Instant::now();
    let mut done_kills = 0;
    let mut log = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_millis(150 + next() % 750);
    while procs.iter().any(|p| !p.done) {
        assert!(started.elapsed() < limit, "not done after {limit:?}; kills: {log:?}");
        for p in procs.iter_mut() {
            if !p.done && !p.poll() && !p.done {
                p.start();
            }
        }
        if done_kills < kills && Instant::now() >= next_kill {
            let running: Vec<usize> = (0..procs.len()).filter(|&i| procs[i].child.is_some()).collect();
            if !running.is_empty() {
                let i = running[(next() % running.len() as u64) as usize];
                procs[i].kill();
                done_kills += 1;
                log.push(format!(
                    "{:.1?}: kill -9 {} (attempt {})",
                    started.elapsed(),
                    procs[i].name,
                    procs[i].attempt
                ));
                procs[i].start();
            }
            next_kill = Instant::now() + Duration::from_millis(150 + next() % 750);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(done_kills >= kills, "only {done_kills} kills before everything completed: {log:?}");
    log
}

fn hubspot_sim(rt: &tokio::runtime::Runtime) -> simulators::hubspot::Handle {
    let cfg = simulators::hubspot::Config {
        window_requests: 100,
        window: Duration::from_secs(1),
        daily: u64::MAX,
        properties: simulators::hubspot::babynames_properties(),
        ..Default::default()
    };
    rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("simulator")
}

fn sync_sinks(db_url: &str, hubspot: &str) -> String {
    format!(
        r#"
[sinks.db]
kind = "sql"
inputs = ["queue"]
url = "{db_url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
lock_scope = "${{PARTITION}}"

[sinks.crm]
kind = "hubspot"
inputs = ["queue"]
base_url = "{hubspot}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ baby_count = "{{Count}}" }}
rate_limit = {{ requests = 100, per = "1s", shared = {{ url = "{url}", key = "{hubspot}", workers = 3 }} }}
"#,
        url = nats_url()
    )
}

fn migrate(db: &TestDb, dir: &Path) {
    let p = write_pipeline(
        dir,
        "migrate.toml",
        &format!(
            r#"
[sources.x]
kind = "file"
path = "pipelines/data/NationalNames.sample.csv"
[sinks.db]
kind = "sql"
inputs = ["x"]
url = "{}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
"#,
            db.url()
        ),
    );
    let o = run(&["migrate", "up", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn expected_rows(rows: &[Row]) -> std::collections::BTreeSet<(String, i64, String, i64, i64)> {
    rows.iter().map(|(id, n, y, g, c)| (n.clone(), *y, g.clone(), *c, *id)).collect()
}

fn check_contacts(sim: &simulators::hubspot::Handle, rows: &[Row], log: &str) {
    let got: BTreeMap<String, String> =
        sim.contacts().into_iter().map(|c| (c.id_value, c.properties["baby_count"].clone())).collect();
    let want: BTreeMap<String, String> =
        rows.iter().map(|(_, n, y, g, c)| (format!("{n}|{g}|{y}"), c.to_string())).collect();
    assert_eq!(got.len(), want.len(), "contacts\n{log}");
    assert!(got == want, "a contact differs from its row\n{log}");
}

/// 1 ingest + 3 workers, 200,000 rows, at least 20 kill -9 (CRASH_KILLS
/// overrides) of random processes, each restarted at once.
#[test]
fn kill_9_of_ingest_and_workers_ends_with_every_row_once_in_mariadb_and_hubspot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("names.csv");
    let rows = write_input(&input, 200_000);
    let db = TestDb::new("queue");
    migrate(&db, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sim = hubspot_sim(&rt);
    let stream = Stream { url: nats_url(), name: unique("kill") };
    let ingest = ingest_pipeline(dir.path(), &input, &nats_url(), &stream.name, 3, 10);
    let sync = worker_pipeline(dir.path(), &nats_url(), &stream.name, &sync_sinks(&db.url(), &sim.base_url()));
    let mut procs = vec![Proc::new(dir.path(), "ingest", &ingest, &[])];
    for p in 0..3 {
        procs.push(Proc::new(dir.path(), &format!("worker{p}"), &sync, &[("PARTITION", p.to_string())]));
    }
    let kills = std::env::var("CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let log = run_all(&mut procs, kills, 20261130, Duration::from_secs(300)).join("\n");

    let got = db.rows();
    let want = expected_rows(&rows);
    assert_eq!(got.len(), want.len(), "rows in MariaDB\n{log}");
    assert!(got == want, "a row in MariaDB differs\n{log}");
    check_contacts(&sim, &rows, &log);
    let stats = sim.stats();
    let workers: String = procs[1..].iter().map(Proc::all_logs).collect();
    let alone = workers.matches("pacing this worker").count();
    assert_eq!(
        stats.rate_limited_window + stats.rate_limited_secondly,
        0,
        "429s ({alone} times a worker paced alone): {stats:?}\n{log}"
    );
    assert!(stats.max_in_window <= 100, "{stats:?}");
    // Every upsert carries up to 100 records; records are re-sent only for
    // what a killed worker sent after its last checkpoint.
    let resent = stats.inputs_received - rows.len() as u64;
    assert!(stats.upsert_requests <= stats.inputs_received.div_ceil(100) + 3 * 400, "{stats:?}");
    assert!(workers.contains("hubspot rate limit shared through NATS"), "the workers did not share the limit");
    eprintln!(
        "queue kill test: {kills} kills, {} upserts for {} rows ({resent} records re-sent), max {} in a window\n{log}",
        stats.upsert_requests,
        rows.len(),
        stats.max_in_window
    );
}

/// HubSpot answers 503 for a while: the ingest has published everything,
/// the workers' backlog is visible in their live figures and waits in the
/// queue, and everything arrives once HubSpot is back.
#[test]
fn hubspot_down_the_backlog_waits_in_the_queue_and_drains_when_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("names.csv");
    let rows = write_input(&input, 30_000);
    let db = TestDb::new("queue_down");
    migrate(&db, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sim = hubspot_sim(&rt);
    let stream = Stream { url: nats_url(), name: unique("down") };
    let ingest = ingest_pipeline(dir.path(), &input, &nats_url(), &stream.name, 3, 0);
    let o = run(&["run", "--no-progress", &ingest], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sync = worker_pipeline(dir.path(), &nats_url(), &stream.name, &sync_sinks(&db.url(), &sim.base_url()));
    let mut workers: Vec<Proc> = (0..3)
        .map(|p| {
            let live = dir.path().join(format!("live-{p}.json"));
            let mut w = Proc::new(dir.path(), &format!("worker{p}"), &sync, &[("PARTITION", p.to_string())]);
            w.args.splice(2..2, ["--live".to_string(), live.display().to_string()]);
            w
        })
        .collect();
    for w in &mut workers {
        w.start();
    }
    // HubSpot goes down once every worker checked its properties.
    let t = Instant::now();
    while workers.iter().any(|w| !w.all_logs().contains("hubspot properties checked")) {
        assert!(t.elapsed() < Duration::from_secs(30), "workers did not open");
        std::thread::sleep(Duration::from_millis(5));
    }
    sim.set_down(true);
    let t = Instant::now();
    let mut backlog = 0;
    while t.elapsed() < Duration::from_secs(20) && backlog == 0 {
        std::thread::sleep(Duration::from_millis(200));
        for w in &mut workers {
            assert!(w.poll(), "{} ended while HubSpot was down:\n{}", w.name, w.all_logs());
        }
        backlog = (0..3)
            .filter_map(|p| std::fs::read_to_string(dir.path().join(format!("live-{p}.json"))).ok())
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter_map(|v| v["operators"][0]["backlog"]["messages"].as_u64())
            .sum::<u64>();
    }
    let during = sim.contacts().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sim.contacts().len(), during, "HubSpot changed while down");
    sim.set_down(false);
    let t = Instant::now();
    while workers.iter_mut().any(|w| !w.done && (w.poll() || !w.done)) {
        assert!(t.elapsed() < Duration::from_secs(120), "workers did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log: String = workers.iter().map(Proc::all_logs).collect();
    assert!(backlog > 0, "no backlog was visible in the live figures while HubSpot was down\n{log}");
    assert!(during < rows.len(), "everything arrived before HubSpot went down");
    assert!(db.rows() == expected_rows(&rows), "MariaDB rows differ\n{log}");
    check_contacts(&sim, &rows, &log);
    assert!(sim.stats().by_status.get(&503).copied().unwrap_or(0) > 0, "HubSpot was never found down");
}

/// A NATS server of the test's own, killed -9 and restarted on the same
/// port and store while the ingest publishes and a worker reads.
#[test]
fn nats_restarted_mid_run_ingest_and_worker_reconnect_and_complete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let store = dir.path().join("nats-store");
    let start_nats = || {
        std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/ensure-nats installs it)")
    };
    let wait_up = || {
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut nats = start_nats();
    wait_up();
    let url = format!("nats://127.0.0.1:{port}");
    let input = dir.path().join("names.csv");
    let rows = write_input(&input, 60_000);
    let db = TestDb::new("queue_nats");
    migrate(&db, dir.path());
    let ingest = ingest_pipeline(dir.path(), &input, &url, "restart", 1, 5);
    let sinks = format!(
        r#"
[sinks.db]
kind = "sql"
inputs = ["queue"]
url = "{}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
"#,
        db.url()
    );
    let sync = worker_pipeline(dir.path(), &url, "restart", &sinks);
    let mut procs = [
        Proc::new(dir.path(), "ingest", &ingest, &[]),
        Proc::new(dir.path(), "worker", &sync, &[("PARTITION", "0".into())]),
    ];
    for p in &mut procs {
        p.start();
    }
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(nats.id() as i32, libc::SIGKILL) };
    nats.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(1500));
    let mut nats = start_nats();
    wait_up();
    let t = Instant::now();
    while procs.iter_mut().any(|p| !p.done && (p.poll() || !p.done)) {
        assert!(t.elapsed() < Duration::from_secs(120), "not done after NATS came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nats.kill();
    let _ = nats.wait();
    let log: String = procs.iter().map(Proc::all_logs).collect();
    assert!(log.contains("NATS connection lost"), "the processes never saw NATS go away\n{log}");
    let got = db.rows();
    assert_eq!(got.len(), rows.len(), "{log}");
    assert!(got == expected_rows(&rows), "MariaDB rows differ");
}

/// Without checkpoints a worker would never acknowledge anything and read
/// its partition again on every run: refused before anything runs.
#[test]
fn a_nats_source_without_checkpoints_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = write_pipeline(
        dir.path(),
        "nocp.toml",
        &format!(
            r#"
[pipeline.checkpoint]
interval = "off"
[sources.queue]
kind = "nats"
url = "{}"
stream = "never_made"
partition = 0
[sinks.out]
kind = "blackhole"
inputs = ["queue"]
"#,
            nats_url()
        ),
    );
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a `nats` source needs checkpoints"), "{}", stderr(&o));
}
