//! One request rate shared by every worker that calls the same account
//! (HubSpot's limit is per account, not per process): GCRA with its
//! theoretical arrival time (TAT) in a NATS key-value entry.
//!
//! A request takes the next free slot: `slot = max(TAT, now)`, then
//! `TAT = slot + spacing` written with compare-and-set on the entry's
//! revision (a lost race reads again), then it sleeps until its slot. Each
//! worker reserves one slot at a time, so slots are spaced by `spacing`
//! whoever takes them: no burst, no window ever above the limit. Times are
//! wall-clock microseconds: workers on several machines need clocks in
//! step to within a small part of `spacing` (NTP is enough at HubSpot's
//! 100 ms spacing).
//!
//! When NATS does not answer within [`ANSWER`], the worker paces itself
//! alone at `1/share` of the rate for [`DEGRADED`], then tries NATS again:
//! `share` workers then stay under the limit together.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::QueueError;

/// The longest a limiter call to NATS may take before we pace alone.
pub const ANSWER: Duration = Duration::from_secs(2);
/// How long we pace alone before asking NATS again.
pub const DEGRADED: Duration = Duration::from_secs(5);

pub struct SharedLimiter {
    store: kv::Store,
    key: String,
    spacing: Duration,
    share: u32,
    /// The entry as we last saw it: (TAT in µs, revision).
    seen: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// Pacing alone until this instant.
    alone_until: Mutex<Option<Instant>>,
    /// The next local slot while pacing alone.
    local_next: Mutex<Instant>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A KV key NATS accepts, from a free-form account name.
pub fn key_for(name: &str) -> String {
    let k: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') { c } else { '_' }).collect();
    if k.is_empty() { "default".into() } else { k }
}

impl SharedLimiter {
    /// The limiter on `bucket`/`key` (the bucket is created if missing):
    /// one request per `spacing` across every worker, `1/share` of that
    /// when NATS is unreachable.
    pub async fn new(
        js: &jetstream::Context,
        bucket: &str,
        key: &str,
        spacing: Duration,
        share: u32,
    ) -> Result<SharedLimiter, QueueError> {
        let store = match js.get_key_value(bucket).await {
            Ok(s) => s,
            Err(_) => {
                // The bucket's stream, made here: the client's
                // `create_key_value` first reads the account's limits in a
                // form nats-server 2.9 does not answer.
                let config = jetstream::stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("engine: shared rate limits (GCRA theoretical arrival times)".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    discard: jetstream::stream::DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    num_replicas: 1,
                    ..Default::default()
                };
                if let Err(e) = js.create_stream(config).await {
                    tracing::debug!(error = %crate::error_chain(&e), "creating the limits bucket (another worker may have)");
                }
                js.get_key_value(bucket)
                    .await
                    .map_err(|e| QueueError::js(format!("opening key-value bucket {bucket}"), &e))?
            }
        };
        Ok(SharedLimiter {
            store,
            key: key_for(key),
            spacing,
            share: share.max(1),
            seen: tokio::sync::Mutex::new(None),
            alone_until: Mutex::new(None),
            local_next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this request's slot.
    pub async fn until_ready(&self) {
        loop {
            let alone = { *self.alone_until.lock().unwrap_or_else(|p| p.into_inner()) };
            if alone.is_some_and(|t| Instant::now() < t) {
                return self.local_slot().await;
            }
            match tokio::time::timeout(ANSWER, self.reserve()).await {
                Ok(Ok(Some(wait))) => {
                    let slot = Instant::now() + wait;
                    tokio::time::sleep_until(slot.into()).await;
                    // Woken late (a loaded machine): sending now would
                    // crowd the next worker's slot, and a window could hold
                    // one request too many. The slot goes unused; take
                    // another.
                    if Instant::now() > slot + self.spacing / 4 {
                        continue;
                    }
                    return;
                }
                // Another worker wrote first: read again.
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => self.go_alone(&e),
                Err(_) => self.go_alone(&format!("no answer within {ANSWER:?}")),
            }
        }
    }

    fn go_alone(&self, why: &str) {
        let mut a = self.alone_until.lock().unwrap_or_else(|p| p.into_inner());
        if a.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(
                key = %self.key,
                error = why,
                share = self.share,
                "shared rate limit unreachable; pacing this worker at 1/{} of the limit for {DEGRADED:?}",
                self.share
            );
        }
        *a = Some(Instant::now() + DEGRADED);
    }

    async fn local_slot(&self) {
        let slot = {
            let mut next = self.local_next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.spacing * self.share;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    /// One compare-and-set: `Some(wait until the slot)`, or `None` when
    /// another worker wrote first (read again and retry).
    async fn reserve(&self) -> Result<Option<Duration>, String> {
        let mut seen = self.seen.lock().await;
        let (tat, revision) = match *seen {
            Some(s) => s,
            None => match self.store.entry(&self.key).await.map_err(|e| crate::error_chain(&e))? {
                Some(e) if e.operation == kv::Operation::Put => (parse(&e.value), e.revision),
                _ => {
                    let now = now_us();
                    match self.store.create(&self.key, Bytes::from(now.to_string())).await {
                        Ok(rev) => (now, rev),
                        Err(_) => {
                            *seen = None;
                            return Ok(None);
                        }
                    }
                }
            },
        };
        let now = now_us();
        let slot = tat.max(now);
        let next = slot + self.spacing.as_micros() as u64;
        match self.store.update(&self.key, Bytes::from(next.to_string()), revision).await {
            Ok(rev) => {
                *seen = Some((next, rev));
                Ok(Some(Duration::from_micros(slot - now)))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                *seen = None;
                Ok(None)
            }
            Err(e) => {
                *seen = None;
                Err(crate::error_chain(&e))
            }
        }
    }
}

fn parse(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_safe() {
        assert_eq!(key_for("https://api.hubapi.com"), "https___api_hubapi_com");
        assert_eq!(key_for(""), "default");
        assert_eq!(key_for("portal-123"), "portal-123");
    }
}
