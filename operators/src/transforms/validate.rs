//! `kind = "validate"`: per-column rules checked on whole Arrow arrays.
//! Rows that break a rule go to the `rejects` port naming the column, the
//! rule and the value, with the row's source text as `raw` (kept beside the
//! batch by the source); the rest pass on untouched (the batch itself when
//! every row passes, so the common case copies nothing).
//!
//! Rules are compiled against the schema of the first batch, since an
//! inferred CSV schema is only known once rows arrive.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Datum, Scalar};
use arrow::compute::kernels::cmp;
use arrow::compute::{cast, is_null, not, or_kleene};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use regex::Regex;
use serde::Deserialize;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError};
use crate::batch::Batch;
use crate::rejects::{Reject, RejectsBuilder, excerpt, raw_of};

pub const REJECTS: usize = 1;

/// Rules for one column; every rule is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRules {
    /// Null (or an empty string) is a violation.
    #[serde(default)]
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Length in characters, not bytes.
    pub min_len: Option<usize>,
    pub max_len: Option<usize>,
    pub one_of: Option<Vec<String>>,
    /// A regex that must match somewhere in the value (anchor it with ^…$).
    pub pattern: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Column name → its rules.
    pub rules: BTreeMap<String, ColumnRules>,
}

/// One compiled check: a column, a rule name and how to find violators.
struct Check {
    column: usize,
    name: String,
    rule: &'static str,
    describe: String,
    kind: CheckKind,
}

enum CheckKind {
    Required,
    Below(Arc<dyn Datum + Send + Sync>),
    Above(Arc<dyn Datum + Send + Sync>),
    MinLen(usize),
    MaxLen(usize),
    OneOf(Vec<String>),
    Pattern(Regex),
}

pub struct Validate {
    id: String,
    cfg: ValidateConfig,
    compiled: Option<(SchemaRef, Vec<Check>)>,
}

pub fn build(ctx: &BuildContext, cfg: ValidateConfig) -> Result<Validate, OperatorError> {
    // Fail on a bad regex before any row moves.
    for (col, r) in &cfg.rules {
        if let Some(p) = &r.pattern {
            Regex::new(p).map_err(|e| OperatorError::Config(format!("pattern for column {col}: {e}")))?;
        }
        if let (Some(lo), Some(hi)) = (r.min, r.max)
            && lo > hi
        {
            return Err(OperatorError::Config(format!("column {col}: min {lo} is above max {hi}")));
        }
    }
    Ok(Validate { id: ctx.id.clone(), cfg, compiled: None })
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { v.to_string() }
}

/// The bound as a one-element Int64 (integer column, whole bound) or Float64
/// array. The column is widened to the bound's type at check time, never the
/// bound narrowed to the column's: a bound outside an int32 column's range
/// must still compare, not turn into null and pass everything.
fn bound(v: f64, ty: &DataType) -> Result<Arc<dyn Datum + Send + Sync>, OperatorError> {
    let arr: ArrayRef = if ty.is_integer() && v.fract() == 0.0 && v.abs() < 9.0e18 {
        Arc::new(arrow::array::Int64Array::from(vec![v as i64]))
    } else {
        Arc::new(arrow::array::Float64Array::from(vec![v]))
    };
    Ok(Arc::new(Scalar::new(arr)))
}

