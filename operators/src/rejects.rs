//! The one shape every `rejects` port emits, whichever operator rejected the
//! row, so a single dead-letter sink can take rejects from everywhere, and
//! the bounds on what a reject may weigh.
//!
//! Every reject has all seven columns; one that does not apply is null
//! (never left out).
//!
//! | column   | meaning                                                    |
//! |----------|------------------------------------------------------------|
//! | line     | line (CSV) or row (Parquet) number in the source object   |
//! | operator | id of the operator that rejected the row                  |
//! | column   | offending column, when one is to blame (for a wrong number of fields: the first missing column, or `field N` for the first extra one) |
//! | rule     | short machine-readable cause (`parse`, `columns`, `max`…)  |
//! | value    | the offending value as text, cut at [`EXCERPT_BYTES`] with its length (`…(5,000 bytes)`) |
//! | reason   | a sentence for humans, quoting at most an excerpt of the value |
//! | raw      | the row's source text as read, whole (a CSV record is at most `max_record_bytes`): what a replay feeds back. Rows that never had text (Parquet) carry the row as JSON; a record too long to keep has none |
//!
//! `value` and `reason` are bounded here, whoever builds the reject: a long
//! value used to be repeated whole in `value`, `reason` and `raw`, tripling
//! its weight in the rejects file. `raw` is left whole because it is the
//! only copy of the row the rejects keep.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, StringBuilder, UInt64Array, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::batch::Batch;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("line", DataType::UInt64, true),
        Field::new("operator", DataType::Utf8, false),
        Field::new("column", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
    ]))
});

pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Bytes of a value kept in `value`, and quoted in `reason`.
pub const EXCERPT_BYTES: usize = 200;
/// Bound on `reason` (a sentence plus an excerpt; an external system's
/// message may be longer).
const REASON_BYTES: usize = 1024;
/// Room for the `…(N bytes)` marker after a cut, so that a value already
/// cut by [`excerpt`] is never cut again.
const MARKER_BYTES: usize = 40;
/// Bound on `raw` when it is a JSON rendering (rows with no source text):
/// the default `max_record_bytes`.
const JSON_RAW_BYTES: usize = 1 << 20;

/// `s` as is when it is at most `max` bytes, otherwise its first `max`
/// bytes (cut on a character boundary) and its length: `abc…(5,000 bytes)`.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} bytes)", &s[..end], thousands(s.len() as u64)))
}

/// [`clip`] to `max` unless `s` is within `max` plus the marker's room, so
/// that text an operator already cut (with [`excerpt`]) is kept as it is.
fn bound(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max + MARKER_BYTES { Cow::Borrowed(s) } else { clip(s, max) }
}

/// A value as `value` and `reason` show it: at most [`EXCERPT_BYTES`].
pub fn excerpt(s: &str) -> Cow<'_, str> {
    clip(s, EXCERPT_BYTES)
}

/// The start of a text whose whole is `total` bytes long (only the start was
/// kept), shown like [`excerpt`]: invalid UTF-8 replaced, a character cut by
/// the end of `start` dropped.
pub fn excerpt_of_prefix(start: &[u8], total: u64) -> String {
    let start = &start[..start.len().min(EXCERPT_BYTES)];
    let start = match std::str::from_utf8(start) {
        Err(e) if e.error_len().is_none() => &start[..e.valid_up_to()],
        _ => start,
    };
    let text = String::from_utf8_lossy(start);
    if (start.len() as u64) < total { format!("{text}…({} bytes)", thousands(total)) } else { text.into_owned() }
}

/// The source text of row `i` for the `raw` column: the text the source kept
/// beside the batch, else (a source with no text, e.g. Parquet) the row as
/// JSON, bounded.
pub fn raw_of(batch: &Batch, i: usize) -> String {
    match batch.raw(i) {
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => clip(&row_as_json(&batch.records, i), JSON_RAW_BYTES).into_owned(),
    }
}

fn thousands(n: u64) -> String {
    crate::sources::file::thousands(n)
}

/// One rejected row, borrowed while it is appended.
pub struct Reject<'a> {
    pub line: Option<u64>,
    pub column: Option<&'a str>,
    pub rule: &'a str,
    pub value: Option<&'a str>,
    pub reason: &'a str,
    pub raw: Option<&'a str>,
}

