//! [`SledStore`]: checkpoints on local disk in a sled database, one record
//! per epoch. Each record carries a SHA-256 of its content, so a damaged or
//! half-written record is reported as corrupted, never silently used.
//!
//! Record layout (big-endian): magic `EKCP`, format version (u16), epoch
//! (u64), commit time ms (u64), complete flag (u8), entry count (u32), then
//! per entry key length (u32), key, value length (u64), value; finally the
//! 32-byte SHA-256 of everything before it.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Checkpoint, CheckpointError, CheckpointStore};

const MAGIC: &[u8; 4] = b"EKCP";
const FORMAT: u16 = 1;
const TREE: &str = "checkpoints";

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    location: String,
}

impl SledStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SledStore, CheckpointError> {
        let location = path.display().to_string();
        let open_err = |e: sled::Error| CheckpointError::Open { location: location.clone(), reason: e.to_string() };
        let db = sled::open(path).map_err(open_err)?;
        let tree = db.open_tree(TREE).map_err(open_err)?;
        Ok(SledStore { db, tree, location })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn write_err(&self, e: sled::Error) -> CheckpointError {
        CheckpointError::Write(format!("{}: {e}", self.location))
    }
}

pub fn encode(c: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + c.state.iter().map(|(k, v)| k.len() + v.len() + 12).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&c.epoch.to_be_bytes());
    out.extend_from_slice(&c.committed_at_ms.to_be_bytes());
    out.push(u8::from(c.complete));
    out.extend_from_slice(&(c.state.len() as u32).to_be_bytes());
    for (k, v) in &c.state {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u64).to_be_bytes());
        out.extend_from_slice(v);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

pub fn decode(epoch_key: u64, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let bad = |reason: &str| CheckpointError::Corrupted { epoch: epoch_key, reason: reason.to_string() };
    if bytes.len() < 4 + 2 + 8 + 8 + 1 + 4 + 32 {
        return Err(bad("record is truncated"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch: the record was damaged or half-written"));
    }
    if &body[..4] != MAGIC {
        return Err(bad("not a checkpoint record"));
    }
    let mut r = Reader { b: body, at: 4 };
    let format = u16::from_be_bytes(r.take::<2>().ok_or_else(|| bad("truncated"))?);
    if format != FORMAT {
        return Err(bad(&format!("format version {format} is not supported (this engine reads {FORMAT})")));
    }
    let epoch = u64::from_be_bytes(r.take::<8>().ok_or_else(|| bad("truncated"))?);
    if epoch != epoch_key {
        return Err(bad(&format!("record says epoch {epoch}")));
    }
    let committed_at_ms = u64::from_be_bytes(r.take::<8>().ok_or_else(|| bad("truncated"))?);
    let complete = r.take::<1>().ok_or_else(|| bad("truncated"))?[0] == 1;
    let n = u32::from_be_bytes(r.take::<4>().ok_or_else(|| bad("truncated"))?);
    let mut state = BTreeMap::new();
    for _ in 0..n {
        let klen = u32::from_be_bytes(r.take::<4>().ok_or_else(|| bad("truncated"))?) as usize;
        let key = r.slice(klen).ok_or_else(|| bad("truncated key"))?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| bad("a key is not UTF-8"))?;
        let vlen = u64::from_be_bytes(r.take::<8>().ok_or_else(|| bad("truncated"))?) as usize;
        let value = r.slice(vlen).ok_or_else(|| bad("truncated value"))?.to_vec();
        state.insert(key, value);
    }
    if r.at != body.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(Checkpoint { epoch, committed_at_ms, complete, state })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.slice(N)?;
        s.try_into().ok()
    }
    fn slice(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

impl CheckpointStore for SledStore {
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        // One insert is atomic in sled; flush makes it durable before the
        // commit is acknowledged to anyone.
        self.tree.insert(checkpoint.epoch.to_be_bytes(), encode(checkpoint)).map_err(|e| self.write_err(e))?;
        self.db.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }

    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.tree.last().map_err(|e| self.write_err(e))? {
            None => Ok(None),
            Some((k, v)) => {
                let key: [u8; 8] = k.as_ref().try_into().map_err(|_| CheckpointError::Corrupted {
                    epoch: 0,
                    reason: format!("a key of {} bytes in {}", k.len(), self.location),
                })?;
                decode(u64::from_be_bytes(key), &v).map(Some)
            }
        }
    }

    fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        self.tree
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.write_err(e))?;
                let key: [u8; 8] = k.as_ref().try_into().map_err(|_| CheckpointError::Corrupted {
                    epoch: 0,
                    reason: format!("a key of {} bytes in {}", k.len(), self.location),
                })?;
                Ok(u64::from_be_bytes(key))
            })
            .collect()
    }

    fn prune(&self, keep: usize) -> Result<(), CheckpointError> {
        let epochs = self.epochs()?;
        let drop = epochs.len().saturating_sub(keep);
        for e in &epochs[..drop] {
            self.tree.remove(e.to_be_bytes()).map_err(|e| self.write_err(e))?;
        }
        self.db.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }

    fn reset(&self) -> Result<(), CheckpointError> {
        self.tree.clear().map_err(|e| self.write_err(e))?;
        self.db.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(epoch: u64) -> Checkpoint {
        let mut state = BTreeMap::new();
        state.insert("names/offset".to_string(), epoch.to_be_bytes().to_vec());
        state.insert("unique/keys".to_string(), vec![7u8; 1000]);
        Checkpoint { epoch, committed_at_ms: 1_700_000_000_000 + epoch, complete: epoch == 3, state }
    }

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("engine-sled-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn commits_survive_reopening_and_prune_keeps_the_newest() {
        let d = dir("reopen");
        {
            let s = SledStore::open(&d).unwrap();
            for e in 1..=3 {
                s.commit(&cp(e)).unwrap();
            }
        }
        let s = SledStore::open(&d).unwrap();
        assert_eq!(s.latest().unwrap(), Some(cp(3)));
        assert_eq!(s.epochs().unwrap(), vec![1, 2, 3]);
        s.prune(2).unwrap();
        assert_eq!(s.epochs().unwrap(), vec![2, 3]);
        s.reset().unwrap();
        assert_eq!(s.latest().unwrap(), None);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_record_is_reported_not_used() {
        let good = encode(&cp(5));
        assert_eq!(decode(5, &good).unwrap(), cp(5));
        // Every single flipped byte and every truncation is caught.
        for i in (0..good.len()).step_by(7) {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(matches!(decode(5, &b), Err(CheckpointError::Corrupted { epoch: 5, .. })), "flip at {i}");
        }
        for n in [0, 10, good.len() - 1] {
            assert!(matches!(decode(5, &good[..n]), Err(CheckpointError::Corrupted { .. })), "truncated to {n}");
        }
        // A record filed under the wrong epoch is refused too.
        assert!(decode(6, &good).is_err());

        let d = dir("damaged");
        let s = SledStore::open(&d).unwrap();
        s.commit(&cp(1)).unwrap();
        let mut bad = encode(&cp(2));
        let mid = bad.len() / 2;
        bad.truncate(mid);
        s.tree.insert(2u64.to_be_bytes(), bad).unwrap();
        let err = s.latest().unwrap_err().to_string();
        assert!(err.starts_with("checkpoint 2 is corrupted"), "{err}");
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
}
