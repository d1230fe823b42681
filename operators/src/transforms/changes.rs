//! `kind = "changes"`: passes only rows that are new or differ from the last
//! completed run, and (on the `deleted` port) the keys that disappeared.
//!
//! A row is remembered as its key (Arrow row format) followed by a 64-bit
//! FNV-1a hash of its other columns (`ignore` leaves some out, e.g. a row
//! number that shifts between versions). A row is unchanged exactly when
//! that key‖hash was in the last completed run, so one exact set lookup
//! decides, with the same arena-backed [`KeySet`] dedupe uses.
//!
//! State lives in the checkpoint store: this run's entries go out as
//! checkpoint deltas (exactly-once with the rest of the run), and a
//! completed run's entries are carried over to the next run
//! ([`Operator::carry_over`]). Must not decide when a run counts as
//! completed: the runtime does.

use arrow::array::{ArrayRef, BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use crate::keyset::KeySet;

/// Port of the keys that were in the last completed run and not in this one.
pub const DELETED: usize = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// Columns that identify a row across runs.
    pub key: Vec<String>,
    /// Columns left out of the comparison.
    #[serde(default)]
    pub ignore: Vec<String>,
}

struct Plan {
    schema: SchemaRef,
    key_idx: Vec<usize>,
    keys: RowConverter,
    value_idx: Vec<usize>,
    values: Option<RowConverter>,
}

pub struct Changes {
    cfg: ChangesConfig,
    /// key‖hash of every row of the last completed run.
    previous: KeySet,
    /// key‖hash of every row of this run (what the next run compares with).
    current: KeySet,
    /// Keys of this run, for deletions; built only when `deleted` is read.
    seen: Option<KeySet>,
    plan: Option<Plan>,
    unchanged: u64,
}

pub fn build(_ctx: &BuildContext, cfg: ChangesConfig) -> Result<Changes, OperatorError> {
    if cfg.key.is_empty() {
        return Err(OperatorError::Config("key must name at least one column".into()));
    }
    if let Some(c) = cfg.ignore.iter().find(|c| cfg.key.contains(c)) {
        return Err(OperatorError::Config(format!("`{c}` is a key column; it cannot be ignored")));
    }
    Ok(Changes { cfg, previous: KeySet::default(), current: KeySet::default(), seen: None, plan: None, unchanged: 0 })
}

fn full(e: crate::keyset::KeySetError) -> OperatorError {
    OperatorError::Data(format!("changes: {e}"))
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike the
/// hash tables' seeded hashers), which is what a value kept between runs
/// needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Changes {
    fn prepare(&mut self, schema: &SchemaRef) -> Result<(), OperatorError> {
        if self.plan.as_ref().is_some_and(|p| &p.schema == schema) {
            return Ok(());
        }
        let have = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
        let mut key_idx = Vec::new();
        for k in &self.cfg.key {
            let i = schema.index_of(k).map_err(|_| {
                OperatorError::Config(format!("key column `{k}` is not in the input (columns: {})", have()))
            })?;
            key_idx.push(i);
        }
        for c in &self.cfg.ignore {
            if schema.index_of(c).is_err() {
                return Err(OperatorError::Config(format!(
                    "ignored column `{c}` is not in the input (columns: {})",
                    have()
                )));
            }
        }
        let value_idx: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !key_idx.contains(i) && !self.cfg.ignore.contains(schema.field(*i).name()))
            .collect();
        let conv = |idx: &[usize]| {
            RowConverter::new(idx.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect())
                .map_err(|e| OperatorError::arrow("preparing the row encoder", e))
        };
        let keys = conv(&key_idx)?;
        let values = if value_idx.is_empty() { None } else { Some(conv(&value_idx)?) };
        self.plan = Some(Plan { schema: schema.clone(), key_idx, keys, value_idx, values });
        Ok(())
    }

    /// Rebuilds the set of this run's keys (for deletions) from `current`.
    fn rebuild_seen(&mut self) {
        let mut seen = KeySet::default();
        for e in self.current.iter() {
            // Fewer keys than `current` holds entries: it cannot be full.
            let _ = seen.insert(&e[..e.len().saturating_sub(8)]);
        }
        seen.mark_taken();
        self.seen = Some(seen);
    }
}

