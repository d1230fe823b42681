//! Push-based CSV decoding into Arrow: bytes go in chunk by chunk (as they
//! arrive from the object store), typed batches and rejects come out. Owns
//! the CSV dialect, the header, type inference and per-line error reporting;
//! knows nothing about where the bytes come from.
//!
//! A record is all-or-nothing: it is appended to the builders only after
//! every field parsed, so a bad line becomes one reject and never a
//! half-filled row.
//!
//! A record longer than `max_record_bytes` is skipped to its end as the CSV
//! grammar defines it (a newline inside quotes does not end it) and becomes
//! one reject at the line where it starts; nothing of it is kept but an
//! excerpt, and line numbers after it stay the file's. Each accepted row's
//! source text travels beside its batch ([`Batch::raw`]) so that a reject
//! raised further down still hands back the row as it was read.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use csv_core::{ReadRecordResult, Reader, ReaderBuilder};
use serde::{Deserialize, Serialize};

use crate::api::OperatorError;
use crate::batch::Batch;
use crate::rejects::{EXCERPT_BYTES, Reject, RejectsBuilder, excerpt, excerpt_of_prefix};
use crate::sources::file::thousands;

/// A column type a pipeline file can declare.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    #[serde(alias = "utf8", alias = "str")]
    String,
    #[serde(alias = "int", alias = "integer", alias = "i64")]
    Int64,
    #[serde(alias = "i32")]
    Int32,
    #[serde(alias = "float", alias = "double", alias = "f64")]
    Float64,
    #[serde(alias = "bool")]
    Boolean,
}

impl ColumnType {
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
        }
    }
    fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Int32 => "int32",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ColumnDecl {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// What a resumed decoder must know without re-reading the start of the
/// object: the line it starts at, the header, and the column types it had
/// settled on (inferred types would otherwise come from other rows).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecoderPosition {
    /// Line where the next record (or the terminators before it) starts.
    pub line: u64,
    pub header: Option<Vec<String>>,
    pub types: Vec<ColumnType>,
}

/// Dialect and schema options.
#[derive(Clone, Debug)]
pub struct CsvOptions {
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub schema: Option<Vec<ColumnDecl>>,
    pub infer_rows: usize,
    pub batch_size: usize,
    /// A record longer than this is rejected, whole, without being buffered:
    /// reading resumes after its end (an unterminated quote therefore runs
    /// to the next quote or the end of the input, and the reject says so).
    pub max_record_bytes: usize,
}

