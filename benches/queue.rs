//! The job through the NATS JetStream queue (the local server,
//! `scripts/ensure-nats`), measured on this machine:
//!
//! - **MariaDB with 1, 2 and 3 workers**: the full NationalNames.csv;
//!   the ingest (file → validate → dedupe → nats, N partitions) and N sync
//!   workers (nats → sql) started together. Prints the rows/s end to end,
//!   the largest backlog the workers' live figures showed, CPU seconds per
//!   process (and the MariaDB server's), against the in-run reference: the
//!   same pipeline straight into MariaDB, no queue.
//! - **HubSpot share with 3 workers**: the simulator at 100 requests per
//!   1 s, the first 60,000 rows already in the stream; the share of the
//!   limit the three workers achieve together through the shared limiter,
//!   and the 429s.
//!
//! ```text
//! scripts/fetch-babynames && scripts/ensure-nats && scripts/ensure-mariadb
//! cargo bench -p engine --bench queue
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{hubspot_sim, input_csv, mariadb, repo, server_cpu_seconds, source_validate_dedupe, write_head};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Waits for `child` and returns (success, CPU seconds, peak RSS MiB) from
/// wait4's rusage.
fn wait_usage(child: &mut Child) -> (bool, f64, f64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 on our own child's pid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    (r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, cpu, ru.ru_maxrss as f64 / 1024.0)
}

fn spawn(pipeline: &Path, envs: &[(&str, String)], log: &Path, live: Option<&Path>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.args(["run", pipeline.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"]);
    if let Some(l) = live {
        c.args(["--live", l.to_str().unwrap_or_default()]);
    }
    c.current_dir(repo()).stdout(Stdio::null()).stderr(std::fs::File::create(log).expect("log"));
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().expect("spawn engine")
}

fn delete_stream(name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        if let Ok(c) = queue::async_nats::connect(nats_url().as_str()).await {
            let _ = queue::async_nats::jetstream::new(c).delete_stream(name).await;
        }
    });
}

fn ingest_toml(csv: &Path, stream: &str, partitions: u32, dir: &Path) -> String {
    format!(
        r#"
[pipeline]
name = "bench-ingest"
[pipeline.checkpoint]
interval = "1s"
dir = "{dir}/cp-ingest-{stream}"
{fragment}
[sinks.queue]
kind = "nats"
inputs = ["unique"]
url = "{url}"
stream = "{stream}"
partition_by = ["Name", "Year", "Gender"]
partitions = {partitions}
"#,
        dir = dir.display(),
        fragment = source_validate_dedupe(csv),
        url = nats_url()
    )
}

fn worker_toml(stream: &str, sink: &str, dir: &Path) -> String {
    format!(
        r#"
[pipeline]
name = "bench-sync-${{PARTITION}}"
[pipeline.checkpoint]
interval = "1s"
dir = "{dir}/cp-sync-{stream}-${{PARTITION}}"
[sources.queue]
kind = "nats"
url = "{url}"
stream = "{stream}"
partition = "${{PARTITION}}"
{sink}
"#,
        dir = dir.display(),
        url = nats_url()
    )
}

