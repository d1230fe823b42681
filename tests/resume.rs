//! Checkpoints seen from the command line: a stop at a checkpoint and its
//! resume, the refusals (changed pipeline, changed input, damaged store),
//! `--from-scratch`, and `engine checkpoints list|show|reset`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

/// A slow pipeline over `rows` generated rows: file source → dedupe →
/// CSV file sink, plus a throttled blackhole; checkpoints every 100 ms in
/// `dir/checkpoints`. Returns (pipeline, input, output).
fn slow_pipeline(dir: &Path, rows: usize, key: &str) -> (String, PathBuf, PathBuf) {
    let input = dir.join("in.csv");
    if !input.exists() {
        write_big_csv(&input, rows);
    }
    let out = dir.join("out.csv");
    let p = write_pipeline(
        dir,
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "resume"
batch_size = 1000
channel_capacity = 2
[pipeline.checkpoint]
interval = "100ms"
dir = "{dir}/checkpoints"
[sources.big]
kind = "file"
path = "{input}"
[transforms.unique]
kind = "dedupe"
inputs = ["big"]
key = [{key}]
[sinks.out]
kind = "file"
inputs = ["unique"]
path = "{out}"
[sinks.slow]
kind = "blackhole"
inputs = ["unique"]
delay_ms = 20
"#,
            dir = dir.display(),
            input = input.display(),
            out = out.display()
        ),
    );
    (p, input, out)
}

/// Runs `p` until the fault kills it after its `n`-th checkpoint commit.
fn crash_after_checkpoint(p: &str, n: u32) {
    let o = run(&["run", "--no-progress", p], &[("ENGINE_FAULT", &format!("after-store-commit:{n}"))]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "the fault did not fire: {}", stderr(&o));
}

/// Every data line of a CSV output, checked for duplicates by Id.
fn ids(out: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out).expect("output published");
    let mut ids: Vec<u64> = text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "a row was written twice");
    ids
}

#[test]
fn sigterm_stops_at_a_checkpoint_and_the_next_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, out) = slow_pipeline(dir.path(), 60_000, "\"Id\"");
    let child = engine()
        .args(["run", "--no-progress", &p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let summary = stdout(&o);
    assert!(summary.contains("interrupted by SIGTERM at checkpoint"), "{summary}");
    assert!(summary.contains("run the same command to resume"), "{summary}");
    assert!(!out.exists(), "a stopped run publishes nothing half-done");

    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("resuming pipeline resume from checkpoint"), "{err}");
    assert!(err.contains("source big at row "), "{err}");
    assert_eq!(ids(&out), (1..=60_000).collect::<Vec<_>>());
    assert!(stdout(&o).contains("marked complete"), "{}", stdout(&o));

    // Completed: the next run starts afresh and writes the same file.
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(stderr(&o).contains("from the beginning"), "{}", stderr(&o));
    assert_eq!(ids(&out).len(), 60_000);
}

