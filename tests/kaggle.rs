//! The kaggle source against the Kaggle simulator over real HTTP on
//! 127.0.0.1: download, staging, extraction, reading; a broken transfer
//! resumed with Range; credentials; and incremental runs with `changes`
//! into MariaDB and the HubSpot simulator.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use simulators::kaggle::{Config, Handle, Version, serve};

use crate::sql_sink::TestDb;
use crate::util::*;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A simulator serving `kaggle/us-baby-names` version 1 with `csv` as
/// NationalNames.csv (and a second file, so `file` must choose).
pub(crate) fn start(rt: &tokio::runtime::Runtime, csv: Vec<u8>) -> Handle {
    let mut cfg = Config::default();
    cfg.datasets.insert(
        "kaggle/us-baby-names".into(),
        vec![Version {
            number: 1,
            last_modified: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            files: vec![("NationalNames.csv".into(), csv), ("StateNames.csv".into(), b"Id,Name\n1,x\n".to_vec())],
        }],
    );
    rt.block_on(serve(cfg, "127.0.0.1:0".parse().unwrap())).expect("simulator")
}

/// kaggle → validate → dedupe → CSV file, staging in `dir/staging`.
pub(crate) fn pipeline(dir: &Path, sim: &Handle, extra_sinks: &str) -> String {
    write_pipeline(
        dir,
        "k.toml",
        &format!(
            r#"
[pipeline]
name = "kaggle"
[pipeline.checkpoint]
dir = "{dir}/checkpoints"
[sources.names]
kind = "kaggle"
dataset = "kaggle/us-baby-names"
file = "NationalNames.csv"
staging = "{dir}/staging"
base_url = "{base}"
max_attempts = 4
{SCHEMA}
[transforms.valid]
kind = "validate"
inputs = ["names"]
# The rules of pipelines/babynames.toml, so the sample gives its known counts.
[transforms.valid.rules.Name]
required = true
min_len = 1
max_len = 64
[transforms.valid.rules.Year]
required = true
min = 1880
max = 2100
[transforms.valid.rules.Gender]
required = true
one_of = ["M", "F"]
[transforms.valid.rules.Count]
required = true
min = 1
[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]
[sinks.out]
kind = "file"
inputs = ["unique"]
path = "{dir}/out.csv"
[sinks.rejects]
kind = "file"
inputs = ["names.rejects", "valid.rejects"]
path = "{dir}/rejects.ndjson"
{extra_sinks}
"#,
            dir = dir.display(),
            base = sim.base_url()
        ),
    )
}

pub(crate) const CREDS: [(&str, &str); 2] = [("KAGGLE_USERNAME", "sim-user"), ("KAGGLE_KEY", "sim-key")];

