//! Secret references in a validated pipeline: resolving them before a run
//! (`resolve`), reporting them for `engine validate --resolve` (`check`),
//! and resolving one option again when a credential was rotated
//! (`Rotator`). The backends, the syntax and redaction live in the
//! `secrets` crate; this file only knows where references sit in a
//! [`Pipeline`]. It must not print or log a value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use secrets::{Reference, Resolver, SecretError};
use serde_json::Value;

use crate::config::Pipeline;

/// What stands in for a reference while a file is only validated: a value
/// every option accepts where a credential goes (a URL's password too).
pub const PLACEHOLDER: &str = "secret-placeholder";

/// `options` with every reference replaced by [`PLACEHOLDER`].
pub fn placeholders(options: &Value) -> Value {
    map_strings(options, &mut |s| secrets::reference::substitute(s, &|_| Some(PLACEHOLDER.to_string())).ok())
}

/// Why a pipeline's secrets could not be resolved: every failed reference.
#[derive(Debug)]
pub struct Unresolved {
    pub errors: Vec<(String, SecretError)>,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        write!(f, "{n} secret reference{} did not resolve:", if n == 1 { "" } else { "s" })?;
        for (at, e) in &self.errors {
            write!(f, "\n  {at}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unresolved {}

/// Every reference in the pipeline and where it appears
/// (`sinks.crm.token`).
pub fn references(p: &Pipeline) -> BTreeMap<Reference, Vec<String>> {
    let mut out: BTreeMap<Reference, Vec<String>> = BTreeMap::new();
    for c in &p.components {
        let mut visit = |path: &str, s: &str| {
            for (_, r) in secrets::reference::scan(s).unwrap_or_default() {
                out.entry(r).or_default().push(format!("{}.{}.{path}", c.role.table(), c.id));
            }
        };
        walk_strings(&c.options, &mut String::new(), &mut visit);
    }
    for (name, table) in &p.alerts {
        let mut visit = |path: &str, s: &str| {
            for (_, r) in secrets::reference::scan(s).unwrap_or_default() {
                out.entry(r).or_default().push(format!("alerts.{name}.{path}"));
            }
        };
        walk_strings(table, &mut String::new(), &mut visit);
    }
    out
}

/// Resolves every reference and writes the values into the components'
/// options, keeping the unresolved options for rotation. Fails with every
/// reference that did not resolve; nothing is half-replaced then.
pub async fn resolve(p: &mut Pipeline) -> Result<Option<Arc<Resolver>>, Unresolved> {
    let refs = references(p);
    if refs.is_empty() {
        return Ok(None);
    }
    let resolver = Resolver::new(&p.secrets).map_err(|e| Unresolved {
        errors: vec![(
            "[secrets]".into(),
            SecretError { reference: String::new(), backend: String::new(), kind: "config", message: e },
        )],
    })?;
    let wanted: BTreeSet<Reference> = refs.keys().cloned().collect();
    let values = resolver.resolve(&wanted).await;
    let errors: Vec<(String, SecretError)> =
        values.iter().filter_map(|(r, v)| v.as_ref().err().map(|e| (refs[r].join(", "), e.clone()))).collect();
    if !errors.is_empty() {
        return Err(Unresolved { errors });
    }
    let ok: BTreeMap<Reference, String> = values.into_iter().filter_map(|(r, v)| v.ok().map(|v| (r, v))).collect();
    let resolver = Some(Arc::new(resolver));
    for c in &mut p.components {
        let before = c.options.clone();
        let after = map_strings(&before, &mut |s| Some(substitute(s, &ok)));
        if after != before {
            c.options = after;
            c.unresolved = Some(before);
            c.rotation = crate::config::RotationSlot(rotator(&resolver, c));
        }
    }
    for table in p.alerts.values_mut() {
        *table = map_strings(table, &mut |s| Some(substitute(s, &ok)));
    }
    Ok(resolver)
}

/// One line per reference for `engine validate --resolve`: where it is
/// used and whether it resolved (never the value).
pub async fn check(p: &Pipeline) -> (Vec<String>, bool) {
    let refs = references(p);
    if refs.is_empty() {
        return (vec!["no secret references".into()], true);
    }
    let resolver = match Resolver::new(&p.secrets) {
        Ok(r) => r,
        Err(e) => return (vec![e], false),
    };
    let values = resolver.resolve(&refs.keys().cloned().collect()).await;
    let mut all_ok = true;
    let lines = values
        .into_iter()
        .map(|(r, v)| {
            let at = refs[&r].join(", ");
            match v {
                Ok(v) => format!("ok      {at}: {r} ({} characters)", v.chars().count()),
                Err(e) => {
                    all_ok = false;
                    format!("FAILED  {at}: {e}")
                }
            }
        })
        .collect();
    (lines, all_ok)
}

/// `s` with references replaced by their values. A value that lands in a
/// URL's userinfo (`mysql://user:SECRET[...]@host`) is percent-encoded, so a
/// password holding `@`, `/` or `:` still makes a valid URL.
fn substitute(s: &str, values: &BTreeMap<Reference, String>) -> String {
    let Ok(refs) = secrets::reference::scan(s) else { return s.to_string() };
    if refs.is_empty() {
        return s.to_string();
    }
    // Mark each reference with a token that cannot hold URL delimiters,
    // then find the userinfo in the marked text.
    let mut marked = String::new();
    let mut last = 0;
    for (i, (range, _)) in refs.iter().enumerate() {
        marked.push_str(&s[last..range.start]);
        marked.push_str(&format!("\u{1}{i}\u{1}"));
        last = range.end;
    }
    marked.push_str(&s[last..]);
    let userinfo = marked.find("://").and_then(|scheme| {
        let start = scheme + 3;
        let authority_end = marked[start..].find(['/', '?', '#']).map_or(marked.len(), |e| start + e);
        marked[start..authority_end].rfind('@').map(|at| start..start + at)
    });
    let mut out = marked.clone();
    for (i, (_, r)) in refs.iter().enumerate() {
        let token = format!("\u{1}{i}\u{1}");
        let Some(value) = values.get(r) else { continue };
        let in_userinfo = userinfo.as_ref().is_some_and(|u| marked[u.clone()].contains(&token));
        let value = if in_userinfo {
            percent_encoding::utf8_percent_encode(value, USERINFO).to_string()
        } else {
            value.clone()
        };
        out = out.replacen(&token, &value, 1);
    }
    // A reference nobody resolved stays as written.
    for (i, (range, _)) in refs.iter().enumerate() {
        out = out.replacen(&format!("\u{1}{i}\u{1}"), &s[range.clone()], 1);
    }
    out
}

const USERINFO: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Resolves one component's option again (a 401, an access-denied): what
/// operators get as their [`operators::Rotation`].
pub struct Rotator {
    pub resolver: Arc<Resolver>,
    /// The component's options as written, references unresolved.
    pub unresolved: Value,
    /// The values in use, by option name.
    pub current: std::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values never; the options' names only.
        let names: Vec<&String> = self.unresolved.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        write!(f, "Rotator({names:?})")
    }
}

#[async_trait::async_trait]
impl operators::Rotation for Rotator {
    async fn refresh(&self, option: &str) -> Result<Option<String>, String> {
        let Some(template) = self.unresolved.get(option).and_then(Value::as_str) else { return Ok(None) };
        let refs: BTreeSet<Reference> =
            secrets::reference::scan(template).map_err(|e| e.to_string())?.into_iter().map(|(_, r)| r).collect();
        if refs.is_empty() {
            return Ok(None);
        }
        let mut values = BTreeMap::new();
        for (r, v) in self.resolver.resolve(&refs).await {
            values.insert(r, v.map_err(|e| e.to_string())?);
        }
        let fresh = substitute(template, &values);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.get(option) == Some(&fresh) {
            return Ok(None);
        }
        current.insert(option.to_string(), fresh.clone());
        Ok(Some(fresh))
    }

    fn describe(&self, option: &str) -> String {
        let refs: Vec<String> = self
            .unresolved
            .get(option)
            .and_then(Value::as_str)
            .and_then(|t| secrets::reference::scan(t).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(_, r)| r.to_string())
            .collect();
        if refs.is_empty() { format!("the `{option}` option") } else { refs.join(", ") }
    }
}

/// A rotator for a component whose options held references.
pub fn rotator(resolver: &Option<Arc<Resolver>>, c: &crate::config::Component) -> Option<Arc<dyn operators::Rotation>> {
    let (resolver, unresolved) = (resolver.as_ref()?, c.unresolved.as_ref()?);
    let current = c
        .options
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default();
    Some(Arc::new(Rotator {
        resolver: resolver.clone(),
        unresolved: unresolved.clone(),
        current: std::sync::Mutex::new(current),
    }))
}

fn walk_strings(v: &Value, path: &mut String, visit: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => visit(path, s),
        Value::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(it, path, visit);
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, it) in m {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk_strings(it, path, visit);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn map_strings(v: &Value, f: &mut dyn FnMut(&str) -> Option<String>) -> Value {
    match v {
        Value::String(s) => Value::String(f(s).unwrap_or_else(|| s.clone())),
        Value::Array(items) => Value::Array(items.iter().map(|i| map_strings(i, f)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), map_strings(v, f))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(b: &str, k: &str) -> Reference {
        Reference { backend: b.into(), key: k.into() }
    }

    #[test]
    fn values_in_a_urls_userinfo_are_encoded() {
        let values = BTreeMap::from([
            (r("params", "/babynames/db_password"), "p@ss/w:rd".to_string()),
            (r("aws", "x#token"), "pat-na1-1/2".to_string()),
        ]);
        assert_eq!(
            substitute("mysql://loader:SECRET[params./babynames/db_password]@db:3306/babynames", &values),
            "mysql://loader:p%40ss%2Fw%3Ard@db:3306/babynames"
        );
        assert_eq!(substitute("SECRET[aws.x#token]", &values), "pat-na1-1/2");
        assert_eq!(substitute("https://h/x?t=SECRET[aws.x#token]", &values), "https://h/x?t=pat-na1-1/2");
        assert_eq!(substitute("keep SECRET[other.k]", &values), "keep SECRET[other.k]");
    }

    #[test]
    fn placeholders_stand_in_for_every_reference() {
        let v = serde_json::json!({"url": "mysql://u:SECRET[a.b]@h/d", "n": 1, "l": ["SECRET[a.c]"]});
        assert_eq!(
            placeholders(&v),
            serde_json::json!({"url": "mysql://u:secret-placeholder@h/d", "n": 1, "l": ["secret-placeholder"]})
        );
    }
}
