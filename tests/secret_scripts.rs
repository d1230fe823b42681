//! The example `exec` secret scripts (scripts/secrets/*.sh) against fake
//! `vault`, `az` and `gcloud` CLIs (tests/fixtures/fake-clis), speaking
//! Vector's exec secret protocol: one request on stdin,
//! `{"version":"1.0","secrets":[...]}`, one response on stdout,
//! `{"key":{"value":...,"error":...}}`, exit 0; a key that cannot be read
//! gets an error naming it, and no value ever shows in an error or on stderr.
//!
//! The scripts need `jq` (scripts/ensure-jq) and bash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A value that breaks naive quoting: quotes, a backslash, non-ASCII, and
/// something a shell would expand.
const TRICKY: &str = r#"he said "hi" \ and ünïcode $HOME"#;
/// A multi-line value that ends in a newline.
const PEM: &str = "-----BEGIN KEY-----\nMIIBfakefakefake\n-----END KEY-----\n";
const HUBSPOT: &str = "pat-na1-5f0c2a9e-41d7-4c1b-8f3e-7a6b5c4d3e2f";
const VAULT_TOKEN: &str = "hvs.fake-test-token-1c9d";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create store dirs");
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn request(keys: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "version": "1.0", "secrets": keys })).expect("request")
}

/// Runs scripts/secrets/`script` fed `stdin`, with the fake CLIs first on
/// PATH and an environment holding only PATH, HOME, FAKE_SECRETS_DIR (both
/// `store`) and `env`.
fn run_script(script: &str, store: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let root = repo();
    let fakes = root.join("tests/fixtures/fake-clis");
    let original = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(fakes).chain(std::env::split_paths(&original))).expect("PATH");
    let mut child = Command::new(root.join("scripts/secrets").join(script))
        .current_dir(store)
        .env_clear()
        .env("PATH", path)
        .env("HOME", store)
        .env("FAKE_SECRETS_DIR", store)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run scripts/secrets/{script}: {e}"));
    // A script may exit before reading a malformed request: a broken pipe
    // here is fine. Dropping the handle closes stdin.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("wait for the script")
}

/// Checks one response: exit 0 and one JSON object with an entry for each
/// key of `want` and no other; `Some(v)`: the value is exactly `v`, no
/// error; `None`: no value, an error naming the key. None of `stored` (every
/// value in the store) shows in any error or on stderr. Returns the response.
fn check(out: &Output, want: &[(&str, Option<&str>)], stored: &[&str]) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let resp: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}\nstderr: {stderr}"));
    let obj = resp.as_object().unwrap_or_else(|| panic!("the response is not an object: {resp}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut wanted: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    wanted.sort_unstable();
    assert_eq!(got, wanted, "the keys of {resp}");
    for (key, value) in want {
        let entry = &resp[*key];
        assert_eq!(entry.as_object().map(|o| o.len()), Some(2), "{key}: not {{value, error}}: {entry}");
        match value {
            Some(v) => {
                assert_eq!(entry["value"], Value::from(*v), "{key}: {entry}");
                assert!(entry["error"].is_null(), "{key}: {entry}");
            }
            None => {
                assert!(entry["value"].is_null(), "{key}: {entry}");
                let error = entry["error"].as_str().unwrap_or_else(|| panic!("{key}: no error: {entry}"));
                assert!(error.contains(key), "{key}: the error does not name the key: {error}");
            }
        }
    }
    for secret in stored {
        assert!(!stderr.contains(secret), "stderr shows the value {secret:?}: {stderr}");
        for (key, entry) in obj {
            if let Some(error) = entry["error"].as_str() {
                assert!(!error.contains(secret), "{key}: the error shows the value {secret:?}: {error}");
            }
        }
    }
    resp
}

fn error<'a>(resp: &'a Value, key: &str) -> &'a str {
    resp[key]["error"].as_str().unwrap_or_else(|| panic!("{key}: no error: {resp}"))
}

