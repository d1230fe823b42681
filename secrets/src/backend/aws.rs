//! `aws_secrets_manager` and `aws_ssm`: one signed JSON call per secret id
//! (`secretsmanager.GetSecretValue`, `AmazonSSM.GetParameter` with
//! decryption). Region, endpoint and credentials come from the usual places:
//! the table, then `AWS_*` variables, then the shared profile files, then
//! object_store's chain (ECS task role, web identity, instance metadata).
//! Throttling, 5xx and transport errors are retried with backoff; errors
//! carry AWS's error code and message, which never hold the value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::CredentialProvider;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::AwsSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    SecretsManager,
    Ssm,
}

impl Service {
    /// The SigV4 service name and endpoint prefix.
    fn signing_name(self) -> &'static str {
        match self {
            Service::SecretsManager => "secretsmanager",
            Service::Ssm => "ssm",
        }
    }

    fn endpoint_variable(self) -> &'static str {
        match self {
            Service::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            Service::Ssm => "AWS_ENDPOINT_URL_SSM",
        }
    }
}

/// Where credentials come from, decided at the first call.
enum Credentials {
    Static(Arc<AwsCredential>),
    Chain(Arc<dyn CredentialProvider<Credential = AwsCredential>>),
}

pub struct Aws {
    service: Service,
    region: String,
    endpoint: String,
    profile: String,
    timeout: Duration,
    retries: u32,
    http: reqwest::Client,
    credentials: OnceCell<Result<Credentials, String>>,
}

/// An AWS error: its code (`ResourceNotFoundException`) and message.
struct Failure {
    code: String,
    message: String,
    retry: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() { f.write_str(&self.code) } else { write!(f, "{}: {}", self.code, self.message) }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Aws {
    pub fn new(_name: &str, service: Service, spec: &AwsSpec) -> Result<Aws, String> {
        let profile = spec.profile.clone().or_else(|| env("AWS_PROFILE")).unwrap_or_else(|| "default".into());
        let region = spec
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile_value(&config_file(), &format!("profile {profile}"), &profile, "region"))
            .ok_or_else(|| {
                "no AWS region: set `region` in the table, AWS_REGION, or `region` in the profile's ~/.aws/config"
                    .to_string()
            })?;
        let endpoint = spec
            .endpoint
            .clone()
            .or_else(|| env(service.endpoint_variable()))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://{}.{region}.amazonaws.com", service.signing_name()));
        let timeout = spec.timeout()?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Aws {
            service,
            region,
            endpoint,
            profile,
            timeout,
            retries: spec.retries.unwrap_or(3),
            http,
            credentials: OnceCell::new(),
        })
    }

    /// Values for secret ids, concurrently.
    pub async fn fetch(&self, ids: &[String]) -> BTreeMap<String, Result<String, String>> {
        let calls = ids.iter().map(|id| async move { (id.clone(), self.get(id).await) });
        futures::future::join_all(calls).await.into_iter().collect()
    }

    async fn get(&self, id: &str) -> Result<String, String> {
        let (target, body) = match self.service {
            Service::SecretsManager => ("secretsmanager.GetSecretValue", json!({ "SecretId": id })),
            Service::Ssm => ("AmazonSSM.GetParameter", json!({ "Name": id, "WithDecryption": true })),
        };
        let v = self
            .call(target, &body)
            .await
            .map_err(|f| format!("{f} (endpoint {}, region {})", self.endpoint, self.region))?;
        let value = match self.service {
            Service::SecretsManager => match (v.get("SecretString"), v.get("SecretBinary")) {
                (Some(Value::String(s)), _) => Some(s.clone()),
                (_, Some(_)) => return Err("the secret is binary (SecretBinary); only SecretString can be used".into()),
                _ => None,
            },
            Service::Ssm => v.pointer("/Parameter/Value").and_then(Value::as_str).map(str::to_string),
        };
        value.ok_or_else(|| format!("{} answered without a value", self.service.signing_name()))
    }

    /// One signed call, retried on throttling, 5xx and transport errors.
    async fn call(&self, target: &str, body: &Value) -> Result<Value, Failure> {
        let body = body.to_string();
        let mut attempt = 0;
        loop {
            let result = self.call_once(target, &body).await;
            match result {
                Err(f) if f.retry && attempt < self.retries => {
                    attempt += 1;
                    let wait = Duration::from_millis(100 * (1 << attempt.min(6)));
                    tracing::warn!(target: "engine::secrets", service = self.service.signing_name(), attempt, error = %f, "retrying an AWS call in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, target: &str, body: &str) -> Result<Value, Failure> {
        let credential =
            self.credential().await.map_err(|m| Failure { code: "NoCredentials".into(), message: m, retry: false })?;
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let mut request: HttpRequest = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(HttpRequestBody::from(body.to_string()))
            .map_err(|e| Failure { code: "InvalidEndpoint".into(), message: format!("`{url}`: {e}"), retry: false })?;
        AwsAuthorizer::new(&credential, self.service.signing_name(), &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| Failure { code: "SigningFailed".into(), message: e.to_string(), retry: false })?;
        let response = self
            .http
            .post(&url)
            .headers(request.headers().clone())
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| Failure { code: "RequestFailed".into(), message: error_chain(&e), retry: true })?;
        let status = response.status();
        let header_code = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(':').next().unwrap_or(s).to_string());
        let text = response.text().await.map_err(|e| Failure {
            code: "RequestFailed".into(),
            message: error_chain(&e),
            retry: true,
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| Failure {
                code: "InvalidResponse".into(),
                message: format!("not JSON: {e}"),
                retry: false,
            });
        }
        // JSON (`{"__type": "...#Code", "Message": ...}`) is what these
        // services send; an XML <ErrorResponse> comes from IAM-level refusals
        // behind some endpoints and proxies.
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = parsed
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .or(header_code)
            .or_else(|| xml_element(&text, "Code"))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let message = ["message", "Message"]
            .iter()
            .find_map(|k| parsed.get(*k).and_then(Value::as_str).map(str::to_string))
            .or_else(|| xml_element(&text, "Message"))
            .unwrap_or_default();
        let retry = status.is_server_error()
            || status.as_u16() == 429
            || matches!(
                code.as_str(),
                "ThrottlingException"
                    | "ThrottledException"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "InternalServiceError"
                    | "InternalServerError"
            );
        Err(Failure { code, message, retry })
    }

    async fn credential(&self) -> Result<Arc<AwsCredential>, String> {
        let c = self.credentials.get_or_init(|| self.find_credentials()).await;
        match c {
            Ok(Credentials::Static(c)) => Ok(c.clone()),
            Ok(Credentials::Chain(p)) => match tokio::time::timeout(self.timeout, p.get_credential()).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(format!("AWS credentials: {e}")),
                Err(_) => Err(format!("AWS credentials: no answer within {:?}", self.timeout)),
            },
            Err(e) => Err(e.clone()),
        }
    }

    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, then the profile in the
    /// shared credentials and config files, then object_store's chain.
    async fn find_credentials(&self) -> Result<Credentials, String> {
        if let (Some(key_id), Some(secret_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            crate::redact::register(&secret_key);
            let token = env("AWS_SESSION_TOKEN");
            if let Some(t) = &token {
                crate::redact::register(t);
            }
            return Ok(Credentials::Static(Arc::new(AwsCredential { key_id, secret_key, token })));
        }
        for (file, section) in
            [(credentials_file(), self.profile.clone()), (config_file(), format!("profile {}", self.profile))]
        {
            let get = |k: &str| profile_value(&file, &section, &self.profile, k);
            if let (Some(key_id), Some(secret_key)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
                crate::redact::register(&secret_key);
                let token = get("aws_session_token");
                if let Some(t) = &token {
                    crate::redact::register(t);
                }
                return Ok(Credentials::Static(Arc::new(AwsCredential { key_id, secret_key, token })));
            }
        }
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
            && env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none()
            && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
        {
            return Err(format!(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile `{}` in {}",
                self.profile,
                credentials_file().display()
            ));
        }
        // Task roles, web identity (EKS), instance profiles: object_store
        // implements and refreshes them; the bucket name is never used.
        let s3 = AmazonS3Builder::from_env()
            .with_region(&self.region)
            .with_bucket_name("engine-secrets-credentials")
            .build()
            .map_err(|e| format!("AWS credentials: {e}"))?;
        Ok(Credentials::Chain(s3.credentials().clone()))
    }
}

/// The text of the first `<name>` element (AWS's XML error bodies).
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find("</")? + start;
    Some(text[start..end].trim().to_string()).filter(|s| !s.is_empty())
}

