//! The deployment files (issue 16), checked offline so they cannot rot
//! silently: the Dockerfile against the workspace, compose.yaml against the
//! Compose specification's schema and by running its services' commands,
//! the Kubernetes manifests rendered by kustomize against the Kubernetes
//! schemas, the alert rules with promtool, and every metric the Grafana
//! dashboard and the rules query against what the engine really exports.
//!
//! Tools come from the registries: scripts/ensure-promtool (Debian's
//! prometheus package), scripts/ensure-deploy-validators (check-jsonschema,
//! which bundles the Compose schema, and kubernetes-validate, which bundles
//! the Kubernetes schemas, from PyPI); kustomize is `kubectl kustomize`.
//! scripts/check-image builds and runs the image itself (too slow for here).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

// --- tools --------------------------------------------------------------------

/// Runs `scripts/<name>` (which installs what is missing) and returns the
/// last line it printed.
fn ensure(name: &str) -> String {
    let o = Command::new(repo().join("scripts").join(name)).output().unwrap_or_else(|e| panic!("scripts/{name}: {e}"));
    assert!(o.status.success(), "scripts/{name} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    stdout(&o).lines().last().unwrap_or_else(|| panic!("scripts/{name} printed nothing")).trim().to_string()
}

/// The bin directory of the validators' virtualenv.
fn validators() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(ensure("ensure-deploy-validators")))
}

fn promtool() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| PathBuf::from(ensure("ensure-promtool")))
}

/// kubectl (its built-in kustomize renders deploy/kubernetes), installed
/// by scripts/ensure-kubectl where missing.
fn kubectl() -> Command {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    Command::new(BIN.get_or_init(|| PathBuf::from(ensure("ensure-kubectl"))))
}

fn cargo() -> Command {
    Command::new(option_env!("CARGO").unwrap_or("cargo"))
}

fn ok(what: &str, o: &Output) -> String {
    assert!(o.status.success(), "{what} failed ({}):\n{}\n{}", o.status, stdout(o), stderr(o));
    stdout(o)
}

/// Every YAML document of `path` (or of `text` when given) as JSON.
fn yaml_docs(path: &Path, text: Option<&str>) -> Vec<Value> {
    let mut c = Command::new(validators().join("python"));
    c.arg(repo().join("tests/fixtures/deploy/yaml2json.py"));
    let o = match text {
        None => c.arg(path).output().unwrap(),
        Some(t) => {
            let mut child =
                c.arg("-").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
    };
    let out = ok(&format!("yaml2json {}", path.display()), &o);
    match serde_json::from_str(&out).expect("yaml2json prints JSON") {
        Value::Array(docs) => docs,
        v => panic!("not a list of documents: {v}"),
    }
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; (status, body), or None when
/// nothing answers.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut s = rest;
        while let Some((size, r)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || r.len() < n {
                break;
            }
            out.push_str(&r[..n]);
            s = r[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    Some((status, body))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `engine health URL`, the image's HEALTHCHECK, exists (a clear failure
/// rather than a timeout when it does not).
fn assert_engine_health_exists() {
    let o = engine().args(["health", "--help"]).output().unwrap();
    assert!(o.status.success(), "`engine health` is missing (the Dockerfile's HEALTHCHECK needs it):\n{}", stderr(&o));
}

/// A child process killed (and reaped) when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- Dockerfile -----------------------------------------------------------------

/// (package, target, kinds, source path relative to the workspace root) of
/// every target cargo sees in the workspace at `root`.
fn workspace_targets(root: &Path) -> BTreeSet<(String, String, String, String)> {
    let o = cargo()
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(root)
        .output()
        .unwrap();
    let meta: Value = serde_json::from_str(&ok(&format!("cargo metadata in {}", root.display()), &o)).unwrap();
    let ws = meta["workspace_root"].as_str().unwrap().to_string();
    let mut out = BTreeSet::new();
    for p in meta["packages"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let src = t["src_path"].as_str().unwrap();
            let rel = src.strip_prefix(&ws).unwrap_or(src).trim_start_matches('/').to_string();
            out.insert((
                p["name"].as_str().unwrap().into(),
                t["name"].as_str().unwrap().into(),
                t["kind"].to_string(),
                rel,
            ));
        }
    }
    out
}

/// The Dockerfile builds its dependency layer from a skeleton that
/// deploy/docker/skeleton.sh derives from `cargo metadata`, never from a
/// list of crates: run that script here on the real workspace and check the
/// skeleton is the same workspace (every member, every target, stubs where
/// the sources are), and that the Dockerfile really uses it.
#[test]
fn dockerfile_skeleton_is_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let skel = dir.path().join("skeleton");
    let path =
        std::env::join_paths(
            Path::new(option_env!("CARGO").unwrap_or("cargo")).parent().into_iter().map(Path::to_path_buf).chain(
                std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default(),
            ),
        )
        .unwrap();
    let o = Command::new("sh")
        .arg("deploy/docker/skeleton.sh")
        .arg(&skel)
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .unwrap();
    ok("deploy/docker/skeleton.sh", &o);

    let real = workspace_targets(&repo());
    let stubbed = workspace_targets(&skel);
    let manifest = read("Cargo.toml");
    let members = manifest.lines().find(|l| l.starts_with("members")).expect("a members line");
    let members: BTreeSet<&str> = members.split('"').skip(1).step_by(2).collect();
    let packages: BTreeSet<&str> = real.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(packages, members, "cargo metadata and Cargo.toml's members disagree");
    assert_eq!(stubbed, real, "the Dockerfile's skeleton is not the workspace");
    for (_, _, kind, rel) in &stubbed {
        let stub = std::fs::read_to_string(skel.join(rel)).unwrap();
        let want = if kind.contains("lib") { "" } else { "fn main() {}\n" };
        assert_eq!(stub, want, "stub {rel} ({kind})");
    }
    assert_eq!(std::fs::read(skel.join("Cargo.lock")).unwrap(), std::fs::read(repo().join("Cargo.lock")).unwrap());

    let docker = read("Dockerfile");
    for needed in [
        "RUN sh deploy/docker/skeleton.sh /skeleton",
        "COPY --from=planner /skeleton/ ./",
        "RUN cargo build --release --locked -p engine",
        "COPY . .",
    ] {
        assert!(docker.contains(needed), "the Dockerfile lacks `{needed}`");
    }
    // A COPY of a workspace member by name would be a list to keep in step.
    for m in &members {
        assert!(!docker.contains(&format!("COPY {m}/")), "the Dockerfile copies member `{m}` by name");
    }
}

/// Whether `rel` is excluded by .dockerignore (Docker's rules for the
/// patterns used there: a path, or a `*` glob, matching the path or one of
/// its parent directories; `!` re-includes).
fn dockerignored(patterns: &[String], rel: &str) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(p, &s[1..])),
            (Some(a), Some(b)) if a == b || *a == b'?' => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let mut excluded = false;
    for pat in patterns {
        let (neg, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat.as_str()),
        };
        let pat = pat.trim_start_matches("./").trim_end_matches('/');
        let mut prefix = String::new();
        let hit = rel.split('/').any(|part| {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            glob(pat.as_bytes(), prefix.as_bytes())
        });
        if hit {
            excluded = !neg;
        }
    }
    excluded
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    // The matcher itself, on the patterns' forms.
    assert!(dockerignored(&["target".into()], "target/release/engine"));
    assert!(dockerignored(&["deploy/grafana".into()], "deploy/grafana/engine.json"));
    assert!(!dockerignored(&["data".into()], "pipelines/data/x.csv"));
    assert!(!dockerignored(&["*.md".into(), "!README.md".into()], "README.md"));

    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into(), "deploy/docker/skeleton.sh".into()];
    for (_, _, _, rel) in workspace_targets(&repo()) {
        needed.push(rel);
    }
    for m in read("Cargo.toml").lines().find(|l| l.starts_with("members")).unwrap().split('"').skip(1).step_by(2) {
        needed.push(format!("{m}/Cargo.toml"));
    }
    // What the Dockerfile COPYs from the context, and what the crates embed.
    for line in read("Dockerfile").lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"COPY") && !words.iter().any(|w| w.starts_with("--from")) && words[1] != "." {
            assert!(repo().join(words[1]).exists(), "the Dockerfile copies {} which does not exist", words[1]);
            needed.push(words[1].trim_end_matches('/').to_string());
        }
    }
    needed.extend(
        ["server/console/index.html", "server/src/openapi.json", "pipelines/data/NationalNames.sample.csv"]
            .map(String::from),
    );
    for rel in needed {
        assert!(repo().join(&rel).exists(), "{rel} does not exist");
        assert!(!dockerignored(&patterns, &rel), ".dockerignore excludes {rel}, which the image build needs");
    }
    for gone in ["target", ".git", "data", "bench-data"] {
        assert!(dockerignored(&patterns, gone), ".dockerignore sends {gone} to the builder");
    }
}

