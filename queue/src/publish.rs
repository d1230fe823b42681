//! Publishing with the server's acknowledgement: a window of messages in
//! flight, every one of them re-sent (same message id, so the stream's
//! duplicate window drops a copy that did arrive) until the server
//! acknowledged it or patience ran out. [`Publisher::flush`] returns only
//! once every message published before it is stored: the sink's barrier
//! waits on it.
//!
//! A re-sent message may land after messages published later (a timeout on
//! one, success on the next): readers must not assume that a partition's
//! row sequences arrive in order (the `nats` source does not).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use crate::{QueueError, error_chain};

/// One message, kept until the server acknowledged it.
struct Pending {
    subject: String,
    id: String,
    headers: HeaderMap,
    payload: Bytes,
    ack: Option<PublishAckFuture>,
    first_failure: Option<Instant>,
}

pub struct Publisher {
    js: jetstream::Context,
    window: VecDeque<Pending>,
    max_in_flight: usize,
    patience: Duration,
    /// Messages the stream reported as duplicates (already stored).
    pub duplicates: u64,
    pub published: u64,
    pub bytes: u64,
}

impl Publisher {
    pub fn new(js: jetstream::Context, max_in_flight: usize, patience: Duration) -> Self {
        Publisher {
            js,
            window: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            patience,
            duplicates: 0,
            published: 0,
            bytes: 0,
        }
    }

    /// The largest payload the server takes (its `max_payload`), minus room
    /// for our headers.
    pub fn max_payload(&self) -> usize {
        self.js.client().server_info().max_payload.saturating_sub(1024)
    }

    /// Sends one message; waits for the oldest acknowledgement when the
    /// window is full.
    pub async fn publish(
        &mut self,
        subject: String,
        id: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), QueueError> {
        while self.window.len() >= self.max_in_flight {
            self.settle_oldest().await?;
        }
        let mut p = Pending { subject, id, headers, payload, ack: None, first_failure: None };
        self.send(&mut p).await?;
        self.window.push_back(p);
        Ok(())
    }

    /// Waits until the server acknowledged every message published so far.
    pub async fn flush(&mut self) -> Result<(), QueueError> {
        while !self.window.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn send(&self, p: &mut Pending) -> Result<(), QueueError> {
        loop {
            let msg = PublishMessage::build().headers(p.headers.clone()).payload(p.payload.clone()).message_id(&p.id);
            match self.js.send_publish(p.subject.clone(), msg).await {
                Ok(ack) => {
                    p.ack = Some(ack);
                    return Ok(());
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(QueueError::js(format!("publishing {} ({} bytes)", p.id, p.payload.len()), &e));
                }
                Err(e) => self.failed(p, error_chain(&e)).await?,
            }
        }
    }

    /// Records a failure of `p` and waits before the next attempt; errs once
    /// the failures have lasted longer than the patience.
    async fn failed(&self, p: &mut Pending, error: String) -> Result<(), QueueError> {
        let since = *p.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.patience {
            return Err(QueueError::JetStream {
                context: format!("publishing to {} (no acknowledgement for {:.0?})", p.subject, since.elapsed()),
                cause: error,
            });
        }
        tracing::warn!(subject = %p.subject, %error, "publish not acknowledged; sending it again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), QueueError> {
        let Some(mut p) = self.window.pop_front() else { return Ok(()) };
        loop {
            let Some(ack) = p.ack.take() else {
                self.send(&mut p).await?;
                continue;
            };
            match ack.await {
                Ok(a) => {
                    if a.duplicate {
                        self.duplicates += 1;
                    } else {
                        self.published += 1;
                        self.bytes += p.payload.len() as u64;
                    }
                    return Ok(());
                }
                Err(e) => {
                    // The stream may have it or not; the same id again makes
                    // sure it has it once.
                    self.failed(&mut p, error_chain(&e)).await?;
                    self.send(&mut p).await?;
                }
            }
        }
    }
}
