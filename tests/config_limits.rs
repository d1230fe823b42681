//! Absurd numbers and durations in the shipped pipelines: `engine validate`
//! must refuse each one at `file:line:column` (exit 2) and never panic
//! (exit 101), and `engine run --checkpoint-interval` must refuse them as a
//! usage error (exit 2).

use crate::util::*;

/// What an option holds, which decides the absurd values to try.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// An integer option (counts, sizes, limits).
    Integer,
    /// A real number (rule bounds, ratios): huge and negative are values.
    Real,
    /// A duration string such as "10s".
    Duration,
}

/// Written into the file in place of the value (TOML source text).
fn absurd(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Integer => &[
            "99999999999999999999",
            "-99999999999999999999",
            "18446744073709551616",
            "-1",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "\"\"",
            "\"nan\"",
            "\"99999999999999999999\"",
        ],
        Kind::Real => &["nan", "-nan", "inf", "-inf", "1e400", "\"\"", "\"NaN\""],
        Kind::Duration => &[
            "\"99999999999999999999s\"",
            "\"99999999999999999999\"",
            "\"18446744073709551616ms\"",
            "\"-5s\"",
            "\"nan\"",
            "\"NaNs\"",
            "\"inf\"",
            "\"\"",
            "\"1e400s\"",
            "\"0.0000001ms\"",
            "\"25h\"",
            "99999999999999999999",
            "-1",
            "nan",
        ],
    }
}

/// A duration as the shipped files write them: `10s`, or `${VAR:-5s}`.
fn duration_like(s: &str) -> bool {
    let inner = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')).and_then(|r| r.split_once(":-")).map(|(_, d)| d);
    let d = inner.unwrap_or(s);
    let digits = d.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && ["ms", "s", "m", "min", "h"].contains(&&d[digits.len()..])
}

/// Every number and duration option of a pipeline file: (dotted path, key,
/// value as written, kind).
fn numeric_options(text: &str) -> Vec<(String, String, String, Kind)> {
    fn walk(t: &toml::Table, path: &mut Vec<String>, out: &mut Vec<(String, String, String, Kind)>) {
        for (k, v) in t {
            path.push(k.clone());
            let dotted = path.join(".");
            // Validation rules compare with any real number.
            let rule_bound = path.len() == 5 && path[2] == "rules" && (k == "min" || k == "max");
            match v {
                toml::Value::Table(t) => walk(t, path, out),
                toml::Value::Integer(i) => {
                    let kind = if rule_bound { Kind::Real } else { Kind::Integer };
                    out.push((dotted, k.clone(), i.to_string(), kind));
                }
                toml::Value::Float(f) => out.push((dotted, k.clone(), f.to_string(), Kind::Real)),
                toml::Value::String(s) if duration_like(s) => {
                    out.push((dotted, k.clone(), format!("\"{s}\""), Kind::Duration))
                }
                _ => {}
            }
            path.pop();
        }
    }
    let table: toml::Table = text.parse().expect("a shipped pipeline parses");
    let mut out = Vec::new();
    walk(&table, &mut Vec::new(), &mut out);
    out
}

/// The byte offset of `key = value` in `text`, where it is the whole value.
fn find_option(text: &str, key: &str, value: &str) -> usize {
    let needle = format!("{key} = {value}");
    let hits: Vec<usize> = text
        .match_indices(&needle)
        .map(|(i, _)| i)
        .filter(|&i| {
            let before = text[..i].chars().next_back();
            let after = text[i + needle.len()..].chars().next();
            matches!(before, None | Some('\n' | ' ' | '{')) && matches!(after, None | Some('\n' | ',' | ' ' | '}'))
        })
        .collect();
    assert_eq!(hits.len(), 1, "`{needle}` should appear exactly once; extend the test to tell them apart");
    hits[0]
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// The line of the `[table]` header above byte `at` (where an error found
/// while building a component is reported when no value can be named).
fn header_line(text: &str, at: usize) -> usize {
    let start = text[..at].rfind("\n[").map(|i| i + 1).unwrap_or(0);
    line_of(text, start)
}

/// `file:line:column` of the first diagnostic, as a line number.
fn reported_line(err: &str, file: &str) -> Option<usize> {
    let at = err.find(&format!("{file}:"))? + file.len() + 1;
    let rest = &err[at..];
    let (line, rest) = rest.split_once(':')?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!col.is_empty()).then_some(())?;
    line.parse().ok()
}

