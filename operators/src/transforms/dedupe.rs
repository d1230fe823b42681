//! `kind = "dedupe"`: drops rows whose key was already seen; the first row
//! with a key wins. Exact, not probabilistic: every key is kept.
//!
//! Keys are encoded a batch at a time into short byte strings ([`KeyCodec`]:
//! strings as a length and their bytes, integers as varints, so that
//! `("Mary", 1880, "F")` takes 9 bytes; Arrow's row format for types the
//! compact form does not cover), hashed in one pass, then looked up in a
//! [`KeySet`] with the next keys' slots prefetched.
//!
//! Checkpoints are incremental: a checkpoint stores only the keys added since
//! the last barrier (a [`Snapshot::Delta`]). A resumed run re-inserts every
//! delta of its run, so a duplicate that straddles a crash is still dropped.
//! Deltas of an older build hold row-format keys: they are kept aside and
//! re-encoded once the first batch tells their schema.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef};
use arrow::datatypes::{UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use serde::Deserialize;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::keyset::{DeltaKeys, KeySet, KeySetError, delta_keys};

/// Port where dropped rows go, for whoever wants to see them.
pub const DUPLICATES: usize = 1;

/// How many keys ahead of the one being inserted its table slot is
/// fetched, and (half as far ahead) the key that slot points to.
const PREFETCH: usize = 16;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Columns that together identify a row.
    pub key: Vec<String>,
}

/// How a schema's key columns become bytes. Either form is injective: two
/// keys get the same bytes exactly when every column is equal (both null
/// counts as equal, as in SQL's `DISTINCT`).
pub enum KeyCodec {
    /// Per column: null as a 0 byte; a string as varint(len + 1) and its
    /// bytes; an integer as varint(zigzag(v) + 1); a boolean as 1 or 2; a
    /// float as 1 and its 8 bytes.
    Compact,
    /// Arrow's row format, for any other type.
    Rows(RowConverter),
}

impl KeyCodec {
    fn for_types(types: &[DataType]) -> Result<KeyCodec, OperatorError> {
        if types.iter().all(compact) {
            return Ok(KeyCodec::Compact);
        }
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        Ok(KeyCodec::Rows(RowConverter::new(fields).map_err(|e| OperatorError::arrow("preparing the key encoder", e))?))
    }

    /// The keys of `cols`' rows, back to back in `buf`, row `i` ending at
    /// `ends[i]`.
    fn encode(&self, cols: &[ArrayRef], buf: &mut Vec<u8>, ends: &mut Vec<usize>) -> Result<(), OperatorError> {
        buf.clear();
        ends.clear();
        let n = cols.first().map_or(0, |c| c.len());
        match self {
            KeyCodec::Rows(conv) => {
                let rows = conv.convert_columns(cols).map_err(|e| OperatorError::arrow("encoding keys", e))?;
                for i in 0..n {
                    buf.extend_from_slice(rows.row(i).as_ref());
                    ends.push(buf.len());
                }
            }
            KeyCodec::Compact => {
                let cols = cols.iter().map(|c| Col::of(c.as_ref())).collect::<Vec<_>>();
                buf.reserve(n * 16);
                ends.reserve(n);
                for i in 0..n {
                    for c in &cols {
                        c.put(i, buf);
                    }
                    ends.push(buf.len());
                }
            }
        }
        Ok(())
    }
}

fn compact(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Utf8 | LargeUtf8
            | Binary
            | LargeBinary
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Boolean
            | Float64
    )
}