/// Parses `MAJOR.MINOR[.PATCH]`.
fn version(s: &str) -> (u32, u32, u32) {
    let mut it = s.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("not a version: {s}")));
    (it.next().unwrap(), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[test]
fn dockerfile_pins_its_bases_and_runs_a_non_root_engine_with_a_healthcheck() {
    let docker = read("Dockerfile");
    let manifest = read("Cargo.toml");
    let field = |name: &str| -> String {
        let l = manifest.lines().find(|l| l.starts_with(&format!("{name} = "))).unwrap_or_else(|| panic!("no {name}"));
        l.split('"').nth(1).unwrap().to_string()
    };
    let froms: Vec<&str> =
        docker.lines().filter(|l| l.starts_with("FROM ")).map(|l| l.split_whitespace().nth(1).unwrap()).collect();
    assert_eq!(froms.len(), 4, "{froms:?}");
    let rust = froms[0].strip_prefix("rust:").expect("the builder is the official rust image");
    let rust = rust.strip_suffix("-slim-bookworm").expect("the Debian release is pinned");
    assert_eq!(rust.split('.').count(), 3, "pin rust to X.Y.Z: {rust}");
    assert!(version(rust) >= version(&field("rust-version")), "rust {rust} is older than the workspace's rust-version");
    let runtime = froms[3];
    let debian = runtime.strip_prefix("debian:").and_then(|t| t.strip_suffix("-slim")).expect("debian:<12.N>-slim");
    assert!(debian.starts_with("12.") && version(debian).1 > 0, "pin Debian's point release: {runtime}");
    assert!(docker.contains(&format!("org.opencontainers.image.base.name=\"docker.io/library/{runtime}\"")));
    assert!(docker.contains(&format!("ARG VERSION={}", field("version"))), "the version label is not the workspace's");
    for label in ["title", "description", "version", "revision", "created", "licenses"] {
        assert!(docker.contains(&format!("org.opencontainers.image.{label}=")), "no {label} label");
    }
    assert!(docker.contains(&format!("org.opencontainers.image.licenses=\"{}\"", field("license"))));
    assert!(docker.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"), "the binary is not stripped");
    assert!(docker.contains("ca-certificates"), "no CA certificates");
    assert!(docker.contains("USER 10001:10001"), "not a numeric non-root user");
    assert!(docker.contains("chown -R engine:engine /app/data") && docker.contains("VOLUME [\"/app/data\"]"));
    // A pipeline without a checkpoint `dir` keeps them beside its file.
    assert!(
        docker.contains("RUN ln -s /app/data/checkpoints pipelines/checkpoints"),
        "default checkpoints not in /app/data"
    );
    assert!(
        docker.contains("CMD [\"engine\", \"health\", \"http://127.0.0.1:9464/health/ready\"]"),
        "the HEALTHCHECK is not `engine health` on the metrics port"
    );
    assert!(docker.contains("CMD [\"run\", \"pipelines/babynames.toml\", \"--metrics-addr\", \"0.0.0.0:9464\"]"));
}

// --- compose.yaml -------------------------------------------------------------------

#[test]
fn compose_file_follows_the_compose_spec() {
    let schema = |file: &Path| {
        Command::new(validators().join("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(file)
            .output()
            .unwrap()
    };
    ok("check-jsonschema compose.yaml", &schema(&repo().join("compose.yaml")));
    // The validator is live: a misspelt key is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("compose.yaml");
    std::fs::write(&bad, read("compose.yaml").replace("depends_on:\n      migrate:", "depend_on:\n      migrate:"))
        .unwrap();
    let o = schema(&bad);
    assert!(!o.status.success(), "a misspelt key passed:\n{}", stdout(&o));

    let doc = &yaml_docs(&repo().join("compose.yaml"), None)[0];
    let services = doc["services"].as_object().unwrap();
    for s in ["mariadb", "kaggle-sim", "hubspot-sim", "migrate", "engine", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "no service {s}");
    }
    let volumes: BTreeSet<&str> = doc["volumes"].as_object().unwrap().keys().map(String::as_str).collect();
    for (name, s) in services {
        if let Some(deps) = s["depends_on"].as_object() {
            for d in deps.keys() {
                assert!(services.contains_key(d), "{name} depends on unknown {d}");
            }
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name} mounts {source}, which does not exist");
            } else {
                assert!(volumes.contains(source), "{name} uses undeclared volume {source}");
            }
        }
        if let Some(image) = s["image"].as_str()
            && image != "engine:local"
        {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
            assert!(tag.chars().any(|c| c.is_ascii_digit()), "{name}: pin {image}");
        }
    }
    let dep = |s: &str, on: &str| services[s]["depends_on"][on]["condition"].as_str().unwrap_or("").to_string();
    assert_eq!(dep("engine", "migrate"), "service_completed_successfully");
    assert_eq!(dep("migrate", "mariadb"), "service_healthy");
    assert!(services["engine"]["volumes"].as_array().unwrap().iter().any(|v| v == "engine-data:/app/data"));
    assert!(services["mariadb"]["volumes"].as_array().unwrap().iter().any(|v| v == "mariadb-data:/var/lib/mysql"));
    // Prometheus scrapes the engine service's listen port, and loads the rules.
    let prom = read("deploy/prometheus/prometheus.yml");
    let listen =
        services["engine"]["command"].as_array().unwrap().iter().skip_while(|a| *a != "--listen").nth(1).unwrap();
    let port = listen.as_str().unwrap().rsplit(':').next().unwrap();
    assert!(prom.contains(&format!("\"engine:{port}\"")), "Prometheus does not scrape engine:{port}");
    assert!(prom.contains("/etc/prometheus/alerts.yml"));
    // Grafana loads the dashboard from where compose mounts it.
    let provider = read("deploy/grafana/provisioning/dashboards/engine.yml");
    let mounted = services["grafana"]["volumes"].as_array().unwrap();
    assert!(mounted.iter().any(|v| v == "./deploy/grafana/engine.json:/var/lib/grafana/dashboards/engine.json:ro"));
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(read("deploy/grafana/provisioning/datasources/prometheus.yml").contains("uid: prometheus"));
}

/// compose.yaml's own commands, run here as compose would run them (one
/// process per service, hosts and ports mapped to 127.0.0.1, the database a
/// MariaDB database of the test's own): the simulators and their
/// healthchecks, the migrations, then `engine serve` and its healthcheck,
/// and a run of the daily job started through the API, end to end into
/// MariaDB and the HubSpot simulator.
#[test]
fn compose_services_run_the_daily_job_end_to_end() {
    assert_engine_health_exists();
    let doc = &yaml_docs(&repo().join("compose.yaml"), None)[0];
    let services = doc["services"].as_object().unwrap();
    let state = tempfile::tempdir().unwrap();
    let db = crate::sql_sink::TestDb::new("compose");
    let ports: BTreeMap<&str, u16> =
        [("8090", free_port()), ("8089", free_port()), ("8080", free_port())].into_iter().collect();
    let map = |s: &str| -> String {
        let mut s = s
            .replace("http://kaggle-sim:8090", &format!("http://127.0.0.1:{}", ports["8090"]))
            .replace("http://hubspot-sim:8089", &format!("http://127.0.0.1:{}", ports["8089"]))
            .replace("0.0.0.0:8080", &format!("127.0.0.1:{}", ports["8080"]))
            .replace("data/serve", state.path().join("serve").to_str().unwrap());
        for (from, to) in &ports {
            s = s.replace(&format!("127.0.0.1:{from}/"), &format!("127.0.0.1:{to}/"));
        }
        if s.starts_with("mysql://") {
            s = db.url();
        }
        s
    };
    // A service's command (ports and hosts mapped) and environment.
    let command = |name: &str| -> (Vec<String>, Vec<(String, String)>) {
        let s = &services[name];
        assert_eq!(s["image"], "engine:local", "{name} runs the engine image");
        let mut args: Vec<String> = Vec::new();
        let raw: Vec<&str> = s["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let mut i = 0;
        while i < raw.len() {
            match raw[i] {
                "--host" => {
                    args.extend(["--host".into(), "127.0.0.1".into()]);
                    i += 1;
                }
                "--port" => {
                    args.extend(["--port".into(), ports[raw[i + 1]].to_string()]);
                    i += 1;
                }
                a => args.push(map(a)),
            }
            i += 1;
        }
        let mut env: Vec<(String, String)> = s["environment"]
            .as_object()
            .map(|e| e.iter().map(|(k, v)| (k.clone(), map(v.as_str().unwrap()))).collect())
            .unwrap_or_default();
        for (k, v) in env.iter_mut() {
            // `${VAR:-default}`: compose's interpolation, with VAR unset.
            if let Some(d) = v.strip_prefix(&format!("${{{k}:-")).and_then(|r| r.strip_suffix('}')) {
                *v = d.to_string();
            }
        }
        // What the volume holds in the container goes to the test's folder.
        for (k, sub) in [("CHECKPOINT_DIR", "checkpoints"), ("STAGING_URL", "staging"), ("OUTPUT_DIR", "out")] {
            env.push((k.into(), state.path().join(sub).display().to_string()));
        }
        (args, env)
    };
    let start = |name: &str| -> Bg {
        let (args, env) = command(name);
        let log = std::fs::File::create(state.path().join(format!("{name}.log"))).unwrap();
        Bg(engine().args(&args).envs(env).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap())
    };
    let healthy = |name: &str| -> bool {
        let test: Vec<String> = services[name]["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| map(a.as_str().unwrap()))
            .collect();
        assert_eq!(&test[..3], ["CMD", "engine", "health"], "{name}'s healthcheck");
        engine().args(&test[2..]).output().unwrap().status.success()
    };
    let log = |name: &str| std::fs::read_to_string(state.path().join(format!("{name}.log"))).unwrap_or_default();

    let _kaggle = start("kaggle-sim");
    let _hubspot = start("hubspot-sim");
    wait_for("the simulators' healthchecks", Duration::from_secs(20), || {
        healthy("kaggle-sim") && healthy("hubspot-sim")
    });

    let (args, env) = command("migrate");
    let o = engine().args(&args).envs(env).output().unwrap();
    ok("the migrate service", &o);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 0);

    assert!(!healthy("engine"), "healthy before it started");
    let engine_svc = start("engine");
    wait_for("the engine's healthcheck", Duration::from_secs(20), || healthy("engine"));

    let port = ports["8080"];
    let token = command("engine").1.into_iter().find(|(k, _)| k == "ENGINE_API_TOKEN").unwrap().1;
    let (status, body) = http(port, "POST", "/api/pipelines/babynames-kaggle/runs", Some(&token)).unwrap();
    assert_eq!(status, 202, "{body}\n{}", log("engine"));
    let mut runs = Value::Null;
    wait_for("the run to end", Duration::from_secs(90), || {
        runs = http(port, "GET", "/api/runs?pipeline=babynames-kaggle", None)
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null);
        runs["runs"][0]["outcome"].as_str().is_some_and(|o| !matches!(o, "starting" | "running"))
    });
    assert_eq!(runs["runs"][0]["outcome"], "completed", "{runs:#}\n{}", log("engine"));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 3004);
    let (_, contacts) = http(ports["8089"], "GET", "/_sim/contacts", None).unwrap();
    let contacts: Value = serde_json::from_str(&contacts).unwrap();
    assert_eq!(contacts.as_array().map(Vec::len), Some(3004), "HubSpot contacts");
    // What Prometheus scrapes.
    let (status, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200, "engine serve has no /metrics for Prometheus: {metrics}");
    assert!(metrics.contains("engine_runs_total{"), "{metrics}");
    drop(engine_svc);
}

