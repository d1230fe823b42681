//! Rows on the queue, shared by the `nats` sink and source: the payload
//! (Arrow IPC), the partition function, and [`Seen`], a partition's row
//! sequences a worker already emitted.
//!
//! **Payload.** One Arrow IPC stream per message: the schema, then one
//! record batch of the user's columns plus [`LINE_COLUMN`] (each row's line
//! in the ingest's input, for rejects downstream). Arrow IPC is the
//! engine's own in-memory layout: encoding and decoding are copies, not
//! parsing; the schema travels in every message, so a worker needs no
//! declaration of its own, and the ~1 KB it costs is small against a
//! message of thousands of rows. An end-of-run marker carries the schema
//! and no batch.
//!
//! **Partition function** (`xxh64-text-v1`, documented in the README so any
//! producer can match it): the key columns' values as text (strings as
//! they are, integers in decimal, other types as Arrow displays them; a
//! null as the byte 0x00), each followed by the byte 0x1F; xxHash64 with
//! seed 0 of those bytes, modulo the partition count.

use std::fmt::Write as _;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;

/// Where `nats` kinds and the shared rate limit find NATS by default.
pub(crate) fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}

/// How long NATS may be unreachable before a `nats` kind fails the run.
pub(crate) fn default_patience() -> String {
    "5m".into()
}

/// Each row's line in the producer's input, carried beside the user's columns.
pub const LINE_COLUMN: &str = "__engine_line";

/// Encodes `batch` (user columns plus its lines) as one IPC stream.
pub fn encode(batch: &Batch) -> Result<Bytes, ArrowError> {
    let n = batch.num_rows();
    let lines: ArrayRef = match &batch.lines {
        Some(l) => l.clone(),
        None => Arc::new(UInt64Array::new_null(n)),
    };
    let mut fields: Vec<Arc<Field>> = batch.records.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(LINE_COLUMN, DataType::UInt64, true)));
    let mut columns = batch.records.columns().to_vec();
    columns.push(lines);
    let with_lines = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut w = StreamWriter::try_new(Vec::with_capacity(64 + n * 32), &with_lines.schema())?;
    w.write(&with_lines)?;
    w.finish()?;
    Ok(Bytes::from(w.into_inner()?))
}

/// An IPC stream with the schema only (an end-of-run marker).
pub fn encode_schema(schema: &Schema) -> Result<Bytes, ArrowError> {
    let mut w = StreamWriter::try_new(Vec::new(), schema)?;
    w.finish()?;
    Ok(Bytes::from(w.into_inner()?))
}

/// The user's schema and the rows of a payload (none for a marker).
pub fn decode(payload: &[u8]) -> Result<(SchemaRef, Vec<Batch>), ArrowError> {
    let reader = StreamReader::try_new(Cursor::new(payload), None)?;
    let full = reader.schema();
    let line_at = full.index_of(LINE_COLUMN).ok();
    let user: SchemaRef = match line_at {
        Some(i) => {
            let mut f: Vec<Arc<Field>> = full.fields().iter().cloned().collect();
            f.remove(i);
            Arc::new(Schema::new_with_metadata(f, full.metadata().clone()))
        }
        None => full.clone(),
    };
    let mut out = Vec::new();
    for b in reader {
        let b = b?;
        let Some(i) = line_at else {
            out.push(Batch::new(b));
            continue;
        };
        let mut cols = b.columns().to_vec();
        let lines = cols.remove(i);
        let records = RecordBatch::try_new(user.clone(), cols)?;
        let lines = lines.as_primitive_opt::<arrow::datatypes::UInt64Type>().cloned();
        out.push(match lines {
            Some(l) if l.null_count() < l.len() => Batch::with_lines(records, l),
            _ => Batch::new(records),
        });
    }
    Ok((user, out))
}

/// Assigns rows to partitions (`xxh64-text-v1`).
#[derive(Debug)]
pub struct Partitioner {
    columns: Vec<usize>,
    partitions: u32,
    buf: Vec<u8>,
}

