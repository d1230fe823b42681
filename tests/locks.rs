//! One writer per output: a second run aimed at a target another run is
//! writing is refused, naming that run, and the first run's output stays
//! whole; two sinks of one pipeline cannot share a target.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::sql_sink::TestDb;
use crate::util::*;

/// A slow pipeline over `rows` rows into `out.csv` (and, given a database
/// URL, a table), checkpoints in `store`.
fn pipeline(dir: &std::path::Path, store: &str, db: Option<&str>) -> String {
    let input = dir.join("in.csv");
    if !input.exists() {
        write_big_csv(&input, 60_000);
    }
    let sql = db
        .map(|url| {
            format!(
                r#"
[sinks.db]
kind = "sql"
inputs = ["names"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
"#
            )
        })
        .unwrap_or_default();
    write_pipeline(
        dir,
        &format!("{store}.toml"),
        &format!(
            r#"
[pipeline]
name = "locks"
batch_size = 1000
[pipeline.checkpoint]
interval = "100ms"
dir = "{dir}/{store}"
[sources.names]
kind = "file"
path = "{input}"
[sinks.out]
kind = "file"
inputs = ["names"]
path = "{dir}/out.csv"
[sinks.slow]
kind = "blackhole"
inputs = ["names"]
delay_ms = 40
{sql}
"#,
            dir = dir.display(),
            input = input.display()
        ),
    )
}

/// Regression: two runs with different checkpoint stores both exited 0 and
/// the published file held a fraction of the rows, without a header.
#[test]
fn a_second_run_on_the_same_output_is_refused_and_the_first_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let first = pipeline(dir.path(), "store-a", None);
    let second = pipeline(dir.path(), "store-b", None);
    let mut child =
        engine().args(["run", "--no-progress", &first]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "the first run is still going");
    let o = run(&["run", "--no-progress", &second], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("out.csv is being written by another run (pipeline locks, sink out, process"), "{err}");
    assert!(err.contains(&child.id().to_string()), "names the other process: {err}");
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
    assert!(text.starts_with("Id,Name,Year,Gender,Count\n"));
    assert_eq!(text.lines().count(), 60_001, "the first run's output is whole");
    // Once the first run is over, the second may go.
    let o = run(&["run", "--no-progress", &second], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_second_run_on_the_same_table_is_refused() {
    let db = TestDb::new("locks");
    let dir = tempfile::tempdir().unwrap();
    let first = pipeline(dir.path(), "store-a", Some(&db.url()));
    // The second writes another file but the same table.
    let second = pipeline(dir.path(), "store-b", Some(&db.url()));
    let text = std::fs::read_to_string(&second).unwrap().replace("/out.csv", "/out-b.csv");
    std::fs::write(&second, text).unwrap();
    let mut child =
        engine().args(["run", "--no-progress", &first]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while db.scalar("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'engine_sink_locks'") == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the first run never locked its table");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = run(&["run", "--no-progress", &second], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("table `baby_names` at")
            && err.contains("is being written by another run (pipeline locks, sink db"),
        "{err}"
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 60_000);
}

#[test]
fn two_sinks_of_one_pipeline_cannot_share_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), "store", None);
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "[sinks.slow]",
        &format!(
            "[sinks.again]\nkind = \"file\"\ninputs = [\"names\"]\npath = \"file://{}/out.csv\"\n[sinks.slow]",
            dir.path().display()
        ),
    );
    std::fs::write(&p, text).unwrap();
    let o = run(&["validate", &p], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("sinks `out` and `again` write the same target"), "{err}");
    assert!(err.contains(".toml:"), "at file:line:column: {err}");
}
