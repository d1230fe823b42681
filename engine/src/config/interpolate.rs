//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` inside string values.
//!
//! Interpolation runs on parsed strings, never on the file text, so a value
//! cannot inject TOML. A variable whose value holds a newline is refused:
//! no legitimate option needs one, and it is how an injected header or
//! statement usually gets in. `$$` writes a literal `$`.

/// Why a string could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub enum InterpolateError {
    Unset { var: String },
    Required { var: String, message: String },
    Newline { var: String },
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
            InterpolateError::Syntax(s) => f.write_str(s),
        }
    }
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
        let value = lookup(name).filter(|v| !v.is_empty());
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
}