fn vault_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("temp dir");
    let prod = json!({ "hubspot_token": HUBSPOT, "tricky": TRICKY, "pem": PEM, "port": 5432 });
    write(&store.path().join("vault/secret/babynames/prod.json"), prod.to_string());
    write(&store.path().join("vault/kv/babynames/other.json"), json!({ "token": "kv-mount-value-88" }).to_string());
    store
}

const VAULT_STORED: &[&str] = &[HUBSPOT, TRICKY, PEM, "kv-mount-value-88", VAULT_TOKEN];

#[test]
fn secret_scripts_vault_kv_resolves_each_key() {
    let store = vault_store();
    let env = [("VAULT_ADDR", "http://127.0.0.1:8200"), ("VAULT_TOKEN", VAULT_TOKEN)];
    let keys = [
        "babynames/prod#hubspot_token",
        "babynames/prod#tricky",
        "babynames/prod#pem",
        "babynames/prod#port",
        "babynames/prod#missing_field",
        "babynames/staging#hubspot_token",
        "babynames/prod",
    ];
    let out = run_script("vault-kv.sh", store.path(), &env, &request(&keys));
    let resp = check(
        &out,
        &[
            ("babynames/prod#hubspot_token", Some(HUBSPOT)),
            ("babynames/prod#tricky", Some(TRICKY)),
            ("babynames/prod#pem", Some(PEM)),
            ("babynames/prod#port", Some("5432")),
            ("babynames/prod#missing_field", None),
            ("babynames/staging#hubspot_token", None),
            ("babynames/prod", None),
        ],
        VAULT_STORED,
    );
    let missing = error(&resp, "babynames/staging#hubspot_token");
    assert!(missing.contains("No value found at secret/data/babynames/staging"), "{missing}");
    assert!(error(&resp, "babynames/prod").contains("<path>#<field>"), "{resp}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "one JSON document on one line");
}

#[test]
fn secret_scripts_vault_kv_mount_from_env() {
    let store = vault_store();
    let env = [("VAULT_ADDR", "http://127.0.0.1:8200"), ("VAULT_TOKEN", VAULT_TOKEN), ("VAULT_KV_MOUNT", "kv")];
    let keys = ["babynames/other#token", "babynames/prod#hubspot_token"];
    let out = run_script("vault-kv.sh", store.path(), &env, &request(&keys));
    let resp = check(
        &out,
        &[("babynames/other#token", Some("kv-mount-value-88")), ("babynames/prod#hubspot_token", None)],
        VAULT_STORED,
    );
    assert!(error(&resp, "babynames/prod#hubspot_token").contains("kv/data/babynames/prod"), "{resp}");
}

#[test]
fn secret_scripts_vault_kv_cli_failures_are_per_key() {
    let store = vault_store();
    let keys = ["babynames/prod#hubspot_token", "babynames/prod#tricky"];
    let want: [(&str, Option<&str>); 2] = [("babynames/prod#hubspot_token", None), ("babynames/prod#tricky", None)];

    // No VAULT_ADDR: the CLI dials its default address and fails.
    let out = run_script("vault-kv.sh", store.path(), &[("VAULT_TOKEN", VAULT_TOKEN)], &request(&keys));
    let resp = check(&out, &want, VAULT_STORED);
    for (key, _) in want {
        assert!(error(&resp, key).contains("connection refused"), "{resp}");
    }

    // No token: permission denied.
    let out = run_script("vault-kv.sh", store.path(), &[("VAULT_ADDR", "http://127.0.0.1:8200")], &request(&keys));
    let resp = check(&out, &want, VAULT_STORED);
    for (key, _) in want {
        assert!(error(&resp, key).contains("permission denied"), "{resp}");
    }
}

fn azure_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("temp dir");
    let vault = store.path().join("az/babynames-kv");
    write(&vault.join("hubspot-token"), HUBSPOT);
    write(&vault.join("tricky"), TRICKY);
    write(&vault.join("pem"), PEM);
    store
}

const AZURE_STORED: &[&str] = &[HUBSPOT, TRICKY, PEM];

