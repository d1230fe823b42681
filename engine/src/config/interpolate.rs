//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` inside string values.
//! An unset `VAR` with `VAR_FILE` set reads that file instead (the Docker
//! convention for mounted secrets: `DATABASE_URL_FILE=/run/secrets/db`),
//! one trailing newline dropped.
//!
//! Interpolation runs on parsed strings, never on the file text, so a value
//! cannot inject TOML. A variable whose value holds a newline is refused:
//! no legitimate option needs one, and it is how an injected header or
//! statement usually gets in. `$$` writes a literal `$`.

/// Why a string could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub enum InterpolateError {
    Unset {
        var: String,
    },
    Required {
        var: String,
        message: String,
    },
    Newline {
        var: String,
    },
    /// `VAR_FILE` names a file that cannot be read (the path is not secret).
    File {
        var: String,
        path: String,
        error: String,
    },
    Syntax(String),
}

impl std::fmt::Display for InterpolateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpolateError::Unset { var } => write!(f, "environment variable `{var}` is not set"),
            InterpolateError::Required { var, message } => {
                write!(f, "environment variable `{var}` is required: {message}")
            }
            InterpolateError::Newline { var } => {
                write!(f, "environment variable `{var}` contains a newline, which is not allowed in a value")
            }
            InterpolateError::File { var, path, error } => {
                write!(f, "environment variable `{var}` names the file {path}, which cannot be read: {error}")
            }
            InterpolateError::Syntax(s) => f.write_str(s),
        }
    }
}

/// `VAR_FILE`'s file content for an unset `VAR`: Some((content, true)).
fn from_file(name: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<(String, bool)>, InterpolateError> {
    let var = format!("{name}_FILE");
    let Some(path) = lookup(&var).filter(|p| !p.is_empty()) else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|e| InterpolateError::File {
        var: var.clone(),
        path: path.clone(),
        error: e.to_string(),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(Some((text.to_string(), true)).filter(|(t, _)| !t.is_empty()))
}

/// Expands variables in `s`, looking them up with `lookup`.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpolateError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body_and_tail) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body_and_tail.find('}') else {
            return Err(InterpolateError::Syntax(format!("unterminated `${{` in `{s}`")));
        };
        let body = &body_and_tail[..close];
        rest = &body_and_tail[close + 1..];
        let (name, op) = match body.find(":-").or_else(|| body.find(":?")) {
            Some(i) => (&body[..i], Some((&body[i..i + 2], &body[i + 2..]))),
            None => (body, None),
        };
        let valid = !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(InterpolateError::Syntax(format!(
                "`${{{body}}}` is not a variable reference (use ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}})"
            )));
        }
        let value = match lookup(name).filter(|v| !v.is_empty()) {
            Some(v) => Some((v, false)),
            None => from_file(name, lookup)?,
        };
        let (name, value) = match &value {
            Some((_, true)) => (format!("{name}_FILE"), value.map(|(v, _)| v)),
            _ => (name.to_string(), value.map(|(v, _)| v)),
        };
        let name = name.as_str();
        let value = match (value, op) {
            (Some(v), _) => {
                if v.contains('\n') || v.contains('\r') {
                    return Err(InterpolateError::Newline { var: name.to_string() });
                }
                v
            }
            (None, Some((":-", default))) => default.to_string(),
            (None, Some((_, message))) => {
                return Err(InterpolateError::Required { var: name.to_string(), message: message.to_string() });
            }
            (None, None) => return Err(InterpolateError::Unset { var: name.to_string() }),
        };
        out.push_str(&value);
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "EMPTY" => Some(String::new()),
            "EVIL" => Some("x\ny".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(interpolate("mysql://${HOST}:3306", &env).unwrap(), "mysql://db.local:3306");
        assert_eq!(interpolate("${NOPE:-sqlite://x.db}", &env).unwrap(), "sqlite://x.db");
        assert_eq!(interpolate("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(interpolate("cost $$5 and $x", &env).unwrap(), "cost $5 and $x");
        assert_eq!(interpolate("no vars", &env).unwrap(), "no vars");
    }

    #[test]
    fn reports_unset_required_newline_and_syntax() {
        assert_eq!(interpolate("${NOPE}", &env), Err(InterpolateError::Unset { var: "NOPE".into() }));
        assert_eq!(
            interpolate("${NOPE:?set it to your token}", &env),
            Err(InterpolateError::Required { var: "NOPE".into(), message: "set it to your token".into() })
        );
        assert_eq!(interpolate("${EVIL}", &env), Err(InterpolateError::Newline { var: "EVIL".into() }));
        assert!(matches!(interpolate("${OOPS", &env), Err(InterpolateError::Syntax(_))));
        assert!(matches!(interpolate("${1X}", &env), Err(InterpolateError::Syntax(_))));
    }

    #[test]
    fn an_unset_variable_falls_back_to_its_file() {
        let dir = std::env::temp_dir().join(format!("interp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("token");
        std::fs::write(&ok, "pat-from-file\n").unwrap();
        let bad = dir.join("multi");
        std::fs::write(&bad, "a\nb\n").unwrap();
        let (ok_s, bad_s) = (ok.display().to_string(), bad.display().to_string());
        let env = move |name: &str| match name {
            "TOKEN_FILE" => Some(ok_s.clone()),
            "MULTI_FILE" => Some(bad_s.clone()),
            "GONE_FILE" => Some("/nonexistent/secret".to_string()),
            "SET" => Some("direct".into()),
            "SET_FILE" => Some("/nonexistent/ignored".into()),
            _ => None,
        };
        assert_eq!(interpolate("Bearer ${TOKEN}", &env).unwrap(), "Bearer pat-from-file");
        assert_eq!(interpolate("${SET}", &env).unwrap(), "direct");
        assert_eq!(interpolate("${MULTI}", &env), Err(InterpolateError::Newline { var: "MULTI_FILE".into() }));
        let e = interpolate("${GONE}", &env).unwrap_err().to_string();
        assert!(e.starts_with("environment variable `GONE_FILE` names the file /nonexistent/secret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
