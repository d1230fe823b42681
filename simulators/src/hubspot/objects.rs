//! Contact records and the object endpoints that write or fetch them: the
//! record store (records by id, an index of unique property values over
//! records that are not archived), batch upsert (idProperty, property and
//! value checks, unique-value conflicts, 400 for the batch or 207 per input),
//! batch read, get by id and batch archive. Search lives in `search.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::defs::{DEFAULT_READ_PROPERTIES, PropertyDef, SYSTEM_PROPERTIES};
use super::properties::Catalog;
use super::values::check_value;
use super::wire::{ApiError, PORTAL_ID, Reply, now_iso, parse_body};
use super::{Contact, Sim};

/// Most inputs in one batch call.
const MAX_INPUTS: usize = 100;

/// Contacts, archived or not, by record id.
pub struct Store {
    pub records: BTreeMap<u64, Contact>,
    next_id: u64,
    /// property → value → record id, for unique properties of records that
    /// are not archived (archived records are never matched).
    index: HashMap<String, HashMap<String, u64>>,
}

impl Store {
    pub fn new() -> Store {
        Store { records: BTreeMap::new(), next_id: 1, index: HashMap::new() }
    }

    /// The active record holding `value` in the unique property `property`.
    pub fn find(&self, property: &str, value: &str) -> Option<u64> {
        if property == "hs_object_id" {
            return value.parse().ok().filter(|id| self.records.get(id).is_some_and(|c| !c.archived));
        }
        self.index.get(property).and_then(|m| m.get(value)).copied()
    }

    /// A record by id value, among archived (`archived`) or active ones.
    fn lookup(&self, property: Option<&str>, value: &str, archived: bool) -> Option<&Contact> {
        match property {
            None | Some("hs_object_id") => {
                value.parse::<u64>().ok().and_then(|id| self.records.get(&id)).filter(|c| c.archived == archived)
            }
            Some(p) if !archived => self.find(p, value).and_then(|id| self.records.get(&id)),
            Some(p) => {
                self.records.values().find(|c| c.archived && c.properties.get(p).map(String::as_str) == Some(value))
            }
        }
    }

    pub fn active(&self) -> impl Iterator<Item = &Contact> {
        self.records.values().filter(|c| !c.archived)
    }

    fn unindex(&mut self, c: &Contact, unique: &[String]) {
        for p in unique {
            if let Some(v) = c.properties.get(p)
                && let Some(m) = self.index.get_mut(p)
                && m.get(v) == Some(&c.id_num())
            {
                m.remove(v);
            }
        }
    }

    fn index_record(&mut self, c: &Contact, unique: &[String]) {
        for p in unique {
            if let Some(v) = c.properties.get(p) {
                self.index.entry(p.clone()).or_default().insert(v.clone(), c.id_num());
            }
        }
    }
}

impl Contact {
    fn id_num(&self) -> u64 {
        self.id.parse().unwrap_or(0)
    }

    /// The value of a property as reads return it (system properties
    /// included), `None` when unset.
    pub(super) fn value(&self, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.clone()),
            "createdate" => Some(self.created_at.clone()),
            "lastmodifieddate" => Some(self.updated_at.clone()),
            _ => self.properties.get(name).cloned(),
        }
    }
}