fn compile(cfg: &ValidateConfig, schema: &SchemaRef) -> Result<Vec<Check>, OperatorError> {
    let mut checks = Vec::new();
    for (name, r) in &cfg.rules {
        let Ok(column) = schema.index_of(name) else {
            let have = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
            return Err(OperatorError::Config(format!(
                "rules name column `{name}`, which the input does not have (columns: {have})"
            )));
        };
        let ty = schema.field(column).data_type();
        let is_text = matches!(ty, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        let mut push = |rule: &'static str, describe: String, kind: CheckKind| {
            checks.push(Check { column, name: name.clone(), rule, describe, kind });
        };
        if r.required {
            push("required", "is required".into(), CheckKind::Required);
        }
        if r.min.is_some() || r.max.is_some() {
            if !ty.is_numeric() {
                return Err(OperatorError::Config(format!(
                    "min/max on column {name} need a number column, it is {ty}"
                )));
            }
        }
        if let Some(v) = r.min {
            push("min", format!("is below min {}", fmt_num(v)), CheckKind::Below(bound(v, ty)?));
        }
        if let Some(v) = r.max {
            push("max", format!("is above max {}", fmt_num(v)), CheckKind::Above(bound(v, ty)?));
        }
        if (r.min_len.is_some() || r.max_len.is_some() || r.one_of.is_some() || r.pattern.is_some()) && !is_text {
            return Err(OperatorError::Config(format!(
                "min_len/max_len/one_of/pattern on column {name} need a string column, it is {ty}"
            )));
        }
        if let Some(n) = r.min_len {
            push("min_len", format!("is shorter than {n} characters"), CheckKind::MinLen(n));
        }
        if let Some(n) = r.max_len {
            push("max_len", format!("is longer than {n} characters"), CheckKind::MaxLen(n));
        }
        if let Some(set) = &r.one_of {
            push("one_of", format!("is not one of {}", set.join(", ")), CheckKind::OneOf(set.clone()));
        }
        if let Some(p) = &r.pattern {
            let re = Regex::new(p).map_err(|e| OperatorError::Config(format!("pattern for column {name}: {e}")))?;
            push("pattern", format!("does not match {p}"), CheckKind::Pattern(re));
        }
    }
    Ok(checks)
}

/// A string column as Utf8 whatever its physical string type.
fn as_utf8(col: &ArrayRef) -> Result<ArrayRef, OperatorError> {
    if col.data_type() == &DataType::Utf8 {
        Ok(col.clone())
    } else {
        cast(col, &DataType::Utf8).map_err(|e| OperatorError::arrow("reading a string column", e))
    }
}

/// Builds a mask from a per-value predicate over a string column; nulls pass
/// (they are `required`'s business).
fn string_mask(col: &ArrayRef, bad: impl Fn(&str) -> bool) -> Result<BooleanArray, OperatorError> {
    let col = as_utf8(col)?;
    let s = col.as_string::<i32>();
    let mut b = BooleanBufferBuilder::new(s.len());
    for i in 0..s.len() {
        b.append(s.is_valid(i) && bad(s.value(i)));
    }
    Ok(BooleanArray::new(b.finish(), None))
}

/// True where the row violates the check.
fn violations(check: &Check, col: &ArrayRef) -> Result<BooleanArray, OperatorError> {
    let ctx = |e| OperatorError::arrow(format!("checking {} on column {}", check.rule, check.name), e);
    let numeric = |col: &ArrayRef, b: &Arc<dyn Datum + Send + Sync>| -> Result<ArrayRef, OperatorError> {
        let (arr, _) = b.get();
        if arr.data_type() == col.data_type() { Ok(col.clone()) } else { cast(col, arr.data_type()).map_err(ctx) }
    };
    let mask = match &check.kind {
        CheckKind::Required => {
            let nulls = is_null(col).map_err(ctx)?;
            if matches!(col.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                let empty = string_mask(col, |v| v.is_empty())?;
                or_kleene(&nulls, &empty).map_err(ctx)?
            } else {
                nulls
            }
        }
        CheckKind::Below(b) => cmp::lt(&numeric(col, b)?, b.as_ref()).map_err(ctx)?,
        CheckKind::Above(b) => cmp::gt(&numeric(col, b)?, b.as_ref()).map_err(ctx)?,
        // Byte length bounds the character count from above: count
        // characters only where bytes alone cannot decide.
        // A character is at most 4 bytes: from 4n bytes on there are n
        // characters without counting them.
        CheckKind::MinLen(n) => string_mask(col, |v| v.len() < *n || (v.len() < 4 * *n && v.chars().count() < *n))?,
        CheckKind::MaxLen(n) => string_mask(col, |v| v.len() > *n && v.chars().count() > *n)?,
        CheckKind::OneOf(set) => string_mask(col, |v| !set.iter().any(|s| s == v))?,
        CheckKind::Pattern(re) => string_mask(col, |v| !re.is_match(v))?,
    };
    // A null comparison result (null input) is not a violation.
    Ok(match mask.nulls() {
        Some(_) => {
            let valid = not(&is_null(&mask).map_err(ctx)?).map_err(ctx)?;
            arrow::compute::and(&mask, &valid).map_err(ctx)?
        }
        None => mask,
    })
}

