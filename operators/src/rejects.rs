//! The one shape every `rejects` port emits, whichever operator rejected the
//! row, so a single dead-letter sink can take rejects from everywhere.
//!
//! | column   | meaning                                                    |
//! |----------|------------------------------------------------------------|
//! | line     | line (CSV) or row (Parquet) number in the source object   |
//! | operator | id of the operator that rejected the row                  |
//! | column   | offending column, when one is to blame                     |
//! | rule     | short machine-readable cause (`parse`, `columns`, `max`…)  |
//! | value    | the offending value as text                                |
//! | reason   | a sentence for humans                                      |
//! | raw      | the whole row: raw text for the CSV reader, JSON otherwise |

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

    pub fn push(&mut self, r: Reject<'_>) {
        self.line.append_option(r.line);
        self.op.append_value(&self.operator);
        self.column.append_option(r.column);
        self.rule.append_value(r.rule);
        self.value.append_option(r.value);
        self.reason.append_value(r.reason);
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
/// rejects raised after parsing (the original text is gone by then).
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
