//! Alerts from `engine run`, delivered over real HTTP to a local receiver
//! that records what it gets: a failure pages (PagerDuty, Slack, webhook
//! shapes), the next success resolves with the same dedup key, a third run
//! says nothing; a receiver that fails twice gets the alert once, and one
//! that never answers does not fail the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::out_dir;
use crate::util::*;

/// An HTTP receiver on 127.0.0.1: answers each request with the next status
/// of `script` (then 202), records (path, status, body), and each body's
/// bytes with its `x-engine-signature-256` header.
pub(crate) struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, u16, Value)>>>,
    signed: Arc<Mutex<Vec<(Vec<u8>, Option<String>)>>>,
}

impl Receiver {
    pub(crate) fn start(script: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        let signed = Arc::new(Mutex::new(Vec::new()));
        let sigs = signed.clone();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0;
                let mut sig = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if let Some(v) = lower.strip_prefix("x-engine-signature-256:") {
                        sig = Some(v.trim().to_string());
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let status = script.next().unwrap_or(202);
                sigs.lock().unwrap().push((body.clone(), sig));
                log.lock().unwrap().push((path, status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        Receiver { port, got, signed }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The bodies received so far (kept).
    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(|g| g.2.clone()).collect()
    }

    fn take(&self) -> Vec<(String, u16, Value)> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

fn pipeline(dir: &std::path::Path, alerts: &str) -> String {
    alert_pipeline(dir, "alerting", alerts)
}

/// Pipeline `name`: `$INPUT` to a CSV file, rejects to NDJSON, with the
/// `[alerts]` and `[secrets]` tables of `alerts`.
pub(crate) fn alert_pipeline(dir: &std::path::Path, name: &str, alerts: &str) -> String {
    write_pipeline(
        dir,
        &format!("{name}.toml"),
        &format!(
            r#"[pipeline]
name = "{name}"
[pipeline.checkpoint]
dir = "{dir}/checkpoints"

[sources.names]
kind = "file"
path = "${{INPUT}}"
{SCHEMA}

[sinks.out]
kind = "file"
inputs = ["names"]
path = "{dir}/out.csv"

[sinks.rejects]
kind = "file"
inputs = ["names.rejects"]
path = "{dir}/rejects.ndjson"

{alerts}"#,
            dir = dir.display()
        ),
    )
}

#[test]
fn alerts_a_failure_pages_and_the_next_success_resolves_it() {
    let rx = Receiver::start(vec![]);
    let dir = out_dir();
    let mounted = dir.path().join("secrets");
    std::fs::create_dir_all(&mounted).unwrap();
    let key = "pd-routing-key-0123456789abcdef";
    std::fs::write(mounted.join("pagerduty"), key).unwrap();
    let file = pipeline(
        dir.path(),
        &format!(
            r#"[secrets.mounted]
kind = "directory"
path = "{}"

[alerts.oncall]
kind = "pagerduty"
routing_key = "SECRET[mounted.pagerduty]"
url = "{}"
on = ["failed", "recovered"]
public_url = "https://engine.example.com"

[alerts.team]
kind = "slack"
webhook_url = "{}"

[alerts.hook]
kind = "webhook"
url = "{}"
"#,
            mounted.display(),
            rx.url("/pd"),
            rx.url("/slack"),
            rx.url("/hook")
        ),
    );
    let sample = repo().join("pipelines/data/NationalNames.sample.csv").display().to_string();
    let missing = dir.path().join("missing.csv").display().to_string();

    // 1. A failed run pages every receiver.
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &missing)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains(key));
    let mut got = rx.take();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let paths: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(paths, ["/hook", "/pd", "/slack"], "{got:?}");
    let pd = &got[1].2;
    assert_eq!(pd["routing_key"], key);
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], "engine/alerting/failed");
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["custom_details"]["operator"], "names");
    assert!(
        pd["payload"]["summary"].as_str().unwrap().starts_with("pipeline alerting failed: operator `names`"),
        "{pd}"
    );
    assert!(pd["links"][0]["href"].as_str().unwrap().starts_with("https://engine.example.com/runs/"));
    let slack = &got[2].2;
    assert!(
        slack["blocks"][0]["text"]["text"].as_str().unwrap().starts_with(":red_circle: pipeline alerting failed"),
        "{slack}"
    );
    let hook = &got[0].2;
    assert_eq!((hook["condition"].as_str(), hook["action"].as_str()), (Some("failed"), Some("trigger")));
    let run_id = hook["run_id"].as_str().unwrap().to_string();
    assert!(stderr(&o).contains(&run_id), "the run id is in the logs too");

    // 2. The next success resolves, with the same key.
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &sample)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = rx.take();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[1].2["event_action"], "resolve");
    assert_eq!(got[1].2["dedup_key"], "engine/alerting/failed");
    assert_eq!(got[0].2["condition"], "recovered");
    assert!(got[2].2["text"].as_str().unwrap().contains("recovered"));

    // 3. Another success: nothing to say.
    let o = run(&["run", "--no-progress", "--from-scratch", &file], &[("INPUT", &sample)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rx.take().len(), 0);
}

