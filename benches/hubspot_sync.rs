//! Syncing the first 69,000 rows of NationalNames.csv to HubSpot, against
//! the simulator with the limit scaled down to 100 requests per 1 s (10×
//! faster than the real 100 per 10 s, so the run is short). Prints achieved
//! requests/s as a fraction of the limit, 429s received, and the equivalent
//! time at the real limit. The old one-shot script took 4.5 hours for 69k
//! records; the real limit allows about 70 s.
//!
//! ```text
//! scripts/fetch-babynames
//! cargo bench -p engine --bench hubspot_sync
//! ```

use std::io::{BufRead, Write};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{input_csv, repo, source_validate_dedupe};

const ROWS: usize = 69_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(full) = input_csv() else { return };
    let file = std::fs::File::open(&full).expect("open the input");
    let dir = std::env::temp_dir().join(format!("engine-hubspot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = dir.join("head.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&head).expect("head.csv"));
        for line in std::io::BufReader::new(file).lines().take(ROWS + 1) {
            writeln!(w, "{}", line.expect("read")).expect("write");
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let cfg = simulators::hubspot::Config {
        window_requests: 100,
        window: Duration::from_secs(1),
        daily: u64::MAX,
        ..Default::default()
    };
    let sim = rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().expect("addr"))).expect("simulator");

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
    let _ = std::fs::remove_dir_all(&dir);
}
