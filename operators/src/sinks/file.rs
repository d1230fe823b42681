//! `kind = "file"` sink: CSV, Parquet or NDJSON written through the object
//! store. A reader never sees half a file, and a failed run publishes
//! nothing: rows go to a temporary name beside the target (`finish`
//! completes it) and it is renamed over the target only in `commit`, which
//! the runtime calls once every operator of the run succeeded. On local disk
//! the rename is atomic; on S3 it is a server-side copy.

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::api::{BuildContext, Collector, Operator, OperatorError};
use crate::batch::Batch;
use crate::storage::{Location, resolve};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    Csv,
    Parquet,
    #[serde(alias = "jsonl", alias = "json")]
    Ndjson,
}

fn yes() -> bool {
    true
}
fn comma() -> String {
    ",".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// A path, `file:///…` or `s3://bucket/key`.
    pub path: String,
    /// `csv`, `parquet` or `ndjson`; by default from the file extension.
    pub format: Option<SinkFormat>,
    /// CSV only: write a header line.
    #[serde(default = "yes")]
    pub header: bool,
    /// CSV only.
    #[serde(default = "comma")]
    pub delimiter: String,
}

enum Writer {
    Text(BufWriter),
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
}

pub struct FileSink {
    id: String,
    cfg: FileSinkConfig,
    format: SinkFormat,
    delimiter: u8,
    loc: Location,
    /// Where bytes go until the file is complete.
    staging: Path,
    writer: Option<Writer>,
    schema: Option<SchemaRef>,
    rows: u64,
}

pub fn build(ctx: &BuildContext, cfg: FileSinkConfig) -> Result<FileSink, OperatorError> {
    let lower = cfg.path.to_ascii_lowercase();
    let format = match cfg.format {
        Some(f) => f,
        None if lower.ends_with(".csv") => SinkFormat::Csv,
        None if lower.ends_with(".parquet") => SinkFormat::Parquet,
        None if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") || lower.ends_with(".json") => {
            SinkFormat::Ndjson
        }
        None => {
            return Err(OperatorError::Config(format!(
                "cannot tell the format of `{}` from its name: set format = \"csv\", \"parquet\" or \"ndjson\"",
                cfg.path
            )));
        }
    };
    let delimiter = match cfg.delimiter.as_bytes() {
        [b] if b.is_ascii() => *b,
        _ => {
            return Err(OperatorError::Config(format!(
                "delimiter must be one ASCII character, got `{}`",
                cfg.delimiter
            )));
        }
    };
    let loc = resolve(&cfg.path)?;
    // The sink id keeps two sinks of one run apart, the pid two runs.
    let name = loc.path.filename().unwrap_or("out");
    let tmp = format!(".{name}.tmp-{}-{}", ctx.id, std::process::id());
    let mut parts: Vec<_> = loc.path.parts().collect();
    parts.pop();
    parts.push(tmp.as_str().into());
    let staging = Path::from_iter(parts);
    Ok(FileSink { id: ctx.id.clone(), cfg, format, delimiter, loc, staging, writer: None, schema: None, rows: 0 })
}

impl FileSink {
    fn err(&self, what: &str, e: object_store::Error) -> OperatorError {
        OperatorError::storage(format!("{what} {}", self.loc.display), e)
    }

    async fn open(&mut self, schema: &SchemaRef) -> Result<(), OperatorError> {
        let buf = BufWriter::new(self.loc.store.clone(), self.staging.clone());
        self.writer = Some(match self.format {
            SinkFormat::Parquet => {
                let w = AsyncArrowWriter::try_new(buf, schema.clone(), None)
                    .map_err(|e| OperatorError::parquet(format!("cannot start {}", self.loc.display), e))?;
                Writer::Parquet(Box::new(w))
            }
            _ => Writer::Text(buf),
        });
        self.schema = Some(schema.clone());
        Ok(())
    }

    fn encode(&self, batch: &Batch, first: bool) -> Result<Vec<u8>, OperatorError> {
        let mut buf = Vec::with_capacity(batch.records.get_array_memory_size() / 2);
        let ctx = |e| OperatorError::arrow(format!("encoding rows for {}", self.loc.display), e);
        match self.format {
            SinkFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(first && self.cfg.header)
                    .with_delimiter(self.delimiter)
                    .build(&mut buf);
                w.write(&batch.records).map_err(ctx)?;
            }
            SinkFormat::Ndjson => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(&batch.records).map_err(ctx)?;
                w.finish().map_err(ctx)?;
            }
            SinkFormat::Parquet => {}
        }
        Ok(buf)
    }
}

#[async_trait]
impl Operator for FileSink {
    async fn process(&mut self, batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        let first = self.writer.is_none();
        if first {
            self.open(&batch.records.schema()).await?;
        }
        if self.schema.as_ref() != Some(&batch.records.schema()) && !first {
            return Err(OperatorError::Data(format!(
                "{} received rows of a different schema than the first batch; one file holds one schema",
                self.id
            )));
        }
        let bytes = self.encode(&batch, first)?;
        match self.writer.as_mut() {
            Some(Writer::Text(w)) => w
                .put(Bytes::from(bytes))
                .await
                .map_err(|e| OperatorError::storage(format!("writing {}", self.loc.display), e))?,
            Some(Writer::Parquet(w)) => w
                .write(&batch.records)
                .await
                .map_err(|e| OperatorError::parquet(format!("writing {}", self.loc.display), e))?,
            None => {}
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        if self.writer.is_none() {
            // No rows at all: still leave a (empty) file, so "no output" and
            // "did not run" can be told apart.
            let w = BufWriter::new(self.loc.store.clone(), self.staging.clone());
            self.writer = Some(Writer::Text(w));
        }
        match self.writer.take() {
            Some(Writer::Text(mut w)) => {
                w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", self.loc.display)))?
            }
            Some(Writer::Parquet(w)) => {
                w.close().await.map_err(|e| OperatorError::parquet(format!("completing {}", self.loc.display), e))?;
            }
            None => {}
        }
        tracing::debug!(path = %self.loc.display, rows = self.rows, "file staged");
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), OperatorError> {
        self.loc.store.rename(&self.staging, &self.loc.path).await.map_err(|e| self.err("cannot publish", e))?;
        tracing::info!(path = %self.loc.display, rows = self.rows, "file written");
        Ok(())
    }

    async fn abort(&mut self) {
        match self.writer.take() {
            Some(Writer::Text(mut w)) => {
                let _ = w.abort().await;
            }
            Some(Writer::Parquet(_)) | None => {}
        }
        let _ = self.loc.store.delete(&self.staging).await;
    }
}
