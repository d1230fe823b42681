//! A pipeline's rejects files and the ledger of their replays.
//!
//! A rejects file (`data/out/rejects.ndjson`, what a regular run rejected)
//! has a family: the files its replays wrote beside it
//! (`rejects.replay-<id>.ndjson`, the rows a replay rejected again) and the
//! ledger (`rejects.replays.ndjson`), which says which rows each replay
//! took. A row is known by its [`identity`]: the operator that rejected it,
//! its line, its text and how many replays it went through. A replay takes
//! rows nobody took before; the rows it rejects again are new rows (one
//! replay more) that a later replay may take.
//!
//! Shared by `engine replay`, which appends to the ledger, and `engine
//! serve`, which shows it. Owns the file names, the ledger format and the
//! row filter; choosing what to replay and running it is the engine's.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: not a replay ledger entry: {source}")]
    Ledger { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("{0}")]
    Filter(String),
}

/// One rejected row as a rejects file holds it (the columns of
/// `operators::rejects`; null ones may be left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reject {
    #[serde(default)]
    pub line: Option<u64>,
    pub operator: String,
    #[serde(default)]
    pub column: Option<String>,
    pub rule: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub raw: Option<String>,
}

/// A reject with what the family and the ledger say of it.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub reject: Reject,
    /// The file it was read from.
    pub file: PathBuf,
    /// The replay that wrote that file; none for the pipeline's own file.
    pub written_by: Option<String>,
    /// Replays the row went through before it was rejected as it is here
    /// (0: a regular run rejected it).
    pub replays: u32,
    pub id: String,
    /// The replay that took the row, if one did: it is not taken again.
    pub replayed_by: Option<String>,
}

/// A row's identity: xxHash64 of the operator, line, text and replay count.
/// A specified hash, so that a ledger stays valid across builds.
pub fn identity(r: &Reject, replays: u32) -> String {
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(r.operator.as_bytes());
    h.write(&[0x1f]);
    h.write(r.line.map(|l| l.to_string()).unwrap_or_default().as_bytes());
    h.write(&[0x1f]);
    h.write(r.raw.as_deref().unwrap_or_default().as_bytes());
    h.write(&[0x1f]);
    h.write(replays.to_string().as_bytes());
    format!("{:016x}", h.finish())
}

/// Where replay `replay` writes what a file sink of the pipeline writes at
/// `path`: beside it, `<stem>.replay-<id>.<ext>` (the extension stays last,
/// since sinks tell their format from it).
pub fn sibling(path: &Path, replay: &str) -> PathBuf {
    let (stem, ext) = split_name(path);
    let name = match ext {
        Some(ext) => format!("{stem}.replay-{replay}.{ext}"),
        None => format!("{stem}.replay-{replay}"),
    };
    path.with_file_name(name)
}

fn split_name(path: &Path) -> (String, Option<String>) {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned());
    (stem, ext)
}

/// A rejects file and what its replays wrote beside it.
#[derive(Clone, Debug)]
pub struct Family {
    main: PathBuf,
}

impl Family {
    pub fn new(main: impl Into<PathBuf>) -> Family {
        Family { main: main.into() }
    }

    pub fn main(&self) -> &Path {
        &self.main
    }

    /// `rejects.replays.ndjson` beside `rejects.ndjson`.
    pub fn ledger_path(&self) -> PathBuf {
        let (stem, _) = split_name(&self.main);
        self.main.with_file_name(format!("{stem}.replays.ndjson"))
    }

    /// The rows replay `replay` rejected again.
    pub fn replay_file(&self, replay: &str) -> PathBuf {
        sibling(&self.main, replay)
    }

