//! [`SledStore`]: checkpoints on local disk in a sled database, one record
//! per epoch. Each record carries a SHA-256 of its content, so a damaged or
//! half-written record is reported as corrupted, never silently used.
//!
//! Record layout (big-endian): magic `EKCP`, format version (u16), epoch
//! (u64), commit time ms (u64), complete flag (u8), entry count (u32), then
//! per entry key length (u32), key, value length (u64), value; finally the
//! 32-byte SHA-256 of everything before it.
//!
//! sled recovers from damage by dropping what it cannot read, which would
//! make a damaged store look older (or empty) instead of broken. So a small
//! manifest file beside it (`engine-latest`, replaced atomically after every
//! commit) names the newest epoch and its record's SHA-256: a store whose
//! newest record is older than the manifest, or differs from it, is
//! reported as corrupted.
//!
//! Deltas (incremental operator state) live in a second tree, keyed by
//! operator id, a zero byte and the epoch. A value is a tag byte, the
//! delta's SHA-256, then either the bytes (tag 0) or, for deltas of 64 KiB
//! and more, their length (tag 1): large deltas go to a file of their own
//! under `engine-deltas/`, written and synced before the transaction that
//! refers to them. sled writes large values several times over (log,
//! segments); a plain file is written once, which is what keeps a
//! checkpoint's cost near the size of its delta. A record and its deltas'
//! entries are written in one sled transaction.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Checkpoint, CheckpointError, CheckpointStore};

const MAGIC: &[u8; 4] = b"EKCP";
const FORMAT: u16 = 1;
const TREE: &str = "checkpoints";
const DELTAS: &str = "deltas";

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    deltas: sled::Tree,
    location: String,
    manifest: std::path::PathBuf,
    files: std::path::PathBuf,
}

const MANIFEST: &str = "engine-latest";
const DELTA_FILES: &str = "engine-deltas";
/// Deltas at least this large are written to a file of their own.
const FILE_THRESHOLD: usize = 64 << 10;
const INLINE: u8 = 0;
const IN_FILE: u8 = 1;

