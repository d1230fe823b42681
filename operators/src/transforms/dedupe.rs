//! `kind = "dedupe"`: drops rows whose key was already seen; the first row
//! with a key wins. Exact, not probabilistic: every key is kept.
//!
//! Keys are encoded with Arrow's row format (one compact, comparable byte
//! string per key, computed a batch at a time) and stored back to back in one
//! arena; the hash table holds only (offset, length) into it. A key costs its
//! encoded bytes plus ~16 bytes of table, with no allocation per key. The
//! arena being append-only is also what makes an incremental checkpoint of
//! the keys cheap later: what was added since the last one is a byte range.

use arrow::array::{BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use hashbrown::HashTable;
use serde::Deserialize;
use std::hash::BuildHasher;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError};
use crate::batch::Batch;

/// Port where dropped rows go, for whoever wants to see them.
pub const DUPLICATES: usize = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Columns that together identify a row.
    pub key: Vec<String>,
}

/// The set of keys seen, exact.
#[derive(Default)]
pub struct KeySet {
    arena: Vec<u8>,
    table: HashTable<(u64, u32)>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held by keys and table (for the summary and metrics).
    pub fn memory_bytes(&self) -> usize {
        self.arena.capacity() + self.table.capacity() * std::mem::size_of::<(u64, u32)>()
    }

    /// Inserts `key`; true when it was not there before.
    pub fn insert(&mut self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        let found =
            self.table.find(hash, |&(off, len)| &arena[off as usize..off as usize + len as usize] == key).is_some();
        if found {
            return false;
        }
        let off = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table.insert_unique(hash, (off, key.len() as u32), |&(o, l)| {
            hasher.hash_one(&arena[o as usize..o as usize + l as usize])
        });
        true
    }
}

pub struct Dedupe {
    cfg: DedupeConfig,
    keys: KeySet,
    converter: Option<(SchemaRef, Vec<usize>, RowConverter)>,
}

pub fn build(_ctx: &BuildContext, cfg: DedupeConfig) -> Result<Dedupe, OperatorError> {
    if cfg.key.is_empty() {
        return Err(OperatorError::Config("key must name at least one column".into()));
    }
    Ok(Dedupe { cfg, keys: KeySet::default(), converter: None })
}

impl Dedupe {
    fn prepare(&mut self, schema: &SchemaRef) -> Result<(), OperatorError> {
        if self.converter.as_ref().is_some_and(|(s, _, _)| s == schema) {
            return Ok(());
        }
        let mut idx = Vec::with_capacity(self.cfg.key.len());
        let mut fields = Vec::with_capacity(self.cfg.key.len());
        for k in &self.cfg.key {
            let Ok(i) = schema.index_of(k) else {
                let have = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
                return Err(OperatorError::Config(format!("key column `{k}` is not in the input (columns: {have})")));
            };
            idx.push(i);
            fields.push(SortField::new(schema.field(i).data_type().clone()));
        }
        let conv = RowConverter::new(fields).map_err(|e| OperatorError::arrow("preparing the key encoder", e))?;
        self.converter = Some((schema.clone(), idx, conv));
        Ok(())
    }
}

#[async_trait]
impl Operator for Dedupe {
    async fn process(&mut self, batch: Batch, out: &mut Collector) -> Result<(), OperatorError> {
        self.prepare(&batch.records.schema())?;
        let Some((_, idx, conv)) = &self.converter else { return Ok(()) };
        let cols = idx.iter().map(|&i| batch.records.column(i).clone()).collect::<Vec<_>>();
        let rows = conv.convert_columns(&cols).map_err(|e| OperatorError::arrow("encoding keys", e))?;
        let n = batch.num_rows();
        let mut keep = BooleanBufferBuilder::new(n);
        let mut dropped = 0u64;
        for i in 0..n {
            let new = self.keys.insert(rows.row(i).as_ref());
            dropped += u64::from(!new);
            keep.append(new);
        }
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

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        tracing::info!(keys = self.keys.len(), memory_bytes = self.keys.memory_bytes(), "dedupe finished");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_is_exact_and_first_insert_wins() {
        let mut s = KeySet::default();
        assert!(s.insert(b"a"));
        assert!(s.insert(b"ab"));
        assert!(!s.insert(b"a"));
        assert!(s.insert(b""));
        assert!(!s.insert(b""));
        for i in 0..100_000u32 {
            assert!(s.insert(&i.to_le_bytes()));
        }
        for i in 0..100_000u32 {
            assert!(!s.insert(&i.to_le_bytes()));
        }
        assert_eq!(s.len(), 100_003);
    }
}
