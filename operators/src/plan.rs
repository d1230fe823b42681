//! What a dry run says a sink would do: rows it would create, update or
//! delete, with a few examples of each, and where those numbers come from.
//!
//! A sink fills a [`Plan`] from [`crate::Operator::plan`] instead of
//! writing; the engine prints it (`engine run --dry-run`) and checks the
//! mass-delete guard against it before a real run. Nothing here performs
//! I/O.

use std::collections::BTreeMap;

/// Examples kept per kind of change.
const EXAMPLES: usize = 3;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Rows that would become new records.
    pub create: u64,
    /// Rows that would change existing records.
    pub update: u64,
    /// Rows that would be written where the sink cannot tell new from
    /// existing without asking the target (an upsert).
    pub write: u64,
    /// Keys that would be deleted (archived, for HubSpot).
    pub delete: u64,
    /// Records the sink holds now, when it knows: the base of the
    /// mass-delete guard.
    pub holds: Option<u64>,
    /// The sink's `max_delete_ratio`, if it has one.
    pub max_delete_ratio: Option<f64>,
    /// Where the create/update split comes from, for people.
    pub basis: String,
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Plan {
    /// Counts one row under `what` (`create`, `update`, `write`, `delete`)
    /// and keeps it as an example while there are few.
    pub fn count(&mut self, what: &'static str, example: impl FnOnce() -> String) {
        let n = match what {
            "create" => &mut self.create,
            "update" => &mut self.update,
            "delete" => &mut self.delete,
            _ => &mut self.write,
        };
        *n += 1;
        let ex = self.examples.entry(what).or_default();
        if ex.len() < EXAMPLES {
            ex.push(example());
        }
    }

    /// Counts `n` rows at once, with no example.
    pub fn count_many(&mut self, what: &'static str, n: u64) {
        match what {
            "create" => self.create += n,
            "update" => self.update += n,
            "delete" => self.delete += n,
            _ => self.write += n,
        }
    }

    /// `Some((deletes, holds, ratio))` when the deletes exceed the sink's
    /// `max_delete_ratio` of what it holds.
    pub fn guard_exceeded(&self) -> Option<(u64, u64, f64)> {
        // 1.0 turns the guard off, whatever the counts.
        let max = self.max_delete_ratio.filter(|m| *m < 1.0)?;
        if self.delete == 0 {
            return None;
        }
        let holds = self.holds.unwrap_or(0);
        let ratio = if holds == 0 { 1.0 } else { self.delete as f64 / holds as f64 };
        (ratio > max).then_some((self.delete, holds, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_compares_deletes_with_what_the_sink_holds() {
        let mut p = Plan { holds: Some(1000), max_delete_ratio: Some(0.05), ..Default::default() };
        p.count_many("delete", 50);
        assert_eq!(p.guard_exceeded(), None, "5% is allowed");
        p.count("delete", || "x".into());
        assert_eq!(p.guard_exceeded(), Some((51, 1000, 0.05)));
        p.max_delete_ratio = None;
        assert_eq!(p.guard_exceeded(), None, "no guard configured");
        p.max_delete_ratio = Some(1.0);
        p.holds = Some(0);
        assert_eq!(p.guard_exceeded(), None, "1.0 turns it off, even with nothing held");
    }

    #[test]
    fn examples_are_few() {
        let mut p = Plan::default();
        for i in 0..10 {
            p.count("create", || format!("r{i}"));
        }
        assert_eq!(p.create, 10);
        assert_eq!(p.examples["create"], ["r0", "r1", "r2"]);
    }
}
