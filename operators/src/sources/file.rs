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
use serde::{Deserialize, Serialize};

use super::csv::{ColumnDecl, CsvDecoder, CsvOptions, DecoderPosition};
use crate::api::{BuildContext, Collector, OUT, OperatorError, Resume, Snapshot, Source, SourceState};
use crate::batch::Batch;
use crate::storage::{Location, resolve};

/// Rejects port index of sources that have one.
pub const REJECTS: usize = 1;

/// Bytes asked of the store per read: large enough to amortise a request,
/// small enough that a slow consumer holds little.
const CHUNK: u64 = 1 << 20;
/// Bytes fed to the CSV decoder per step (a few thousand rows).
const FEED: usize = 64 << 10;

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
        /// Bytes of the object fed to the decoder.
        offset: u64,
        /// Bytes of the object read from the store (`offset` plus `buf`).
        fetched: u64,
        /// Read, not yet fed.
        buf: bytes::Bytes,
        stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    },
    Parquet {
        stream: parquet::arrow::async_reader::ParquetRecordBatchStream<ParquetObjectReader>,
        next_row: u64,
        meta: ObjectMeta,
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
    /// Set by `restore`: where to continue, checked against the object at `open`.
    resume: Option<FileSourceState>,
    /// Rows emitted by this source (and the run it resumes), for `position`.
    rows: u64,
    last: Option<FileSourceState>,
}

/// A file source's checkpoint: which object (and which version of it), and
/// where in it the next unread row starts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSourceState {
    pub object: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub version: Option<String>,
    /// CSV: byte offset of the next record; Parquet: rows already read.
    pub offset: u64,
    /// CSV decoder position (header, types, line); none before the schema
    /// settled, in which case `offset` is 0.
    pub csv: Option<DecoderPosition>,
    /// Rows emitted (good rows plus rejects) up to the offset.
    pub rows: u64,
    pub done: bool,
}

/// `1234567` → `1,234,567`, for people.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    Ok(FileSource {
        cfg,
        ctx: ctx.clone(),
        format,
        csv,
        loc,
        state: Reading::NotOpen,
        resume: None,
        rows: 0,
        last: None,
    })
}