enum Col {
    Str(StringBuilder),
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

impl Col {
    fn new(ty: ColumnType, cap: usize) -> Col {
        match ty {
            ColumnType::String => Col::Str(StringBuilder::with_capacity(cap, cap * 8)),
            ColumnType::Int64 => Col::I64(Int64Builder::with_capacity(cap)),
            ColumnType::Int32 => Col::I32(Int32Builder::with_capacity(cap)),
            ColumnType::Float64 => Col::F64(Float64Builder::with_capacity(cap)),
            ColumnType::Boolean => Col::Bool(BooleanBuilder::with_capacity(cap)),
        }
    }
    /// The array built so far; the builder starts over with room for
    /// `rows` rows (and, for text, as many bytes as this batch took).
    /// Arrow's `finish` leaves a builder with no capacity, which then
    /// doubles its way up again (and copies what it has) every batch.
    fn take(&mut self, rows: usize) -> ArrayRef {
        match self {
            Col::Str(b) => {
                let bytes = b.values_slice().len();
                Arc::new(std::mem::replace(b, StringBuilder::with_capacity(rows, bytes)).finish())
            }
            Col::I64(b) => Arc::new(std::mem::replace(b, Int64Builder::with_capacity(rows)).finish()),
            Col::I32(b) => Arc::new(std::mem::replace(b, Int32Builder::with_capacity(rows)).finish()),
            Col::F64(b) => Arc::new(std::mem::replace(b, Float64Builder::with_capacity(rows)).finish()),
            Col::Bool(b) => Arc::new(std::mem::replace(b, BooleanBuilder::with_capacity(rows)).finish()),
        }
    }
}

/// A field that parsed, waiting for the rest of its record.
#[derive(Clone, Copy)]
enum Cell {
    Null,
    Str(usize, usize),
    I64(i64),
    I32(i32),
    F64(f64),
    Bool(bool),
}

/// Where a declared column is found in each record.
struct Plan {
    schema: SchemaRef,
    /// Per output column: (field index in the record, type).
    columns: Vec<(usize, ColumnType)>,
    expected_fields: usize,
    /// Name of each field of a record, by position (the header's, else the
    /// schema's), for rejects about a missing field.
    field_names: Vec<String>,
}

/// A record kept aside while the first rows are read to infer types.
struct Held {
    line: u64,
    data: Vec<u8>,
    ends: Vec<usize>,
    raw: Vec<u8>,
}

/// Where each field of a record is in its bytes.
#[derive(Clone, Copy)]
enum Fields<'a> {
    /// csv-core's output: fields back to back, field `i` ends at `ends[i]`.
    Packed(&'a [usize]),
    /// A line as it is: field `i` ends at `ends[i]`, and the next starts a
    /// byte later, after the delimiter.
    Split(&'a [usize]),
}

impl Fields<'_> {
    fn len(&self) -> usize {
        match self {
            Fields::Packed(e) | Fields::Split(e) => e.len(),
        }
    }

    #[inline]
    fn range(&self, i: usize) -> (usize, usize) {
        match self {
            Fields::Packed(e) => (if i == 0 { 0 } else { e[i - 1] }, e[i]),
            Fields::Split(e) => (if i == 0 { 0 } else { e[i - 1] + 1 }, e[i]),
        }
    }
}

/// A record over `max_record_bytes` being read past: only its start is kept.
struct Skip {
    /// Line where the record starts.
    line: u64,
    /// Bytes of the record read so far (its trailing terminator included).
    bytes: u64,
    /// Its first bytes, for the reject.
    start: Vec<u8>,
    /// Its last byte so far: tells whether a newline ended it.
    last: u8,
}

/// A batch is also cut once the source text of its rows passes this: the
/// arrays of a batch use 32-bit offsets, which a few thousand long records
/// would otherwise overflow.
const BATCH_TEXT_BYTES: usize = 64 << 20;

pub struct CsvDecoder {
    opts: CsvOptions,
    /// Display name of the object, for error messages.
    object: String,
    reader: Reader,
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    /// Bytes of the record being read, terminators before it included, for
    /// the `raw` column of rows and rejects. At most about
    /// `max_record_bytes`: past that the record is skipped instead.
    raw: Vec<u8>,
    /// Absolute line where `raw` starts (the line after the last record).
    line_at_raw_start: u64,
    /// Added to `reader.line()`, which starts at 1 where this decoder
    /// started reading (a resumed decoder starts mid-object).
    line_base: u64,
    /// Set while an over-long record is read past.
    skip: Option<Skip>,
    bom_checked: bool,
    bom_prefix: Vec<u8>,
    header: Option<Vec<String>>,
    plan: Option<Plan>,
    held: Vec<Held>,
    cols: Vec<Col>,
    cells: Vec<Cell>,
    lines: UInt64Builder,
    /// Source text of each accepted row of the batch in progress.
    texts: BinaryBuilder,
    ready: VecDeque<Batch>,
    rejects: RejectsBuilder,
    /// Data rows accepted so far (for the summary and tests).
    pub rows_accepted: u64,
    done: bool,
    /// Every byte this decoder is fed was checked as UTF-8 beforehand.
    utf8_checked: bool,
    /// Bytes consumed since this decoder started.
    consumed: u64,
    /// Where the record being appended ends: (bytes consumed, line of
    /// the next record).
    after_record: (u64, u64),
    /// With [`CsvDecoder::track_units`]: per ready batch, where its last
    /// record ends and the rejects raised before it.
    unit_ends: Option<VecDeque<(Position, Option<Batch>)>>,
}

/// Bytes consumed by a decoder (or an object offset) and the line of the
/// record that starts there.
pub type Position = (u64, u64);

/// A data batch with the rejects raised before it and the position after
/// its last record (bytes consumed by the decoder, line of the next
/// record): what a source may emit and then checkpoint after.
pub struct Unit {
    pub rejects: Option<Batch>,
    pub batch: Option<Batch>,
    pub end: Position,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl CsvDecoder {
    pub fn new(operator: &str, object: &str, opts: CsvOptions) -> Self {
        let reader = ReaderBuilder::new().delimiter(opts.delimiter).quote(opts.quote).build();
        CsvDecoder {
            object: object.to_string(),
            reader,
            out: vec![0; 64 * 1024],
            out_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            raw: Vec::with_capacity(1024),
            line_at_raw_start: 1,
            line_base: 0,
            skip: None,
            bom_checked: false,
            bom_prefix: Vec::new(),
            header: None,
            plan: None,
            held: Vec::new(),
            cols: Vec::new(),
            cells: Vec::new(),
            lines: UInt64Builder::with_capacity(opts.batch_size),
            texts: BinaryBuilder::with_capacity(opts.batch_size, opts.batch_size * 32),
            ready: VecDeque::new(),
            rejects: RejectsBuilder::new(operator),
            rows_accepted: 0,
            done: false,
            utf8_checked: false,
            consumed: 0,
            after_record: (0, 0),
            unit_ends: None,
            opts,
        }
    }

    /// A decoder that continues an object from a checkpoint: the bytes fed
    /// start at the offset the checkpoint recorded, which is the start of a
    /// record (or of the line terminators before it).
    pub fn resume(
        operator: &str,
        object: &str,
        opts: CsvOptions,
        pos: &DecoderPosition,
    ) -> Result<Self, OperatorError> {
        let mut d = CsvDecoder::new(operator, object, opts);
        d.bom_checked = true;
        d.line_base = pos.line.saturating_sub(1);
        d.line_at_raw_start = pos.line;
        d.header = pos.header.clone();
        if d.opts.schema.is_some() {
            d.settle_plan()?;
        } else {
            let names: Vec<String> = match &pos.header {
                Some(h) => h.clone(),
                None => (1..=pos.types.len()).map(|i| format!("column_{i}")).collect(),
            };
            if names.len() != pos.types.len() {
                return Err(OperatorError::Resume(format!(
                    "checkpoint of {object} has {} column names but {} types",
                    names.len(),
                    pos.types.len()
                )));
            }
            let fields =
                names.iter().zip(&pos.types).map(|(n, t)| Field::new(n, t.data_type(), true)).collect::<Vec<_>>();
            let plan = Plan {
                schema: Arc::new(Schema::new(fields)),
                columns: pos.types.iter().copied().enumerate().collect(),
                expected_fields: names.len(),
                field_names: names,
            };
            d.cols = plan.columns.iter().map(|&(_, ty)| Col::new(ty, d.opts.batch_size)).collect();
            d.plan = Some(plan);
        }
        Ok(d)
    }

    /// For a checkpoint: completes the batch in progress (take it with
    /// [`CsvDecoder::take_ready`]) and returns how many of the bytes fed so
    /// far belong to the record not yet complete, plus the position to
    /// resume at. `None` while the schema is not settled: nothing was
    /// emitted yet, and a resumed run starts from the beginning.
    ///
    /// While an over-long record is being skipped the position is its
    /// start: its reject is raised only at its end, so a resumed decoder
    /// reads it again and rejects it once.
    pub fn checkpoint(&mut self) -> Result<Option<(u64, DecoderPosition)>, OperatorError> {
        let Some(plan) = &self.plan else { return Ok(None) };
        if !self.bom_checked {
            return Ok(None);
        }
        let types = plan.columns.iter().map(|&(_, t)| t).collect();
        let pos = DecoderPosition { line: self.line_at_raw_start, header: self.header.clone(), types };
        self.flush_batch()?;
        let pending = match &self.skip {
            Some(skip) => skip.bytes,
            None => self.raw.len() as u64,
        };
        Ok(Some((pending, pos)))
    }

    /// Keeps, for each batch, the rejects raised before it and where its
    /// last record ends, to be taken with [`CsvDecoder::take_unit`]: a
    /// reader that emits batch by batch can checkpoint after any of them.
    pub fn track_units(&mut self) {
        self.unit_ends = Some(VecDeque::new());
    }

    /// The next batch with its rejects and end (see
    /// [`CsvDecoder::track_units`]); after the last batch, the rejects left
    /// with `end` None.
    pub fn take_unit(&mut self) -> Option<(Option<Batch>, Option<Batch>, Option<Position>)> {
        if let Some(ends) = &mut self.unit_ends
            && let Some((end, rejects)) = ends.pop_front()
        {
            return Some((rejects, self.ready.pop_front(), Some(end)));
        }
        let rejects = self.take_rejects();
        let batch = self.ready.pop_front();
        (rejects.is_some() || batch.is_some()).then_some((rejects, batch, None))
    }

    /// Declares that every byte this decoder will be fed is valid UTF-8
    /// (checked by the caller, at several GB/s for a whole segment): text
    /// cells skip their own check.
    pub fn set_utf8_checked(&mut self, checked: bool) {
        self.utf8_checked = checked;
    }

    /// True when [`CsvDecoder::decode_plain`] reads `input` exactly as
    /// [`CsvDecoder::feed`] would: a decoder at a record start with its
    /// schema settled, and input with no quote, no `\r` and no record that
    /// could pass `max_record_bytes`.
    pub fn can_decode_plain(&self, input: &[u8]) -> bool {
        self.plan.is_some()
            && self.bom_checked
            && self.skip.is_none()
            && self.raw.is_empty()
            && self.held.is_empty()
            && input.len() <= self.opts.max_record_bytes
            && memchr::memchr2(self.opts.quote, b'\r', input).is_none()
    }

    /// Decodes the rest of the object, `input`, without the CSV state
    /// machine: with no quote and no `\r` (see
    /// [`CsvDecoder::can_decode_plain`]) a record is a line, its fields are
    /// split at the delimiter, and a blank line is skipped, as csv-core
    /// reads them; rows and their text are sliced from `input`, not copied.
    pub fn decode_plain(&mut self, input: &[u8]) -> Result<(), OperatorError> {
        if !self.can_decode_plain(input) {
            return self.feed(input);
        }
        let mut ends = Vec::with_capacity(16);
        let mut line = self.line_at_raw_start;
        let base = self.consumed;
        let mut start = 0;
        let delimiter = self.opts.delimiter;
        // Delimiters and newlines are found 8 bytes at a time (SWAR): a
        // record of ~20 bytes holds ~5 of them, too close together for a
        // SIMD search per field to pay off.
        let mut at = 0;
        while let Some(word) = input.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
            let word = u64::from_le_bytes(*word);
            let mut hits = bytes_equal(word, b'\n') | bytes_equal(word, delimiter);
            while hits != 0 {
                let p = at + (hits.trailing_zeros() / 8) as usize;
                hits &= hits - 1;
                if input[p] == b'\n' {
                    self.after_record = (base + p as u64 + 1, line + 1);
                    self.plain_record(line, &input[start..p], &mut ends)?;
                    line += 1;
                    start = p + 1;
                } else {
                    ends.push(p - start);
                }
            }
            at += 8;
        }
        for p in at..input.len() {
            if input[p] == b'\n' {
                self.after_record = (base + p as u64 + 1, line + 1);
                self.plain_record(line, &input[start..p], &mut ends)?;
                line += 1;
                start = p + 1;
            } else if input[p] == delimiter {
                ends.push(p - start);
            }
        }
        if start < input.len() {
            // The last line of the object, without a newline.
            self.after_record = (base + input.len() as u64, line);
            self.plain_record(line, &input[start..], &mut ends)?;
        }
        self.consumed = base + input.len() as u64;
        // Where a checkpoint (or `finish`) finds the decoder: at a record
        // start on the line after the input's last newline.
        self.line_at_raw_start = line;
        // csv-core's reader has seen nothing: its line 1 is this line.
        self.line_base = line - 1;
        Ok(())
    }

