//! The check of one property value against its definition, as HubSpot
//! does on writes: numbers (no exponents), options of enumerations and
//! bools, dates (`YYYY-MM-DD` or epoch milliseconds at midnight UTC),
//! datetimes (ISO 8601 or epoch milliseconds), emails, leading or trailing
//! whitespace on non-strings, length. Values come back as HubSpot stores
//! them.

use super::defs::{PropertyDef, PropertyType};
use super::wire::iso_ms;

/// Why a value does not fit its property: HubSpot's error code and message.
#[derive(Debug, PartialEq)]
pub struct ValueError {
    pub code: &'static str,
    pub message: String,
}

fn value_error(code: &'static str, message: String) -> ValueError {
    ValueError { code, message }
}

/// `-?digits(.digits)?`: HubSpot refuses exponents ("1e3 was not a valid
/// number.").
fn is_number(v: &str) -> bool {
    let s = v.strip_prefix('-').unwrap_or(v);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else { return false };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && !v.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
        && !domain.contains('@')
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// Epoch milliseconds from a date or datetime value as HubSpot takes it.
pub fn epoch_millis(t: PropertyType, v: &str) -> Option<i64> {
    if is_integer(v) {
        return v.parse().ok();
    }
    match t {
        PropertyType::Date => {
            let d: jiff::civil::Date = v.parse().ok()?;
            (v.len() == 10)
                .then(|| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
                .flatten()
                .map(|z| z.timestamp().as_millisecond())
        }
        PropertyType::Datetime => v.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond()),
        _ => None,
    }
}

fn is_integer(v: &str) -> bool {
    let s = v.strip_prefix('-').unwrap_or(v);
    !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `value` for the property `d` and returns it as HubSpot stores it
/// (emails lowercased, dates as `YYYY-MM-DD`, datetimes as ISO 8601 UTC).
/// An empty value clears the property and is always valid.
pub fn check_value(d: &PropertyDef, value: &str, max_len: usize) -> Result<String, ValueError> {
    if value.is_empty() {
        return Ok(String::new());
    }
    if value.chars().count() > max_len {
        return Err(value_error(
            "VALUE_TOO_LONG",
            format!("Value for property \"{}\" is longer than the maximum of {max_len} characters.", d.name),
        ));
    }
    let t = d.property_type;
    if t != PropertyType::String && value.trim() != value {
        return Err(value_error(
            "LEADING_TRAILING_WHITESPACE",
            format!("\"{value}\" includes leading or trailing whitespace."),
        ));
    }
    match t {
        PropertyType::String if d.name == "email" => {
            if is_email(value) {
                Ok(value.to_lowercase())
            } else {
                Err(value_error("INVALID_EMAIL", format!("Email address {value} is invalid")))
            }
        }
        PropertyType::String => Ok(value.to_string()),
        PropertyType::Number => {
            if is_number(value) {
                Ok(value.to_string())
            } else {
                Err(value_error("INVALID_INTEGER", format!("{value} was not a valid number.")))
            }
        }
        PropertyType::Bool | PropertyType::Enumeration => {
            let allowed: Vec<&str> = d.options.iter().map(|o| o.value.as_str()).collect();
            // Multiple checkboxes take several values separated by `;`.
            let multi = d.field_type == "checkbox";
            let ok = if multi { value.split(';').all(|v| allowed.contains(&v)) } else { allowed.contains(&value) };
            if ok {
                Ok(value.to_string())
            } else {
                Err(value_error(
                    "INVALID_OPTION",
                    format!("{value} was not one of the allowed options: [{}]", allowed.join(", ")),
                ))
            }
        }
        PropertyType::Date => match epoch_millis(t, value) {
            Some(ms) if ms.rem_euclid(86_400_000) == 0 => Ok(iso_ms(ms)[..10].to_string()),
            Some(ms) => {
                let rem = ms.rem_euclid(86_400_000);
                Err(value_error(
                    "INVALID_DATE",
                    format!(
                        "{value} is at {}:{}:{}.{} UTC, not midnight!",
                        rem / 3_600_000,
                        rem / 60_000 % 60,
                        rem / 1000 % 60,
                        rem % 1000
                    ),
                ))
            }
            None => Err(value_error(
                "INVALID_DATE",
                format!("{value} is not a valid date: use YYYY-MM-DD or epoch milliseconds at midnight UTC"),
            )),
        },
        PropertyType::Datetime => match epoch_millis(t, value) {
            Some(ms) => Ok(iso_ms(ms)),
            None => Err(value_error(
                "INVALID_DATETIME",
                format!("{value} is not a valid datetime: use ISO 8601 with a time zone or epoch milliseconds"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubspot::defs::PropertyOption;

    fn def(t: PropertyType) -> PropertyDef {
        PropertyDef::new("p", "P", t, "g")
    }

    #[test]
    fn values_are_checked_by_type() {
        let n = def(PropertyType::Number);
        assert_eq!(check_value(&n, "1990", 100), Ok("1990".into()));
        assert_eq!(check_value(&n, "-1.5", 100), Ok("-1.5".into()));
        for bad in ["nineteen", "1e3", "1.", ".5", "1,000", "--1"] {
            assert_eq!(check_value(&n, bad, 100).unwrap_err().code, "INVALID_INTEGER", "{bad}");
        }
        assert_eq!(check_value(&n, " 1", 100).unwrap_err().code, "LEADING_TRAILING_WHITESPACE");
        assert_eq!(check_value(&n, "", 100), Ok(String::new()), "empty clears");

        let b = def(PropertyType::Bool)
            .with_options(vec![PropertyOption::new("Yes", "true", 0), PropertyOption::new("No", "false", 1)]);
        assert!(check_value(&b, "true", 100).is_ok());
        assert_eq!(check_value(&b, "yes", 100).unwrap_err().code, "INVALID_OPTION");

        let e = def(PropertyType::Enumeration)
            .with_options(vec![PropertyOption::new("A", "a", 0), PropertyOption::new("B", "b", 1)]);
        assert!(check_value(&e, "a", 100).is_ok());
        let err = check_value(&e, "c", 100).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            ("INVALID_OPTION", "c was not one of the allowed options: [a, b]")
        );
        assert!(check_value(&e, "a;b", 100).is_err(), "one option for a select");
        assert!(check_value(&e.clone().with_field_type("checkbox"), "a;b", 100).is_ok());

        let d = def(PropertyType::Date);
        assert_eq!(check_value(&d, "2026-03-01", 100), Ok("2026-03-01".into()));
        assert_eq!(check_value(&d, "1430438400000", 100), Ok("2015-05-01".into()));
        let err = check_value(&d, "1430438400001", 100).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            ("INVALID_DATE", "1430438400001 is at 0:0:0.1 UTC, not midnight!")
        );
        assert!(check_value(&d, "2026-02-30", 100).is_err());
        assert!(check_value(&d, "2026-03-01T00:00:00Z", 100).is_err());

        let dt = def(PropertyType::Datetime);
        assert_eq!(check_value(&dt, "2026-03-01T10:00:00+01:00", 100), Ok("2026-03-01T09:00:00.000Z".into()));
        assert_eq!(check_value(&dt, "1427997766000", 100), Ok("2015-04-02T18:02:46.000Z".into()));
        assert_eq!(check_value(&dt, "2026-03-01", 100).unwrap_err().code, "INVALID_DATETIME");

        let s = def(PropertyType::String);
        assert_eq!(check_value(&s, " padded ", 100), Ok(" padded ".into()), "strings keep their spaces");
        assert_eq!(check_value(&s, "abcd", 3).unwrap_err().code, "VALUE_TOO_LONG");
        let email = PropertyDef::new("email", "Email", PropertyType::String, "g");
        assert_eq!(check_value(&email, "Ann@Example.com", 100), Ok("ann@example.com".into()));
        for bad in ["ann", "ann@", "@x.com", "ann@example", "a b@x.com", "ann@x.c0m"] {
            assert_eq!(check_value(&email, bad, 100).unwrap_err().code, "INVALID_EMAIL", "{bad}");
        }
    }
}