fn delta_key(operator: &str, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(operator.len() + 9);
    k.extend_from_slice(operator.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SledStore, CheckpointError> {
        let location = path.display().to_string();
        let open_err = |e: sled::Error| CheckpointError::Open { location: location.clone(), reason: e.to_string() };
        let db = sled::open(path).map_err(open_err)?;
        let tree = db.open_tree(TREE).map_err(open_err)?;
        let deltas = db.open_tree(DELTAS).map_err(open_err)?;
        Ok(SledStore { db, tree, deltas, location, manifest: path.join(MANIFEST), files: path.join(DELTA_FILES) })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn write_err(&self, e: sled::Error) -> CheckpointError {
        CheckpointError::Write(format!("{}: {e}", self.location))
    }

    fn delta_file(&self, operator: &str, epoch: u64) -> std::path::PathBuf {
        self.files.join(format!("{operator}.{epoch:020}"))
    }

    /// Writes a large delta to its own file, synced (file and folder).
    fn write_delta_file(&self, operator: &str, epoch: u64, data: &[u8]) -> Result<(), CheckpointError> {
        use std::io::Write;
        let err = |e: std::io::Error| CheckpointError::Write(format!("{}: delta file: {e}", self.location));
        std::fs::create_dir_all(&self.files).map_err(err)?;
        let path = self.delta_file(operator, epoch);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(&self.files).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Removes a delta's entry, and its file when it has one.
    fn remove_delta(&self, key: &[u8]) -> Result<(), CheckpointError> {
        if let Some(v) = self.deltas.remove(key).map_err(|e| self.write_err(e))?
            && v.first() == Some(&IN_FILE)
            && key.len() > 9
        {
            let op = String::from_utf8_lossy(&key[..key.len() - 9]).into_owned();
            let epoch = self.epoch_of(&key[key.len() - 8..])?;
            let _ = std::fs::remove_file(self.delta_file(&op, epoch));
        }
        Ok(())
    }

    /// Replaces the manifest: write a temp file, sync it, rename it.
    fn write_manifest(&self, epoch: u64, record: &[u8]) -> Result<(), CheckpointError> {
        use std::io::Write;
        let tmp = self.manifest.with_extension("tmp");
        let text = format!("epoch {epoch} sha256 {}\n", hex(&Sha256::digest(record)));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.manifest)
        };
        write().map_err(|e| CheckpointError::Write(format!("{}: manifest: {e}", self.location)))
    }

    /// (epoch, record digest) the manifest names, if there is one.
    fn read_manifest(&self) -> Result<Option<(u64, String)>, CheckpointError> {
        let text = match std::fs::read_to_string(&self.manifest) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CheckpointError::Open {
                    location: self.location.clone(),
                    reason: format!("manifest: {e}"),
                });
            }
        };
        let mut w = text.split_whitespace();
        match (w.next(), w.next().and_then(|e| e.parse().ok()), w.next(), w.next()) {
            (Some("epoch"), Some(e), Some("sha256"), Some(d)) => Ok(Some((e, d.to_string()))),
            _ => Err(CheckpointError::Corrupted {
                epoch: 0,
                reason: format!("the manifest {} is unreadable", self.manifest.display()),
            }),
        }
    }

    fn epoch_of(&self, k: &[u8]) -> Result<u64, CheckpointError> {
        let key: [u8; 8] = k.try_into().map_err(|_| CheckpointError::Corrupted {
            epoch: 0,
            reason: format!("a key of {} bytes in {}", k.len(), self.location),
        })?;
        Ok(u64::from_be_bytes(key))
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
    Ok(Checkpoint { epoch, committed_at_ms, complete, state, deltas: BTreeMap::new() })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        // The record and its deltas go in one transaction: a crash leaves
        // either both or neither. flush makes it durable before the commit
        // is acknowledged to anyone.
        use sled::transaction::{TransactionError, Transactional};
        let record = encode(checkpoint);
        let mut deltas: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(checkpoint.deltas.len());
        for (op, d) in &checkpoint.deltas {
            let digest = Sha256::digest(d);
            let v = if d.len() >= FILE_THRESHOLD {
                self.write_delta_file(op, checkpoint.epoch, d)?;
                let mut v = Vec::with_capacity(41);
                v.push(IN_FILE);
                v.extend_from_slice(&digest);
                v.extend_from_slice(&(d.len() as u64).to_be_bytes());
                v
            } else {
                let mut v = Vec::with_capacity(33 + d.len());
                v.push(INLINE);
                v.extend_from_slice(&digest);
                v.extend_from_slice(d);
                v
            };
            deltas.push((delta_key(op, checkpoint.epoch), v));
        }
        let r: Result<(), TransactionError<()>> = (&self.tree, &self.deltas).transaction(|(t, d)| {
            for (k, v) in &deltas {
                d.insert(k.as_slice(), v.as_slice())?;
            }
            t.insert(&checkpoint.epoch.to_be_bytes(), record.as_slice())?;
            Ok(())
        });
        match r {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.write_err(e)),
            Err(TransactionError::Abort(())) => return Err(CheckpointError::Write("transaction aborted".into())),
        }
        crate::fault::hit("store-before-flush");
        self.db.flush().map_err(|e| self.write_err(e))?;
        self.write_manifest(checkpoint.epoch, &record)
    }

    fn get(&self, epoch: u64) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.tree.get(epoch.to_be_bytes()).map_err(|e| self.write_err(e))? {
            None => Ok(None),
            Some(v) => decode(epoch, &v).map(Some),
        }
    }

    fn deltas(&self, operator: &str, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        let mut out = Vec::new();
        for kv in self.deltas.range(delta_key(operator, from)..=delta_key(operator, to)) {
            let (k, v) = kv.map_err(|e| self.write_err(e))?;
            let epoch = self.epoch_of(&k[k.len().saturating_sub(8)..])?;
            let bad = |reason: &str| CheckpointError::CorruptedDelta {
                operator: operator.to_string(),
                epoch,
                reason: reason.to_string(),
            };
            if v.len() < 33 {
                return Err(bad("record is truncated"));
            }
            let (digest, rest) = v[1..].split_at(32);
            let body = match v[0] {
                INLINE => rest.to_vec(),
                IN_FILE => {
                    let path = self.delta_file(operator, epoch);
                    let body = std::fs::read(&path).map_err(|e| bad(&format!("its file {}: {e}", path.display())))?;
                    let len = rest.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                    if body.len() as u64 != len {
                        return Err(bad(&format!("its file holds {} bytes, {len} were written", body.len())));
                    }
                    body
                }
                t => return Err(bad(&format!("unknown kind {t}"))),
            };
            if Sha256::digest(&body).as_slice() != digest {
                return Err(bad("checksum mismatch: the delta was damaged or half-written"));
            }
            out.push((epoch, body));
        }
        Ok(out)
    }

    fn delta_bytes(&self, operator: &str, from: u64, to: u64) -> Result<u64, CheckpointError> {
        let mut n = 0;
        for kv in self.deltas.range(delta_key(operator, from)..=delta_key(operator, to)) {
            let (_, v) = kv.map_err(|e| self.write_err(e))?;
            n += match v.first() {
                Some(&IN_FILE) => v.get(33..41).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0),
                _ => v.len().saturating_sub(33) as u64,
            };
        }
        Ok(n)
    }

    fn drop_operator_deltas(&self, operator: &str, before: u64) -> Result<(), CheckpointError> {
        let mut doomed = Vec::new();
        for k in self.deltas.range(delta_key(operator, 0)..delta_key(operator, before)).keys() {
            doomed.push(k.map_err(|e| self.write_err(e))?);
        }
        for k in doomed {
            self.remove_delta(&k)?;
        }
        self.db.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }

    fn drop_deltas_before(&self, epoch: u64) -> Result<(), CheckpointError> {
        let mut doomed = Vec::new();
        for k in self.deltas.iter().keys() {
            let k = k.map_err(|e| self.write_err(e))?;
            if k.len() >= 8 && self.epoch_of(&k[k.len() - 8..])? < epoch {
                doomed.push(k);
            }
        }
        for k in doomed {
            self.remove_delta(&k)?;
        }
        self.db.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }

    fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let last = self.tree.last().map_err(|e| self.write_err(e))?;
        let manifest = self.read_manifest()?;
        let newest = match &last {
            Some((k, _)) => Some(self.epoch_of(k)?),
            None => None,
        };
        if let Some((epoch, digest)) = &manifest {
            match (&last, newest) {
                (Some((_, v)), Some(n)) if n == *epoch && hex(&Sha256::digest(v)) != *digest => {
                    return Err(CheckpointError::Corrupted {
                        epoch: *epoch,
                        reason: "its record differs from the one committed (the store's files were damaged)".into(),
                    });
                }
                (_, n) if n.is_none_or(|n| n < *epoch) => {
                    return Err(CheckpointError::Corrupted {
                        epoch: *epoch,
                        reason: format!(
                            "it was committed, but the store now ends at {}: the store lost data (its files were damaged or replaced)",
                            n.map(|n| format!("checkpoint {n}")).unwrap_or_else(|| "no checkpoint at all".into())
                        ),
                    });
                }
                _ => {}
            }
        }
        match last {
            None => Ok(None),
            Some((k, v)) => decode(self.epoch_of(&k)?, &v).map(Some),
        }
    }

    fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        self.tree
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.write_err(e))?;
                self.epoch_of(&k)
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
        // The manifest first: a crash half-way leaves an empty-looking
        // store that is not taken for a damaged one.
        match std::fs::remove_file(&self.manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointError::Write(format!("{}: manifest: {e}", self.location))),
        }
        self.tree.clear().map_err(|e| self.write_err(e))?;
        self.deltas.clear().map_err(|e| self.write_err(e))?;
        match std::fs::remove_dir_all(&self.files) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointError::Write(format!("{}: delta files: {e}", self.location))),
        }
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
        Checkpoint {
            epoch,
            committed_at_ms: 1_700_000_000_000 + epoch,
            complete: epoch == 3,
            state,
            ..Default::default()
        }
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
        // A damaged delta too.
        let mut deltas = BTreeMap::new();
        deltas.insert("unique".to_string(), vec![1u8; 100]);
        s.commit(&Checkpoint { epoch: 3, deltas, ..Default::default() }).unwrap();
        assert_eq!(s.deltas("unique", 0, 3).unwrap(), vec![(3, vec![1u8; 100])]);
        let key = delta_key("unique", 3);
        let mut v = s.deltas.get(&key).unwrap().unwrap().to_vec();
        v[50] ^= 1;
        s.deltas.insert(key, v).unwrap();
        let err = s.deltas("unique", 0, 3).unwrap_err().to_string();
        assert!(err.starts_with("delta 3 of `unique` is corrupted"), "{err}");
        // A large delta lives in a file; a damaged file is caught too.
        let big = vec![5u8; 100_000];
        let mut deltas = BTreeMap::new();
        deltas.insert("keys".to_string(), big.clone());
        s.commit(&Checkpoint { epoch: 4, deltas, ..Default::default() }).unwrap();
        assert_eq!(s.deltas("keys", 0, 4).unwrap(), vec![(4, big.clone())]);
        assert_eq!(s.delta_bytes("keys", 0, 4).unwrap(), 100_000);
        let file = s.delta_file("keys", 4);
        let mut b = std::fs::read(&file).unwrap();
        b[99_000] ^= 1;
        std::fs::write(&file, b).unwrap();
        let err = s.deltas("keys", 0, 4).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        s.drop_operator_deltas("keys", 5).unwrap();
        assert!(!file.exists(), "dropping a delta removes its file");
        s.tree.remove(4u64.to_be_bytes()).unwrap();
        s.write_manifest(3, &s.tree.get(3u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        // A store that silently lost its newest records (as sled does when
        // it drops what it cannot read) is caught by the manifest.
        s.tree.remove(3u64.to_be_bytes()).unwrap();
        s.tree.remove(2u64.to_be_bytes()).unwrap();
        let err = s.latest().unwrap_err().to_string();
        assert!(
            err.contains("checkpoint 3 is corrupted: it was committed, but the store now ends at checkpoint 1"),
            "{err}"
        );
        s.reset().unwrap();
        assert_eq!(s.latest().unwrap(), None, "a reset store is empty, not damaged");
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
}