/// Which properties a read returns: the ones asked for that exist (unset
/// ones as `null`), or HubSpot's default set, plus the system properties.
pub fn selection(catalog: &Catalog, asked: Option<Vec<String>>) -> Vec<String> {
    let mut names: Vec<String> = match asked {
        Some(a) if !a.is_empty() => a.into_iter().filter(|n| catalog.def(n).is_some()).collect(),
        _ => DEFAULT_READ_PROPERTIES.iter().map(|s| s.to_string()).collect(),
    };
    for s in SYSTEM_PROPERTIES {
        if !names.iter().any(|n| n == s) {
            names.push(s.into());
        }
    }
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// A record as the API returns it.
pub fn record_json(c: &Contact, names: &[String]) -> Value {
    let props: Map<String, Value> =
        names.iter().map(|n| (n.clone(), c.value(n).map(Value::String).unwrap_or(Value::Null))).collect();
    let mut v = json!({ "id": c.id, "properties": props, "createdAt": c.created_at, "updatedAt": c.updated_at,
        "archived": c.archived });
    if let Some(a) = &c.archived_at {
        v["archivedAt"] = json!(a);
    }
    v
}

fn invalid(message: impl Into<String>, cid: String) -> Reply {
    Reply::error(StatusCode::BAD_REQUEST, ApiError::new("VALIDATION_ERROR", message, cid))
}

fn too_many(n: usize, cid: String) -> Reply {
    invalid(format!("The maximum number of inputs supported in a batch is {MAX_INPUTS}. Received {n} inputs."), cid)
}

fn missing_property(name: &str, cid: String) -> Reply {
    let message = format!("Property \"{name}\" does not exist");
    Reply::error(
        StatusCode::BAD_REQUEST,
        ApiError::new("VALIDATION_ERROR", message.clone(), cid).errors(vec![json!({
            "message": message, "code": "PROPERTY_DOESNT_EXIST", "context": { "propertyName": [name] } })]),
    )
}

/// `idProperty` must name `email` or a unique-value property; `None` means
/// the record id (`hs_object_id`), which upserts refuse.
fn check_id_property(s: &Sim, id_property: Option<&str>, for_upsert: bool, cid: &str) -> Result<(), Reply> {
    let name = match id_property {
        Some(n) => n,
        None if for_upsert => "hs_object_id",
        None => return Ok(()),
    };
    if s.catalog.def(name).is_none() {
        return Err(missing_property(name, cid.to_string()));
    }
    // Reads may name the record id; writes may not.
    let record_id_read = name == "hs_object_id" && !for_upsert;
    if !record_id_read && !s.catalog.is_unique(name) {
        return Err(invalid(
            format!("Unable to perform update/upsert by non-unique 0-1 property {name} in portal ID {PORTAL_ID}"),
            cid.to_string(),
        ));
    }
    Ok(())
}

/// One problem with one input.
struct Problem {
    category: &'static str,
    code: &'static str,
    message: String,
    property: String,
    value: Option<String>,
}

impl Problem {
    fn validation(code: &'static str, message: String, property: &str, value: Option<&str>) -> Problem {
        Problem { category: "VALIDATION_ERROR", code, message, property: property.into(), value: value.map(Into::into) }
    }
    /// HubSpot's `validationResults` entry, embedded in messages.
    fn detail(&self) -> Value {
        let mut d = json!({ "isValid": false, "message": self.message, "error": self.code, "name": self.property,
            "localizedErrorMessage": self.message, "portalId": PORTAL_ID });
        if let Some(v) = &self.value {
            d["propertyValue"] = json!(v);
        }
        d
    }
    fn item(&self) -> Value {
        json!({ "message": self.message, "code": self.code, "context": { "propertyName": [self.property] },
            "in": "properties" })
    }
}

fn summary(problems: &[&Problem]) -> String {
    if problems.iter().all(|p| p.category == "CONFLICT") {
        return problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
    }
    let details: Vec<Value> = problems.iter().map(|p| p.detail()).collect();
    format!("Property values were not valid: {}", Value::Array(details))
}

/// One parsed upsert input.
struct Input {
    id_property: String,
    id: String,
    props: Vec<(String, String)>,
    trace: Option<String>,
}

/// Whose a unique value is during one batch.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Holder {
    Record(u64),
    Input(usize),
}