impl FileSource {
    /// Emits what the decoder has ready; with `on_error = "fail"` the first
    /// reject stops the run instead.
    /// Emits what the decoder has ready, at most `limit` data batches: one
    /// step stays short, so a barrier (or a stop) waits for little.
    async fn drain(&mut self, out: &mut Collector, limit: usize) -> Result<(), OperatorError> {
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
            self.rows += rejects.num_rows() as u64;
            out.emit(REJECTS, rejects).await?;
        }
        for _ in 0..limit {
            let Some(b) = decoder.take_ready() else { break };
            self.rows += b.num_rows() as u64;
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
        let resume = self.resume.take();
        if let Some(r) = &resume {
            let mut changed = Vec::new();
            if r.object != object {
                changed.push(format!("object {} → {}", r.object, object));
            }
            if r.size != meta.size {
                changed.push(format!("size {} → {} bytes", r.size, meta.size));
            }
            if r.e_tag.is_some() && r.e_tag != meta.e_tag {
                changed.push(format!(
                    "ETag {} → {}",
                    r.e_tag.as_deref().unwrap_or("-"),
                    meta.e_tag.as_deref().unwrap_or("-")
                ));
            }
            if r.version.is_some() && r.version != meta.version {
                changed.push("object version".to_string());
            }
            if !changed.is_empty() {
                return Err(OperatorError::InputChanged(format!(
                    "the input of source `{}` changed since the checkpoint ({}): resuming at byte/row {} of a different object would skip or repeat rows; run with --from-scratch to start over on the new input",
                    self.ctx.id,
                    changed.join(", "),
                    thousands(r.offset)
                )));
            }
            self.rows = r.rows;
            if r.done {
                self.state = Reading::Done;
                return Ok(());
            }
        }
        let start = resume.as_ref().map(|r| r.offset).unwrap_or(0);
        self.state = match self.format {
            Format::Csv => {
                let decoder = match resume.as_ref().and_then(|r| r.csv.as_ref()) {
                    Some(pos) => Box::new(CsvDecoder::resume(&self.ctx.id, &object, self.csv.clone(), pos)?),
                    None => Box::new(CsvDecoder::new(&self.ctx.id, &object, self.csv.clone())),
                };
                // S3 streams one GET; local files are read in ranged chunks
                // (one blocking read each instead of one per 8 KiB).
                let stream = if self.loc.is_local {
                    None
                } else {
                    let opts = object_store::GetOptions {
                        range: (start > 0).then_some(object_store::GetRange::Offset(start)),
                        ..Default::default()
                    };
                    let r = self
                        .loc
                        .store
                        .get_opts(&self.loc.path, opts)
                        .await
                        .map_err(|e| OperatorError::storage(format!("cannot read {object}"), e))?;
                    Some(r.into_stream())
                };
                Reading::Csv { decoder, meta, offset: start, fetched: start, buf: bytes::Bytes::new(), stream }
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
                    .with_offset(start as usize)
                    .build()
                    .map_err(|e| OperatorError::parquet(format!("cannot read {object}"), e))?;
                Reading::Parquet { stream, next_row: start + 1, meta }
            }
        };
        Ok(())
    }

    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        let object = self.loc.display.clone();
        match &mut self.state {
            Reading::NotOpen => Err(OperatorError::Data("source read before it was opened".into())),
            Reading::Done => Ok(SourceState::Done),
            Reading::Csv { decoder, .. } if decoder.has_ready() => {
                self.drain(out, 1).await?;
                Ok(SourceState::More)
            }
            Reading::Csv { decoder, meta, offset, fetched, buf, stream } => {
                // Bytes are fed to the decoder a slice at a time, so that at
                // a barrier little is decoded but not yet sent: the barrier
                // waits for at most a batch or two.
                if buf.is_empty() {
                    let chunk = match stream {
                        Some(s) => s
                            .next()
                            .await
                            .transpose()
                            .map_err(|e| OperatorError::storage(format!("reading {object}"), e))?,
                        None if *fetched < meta.size => {
                            let end = (*fetched + CHUNK).min(meta.size);
                            let bytes = self
                                .loc
                                .store
                                .get_range(&self.loc.path, *fetched..end)
                                .await
                                .map_err(|e| OperatorError::storage(format!("reading {object}"), e))?;
                            Some(bytes)
                        }
                        None => None,
                    };
                    match chunk {
                        Some(bytes) => {
                            *fetched += bytes.len() as u64;
                            *buf = bytes;
                        }
                        None => {
                            decoder.finish()?;
                            let meta = meta.clone();
                            let size = *offset;
                            self.drain(out, usize::MAX).await?;
                            self.last = Some(self.state_at(&meta, size, None, true));
                            self.state = Reading::Done;
                            return Ok(SourceState::Done);
                        }
                    }
                }
                let piece = buf.split_to(FEED.min(buf.len()));
                *offset += piece.len() as u64;
                decoder.feed(&piece)?;
                self.drain(out, 1).await?;
                Ok(SourceState::More)
            }
            Reading::Parquet { stream, next_row, meta } => match stream.next().await {
                Some(Ok(records)) => {
                    let n = records.num_rows() as u64;
                    let lines = arrow::array::UInt64Array::from_iter_values(*next_row..*next_row + n);
                    *next_row += n;
                    self.rows += n;
                    out.emit(OUT, Batch::with_lines(records, lines)).await?;
                    Ok(SourceState::More)
                }
                Some(Err(e)) => Err(OperatorError::parquet(format!("reading {object}"), e)),
                None => {
                    let (meta, read) = (meta.clone(), *next_row - 1);
                    self.last = Some(self.state_at(&meta, read, None, true));
                    self.state = Reading::Done;
                    Ok(SourceState::Done)
                }
            },
        }
    }

    fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        let Some(bytes) = &resume.full else {
            return Err(OperatorError::Resume(format!(
                "checkpoint {} holds no position for source `{}`",
                resume.epoch, self.ctx.id
            )));
        };
        let state: FileSourceState = serde_json::from_slice(bytes).map_err(|e| {
            OperatorError::Resume(format!("checkpoint {} of source `{}` is unreadable: {e}", resume.epoch, self.ctx.id))
        })?;
        self.resume = Some(state);
        Ok(())
    }

    async fn snapshot(&mut self, out: &mut Collector) -> Result<Snapshot, OperatorError> {
        let state = match &mut self.state {
            Reading::NotOpen => return Err(OperatorError::Data("snapshot of a source that is not open".into())),
            Reading::Done => match &self.last {
                Some(s) => s.clone(),
                None => return Err(OperatorError::Data("snapshot of a finished source without a position".into())),
            },
            Reading::Csv { decoder, meta, offset, .. } => {
                let meta = meta.clone();
                let fed = *offset;
                match decoder.checkpoint()? {
                    // Emit the completed batch first: the offset must point
                    // after the last row sent.
                    Some((pending, pos)) => {
                        self.drain(out, usize::MAX).await?;
                        self.state_at(&meta, fed - pending, Some(pos), false)
                    }
                    None => FileSourceState { rows: 0, ..self.state_at(&meta, 0, None, false) },
                }
            }
            Reading::Parquet { next_row, meta, .. } => {
                let (meta, read) = (meta.clone(), *next_row - 1);
                self.state_at(&meta, read, None, false)
            }
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| OperatorError::Data(format!("encoding a position: {e}")))?;
        self.last = Some(state);
        Ok(Snapshot::Full(bytes))
    }

    fn position(&self) -> String {
        match &self.last {
            Some(s) if s.done => format!("end of {} ({} rows)", s.object, thousands(s.rows)),
            Some(s) => match &s.csv {
                Some(p) => format!(
                    "row {} (line {}, byte {}) of {}",
                    thousands(s.rows),
                    thousands(p.line),
                    thousands(s.offset),
                    s.object
                ),
                None => format!("row {} of {}", thousands(s.rows), s.object),
            },
            None => String::new(),
        }
    }
}

impl FileSource {
    fn state_at(&self, meta: &ObjectMeta, offset: u64, csv: Option<DecoderPosition>, done: bool) -> FileSourceState {
        FileSourceState {
            object: self.loc.display.clone(),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
            offset,
            csv,
            rows: self.rows,
            done,
        }
    }
}
