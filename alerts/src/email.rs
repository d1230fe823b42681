//! Email alerts: one plain-text message per event, sent over SMTP.
//!
//! - [`EmailSpec`]: the options of `kind = "email"`, checked by
//!   [`EmailSpec::check`] (each problem names its option in backticks).
//! - [`subject`], [`text`], [`message`]: what is sent. Built once per event,
//!   so every attempt carries the same bytes (Date, Message-ID included).
//! - [`deliver`]: STARTTLS (default; never falls back to plaintext when the
//!   server does not offer it), implicit TLS, or plaintext to a relay on this
//!   machine; AUTH only inside TLS. Retried with backoff on connection
//!   errors, timeouts and 4xx replies; a 5xx reply, a TLS failure or a
//!   missing STARTTLS stops at once.
//!
//! The receiver's password is never part of a message or of an error this
//! module returns.

use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Deserializer};

use crate::{Action, AlertSpec, Event};

/// `kind = "email"`: where the SMTP server is, how to reach it, who sends
/// and who receives.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    pub smtp_host: String,
    /// Default by `tls`: 587 (`starttls`), 465 (`tls`), 25 (`none`).
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `alerts@example.com` or `Engine <alerts@example.com>`.
    pub from: String,
    /// One address or an array of them.
    #[serde(deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    /// PEM certificates to trust besides the system's roots (a private CA).
    pub ca_file: Option<String>,
}

/// Not derived: the password stays out of every `{:?}`.
impl std::fmt::Debug for EmailSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSpec")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// How the connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plaintext, then `STARTTLS`, required: a server that does not offer it
    /// gets nothing.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plaintext, for a relay on this machine only, without credentials.
    None,
}

impl<'de> Deserialize<'de> for SmtpTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SmtpTls, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "starttls" => Ok(SmtpTls::Starttls),
            "tls" => Ok(SmtpTls::Tls),
            "none" => Ok(SmtpTls::None),
            other => Err(serde::de::Error::custom(format!(
                "`tls` must be \"starttls\" (the default), \"tls\" (implicit TLS) or \"none\" (a relay on this machine), found \"{other}\""
            ))),
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom("`to` must be an address or an array of addresses")),
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn mailbox(option: &str, s: &str) -> Result<Mailbox, String> {
    s.trim().parse::<Mailbox>().map_err(|e| format!("`{option}`: \"{s}\" is not an email address ({e})"))
}

impl EmailSpec {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    /// What serde cannot say: each message names one option in backticks.
    /// Values still holding a `SECRET[...]` reference are not checked.
    pub fn check(&self) -> Result<(), String> {
        let unresolved = |s: &str| s.contains("SECRET[");
        let host = self.smtp_host.trim();
        if host.is_empty() {
            return Err("`smtp_host` must name the SMTP server".into());
        }
        if !unresolved(host) && (host.contains("://") || host.contains(char::is_whitespace) || host.contains('/')) {
            return Err(format!(
                "`smtp_host` must be a host name or address (the port goes in smtp_port), found \"{host}\""
            ));
        }
        if self.smtp_port == Some(0) {
            return Err("`smtp_port` must be between 1 and 65535".into());
        }
        match (&self.username, &self.password) {
            (Some(_), None) => return Err("`username` needs a password too".into()),
            (None, Some(_)) => return Err("`password` needs a username too".into()),
            _ => {}
        }
        if self.tls == SmtpTls::None {
            if self.password.is_some() {
                return Err(
                    "`password` would travel in plaintext with tls = \"none\": use \"starttls\" or \"tls\"".into()
                );
            }
            if !unresolved(host) && !is_loopback(host) {
                return Err(format!(
                    "`smtp_host` \"{host}\" is not this machine: tls = \"none\" (plaintext) is only for a relay on \
                     localhost; use \"starttls\" or \"tls\""
                ));
            }
        }
        if !unresolved(&self.from) {
            mailbox("from", &self.from)?;
        }
        if self.to.is_empty() {
            return Err("`to` must name at least one address".into());
        }
        for t in self.to.iter().filter(|t| !unresolved(t)) {
            mailbox("to", t)?;
        }
        if self.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err("`ca_file` must be the path of a PEM file".into());
        }
        Ok(())
    }
}