    /// The family's files that exist: the main one first, then each
    /// replay's, oldest replay first; with the replay that wrote each.
    pub fn files(&self) -> Result<Vec<(PathBuf, Option<String>)>, Error> {
        let mut out = Vec::new();
        if self.main.exists() {
            out.push((self.main.clone(), None));
        }
        let dir = match self.main.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (stem, ext) = split_name(&self.main);
        let prefix = format!("{stem}.replay-");
        let suffix = ext.map(|e| format!(".{e}")).unwrap_or_default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(Error::Read { path: dir, source }),
        };
        let mut replays = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(&suffix)) else { continue };
            // A replay id has no dot: `x.replay-1.part.ndjson` is not one.
            if !id.is_empty() && !id.contains('.') && !id.contains('/') {
                replays.push((entry.path(), id.to_string()));
            }
        }
        // Ids start with the replay's start time in milliseconds.
        replays.sort_by(|a, b| natural(&a.1).cmp(&natural(&b.1)));
        out.extend(replays.into_iter().map(|(p, id)| (p, Some(id))));
        Ok(out)
    }

    /// Every row of the family, in file order, with its replay count, id
    /// and the replay that took it. `f` returns false to stop. Lines that
    /// are not rejects (blank, or not JSON of that shape) are skipped.
    pub fn for_each(&self, ledger: &Ledger, mut f: impl FnMut(Row) -> bool) -> Result<(), Error> {
        for (path, written_by) in self.files()? {
            if !read_file(&path, written_by.as_deref(), ledger, &mut f)? {
                break;
            }
        }
        Ok(())
    }
}

/// The rows of one rejects file that replay `written_by` wrote (none: a
/// regular run's, or a copy of one), with what `ledger` says of them.
/// Returns false when `f` asked to stop. A file gone meanwhile has no rows.
pub fn read_file(
    path: &Path,
    written_by: Option<&str>,
    ledger: &Ledger,
    f: &mut impl FnMut(Row) -> bool,
) -> Result<bool, Error> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => return Err(Error::Read { path: path.to_path_buf(), source }),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(reject) = serde_json::from_str::<Reject>(&line) else { continue };
        let replays = match written_by {
            None => 0,
            Some(r) => ledger.replays_of(r, reject.line),
        };
        let id = identity(&reject, replays);
        let replayed_by = ledger.taken_by(&id).map(str::to_string);
        let row = Row {
            reject,
            file: path.to_path_buf(),
            written_by: written_by.map(str::to_string),
            replays,
            id,
            replayed_by,
        };
        if !f(row) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `1700000000000-42-3` sorts by its numbers, not as text.
fn natural(id: &str) -> Vec<u64> {
    id.split(['-', '_']).map(|p| p.parse().unwrap_or(u64::MAX)).collect()
}

/// What the ledger records, one JSON object per line, appended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    Started(Started),
    Finished(Finished),
}

/// A replay took these rows (written before it runs: a replay that dies
/// is resumed with the same rows).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub replay: String,
    pub at_ms: i64,
    pub pipeline: String,
    /// The source whose rows these are.
    pub source: String,
    /// Replaying a sink's refusals: that sink only (other sinks have the rows).
    #[serde(default)]
    pub sink: Option<String>,
    /// The selection, as `--where` takes it.
    pub filter: String,
    /// The rows' text at their lines, which the replay reads.
    pub input: PathBuf,
    pub rows: Vec<Picked>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Picked {
    pub id: String,
    pub line: Option<u64>,
    /// The row's replay count when it was taken.
    pub replays: u32,
}

/// A replay's run completed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Finished {
    pub replay: String,
    pub at_ms: i64,
    /// Rows it took.
    pub rows: u64,
    /// Of those, rows rejected again (in its replay file).
    pub rejected_again: u64,
}

/// The ledger, read.
#[derive(Debug, Default)]
pub struct Ledger {
    started: Vec<Started>,
    finished: HashMap<String, Finished>,
    /// Row id → the replay that took it.
    taken: HashMap<String, String>,
    /// (replay, line) → replay count of the row taken at that line.
    counts: HashMap<(String, Option<u64>), u32>,
}