#[test]
fn secret_scripts_azure_keyvault_resolves_each_key() {
    let store = azure_store();
    let keys = [
        "babynames-kv/hubspot-token",
        "babynames-kv/tricky",
        "pem",
        "babynames-kv/missing",
        "other-kv/hubspot-token",
        "babynames-kv/hubspot-token/extra",
    ];
    let out =
        run_script("azure-keyvault.sh", store.path(), &[("AZURE_KEYVAULT_NAME", "babynames-kv")], &request(&keys));
    let resp = check(
        &out,
        &[
            ("babynames-kv/hubspot-token", Some(HUBSPOT)),
            ("babynames-kv/tricky", Some(TRICKY)),
            ("pem", Some(PEM)),
            ("babynames-kv/missing", None),
            ("other-kv/hubspot-token", None),
            ("babynames-kv/hubspot-token/extra", None),
        ],
        AZURE_STORED,
    );
    assert!(error(&resp, "babynames-kv/missing").contains("SecretNotFound"), "{resp}");
    assert!(error(&resp, "other-kv/hubspot-token").contains("The Vault may not exist"), "{resp}");
}

#[test]
fn secret_scripts_azure_keyvault_needs_a_vault_name() {
    let store = azure_store();
    let keys = ["hubspot-token", "babynames-kv/hubspot-token"];
    let out = run_script("azure-keyvault.sh", store.path(), &[], &request(&keys));
    let resp = check(&out, &[("hubspot-token", None), ("babynames-kv/hubspot-token", Some(HUBSPOT))], AZURE_STORED);
    assert!(error(&resp, "hubspot-token").contains("AZURE_KEYVAULT_NAME"), "{resp}");
}

fn gcloud_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("temp dir");
    let project = store.path().join("gcloud/babynames-prod");
    // As stored with `echo ... | gcloud secrets versions add --data-file=-`.
    write(&project.join("hubspot-token/1"), "tok-version-one-4b2e\n");
    write(&project.join("hubspot-token/2"), format!("{HUBSPOT}\n"));
    write(&project.join("tricky/1"), format!("{TRICKY}\n"));
    write(&project.join("pem-echoed/1"), format!("{PEM}\n"));
    // As stored with --data-file=key.pem: only one newline is taken off.
    write(&project.join("pem/1"), PEM);
    write(&project.join("no-newline/1"), "no-newline-value-77");
    write(&store.path().join("gcloud/other-project/hubspot-token/1"), "other-project-value-31");
    store
}

const GCLOUD_STORED: &[&str] =
    &["tok-version-one-4b2e", HUBSPOT, TRICKY, PEM, "no-newline-value-77", "other-project-value-31"];

#[test]
fn secret_scripts_gcloud_secrets_resolves_each_key() {
    let store = gcloud_store();
    let keys = [
        "hubspot-token",
        "hubspot-token@1",
        "tricky@latest",
        "pem-echoed",
        "pem",
        "no-newline",
        "missing",
        "hubspot-token@9",
        "tricky@first",
    ];
    // The fake gcloud, like the real one, does not read GOOGLE_CLOUD_PROJECT:
    // the script has to pass it as --project.
    let out =
        run_script("gcloud-secrets.sh", store.path(), &[("GOOGLE_CLOUD_PROJECT", "babynames-prod")], &request(&keys));
    let resp = check(
        &out,
        &[
            ("hubspot-token", Some(HUBSPOT)),
            ("hubspot-token@1", Some("tok-version-one-4b2e")),
            ("tricky@latest", Some(TRICKY)),
            ("pem-echoed", Some(PEM)),
            ("pem", Some(PEM.strip_suffix('\n').expect("PEM ends in a newline"))),
            ("no-newline", Some("no-newline-value-77")),
            ("missing", None),
            ("hubspot-token@9", None),
            ("tricky@first", None),
        ],
        GCLOUD_STORED,
    );
    assert!(error(&resp, "missing").contains("NOT_FOUND"), "{resp}");
    assert!(error(&resp, "hubspot-token@9").contains("versions/9"), "{resp}");
}

