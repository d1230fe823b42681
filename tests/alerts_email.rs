//! Email alerts from `engine run` to a real SMTP server on 127.0.0.1
//! (aiosmtpd, tests/fixtures/smtp-server.py, with a CA made for the test):
//! a failure mails once over STARTTLS with AUTH, the next success mails the
//! resolution with the same dedup key, and the password (resolved from a
//! secret) is nowhere in the output or the mail; a server that does not
//! offer STARTTLS gets nothing, and the run still succeeds.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::out_dir;
use crate::util::*;

/// The python that has aiosmtpd (installed from PyPI on first use).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let o = Command::new(repo().join("scripts/ensure-aiosmtpd")).output().expect("scripts/ensure-aiosmtpd runs");
        assert!(o.status.success(), "scripts/ensure-aiosmtpd: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().last().expect("a python path").trim().to_string()
    })
}

/// tests/fixtures/smtp-server.py on a free port, writing what it gets to
/// its own directory; killed when dropped.
struct Smtp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    ca: Option<PathBuf>,
}

impl Smtp {
    fn start(starttls: bool, auth: Option<(&str, &str)>) -> Smtp {
        let dir = out_dir();
        let mut c = Command::new(python());
        c.arg(repo().join("tests/fixtures/smtp-server.py")).arg(dir.path());
        if starttls {
            c.arg("--starttls");
        }
        if let Some((user, password)) = auth {
            c.arg("--auth").arg(format!("{user}:{password}"));
        }
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = c.stdout(Stdio::piped()).stderr(log).spawn().expect("python runs the SMTP server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Ok(info) = serde_json::from_str::<Value>(&line) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the SMTP server did not start: {}",
                std::fs::read_to_string(dir.path().join("server.log")).unwrap()
            );
        };
        let port = info["port"].as_u64().unwrap() as u16;
        let ca = info["ca"].as_str().map(PathBuf::from);
        Smtp { child, dir, port, ca }
    }

    /// The messages received so far, in order: (decoded record, raw bytes).
    fn messages(&self) -> Vec<(Value, String)> {
        (1..)
            .map(|n| self.dir.path().join(format!("{n}.json")))
            .take_while(|p| p.exists())
            .map(|p| {
                let record = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                let raw = String::from_utf8_lossy(&std::fs::read(p.with_extension("eml")).unwrap()).into_owned();
                (record, raw)
            })
            .collect()
    }

    fn connections(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("connections.log")).map(|s| s.lines().count()).unwrap_or(0)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipeline(dir: &Path, alerts: &str) -> String {
    crate::alerts::alert_pipeline(dir, "mailing", alerts)
}

fn header<'v>(m: &'v Value, name: &str) -> &'v str {
    m["headers"][name].as_str().unwrap_or_else(|| panic!("no {name} header in {m}"))
}

