//! Errors about a pipeline file, each pointing at `file:line:column`, and
//! their rendering with the offending line underlined.

use std::fmt::Write as _;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a pipeline file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Byte range in the file; `None` for problems about the whole file.
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic { severity: Severity::Error, message: message.into(), span, help: None }
    }
    pub fn warning(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic { severity: Severity::Warning, message: message.into(), span, help: None }
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|s| s.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders diagnostics like rustc does: message, location, the line, a caret.
pub fn render(file: &str, source: &str, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        let label = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}: {}", d.message);
        match &d.span {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                let _ = writeln!(out, "  --> {file}:{line}:{col}");
                let text = source.lines().nth(line - 1).unwrap_or("");
                let width = line.to_string().len();
                let end_in_line = {
                    let (l2, c2) = line_col(source, span.end);
                    if l2 == line { c2 } else { text.chars().count() + 1 }
                };
                let carets = end_in_line.saturating_sub(col).max(1);
                let _ = writeln!(out, "{:width$} |", "");
                let _ = writeln!(out, "{line} | {text}");
                let _ = writeln!(out, "{:width$} | {}{}", "", " ".repeat(col - 1), "^".repeat(carets));
            }
            None => {
                let _ = writeln!(out, "  --> {file}");
            }
        }
        if let Some(h) = &d.help {
            let _ = writeln!(out, "  = help: {h}");
        }
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    if errors > 0 {
        let _ = writeln!(out, "{file}: {errors} error{} found", if errors == 1 { "" } else { "s" });
    }
    out
}

/// The candidate closest to `word`, if close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let at_eq = src.find('=').unwrap();
        assert_eq!(line_col(src, at_eq), (1, 3));
        let second_eq = src.rfind('=').unwrap();
        assert_eq!(line_col(src, second_eq), (2, 4));
    }

    #[test]
    fn closest_finds_typos_but_not_unrelated_words() {
        assert_eq!(closest("delimeter", ["path", "delimiter", "header"]), Some("delimiter"));
        assert_eq!(closest("blackhol", ["file", "blackhole"]), Some("blackhole"));
        assert_eq!(closest("zzz", ["file", "blackhole"]), None);
    }
}