    /// One line of [`CsvDecoder::decode_plain`]: `ends` holds its
    /// delimiters' offsets; a blank line is no record.
    fn plain_record(&mut self, line: u64, record: &[u8], ends: &mut Vec<usize>) -> Result<(), OperatorError> {
        if !record.is_empty() {
            ends.push(record.len());
            self.append(line, record, Fields::Split(ends), record)?;
        }
        ends.clear();
        Ok(())
    }

    /// The bytes fed since the last complete record (the start of the next
    /// one, blank lines before it included); None while an over-long
    /// record is read past, whose start is no longer kept.
    pub fn unfinished(&self) -> Option<&[u8]> {
        match self.skip {
            Some(_) => None,
            None => Some(&self.raw),
        }
    }

    /// The schema of the batches, once the header (and inference) settled it.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.plan.as_ref().map(|p| p.schema.clone())
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn take_ready(&mut self) -> Option<Batch> {
        self.ready.pop_front()
    }

    /// Rejects so far. None before the schema settled: a checkpoint taken
    /// then restarts the object, which would raise them a second time.
    pub fn take_rejects(&mut self) -> Option<Batch> {
        if self.plan.is_none() && !self.done {
            return None;
        }
        self.rejects.finish()
    }

    pub fn pending_rejects(&self) -> usize {
        self.rejects.len()
    }

    /// Feeds the next chunk of the object.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), OperatorError> {
        // An empty slice means end of input to csv_core; a stream may yield
        // an empty chunk mid-file, which must not end the record.
        if chunk.is_empty() {
            return Ok(());
        }
        if !self.bom_checked {
            // The BOM may straddle chunks in theory; keep bytes until 3 are seen.
            self.bom_prefix.extend_from_slice(chunk);
            if self.bom_prefix.len() < UTF8_BOM.len() {
                return Ok(());
            }
            self.bom_checked = true;
            let buf = std::mem::take(&mut self.bom_prefix);
            let start = if buf.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
            return self.decode(&buf[start..]);
        }
        self.decode(chunk)
    }

    /// The object is fully read: flush the last record and the last batch.
    pub fn finish(&mut self) -> Result<(), OperatorError> {
        if !self.bom_checked {
            self.bom_checked = true;
            let buf = std::mem::take(&mut self.bom_prefix);
            let start = if buf.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
            self.decode(&buf[start..])?;
        }
        // An empty input tells csv_core the stream ended; a last line without
        // a terminator completes here.
        self.decode(&[])?;
        if self.opts.header && self.header.is_none() {
            return Err(OperatorError::Data(format!(
                "{} is empty: expected a header line (set header = false for a file without one)",
                self.object
            )));
        }
        if self.plan.is_none() {
            self.settle_plan()?;
        }
        self.flush_batch()?;
        if self.rows_accepted == 0 {
            self.announce_schema()?;
        }
        self.done = true;
        Ok(())
    }

    /// No row at all (a header-only file): one empty batch carries the
    /// schema, so that sinks can still write a header.
    fn announce_schema(&mut self) -> Result<(), OperatorError> {
        let Some(plan) = &self.plan else { return Ok(()) };
        if plan.schema.fields().is_empty() {
            return Ok(());
        }
        self.ready.push_back(Batch::new(RecordBatch::new_empty(plan.schema.clone())));
        Ok(())
    }

    fn decode(&mut self, mut input: &[u8]) -> Result<(), OperatorError> {
        let at_eof = input.is_empty();
        loop {
            if let Some(skip) = &mut self.skip {
                // An empty slice would tell the parser the input ended.
                if input.is_empty() && !at_eof {
                    return Ok(());
                }
                // The record is read to its end by the same parser, so that
                // quotes decide where it ends; its fields are written over
                // the same buffers again and again, never kept.
                let (res, nin, _, _) = self.reader.read_record(input, &mut self.out, &mut self.ends);
                self.consumed += nin as u64;
                if nin > 0 {
                    skip.bytes += nin as u64;
                    skip.last = input[nin - 1];
                }
                let terminated = !input.is_empty();
                input = &input[nin..];
                match res {
                    ReadRecordResult::InputEmpty if !at_eof => return Ok(()),
                    ReadRecordResult::Record => self.end_skip(terminated)?,
                    ReadRecordResult::End => return Ok(()),
                    _ => {}
                }
                continue;
            }
            let terminated = !input.is_empty();
            let (res, nin, nout, nend) =
                self.reader.read_record(input, &mut self.out[self.out_len..], &mut self.ends[self.ends_len..]);
            self.consumed += nin as u64;
            self.raw.extend_from_slice(&input[..nin]);
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            if res != ReadRecordResult::Record && self.raw.len() > self.opts.max_record_bytes && self.start_skip() {
                continue;
            }
            match res {
                ReadRecordResult::InputEmpty => {
                    if !at_eof {
                        return Ok(());
                    }
                }
                ReadRecordResult::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                ReadRecordResult::Record => {
                    // A record that arrived whole in one read is held to
                    // the same bound as one that had to be skipped.
                    let (line, start, _) = self.record_position();
                    let bytes = (self.raw.len() - start) as u64;
                    if bytes.saturating_sub(u64::from(terminated)) > self.opts.max_record_bytes as u64 {
                        let head = self.raw[start..self.raw.len().min(start + EXCERPT_BYTES)].to_vec();
                        let last = self.raw.last().copied().unwrap_or_default();
                        self.too_long(line, &head, bytes, last, terminated)?;
                    } else {
                        self.after_record = (self.consumed, self.line_base + self.reader.line());
                        self.on_record()?;
                    }
                    self.out_len = 0;
                    self.ends_len = 0;
                    self.raw.clear();
                    self.line_at_raw_start = self.line_base + self.reader.line();
                }
                ReadRecordResult::End => return Ok(()),
            }
        }
    }

    /// `raw` passed `max_record_bytes` before its record ended: drop the
    /// blank lines before the record (they are not part of it), and if the
    /// record itself is still too long, switch to skipping it. Returns
    /// whether it did.
    fn start_skip(&mut self) -> bool {
        let lead = self.raw.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
        if lead > 0 {
            // The record starts after them: the position a checkpoint
            // records moves there too (`raw` is what a resume re-reads).
            self.line_at_raw_start += count_newlines(&self.raw[..lead]);
            self.raw.drain(..lead);
        }
        if self.raw.len() <= self.opts.max_record_bytes {
            return false;
        }
        self.skip = Some(Skip {
            line: self.line_at_raw_start,
            bytes: self.raw.len() as u64,
            start: self.raw[..self.raw.len().min(EXCERPT_BYTES)].to_vec(),
            last: self.raw.last().copied().unwrap_or_default(),
        });
        self.raw = Vec::with_capacity(1024);
        self.out_len = 0;
        self.ends_len = 0;
        self.out.truncate(64 * 1024);
        self.out.shrink_to_fit();
        true
    }

    /// The over-long record being skipped ended (`terminated`: by a line
    /// terminator, not by the end of the input).
    fn end_skip(&mut self, terminated: bool) -> Result<(), OperatorError> {
        let Some(skip) = self.skip.take() else { return Ok(()) };
        self.line_at_raw_start = self.line_base + self.reader.line();
        self.too_long(skip.line, &skip.start, skip.bytes, skip.last, terminated)
    }