impl Partitioner {
    /// For `schema`; errs naming the key columns the schema lacks.
    pub fn new(schema: &Schema, key: &[String], partitions: u32) -> Result<Partitioner, String> {
        let mut columns = Vec::new();
        for k in key {
            match schema.index_of(k) {
                Ok(i) => columns.push(i),
                Err(_) => {
                    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(format!(
                        "partition_by column `{k}` is not in the input (its columns: {})",
                        have.join(", ")
                    ));
                }
            }
        }
        Ok(Partitioner { columns, partitions: partitions.max(1), buf: Vec::new() })
    }

    /// The partition of each row of `records`.
    pub fn assign(&mut self, records: &RecordBatch) -> Vec<u32> {
        let n = records.num_rows();
        if self.partitions == 1 {
            return vec![0; n];
        }
        let cols: Vec<&ArrayRef> = self.columns.iter().map(|&i| records.column(i)).collect();
        let formatters: Vec<Option<arrow::util::display::ArrayFormatter>> = cols
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => None,
                t if t.is_integer() => None,
                _ => arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()).ok(),
            })
            .collect();
        (0..n)
            .map(|row| {
                self.buf.clear();
                for (c, f) in cols.iter().zip(&formatters) {
                    key_text(c.as_ref(), f.as_ref(), row, &mut self.buf);
                    self.buf.push(0x1F);
                }
                (twox_hash::XxHash64::oneshot(0, &self.buf) % u64::from(self.partitions)) as u32
            })
            .collect()
    }
}

/// The text of one key value (see the module's partition function).
fn key_text(a: &dyn Array, f: Option<&arrow::util::display::ArrayFormatter>, row: usize, out: &mut Vec<u8>) {
    if a.is_null(row) {
        out.push(0);
        return;
    }
    let mut s = String::new();
    match a.data_type() {
        DataType::Utf8 => return out.extend_from_slice(a.as_string::<i32>().value(row).as_bytes()),
        DataType::LargeUtf8 => return out.extend_from_slice(a.as_string::<i64>().value(row).as_bytes()),
        DataType::Utf8View => return out.extend_from_slice(a.as_string_view().value(row).as_bytes()),
        DataType::Int8 => write!(s, "{}", a.as_primitive::<arrow::datatypes::Int8Type>().value(row)),
        DataType::Int16 => write!(s, "{}", a.as_primitive::<arrow::datatypes::Int16Type>().value(row)),
        DataType::Int32 => write!(s, "{}", a.as_primitive::<arrow::datatypes::Int32Type>().value(row)),
        DataType::Int64 => write!(s, "{}", a.as_primitive::<arrow::datatypes::Int64Type>().value(row)),
        DataType::UInt8 => write!(s, "{}", a.as_primitive::<arrow::datatypes::UInt8Type>().value(row)),
        DataType::UInt16 => write!(s, "{}", a.as_primitive::<arrow::datatypes::UInt16Type>().value(row)),
        DataType::UInt32 => write!(s, "{}", a.as_primitive::<arrow::datatypes::UInt32Type>().value(row)),
        DataType::UInt64 => write!(s, "{}", a.as_primitive::<arrow::datatypes::UInt64Type>().value(row)),
        _ => match f {
            Some(f) => write!(s, "{}", f.value(row)),
            None => Ok(()),
        },
    }
    .ok();
    out.extend_from_slice(s.as_bytes());
}

/// A producer's row sequences of one partition that a worker already
/// emitted: everything below `next`, plus ranges above it that arrived out
/// of order (a publish re-sent after a later one was stored). Messages of
/// a resumed producer may overlap what its crashed run sent; claiming a
/// message's range gives back only the rows not seen yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub next: u64,
    /// Disjoint, sorted, each above `next` and not touching it.
    pub ahead: Vec<(u64, u64)>,
}

impl Seen {
    /// Marks `[a, b)` seen; returns its sub-ranges that were not.
    pub fn claim(&mut self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut fresh = Vec::new();
        let mut cur = a.max(self.next);
        for &(x, y) in &self.ahead {
            if cur >= b {
                break;
            }
            if y <= cur {
                continue;
            }
            if x > cur {
                fresh.push((cur, x.min(b)));
            }
            cur = cur.max(y);
        }
        if cur < b {
            fresh.push((cur, b));
        }
        for &(x, y) in &fresh {
            self.ahead.push((x, y));
        }
        self.normalise();
        fresh
    }

