//! `kind = "file"` sink: CSV, Parquet or NDJSON written through the object
//! store. A reader never sees half a file, and a failed run publishes
//! nothing: rows go to part objects beside the target ([`crate::staged`]),
//! one per checkpoint epoch, and the parts become the target only in
//! `commit`, which the runtime calls once every operator of the run
//! succeeded. A part is closed at each barrier, so a resumed run keeps the
//! parts its checkpoint covers and rewrites the rest.
//!
//! Also owns how rows become bytes: the CSV header (written even when no
//! row comes, from the batch that announces the schema), the optional
//! formula guard for CSV files opened in spreadsheets, and NDJSON lines
//! that name every column, null ones included.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::api::{BuildContext, Collector, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::staged::Parts;
use crate::storage::{Location, resolve};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    Csv,
    Parquet,
    #[serde(alias = "jsonl", alias = "json")]
    Ndjson,
}

/// What a CSV sink does with cells a spreadsheet would run as a formula.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FormulaGuard {
    /// Cells are written as they are (byte-exact output).
    #[default]
    Off,
    /// A text cell (or header name) starting with `=`, `+`, `-`, `@`, tab
    /// or carriage return gets a `'` in front, as OWASP advises against CSV
    /// injection; the spreadsheet then shows it as text.
    Quote,
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
    /// CSV only: `"quote"` prefixes `'` to every text cell and header name
    /// starting with `=`, `+`, `-`, `@`, tab or carriage return, so that a
    /// spreadsheet opening the file shows it instead of running it as a
    /// formula (OWASP's advice on CSV injection). Number, boolean and other
    /// typed columns are left alone: a negative number stays a number. The
    /// output then differs from the input, which is why the default is
    /// `"off"` (cells written byte for byte).
    #[serde(default)]
    pub formula_guard: FormulaGuard,
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
    parts: Parts,
    writer: Option<Writer>,
    schema: Option<SchemaRef>,
    rows: u64,
    /// Some row was written (by this run or the run it resumes): the CSV
    /// header is out.
    started: bool,
    /// Checkpoints are on (a barrier or a restore came): closed parts are
    /// kept for a resume when the run fails; otherwise they are removed.
    resumable: bool,
    /// One run writes a local target at a time (see [`crate::lock`]).
    lock: Option<crate::lock::OutputLock>,
    pipeline: String,
}

/// What a checkpoint remembers of this sink.
#[derive(Serialize, Deserialize)]
struct FileSinkState {
    rows: u64,
    started: bool,
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
    let parts = Parts::new(&loc, &ctx.id);
    Ok(FileSink {
        id: ctx.id.clone(),
        cfg,
        format,
        delimiter,
        loc,
        parts,
        writer: None,
        schema: None,
        rows: 0,
        started: false,
        resumable: false,
        lock: None,
        pipeline: ctx.pipeline.clone(),
    })
}

impl FileSink {
    /// Takes the target's lock (local files) before anything touches its
    /// parts; idempotent.
    fn lock(&mut self) -> Result<(), OperatorError> {
        if self.lock.is_none() && self.loc.is_local {
            let holder = crate::lock::holder(&self.pipeline, &self.id);
            let target = std::path::PathBuf::from(&self.loc.display);
            self.lock = Some(crate::lock::OutputLock::acquire(&target, &self.loc.display, &holder)?);
        }
        Ok(())
    }

    async fn open(&mut self, schema: &SchemaRef) -> Result<(), OperatorError> {
        self.parts.prepare().await?;
        let buf: BufWriter = self.parts.writer();
        self.writer = Some(match self.format {
            SinkFormat::Parquet => {
                let w = AsyncArrowWriter::try_new(buf, schema.clone(), None)
                    .map_err(|e| OperatorError::parquet(format!("cannot start {}", self.loc.display), e))?;
                Writer::Parquet(Box::new(w))
            }
            _ => Writer::Text(buf),
        });
        Ok(())
    }

    /// Completes the part in progress, if any.
    async fn close_part(&mut self) -> Result<(), OperatorError> {
        match self.writer.take() {
            Some(Writer::Text(mut w)) => {
                w.shutdown().await.map_err(|e| OperatorError::Data(format!("completing {}: {e}", self.loc.display)))?
            }
            Some(Writer::Parquet(w)) => {
                w.close().await.map_err(|e| OperatorError::parquet(format!("completing {}", self.loc.display), e))?;
            }
            None => {}
        }
        Ok(())
    }

    fn encode(&self, batch: &Batch, first: bool) -> Result<Vec<u8>, OperatorError> {
        let mut buf = Vec::with_capacity(batch.records.get_array_memory_size() / 2);
        let ctx = |e| OperatorError::arrow(format!("encoding rows for {}", self.loc.display), e);
        match self.format {
            SinkFormat::Csv => {
                let records = match self.cfg.formula_guard {
                    FormulaGuard::Off => Cow::Borrowed(&batch.records),
                    FormulaGuard::Quote => Cow::Owned(guard_formulas(&batch.records).map_err(ctx)?),
                };
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(first && self.cfg.header)
                    .with_delimiter(self.delimiter)
                    .build(&mut buf);
                w.write(&records).map_err(ctx)?;
            }
            SinkFormat::Ndjson => {
                // Every line names every column: a null is written as null,
                // not left out, so each line has the same keys.
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(&batch.records).map_err(ctx)?;
                w.finish().map_err(ctx)?;
            }
            SinkFormat::Parquet => {}
        }
        Ok(buf)
    }
}

