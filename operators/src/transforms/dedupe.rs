//! `kind = "dedupe"`: drops rows whose key was already seen; the first row
//! with a key wins. Exact, not probabilistic: every key is kept.
//!
//! Keys are encoded with Arrow's row format (one compact, comparable byte
//! string per key, computed a batch at a time) and stored back to back in one
//! chunked arena; the hash table holds one packed `u64` (chunk, offset,
//! length) per key. A key costs its encoded bytes plus ~9 bytes of table,
//! with no allocation per key.
//!
//! Checkpoints are incremental: the set remembers which entries it added
//! since the last barrier, and a checkpoint stores only those keys (a
//! [`Snapshot::Delta`]). A resumed run re-inserts every delta of its run, so
//! a duplicate that straddles a crash is still dropped.

use arrow::array::{BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use hashbrown::HashTable;
use serde::Deserialize;
use std::hash::BuildHasher;

use crate::api::{BuildContext, Collector, OUT, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};

/// Port where dropped rows go, for whoever wants to see them.
pub const DUPLICATES: usize = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Columns that together identify a row.
    pub key: Vec<String>,
}

/// Bytes per arena chunk. Chunks are never reallocated, so growing the set
/// never holds an old and a new copy of every key at once.
const CHUNK: usize = 4 << 20;
const OFF_BITS: u32 = 22; // offsets within a 4 MiB chunk
const LEN_BITS: u32 = 16;
/// Length field value meaning "the key is its own chunk" (keys too long for
/// the packed form).
const WHOLE_CHUNK: u64 = (1 << LEN_BITS) - 1;

/// The set of keys seen, exact.
///
/// Each key lives once, in an append-only chunked arena; the table stores
/// one packed `u64` per key (chunk index, offset, length), so a key costs its
/// encoded bytes plus about 9 bytes of table.
#[derive(Default)]
pub struct KeySet {
    chunks: Vec<Vec<u8>>,
    table: HashTable<u64>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Entries added since the last [`KeySet::take_added`].
    added: Vec<u64>,
}

fn pack(chunk: usize, off: usize, len: u64) -> u64 {
    ((chunk as u64) << (OFF_BITS + LEN_BITS)) | ((off as u64) << LEN_BITS) | len
}

fn unpack(chunks: &[Vec<u8>], e: u64) -> &[u8] {
    let chunk = &chunks[(e >> (OFF_BITS + LEN_BITS)) as usize];
    let len = e & WHOLE_CHUNK;
    if len == WHOLE_CHUNK {
        return chunk;
    }
    let off = ((e >> LEN_BITS) & ((1 << OFF_BITS) - 1)) as usize;
    &chunk[off..off + len as usize]
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
        self.chunks.iter().map(Vec::capacity).sum::<usize>() + self.table.capacity() * (std::mem::size_of::<u64>() + 1)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |&e| unpack(&self.chunks, e) == key).is_some()
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.table.iter().map(|&e| unpack(&self.chunks, e))
    }

    /// Inserts `key`; true when it was not there before.
    pub fn insert(&mut self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        let chunks = &self.chunks;
        if self.table.find(hash, |&e| unpack(chunks, e) == key).is_some() {
            return false;
        }
        let entry = if key.len() as u64 >= WHOLE_CHUNK {
            self.chunks.push(key.to_vec());
            pack(self.chunks.len() - 1, 0, WHOLE_CHUNK)
        } else {
            let fits = self.chunks.last().is_some_and(|c| c.capacity() == CHUNK && c.len() + key.len() <= CHUNK);
            if !fits {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            let idx = self.chunks.len() - 1;
            let chunk = &mut self.chunks[idx];
            let off = chunk.len();
            chunk.extend_from_slice(key);
            pack(idx, off, key.len() as u64)
        };
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.table.insert_unique(hash, entry, |&e| hasher.hash_one(unpack(chunks, e)));
        self.added.push(entry);
        true
    }

    /// The keys added since the last call, length-prefixed (u32 LE), in
    /// insertion order: a checkpoint delta.
    pub fn take_added(&mut self) -> Vec<u8> {
        let bytes: usize = self.added.iter().map(|&e| 4 + unpack(&self.chunks, e).len()).sum();
        let mut out = Vec::with_capacity(bytes);
        for &e in &self.added {
            let k = unpack(&self.chunks, e);
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
        }
        self.added.clear();
        out
    }

    /// Re-inserts the keys of a delta from [`KeySet::take_added`].
    pub fn insert_delta(&mut self, mut delta: &[u8]) -> Result<usize, String> {
        let mut n = 0;
        while !delta.is_empty() {
            let Some((len, rest)) = delta.split_first_chunk::<4>() else {
                return Err("a key length is cut short".into());
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some((key, rest)) = rest.split_at_checked(len) else {
                return Err("a key is cut short".into());
            };
            self.insert(key);
            n += 1;
            delta = rest;
        }
        Ok(n)
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

    async fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        Ok(Snapshot::Delta(self.keys.take_added()))
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        for (i, d) in resume.deltas.iter().enumerate() {
            self.keys.insert_delta(d).map_err(|e| {
                OperatorError::Resume(format!(
                    "delta {} of {} in checkpoint {} is damaged: {e}",
                    i + 1,
                    resume.deltas.len(),
                    resume.epoch
                ))
            })?;
        }
        // What was restored is already in the store.
        self.keys.added.clear();
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

    #[test]
    fn keys_spanning_chunks_and_huge_keys_are_exact() {
        let mut s = KeySet::default();
        let big = vec![7u8; 70_000];
        assert!(s.insert(&big));
        assert!(!s.insert(&big));
        let mut other = big.clone();
        other[69_999] = 8;
        assert!(s.insert(&other));
        // ~10 MB of 1 KiB keys: several chunks.
        for i in 0..10_000u32 {
            let mut k = vec![0u8; 1024];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(s.insert(&k));
        }
        for i in 0..10_000u32 {
            let mut k = vec![0u8; 1024];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(!s.insert(&k), "key {i} lost");
        }
        assert!(s.chunks.len() > 3);
    }

    #[test]
    fn deltas_hold_only_new_keys_and_rebuild_the_set() {
        let mut s = KeySet::default();
        let big = vec![9u8; 70_000];
        for k in [&b"a"[..], b"bb", b"a", &big] {
            s.insert(k);
        }
        let d1 = s.take_added();
        assert_eq!(d1.len(), 4 + 1 + 4 + 2 + 4 + 70_000);
        s.insert(b"bb");
        s.insert(b"ccc");
        let d2 = s.take_added();
        assert_eq!(d2.len(), 4 + 3, "only the key added since the last delta");
        let mut r = KeySet::default();
        assert_eq!(r.insert_delta(&d1).unwrap(), 3);
        assert_eq!(r.insert_delta(&d2).unwrap(), 1);
        assert_eq!(r.len(), 4);
        assert!(!r.insert(b"a") && !r.insert(&big) && !r.insert(b"ccc"));
        assert!(r.insert_delta(&d2[..5]).is_err(), "a cut delta is an error");
    }
}
