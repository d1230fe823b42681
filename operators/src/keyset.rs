//! [`KeySet`]: an exact set of byte-string keys, built for tens of millions
//! of short keys (dedupe's and changes' state). Owns the memory layout, the
//! hash table and the checkpoint-delta format; knows nothing of Arrow or of
//! how a caller encodes its keys.
//!
//! Layout:
//! - Keys live once, back to back, in an append-only *arena* of 4 MiB
//!   chunks, each as a varint length followed by its bytes. Chunks are never
//!   reallocated, so growing the set never holds two copies of the keys.
//! - The table is open addressing with linear probing over one `u64` per
//!   slot: the top 28 bits of the key's hash (its *fingerprint*) and the
//!   key's 36-bit arena address. A slot's home is the top bits of the hash,
//!   so while the table has at most 2^28 slots the fingerprint alone says
//!   where an entry goes: growing re-reads no key (the old table is walked
//!   in order and each entry lands at twice its index, nearly sequentially),
//!   and a probe compares key bytes only when 28 bits of hash already match.
//!
//! A key costs its bytes, a length byte (two past 127 bytes) and 8 bytes of
//! table at a load between 0.4 and 0.8: 10 to 20 bytes beyond its own.
//!
//! Checkpoint deltas: the arena is append-only, so the keys added since the
//! last delta are exactly its bytes past a mark. A delta is those bytes
//! behind a 5-byte header ([`DELTA_MAGIC`]); [`KeySet::insert_delta`] also
//! reads the format before it (u32 LE length + key, no header), which a
//! checkpoint taken by an older build holds.

use std::hash::BuildHasher;

/// Bytes per arena chunk; a key longer than a chunk gets a chunk of its own.
const CHUNK: usize = 4 << 20;
const OFF_BITS: u32 = 22;
/// Arena addresses: chunk index and offset within it (2^14 chunks of 4 MiB:
/// 64 GiB of keys, more than a machine holds).
const ADDR_BITS: u32 = 36;
const MAX_CHUNKS: usize = 1 << (ADDR_BITS - OFF_BITS);
const FP_BITS: u32 = 64 - ADDR_BITS;
/// Tables up to this many slots grow from fingerprints alone.
const FP_SLOT_BITS: u32 = FP_BITS;
const MIN_BITS: u32 = 4;

/// First bytes of a delta in the current format: read as the old format's
/// u32 length they would announce a 4 GiB key, which no old delta holds.
pub const DELTA_MAGIC: [u8; 5] = [0xFF, 0xFF, 0xFF, 0xFF, 1];

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("the key set is full: it holds 64 GiB of keys")]
    Full,
    #[error("a delta is damaged: {0}")]
    Damaged(&'static str),
}

/// The set of keys seen, exact.
pub struct KeySet {
    chunks: Vec<Vec<u8>>,
    /// 0 is an empty slot; otherwise fingerprint << 36 | (address + 1).
    slots: Vec<u64>,
    bits: u32,
    len: usize,
    hasher: hashbrown::DefaultHashBuilder,
    /// Arena address where the keys not yet in a delta start.
    mark: (usize, usize),
    /// Tables up to 2^this slots grow from fingerprints alone (a field so
    /// that a test can take the other path without 2^28 keys).
    fp_slot_bits: u32,
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet::with_capacity(0)
    }
}

