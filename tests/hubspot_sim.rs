//! The HubSpot simulator over real HTTP on 127.0.0.1: what it accepts,
//! refuses and counts, against the facts in shared/reference/hubspot-api.md.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use simulators::hubspot::{Config, Handle, PropertyDef, PropertyType, babynames_properties, serve};

use crate::util::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

async fn start(cfg: Config) -> Handle {
    serve(cfg, "127.0.0.1:0".parse().unwrap()).await.expect("simulator")
}

/// A portal where the babynames properties were created.
fn babynames() -> Config {
    Config { properties: babynames_properties(), ..Default::default() }
}

fn input(id: &str, props: Value, trace: bool) -> Value {
    let mut v = json!({ "id": id, "idProperty": "baby_key", "properties": props });
    if trace {
        v["objectWriteTraceId"] = json!(format!("t-{id}"));
    }
    v
}

type Answer = (u16, reqwest::header::HeaderMap, Value);

/// One call with the simulator's token; the body is parsed as JSON when
/// there is one (`Value::Null` otherwise).
async fn call(sim: &Handle, method: &str, path: &str, body: Option<Value>) -> Answer {
    call_with(sim, "sim-token", method, path, body).await
}

async fn call_with(sim: &Handle, token: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", sim.base_url());
    let mut req = client.request(method.parse().unwrap(), url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn upsert(sim: &Handle, token: &str, inputs: Vec<Value>) -> Answer {
    call_with(sim, token, "POST", "/crm/v3/objects/contacts/batch/upsert", Some(json!({ "inputs": inputs }))).await
}

fn is_json(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

/// `2026-11-29T20:37:41.123Z`.
fn is_iso_ms(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && s.ends_with('Z')
        && s.chars().filter(char::is_ascii_digit).count() == 17
}

#[test]
fn upsert_creates_then_updates_by_the_unique_property() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        let (s, h, b) = upsert(
            &sim,
            "sim-token",
            vec![input("Mary|F|1880", json!({"firstname": "Mary", "baby_count": "7065"}), true)],
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["status"], "COMPLETE");
        let r = &b["results"][0];
        assert_eq!(r["new"], true);
        assert_eq!(r["id"], "1");
        assert_eq!(r["objectWriteTraceId"], "t-Mary|F|1880", "the trace id is echoed");
        assert_eq!(r["properties"]["baby_key"], "Mary|F|1880");
        assert_eq!(r["properties"]["hs_object_id"], "1");
        assert!(is_iso_ms(&r["createdAt"]) && is_iso_ms(&r["properties"]["createdate"]), "{r}");
        assert!(is_iso_ms(&b["startedAt"]) && is_iso_ms(&b["completedAt"]), "{b}");
        assert_eq!(h["x-hubspot-ratelimit-max"], "100");
        assert_eq!(h["x-hubspot-ratelimit-remaining"], "99");
        assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
        let (s, _, b) =
            upsert(&sim, "sim-token", vec![input("Mary|F|1880", json!({"baby_count": "7066"}), false)]).await;
        assert_eq!(s, 200);
        assert_eq!(b["results"][0]["new"], false);
        assert_eq!(b["results"][0]["id"], "1");
        assert!(b["results"][0].get("objectWriteTraceId").is_none(), "no trace, no echo");
        let contacts = sim.contacts();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].id_value, "Mary|F|1880");
        assert_eq!(contacts[0].properties["baby_count"], "7066");
        assert_eq!(contacts[0].properties["firstname"], "Mary");
        assert_eq!(contacts[0].writes, 2);
        assert!(!contacts[0].archived);
        assert_eq!(sim.stats().upsert_requests, 2);
    });
}

