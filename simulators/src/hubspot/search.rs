//! `POST /crm/v3/objects/contacts/search`: filter groups (filters AND within
//! a group, groups OR; at most 5 groups, 6 filters per group, 18 in all),
//! the operators, free-text `query`, one sort, `limit` (default 10, at most
//! 200) and `after` paging up to HubSpot's 10,000-result cap. Archived
//! records are never found. Its per-second limit and its lack of rate-limit
//! headers are applied by the dispatcher (`mod.rs`, `limits.rs`).
//!
//! Matching follows HubSpot's documented behaviour where known: string
//! `EQ`/`NEQ` ignore case; `IN`/`NOT_IN` compare the lowercased stored value
//! with the values as sent (HubSpot asks for lowercase values there);
//! numbers compare as numbers; dates and datetimes as epoch milliseconds
//! (values as milliseconds or ISO 8601); `NEQ`, `NOT_IN` and
//! `NOT_CONTAINS_TOKEN` also match records without the property.

use std::cmp::Ordering;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Sim;
use super::defs::PropertyType;
use super::objects::{record_json, selection};
use super::values::epoch_millis;
use super::wire::{ApiError, Reply, parse_body};

const MAX_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 6;
const MAX_FILTERS: usize = 18;
const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 10;
/// Results past this many cannot be paged to.
const MAX_RESULTS: usize = 10_000;

/// Properties the free-text `query` looks into.
const SEARCHABLE: [&str; 7] = ["firstname", "lastname", "email", "phone", "company", "website", "hs_object_id"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    HasProperty,
    NotHasProperty,
    ContainsToken,
    NotContainsToken,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "EQ" => Op::Eq,
            "NEQ" => Op::Neq,
            "LT" => Op::Lt,
            "LTE" => Op::Lte,
            "GT" => Op::Gt,
            "GTE" => Op::Gte,
            "BETWEEN" => Op::Between,
            "IN" => Op::In,
            "NOT_IN" => Op::NotIn,
            "HAS_PROPERTY" => Op::HasProperty,
            "NOT_HAS_PROPERTY" => Op::NotHasProperty,
            "CONTAINS_TOKEN" => Op::ContainsToken,
            "NOT_CONTAINS_TOKEN" => Op::NotContainsToken,
            _ => return None,
        })
    }
}

struct Filter {
    property: String,
    kind: PropertyType,
    op: Op,
    value: String,
    high: String,
    values: Vec<String>,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compares a stored value with a filter value by the property's type.
fn compare(kind: PropertyType, stored: &str, wanted: &str) -> Option<Ordering> {
    match kind {
        PropertyType::Number => stored.parse::<f64>().ok()?.partial_cmp(&wanted.parse::<f64>().ok()?),
        PropertyType::Date | PropertyType::Datetime => {
            // Stored values are normalized; filter values may be either form.
            let a = epoch_millis(kind, stored).or_else(|| epoch_millis(PropertyType::Datetime, stored))?;
            let b = epoch_millis(kind, wanted).or_else(|| epoch_millis(PropertyType::Datetime, wanted))?;
            Some(a.cmp(&b))
        }
        _ => Some(stored.to_lowercase().cmp(&wanted.to_lowercase())),
    }
}

fn tokens(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase)
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else { return false };
            rest = &rest[pos + part.len()..];
        }
    }
    true
}

