//! NATS JetStream as the engine's queue between an ingest pipeline and its
//! sync workers, and as the place several workers share a rate limit.
//!
//! Owns the client side of NATS: connecting with bounded patience,
//! the stream and its partition layout ([`layout`]), publishing with server
//! acknowledgements and retries ([`publish`]), a worker's durable consumer
//! ([`consume`]) and the shared rate limiter ([`limiter`]). Knows nothing of
//! Arrow, pipelines or checkpoints: the `nats` source and sink in
//! `operators` put those on top. Never logs a URL's credentials (it names
//! the server by host and port only).

pub mod consume;
pub mod layout;
pub mod limiter;
pub mod publish;

use std::time::Duration;

pub use async_nats;

/// Header naming the lineage of a producer (one per ingest run, kept across
/// its resumes).
pub const PRODUCER: &str = "Engine-Producer";
/// Header: the partition's row sequence of a message's first row (rows
/// messages) or the partition's row count (end markers).
pub const SEQUENCE: &str = "Engine-Seq";
/// Header: rows in a rows message.
pub const ROWS: &str = "Engine-Rows";
/// Header present on an end-of-run marker.
pub const END: &str = "Engine-End";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot reach NATS at {server}: {cause}")]
    Connect { server: String, cause: String },
    #[error("{context}: {cause}")]
    JetStream { context: String, cause: String },
    /// The stream exists but was not made for this use (or with other
    /// settings): carrying on would send rows to the wrong worker.
    #[error("{0}")]
    Layout(String),
}

impl QueueError {
    pub fn js(context: impl Into<String>, cause: &(dyn std::error::Error + 'static)) -> Self {
        QueueError::JetStream { context: context.into(), cause: error_chain(cause) }
    }
}

/// `e` and its sources, `a: b: c` (a source repeating its parent's text is
/// left out).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Where a NATS URL points, without credentials: `127.0.0.1:4222`.
pub fn server_name(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split(['/', ',']).next().unwrap_or(rest).to_string()
}

/// Connects to `url`, trying again for up to `patience` (a worker may start
/// before the server). Once connected, the client reconnects by itself
/// forever; callers retry what failed meanwhile.
pub async fn connect(url: &str, client_name: &str, patience: Duration) -> Result<async_nats::Client, QueueError> {
    let server = server_name(url);
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        let opts = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback({
                let server = server.clone();
                move |event| {
                    let server = server.clone();
                    async move {
                        match event {
                            async_nats::Event::Disconnected => {
                                tracing::warn!(%server, "NATS connection lost; reconnecting")
                            }
                            async_nats::Event::Connected => tracing::info!(%server, "NATS connection (re)established"),
                            other => tracing::debug!(%server, event = %other, "NATS event"),
                        }
                    }
                }
            });
        match opts.connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() + wait < patience => {
                tracing::warn!(%server, error = %e, "NATS not reachable yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(QueueError::Connect {
                    server,
                    cause: format!("{e} (for {:.0?}; is nats-server running with -js?)", started.elapsed()),
                });
            }
        }
    }
}

/// A JetStream context whose requests wait `timeout` for an answer.
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(timeout);
    js
}

/// Calls `f` until it succeeds or `patience` has passed since the first
/// failure, waiting longer between attempts (NATS restarting, a leader
/// election): the errors of a reconnecting client are transient.
pub async fn retrying<T, E, F, Fut>(what: &str, patience: Duration, mut f: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let mut first_failure: Option<std::time::Instant> = None;
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let since = *first_failure.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= patience {
                    return Err(QueueError::js(format!("{what} (gave up after {:.0?})", since.elapsed()), &e));
                }
                tracing::warn!(error = %error_chain(&e), "{what} failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_never_carry_credentials() {
        assert_eq!(server_name("nats://user:s3cret@10.0.0.1:4222"), "10.0.0.1:4222");
        assert_eq!(server_name("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(server_name("tls://a:b@h:1,h2:2"), "h:1");
        assert_eq!(server_name("localhost:4222"), "localhost:4222");
    }
}