#[test]
fn bad_token_oversized_and_duplicate_batches_are_refused_whole() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        let (s, h, b) = upsert(&sim, "wrong", vec![input("a", json!({}), false)]).await;
        assert_eq!((s, b["category"].as_str()), (401, Some("INVALID_AUTHENTICATION")));
        assert!(is_json(&h));

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
        let sim = start(babynames()).await;
        let batch = |trace| {
            vec![
                input("good", json!({"baby_year": "1990"}), trace),
                input("bad", json!({"baby_year": "nineteen"}), trace),
            ]
        };
        let (s, _, b) = upsert(&sim, "sim-token", batch(false)).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["errors"][0]["code"], "INVALID_INTEGER");
        assert_eq!(b["errors"][0]["context"]["propertyName"], json!(["baby_year"]));
        assert!(sim.contacts().is_empty());

        let (s, _, b) = upsert(&sim, "sim-token", batch(true)).await;
        assert_eq!(s, 207, "{b}");
        assert_eq!(b["numErrors"], 1);
        assert_eq!(b["errors"][0]["context"]["objectWriteTraceId"], json!(["t-bad"]));
        assert!(b["errors"][0]["message"].as_str().unwrap().contains("nineteen"));
        let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
        assert_eq!(ids, ["good"]);

        // The other behaviour clients must survive: 400 even when traced.
        let strict = start(Config { partial_207: false, ..babynames() }).await;
        assert_eq!(upsert(&strict, "sim-token", batch(true)).await.0, 400);
    });
}

#[test]
fn a_fresh_portal_has_hubspots_properties_and_none_of_ours() {
    rt().block_on(async {
        let sim = start(Config::default()).await;
        let names: Vec<String> = sim.properties().into_iter().map(|p| p.name).collect();
        for n in ["email", "firstname", "lastname", "lifecyclestage", "hs_object_id", "createdate", "lastmodifieddate"]
        {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("baby_")), "{names:?}");
        // Upserting by a property the portal lacks refuses the batch.
        let (s, _, b) = upsert(&sim, "sim-token", vec![input("Ann|F|1990", json!({}), true)]).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
        assert_eq!(b["message"], "Property \"baby_key\" does not exist");

        // With the unique property created, a missing property refuses the
        // input: in a 207 when traced, for the whole batch otherwise.
        sim.create_property(PropertyDef::new("baby_key", "Key", PropertyType::String, "babynames").unique()).unwrap();
        let batch = |trace| {
            vec![
                input("Ann|F|1990", json!({"firstname": "Ann"}), trace),
                input("Bob|M|1990", json!({"baby_color": "blue"}), trace),
            ]
        };
        let (s, _, b) = upsert(&sim, "sim-token", batch(false)).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["category"], "VALIDATION_ERROR");
        assert_eq!(
            b["errors"],
            json!([{ "message": "Property \"baby_color\" does not exist", "code": "PROPERTY_DOESNT_EXIST",
                "context": { "propertyName": ["baby_color"] }, "in": "properties" }])
        );
        assert!(sim.contacts().is_empty());
        let (s, _, b) = upsert(&sim, "sim-token", batch(true)).await;
        assert_eq!(s, 207, "{b}");
        assert_eq!(b["errors"][0]["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
        assert_eq!(b["errors"][0]["context"]["objectWriteTraceId"], json!(["t-Bob|M|1990"]));
        assert_eq!(b["results"].as_array().unwrap().len(), 1);

        // Read-only values are refused too.
        let (s, _, b) = upsert(&sim, "sim-token", vec![input("Cid|M|1990", json!({"createdate": "1"}), false)]).await;
        assert_eq!((s, b["errors"][0]["code"].as_str()), (400, Some("READ_ONLY_VALUE")), "{b}");
    });
}

#[test]
fn only_a_unique_property_or_email_can_be_the_id_property() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        for (prop, needle) in
            [("baby_gender", "non-unique"), ("hs_object_id", "non-unique"), ("nope", "does not exist")]
        {
            let (s, _, b) =
                upsert(&sim, "sim-token", vec![json!({"id": "F", "idProperty": prop, "properties": {}})]).await;
            assert_eq!((s, b["category"].as_str()), (400, Some("VALIDATION_ERROR")), "{prop}: {b}");
            assert!(b["message"].as_str().unwrap().contains(needle), "{prop}: {b}");
        }
        // email works, case-insensitively, and must look like an email.
        let by_email = |id: &str| json!({"id": id, "idProperty": "email", "properties": {"firstname": "Ann"}});
        let (s, _, b) = upsert(&sim, "sim-token", vec![by_email("Ann@Example.com")]).await;
        assert_eq!((s, &b["results"][0]["new"]), (200, &json!(true)), "{b}");
        let (s, _, b) = upsert(&sim, "sim-token", vec![by_email("ann@example.com")]).await;
        assert_eq!((s, &b["results"][0]["new"]), (200, &json!(false)), "{b}");
        let (s, _, b) = upsert(&sim, "sim-token", vec![by_email("not-an-email")]).await;
        assert_eq!((s, b["errors"][0]["code"].as_str()), (400, Some("INVALID_EMAIL")), "{b}");
        // A unique value held by another record is refused.
        upsert(&sim, "sim-token", vec![input("k1", json!({}), false)]).await;
        let (s, _, b) = upsert(&sim, "sim-token", vec![input("k2", json!({"email": "ann@example.com"}), true)]).await;
        assert_eq!(s, 207, "{b}");
        assert_eq!(b["errors"][0]["category"], "CONFLICT");
        assert_eq!(sim.contacts().len(), 2);
    });
}

