//! Logs, metrics and health: the subscriber setup, and the HTTP endpoint
//! that serves `/metrics`, `/health/live` and `/health/ready` while a
//! pipeline runs. Nothing here decides anything about the run itself.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::runtime::Live;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Installs the global subscriber. Logs go to stderr; stdout is for results.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env("ENGINE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Redacting::new(std::io::stderr()))
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests calling main twice) is harmless; ignore it.
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// A log writer that masks every registered secret. tracing formats an
/// event and writes it through one writer; the whole event is buffered so
/// a secret split across `write` calls is still found.
struct Redacting<W: std::io::Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: std::io::Write> Redacting<W> {
    fn new(inner: W) -> Self {
        Redacting { inner, buf: Vec::with_capacity(256) }
    }

    fn emit(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&secrets::redact::redact_bytes(&self.buf))?;
            self.buf.clear();
        }
        self.inner.flush()
    }
}

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()
    }
}

impl<W: std::io::Write> Drop for Redacting<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

/// Parses `--metrics-addr`: `host:port`, or a bare port meaning localhost.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = s.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = s.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("`{s}` is not an address: use 127.0.0.1:9464, :9464 or 9464"))
}

/// Installs the Prometheus recorder. Only done when metrics are served: with
/// no recorder the `metrics` macros cost next to nothing.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new().install_recorder().map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    live: Arc<std::sync::OnceLock<Arc<Live>>>,
}

/// Binds the listener now (so a taken port fails the run before it starts)
/// and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    live: Arc<std::sync::OnceLock<Arc<Live>>>,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(AppState { handle, live });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(s): State<AppState>) -> String {
    // Labels hold operator ids and statuses, never options; masked anyway,
    // as every output is.
    secrets::redact::redact(&s.handle.render()).into_owned()
}

async fn ready(State(s): State<AppState>) -> (StatusCode, &'static str) {
    match s.live.get() {
        Some(l) if l.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_redacted_even_when_written_in_pieces() {
        use std::io::Write;
        secrets::redact::register("observe-test-secret-81");
        let mut out = Vec::new();
        {
            let mut w = Redacting::new(&mut out);
            w.write_all(b"{\"msg\":\"token observe-test-").unwrap();
            w.write_all(b"secret-81 refused\"}\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "{\"msg\":\"token [redacted] refused\"}\n");
    }

    #[test]
    fn a_bare_port_means_localhost() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert!(parse_addr("nope").is_err());
    }
}