#[inline]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, even on an address
    // outside any allocation (callers pass addresses within theirs anyway).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn varint_len(mut n: usize) -> usize {
    let mut l = 1;
    while n >= 0x80 {
        n >>= 7;
        l += 1;
    }
    l
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// (value, bytes read), or None when cut short or too long.
fn get_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0usize;
    for (i, &byte) in b.iter().enumerate().take(10) {
        n |= ((byte & 0x7F) as usize).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

impl KeySet {
    /// A set that takes `keys` keys before its table first grows.
    pub fn with_capacity(keys: usize) -> Self {
        let mut bits = MIN_BITS;
        while (1usize << bits) * 4 < keys.saturating_mul(5) {
            bits += 1;
        }
        KeySet {
            chunks: Vec::new(),
            slots: vec![0; 1 << bits],
            bits,
            len: 0,
            hasher: Default::default(),
            mark: (0, 0),
            fp_slot_bits: FP_SLOT_BITS,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by keys and table (for the summary and metrics).
    pub fn memory_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>() + self.slots.capacity() * 8
    }

    /// The hash [`KeySet::insert_hashed`] expects for `key`.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        (hash >> (64 - self.bits)) as usize
    }

    /// Hints the CPU to fetch the slot `hash` starts probing at: a caller
    /// that knows the next keys' hashes overlaps those cache misses.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.home(hash)));
    }

    /// The second stage of a prefetch, a few keys after [`KeySet::prefetch`]
    /// of the same hash: the home slot is in cache by then, and when it
    /// holds an entry with this fingerprint (the key seen before, most
    /// likely) the key's bytes in the arena are fetched too.
    #[inline]
    pub fn prefetch_key(&self, hash: u64) {
        let e = self.slots[self.home(hash)];
        if e == 0 || e >> ADDR_BITS != hash >> ADDR_BITS {
            return;
        }
        let addr = (e & ((1 << ADDR_BITS) - 1)) - 1;
        if let Some(chunk) = self.chunks.get((addr >> OFF_BITS) as usize) {
            prefetch(chunk.as_ptr().wrapping_add((addr & ((1 << OFF_BITS) - 1)) as usize));
        }
    }

    fn key_at(&self, addr: u64) -> &[u8] {
        let chunk = &self.chunks[(addr >> OFF_BITS) as usize];
        let off = (addr & ((1 << OFF_BITS) - 1)) as usize;
        // Written by `append` below: always a whole varint and key.
        let (len, n) = get_varint(&chunk[off..]).unwrap_or((0, 0));
        &chunk[off + n..off + n + len]
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.find(key, self.hash(key)).is_ok()
    }

    /// Ok(slot) where `key` is, or Err(slot) where it would go.
    #[inline]
    fn find(&self, key: &[u8], hash: u64) -> Result<usize, usize> {
        let fp = hash >> ADDR_BITS;
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let e = self.slots[i];
            if e == 0 {
                return Err(i);
            }
            if e >> ADDR_BITS == fp && self.key_at((e & ((1 << ADDR_BITS) - 1)) - 1) == key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.slots.iter().filter(|&&e| e != 0).map(|&e| self.key_at((e & ((1 << ADDR_BITS) - 1)) - 1))
    }

    /// Inserts `key`; true when it was not there before.
    pub fn insert(&mut self, key: &[u8]) -> Result<bool, KeySetError> {
        self.insert_hashed(key, self.hash(key))
    }

    /// [`KeySet::insert`] with the key's hash from [`KeySet::hash`].
    #[inline]
    pub fn insert_hashed(&mut self, key: &[u8], hash: u64) -> Result<bool, KeySetError> {
        let mut slot = match self.find(key, hash) {
            Ok(_) => return Ok(false),
            Err(slot) => slot,
        };
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.grow();
            slot = match self.find(key, hash) {
                Ok(_) => return Ok(false),
                Err(slot) => slot,
            };
        }
        let addr = self.append(key)?;
        self.slots[slot] = ((hash >> ADDR_BITS) << ADDR_BITS) | (addr + 1);
        self.len += 1;
        Ok(true)
    }

    /// Stores `key` in the arena; its address.
    fn append(&mut self, key: &[u8]) -> Result<u64, KeySetError> {
        let need = varint_len(key.len()) + key.len();
        let fits = self.chunks.last().is_some_and(|c| c.capacity() == CHUNK && c.len() + need <= CHUNK);
        if !fits {
            if self.chunks.len() >= MAX_CHUNKS - 1 {
                return Err(KeySetError::Full);
            }
            self.chunks.push(Vec::with_capacity(need.max(CHUNK)));
        }
        let idx = self.chunks.len() - 1;
        let chunk = &mut self.chunks[idx];
        let off = chunk.len();
        put_varint(chunk, key.len());
        chunk.extend_from_slice(key);
        Ok(((idx as u64) << OFF_BITS) | off as u64)
    }

    /// Doubles the table. Up to 2^28 slots every entry's new home comes from
    /// its fingerprint; past that the key is hashed again.
    fn grow(&mut self) {
        let bits = self.bits + 1;
        let mut slots = vec![0u64; 1 << bits];
        let mask = slots.len() - 1;
        for &e in &self.slots {
            if e == 0 {
                continue;
            }
            let hash = if bits <= self.fp_slot_bits {
                e & !((1 << ADDR_BITS) - 1)
            } else {
                self.hash(self.key_at((e & ((1 << ADDR_BITS) - 1)) - 1))
            };
            let mut i = (hash >> (64 - bits)) as usize;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = e;
        }
        self.slots = slots;
        self.bits = bits;
    }

    /// The keys added since the last call, oldest first: a checkpoint delta.
    pub fn take_added(&mut self) -> Vec<u8> {
        let (from_chunk, from_off) = self.mark;
        let mut out = Vec::new();
        out.extend_from_slice(&DELTA_MAGIC);
        for (i, chunk) in self.chunks.iter().enumerate().skip(from_chunk) {
            let start = if i == from_chunk { from_off.min(chunk.len()) } else { 0 };
            out.extend_from_slice(&chunk[start..]);
        }
        self.mark_taken();
        out
    }

    /// Forgets which keys are new: what the set holds now is already in the
    /// checkpoint store (restored from it, or carried over).
    pub fn mark_taken(&mut self) {
        self.mark = match self.chunks.last() {
            Some(c) => (self.chunks.len() - 1, c.len()),
            None => (0, 0),
        };
    }

    /// Re-inserts the keys of a delta from [`KeySet::take_added`] (or from
    /// an older build's); how many keys it held.
    pub fn insert_delta(&mut self, delta: &[u8]) -> Result<usize, KeySetError> {
        self.reserve(delta_keys(delta)?);
        let mut n = 0;
        for key in DeltaKeys::new(delta) {
            self.insert(key?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes room for `more` keys without growing on the way.
    pub fn reserve(&mut self, more: usize) {
        while (self.len + more) * 5 > self.slots.len() * 4 {
            self.grow();
        }
    }
}

/// How many keys a delta holds (walks its lengths, not its keys).
pub fn delta_keys(delta: &[u8]) -> Result<usize, KeySetError> {
    DeltaKeys::new(delta).try_fold(0, |n, k| k.map(|_| n + 1))
}

/// The keys of a delta, either format.
pub struct DeltaKeys<'a> {
    rest: &'a [u8],
    legacy: bool,
}

impl<'a> DeltaKeys<'a> {
    pub fn new(delta: &'a [u8]) -> Self {
        match delta.strip_prefix(&DELTA_MAGIC[..]) {
            Some(rest) => DeltaKeys { rest, legacy: false },
            None => DeltaKeys { rest: delta, legacy: true },
        }
    }

    /// True for a delta written before [`DELTA_MAGIC`] existed.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }
}

impl<'a> Iterator for DeltaKeys<'a> {
    type Item = Result<&'a [u8], KeySetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (len, n) = if self.legacy {
            match self.rest.split_first_chunk::<4>() {
                Some((len, _)) => (u32::from_le_bytes(*len) as usize, 4),
                None => return self.fail("a key length is cut short"),
            }
        } else {
            match get_varint(self.rest) {
                Some(v) => v,
                None => return self.fail("a key length is cut short"),
            }
        };
        let Some(key) = self.rest.get(n..n.saturating_add(len)) else {
            return self.fail("a key is cut short");
        };
        self.rest = &self.rest[n + len..];
        Some(Ok(key))
    }
}