#[test]
fn properties_are_created_listed_and_read_as_hubspot_does() {
    rt().block_on(async {
        let sim = start(Config::default()).await;
        let group = json!({"name": "babynames", "label": "Baby names"});
        let (s, _, b) = call(&sim, "POST", "/crm/v3/properties/contacts/groups", Some(group.clone())).await;
        assert_eq!((s, &b["name"]), (201, &json!("babynames")), "{b}");
        let (s, _, b) = call(&sim, "POST", "/crm/v3/properties/contacts/groups", Some(group)).await;
        assert_eq!((s, b["category"].as_str()), (409, Some("OBJECT_ALREADY_EXISTS")), "{b}");
        let (_, _, b) = call(&sim, "GET", "/crm/v3/properties/contacts/groups", None).await;
        assert!(b["results"].as_array().unwrap().iter().any(|g| g["name"] == "babynames"), "{b}");

        let key = json!({"name": "baby_key", "label": "Baby key", "type": "string", "fieldType": "text",
            "groupName": "babynames", "hasUniqueValue": true});
        let (s, _, b) = call(&sim, "POST", "/crm/v3/properties/contacts", Some(key.clone())).await;
        assert_eq!(s, 201, "{b}");
        assert_eq!((&b["type"], &b["hasUniqueValue"], &b["archived"]), (&json!("string"), &json!(true), &json!(false)));
        assert!(is_iso_ms(&b["createdAt"]) && is_iso_ms(&b["updatedAt"]), "{b}");
        assert_eq!(b["modificationMetadata"]["readOnlyValue"], false);
        let (s, h, b) = call(&sim, "POST", "/crm/v3/properties/contacts", Some(key)).await;
        assert_eq!((s, b["category"].as_str()), (409, Some("OBJECT_ALREADY_EXISTS")), "{b}");
        assert!(is_json(&h));

        let (s, _, b) = call(&sim, "GET", "/crm/v3/properties/contacts/baby_key", None).await;
        assert_eq!((s, &b["groupName"]), (200, &json!("babynames")));
        let (s, _, b) = call(&sim, "GET", "/crm/v3/properties/contacts/baby_nope", None).await;
        assert_eq!((s, b["category"].as_str()), (404, Some("OBJECT_NOT_FOUND")), "{b}");
        let (_, _, b) = call(&sim, "GET", "/crm/v3/properties/contacts", None).await;
        let names: Vec<&str> = b["results"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        assert!(names.contains(&"baby_key") && names.contains(&"email"), "{names:?}");

        for bad in [
            json!({"name": "baby_x", "label": "X", "type": "text", "fieldType": "text", "groupName": "babynames"}),
            json!({"name": "baby_x", "label": "X", "type": "number", "fieldType": "text", "groupName": "babynames"}),
            json!({"name": "baby_x", "label": "X", "type": "string", "fieldType": "text", "groupName": "nope"}),
            json!({"name": "Baby X", "label": "X", "type": "string", "fieldType": "text", "groupName": "babynames"}),
            json!({"name": "baby_x", "type": "string", "fieldType": "text", "groupName": "babynames"}),
            json!({"name": "baby_x", "label": "X", "type": "enumeration", "fieldType": "select", "groupName": "babynames"}),
            json!({"name": "baby_x", "label": "X", "type": "bool", "fieldType": "booleancheckbox",
                "groupName": "babynames", "hasUniqueValue": true,
                "options": [{"label": "Yes", "value": "true"}, {"label": "No", "value": "false"}]}),
        ] {
            let (s, _, b) = call(&sim, "POST", "/crm/v3/properties/contacts", Some(bad.clone())).await;
            assert_eq!((s, b["category"].as_str()), (400, Some("VALIDATION_ERROR")), "{bad} → {b}");
        }
        let (s, _, b) = call(
            &sim,
            "POST",
            "/crm/v3/properties/contacts/batch/create",
            Some(json!({"inputs": [
                {"name": "baby_year", "label": "Year", "type": "number", "fieldType": "number", "groupName": "babynames"},
                {"name": "baby_key", "label": "Key", "type": "string", "fieldType": "text", "groupName": "babynames"},
            ]})),
        )
        .await;
        assert_eq!((s, &b["numErrors"]), (207, &json!(1)), "{b}");
        assert_eq!(b["errors"][0]["category"], "OBJECT_ALREADY_EXISTS");
        assert_eq!(b["results"][0]["name"], "baby_year");

        let (s, _, b) = call(
            &sim,
            "PATCH",
            "/crm/v3/properties/contacts/baby_year",
            Some(json!({"label": "Year of birth", "description": "d"})),
        )
        .await;
        assert_eq!((s, &b["label"]), (200, &json!("Year of birth")), "{b}");
        let (s, _, _) = call(&sim, "PATCH", "/crm/v3/properties/contacts/email", Some(json!({"label": "E"}))).await;
        assert_eq!(s, 400, "HubSpot's own definitions are read-only");
        assert_eq!(sim.stats().property_requests, 18);
        assert!(sim.properties().iter().any(|p| p.name == "baby_year" && p.label == "Year of birth"));
    });
}

#[test]
fn batch_read_by_unique_property_reports_missing_ids_in_a_207() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        upsert(&sim, "sim-token", vec![input("Ann|F|1990", json!({"firstname": "Ann", "baby_year": "1990"}), false)])
            .await;
        let body = json!({"idProperty": "baby_key", "inputs": [{"id": "Ann|F|1990"}, {"id": "Zed|M|1990"}],
            "properties": ["baby_year", "baby_count", "firstname"]});
        let (s, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/read", Some(body)).await;
        assert_eq!(s, 207, "{b}");
        assert_eq!(b["numErrors"], 1);
        assert_eq!(b["errors"][0]["category"], "OBJECT_NOT_FOUND");
        assert_eq!(b["errors"][0]["context"]["ids"], json!(["Zed|M|1990"]));
        let p = &b["results"][0]["properties"];
        assert_eq!((&p["baby_year"], &p["firstname"], &p["baby_count"]), (&json!("1990"), &json!("Ann"), &Value::Null));
        assert_eq!(p["hs_object_id"], "1");
        assert!(p.get("baby_gender").is_none(), "only what was asked for: {p}");

        let body = json!({"inputs": [{"id": "1"}], "properties": ["firstname"]});
        let (s, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/read", Some(body)).await;
        assert_eq!((s, &b["status"]), (200, &json!("COMPLETE")), "record ids without idProperty: {b}");
        let many: Vec<Value> = (0..101).map(|i| json!({"id": i.to_string()})).collect();
        let (s, _, _) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/read", Some(json!({"inputs": many}))).await;
        assert_eq!(s, 400);

        let (s, _, b) =
            call(&sim, "GET", "/crm/v3/objects/contacts/Ann%7CF%7C1990?idProperty=baby_key&properties=firstname", None)
                .await;
        assert_eq!((s, &b["id"], &b["properties"]["firstname"]), (200, &json!("1"), &json!("Ann")), "{b}");
        let (s, h, b) = call(&sim, "GET", "/crm/v3/objects/contacts/99", None).await;
        assert_eq!((s, b["category"].as_str()), (404, Some("OBJECT_NOT_FOUND")));
        assert!(is_json(&h));
        assert_eq!(sim.stats().read_requests, 5);
    });
}

