//! Secrets: `SECRET[backend.key]` references in pipeline values, resolved at
//! start from the backends a pipeline declares under `[secrets.<name>]`,
//! and the redaction every output passes through.
//!
//! - [`reference`]: the syntax (no I/O).
//! - [`backend`]: the tables and the four backends (AWS Secrets Manager,
//!   SSM Parameter Store, a directory, a command speaking Vector's exec
//!   protocol). Each fetches and says why not; none logs a value.
//! - [`redact`]: the process-wide registry of values and the masking.
//! - [`Resolver`]: groups references by backend, fetches each id once,
//!   selects `#field`s, registers every value before returning it.
//!
//! This crate knows nothing of pipelines or operators; the engine decides
//! where references may appear and when to resolve them.

pub mod backend;
pub mod redact;
pub mod reference;

use std::collections::{BTreeMap, BTreeSet};

pub use backend::{BackendSpec, parse_duration};
pub use reference::Reference;

/// Why a reference did not resolve. Names the backend and the key, never a
/// value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reference} (secret backend `{backend}`, {kind}): {message}")]
pub struct SecretError {
    pub reference: String,
    pub backend: String,
    pub kind: &'static str,
    pub message: String,
}

/// The declared backends, ready to fetch.
pub struct Resolver {
    backends: BTreeMap<String, (&'static str, backend::Backend)>,
}

impl Resolver {
    /// Builds every backend; an error names the backend at fault.
    pub fn new(specs: &BTreeMap<String, BackendSpec>) -> Result<Resolver, String> {
        let mut backends = BTreeMap::new();
        for (name, spec) in specs {
            let b = backend::Backend::new(name, spec).map_err(|e| format!("secret backend `{name}`: {e}"))?;
            backends.insert(name.clone(), (spec.kind(), b));
        }
        Ok(Resolver { backends })
    }

    /// Resolves every reference, each to its value or its error. Every
    /// value is registered for redaction before this returns. Each secret
    /// id is fetched once however many `#field`s are taken from it.
    pub async fn resolve(&self, refs: &BTreeSet<Reference>) -> BTreeMap<Reference, Result<String, SecretError>> {
        let mut by_backend: BTreeMap<&str, Vec<&Reference>> = BTreeMap::new();
        for r in refs {
            by_backend.entry(r.backend.as_str()).or_default().push(r);
        }
        let fetches = by_backend.into_iter().map(|(name, refs)| async move {
            let Some((kind, b)) = self.backends.get(name) else {
                return refs
                    .into_iter()
                    .map(|r| {
                        let e = SecretError {
                            reference: r.to_string(),
                            backend: name.to_string(),
                            kind: "undeclared",
                            message: format!("no backend `{name}` is declared under [secrets]"),
                        };
                        (r.clone(), Err(e))
                    })
                    .collect::<Vec<_>>();
            };
            let id_of = |r: &Reference| if b.whole_keys() { r.key.clone() } else { r.id_and_field().0.to_string() };
            let ids: Vec<String> = refs.iter().map(|r| id_of(r)).collect::<BTreeSet<_>>().into_iter().collect();
            let fetched = b.fetch(&ids).await;
            refs.into_iter()
                .map(|r| {
                    let err = |message: String| SecretError {
                        reference: r.to_string(),
                        backend: name.to_string(),
                        kind,
                        message,
                    };
                    let value = match &fetched {
                        Err(whole) => Err(err(whole.clone())),
                        Ok(m) => match m.get(&id_of(r)) {
                            None => Err(err("the backend returned nothing for this key".into())),
                            Some(Err(e)) => Err(err(e.clone())),
                            Some(Ok(v)) => {
                                // The whole secret is registered even when
                                // only a field of it is used.
                                redact::register(v);
                                match r.id_and_field() {
                                    (_, Some(field)) if !b.whole_keys() => select_field(v, field).map_err(err),
                                    _ => Ok(v.clone()),
                                }
                            }
                        },
                    };
                    if let Ok(v) = &value {
                        redact::register(v);
                    }
                    (r.clone(), value)
                })
                .collect::<Vec<_>>()
        });
        futures::future::join_all(fetches).await.into_iter().flatten().collect()
    }
}

/// `#field` of a secret holding a JSON object (how Secrets Manager stores
/// several values under one secret).
fn select_field(value: &str, field: &str) -> Result<String, String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(value) else {
        return Err(format!("`#{field}` selects a field, but the secret is not a JSON object"));
    };
    match map.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!("the field `{field}` is not a string, number or boolean")),
        None => {
            let names: Vec<&str> = map.keys().map(String::as_str).collect();
            Err(format!("the secret has no field `{field}` (its fields: {})", names.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::DirectorySpec;

    #[test]
    fn fields_are_selected_from_json_objects() {
        let v = r#"{"hubspot_token":"pat-1","port":3306,"nested":{}}"#;
        assert_eq!(select_field(v, "hubspot_token").unwrap(), "pat-1");
        assert_eq!(select_field(v, "port").unwrap(), "3306");
        assert!(select_field(v, "nested").unwrap_err().contains("not a string"));
        let e = select_field(v, "token").unwrap_err();
        assert!(
            e.contains("no field `token`") && e.contains("hubspot_token, nested, port") && !e.contains("pat-1"),
            "{e}"
        );
        assert!(select_field("plain", "x").unwrap_err().contains("not a JSON object"));
    }

    #[tokio::test]
    async fn resolves_fields_registers_values_and_names_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crm"), "{\"token\":\"pat-na1-resolver-test\"}\n").unwrap();
        std::fs::write(dir.path().join("plain"), "plain-resolver-value\n").unwrap();
        let specs = BTreeMap::from([(
            "mounted".to_string(),
            BackendSpec::Directory(DirectorySpec { path: dir.path().into(), remove_trailing_whitespace: true }),
        )]);
        let resolver = Resolver::new(&specs).unwrap();
        let r = |b: &str, k: &str| Reference { backend: b.into(), key: k.into() };
        let refs =
            BTreeSet::from([r("mounted", "crm#token"), r("mounted", "plain"), r("mounted", "gone"), r("nope", "x")]);
        let got = resolver.resolve(&refs).await;
        assert_eq!(got[&r("mounted", "crm#token")], Ok("pat-na1-resolver-test".into()));
        assert_eq!(got[&r("mounted", "plain")], Ok("plain-resolver-value".into()));
        let gone = got[&r("mounted", "gone")].as_ref().unwrap_err().to_string();
        assert!(gone.starts_with("SECRET[mounted.gone] (secret backend `mounted`, directory): no file"), "{gone}");
        assert!(got[&r("nope", "x")].as_ref().unwrap_err().to_string().contains("no backend `nope`"));
        assert_eq!(redact::redact("x pat-na1-resolver-test plain-resolver-value"), "x [redacted] [redacted]");
    }
}