#[test]
fn a_changed_pipeline_or_input_is_refused_and_from_scratch_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let (p, input, out) = slow_pipeline(dir.path(), 40_000, "\"Id\"");
    crash_after_checkpoint(&p, 3);

    // The dedupe key changed: its keys would not mean the same thing.
    slow_pipeline(dir.path(), 40_000, "\"Id\", \"Name\"");
    let o = run(&["run", "--no-progress", &p], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cannot resume pipeline resume from checkpoint"), "{err}");
    assert!(err.contains("`unique`: option `key` changed from [\"Id\"] to [\"Id\",\"Name\"]"), "{err}");
    assert!(err.contains("--from-scratch"), "{err}");

    // Back to the original pipeline, but the input grew.
    slow_pipeline(dir.path(), 40_000, "\"Id\"");
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("40001,Late,2000,F,5\n");
    std::fs::write(&input, &text).unwrap();
    let o = run(&["run", "--no-progress", &p], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("operator `big` failed: the input of source `big` changed since the checkpoint (size"),
        "{err}"
    );
    assert!(err.contains("--from-scratch"), "{err}");

    let o = run(&["run", "--no-progress", "--from-scratch", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("from the beginning"), "{}", stderr(&o));
    assert_eq!(ids(&out), (1..=40_001).collect::<Vec<_>>());
}

/// Size, ETag (inode, size, modification time) and version all match:
/// only the checksum of the bytes read before the checkpoint can tell.
#[test]
fn an_input_rewritten_in_place_with_the_same_size_and_time_is_refused() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (p, input, out) = slow_pipeline(dir.path(), 60_000, "\"Id\"");
    let child = engine()
        .args(["run", "--no-progress", &p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(stdout(&o).contains("interrupted by SIGTERM at checkpoint"), "{}", stdout(&o));

    // Every name changes, nothing else: same bytes count, same inode, and
    // the modification time put back.
    let before = std::fs::metadata(&input).unwrap();
    let text = std::fs::read_to_string(&input).unwrap();
    let rewritten = text.replace(",Name0", ",Nome0");
    assert_eq!(rewritten.len(), text.len());
    let mut f = std::fs::OpenOptions::new().write(true).open(&input).unwrap();
    f.write_all(rewritten.as_bytes()).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(&input).unwrap();
    assert_eq!(
        (after.len(), after.ino(), after.modified().unwrap()),
        (before.len(), before.ino(), before.modified().unwrap())
    );

    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "a rewritten input must not be resumed: {err}");
    let said = format!(" bytes of {} changed since checkpoint ", input.display());
    assert!(err.contains("the first ") && err.contains(&said), "{err}");
    assert!(err.contains("(checksum xxh64 ") && err.contains("start over with --from-scratch"), "{err}");
    assert!(!out.exists(), "nothing published");

    let o = run(&["run", "--no-progress", "--from-scratch", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ids(&out), (1..=60_000).collect::<Vec<_>>());
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(!written.contains(",Name0"), "only the new input's rows");
}

#[test]
fn checkpoints_list_show_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, _) = slow_pipeline(dir.path(), 40_000, "\"Id\"");
    let o = run(&["checkpoints", "list", &p], &[]);
    assert!(stdout(&o).contains("no checkpoints"), "{}", stdout(&o));
    crash_after_checkpoint(&p, 4);

    let o = run(&["checkpoints", "list", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = stdout(&o);
    let rows: Vec<&str> = list.lines().filter(|l| l.contains("resumable")).collect();
    // keep = 3; the fault struck between the 4th commit and its pruning.
    assert!((3..=4).contains(&rows.len()), "keep = 3 by default: {list}");
    assert!(rows.iter().all(|l| l.contains("big: row ")), "{list}");
    assert!(list.lines().any(|l| l.trim_start().starts_with("4 ")), "epoch 4 is the newest: {list}");

    let o = run(&["checkpoints", "show", &p], &[]);
    let show = stdout(&o);
    assert!(show.starts_with("checkpoint 4\n"), "{show}");
    assert!(show.contains("unique: ") && show.contains("bytes of deltas since epoch 1"), "{show}");
    assert!(show.contains("slow: stateless"), "{show}");

    let o = run(&["checkpoints", "reset", &p], &[]);
    assert!(stdout(&o).contains(&format!("erased {} checkpoint(s)", rows.len())), "{}", stdout(&o));
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("from the beginning"), "{}", stderr(&o));
}

#[test]
fn a_damaged_store_is_reported_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, out) = slow_pipeline(dir.path(), 40_000, "\"Id\"");
    crash_after_checkpoint(&p, 3);
    // Scribble over the middle of every file of the store.
    let store = dir.path().join("checkpoints");
    let mut damaged = 0;
    for e in walk(&store) {
        let mut b = std::fs::read(&e).unwrap();
        if b.len() > 64 {
            let mid = b.len() / 2;
            for x in &mut b[mid - 16..mid + 16] {
                *x ^= 0xA5;
            }
            std::fs::write(&e, b).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "a damaged store must not be used: {err}");
    assert!(err.contains("checkpoint store"), "{err}");
    assert!(err.contains("--from-scratch"), "{err}");
    assert!(!err.contains("resuming pipeline"), "{err}");

    let o = run(&["run", "--no-progress", "--from-scratch", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ids(&out).len(), 40_000);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Regression: a run killed after a checkpoint taken once its source had
/// read the last row (checkpoints go on while operators finish) resumed
/// with the source at the end, whose first snapshot failed ("a finished
/// source without a position"). It now completes from there, publishing
/// every row once.
#[test]
fn a_run_killed_after_a_checkpoint_at_the_end_resumes_there_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, out) = slow_pipeline(dir.path(), 20_000, "\"Id\"");
    // Checkpoints every 10 ms: one lands while the slow sink drains its
    // queue (about 100 ms of its throughput) after the source's last row.
    let text = std::fs::read_to_string(&p).unwrap().replace("interval = \"100ms\"", "interval = \"10ms\"");
    std::fs::write(&p, text).unwrap();
    let o = run(&["run", "--no-progress", &p], &[("ENGINE_FAULT", "after-checkpoint-at-end:1")]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "the fault did not fire: {}", stderr(&o));
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming pipeline resume from checkpoint"), "{}", stderr(&o));
    assert_eq!(ids(&out).len(), 20_000);
}