/// `POST …/contacts/batch/upsert`.
pub fn upsert(s: &mut Sim, body: &[u8], cid: String) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(m) => return invalid(m, cid),
    };
    let Some(raw) = v.get("inputs").and_then(Value::as_array) else {
        return invalid("Invalid input JSON: `inputs` is required.", cid);
    };
    s.stats.inputs_received += raw.len() as u64;
    if raw.len() > MAX_INPUTS {
        return too_many(raw.len(), cid);
    }
    // The batch is refused whole for an idProperty that cannot identify one
    // record.
    let mut checked = HashSet::new();
    for i in raw {
        let p = i.get("idProperty").and_then(Value::as_str);
        if checked.insert(p)
            && let Err(r) = check_id_property(s, p, true, &cid)
        {
            return r;
        }
    }
    let email_key = |p: &str, id: &str| if p == "email" { id.to_lowercase() } else { id.to_string() };
    // …and for an id that repeats.
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for i in raw {
        let p = i["idProperty"].as_str().unwrap_or_default();
        let id = i["id"].as_str().unwrap_or_default();
        if !seen.insert((p, email_key(p, id))) && !dups.contains(&id) {
            dups.push(id);
        }
    }
    if !dups.is_empty() {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "VALIDATION_ERROR",
                format!("Duplicate IDs found in batch input: {dups:?}. IDs must be unique"),
                cid,
            )
            .context(json!({ "ids": dups })),
        );
    }
    let uses_email = raw.iter().any(|i| i["idProperty"].as_str() == Some("email"));
    // 207 with per-input errors needs every input traced; HubSpot does not
    // support partial upserts by email.
    let traced = s.cfg.partial_207
        && !uses_email
        && raw.iter().all(|i| i.get("objectWriteTraceId").and_then(Value::as_str).is_some_and(|t| !t.is_empty()));

    let mut inputs = Vec::with_capacity(raw.len());
    let mut problems: Vec<Vec<Problem>> = Vec::with_capacity(raw.len());
    for i in raw {
        let (input, p) = check_input(s, i);
        inputs.push(input);
        problems.push(p);
    }
    conflicts(s, &inputs, &mut problems);

    let failed: Vec<&Problem> = problems.iter().flatten().collect();
    if !failed.is_empty() && !traced {
        let category = if failed.iter().all(|p| p.category == "CONFLICT") { "CONFLICT" } else { "VALIDATION_ERROR" };
        let items: Vec<Value> = failed.iter().map(|p| p.item()).collect();
        return Reply::error(StatusCode::BAD_REQUEST, ApiError::new(category, summary(&failed), cid).errors(items));
    }

    let started = now_iso();
    let unique = s.catalog.unique_names();
    let mut results = Vec::new();
    for (n, input) in inputs.iter().enumerate() {
        if problems[n].is_empty() {
            results.push(apply(s, input, &unique));
        }
    }
    let completed = now_iso();
    let errors: Vec<Value> = inputs
        .iter()
        .zip(&problems)
        .filter(|(_, p)| !p.is_empty())
        .map(|(input, p)| {
            let refs: Vec<&Problem> = p.iter().collect();
            let category = if refs.iter().all(|p| p.category == "CONFLICT") { "CONFLICT" } else { "VALIDATION_ERROR" };
            json!({ "status": "error", "category": category, "message": summary(&refs),
                "context": { "objectWriteTraceId": [input.trace.clone().unwrap_or_default()] },
                "errors": p.iter().map(Problem::item).collect::<Vec<_>>() })
        })
        .collect();
    if errors.is_empty() {
        return Reply::ok(
            json!({ "status": "COMPLETE", "results": results, "startedAt": started, "completedAt": completed }),
        );
    }
    Reply::json(
        StatusCode::MULTI_STATUS,
        json!({ "status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors,
            "startedAt": started, "completedAt": completed }),
    )
}

/// Parses one input and checks what does not depend on other inputs.
fn check_input(s: &Sim, i: &Value) -> (Input, Vec<Problem>) {
    let id_property = i["idProperty"].as_str().unwrap_or_default().to_string();
    let raw_id = i["id"].as_str().unwrap_or_default().to_string();
    let trace = i.get("objectWriteTraceId").and_then(Value::as_str).map(str::to_string);
    let mut problems = Vec::new();
    let max = s.cfg.max_value_len;
    let id_def: &PropertyDef = s.catalog.def(&id_property).expect("idProperty checked for the batch");
    let mut id = raw_id.clone();
    if raw_id.is_empty() {
        problems.push(Problem::validation("INVALID_ID", "id must not be empty".into(), &id_property, None));
    } else {
        match check_value(id_def, &raw_id, max) {
            Ok(v) => id = v,
            Err(e) => problems.push(Problem::validation(e.code, e.message, &id_property, Some(&raw_id))),
        }
    }
    if s.refused.contains(&raw_id) || s.refused.contains(&id) {
        problems.push(Problem::validation(
            "SIMULATED_REFUSAL",
            format!("{raw_id} was refused by the simulator (/_sim/refuse)"),
            &id_property,
            Some(&raw_id),
        ));
    }
    let mut props = Vec::new();
    match i.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                let Some(def) = s.catalog.def(k) else {
                    problems.push(Problem::validation(
                        "PROPERTY_DOESNT_EXIST",
                        format!("Property \"{k}\" does not exist"),
                        k,
                        None,
                    ));
                    continue;
                };
                if def.read_only_value {
                    problems.push(Problem::validation(
                        "READ_ONLY_VALUE",
                        format!("\"{k}\" is a read only property; its value cannot be set."),
                        k,
                        None,
                    ));
                    continue;
                }
                let text = match v {
                    Value::String(t) => t.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        problems.push(Problem::validation(
                            "INVALID_PROPERTY_VALUE",
                            format!("{other} is not a valid value for property \"{k}\": send a string"),
                            k,
                            None,
                        ));
                        continue;
                    }
                };
                match check_value(def, &text, max) {
                    Ok(v) if *k == id_property && v != id => problems.push(Problem::validation(
                        "INVALID_ID_PROPERTY_VALUE",
                        format!("Property \"{k}\" is the idProperty: its value {text} differs from the id {raw_id}"),
                        k,
                        Some(&text),
                    )),
                    Ok(v) => props.push((k.clone(), v)),
                    Err(e) => problems.push(Problem::validation(e.code, e.message, k, Some(&text))),
                }
            }
        }
        Some(_) => problems.push(Problem::validation(
            "INVALID_INPUT",
            "properties must be an object".into(),
            "properties",
            None,
        )),
    }
    (Input { id_property, id, props, trace }, problems)
}