async fn seed_years(sim: &Handle, n: usize) {
    let inputs: Vec<Value> = (0..n)
        .map(|i| input(&format!("N{i:02}|F|{}", 1990 + i % 2), json!({"baby_year": (1990 + i % 2).to_string()}), false))
        .collect();
    assert_eq!(upsert(sim, "sim-token", inputs).await.0, 200);
}

#[test]
fn search_filters_pages_and_caps_the_page_size() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        seed_years(&sim, 25).await;
        let q = |after: Option<&str>, limit: u32| {
            let mut b = json!({"filterGroups": [{"filters": [{"propertyName": "baby_year", "operator": "EQ", "value": "1990"}]}],
                "properties": ["baby_key"], "limit": limit});
            if let Some(a) = after {
                b["after"] = json!(a);
            }
            b
        };
        let (s, h, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(q(None, 5))).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["total"], 13);
        assert_eq!(b["results"].as_array().unwrap().len(), 5);
        assert!(h.get("x-hubspot-ratelimit-remaining").is_none(), "search answers carry no rate-limit headers");
        let mut seen: Vec<String> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (s, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(q(after.as_deref(), 5))).await;
            assert_eq!(s, 200, "{b}");
            pages += 1;
            seen.extend(b["results"].as_array().unwrap().iter().map(|r| r["properties"]["baby_key"].as_str().unwrap().to_string()));
            match b["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!((pages, seen.len()), (3, 13));
        assert!(seen.iter().all(|k| k.ends_with("1990")));
        // Groups OR, filters within a group AND.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let or = json!({"filterGroups": [
            {"filters": [{"propertyName": "baby_key", "operator": "EQ", "value": "n00|f|1990"}]},
            {"filters": [{"propertyName": "baby_key", "operator": "IN", "values": ["n01|f|1991", "n03|f|1991"]},
                         {"propertyName": "baby_year", "operator": "GT", "value": "1990"}]}]});
        let (_, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(or)).await;
        assert_eq!(b["total"], 3, "{b}");
        let (s, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(q(None, 201))).await;
        assert_eq!((s, b["category"].as_str()), (400, Some("VALIDATION_ERROR")), "{b}");
        let unknown = json!({"filterGroups": [{"filters": [{"propertyName": "baby_nope", "operator": "HAS_PROPERTY"}]}]});
        let (s, _, _) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(unknown)).await;
        assert_eq!(s, 400);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let six_groups: Vec<Value> =
            (0..6).map(|_| json!({"filters": [{"propertyName": "baby_year", "operator": "HAS_PROPERTY"}]})).collect();
        let (s, _, _) =
            call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(json!({"filterGroups": six_groups}))).await;
        assert_eq!(s, 400, "at most 5 filter groups");
        let (s, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(json!({}))).await;
        assert_eq!((s, &b["total"], b["results"].as_array().unwrap().len()), (200, &json!(25), 10), "default limit 10");
    });
}

