//! What checkpoints cost and buy, on the full NationalNames.csv, release
//! build, the real `engine` binary: file source -> validate -> dedupe -> CSV
//! file sink.
//!
//! 1. Throughput with checkpoints off, every 1 s and every 100 ms, runs
//!    interleaved in one process (best of `BENCH_RUNS`, default 3): the
//!    ratio is the overhead (target: 1 s >= 0.9x of off).
//! 2. A crash: the run, checkpointing every 1 s (or every fifth of the run
//!    when it is shorter than 5 s, so that some commit first), is killed
//!    with SIGKILL part-way (`BENCH_KILL_AT`, default 70% of the measured
//!    run time) and restarted. Rows re-read =
//!    rows the source had emitted when it died (scraped from /metrics just
//!    before the kill) minus the row the resumed run starts at (target: at
//!    most one interval's worth).
//! 3. Restart latency: from starting the resumed process to the first row
//!    flowing past validation (polled on /metrics; with a repeated input
//!    the sink may get nothing new after a resume).
//! 4. A slow sink: the full file to the HubSpot simulator at the real
//!    Starter limit (100 requests / 10 s, ~1,000 rows/s), `interval = 5s`,
//!    default batch size and channel capacity. Killed with SIGKILL after
//!    `BENCH_SLOW_SECS` (default 40), resumed, stopped with SIGTERM after
//!    as long again. Goals: every checkpoint commits within 2× the
//!    interval; rows re-sent after the kill ≤ one interval of throughput
//!    plus one batch per request in flight; the drain ends within 2× the
//!    interval plus a round trip.
//!
//! ```text
//! scripts/fetch-babynames
//! cargo bench -p engine --bench checkpoint
//! ```

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{input_csv, repo, source_validate_dedupe, summary_peak_mib, summary_source_rows};

fn pipeline(csv: &Path, dir: &Path) -> String {
    format!(
        "[pipeline]\nname = \"bench-checkpoint\"\n[pipeline.checkpoint]\ndir = \"{}/store\"\n{}\n[sinks.out]\nkind = \"file\"\ninputs = [\"unique\"]\npath = \"{}/out.csv\"\n",
        dir.display(),
        source_validate_dedupe(csv),
        dir.display()
    )
}

fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.current_dir(repo());
    c
}

