//! `engine replay`: rejected rows sent through a pipeline again, once the
//! data or the rules were fixed.
//!
//! Owns three steps, each a function: [`select`] picks the rejects to
//! replay (a filter, minus what earlier replays took, grouped by the source
//! they came from and the sink that refused them); [`write_input`] writes
//! their text back as CSV at their original line numbers (blank lines fill
//! the gaps: the decoder skips them and counts them), so a row rejected
//! again keeps its line; [`rewrite`] turns the pipeline into the replay's:
//! its source reads that CSV, a sink's refusals go to that sink only, file
//! outputs (and HubSpot outboxes) and the checkpoint store are set apart per replay
//! ([`replays::sibling`]), alerts are off. Running it is `runtime`'s, as for
//! any run; the ledger format and the rejects family are the `replays`
//! crate's. Must not touch operators or a checkpoint store's contents.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use operators::Role;
use replays::{Family, Filter, Ledger, Picked, Row, Started};
use serde_json::{Value, json};

use crate::config::{Component, Pipeline};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Rejects(#[from] replays::Error),
    #[error(
        "pipeline `{pipeline}` has no rejects file to replay (a `file` sink fed by `rejects` ports, writing NDJSON): name one with --rejects"
    )]
    NoRejectsFile { pipeline: String },
    #[error("pipeline `{pipeline}` writes rejects to {files}: name one with --rejects")]
    ManyRejectsFiles { pipeline: String, files: String },
    #[error("source `{0}` is not in the pipeline (the ledger names it for a replay not finished)")]
    NoSource(String),
    #[error(
        "source `{source_id}` has a header line and its input cannot be read for it ({why}); declare its `schema` so the replay can write the header"
    )]
    NoHeader { source_id: String, why: String },
    #[error("another `engine replay` of {0} is running; wait for it (its rows are its own)")]
    Busy(PathBuf),
    #[error("cannot write the replay input {path}: {source}")]
    Input { path: PathBuf, source: std::io::Error },
}

/// The rejects file a pipeline writes: `file` sinks fed by `rejects` ports,
/// in NDJSON.
pub fn rejects_files(p: &Pipeline) -> Vec<PathBuf> {
    p.components
        .iter()
        .filter(|c| c.role == Role::Sink && c.kind.name == "file" && is_rejects_sink(c))
        .filter_map(|c| c.options.get("path").and_then(Value::as_str).map(PathBuf::from))
        .filter(|path| path.extension().is_some_and(|x| x == "ndjson" || x == "jsonl" || x == "json"))
        .collect()
}

fn is_rejects_sink(c: &Component) -> bool {
    c.inputs.iter().any(|i| i.port_name == "rejects")
}