#[test]
fn alerts_email_a_failure_mails_over_starttls_and_the_next_success_resolves_it() {
    let password = "canary-smtp-pw-8c1f27e0";
    let smtp = Smtp::start(true, Some(("engine-alerts", password)));
    let dir = out_dir();
    let mounted = dir.path().join("secrets");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::write(mounted.join("smtp"), password).unwrap();
    let file = pipeline(
        dir.path(),
        &format!(
            r#"[secrets.mounted]
kind = "directory"
path = "{}"

[alerts.mail]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
username = "engine-alerts"
password = "SECRET[mounted.smtp]"
from = "Engine <engine@example.com>"
to = ["oncall@example.com", "data@example.com"]
ca_file = "{}"
public_url = "https://engine.example.com/"
"#,
            mounted.display(),
            smtp.port,
            smtp.ca.as_ref().unwrap().display()
        ),
    );
    let sample = repo().join("pipelines/data/NationalNames.sample.csv").display().to_string();
    let missing = dir.path().join("missing.csv").display().to_string();

    // 1. A failed run: one mail, over TLS, authenticated.
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &missing)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let got = smtp.messages();
    assert_eq!(got.len(), 1, "{}", stderr(&o));
    let (m, raw) = &got[0];
    assert_eq!((m["tls"].as_bool(), m["login"].as_str()), (Some(true), Some("engine-alerts")), "{m}");
    assert_eq!(m["mail_from"], "engine@example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["oncall@example.com", "data@example.com"]));
    let subject = m["subject"].as_str().unwrap();
    assert!(subject.starts_with("[engine] FAILED mailing: operator `names`: "), "{subject}");
    assert_eq!(header(m, "X-Engine-Dedup-Key"), "engine/mailing/failed");
    assert!(header(m, "Message-ID").ends_with("@example.com>") && !header(m, "Date").is_empty());
    let body = m["body"].as_str().unwrap();
    let run_id = body.lines().find_map(|l| l.strip_prefix("Run:")).expect("a Run: line").trim().to_string();
    for line in [
        "Pipeline:    mailing",
        "Condition:   failed (triggered)",
        "Operator:    names",
        &format!("Console:     https://engine.example.com/runs/{run_id}"),
    ] {
        assert!(body.contains(line), "{line:?} missing in\n{body}");
    }
    let message = body.lines().find_map(|l| l.strip_prefix("Message:")).expect("a Message: line");
    assert!(message.contains("missing.csv"), "{body}");
    assert!(stderr(&o).contains(&run_id), "the run id is in the logs too");
    assert!(!raw.replace("\r\n", "").contains('\n'), "CRLF line endings");
    for text in [raw.as_str(), &stdout(&o), &stderr(&o)] {
        assert!(!text.contains(password), "the password leaked:\n{text}");
    }

    // 2. The next success: the resolution, same dedup key.
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &sample)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = smtp.messages();
    assert_eq!(got.len(), 2, "{}", stderr(&o));
    let (m, raw) = &got[1];
    assert!(m["subject"].as_str().unwrap().starts_with("[engine] RESOLVED mailing: recovered"), "{m}");
    assert_eq!(header(m, "X-Engine-Dedup-Key"), "engine/mailing/failed");
    assert_eq!(header(m, "X-Engine-Action"), "resolve");
    assert!(m["body"].as_str().unwrap().contains("Condition:   failed (resolved)"), "{m}");
    for text in [raw.as_str(), &stdout(&o), &stderr(&o)] {
        assert!(!text.contains(password), "the password leaked:\n{text}");
    }
}

#[test]
fn alerts_email_a_server_without_starttls_gets_nothing_and_the_run_succeeds() {
    let password = "canary-smtp-pw-0b5e9a41";
    let smtp = Smtp::start(false, None);
    let dir = out_dir();
    let file = pipeline(
        dir.path(),
        &format!(
            r#"[alerts.mail]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
username = "engine-alerts"
password = "{password}"
from = "engine@example.com"
to = "oncall@example.com"
on = ["rejects_ratio > 0.001"]
"#,
            smtp.port
        ),
    );
    let sample = repo().join("pipelines/data/NationalNames.sample.csv").display().to_string();
    let o = run(&["run", "--no-progress", &file], &[("INPUT", &sample)]);
    let err = stderr(&o);
    assert!(o.status.success(), "an undeliverable alert does not fail the run: {err}");
    assert_eq!(smtp.messages().len(), 0);
    assert_eq!(smtp.connections(), 1, "refused at once, not retried");
    assert!(err.contains("alert not delivered") && err.contains("does not offer STARTTLS"), "{err}");
    assert!(!err.contains(password) && !stdout(&o).contains(password));

    // A bad option is a config error at its place.
    let bad = pipeline(
        dir.path(),
        "[alerts.mail]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\ntls = \"ssl\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
    );
    let o = run(&["validate", &bad], &[("INPUT", &sample)]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("[alerts.mail]: `tls` must be \"starttls\""), "{err}");
    assert!(err.contains("mailing.toml:") && err.contains(":24:"), "reported at the `tls` line: {err}");
}
