//! A stream's partition layout: which subject carries partition `p`, how
//! many partitions there are and which columns choose them. The sink that
//! creates the stream writes the layout into the stream's description, so
//! a worker learns its subject from the stream itself and a second
//! producer with another layout is refused instead of scattering keys.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// What the description starts with; the JSON layout follows.
const MARK: &str = "engine queue layout ";

/// The version of the partition function ([`Layout::hash`]): xxHash64
/// (seed 0) of the key's text, modulo the partition count.
pub const HASH: &str = "xxh64-text-v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Subject of a partition, with `{partition}` standing for its index.
    pub subject: String,
    pub partitions: u32,
    pub partition_by: Vec<String>,
    pub hash: String,
}

impl Layout {
    pub fn subject_for(&self, partition: u32) -> String {
        self.subject.replace("{partition}", &partition.to_string())
    }

    /// The subject pattern the stream listens on (`babynames.rows.*`).
    pub fn wildcard(&self) -> String {
        self.subject.replace("{partition}", "*")
    }

    fn describe(&self) -> String {
        format!("{MARK}{}", serde_json::to_string(self).unwrap_or_default())
    }

    fn parse(description: Option<&str>) -> Option<Layout> {
        serde_json::from_str(description?.strip_prefix(MARK)?).ok()
    }

    /// Checks a subject template: NATS tokens, `{partition}` a token of its
    /// own, exactly once.
    pub fn check_subject(subject: &str) -> Result<(), String> {
        if subject.matches("{partition}").count() != 1 {
            return Err(format!("subject `{subject}` must contain `{{partition}}` exactly once"));
        }
        for token in subject.split('.') {
            let ok = token == "{partition}"
                || (!token.is_empty()
                    && !token.contains(['{', '}', '*', '>', ' ', '\t'])
                    && token.chars().all(|c| c.is_ascii_graphic()));
            if !ok {
                return Err(format!(
                    "subject `{subject}`: `{token}` is not a NATS subject token (dot-separated, no spaces or wildcards; `{{partition}}` a token of its own)"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// A message is removed once its worker acknowledged it (after the
    /// worker's checkpoint covering it committed).
    #[default]
    Workqueue,
    /// Messages stay until `max_age` / `max_bytes`.
    Limits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// How to create the stream when it is missing.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub name: String,
    pub layout: Layout,
    pub retention: Retention,
    pub storage: Storage,
    pub replicas: usize,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<i64>,
    pub duplicate_window: Duration,
}

/// A stream name NATS accepts (no `.`, `*`, `>`, whitespace or path separators).
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['.', '*', '>', ' ', '\t', '/', '\\']) || !name.is_ascii() {
        return Err(format!("stream name `{name}` is not valid for NATS (letters, digits, `-` and `_`)"));
    }
    Ok(())
}

/// The stream `spec.name`, created if missing; an existing stream must carry
/// the same layout.
pub async fn ensure(js: &jetstream::Context, spec: &StreamSpec) -> Result<stream::Info, QueueError> {
    match js.get_stream(&spec.name).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| QueueError::js(format!("reading stream {}", spec.name), &e))?.clone();
            match Layout::parse(info.config.description.as_deref()) {
                Some(l) if l == spec.layout => Ok(info),
                Some(l) => Err(QueueError::Layout(format!(
                    "stream {} was made with another layout (subject `{}`, {} partitions by {:?}); this sink wants subject `{}`, {} partitions by {:?}. Changing the partition count would move keys between workers: publish to a new stream, or delete this one once it is drained",
                    spec.name,
                    l.subject,
                    l.partitions,
                    l.partition_by,
                    spec.layout.subject,
                    spec.layout.partitions,
                    spec.layout.partition_by
                ))),
                None => Err(QueueError::Layout(format!(
                    "stream {} exists but was not created by an engine `nats` sink (its description holds no partition layout); name another stream",
                    spec.name
                ))),
            }
        }
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(_)) => {
            // Missing (10059): create it. Another producer may win the race;
            // its stream is then checked like any existing one.
            let config = stream::Config {
                name: spec.name.clone(),
                description: Some(spec.layout.describe()),
                subjects: vec![spec.layout.wildcard()],
                retention: match spec.retention {
                    Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
                    Retention::Limits => stream::RetentionPolicy::Limits,
                },
                storage: match spec.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: spec.replicas.max(1),
                max_age: spec.max_age.unwrap_or_default(),
                max_bytes: spec.max_bytes.unwrap_or(-1),
                duplicate_window: spec.duplicate_window,
                // A full stream refuses new messages: an ingest that cannot
                // publish fails loudly; old messages are never dropped unread.
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(mut s) => {
                    tracing::info!(stream = %spec.name, subject = %spec.layout.wildcard(), "created the stream");
                    Ok(s.info().await.map_err(|e| QueueError::js("reading the new stream", &e))?.clone())
                }
                Err(create) => {
                    let again = Box::pin(read(js, &spec.name)).await;
                    match again {
                        Ok((l, info)) if l == spec.layout => Ok(info),
                        _ => Err(QueueError::js(format!("creating stream {}", spec.name), &create)),
                    }
                }
            }
        }
        Err(e) => Err(QueueError::js(format!("looking up stream {}", spec.name), &e)),
    }
}

/// The layout of an existing stream, for a worker.
pub async fn read(js: &jetstream::Context, name: &str) -> Result<(Layout, stream::Info), QueueError> {
    let mut s = js.get_stream(name).await.map_err(|e| {
        if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(_)) {
            QueueError::Layout(format!(
                "stream {name} does not exist yet: the ingest pipeline's `nats` sink creates it on its first run"
            ))
        } else {
            QueueError::js(format!("looking up stream {name}"), &e)
        }
    })?;
    let info = s.info().await.map_err(|e| QueueError::js(format!("reading stream {name}"), &e))?.clone();
    let layout = Layout::parse(info.config.description.as_deref()).ok_or_else(|| {
        QueueError::Layout(format!(
            "stream {name} was not created by an engine `nats` sink (no partition layout in its description); set the source's `subject` to read it anyway"
        ))
    })?;
    Ok((layout, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_the_description_round_trip() {
        let l = Layout {
            subject: "babynames.rows.{partition}".into(),
            partitions: 3,
            partition_by: vec!["Name".into(), "Year".into()],
            hash: HASH.into(),
        };
        assert_eq!(l.subject_for(2), "babynames.rows.2");
        assert_eq!(l.wildcard(), "babynames.rows.*");
        assert_eq!(Layout::parse(Some(&l.describe())), Some(l));
        assert_eq!(Layout::parse(Some("made by hand")), None);
    }

    #[test]
    fn subject_templates_are_checked() {
        assert!(Layout::check_subject("a.{partition}").is_ok());
        assert!(Layout::check_subject("a.b").is_err());
        assert!(Layout::check_subject("a.p{partition}").is_err());
        assert!(Layout::check_subject("a.{partition}.{partition}").is_err());
        assert!(Layout::check_subject("a..{partition}").is_err());
        assert!(Layout::check_subject("a.*.{partition}").is_err());
        assert!(check_stream_name("babynames").is_ok());
        assert!(check_stream_name("baby.names").is_err());
    }
}