impl DeltaKeys<'_> {
    fn fail<T>(&mut self, why: &'static str) -> Option<Result<T, KeySetError>> {
        self.rest = &[];
        Some(Err(KeySetError::Damaged(why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_first_insert_wins() {
        let mut s = KeySet::default();
        assert!(s.insert(b"a").unwrap());
        assert!(s.insert(b"ab").unwrap());
        assert!(!s.insert(b"a").unwrap());
        assert!(s.insert(b"").unwrap());
        assert!(!s.insert(b"").unwrap());
        for i in 0..200_000u32 {
            assert!(s.insert(&i.to_le_bytes()).unwrap());
        }
        for i in 0..200_000u32 {
            assert!(!s.insert(&i.to_le_bytes()).unwrap(), "{i}");
            assert!(s.contains(&i.to_le_bytes()));
        }
        assert!(!s.contains(&200_000u32.to_le_bytes()));
        assert_eq!(s.len(), 200_003);
        assert_eq!(s.iter().count(), 200_003);
    }

    #[test]
    fn keys_spanning_chunks_and_huge_keys_are_exact() {
        let mut s = KeySet::default();
        let big = vec![7u8; 5 << 20];
        assert!(s.insert(&big).unwrap());
        assert!(!s.insert(&big).unwrap());
        let mut other = big.clone();
        other[(5 << 20) - 1] = 8;
        assert!(s.insert(&other).unwrap());
        for i in 0..10_000u32 {
            let mut k = vec![0u8; 1024];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(s.insert(&k).unwrap());
        }
        for i in 0..10_000u32 {
            let mut k = vec![0u8; 1024];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(!s.insert(&k).unwrap(), "key {i} lost");
        }
        assert!(s.chunks.len() > 3);
        assert!(s.contains(&big) && s.contains(&other));
    }

    #[test]
    fn a_colliding_fingerprint_still_compares_keys() {
        // Every key hashes alike: all land in one probe run, and only the
        // key bytes tell them apart.
        let mut s = KeySet::default();
        for i in 0..2_000u32 {
            assert!(s.insert_hashed(&i.to_le_bytes(), 0xABCD << 40).unwrap());
        }
        for i in 0..2_000u32 {
            assert!(!s.insert_hashed(&i.to_le_bytes(), 0xABCD << 40).unwrap());
        }
        assert_eq!(s.len(), 2_000);
    }

    #[test]
    fn growth_past_the_fingerprint_rehashes_keys() {
        let mut s = KeySet::default();
        s.fp_slot_bits = 6;
        for i in 0..5_000u32 {
            assert!(s.insert(&i.to_le_bytes()).unwrap());
        }
        assert!(s.bits > 10, "grew past the fingerprint limit");
        for i in 0..5_000u32 {
            assert!(s.contains(&i.to_le_bytes()), "{i}");
        }
    }

    #[test]
    fn deltas_hold_only_new_keys_and_rebuild_the_set() {
        let mut s = KeySet::default();
        let big = vec![9u8; 70_000];
        for k in [&b"a"[..], b"bb", b"a", &big] {
            s.insert(k).unwrap();
        }
        let d1 = s.take_added();
        assert_eq!(d1.len(), 5 + (1 + 1) + (1 + 2) + (3 + 70_000));
        s.insert(b"bb").unwrap();
        s.insert(b"ccc").unwrap();
        let d2 = s.take_added();
        assert_eq!(d2.len(), 5 + 1 + 3, "only the key added since the last delta");
        assert_eq!(s.take_added(), DELTA_MAGIC, "nothing new");
        let mut r = KeySet::default();
        assert_eq!(r.insert_delta(&d1).unwrap(), 3);
        assert_eq!(r.insert_delta(&d2).unwrap(), 1);
        assert_eq!(r.len(), 4);
        assert!(!r.insert(b"a").unwrap() && !r.insert(&big).unwrap() && !r.insert(b"ccc").unwrap());
        assert!(r.insert_delta(&d2[..7]).is_err(), "a cut delta is an error");
        assert!(matches!(delta_keys(&d1[..100]), Err(KeySetError::Damaged(_))));
    }

    #[test]
    fn an_older_builds_delta_is_read() {
        let mut legacy = Vec::new();
        for k in [&b"x"[..], b"yy"] {
            legacy.extend_from_slice(&(k.len() as u32).to_le_bytes());
            legacy.extend_from_slice(k);
        }
        assert!(DeltaKeys::new(&legacy).is_legacy());
        let mut s = KeySet::default();
        assert_eq!(s.insert_delta(&legacy).unwrap(), 2);
        assert!(s.contains(b"x") && s.contains(b"yy"));
        assert!(s.insert_delta(&legacy[..6]).is_err());
    }

    #[test]
    fn memory_per_short_key_is_small() {
        let mut s = KeySet::default();
        let n = 1_000_000u32;
        for i in 0..n {
            s.insert(format!("name{i},1990,F").as_bytes()).unwrap();
        }
        let key_bytes: usize = (0..n).map(|i| format!("name{i},1990,F").len()).sum();
        let per_key = (s.memory_bytes() - key_bytes) as f64 / n as f64;
        // 1 length byte + 8 bytes of table at load ≥ 0.4, plus the unused
        // end of the last chunk.
        assert!(per_key <= 24.0, "{per_key:.1} bytes per key beyond the key");
    }
}