#[test]
fn absurd_numbers_and_durations_in_every_shipped_pipeline_are_errors_at_a_position_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    // With a token, hubspot sinks build their client, which reads
    // `rate_limit.per`; validation sends nothing.
    let env = [("HUBSPOT_TOKEN", "fuzz-token"), ("PARTITION", "0")];
    let mut pipelines: Vec<_> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    pipelines.sort();
    assert!(pipelines.len() >= 3, "{pipelines:?}");
    let mut tried = 0;
    let mut kinds_seen = Vec::new();
    for pipeline in &pipelines {
        let text = std::fs::read_to_string(pipeline).unwrap();
        let name = pipeline.file_name().unwrap().to_string_lossy().into_owned();
        for (dotted, key, value, kind) in numeric_options(&text) {
            kinds_seen.push(kind);
            let at = find_option(&text, &key, &value);
            let lines = [line_of(&text, at), header_line(&text, at)];
            for bad in absurd(kind) {
                let mutated = format!("{}{key} = {bad}{}", &text[..at], &text[at + key.len() + 3 + value.len()..]);
                let file = write_pipeline(dir.path(), &name, &mutated);
                let o = run(&["validate", &file], &env);
                let err = stderr(&o);
                let what = format!("{name}: {dotted} = {bad}");
                assert_ne!(o.status.code(), Some(101), "{what} panicked: {err}");
                assert_eq!(o.status.code(), Some(2), "{what} must be refused: {err}");
                assert!(!err.contains("panicked"), "{what}: {err}");
                let line = reported_line(&err, &file).unwrap_or_else(|| panic!("{what}: no file:line:column in {err}"));
                assert!(lines.contains(&line), "{what}: reported at line {line}, expected one of {lines:?}: {err}");
                tried += 1;
            }
            // A `${VAR:-default}` duration read from the environment is
            // checked the same way, at the string that names the variable.
            if let Some(var) = value.strip_prefix("\"${").and_then(|v| v.split(":-").next()) {
                // (Set but empty means the default, as in the shell.)
                let strings = absurd(Kind::Duration).iter().filter_map(|b| b.strip_prefix('"')?.strip_suffix('"'));
                for bad in strings.filter(|b| !b.is_empty()) {
                    let file = pipeline.to_str().unwrap();
                    let o =
                        run(&["validate", file], &[("HUBSPOT_TOKEN", "fuzz-token"), ("PARTITION", "0"), (var, bad)]);
                    let err = stderr(&o);
                    assert_eq!(o.status.code(), Some(2), "{name}: {var}={bad}: {err}");
                    let line = reported_line(&err, file)
                        .unwrap_or_else(|| panic!("{var}={bad}: no file:line:column in {err}"));
                    assert_eq!(line, line_of(&text, at), "{var}={bad}: {err}");
                    tried += 1;
                }
            }
        }
    }
    for kind in [Kind::Integer, Kind::Real, Kind::Duration] {
        assert!(kinds_seen.contains(&kind), "no {kind:?} option found in the shipped pipelines");
    }
    assert!(tried > 200, "only {tried} cases");
}

#[test]
fn messages_say_out_of_range_and_give_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/babynames.toml")).unwrap();
    let cases = [
        (
            "interval = \"${CHECKPOINT_INTERVAL:-5s}\"",
            "interval = \"99999999999999999999s\"",
            "`pipeline.checkpoint.interval`: `99999999999999999999s` is out of range: a duration must be between 1ms and 24h",
        ),
        (
            "per = \"10s\"",
            "per = \"99999999999999999999s\"",
            "[sinks.crm]: invalid configuration: `99999999999999999999s` is out of range: a duration must be between 1ms and 24h",
        ),
        (
            "batch_size = 8192",
            "batch_size = 99999999999999999999",
            "`pipeline.batch_size` is out of range: must be between 1 and 1048576, found 99999999999999999999",
        ),
        (
            "requests = 100",
            "requests = -5",
            "`rate_limit.requests` in [sinks.crm] is out of range: must be between 0 and 4294967295, found -5",
        ),
        (
            "daily = 250000",
            "daily = 99999999999999999999",
            "`rate_limit.daily` in [sinks.crm] is out of range: must be between 0 and 18446744073709551615, found 99999999999999999999",
        ),
        (
            "max_len = 64",
            "max_len = nan",
            "`rules.Name.max_len` in [transforms.valid] must be an integer between 0 and",
        ),
        ("min = 1880", "min = inf", "`rules.Year.min` in [transforms.valid] must be a finite number, found inf"),
    ];
    // 65 characters: once refused as not "letters, digits and _".
    let long_table = format!("table = \"baby_names_{}\"", "x".repeat(54));
    let cases = cases.iter().copied().chain([(
        "table = \"baby_names\"",
        long_table.as_str(),
        "is too long: 65 characters, at most 64 (the MySQL/MariaDB limit)",
    )]);
    for (from, to, expected) in cases {
        let file = write_pipeline(dir.path(), "p.toml", &text.replacen(from, to, 1));
        let o = run(&["validate", &file], &[("HUBSPOT_TOKEN", "fuzz-token")]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{to}: {err}");
        assert!(err.contains(expected), "{to}: expected {expected:?} in\n{err}");
        assert!(!err.contains("found a float"), "{to}: {err}");
        // Nothing else: a value set aside after its error is not also "missing".
        assert!(err.contains("1 error found"), "{to}: {err}");
        // At the value itself.
        let line = line_of(&text, text.find(from).unwrap());
        assert!(err.contains(&format!("{file}:{line}:")), "{to}: not at line {line}: {err}");
    }
}

#[test]
fn an_absurd_checkpoint_interval_flag_is_a_usage_error() {
    for bad in ["99999999999999999999s", "-1s", "nan", "", "25h", "1e400s"] {
        let flag = format!("--checkpoint-interval={bad}");
        let o = run(&["run", "--no-progress", &flag, "pipelines/babynames.toml"], &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "--checkpoint-interval {bad:?}: {err}");
        assert!(err.contains("invalid value") && err.contains("--checkpoint-interval"), "{bad:?}: {err}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
    let o = run(
        &["run", "--no-progress", "--checkpoint-interval", "99999999999999999999s", "pipelines/babynames.toml"],
        &[],
    );
    assert!(stderr(&o).contains("out of range: a duration must be between 1ms and 24h"), "{}", stderr(&o));
}
