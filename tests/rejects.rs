//! Rejects through the real binary: an over-long CSV record is one reject at
//! its line and never splits into rows; every reject has the same keys,
//! bounded `value` and `reason`, and the row's source text as `raw`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::*;

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l}: {e}")))
        .collect()
}

/// file source (babynames schema) → CSV file sink, and the source's
/// rejects (plus `extra` rejects inputs) → NDJSON. `transforms` goes
/// between the source and the sinks (its last component must be `last`).
fn pipeline(dir: &Path, input: &Path, transforms: &str, last: &str, extra_rejects: &str) -> (String, PathBuf, PathBuf) {
    let out = dir.join("out.csv");
    let rejects = dir.join("rejects.ndjson");
    let p = write_pipeline(
        dir,
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "rejects"
batch_size = 500
[pipeline.checkpoint]
interval = "off"
[sources.names]
kind = "file"
path = "{input}"
{SCHEMA}
{transforms}
[sinks.out]
kind = "file"
inputs = ["{last}"]
path = "{out}"
[sinks.rejects]
kind = "file"
inputs = ["names.rejects"{extra_rejects}]
path = "{rejects}"
"#,
            input = input.display(),
            out = out.display(),
            rejects = rejects.display()
        ),
    );
    (p, out, rejects)
}

/// The records of a CSV output after its header, split where a newline
/// is outside quotes (a quoted name may span lines).
fn records(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()));
    let (mut records, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => {
                records.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    records.into_iter().skip(1).collect()
}

/// Ids of the rows of a CSV output, in order.
fn ids(out: &Path) -> Vec<u64> {
    records(out).iter().map(|r| r.split(',').next().unwrap().parse().unwrap()).collect()
}

/// A line of 5 MB in the middle of a file (no newline within
/// `max_record_bytes`, made of pieces that look like rows) is one reject at
/// its own line; no piece of it becomes a row; rows after it, a quoted
/// record spanning two lines among them, keep their exact line numbers, and
/// so do later rejects.
#[test]
fn a_several_mb_csv_line_is_one_reject_and_later_lines_keep_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    writeln!(w, "Id,Name,Year,Gender,Count").unwrap();
    // Line n + 1 holds Id n.
    for i in 1..=1000 {
        writeln!(w, "{i},Name{i},1900,F,{i}").unwrap();
    }
    // Line 1002: Id 1001, 5 MB.
    write!(w, "1001,").unwrap();
    for _ in 0..350_000 {
        w.write_all(b"Bob,1900,F,5,7,").unwrap();
    }
    writeln!(w, "Bob,1900,F,5").unwrap();
    // Lines 1003..: Id 1002 on line 1003; Id 1500 spans lines 1501-1502.
    for i in 1002..=2000 {
        match i {
            1500 => writeln!(w, "{i},\"Two\nLines\",1900,F,{i}").unwrap(),
            1700 => writeln!(w, "{i},Bad,year,F,{i}").unwrap(),
            _ => writeln!(w, "{i},Name{i},1900,F,{i}").unwrap(),
        }
    }
    w.flush().unwrap();
    drop(w);
    assert!(std::fs::metadata(&input).unwrap().len() > 5_000_000);

    let (p, out, rejects) = pipeline(dir.path(), &input, "", "names", "");
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let want: Vec<u64> = (1..=2000).filter(|&i| i != 1001 && i != 1700).collect();
    assert_eq!(ids(&out), want, "every other row, exactly once, nothing made of the long line");
    assert!(records(&out).contains(&"1500,\"Two\nLines\",1900,F,1500".to_string()));

    let rejects = json_lines(&rejects);
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    let long = &rejects[0];
    assert_eq!(long["line"], 1002);
    assert_eq!(long["rule"], "record_too_long");
    assert_eq!(
        long["reason"],
        "the record at line 1,002 is 5,250,017 bytes long, more than max_record_bytes (1,048,576): skipped whole"
    );
    let value = long["value"].as_str().unwrap();
    assert!(value.starts_with("1001,Bob,1900,F,5,7,Bob") && value.ends_with("…(5,250,017 bytes)"), "{value}");
    // Id 1700 is on line 1702: the two lines of Id 1500 are counted.
    let bad = &rejects[1];
    assert_eq!(bad["line"], 1702);
    assert_eq!(bad["rule"], "parse");
    assert_eq!(bad["raw"], "1700,Bad,year,F,1700");
    assert!(std::fs::metadata(dir.path().join("rejects.ndjson")).unwrap().len() < 2000, "rejects stay small");
}

/// Rejects from the reader and from `validate` have the same seven keys
/// (null where they do not apply); a 5,000-character name is shown cut in
/// `value` and `reason` with its length, and `raw` is the line as it is in
/// the file (quotes, spaces and all), not a re-rendering, so it can be
/// replayed.
#[test]
fn rejects_have_the_same_keys_bounded_values_and_the_source_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let long = "N".repeat(5000);
    let lines = [
        "Id,Name,Year,Gender,Count".to_string(),
        "1,Ann,1900,F,5".to_string(),
        format!("2,\"{long}\", 1901,F,6"),
        "3,Bob,1902".to_string(),
        "4,Cy,1903,F,7,extra".to_string(),
        format!("5,{long},1904,M,8"),
        "6,Di,1905,X,9".to_string(),
    ];
    std::fs::write(&input, lines.join("\r\n") + "\r\n").unwrap();
    let validate = r#"