/// Accumulates rejects until the operator flushes them as one batch.
pub struct RejectsBuilder {
    operator: String,
    line: UInt64Builder,
    op: StringBuilder,
    column: StringBuilder,
    rule: StringBuilder,
    value: StringBuilder,
    reason: StringBuilder,
    raw: StringBuilder,
    len: usize,
}

impl RejectsBuilder {
    pub fn new(operator: &str) -> Self {
        RejectsBuilder {
            operator: operator.to_string(),
            line: UInt64Builder::new(),
            op: StringBuilder::new(),
            column: StringBuilder::new(),
            rule: StringBuilder::new(),
            value: StringBuilder::new(),
            reason: StringBuilder::new(),
            raw: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one reject; `value` and `reason` are cut to their bounds
    /// here, so no operator can make a reject heavier than its row.
    pub fn push(&mut self, r: Reject<'_>) {
        self.line.append_option(r.line);
        self.op.append_value(&self.operator);
        self.column.append_option(r.column.map(|c| bound(c, EXCERPT_BYTES)));
        self.rule.append_value(r.rule);
        self.value.append_option(r.value.map(|v| bound(v, EXCERPT_BYTES)));
        self.reason.append_value(bound(r.reason, REASON_BYTES));
        self.raw.append_option(r.raw);
        self.len += 1;
    }

    /// Takes what was pushed as a batch (its `lines` mirror the `line` column).
    pub fn finish(&mut self) -> Option<Batch> {
        if self.len == 0 {
            return None;
        }
        self.len = 0;
        let line = self.line.finish();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(line.clone()),
            Arc::new(self.op.finish()),
            Arc::new(self.column.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.raw.finish()),
        ];
        // The columns match SCHEMA by construction.
        let records = RecordBatch::try_new(schema(), columns).ok()?;
        Some(Batch::with_lines(records, UInt64Array::from(line)))
    }
}

/// Renders row `i` of a batch as a JSON object, for the `raw` column of
/// rows that have no source text (see [`raw_of`]).
pub fn row_as_json(records: &RecordBatch, i: usize) -> String {
    let row = records.slice(i, 1);
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        if w.write(&row).is_err() || w.finish().is_err() {
            return String::new();
        }
    }
    let s = String::from_utf8_lossy(&buf);
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_length() {
        assert_eq!(clip("short", 10), "short");
        let s = "é".repeat(150); // 300 bytes
        let cut = excerpt(&s);
        assert_eq!(cut, format!("{}…(300 bytes)", "é".repeat(100)));
        // A cut in the middle of a character keeps the character out.
        assert_eq!(clip("aé", 2), "a…(3 bytes)");
        assert_eq!(excerpt_of_prefix("aé".as_bytes().get(..2).unwrap(), 9_000), "a…(9,000 bytes)");
        assert_eq!(excerpt_of_prefix(b"whole", 5), "whole");
    }

    /// Whoever builds a reject, `value` and `reason` stay bounded; `raw` is
    /// the replay source and stays whole; what an operator cut already is
    /// not cut twice.
    #[test]
    fn the_builder_bounds_value_and_reason_but_not_raw() {
        let big = "v".repeat(1 << 20);
        let reason = format!("HubSpot said: {big}");
        let mut b = RejectsBuilder::new("op");
        b.push(Reject { line: Some(7), column: None, rule: "x", value: Some(&big), reason: &reason, raw: Some(&big) });
        let cut = excerpt(&big).into_owned();
        b.push(Reject { line: None, column: Some("c"), rule: "y", value: Some(&cut), reason: "r", raw: None });
        let r = b.finish().unwrap().records;
        let text = |c: &str, i: usize| r.column_by_name(c).unwrap().as_string::<i32>().value(i).to_string();
        assert_eq!(text("value", 0), format!("{}…(1,048,576 bytes)", "v".repeat(EXCERPT_BYTES)));
        assert!(text("reason", 0).starts_with("HubSpot said: vvv") && text("reason", 0).len() < REASON_BYTES + 30);
        assert_eq!(text("raw", 0).len(), 1 << 20);
        assert_eq!(text("value", 1), cut);
        // Every key is there for every reject, null when it does not apply.
        assert_eq!(r.schema(), schema());
        assert!(r.column_by_name("column").unwrap().is_null(0) && r.column_by_name("raw").unwrap().is_null(1));
    }
}