#[test]
fn kaggle_dataset_is_downloaded_staged_extracted_and_read_exactly() {
    let rt = runtime();
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let sim = start(&rt, sample.clone());
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    // Same rows as reading the sample directly: 3,004 unique, 11 rejects.
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
    let rejects = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    assert_eq!(rejects.lines().count(), 11, "{rejects}");
    // Staged: the archive, the extracted file byte for byte, the manifest.
    let staged = dir.path().join("staging/kaggle/us-baby-names");
    assert_eq!(std::fs::read(staged.join("NationalNames.csv")).unwrap(), sample);
    let zip = std::fs::read(staged.join("NationalNames.csv.zip")).unwrap();
    assert!(zip.starts_with(b"PK\x03\x04"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staged.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["size"], zip.len() as u64);
    assert_eq!(manifest["csv_size"], sample.len() as u64);
    assert_eq!(manifest["last_modified"], "Tue, 14 Nov 2023 22:13:20 GMT");
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
    let s = sim.stats();
    assert_eq!(s.unauthorized, 0);
    assert!(s.storage_requests >= 1);

    // Unchanged remote: one metadata call decides, with no download call
    // and no HEAD, and the run stops before reading: the last run read this
    // very file.
    let before = sim.stats();
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("pipeline kaggle is up to date: dataset kaggle/us-baby-names unchanged"),
        "{}",
        stdout(&o)
    );
    let after = sim.stats();
    let gets = |s: &simulators::kaggle::Stats| s.storage_requests - s.head_requests;
    assert_eq!(gets(&after), gets(&before), "nothing downloaded: {after:?}");
    assert_eq!(after.metadata_calls, before.metadata_calls + 1, "one metadata call");
    assert_eq!(after.download_calls, before.download_calls, "no download call");
    assert_eq!(after.head_requests, before.head_requests, "no HEAD");
    assert_eq!(after.bytes_sent, before.bytes_sent);

    // --force-download fetches and reads again.
    let o = run(&["run", "--no-progress", "--force-download", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(sim.stats().storage_requests > after.storage_requests);
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
}

/// Killed after the run was marked complete but before its files were
/// published: the next run must not call the dataset up to date (its
/// outputs never appeared), and it writes them.
#[test]
fn a_crash_before_publishing_is_not_mistaken_for_an_up_to_date_run() {
    let rt = runtime();
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let sim = start(&rt, sample);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let mut env = CREDS.to_vec();
    env.push(("ENGINE_FAULT", "before-publish:1"));
    let o = run(&["run", "--no-progress", &p], &env);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{}", stderr(&o));
    assert!(!dir.path().join("out.csv").exists());
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("up to date"), "{}", stdout(&o));
    assert!(stderr(&o).contains("did not finish publishing"), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
    // Now published: the next run is up to date.
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(stdout(&o).contains("is up to date"), "{}", stdout(&o));
}

#[test]
fn a_transfer_broken_half_way_resumes_with_range_and_gives_the_same_result() {
    let rt = runtime();
    // Big enough that half of it is many chunks.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("names.csv");
    write_big_csv(&csv, 200_000);
    let bytes = std::fs::read(&csv).unwrap();
    let sim = start(&rt, bytes.clone());
    sim.break_next_transfers(2);
    let p = pipeline(dir.path(), &sim, "");
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = sim.stats();
    assert_eq!(s.broken_transfers, 2, "{s:?}");
    assert!(s.range_requests >= 2, "resumed with Range: {s:?}");
    assert!(stderr(&o).contains("download interrupted; resuming with Range"), "{}", stderr(&o));
    let staged = dir.path().join("staging/kaggle/us-baby-names/NationalNames.csv");
    assert_eq!(std::fs::read(staged).unwrap(), bytes, "the staged file is byte-identical");
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 200_000);
}

#[test]
fn wrong_or_missing_credentials_fail_fast_and_say_where_they_were_looked_for() {
    let rt = runtime();
    let sim = start(&rt, b"Id,Name,Year,Gender,Count\n1,Mary,1880,F,7065\n".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");

    let o = run(&["run", "--no-progress", &p], &[("KAGGLE_USERNAME", "sim-user"), ("KAGGLE_KEY", "wrong")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("Kaggle refused the credentials from KAGGLE_USERNAME/KAGGLE_KEY (HTTP 401"), "{err}");
    assert!(!err.contains("wrong"), "the key must never be printed: {err}");
    assert_eq!(sim.stats().unauthorized, 1, "no retries on 401");

    // Nothing in the environment, no kaggle.json.
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let env =
        [("KAGGLE_USERNAME", ""), ("KAGGLE_KEY", ""), ("HOME", h), ("XDG_CONFIG_HOME", h), ("KAGGLE_CONFIG_DIR", "")];
    let o = run(&["run", "--no-progress", &p], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no Kaggle credentials found; looked in:"), "{err}");
    assert!(err.contains("KAGGLE_USERNAME/KAGGLE_KEY (unset)"), "{err}");
    assert!(err.contains(&format!("{h}/.kaggle/kaggle.json (not found)")), "{err}");

    // A kaggle.json others can read is refused.
    std::fs::create_dir_all(home.path().join(".kaggle")).unwrap();
    let json = home.path().join(".kaggle/kaggle.json");
    std::fs::write(&json, r#"{"username":"sim-user","key":"sim-key"}"#).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&json, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["run", "--no-progress", &p], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is readable by other users (mode 644)"), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    // With the right mode it is used.
    std::fs::set_permissions(&json, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&["run", "--no-progress", &p], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 1);
}

/// `n` valid rows; `changed` rows get another Count, `new` rows are added.
fn names_csv(n: usize, changed: usize, new: usize) -> Vec<u8> {
    let mut s = String::from("Id,Name,Year,Gender,Count\n");
    for i in 0..n + new {
        let count = if i < changed { 1000 + i } else { 5 + i % 700 };
        s.push_str(&format!(
            "{},N{:05},{},{},{count}\n",
            i + 1,
            i / 2,
            1900 + i % 100,
            if i % 2 == 0 { "F" } else { "M" }
        ));
    }
    s.into_bytes()
}

#[test]
fn incremental_runs_move_only_new_and_changed_rows_to_mariadb_and_hubspot() {
    let rt = runtime();
    let n = 5000;
    let sim = start(&rt, names_csv(n, 0, 0));
    let crm = rt.block_on(simulators::hubspot::serve(Default::default(), "127.0.0.1:0".parse().unwrap())).unwrap();
    let db = TestDb::new("kaggle");
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[transforms.changed]
kind = "changes"
inputs = ["unique"]
key = ["Name", "Year", "Gender"]
ignore = ["Id"]
[sinks.db]
kind = "sql"
inputs = ["changed"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
[sinks.crm]
kind = "hubspot"
inputs = ["changed"]
base_url = "{crm}"
token = "sim-token"
id_property = "baby_key"
id = "{{Name}}|{{Gender}}|{{Year}}"
properties = {{ firstname = "{{Name}}", baby_count = "{{Count}}" }}
linger_ms = 50
"#,
        url = db.url(),
        crm = crm.base_url()
    );
    let p = pipeline(dir.path(), &sim, &sinks);

    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), n as i64);
    assert_eq!(crm.stats().inputs_received, n as u64);

    // Unchanged dataset: nothing downloaded, nothing written, no HubSpot call.
    let calls = crm.stats().requests;
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is up to date"), "{}", stdout(&o));
    assert_eq!(crm.stats().requests, calls, "no HubSpot call on an unchanged dataset");

    // A new version: 1% changed, 1% new. Exactly those move.
    let (changed, new) = (n / 100, n / 100);
    sim.publish_version("kaggle/us-baby-names", vec![("NationalNames.csv".into(), names_csv(n, changed, new))]);
    let received = crm.stats().inputs_received;
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    let row = s.lines().find(|l| l.starts_with("changed ")).unwrap_or_else(|| panic!("{s}"));
    let nums: Vec<String> = row.split_whitespace().skip(3).take(4).map(|x| x.replace(',', "")).collect();
    assert_eq!(
        nums,
        [(n + new).to_string(), (changed + new).to_string(), "0".into(), (n - changed).to_string()],
        "{s}"
    );
    assert_eq!(crm.stats().inputs_received - received, (changed + new) as u64, "only changed and new rows to HubSpot");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), (n + new) as i64);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names WHERE count >= 1000"), changed as i64);
    let contacts = crm.contacts();
    assert_eq!(contacts.len(), n + new);
}

/// An S3-compatible server on 127.0.0.1 (moto, which `scripts/test`
/// installs), stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; scripts/test does it)");
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    /// A plain HTTP request (moto does not check signatures); (status, body).
    fn http(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n", self.port).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(buf.len());
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, buf.get(split + 4..).unwrap_or_default().to_vec())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn staging_on_s3_works_the_same() {
    let rt = runtime();
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let sim = start(&rt, sample.clone());
    let moto = Moto::start();
    assert_eq!(moto.http("PUT", "/engine-staging").0, 200, "create the bucket");
    // The reference: the same pipeline staged on local disk.
    let local = tempfile::tempdir().unwrap();
    let o = run(&["run", "--no-progress", &pipeline(local.path(), &sim, "")], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = std::fs::read(local.path().join("out.csv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let text = std::fs::read_to_string(&p).unwrap();
    // Small segments: the object store's stream of chunks is cut into
    // dozens of segments decoded in parallel (local files take another
    // path, re-reading from each record end).
    let text = text
        .replace(&format!("staging = \"{}/staging\"", dir.path().display()), "staging = \"s3://engine-staging/runs\"")
        .replace("max_attempts = 4\n", "max_attempts = 4\ndecode_segment_bytes = 2000\n");
    assert!(text.contains("decode_segment_bytes"));
    std::fs::write(&p, text).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let env = [
        CREDS[0],
        CREDS[1],
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let o = run(&["run", "--no-progress", &p], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
    assert!(std::fs::read(dir.path().join("out.csv")).unwrap() == want, "the same bytes as staged locally");
    assert!(stderr(&o).contains("decoding in parallel segments"), "{}", stderr(&o));
    // Nothing was staged locally: the rows above were read back from the
    // bucket (moto refuses unsigned reads, so the engine is the reader).
    assert!(!dir.path().join("staging").exists(), "nothing staged locally");
    assert!(
        stderr(&o).contains("staged=s3://engine-staging/runs/kaggle/us-baby-names/NationalNames.csv"),
        "{}",
        stderr(&o)
    );

    // Unchanged: the second run decides from the manifest in the bucket.
    let o = run(&["run", "--no-progress", &p], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is up to date"), "{}", stdout(&o));
}

/// The current API's credentials: a token (sent as Bearer) wins over a
/// username and key; a refused token names where it came from, never its
/// value; an `access_token` file others can read is refused.
#[test]
fn tokens_come_first_and_are_never_printed() {
    let rt = runtime();
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let sim = start(&rt, sample);
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let base =
        [("HOME", h), ("XDG_CONFIG_HOME", h), ("KAGGLE_CONFIG_DIR", ""), ("KAGGLE_USERNAME", ""), ("KAGGLE_KEY", "")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut e: Vec<(&str, &str)> = base.to_vec();
        e.extend_from_slice(extra);
        e
    };
    // A token only.
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let o = run(&["run", "--no-progress", &p], &with(&[("KAGGLE_API_TOKEN", "sim-token")]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
    // A username and key only.
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let o = run(&["run", "--no-progress", &p], &with(&[("KAGGLE_USERNAME", "sim-user"), ("KAGGLE_KEY", "sim-key")]));
    assert!(o.status.success(), "{}", stderr(&o));
    // Both: the token is used, so a wrong token fails though the key is right.
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let secret = "kaggle-token-not-valid-4242";
    let o = run(
        &["run", "--no-progress", &p],
        &with(&[("KAGGLE_API_TOKEN", secret), ("KAGGLE_USERNAME", "sim-user"), ("KAGGLE_KEY", "sim-key")]),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("Kaggle refused the credentials from KAGGLE_API_TOKEN (HTTP 401"), "{err}");
    assert!(!err.contains(secret) && !stdout(&o).contains(secret), "the token must never be printed: {err}");
    // ~/.kaggle/access_token: used when private, refused when not.
    std::fs::create_dir_all(home.path().join(".kaggle")).unwrap();
    let file = home.path().join(".kaggle/access_token");
    std::fs::write(&file, "sim-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["run", "--no-progress", &p], &with(&[]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("access_token is readable by other users (mode 644)"), "{}", stderr(&o));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&["run", "--no-progress", &p], &with(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    // Nothing at all: every place looked at is listed, tokens included.
    std::fs::remove_file(&file).unwrap();
    let o = run(&["run", "--no-progress", &p], &with(&[]));
    let err = stderr(&o);
    assert!(err.contains("KAGGLE_API_TOKEN (unset)") && err.contains(".kaggle/access_token (not found)"), "{err}");
}

/// `owner/dataset/N` pins version N: after a new version is published, the
/// pinned run still reads the old bytes, and the manifest says which.
#[test]
fn a_pinned_version_reads_its_own_bytes() {
    let rt = runtime();
    let sim = start(&rt, names_csv(100, 0, 0));
    sim.publish_version("kaggle/us-baby-names", vec![("NationalNames.csv".into(), names_csv(100, 0, 50))]);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("dataset = \"kaggle/us-baby-names\"", "dataset = \"kaggle/us-baby-names/1\"");
    std::fs::write(&p, text).unwrap();
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 100, "version 1 has 100 rows, version 2 has 150");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("staging/kaggle/us-baby-names/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], 1);
}

/// The older REST download path stays available (`api = "rest"`).
#[test]
fn the_rest_form_still_works() {
    let rt = runtime();
    let sample = std::fs::read(repo().join("pipelines/data/NationalNames.sample.csv")).unwrap();
    let sim = start(&rt, sample);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &sim, "");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        &format!("base_url = \"{}\"", sim.base_url()),
        &format!("api = \"rest\"\nbase_url = \"{}/api/v1\"", sim.base_url()),
    );
    std::fs::write(&p, text).unwrap();
    let o = run(&["run", "--no-progress", &p], &CREDS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&dir.path().join("out.csv")), 3004);
    let s = sim.stats();
    assert_eq!((s.metadata_calls, s.rpc_download_calls), (0, 0), "nothing of the RPC form: {s:?}");
    assert!(s.download_calls >= 1);
}