    fn normalise(&mut self) {
        self.ahead.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ahead.len());
        for &(x, y) in &self.ahead {
            match merged.last_mut() {
                Some(last) if x <= last.1 => last.1 = last.1.max(y),
                _ => merged.push((x, y)),
            }
        }
        while let Some(&(x, y)) = merged.first() {
            if x <= self.next {
                self.next = self.next.max(y);
                merged.remove(0);
            } else {
                break;
            }
        }
        self.ahead = merged;
    }

    /// The first range below `total` never seen, if any.
    pub fn hole_below(&self, total: u64) -> Option<(u64, u64)> {
        if self.next >= total {
            return None;
        }
        let end = self.ahead.first().map(|r| r.0).unwrap_or(total).min(total);
        Some((self.next, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn rows(names: &[&str], years: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, true),
            Field::new("Year", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(names.to_vec())), Arc::new(Int64Array::from(years.to_vec()))],
        )
        .unwrap()
    }

    #[test]
    fn payloads_round_trip_with_lines_and_schema() {
        let b = Batch::with_lines(rows(&["Mary", "Anna"], &[1880, 1881]), UInt64Array::from(vec![2, 7]));
        let (schema, out) = decode(&encode(&b).unwrap()).unwrap();
        assert_eq!(schema, b.records.schema());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].records, b.records);
        assert_eq!((out[0].line(0), out[0].line(1)), (Some(2), Some(7)));
        let (s2, none) = decode(&encode_schema(&schema).unwrap()).unwrap();
        assert_eq!((s2, none.len()), (schema, 0));
        assert!(decode(b"not arrow").is_err());
    }

    /// The documented function, computed by hand for one key, and every
    /// row of a batch landing in range.
    #[test]
    fn the_partition_function_is_the_documented_one() {
        let r = rows(&["Mary", "Anna", "Emma"], &[1880, 1880, 1990]);
        let mut p = Partitioner::new(&r.schema(), &["Name".into(), "Year".into()], 3).unwrap();
        let got = p.assign(&r);
        let want = (twox_hash::XxHash64::oneshot(0, b"Mary\x1f1880\x1f") % 3) as u32;
        assert_eq!(got[0], want);
        assert!(got.iter().all(|&x| x < 3));
        assert!(Partitioner::new(&r.schema(), &["Gender".into()], 3).unwrap_err().contains("Gender"));
        assert_eq!(Partitioner::new(&r.schema(), &[], 1).unwrap().assign(&r), vec![0, 0, 0]);
    }

    #[test]
    fn claims_return_only_unseen_rows() {
        let mut s = Seen::default();
        assert_eq!(s.claim(0, 10), vec![(0, 10)]);
        assert_eq!(s.claim(0, 10), vec![]);
        assert_eq!(s.claim(5, 15), vec![(10, 15)]);
        // Out of order: 20..30 before 15..20.
        assert_eq!(s.claim(20, 30), vec![(20, 30)]);
        assert_eq!(s.hole_below(30), Some((15, 20)));
        assert_eq!(s.claim(12, 25), vec![(15, 20)]);
        assert_eq!(s, Seen { next: 30, ahead: vec![] });
        assert_eq!(s.claim(40, 50), vec![(40, 50)]);
        assert_eq!(s.claim(35, 45), vec![(35, 40)]);
        assert_eq!(s.claim(28, 60), vec![(30, 35), (50, 60)]);
        assert_eq!(s, Seen { next: 60, ahead: vec![] });
        assert_eq!(s.hole_below(60), None);
    }

    /// Any order and any overlap of ranges: every row is claimed exactly once.
    #[test]
    fn every_row_is_claimed_once_whatever_the_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let mut s = Seen::default();
            let mut count = vec![0u32; 200];
            for _ in 0..40 {
                let a = rng.random_range(0..200u64);
                let b = rng.random_range(a..=200u64.min(a + 30));
                for (x, y) in s.claim(a, b) {
                    for i in x..y {
                        count[i as usize] += 1;
                    }
                }
            }
            for (x, y) in s.claim(0, 200) {
                for i in x..y {
                    count[i as usize] += 1;
                }
            }
            assert!(count.iter().all(|&c| c == 1), "{count:?}");
            assert_eq!(s, Seen { next: 200, ahead: vec![] });
        }
    }
}
