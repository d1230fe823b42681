//! `kind = "file"`: CSV or Parquet read as a stream from local disk or S3.
//! Owns opening the object and pulling its bytes in bounded chunks, and
//! making sure a resumed run reads the same bytes the checkpoint was taken
//! on (size, ETag, version, and a checksum of the prefix already read); the
//! CSV dialect lives in [`super::csv`], Parquet decoding in the parquet
//! crate (which also verifies page checksums).

use std::hash::Hasher as _;

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
use twox_hash::XxHash64;

use super::csv::{ColumnDecl, CsvDecoder, CsvOptions, DecoderPosition};
use super::segments::{Parallelism, Segments};
use crate::api::{BuildContext, Collector, OUT, OperatorError, Resume, Snapshot, Source, SourceState};
use crate::batch::Batch;
use crate::storage::{Location, resolve};

/// Rejects port index of sources that have one.
pub const REJECTS: usize = 1;

/// Bytes asked of the store per read: large enough to amortise a request,
/// small enough that a slow consumer holds little.
const CHUNK: u64 = 1 << 20;
/// Bytes of a parallel CSV segment by default: about twenty thousand rows,
/// enough that a task's start is noise, small enough that the segments
/// decoded ahead of a slow consumer hold little (a few MiB).
const SEGMENT: usize = 512 << 10;
/// Default cap of `decode_threads` on a machine with more cores.
const MAX_DECODE_THREADS: usize = 8;
/// Bytes fed to the CSV decoder per step (a few thousand rows).
const FEED: usize = 64 << 10;
/// Bytes asked of the store per read when hashing a prefix again: a
/// resume re-reads up to the whole object, so fewer, larger requests.
const REHASH_CHUNK: u64 = 8 << 20;

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
    /// CSV segments decoded at once; by default one per core, at most 8.
    /// 1 decodes on the source's own task, as one reader.
    pub decode_threads: Option<usize>,
    /// Bytes of CSV per parallel segment (cut at the last record end).
    pub decode_segment_bytes: Option<usize>,
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

/// One decoder on the source's task, or segments decoded in parallel (see
/// [`super::segments`]). A run starts with one decoder until the header and
/// types are settled, and goes back to it if a record is too long to cut.
enum Csv {
    One(Box<CsvDecoder>),
    Parallel { segments: Box<Segments>, schema: arrow::datatypes::SchemaRef, fall_back: bool },
}

impl Csv {
    fn has_ready(&self) -> bool {
        match self {
            Csv::One(d) => d.has_ready(),
            Csv::Parallel { segments, .. } => segments.has_ready(),
        }
    }
}

#[allow(deprecated)]
enum Reading {
    NotOpen,
    Csv {
        csv: Csv,
        meta: ObjectMeta,
        /// Bytes of the object fed to the decoder (or to the segments).
        offset: u64,
        /// The object was read to its end.
        input_done: bool,
        /// Data rows emitted since open: none by the end, and an empty
        /// batch still carries the schema.
        rows_out: u64,
        /// Bytes of the object read from the store (`offset` plus `buf`).
        fetched: u64,
        /// Read, not yet fed.
        buf: bytes::Bytes,
        /// The next chunk of a local file, being read (its offset).
        ahead: Option<(u64, tokio::task::JoinHandle<object_store::Result<bytes::Bytes>>)>,
        /// Checksum of the `offset` bytes fed so far.
        prefix: Prefix,
        stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    },
    Parquet {
        stream: parquet::arrow::async_reader::ParquetRecordBatchStream<ParquetObjectReader>,
        next_row: u64,
        meta: ObjectMeta,
        /// Per row group: rows up to its end, and the byte where the row
        /// groups so far end (what reading up to its rows consumed).
        groups: Vec<(u64, u64)>,
        /// Hashed lazily, at a checkpoint, up to the row group in progress:
        /// without checkpoints nothing is read twice.
        prefix: Prefix,
    },
    Done,
}

