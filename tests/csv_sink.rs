//! The CSV file sink through the real binary: a header-only input still
//! gives a header, and the optional formula guard.

use std::path::Path;

use crate::util::*;

/// file source → validate → CSV file sink `out.csv` (with `sink_options`).
fn pipeline(dir: &Path, input: &Path, sink_options: &str) -> (String, std::path::PathBuf) {
    let out = dir.join("out.csv");
    let p = write_pipeline(
        dir,
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "csv-sink"
[pipeline.checkpoint]
interval = "off"
[sources.names]
kind = "file"
path = "{input}"
[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Name]
required = true
[sinks.out]
kind = "file"
inputs = ["valid"]
path = "{out}"
{sink_options}
"#,
            input = input.display(),
            out = out.display()
        ),
    );
    (p, out)
}

/// A file with a header and no row publishes the header, not an empty file;
/// so does a file whose every row is rejected.
#[test]
fn a_header_only_csv_input_publishes_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    for body in ["Id,Name,Year\n", "Id,Name,Year\n1,,1900\n2,,1901\n"] {
        std::fs::write(&input, body).unwrap();
        let (p, out) = pipeline(dir.path(), &input, "");
        let o = run(&["run", "--no-progress", &p], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "Id,Name,Year\n", "input {body:?}");
    }
}

/// `formula_guard = "quote"` prefixes `'` to text cells a spreadsheet would
/// run as formulas (and to such a header name); numbers stay numbers; the
/// default writes every cell as it came.
#[test]
fn the_csv_formula_guard_quotes_cells_a_spreadsheet_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "Id,Name,=Note\n1,=HYPERLINK(\"http://x\"),ok\n2,+SUM(A1),-1\n3,@x,\"\tt\"\n4,Ann,a-b\n-5,-Bob,7\n",
    )
    .unwrap();
    let (p, out) = pipeline(dir.path(), &input, r#"formula_guard = "quote""#);
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "Id,Name,'=Note\n1,\"'=HYPERLINK(\"\"http://x\"\")\",ok\n2,'+SUM(A1),'-1\n3,'@x,'\tt\n4,Ann,a-b\n-5,'-Bob,7\n"
    );

    let (p, out) = pipeline(dir.path(), &input, "");
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "Id,Name,=Note\n1,\"=HYPERLINK(\"\"http://x\"\")\",ok\n2,+SUM(A1),-1\n3,@x,\tt\n4,Ann,a-b\n-5,-Bob,7\n"
    );
}
