//! Every operator kind the pipeline file may name, with its role, its output
//! ports and how to check and build its options. Adding an operator is one
//! folder plus one entry in [`KINDS`].

use serde::de::DeserializeOwned;

use crate::api::{BuildContext, Operator, OperatorError, Source};
use crate::{sinks, sources, transforms};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Transform,
    Sink,
}

impl Role {
    /// The pipeline-file table the role lives in.
    pub fn table(self) -> &'static str {
        match self {
            Role::Source => "sources",
            Role::Transform => "transforms",
            Role::Sink => "sinks",
        }
    }
}

/// A built operator, ready for the runtime.
pub enum Built {
    Source(Box<dyn Source>),
    Operator(Box<dyn Operator>),
}

/// Where an option error is: the path inside the component's table
/// (`rules.Year.min`, `schema[2].type`) and serde's message.
#[derive(Debug)]
pub struct OptionError {
    pub path: Vec<PathSegment>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KindSpec({} {})", self.role.table(), self.name)
    }
}

pub struct KindSpec {
    pub name: &'static str,
    pub role: Role,
    /// Output ports; the first is the default one.
    pub ports: &'static [&'static str],
    pub about: &'static str,
    /// Options a checkpoint depends on: when one changes, a run refuses to
    /// resume (the state would not mean the same thing). Other options
    /// (a URL, a rate limit) may change between a crash and the restart.
    pub state_options: &'static [&'static str],
    /// Whether the kind accepts a `deletes` input (keys to delete from its
    /// target, e.g. `changes.deleted`).
    pub deletes: bool,
    /// Checks options without building anything.
    pub check: fn(&serde_json::Value) -> Result<(), OptionError>,
    pub build: fn(&BuildContext, serde_json::Value) -> Result<Built, OperatorError>,
}

fn parse<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, OptionError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(PathSegment::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                serde_path_to_error::Segment::Enum { variant } => Some(PathSegment::Key(variant.clone())),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        OptionError { path, message: e.into_inner().to_string() }
    })
}

/// A problem with the component's options as a whole (no single key).
fn whole(message: String) -> OptionError {
    OptionError { path: Vec::new(), message }
}

fn check<T: DeserializeOwned>(v: &serde_json::Value) -> Result<(), OptionError> {
    parse::<T>(v).map(|_| ())
}

fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, OperatorError> {
    parse::<T>(&v).map_err(|e| OperatorError::Config(e.message))
}

pub static KINDS: &[KindSpec] = &[
    KindSpec {
        name: "file",
        role: Role::Source,
        ports: &["out", "rejects"],
        state_options: &["format", "header", "delimiter", "quote", "schema", "infer_rows"],
        deletes: false,
        about: "CSV or Parquet from a path, file:// or s3:// URL",
        check: check::<sources::file::FileSourceConfig>,
        build: |ctx, v| Ok(Built::Source(Box::new(sources::file::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "kaggle",
        role: Role::Source,
        ports: &["out", "rejects"],
        state_options: &["dataset", "version", "file", "header", "delimiter", "quote", "schema", "infer_rows"],
        deletes: false,
        about: "a Kaggle dataset file, downloaded, staged (local or S3) and read as CSV",
        check: check::<sources::kaggle::KaggleSourceConfig>,
        build: |ctx, v| Ok(Built::Source(Box::new(sources::kaggle::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "nats",
        role: Role::Source,
        ports: &["out"],
        state_options: &["stream", "partition", "subject"],
        deletes: false,
        about: "one partition of a NATS JetStream stream a `nats` sink fills (a sync worker)",
        check: |v| sources::nats::check(&parse(v)?).map_err(whole),
        build: |ctx, v| Ok(Built::Source(Box::new(sources::nats::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "validate",
        role: Role::Transform,
        ports: &["out", "rejects"],
        state_options: &[],
        deletes: false,
        about: "per-column rules; violators go to `rejects`",
        check: check::<transforms::validate::ValidateConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(transforms::validate::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "dedupe",
        role: Role::Transform,
        ports: &["out", "duplicates"],
        state_options: &["key"],
        deletes: false,
        about: "drops rows whose key was seen before (first wins)",
        check: check::<transforms::dedupe::DedupeConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(transforms::dedupe::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "changes",
        role: Role::Transform,
        ports: &["out", "deleted"],
        state_options: &["key", "ignore"],
        deletes: false,
        about: "passes rows new or changed since the last completed run; vanished keys to `deleted`",
        check: check::<transforms::changes::ChangesConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(transforms::changes::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "select",
        role: Role::Transform,
        ports: &["out"],
        state_options: &["columns", "row_number"],
        deletes: false,
        about: "keeps, renames, casts columns; numbers rows",
        check: check::<transforms::select::SelectConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(transforms::select::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "file",
        role: Role::Sink,
        ports: &[],
        state_options: &["path", "format", "header", "delimiter", "formula_guard"],
        deletes: false,
        about: "CSV, Parquet or NDJSON to a path, file:// or s3:// URL",
        check: check::<sinks::file::FileSinkConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(sinks::file::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "sql",
        role: Role::Sink,
        ports: &[],
        state_options: &["table", "key", "columns", "mode"],
        deletes: true,
        about: "MySQL/MariaDB or SQLite table, batched idempotent upserts",
        check: check::<sinks::sql::SqlSinkConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(sinks::sql::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "hubspot",
        role: Role::Sink,
        ports: &["rejects"],
        state_options: &["base_url", "object", "id_property", "id", "outbox"],
        deletes: true,
        about: "HubSpot CRM batch upserts (or an outbox file without a token)",
        check: check::<sinks::hubspot::HubSpotConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(sinks::hubspot::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "nats",
        role: Role::Sink,
        ports: &[],
        state_options: &["stream", "subject", "partition_by", "partitions"],
        deletes: false,
        about: "NATS JetStream stream, rows partitioned by key for sync workers",
        check: |v| sinks::nats::check(&parse(v)?).map(|_| ()).map_err(whole),
        build: |ctx, v| Ok(Built::Operator(Box::new(sinks::nats::build(ctx, typed(v)?)?))),
    },
    KindSpec {
        name: "blackhole",
        role: Role::Sink,
        ports: &[],
        state_options: &[],
        deletes: false,
        about: "discards everything (benchmarks)",
        check: check::<sinks::blackhole::BlackholeConfig>,
        build: |ctx, v| Ok(Built::Operator(Box::new(sinks::blackhole::build(ctx, typed(v)?)?))),
    },
];

/// The kind `name` in `role`, if it exists.
pub fn find(role: Role, name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.role == role && k.name == name)
}

/// Kind names available in `role`, for "did you mean" and error messages.
pub fn names(role: Role) -> Vec<&'static str> {
    KINDS.iter().filter(|k| k.role == role).map(|k| k.name).collect()
}