pub struct FileSource {
    cfg: FileSourceConfig,
    /// CSV decoding on several threads, unless `decode_threads = 1`.
    parallel: Option<Parallelism>,
    ctx: BuildContext,
    format: Format,
    csv: CsvOptions,
    loc: Location,
    state: Reading,
    /// Set by `restore`: where to continue, checked against the object at
    /// `open`, and the checkpoint it came from.
    resume: Option<(u64, FileSourceState)>,
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
    /// Checksum of the bytes read before this checkpoint; a resume reads
    /// them again and compares, so an input rewritten with the same size
    /// and modification time is still noticed. Absent in checkpoints taken
    /// before it existed (they resume on the other checks alone).
    #[serde(default)]
    pub checksum: Option<PrefixChecksum>,
}

/// A checksum of an object's first `bytes` bytes. CSV: every byte fed to
/// the decoder (the checkpoint's offset plus the start of a record not yet
/// complete); Parquet: up to the end of the row group in progress, or the
/// whole file once read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefixChecksum {
    pub bytes: u64,
    /// xxHash64 (seed 0) of those bytes, 16 hex digits: a specified hash,
    /// so a checkpoint stays comparable across versions of the engine.
    pub xxh64: String,
}

/// A running xxHash64 of an object's first `bytes` bytes.
#[derive(Clone)]
struct Prefix {
    hasher: XxHash64,
    bytes: u64,
}

impl Prefix {
    fn new() -> Prefix {
        Prefix { hasher: XxHash64::with_seed(0), bytes: 0 }
    }

    fn update(&mut self, data: &[u8]) {
        self.hasher.write(data);
        self.bytes += data.len() as u64;
    }

    /// Hashes what of `data`, the object's bytes from `at`, is not hashed
    /// yet: a reader that reads some bytes twice hashes them once.
    fn update_at(&mut self, at: u64, data: &[u8]) {
        let skip = self.bytes.saturating_sub(at).min(data.len() as u64) as usize;
        debug_assert!(at <= self.bytes, "no gap in what is hashed");
        self.update(&data[skip..]);
    }

    fn checksum(&self) -> PrefixChecksum {
        PrefixChecksum { bytes: self.bytes, xxh64: format!("{:016x}", self.hasher.finish()) }
    }

