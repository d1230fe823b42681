//! `SECRET[backend.key]` inside a string value: finding references and
//! substituting resolved values. Pure text work: no backend is called here.
//!
//! The syntax is Vector's: a backend name of letters, digits, `_` and `-`,
//! a dot, then the key up to the closing `]`. Keys are the backend's own
//! (`babynames/prod#hubspot_token`, `/babynames/db_password`); a key cannot
//! hold `]` or whitespace.

use std::fmt;
use std::ops::Range;

/// One `SECRET[backend.key]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    pub backend: String,
    pub key: String,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SECRET[{}.{}]", self.backend, self.key)
    }
}

impl Reference {
    /// The key split at its first `#`: the secret's id, and the JSON field
    /// to take from its value, if any.
    pub fn id_and_field(&self) -> (&str, Option<&str>) {
        match self.key.split_once('#') {
            Some((id, field)) => (id, Some(field)),
            None => (&self.key, None),
        }
    }
}

const OPEN: &str = "SECRET[";

/// Every reference in `s`, with its byte range; a malformed one is an
/// error saying what is wrong with it (it holds no value, only syntax).
pub fn scan(s: &str) -> Result<Vec<(Range<usize>, Reference)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find(OPEN) {
        let start = from + at;
        let body_start = start + OPEN.len();
        let Some(len) = s[body_start..].find(']') else {
            return Err(format!("`{}` has no closing `]`", shorten(&s[start..])));
        };
        let body = &s[body_start..body_start + len];
        let end = body_start + len + 1;
        let Some((backend, key)) = body.split_once('.') else {
            return Err(format!("`SECRET[{body}]` needs a backend and a key: SECRET[backend.key]"));
        };
        if backend.is_empty() || !backend.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!(
                "`SECRET[{body}]`: the backend name `{backend}` may hold only letters, digits, `_` and `-`"
            ));
        }
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(format!("`SECRET[{body}]`: the key must be non-empty and hold no whitespace"));
        }
        out.push((start..end, Reference { backend: backend.to_string(), key: key.to_string() }));
        from = end;
    }
    Ok(out)
}

/// `s` with every reference replaced by `value(reference)`. References
/// `value` does not know are left as written.
pub fn substitute(s: &str, value: &dyn Fn(&Reference) -> Option<String>) -> Result<String, String> {
    let refs = scan(s)?;
    if refs.is_empty() {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (range, r) in refs {
        out.push_str(&s[last..range.start]);
        match value(&r) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&s[range.clone()]),
        }
        last = range.end;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(b: &str, k: &str) -> Reference {
        Reference { backend: b.into(), key: k.into() }
    }

    #[test]
    fn finds_references_anywhere_in_a_string() {
        let s = "mysql://loader:SECRET[params./babynames/db_password]@db:3306/x?t=SECRET[aws.a/b#f]";
        let found: Vec<Reference> = scan(s).unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(found, [r("params", "/babynames/db_password"), r("aws", "a/b#f")]);
        assert_eq!(scan("no references, SECRET alone, [brackets]").unwrap(), []);
        assert_eq!(r("aws", "a/b#f").id_and_field(), ("a/b", Some("f")));
        assert_eq!(r("aws", "a.b").id_and_field(), ("a.b", None));
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        assert!(scan("SECRET[aws.x").unwrap_err().contains("no closing"));
        assert!(scan("SECRET[nokey]").unwrap_err().contains("backend and a key"));
        assert!(scan("SECRET[a b.k]").unwrap_err().contains("backend name"));
        assert!(scan("SECRET[aws. k]").unwrap_err().contains("whitespace"));
        assert!(scan("SECRET[aws.]").unwrap_err().contains("non-empty"));
    }

    #[test]
    fn substitutes_known_references_and_keeps_the_rest() {
        let v = |r: &Reference| (r.backend == "a").then(|| format!("<{}>", r.key));
        assert_eq!(substitute("x SECRET[a.k1] y SECRET[b.k2] z", &v).unwrap(), "x <k1> y SECRET[b.k2] z");
        assert_eq!(substitute("plain", &v).unwrap(), "plain");
    }
}