    /// A record of `bytes` bytes (its terminator included when
    /// `terminated`), over `max_record_bytes`, just ended at the reader's
    /// position: one reject at the line where it starts, or an error if it
    /// was the header. `start` is its first bytes, `last` its last one.
    fn too_long(
        &mut self,
        line: u64,
        start: &[u8],
        bytes: u64,
        last: u8,
        terminated: bool,
    ) -> Result<(), OperatorError> {
        // A `\n` that ended the record (or ended the input inside quotes) was
        // counted by the reader already; a `\r` of a CRLF ends a record
        // before its `\n` is read.
        let last_line = self.line_base + self.reader.line() - u64::from(last == b'\n');
        let len = bytes.saturating_sub(u64::from(terminated));
        let lines = if last_line > line {
            format!("lines {}–{}", thousands(line), thousands(last_line))
        } else {
            format!("line {}", thousands(line))
        };
        let unterminated = if !terminated && last_line > line {
            "; it runs to the end of the input, most likely from an unterminated quote"
        } else {
            ""
        };
        let shown = excerpt_of_prefix(start, len);
        if self.opts.header && self.header.is_none() {
            return Err(OperatorError::Data(format!(
                "the header of {} ({lines}) is {} bytes long, more than max_record_bytes ({}){unterminated}; it starts with: {shown}",
                self.object,
                thousands(len),
                thousands(self.opts.max_record_bytes as u64),
            )));
        }
        let reason = format!(
            "the record at {lines} is {} bytes long, more than max_record_bytes ({}): skipped whole{unterminated}",
            thousands(len),
            thousands(self.opts.max_record_bytes as u64),
        );
        // No `raw`: the record is over the bound the rejects keep, and a
        // cut record replayed would be a different row.
        self.rejects.push(Reject {
            line: Some(line),
            column: None,
            rule: "record_too_long",
            value: Some(&shown),
            reason: &reason,
            raw: None,
        });
        Ok(())
    }

    /// Line number where the record now in `raw` starts, and its text.
    fn record_position(&self) -> (u64, usize, usize) {
        let lead = self.raw.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
        let newlines = count_newlines(&self.raw[..lead]);
        let mut end = self.raw.len();
        while end > lead && (self.raw[end - 1] == b'\n' || self.raw[end - 1] == b'\r') {
            end -= 1;
        }
        (self.line_at_raw_start + newlines, lead, end)
    }

