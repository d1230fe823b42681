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

mod sled_store;
pub use sled_store::SledStore;

/// Errors a store can report; each says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store at {location} cannot be opened: {reason}")]
    Open { location: String, reason: String },
    #[error("checkpoint {epoch} is corrupted: {reason}")]
    Corrupted { epoch: u64, reason: String },
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
}

/// A durable home for checkpoints.
pub trait CheckpointStore: Send + Sync {
    /// Commits `checkpoint` atomically: afterwards `latest` returns it, even
    /// after a crash; before the call returns nothing of it is visible.
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;
    /// The most recent committed checkpoint.
    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError>;
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
    inner: Mutex<BTreeMap<u64, Checkpoint>>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<u64, Checkpoint>>, CheckpointError> {
        self.inner.lock().map_err(|_| CheckpointError::Write("store lock poisoned".into()))
    }
}

impl CheckpointStore for MemoryStore {
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.lock()?.insert(checkpoint.epoch, checkpoint.clone());
        Ok(())
    }

    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.lock()?.values().next_back().cloned())
    }

    fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        Ok(self.lock()?.keys().copied().collect())
    }

    fn prune(&self, keep: usize) -> Result<(), CheckpointError> {
        let mut map = self.lock()?;
        while map.len() > keep {
            map.pop_first();
        }
        Ok(())
    }

    fn reset(&self) -> Result<(), CheckpointError> {
        self.lock()?.clear();
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
}
