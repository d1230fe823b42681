//! `kind = "file"`: CSV or Parquet read as a stream from local disk or S3.
//! Owns opening the object and pulling its bytes in bounded chunks; the CSV
//! dialect lives in [`super::csv`], Parquet decoding in the parquet crate.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
// ParquetObjectReader is deprecated upstream in favour of hand-written
// AsyncFileReader impls; it still does exactly what we need (ranged reads
// through object_store), so we keep it until the replacement settles.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use serde::Deserialize;

use super::csv::{ColumnDecl, CsvDecoder, CsvOptions};
use crate::api::{BuildContext, Collector, OUT, OperatorError, Source, SourceState};
use crate::batch::Batch;
use crate::storage::{Location, resolve};

/// Rejects port index of sources that have one.
pub const REJECTS: usize = 1;

/// Bytes asked of the store per read: large enough to amortise a request,
/// small enough that a slow consumer holds little.
const CHUNK: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Send the bad line to the `rejects` port and go on.
    #[default]
    Reject,
    /// Stop the run at the first bad line.
    Fail,
}

fn yes() -> bool {
    true
}
fn dquote() -> String {
    "\"".into()
}
fn thousand() -> usize {
    1000
}

/// Options of `kind = "file"` sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A path, `file:///…` or `s3://bucket/key`.
    pub path: String,
    /// `csv` or `parquet`; by default from the file extension.
    pub format: Option<Format>,
    #[serde(default = "yes")]
    pub header: bool,
    /// Default `,` (tab for `.tsv` files).
    pub delimiter: Option<String>,
    #[serde(default = "dquote")]
    pub quote: String,
    /// Declared columns; without it, types are inferred from the first rows.
    pub schema: Option<Vec<ColumnDecl>>,
    #[serde(default = "thousand")]
    pub infer_rows: usize,
    #[serde(default)]
    pub on_error: OnError,
    /// A CSV record longer than this is rejected (an unterminated quote
    /// would otherwise swallow the rest of the file).
    #[serde(default = "one_mib")]
    pub max_record_bytes: usize,
}

fn one_mib() -> usize {
    1 << 20
}

impl FileSourceConfig {
    fn format(&self) -> Result<Format, OperatorError> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        let lower = self.path.to_ascii_lowercase();
        if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Ok(Format::Parquet)
        } else if lower.ends_with(".csv") || lower.ends_with(".tsv") || lower.ends_with(".txt") {
            Ok(Format::Csv)
        } else {
            Err(OperatorError::Config(format!(
                "cannot tell the format of `{}` from its name: set format = \"csv\" or \"parquet\"",
                self.path
            )))
        }
    }
}

fn single_byte(name: &str, s: &str) -> Result<u8, OperatorError> {
    let s = if s == "\\t" { "\t" } else { s };
    match s.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(OperatorError::Config(format!("{name} must be a single ASCII character, got `{s}`"))),
    }
}

#[allow(deprecated)]
enum Reading {
    NotOpen,
    Csv {
        decoder: Box<CsvDecoder>,
        meta: ObjectMeta,
        offset: u64,
        stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    },
    Parquet {
        stream: parquet::arrow::async_reader::ParquetRecordBatchStream<ParquetObjectReader>,
        next_row: u64,
    },
    Done,
}

pub struct FileSource {
    cfg: FileSourceConfig,
    ctx: BuildContext,
    format: Format,
    csv: CsvOptions,
    loc: Location,
    state: Reading,
}

pub fn build(ctx: &BuildContext, cfg: FileSourceConfig) -> Result<FileSource, OperatorError> {
    let format = cfg.format()?;
    let csv = CsvOptions {
        header: cfg.header,
        delimiter: match &cfg.delimiter {
            Some(d) => single_byte("delimiter", d)?,
            None if cfg.path.to_ascii_lowercase().ends_with(".tsv") => b'\t',
            None => b',',
        },
        quote: single_byte("quote", &cfg.quote)?,
        schema: cfg.schema.clone(),
        infer_rows: cfg.infer_rows,
        batch_size: ctx.batch_size,
        max_record_bytes: cfg.max_record_bytes.max(1),
    };
    if format == Format::Parquet {
        // The Parquet schema is in the file; CSV options would be silently
        // ignored, which hides a mistake.
        let csv_only = [
            ("schema", cfg.schema.is_some()),
            ("header", !cfg.header),
            ("delimiter", cfg.delimiter.is_some()),
            ("quote", cfg.quote != "\""),
            ("infer_rows", cfg.infer_rows != 1000),
            ("on_error", cfg.on_error != OnError::Reject),
            ("max_record_bytes", cfg.max_record_bytes != 1 << 20),
        ];
        if let Some((name, _)) = csv_only.iter().find(|(_, set)| *set) {
            return Err(OperatorError::Config(format!(
                "`{name}` applies to CSV input only; `{}` is Parquet",
                cfg.path
            )));
        }
    }
    let loc = resolve(&cfg.path)?;
    Ok(FileSource { cfg, ctx: ctx.clone(), format, csv, loc, state: Reading::NotOpen })
}