/// The family to replay from: `--rejects`, else the pipeline's one rejects
/// file.
pub fn family(p: &Pipeline, given: Option<&Path>) -> Result<Family, ReplayError> {
    if let Some(f) = given {
        return Ok(Family::new(f));
    }
    match rejects_files(p).as_slice() {
        [one] => Ok(Family::new(one.clone())),
        [] => Err(ReplayError::NoRejectsFile { pipeline: p.name.clone() }),
        many => Err(ReplayError::ManyRejectsFiles {
            pipeline: p.name.clone(),
            files: many.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Rows of one source, refused by one sink or rejected before the sinks:
/// one replay run.
#[derive(Debug)]
pub struct Group {
    pub source: String,
    /// A sink's refusals go to that sink only: the others have the rows.
    pub sink: Option<String>,
    pub rows: Vec<Taken>,
}

/// A row a replay takes: what the ledger records of it, and its text.
/// Only this is held per row (a selection may be millions of rows).
#[derive(Debug)]
pub struct Taken {
    pub picked: Picked,
    pub raw: String,
}

/// What a filter picked.
#[derive(Debug, Default)]
pub struct Selection {
    pub groups: Vec<Group>,
    /// Rows the filter matched.
    pub matched: u64,
    /// Of those, rows an earlier replay took.
    pub taken: u64,
    /// Rows that cannot be replayed, by reason.
    pub skipped: BTreeMap<String, u64>,
}

impl Selection {
    pub fn rows(&self) -> usize {
        self.groups.iter().map(|g| g.rows.len()).sum()
    }
}

/// Picks the family's rejects that match `filter` and no replay took yet.
pub fn select(p: &Pipeline, family: &Family, ledger: &Ledger, filter: &Filter) -> Result<Selection, ReplayError> {
    let mut sel = Selection::default();
    let mut groups: BTreeMap<(String, Option<String>), Vec<Taken>> = BTreeMap::new();
    family.for_each(ledger, |row| {
        if !filter.matches(&row.reject) {
            return true;
        }
        sel.matched += 1;
        if row.replayed_by.is_some() {
            sel.taken += 1;
            return true;
        }
        match origin(p, &row) {
            Ok(key) => groups.entry(key).or_default().push(Taken {
                picked: Picked { id: row.id, line: row.reject.line, replays: row.replays },
                raw: row.reject.raw.unwrap_or_default(),
            }),
            Err(why) => *sel.skipped.entry(why).or_default() += 1,
        }
        true
    })?;
    sel.groups = groups.into_iter().map(|((source, sink), rows)| Group { source, sink, rows }).collect();
    Ok(sel)
}

/// The source a reject's row came from, and the sink that refused it; or
/// why it cannot be replayed.
fn origin(p: &Pipeline, row: &Row) -> Result<(String, Option<String>), String> {
    let op = &row.reject.operator;
    let Some(c) = p.components.iter().find(|c| &c.id == op) else {
        return Err(format!("operator `{op}` is not in the pipeline"));
    };
    let Some(raw) = &row.reject.raw else {
        return Err("no source text was kept (a record longer than max_record_bytes)".into());
    };
    // A record with bytes that are not UTF-8 is kept with U+FFFD in their
    // place: replaying that copy would write different data.
    if raw.contains('\u{FFFD}') {
        return Err("its text held bytes that are not UTF-8 and the rejects file keeps a lossy copy (U+FFFD); fix the input and run it again".into());
    }
    let sources = sources_of(p, c);
    let [source] = sources.as_slice() else {
        return Err(format!("rows of `{op}` may come from sources {}", sources.join(", ")));
    };
    let s = p.components.iter().find(|c| &c.id == source).expect("sources_of returns components");
    if !replayable_source(s) {
        return Err(format!("source `{source}` is not CSV (only CSV rows can be replayed)"));
    }
    Ok((source.clone(), (c.role == Role::Sink).then(|| op.clone())))
}

fn replayable_source(s: &Component) -> bool {
    match s.kind.name {
        "kaggle" => true,
        "file" => {
            let format = s.options.get("format").and_then(Value::as_str);
            let path = s.options.get("path").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            match format {
                Some(f) => f == "csv",
                None => !(path.ends_with(".parquet") || path.ends_with(".pq")),
            }
        }
        _ => false,
    }
}

/// Source ids upstream of `c` (itself, for a source).
fn sources_of(p: &Pipeline, c: &Component) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![c.id.clone()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(c) = p.components.iter().find(|x| x.id == id) else { continue };
        if c.role == Role::Source {
            found.insert(id);
        }
        todo.extend(c.inputs.iter().map(|i| i.from.clone()));
    }
    found.into_iter().collect()
}

/// Whether `source` reads a header line (the option, default true).
pub fn has_header(p: &Pipeline, source: &str) -> bool {
    p.components
        .iter()
        .find(|c| c.id == source)
        .and_then(|c| c.options.get("header"))
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// Holds `<ledger>.lock` (flock) while a replay command runs: two replays
/// of one rejects file at once could take the same rows.
pub fn lock_ledger(family: &Family) -> Result<std::fs::File, ReplayError> {
    use std::os::fd::AsRawFd;
    let path = family.ledger_path().with_extension("lock");
    let err = |source| ReplayError::Input { path: path.clone(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err)?;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ReplayError::Busy(family.main().to_path_buf()));
    }
    Ok(f)
}

/// The header line of `source`'s input, when it has one: the input's first
/// line as it is (so columns are found by the same names), else the
/// declared schema's names.
pub async fn header_line(p: &Pipeline, source: &str) -> Result<Option<String>, ReplayError> {
    let c = p.components.iter().find(|c| c.id == source).ok_or_else(|| ReplayError::NoSource(source.into()))?;
    if !c.options.get("header").and_then(Value::as_bool).unwrap_or(true) {
        return Ok(None);
    }
    let why = match (c.kind.name, c.options.get("path").and_then(Value::as_str)) {
        ("file", Some(path)) => match first_line(path).await {
            Ok(line) => return Ok(Some(line)),
            Err(why) => why,
        },
        _ => format!("a `{}` source's input is not kept where the replay can read it", c.kind.name),
    };
    let names: Option<Vec<String>> = c.options.get("schema").and_then(Value::as_array).map(|cols| {
        cols.iter().filter_map(|col| col.get("name").and_then(Value::as_str)).map(str::to_string).collect()
    });
    match names {
        Some(names) if !names.is_empty() => {
            let delim = c.options.get("delimiter").and_then(Value::as_str).unwrap_or(",");
            let delim = if delim == "\\t" { "\t" } else { delim };
            Ok(Some(names.iter().map(|n| csv_field(n, delim)).collect::<Vec<_>>().join(delim)))
        }
        _ => Err(ReplayError::NoHeader { source_id: source.into(), why }),
    }
}

fn csv_field(s: &str, delim: &str) -> String {
    if s.contains(delim) || s.contains('"') || s.contains('\n') || s.contains('\r') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The first line of the object at `path` (local or S3), without its end.
async fn first_line(path: &str) -> Result<String, String> {
    const MAX: usize = 1 << 20;
    let loc = operators::storage::resolve(path).map_err(|e| e.to_string())?;
    let got = loc.store.get_opts(&loc.path, Default::default()).await.map_err(|e| format!("{}: {e}", loc.display))?;
    let mut stream = got.into_stream();
    let mut head = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{}: {e}", loc.display))?;
        head.extend_from_slice(&chunk);
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            head.truncate(end);
            break;
        }
        if head.len() > MAX {
            return Err(format!("{} has no line end in its first MiB", loc.display));
        }
    }
    while head.last() == Some(&b'\r') {
        head.pop();
    }
    String::from_utf8(head).map_err(|_| format!("the header of {} is not UTF-8", loc.display))
}

/// Writes the rows' text as CSV at their original lines: the header on
/// line 1, each row at its line, blank lines between. Rows without a line
/// go last; a second row at a line already written is left out (it is
/// taken with the first: the same row rejected twice). Returns rows
/// written.
pub fn write_input(path: &Path, header: Option<&str>, rows: &[Taken]) -> Result<u64, ReplayError> {
    let err = |source| ReplayError::Input { path: path.to_path_buf(), source };
    let mut order: Vec<&Taken> = rows.iter().collect();
    order.sort_by_key(|r| r.picked.line.unwrap_or(u64::MAX));
    let tmp = path.with_extension("csv.tmp");
    let file = std::fs::File::create(&tmp).map_err(err)?;
    let mut out = std::io::BufWriter::new(file);
    let mut line = 1u64;
    if let Some(h) = header {
        writeln!(out, "{h}").map_err(err)?;
        line = 2;
    }
    const BLANK: [u8; 4096] = [b'\n'; 4096];
    let mut written = 0;
    for r in order {
        let raw = r.raw.as_str();
        let at = r.picked.line.unwrap_or(line);
        if at < line {
            continue;
        }
        let mut gap = at - line;
        while gap > 0 {
            let n = gap.min(BLANK.len() as u64) as usize;
            out.write_all(&BLANK[..n]).map_err(err)?;
            gap -= n as u64;
        }
        let text = raw.trim_end_matches(['\r', '\n']);
        out.write_all(text.as_bytes()).map_err(err)?;
        out.write_all(b"\n").map_err(err)?;
        line = at + 1 + text.bytes().filter(|&b| b == b'\n').count() as u64;
        written += 1;
    }
    let file = out.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(written)
}

/// Where replay `id`'s input goes: a hidden file beside the rejects file.
pub fn input_path(family: &Family, id: &str) -> PathBuf {
    let stem = family.main().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    family.main().with_file_name(format!(".{stem}.replay-{id}.input.csv"))
}

/// The checkpoint store of replay `id`: beside the pipeline's.
pub fn checkpoint_dir(p: &Pipeline, id: &str) -> PathBuf {
    let mut s = p.checkpoint.dir.clone().into_os_string();
    s.push(format!(".replay-{id}"));
    PathBuf::from(s)
}

/// The replay's pipeline: `started.source` reads `started.input`, other
/// sources and what only they feed are gone, a sink's refusals reach that
/// sink only (and the rejects sinks), file sinks write beside their files,
/// the checkpoint store is the replay's own (so a `changes` transform
/// compares with nothing: every row passes, no key is deleted), alerts are
/// off (the person who replays sees the outcome).
pub fn rewrite(p: &Pipeline, started: &Started, header: bool) -> Result<Pipeline, ReplayError> {
    let mut out = p.clone();
    let source = p.components.iter().find(|c| c.id == started.source && c.role == Role::Source);
    let Some(source) = source else { return Err(ReplayError::NoSource(started.source.clone())) };

    // What the source feeds, directly or not.
    let mut keep: BTreeSet<String> = [source.id.clone()].into();
    loop {
        let before = keep.len();
        for c in &p.components {
            if c.inputs.iter().any(|i| keep.contains(&i.from)) {
                keep.insert(c.id.clone());
            }
        }
        if keep.len() == before {
            break;
        }
    }
    if let Some(sink) = &started.sink {
        keep.retain(|id| {
            let c = p.components.iter().find(|c| &c.id == id).expect("kept ids are components");
            c.role != Role::Sink || id == sink || is_rejects_sink(c)
        });
    }
    // A `changes` transform on the way is harmless: the replay's store is
    // its own, so it starts without the pipeline's snapshot, passes every
    // replayed row as new and, comparing with nothing, deletes nothing.
    out.components.retain(|c| keep.contains(&c.id));
    for c in &mut out.components {
        c.inputs.retain(|i| keep.contains(&i.from));
    }

    for c in &mut out.components {
        if c.id == started.source {
            let file = operators::registry::find(Role::Source, "file").expect("the file source kind exists");
            let mut options = json!({
                "path": started.input.display().to_string(),
                "format": "csv",
                "header": header,
            });
            for key in ["delimiter", "quote", "schema", "infer_rows", "on_error", "max_record_bytes"] {
                if let Some(v) = c.options.get(key).filter(|v| !v.is_null()) {
                    options[key] = v.clone();
                }
            }
            c.kind = file;
            c.options = options.clone();
            c.raw_options = options;
            c.unresolved = None;
            c.rotation = Default::default();
        } else if c.role == Role::Sink {
            // Files a sink writes whole per run: the replay's beside them.
            let key = match c.kind.name {
                "file" => "path",
                "hubspot" => "outbox",
                _ => continue,
            };
            if let Some(path) = c.options.get(key).and_then(Value::as_str).filter(|p| !p.is_empty()) {
                let moved = replays::sibling(Path::new(path), &started.replay);
                c.options[key] = json!(moved.display().to_string());
            }
        }
    }
    out.checkpoint.dir = checkpoint_dir(p, &started.replay);
    out.alerts.clear();
    out.schedule = None;
    Ok(out)
}

/// Lines of a rejects file a replay wrote (0 when it wrote none).
pub fn count_rows(path: &Path) -> u64 {
    std::fs::read(path).map(|b| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use replays::Reject;

    fn row(line: u64, raw: &str) -> Taken {
        let reject = Reject {
            line: Some(line),
            operator: "valid".into(),
            rule: "one_of".into(),
            raw: Some(raw.into()),
            ..Default::default()
        };
        let picked = Picked { id: replays::identity(&reject, 0), line: Some(line), replays: 0 };
        Taken { picked, raw: raw.into() }
    }

    /// The input puts every row at its line, so the decoder numbers it as
    /// the original file did; duplicates of a line are written once.
    #[test]
    fn the_input_keeps_the_original_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let rows = vec![row(5, "3,Cy,1900,X,1\r\n"), row(2, "1,Al,1900,X,1"), row(5, "3,Cy,1900,X,1")];
        assert_eq!(write_input(&path, Some("Id,Name,Year,Gender,Count"), &rows).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "Id,Name,Year,Gender,Count");
        assert_eq!(lines[1], "1,Al,1900,X,1", "line 2");
        assert_eq!((lines[2], lines[3]), ("", ""));
        assert_eq!(lines[4], "3,Cy,1900,X,1", "line 5");
    }
}