#[test]
fn alerts_are_retried_and_never_fail_the_run() {
    // Fails twice, then accepts: one alert, three attempts.
    let rx = Receiver::start(vec![503, 500]);
    let dir = out_dir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let file = pipeline(
        dir.path(),
        &format!(
            r#"[alerts.hook]
kind = "webhook"
url = "{}"
on = ["rejects_ratio > 0.001"]
hmac_secret = "whsec-alerts-test-5150"

[alerts.gone]
kind = "webhook"
url = "http://127.0.0.1:{closed}/x"
on = ["rejects_ratio > 0.001"]
attempts = 2
"#,
            rx.url("/hook")
        ),
    );
    let sample = repo().join("pipelines/data/NationalNames.sample.csv").display().to_string();
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &sample)]);
    let err = stderr(&o);
    assert!(o.status.success(), "an undeliverable alert does not fail the run: {err}");
    let got = rx.take();
    let statuses: Vec<u16> = got.iter().map(|g| g.1).collect();
    assert_eq!(statuses, [503, 500, 202]);
    assert!(got.iter().all(|g| g.2 == got[2].2), "every attempt carries the same alert");
    assert_eq!(got[2].2["condition"], "rejects_ratio");
    assert!(got[2].2["summary"].as_str().unwrap().contains("rows rejected"), "{}", got[2].2);
    assert!(err.contains("alert not delivered") && err.contains("after 2 attempts"), "{err}");
    // Signed as GitHub signs webhooks: HMAC-SHA256 of the exact body.
    let signed = rx.signed.lock().unwrap().clone();
    assert_eq!(signed.len(), 3);
    for (body, sig) in &signed {
        assert_eq!(sig.as_deref(), Some(format!("sha256={}", alerts::sign("whsec-alerts-test-5150", body)).as_str()));
    }
    assert!(!err.contains("whsec-alerts-test-5150"));

    // A config error in an alert is a config error, at its place.
    let bad = pipeline(
        dir.path(),
        "[alerts.x]\nkind = \"pagerduty\"\nrouting_key = \"k\"\non = [\"failed\", \"rejects_ratio > 5\"]\n",
    );
    let o = run(&["validate", &bad], &[("INPUT", &sample)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("[alerts.x]: `rejects_ratio > 5`: write rejects_ratio > 0.01"), "{}", stderr(&o));
}

/// `hubspot_daily_quota > R`: the share of the daily API quota HubSpot says
/// is used (its `X-HubSpot-RateLimit-Daily*` headers) after a run. The
/// simulator allows 20 requests a day: a first run spends half (below its
/// bound of 0.9: nothing is sent), a second run on the same account goes
/// past 0.5 and triggers.
#[test]
fn alerts_hubspot_daily_quota_triggers_above_its_bound() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg = simulators::hubspot::Config { daily: 20, ..Default::default() };
    let sim = rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).unwrap();
    let rx = Receiver::start(vec![]);
    let csv_dir = out_dir();
    let csv = csv_dir.path().join("names.csv");
    std::fs::write(
        &csv,
        "Id,Name,Year,Gender,Count\n1,Ann,1990,F,10\n2,Bob,1990,M,7\n3,Cid,1990,M,5\n4,Dee,1991,F,9\n5,Eve,1991,F,3\n6,Fay,1992,F,4\n",
    )
    .unwrap();
    // One record per request, one request at a time: the last answer is
    // the last request, and the share is exact.
    let quota_pipeline = |dir: &std::path::Path, bound: &str| {
        let body = r#"[pipeline]
name = "quota"
[pipeline.checkpoint]
dir = "@DIR@/checkpoints"

[sources.names]
kind = "file"
path = "@CSV@"
@SCHEMA@

[sinks.crm]
kind = "hubspot"
inputs = ["names"]
base_url = "@BASE@"
token = "sim-token"
id_property = "baby_key"
id = "{Name}|{Gender}|{Year}"
properties = { firstname = "{Name}" }
batch_size = 1
concurrency = 1

[alerts.x]
kind = "webhook"
url = "@HOOK@"
on = ["hubspot_daily_quota > @BOUND@"]
"#
        .replace("@DIR@", &dir.display().to_string())
        .replace("@CSV@", &csv.display().to_string())
        .replace("@SCHEMA@", SCHEMA)
        .replace("@BASE@", &sim.base_url())
        .replace("@HOOK@", &rx.url("/hook"))
        .replace("@BOUND@", bound);
        write_pipeline(dir, "quota.toml", &body)
    };

    // 1. 4 requests to create the properties and 6 upserts: 50% of the
    //    day, below 0.9.
    let first = out_dir();
    let o = run(&["run", "--no-progress", &quota_pipeline(first.path(), "0.9")], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.stats().daily_used, 10, "{:?}", sim.stats());
    assert!(stdout(&o).contains("50.0% of the daily quota used"), "{}", stdout(&o));
    assert_eq!(rx.take().len(), 0, "50% is not above 0.9");

    // 2. Another run on the same account: over half the day is spent.
    let second = out_dir();
    let o = run(&["run", "--no-progress", &quota_pipeline(second.path(), "0.5")], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let used = sim.stats().daily_used as f64 / 20.0;
    assert!(used > 0.5 && used < 1.0, "{:?}", sim.stats());
    let got = rx.take();
    assert_eq!(got.len(), 1, "{got:?}");
    let hook = &got[0].2;
    assert_eq!(hook["condition"], "hubspot_daily_quota");
    assert_eq!(hook["action"], "trigger");
    let summary = hook["summary"].as_str().unwrap();
    let want = format!("pipeline quota: {:.1}% of the HubSpot daily API quota used (above 50.0%)", used * 100.0);
    assert_eq!(summary, want);
    drop(sim);
}