#[test]
fn search_has_a_limit_of_its_own_per_second() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..8 {
            let (s, h, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(json!({}))).await;
            statuses.push(s);
            if s == 429 {
                limited = Some((h, b));
            }
        }
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
        let (h, b) = limited.expect("a 429");
        assert_eq!((b["policyName"].as_str(), b["errorType"].as_str()), (Some("SECONDLY"), Some("RATE_LIMIT")), "{b}");
        assert!(is_json(&h) && h.get("x-hubspot-ratelimit-remaining").is_none());
        // Upserts are not held back by the search limit.
        assert_eq!(upsert(&sim, "sim-token", vec![]).await.0, 200);
        let st = sim.stats();
        assert_eq!((st.search_requests, st.rate_limited_secondly, st.daily_used), (8, 3, 6), "{st:?}");
    });
}

#[test]
fn archived_records_leave_search_and_contacts_and_are_not_matched_by_upserts() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        seed_years(&sim, 3).await;
        let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id).collect();
        let body = json!({"inputs": [{"id": ids[0]}, {"id": "999"}, {"id": "N01|F|1991"}]});
        let (s, h, b) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/archive", Some(body.clone())).await;
        assert_eq!((s, b), (204, Value::Null));
        assert!(h.get("content-length").is_none_or(|v| v == "0"));
        assert_eq!(call(&sim, "POST", "/crm/v3/objects/contacts/batch/archive", Some(body)).await.0, 204, "again");
        let active: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
        assert_eq!(active, ["N01|F|1991", "N02|F|1990"], "unique values are not record ids");
        let archived = sim.archived();
        assert_eq!(archived.len(), 1);
        assert!(archived[0].archived && archived[0].archived_at.is_some());
        assert_eq!(archived[0].properties["baby_year"], "1990", "archived records keep their data");
        assert_eq!(sim.stats().archived_records, 1);

        let find = json!({"filterGroups": [{"filters": [{"propertyName": "baby_key", "operator": "EQ", "value": "N00|F|1990"}]}]});
        let (_, _, b) = call(&sim, "POST", "/crm/v3/objects/contacts/search", Some(find)).await;
        assert_eq!(b["total"], 0, "{b}");
        let path = format!("/crm/v3/objects/contacts/{}", ids[0]);
        assert_eq!(call(&sim, "GET", &path, None).await.0, 404);
        let (s, _, b) = call(&sim, "GET", &format!("{path}?archived=true"), None).await;
        assert_eq!((s, &b["archived"]), (200, &json!(true)), "{b}");

        // Upserting the archived record's key creates a new record.
        let (_, _, b) = upsert(&sim, "sim-token", vec![input("N00|F|1990", json!({}), false)]).await;
        assert_eq!(b["results"][0]["new"], true, "{b}");
        assert_ne!(b["results"][0]["id"], json!(ids[0]));
        assert_eq!(sim.contacts().len(), 3);
        let many: Vec<Value> = (0..101).map(|i| json!({"id": i.to_string()})).collect();
        let (s, _, _) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/archive", Some(json!({"inputs": many}))).await;
        assert_eq!(s, 400);
    });
}