    /// Reads the object's bytes from `self.bytes` up to `to` and hashes them.
    async fn extend(&mut self, loc: &Location, to: u64) -> Result<(), OperatorError> {
        while self.bytes < to {
            let end = (self.bytes + REHASH_CHUNK).min(to);
            let bytes = loc
                .store
                .get_range(&loc.path, self.bytes..end)
                .await
                .map_err(|e| OperatorError::storage(format!("reading {}", loc.display), e))?;
            if bytes.is_empty() {
                // Never loop on a store that returns nothing.
                return Err(OperatorError::Data(format!(
                    "{} ended at byte {} while reading it up to byte {}",
                    loc.display,
                    thousands(self.bytes),
                    thousands(to)
                )));
            }
            self.update(&bytes);
        }
        Ok(())
    }
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
    // Arrow's text arrays hold at most 2 GiB; a record is kept whole in one.
    if cfg.max_record_bytes > 1 << 30 {
        return Err(OperatorError::Config(format!(
            "max_record_bytes must be at most 1 GiB (1073741824), got {}",
            thousands(cfg.max_record_bytes as u64)
        )));
    }
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
            ("decode_threads", cfg.decode_threads.is_some()),
            ("decode_segment_bytes", cfg.decode_segment_bytes.is_some()),
        ];
        if let Some((name, _)) = csv_only.iter().find(|(_, set)| *set) {
            return Err(OperatorError::Config(format!(
                "`{name}` applies to CSV input only; `{}` is Parquet",
                cfg.path
            )));
        }
    }
    if cfg.decode_threads == Some(0) || cfg.decode_segment_bytes == Some(0) {
        return Err(OperatorError::Config("decode_threads and decode_segment_bytes must be at least 1".into()));
    }
    // One per core, at most MAX_DECODE_THREADS by default: past that the
    // operators downstream (one task each) cannot keep up anyway, and each
    // thread holds a segment's batches ahead of them.
    let threads = cfg
        .decode_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1).min(MAX_DECODE_THREADS));
    let parallel =
        (threads > 1).then(|| Parallelism { threads, segment_bytes: cfg.decode_segment_bytes.unwrap_or(SEGMENT) });
    let loc = resolve(&cfg.path)?;
    Ok(FileSource {
        parallel,
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
    /// Emits what the decoder has ready, at most `limit` data batches: one
    /// step stays short, so a barrier (or a stop) waits for little. With
    /// `on_error = "fail"` the first reject stops the run instead.
    async fn drain(&mut self, out: &mut Collector, limit: usize) -> Result<(), OperatorError> {
        let Reading::Csv { csv, rows_out, .. } = &mut self.state else { return Ok(()) };
        let (cfg, loc, rows) = (&self.cfg, &self.loc, &mut self.rows);
        match csv {
            Csv::Parallel { segments, .. } => {
                // A unit at a time, its rejects first: a checkpoint falls
                // between units, after the rows and rejects of each.
                for _ in 0..limit {
                    let Some(unit) = segments.take_unit() else { break };
                    if let Some(rejects) = unit.rejects {
                        emit_rejects(cfg, loc, rows, out, rejects).await?;
                    }
                    if let Some(b) = unit.batch {
                        emit_rows(rows, rows_out, out, b).await?;
                    }
                }
            }
            Csv::One(decoder) => {
                while let Some(rejects) = decoder.take_rejects() {
                    emit_rejects(cfg, loc, rows, out, rejects).await?;
                }
                for _ in 0..limit {
                    let Some(b) = decoder.take_ready() else { break };
                    emit_rows(rows, rows_out, out, b).await?;
                }
            }
        }
        Ok(())
    }

    /// One decoder settled the header and types: the rest of the object
    /// goes to parallel segments, from the start of the record it was in.
    async fn go_parallel(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let Some(par) = self.parallel else { return Ok(()) };
        let Reading::Csv { csv: Csv::One(decoder), offset, .. } = &mut self.state else { return Ok(()) };
        let Some(schema) = decoder.schema() else { return Ok(()) };
        let Some((pending, pos)) = decoder.checkpoint()? else { return Ok(()) };
        // Not while an over-long record is skipped: its start is gone.
        let Some(tail) = decoder.unfinished().filter(|t| t.len() as u64 == pending).map(<[u8]>::to_vec) else {
            return Ok(());
        };
        let start = *offset - pending;
        self.drain(out, usize::MAX).await?;
        tracing::info!(object = %self.loc.display, threads = par.threads, segment_bytes = par.segment_bytes, line = pos.line, "decoding in parallel segments");
        let mut segments = Segments::new(&self.ctx.id, &self.loc.display, self.csv.clone(), pos, start, par);
        let fall_back = segments.push(&tail).is_err();
        if let Reading::Csv { csv, .. } = &mut self.state {
            *csv = Csv::Parallel { segments: Box::new(segments), schema, fall_back };
        }
        Ok(())
    }

    /// A CSV step: read, decode, emit.
    async fn next_csv(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        let object = self.loc.display.clone();
        let preferred = self.ctx.batch_size.min(out.preferred_rows(OUT));
        let Reading::Csv { csv, meta, offset, fetched, buf, ahead, stream, prefix, input_done, rows_out } =
            &mut self.state
        else {
            return Ok(SourceState::More);
        };
        // Segments first: while a step waits to hand a batch downstream the
        // threads keep decoding what is in flight, so there should be some.
        let top_up =
            matches!(csv, Csv::Parallel { segments, fall_back: false, .. } if !segments.is_full()) && !*input_done;
        if csv.has_ready() && !top_up {
            self.drain(out, 1).await?;
            return Ok(SourceState::More);
        }
        if let Csv::Parallel { segments, schema, fall_back } = csv
            && !top_up
        {
            // Outputs leave in input order; a finished segment first, and
            // when enough are in flight (or nothing more is to be read),
            // wait for the oldest.
            let wait = segments.is_full() || *input_done || *fall_back;
            if segments.front_done() || (wait && segments.in_flight()) {
                segments.collect().await?;
                self.drain(out, 1).await?;
                return Ok(SourceState::More);
            }
            if *fall_back {
                // No record end within bounds (an over-long record, an
                // unterminated quote): one decoder reads on from there.
                let (line, bytes) = segments.undispatched();
                let pos = DecoderPosition { line, ..segments.position().1 };
                let mut d = Box::new(CsvDecoder::resume(&self.ctx.id, &object, self.csv.clone(), &pos)?);
                d.feed(bytes)?;
                tracing::info!(object = %object, line, "no record end within bounds: decoding on one thread from here");
                *csv = Csv::One(d);
                self.drain(out, 1).await?;
                return Ok(SourceState::More);
            }
            if *input_done {
                if *rows_out == 0 {
                    let empty = Batch::new(arrow::record_batch::RecordBatch::new_empty(schema.clone()));
                    out.emit(OUT, empty).await?;
                }
                let (meta, size, checksum) = (meta.clone(), *offset, prefix.checksum());
                self.last =
                    Some(FileSourceState { checksum: Some(checksum), ..self.state_at(&meta, size, None, true) });
                self.state = Reading::Done;
                return Ok(SourceState::Done);
            }
        }
        // Bytes are fed to one decoder a slice at a time, so that at a
        // barrier little is decoded but not yet sent: the barrier waits for
        // at most a batch or two. Segments take a whole chunk.
        if buf.is_empty() {
            let chunk = match stream {
                Some(s) => {
                    s.next().await.transpose().map_err(|e| OperatorError::storage(format!("reading {object}"), e))?
                }
                None if *fetched < meta.size => {
                    let pending = ahead.take().filter(|(at, _)| *at == *fetched);
                    let bytes = match pending {
                        Some((_, read)) => read.await.map_err(|e| {
                            OperatorError::Data(format!("reading {object}: the read-ahead task failed: {e}"))
                        })?,
                        None => read_chunk(&self.loc, *fetched, meta.size).await,
                    }
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
                    *input_done = true;
                    let Csv::One(decoder) = csv else {
                        if let Csv::Parallel { segments, .. } = csv {
                            segments.finish_input();
                        }
                        return Ok(SourceState::More);
                    };
                    decoder.finish()?;
                    let meta = meta.clone();
                    let size = *offset;
                    let checksum = prefix.checksum();
                    self.drain(out, usize::MAX).await?;
                    self.last =
                        Some(FileSourceState { checksum: Some(checksum), ..self.state_at(&meta, size, None, true) });
                    self.state = Reading::Done;
                    return Ok(SourceState::Done);
                }
            }
        }
        match csv {
            Csv::One(decoder) => {
                decoder.set_batch_size(preferred);
                let piece = buf.split_to(FEED.min(buf.len()));
                *offset += piece.len() as u64;
                prefix.update(&piece);
                decoder.feed(&piece)?;
                self.drain(out, 1).await?;
                if matches!(&self.state, Reading::Csv { csv: Csv::One(_), .. }) {
                    self.go_parallel(out).await?;
                }
            }
            Csv::Parallel { segments, fall_back, .. } => {
                segments.set_batch_size(preferred);
                let piece = std::mem::take(buf);
                let at = *fetched - piece.len() as u64;
                prefix.update_at(at, &piece);
                *offset = prefix.bytes;
                if stream.is_some() {
                    *fall_back = segments.push(&piece).is_err();
                } else {
                    // A local file is read again from where the segments
                    // stop: each chunk becomes segments without a copy.
                    let last = *fetched == meta.size;
                    match segments.push_local(piece, at, last) {
                        Ok(next) => *fetched = next,
                        Err(_) => *fall_back = true,
                    }
                }
            }
        }
        self.read_ahead();
        Ok(SourceState::More)
    }

    /// Starts reading the next chunk of a local file while this one is
    /// decoded: a read waits for a thread of the blocking pool.
    fn read_ahead(&mut self) {
        let Reading::Csv { stream: None, ahead, buf, fetched, meta, .. } = &mut self.state else { return };
        if ahead.is_none() && buf.is_empty() && *fetched < meta.size {
            let (loc, at, size) = (self.loc.clone(), *fetched, meta.size);
            *ahead = Some((at, tokio::spawn(async move { read_chunk(&loc, at, size).await })));
        }
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
        let mut prefix = Prefix::new();
        if let Some((epoch, r)) = &resume {
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
            let resume_at = (self.format == Format::Csv && !r.done).then_some(r.offset);
            prefix = verify_prefix(&self.loc, &self.ctx.id, *epoch, r, resume_at).await?;
            self.rows = r.rows;
            if r.done {
                // Resumed at the end (a checkpoint after the last row): the
                // next checkpoints record the same end.
                self.last = Some(r.clone());
                self.state = Reading::Done;
                return Ok(());
            }
        }
        let resume = resume.map(|(_, r)| r);
        let start = resume.as_ref().map(|r| r.offset).unwrap_or(0);
        self.state = match self.format {
            Format::Csv => {
                let resumed = resume.as_ref().and_then(|r| r.csv.as_ref());
                let one = match resumed {
                    Some(pos) => Box::new(CsvDecoder::resume(&self.ctx.id, &object, self.csv.clone(), pos)?),
                    None => Box::new(CsvDecoder::new(&self.ctx.id, &object, self.csv.clone())),
                };
                // A resumed decoder knows its schema already: segments
                // from the first byte.
                let csv = match (resumed, self.parallel, one.schema()) {
                    (Some(pos), Some(par), Some(schema)) => {
                        tracing::info!(object = %object, threads = par.threads, line = pos.line, "decoding in parallel segments");
                        let segments = Segments::new(&self.ctx.id, &object, self.csv.clone(), pos.clone(), start, par);
                        Csv::Parallel { segments: Box::new(segments), schema, fall_back: false }
                    }
                    _ => Csv::One(one),
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
                Reading::Csv {
                    csv,
                    meta,
                    offset: start,
                    fetched: start,
                    buf: bytes::Bytes::new(),
                    ahead: None,
                    stream,
                    prefix,
                    input_done: false,
                    rows_out: 0,
                }
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
                let mut groups = Vec::new();
                let (mut rows, mut end) = (0u64, 0u64);
                for g in builder.metadata().row_groups() {
                    rows += u64::try_from(g.num_rows()).unwrap_or(0);
                    for c in g.columns() {
                        let (from, len) = c.byte_range();
                        end = end.max(from.saturating_add(len));
                    }
                    groups.push((rows, end.min(meta.size)));
                }
                let stream = builder
                    .with_batch_size(self.ctx.batch_size)
                    .with_offset(start as usize)
                    .build()
                    .map_err(|e| OperatorError::parquet(format!("cannot read {object}"), e))?;
                Reading::Parquet { stream, next_row: start + 1, meta, groups, prefix }
            }
        };
        Ok(())
    }

    async fn next(&mut self, out: &mut Collector) -> Result<SourceState, OperatorError> {
        let object = self.loc.display.clone();
        match &mut self.state {
            Reading::NotOpen => Err(OperatorError::Data("source read before it was opened".into())),
            Reading::Done => Ok(SourceState::Done),
            Reading::Csv { .. } => self.next_csv(out).await,
            Reading::Parquet { stream, next_row, meta, groups, prefix } => match stream.next().await {
                Some(Ok(records)) => {
                    let n = records.num_rows() as u64;
                    let lines = arrow::array::UInt64Array::from_iter_values(*next_row..*next_row + n);
                    *next_row += n;
                    self.rows += n;
                    out.emit(OUT, Batch::with_lines(records, lines)).await?;
                    Ok(SourceState::More)
                }
                Some(Err(e)) => Err(parquet_error(&object, groups, *next_row - 1, e)),
                None => {
                    // All of it was read, footer included.
                    prefix.extend(&self.loc, meta.size).await?;
                    let (meta, read, checksum) = (meta.clone(), *next_row - 1, prefix.checksum());
                    self.last =
                        Some(FileSourceState { checksum: Some(checksum), ..self.state_at(&meta, read, None, true) });
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
        self.resume = Some((resume.epoch, state));
        Ok(())
    }

    async fn snapshot(&mut self, out: &mut Collector) -> Result<Snapshot, OperatorError> {
        let state = match &mut self.state {
            Reading::NotOpen => return Err(OperatorError::Data("snapshot of a source that is not open".into())),
            Reading::Done => match &self.last {
                Some(s) => s.clone(),
                None => return Err(OperatorError::Data("snapshot of a finished source without a position".into())),
            },
            Reading::Csv { csv: Csv::Parallel { segments, .. }, meta, prefix, .. } => {
                // Every unit taken was emitted whole: the checkpoint falls
                // after the last one, and what is decoded but not emitted
                // (and what is in flight) is decoded again by a resumed run.
                let (meta, checksum) = (meta.clone(), prefix.checksum());
                let (at, pos) = segments.position();
                FileSourceState { checksum: Some(checksum), ..self.state_at(&meta, at, Some(pos), false) }
            }
            Reading::Csv { csv: Csv::One(decoder), meta, offset, prefix, .. } => {
                let meta = meta.clone();
                let fed = *offset;
                // Covers the bytes of a record not yet complete too: they
                // were read, and the resumed run reads them again.
                let checksum = prefix.checksum();
                match decoder.checkpoint()? {
                    // Emit the completed batch first: the offset must point
                    // after the last row sent.
                    Some((pending, pos)) => {
                        self.drain(out, usize::MAX).await?;
                        FileSourceState {
                            checksum: Some(checksum),
                            ..self.state_at(&meta, fed - pending, Some(pos), false)
                        }
                    }
                    None => FileSourceState { rows: 0, ..self.state_at(&meta, 0, None, false) },
                }
            }
            Reading::Parquet { next_row, meta, groups, prefix, .. } => {
                let read = *next_row - 1;
                // Everything up to the end of the row group in progress was
                // read to produce these rows; hashed now, once.
                let consumed = match read {
                    0 => 0,
                    _ => groups.iter().find(|(rows, _)| *rows >= read).map_or(meta.size, |(_, end)| *end),
                };
                prefix.extend(&self.loc, consumed).await?;
                let (meta, checksum) = (meta.clone(), prefix.checksum());
                FileSourceState { checksum: Some(checksum), ..self.state_at(&meta, read, None, false) }
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
            checksum: None,
        }
    }
}

/// Reads again the prefix the checkpoint's checksum covers and compares.
/// Returns the running checksum to go on with: at `resume_at` when given
/// (CSV: where reading resumes), else after the checked prefix (Parquet).
/// Takes the parts it needs, not the source: its future must be `Send`.
/// Emits a reader's rejects; with `on_error = "fail"` the first one stops
/// the run instead.
async fn emit_rejects(
    cfg: &FileSourceConfig,
    loc: &Location,
    rows: &mut u64,
    out: &mut Collector,
    rejects: Batch,
) -> Result<(), OperatorError> {
    if cfg.on_error == OnError::Fail {
        let line = rejects.line(0).unwrap_or_default();
        // The reason, not the whole reject: its raw text may be up to
        // max_record_bytes long.
        let reason = rejects
            .records
            .column_by_name("reason")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
            .filter(|a| arrow::array::Array::len(*a) > 0)
            .map(|a| a.value(0).to_string())
            .unwrap_or_default();
        return Err(OperatorError::Data(format!("bad line {line} in {} (on_error = \"fail\"): {reason}", loc.display)));
    }
    *rows += rejects.num_rows() as u64;
    out.emit(REJECTS, rejects).await
}

/// Emits a batch of rows, counted as the source's.
async fn emit_rows(rows: &mut u64, rows_out: &mut u64, out: &mut Collector, b: Batch) -> Result<(), OperatorError> {
    *rows += b.num_rows() as u64;
    *rows_out += b.num_rows() as u64;
    out.emit(OUT, b).await
}

/// One chunk of a local object from `at`.
async fn read_chunk(loc: &Location, at: u64, size: u64) -> object_store::Result<bytes::Bytes> {
    loc.store.get_range(&loc.path, at..(at + CHUNK).min(size)).await
}

async fn verify_prefix(
    loc: &Location,
    source: &str,
    epoch: u64,
    r: &FileSourceState,
    resume_at: Option<u64>,
) -> Result<Prefix, OperatorError> {
    let mut stops: Vec<u64> = resume_at.into_iter().chain(r.checksum.as_ref().map(|c| c.bytes)).collect();
    stops.sort_unstable();
    stops.dedup();
    let started = std::time::Instant::now();
    let mut prefix = Prefix::new();
    let mut kept = None;
    for stop in stops {
        prefix.extend(loc, stop).await?;
        if Some(stop) == resume_at {
            kept = Some(prefix.clone());
        }
        let Some(then) = r.checksum.as_ref().filter(|c| c.bytes == stop) else { continue };
        let now = prefix.checksum();
        if now.xxh64 != then.xxh64 {
            return Err(OperatorError::InputChanged(format!(
                "the first {} bytes of {} changed since checkpoint {epoch} (checksum xxh64 {} then, {} now): \
                     resuming source `{}` there would mix rows of two versions of the input; start over with --from-scratch",
                thousands(then.bytes),
                loc.display,
                then.xxh64,
                now.xxh64,
                source
            )));
        }
        tracing::info!(
            object = %loc.display,
            bytes = then.bytes,
            ms = started.elapsed().as_millis() as u64,
            "input unchanged since the checkpoint (checksum verified)"
        );
    }
    Ok(kept.unwrap_or(prefix))
}

/// A Parquet read error, said with the row group it came from: a page
/// that fails its checksum is damage, not garbage rows to pass on.
fn parquet_error(object: &str, groups: &[(u64, u64)], row: u64, e: parquet::errors::ParquetError) -> OperatorError {
    let group = groups.iter().position(|(rows, _)| *rows > row);
    let which = match group {
        Some(i) => {
            let first = if i == 0 { 0 } else { groups[i - 1].0 };
            format!(
                "row group {} of {} (rows {} to {})",
                i + 1,
                groups.len(),
                thousands(first + 1),
                thousands(groups[i].0)
            )
        }
        None => format!("row {}", thousands(row + 1)),
    };
    // The parquet crate says only "Page CRC checksum mismatch".
    let context = if e.to_string().contains("CRC checksum mismatch") {
        format!("{object} is damaged: a page of {which} does not match its checksum")
    } else {
        format!("reading {which} of {object}")
    };
    OperatorError::parquet(context, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint taken before checksums existed still resumes.
    #[test]
    fn a_state_without_a_checksum_still_reads() {
        let old = r#"{"object":"/d/in.csv","size":10,"e_tag":"1-2-a","version":null,"offset":4,"csv":null,"rows":0,"done":false}"#;
        let state: FileSourceState = serde_json::from_str(old).expect("old state");
        assert_eq!(state.checksum, None);
        assert_eq!(state.offset, 4);
    }

    /// The hash is xxHash64 with seed 0, whatever the chunking: a
    /// checkpoint written by one version is checked by the next.
    #[test]
    fn the_prefix_checksum_is_stable_and_independent_of_chunking() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = Prefix::new();
        whole.update(&data);
        let mut pieces = Prefix::new();
        for c in data.chunks(7_777) {
            pieces.update(c);
        }
        assert_eq!(whole.checksum(), pieces.checksum());
        assert_eq!(whole.checksum().bytes, 100_000);
        let mut empty = Prefix::new();
        empty.update(b"");
        // The published xxh64 of the empty input, seed 0.
        assert_eq!(empty.checksum().xxh64, "ef46db3751d8e999");
    }

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("file-source-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }

    #[tokio::test]
    async fn a_resume_rereads_the_prefix_and_refuses_changed_bytes() {
        let text = b"a,b\n1,2\n3,4\n5,6\n".repeat(1000);
        let path = temp_file("verify.csv", &text);
        let loc = resolve(path.to_str().expect("utf-8 path")).expect("local path");
        let mut read = Prefix::new();
        read.update(&text[..9_000]);
        let state = FileSourceState {
            object: loc.display.clone(),
            size: text.len() as u64,
            e_tag: None,
            version: None,
            offset: 8_992,
            csv: None,
            rows: 0,
            done: false,
            checksum: Some(read.checksum()),
        };
        // Unchanged: the running checksum comes back at the resume offset.
        let at = verify_prefix(&loc, "src", 7, &state, Some(8_992)).await.expect("unchanged");
        let mut expected = Prefix::new();
        expected.update(&text[..8_992]);
        assert_eq!(at.checksum(), expected.checksum());
        // Without a resume offset (Parquet), it goes on after the prefix.
        let after = verify_prefix(&loc, "src", 7, &state, None).await.expect("unchanged");
        assert_eq!(after.checksum(), read.checksum());

        // One byte inside the prefix: refused, saying what and since when.
        let mut changed = text.clone();
        changed[100] = b'9';
        std::fs::write(&path, &changed).expect("rewrite");
        let err = verify_prefix(&loc, "src", 7, &state, Some(8_992)).await.err().expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, OperatorError::InputChanged(_)), "{msg}");
        assert!(
            msg.starts_with(&format!("the first 9,000 bytes of {} changed since checkpoint 7", loc.display)),
            "{msg}"
        );
        assert!(msg.contains("start over with --from-scratch"), "{msg}");

        // After the prefix: not this check's business (the rows there were
        // never read).
        let mut tail = text.clone();
        tail[9_500] = b'9';
        std::fs::write(&path, &tail).expect("rewrite");
        assert!(verify_prefix(&loc, "src", 7, &state, Some(8_992)).await.is_ok());

        // An old state without a checksum is not checked, and still gives
        // the running checksum at the offset for the checkpoints to come.
        let old = FileSourceState { checksum: None, ..state };
        let at = verify_prefix(&loc, "src", 7, &old, Some(8_992)).await.expect("nothing to check");
        let mut expected = Prefix::new();
        expected.update(&tail[..8_992]);
        assert_eq!(at.checksum(), expected.checksum());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_parquet_error_names_the_row_group() {
        let groups = [(1_000, 10), (2_000, 20), (3_000, 30)];
        let crc = parquet::errors::ParquetError::General("Page CRC checksum mismatch".into());
        let e = parquet_error("/d/x.parquet", &groups, 1_000, crc).to_string();
        assert!(
            e.starts_with(
                "/d/x.parquet is damaged: a page of row group 2 of 3 (rows 1,001 to 2,000) does not match its checksum"
            ),
            "{e}"
        );
        let other = parquet::errors::ParquetError::General("unsupported encoding".into());
        let e = parquet_error("/d/x.parquet", &groups, 2_500, other).to_string();
        assert!(e.starts_with("reading row group 3 of 3 (rows 2,001 to 3,000) of /d/x.parquet"), "{e}");
    }
}
