//! The hubspot sink against the simulator over real HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use simulators::hubspot::{Config, Handle, serve};

use crate::util::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn start(rt: &tokio::runtime::Runtime, cfg: Config) -> Handle {
    rt.block_on(serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("simulator")
}

/// (id, properties) the sample's unique rows must become, from the CSV
/// written by the same run.
fn expected_contacts(csv: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    babynames_rows(csv)
        .into_iter()
        .map(|(_, name, year, gender, count)| {
            let id = format!("{name}|{gender}|{year}");
            let props = BTreeMap::from([
                ("baby_count".to_string(), count.to_string()),
                ("baby_gender".to_string(), gender),
                ("baby_key".to_string(), id.clone()),
                ("baby_year".to_string(), year.to_string()),
                ("firstname".to_string(), name),
            ]);
            (id, props)
        })
        .collect()
}

/// A pipeline in `dir`: a CSV with a string Count straight into a hubspot
/// sink at `base_url` with `properties` (baby_count a number property),
/// its rejects into `rejects.ndjson`.
fn crm_pipeline(dir: &Path, csv: &Path, base_url: &str, properties: &str) -> String {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[sources.names]
kind = "file"
path = "{}"
schema = [{{ name = "Name", type = "string" }}, {{ name = "Year", type = "int64" }}, {{ name = "Gender", type = "string" }}, {{ name = "Count", type = "string" }}]
[sinks.crm]
kind = "hubspot"
inputs = ["names"]
base_url = "{base_url}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {properties}
property_types = {{ baby_count = "number" }}
[sinks.rejects]
kind = "file"
inputs = ["crm.rejects", "names.rejects"]
path = "{}"
"#,
            csv.display(),
            dir.join("rejects.ndjson").display()
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn babynames(dir: &Path, sim: &Handle, token: &str) -> std::process::Output {
    let out = dir.display().to_string();
    let db = format!("sqlite://{}/babynames.db", dir.display());
    let base = sim.base_url();
    run(
        &["run", "pipelines/babynames.toml"],
        &[("OUTPUT_DIR", &out), ("DATABASE_URL", &db), ("HUBSPOT_BASE_URL", &base), ("HUBSPOT_TOKEN", token)],
    )
}

#[test]
fn every_sample_contact_lands_once_with_its_properties_within_the_limit() {
    let rt = runtime();
    let sim = start(&rt, Config::default());
    let dir = tempfile::tempdir().unwrap();
    let o = babynames(dir.path(), &sim, "sim-token");
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = expected_contacts(&dir.path().join("babynames.csv"));
    assert_eq!(expected.len(), 3004);
    let got: BTreeMap<String, BTreeMap<String, String>> =
        sim.contacts().into_iter().map(|c| (c.id_value, c.properties)).collect();
    assert_eq!(got, expected);
    let st = sim.stats();
    assert_eq!(st.rate_limited_window + st.rate_limited_daily, 0, "{st:?}");
    assert_eq!(st.upsert_requests, 31, "3004 contacts in full batches of 100");
    assert_eq!(st.requests, 31 + 4, "and the property check: list, list groups, create the group, batch create");
    assert!(sim.contacts().iter().all(|c| c.writes == 1));
}

#[test]
fn a_429_storm_and_5_percent_5xx_lose_nothing_and_duplicate_nothing() {
    let rt = runtime();
    let cfg = Config {
        window_requests: 40,
        window: Duration::from_millis(1000),
        error_rate: 0.05,
        retry_after: true,
        ..Default::default()
    };
    let sim = start(&rt, cfg);
    let dir = tempfile::tempdir().unwrap();
    // Another client spends most of the shared window while we run.
    let base = sim.base_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let noisy = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = reqwest::Client::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = rt.block_on(client.post(format!("{base}/_sim/consume?n=30")).send());
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    let pipeline = std::fs::read_to_string(repo().join("pipelines/babynames.toml"))
        .unwrap()
        .replace(
            r#"rate_limit = { requests = 100, per = "10s", daily = 250000 }"#,
            r#"rate_limit = { requests = 40, per = "1s" }"#,
        )
        .replace("[sinks.crm]\n", "[sinks.crm]\nbatch_size = 25\ncircuit_open_ms = 200\n");
    let p = dir.path().join("p.toml");
    std::fs::write(&p, pipeline).unwrap();
    let out = dir.path().display().to_string();
    let db = format!("sqlite://{}/babynames.db", dir.path().display());
    let base = sim.base_url();
    let o = run(
        &["run", p.to_str().unwrap()],
        &[("OUTPUT_DIR", &out), ("DATABASE_URL", &db), ("HUBSPOT_BASE_URL", &base), ("HUBSPOT_TOKEN", "sim-token")],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noisy.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st = sim.stats();
    assert!(st.rate_limited_window > 0, "no 429 storm happened: {st:?}");
    assert!(st.by_status.get(&502).copied().unwrap_or(0) > 0, "no 5xx injected: {st:?}");
    let expected = expected_contacts(&dir.path().join("babynames.csv"));
    let contacts = sim.contacts();
    assert_eq!(contacts.len(), expected.len());
    let got: BTreeMap<String, BTreeMap<String, String>> =
        contacts.into_iter().map(|c| (c.id_value, c.properties)).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_record_hubspot_refuses_goes_to_rejects_and_its_batch_mates_are_delivered() {
    let rt = runtime();
    let sim = start(&rt, Config::default());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    std::fs::write(&csv, "Name,Year,Gender,Count\nAnn,1990,F,10\nBob,1990,M,lots\nCid,1990,M,7\n").unwrap();
    let rejects = dir.path().join("rejects.ndjson");
    let p = crm_pipeline(dir.path(), &csv, &sim.base_url(), r#"{ firstname = "{Name}", baby_count = "{Count}" }"#);
    let o = run(&["run", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
    assert_eq!(ids, ["Ann|F|1990", "Cid|M|1990"]);
    let text = std::fs::read_to_string(&rejects).unwrap();
    let r: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(r.len(), 1, "{text}");
    assert_eq!(r[0]["line"], 3);
    assert_eq!(r[0]["operator"], "crm");
    assert_eq!(r[0]["value"], "Bob|M|1990");
    let reason = r[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("HubSpot VALIDATION_ERROR: Property values were not valid") && reason.contains("lots"),
        "{reason}"
    );
}

#[test]
fn a_missing_or_refused_token_names_its_variable_never_its_value() {
    let rt = runtime();
    let sim = start(&rt, Config::default());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = std::fs::read_to_string(repo().join("pipelines/babynames.toml"))
        .unwrap()
        .replace(r#"token = "${HUBSPOT_TOKEN:-}""#, r#"token = "${HUBSPOT_TEST_TOKEN}""#);
    let p = dir.path().join("p.toml");
    std::fs::write(&p, pipeline).unwrap();
    let out = dir.path().display().to_string();
    let db = format!("sqlite://{}/babynames.db", dir.path().display());
    let base = sim.base_url();
    let env = [("OUTPUT_DIR", out.as_str()), ("DATABASE_URL", db.as_str()), ("HUBSPOT_BASE_URL", base.as_str())];
    let o = run(&["run", p.to_str().unwrap()], &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("environment variable `HUBSPOT_TEST_TOKEN` is not set"), "{}", stderr(&o));

    let secret = "pat-na1-not-the-right-token-4242";
    let mut env2 = env.to_vec();
    env2.push(("HUBSPOT_TEST_TOKEN", secret));
    let o = run(&["run", p.to_str().unwrap()], &env2);
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains("operator `crm` failed: HubSpot refused the token from $HUBSPOT_TEST_TOKEN (HTTP 401"),
        "{all}"
    );
    assert!(!all.contains(secret), "token leaked:\n{all}");
    assert_eq!(sim.stats().requests, 1, "fails fast: one refused request (the property check), no retries");
}

#[test]
fn without_a_token_the_outbox_holds_the_exact_request_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let db = format!("sqlite://{}/babynames.db", dir.path().display());
    let o = run(&["run", "pipelines/babynames.toml"], &[("OUTPUT_DIR", &out), ("DATABASE_URL", &db)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no token: writing request bodies to"), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("hubspot-outbox.ndjson")).unwrap();
    let bodies: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(bodies.len(), 31);
    let mut ids = std::collections::BTreeSet::new();
    for b in &bodies {
        let inputs = b["inputs"].as_array().unwrap();
        assert!(!inputs.is_empty() && inputs.len() <= 100);
        for i in inputs {
            assert_eq!(i["idProperty"], "baby_key");
            assert!(i["objectWriteTraceId"].is_string());
            assert!(ids.insert(i["id"].as_str().unwrap().to_string()), "id twice: {}", i["id"]);
            assert_eq!(i["properties"]["firstname"], i["id"].as_str().unwrap().split('|').next().unwrap());
        }
    }
    let expected = expected_contacts(&dir.path().join("babynames.csv"));
    assert_eq!(ids, expected.keys().cloned().collect());
}

/// When HubSpot refuses a whole batch (400) for one bad record, the sink
/// halves it until the record is alone: 99 good ones still land.
#[test]
fn a_batch_refused_whole_is_split_to_isolate_the_bad_record() {
    let rt = runtime();
    let sim = start(&rt, Config { partial_207: false, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    let mut text = String::from("Name,Year,Gender,Count\n");
    for i in 0..100 {
        let count = if i == 37 { "lots".to_string() } else { i.to_string() };
        text.push_str(&format!("N{i},1990,F,{count}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let rejects = dir.path().join("rejects.ndjson");
    let p = crm_pipeline(dir.path(), &csv, &sim.base_url(), r#"{ baby_count = "{Count}" }"#);
    let o = run(&["run", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.contacts().len(), 99);
    let r: Vec<Value> =
        std::fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["value"], "N37|F|1990");
    assert_eq!(r[0]["line"], 39);
    // 1 refused batch of 100, then halves: log2(100) levels, far fewer than 100 requests.
    let st = sim.stats();
    assert!(st.upsert_requests <= 16, "{st:?}");
}

/// Regression: with repeated ids in different batches and 4 requests in
/// flight, an older row's request could be answered after a newer one's,
/// leaving the older value in HubSpot. A newer row now waits for the older
/// request of its id.
#[test]
fn the_later_row_of_an_id_always_lands_last() {
    let rt = runtime();
    // Every third request stalls, so later requests overtake earlier ones.
    let sim = start(
        &rt,
        Config {
            properties: simulators::hubspot::babynames_properties(),
            stall_every: Some(3),
            stall: Duration::from_millis(150),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    let mut text = String::from("Name,Year,Gender,Count\n");
    for version in 1..=3 {
        for i in 0..270 {
            text.push_str(&format!("N{i},1990,F,{}\n", version * 1000 + i));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let p = crm_pipeline(dir.path(), &csv, &sim.base_url(), r#"{ baby_count = "{Count}" }"#);
    let o = run(&["run", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let contacts = sim.contacts();
    assert_eq!(contacts.len(), 270);
    let stale: Vec<String> = contacts
        .iter()
        .filter(|c| !c.properties["baby_count"].starts_with('3'))
        .map(|c| format!("{}={}", c.id_value, c.properties["baby_count"]))
        .collect();
    assert!(stale.is_empty(), "older values won: {stale:?}");
}

/// Regression: every run used to start a fresh daily budget, so three runs
/// on one day could send three days' worth. The count now travels with the
/// checkpoints and every run of the day shares it.
#[test]
fn runs_of_one_day_share_the_daily_budget() {
    let rt = runtime();
    let sim = start(&rt, Config { properties: simulators::hubspot::babynames_properties(), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    let mut text = String::from("Name,Year,Gender,Count\n");
    for i in 0..300 {
        text.push_str(&format!("N{i},1990,F,{i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let p = crm_pipeline(dir.path(), &csv, &sim.base_url(), r#"{ baby_count = "{Count}" }"#);
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "[sinks.rejects]",
        "rate_limit = { requests = 100, per = \"1s\", daily = 6 }\non_daily_limit = \"fail\"\n[sinks.rejects]",
    );
    std::fs::write(&p, text).unwrap();
    // A run: the property check and 3 upserts.
    let o = run(&["run", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.stats().requests, 4);
    // The next run of the day has 2 requests left: it stops at the budget.
    let o = run(&["run", &p], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the daily budget of 6 HubSpot requests is spent"), "{}", stderr(&o));
    assert_eq!(sim.stats().requests, 6, "never more than the day's budget over both runs");
}