#[test]
fn date_versioned_paths_work_and_unknown_ones_answer_json_404s() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        let (s, h, b) = call(
            &sim,
            "POST",
            "/crm/objects/2026-03/contacts/batch/upsert",
            Some(json!({"inputs": [input("Ann|F|1990", json!({}), false)]})),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(h["x-hubspot-ratelimit-remaining"], "99");
        let (s, _, b) = call(&sim, "GET", "/crm/properties/2026-09/contacts/baby_key", None).await;
        assert_eq!((s, &b["hasUniqueValue"]), (200, &json!(true)), "{b}");
        let read = json!({"idProperty": "baby_key", "inputs": [{"id": "Ann|F|1990"}]});
        assert_eq!(call(&sim, "POST", "/crm/objects/2026-09/contacts/batch/read", Some(read)).await.0, 200);

        for (method, path, status) in [
            ("POST", "/crm/objects/2025-09/contacts/batch/upsert", 404),
            ("GET", "/crm/properties/2027-01/contacts", 404),
            ("GET", "/no/such/path", 404),
            ("POST", "/crm/v3/objects/companies/batch/upsert", 404),
            ("GET", "/crm/v3/objects/contacts/batch/upsert", 405),
            ("DELETE", "/crm/v3/properties/contacts/groups", 405),
            ("GET", "/_sim/nothing", 404),
            ("GET", "/_sim/reset", 405),
        ] {
            let (s, h, b) = call(&sim, method, path, None).await;
            assert_eq!(s, status, "{method} {path}: {b}");
            assert!(is_json(&h), "{method} {path}: {h:?}");
            assert_eq!(b["status"], "error", "{method} {path}: {b}");
            assert!(b["correlationId"].is_string() && b["category"].is_string(), "{b}");
            if status == 405 {
                assert!(h.get("allow").is_some());
            }
        }
    });
}

#[test]
fn injected_423s_hit_writes_only() {
    rt().block_on(async {
        let sim = start(Config { locked_rate: 1.0, ..babynames() }).await;
        let (s, h, b) = upsert(&sim, "sim-token", vec![input("Ann|F|1990", json!({}), false)]).await;
        assert_eq!((s, b["category"].as_str()), (423, Some("LOCKED")), "{b}");
        assert!(is_json(&h));
        assert!(sim.contacts().is_empty(), "a locked write writes nothing");
        let (s, _, _) = call(&sim, "POST", "/crm/v3/objects/contacts/batch/archive", Some(json!({"inputs": []}))).await;
        assert_eq!(s, 423);
        let (s, _, _) = call(&sim, "GET", "/crm/v3/properties/contacts", None).await;
        assert_eq!(s, 200, "reads are never locked");
        let st = sim.stats();
        assert_eq!(st.by_status.get(&423), Some(&2), "{st:?}");
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
        // Property reads count against the same limits.
        assert_eq!(call(&sim, "GET", "/crm/v3/properties/contacts/email", None).await.0, 200);
        let (s, _, b) = upsert(&sim, "sim-token", vec![]).await;
        assert_eq!((s, b["policyName"].as_str()), (429, Some("DAILY")));
        let st = sim.stats();
        assert_eq!((st.rate_limited_window, st.rate_limited_daily, st.max_in_window), (1, 1, 3));
    });
}