impl Filter {
    fn matches(&self, stored: Option<&str>) -> bool {
        let stored = stored.filter(|s| !s.is_empty());
        let eq = |s: &str, w: &str| compare(self.kind, s, w) == Some(Ordering::Equal);
        let is_in = |s: &str| {
            self.values.iter().any(|w| match self.kind {
                PropertyType::String | PropertyType::Enumeration | PropertyType::Bool => s.to_lowercase() == *w,
                _ => eq(s, w),
            })
        };
        let has_token = |s: &str| {
            let w = self.value.to_lowercase();
            if w.contains('*') {
                glob(&w, &s.to_lowercase()) || tokens(s).any(|t| glob(&w, &t))
            } else {
                tokens(s).any(|t| t == w)
            }
        };
        match (self.op, stored) {
            (Op::HasProperty, s) => s.is_some(),
            (Op::NotHasProperty, s) => s.is_none(),
            (Op::Neq, None) | (Op::NotIn, None) | (Op::NotContainsToken, None) => true,
            (_, None) => false,
            (Op::Eq, Some(s)) => eq(s, &self.value),
            (Op::Neq, Some(s)) => !eq(s, &self.value),
            (Op::Lt, Some(s)) => compare(self.kind, s, &self.value) == Some(Ordering::Less),
            (Op::Lte, Some(s)) => matches!(compare(self.kind, s, &self.value), Some(Ordering::Less | Ordering::Equal)),
            (Op::Gt, Some(s)) => compare(self.kind, s, &self.value) == Some(Ordering::Greater),
            (Op::Gte, Some(s)) => {
                matches!(compare(self.kind, s, &self.value), Some(Ordering::Greater | Ordering::Equal))
            }
            (Op::Between, Some(s)) => {
                matches!(compare(self.kind, s, &self.value), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(compare(self.kind, s, &self.high), Some(Ordering::Less | Ordering::Equal))
            }
            (Op::In, Some(s)) => is_in(s),
            (Op::NotIn, Some(s)) => !is_in(s),
            (Op::ContainsToken, Some(s)) => has_token(s),
            (Op::NotContainsToken, Some(s)) => !has_token(s),
        }
    }
}

fn bad(message: impl Into<String>, cid: &str) -> Reply {
    Reply::error(StatusCode::BAD_REQUEST, ApiError::new("VALIDATION_ERROR", message, cid.to_string()))
}

fn parse_filter(s: &Sim, f: &Value, cid: &str) -> Result<Filter, Reply> {
    let Some(property) = f.get("propertyName").and_then(Value::as_str) else {
        return Err(bad("Invalid input JSON: filters[].propertyName is required", cid));
    };
    let Some(def) = s.catalog.def(property) else {
        return Err(bad(format!("There was a problem with the request: Property \"{property}\" does not exist"), cid));
    };
    let op_name = f.get("operator").and_then(Value::as_str).unwrap_or("EQ");
    let Some(op) = Op::parse(op_name) else {
        return Err(bad(format!("Invalid input JSON: unknown filter operator {op_name}"), cid));
    };
    let value = f.get("value").filter(|v| !v.is_null());
    let values = f.get("values").filter(|v| !v.is_null());
    let high = f.get("highValue").filter(|v| !v.is_null());
    let mut filter = Filter {
        property: property.into(),
        kind: def.property_type,
        op,
        value: String::new(),
        high: String::new(),
        values: vec![],
    };
    match op {
        Op::HasProperty | Op::NotHasProperty => {
            if value.is_some() || values.is_some() {
                return Err(bad(format!("Operator {op_name} does not take a value"), cid));
            }
        }
        Op::In | Op::NotIn => {
            let Some(list) = values.and_then(Value::as_array).filter(|a| !a.is_empty()) else {
                return Err(bad(format!("Operator {op_name} requires `values`, a non-empty array"), cid));
            };
            filter.values = list.iter().filter_map(scalar).collect();
        }
        _ => {
            let Some(v) = value.and_then(scalar) else {
                return Err(bad(format!("Operator {op_name} requires a `value`"), cid));
            };
            filter.value = v;
            if op == Op::Between {
                let Some(h) = high.and_then(scalar) else {
                    return Err(bad("Operator BETWEEN requires `value` and `highValue`", cid));
                };
                filter.high = h;
            }
        }
    }
    Ok(filter)
}

fn usize_field(v: Option<&Value>) -> Result<Option<usize>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(|n| Some(n as usize)).ok_or(()),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// `POST …/contacts/search`.
pub fn search(s: &mut Sim, body: &[u8], cid: String) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(m) => return bad(m, &cid),
    };
    let groups = match v.get("filterGroups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return bad("Invalid input JSON: filterGroups must be an array", &cid),
    };
    if groups.len() > MAX_GROUPS {
        return bad(format!("Too many filter groups: {} (at most {MAX_GROUPS} are allowed)", groups.len()), &cid);
    }
    let mut parsed: Vec<Vec<Filter>> = Vec::new();
    let mut total_filters = 0;
    for g in &groups {
        let filters = g.get("filters").and_then(Value::as_array).cloned().unwrap_or_default();
        if filters.len() > MAX_FILTERS_PER_GROUP {
            return bad(
                format!("Too many filters in a group: {} (at most {MAX_FILTERS_PER_GROUP} are allowed)", filters.len()),
                &cid,
            );
        }
        total_filters += filters.len();
        let mut group = Vec::new();
        for f in &filters {
            match parse_filter(s, f, &cid) {
                Ok(f) => group.push(f),
                Err(r) => return r,
            }
        }
        parsed.push(group);
    }
    if total_filters > MAX_FILTERS {
        return bad(format!("Too many filters: {total_filters} (at most {MAX_FILTERS} in all filter groups)"), &cid);
    }
    let limit = match usize_field(v.get("limit")) {
        Ok(None) => DEFAULT_LIMIT,
        Ok(Some(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        _ => return bad(format!("limit must be an integer between 1 and {MAX_LIMIT}"), &cid),
    };
    let after = match usize_field(v.get("after")) {
        Ok(a) => a.unwrap_or(0),
        Err(()) => return bad("after must be a paging cursor returned by a previous search", &cid),
    };
    if after + limit > MAX_RESULTS {
        return bad(
            format!("Search results are limited to {MAX_RESULTS}: cannot page past result {MAX_RESULTS}"),
            &cid,
        );
    }
    let sort = match v.get("sorts").and_then(Value::as_array) {
        None => None,
        Some(a) if a.is_empty() => None,
        Some(a) if a.len() > 1 => return bad("Only one sort is allowed", &cid),
        Some(a) => {
            let (name, descending) = match &a[0] {
                Value::String(x) => match x.strip_prefix('-') {
                    Some(n) => (n.to_string(), true),
                    None => (x.clone(), false),
                },
                o => (
                    o.get("propertyName").and_then(Value::as_str).unwrap_or_default().to_string(),
                    o.get("direction").and_then(Value::as_str) == Some("DESCENDING"),
                ),
            };
            let Some(def) = s.catalog.def(&name) else {
                return bad(format!("Cannot sort by property \"{name}\": it does not exist"), &cid);
            };
            Some((name, def.property_type, descending))
        }
    };
    let query = v.get("query").and_then(Value::as_str).map(str::to_lowercase).filter(|q| !q.trim().is_empty());
    let names = selection(
        &s.catalog,
        v.get("properties")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()),
    );

    let mut found: Vec<_> = s
        .store
        .active()
        .filter(|c| {
            parsed.is_empty() || parsed.iter().any(|g| g.iter().all(|f| f.matches(c.value(&f.property).as_deref())))
        })
        .filter(|c| {
            query.as_ref().is_none_or(|q| {
                SEARCHABLE.iter().any(|p| c.value(p).is_some_and(|x| x.to_lowercase().contains(q.trim())))
            })
        })
        .collect();
    if let Some((name, kind, descending)) = &sort {
        found.sort_by(|a, b| {
            let (x, y) = (a.value(name), b.value(name));
            let o = match (&x, &y) {
                (Some(x), Some(y)) => compare(*kind, x, y).unwrap_or(Ordering::Equal),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            if *descending && x.is_some() && y.is_some() { o.reverse() } else { o }
        });
    }
    let total = found.len();
    let page: Vec<Value> = found.iter().skip(after).take(limit).map(|c| record_json(c, &names)).collect();
    let mut out = json!({ "total": total, "results": page });
    let next = after + limit;
    if next < total && next < MAX_RESULTS {
        out["paging"] = json!({ "next": { "after": next.to_string(), "link": format!("?after={next}") } });
    }
    Reply::ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: PropertyType, op: Op, value: &str, values: &[&str]) -> Filter {
        Filter {
            property: "p".into(),
            kind,
            op,
            value: value.into(),
            high: String::new(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn operators_match_by_type() {
        use PropertyType::*;
        assert!(f(String, Op::Eq, "mary", &[]).matches(Some("Mary")));
        assert!(!f(String, Op::Eq, "mar", &[]).matches(Some("Mary")));
        assert!(f(String, Op::Neq, "x", &[]).matches(None), "NEQ matches a record without the property");
        assert!(f(String, Op::In, "", &["mary", "ann"]).matches(Some("Mary")));
        assert!(!f(String, Op::In, "", &["Mary"]).matches(Some("Mary")), "IN wants lowercase values");
        assert!(f(Number, Op::Eq, "1990", &[]).matches(Some("1990.0")));
        assert!(f(Number, Op::Gt, "9", &[]).matches(Some("10")), "numbers compare as numbers");
        assert!(!f(String, Op::Gt, "9", &[]).matches(Some("10")), "strings do not");
        assert!(f(Datetime, Op::Gte, "1427997766000", &[]).matches(Some("2015-04-02T18:02:46.000Z")));
        assert!(f(Date, Op::Eq, "2015-05-01", &[]).matches(Some("2015-05-01")));
        assert!(f(String, Op::HasProperty, "", &[]).matches(Some("x")));
        assert!(!f(String, Op::HasProperty, "", &[]).matches(Some("")));
        assert!(f(String, Op::NotHasProperty, "", &[]).matches(None));
        assert!(f(String, Op::ContainsToken, "smith", &[]).matches(Some("John Smith")));
        assert!(f(String, Op::ContainsToken, "*@example.com", &[]).matches(Some("ann@example.com")));
        assert!(!f(String, Op::ContainsToken, "smi", &[]).matches(Some("John Smith")));
        let mut b = f(Number, Op::Between, "10", &[]);
        b.high = "20".into();
        assert!(b.matches(Some("20")) && !b.matches(Some("21")));
    }
}
