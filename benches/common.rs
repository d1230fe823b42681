//! What the benchmarks share: where the repository is and the pipeline
//! fragment they all run (the babynames source, rules and dedupe), so every
//! benchmark measures the same work before its own sink.

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// `[sources.names]` reading `csv`, then `valid` and `unique`; the caller
/// adds sinks reading `unique` and the rejects ports.
pub fn source_validate_dedupe(csv: &Path) -> String {
    format!(
        r#"
[sources.names]
kind = "file"
path = "{}"
schema = [
  {{ name = "Id", type = "int64" }},
  {{ name = "Name", type = "string" }},
  {{ name = "Year", type = "int64" }},
  {{ name = "Gender", type = "string" }},
  {{ name = "Count", type = "int64" }},
]

[transforms.valid]
kind = "validate"
inputs = ["names"]
[transforms.valid.rules.Name]
required = true
min_len = 1
max_len = 64
[transforms.valid.rules.Year]
min = 1880
max = 2100
[transforms.valid.rules.Gender]
one_of = ["M", "F"]
[transforms.valid.rules.Count]
min = 1

[transforms.unique]
kind = "dedupe"
inputs = ["valid"]
key = ["Name", "Year", "Gender"]

[sinks.rejects]
kind = "blackhole"
inputs = ["names.rejects", "valid.rejects"]
"#,
        csv.display()
    )
}