#[async_trait]
impl Operator for Validate {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        let schema = batch.records.schema();
        if self.compiled.as_ref().is_none_or(|(s, _)| s != &schema) {
            self.compiled = Some((schema.clone(), compile(&self.cfg, &schema)?));
        }
        let Some((_, checks)) = &self.compiled else { return Ok(()) };
        let n = batch.num_rows();
        let mut masks = Vec::with_capacity(checks.len());
        let mut any_bad: Option<BooleanArray> = None;
        for c in checks {
            let m = violations(c, batch.records.column(c.column))?;
            if m.true_count() > 0 {
                any_bad = Some(match any_bad {
                    Some(acc) => {
                        arrow::compute::or(&acc, &m).map_err(|e| OperatorError::arrow("combining rules", e))?
                    }
                    None => m.clone(),
                });
            }
            masks.push(m);
        }
        let Some(bad) = any_bad else {
            return out.emit(OUT, batch).await;
        };
        let mut rejects = RejectsBuilder::new(&self.id);
        for i in (0..n).filter(|&i| bad.value(i)) {
            // Report the first rule the row breaks, in declaration order.
            let Some((c, _)) = checks.iter().zip(&masks).find(|(_, m)| m.value(i)) else { continue };
            let col = batch.records.column(c.column);
            let value = arrow::util::display::array_value_to_string(col, i).unwrap_or_default();
            let value = if col.is_null(i) { None } else { Some(value) };
            let shown = match value.as_deref() {
                None => "null".to_string(),
                Some("") => "(empty)".to_string(),
                Some(v) => format!("`{}`", excerpt(v)),
            };
            let reason = format!("{} {} {}", c.name, shown, c.describe);
            let raw = raw_of(&batch, i);
            rejects.push(Reject {
                line: batch.line(i),
                column: Some(&c.name),
                rule: c.rule,
                value: value.as_deref(),
                reason: &reason,
                raw: Some(&raw),
            });
        }
        let good = not(&bad).map_err(|e| OperatorError::arrow("inverting the reject mask", e))?;
        let kept = batch.filter(&good).map_err(|e| OperatorError::arrow("filtering valid rows", e))?;
        if let Some(r) = rejects.finish() {
            out.emit(REJECTS, r).await?;
        }
        out.emit(OUT, kept).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn check(rules: ColumnRules, col: ArrayRef) -> Vec<bool> {
        let schema = Arc::new(Schema::new(vec![Field::new("c", col.data_type().clone(), true)]));
        let cfg = ValidateConfig { rules: [("c".to_string(), rules)].into_iter().collect() };
        let checks = compile(&cfg, &schema).unwrap();
        let batch = RecordBatch::try_new(schema, vec![col]).unwrap();
        let n = batch.num_rows();
        let mut bad = vec![false; n];
        for c in &checks {
            let m = violations(c, batch.column(c.column)).unwrap();
            for (i, b) in bad.iter_mut().enumerate() {
                *b |= m.value(i);
            }
        }
        bad
    }