// --- Kubernetes -----------------------------------------------------------------------

const KUSTOMIZATIONS: [&str; 5] = ["base", "cronjob", "serve", "overlays/example", "sync-workers"];
/// The oldest Kubernetes the manifests are for (CronJob `timeZone` is GA
/// since 1.27), and the newest whose schemas kubernetes-validate bundles.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];

fn kustomize(dir: &str) -> String {
    let o = kubectl().arg("kustomize").arg(repo().join("deploy/kubernetes").join(dir)).output().unwrap();
    ok(&format!("kubectl kustomize deploy/kubernetes/{dir}"), &o)
}

fn kubernetes_validate(file: &Path, version: &str) -> Output {
    Command::new(validators().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_render_and_match_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = BTreeMap::new();
    for k in KUSTOMIZATIONS {
        let text = kustomize(k);
        let file = dir.path().join(format!("{}.yaml", k.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        for v in KUBERNETES {
            ok(&format!("kubernetes-validate {k} ({v})"), &kubernetes_validate(&file, v));
        }
        rendered.insert(k, yaml_docs(&file, None));
    }
    let cron = kustomize("cronjob");
    // The validator is live: a misspelt field and a wrong type are refused.
    for (from, to) in [
        ("startingDeadlineSeconds:", "startingDeadlineSecond:"),
        ("startingDeadlineSeconds: 3600", "startingDeadlineSeconds: soon"),
    ] {
        assert!(cron.contains(from));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, cron.replace(from, to)).unwrap();
        let o = kubernetes_validate(&bad, KUBERNETES[0]);
        assert!(!o.status.success(), "`{to}` passed:\n{}{}", stdout(&o), stderr(&o));
    }

    let find =
        |k: &str, kind: &str| -> Vec<Value> { rendered[k].iter().filter(|d| d["kind"] == kind).cloned().collect() };
    let docker = read("Dockerfile");
    let pipeline_keys: BTreeSet<String> = read("deploy/kubernetes/base/pipelines/babynames-kaggle.toml")
        .split("SECRET[k8s.")
        .skip(1)
        .map(|s| s.split(']').next().unwrap().to_string())
        .collect();
    assert_eq!(pipeline_keys.len(), 3, "{pipeline_keys:?}");
    for k in ["cronjob", "overlays/example"] {
        let jobs = find(k, "CronJob");
        assert_eq!(jobs.len(), 1, "{k}");
        let cj = &jobs[0]["spec"];
        assert_eq!(cj["concurrencyPolicy"], "Forbid");
        assert!(cj["startingDeadlineSeconds"].as_u64().is_some_and(|s| s > 0));
        let pod = &cj["jobTemplate"]["spec"]["template"]["spec"];
        check_pod(k, pod, &find(k, "PersistentVolumeClaim"), &find(k, "ConfigMap"), &docker);
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[..2], ["run", "pipelines/k8s/babynames-kaggle.toml"], "{k}");
        assert!(args.windows(2).any(|w| w == ["--metrics-addr", "0.0.0.0:9464"]), "{k}: {args:?}");
    }
    // The overlay makes the Secret with every key the pipeline reads.
    let secrets = find("overlays/example", "Secret");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["metadata"]["name"], "engine-secrets");
    let data: BTreeSet<String> = secrets[0]["data"].as_object().unwrap().keys().cloned().collect();
    assert!(pipeline_keys.is_subset(&data), "{pipeline_keys:?} not all in {data:?}");
    assert!(find("overlays/example", "CronJob")[0]["metadata"]["namespace"] == "etl");

    let deployments = find("serve", "Deployment");
    assert_eq!(deployments.len(), 1);
    let pod = &deployments[0]["spec"]["template"]["spec"];
    check_pod("serve", pod, &find("serve", "PersistentVolumeClaim"), &find("serve", "ConfigMap"), &docker);
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "serve");
    let listen = c["args"].as_array().unwrap().iter().skip_while(|a| *a != "--listen").nth(1).unwrap();
    assert_eq!(listen, "0.0.0.0:8080");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/api/health", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(server_routes().contains("/api/health"), "engine serve has no /api/health");
    let services = find("serve", "Service");
    assert_eq!(services[0]["spec"]["selector"], deployments[0]["spec"]["selector"]["matchLabels"]);

    check_sync_workers(&find("sync-workers", "Job"), &find("sync-workers", "PersistentVolumeClaim"), &docker);
}

