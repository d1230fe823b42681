//! CSV decoded in parallel segments gives byte for byte what one decoder
//! gives: the rows a sink writes, the rejects (lines, reasons, raw text) and
//! the duplicates dedupe drops, on a file built to put every awkward case
//! at a segment boundary somewhere: a BOM, CRLF and LF mixed, quoted fields
//! with newlines, commas and `""`, blank lines, bad numbers, short and long
//! records, invalid UTF-8, an over-long record and an unterminated quote
//! that swallows the end of the file.

use std::path::Path;

use super::util::*;

/// A small deterministic generator (no test depends on a seed's luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn awkward_csv(rows: usize) -> Vec<u8> {
    let mut r = Lcg(7);
    let mut out = b"\xEF\xBB\xBFId,Name,Year,Gender,Count\r\n".to_vec();
    let names =
        ["Mary", "Anna", "\"Smith, J\"", "\"Ann \"\"Jr\"\"\"", "\"Multi\nLine\"", "\"Two\r\n\r\nBlank\"", "Zoe"];
    for id in 1..=rows {
        // Blocks of plain rows (no quote, no CR) alternate with awkward
        // ones: segments of both kinds, and segments that straddle them.
        let plain = (id / 700) % 2 == 1;
        let eol: &[u8] = if !plain && r.below(3) == 0 { b"\r\n" } else { b"\n" };
        let name = if plain {
            ["Mary", "Anna", "Zoe", "Émile"][r.below(4) as usize]
        } else {
            names[r.below(names.len() as u64) as usize]
        };
        let year = 1880 + r.below(140);
        let gender = if r.below(2) == 0 { "F" } else { "M" };
        let line = match r.below(40) {
            0 => format!("{id},{name},19x0,{gender},5"),         // reader reject: parse
            1 => format!("{id},{name},{year}"),                  // reader reject: too few fields
            2 => format!("{id},{name},{year},{gender},5,extra"), // reader reject: too many
            3 => format!("{id},{name},{year},X,5"),              // validate reject: one_of
            4 => String::new(),                                  // blank line
            5 if !plain => format!("{id},\"{}\",{year},{gender},3", "long\n".repeat(600)), // 3 KB, many lines
            6 if !plain => format!("{id},\"{}\",{year},{gender},3", "x".repeat(5000)), // over max_record_bytes
            6 => format!("{id},{},{year},{gender},3", "y".repeat(5000)), // over, unquoted
            // Same key as an earlier row: a duplicate for dedupe.
            7 | 8 => format!("{id},Mary,{},F,1", 1880 + r.below(20)),
            _ => format!("{id},{name},{year},{gender},{}", 1 + r.below(1000)),
        };
        out.extend_from_slice(line.as_bytes());
        if r.below(97) == 0 {
            // Invalid UTF-8 in the name: a reject that keeps its line.
            out.extend_from_slice(b"\n99,Bad\xFFname,1990,F,1");
        }
        out.extend_from_slice(eol);
    }
    // An unterminated quote: the rest of the file is one record, past any
    // segment's bounds.
    out.extend_from_slice(b"424242,\"never closed,1990,F,1\n");
    for i in 0..6000 {
        out.extend_from_slice(format!("{i},Tail,1990,F,1\n").as_bytes());
    }
    out
}

fn pipeline(dir: &Path, input: &Path, threads: usize, interval: &str) -> String {
    format!(
        r#"[pipeline]
name = "parallel-csv"
batch_size = 500

[pipeline.checkpoint]
interval = "{interval}"
dir = "{dir}/checkpoints-{threads}-{interval}"

[sources.names]
kind = "file"
path = "{input}"
max_record_bytes = 4096
decode_threads = {threads}
decode_segment_bytes = 257
{SCHEMA}

[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Gender]
one_of = ["M", "F"]

[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]

[sinks.out]
kind = "file"
inputs = ["unique"]
path = "{dir}/out-{threads}-{interval}/rows.csv"

[sinks.dups]
kind = "file"
inputs = ["unique.duplicates"]
path = "{dir}/out-{threads}-{interval}/duplicates.csv"

# One sink per rejecting operator: a sink fed by two inputs interleaves
# them as they arrive, which no decoder decides.
[sinks.reader_rejects]
kind = "file"
inputs = ["names.rejects"]
path = "{dir}/out-{threads}-{interval}/reader-rejects.ndjson"

[sinks.rule_rejects]
kind = "file"
inputs = ["valid.rejects"]
path = "{dir}/out-{threads}-{interval}/rule-rejects.ndjson"
"#,
        dir = dir.display(),
        input = input.display(),
    )
}

fn run_with(dir: &Path, input: &Path, threads: usize, interval: &str) -> (String, [Vec<u8>; 4]) {
    let p = write_pipeline(dir, &format!("p-{threads}-{interval}.toml"), &pipeline(dir, input, threads, interval));
    let o = run(&["run", &p, "--no-progress", "--log-level", "info"], &[]);
    let log = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "{log}");
    let out = dir.join(format!("out-{threads}-{interval}"));
    let read = |f: &str| std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{log}"));
    let files = [read("rows.csv"), read("reader-rejects.ndjson"), read("rule-rejects.ndjson"), read("duplicates.csv")];
    (log, files)
}

#[test]
fn parallel_segments_give_exactly_what_one_decoder_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("awkward.csv");
    std::fs::write(&input, awkward_csv(20_000)).expect("write input");

    let (one_log, one) = run_with(dir.path(), &input, 1, "1h");
    assert!(!one_log.contains("parallel segments"), "decode_threads = 1 stays on one decoder:\n{one_log}");
    let rejects = format!("{}{}", String::from_utf8_lossy(&one[1]), String::from_utf8_lossy(&one[2]));
    // The file holds every kind of reject it was built to hold.
    for rule in ["\"parse\"", "\"columns\"", "\"utf8\"", "\"one_of\"", "\"record_too_long\"", "unterminated quote"] {
        assert!(rejects.contains(rule), "no {rule} reject in:\n{}", &rejects[..rejects.len().min(2000)]);
    }
    assert!(one[3].len() > 1000, "dedupe dropped duplicates");

    for (threads, interval) in [(4, "1h"), (2, "20ms")] {
        let (log, par) = run_with(dir.path(), &input, threads, interval);
        assert!(log.contains("parallel segments"), "decode_threads = {threads} decodes in segments:\n{log}");
        assert!(log.contains("no record end within bounds"), "the unterminated quote went back to one decoder");
        for (i, what) in ["rows", "reader rejects", "rule rejects", "duplicates"].iter().enumerate() {
            if par[i] != one[i] {
                let (a, b) = (String::from_utf8_lossy(&one[i]), String::from_utf8_lossy(&par[i]));
                let at = a.lines().zip(b.lines()).position(|(x, y)| x != y).unwrap_or(0);
                panic!(
                    "{what} differ with {threads} threads (interval {interval}) from line {at}:\n one: {:?}\n par: {:?}",
                    a.lines().nth(at),
                    b.lines().nth(at)
                );
            }
        }
    }
}