impl FileSource {
    /// Emits what the decoder has ready; with `on_error = "fail"` the first
    /// reject stops the run instead.
    async fn drain(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let Reading::Csv { decoder, .. } = &mut self.state else { return Ok(()) };
        if let Some(rejects) = decoder.take_rejects() {
            if self.cfg.on_error == OnError::Fail {
                let line = rejects.line(0).unwrap_or_default();
                let reason = crate::rejects::row_as_json(&rejects.records, 0);
                return Err(OperatorError::Data(format!(
                    "bad line {line} in {} (on_error = \"fail\"): {reason}",
                    self.loc.display
                )));
            }
            out.emit(REJECTS, rejects).await?;
        }
        while let Some(b) = decoder.take_ready() {
            out.emit(OUT, b).await?;
        }
        Ok(())
    }
}

#[allow(deprecated)]
#[async_trait]
impl Source for FileSource {
    async fn open(&mut self) -> Result<(), OperatorError> {
        let object = self.loc.display.clone();
        let meta = self
            .loc
            .store
            .head(&self.loc.path)
            .await
            .map_err(|e| OperatorError::storage(format!("cannot open {object}"), e))?;
        tracing::info!(object = %object, size = meta.size, format = ?self.format, "reading");
        self.state = match self.format {
            Format::Csv => {
                let decoder = Box::new(CsvDecoder::new(&self.ctx.id, &object, self.csv.clone()));
                // S3 streams one GET; local files are read in ranged chunks
                // (one blocking read each instead of one per 8 KiB).
                let stream = if self.loc.is_local {
                    None
                } else {
                    let r = self
                        .loc
                        .store
                        .get(&self.loc.path)
                        .await
                        .map_err(|e| OperatorError::storage(format!("cannot read {object}"), e))?;
                    Some(r.into_stream())
                };
                Reading::Csv { decoder, meta, offset: 0, stream }
            }
            Format::Parquet => {
                let reader = || {
                    ParquetObjectReader::new(self.loc.store.clone(), self.loc.path.clone()).with_file_size(meta.size)
                };
                let builder = match ParquetRecordBatchStreamBuilder::new(reader()).await {
                    Ok(b) => b,
                    // Some writers (e.g. R's nanoparquet) embed an Arrow schema
                    // that arrow-rs's flatbuffer verifier refuses; the Parquet
                    // schema alone is enough to read the data.
                    Err(e) => {
                        tracing::warn!(object = %object, error = %e, "ignoring the embedded Arrow schema");
                        let opts = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
                        ParquetRecordBatchStreamBuilder::new_with_options(reader(), opts).await.map_err(|e| {
                            OperatorError::parquet(format!("cannot read the Parquet footer of {object}"), e)
                        })?
                    }
                };
                let stream = builder
                    .with_batch_size(self.ctx.batch_size)
                    .build()
                    .map_err(|e| OperatorError::parquet(format!("cannot read {object}"), e))?;
                Reading::Parquet { stream, next_row: 1 }
            }
        };
        Ok(())
    }

    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        let object = self.loc.display.clone();
        match &mut self.state {
            Reading::NotOpen => Err(OperatorError::Data("source read before it was opened".into())),
            Reading::Done => Ok(SourceState::Done),
            Reading::Csv { decoder, meta, offset, stream } => {
                let chunk = match stream {
                    Some(s) => s
                        .next()
                        .await
                        .transpose()
                        .map_err(|e| OperatorError::storage(format!("reading {object}"), e))?,
                    None if *offset < meta.size => {
                        let end = (*offset + CHUNK).min(meta.size);
                        let bytes = self
                            .loc
                            .store
                            .get_range(&self.loc.path, *offset..end)
                            .await
                            .map_err(|e| OperatorError::storage(format!("reading {object}"), e))?;
                        Some(bytes)
                    }
                    None => None,
                };
                let finished = match chunk {
                    Some(bytes) => {
                        *offset += bytes.len() as u64;
                        decoder.feed(&bytes)?;
                        false
                    }
                    None => {
                        decoder.finish()?;
                        true
                    }
                };
                self.drain(out).await?;
                if finished {
                    self.state = Reading::Done;
                    return Ok(SourceState::Done);
                }
                Ok(SourceState::More)
            }
            Reading::Parquet { stream, next_row } => match stream.next().await {
                Some(Ok(records)) => {
                    let n = records.num_rows() as u64;
                    let lines = arrow::array::UInt64Array::from_iter_values(*next_row..*next_row + n);
                    *next_row += n;
                    out.emit(OUT, Batch::with_lines(records, lines)).await?;
                    Ok(SourceState::More)
                }
                Some(Err(e)) => Err(OperatorError::parquet(format!("reading {object}"), e)),
                None => {
                    self.state = Reading::Done;
                    Ok(SourceState::Done)
                }
            },
        }
    }
}