/// The NATS JetStream scale-out's workers: an Indexed Job, worker i
/// consuming partition i (PARTITION from its completion index), as many
/// workers as the ingest pipeline's nats sink has partitions, each with its
/// own directory of the claim for its checkpoints, running a pipeline the
/// image ships.
fn check_sync_workers(jobs: &[Value], pvcs: &[Value], docker: &str) {
    let k = "sync-workers";
    assert_eq!(jobs.len(), 1, "{k}");
    let spec = &jobs[0]["spec"];
    assert_eq!(spec["completionMode"], "Indexed", "{k}");
    let completions = spec["completions"].as_u64().unwrap_or_else(|| panic!("{k}: no completions"));
    assert_eq!(spec["parallelism"].as_u64(), Some(completions), "{k}: every worker at once");
    // Two pods of one index would share its (locked) checkpoint store.
    assert_eq!(spec["podReplacementPolicy"], "Failed", "{k}");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never", "{k}");
    let c = &pod["containers"][0];
    let env = |name: &str| -> &Value {
        let e = c["env"].as_array().unwrap().iter().find(|e| e["name"] == name);
        e.unwrap_or_else(|| panic!("{k}: no env {name}"))
    };
    assert_eq!(
        env("PARTITION")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']",
        "{k}"
    );
    assert!(env("NATS_URL")["value"].as_str().is_some_and(|u| u.starts_with("nats://")), "{k}");

    // The pipeline is the image's (the Dockerfile copies pipelines/).
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[..2], ["run", "pipelines/babynames-sync.toml"], "{k}");
    assert!(docker.contains("COPY pipelines/ pipelines/"), "the image does not ship pipelines/");
    let sync = std::fs::read_to_string(repo().join(args[1]))
        .unwrap_or_else(|e| panic!("{k} runs {}, which is not in the repository: {e}", args[1]));
    assert!(sync.contains("${PARTITION"), "{}: its nats source does not read PARTITION", args[1]);
    // As many workers as the ingest run publishes partitions.
    let ingest_path = "pipelines/babynames-ingest-queue.toml";
    let ingest: toml::Table = read(ingest_path).parse().unwrap();
    let partitions: Vec<u64> = ingest["sinks"]
        .as_table()
        .unwrap()
        .values()
        .filter(|s| s["kind"].as_str() == Some("nats"))
        .map(|s| {
            match s.get("partitions").unwrap_or_else(|| panic!("{ingest_path}: its nats sink has no partitions")) {
                toml::Value::Integer(n) => *n as u64,
                // "${PARTITIONS:-3}": its default.
                toml::Value::String(t) => t
                    .split(":-")
                    .nth(1)
                    .and_then(|d| d.trim_end_matches('}').parse().ok())
                    .unwrap_or_else(|| panic!("{ingest_path}: partitions = {t:?} has no default")),
                v => panic!("{ingest_path}: partitions = {v}"),
            }
        })
        .collect();
    assert_eq!(partitions, [completions], "{k}: completions and the partitions of {ingest_path}'s nats sink");

    // /app/data: the worker's own directory of a rendered claim.
    let m = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/app/data");
    let m = m.unwrap_or_else(|| panic!("{k}: nothing mounted at /app/data"));
    assert!(m["subPathExpr"].as_str().is_some_and(|p| p.contains("$(PARTITION)")), "{k}: {m}");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
    let claim = &volume["persistentVolumeClaim"]["claimName"];
    assert!(pvcs.iter().any(|p| p["metadata"]["name"] == *claim), "{k}: claim {claim} is not rendered");
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{k}");
    assert!(docker.contains(&format!("USER {}:{}", sc["runAsUser"], sc["runAsGroup"])), "{k}: not the image's user");
}