/// A header value on one line: control characters (CR, LF among them)
/// become spaces, so no value can start a header of its own.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// `password` never leaves in a message or an error, whatever a server or
/// an operator's message echoes.
fn scrub(s: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if p.len() >= 4 => s.replace(p, "[redacted]"),
        _ => s.to_string(),
    }
}

/// The word a subject starts with.
fn label(e: &Event) -> &'static str {
    match (e.action, e.condition.as_str()) {
        (Action::Resolve, _) => "RESOLVED",
        (_, "failed") => "FAILED",
        (_, "timeout") => "TIMED OUT",
        (_, "missed") => "MISSED RUNS",
        (_, "rejects_ratio") => "REJECTS",
        (_, "hubspot_daily_quota") => "HUBSPOT QUOTA",
        _ => "ALERT",
    }
}

/// `[engine] FAILED babynames: operator `db`: connection refused`,
/// `[engine] RESOLVED babynames: recovered: run … completed`: on one line,
/// at most 200 characters.
pub fn subject(e: &Event) -> String {
    let detail = match (e.action, &e.operator, &e.message) {
        (Action::Trigger, Some(op), Some(msg)) if e.condition == "failed" => format!("operator `{op}`: {msg}"),
        _ => {
            let s = e.summary.strip_prefix(&format!("pipeline {}", e.pipeline)).unwrap_or(&e.summary);
            s.trim_start_matches(':').trim().to_string()
        }
    };
    let s = one_line(&format!("[engine] {} {}: {detail}", label(e), e.pipeline));
    crate::truncate(&s, 200)
}

/// The plain-text body: the summary, then one fact a line.
pub fn text(e: &Event) -> String {
    let mut t = format!("{}\n\n", e.summary);
    let mut line = |name: &str, value: &str| {
        // A multi-line value (an error with its causes) stays under its name.
        let value = value.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\n             ");
        t.push_str(&format!("{:<13}{value}\n", format!("{name}:")));
    };
    line("Pipeline", &e.pipeline);
    line("Run", &e.run_id);
    let status = if e.action == Action::Trigger { "triggered" } else { "resolved" };
    line("Condition", &format!("{} ({status})", if e.condition == "recovered" { "failed" } else { &e.condition }));
    if let Some(op) = &e.operator {
        line("Operator", op);
    }
    if let Some(m) = &e.message {
        line("Message", m);
    }
    line("Host", &e.host);
    if let Some(l) = &e.link {
        line("Console", l);
    }
    t.push_str(&format!("\n-- \nSent by engine. Dedup key: {}\n", e.dedup_key));
    t
}

const DEDUP_KEY: HeaderName = HeaderName::new_from_ascii_str("X-Engine-Dedup-Key");
const ACTION: HeaderName = HeaderName::new_from_ascii_str("X-Engine-Action");

/// A Message-ID part (RFC 5322 dot-atom-text): other characters become `-`.
fn atext(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) { c } else { '-' })
        .collect();
    s.trim_matches('.').replace("..", ".")
}

/// The message for `e`: its envelope (from `from` and `to`) and its bytes
/// (CRLF line endings, headers encoded as RFC 2047 where not ASCII).
pub fn message(spec: &EmailSpec, e: &Event) -> Result<Message, String> {
    let password = spec.password.as_deref();
    let from = mailbox("from", &spec.from)?;
    let domain = from.email.domain().to_string();
    let mut b = Message::builder()
        .from(from)
        .subject(scrub(&subject(e), password))
        .date_now()
        .message_id(Some(format!(
            "<engine.{}.{}.{}@{}>",
            atext(&e.run_id),
            atext(&e.condition),
            if e.action == Action::Trigger { "trigger" } else { "resolve" },
            atext(&domain)
        )))
        .raw_header(HeaderValue::new(DEDUP_KEY, one_line(&e.dedup_key)))
        .raw_header(HeaderValue::new(
            ACTION,
            if e.action == Action::Trigger { "trigger" } else { "resolve" }.to_string(),
        ))
        .header(ContentType::TEXT_PLAIN);
    for t in &spec.to {
        b = b.to(mailbox("to", t)?);
    }
    b.body(scrub(&text(e), password)).map_err(|e| format!("cannot build the email: {e}"))
}

/// The EHLO name: this host when it is a plain host name.
fn hello_name(host: &str) -> ClientId {
    let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok { ClientId::Domain(host.to_string()) } else { ClientId::Domain("localhost".into()) }
}