/// The daily quota resets at midnight in the account's time zone:
/// Retry-After on the DAILY 429 counts down to it.
#[test]
fn the_daily_retry_after_counts_down_to_midnight_in_the_accounts_time_zone() {
    rt().block_on(async {
        // Kiritimati is UTC+14 all year, Pago Pago UTC-11: neither has DST.
        for (tz, offset) in [("Pacific/Kiritimati", 14 * 3600), ("Pacific/Pago_Pago", -11 * 3600), ("UTC", 0)] {
            let cfg = Config { daily: 1, retry_after: true, daily_reset_tz: tz.into(), ..Default::default() };
            let sim = start(cfg).await;
            assert_eq!(upsert(&sim, "sim-token", vec![]).await.0, 200);
            let (s, h, b) = upsert(&sim, "sim-token", vec![]).await;
            assert_eq!((s, b["policyName"].as_str()), (429, Some("DAILY")));
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            let expected = 86_400 - (now + offset).rem_euclid(86_400);
            let got: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((got - expected).abs() <= 2, "{tz}: Retry-After {got}, expected about {expected}");
        }
        let bad = serve(
            Config { daily_reset_tz: "Mars/Olympus".into(), ..Default::default() },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await;
        assert!(bad.is_err(), "an unknown zone is refused");
    });
}

#[test]
fn rate_limit_headers_can_be_switched_off() {
    rt().block_on(async {
        let sim = start(Config { rate_limit_headers: false, ..Default::default() }).await;
        let (s, h, _) = upsert(&sim, "sim-token", vec![]).await;
        assert_eq!(s, 200);
        assert!(h.keys().all(|k| !k.as_str().starts_with("x-hubspot-ratelimit")), "{h:?}");
    });
}

#[test]
fn refused_ids_are_refused_until_accepted_again() {
    rt().block_on(async {
        let sim = start(babynames()).await;
        let (s, _, _) = call(&sim, "POST", "/_sim/refuse", Some(json!({"ids": ["Bob|M|1990"]}))).await;
        assert_eq!(s, 204);
        let batch = |trace| vec![input("Ann|F|1990", json!({}), trace), input("Bob|M|1990", json!({}), trace)];
        let (s, _, b) = upsert(&sim, "sim-token", batch(true)).await;
        assert_eq!((s, &b["numErrors"]), (207, &json!(1)), "{b}");
        assert_eq!(b["errors"][0]["category"], "VALIDATION_ERROR");
        assert_eq!(b["errors"][0]["context"]["objectWriteTraceId"], json!(["t-Bob|M|1990"]));
        let (s, _, _) = upsert(&sim, "sim-token", batch(false)).await;
        assert_eq!(s, 400, "untraced: the whole batch");
        let ids: Vec<String> = sim.contacts().into_iter().map(|c| c.id_value).collect();
        assert_eq!(ids, ["Ann|F|1990"]);

        sim.accept_all();
        assert_eq!(upsert(&sim, "sim-token", batch(false)).await.0, 200);
        assert_eq!(sim.contacts().len(), 2);
        sim.refuse(&["Cid|M|1990"]);
        assert_eq!(upsert(&sim, "sim-token", vec![input("Cid|M|1990", json!({}), false)]).await.0, 400);
        assert_eq!(call(&sim, "DELETE", "/_sim/refuse", None).await.0, 204);
        assert_eq!(upsert(&sim, "sim-token", vec![input("Cid|M|1990", json!({}), false)]).await.0, 200);

        // Reset: no records, HubSpot's properties only.
        assert_eq!(call(&sim, "POST", "/_sim/reset", None).await.0, 204);
        assert!(sim.contacts().is_empty());
        let (_, _, props) = call(&sim, "GET", "/_sim/properties", None).await;
        assert!(!props.as_array().unwrap().iter().any(|p| p["name"] == "baby_key"), "{props}");
    });
}

/// `engine hubspot-sim` serves the same simulator from the CLI.
#[test]
fn the_cli_serves_the_simulator() {
    use std::io::{BufRead, BufReader};
    let mut child = engine()
        .args([
            "hubspot-sim",
            "--port",
            "0",
            "--token",
            "t0k",
            "--preset",
            "babynames",
            "--daily-reset-tz",
            "Europe/Paris",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let (status, props) = rt().block_on(async {
        let c = reqwest::Client::new();
        let status = c.get(format!("{url}/_sim/stats")).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        let props: Value = c.get(format!("{url}/_sim/properties")).send().await.unwrap().json().await.unwrap();
        (status, props)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert!(
        props.as_array().unwrap().iter().any(|p| p["name"] == "baby_key" && p["hasUniqueValue"] == true),
        "{props}"
    );
}