/// The routes `engine serve` answers (its OpenAPI document).
fn server_routes() -> String {
    read("server/src/openapi.json")
}

/// What both workloads need: the volume for data/ from a PVC that is
/// rendered, the pipeline from the ConfigMap, the Secret where the
/// pipeline's `directory` backend reads, the image's user, and resources
/// sized for a full mirror run (about 1.1 GiB at its peak).
fn check_pod(k: &str, pod: &Value, pvcs: &[Value], configmaps: &[Value], docker: &str) {
    let volumes = pod["volumes"].as_array().unwrap();
    let volume =
        |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{k}: no volume {name}"));
    let c = &pod["containers"][0];
    let mount = |path: &str| -> String {
        let m = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == path);
        m.unwrap_or_else(|| panic!("{k}: nothing mounted at {path}"))["name"].as_str().unwrap().to_string()
    };
    let claim = volume(&mount("/app/data"))["persistentVolumeClaim"]["claimName"].clone();
    assert!(pvcs.iter().any(|p| p["metadata"]["name"] == claim), "{k}: claim {claim} is not rendered");
    let cm = volume(&mount("/app/pipelines/k8s"))["configMap"]["name"].clone();
    let cm =
        configmaps.iter().find(|m| m["metadata"]["name"] == cm).unwrap_or_else(|| panic!("{k}: no ConfigMap {cm}"));
    assert_eq!(
        cm["data"]["babynames-kaggle.toml"].as_str().unwrap(),
        read("deploy/kubernetes/base/pipelines/babynames-kaggle.toml")
    );
    let backend = read("deploy/kubernetes/base/pipelines/babynames-kaggle.toml");
    assert!(backend.contains("path = \"${ENGINE_SECRETS_DIR:-/run/secrets/engine}\""));
    assert_eq!(volume(&mount("/run/secrets/engine"))["secret"]["secretName"], "engine-secrets", "{k}");
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{k}");
    assert!(docker.contains(&format!("USER {}:{}", sc["runAsUser"], sc["runAsGroup"])), "{k}: not the image's user");
    let mib = |q: &Value| -> u64 {
        let s = q.as_str().unwrap();
        if let Some(n) = s.strip_suffix("Gi") {
            (n.parse::<f64>().unwrap() * 1024.0) as u64
        } else {
            s.strip_suffix("Mi").unwrap_or_else(|| panic!("{k}: memory {s} in Mi or Gi")).parse().unwrap()
        }
    };
    let r = &c["resources"];
    let (request, limit) = (mib(&r["requests"]["memory"]), mib(&r["limits"]["memory"]));
    assert!(limit >= 1200 && request <= limit && request >= 150, "{k}: memory {request} Mi / {limit} Mi");
    assert!(r["requests"]["cpu"].is_string() && r["limits"]["cpu"].is_string(), "{k}: cpu");
}

