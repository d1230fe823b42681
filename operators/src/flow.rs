//! Flow control by rows: how many rows an edge may hold, set by the
//! consumer to about a target time of its own measured throughput ("buffer
//! debloating", as Flink calls it), so that a checkpoint barrier queued
//! behind them waits a bounded time even when the consumer is slow (a sink
//! paced by HubSpot's rate limit).
//!
//! The channel's message bound still applies; this bounds rows on top. A
//! sender whose batch is larger than the edge's budget sends it in slices.
//! Owns the accounting only: the runtime measures and sets budgets, the
//! [`crate::Collector`] acquires before sending, the consumer releases
//! after processing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::batch::Batch;

/// Rows a new edge may hold before its consumer measured anything: small,
/// so a slow consumer never starts behind a deep queue; a fast one raises
/// it after its first batch.
pub const INITIAL_BUDGET: usize = 1024;
/// The least a budget goes down to: below this, per-message overhead
/// dominates.
pub const MIN_BUDGET: usize = 128;

/// The row budget of one edge.
#[derive(Debug)]
pub struct Credit {
    budget: AtomicUsize,
    held: AtomicUsize,
    released: Notify,
}

impl Credit {
    pub fn new(budget: usize) -> Arc<Credit> {
        Arc::new(Credit { budget: AtomicUsize::new(budget.max(1)), held: AtomicUsize::new(0), released: Notify::new() })
    }

    /// No limit by rows (the message bound alone applies).
    pub fn unlimited() -> Arc<Credit> {
        Credit::new(usize::MAX)
    }

    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::Acquire)
    }

    /// Rows sent and not yet processed.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn set_budget(&self, rows: usize) {
        let old = self.budget.swap(rows.max(1), Ordering::AcqRel);
        if rows > old {
            self.released.notify_waiters();
        }
    }

    /// Waits until `rows` more fit. An empty edge always takes a message,
    /// whatever its size, so a budget never deadlocks a sender.
    pub async fn acquire(&self, rows: usize) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let held = self.held.load(Ordering::Acquire);
            if held == 0 || held.saturating_add(rows) <= self.budget() {
                if self.held.compare_exchange(held, held + rows, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return;
                }
                continue;
            }
            released.await;
        }
    }

    /// The consumer processed `rows`.
    pub fn release(&self, rows: usize) {
        self.held.fetch_sub(rows.min(self.held()), Ordering::AcqRel);
        self.released.notify_waiters();
    }
}

/// Rows `offset..offset + len` of `batch`, provenance included; no copy.
pub fn slice(batch: &Batch, offset: usize, len: usize) -> Batch {
    let mut b = batch.clone();
    b.records = batch.records.slice(offset, len);
    b.lines = batch.lines.as_ref().map(|l| Arc::new(l.slice(offset, len)));
    b.raw = batch.raw.as_ref().map(|r| Arc::new(r.slice(offset, len)));
    b
}

/// The longest a measurement of a consumer's throughput runs (busy time).
const WINDOW: Duration = Duration::from_millis(50);
/// A measurement also ends once this many budgets' worth of rows went
/// through.
const WINDOW_BUDGETS: u64 = 4;

/// A consumer's throughput, measured over the time it was busy with input
/// (processing and waiting to emit, which is how a slow consumer downstream
/// makes this one slow too), and the budget that follows from it.
#[derive(Debug)]
pub struct Meter {
    target: Duration,
    max: usize,
    rows: u64,
    busy: Duration,
    /// Rows per second, smoothed.
    rate: Option<f64>,
    /// The budget last handed out: it grows at most twofold per
    /// measurement (a consumer that looks fast at first, e.g. a sink whose
    /// first requests go out without waiting, must not open the gates),
    /// and shrinks at once.
    budget: usize,
}

impl Meter {
    /// Budgets hold about `target` of throughput, at most `max` rows.
    pub fn new(target: Duration, max: usize) -> Meter {
        Meter { target, max: max.max(MIN_BUDGET), rows: 0, busy: Duration::ZERO, rate: None, budget: INITIAL_BUDGET }
    }

    /// Records `rows` processed in `busy`; returns a new budget once enough
    /// was seen to measure: after ~50 ms of busy time, or sooner once four
    /// budgets' worth of rows went through. With the time alone, a fast
    /// consumer took a doubling per 50 ms to get from 1,024 rows to its
    /// cap, and its producer sliced every batch into small messages
    /// meanwhile (4% of a short run's time). A consumer has to really
    /// process four budgets quickly to double one, so a slow one is not
    /// opened up by this.
    pub fn observe(&mut self, rows: usize, busy: Duration) -> Option<usize> {
        self.rows += rows as u64;
        self.busy += busy;
        if self.busy < WINDOW && self.rows < WINDOW_BUDGETS * self.budget as u64 {
            return None;
        }
        let now = self.rows as f64 / self.busy.as_secs_f64().max(1e-6);
        let rate = match self.rate {
            Some(r) => 0.7 * r + 0.3 * now,
            None => now,
        };
        self.rate = Some(rate);
        self.rows = 0;
        self.busy = Duration::ZERO;
        let want = ((rate * self.target.as_secs_f64()) as usize).clamp(MIN_BUDGET, self.max);
        self.budget = want.min(self.budget.saturating_mul(2));
        Some(self.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sender_waits_for_room_and_an_empty_edge_takes_anything() {
        let c = Credit::new(100);
        c.acquire(500).await; // empty: taken whole
        assert_eq!(c.held(), 500);
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.acquire(10).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "over budget: waits");
        c.release(450);
        waiting.await.unwrap();
        assert_eq!(c.held(), 60, "50 left + 10 fits in 100");
    }

    #[test]
    fn budgets_follow_throughput() {
        let mut m = Meter::new(Duration::from_millis(500), 100_000);
        // 1,000 rows/s: half a second is 500 rows.
        assert_eq!(m.observe(1000, Duration::from_secs(1)), Some(500));
        // Very fast: doubles per measurement up to the cap.
        let mut fast = Meter::new(Duration::from_millis(500), 4 * INITIAL_BUDGET);
        assert_eq!(fast.observe(1000, Duration::from_millis(10)), None, "too little seen yet");
        assert_eq!(fast.observe(1000, Duration::from_millis(40)), Some(2 * INITIAL_BUDGET), "50 ms busy");
        assert_eq!(fast.observe(8192, Duration::from_millis(1)), Some(4 * INITIAL_BUDGET), "four budgets' rows");
        assert_eq!(fast.observe(8192, Duration::from_millis(1)), None, "four of the new budget: not yet");
        assert_eq!(fast.observe(8192, Duration::from_millis(1)), Some(4 * INITIAL_BUDGET), "at the cap");
        // Very slow: floored, at once.
        let mut slow = Meter::new(Duration::from_millis(500), 32_768);
        assert_eq!(slow.observe(10, Duration::from_secs(1)), Some(MIN_BUDGET));
    }
}