/// Unique values held by another record (or claimed by an earlier input of
/// the batch) are refused, input by input in order.
fn conflicts(s: &Sim, inputs: &[Input], problems: &mut [Vec<Problem>]) {
    let mut claims: HashMap<(String, String), Holder> = HashMap::new();
    let holder = |claims: &HashMap<(String, String), Holder>, p: &str, v: &str| {
        claims.get(&(p.to_string(), v.to_string())).copied().or_else(|| s.store.find(p, v).map(Holder::Record))
    };
    for (n, input) in inputs.iter().enumerate() {
        if !problems[n].is_empty() {
            continue;
        }
        let target = holder(&claims, &input.id_property, &input.id).unwrap_or(Holder::Input(n));
        let mut wanted = vec![(input.id_property.clone(), input.id.clone())];
        wanted.extend(
            input
                .props
                .iter()
                .filter(|(k, v)| !v.is_empty() && s.catalog.is_unique(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        for (p, v) in &wanted {
            match holder(&claims, p, v) {
                Some(h) if h != target => {
                    let whose = match h {
                        Holder::Record(id) => format!("record {id}"),
                        Holder::Input(_) => "another input of this batch".into(),
                    };
                    problems[n].push(Problem {
                        category: "CONFLICT",
                        code: "CONFLICTING_UNIQUE_VALUE",
                        message: format!("Property \"{p}\" holds unique values: \"{v}\" already belongs to {whose}."),
                        property: p.clone(),
                        value: Some(v.clone()),
                    });
                }
                _ => {}
            }
        }
        if problems[n].is_empty() {
            for w in wanted {
                claims.insert(w, target);
            }
        }
    }
}

/// Writes one checked input; returns its result.
fn apply(s: &mut Sim, input: &Input, unique: &[String]) -> Value {
    let now = now_iso();
    let (rid, is_new) = match s.store.find(&input.id_property, &input.id) {
        Some(rid) => (rid, false),
        None => {
            let rid = s.store.next_id;
            s.store.next_id += 1;
            let c = Contact {
                id: rid.to_string(),
                id_value: String::new(),
                properties: BTreeMap::new(),
                created_at: now.clone(),
                updated_at: now.clone(),
                writes: 0,
                archived: false,
                archived_at: None,
            };
            s.store.records.insert(rid, c);
            (rid, true)
        }
    };
    let mut c = s.store.records.remove(&rid).expect("record just found");
    s.store.unindex(&c, unique);
    let mut written: Vec<(String, String)> = vec![(input.id_property.clone(), input.id.clone())];
    written.extend(input.props.iter().cloned());
    for (k, v) in &written {
        if v.is_empty() {
            c.properties.remove(k);
        } else {
            c.properties.insert(k.clone(), v.clone());
        }
    }
    c.updated_at = now;
    c.writes += 1;
    c.id_value = c.properties.get(&s.cfg.unique_property).cloned().unwrap_or_default();
    s.store.index_record(&c, unique);
    let mut props: Map<String, Value> = written.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    for n in SYSTEM_PROPERTIES {
        props.insert(n.into(), json!(c.value(n)));
    }
    let mut result = json!({ "id": c.id, "properties": props, "createdAt": c.created_at, "updatedAt": c.updated_at,
        "archived": false, "new": is_new });
    if let Some(t) = &input.trace {
        result["objectWriteTraceId"] = json!(t);
    }
    s.store.records.insert(rid, c);
    result
}

fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// `POST …/contacts/batch/read` (`archived` from the query string).
pub fn batch_read(s: &mut Sim, body: &[u8], archived: bool, cid: String) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(m) => return invalid(m, cid),
    };
    let Some(inputs) = v.get("inputs").and_then(Value::as_array) else {
        return invalid("Invalid input JSON: `inputs` is required.", cid);
    };
    if inputs.len() > MAX_INPUTS {
        return too_many(inputs.len(), cid);
    }
    let id_property = v.get("idProperty").and_then(Value::as_str);
    if let Err(r) = check_id_property(s, id_property, false, &cid) {
        return r;
    }
    let names = selection(&s.catalog, string_list(v.get("properties")));
    let started = now_iso();
    let mut results = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut returned = HashSet::new();
    for i in inputs {
        let raw = i.get("id").and_then(Value::as_str).unwrap_or_default();
        let id = if id_property == Some("email") { raw.to_lowercase() } else { raw.to_string() };
        match s.store.lookup(id_property, &id, archived) {
            Some(c) => {
                if returned.insert(c.id.clone()) {
                    results.push(record_json(c, &names));
                }
            }
            None => {
                if !missing.iter().any(|m| m == raw) {
                    missing.push(raw.to_string());
                }
            }
        }
    }
    let completed = now_iso();
    if missing.is_empty() {
        return Reply::ok(
            json!({ "status": "COMPLETE", "results": results, "startedAt": started, "completedAt": completed }),
        );
    }
    let error = json!({ "status": "error", "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
        "context": { "ids": missing }, "errors": [] });
    Reply::json(
        StatusCode::MULTI_STATUS,
        json!({ "status": "COMPLETE", "results": results, "numErrors": 1, "errors": [error],
            "startedAt": started, "completedAt": completed }),
    )
}

/// `GET …/contacts/{id}?idProperty=&properties=&archived=`.
pub fn get(s: &mut Sim, id: &str, query: &[(String, String)], cid: String) -> Reply {
    let id_property = query.iter().find(|(k, _)| k == "idProperty").map(|(_, v)| v.as_str());
    let archived = query.iter().any(|(k, v)| k == "archived" && v == "true");
    let asked: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "properties")
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string))
        .collect();
    if let Err(r) = check_id_property(s, id_property, false, &cid) {
        return r;
    }
    let names = selection(&s.catalog, Some(asked));
    let key = if id_property == Some("email") { id.to_lowercase() } else { id.to_string() };
    match s.store.lookup(id_property, &key, archived) {
        Some(c) => Reply::ok(record_json(c, &names)),
        None => Reply::error(StatusCode::NOT_FOUND, ApiError::new("OBJECT_NOT_FOUND", "resource not found", cid)),
    }
}

/// `POST …/contacts/batch/archive`: record ids; unknown or already
/// archived ones are ignored; 204 with no body.
pub fn archive(s: &mut Sim, body: &[u8], cid: String) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(m) => return invalid(m, cid),
    };
    let Some(inputs) = v.get("inputs").and_then(Value::as_array) else {
        return invalid("Invalid input JSON: `inputs` is required.", cid);
    };
    if inputs.len() > MAX_INPUTS {
        return too_many(inputs.len(), cid);
    }
    let unique = s.catalog.unique_names();
    let now = now_iso();
    for i in inputs {
        let Some(id) = i.get("id").and_then(Value::as_str).and_then(|x| x.parse::<u64>().ok()) else { continue };
        let Some(mut c) = s.store.records.remove(&id) else { continue };
        if !c.archived {
            s.store.unindex(&c, &unique);
            c.archived = true;
            c.archived_at = Some(now.clone());
            s.stats.archived_records += 1;
        }
        s.store.records.insert(id, c);
    }
    Reply::empty(StatusCode::NO_CONTENT)
}