/// The Kubernetes copy of the daily job must stay the job: it may differ
/// from pipelines/babynames-kaggle.toml only in where its credentials come
/// from (the `[secrets.k8s]` backend and values naming SECRET[k8s.…]).
#[test]
fn kubernetes_pipeline_is_the_daily_job_with_mounted_secrets() {
    let bundled: toml::Table = read("pipelines/babynames-kaggle.toml").parse().unwrap();
    let k8s: toml::Table = read("deploy/kubernetes/base/pipelines/babynames-kaggle.toml").parse().unwrap();
    assert_eq!(k8s["secrets"]["k8s"]["kind"].as_str(), Some("directory"));
    let mut secret_values = 0;
    fn same(a: Option<&toml::Value>, b: &toml::Value, at: &str, n: &mut usize) {
        match (a, b) {
            (_, toml::Value::String(s)) if s.contains("SECRET[k8s.") => *n += 1,
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => {
                for (k, v) in b {
                    same(a.get(k), v, &format!("{at}.{k}"), n);
                }
                for k in a.keys() {
                    assert!(b.contains_key(k), "{at}.{k} is missing in the Kubernetes pipeline");
                }
            }
            (a, b) => assert_eq!(a, Some(b), "{at} differs"),
        }
    }
    let mut k8s_rest = k8s.clone();
    k8s_rest.remove("secrets");
    same(Some(&toml::Value::Table(bundled)), &toml::Value::Table(k8s_rest), "", &mut secret_values);
    assert_eq!(secret_values, 3, "the Kaggle token, the HubSpot token and the database password");
    // And the engine takes it: valid, and the same graph.
    let k8s_path = "deploy/kubernetes/base/pipelines/babynames-kaggle.toml";
    ok("engine validate", &run(&["validate", k8s_path], &[]));
    let graph = |p: &str| ok("engine graph", &run(&["graph", p, "--format", "mermaid"], &[]));
    assert_eq!(graph(k8s_path), graph("pipelines/babynames-kaggle.toml"));
    // The `directory` backend resolves the three keys from a mounted folder.
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in [("kaggle_api_token", "t1"), ("hubspot_token", "t2"), ("db_password", "p@ss/word")] {
        std::fs::write(dir.path().join(k), format!("{v}\n")).unwrap();
    }
    let o = run(&["validate", "--resolve", k8s_path], &[("ENGINE_SECRETS_DIR", dir.path().to_str().unwrap())]);
    let out = ok("engine validate --resolve", &o);
    let resolved = out.lines().filter(|l| l.trim_start().starts_with("ok ") && l.contains("SECRET[k8s.")).count();
    assert_eq!(resolved, 3, "{out}");
    assert!(out.contains("sinks.db.url: SECRET[k8s.db_password] (9 characters)"), "{out}");
}

// --- Prometheus and Grafana ------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let check = Command::new(promtool()).args(["check", "rules", "alerts.yml"]).current_dir(&dir).output().unwrap();
    let out = ok("promtool check rules", &check);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let test = Command::new(promtool()).args(["test", "rules", "alerts.test.yml"]).current_dir(&dir).output().unwrap();
    ok("promtool test rules", &test);
    // Every alert of the file has unit tests.
    let tests = read("deploy/prometheus/alerts.test.yml");
    for name in read("deploy/prometheus/alerts.yml").lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {name}")), "no unit test for {name}");
    }
    // The config compose gives Prometheus (its rule file where compose mounts it).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("alerts.yml"), tmp.path().join("alerts.yml")).unwrap();
    let cfg = read("deploy/prometheus/prometheus.yml").replace("/etc/prometheus/alerts.yml", "alerts.yml");
    std::fs::write(tmp.path().join("prometheus.yml"), cfg).unwrap();
    let o =
        Command::new(promtool()).args(["check", "config", "prometheus.yml"]).current_dir(tmp.path()).output().unwrap();
    ok("promtool check config", &o);
}