/// One full run with the given interval; (seconds, rows read, peak MiB, checkpoints).
fn timed_run(p: &Path, interval: &str) -> Option<(f64, u64, f64, u64)> {
    let t = Instant::now();
    let o = engine()
        .args(["run", p.to_str()?, "--no-progress", "--log-level", "warn", "--from-scratch"])
        .args(["--checkpoint-interval", interval])
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        eprintln!("run failed: {out}{}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    let peak = summary_peak_mib(&out);
    let rows = summary_source_rows(&out, "names");
    let cps = out
        .lines()
        .find(|l| l.starts_with("checkpoints: "))
        .and_then(|l| l.split(" committed").next()?.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    Some((secs, rows, peak, cps))
}

/// GET /metrics; the value of the first sample whose line starts with `prefix`.
fn scrape(port: u16, prefix: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.split_whitespace().last()?.parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(9464)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("engine-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("checkpoint.toml");
    std::fs::write(&p, pipeline(&csv, &dir)).expect("write pipeline");

    // 1. Throughput, interleaved so drift on the machine hits all alike.
    let intervals = ["off", "1s", "100ms"];
    let mut all: Vec<Vec<(f64, u64, f64, u64)>> = vec![Vec::new(); intervals.len()];
    for _ in 0..runs {
        for (i, iv) in intervals.iter().enumerate() {
            all[i].extend(timed_run(&p, iv));
        }
    }
    for v in &mut all {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let best: Vec<Option<(f64, u64, f64, u64)>> = all.iter().map(|v| v.first().copied()).collect();
    let median: Vec<Option<f64>> = all.iter().map(|v| v.get(v.len() / 2).map(|m| m.0)).collect();
    println!("input: {}, best and median of {runs}", csv.display());
    let off = best[0].map(|m| m.1 as f64 / m.0);
    for (i, (iv, m)) in intervals.iter().zip(&best).enumerate() {
        let Some((secs, rows, peak, cps)) = m else {
            println!("checkpoints {iv:>6}: run failed");
            continue;
        };
        let rate = *rows as f64 / secs;
        let ratio = off.map(|o| format!("{:.2}x of off", rate / o)).unwrap_or_default();
        let med = match (median[i], median[0]) {
            (Some(m), Some(o)) => format!("; median {m:.3} s = {:.2}x of off's median", o / m),
            _ => String::new(),
        };
        println!(
            "checkpoints {iv:>6}: {rows} rows in {secs:.3} s = {rate:>10.0} rows/s, {cps:>3} checkpoints, peak RSS {peak:.1} MiB  {ratio}{med}"
        );
    }

    // 2 and 3. A crash and a resume, at 1 s or, for a run that short, at a
    // fifth of the run: several checkpoints commit before the kill.
    let Some((full_secs, total_rows, ..)) = best[1] else { return };
    let kill_at: f64 = std::env::var("BENCH_KILL_AT").ok().and_then(|s| s.parse().ok()).unwrap_or(0.7);
    let interval_ms = ((full_secs * 1000.0 / 5.0) as u64).clamp(20, 1000);
    let interval = format!("{interval_ms}ms");
    println!("crash test: checkpoints every {interval}");
    let port = free_port();
    let mut child = engine()
        .args(["run", p.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn", "--from-scratch"])
        .args(["--checkpoint-interval", &interval, "--metrics-addr", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs_f64(full_secs * kill_at);
    let mut emitted = 0.0;
    while Instant::now() < deadline {
        if let Some(v) = scrape(port, "engine_rows_out_total{operator=\"names\",port=\"out\"}") {
            emitted = v;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rejected = scrape(port, "engine_rows_out_total{operator=\"names\",port=\"rejects\"}").unwrap_or(0.0);
    emitted = scrape(port, "engine_rows_out_total{operator=\"names\",port=\"out\"}").unwrap_or(emitted);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let read_before_kill = (emitted + rejected) as u64;

    let port2 = free_port();
    let t = Instant::now();
    let resumed = engine()
        .args(["run", p.to_str().unwrap_or_default(), "--no-progress", "--log-level", "info"])
        .args(["--checkpoint-interval", &interval, "--metrics-addr", &port2.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first_row = None;
    while first_row.is_none() && t.elapsed() < Duration::from_secs(30) {
        // The first row past validation into dedupe: with a repeated input
        // the sink itself may receive nothing more after a resume.
        if scrape(port2, "engine_rows_in_total{operator=\"unique\"}").is_some_and(|v| v > 0.0) {
            first_row = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let o = resumed.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    let start_row: Option<u64> = err
        .lines()
        .find(|l| l.contains("resuming pipeline"))
        .and_then(|l| l.split("at row ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok());
    println!("crash at {:.0}% of the run: source had read {read_before_kill} rows", kill_at * 100.0);
    match start_row {
        Some(r) => {
            let per_interval = total_rows as f64 / full_secs * interval_ms as f64 / 1000.0;
            println!(
                "resumed at row {r}: {} rows re-read (one interval at this speed is ~{per_interval:.0} rows)",
                read_before_kill.saturating_sub(r)
            );
        }
        None => println!("the second run did not resume (no checkpoint before the kill?): {err}"),
    }
    match first_row {
        Some(d) => println!("restart to first row flowing (into dedupe): {:.0} ms", d.as_secs_f64() * 1000.0),
        None => println!("no row flowed after the restart"),
    }
    println!("resumed run exit: {}", o.status);
    slow_sink(&csv, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `duration_ms` of every "checkpoint committed" line of a log.
fn commit_times(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("checkpoint committed"))
        .filter_map(|l| l.split("duration_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn slow_sink(csv: &Path, dir: &Path) {
    let secs: u64 = std::env::var("BENCH_SLOW_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let cfg = simulators::hubspot::Config {
        daily: u64::MAX,
        properties: simulators::hubspot::babynames_properties(),
        ..Default::default()
    };
    let sim = rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().expect("addr"))).expect("simulator");
    let p = dir.join("slow.toml");
    std::fs::write(
        &p,
        format!(
            r#"[pipeline]
name = "bench-slow-sink"
[pipeline.checkpoint]
interval = "5s"
dir = "{dir}/slow-store"
{fragment}
[sinks.crm]
kind = "hubspot"
inputs = ["unique"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_gender = "{{Gender}}", baby_year = "{{Year}}", baby_count = "{{Count}}" }}
rate_limit = {{ requests = 100, per = "10s" }}
"#,
            dir = dir.display(),
            fragment = source_validate_dedupe(csv),
            base = sim.base_url()
        ),
    )
    .expect("write pipeline");
    let spawn = || {
        engine()
            .args(["run", p.to_str().unwrap_or_default(), "--no-progress", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let child = spawn();
    std::thread::sleep(Duration::from_secs(secs));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let o = child.wait_with_output().expect("wait");
    let mut times = commit_times(&String::from_utf8_lossy(&o.stderr));
    let sent_before = sim.stats().inputs_received;

    let child = spawn();
    std::thread::sleep(Duration::from_secs(secs));
    let asked = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().expect("wait");
    let drain = asked.elapsed();
    times.extend(commit_times(&String::from_utf8_lossy(&o.stderr)));
    let st = sim.stats();
    let unique = sim.contacts().len() as u64;
    let resent = st.inputs_received - unique;
    let worst = times.iter().copied().max().unwrap_or(0);
    let mean = times.iter().sum::<u64>() as f64 / times.len().max(1) as f64;
    println!(
        "slow sink (100 req/10 s, interval 5 s): {} checkpoints in 2 × {secs} s, commit time mean {mean:.0} ms, worst {worst} ms (goal ≤ 10,000 ms)",
        times.len()
    );
    println!(
        "slow sink: {sent_before} rows sent before the kill; {resent} re-sent after it (goal ≤ 5,000 + 4 × 100 = 5,400)"
    );
    println!(
        "slow sink: SIGTERM drain took {:.2} s (goal ≤ 10 s + a round trip); exit {}",
        drain.as_secs_f64(),
        o.status
    );
    sim.stop();
}
