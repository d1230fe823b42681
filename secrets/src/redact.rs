//! The process-wide set of secret values, and redaction of text against it.
//!
//! Every value that is a credential is registered once, where it enters the
//! process: resolved `SECRET[...]` references, `${VAR}` values in credential
//! positions, credentials operators read themselves (Kaggle's token files).
//! Every byte the engine writes for people (log lines, errors, the run
//! summary, `/metrics`, `engine graph`, `engine checkpoints show`) passes
//! through [`redact`]. This module owns the registry and the matching; it
//! must not decide what counts as a credential (callers do).
//!
//! A value is also registered in the forms it takes when quoted into JSON or
//! a URL, since logs and errors carry both.

use std::borrow::Cow;
use std::sync::{LazyLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret is replaced with.
pub const MASK: &str = "[redacted]";

/// Values shorter than this are not registered: masking every `abc` in a
/// log would hide more than it protects. No real credential is this short.
pub const MIN_LEN: usize = 4;

#[derive(Default)]
struct Registry {
    values: Vec<String>,
    matcher: Option<AhoCorasick>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| RwLock::new(Registry::default()));

/// Adds `value` (and its JSON- and URL-escaped forms) to the set every
/// output is redacted against. Idempotent; ignores values shorter than
/// [`MIN_LEN`].
pub fn register(value: &str) {
    if value.chars().count() < MIN_LEN {
        return;
    }
    let mut forms = vec![value.to_string()];
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.trim_matches('"');
    forms.push(json.to_string());
    forms.push(percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string());
    forms.push(percent_encoding::utf8_percent_encode(value, USERINFO).to_string());
    let mut reg = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    let before = reg.values.len();
    for f in forms {
        if !f.is_empty() && !reg.values.contains(&f) {
            reg.values.push(f);
        }
    }
    if reg.values.len() != before {
        // Longest first among overlapping matches: a secret that contains
        // another is masked whole.
        reg.matcher = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&reg.values).ok();
    }
}

/// The characters a URL's userinfo must escape (RFC 3986), as `url` does.
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'|');

/// `s` with every registered secret replaced by [`MASK`].
pub fn redact(s: &str) -> Cow<'_, str> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    match &reg.matcher {
        Some(m) if m.is_match(s) => Cow::Owned(m.replace_all(s, &vec![MASK; reg.values.len()])),
        _ => Cow::Borrowed(s),
    }
}

/// [`redact`] for bytes that may not be UTF-8 (a log writer's buffer).
pub fn redact_bytes(b: &[u8]) -> Cow<'_, [u8]> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    match &reg.matcher {
        Some(m) if m.is_match(b) => {
            let masks = vec![MASK.as_bytes(); reg.values.len()];
            Cow::Owned(m.replace_all_bytes(b, &masks))
        }
        _ => Cow::Borrowed(b),
    }
}

/// Registers the password of `url`, if it has one (a database URL written
/// literally or from `${DATABASE_URL}`), both as written and decoded.
pub fn register_url_password(url: &str) {
    let Some((_, rest)) = url.split_once("://") else { return };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else { return };
    let Some((_, password)) = userinfo.split_once(':') else { return };
    register(password);
    if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
        register(&decoded);
    }
}

/// Whether an option or variable called `name` holds a credential: what a
/// `${VAR}` value is registered for. Names, not values, decide.
pub fn is_credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let last = n.rsplit(['.', '_', '-']).next().unwrap_or(&n);
    // A bare `key` is a dedupe or upsert key column, not a credential;
    // `KAGGLE_KEY`, `API_KEY`, `SECRET_KEY` are.
    matches!(last, "token" | "password" | "passwd" | "secret" | "credentials" | "credential" | "apikey")
        || (last == "key" && n.len() > 3)
        || n.ends_with("api_key")
        || n.ends_with("access_token")
        || n.contains("password")
}

/// Registers the process environment's credentials: variables whose names
/// say they hold one (`HUBSPOT_TOKEN`, `KAGGLE_KEY`, `AWS_SECRET_ACCESS_KEY`,
/// `*_PASSWORD`), their `*_FILE` forms, and passwords in URL-valued
/// variables (`DATABASE_URL`). Defence in depth: operators that read the
/// environment themselves are covered too.
pub fn register_environment() {
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else { continue };
        if let Some(base) = name.strip_suffix("_FILE") {
            let url = base.ends_with("_URL");
            if (is_credential_name(base) || url)
                && let Ok(text) = std::fs::read_to_string(value)
            {
                let text = text.trim_end_matches(['\n', '\r']);
                if url { register_url_password(text) } else { register(text) }
            }
            continue;
        }
        // `HUBSPOT_TOKEN=SECRET[vault.crm#token]` is a reference, not a
        // value; its value is registered when it resolves.
        if value.contains("SECRET[") {
            continue;
        }
        if is_credential_name(name) {
            register(value);
        }
        if value.contains("://") {
            register_url_password(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide: every test uses values of its own.

    #[test]
    fn masks_registered_values_and_their_escaped_forms() {
        register("pa55:w@rd\"x");
        let line = r#"{"msg":"login with pa55:w@rd\"x failed","url":"mysql://u:pa55%3Aw%40rd%22x@h/db"}"#;
        let out = redact(line);
        assert!(!out.contains("pa55"), "{out}");
        assert_eq!(out.matches(MASK).count(), 2, "{out}");
        assert_eq!(redact("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn longest_match_wins_and_short_values_are_ignored() {
        register("tok-abcdef");
        register("tok-abcdef-longer");
        assert_eq!(redact("a tok-abcdef-longer b"), format!("a {MASK} b"));
        register("ab");
        assert_eq!(redact("ab ab"), "ab ab");
        assert_eq!(redact_bytes(b"x tok-abcdef\xff").as_ref(), [b"x ".as_slice(), MASK.as_bytes(), b"\xff"].concat());
    }

    #[test]
    fn url_passwords_are_registered_decoded_too() {
        register_url_password("mysql://loader:s%40fe-pass@db:3306/x");
        assert_eq!(redact("s@fe-pass"), MASK);
        assert_eq!(redact("mysql://loader:s%40fe-pass@db"), format!("mysql://loader:{MASK}@db"));
        register_url_password("sqlite://file.db");
    }

    #[test]
    fn credential_names() {
        for n in
            ["token", "HUBSPOT_TOKEN", "KAGGLE_KEY", "AWS_SECRET_ACCESS_KEY", "db_password", "api_key", "client_secret"]
        {
            assert!(is_credential_name(n), "{n}");
        }
        for n in ["url", "DATABASE_URL", "KAGGLE_USERNAME", "id_property", "key", "keys", "monkey_business"] {
            assert!(!is_credential_name(n), "{n}");
        }
    }
}