/// Every PromQL expression of the dashboard and the rules.
fn expressions() -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(at);
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push((format!("dashboard: {title}"), e.clone())),
                        _ => walk(v, title, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(&read("deploy/grafana/engine.json")).expect("engine.json is JSON"), "", &mut out);
    assert!(out.len() >= 30, "{} dashboard queries", out.len());
    let rules = &yaml_docs(&repo().join("deploy/prometheus/alerts.yml"), None)[0];
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((format!("alert: {}", r["alert"].as_str().unwrap()), r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// Grafana's variables, as it substitutes them before querying.
fn grafana_substitute(e: &str) -> String {
    e.replace("$__rate_interval", "1m").replace("$__range", "6h").replace("$instance", ".*").replace("$sql_sinks", "db")
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, keywords, label names (in `{…}`, `by (…)`, `on (…)`, …),
/// strings, durations or numbers.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = String::new();
    let mut chars = expr.chars().peekable();
    // Drop strings, `{…}` matchers and `[…]` ranges.
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                s.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                s.push(' ');
            }
            c => s.push(c),
        }
    }
    // Drop label lists of grouping and matching modifiers.
    let mut t = String::new();
    let words = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let mut rest = s.as_str();
    while let Some(i) = rest.find('(') {
        let before = &rest[..i];
        let word = before.trim_end().rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
        t.push_str(before);
        if words.contains(&word) {
            let close = rest[i..].find(')').map(|j| i + j + 1).unwrap_or(rest.len());
            t.push(' ');
            rest = &rest[close..];
        } else {
            t.push('(');
            rest = &rest[i + 1..];
        }
    }
    t.push_str(rest);
    // Keywords, and the aggregation operators (which may have their
    // `by (…)` between their name and their parenthesis).
    let keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let mut names = BTreeSet::new();
    let bytes = t.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &t[start..i];
            let after = t[i..].trim_start();
            let numeric = start > 0 && ((bytes[start - 1] as char).is_ascii_digit() || bytes[start - 1] == b'.');
            if !after.starts_with('(') && !keywords.contains(&word) && !numeric {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let n = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        n(
            r#"sum by (operator, port) (rate(engine_rows_out_total{port="out", instance=~"$x"}[5m])) / on (job) group_left(edge) x_y"#
        ),
        ["engine_rows_out_total", "x_y"]
    );
    assert_eq!(n("time() - engine_a > 26 * 3600 and on (pipeline) engine_b{schedule!=\"\"}"), ["engine_a", "engine_b"]);
    assert_eq!(n("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) > 1e3"), ["h_bucket"]);
    assert_eq!(n("a or b unless c offset 5m"), ["a", "b", "c"]);
    assert_eq!(n("max by (pipeline) (x > bool y) * 0 + 1"), ["x", "y"]);
    assert_eq!(n("sum without (le) (rate(z_sum[5m])) / count(w)"), ["w", "z_sum"]);
    assert!(n("vector(1)").is_empty());
}

/// Every expression is valid PromQL: promtool checks them as recording
/// rules (with Grafana's variables substituted).
#[test]
fn dashboard_queries_are_valid_promql() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/engine.json")).unwrap();
    assert_eq!(dash["uid"], "engine");
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
        }
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (at, e)) in expressions().iter().enumerate() {
        let e = grafana_substitute(e);
        assert!(!e.contains('$'), "{at}: a variable is left in {e}");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    let o = Command::new(promtool()).args(["check", "rules", "rules.yml"]).current_dir(dir.path()).output().unwrap();
    ok(&format!("promtool check rules (the dashboard's queries)\n{rules}"), &o);
    // The validation is live: an unbalanced parenthesis is refused.
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: sum(rate(a[1m])\n",
    )
    .unwrap();
    let o = Command::new(promtool()).args(["check", "rules", "bad.yml"]).current_dir(dir.path()).output().unwrap();
    assert!(!o.status.success(), "promtool took a broken expression");
}

// --- metric names ------------------------------------------------------------------------------

/// The names of the samples of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Scrapes 127.0.0.1:`port`/metrics every 50 ms while `child` runs; every
/// sample name seen, and the last exposition.
fn scrape_while_running(child: &mut Child, port: u16, mut during: impl FnMut()) -> (BTreeSet<String>, String) {
    let mut names = BTreeSet::new();
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not end");
        if let Some((200, body)) = http(port, "GET", "/metrics", None) {
            names.extend(exported(&body));
            last = body;
        }
        during();
        std::thread::sleep(Duration::from_millis(50));
    }
    (names, last)
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let mut got = BTreeMap::new();
        let mut rest = rest.strip_suffix('}')?;
        while let Some((k, r)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => v.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => v.push(c),
                }
            };
            got.insert(k.trim_start_matches(',').to_string(), v);
            rest = &r[end + 1..];
        }
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

