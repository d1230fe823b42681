//! The HubSpot simulator over real HTTP on 127.0.0.1: what it accepts,
//! refuses and counts, against the facts in shared/reference/hubspot-api.md.

use std::time::Duration;

use serde_json::{Value, json};
use simulators::hubspot::{Config, Handle, serve};

use crate::util::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

async fn start(cfg: Config) -> Handle {
    serve(cfg, "127.0.0.1:0".parse().unwrap()).await.expect("simulator")
}

fn input(id: &str, props: Value, trace: bool) -> Value {
    let mut v = json!({ "id": id, "idProperty": "baby_key", "properties": props });
    if trace {
        v["objectWriteTraceId"] = json!(format!("t-{id}"));
    }
    v
}

async fn upsert(sim: &Handle, token: &str, inputs: Vec<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/crm/v3/objects/contacts/batch/upsert", sim.base_url()))
        .bearer_auth(token)
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[test]
fn upsert_creates_then_updates_by_the_unique_property() {
    rt().block_on(async {
        let sim = start(Config::default()).await;
        let (s, h, b) = upsert(
            &sim,
            "sim-token",
            vec![input("Mary|F|1880", json!({"firstname": "Mary", "baby_count": "7065"}), false)],
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["status"], "COMPLETE");
        assert_eq!(b["results"][0]["new"], true);
        assert_eq!(h["x-hubspot-ratelimit-max"], "100");
        assert_eq!(h["x-hubspot-ratelimit-remaining"], "99");
        assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
        let (s, _, b) =
            upsert(&sim, "sim-token", vec![input("Mary|F|1880", json!({"baby_count": "7066"}), false)]).await;
        assert_eq!(s, 200);
        assert_eq!(b["results"][0]["new"], false);
        let contacts = sim.contacts();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].properties["baby_count"], "7066");
        assert_eq!(contacts[0].properties["firstname"], "Mary");
        assert_eq!(contacts[0].writes, 2);
    });
}

#[test]
fn bad_token_oversized_and_duplicate_batches_are_refused_whole() {
    rt().block_on(async {
        let sim = start(Config::default()).await;
        let (s, _, b) = upsert(&sim, "wrong", vec![input("a", json!({}), false)]).await;
        assert_eq!((s, b["category"].as_str()), (401, Some("INVALID_AUTHENTICATION")));

        let many: Vec<Value> = (0..101).map(|i| input(&format!("k{i}"), json!({}), false)).collect();
        let (s, _, b) = upsert(&sim, "sim-token", many).await;
        assert_eq!(s, 400);
        assert!(
            b["message"].as_str().unwrap().starts_with("The maximum number of inputs supported in a batch is 100"),
            "{b}"
        );

        let (s, _, b) = upsert(
            &sim,
            "sim-token",
            vec![input("x", json!({}), false), input("y", json!({}), false), input("x", json!({}), false)],
        )
        .await;
        assert_eq!((s, b["category"].as_str()), (400, Some("VALIDATION_ERROR")));
        assert_eq!(b["context"]["ids"], json!(["x"]));
        assert!(sim.contacts().is_empty(), "a refused batch writes nothing");
    });
}

#[test]
fn an_invalid_property_sinks_the_batch_unless_every_input_is_traced() {
    rt().block_on(async {
        let sim = start(Config::default()).await;
        let batch = |trace| {
            vec![
                input("good", json!({"baby_year": "1990"}), trace),
                input("bad", json!({"baby_year": "nineteen"}), trace),
            ]
        };
        let (s, _, b) = upsert(&sim, "sim-token", batch(false)).await;
        assert_eq!(s, 400, "{b}");
        assert!(sim.contacts().is_empty());

        let (s, _, b) = upsert(&sim, "sim-token", batch(true)).await;
        assert_eq!(s, 207, "{b}");
        assert_eq!(b["numErrors"], 1);
        assert_eq!(b["errors"][0]["context"]["objectWriteTraceId"], json!(["t-bad"]));
        assert!(b["errors"][0]["message"].as_str().unwrap().contains("nineteen"));
        let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
        assert_eq!(ids, ["good"]);
    });
}

#[test]
fn the_rolling_window_and_the_daily_quota_answer_429_with_their_policy() {
    rt().block_on(async {
        let cfg = Config {
            window_requests: 3,
            window: Duration::from_millis(600),
            daily: 5,
            retry_after: true,
            ..Default::default()
        };
        let sim = start(cfg).await;
        for _ in 0..3 {
            assert_eq!(upsert(&sim, "sim-token", vec![]).await.0, 200);
        }
        let (s, h, b) = upsert(&sim, "sim-token", vec![]).await;
        assert_eq!(s, 429);
        assert_eq!(b["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(h["x-hubspot-ratelimit-remaining"], "0");
        assert_eq!(h["retry-after"], "1");
        tokio::time::sleep(Duration::from_millis(650)).await;
        assert_eq!(upsert(&sim, "sim-token", vec![]).await.0, 200);
        assert_eq!(upsert(&sim, "sim-token", vec![]).await.0, 200);
        let (s, _, b) = upsert(&sim, "sim-token", vec![]).await;
        assert_eq!((s, b["policyName"].as_str()), (429, Some("DAILY")));
        let st = sim.stats();
        assert_eq!((st.rate_limited_window, st.rate_limited_daily, st.max_in_window), (1, 1, 3));
    });
}

/// `engine hubspot-sim` serves the same simulator from the CLI.
#[test]
fn the_cli_serves_the_simulator() {
    use std::io::{BufRead, BufReader};
    let mut child = engine()
        .args(["hubspot-sim", "--port", "0", "--token", "t0k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let status = rt().block_on(async {
        reqwest::Client::new().get(format!("{url}/_sim/stats")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}