/// Whether a spreadsheet would take a cell starting like this for a formula
/// (or, for tab and CR, strip them and look again).
fn risky(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

fn guarded(cell: &str) -> Cow<'_, str> {
    if risky(cell) { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

/// The batch with every risky text cell and column name prefixed by `'`
/// (see [`FormulaGuard::Quote`]); columns with nothing to guard are shared,
/// not copied.
fn guard_formulas(records: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = records.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(records.num_columns());
    for (field, column) in schema.fields().iter().zip(records.columns()) {
        let name = guarded(field.name());
        let text = match column.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
            DataType::Dictionary(_, v) => matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            _ => false,
        };
        let utf8 = if text { Some(arrow::compute::cast(column, &DataType::Utf8)?) } else { None };
        match utf8.as_ref().map(|c| c.as_string::<i32>()).filter(|s| s.iter().flatten().any(risky)) {
            Some(cells) => {
                let cells: StringArray = cells.iter().map(|c| c.map(guarded)).collect();
                fields.push(Field::new(name, DataType::Utf8, field.is_nullable()));
                columns.push(Arc::new(cells));
            }
            None => {
                fields.push(field.as_ref().clone().with_name(name));
                columns.push(column.clone());
            }
        }
    }
    let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(records.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
}

#[async_trait]
impl Operator for FileSink {
    async fn process(&mut self, batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        let schema = batch.records.schema();
        match &self.schema {
            None => self.schema = Some(schema.clone()),
            Some(s) if s != &schema => {
                return Err(OperatorError::Data(format!(
                    "{} received rows of a different schema than the first batch; one file holds one schema",
                    self.id
                )));
            }
            Some(_) => {}
        }
        if self.writer.is_none() {
            self.open(&schema).await?;
        }
        let bytes = self.encode(&batch, !self.started)?;
        self.started = true;
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

    async fn on_barrier(&mut self, barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        // The part is complete (and its rows durable) before the barrier is
        // acknowledged.
        self.close_part().await?;
        self.parts.sealed(barrier.epoch);
        self.resumable = true;
        let state = FileSinkState { rows: self.rows, started: self.started };
        Ok(Snapshot::Full(serde_json::to_vec(&state).unwrap_or_default()))
    }

    async fn open(&mut self) -> Result<(), OperatorError> {
        self.lock()
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        // A resume prunes parts: only with the target's lock held.
        self.lock()?;
        let state: FileSinkState = match &resume.full {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| OperatorError::Resume(format!("{}: unreadable checkpoint state: {e}", self.id)))?,
            None => FileSinkState { rows: 0, started: false },
        };
        self.parts.resume(resume.epoch);
        let kept = self.parts.kept().await?;
        if state.started && kept == 0 {
            return Err(OperatorError::Resume(format!(
                "the parts of {} that checkpoint {} covers ({} rows) are gone; run with --from-scratch to rewrite the file",
                self.loc.display, resume.epoch, state.rows
            )));
        }
        self.rows = state.rows;
        self.started = state.started;
        self.resumable = true;
        Ok(())
    }

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        self.close_part().await?;
        tracing::debug!(path = %self.loc.display, rows = self.rows, "file staged");
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), OperatorError> {
        self.parts.publish(self.format == SinkFormat::Parquet).await?;
        tracing::info!(path = %self.loc.display, rows = self.rows, "file written");
        Ok(())
    }

    async fn abort(&mut self) {
        // The part in progress is dropped; with checkpoints, closed parts
        // stay for a resumed run to pick up (a fresh run removes them).
        if let Some(Writer::Text(mut w)) = self.writer.take() {
            let _ = w.abort().await;
        }
        if !self.resumable {
            self.parts.discard().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn sink(path: &str, extra: serde_json::Value) -> FileSink {
        let mut cfg = serde_json::json!({ "path": path });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let ctx = BuildContext {
            pipeline: "p".into(),
            id: "out".into(),
            batch_size: 10,
            raw_options: Default::default(),
            rotation: None,
        };
        build(&ctx, serde_json::from_value(cfg).unwrap()).unwrap()
    }

    fn batch() -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("=Name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let names = StringArray::from(vec![
            Some("=HYPERLINK(\"http://x\")"),
            Some("+1"),
            Some("-2"),
            Some("@SUM(A1)"),
            Some("\tx"),
            Some("\rx"),
            Some("Ann"),
            None,
            Some("a=b"),
        ]);
        let n = Int64Array::from(vec![-1, 2, 3, 4, 5, 6, 7, 8, 9]);
        Batch::new(RecordBatch::try_new(schema, vec![Arc::new(names), Arc::new(n)]).unwrap())
    }

    #[test]
    fn the_formula_guard_prefixes_risky_text_cells_and_leaves_numbers_alone() {
        let out = sink("out.csv", serde_json::json!({ "formula_guard": "quote" })).encode(&batch(), true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "'=Name,n\n\"'=HYPERLINK(\"\"http://x\"\")\",-1\n'+1,2\n'-2,3\n'@SUM(A1),4\n'\tx,5\n\"'\rx\",6\nAnn,7\n,8\na=b,9\n"
        );
    }

    #[test]
    fn without_the_guard_cells_are_written_as_they_are() {
        let out = sink("out.csv", serde_json::json!({})).encode(&batch(), true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("=Name,n\n\"=HYPERLINK(\"\"http://x\"\")\",-1\n+1,2\n-2,3\n"), "{text}");
    }

    /// The batch that announces the schema of an input with no rows gives
    /// a CSV file its header.
    #[test]
    fn an_empty_batch_writes_the_header() {
        let empty = Batch::new(RecordBatch::new_empty(batch().records.schema()));
        let out = sink("out.csv", serde_json::json!({})).encode(&empty, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "=Name,n\n");
    }

    #[test]
    fn ndjson_lines_name_every_column_null_ones_included() {
        let out = sink("out.ndjson", serde_json::json!({})).encode(&batch(), true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().nth(7), Some(r#"{"=Name":null,"n":8}"#));
    }
}
