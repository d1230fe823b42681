//! What the benchmarks share: where the repository is and the pipeline
//! fragment they all run (the babynames source, rules and dedupe), so every
//! benchmark measures the same work before its own sink.

// Each bench is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The full NationalNames.csv (`BENCH_CSV` overrides), or `None` after
/// saying how to get it.
pub fn input_csv() -> Option<PathBuf> {
    let csv =
        std::env::var_os("BENCH_CSV").map(PathBuf::from).unwrap_or_else(|| repo().join("bench-data/NationalNames.csv"));
    if csv.exists() {
        Some(csv)
    } else {
        println!("{} is missing: run scripts/fetch-babynames first (it builds the full 1.92M-row file)", csv.display());
        None
    }
}

/// `[sources.names]` reading `csv`, then `valid` and `unique`; the caller
/// adds sinks reading `unique` and the rejects ports.
pub fn source_validate_dedupe(csv: &Path) -> String {
    format!(
        r#"
[sources.names]
kind = "file"
path = "{}"
schema = [
  {{ name = "Id", type = "int64" }},
  {{ name = "Name", type = "string" }},
  {{ name = "Year", type = "int64" }},
  {{ name = "Gender", type = "string" }},
  {{ name = "Count", type = "int64" }},
]

[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Name]
required = true
min_len = 1
max_len = 64
[transforms.valid.rules.Year]
min = 1880
max = 2100
[transforms.valid.rules.Gender]
one_of = ["M", "F"]
[transforms.valid.rules.Count]
min = 1

[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]

[sinks.rejects]
kind = "blackhole"
inputs = ["names.rejects", "valid.rejects"]
"#,
        csv.display()
    )
}

/// Peak memory (MiB) from the run summary's first line.
pub fn summary_peak_mib(summary: &str) -> f64 {
    summary
        .find("peak memory ")
        .and_then(|i| summary[i + 12..].split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Rows read by the source `id`, from the run summary's table.
pub fn summary_source_rows(summary: &str, id: &str) -> u64 {
    summary
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or(0)
}

/// Runs `sql` in `db` with the `mariadb` client (root, 127.0.0.1): its
/// output, or its error text.
pub fn mariadb(db: &str, sql: &str) -> Result<String, String> {
    client_output(
        "mariadb client",
        Command::new("mariadb").args(["--local-infile=1", "-h127.0.0.1", "-uroot", "-N", "-B", db, "-e", sql]),
    )
}

/// A database client's trimmed output, or its error text (`what` names it
/// when it cannot start).
pub fn client_output(what: &str, cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The HubSpot simulator on a free port of 127.0.0.1, allowing
/// `requests_per_second` and no daily cap, served by `rt`.
pub fn hubspot_sim(rt: &tokio::runtime::Runtime, requests_per_second: u32) -> simulators::hubspot::Handle {
    let cfg = simulators::hubspot::Config {
        window_requests: requests_per_second,
        window: std::time::Duration::from_secs(1),
        daily: u64::MAX,
        ..Default::default()
    };
    rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().expect("addr"))).expect("simulator")
}

/// CPU seconds the MariaDB server process has used (user + system), when
/// it runs on this machine.
pub fn server_cpu_seconds() -> Option<f64> {
    let pid = ["mariadbd", "mysqld"].iter().find_map(|name| {
        let o = Command::new("pidof").arg(name).output().ok()?;
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_string)
    })?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime
    // are the 12th and 13th of them, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The header and the first `rows` rows of `csv`, written to `out`.
pub fn write_head(csv: &Path, rows: usize, out: &Path) {
    let file = std::fs::File::open(csv).expect("open the input");
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("create the head file"));
    for line in std::io::BufReader::new(file).lines().take(rows + 1) {
        writeln!(w, "{}", line.expect("read")).expect("write");
    }
    w.flush().expect("flush");
}
