//! The `[secrets.<name>]` tables (what a user declares) and the backends
//! built from them. Each backend only fetches: it returns values or says why
//! not, naming keys, never values. Redaction and `#field` selection belong to
//! the resolver (`lib.rs`).

pub mod aws;
pub mod directory;
pub mod exec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One `[secrets.<name>]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendSpec {
    AwsSecretsManager(AwsSpec),
    AwsSsm(AwsSpec),
    Directory(DirectorySpec),
    Exec(ExecSpec),
}

pub const KINDS: &[&str] = &["aws_secrets_manager", "aws_ssm", "directory", "exec"];

impl BackendSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::AwsSecretsManager(_) => "aws_secrets_manager",
            BackendSpec::AwsSsm(_) => "aws_ssm",
            BackendSpec::Directory(_) => "directory",
            BackendSpec::Exec(_) => "exec",
        }
    }

    /// Reads a table given as JSON; the error names the option at fault.
    pub fn from_json(v: &serde_json::Value) -> Result<BackendSpec, String> {
        let kind = v.get("kind").and_then(|k| k.as_str());
        match kind {
            None => return Err(format!("`kind` is required: one of {}", KINDS.join(", "))),
            Some(k) if !KINDS.contains(&k) => {
                return Err(format!("unknown secret backend kind `{k}`: one of {}", KINDS.join(", ")));
            }
            _ => {}
        }
        let spec: BackendSpec = serde_path_to_error_free(v)?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        match self {
            BackendSpec::AwsSecretsManager(a) | BackendSpec::AwsSsm(a) => {
                a.timeout()?;
                if let Some(e) = &a.endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err(format!("`endpoint` must be an http:// or https:// URL, found `{e}`"));
                }
            }
            BackendSpec::Directory(d) => {
                if d.path.as_os_str().is_empty() {
                    return Err("`path` must name a directory".into());
                }
            }
            BackendSpec::Exec(e) => {
                e.timeout()?;
                if e.command.first().is_none_or(|c| c.is_empty()) {
                    return Err("`command` must name a program: command = [\"path/to/script\", \"arg\"...]".into());
                }
            }
        }
        Ok(())
    }
}

/// serde's own error text names the field (`unknown field `x`, expected
/// one of ...`); that is enough here, tables are small.
fn serde_path_to_error_free(v: &serde_json::Value) -> Result<BackendSpec, String> {
    BackendSpec::deserialize(v).map_err(|e| e.to_string())
}

/// `aws_secrets_manager` and `aws_ssm`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsSpec {
    /// Else AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`.
    pub region: Option<String>,
    /// Else AWS_ENDPOINT_URL_SECRETS_MANAGER / AWS_ENDPOINT_URL_SSM, then
    /// AWS_ENDPOINT_URL, then the service's regional endpoint.
    pub endpoint: Option<String>,
    /// Else AWS_PROFILE, then `default`.
    pub profile: Option<String>,
    /// Per request; default 10s.
    pub timeout: Option<String>,
    /// Retries of throttling, 5xx and transport errors; default 3.
    pub retries: Option<u32>,
}

impl AwsSpec {
    pub fn timeout(&self) -> Result<Duration, String> {
        parse_duration(self.timeout.as_deref().unwrap_or("10s"))
    }
}

/// `directory`: one file per secret (`/run/secrets`, Kubernetes mounts).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    pub path: PathBuf,
    /// Files written with `echo` end in a newline that is not part of the
    /// secret; default true.
    #[serde(default = "yes")]
    pub remove_trailing_whitespace: bool,
}

fn yes() -> bool {
    true
}

/// `exec`: Vector's protocol over a command's stdin and stdout.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub command: Vec<String>,
    /// Default 10s.
    pub timeout: Option<String>,
}

impl ExecSpec {
    pub fn timeout(&self) -> Result<Duration, String> {
        parse_duration(self.timeout.as_deref().unwrap_or("10s"))
    }
}

/// `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 10s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}` is not a duration like 500ms, 10s or 2m")),
    };
    if d.is_zero() || d > Duration::from_secs(600) {
        return Err(format!("`{s}`: a timeout must be between 1ms and 10m"));
    }
    Ok(d)
}

/// A backend ready to fetch.
pub enum Backend {
    Aws(aws::Aws),
    Directory(directory::Directory),
    Exec(exec::Exec),
}

impl Backend {
    pub fn new(name: &str, spec: &BackendSpec) -> Result<Backend, String> {
        Ok(match spec {
            BackendSpec::AwsSecretsManager(a) => Backend::Aws(aws::Aws::new(name, aws::Service::SecretsManager, a)?),
            BackendSpec::AwsSsm(a) => Backend::Aws(aws::Aws::new(name, aws::Service::Ssm, a)?),
            BackendSpec::Directory(d) => Backend::Directory(directory::Directory::new(d)),
            BackendSpec::Exec(e) => Backend::Exec(exec::Exec::new(e)?),
        })
    }

    /// Values for `ids` (keys without their `#field`), each or why not; an
    /// `Err` for the whole call when the backend itself failed.
    pub async fn fetch(&self, ids: &[String]) -> Result<BTreeMap<String, Result<String, String>>, String> {
        match self {
            Backend::Aws(a) => Ok(a.fetch(ids).await),
            Backend::Directory(d) => Ok(ids.iter().map(|id| (id.clone(), d.get(id))).collect()),
            Backend::Exec(e) => e.fetch(ids).await,
        }
    }

    /// Whether this backend selects `#field` itself (exec passes whole keys
    /// to the command, as Vector does).
    pub fn whole_keys(&self) -> bool {
        matches!(self, Backend::Exec(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_parse_and_bad_ones_name_the_option() {
        let s = BackendSpec::from_json(&json!({"kind": "directory", "path": "/run/secrets"})).unwrap();
        assert_eq!(
            s,
            BackendSpec::Directory(DirectorySpec { path: "/run/secrets".into(), remove_trailing_whitespace: true })
        );
        let s = BackendSpec::from_json(&json!({"kind": "exec", "command": ["a.sh"], "timeout": "5s"})).unwrap();
        assert_eq!(s.kind(), "exec");
        let e = BackendSpec::from_json(&json!({"kind": "aws_ssm", "regoin": "x"})).unwrap_err();
        assert!(e.contains("unknown field `regoin`"), "{e}");
        let e = BackendSpec::from_json(&json!({"kind": "vault"})).unwrap_err();
        assert!(e.contains("unknown secret backend kind `vault`"), "{e}");
        let e = BackendSpec::from_json(&json!({"path": "/x"})).unwrap_err();
        assert!(e.contains("`kind` is required"), "{e}");
        let e = BackendSpec::from_json(&json!({"kind": "exec", "command": []})).unwrap_err();
        assert!(e.contains("`command` must name a program"), "{e}");
        let e = BackendSpec::from_json(&json!({"kind": "exec", "command": ["x"], "timeout": "soon"})).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = BackendSpec::from_json(&json!({"kind": "aws_secrets_manager", "endpoint": "localhost:1"})).unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("11m").is_err());
    }
}
