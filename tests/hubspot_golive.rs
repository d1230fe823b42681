//! HubSpot go-live, end to end over real HTTP: a fresh portal gets its
//! properties before the first record, vanished names are archived in
//! HubSpot and deleted from MariaDB (with the mass-delete guard), refused
//! records are offered again in later runs, a dry run predicts the real run
//! and calls nobody, and a kill -9 among the archives still ends exact.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use simulators::hubspot::{Config, Handle, PropertyDef, PropertyType};

use crate::kaggle::{CREDS, pipeline, runtime, start};
use crate::sql_sink::TestDb;
use crate::util::*;

fn crm(rt: &tokio::runtime::Runtime, cfg: Config) -> Handle {
    rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("hubspot simulator")
}

/// Rows `0..n` minus those `gone` says vanished; `bump` rows get a new Count.
fn names(n: usize, gone: impl Fn(usize) -> bool, bump: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut s = String::from("Id,Name,Year,Gender,Count\n");
    for i in (0..n).filter(|&i| !gone(i)) {
        let count = if bump(i) { 5000 + i } else { 5 + i % 700 };
        s.push_str(&format!("{},N{:05},{},{},{count}\n", i + 1, i / 2, 1900 + i % 100, gender(i)));
    }
    s.into_bytes()
}

fn gender(i: usize) -> &'static str {
    if i % 2 == 0 { "F" } else { "M" }
}

/// The HubSpot id value of row `i`, as the pipelines' `id` template renders it.
fn key(i: usize) -> String {
    format!("N{:05}|{}|{}", i / 2, gender(i), 1900 + i % 100)
}

