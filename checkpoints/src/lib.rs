//! Where a pipeline's checkpoints live.
//!
//! A checkpoint is one epoch's worth of state: every source's offset and
//! every operator's snapshot, committed atomically once every sink has
//! acknowledged the epoch. Operators never touch the store; the runtime's
//! checkpoint coordinator does, through [`CheckpointStore`], so a backend
//! (sled on local disk, object storage for multi-machine runs) can be swapped
//! without touching an operator.
//!
//! This crate owns the trait, the durable [`SledStore`] (local disk) and the
//! in-memory [`MemoryStore`] used by tests and by runs with checkpointing
//! off. The coordinator that injects barriers and decides what goes into a
//! checkpoint is the runtime's (engine crate), not this crate's.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub mod fault;
mod sled_store;
pub use sled_store::SledStore;

/// Errors a store can report; each says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store at {location} cannot be opened: {reason}")]
    Open { location: String, reason: String },
    #[error("checkpoint {epoch} is corrupted: {reason}")]
    Corrupted { epoch: u64, reason: String },
    #[error("delta {epoch} of `{operator}` is corrupted: {reason}")]
    CorruptedDelta { operator: String, epoch: u64, reason: String },
    #[error("checkpoint store write failed: {0}")]
    Write(String),
}

/// Everything committed for one epoch. Keys are `<operator>/<name>`; values
/// are opaque bytes owned by the operator that wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Unix milliseconds at commit.
    pub committed_at_ms: u64,
    /// The run finished after this checkpoint: the next run starts afresh.
    pub complete: bool,
    pub state: BTreeMap<String, Vec<u8>>,
    /// Incremental state added during this epoch, per operator id. Stored
    /// apart from the record: a delta outlives the pruning of the record it
    /// came with, because every later checkpoint of the run builds on it.
    /// Empty in what [`CheckpointStore::latest`] returns; read them back
    /// with [`CheckpointStore::deltas`].
    pub deltas: BTreeMap<String, Vec<u8>>,
}

/// A durable home for checkpoints.
pub trait CheckpointStore: Send + Sync {
    /// Commits `checkpoint` atomically: afterwards `latest` returns it, even
    /// after a crash; before the call returns nothing of it is visible.
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;
    /// The most recent committed checkpoint.
    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError>;
    /// The checkpoint of `epoch`, if it is still kept.
    fn get(&self, epoch: u64) -> Result<Option<Checkpoint>, CheckpointError>;
    /// The deltas `operator` committed with epochs `from..=to`, oldest first.
    fn deltas(&self, operator: &str, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError>;
    /// Total bytes of the deltas `operator` committed with epochs `from..=to`.
    fn delta_bytes(&self, operator: &str, from: u64, to: u64) -> Result<u64, CheckpointError> {
        Ok(self.deltas(operator, from, to)?.iter().map(|(_, d)| d.len() as u64).sum())
    }
    /// Drops every delta of an epoch below `epoch` (a new run starts there,
    /// so nothing will build on them again).
    fn drop_deltas_before(&self, epoch: u64) -> Result<(), CheckpointError>;
    /// Drops the deltas of `operator` from epochs below `epoch`.
    fn drop_operator_deltas(&self, operator: &str, before: u64) -> Result<(), CheckpointError>;
    /// Committed epochs, oldest first.
    fn epochs(&self) -> Result<Vec<u64>, CheckpointError>;
    /// Drops all but the newest `keep` checkpoints.
    fn prune(&self, keep: usize) -> Result<(), CheckpointError>;
    /// Forgets everything.
    fn reset(&self) -> Result<(), CheckpointError>;
}

/// A store that lives as long as the process: for tests and for runs that
/// do not checkpoint.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    records: BTreeMap<u64, Checkpoint>,
    deltas: BTreeMap<(String, u64), Vec<u8>>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Memory>, CheckpointError> {
        self.inner.lock().map_err(|_| CheckpointError::Write("store lock poisoned".into()))
    }
}

impl CheckpointStore for MemoryStore {
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut m = self.lock()?;
        for (op, d) in &checkpoint.deltas {
            m.deltas.insert((op.clone(), checkpoint.epoch), d.clone());
        }
        m.records.insert(checkpoint.epoch, Checkpoint { deltas: BTreeMap::new(), ..checkpoint.clone() });
        Ok(())
    }

    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.lock()?.records.values().next_back().cloned())
    }

    fn get(&self, epoch: u64) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.lock()?.records.get(&epoch).cloned())
    }

    fn deltas(&self, operator: &str, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        let m = self.lock()?;
        Ok(m.deltas
            .range((operator.to_string(), from)..=(operator.to_string(), to))
            .map(|((_, e), d)| (*e, d.clone()))
            .collect())
    }

    fn drop_deltas_before(&self, epoch: u64) -> Result<(), CheckpointError> {
        self.lock()?.deltas.retain(|(_, e), _| *e >= epoch);
        Ok(())
    }

    fn drop_operator_deltas(&self, operator: &str, before: u64) -> Result<(), CheckpointError> {
        self.lock()?.deltas.retain(|(op, e), _| op != operator || *e >= before);
        Ok(())
    }

    fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        Ok(self.lock()?.records.keys().copied().collect())
    }

    fn prune(&self, keep: usize) -> Result<(), CheckpointError> {
        let mut m = self.lock()?;
        while m.records.len() > keep {
            m.records.pop_first();
        }
        Ok(())
    }

    fn reset(&self) -> Result<(), CheckpointError> {
        let mut m = self.lock()?;
        m.records.clear();
        m.deltas.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_prune_and_reset() {
        let s = MemoryStore::default();
        assert_eq!(s.latest().unwrap(), None);
        for epoch in 1..=5 {
            s.commit(&Checkpoint { epoch, ..Default::default() }).unwrap();
        }
        assert_eq!(s.latest().unwrap().unwrap().epoch, 5);
        s.prune(2).unwrap();
        assert_eq!(s.epochs().unwrap(), vec![4, 5]);
        s.reset().unwrap();
        assert!(s.epochs().unwrap().is_empty());
    }

    #[test]
    fn deltas_outlive_pruning_until_a_new_run_drops_them() {
        let s = MemoryStore::default();
        for epoch in 1..=4 {
            let mut deltas = BTreeMap::new();
            deltas.insert("unique".to_string(), vec![epoch as u8]);
            s.commit(&Checkpoint { epoch, deltas, ..Default::default() }).unwrap();
        }
        s.prune(1).unwrap();
        let d = s.deltas("unique", 1, 3).unwrap();
        assert_eq!(d, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
        assert!(s.deltas("other", 0, 9).unwrap().is_empty());
        s.drop_deltas_before(3).unwrap();
        assert_eq!(s.deltas("unique", 0, 9).unwrap().len(), 2);
    }
}
