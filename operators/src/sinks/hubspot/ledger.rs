//! What a HubSpot sink remembers between runs: the HubSpot record id of
//! every key it upserted (an archive needs record ids, not the unique
//! property's values) and the records HubSpot refused (offered again in the
//! next run until accepted).
//!
//! It lives in the checkpoint store as this operator's deltas: a log of
//! entries since the last barrier. The run's first delta starts with a base
//! marker and the whole state, because a carrier's deltas are what the next
//! run starts from and only this run's are kept. Must not talk to HubSpot.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

const BASE: u8 = b'B';
const PUT: u8 = b'P';
const GONE: u8 = b'D';
const REFUSED: u8 = b'R';
const QUOTA: u8 = b'Q';

/// A record HubSpot refused, as it was last offered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub properties: BTreeMap<String, String>,
    /// Times it was offered and refused, over every run.
    pub attempts: u32,
    pub line: Option<u64>,
    pub reason: String,
    /// The row's source text, for the reject when it is refused again.
    #[serde(default)]
    pub raw: Option<String>,
    /// This run sent the key again (a newer row): no retry at the end.
    #[serde(skip)]
    pub superseded: bool,
}

#[derive(Default)]
pub struct Ledger {
    ids: HashMap<Box<str>, u64>,
    refused: HashMap<Box<str>, Refusal>,
    /// The daily budget's day and the requests made in it.
    quota: Option<(String, u64)>,
    /// Entries since the last delta was taken.
    log: Vec<u8>,
    /// This run's deltas already carry the whole state (a base marker).
    based: bool,
    /// Deltas restored from this run's checkpoints, replayed on top of the
    /// carried state when that arrives.
    restored: Vec<Vec<u8>>,
}

impl Ledger {
    pub fn record_id(&self, key: &str) -> Option<u64> {
        self.ids.get(key).copied()
    }

    /// Records known to exist in HubSpot: the base of the mass-delete guard.
    pub fn holds(&self) -> u64 {
        self.ids.len() as u64
    }

    pub fn refused_len(&self) -> usize {
        self.refused.len()
    }

    /// HubSpot accepted `key` as record `id`.
    pub fn put(&mut self, key: &str, id: u64) {
        self.refused.remove(key);
        if self.ids.get(key) != Some(&id) {
            self.ids.insert(key.into(), id);
        }
        self.log.push(PUT);
        field(&mut self.log, key.as_bytes());
        self.log.extend_from_slice(&id.to_le_bytes());
    }

    /// `key` was archived (or never existed): forget it.
    pub fn remove(&mut self, key: &str) {
        self.ids.remove(key);
        self.refused.remove(key);
        self.log.push(GONE);
        field(&mut self.log, key.as_bytes());
    }

    /// HubSpot refused `key`; counts the attempt.
    pub fn refuse(&mut self, key: &str, mut r: Refusal) -> u32 {
        r.attempts = self.refused.get(key).map(|p| p.attempts).unwrap_or(0) + 1;
        let attempts = r.attempts;
        self.log.push(REFUSED);
        field(&mut self.log, key.as_bytes());
        field(&mut self.log, &serde_json::to_vec(&r).unwrap_or_default());
        self.refused.insert(key.into(), r);
        attempts
    }

    /// Requests counted against the daily budget of `day`, so that every
    /// run of a day shares one budget.
    pub fn set_quota(&mut self, day: &str, used: u64) {
        if self.quota.as_ref().is_some_and(|(d, u)| d == day && *u == used) {
            return;
        }
        self.quota = Some((day.to_string(), used));
        push_quota(&mut self.log, day, used);
    }

    pub fn quota(&self) -> Option<(&str, u64)> {
        self.quota.as_ref().map(|(d, u)| (d.as_str(), *u))
    }

    /// This run offers `key` again with a newer row.
    pub fn supersede(&mut self, key: &str) {
        if let Some(r) = self.refused.get_mut(key) {
            r.superseded = true;
        }
    }

