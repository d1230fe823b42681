//! A worker's reading of one partition: a durable pull consumer filtered to
//! the partition's subject, every message acknowledged (`AckPolicy::Explicit`,
//! which a work-queue stream requires) and only when told to (the `nats`
//! source acknowledges after the checkpoint covering a message committed).
//!
//! The worker's checkpoint, not the consumer, is the truth about where it
//! is: [`Partition::open`] re-creates the durable consumer to start right
//! after `max(checkpoint, consumer's ack floor)`. Re-creating instead of
//! re-using it matters after a kill: messages the dead process fetched but
//! never acknowledged would otherwise come back only after `ack_wait`.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;

use crate::{QueueError, retrying};

/// What a worker reads.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    pub stream: String,
    pub durable: String,
    pub subject: String,
    pub ack_wait: Duration,
    /// How long NATS may be unreachable before an operation fails the run.
    pub patience: Duration,
}

/// Messages waiting for this worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Not yet processed for good: not yet delivered to the worker, or
    /// delivered but not yet covered by a committed checkpoint.
    pub messages: u64,
    /// Delivered but not yet acknowledged (not yet covered by a committed
    /// checkpoint).
    pub unacknowledged: u64,
    /// Bytes of those messages, estimated from the stream's average
    /// message size.
    pub bytes: u64,
}

pub struct Partition {
    js: jetstream::Context,
    spec: PartitionSpec,
    consumer: PullConsumer,
    failures: u32,
}

impl Partition {
    /// Opens the partition to read the messages after stream sequence
    /// `after` (0: from the oldest message the stream still holds, or after
    /// what the existing consumer acknowledged).
    pub async fn open(js: jetstream::Context, spec: PartitionSpec, after: u64) -> Result<Partition, QueueError> {
        let consumer = create(&js, &spec, after).await?;
        Ok(Partition { js, spec, consumer, failures: 0 })
    }

    /// Up to `max` messages, waiting at most `wait` for the first. An empty
    /// answer means nothing arrived in time; NATS errors are retried (and
    /// the consumer re-created after repeated failures) until `patience`.
    pub async fn fetch(&mut self, max: usize, wait: Duration, after: u64) -> Result<Vec<Message>, QueueError> {
        let started = std::time::Instant::now();
        loop {
            match self.try_fetch(max, wait).await {
                Ok(msgs) => {
                    self.failures = 0;
                    return Ok(msgs);
                }
                Err(e) => {
                    self.failures += 1;
                    if started.elapsed() >= self.spec.patience {
                        return Err(QueueError::JetStream {
                            context: format!(
                                "reading {} (NATS failing for {:.0?})",
                                self.spec.subject,
                                started.elapsed()
                            ),
                            cause: e,
                        });
                    }
                    tracing::warn!(subject = %self.spec.subject, error = %e, "reading the partition failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(self.failures.min(10)))).await;
                    if self.failures.is_multiple_of(3) {
                        // The consumer may be gone (a server that lost its
                        // state, someone deleting it): make it again where we are.
                        if let Ok(c) = create(&self.js, &self.spec, after).await {
                            self.consumer = c;
                        }
                    }
                }
            }
        }
    }

    async fn try_fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, String> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max.max(1))
            .expires(wait)
            .messages()
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            out.push(m.map_err(|e| crate::error_chain(&*e))?);
        }
        Ok(out)
    }

    /// Acknowledges the messages whose ack subjects are `replies`, and
    /// waits until the server has them.
    pub async fn ack(&self, replies: &[String]) -> Result<(), QueueError> {
        if replies.is_empty() {
            return Ok(());
        }
        let client = self.js.client();
        retrying("acknowledging messages", self.spec.patience, || {
            let client = client.clone();
            async move {
                for r in replies {
                    client.publish(r.clone(), bytes::Bytes::new()).await?;
                }
                client
                    .flush()
                    .await
                    .map_err(|e| async_nats::PublishError::with_source(async_nats::client::PublishErrorKind::Send, e))
            }
        })
        .await
    }

    /// Reads this partition's lag apart from the reader (a task that
    /// samples it while the reader waits on a slow sink).
    pub fn probe(&self) -> Probe {
        Probe { js: self.js.clone(), stream: self.spec.stream.clone(), durable: self.spec.durable.clone() }
    }
}

/// (Re-)creates the durable consumer to start after `after` or the old
/// consumer's acknowledged floor, whichever is later.
async fn create(js: &jetstream::Context, spec: &PartitionSpec, after: u64) -> Result<PullConsumer, QueueError> {
    let stream =
        retrying(&format!("looking up stream {}", spec.stream), spec.patience, || js.get_stream(&spec.stream)).await?;
    let mut floor = after;
    match stream.consumer_info(&spec.durable).await {
        Ok(info) => {
            if info.config.filter_subject != spec.subject {
                return Err(QueueError::Layout(format!(
                    "consumer {} on stream {} reads `{}`, not `{}`: each partition needs its own consumer name",
                    spec.durable, spec.stream, info.config.filter_subject, spec.subject
                )));
            }
            floor = floor.max(info.ack_floor.stream_sequence);
            stream
                .delete_consumer(&spec.durable)
                .await
                .map_err(|e| QueueError::js(format!("re-creating consumer {}", spec.durable), &e))?;
        }
        Err(e) if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound) => {}
        Err(e) => return Err(QueueError::js(format!("reading consumer {}", spec.durable), &e)),
    }
    let start = floor + 1;
    // A work-queue stream holds only what is not acknowledged yet and lets
    // consumers start nowhere but at its oldest message; what the
    // checkpoint already covers is skipped by the reader.
    let workqueue = stream.cached_info().config.retention == jetstream::stream::RetentionPolicy::WorkQueue;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some("engine nats source: acknowledged after each committed checkpoint".into()),
        filter_subject: spec.subject.clone(),
        deliver_policy: if floor == 0 || workqueue {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: start }
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: -1,
        // Everything between two checkpoints is unacknowledged: never let
        // that stall delivery.
        max_ack_pending: 1_000_000,
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| QueueError::js(format!("creating consumer {} on {}", spec.durable, spec.subject), &e))?;
    tracing::info!(consumer = %spec.durable, subject = %spec.subject, start, "reading the partition");
    Ok(consumer)
}

/// Reads a consumer's lag.
#[derive(Clone)]
pub struct Probe {
    js: jetstream::Context,
    stream: String,
    durable: String,
}

impl Probe {
    pub async fn lag(&self) -> Result<Lag, QueueError> {
        let mut stream =
            self.js.get_stream(&self.stream).await.map_err(|e| QueueError::js("reading the stream", &e))?;
        let info = stream.consumer_info(&self.durable).await.map_err(|e| QueueError::js("reading the consumer", &e))?;
        let s = stream.info().await.map_err(|e| QueueError::js("reading the stream", &e))?.state.clone();
        let avg = s.bytes.checked_div(s.messages).unwrap_or(0);
        let messages = info.num_pending + info.num_ack_pending as u64;
        Ok(Lag { messages, unacknowledged: info.num_ack_pending as u64, bytes: messages * avg })
    }
}