    fn on_record(&mut self) -> Result<(), OperatorError> {
        let (line, raw_start, raw_end) = self.record_position();
        if self.opts.header && self.header.is_none() {
            let names = (0..self.ends_len)
                .map(|i| String::from_utf8_lossy(self.field(i)).trim().to_string())
                .collect::<Vec<_>>();
            self.header = Some(names);
            if self.opts.schema.is_some() {
                self.settle_plan()?;
            }
            return Ok(());
        }
        if self.plan.is_none() {
            if self.opts.schema.is_some() || self.opts.infer_rows == 0 {
                self.settle_plan()?;
            } else {
                self.held.push(Held {
                    line,
                    data: self.out[..self.out_len].to_vec(),
                    ends: self.ends[..self.ends_len].to_vec(),
                    raw: self.raw[raw_start..raw_end].to_vec(),
                });
                if self.held.len() >= self.opts.infer_rows {
                    self.settle_plan()?;
                }
                return Ok(());
            }
        }
        let data = std::mem::take(&mut self.out);
        let ends = std::mem::take(&mut self.ends);
        let raw = std::mem::take(&mut self.raw);
        let r =
            self.append(line, &data[..self.out_len], Fields::Packed(&ends[..self.ends_len]), &raw[raw_start..raw_end]);
        self.out = data;
        self.ends = ends;
        self.raw = raw;
        r
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// Fixes the output schema: from the declared schema (matched to the
    /// header by name), or inferred from the rows held so far.
    fn settle_plan(&mut self) -> Result<(), OperatorError> {
        let held = std::mem::take(&mut self.held);
        let plan = match &self.opts.schema {
            Some(decl) => self.plan_declared(decl, held.first())?,
            None => self.plan_inferred(&held),
        };
        self.cols = plan.columns.iter().map(|&(_, ty)| Col::new(ty, self.opts.batch_size)).collect();
        self.plan = Some(plan);
        for h in held {
            self.append(h.line, &h.data, Fields::Packed(&h.ends), &h.raw)?;
        }
        Ok(())
    }

    fn plan_declared(&self, decl: &[ColumnDecl], _first: Option<&Held>) -> Result<Plan, OperatorError> {
        let (columns, expected_fields) = match &self.header {
            Some(names) => {
                let mut cols = Vec::with_capacity(decl.len());
                for d in decl {
                    let Some(idx) = names.iter().position(|n| n == &d.name) else {
                        return Err(OperatorError::Data(format!(
                            "column `{}` of the declared schema is not in the header of {} (header: {})",
                            d.name,
                            self.object,
                            names.join(", ")
                        )));
                    };
                    cols.push((idx, d.ty));
                }
                (cols, names.len())
            }
            None => (decl.iter().enumerate().map(|(i, d)| (i, d.ty)).collect(), decl.len()),
        };
        let field_names = match &self.header {
            Some(names) => names.clone(),
            None => decl.iter().map(|d| d.name.clone()).collect(),
        };
        let fields = decl.iter().map(|d| Field::new(&d.name, d.ty.data_type(), true)).collect::<Vec<_>>();
        Ok(Plan { schema: Arc::new(Schema::new(fields)), columns, expected_fields, field_names })
    }

    fn plan_inferred(&self, held: &[Held]) -> Plan {
        let width = match &self.header {
            Some(h) => h.len(),
            None => held.first().map(|h| h.ends.len()).unwrap_or(0),
        };
        let names: Vec<String> = match &self.header {
            Some(h) => h.clone(),
            None => (1..=width).map(|i| format!("column_{i}")).collect(),
        };
        let mut types = Vec::with_capacity(width);
        for c in 0..width {
            let values = held.iter().filter(|h| h.ends.len() == width).map(|h| {
                let start = if c == 0 { 0 } else { h.ends[c - 1] };
                &h.data[start..h.ends[c]]
            });
            types.push(infer_type(values));
        }
        let fields = names.iter().zip(&types).map(|(n, t)| Field::new(n, t.data_type(), true)).collect::<Vec<_>>();
        Plan {
            schema: Arc::new(Schema::new(fields)),
            columns: types.into_iter().enumerate().collect(),
            expected_fields: width,
            field_names: names,
        }
    }

    /// Parses one record into cells, then appends all of them or none.
    fn append(&mut self, line: u64, data: &[u8], fields: Fields, raw: &[u8]) -> Result<(), OperatorError> {
        let Some(plan) = &self.plan else { return Ok(()) };
        if fields.len() != plan.expected_fields {
            let (expected, found) = (plan.expected_fields, fields.len());
            let field = |i: usize| {
                let (s, e) = fields.range(i);
                &data[s..e]
            };
            let (column, value, reason) = if found < expected {
                // The first field with nothing for it; no value to show.
                let missing = &plan.field_names[found.min(plan.field_names.len())..];
                let column = missing.first().cloned().unwrap_or_else(|| format!("field {}", found + 1));
                let reason = format!("expected {expected} fields, found {found}: no value for {}", missing.join(", "));
                (column, None, reason)
            } else {
                // The first field past the last column, and what is there
                // from it on (fields joined by the delimiter, unquoted).
                let column = format!("field {}", expected + 1);
                let mut extra = Vec::new();
                for i in expected..found {
                    if i > expected {
                        extra.push(self.opts.delimiter);
                    }
                    extra.extend_from_slice(field(i));
                }
                let extra = String::from_utf8_lossy(&extra).into_owned();
                let reason =
                    format!("expected {expected} fields, found {found}: `{}` is past the last column", excerpt(&extra));
                (column, Some(extra), reason)
            };
            let raw = String::from_utf8_lossy(raw);
            self.rejects.push(Reject {
                line: Some(line),
                column: Some(&column),
                rule: "columns",
                value: value.as_deref(),
                reason: &reason,
                raw: Some(&raw),
            });
            return Ok(());
        }
        self.cells.clear();
        for (out_idx, &(idx, ty)) in plan.columns.iter().enumerate() {
            let (start, end) = fields.range(idx);
            match parse_cell(&data[start..end], ty, start, self.utf8_checked) {
                Ok(cell) => self.cells.push(cell),
                Err(why) => {
                    let column = plan.schema.field(out_idx).name().clone();
                    let value = String::from_utf8_lossy(&data[start..end]).into_owned();
                    let (rule, reason) = match why {
                        ParseFail::Utf8 => ("utf8", format!("column {column} is not valid UTF-8")),
                        ParseFail::Type => {
                            ("parse", format!("`{}` is not a valid {} for column {column}", excerpt(&value), ty.name()))
                        }
                    };
                    let raw = String::from_utf8_lossy(raw);
                    self.rejects.push(Reject {
                        line: Some(line),
                        column: Some(&column),
                        rule,
                        value: Some(&value),
                        reason: &reason,
                        raw: Some(&raw),
                    });
                    return Ok(());
                }
            }
        }
        for (col, cell) in self.cols.iter_mut().zip(&self.cells) {
            match (col, *cell) {
                (Col::Str(b), Cell::Str(s, e)) => b.append_value(as_str(&data[s..e], self.utf8_checked)),
                (Col::Str(b), Cell::Null) => b.append_value(""),
                (Col::I64(b), Cell::I64(v)) => b.append_value(v),
                (Col::I32(b), Cell::I32(v)) => b.append_value(v),
                (Col::F64(b), Cell::F64(v)) => b.append_value(v),
                (Col::Bool(b), Cell::Bool(v)) => b.append_value(v),
                (Col::I64(b), _) => b.append_null(),
                (Col::I32(b), _) => b.append_null(),
                (Col::F64(b), _) => b.append_null(),
                (Col::Bool(b), _) => b.append_null(),
                (Col::Str(b), _) => b.append_null(),
            }
        }
        self.lines.append_value(line);
        self.texts.append_value(raw);
        self.rows_accepted += 1;
        if self.lines.len() >= self.opts.batch_size || self.texts.values_slice().len() >= BATCH_TEXT_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Rows per batch from now on (at least 1): a source follows what its
    /// consumers can take in a checkpoint interval.
    pub fn set_batch_size(&mut self, rows: usize) {
        self.opts.batch_size = rows.max(1);
    }

    fn flush_batch(&mut self) -> Result<(), OperatorError> {
        let Some(plan) = &self.plan else { return Ok(()) };
        if self.lines.len() == 0 {
            return Ok(());
        }
        let rows = self.opts.batch_size.min(self.lines.len().max(64));
        let arrays = self.cols.iter_mut().map(|c| c.take(rows)).collect::<Vec<_>>();
        let lines = std::mem::replace(&mut self.lines, UInt64Builder::with_capacity(rows)).finish();
        // The next batch's text will be about as long: one allocation, not
        // a dozen doublings and copies per batch.
        let size = self.texts.values_slice().len();
        let texts = std::mem::replace(&mut self.texts, BinaryBuilder::with_capacity(rows, size)).finish();
        let n = lines.len();
        let records = RecordBatch::try_new_with_options(
            plan.schema.clone(),
            arrays,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| OperatorError::arrow(format!("building a batch from {}", self.object), e))?;
        self.ready.push_back(Batch::with_lines(records, lines).with_raw(texts));
        if self.unit_ends.is_some() {
            let rejects = self.rejects.finish();
            if let Some(ends) = &mut self.unit_ends {
                ends.push_back((self.after_record, rejects));
            }
        }
        Ok(())
    }
}

enum ParseFail {
    Utf8,
    Type,
}

/// How many `\n` bytes `bytes` holds. The segment dispatcher counts each
/// segment's lines serially, on the source task, before its decoding can
/// start: 16 bytes at a time (SSE2, which every x86_64 has), into byte-wide
/// counters summed every 255 blocks, before one could overflow. Plain
/// `filter(..).count()` widens every byte's result to 64 bits: it took ~4%
/// of the CPU of a run on the 3× file, this takes under 0.5%.
pub fn count_newlines(bytes: &[u8]) -> u64 {
    let (blocks, rest) = bytes.as_chunks::<16>();
    let mut total = 0u64;
    for group in blocks.chunks(255) {
        total += count_in_blocks(group);
    }
    total + rest.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Newlines in at most 255 blocks of 16 bytes.
#[cfg(target_arch = "x86_64")]
fn count_in_blocks(group: &[[u8; 16]]) -> u64 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_sad_epu8, _mm_set1_epi8, _mm_setzero_si128,
        _mm_sub_epi8, _mm_unpackhi_epi64,
    };
    debug_assert!(group.len() <= 255, "a byte counter holds 255");
    // SAFETY: SSE2 is part of every x86_64 target; each load is an
    // unaligned 16-byte load from a 16-byte array.
    unsafe {
        let newline = _mm_set1_epi8(b'\n' as i8);
        let zero = _mm_setzero_si128();
        let mut counts = zero;
        for block in group {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            // A match is all ones (-1): subtracting it counts one.
            counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(v, newline));
        }
        // Two sums of eight counters each, in the low bits of each half.
        let sums = _mm_sad_epu8(counts, zero);
        (_mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums))) as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn count_in_blocks(group: &[[u8; 16]]) -> u64 {
    group.iter().flatten().filter(|&&b| b == b'\n').count() as u64
}

/// The high bit of each byte of `word` that equals `byte`, exactly (no
/// false positive from a borrow, unlike the shorter `haszero` trick).
#[inline]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (0x0101_0101_0101_0101 * u64::from(byte));
    !(((x & !HIGH).wrapping_add(!HIGH)) | x | !HIGH)
}