/// A key column, downcast once per batch; the common types without a call
/// through a pointer per value.
enum Col<'a> {
    Utf8(&'a arrow::array::StringArray),
    I64(&'a arrow::array::Int64Array),
    I32(&'a arrow::array::Int32Array),
    Bytes(Option<&'a NullBuffer>, Box<dyn Fn(usize) -> &'a [u8] + 'a>),
    Int(Option<&'a NullBuffer>, Box<dyn Fn(usize) -> i128 + 'a>),
    Bool(&'a arrow::array::BooleanArray),
    F64(&'a arrow::array::Float64Array),
}

impl<'a> Col<'a> {
    fn of(a: &'a dyn Array) -> Col<'a> {
        macro_rules! int {
            ($t:ty) => {{
                let p = a.as_primitive::<$t>();
                Col::Int(a.nulls(), Box::new(move |i| p.value(i) as i128))
            }};
        }
        match a.data_type() {
            DataType::Utf8 => Col::Utf8(a.as_string::<i32>()),
            DataType::Int64 => Col::I64(a.as_primitive::<Int64Type>()),
            DataType::Int32 => Col::I32(a.as_primitive::<Int32Type>()),
            DataType::LargeUtf8 => {
                let s = a.as_string::<i64>();
                Col::Bytes(a.nulls(), Box::new(move |i| s.value(i).as_bytes()))
            }
            DataType::Binary => {
                let s = a.as_binary::<i32>();
                Col::Bytes(a.nulls(), Box::new(move |i| s.value(i)))
            }
            DataType::LargeBinary => {
                let s = a.as_binary::<i64>();
                Col::Bytes(a.nulls(), Box::new(move |i| s.value(i)))
            }
            DataType::Int8 => int!(Int8Type),
            DataType::Int16 => int!(Int16Type),
            DataType::UInt8 => int!(UInt8Type),
            DataType::UInt16 => int!(UInt16Type),
            DataType::UInt32 => int!(UInt32Type),
            DataType::UInt64 => int!(UInt64Type),
            DataType::Boolean => Col::Bool(a.as_boolean()),
            // `compact` admits nothing else.
            _ => Col::F64(a.as_primitive::<arrow::datatypes::Float64Type>()),
        }
    }

    #[inline]
    fn put(&self, i: usize, out: &mut Vec<u8>) {
        let null = |n: Option<&NullBuffer>| n.is_some_and(|n| n.is_null(i));
        match self {
            Col::Utf8(a) if !a.is_null(i) => put_bytes(out, a.value(i).as_bytes()),
            Col::I64(a) if !a.is_null(i) => put_i64(out, a.value(i)),
            Col::I32(a) if !a.is_null(i) => put_i64(out, i64::from(a.value(i))),
            Col::Bytes(n, v) if !null(*n) => put_bytes(out, v(i)),
            Col::Int(n, v) if !null(*n) => put_int(out, v(i)),
            Col::Bool(a) if !a.is_null(i) => out.push(1 + u8::from(a.value(i))),
            Col::F64(a) if !a.is_null(i) => {
                out.push(1);
                out.extend_from_slice(&a.value(i).to_bits().to_le_bytes());
            }
            _ => out.push(0),
        }
    }
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u128 + 1);
    out.extend_from_slice(b);
}

#[inline]
fn put_int(out: &mut Vec<u8>, x: i128) {
    put_varint(out, (((x << 1) ^ (x >> 127)) as u128) + 1);
}

/// [`put_int`] for an i64, in 64-bit arithmetic: the same bytes.
#[inline]
fn put_i64(out: &mut Vec<u8>, x: i64) {
    let z = ((x << 1) ^ (x >> 63)) as u64;
    match z.checked_add(1) {
        Some(mut n) => {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        None => put_int(out, i128::from(x)),
    }
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut n: u128) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct Prepared {
    schema: SchemaRef,
    idx: Vec<usize>,
    codec: KeyCodec,
}

pub struct Dedupe {
    cfg: DedupeConfig,
    keys: KeySet,
    prepared: Option<Prepared>,
    /// Restored deltas of an older build (row-format keys), re-encoded at
    /// the first batch.
    legacy: Vec<Vec<u8>>,
    buf: Vec<u8>,
    ends: Vec<usize>,
    hashes: Vec<u64>,
}

pub fn build(_ctx: &BuildContext, cfg: DedupeConfig) -> Result<Dedupe, OperatorError> {
    if cfg.key.is_empty() {
        return Err(OperatorError::Config("key must name at least one column".into()));
    }
    Ok(Dedupe {
        cfg,
        keys: KeySet::default(),
        prepared: None,
        legacy: Vec::new(),
        buf: Vec::new(),
        ends: Vec::new(),
        hashes: Vec::new(),
    })
}

fn full(e: KeySetError) -> OperatorError {
    OperatorError::Data(format!("dedupe: {e}"))
}

impl Dedupe {
    fn prepare(&mut self, schema: &SchemaRef) -> Result<(), OperatorError> {
        if self.prepared.as_ref().is_some_and(|p| &p.schema == schema) {
            return Ok(());
        }
        let mut idx = Vec::with_capacity(self.cfg.key.len());
        for k in &self.cfg.key {
            let Ok(i) = schema.index_of(k) else {
                let have = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
                return Err(OperatorError::Config(format!("key column `{k}` is not in the input (columns: {have})")));
            };
            idx.push(i);
        }
        let types = idx.iter().map(|&i| schema.field(i).data_type().clone()).collect::<Vec<_>>();
        let codec = KeyCodec::for_types(&types)?;
        self.prepared = Some(Prepared { schema: schema.clone(), idx, codec });
        self.convert_legacy(&types)
    }

    /// Re-encodes the row-format keys of an older build's deltas with this
    /// schema's codec and inserts them (they are already in the store).
    fn convert_legacy(&mut self, types: &[DataType]) -> Result<(), OperatorError> {
        let legacy = std::mem::take(&mut self.legacy);
        let Some(p) = &self.prepared else { return Ok(()) };
        if legacy.is_empty() {
            return Ok(());
        }
        let rows = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())
            .map_err(|e| OperatorError::arrow("preparing the key decoder", e))?;
        let parser = rows.parser();
        let mut n = 0;
        for d in &legacy {
            let keys = DeltaKeys::new(d)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OperatorError::Resume(format!("a dedupe delta of an older build is damaged: {e}")))?;
            for part in keys.chunks(8192) {
                let cols = rows
                    .convert_rows(part.iter().map(|k| parser.parse(k)))
                    .map_err(|e| OperatorError::arrow("decoding an older build's dedupe keys", e))?;
                p.codec.encode(&cols, &mut self.buf, &mut self.ends)?;
                let mut start = 0;
                for &end in &self.ends {
                    self.keys.insert(&self.buf[start..end]).map_err(full)?;
                    start = end;
                }
                n += part.len();
            }
        }
        self.keys.mark_taken();
        tracing::info!(keys = n, "dedupe keys of an older build re-encoded");
        Ok(())
    }

    /// Inserts this batch's keys; which rows were new.
    fn insert_batch(&mut self, batch: &Batch) -> Result<(BooleanBufferBuilder, u64), OperatorError> {
        let Some(p) = &self.prepared else { return Ok((BooleanBufferBuilder::new(0), 0)) };
        let cols = p.idx.iter().map(|&i| batch.records.column(i).clone()).collect::<Vec<_>>();
        p.codec.encode(&cols, &mut self.buf, &mut self.ends)?;
        let n = self.ends.len();
        // All hashes first: then the slot of the key PREFETCH rows ahead is
        // on its way while this one is compared.
        self.hashes.clear();
        let mut start = 0;
        for &end in &self.ends {
            self.hashes.push(self.keys.hash(&self.buf[start..end]));
            start = end;
        }
        let mut keep = BooleanBufferBuilder::new(n);
        let mut dropped = 0u64;
        let mut start = 0;
        for i in 0..n {
            if let Some(&h) = self.hashes.get(i + PREFETCH) {
                self.keys.prefetch(h);
            }
            if let Some(&h) = self.hashes.get(i + PREFETCH / 2) {
                self.keys.prefetch_key(h);
            }
            let end = self.ends[i];
            let new = self.keys.insert_hashed(&self.buf[start..end], self.hashes[i]).map_err(full)?;
            start = end;
            dropped += u64::from(!new);
            keep.append(new);
        }
        Ok((keep, dropped))
    }
}

#[async_trait]
impl Operator for Dedupe {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        self.prepare(&batch.records.schema())?;
        let (mut keep, dropped) = self.insert_batch(&batch)?;
        if dropped == 0 {
            return out.emit(OUT, batch).await;
        }
        out.record_dropped(dropped);
        let keep = BooleanArray::new(keep.finish(), None);
        if out.is_connected(DUPLICATES) {
            let dup_mask = arrow::compute::not(&keep).map_err(|e| OperatorError::arrow("inverting", e))?;
            let dups = batch.filter(&dup_mask).map_err(|e| OperatorError::arrow("selecting duplicates", e))?;
            out.emit(DUPLICATES, dups).await?;
        }
        let kept = batch.filter(&keep).map_err(|e| OperatorError::arrow("dropping duplicates", e))?;
        out.emit(OUT, kept).await
    }

    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        Ok(Snapshot::Delta(self.keys.take_added()))
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        let damaged = |i: usize, e: KeySetError| {
            OperatorError::Resume(format!(
                "delta {} of {} in checkpoint {} is damaged: {e}",
                i + 1,
                resume.deltas.len(),
                resume.epoch
            ))
        };
        // Sized once for every key: no table doubling (and no old and new
        // table side by side) while a resumed run rebuilds its set.
        let mut total = 0;
        for (i, d) in resume.deltas.iter().enumerate() {
            total += delta_keys(d).map_err(|e| damaged(i, e))?;
        }
        self.keys.reserve(total);
        for (i, d) in resume.deltas.iter().enumerate() {
            if DeltaKeys::new(d).is_legacy() {
                self.legacy.push(d.clone());
                continue;
            }
            self.keys.insert_delta(d).map_err(|e| damaged(i, e))?;
        }
        // What was restored is already in the store.
        self.keys.mark_taken();
        tracing::info!(keys = self.keys.len(), deltas = resume.deltas.len(), "dedupe keys restored");
        Ok(())
    }

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        tracing::info!(keys = self.keys.len(), memory_bytes = self.keys.memory_bytes(), "dedupe finished");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn cols(rows: &[(Option<&str>, Option<i64>)]) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        ]
    }

    fn encoded(codec: &KeyCodec, rows: &[(Option<&str>, Option<i64>)]) -> Vec<Vec<u8>> {
        let (mut buf, mut ends) = (Vec::new(), Vec::new());
        codec.encode(&cols(rows), &mut buf, &mut ends).unwrap();
        let mut start = 0;
        ends.iter()
            .map(|&e| {
                let k = buf[start..e].to_vec();
                start = e;
                k
            })
            .collect()
    }

    #[test]
    fn the_compact_key_is_injective_and_short() {
        let codec = KeyCodec::for_types(&[DataType::Utf8, DataType::Int64]).unwrap();
        assert!(matches!(codec, KeyCodec::Compact));
        let rows = [
            (Some("Mary"), Some(1880)),
            (Some(""), Some(0)),
            (None, Some(0)),
            (Some(""), None),
            (None, None),
            (Some("a"), Some(-1)),
            (Some("a"), Some(1)),
            (Some("\u{0}"), Some(0)),
            (Some("a"), Some(i64::MIN)),
            (Some("a"), Some(i64::MAX)),
        ];
        let keys = encoded(&codec, &rows);
        let distinct = keys.iter().collect::<std::collections::HashSet<_>>();
        assert_eq!(distinct.len(), rows.len(), "{keys:?}");
        assert_eq!(keys[0].len(), 1 + 4 + 2, "Mary, 1880");
        assert_eq!(encoded(&codec, &rows[..1]), keys[..1], "the same row, the same bytes");
    }

    #[test]
    fn the_64_bit_integer_form_is_the_128_bit_one() {
        for x in [0, 1, -1, 63, -64, 64, 1880, i64::MAX, i64::MIN, i64::MIN + 1, 1 << 40] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_i64(&mut a, x);
            put_int(&mut b, i128::from(x));
            assert_eq!(a, b, "{x}");
        }
    }

    #[test]
    fn other_types_use_the_row_format() {
        let codec = KeyCodec::for_types(&[DataType::Utf8, DataType::Date32]).unwrap();
        assert!(matches!(codec, KeyCodec::Rows(_)));
    }

    fn batch(rows: &[(Option<&str>, Option<i64>)]) -> Batch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Utf8, true), Field::new("y", DataType::Int64, true)]));
        Batch::new(RecordBatch::try_new(schema, cols(rows)).unwrap())
    }

    fn ctx() -> BuildContext {
        BuildContext {
            pipeline: "p".into(),
            id: "d".into(),
            batch_size: 10,
            raw_options: Default::default(),
            rotation: None,
        }
    }

    #[tokio::test]
    async fn a_resumed_dedupe_reads_an_older_builds_row_format_deltas() {
        // What the previous build stored: row-format keys, u32 lengths.
        let rows = RowConverter::new(vec![SortField::new(DataType::Utf8), SortField::new(DataType::Int64)]).unwrap();
        let old = rows.convert_columns(&cols(&[(Some("ann"), Some(1)), (None, Some(2))])).unwrap();
        let mut delta = Vec::new();
        for r in old.iter() {
            delta.extend_from_slice(&(r.as_ref().len() as u32).to_le_bytes());
            delta.extend_from_slice(r.as_ref());
        }
        let mut d = build(&ctx(), DedupeConfig { key: vec!["n".into(), "y".into()] }).unwrap();
        let resume = Resume { epoch: 3, full: None, deltas: vec![delta] };
        d.restore(&resume).await.unwrap();
        d.prepare(&batch(&[]).records.schema()).unwrap();
        let (mut keep, dropped) =
            d.insert_batch(&batch(&[(Some("ann"), Some(1)), (Some("ann"), Some(2)), (None, Some(2))])).unwrap();
        assert_eq!(dropped, 2);
        let keep = keep.finish();
        assert_eq!((keep.value(0), keep.value(1), keep.value(2)), (false, true, false));
        // The re-encoded keys were in the store already: not in the next delta.
        let Snapshot::Delta(next) = d
            .on_barrier(
                Barrier { epoch: 4 },
                &mut crate::api::Collector::new("d", vec![], Default::default(), Default::default()),
            )
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(delta_keys(&next).unwrap(), 1, "only (ann, 2) is new");
    }
}