fn sql_sink(url: &str, input: &str) -> String {
    format!(
        r#"
[sinks.db]
kind = "sql"
inputs = ["{input}"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
lock_scope = "${{PARTITION}}"
"#
    )
}

fn fresh_db(name: &str) -> Option<String> {
    let _ = mariadb("", &format!("DROP DATABASE IF EXISTS {name}"));
    if let Err(e) = mariadb("", &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")) {
        println!("MariaDB not reachable (run scripts/ensure-mariadb): {e}");
        return None;
    }
    let ddl =
        std::fs::read_to_string(repo().join("pipelines/migrations/babynames/mysql/V001__create_baby_names.up.sql"))
            .expect("migration");
    mariadb(name, &ddl).expect("create table");
    Some(format!("mysql://root@127.0.0.1:3306/{name}"))
}

/// The largest backlog (messages) the workers' live files show now.
fn backlog(lives: &[PathBuf]) -> u64 {
    lives
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .filter_map(|v| v["operators"][0]["backlog"]["messages"].as_u64())
        .sum()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let dir = std::env::temp_dir().join(format!("engine-queue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = format!("engine_qbench_{}", std::process::id());

    // The reference: the same work straight into MariaDB.
    let Some(url) = fresh_db(&db) else { return };
    let direct = dir.join("direct.toml");
    std::fs::write(
        &direct,
        format!(
            "[pipeline]\nname = \"bench-direct\"\n[pipeline.checkpoint]\ninterval = \"1s\"\ndir = \"{}/cp-direct\"\n{}\n{}",
            dir.display(),
            source_validate_dedupe(&csv),
            sql_sink(&url, "unique").replace("lock_scope = \"${PARTITION}\"\n", "")
        ),
    )
    .expect("write");
    let cpu0 = server_cpu_seconds();
    let t = Instant::now();
    let mut c = spawn(&direct, &[], &dir.join("direct.log"), None);
    let (ok, cpu, rss) = wait_usage(&mut c);
    let direct_secs = t.elapsed().as_secs_f64();
    let rows: u64 = mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let server = cpu0.zip(server_cpu_seconds()).map(|(a, b)| b - a).unwrap_or(f64::NAN);
    println!(
        "direct (no queue): {rows} rows in {direct_secs:.2} s, {:.0} rows/s; engine CPU {cpu:.2} s, peak {rss:.0} MiB; MariaDB CPU {server:.2} s{}",
        rows as f64 / direct_secs,
        if ok { "" } else { " (FAILED)" }
    );

    for workers in 1..=3u32 {
        let Some(url) = fresh_db(&db) else { return };
        let stream = format!("qbench_{}_{workers}", std::process::id());
        let ingest = dir.join(format!("ingest-{workers}.toml"));
        std::fs::write(&ingest, ingest_toml(&csv, &stream, workers, &dir)).expect("write");
        let sync = dir.join(format!("sync-{workers}.toml"));
        std::fs::write(&sync, worker_toml(&stream, &sql_sink(&url, "queue"), &dir)).expect("write");
        let cpu0 = server_cpu_seconds();
        let t = Instant::now();
        let mut ing = spawn(&ingest, &[], &dir.join(format!("ingest-{workers}.log")), None);
        let lives: Vec<PathBuf> = (0..workers).map(|p| dir.join(format!("live-{workers}-{p}.json"))).collect();
        let mut ws: Vec<Child> = (0..workers)
            .map(|p| {
                spawn(
                    &sync,
                    &[("PARTITION", p.to_string())],
                    &dir.join(format!("sync-{workers}-{p}.log")),
                    Some(&lives[p as usize]),
                )
            })
            .collect();
        // Sample the backlog while they run.
        let mut peak = 0;
        let sampler_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let lives = lives.clone();
            let done = sampler_done.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(backlog(&lives));
                    std::thread::sleep(Duration::from_millis(250));
                }
                peak
            })
        };
        let (iok, icpu, irss) = wait_usage(&mut ing);
        let ingest_secs = t.elapsed().as_secs_f64();
        let mut per = Vec::new();
        for w in &mut ws {
            per.push(wait_usage(w));
        }
        let secs = t.elapsed().as_secs_f64();
        sampler_done.store(true, std::sync::atomic::Ordering::Relaxed);
        peak = peak.max(sampler.join().unwrap_or(0));
        let server = cpu0.zip(server_cpu_seconds()).map(|(a, b)| b - a).unwrap_or(f64::NAN);
        let got: u64 = mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let failed = !iok || per.iter().any(|p| !p.0) || got != rows;
        println!(
            "{workers} worker(s): {got} rows in {secs:.2} s end to end, {:.0} rows/s = {:.2}× direct{}",
            got as f64 / secs,
            direct_secs / secs,
            if failed { "  (FAILED: see the logs in the temp dir)" } else { "" }
        );
        println!("    ingest done after {ingest_secs:.2} s: CPU {icpu:.2} s, peak {irss:.0} MiB");
        for (i, (_, cpu, rss)) in per.iter().enumerate() {
            println!("    worker {i}: CPU {cpu:.2} s, peak {rss:.0} MiB");
        }
        println!("    MariaDB server CPU {server:.2} s; largest backlog seen {peak} messages");
        delete_stream(&stream);
    }
    let _ = mariadb("", &format!("DROP DATABASE IF EXISTS {db}"));
    hubspot_share(&csv, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three workers against the simulator at 100 requests per 1 s.
fn hubspot_share(csv: &Path, dir: &Path) {
    const ROWS: usize = 60_000;
    let head = dir.join("head.csv");
    write_head(csv, ROWS, &head);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sim = hubspot_sim(&rt, 100);
    let stream = format!("qbench_hs_{}", std::process::id());
    let ingest = dir.join("ingest-hs.toml");
    std::fs::write(&ingest, ingest_toml(&head, &stream, 3, dir)).expect("write");
    let mut c = spawn(&ingest, &[], &dir.join("ingest-hs.log"), None);
    let (ok, ..) = wait_usage(&mut c);
    if !ok {
        println!("ingest failed");
        return;
    }
    let sink = format!(
        r#"
[sinks.crm]
kind = "hubspot"
inputs = ["queue"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_gender = "{{Gender}}", baby_year = "{{Year}}", baby_count = "{{Count}}" }}
rate_limit = {{ requests = 100, per = "1s", shared = {{ url = "{url}", key = "bench-{stream}", workers = 3 }} }}
"#,
        base = sim.base_url(),
        url = nats_url()
    );
    let sync = dir.join("sync-hs.toml");
    std::fs::write(&sync, worker_toml(&stream, &sink, dir)).expect("write");
    let t = Instant::now();
    let mut ws: Vec<Child> = (0..3)
        .map(|p| spawn(&sync, &[("PARTITION", p.to_string())], &dir.join(format!("sync-hs-{p}.log")), None))
        .collect();
    let all_ok = ws.iter_mut().map(|w| wait_usage(w).0).all(|x| x);
    let secs = t.elapsed().as_secs_f64();
    let st = sim.stats();
    let rate = st.requests.saturating_sub(1) as f64 / st.active_seconds.max(1e-9);
    println!(
        "hubspot, 3 workers sharing 100 req/1 s: {} contacts, {} requests in {secs:.2} s; {rate:.1} requests/s = {:.3} of the limit; 429s: {}{}",
        sim.contacts().len(),
        st.requests,
        rate / 100.0,
        st.rate_limited_window + st.rate_limited_secondly,
        if all_ok { "" } else { " (a worker FAILED)" }
    );
    delete_stream(&stream);
    sim.stop();
}