/// Runs real pipelines with `--metrics-addr` and `engine serve`, scrapes
/// them, and checks that every metric the dashboard and the alert rules
/// query is exported under that name (`_sum`/`_count` and `quantile` of a
/// histogram as the exporter renders it: a query of `_bucket` would fail
/// here). Events that register their metric only when they happen are made
/// to happen: HubSpot answering 429 (a simulator with a smaller window than
/// the sink's pacing) and a SQL batch retried (MariaDB connections killed
/// mid-run).
#[test]
fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    assert_engine_health_exists();
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (at, e) in expressions() {
        for name in promql_metric_names(&grafana_substitute(&e)) {
            wanted.entry(name).or_default().insert(at.clone());
        }
    }
    assert!(wanted.len() >= 25, "{wanted:?}");
    for name in wanted.keys() {
        assert!(name.starts_with("engine_"), "{name} is not the engine's");
    }
    let mut names = BTreeSet::new();

    // 1. The default pipeline into SQLite, files and the HubSpot simulator
    //    (8 requests a second where the sink paces itself at 9.8: 429s);
    //    `engine health` while it runs and after.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg =
        simulators::hubspot::Config { window_requests: 8, window: Duration::from_millis(1000), ..Default::default() };
    let sim = rt.block_on(simulators::hubspot::serve(cfg, "127.0.0.1:0".parse().unwrap())).unwrap();
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = engine()
        .args(["run", "pipelines/babynames.toml", "--no-progress", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("OUTPUT_DIR", out.path())
        .env("DATABASE_URL", format!("sqlite://{}/babynames.db", out.path().display()))
        .env("CHECKPOINT_DIR", out.path().join("checkpoints"))
        .env("CHECKPOINT_INTERVAL", "200ms")
        .env("HUBSPOT_TOKEN", "sim-token")
        .env("HUBSPOT_BASE_URL", sim.base_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = |path: &str| engine().args(["health", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
    let mut healthy_while_running = false;
    let (seen, last) = scrape_while_running(&mut child, port, || {
        healthy_while_running |= health("/health/ready").status.success();
    });
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(healthy_while_running, "`engine health …/health/ready` never passed while the run went");
    let after = health("/health/ready");
    assert_eq!(after.status.code(), Some(1), "{}", stderr(&after));
    assert!(stderr(&after).contains("cannot reach"), "{}", stderr(&after));
    let used = sample(&last, "engine_hubspot_daily_quota_used_ratio", &[("operator", "crm")]);
    assert!(used.is_some_and(|u| u > 0.0 && u < 0.01), "{used:?} of 250,000 a day after about 40 requests");
    assert!(last.contains("engine_hubspot_rate_limited_total{"), "no 429 happened: {last}");
    names.extend(seen);

    // 2. 150,000 rows into MariaDB, checkpoints every 200 ms, its
    //    connections killed mid-run: a batch is retried.
    let db = crate::sql_sink::TestDb::new("metrics");
    let url = db.url();
    ok("engine migrate up", &run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]));
    let big = out.path().join("big.csv");
    write_big_csv(&big, 150_000);
    let out2 = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = engine()
        .args(["run", "pipelines/babynames.toml", "--no-progress", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("OUTPUT_DIR", out2.path())
        .env("DATABASE_URL", &url)
        .env("CHECKPOINT_DIR", out2.path().join("checkpoints"))
        .env("BABYNAMES_CSV", &big)
        .env("CHECKPOINT_INTERVAL", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kills = 0;
    // Three rounds: a connection killed while idle is replaced without a
    // failed statement, so one round alone may count no retry.
    let mut rounds = [10_000, 50_000, 90_000].into_iter().peekable();
    let (seen, last) = scrape_while_running(&mut child, port, || {
        if let Some(&at) = rounds.peek() {
            let n = db.scalar("SELECT COUNT(*) FROM baby_names");
            if n > at && n < 140_000 {
                rounds.next();
                // All but the one holding the table's lock (losing it stops
                // the run, as it must).
                let holder = db.scalar(&format!("SELECT COALESCE(IS_USED_LOCK('engine:{}.baby_names'), 0)", db.name));
                kills += db.kill_engine_connections_except(holder);
            }
        }
    });
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(kills > 0, "the run ended before a connection could be killed");
    assert!(last.contains("engine_sql_retries_total{operator=\"db\"}"), "no retry counted: {last}");
    let interval = sample(&last, "engine_checkpoint_interval_seconds", &[]);
    assert!(interval.is_some_and(|v| (v - 0.2).abs() < 1e-9), "{interval:?}\n{last}");
    assert!(sample(&last, "engine_checkpoints_total", &[]).is_some_and(|n| n >= 2.0), "{last}");
    names.extend(seen);

    // 3. `engine serve` over a history with a completed and a failed run.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"[pipeline]
name = "deploy-metrics"
[pipeline.schedule]
cron = "0 0 1 1 *"
[pipeline.checkpoint]
interval = "off"
[sources.names]
kind = "file"
path = "${{SRC:-pipelines/data/NationalNames.sample.csv}}"
{SCHEMA}
[sinks.out]
kind = "file"
inputs = ["names"]
path = "{}"
"#,
            dir.path().join("out.csv").display()
        ),
    );
    let st = state.to_str().unwrap();
    ok("a completed run", &run(&["run", &p, "--state", st], &[]));
    let failed = run(&["run", &p, "--state", st], &[("SRC", "/nonexistent.csv")]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let mut serve = engine()
        .args(["serve", &p, "--listen", "127.0.0.1:0", "--state", st])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let serve = Bg(serve);
    let port: u16 = line
        .split("http://")
        .nth(1)
        .and_then(|a| a.trim().trim_end_matches('/').rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no listening line: {line}"));
    let (status, text) = http(port, "GET", "/metrics", None).unwrap();
    drop(serve);
    assert_eq!(status, 200, "engine serve has no /metrics: {text}");
    let p = ("pipeline", "deploy-metrics");
    let runs = |outcome| sample(&text, "engine_runs_total", &[p, ("outcome", outcome)]);
    assert_eq!((runs("completed"), runs("failed")), (Some(1.0), Some(1.0)), "{text}");
    let success = sample(&text, "engine_run_last_success_timestamp_seconds", &[p]);
    let failure = sample(&text, "engine_run_last_failure_timestamp_seconds", &[p]);
    assert!(success.zip(failure).is_some_and(|(s, f)| s > 1.7e9 && f >= s), "{success:?} {failure:?}\n{text}");
    assert_eq!(sample(&text, "engine_run_running", &[p]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "engine_pipeline_info", &[p, ("schedule", "0 0 1 1 *")]), Some(1.0), "{text}");
    names.extend(exported(&text));

    let missing: Vec<String> = wanted
        .iter()
        .filter(|(n, _)| !names.contains(*n))
        .map(|(n, at)| format!("{n} (queried by {})", at.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(missing.is_empty(), "not exported by the engine:\n  {}\nexported: {names:?}", missing.join("\n  "));
}
