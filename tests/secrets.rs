//! Secrets end to end: `SECRET[...]` references resolved from AWS Secrets
//! Manager and SSM (moto with IAM auth on, so signatures and policies are
//! really checked), a directory and a command; errors that name the
//! reference and never the value; a canary run whose every output byte is
//! searched for the secrets; a HubSpot token rotated in the middle of a run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::kaggle::{Moto, runtime};
use crate::out_dir;
use crate::sql_sink::TestDb;
use crate::util::*;

const SAMPLE_UNIQUE: usize = 3004;

/// A seeded moto server; `reader` may read every secret, `nobody` none.
struct Aws {
    moto: Moto,
    reader: (String, String),
    nobody: (String, String),
}

impl Aws {
    fn start(secrets: &[(&str, &str)], parameters: &[(&str, &str)]) -> Aws {
        let moto = Moto::start();
        let spec = serde_json::json!({
            "secrets": secrets.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "parameters": parameters.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        let out = std::process::Command::new("python3")
            .arg(repo().join("tests/fixtures/moto-seed-secrets.py"))
            .arg(format!("http://127.0.0.1:{}", moto.port))
            .arg(spec.to_string())
            .output()
            .expect("python3 runs the moto seeding script");
        assert!(out.status.success(), "seeding moto: {}", String::from_utf8_lossy(&out.stderr));
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keys JSON");
        let pair = |u: &str| (keys[u][0].as_str().unwrap().to_string(), keys[u][1].as_str().unwrap().to_string());
        Aws { reader: pair("reader"), nobody: pair("nobody"), moto }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.moto.port)
    }

    /// The environment a user of `who`'s keys runs the engine with.
    fn env(&self, who: &(String, String)) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", who.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", who.1.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            // Never fall back to a real profile or instance metadata.
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
            ("AWS_CONFIG_FILE", "/nonexistent".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

fn run_env(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(args, &pairs)
}

/// HubSpot sinks whose `token`s are `refs`: the simplest place for a
/// reference `engine validate --resolve` then reports on.
fn references_pipeline(dir: &Path, backends: &str, refs: &[&str]) -> String {
    let mut s = format!(
        "{backends}\n[sources.names]\nkind = \"file\"\npath = \"pipelines/data/NationalNames.sample.csv\"\nformat = \"csv\"\n"
    );
    for (i, r) in refs.iter().enumerate() {
        s.push_str(&format!(
            "\n[sinks.s{i}]\nkind = \"hubspot\"\ninputs = [\"names\"]\nbase_url = \"http://127.0.0.1:9\"\ntoken = \"{r}\"\nid_property = \"k\"\nid = \"{{Name}}\"\nproperties = {{ firstname = \"{{Name}}\" }}\n"
        ));
    }
    write_pipeline(dir, "refs.toml", &s)
}

/// The `validate --resolve` line about sink `s<i>`.
fn line_of(out: &str, i: usize) -> String {
    out.lines()
        .find(|l| l.contains(&format!("sinks.s{i}.token")))
        .unwrap_or_else(|| panic!("no line for s{i}:\n{out}"))
        .to_string()
}

#[test]
fn secrets_aws_backends_resolve_signed_and_fail_by_name() {
    let token = "pat-na1-aws-test-0f9e8d7c";
    let password = "db-p@ss/w:rd-aws-1";
    let plain = "plain-aws-value-5566";
    let aws = Aws::start(
        &[("babynames/prod", &format!(r#"{{"hubspot_token":"{token}","port":3306}}"#)), ("plain", plain)],
        &[("/babynames/db_password", password)],
    );
    let dir = out_dir();
    let file = references_pipeline(
        dir.path(),
        "[secrets.aws]\nkind = \"aws_secrets_manager\"\n[secrets.params]\nkind = \"aws_ssm\"\n",
        &[
            "SECRET[aws.babynames/prod#hubspot_token]",
            "SECRET[aws.plain]",
            "SECRET[params./babynames/db_password]",
            "SECRET[aws.missing]",
            "SECRET[aws.babynames/prod#nope]",
            "SECRET[params./nope]",
        ],
    );
    let values = [token, password, plain];
    let clean = |o: &std::process::Output| {
        let all = format!("{}{}", stdout(o), stderr(o));
        for v in values {
            assert!(!all.contains(v), "a secret value was printed:\n{all}");
        }
        all
    };

    // The reader: plain and JSON-field secrets, a SecureString, and three
    // misses each named with AWS's own error code.
    let o = run_env(&["validate", "--resolve", &file], &aws.env(&aws.reader));
    let out = clean(&o);
    assert_eq!(o.status.code(), Some(2), "a reference failed, so exit 2:\n{out}");
    assert!(
        line_of(&out, 0)
            .starts_with("  ok      sinks.s0.token: SECRET[aws.babynames/prod#hubspot_token] (25 characters)"),
        "{out}"
    );
    assert!(
        line_of(&out, 1).contains(&format!("ok      sinks.s1.token: SECRET[aws.plain] ({} characters)", plain.len())),
        "{out}"
    );
    assert!(line_of(&out, 2).contains(&format!("({} characters)", password.len())), "{out}");
    assert!(line_of(&out, 3).contains("FAILED") && line_of(&out, 3).contains("ResourceNotFoundException"), "{out}");
    assert!(line_of(&out, 3).contains("SECRET[aws.missing] (secret backend `aws`, aws_secrets_manager)"), "{out}");
    assert!(line_of(&out, 4).contains("the secret has no field `nope` (its fields: hubspot_token, port)"), "{out}");
    assert!(line_of(&out, 5).contains("ParameterNotFound"), "{out}");

    // Access denied: a user without the policy.
    let o = run_env(&["validate", "--resolve", &file], &aws.env(&aws.nobody));
    let out = clean(&o);
    assert!(line_of(&out, 1).contains("AccessDenied"), "{out}");
    assert!(line_of(&out, 2).contains("AccessDenied"), "{out}");

    // A wrong secret key: moto recomputes the signature and refuses it.
    let mut env = aws.env(&aws.reader);
    env[1].1 = format!("x{}", aws.reader.1);
    let o = run_env(&["validate", "--resolve", &file], &env);
    assert!(line_of(&clean(&o), 1).contains("SignatureDoesNotMatch"));

    // The wrong region: the secrets live in us-east-1.
    let mut env = aws.env(&aws.reader);
    env[2].1 = "eu-west-1".into();
    let o = run_env(&["validate", "--resolve", &file], &env);
    let out = clean(&o);
    assert!(
        line_of(&out, 1).contains("ResourceNotFoundException") && line_of(&out, 1).contains("region eu-west-1"),
        "{out}"
    );

    // The wrong endpoint: nothing listens; retried, then named.
    let mut env = aws.env(&aws.reader);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    env[3].1 = format!("http://127.0.0.1:{closed}");
    let started = Instant::now();
    let o = run_env(&["validate", "--resolve", &file], &env);
    let out = clean(&o);
    assert!(
        line_of(&out, 1).contains(&format!("RequestFailed"))
            && line_of(&out, 1).contains(&format!("127.0.0.1:{closed}")),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // A run stops before anything starts, naming every failed reference.
    let o = run_env(&["run", &file], &aws.env(&aws.reader));
    let out = clean(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("3 secret references did not resolve"), "{out}");
    assert!(
        !dir.path().join("checkpoints").exists()
            || std::fs::read_dir(dir.path().join("checkpoints")).unwrap().count() == 0
    );
}

#[test]
fn secrets_config_errors_point_at_the_reference() {
    let dir = out_dir();
    let file = references_pipeline(
        dir.path(),
        "[secrets.vault]\nkind = \"exec\"\ncommand = [\"x\"]\n[secrets.bad]\nkind = \"keyvault\"\n[secrets.typo]\nkind = \"directory\"\npaht = \"/run/secrets\"\n",
        &["SECRET[vualt.crm#token]", "SECRET[vault.ok] and SECRET[vault.unclosed"],
    );
    let o = run(&["validate", &file], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("[secrets.bad]: unknown secret backend kind `keyvault`"), "{err}");
    assert!(err.contains("[secrets.typo]: unknown field `paht`"), "{err}");
    assert!(err.contains("SECRET[vualt.crm#token] names the secret backend `vualt`, which is not declared"), "{err}");
    assert!(err.contains("did you mean `vault`?"), "{err}");
    assert!(err.contains("has no closing `]`"), "{err}");
    // Each at the file:line:column of the string that holds it.
    assert!(err.contains("refs.toml:19:9"), "{err}");
}

#[test]
fn secrets_directory_exec_and_file_variables() {
    let dir = out_dir();
    let mounted = dir.path().join("run-secrets");
    std::fs::create_dir_all(mounted.join("crm")).unwrap();
    std::fs::write(mounted.join("crm/token"), "pat-na1-mounted-4242\n").unwrap();
    // Vault's CLI, faked with its real output shape, behind the shipped script.
    let store = dir.path().join("fake-store");
    std::fs::create_dir_all(store.join("vault/secret/babynames")).unwrap();
    std::fs::write(store.join("vault/secret/babynames/prod.json"), r#"{"hubspot_token":"pat-na1-vault-31337"}"#)
        .unwrap();
    let path = format!("{}:{}", repo().join("tests/fixtures/fake-clis").display(), std::env::var("PATH").unwrap());
    let backends = format!(
        "[secrets.mounted]\nkind = \"directory\"\npath = \"{}\"\n[secrets.vault]\nkind = \"exec\"\ncommand = [\"scripts/secrets/vault-kv.sh\"]\ntimeout = \"5s\"\n",
        mounted.display()
    );
    let file = references_pipeline(
        dir.path(),
        &backends,
        &[
            "SECRET[mounted.crm/token]",
            "SECRET[vault.babynames/prod#hubspot_token]",
            "SECRET[vault.babynames/prod#nope]",
            "SECRET[mounted.../etc/passwd]",
            "${TOKEN_FROM_FILE}",
        ],
    );
    let token_file = dir.path().join("token-file");
    std::fs::write(&token_file, "pat-na1-from-file-777\n").unwrap();
    let env: Vec<(&str, String)> = vec![
        ("PATH", path.clone()),
        ("FAKE_SECRETS_DIR", store.display().to_string()),
        ("VAULT_ADDR", "http://127.0.0.1:8200".into()),
        ("VAULT_TOKEN", "hvs.fake-vault-login-token".into()),
        ("TOKEN_FROM_FILE_FILE", token_file.display().to_string()),
    ];
    let o = run_env(&["validate", "--resolve", &file], &env);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    for v in ["pat-na1-mounted-4242", "pat-na1-vault-31337", "pat-na1-from-file-777", "hvs.fake-vault-login-token"] {
        assert!(!out.contains(v), "{v} printed:\n{out}");
    }
    assert!(line_of(&out, 0).contains("ok      sinks.s0.token: SECRET[mounted.crm/token] (20 characters)"), "{out}");
    assert!(
        line_of(&out, 1).contains("ok      sinks.s1.token: SECRET[vault.babynames/prod#hubspot_token] (19 characters)"),
        "{out}"
    );
    assert!(line_of(&out, 2).contains("FAILED") && line_of(&out, 2).contains("nope"), "{out}");
    assert!(line_of(&out, 3).contains("inside the directory"), "{out}");
    assert_eq!(o.status.code(), Some(2));

    // A command that fails, or hangs past its timeout, fails every key it
    // was asked for, naming the command.
    for (tweak, expect) in [("FAKE_CLI_SLEEP", "did not answer within 1s"), ("VAULT_ADDR", "exited")] {
        let slow = backends.replace("timeout = \"5s\"", "timeout = \"1s\"");
        let file = references_pipeline(dir.path(), &slow, &["SECRET[vault.babynames/prod#hubspot_token]"]);
        let mut env = env.clone();
        match tweak {
            "FAKE_CLI_SLEEP" => env.push(("FAKE_CLI_SLEEP", "5".into())),
            _ => env.push(("PATH", "/nonexistent".into())),
        }
        let o = run_env(&["validate", "--resolve", &file], &env);
        let out = format!("{}{}", stdout(&o), stderr(&o));
        assert!(line_of(&out, 0).contains("FAILED"), "{out}");
        if tweak == "FAKE_CLI_SLEEP" {
            assert!(out.contains(expect), "{out}");
        }
    }
}

/// Everything under `dir`, recursively, as bytes with their paths.
fn every_file(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            every_file(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

fn find(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The default pipeline with `backends` declared at its top.
fn default_pipeline_with(dir: &Path, backends: &str) -> String {
    let text = std::fs::read_to_string(repo().join("pipelines/babynames.toml")).unwrap();
    write_pipeline(dir, "babynames.toml", &format!("{backends}\n{text}"))
}

/// A free port for `--metrics-addr`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// Runs the engine with `args`, scraping /metrics until it exits.
fn run_scraping(args: &[&str], env: &[(&str, String)], metrics_port: u16) -> (std::process::Output, Vec<String>) {
    let mut c = engine();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("engine starts");
    let pid = child.id();
    let scrape = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(120) {
            if let Some(b) = http_get(metrics_port, "/metrics") {
                bodies.push(b);
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bodies
    });
    let out = child.wait_with_output().expect("engine output");
    (out, scrape.join().unwrap())
}

#[test]
fn secrets_canary_no_secret_in_any_output() {
    let rt = runtime();
    let token = "pat-na1-canary-7d1e0c55-token";
    let wrong_token = "pat-na1-canary-wrong-91ab";
    let password = "Can4ry:p@ss/w0rd#1";
    let wrong_password = "Can4ry-wrong-pw-2";
    let aws = Aws::start(
        &[
            ("babynames/prod", &format!(r#"{{"hubspot_token":"{token}"}}"#)),
            ("babynames/wrong", &format!(r#"{{"hubspot_token":"{wrong_token}"}}"#)),
        ],
        &[("/babynames/db_password", password), ("/babynames/wrong_password", wrong_password)],
    );
    let db = TestDb::new("canary");
    let user = format!("loader_{}", std::process::id());
    db.execute(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{}'", password.replace('\'', "''")));
    // Least privilege, as the README says: the loader may only read and
    // write rows; an administrator migrates.
    db.execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{}`.* TO '{user}'@'%'", db.name));
    let crm = rt
        .block_on(simulators::hubspot::serve(
            simulators::hubspot::Config { token: token.into(), ..Default::default() },
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("hubspot simulator");

    let dir = out_dir();
    let file = default_pipeline_with(
        dir.path(),
        "[secrets.aws]\nkind = \"aws_secrets_manager\"\n[secrets.params]\nkind = \"aws_ssm\"\n",
    );
    let env_for = |run: &str, pw: &str, tok: &str| {
        let mut env = aws.env(&aws.reader);
        env.extend([
            ("DATABASE_URL", format!("mysql://{user}:SECRET[params./babynames/{pw}]@127.0.0.1:3306/{}", db.name)),
            ("HUBSPOT_TOKEN", format!("SECRET[aws.babynames/{tok}#hubspot_token]")),
            ("HUBSPOT_BASE_URL", crm.base_url()),
            ("OUTPUT_DIR", dir.path().join(run).display().to_string()),
            ("CHECKPOINT_DIR", dir.path().join(run).join("checkpoints").display().to_string()),
            ("CHECKPOINT_INTERVAL", "200ms".into()),
        ]);
        env
    };
    let mut printed: Vec<(String, Vec<u8>)> = Vec::new();

    // An administrator migrates (creating the engine's own tables too), then
    // the loader runs, as loudly as it gets.
    let mut admin = env_for("ok", "db_password", "prod");
    admin.push(("DATABASE_URL", db.url()));
    let o = run_env(&["migrate", "up", &file], &admin);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
    printed.push(("migrate".into(), [o.stdout, o.stderr].concat()));
    let port = free_port();
    let args = [
        "run",
        &file,
        "--log-level",
        "trace",
        "--log-format",
        "json",
        "--metrics-addr",
        &port.to_string(),
        "--no-progress",
    ];
    let (o, metrics) = run_scraping(&args, &env_for("ok", "db_password", "prod"), port);
    let err = stderr(&o);
    assert!(o.status.success(), "the canary run failed: {}", err.lines().rev().take(20).collect::<Vec<_>>().join("\n"));
    assert!(
        err.lines().count() > 100 && err.contains(r#""level":"TRACE""#),
        "trace logs were written: {} lines, first: {}",
        err.lines().count(),
        err.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(metrics.iter().any(|m| m.contains("engine_")), "/metrics was scraped while running");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), SAMPLE_UNIQUE as i64);
    assert_eq!(crm.contacts().len(), SAMPLE_UNIQUE);
    printed.push(("run stdout".into(), o.stdout));
    printed.push(("run stderr".into(), o.stderr));
    printed.extend(metrics.into_iter().map(|m| ("/metrics".to_string(), m.into_bytes())));

    // Error paths: a wrong database password, then a wrong token.
    let (o, _) = run_scraping(&args, &env_for("bad-pw", "wrong_password", "prod"), port);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("Access denied for user"), "{}", stderr(&o));
    printed.push(("wrong password".into(), [o.stdout, o.stderr].concat()));
    let (o, _) = run_scraping(&args, &env_for("bad-token", "db_password", "wrong"), port);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("HubSpot refused the token from SECRET[aws.babynames/wrong#hubspot_token]"),
        "{}",
        stderr(&o)
    );
    printed.push(("wrong token".into(), [o.stdout, o.stderr].concat()));
    for cmd in [
        vec!["graph", &file],
        vec!["checkpoints", "list", &file],
        vec!["checkpoints", "show", &file],
        vec!["validate", "--resolve", &file],
    ] {
        let o = run_env(&cmd, &env_for("ok", "db_password", "prod"));
        printed.push((cmd.join(" "), [o.stdout, o.stderr].concat()));
    }

    // Every byte the engine wrote: outputs, rejects, outbox, staging, the
    // checkpoint store (sled files included).
    every_file(dir.path(), &mut printed);
    let encoded = password.replace(':', "%3A").replace('@', "%40").replace('/', "%2F").replace('#', "%23");
    let values = [token, wrong_token, password, wrong_password, encoded.as_str(), aws.reader.1.as_str()];
    let mut hits = Vec::new();
    for (what, bytes) in &printed {
        for v in values {
            if find(bytes, v) {
                hits.push(format!("{what} holds {v}"));
            }
        }
    }
    assert!(printed.len() > 10, "the run wrote files: {}", printed.len());
    assert_eq!(hits, Vec::<String>::new(), "secrets leaked");
    db.execute(&format!("DROP USER '{user}'@'%'"));
    crm.stop();
}

#[test]
fn secrets_rotated_token_mid_run_completes() {
    let rt = runtime();
    let (old, new) = ("pat-na1-before-rotation-1", "pat-na1-after-rotation-2");
    let crm = rt
        .block_on(simulators::hubspot::serve(
            simulators::hubspot::Config { token: old.into(), ..Default::default() },
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("hubspot simulator");
    let dir = out_dir();
    let mounted = dir.path().join("secrets");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::write(mounted.join("hubspot_token"), old).unwrap();
    let file = default_pipeline_with(
        dir.path(),
        &format!("[secrets.mounted]\nkind = \"directory\"\npath = \"{}\"\n", mounted.display()),
    );
    let mut c = engine();
    c.args(["run", &file, "--no-progress"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in [
        ("HUBSPOT_TOKEN", "SECRET[mounted.hubspot_token]".to_string()),
        ("HUBSPOT_BASE_URL", crm.base_url()),
        ("OUTPUT_DIR", dir.path().display().to_string()),
        ("DATABASE_URL", format!("sqlite://{}/babynames.db", dir.path().display())),
        ("CHECKPOINT_DIR", dir.path().join("checkpoints").display().to_string()),
    ] {
        c.env(k, v);
    }
    let child = c.spawn().expect("engine starts");
    // Rotate once a few batches went through with the old token: the vault
    // first, then the portal (from then on the old token gets 401).
    let t = Instant::now();
    while crm.stats().upsert_requests < 5 {
        assert!(t.elapsed() < Duration::from_secs(60), "the run never reached HubSpot");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(mounted.join("hubspot_token"), format!("{new}\n")).unwrap();
    crm.set_token(new);
    let before = crm.stats().upsert_requests;
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(before < 31, "the rotation happened mid-run ({before} upserts before it)");
    assert!(err.contains("the credential was rotated"), "{err}");
    assert!(err.contains("SECRET[mounted.hubspot_token]"), "{err}");
    assert!(!err.contains(old) && !err.contains(new) && !stdout(&o).contains(new), "{err}");
    assert_eq!(crm.contacts().len(), SAMPLE_UNIQUE);
    crm.stop();
}

#[test]
fn secrets_rotated_database_password_on_reconnect() {
    let db = TestDb::new("dbrot");
    let user = format!("rot_{}", std::process::id());
    let (old, new) = ("Rot4te-old-pw:1", "Rot4te-new-pw@2");
    db.execute(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{old}'"));
    db.execute(&format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name));
    let dir = out_dir();
    let mounted = dir.path().join("secrets");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::write(mounted.join("db_password"), old).unwrap();
    let csv = dir.path().join("names.csv");
    let rows = 400_000;
    write_big_csv(&csv, rows);
    let file = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"[secrets.mounted]
kind = "directory"
path = "{}"

[sources.names]
kind = "file"
path = "{}"
format = "csv"
header = true
{SCHEMA}

[sinks.db]
kind = "sql"
inputs = ["names"]
url = "mysql://{user}:SECRET[mounted.db_password]@127.0.0.1:3306/{}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
batch_rows = 500
"#,
            mounted.display(),
            csv.display(),
            db.name
        ),
    );
    let mut c = engine();
    c.args(["run", &file, "--no-progress"])
        .env("CHECKPOINT_DIR", dir.path().join("checkpoints"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("engine starts");
    let t = Instant::now();
    while db.scalar(&format!(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 'baby_names'",
        db.name
    )) == 0
        || db.scalar("SELECT COUNT(*) FROM baby_names") == 0
    {
        assert!(t.elapsed() < Duration::from_secs(60), "no row reached the database");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The vault first, then the server; then the engine's connections go
    // (all but the one holding the table's lock), so the pool must log in
    // again.
    std::fs::write(mounted.join("db_password"), format!("{new}\n")).unwrap();
    db.execute(&format!("ALTER USER '{user}'@'%' IDENTIFIED BY '{new}'"));
    let lock_holder = db.scalar(&format!("SELECT COALESCE(IS_USED_LOCK('engine:{}.baby_names'), 0)", db.name));
    let killed = db.kill_engine_connections_except(lock_holder);
    let loaded_before = db.scalar("SELECT COUNT(*) FROM baby_names");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(killed >= 1, "the engine had pool connections to kill");
    assert!((loaded_before as usize) < rows, "the rotation happened mid-run ({loaded_before} rows before it)");
    assert!(err.contains("the database refused the login (access denied)"), "{err}");
    assert!(err.contains("SECRET[mounted.db_password]"), "{err}");
    assert!(!err.contains(old) && !err.contains(new), "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), rows as i64);
    db.execute(&format!("DROP USER '{user}'@'%'"));
}