#[async_trait]
impl Operator for Changes {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        self.prepare(&batch.records.schema())?;
        if self.seen.is_none() && out.is_connected(DELETED) {
            self.rebuild_seen();
        }
        let Some(plan) = &self.plan else { return Ok(()) };
        let cols = |idx: &[usize]| idx.iter().map(|&i| batch.records.column(i).clone()).collect::<Vec<ArrayRef>>();
        let keys =
            plan.keys.convert_columns(&cols(&plan.key_idx)).map_err(|e| OperatorError::arrow("encoding keys", e))?;
        let values = match &plan.values {
            Some(v) => {
                Some(v.convert_columns(&cols(&plan.value_idx)).map_err(|e| OperatorError::arrow("encoding rows", e))?)
            }
            None => None,
        };
        let n = batch.num_rows();
        let mut keep = BooleanBufferBuilder::new(n);
        let mut entry = Vec::with_capacity(64);
        let mut unchanged = 0u64;
        for i in 0..n {
            let key = keys.row(i);
            let hash = values.as_ref().map(|v| fnv1a(v.row(i).as_ref())).unwrap_or(0);
            entry.clear();
            entry.extend_from_slice(key.as_ref());
            entry.extend_from_slice(&hash.to_le_bytes());
            let same = self.previous.contains(&entry);
            self.current.insert(&entry).map_err(full)?;
            if let Some(seen) = &mut self.seen {
                seen.insert(key.as_ref()).map_err(full)?;
            }
            unchanged += u64::from(same);
            keep.append(!same);
        }
        self.unchanged += unchanged;
        if unchanged == 0 {
            return out.emit(OUT, batch).await;
        }
        out.record_dropped(unchanged);
        if unchanged == n as u64 {
            return Ok(());
        }
        let keep = BooleanArray::new(keep.finish(), None);
        let changed = batch.filter(&keep).map_err(|e| OperatorError::arrow("selecting changed rows", e))?;
        out.emit(OUT, changed).await
    }

    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        Ok(Snapshot::Delta(self.current.take_added()))
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        for d in &resume.deltas {
            self.current
                .insert_delta(d)
                .map_err(|e| OperatorError::Resume(format!("checkpoint {}: a delta is damaged: {e}", resume.epoch)))?;
        }
        self.current.mark_taken();
        self.seen = None;
        Ok(())
    }

    async fn carry_over(&mut self, previous: &[Vec<u8>]) -> Result<(), OperatorError> {
        for d in previous {
            self.previous
                .insert_delta(d)
                .map_err(|e| OperatorError::Resume(format!("the state of the last completed run is damaged: {e}")))?;
        }
        self.previous.mark_taken();
        tracing::info!(rows = self.previous.len(), "changes: comparing with the last completed run");
        Ok(())
    }

    fn carries_state(&self) -> bool {
        true
    }

    async fn finish(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        tracing::info!(
            rows = self.current.len(),
            unchanged = self.unchanged,
            previous = self.previous.len(),
            "changes finished"
        );
        if !out.is_connected(DELETED) || self.previous.is_empty() {
            return Ok(());
        }
        if self.seen.is_none() {
            self.rebuild_seen();
        }
        let (Some(plan), Some(seen)) = (&self.plan, &self.seen) else {
            tracing::warn!("no rows this run: cannot name deleted keys without the input's schema");
            return Ok(());
        };
        let parser = plan.keys.parser();
        let mut gone: Vec<&[u8]> = Vec::new();
        for e in self.previous.iter() {
            let key = &e[..e.len().saturating_sub(8)];
            if !seen.contains(key) {
                gone.push(key);
            }
        }
        let fields: Vec<Field> = plan.key_idx.iter().map(|&i| plan.schema.field(i).clone()).collect();
        let schema = Arc::new(Schema::new(fields));
        for chunk in gone.chunks(8192) {
            let rows = chunk.iter().map(|k| parser.parse(k));
            let arrays = plan.keys.convert_rows(rows).map_err(|e| OperatorError::arrow("decoding deleted keys", e))?;
            let rb = RecordBatch::try_new(schema.clone(), arrays)
                .map_err(|e| OperatorError::arrow("building deleted keys", e))?;
            out.emit(DELETED, Batch::new(rb)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{OperatorStats, OutPort};
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::DataType;

    fn batch(rows: &[(&str, i64, i64)]) -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
        ]));
        let rb = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        Batch::new(rb)
    }

    /// One run: returns (names passed, names deleted, the run's deltas).
    async fn run_once(previous: &[Vec<u8>], rows: &[(&str, i64, i64)]) -> (Vec<String>, Vec<String>, Vec<Vec<u8>>) {
        let cfg = ChangesConfig { key: vec!["name".into()], ignore: vec!["id".into()] };
        let ctx = BuildContext {
            pipeline: "p".into(),
            id: "c".into(),
            batch_size: 10,
            raw_options: Default::default(),
            rotation: None,
        };
        let mut op = build(&ctx, cfg).unwrap();
        op.carry_over(previous).await.unwrap();
        let (tx, rx) = async_channel::unbounded();
        let (dtx, drx) = async_channel::unbounded();
        let ports = vec![OutPort::new("c", "out", vec![tx]), OutPort::new("c", "deleted", vec![dtx])];
        let mut out = Collector::new("c", ports, Arc::new(OperatorStats::default()), Default::default());
        let mut deltas = Vec::new();
        for part in rows.chunks(2) {
            op.process(batch(part), &mut out).await.unwrap();
            if let Snapshot::Delta(d) = op.on_barrier(Barrier { epoch: 1 }, &mut out).await.unwrap() {
                deltas.push(d);
            }
        }
        op.finish(&mut out).await.unwrap();
        drop(out);
        let names = |rx: async_channel::Receiver<crate::Message>| {
            let mut v = Vec::new();
            while let Ok(crate::Message::Data(b)) = rx.try_recv() {
                v.extend(b.records.column(0).as_string::<i32>().iter().map(|s| s.unwrap_or_default().to_string()));
            }
            v
        };
        (names(rx), names(drx), deltas)
    }

    #[tokio::test]
    async fn only_new_and_changed_rows_pass_and_vanished_keys_are_named() {
        let first = [("ann", 1, 1), ("bob", 2, 2), ("cy", 3, 3)];
        let (passed, deleted, deltas) = run_once(&[], &first).await;
        assert_eq!(passed, ["ann", "bob", "cy"], "everything is new the first time");
        assert!(deleted.is_empty());
        // Same data, shifted ids (ignored): nothing passes.
        let (passed, deleted, _) = run_once(&deltas, &[("ann", 1, 7), ("bob", 2, 8), ("cy", 3, 9)]).await;
        assert!(passed.is_empty(), "{passed:?}");
        assert!(deleted.is_empty());
        // bob changed, dee is new, cy is gone.
        let (passed, deleted, _) = run_once(&deltas, &[("ann", 1, 1), ("bob", 5, 2), ("dee", 4, 4)]).await;
        assert_eq!(passed, ["bob", "dee"]);
        assert_eq!(deleted, ["cy"]);
    }
}