impl Ledger {
    /// An absent ledger is an empty one. A last line cut short (a crash
    /// while it was written, before it was synced) is ignored; any other
    /// line that does not parse is an error.
    pub fn read(path: &Path) -> Result<Ledger, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
            Err(source) => return Err(Error::Read { path: path.to_path_buf(), source }),
        };
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut ledger = Ledger::default();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(line) {
                Ok(e) => ledger.add(e),
                Err(_) if i + 1 == lines.len() && !complete => {}
                Err(source) => return Err(Error::Ledger { path: path.to_path_buf(), line: i + 1, source }),
            }
        }
        Ok(ledger)
    }

    fn add(&mut self, e: Entry) {
        match e {
            Entry::Started(s) => {
                for p in &s.rows {
                    self.taken.insert(p.id.clone(), s.replay.clone());
                    self.counts.insert((s.replay.clone(), p.line), p.replays);
                }
                self.started.push(s);
            }
            Entry::Finished(f) => {
                self.finished.insert(f.replay.clone(), f);
            }
        }
    }

    /// Appends `entry` and syncs it before returning.
    pub fn append(path: &Path, entry: &Entry) -> Result<(), Error> {
        let werr = |source| Error::Write { path: path.to_path_buf(), source };
        let mut line = serde_json::to_vec(entry).map_err(|e| werr(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(werr)?;
        f.write_all(&line).map_err(werr)?;
        f.sync_all().map_err(werr)
    }

    pub fn taken_by(&self, id: &str) -> Option<&str> {
        self.taken.get(id).map(String::as_str)
    }

    /// Replays started and not finished, oldest first.
    pub fn pending(&self) -> Vec<&Started> {
        self.started.iter().filter(|s| !self.finished.contains_key(&s.replay)).collect()
    }

    pub fn started(&self) -> &[Started] {
        &self.started
    }

    pub fn finished(&self, replay: &str) -> Option<&Finished> {
        self.finished.get(replay)
    }

    /// Replay count of a row that replay `replay` rejected again at `line`:
    /// one more than the row it took there had.
    pub fn replays_of(&self, replay: &str, line: Option<u64>) -> u32 {
        self.counts.get(&(replay.to_string(), line)).copied().unwrap_or(0) + 1
    }
}

/// Which rejects a replay takes: `operator=valid,rule=one_of`; every key is
/// optional and an empty filter takes everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Reject) -> bool {
        self.operator.as_ref().is_none_or(|o| *o == r.operator)
            && self.rule.as_ref().is_none_or(|x| *x == r.rule)
            && self.column.as_ref().is_none_or(|c| Some(c) == r.column.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

impl std::str::FromStr for Filter {
    type Err = Error;

    fn from_str(s: &str) -> Result<Filter, Error> {
        let mut f = Filter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(Error::Filter(format!("`{part}` is not key=value (e.g. operator=valid,rule=one_of)")));
            };
            let (k, v) = (k.trim(), v.trim().to_string());
            if v.is_empty() {
                return Err(Error::Filter(format!("`{k}=` has no value")));
            }
            let slot = match k {
                "operator" => &mut f.operator,
                "rule" => &mut f.rule,
                "column" => &mut f.column,
                _ => return Err(Error::Filter(format!("unknown key `{k}`: use operator, rule or column"))),
            };
            if slot.replace(v).is_some() {
                return Err(Error::Filter(format!("`{k}` is given twice")));
            }
        }
        Ok(f)
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("operator", &self.operator), ("rule", &self.rule), ("column", &self.column)]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        if parts.is_empty() { f.write_str("all") } else { f.write_str(&parts.join(",")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(line: u64, operator: &str, rule: &str, raw: &str) -> Reject {
        Reject {
            line: Some(line),
            operator: operator.into(),
            rule: rule.into(),
            reason: "why".into(),
            raw: Some(raw.into()),
            ..Default::default()
        }
    }

    fn write_lines(path: &Path, rows: &[Reject]) {
        let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn siblings_keep_the_extension_last() {
        assert_eq!(
            sibling(Path::new("data/out/rejects.ndjson"), "17-2"),
            Path::new("data/out/rejects.replay-17-2.ndjson")
        );
        assert_eq!(sibling(Path::new("out"), "1"), Path::new("out.replay-1"));
        let fam = Family::new("data/out/rejects.ndjson");
        assert_eq!(fam.ledger_path(), Path::new("data/out/rejects.replays.ndjson"));
    }

    #[test]
    fn filters_parse_and_match() {
        let f: Filter = "operator=valid, rule=one_of".parse().unwrap();
        assert!(f.matches(&reject(2, "valid", "one_of", "x")));
        assert!(!f.matches(&reject(2, "valid", "min", "x")));
        assert!(!f.matches(&reject(2, "names", "one_of", "x")));
        assert_eq!(f.to_string(), "operator=valid,rule=one_of");
        assert!("".parse::<Filter>().unwrap().is_empty());
        let e = "color=red".parse::<Filter>().unwrap_err().to_string();
        assert!(e.contains("unknown key `color`"), "{e}");
        assert!("rule".parse::<Filter>().unwrap_err().to_string().contains("key=value"));
        assert!("rule=a,rule=b".parse::<Filter>().unwrap_err().to_string().contains("twice"));
    }

    /// A row taken by a replay is marked in every file of the family; the
    /// row that replay rejected again counts one replay more and is new.
    #[test]
    fn the_ledger_marks_taken_rows_and_counts_replays() {
        let dir = tempfile::tempdir().unwrap();
        let fam = Family::new(dir.path().join("rejects.ndjson"));
        let a = reject(3, "valid", "one_of", "1,Ann,1900,X,5");
        let b = reject(7, "valid", "one_of", "2,Bob,1900,Y,5");
        write_lines(fam.main(), &[a.clone(), b.clone()]);
        let ledger = Ledger::read(&fam.ledger_path()).unwrap();
        let mut rows = Vec::new();
        fam.for_each(&ledger, |r| {
            rows.push(r);
            true
        })
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.replays == 0 && r.replayed_by.is_none()));

        let started = Started {
            replay: "100-1".into(),
            at_ms: 100,
            pipeline: "p".into(),
            source: "names".into(),
            sink: None,
            filter: "all".into(),
            input: dir.path().join(".replay-100-1.csv"),
            rows: rows.iter().map(|r| Picked { id: r.id.clone(), line: r.reject.line, replays: 0 }).collect(),
        };
        Ledger::append(&fam.ledger_path(), &Entry::Started(started)).unwrap();
        // The replay rejected b again (another rule now).
        write_lines(&fam.replay_file("100-1"), &[Reject { rule: "min".into(), ..b.clone() }]);
        let ledger = Ledger::read(&fam.ledger_path()).unwrap();
        assert_eq!(ledger.pending().len(), 1);
        let mut rows = Vec::new();
        fam.for_each(&ledger, |r| {
            rows.push(r);
            true
        })
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].replayed_by.as_deref(), Some("100-1"));
        assert_eq!(rows[1].replayed_by.as_deref(), Some("100-1"));
        assert_eq!((rows[2].replays, rows[2].replayed_by.as_deref()), (1, None));
        assert_eq!(rows[2].written_by.as_deref(), Some("100-1"));
        assert_eq!(rows[2].reject.line, Some(7), "the original line");

        let fin = Finished { replay: "100-1".into(), at_ms: 200, rows: 2, rejected_again: 1 };
        Ledger::append(&fam.ledger_path(), &Entry::Finished(fin)).unwrap();
        assert!(Ledger::read(&fam.ledger_path()).unwrap().pending().is_empty());
    }

    #[test]
    fn a_torn_last_ledger_line_is_ignored_and_others_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.ndjson");
        let fin = Entry::Finished(Finished { replay: "1".into(), at_ms: 1, rows: 1, rejected_again: 0 });
        Ledger::append(&path, &fin).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\":\"started\",\"rep");
        std::fs::write(&path, &text).unwrap();
        assert!(Ledger::read(&path).unwrap().finished("1").is_some());
        text.push_str("\n{}\n");
        std::fs::write(&path, &text).unwrap();
        let e = Ledger::read(&path).unwrap_err().to_string();
        assert!(e.contains(":2: not a replay ledger entry"), "{e}");
    }

    #[test]
    fn replay_files_sort_by_their_numbers_and_parts_are_not_files() {
        let dir = tempfile::tempdir().unwrap();
        let fam = Family::new(dir.path().join("rejects.ndjson"));
        for name in ["rejects.replay-900-1.ndjson", "rejects.replay-1000-1.ndjson", "rejects.replay-5.part.ndjson"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let files = fam.files().unwrap();
        let ids: Vec<_> = files.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids, vec![Some("900-1".to_string()), Some("1000-1".to_string())]);
    }
}
