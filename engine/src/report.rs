//! What a person sees of a run: the progress line while it runs (only on a
//! terminal) and the per-operator summary table at the end.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use operators::OperatorStats;
use operators::registry::Role;

use crate::runtime::{Live, Outcome, RunReport};

/// `1234567` → `1,234,567` (one definition, shared with the sources'
/// position strings).
pub use operators::sources::file::thousands;

fn rate(rows: u64, d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs <= 0.0 || rows == 0 { "-".into() } else { thousands((rows as f64 / secs) as u64) }
}

/// The summary table, one row per operator in pipeline order.
pub fn summary(r: &RunReport) -> String {
    let mut out = String::new();
    if let Some(why) = &r.up_to_date {
        let mem =
            r.peak_rss_bytes.map(|b| format!(" (peak memory {:.1} MiB)", b as f64 / 1048576.0)).unwrap_or_default();
        let _ = writeln!(
            out,
            "pipeline {} is up to date: {why}; nothing read, nothing written (--force-download fetches and rereads anyway){mem}",
            r.pipeline
        );
        return out;
    }
    let status = match &r.outcome {
        Outcome::Completed => "completed".to_string(),
        Outcome::Interrupted { signal } => match r.checkpoints.as_ref().and_then(|c| c.last) {
            Some(epoch) => format!(
                "interrupted by {signal} at checkpoint {epoch} (outputs staged, not published; run the same command to resume)"
            ),
            None if r.checkpoints.is_some() => format!(
                "interrupted by {signal} before a checkpoint of this run (outputs staged; the next run resumes from the last checkpoint)"
            ),
            None => format!("interrupted by {signal} (in-flight rows drained, outputs complete)"),
        },
        Outcome::Aborted { signal } => format!("aborted by a second {signal} (partial outputs discarded)"),
        Outcome::Failed { operator, .. } => format!("failed in operator `{operator}`"),
    };
    let mem = r.peak_rss_bytes.map(|b| format!(", peak memory {:.1} MiB", b as f64 / 1048576.0)).unwrap_or_default();
    let _ = writeln!(out, "pipeline {} {status} in {:.2} s{mem}", r.pipeline, r.elapsed.as_secs_f64());
    if let Some(c) = &r.checkpoints {
        let resumed = c.resumed_from.map(|e| format!("resumed from checkpoint {e}; ")).unwrap_or_default();
        let last = c.last.map(|e| format!(", last {e}")).unwrap_or_default();
        let complete = c.complete.map(|e| format!("; marked complete at epoch {e}")).unwrap_or_default();
        let _ = writeln!(out, "checkpoints: {resumed}{} committed{last}{complete}", c.committed);
    }
    if r.operators.is_empty() {
        return out;
    }
    let header = ["operator", "kind", "rows in", "rows out", "rejected", "dropped", "time", "rows/s"];
    let rows: Vec<[String; 8]> = r
        .operators
        .iter()
        .map(|o| {
            let role = match o.role {
                Role::Source => "source",
                Role::Transform => "transform",
                Role::Sink => "sink",
            };
            [
                o.id.clone(),
                format!("{} {role}", o.kind),
                thousands(o.rows_in),
                if o.role == Role::Sink { "-".into() } else { thousands(o.rows_out) },
                thousands(o.rows_rejected),
                thousands(o.rows_dropped),
                format!("{:.2}s", o.elapsed.as_secs_f64()),
                rate(o.rows_in, o.elapsed),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i < 2 {
                let _ = write!(l, "{c:<w$}  ");
            } else {
                let _ = write!(l, "{c:>w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    for (id, note) in &r.notes {
        let _ = writeln!(out, "{id}: {note}");
    }
    out
}

/// What a dry run found: per sink the rows it would create, update, write
/// or delete, with examples, and the rows the pipeline rejected or dropped
/// on the way.
pub fn plan(r: &RunReport) -> String {
    let mut out = String::new();
    if let Some(why) = &r.up_to_date {
        let _ =
            writeln!(out, "dry run of pipeline {}: up to date ({why}); a run would read and write nothing", r.pipeline);
        return out;
    }
    if let Outcome::Failed { operator, error } = &r.outcome {
        let _ = writeln!(out, "dry run of pipeline {} failed in operator `{operator}`: {error}", r.pipeline);
        return out;
    }
    let _ = writeln!(
        out,
        "dry run of pipeline {} in {:.2} s: nothing was written, no checkpoint taken, nothing sent",
        r.pipeline,
        r.elapsed.as_secs_f64()
    );
    for o in r.operators.iter().filter(|o| o.role != Role::Sink) {
        let mut parts = Vec::new();
        if o.role == Role::Source {
            parts.push(format!("{} rows read", thousands(o.rows_in)));
        }
        if o.rows_rejected > 0 {
            parts.push(format!("{} rejected", thousands(o.rows_rejected)));
        }
        if o.rows_dropped > 0 {
            let why = match o.kind {
                "changes" => "unchanged since the last completed run",
                "dedupe" => "duplicates",
                _ => "dropped",
            };
            parts.push(format!("{} {why}", thousands(o.rows_dropped)));
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  {} ({}): {}", o.id, o.kind, parts.join(", "));
        }
    }
    for (id, p) in &r.plans {
        let kind = r.operators.iter().find(|o| &o.id == id).map(|o| o.kind).unwrap_or("sink");
        let mut parts = Vec::new();
        for (n, what) in
            [(p.create, "to create"), (p.update, "to update"), (p.write, "to write"), (p.delete, "to delete")]
        {
            if n > 0 {
                parts.push(format!("{} {what}", thousands(n)));
            }
        }
        if parts.is_empty() {
            parts.push("nothing to do".into());
        }
        let _ = writeln!(out, "sink {id} ({kind}): {}", parts.join(", "));
        if !p.basis.is_empty() {
            let _ = writeln!(out, "    numbers: {}", p.basis);
        }
        if let Some(max) = p.max_delete_ratio {
            let verdict = match p.guard_exceeded() {
                Some(_) => "a run would be REFUSED (--allow-mass-delete overrides)",
                None => "within the limit",
            };
            let _ = writeln!(
                out,
                "    delete guard: {} of {} held, max_delete_ratio = {max}: {verdict}",
                thousands(p.delete),
                thousands(p.holds.unwrap_or(0))
            );
        }
        for (what, examples) in &p.examples {
            for e in examples {
                let _ = writeln!(out, "    e.g. {what}: {e}");
            }
        }
    }
    out
}

/// A spinner with rows read and written, on stderr, only on a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn start(enabled: bool) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// Follows `live` until the bar is finished.
    pub fn follow(&self, live: Arc<Live>) {
        let Some(bar) = self.bar.clone() else { return };
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !bar.is_finished() {
                tick.tick().await;
                let get = OperatorStats::get;
                let read: u64 = live
                    .stats
                    .iter()
                    .filter(|(_, r, _)| *r == Role::Source)
                    .map(|(_, _, s)| get(&s.rows_out) + get(&s.rows_rejected))
                    .sum();
                let written: u64 =
                    live.stats.iter().filter(|(_, r, _)| *r == Role::Sink).map(|(_, _, s)| get(&s.rows_in)).sum();
                let rejected: u64 = live.stats.iter().map(|(_, _, s)| get(&s.rows_rejected)).sum();
                bar.set_message(format!(
                    "read {} rows ({} rows/s) · sinks received {} · rejected {}",
                    thousands(read),
                    rate(read, started.elapsed()),
                    thousands(written),
                    thousands(rejected)
                ));
            }
        });
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1924665), "1,924,665");
    }
}