/// `bytes` as text; `checked`: the whole input they come from was valid
/// UTF-8 (see [`CsvDecoder::set_utf8_checked`]).
fn as_str(bytes: &[u8], checked: bool) -> &str {
    if checked {
        // SAFETY: the caller validated the whole input as UTF-8, and a field
        // is a slice of it cut at ASCII bytes (delimiter, line terminator)
        // or an unquoted copy of such a slice with ASCII quotes removed:
        // both are valid UTF-8 again.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

fn parse_cell(bytes: &[u8], ty: ColumnType, offset: usize, utf8_checked: bool) -> Result<Cell, ParseFail> {
    let s = if utf8_checked { as_str(bytes, true) } else { std::str::from_utf8(bytes).map_err(|_| ParseFail::Utf8)? };
    if ty == ColumnType::String {
        return Ok(Cell::Str(offset, offset + bytes.len()));
    }
    // Most numbers have no spaces around them: no trim to run.
    let t = match bytes {
        [first, .., last]
            if !first.is_ascii_whitespace() && !last.is_ascii_whitespace() && first.is_ascii() && last.is_ascii() =>
        {
            s
        }
        _ => s.trim(),
    };
    if t.is_empty() {
        return Ok(Cell::Null);
    }
    match ty {
        ColumnType::Int64 => match small_int(t.as_bytes()) {
            Some(v) => Ok(Cell::I64(v)),
            None => t.parse().map(Cell::I64).map_err(|_| ParseFail::Type),
        },
        ColumnType::Int32 => t.parse().map(Cell::I32).map_err(|_| ParseFail::Type),
        ColumnType::Float64 => t.parse().map(Cell::F64).map_err(|_| ParseFail::Type),
        ColumnType::Boolean => parse_bool(t).map(Cell::Bool).ok_or(ParseFail::Type),
        ColumnType::String => unreachable!("handled above"),
    }
}

/// An integer of 1 to 18 ASCII digits after an optional sign: what
/// `str::parse::<i64>` accepts there, without its overflow checks (18
/// digits cannot overflow). Anything else is left to `parse`.
#[inline]
fn small_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(if neg { -v } else { v })
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The narrowest type every non-empty value parses as.
fn infer_type<'a>(values: impl Iterator<Item = &'a [u8]>) -> ColumnType {
    let (mut int, mut float, mut boolean, mut any) = (true, true, true, false);
    for v in values {
        let Ok(s) = std::str::from_utf8(v) else { return ColumnType::String };
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        any = true;
        int &= s.parse::<i64>().is_ok();
        float &= s.parse::<f64>().is_ok();
        boolean &= parse_bool(s).is_some();
        if !(int || float || boolean) {
            return ColumnType::String;
        }
    }
    match (any, int, float, boolean) {
        (false, ..) => ColumnType::String,
        (_, true, ..) => ColumnType::Int64,
        (_, _, true, _) => ColumnType::Float64,
        (_, _, _, true) => ColumnType::Boolean,
        _ => ColumnType::String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn opts(schema: Option<Vec<ColumnDecl>>) -> CsvOptions {
        CsvOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            schema,
            infer_rows: 100,
            batch_size: 1000,
            max_record_bytes: 1 << 20,
        }
    }

    fn decl(cols: &[(&str, ColumnType)]) -> Option<Vec<ColumnDecl>> {
        Some(cols.iter().map(|(n, t)| ColumnDecl { name: n.to_string(), ty: *t }).collect())
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns (data batches, rejects).
    fn run(input: &[u8], o: CsvOptions, chunk: usize) -> (Vec<Batch>, Vec<Batch>) {
        let mut d = CsvDecoder::new("src", "test.csv", o);
        for c in input.chunks(chunk.max(1)) {
            d.feed(c).unwrap();
        }
        d.finish().unwrap();
        let mut data = vec![];
        while let Some(b) = d.take_ready() {
            data.push(b);
        }
        let rejects = d.take_rejects().into_iter().collect();
        (data, rejects)
    }

    /// (line, first column as text) of every row and reject, in order.
    fn rows_of(batches: &[Batch]) -> Vec<(u64, String)> {
        let mut out = vec![];
        for b in batches {
            let col = arrow::compute::cast(b.records.column(0), &DataType::Utf8).unwrap();
            let col = col.as_string::<i32>();
            for i in 0..b.num_rows() {
                out.push((b.line(i).unwrap(), col.value(i).to_string()));
            }
        }
        out
    }

    /// Feeds `input` in chunks of `chunk` bytes, takes a checkpoint after
    /// `stop_after` chunks, and continues with a decoder resumed at the
    /// recorded offset; returns what both emitted (data, rejects).
    fn run_with_checkpoint(input: &[u8], o: &CsvOptions, chunk: usize, stop_after: usize) -> (Vec<Batch>, Vec<Batch>) {
        let mut d = CsvDecoder::new("src", "t.csv", o.clone());
        let mut fed = 0u64;
        for c in input.chunks(chunk).take(stop_after) {
            d.feed(c).unwrap();
            fed += c.len() as u64;
        }
        let cp = d.checkpoint().unwrap();
        let (mut data, mut rej) = (vec![], vec![]);
        while let Some(b) = d.take_ready() {
            data.push(b);
        }
        rej.extend(d.take_rejects());
        let (offset, mut d2) = match &cp {
            Some((pending, pos)) => (fed - pending, CsvDecoder::resume("src", "t.csv", o.clone(), pos).unwrap()),
            None => {
                // Nothing emitted yet: a resumed run starts over.
                assert!(data.is_empty(), "rows emitted without a position");
                assert!(rej.is_empty(), "rejects emitted without a position");
                (0, CsvDecoder::new("src", "t.csv", o.clone()))
            }
        };
        for c in input[offset as usize..].chunks(chunk) {
            d2.feed(c).unwrap();
        }
        d2.finish().unwrap();
        while let Some(b) = d2.take_ready() {
            data.push(b);
        }
        rej.extend(d2.take_rejects());
        (data, rej)
    }

    /// Every value of every row and reject, as text, with its line.
    fn cells_of(batches: &[Batch]) -> Vec<(u64, Vec<String>)> {
        let mut out = vec![];
        for b in batches {
            let cols: Vec<_> =
                b.records.columns().iter().map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap()).collect();
            for i in 0..b.num_rows() {
                let row = cols
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(i) { "<null>".to_string() } else { c.value(i).to_string() }
                    })
                    .collect();
                out.push((b.line(i).unwrap(), row));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn small_int_agrees_with_parse(s in "[-+]?[0-9a ]{0,21}") {
            if let Some(v) = small_int(s.as_bytes()) {
                proptest::prop_assert_eq!(Ok(v), s.parse::<i64>());
            }
        }
    }

    proptest::proptest! {
        /// Counters are summed before they overflow: inputs up to ~6
        /// groups of 255 blocks, mostly newlines, with any tail.
        #[test]
        fn count_newlines_agrees_with_a_plain_count(
            input in proptest::collection::vec(proptest::sample::select(vec![b'\n', b'\n', b'\n', b'a', b'\r']), 0..25_000),
        ) {
            let want = input.iter().filter(|&&b| b == b'\n').count() as u64;
            proptest::prop_assert_eq!(count_newlines(&input), want);
        }
    }

    #[test]
    fn count_newlines_past_255_blocks_of_only_newlines() {
        for n in [0, 15, 16, 17, 255 * 16, 255 * 16 + 1, 256 * 16, 3 * 255 * 16 + 17] {
            assert_eq!(count_newlines(&vec![b'\n'; n]), n as u64, "{n}");
        }
    }

    #[test]
    fn small_int_takes_what_parse_takes_up_to_18_digits() {
        for s in ["0", "-0", "+7", "123456789012345678", "-123456789012345678", "0001"] {
            assert_eq!(small_int(s.as_bytes()), s.parse::<i64>().ok(), "{s}");
        }
        for s in ["", "-", "+", "1 ", "1a", "1234567890123456789", "--1"] {
            assert_eq!(small_int(s.as_bytes()), None, "{s}");
        }
    }

    proptest::proptest! {
        /// The plain path reads input without quotes or `\r` exactly as
        /// csv-core does: rows, values, lines, raw text and rejects.
        #[test]
        fn the_plain_path_reads_what_csv_core_reads(
            input in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'7', b'-', b' ', b',', b'\n', b'\n', 0xC3, 0xA9, 0xFF]), 0..300),
            checked in proptest::bool::ANY,
        ) {
            let o = CsvOptions {
                max_record_bytes: 1000,
                ..opts(decl(&[("n", ColumnType::Int64), ("s", ColumnType::String), ("f", ColumnType::Float64)]))
            };
            let pos = DecoderPosition {
                line: 5,
                header: Some(vec!["n".into(), "s".into(), "f".into()]),
                types: vec![ColumnType::Int64, ColumnType::String, ColumnType::Float64],
            };
            let utf8 = std::str::from_utf8(&input).is_ok();
            let read = |plain: bool| {
                let mut d = CsvDecoder::resume("src", "t.csv", o.clone(), &pos).unwrap();
                d.set_utf8_checked(checked && utf8);
                if plain { d.decode_plain(&input).unwrap() } else { d.feed(&input).unwrap() }
                d.finish().unwrap();
                let mut data = vec![];
                while let Some(b) = d.take_ready() {
                    data.push(b);
                }
                let rej: Vec<Batch> = d.take_rejects().into_iter().collect();
                (cells_of(&data), texts_of(&data), cells_of(&rej))
            };
            proptest::prop_assert_eq!(read(true), read(false));
        }
    }

    /// A checkpoint taken after any chunk, then a decoder resumed at the
    /// recorded offset, together read exactly what one uninterrupted decoder
    /// reads (chunked 1, 3 and 7 bytes): same rows, same line numbers, same
    /// rejects. Returns the uninterrupted result.
    fn assert_resumes_exactly(input: &[u8], o: &CsvOptions) -> (Vec<Batch>, Vec<Batch>) {
        let (whole, whole_rej) = run(input, o.clone(), 1000);
        let want = (rows_of(&whole), rows_of(&whole_rej), texts_of(&whole));
        for chunk in [1, 3, 7] {
            for stop_after in 1..input.len().div_ceil(chunk) {
                let (data, rej) = run_with_checkpoint(input, o, chunk, stop_after);
                assert_eq!(
                    (rows_of(&data), rows_of(&rej), texts_of(&data)),
                    want,
                    "chunk {chunk}, checkpoint after {stop_after} chunks"
                );
                if o.schema.is_none() {
                    assert_eq!(data[0].records.schema(), whole[0].records.schema(), "inferred types kept");
                }
            }
        }
        (whole, whole_rej)
    }

    /// The source text beside every row.
    fn texts_of(batches: &[Batch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| String::from_utf8_lossy(b.raw(i).unwrap()).into_owned()))
            .collect()
    }

    #[test]
    fn resuming_at_the_checkpoint_offset_reads_every_row_once() {
        let input = "\u{feff}a,b\r\n1,x\r\n2,\"multi\nline\"\r\n\r\nbad\r\n3,\"q,\"\"z\"\r\n4,w\n5,v";
        for schema in [None, decl(&[("a", ColumnType::Int64), ("b", ColumnType::String)])] {
            let o = CsvOptions { infer_rows: 1, batch_size: 2, ..opts(schema.clone()) };
            let (whole, _) = assert_resumes_exactly(input.as_bytes(), &o);
            assert_eq!(rows_of(&whole).len(), 5);
            assert_eq!(whole[0].records.schema().field(0).data_type(), &DataType::Int64);
        }
    }

    /// Over-long records (one plain line, one quoted across lines, one at
    /// the very end without a terminator) with a checkpoint at every
    /// position, while one is being skipped included: each is rejected
    /// once, at its first line, and every other row and line number is
    /// what an uninterrupted read gives.
    #[test]
    fn a_checkpoint_while_an_over_long_record_is_skipped_resumes_exactly() {
        let long = "x,".repeat(20);
        let input = format!(
            "a,b\r\n1,x\r\n2,{long}y\r\n\r\n3,\"{long}\r\n{long}\"\r\nbad\r\n4,w\n5,\"{long}\"z\n6,v\n7,{long}"
        );
        for schema in [None, decl(&[("a", ColumnType::Int64), ("b", ColumnType::String)])] {
            let o = CsvOptions { infer_rows: 1, batch_size: 2, max_record_bytes: 16, ..opts(schema.clone()) };
            let (whole, rejects) = assert_resumes_exactly(input.as_bytes(), &o);
            let rows: Vec<u64> = rows_of(&whole).iter().map(|r| r.0).collect();
            assert_eq!(rows, [2, 8, 10], "rows at lines 2 (1,x), 8 (4,w) and 10 (6,v)");
            assert_eq!(texts_of(&whole), ["1,x", "4,w", "6,v"]);
            let r = &rejects[0].records;
            let lines = (0..r.num_rows()).map(|i| rejects[0].line(i).unwrap()).collect::<Vec<_>>();
            let rule = r.column(3).as_string::<i32>();
            assert_eq!(lines, [3, 5, 7, 9, 11]);
            let rules = (0..r.num_rows()).map(|i| rule.value(i)).collect::<Vec<_>>();
            assert_eq!(rules, ["record_too_long", "record_too_long", "columns", "record_too_long", "record_too_long"]);
            let reason = r.column(5).as_string::<i32>();
            assert!(reason.value(1).starts_with("the record at lines 5–6 is 86 bytes long"), "{}", reason.value(1));
            assert!(r.column(6).is_null(0), "no raw for a record over the bound");
        }
    }

    #[test]
    fn quoted_fields_bom_crlf_and_line_numbers_survive_any_chunking() {
        let input = "\u{FEFF}Id,Name\r\n1,\"O\"\"Brien, Jr\"\r\n2,\"two\nlines\"\r\n\r\n3,Zoë\r\n".as_bytes();
        for chunk in [1, 2, 3, 7, 1024] {
            let (data, rejects) =
                run(input, opts(decl(&[("Id", ColumnType::Int64), ("Name", ColumnType::String)])), chunk);
            assert!(rejects.is_empty());
            assert_eq!(data.len(), 1);
            let b = &data[0];
            assert_eq!(b.records.schema().field(0).name(), "Id");
            let names = b.records.column(1).as_string::<i32>();
            assert_eq!(names.value(0), "O\"Brien, Jr");
            assert_eq!(names.value(1), "two\nlines");
            assert_eq!(names.value(2), "Zoë");
            let lines: Vec<u64> = (0..3).map(|i| b.line(i).unwrap()).collect();
            assert_eq!(lines, vec![2, 3, 6], "chunk size {chunk}");
            // Each row's source text, as read: quotes and all, no terminator.
            assert_eq!(texts_of(&data), ["1,\"O\"\"Brien, Jr\"", "2,\"two\nlines\"", "3,Zoë"]);
        }
    }

    #[test]
    fn malformed_lines_are_rejected_with_line_raw_text_and_reason() {
        let input = b"Id,Year\n1,1880\n2\n3,abc\n4,1881,x\n5,\xff\n6,1882\n";
        let (data, rejects) = run(input, opts(decl(&[("Id", ColumnType::Int64), ("Year", ColumnType::Int64)])), 4);
        let rows: usize = data.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2);
        let r = &rejects[0].records;
        assert_eq!(r.num_rows(), 4);
        let line = r.column(0).as_primitive::<arrow::datatypes::UInt64Type>();
        assert_eq!((0..4).map(|i| line.value(i)).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        let rule = r.column(3).as_string::<i32>();
        assert_eq!(rule.value(0), "columns");
        assert_eq!(rule.value(1), "parse");
        assert_eq!(rule.value(2), "columns");
        assert_eq!(rule.value(3), "utf8");
        let reason = r.column(5).as_string::<i32>();
        assert_eq!(reason.value(0), "expected 2 fields, found 1: no value for Year");
        assert_eq!(reason.value(1), "`abc` is not a valid int64 for column Year");
        assert_eq!(reason.value(2), "expected 2 fields, found 3: `x` is past the last column");
        let raw = r.column(6).as_string::<i32>();
        assert_eq!(raw.value(0), "2");
        assert_eq!(raw.value(1), "3,abc");
        assert_eq!(raw.value(2), "4,1881,x");
        // Field-count rejects name a column too: the first missing one, or
        // the first field past the last column with what is there.
        let column = r.column(2).as_string::<i32>();
        let value = r.column(4).as_string::<i32>();
        assert_eq!((column.value(0), value.is_null(0)), ("Year", true));
        assert_eq!((column.value(2), value.value(2)), ("field 3", "x"));
    }

    /// A value over the excerpt bound is cut in `value` and `reason` with
    /// its length; `raw` keeps the record whole.
    #[test]
    fn a_long_bad_value_is_cut_in_value_and_reason_but_raw_is_whole() {
        let long = "9".repeat(4990) + "x";
        let input = format!("Id,Year\n1,{long}\n");
        let (_, rejects) =
            run(input.as_bytes(), opts(decl(&[("Id", ColumnType::Int64), ("Year", ColumnType::Int64)])), 64);
        let r = &rejects[0].records;
        let cut = format!("{}…(4,991 bytes)", "9".repeat(200));
        assert_eq!(r.column(4).as_string::<i32>().value(0), cut);
        assert_eq!(r.column(5).as_string::<i32>().value(0), format!("`{cut}` is not a valid int64 for column Year"));
        assert_eq!(r.column(6).as_string::<i32>().value(0), format!("1,{long}"));
    }

    /// A line of several KB without a newline inside the limit: one reject
    /// at its line (not one per slice of `max_record_bytes`, no slice of it
    /// taken for a row), and every line number after it is the file's.
    #[test]
    fn an_over_long_line_is_one_reject_and_later_lines_keep_their_numbers() {
        let mut input = b"Id,Name\n1,Ann\n2,".to_vec();
        // Slices of this line look like rows of their own (`7,Bob`).
        for _ in 0..1000 {
            input.extend_from_slice(b"7,Bob,");
        }
        input.extend_from_slice(b"end\n3,Cy\nx,bad\n4,Di\n");
        let mut o = opts(decl(&[("Id", ColumnType::Int64), ("Name", ColumnType::String)]));
        o.max_record_bytes = 256;
        for chunk in [1, 3, 7, 100, 1 << 16] {
            let (data, rejects) = run(&input, o.clone(), chunk);
            assert_eq!(
                rows_of(&data),
                [(2, "1".to_string()), (4, "3".to_string()), (6, "4".to_string())],
                "chunk {chunk}"
            );
            let r = &rejects[0].records;
            assert_eq!(r.num_rows(), 2, "chunk {chunk}");
            assert_eq!((rejects[0].line(0), rejects[0].line(1)), (Some(3), Some(5)));
            assert_eq!(r.column(3).as_string::<i32>().value(0), "record_too_long");
            assert_eq!(r.column(3).as_string::<i32>().value(1), "parse");
            let value = r.column(4).as_string::<i32>().value(0);
            assert!(value.starts_with("2,7,Bob,7,Bob") && value.ends_with("…(6,005 bytes)"), "{value}");
            assert!(value.len() < 300);
            assert_eq!(
                r.column(5).as_string::<i32>().value(0),
                "the record at line 3 is 6,005 bytes long, more than max_record_bytes (256): skipped whole"
            );
        }
    }

    /// A newline inside quotes does not end a record, over-long or not: an
    /// unterminated quote makes the rest of the input one record, which is
    /// rejected once and named as the likely cause. (Cutting it at a line
    /// instead would split a legitimate long quoted field into rows.)
    #[test]
    fn an_unterminated_quote_is_one_reject_that_says_so() {
        let mut input = b"Id,Name\n1,\"Ann\n".to_vec();
        for i in 2..2000 {
            input.extend_from_slice(format!("{i},Name{i}\n").as_bytes());
        }
        let mut o = opts(decl(&[("Id", ColumnType::Int64), ("Name", ColumnType::String)]));
        o.max_record_bytes = 256;
        for chunk in [7, 100, 1 << 16] {
            let (data, rejects) = run(&input, o.clone(), chunk);
            assert!(data.iter().all(|b| b.num_rows() == 0), "chunk {chunk}");
            let r = &rejects[0].records;
            assert_eq!(r.num_rows(), 1);
            assert_eq!(rejects[0].line(0), Some(2));
            assert_eq!(r.column(3).as_string::<i32>().value(0), "record_too_long");
            let reason = r.column(5).as_string::<i32>().value(0);
            assert!(reason.starts_with("the record at lines 2–2,000 is "), "{reason}");
            assert!(reason.ends_with("most likely from an unterminated quote"), "{reason}");
        }
    }

    /// A header over `max_record_bytes` is an error that shows its start
    /// and its length, not megabytes of it.
    #[test]
    fn an_over_long_header_is_one_error_with_an_excerpt_and_the_length() {
        let mut input = "Id,".repeat(100_000).into_bytes();
        input.extend_from_slice(b"Name\n1,Ann\n");
        let mut o = opts(None);
        o.max_record_bytes = 1000;
        for chunk in [7, 4096, 1 << 20] {
            let mut d = CsvDecoder::new("src", "h.csv", o.clone());
            let err = input
                .chunks(chunk)
                .map(|c| d.feed(c))
                .find_map(Result::err)
                .or_else(|| d.finish().err())
                .expect("an over-long header fails")
                .to_string();
            assert!(
                err.starts_with(
                    "the header of h.csv (line 1) is 300,004 bytes long, more than max_record_bytes (1,000); it starts with: Id,Id,"
                ),
                "{err}"
            );
            assert!(err.ends_with("…(300,004 bytes)") && err.len() < 400, "{err}");
        }
    }

    /// No data row: one empty batch with the schema, for sinks that write a
    /// header anyway.
    #[test]
    fn a_header_only_file_yields_the_schema_in_an_empty_batch() {
        for input in [&b"Id,Name\n"[..], b"Id,Name"] {
            let (data, rejects) = run(input, opts(None), 3);
            assert!(rejects.is_empty());
            assert_eq!(data.len(), 1);
            assert_eq!(data[0].num_rows(), 0);
            let names: Vec<_> = data[0].records.schema().fields().iter().map(|f| f.name().clone()).collect();
            assert_eq!(names, ["Id", "Name"]);
        }
    }

    #[test]
    fn an_empty_file_with_a_header_expected_is_an_error() {
        for input in [&b""[..], b"\xEF\xBB\xBF", b"\n\n"] {
            let mut d = CsvDecoder::new("src", "e.csv", opts(None));
            d.feed(input).unwrap();
            let err = d.finish().unwrap_err().to_string();
            assert!(err.starts_with("e.csv is empty: expected a header line"), "{err}");
        }
    }

    #[test]
    fn invalid_utf8_in_a_string_column_is_a_reject() {
        let input = b"Name\nok\nbad\xfe\n";
        let (data, rejects) = run(input, opts(decl(&[("Name", ColumnType::String)])), 100);
        assert_eq!(data[0].num_rows(), 1);
        let r = &rejects[0].records;
        assert_eq!(r.column(3).as_string::<i32>().value(0), "utf8");
        assert_eq!(r.column(0).as_primitive::<arrow::datatypes::UInt64Type>().value(0), 3);
    }

    #[test]
    fn types_are_inferred_from_the_first_rows() {
        let input = b"a;b;c;d\n1;2.5;true;x\n2;3;false;y\n";
        let mut o = opts(None);
        o.delimiter = b';';
        let (data, _) = run(input, o, 5);
        let s = data[0].records.schema();
        let types: Vec<_> = s.fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(types, vec![DataType::Int64, DataType::Float64, DataType::Boolean, DataType::Utf8]);
        assert_eq!(data[0].records.column(0).as_primitive::<Int64Type>().value(1), 2);
    }

    #[test]
    fn declared_columns_are_found_by_header_name() {
        let input = b"x,Year,Name\n9,1900,Ann\n";
        let (data, _) = run(input, opts(decl(&[("Name", ColumnType::String), ("Year", ColumnType::Int64)])), 64);
        assert_eq!(data[0].records.column(0).as_string::<i32>().value(0), "Ann");
        assert_eq!(data[0].records.column(1).as_primitive::<Int64Type>().value(0), 1900);
    }

    #[test]
    fn a_declared_column_missing_from_the_header_is_an_error_naming_the_header() {
        let mut d = CsvDecoder::new("src", "t.csv", opts(decl(&[("Count", ColumnType::Int64)])));
        let err = d.feed(b"Id,Name\n1,a\n").unwrap_err().to_string();
        assert_eq!(err, "column `Count` of the declared schema is not in the header of t.csv (header: Id, Name)");
    }

    #[test]
    fn batches_are_cut_at_batch_size_and_empty_numbers_are_null() {
        let mut o = opts(decl(&[("n", ColumnType::Int64)]));
        o.batch_size = 2;
        let (data, _) = run(b"n\n1\n\n2\n\"\"\n3\n", o, 3);
        assert_eq!(data.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![2, 2]);
        assert!(data[1].records.column(0).is_null(0));
    }
}