    /// Refusals this run did not offer again, to retry at its end.
    pub fn to_retry(&self) -> Vec<(String, Refusal)> {
        let mut v: Vec<(String, Refusal)> =
            self.refused.iter().filter(|(_, r)| !r.superseded).map(|(k, r)| (k.to_string(), r.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The entries since the last call; the run's first carries the whole
    /// state after a base marker.
    pub fn take_delta(&mut self) -> Vec<u8> {
        if self.based {
            return std::mem::take(&mut self.log);
        }
        self.based = true;
        self.log.clear();
        let mut out = vec![BASE];
        let mut ids: Vec<(&Box<str>, &u64)> = self.ids.iter().collect();
        ids.sort();
        for (k, id) in ids {
            out.push(PUT);
            field(&mut out, k.as_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        for (k, r) in &self.refused {
            out.push(REFUSED);
            field(&mut out, k.as_bytes());
            field(&mut out, &serde_json::to_vec(r).unwrap_or_default());
        }
        if let Some((day, used)) = &self.quota {
            push_quota(&mut out, day, *used);
        }
        out
    }

    /// A resumed run: this run's deltas up to the checkpoint.
    pub fn restore(&mut self, deltas: &[Vec<u8>]) -> Result<(), String> {
        for d in deltas {
            if contains_base(d)? {
                self.based = true;
            }
            self.apply(d)?;
        }
        self.restored = deltas.to_vec();
        self.log.clear();
        Ok(())
    }

    /// The last completed run's deltas. A resumed run whose deltas already
    /// hold the whole state ignores them; otherwise they go underneath what
    /// was restored.
    pub fn carry_over(&mut self, previous: &[Vec<u8>]) -> Result<(), String> {
        if self.based {
            return Ok(());
        }
        self.ids.clear();
        self.refused.clear();
        self.quota = None;
        for d in previous {
            self.apply(d)?;
        }
        for d in std::mem::take(&mut self.restored) {
            self.apply(&d)?;
        }
        self.log.clear();
        Ok(())
    }

    fn apply(&mut self, mut d: &[u8]) -> Result<(), String> {
        while let Some((&tag, rest)) = d.split_first() {
            d = rest;
            match tag {
                BASE => {
                    self.ids.clear();
                    self.refused.clear();
                    self.quota = None;
                }
                QUOTA => {
                    let day = take_str(&mut d)?;
                    self.quota = Some((day, take_u64(&mut d)?));
                }
                PUT => {
                    let key = take_str(&mut d)?;
                    let id = take_u64(&mut d)?;
                    self.refused.remove(key.as_str());
                    self.ids.insert(key.into(), id);
                }
                GONE => {
                    let key = take_str(&mut d)?;
                    self.ids.remove(key.as_str());
                    self.refused.remove(key.as_str());
                }
                REFUSED => {
                    let key = take_str(&mut d)?;
                    let json = take_field(&mut d)?;
                    let r: Refusal = serde_json::from_slice(json).map_err(|e| format!("a refused record: {e}"))?;
                    self.refused.insert(key.into(), r);
                }
                other => return Err(format!("unknown entry tag {other:#04x}")),
            }
        }
        Ok(())
    }
}

fn contains_base(mut d: &[u8]) -> Result<bool, String> {
    while let Some((&tag, rest)) = d.split_first() {
        d = rest;
        match tag {
            BASE => return Ok(true),
            PUT => {
                take_field(&mut d)?;
                take_u64(&mut d)?;
            }
            GONE => {
                take_field(&mut d)?;
            }
            REFUSED => {
                take_field(&mut d)?;
                take_field(&mut d)?;
            }
            QUOTA => {
                take_field(&mut d)?;
                take_u64(&mut d)?;
            }
            other => return Err(format!("unknown entry tag {other:#04x}")),
        }
    }
    Ok(false)
}

fn push_quota(out: &mut Vec<u8>, day: &str, used: u64) {
    out.push(QUOTA);
    field(out, day.as_bytes());
    out.extend_from_slice(&used.to_le_bytes());
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take_field<'a>(d: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if d.len() < 4 {
        return Err("truncated entry".into());
    }
    let (len, rest) = d.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err("truncated entry".into());
    }
    let (f, rest) = rest.split_at(len);
    *d = rest;
    Ok(f)
}

fn take_str(d: &mut &[u8]) -> Result<String, String> {
    String::from_utf8(take_field(d)?.to_vec()).map_err(|_| "a key is not UTF-8".to_string())
}

fn take_u64(d: &mut &[u8]) -> Result<u64, String> {
    if d.len() < 8 {
        return Err("truncated entry".into());
    }
    let (n, rest) = d.split_at(8);
    *d = rest;
    Ok(u64::from_le_bytes(n.try_into().map_err(|_| "truncated entry".to_string())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: &str) -> Refusal {
        Refusal {
            properties: BTreeMap::new(),
            attempts: 0,
            line: Some(2),
            reason: reason.into(),
            raw: None,
            superseded: false,
        }
    }

    /// Run 1 puts a, b and refuses c; run 2 carries that, archives a and
    /// gets c accepted: its deltas alone rebuild the whole state.
    #[test]
    fn a_runs_deltas_alone_rebuild_the_whole_state() {
        let mut run1 = Ledger::default();
        run1.put("a", 1);
        let d1 = run1.take_delta();
        run1.put("b", 2);
        assert_eq!(run1.refuse("c", refusal("bad")), 1);
        let d2 = run1.take_delta();

        let mut run2 = Ledger::default();
        run2.carry_over(&[d1, d2]).unwrap();
        assert_eq!((run2.record_id("a"), run2.record_id("b"), run2.holds()), (Some(1), Some(2), 2));
        assert_eq!(run2.to_retry().len(), 1);
        let e1 = run2.take_delta();
        run2.remove("a");
        run2.put("c", 3);
        let e2 = run2.take_delta();

        let mut run3 = Ledger::default();
        run3.carry_over(&[e1, e2]).unwrap();
        assert_eq!((run3.record_id("a"), run3.record_id("c"), run3.holds()), (None, Some(3), 2));
        assert_eq!(run3.refused_len(), 0, "c was accepted");
        assert_eq!(run3.quota(), None);

        // The day's budget travels too.
        let mut a = Ledger::default();
        a.set_quota("2026-11-29", 40);
        let d = a.take_delta();
        let mut b = Ledger::default();
        b.carry_over(&[d]).unwrap();
        assert_eq!(b.quota(), Some(("2026-11-29", 40)));
    }

    /// A resumed run restores its own deltas; the carried state goes
    /// underneath only when those lack the base.
    #[test]
    fn restored_entries_win_over_carried_ones() {
        let mut prev = Ledger::default();
        prev.put("a", 1);
        prev.put("b", 2);
        let carried = prev.take_delta();

        // This run's first delta (with the base) was committed.
        let mut run = Ledger::default();
        run.carry_over(std::slice::from_ref(&carried)).unwrap();
        run.remove("a");
        let first = run.take_delta();
        let mut resumed = Ledger::default();
        resumed.restore(&[first]).unwrap();
        resumed.carry_over(std::slice::from_ref(&carried)).unwrap();
        assert_eq!((resumed.record_id("a"), resumed.record_id("b")), (None, Some(2)));

        // Only a later delta (no base) survived: carried first, then it.
        let mut resumed = Ledger::default();
        let mut later = Ledger { based: true, ..Default::default() };
        later.remove("b");
        later.put("c", 3);
        resumed.restore(&[later.take_delta()]).unwrap();
        resumed.carry_over(std::slice::from_ref(&carried)).unwrap();
        assert_eq!((resumed.record_id("a"), resumed.record_id("b"), resumed.record_id("c")), (Some(1), None, Some(3)));
        assert!(resumed.take_delta().starts_with(&[BASE]), "the next delta carries everything");
    }

    #[test]
    fn refusals_count_attempts_and_superseded_ones_are_not_retried() {
        let mut l = Ledger::default();
        assert_eq!(l.refuse("x", refusal("one")), 1);
        assert_eq!(l.refuse("x", refusal("two")), 2);
        l.refuse("y", refusal("y"));
        l.supersede("x");
        let retry: Vec<String> = l.to_retry().into_iter().map(|(k, _)| k).collect();
        assert_eq!(retry, ["y"]);
        assert!(Ledger::default().apply(&[b'P', 9, 0]).is_err(), "a truncated entry is an error");
    }
}
