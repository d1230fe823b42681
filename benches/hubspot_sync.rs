//! HubSpot sync against the simulator with the limit scaled down to 100
//! requests per 1 s (10× faster than the real 100 per 10 s, so runs are
//! short).
//!
//! - **First sync**: the first 69,000 rows of NationalNames.csv. Prints
//!   achieved requests/s as a fraction of the limit, 429s received, and the
//!   equivalent time at the real limit. The old one-shot script took 4.5
//!   hours for 69k records; the real limit allows about 70 s.
//! - **Mirror**: the full file synced once (fast, not measured), then a new
//!   version with 1% of the rows gone and 1% changed. Prints the requests
//!   the run used against the least possible (⌈changed/100⌉ +
//!   ⌈deleted/100⌉ + the property check) and the share of the limit.
//!
//! ```text
//! scripts/fetch-babynames
//! cargo bench -p engine --bench hubspot_sync
//! ```

use std::io::{BufRead, Write};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{hubspot_sim, input_csv, repo, source_validate_dedupe, summary_peak_mib, write_head};

const ROWS: usize = 69_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(full) = input_csv() else { return };
    let dir = std::env::temp_dir().join(format!("engine-hubspot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = dir.join("head.csv");
    write_head(&full, ROWS, &head);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sim = hubspot_sim(&rt, 100);

    let pipeline = dir.join("hubspot.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "bench-hubspot"
{fragment}
[sinks.crm]
kind = "hubspot"
inputs = ["unique"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_gender = "{{Gender}}", baby_year = "{{Year}}", baby_count = "{{Count}}" }}
rate_limit = {{ requests = 100, per = "1s" }}
concurrency = 8
"#,
            fragment = source_validate_dedupe(&head),
            base = sim.base_url()
        ),
    )
    .expect("write pipeline");

    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["run", pipeline.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"])
        .current_dir(repo())
        .output()
        .expect("run engine");
    let secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        println!("engine failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let st = sim.stats();
    let contacts = sim.contacts().len();
    let ok = st.by_status.get(&200).copied().unwrap_or(0);
    // Between the first and the last request: what the limiter achieved,
    // without process start and the final answer's round trip.
    let rate = (st.requests.saturating_sub(1)) as f64 / st.active_seconds.max(1e-9);
    println!("{ROWS} rows -> {contacts} contacts in {secs:.2} s wall: {} requests ({ok} answered 200)", st.requests);
    println!("achieved {rate:.1} requests/s against a limit of 100/s: {:.3} of the limit", rate / 100.0);
    println!(
        "429s received: {} (ten-secondly {}, daily {})",
        st.rate_limited_window + st.rate_limited_daily,
        st.rate_limited_window,
        st.rate_limited_daily
    );
    println!(
        "at HubSpot's real limit (100 per 10 s) the same sync takes about {:.0} s ({:.1} min); the old script took 4.5 h",
        secs * 10.0,
        secs * 10.0 / 60.0
    );
    sim.stop();
    mirror(&rt, &full, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes version 2 of the full file: every 100th row (offset 7) gone, every
/// 100th (offset 50) with Count + 1. Returns (deleted, changed).
fn version_two(full: &std::path::Path, out: &std::path::Path) -> (u64, u64) {
    let file = std::fs::File::open(full).expect("open the input");
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("v2"));
    let (mut deleted, mut changed) = (0, 0);
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.expect("read");
        let i = n.wrapping_sub(1);
        if n > 0 && i % 100 == 7 {
            deleted += 1;
            continue;
        }
        if n > 0 && i % 100 == 50 {
            let (head, count) = line.rsplit_once(',').expect("a Count column");
            let count: u64 = count.trim().parse().expect("Count");
            writeln!(w, "{head},{}", count + 1).expect("write");
            changed += 1;
            continue;
        }
        writeln!(w, "{line}").expect("write");
    }
    w.flush().expect("flush");
    (deleted, changed)
}

fn mirror(rt: &tokio::runtime::Runtime, full: &std::path::Path, dir: &std::path::Path) {
    let names = dir.join("names.csv");
    std::fs::copy(full, &names).expect("copy the input");
    let sim = hubspot_sim(&rt, 1_000_000);
    let pipeline = |limit: &str| {
        let p = dir.join("mirror.toml");
        std::fs::write(
            &p,
            format!(
                r#"
[pipeline]
name = "bench-mirror"
[pipeline.checkpoint]
dir = "{dir}/checkpoints"
{fragment}
[transforms.changed]
kind = "changes"
inputs = ["unique"]
key = ["Name", "Year", "Gender"]
ignore = ["Id"]
[sinks.crm]
kind = "hubspot"
inputs = ["changed"]
deletes = ["changed.deleted"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_gender = "{{Gender}}", baby_year = "{{Year}}", baby_count = "{{Count}}" }}
property_types = {{ baby_year = "number", baby_count = "number" }}
property_options = {{ baby_gender = ["F", "M"] }}
concurrency = 8
{limit}
"#,
                dir = dir.display(),
                fragment = source_validate_dedupe(&names),
                base = sim.base_url()
            ),
        )
        .expect("write pipeline");
        p
    };
    let run = |p: &std::path::Path| {
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["run", p.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"])
            .current_dir(repo())
            .output()
            .expect("run engine");
        if !o.status.success() {
            println!("engine failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        (t.elapsed().as_secs_f64(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (secs, _) = run(&pipeline(""));
    println!("mirror: version 1 synced ({} contacts in {secs:.1} s, limit off; not measured)", sim.contacts().len());

    let (deleted, changed) = version_two(full, &dir.join("v2.csv"));
    std::fs::rename(dir.join("v2.csv"), &names).expect("version 2 in place");
    sim.set_window(100, Duration::from_secs(1));
    let (secs, summary) = run(&pipeline(r#"rate_limit = { requests = 100, per = "1s" }"#));
    let st = sim.stats();
    let least = changed.div_ceil(100) + deleted.div_ceil(100) + 1;
    let rate = (st.requests.saturating_sub(1)) as f64 / st.active_seconds.max(1e-9);
    let crm = summary.lines().find(|l| l.starts_with("crm: ")).unwrap_or("crm: (no summary line)");
    println!(
        "mirror: version 2 with {deleted} rows gone and {changed} changed, in {secs:.2} s wall, peak memory {:.0} MiB",
        summary_peak_mib(&summary)
    );
    println!("mirror: {crm}");
    println!(
        "mirror: {} requests ({} upserts, {} archives, {} property calls, {} reads); least possible {least}: {:.3}×",
        st.requests,
        st.upsert_requests,
        st.archive_requests,
        st.property_requests,
        st.read_requests,
        st.requests as f64 / least as f64
    );
    println!(
        "mirror: achieved {rate:.1} requests/s against a limit of 100/s: {:.3} of the limit; 429s {}",
        rate / 100.0,
        st.rate_limited_window
    );
    sim.stop();
}
