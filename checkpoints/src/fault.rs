//! Fault injection for the crash tests: `ENGINE_FAULT=<point>:<n>` makes
//! the process SIGKILL itself the n-th time it reaches `<point>`. Points sit
//! in the windows a timer-driven `kill -9` rarely hits: between a sink's
//! commit and the store's, and in the middle of a store commit. Unset (as in
//! production), [`hit`] is one relaxed load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Fault {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn fault() -> Option<&'static Fault> {
    static F: OnceLock<Option<Fault>> = OnceLock::new();
    F.get_or_init(|| {
        let spec = std::env::var("ENGINE_FAULT").ok()?;
        let (point, at) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1"));
        Some(Fault { point: point.to_string(), at: at.parse().ok()?, seen: AtomicU64::new(0) })
    })
    .as_ref()
}

/// The process reached `point`: die here if told to.
pub fn hit(point: &str) {
    let Some(f) = fault() else { return };
    if f.point == point {
        strike(f);
    }
}

/// The process reached `point` for operator `id` (`<point>:<id>` in
/// ENGINE_FAULT); nothing is allocated on the way, since it sits on the
/// barrier path of every operator.
pub fn hit_for(point: &str, id: &str) {
    let Some(f) = fault() else { return };
    if f.point.strip_prefix(point).and_then(|r| r.strip_prefix(':')) == Some(id) {
        strike(f);
    }
}

fn strike(f: &Fault) {
    if f.seen.fetch_add(1, Ordering::Relaxed) + 1 == f.at {
        eprintln!("ENGINE_FAULT: killing the process at {} (hit {})", f.point, f.at);
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, exactly
        // as a `kill -9` from outside.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