/// The sinks of the daily job (babynames-kaggle.toml) against `crm` and,
/// when given, MariaDB.
fn sinks(crm: &Handle, db: Option<&TestDb>, extra: &str) -> String {
    let db = db
        .map(|db| {
            format!(
                r#"
[sinks.db]
kind = "sql"
inputs = ["changed"]
deletes = ["changed.deleted"]
url = "{}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
"#,
                db.url()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[transforms.changed]
kind = "changes"
inputs = ["unique"]
key = ["Name", "Year", "Gender"]
ignore = ["Id"]
{db}
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
linger_ms = 50
{extra}
[sinks.crm_rejects]
kind = "file"
inputs = ["crm.rejects"]
path = "{{OUT}}/crm-rejects.ndjson"
"#,
        base = crm.base_url()
    )
}

fn kaggle_pipeline(dir: &Path, kaggle: &simulators::kaggle::Handle, sinks: &str) -> String {
    pipeline(dir, kaggle, &sinks.replace("{OUT}", &dir.display().to_string()))
}

fn active_keys(crm: &Handle) -> BTreeSet<String> {
    crm.contacts().into_iter().map(|c| c.properties["baby_key"].clone()).collect()
}

fn search_total(rt: &tokio::runtime::Runtime, crm: &Handle, key: &str) -> u64 {
    let body =
        json!({ "filterGroups": [{ "filters": [{ "propertyName": "baby_key", "operator": "EQ", "value": key }] }] });
    let v: Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/crm/v3/objects/contacts/search", crm.base_url()))
            .bearer_auth("sim-token")
            .json(&body)
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("search body")
    });
    v["total"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// The numbers after `label` in a line starting with `prefix`, e.g. the
/// `12 created` of `crm: 12 created, 3 updated`.
fn figure(text: &str, prefix: &str, label: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"));
    line.split(", ")
        .flat_map(|part| part.split(": "))
        .find_map(|part| part.strip_suffix(label).and_then(|n| n.trim().replace(',', "").parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_fresh_portal_gets_its_properties_before_the_first_record() {
    let rt = runtime();
    let sim = crm(&rt, Config::default());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let env = [
        ("HUBSPOT_TOKEN", "sim-token"),
        ("HUBSPOT_BASE_URL", &sim.base_url()),
        ("OUTPUT_DIR", out),
        ("DATABASE_URL", &format!("sqlite://{out}/b.db")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v as &str)).collect();

    // The main job against a portal that has none of its properties.
    let o = run(&["run", "--no-progress", "pipelines/babynames.toml"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let props = sim.properties();
    let find = |n: &str| props.iter().find(|p| p.name == n).unwrap_or_else(|| panic!("{n} not created"));
    assert!(find("baby_key").has_unique_value, "the id property is created unique");
    assert_eq!(find("baby_year").property_type, PropertyType::Number);
    assert_eq!(find("baby_count").property_type, PropertyType::Number);
    assert_eq!(find("baby_gender").property_type, PropertyType::Enumeration);
    assert_eq!(find("baby_gender").options.len(), 2);
    assert_eq!(sim.contacts().len(), 3004, "every unique row landed: {}", stdout(&o));
    assert_eq!(std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap().lines().count(), 11);

    // Setup again: reads, creates nothing.
    let before = (sim.properties().len(), sim.stats().property_requests);
    let o = run(&["hubspot", "setup", "pipelines/babynames.toml"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to change"), "{}", stdout(&o));
    assert_eq!(sim.properties().len(), before.0);
    assert_eq!(sim.stats().property_requests, before.1 + 1, "one list request, no create");

    // create_properties = false on a fresh portal: stops before sending.
    let fresh = crm(&rt, Config::default());
    let text = std::fs::read_to_string(repo().join("pipelines/babynames.toml")).unwrap();
    let strict = text.replace("property_types =", "create_properties = false\nproperty_types =");
    let p = write_pipeline(dir.path(), "strict.toml", &strict);
    let mut env2 = env.clone();
    let url = fresh.base_url();
    env2[1] = ("HUBSPOT_BASE_URL", &url);
    let o = run(&["run", "--no-progress", &p], &env2);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("HubSpot has no contacts properties baby_key, baby_count, baby_gender, baby_year"), "{err}");
    assert!(err.contains("engine hubspot setup"), "{err}");
    assert_eq!(fresh.stats().upsert_requests, 0, "nothing sent");
    assert!(fresh.properties().iter().all(|p| !p.name.starts_with("baby_")), "nothing created");

    // An id property that exists but is not unique: stops before sending.
    let bad = crm(&rt, Config::default());
    bad.create_property(PropertyDef::new("baby_key", "Baby key", PropertyType::String, "contactinformation"))
        .expect("property");
    let url = bad.base_url();
    env2[1] = ("HUBSPOT_BASE_URL", &url);
    let o = run(&["run", "--no-progress", "pipelines/babynames.toml"], &env2);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("`baby_key` exists in HubSpot but does not hold unique values"), "{}", stderr(&o));
    assert_eq!(bad.stats().upsert_requests, 0, "nothing sent");
}

#[test]
fn vanished_names_are_archived_and_deleted_and_a_dry_run_predicts_it() {
    let rt = runtime();
    let n = 4000;
    let kaggle = start(&rt, names(n, |_| false, |_| false));
    let sim = crm(&rt, Config::default());
    let db = TestDb::new("mirror");
    let dir = tempfile::tempdir().unwrap();
    let p = kaggle_pipeline(dir.path(), &kaggle, &sinks(&sim, Some(&db), ""));
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), n);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), n as i64);

    // Version 2: 1% of the names gone, 1% changed.
    let gone = |i: usize| i % 100 == 7;
    let bump = |i: usize| i % 100 == 50;
    kaggle.publish_version("kaggle/us-baby-names", vec![("NationalNames.csv".into(), names(n, gone, bump))]);
    let removed: BTreeSet<String> = (0..n).filter(|&i| gone(i)).map(key).collect();

    // The dry run: the plan, and not one request to HubSpot.
    let calls = sim.stats().requests;
    let o = run(&["run", "--dry-run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    assert_eq!(sim.stats().requests, calls, "a dry run calls nobody:\n{plan}");
    assert!(plan.contains("sink crm (hubspot): 40 to update, 40 to delete"), "{plan}");
    assert!(plan.contains("sink db (sql): 40 to write, 40 to delete"), "{plan}");
    let example = plan.lines().find_map(|l| l.trim().strip_prefix("e.g. delete: ")).unwrap_or_else(|| panic!("{plan}"));
    assert!(removed.contains(example), "{example} is one of the removed names");
    assert!(plan.contains("delete guard: 40 of 4,000 held, max_delete_ratio = 0.05: within the limit"), "{plan}");

    // The real run does what the plan said, with the fewest requests:
    // the property check, one upsert and one archive.
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stdout(&o);
    assert_eq!(figure(&summary, "crm: ", " created"), 0, "{summary}");
    assert_eq!(figure(&summary, "crm: ", " updated"), 40, "{summary}");
    assert_eq!(figure(&summary, "crm: ", " archived"), 40, "{summary}");
    assert_eq!(figure(&summary, "db: ", " deleted"), 40, "{summary}");
    assert_eq!(sim.stats().requests - calls, 3, "list properties + 1 upsert + 1 archive: {:?}", sim.stats());
    let expected: BTreeSet<String> = (0..n).filter(|&i| !gone(i)).map(key).collect();
    assert_eq!(active_keys(&sim), expected);
    let archived: BTreeSet<String> = sim.archived().into_iter().map(|c| c.properties["baby_key"].clone()).collect();
    assert_eq!(archived, removed);
    assert_eq!(search_total(&rt, &sim, "N00003|M|1907"), 0, "gone from search");
    assert_eq!(search_total(&rt, &sim, "N00004|F|1908"), 1);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), (n - removed.len()) as i64);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names WHERE name = 'N00003' AND year = 1907"), 0);

    // Version 3 drops half: refused before anything is written.
    kaggle.publish_version(
        "kaggle/us-baby-names",
        vec![("NationalNames.csv".into(), names(n, |i| gone(i) || i % 2 == 0, bump))],
    );
    let before = sim.stats();
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "sink `crm` would delete 2,000 of the 3,960 records it holds (50.5%), more than max_delete_ratio = 0.05"
        ),
        "{err}"
    );
    assert!(err.contains("--allow-mass-delete"), "{err}");
    assert_eq!(sim.stats().requests, before.requests, "the guard calls nobody");
    assert_eq!(sim.contacts().len(), n - removed.len());
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), (n - removed.len()) as i64);

    // Told so, it goes through.
    let o = run(&["run", "--no-progress", "--allow-mass-delete", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), 1960);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 1960);
}