    #[test]
    fn a_bound_outside_the_column_type_still_applies() {
        let col: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None, Some(i32::MAX)]));
        let rules = ColumnRules { min: Some(3_000_000_000.0), ..Default::default() };
        assert_eq!(check(rules, col.clone()), vec![true, false, true]);
        let rules = ColumnRules { max: Some(-1.0), required: true, ..Default::default() };
        assert_eq!(check(rules, col), vec![true, true, true]);
    }

    /// A 5,000-byte name: `value` and `reason` show an excerpt and the
    /// length, `raw` is the row's source text as the source read it (not a
    /// JSON rendering), whole.
    #[tokio::test]
    async fn a_reject_is_bounded_and_hands_back_the_source_text() {
        use crate::api::{OperatorStats, OutPort};
        use arrow::array::{AsArray, BinaryArray, UInt64Array};
        let long = "N".repeat(5000);
        let schema = Arc::new(Schema::new(vec![
            Field::new("Id", DataType::Int32, true),
            Field::new("Name", DataType::Utf8, true),
        ]));
        let rb = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int32Array::from(vec![1, 2])), Arc::new(StringArray::from(vec!["Ann", long.as_str()]))],
        )
        .unwrap();
        let texts = ["1,Ann".to_string(), format!("2, \"{long}\"")];
        let batch = Batch::with_lines(rb, UInt64Array::from(vec![2, 3]))
            .with_raw(BinaryArray::from_iter_values(texts.iter().map(|t| t.as_bytes())));
        let rules = ColumnRules { max_len: Some(64), ..Default::default() };
        let cfg = ValidateConfig { rules: [("Name".to_string(), rules)].into_iter().collect() };
        let ctx = BuildContext {
            pipeline: "p".into(),
            id: "valid".into(),
            batch_size: 10,
            raw_options: Default::default(),
            rotation: None,
        };
        let mut v = build(&ctx, cfg).unwrap();
        let (tx, rx) = async_channel::unbounded();
        let (rtx, rrx) = async_channel::unbounded();
        let ports = vec![OutPort::new("valid", "out", vec![tx]), OutPort::new("valid", "rejects", vec![rtx])];
        let mut out = Collector::new("valid", ports, Arc::new(OperatorStats::default()), Default::default());
        v.process(batch, &mut out).await.unwrap();
        let Ok(crate::batch::Message::Data(kept)) = rx.try_recv() else { panic!("no output") };
        assert_eq!(kept.num_rows(), 1);
        assert_eq!(kept.raw(0), Some(&b"1,Ann"[..]), "the source text follows the rows it belongs to");
        let Ok(crate::batch::Message::Data(r)) = rrx.try_recv() else { panic!("no reject") };
        let col = |name: &str| r.records.column_by_name(name).unwrap().as_string::<i32>().value(0).to_string();
        assert_eq!(col("raw"), texts[1]);
        assert_eq!(col("value"), format!("{}…(5,000 bytes)", "N".repeat(200)));
        assert_eq!(col("reason"), format!("Name `{}…(5,000 bytes)` is longer than 64 characters", "N".repeat(200)));
        assert_eq!(col("column"), "Name");
        assert_eq!(r.line(0), Some(3));
    }

    #[test]
    fn lengths_count_characters_and_nulls_only_fail_required() {
        let col: ArrayRef = Arc::new(StringArray::from(vec![Some("Zoë"), Some("Nguyễn"), Some(""), None]));
        let rules = ColumnRules { min_len: Some(1), max_len: Some(3), ..Default::default() };
        assert_eq!(check(rules, col.clone()), vec![false, true, true, false]);
        let rules = ColumnRules { required: true, ..Default::default() };
        assert_eq!(check(rules, col.clone()), vec![false, false, true, true]);
        let rules = ColumnRules { one_of: Some(vec!["Zoë".into()]), pattern: Some("^N".into()), ..Default::default() };
        assert_eq!(check(rules, col), vec![true, true, true, false]);
    }
}
