//! `engine replay`: rejected rows through the pipeline again, after a rule
//! was fixed (a second pipeline file), into the real MariaDB and files.
//! The reference for "exactly once" is a run of the fixed pipeline from the
//! start into a database of its own: after a run of the strict pipeline and
//! a replay, the two databases hold the same rows.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::crash::write_input;
use crate::sql_sink::TestDb;
use crate::util::*;

/// Pipeline `name`: `input` validated (Gender one of `genders`), deduplicated,
/// into MariaDB and `out/names.csv`; rejects to `out/rejects.ndjson`;
/// `delay_ms` per batch in a blackhole beside them slows a run down.
pub(crate) fn pipeline(
    dir: &Path,
    file: &str,
    name: &str,
    input: &Path,
    genders: &str,
    db: &TestDb,
    delay_ms: u64,
) -> String {
    write_pipeline(
        dir,
        file,
        &format!(
            r#"
[pipeline]
name = "{name}"
batch_size = 1000
channel_capacity = 2
[pipeline.checkpoint]
interval = "100ms"
dir = "{dir}/ck-{name}"

[sources.names]
kind = "file"
path = "{input}"
{SCHEMA}

[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Name]
max_len = 64
[transforms.valid.rules.Year]
min = 1880
max = 2100
[transforms.valid.rules.Gender]
one_of = {genders}

[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]

[sinks.db]
kind = "sql"
inputs = ["unique"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true

[sinks.out]
kind = "file"
inputs = ["unique"]
path = "{dir}/out/names.csv"

[sinks.slow]
kind = "blackhole"
inputs = ["unique"]
delay_ms = {delay_ms}

[sinks.rejects]
kind = "file"
inputs = ["names.rejects", "valid.rejects"]
path = "{dir}/out/rejects.ndjson"
"#,
            dir = dir.display(),
            input = input.display(),
            url = db.url(),
        ),
    )
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The files of `dir` whose names start with `prefix` and end with `suffix`.
pub(crate) fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn ledger(dir: &Path) -> Vec<serde_json::Value> {
    lines(&dir.join("out/rejects.replays.ndjson"))
}

/// The sample, with a rule too strict (only M): the F rows are rejected.
/// After the rule is fixed (a second file), a replay of the `one_of`
/// rejects brings the database to exactly what the fixed pipeline writes
/// from the start; rows still wrong are rejected again at their original
/// lines; a second replay sends nothing twice.
#[test]
fn a_fixed_rule_replays_rejected_rows_into_mariadb_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("pipelines/data/NationalNames.sample.csv");
    let db = TestDb::new("replay");
    let strict = pipeline(dir.path(), "strict.toml", "names", &input, r#"["M"]"#, &db, 0);
    let fixed = pipeline(dir.path(), "fixed.toml", "names", &input, r#"["M", "F"]"#, &db, 0);
    let o = run(&["run", &strict], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rejected = lines(&dir.path().join("out/rejects.ndjson"));
    let one_of = rejected.iter().filter(|r| r["rule"] == "one_of").count();
    assert!(one_of > 1000, "the strict rule rejects the F rows: {one_of}");
    let before = db.rows();
    assert!(before.iter().all(|r| r.2 == "M"));

    // The reference: the fixed pipeline from the start, elsewhere.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_db = TestDb::new("replay_ref");
    let reference = pipeline(ref_dir.path(), "fixed.toml", "names", &input, r#"["M", "F"]"#, &ref_db, 0);
    let o = run(&["run", &reference], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = ref_db.rows();
    let ref_rejects = lines(&ref_dir.path().join("out/rejects.ndjson"));

    // A bad filter is refused before anything runs.
    let o = run(&["replay", &fixed, "--where", "colour=F"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown key `colour`"), "{}", stderr(&o));
    assert!(!dir.path().join("out/rejects.replays.ndjson").exists());

    let o = run(&["replay", &fixed, "--where", "rule=one_of", "--no-progress"], &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("{one_of} rejected rows match (rule=one_of)")), "{out}");
    let got = db.rows();
    assert_eq!(got.len(), want.len(), "{out}");
    assert_eq!(got, want, "after the replay the database holds what the fixed pipeline writes");

    // Rows still wrong (another rule now) are rejected again, at the lines
    // the reference run gives them, with their text.
    let again_files = files(&dir.path().join("out"), "rejects.replay-", ".ndjson");
    assert_eq!(again_files.len(), 1, "{again_files:?}");
    let again = lines(&again_files[0]);
    assert!(!again.is_empty());
    for r in &again {
        let same = ref_rejects.iter().find(|x| x["line"] == r["line"]);
        let same = same.unwrap_or_else(|| panic!("{r} is not rejected by the reference run"));
        assert_eq!((&same["raw"], &same["rule"]), (&r["raw"], &r["rule"]));
    }
    // The replay's own CSV output: the F rows, each once.
    let csv = files(&dir.path().join("out"), "names.replay-", ".csv");
    assert_eq!(csv.len(), 1, "{csv:?}");
    let f_rows = want.iter().filter(|r| r.2 == "F").count();
    assert_eq!(csv_rows(&csv[0]), f_rows);
    // The pipeline's own outputs are untouched, the replay's input and
    // checkpoint store are gone.
    assert_eq!(lines(&dir.path().join("out/rejects.ndjson")).len(), rejected.len());
    assert!(files(&dir.path().join("out"), ".rejects.replay-", ".csv").is_empty());
    assert!(files(dir.path(), "ck-names.replay-", "").is_empty());
    let l = ledger(dir.path());
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!((&l[0]["event"], l[0]["rows"].as_array().map(Vec::len)), (&"started".into(), Some(one_of)));
    assert_eq!((&l[1]["event"], &l[1]["rejected_again"]), (&"finished".into(), &again.len().into()));

    // A second replay takes only the rows rejected again (their first
    // replay), nothing that reached the sinks.
    let still_one_of = again.iter().filter(|r| r["rule"] == "one_of").count();
    let o = run(&["replay", &fixed, "--where", "rule=one_of", "--no-progress"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("{one_of} of them were replayed already")), "{out}");
    let l = ledger(dir.path());
    assert_eq!(l[2]["rows"].as_array().map(Vec::len), Some(still_one_of), "{out}");
    assert!(l[2]["rows"].as_array().unwrap().iter().all(|r| r["replays"] == 1));
    assert_eq!(db.rows(), want, "nothing was sent twice");
    let o = run(&["replay", &fixed, "--where", "rule=max", "--dry-run"], &[]);
    assert!(stdout(&o).contains("rows of source `names`: through the pipeline again"), "{}", stdout(&o));
}

/// kill -9 in the middle of a replay: the next `engine replay` resumes it
/// (the same rows, from its checkpoint) before anything else, and every
/// replayed row ends in the database and in the replay's file exactly once.
#[test]
fn a_replay_killed_mid_way_resumes_and_writes_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("names.csv");
    let unique = write_input(&input, 60_000);
    let db = TestDb::new("replay_kill");
    let strict = pipeline(dir.path(), "strict.toml", "names", &input, r#"["M"]"#, &db, 0);
    let fixed = pipeline(dir.path(), "fixed.toml", "names", &input, r#"["M", "F"]"#, &db, 60);
    let o = run(&["run", &strict], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f_rows: Vec<_> = unique.iter().filter(|r| r.3 == "F").collect();
    assert_eq!(lines(&dir.path().join("out/rejects.ndjson")).len(), f_rows.len());

    let mut child = engine()
        .args(["replay", &fixed, "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed a third of the way, after some checkpoints (every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.scalar("SELECT COUNT(*) FROM baby_names WHERE gender = 'F'") < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second replay of the same rejects meanwhile is refused.
    let o = run(&["replay", &fixed, "--no-progress"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("another `engine replay` of"), "{}", stderr(&o));
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "the replay was killed, not finished");
    let l = ledger(dir.path());
    assert_eq!(l.len(), 1, "started, not finished: {l:?}");
    let partial = db.scalar("SELECT COUNT(*) FROM baby_names WHERE gender = 'F'");
    assert!((partial as usize) < f_rows.len(), "killed before the end: {partial}");

    let o = run(&["replay", &fixed, "--no-progress"], &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let id = l[0]["replay"].as_str().unwrap();
    assert!(out.contains(&format!("resuming replay {id}")), "{out}");
    assert!(stderr(&o).contains("resuming pipeline names from checkpoint"), "{}", stderr(&o));
    assert!(out.contains("nothing to replay"), "the rows were the killed replay's: {out}");

    let want: std::collections::BTreeSet<_> =
        unique.iter().map(|(id, n, y, g, c)| (n.clone(), *y, g.clone(), *c, *id)).collect();
    assert_eq!(db.rows(), want);
    let csv = dir.path().join(format!("out/names.replay-{id}.csv"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut ids: Vec<i64> = text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a row twice in the replay's file");
    assert_eq!(n, f_rows.len());
    let l = ledger(dir.path());
    assert_eq!(
        (&l[1]["event"], &l[1]["rows"], &l[1]["rejected_again"]),
        (&"finished".into(), &f_rows.len().into(), &0.into())
    );
}

/// HubSpot refused a contact; once the cause is gone, `--where
/// operator=crm` sends that row to the HubSpot sink only: the other
/// contacts are not written again and the file sink gets nothing.
#[test]
fn a_hubspot_refusal_is_replayed_to_hubspot_only() {
    use simulators::hubspot::{Config, serve};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sim = rt.block_on(serve(Config::default(), "127.0.0.1:0".parse().unwrap())).expect("simulator");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    std::fs::write(&csv, "Name,Year,Gender,Count\nAnn,1990,F,10\nBob,1990,M,12\nCid,1990,M,7\n").unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "crm"
[pipeline.checkpoint]
interval = "1s"
dir = "{dir}/ck"
[sources.names]
kind = "file"
path = "{csv}"
schema = [{{ name = "Name", type = "string" }}, {{ name = "Year", type = "int64" }}, {{ name = "Gender", type = "string" }}, {{ name = "Count", type = "int64" }}]
[sinks.crm]
kind = "hubspot"
inputs = ["names"]
base_url = "{base}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_count = "{{Count}}" }}
property_types = {{ baby_count = "number" }}
[sinks.out]
kind = "file"
inputs = ["names"]
path = "{dir}/out.csv"
[sinks.rejects]
kind = "file"
inputs = ["crm.rejects", "names.rejects"]
path = "{dir}/rejects.ndjson"
"#,
            dir = dir.path().display(),
            csv = csv.display(),
            base = sim.base_url()
        ),
    );
    sim.refuse(&["Bob|M|1990"]);
    let o = run(&["run", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
    assert_eq!(ids, ["Ann|F|1990", "Cid|M|1990"]);
    let refused = lines(&dir.path().join("rejects.ndjson"));
    assert_eq!((refused.len(), &refused[0]["operator"], &refused[0]["line"]), (1, &"crm".into(), &3.into()));

    sim.accept_all();
    let o = run(&["replay", &p, "--where", "operator=crm", "--no-progress"], &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("1 rows of source `names` refused by sink `crm`: to `crm` again"), "{}", stdout(&o));
    let contacts = sim.contacts();
    let got: Vec<(String, u64)> = contacts.iter().map(|c| (c.id_value.clone(), c.writes)).collect();
    assert_eq!(
        got,
        [("Ann|F|1990".to_string(), 1), ("Bob|M|1990".to_string(), 1), ("Cid|M|1990".to_string(), 1)],
        "Bob written once, the others not again"
    );
    assert_eq!(contacts[1].properties.get("baby_count").map(String::as_str), Some("12"));
    assert!(files(dir.path(), "out.replay-", ".csv").is_empty(), "the file sink had the row already");
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3);
    let o = run(&["replay", &p, "--where", "operator=crm"], &[]);
    assert!(stdout(&o).contains("nothing to replay"), "{}", stdout(&o));
}

/// Through a `changes` transform (the daily job's shape): the replay's
/// store is its own, so every replayed row passes and no key is deleted;
/// the database ends as the fixed pipeline from the start leaves it.
#[test]
fn a_replay_through_changes_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("pipelines/data/NationalNames.sample.csv");
    let with_changes = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap().replace(
            "[sinks.db]\nkind = \"sql\"\ninputs = [\"unique\"]",
            "[transforms.changed]\nkind = \"changes\"\ninputs = [\"unique\"]\nkey = [\"Name\", \"Year\", \"Gender\"]\n\n[sinks.db]\nkind = \"sql\"\ninputs = [\"changed\"]\ndeletes = [\"changed.deleted\"]",
        );
        assert!(text.contains("kind = \"changes\""));
        std::fs::write(path, text).unwrap();
    };
    let db = TestDb::new("replay_changes");
    let strict = pipeline(dir.path(), "strict.toml", "names", &input, r#"["M"]"#, &db, 0);
    let fixed = pipeline(dir.path(), "fixed.toml", "names", &input, r#"["M", "F"]"#, &db, 0);
    with_changes(&strict);
    with_changes(&fixed);
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_db = TestDb::new("replay_changes_ref");
    let reference = pipeline(ref_dir.path(), "fixed.toml", "names", &input, r#"["M", "F"]"#, &ref_db, 0);
    with_changes(&reference);
    let o = run(&["run", &reference], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run(&["run", &strict], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m_rows = db.rows().len();
    assert!(m_rows > 1000);
    let o = run(&["replay", &fixed, "--no-progress"], &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    // The row whose text was not UTF-8 is not replayed from its lossy copy.
    assert!(stdout(&o).contains("1 cannot be replayed: its text held bytes that are not UTF-8"), "{}", stdout(&o));
    let (got, want) = (db.rows(), ref_db.rows());
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}\n{}", stdout(&o));
    assert_eq!(db.rows().iter().filter(|r| r.2 == "M").count(), m_rows, "no M row was deleted");
}