fn transport(spec: &EmailSpec, timeout: Duration, host: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = || -> Result<TlsParameters, String> {
        let server = spec.smtp_host.trim().trim_start_matches('[').trim_end_matches(']').to_string();
        let mut b = TlsParameters::builder(server);
        if let Some(path) = &spec.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("`ca_file` {path}: {e}"))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(format!("`ca_file` {path}: no PEM certificate in it"));
            }
            let cert = Certificate::from_pem(&pem).map_err(|e| format!("`ca_file` {path}: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| format!("TLS setup: {}", crate::error_chain(&e)))
    };
    let tls = match spec.tls {
        SmtpTls::Starttls => Tls::Required(tls()?),
        SmtpTls::Tls => Tls::Wrapper(tls()?),
        SmtpTls::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(spec.smtp_host.trim())
        .port(spec.port())
        .tls(tls)
        .timeout(Some(timeout))
        .hello_name(hello_name(host));
    if let (Some(user), Some(pass), false) = (&spec.username, &spec.password, spec.tls == SmtpTls::None) {
        b = b
            .credentials(Credentials::new(user.clone(), pass.clone()))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(b.build())
}

/// Whether another attempt may succeed: connection errors, timeouts and
/// 4xx replies. A 5xx reply, a TLS failure (a certificate that does not
/// verify) or a server without STARTTLS will answer the same again.
fn transient(e: &lettre::transport::smtp::Error) -> bool {
    e.is_transient() || e.is_timeout() || !(e.is_permanent() || e.is_client() || e.is_tls() || e.is_response())
}

fn explain(spec: &EmailSpec, e: &lettre::transport::smtp::Error) -> String {
    let chain = crate::error_chain(e);
    let why = if chain.contains("STARTTLS is not supported") {
        "the server does not offer STARTTLS; with tls = \"starttls\" nothing is sent in plaintext".to_string()
    } else {
        chain
    };
    scrub(&format!("SMTP {}:{}: {why}", spec.smtp_host.trim(), spec.port()), spec.password.as_deref())
}

/// Sends `e` by email: retried with backoff (0.5 s, 1 s, 2 s…) on transient
/// failures, at most `attempts` times, each attempt bounded by `timeout_ms`.
pub async fn deliver(alert: &AlertSpec, spec: &EmailSpec, e: &Event) -> Result<u32, String> {
    let message = message(spec, e)?;
    let bytes = message.formatted();
    let envelope = message.envelope().clone();
    let attempts = alert.attempts.unwrap_or(4).max(1);
    let timeout = Duration::from_millis(alert.timeout_ms.unwrap_or(10_000));
    let smtp = transport(spec, timeout, &e.host)?;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(crate::backoff(attempt)).await;
        }
        match tokio::time::timeout(timeout, smtp.send_raw(&envelope, &bytes)).await {
            Ok(Ok(_)) => return Ok(attempt),
            Ok(Err(err)) => {
                last = explain(spec, &err);
                if !transient(&err) {
                    return Err(last);
                }
            }
            Err(_) => last = format!("SMTP {}:{}: no answer within {timeout:?}", spec.smtp_host.trim(), spec.port()),
        }
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Condition, Open, RunFacts, events};
    use serde_json::json;

    fn spec() -> EmailSpec {
        EmailSpec {
            smtp_host: "smtp.example.com".into(),
            smtp_port: None,
            tls: SmtpTls::Starttls,
            username: Some("alerts".into()),
            password: Some("canary-pw-31337".into()),
            from: "Engine <alerts@example.com>".into(),
            to: vec!["oncall@example.com".into(), "data@example.com".into()],
            ca_file: None,
        }
    }

    fn failed(message: &str) -> Event {
        let facts = RunFacts {
            pipeline: "babynames".into(),
            run_id: "1700000000000-42".into(),
            host: "etl-1".into(),
            failed: Some(("db".into(), message.into())),
            ..Default::default()
        };
        let on = [Condition::Failed, Condition::Recovered];
        events(&on, &facts, &Open::default(), Some("https://console.example.com")).0.remove(0)
    }

    #[test]
    fn a_failure_mail_names_pipeline_run_operator_message_and_link() {
        let e = failed("connection refused");
        assert_eq!(subject(&e), "[engine] FAILED babynames: operator `db`: connection refused");
        let m = String::from_utf8(message(&spec(), &e).unwrap().formatted()).unwrap();
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        for h in [
            "From: Engine <alerts@example.com>\r\n",
            "To: oncall@example.com, data@example.com\r\n",
            "Subject: [engine] FAILED babynames: operator `db`: connection refused\r\n",
            "Message-ID: <engine.1700000000000-42.failed.trigger@example.com>\r\n",
            "X-Engine-Dedup-Key: engine/babynames/failed\r\n",
            "X-Engine-Action: trigger\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
        ] {
            assert!(format!("{head}\r\n").contains(h), "{h:?} missing in\n{head}");
        }
        assert!(head.contains("\r\nDate: "), "{head}");
        for l in [
            "pipeline babynames failed: operator `db`: connection refused",
            "Pipeline:    babynames",
            "Run:         1700000000000-42",
            "Condition:   failed (triggered)",
            "Operator:    db",
            "Message:     connection refused",
            "Host:        etl-1",
            "Console:     https://console.example.com/runs/1700000000000-42",
        ] {
            assert!(body.contains(&format!("{l}\r\n")), "{l:?} missing in\n{body}");
        }
        assert!(!m.replace("\r\n", "").contains('\n') && !m.replace("\r\n", "").contains('\r'), "CRLF only");
        let envelope = message(&spec(), &e).unwrap().envelope().clone();
        assert_eq!(envelope.from().unwrap().to_string(), "alerts@example.com");
        assert_eq!(envelope.to().len(), 2);
    }

    #[test]
    fn the_resolve_mail_keeps_the_dedup_key() {
        let on = [Condition::Failed, Condition::Recovered];
        let f = RunFacts { pipeline: "babynames".into(), run_id: "r2".into(), host: "h".into(), ..Default::default() };
        let open = Open { conditions: ["failed".to_string()].into() };
        let e = events(&on, &f, &open, None).0.remove(0);
        assert_eq!(subject(&e), "[engine] RESOLVED babynames: recovered: run r2 completed");
        let m = String::from_utf8(message(&spec(), &e).unwrap().formatted()).unwrap();
        assert!(m.contains("X-Engine-Dedup-Key: engine/babynames/failed\r\n"), "{m}");
        assert!(m.contains("X-Engine-Action: resolve\r\n") && m.contains("Condition:   failed (resolved)\r\n"), "{m}");
        assert!(!m.contains("Console:"), "no link without public_url");
    }

    #[test]
    fn header_values_cannot_break_lines_and_the_password_never_leaves() {
        let e = failed("boom\r\nBcc: victim@example.com\nlogin with canary-pw-31337 failed");
        let s = subject(&e);
        assert!(!s.contains('\r') && !s.contains('\n'), "{s:?}");
        let m = String::from_utf8(message(&spec(), &e).unwrap().formatted()).unwrap();
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(!head.contains("\r\nBcc:"), "{head}");
        assert!(!m.contains("canary-pw-31337"), "{m}");
        // The message's lines stay under their name in the body.
        assert!(body.contains("Message:     boom\r\n             Bcc: victim@example.com\r\n"), "{body}");
        assert!(!format!("{:?}", spec()).contains("canary-pw-31337"));
    }

    #[test]
    fn non_ascii_subjects_are_encoded() {
        let e = failed("Zeile enthält ein ungültiges Datum");
        let m = String::from_utf8(message(&spec(), &e).unwrap().formatted()).unwrap();
        let subject_line = m.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject_line.is_ascii() && subject_line.contains("=?utf-8?"), "{subject_line}");
    }

    #[test]
    fn options_are_checked_by_name() {
        let parse = |v: serde_json::Value| AlertSpec::from_json(&v).map(|s| s.receiver);
        let ok = json!({"kind": "email", "smtp_host": "smtp.example.com", "from": "a@example.com",
            "to": ["b@example.com"], "username": "u", "password": "p"});
        let crate::Receiver::Email(s) = parse(ok.clone()).unwrap() else { panic!() };
        assert_eq!((s.port(), s.tls), (587, SmtpTls::Starttls));
        let with = |k: &str, v: serde_json::Value| {
            let mut o = ok.clone();
            if v.is_null() {
                o.as_object_mut().unwrap().remove(k);
            } else {
                o[k] = v;
            }
            parse(o).unwrap_err()
        };
        let cases = [
            (with("tls", json!("ssl")), "`tls` must be \"starttls\""),
            (with("to", json!([])), "`to` must name at least one address"),
            (with("to", json!(["nobody"])), "`to`: \"nobody\" is not an email address"),
            (with("to", json!(7)), "`to` must be an address or an array"),
            (with("from", json!("x@")), "`from`: \"x@\" is not an email address"),
            (with("password", json!(null)), "`username` needs a password"),
            (with("smtp_host", json!("smtp://mail.example.com")), "`smtp_host` must be a host name"),
            (with("smtp_port", json!(0)), "`smtp_port` must be between 1 and 65535"),
            (with("tls", json!("none")), "`password` would travel in plaintext"),
            (with("colour", json!(1)), "unknown field `colour`"),
            (with("smtp_host", json!(null)), "missing field `smtp_host`"),
        ];
        for (got, want) in cases {
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
        let relay = json!({"kind": "email", "smtp_host": "mail.example.com", "tls": "none",
            "from": "a@example.com", "to": "b@example.com"});
        assert!(parse(relay.clone()).unwrap_err().contains("`smtp_host` \"mail.example.com\" is not this machine"));
        let mut local = relay;
        local["smtp_host"] = json!("127.0.0.1");
        let crate::Receiver::Email(s) = parse(local).unwrap() else { panic!() };
        assert_eq!((s.port(), s.to.len()), (25, 1));
        let spec = AlertSpec::from_json(&ok).unwrap();
        assert_eq!(spec.credentials(), ["p"]);
    }

    /// A scripted SMTP server on 127.0.0.1: answers each command by the
    /// first entry whose prefix it starts with; counts connections.
    fn fake_smtp(
        script: &'static [(&'static str, &'static str)],
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = n.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut r = BufReader::new(s.try_clone().unwrap());
                let _ = s.write_all(b"220 fake ESMTP\r\n");
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let reply = script.iter().find(|(p, _)| line.to_ascii_uppercase().starts_with(p)).map(|(_, r)| *r);
                    let _ = s.write_all(reply.unwrap_or("250 ok\r\n").as_bytes());
                    if line.to_ascii_uppercase().starts_with("QUIT") {
                        break;
                    }
                    line.clear();
                }
            }
        });
        (port, n)
    }

    fn try_deliver(tls: SmtpTls, port: u16, attempts: u32) -> String {
        let s = EmailSpec {
            smtp_host: "127.0.0.1".into(),
            smtp_port: Some(port),
            tls,
            username: None,
            password: None,
            ca_file: None,
            ..spec()
        };
        let alert = AlertSpec {
            receiver: crate::Receiver::Email(s.clone()),
            on: vec![],
            public_url: None,
            timeout_ms: Some(2000),
            attempts: Some(attempts),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(deliver(&alert, &s, &failed("x"))).unwrap_err()
    }

    #[test]
    fn refused_connections_and_4xx_are_retried_5xx_and_a_missing_starttls_are_not() {
        use std::sync::atomic::Ordering::SeqCst;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = try_deliver(SmtpTls::None, closed, 2);
        assert!(err.starts_with(&format!("SMTP 127.0.0.1:{closed}: ")) && err.ends_with("(after 2 attempts)"), "{err}");

        let (port, n) = fake_smtp(&[("EHLO", "250-fake\r\n250 SIZE 100000\r\n"), ("MAIL", "451 4.3.0 try later\r\n")]);
        let err = try_deliver(SmtpTls::None, port, 2);
        assert!(err.contains("451") && err.ends_with("(after 2 attempts)"), "{err}");
        assert_eq!(n.load(SeqCst), 2);

        let (port, n) = fake_smtp(&[("EHLO", "250-fake\r\n250 SIZE 100000\r\n"), ("MAIL", "550 5.7.1 go away\r\n")]);
        let err = try_deliver(SmtpTls::None, port, 3);
        assert!(err.contains("550") && !err.contains("attempts"), "{err}");
        assert_eq!(n.load(SeqCst), 1);

        // No STARTTLS offered: nothing sent, not retried.
        let (port, n) = fake_smtp(&[("EHLO", "250-fake\r\n250 AUTH PLAIN\r\n"), ("MAIL", "250 ok\r\n")]);
        let err = try_deliver(SmtpTls::Starttls, port, 3);
        assert!(err.contains("does not offer STARTTLS"), "{err}");
        assert_eq!(n.load(SeqCst), 1);
    }
}
