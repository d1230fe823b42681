//! Helpers shared by the integration tests: run the real `engine` binary,
//! give each test its own temp directory, compare against snapshot files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run the binary from there, as a user would).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("engine/ has a parent").to_path_buf()
}

pub fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.current_dir(repo());
    c.env_remove("ENGINE_LOG");
    c
}

/// Runs `engine args…` and returns its output. pipelines/babynames.toml
/// keeps checkpoints in `$CHECKPOINT_DIR`: unless a test sets it, each run
/// gets its own (beside OUTPUT_DIR when given), so parallel tests never
/// share a store.
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut c = engine();
    c.args(args);
    if !envs.iter().any(|(k, _)| *k == "CHECKPOINT_DIR") {
        let dir = match envs.iter().find(|(k, _)| *k == "OUTPUT_DIR") {
            Some((_, out)) => Path::new(out).join("checkpoints"),
            None => std::env::temp_dir().join(format!(
                "engine-test-cp-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )),
        };
        c.env("CHECKPOINT_DIR", dir);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("the engine binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compares `actual` with `tests/snapshots/<name>`; `UPDATE_SNAPSHOTS=1`
/// rewrites the file instead. A missing snapshot is written and fails the
/// test once, so that it gets reviewed and committed.
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = repo().join("tests/snapshots").join(name);
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => {}
        Ok(_) | Err(_) if update => {
            std::fs::create_dir_all(path.parent().expect("snapshots dir")).expect("create snapshot dir");
            std::fs::write(&path, actual).expect("write snapshot");
        }
        Ok(expected) => panic!(
            "snapshot {} differs (UPDATE_SNAPSHOTS=1 to accept)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ),
        Err(_) => {
            std::fs::create_dir_all(path.parent().expect("snapshots dir")).expect("create snapshot dir");
            std::fs::write(&path, actual).expect("write snapshot");
            panic!("snapshot {} was missing; written now, review and commit it", path.display());
        }
    }
}

/// Number of data rows in a CSV file with a header.
pub fn csv_rows(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines().count().saturating_sub(1)
}

/// Parses the `peak memory X MiB` of the run summary.
pub fn peak_mib(stdout: &str) -> f64 {
    let i = stdout.find("peak memory ").expect("summary reports peak memory");
    stdout[i + 12..].split_whitespace().next().and_then(|s| s.parse().ok()).expect("a number of MiB")
}

/// Writes a valid CSV of `rows` baby-name rows (unique keys) to `path`.
pub fn write_big_csv(path: &Path, rows: usize) {
    use std::io::Write;
    let f = std::fs::File::create(path).expect("create csv");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "Id,Name,Year,Gender,Count").expect("write");
    for i in 0..rows {
        let year = 1880 + (i % 137);
        let g = if i % 2 == 0 { "F" } else { "M" };
        writeln!(w, "{},Name{:07},{year},{g},{}", i + 1, i / 274, 5 + i % 1000).expect("write");
    }
    w.flush().expect("flush");
}

/// One row of a babynames CSV written by our file sink: (Id, Name, Year,
/// Gender, Count). Names may be quoted (O"Brien, Jr); the rest is plain.
pub fn babynames_rows(path: &Path) -> Vec<(i64, String, i64, String, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .map(|l| {
            let (id, rest) = l.split_once(',').expect("Id");
            let (name, rest) = if let Some(q) = rest.strip_prefix('"') {
                let end = q.rfind("\",").expect("closing quote");
                (q[..end].replace("\"\"", "\""), &q[end + 2..])
            } else {
                let (n, r) = rest.split_once(',').expect("Name");
                (n.to_string(), r)
            };
            let f: Vec<&str> = rest.split(',').collect();
            (id.parse().expect("Id"), name, f[0].parse().expect("Year"), f[1].to_string(), f[2].parse().expect("Count"))
        })
        .collect()
}

/// Writes a pipeline file into `dir`; returns its path as a string.
pub fn write_pipeline(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write pipeline");
    p.to_str().expect("utf-8 path").to_string()
}

/// The Kaggle NationalNames.csv columns, as a source's `schema` option.
pub const SCHEMA: &str = r#"schema = [{ name = "Id", type = "int64" }, { name = "Name", type = "string" }, { name = "Year", type = "int64" }, { name = "Gender", type = "string" }, { name = "Count", type = "int64" }]"#;