#[test]
fn a_refused_record_is_offered_again_until_hubspot_accepts_it() {
    let rt = runtime();
    let n = 300;
    let kaggle = start(&rt, names(n, |_| false, |_| false));
    let sim = crm(&rt, Config::default());
    let dir = tempfile::tempdir().unwrap();
    let p = kaggle_pipeline(dir.path(), &kaggle, &sinks(&sim, None, ""));
    let refused = key(42);
    sim.refuse(&[refused.as_str()]);
    let rejects = dir.path().join("crm-rejects.ndjson");

    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), n - 1);
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert!(text.contains(&refused) && text.contains("offered again in the next run"), "{text}");

    // Unchanged input, still refused: the run is not skipped as up to date,
    // and the reject counts the attempts.
    let inputs = sim.stats().inputs_received;
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("is up to date"), "{}", stdout(&o));
    assert_eq!(sim.stats().inputs_received - inputs, 1, "only the refused record is sent");
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert!(text.contains("refused 2 times"), "{text}");

    // HubSpot accepts it now: it lands, and the run after that is idle.
    sim.accept_all();
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 refused earlier and retried (1 accepted)"), "{}", stdout(&o));
    assert_eq!(sim.contacts().len(), n);
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(stdout(&o).contains("is up to date"), "{}", stdout(&o));
}

#[test]
fn kill_9_among_the_archives_then_a_rerun_ends_exact() {
    let rt = runtime();
    let n = 3000;
    let kaggle = start(&rt, names(n, |_| false, |_| false));
    // Slow answers keep archives in flight long enough to be killed among.
    let sim = crm(&rt, Config { latency: Duration::from_millis(150), ..Config::default() });
    let dir = tempfile::tempdir().unwrap();
    let p = kaggle_pipeline(dir.path(), &kaggle, &sinks(&sim, None, "concurrency = 1"));
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));

    let gone = |i: usize| i % 25 == 3; // 4%: 120 keys, two archive requests
    let bump = |i: usize| i % 50 == 10;
    kaggle.publish_version("kaggle/us-baby-names", vec![("NationalNames.csv".into(), names(n, gone, bump))]);
    let mut child = engine()
        .args(["run", "--no-progress", "--checkpoint-interval", "100ms", &p])
        .envs(CREDS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("engine");
    let archives = sim.stats().archive_requests;
    let t = Instant::now();
    while sim.stats().archive_requests == archives {
        assert!(t.elapsed() < Duration::from_secs(60), "no archive request came");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before archiving");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    assert!(sim.stats().archive_requests < archives + 2, "killed among the archives");

    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected: BTreeSet<String> = (0..n).filter(|&i| !gone(i)).map(key).collect();
    assert_eq!(active_keys(&sim), expected, "exactly the names of version 2");
    let archived: BTreeSet<String> = sim.archived().into_iter().map(|c| c.properties["baby_key"].clone()).collect();
    assert_eq!(archived, (0..n).filter(|&i| gone(i)).map(key).collect::<BTreeSet<_>>());
    for c in sim.contacts() {
        let i = (0..n).find(|&i| key(i) == c.properties["baby_key"]).expect("known key");
        let count = if bump(i) { 5000 + i } else { 5 + i % 700 };
        assert_eq!(c.properties["baby_count"], count.to_string(), "{}", c.properties["baby_key"]);
    }
}