#[test]
fn secret_scripts_gcloud_secrets_project() {
    let store = gcloud_store();
    let keys = ["hubspot-token"];

    // CLOUDSDK_CORE_PROJECT wins over GOOGLE_CLOUD_PROJECT.
    let env = [("CLOUDSDK_CORE_PROJECT", "other-project"), ("GOOGLE_CLOUD_PROJECT", "babynames-prod")];
    let out = run_script("gcloud-secrets.sh", store.path(), &env, &request(&keys));
    check(&out, &[("hubspot-token", Some("other-project-value-31"))], GCLOUD_STORED);

    // No project anywhere: the CLI's own error, per key.
    let out = run_script("gcloud-secrets.sh", store.path(), &[], &request(&keys));
    let resp = check(&out, &[("hubspot-token", None)], GCLOUD_STORED);
    assert!(error(&resp, "hubspot-token").contains("[project]"), "{resp}");
}

/// An environment under which every script could answer, so that a failure
/// can only come from the request.
const ALL_ENV: &[(&str, &str)] = &[
    ("VAULT_ADDR", "http://127.0.0.1:8200"),
    ("VAULT_TOKEN", VAULT_TOKEN),
    ("AZURE_KEYVAULT_NAME", "babynames-kv"),
    ("CLOUDSDK_CORE_PROJECT", "babynames-prod"),
];

const SCRIPTS: &[&str] = &["vault-kv.sh", "azure-keyvault.sh", "gcloud-secrets.sh"];

/// Every malformed request makes `script` exit nonzero, say why on stderr
/// and print nothing on stdout.
fn rejects_malformed_requests(script: &str) {
    let store = tempfile::tempdir().expect("temp dir");
    let bad: &[&[u8]] = &[
        b"",
        b"not json",
        b"{\"version\":\"1.0\",\"secrets\":[\"k\"]",
        b"{\"version\":\"1.0\",\"secrets\":\"k\"}",
        b"{\"version\":\"1.0\",\"secrets\":[1]}",
        b"{\"version\":\"2.0\",\"secrets\":[\"k\"]}",
        b"{\"secrets\":[\"k\"]}",
        b"[\"k\"]",
        b"{\"version\":\"1.0\",\"secrets\":[\"a\"]} {\"version\":\"1.0\",\"secrets\":[\"b\"]}",
    ];
    for input in bad {
        let out = run_script(script, store.path(), ALL_ENV, input);
        let shown = String::from_utf8_lossy(input);
        assert!(!out.status.success(), "{script} accepted {shown:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(out.stdout.is_empty(), "{script} answered {shown:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(!out.stderr.is_empty(), "{script} failed on {shown:?} without saying why");
    }
}

#[test]
fn secret_scripts_vault_kv_rejects_malformed_requests() {
    rejects_malformed_requests("vault-kv.sh");
}

#[test]
fn secret_scripts_azure_keyvault_rejects_malformed_requests() {
    rejects_malformed_requests("azure-keyvault.sh");
}

#[test]
fn secret_scripts_gcloud_secrets_rejects_malformed_requests() {
    rejects_malformed_requests("gcloud-secrets.sh");
}

#[test]
fn secret_scripts_empty_request() {
    let store = tempfile::tempdir().expect("temp dir");
    for script in SCRIPTS {
        let out = run_script(script, store.path(), ALL_ENV, &request(&[]));
        let resp = check(&out, &[], &[]);
        assert_eq!(resp, json!({}), "{script}");
    }
}

/// FAKE_CLI_SLEEP delays each fake CLI (what the engine's exec timeout
/// tests rely on); the answer is the same.
#[test]
fn secret_scripts_fake_cli_sleep() {
    let store = vault_store();
    let env = [("VAULT_ADDR", "http://127.0.0.1:8200"), ("VAULT_TOKEN", VAULT_TOKEN), ("FAKE_CLI_SLEEP", "0.3")];
    let started = Instant::now();
    let out = run_script("vault-kv.sh", store.path(), &env, &request(&["babynames/prod#hubspot_token"]));
    assert!(started.elapsed() >= Duration::from_millis(300), "took {:?}", started.elapsed());
    check(&out, &[("babynames/prod#hubspot_token", Some(HUBSPOT))], VAULT_STORED);
}
