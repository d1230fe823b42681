//! The daily Kaggle job on the full NationalNames.csv, against the Kaggle
//! simulator on 127.0.0.1, release build, the real `engine` binary:
//! kaggle source (download, stage, extract) -> validate -> dedupe ->
//! changes -> blackhole.
//!
//! 1. First run: download, stage, read, every row new.
//! 2. Second run, dataset unchanged: wall time (target: ≤ 0.3 s; one
//!    metadata call decides, before any carried state is loaded).
//! 3. A new version with 1% of rows changed and 1% new: wall time, rows
//!    passed, and the changes transform's rows/s on the full file.
//!
//! ```text
//! scripts/fetch-babynames
//! cargo bench -p engine --bench kaggle
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod common;
use common::{input_csv, repo, summary_peak_mib};

fn pipeline(dir: &Path, base: &str) -> String {
    format!(
        r#"
[pipeline]
name = "bench-kaggle"
[pipeline.checkpoint]
dir = "{dir}/checkpoints"
[sources.names]
kind = "kaggle"
dataset = "kaggle/us-baby-names"
file = "NationalNames.csv"
staging = "{dir}/staging"
base_url = "{base}"
username = "sim-user"
key = "sim-key"
schema = [{{ name = "Id", type = "int64" }}, {{ name = "Name", type = "string" }}, {{ name = "Year", type = "int64" }}, {{ name = "Gender", type = "string" }}, {{ name = "Count", type = "int64" }}]
[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Gender]
one_of = ["M", "F"]
[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]
[transforms.changed]
kind = "changes"
inputs = ["unique"]
key = ["Name", "Year", "Gender"]
ignore = ["Id"]
[sinks.null]
kind = "blackhole"
inputs = ["changed"]
[sinks.rejects]
kind = "blackhole"
inputs = ["names.rejects", "valid.rejects"]
"#,
        dir = dir.display()
    )
}

/// (wall seconds, summary text)
fn run(p: &Path) -> (f64, String) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["run", p.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"])
        .current_dir(repo())
        .output()
        .expect("engine runs");
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        println!("run failed: {out}{}", String::from_utf8_lossy(&o.stderr));
    }
    (secs, out)
}

fn row<'a>(summary: &'a str, id: &str) -> Option<Vec<&'a str>> {
    summary.lines().find(|l| l.starts_with(&format!("{id} "))).map(|l| l.split_whitespace().collect())
}

/// The CSV with 1% of rows given another Count and 1% more rows.
fn next_version(csv: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(csv);
    let mut lines = text.lines();
    let mut out = String::with_capacity(csv.len() + csv.len() / 50);
    out.push_str(lines.next().unwrap_or_default());
    out.push('\n');
    let mut n = 0usize;
    for (i, l) in lines.enumerate() {
        n = i + 1;
        if i % 100 == 7 {
            let (head, count) = l.rsplit_once(',').unwrap_or((l, "0"));
            let c: i64 = count.parse().unwrap_or(0);
            out.push_str(&format!("{head},{}\n", c + 1));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    for j in 0..n / 100 {
        out.push_str(&format!("{},Newname{j},2020,{},5\n", n + j + 1, if j % 2 == 0 { "F" } else { "M" }));
    }
    out.into_bytes()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let bytes = std::fs::read(&csv).expect("read input");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut cfg = simulators::kaggle::Config::default();
    cfg.datasets.insert(
        "kaggle/us-baby-names".into(),
        vec![simulators::kaggle::Version {
            number: 1,
            last_modified: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            files: vec![("NationalNames.csv".into(), bytes.clone())],
        }],
    );
    let sim = rt.block_on(simulators::kaggle::serve(cfg, "127.0.0.1:0".parse().expect("addr"))).expect("simulator");
    let dir = std::env::temp_dir().join(format!("engine-bench-kaggle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("kaggle.toml");
    std::fs::write(&p, pipeline(&dir, &sim.base_url())).expect("pipeline");
    println!("input: {} ({:.1} MB) served by the Kaggle simulator", csv.display(), bytes.len() as f64 / 1e6);

    let (t1, s1) = run(&p);
    let passed = row(&s1, "changed").and_then(|r| r.get(4).map(|s| s.to_string())).unwrap_or_default();
    println!(
        "1. first run (download, stage, read; all new): {t1:.2} s, {passed} rows passed by changes, peak memory {:.0} MiB",
        summary_peak_mib(&s1)
    );

    let (t2, s2) = run(&p);
    let up = s2.contains("is up to date");
    println!(
        "2. unchanged dataset: {t2:.3} s wall, up to date: {up} (target ≤ 0.3 s; 1.30 s before the metadata check and the lazy carried state), peak memory {:.0} MiB",
        summary_peak_mib(&s2)
    );

    sim.publish_version("kaggle/us-baby-names", vec![("NationalNames.csv".into(), next_version(&bytes))]);
    let (t3, s3) = run(&p);
    match row(&s3, "changed") {
        Some(r) => println!(
            "3. new version (1% changed, 1% new): {t3:.2} s wall; changes: {} rows in, {} passed, {} unchanged, {} rows/s; peak memory {:.0} MiB",
            r.get(3).unwrap_or(&"?"),
            r.get(4).unwrap_or(&"?"),
            r.get(6).unwrap_or(&"?"),
            r.last().unwrap_or(&"?"),
            summary_peak_mib(&s3)
        ),
        None => println!("3. run failed: {s3}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