fn home() -> PathBuf {
    env("HOME").map(PathBuf::from).unwrap_or_default()
}

fn credentials_file() -> PathBuf {
    env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).unwrap_or_else(|| home().join(".aws/credentials"))
}

fn config_file() -> PathBuf {
    env("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or_else(|| home().join(".aws/config"))
}

/// `key` in `[section]` of an INI-style AWS file; the config file calls the
/// default profile `[default]`, others `[profile name]`.
fn profile_value(file: &std::path::Path, section: &str, profile: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let wanted = |s: &str| s == section || s == profile;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = wanted(name.trim());
            continue;
        }
        if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string()).filter(|v| !v.is_empty());
        }
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_files_are_read_by_section() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIADEFAULT\n\n[prod]\n# comment\naws_access_key_id=AKIAPROD\naws_secret_access_key = s3cr3t/key\n",
        )
        .unwrap();
        assert_eq!(profile_value(&creds, "prod", "prod", "aws_access_key_id").as_deref(), Some("AKIAPROD"));
        assert_eq!(profile_value(&creds, "prod", "prod", "aws_secret_access_key").as_deref(), Some("s3cr3t/key"));
        assert_eq!(profile_value(&creds, "default", "default", "aws_access_key_id").as_deref(), Some("AKIADEFAULT"));
        assert_eq!(profile_value(&creds, "other", "other", "aws_access_key_id"), None);
        let config = dir.path().join("config");
        std::fs::write(&config, "[default]\nregion = eu-west-1\n[profile prod]\nregion = us-east-2\n").unwrap();
        assert_eq!(profile_value(&config, "profile prod", "prod", "region").as_deref(), Some("us-east-2"));
        assert_eq!(profile_value(&config, "profile default", "default", "region").as_deref(), Some("eu-west-1"));
    }
}