[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Name]
max_len = 64
[transforms.valid.rules.Gender]
one_of = ["F", "M"]
"#;
    let (p, out, rejects) = pipeline(dir.path(), &input, validate, "valid", r#", "valid.rejects""#);
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ids(&out), [1]);

    let text = std::fs::read_to_string(&rejects).unwrap();
    let rejects: Vec<serde_json::Value> = json_lines(&dir.path().join("rejects.ndjson"));
    assert_eq!(rejects.len(), 5, "{text}");
    for r in &rejects {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["column", "line", "operator", "raw", "reason", "rule", "value"], "{r}");
    }
    let by_line = |n: u64| rejects.iter().find(|r| r["line"] == n).unwrap_or_else(|| panic!("no reject at {n}"));
    let cut = format!("{}…(5,000 bytes)", "N".repeat(200));
    for (line, raw) in [(3, &lines[2]), (6, &lines[5])] {
        let r = by_line(line);
        assert_eq!((r["operator"].as_str(), r["rule"].as_str()), (Some("valid"), Some("max_len")));
        assert_eq!(r["column"], "Name");
        assert_eq!(r["value"], cut.as_str());
        assert_eq!(r["reason"], format!("Name `{cut}` is longer than 64 characters").as_str());
        assert_eq!(r["raw"], raw.as_str(), "the source text, whole");
    }
    let few = by_line(4);
    assert_eq!(
        (few["rule"].as_str(), few["column"].as_str(), &few["value"]),
        (Some("columns"), Some("Gender"), &serde_json::Value::Null)
    );
    assert_eq!(few["raw"], "3,Bob,1902");
    let many = by_line(5);
    assert_eq!((many["column"].as_str(), many["value"].as_str()), (Some("field 6"), Some("extra")));
    assert_eq!(by_line(7)["raw"], "6,Di,1905,X,9");
    // Each reject weighs about its row, not three times it.
    assert!(text.len() < 2 * 5000 + 3000, "rejects file is {} bytes", text.len());
}

/// Killed (SIGKILL after a checkpoint commit) again and again while it
/// reads long records: with a slow sink and `max_record_bytes` small, many
/// checkpoints are taken while a long record is being skipped (the source
/// is then still handing out the rows before it). The resumed runs together
/// write every row once and reject each long record once, at its line.
#[test]
fn killed_while_skipping_long_csv_records_the_resumed_runs_reject_each_once() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    writeln!(w, "Id,Name,Year,Gender,Count").unwrap();
    // Every 400th Id is a 200 KB record, a quoted one spanning two lines
    // every other time (the lines after it move down by one).
    let (mut line, mut long_lines) = (1u64, Vec::new());
    for i in 1..=4000u64 {
        line += 1;
        if i % 400 == 0 {
            long_lines.push(line);
            let quoted = (i / 400) % 2 == 0;
            write!(w, "{i},{}", if quoted { "\"" } else { "" }).unwrap();
            for _ in 0..13_000 {
                w.write_all(b"Bob,1900,F,5,7,").unwrap();
            }
            if quoted {
                write!(w, "\n\"").unwrap();
                line += 1;
            }
            writeln!(w, ",1900,F,5").unwrap();
        } else {
            writeln!(w, "{i},Name{i},1900,F,{i}").unwrap();
        }
    }
    w.flush().unwrap();
    drop(w);
    let (p, out, rejects) = pipeline(dir.path(), &input, "", "names", "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("batch_size = 500", "batch_size = 50")
        .replace("interval = \"off\"", "interval = \"1ms\"")
        .replace("kind = \"file\"\npath", "kind = \"file\"\nmax_record_bytes = 1000\npath")
        + "[sinks.slow]\nkind = \"blackhole\"\ninputs = [\"names\"]\ndelay_ms = 10\n";
    std::fs::write(&p, text).unwrap();

    let (mut resumed_inside, mut runs) = (0, 0);
    loop {
        runs += 1;
        assert!(runs <= 60, "no run completed");
        let o = run(&["run", "--no-progress", &p], &[("ENGINE_FAULT", "after-store-commit:2")]);
        let err = stderr(&o);
        // "source names at row N (line L, byte B) of …"
        if let Some(i) = err.find("(line ") {
            let l: String = err[i + 6..].chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
            resumed_inside += usize::from(long_lines.contains(&l.replace(',', "").parse().unwrap_or(0)));
        }
        if o.status.success() {
            break;
        }
        assert_eq!(o.status.signal(), Some(9), "neither killed nor done: {err}");
    }
    // The point of the test: some checkpoint fell inside a long record.
    assert!(resumed_inside > 0, "{runs} runs, none resumed at a long record");

    let want: Vec<u64> = (1..=4000).filter(|i| i % 400 != 0).collect();
    assert_eq!(ids(&out), want, "every row once");
    let rejects = json_lines(&rejects);
    let lines: Vec<u64> = rejects.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, long_lines, "each long record once, at its line");
    assert!(rejects.iter().all(|r| r["rule"] == "record_too_long"));
}
