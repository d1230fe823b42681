//! One writer per output: a lock held for the whole run on what a sink
//! writes (a file target, a database table), so a second run of the same
//! pipeline with another checkpoint store, or another pipeline aimed at the
//! same target, is refused with a message naming the run that holds it,
//! instead of both interleaving parts into a corrupt file.
//!
//! The lock is the operating system's advisory file lock on a small file
//! beside the target (`.<name>.lock`), which also holds who took it; the
//! kernel releases it when the process ends, `kill -9` included. The file is
//! left in place: removing it would race with a run waiting to lock it.
//! Database tables on a server are locked by the sql sink itself (named
//! locks), with the same holder text.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::api::OperatorError;

/// Who holds a lock, in words.
pub fn holder(pipeline: &str, sink: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    format!(
        "pipeline {pipeline}, sink {sink}, process {} on {}, since unix time {since}",
        std::process::id(),
        if host.is_empty() { "this host".to_string() } else { host }
    )
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    pub path: PathBuf,
}

impl OutputLock {
    /// Locks `.<name>.lock` beside `target` (a local path), or says who
    /// holds it.
    pub fn acquire(target: &Path, what: &str, holder: &str) -> Result<OutputLock, OperatorError> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| OperatorError::Data(format!("cannot create {} for {what}: {e}", dir.display())))?;
        let path = dir.join(format!(".{name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| OperatorError::Data(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                let other = other.trim();
                return Err(OperatorError::Data(format!(
                    "{what} is being written by another run ({}); two runs must not write one output: wait for it to end, or give this run another target",
                    if other.is_empty() { "its holder left no name" } else { other }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OperatorError::Data(format!("cannot lock {}: {e}", path.display())));
            }
        }
        // Ours now: say who we are, for the next one to read.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(holder.as_bytes());
        let _ = file.flush();
        Ok(OutputLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_first_and_the_lock_goes_with_it() {
        let dir = tempfile_dir();
        let target = dir.join("out.csv");
        let first = OutputLock::acquire(&target, "out.csv", "pipeline a, sink out").expect("free");
        let err = OutputLock::acquire(&target, "out.csv", "pipeline b, sink out").expect_err("held").to_string();
        assert!(err.contains("being written by another run (pipeline a, sink out)"), "{err}");
        drop(first);
        OutputLock::acquire(&target, "out.csv", "pipeline b, sink out").expect("released with the first");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("engine-lock-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }
}
