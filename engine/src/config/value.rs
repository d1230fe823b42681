//! The pipeline file as a tree of values that remember where they were
//! written, so every later check can point at `file:line:column`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

#[derive(Clone, Debug)]
pub struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub span: Range<usize>,
}

#[derive(Clone, Debug)]
pub enum Value {
    String(String),
    Integer(i64),
    /// An integer literal beyond `i64` (TOML's range), as written. Kept
    /// apart from floats so a typo such as `99999999999999999999` is
    /// reported as an integer out of range, not as "a float".
    HugeInteger(String),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in file order.
    Table(Vec<(Key, Node)>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) | Value::HugeInteger(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    pub fn as_table(&self) -> Option<&[(Key, Node)]> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    /// Plain JSON for serde, once spans are no longer needed.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::String(s) | Value::Datetime(s) => J::String(s.clone()),
            Value::Integer(i) => J::from(*i),
            // Up to u64::MAX it still fits an unsigned option; beyond, a float
            // that no integer option accepts (the checker then says "out of
            // range" from the node, see `out_of_range`).
            Value::HugeInteger(s) => match s.parse::<u64>() {
                Ok(u) => J::from(u),
                Err(_) => {
                    let f = s.parse::<f64>().ok().filter(|f| f.is_finite()).unwrap_or(f64::MAX);
                    let f = if s.starts_with('-') { -f.abs() } else { f };
                    serde_json::Number::from_f64(f).map(J::Number).unwrap_or(J::Null)
                }
            },
            // JSON has no NaN or infinity, and `null` would read as an absent
            // option (its default): they travel as a map, which no number or
            // string option accepts (the checker then words the error from
            // the node).
            Value::Float(f) if !f.is_finite() => {
                J::Object(std::iter::once(("non-finite number".to_string(), J::String(f.to_string()))).collect())
            }
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Boolean(b) => J::Bool(*b),
            Value::Array(a) => J::Array(a.iter().map(|n| n.value.to_json()).collect()),
            Value::Table(t) => J::Object(t.iter().map(|(k, n)| (k.name.clone(), n.value.to_json())).collect()),
        }
    }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<(&Key, &Node)> {
        self.value.as_table()?.iter().find(|(k, _)| k.name == key).map(|(k, n)| (k, n))
    }
}

/// Parses TOML text. A syntax error comes back with its span.
pub fn parse(source: &str) -> Result<Node, (String, Option<Range<usize>>)> {
    let table = DeTable::parse(source).map_err(|e| (e.message().trim().to_string(), e.span()))?;
    let span = table.span();
    let span = if span.is_empty() { 0..source.len() } else { span };
    Ok(Node { span, value: convert_table(table.get_ref()) })
}

fn convert_table(t: &DeTable<'_>) -> Value {
    Value::Table(
        t.iter()
            .map(|(k, v)| (Key { name: k.get_ref().to_string(), span: k.span() }, convert(v.get_ref(), v.span())))
            .collect(),
    )
}

fn convert(v: &DeValue<'_>, span: Range<usize>) -> Node {
    let value = match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::HugeInteger(match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => n.to_string(),
                // Decimal digits are kept as they are; a longer hex, octal
                // or binary literal only needs to read as "huge".
                Err(_) if i.radix() == 10 => i.as_str().to_string(),
                Err(_) => format!("{}{}", if i.as_str().starts_with('-') { "-" } else { "" }, u128::MAX),
            }),
        },
        DeValue::Float(f) => Value::Float(parse_float(f.as_str())),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|n| convert(n.get_ref(), n.span())).collect()),
        DeValue::Table(t) => convert_table(t),
    };
    Node { span, value }
}

fn parse_float(s: &str) -> f64 {
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    match clean.as_str() {
        "inf" | "+inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" | "+nan" | "-nan" => f64::NAN,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_spans_and_file_order() {
        let src = "[sources.b]\nkind = \"file\"\n[sources.a]\nn = 0x10\n";
        let root = parse(src).unwrap();
        let (_, sources) = root.get("sources").unwrap();
        let names: Vec<_> = sources.value.as_table().unwrap().iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let (_, b) = sources.get("b").unwrap();
        let (_, kind) = b.get("kind").unwrap();
        assert_eq!(&src[kind.span.clone()], "\"file\"");
        let (_, a) = sources.get("a").unwrap();
        assert!(matches!(a.get("n").unwrap().1.value, Value::Integer(16)));
    }

    #[test]
    fn integers_beyond_i64_stay_integers() {
        let root =
            parse("a = 99999999999999999999\nb = -99999999999999999999\nc = 18446744073709551615\nd = nan\n").unwrap();
        let v = |k: &str| root.get(k).unwrap().1.value.clone();
        assert!(matches!(v("a"), Value::HugeInteger(s) if s == "99999999999999999999"));
        assert!(matches!(v("b"), Value::HugeInteger(s) if s == "-99999999999999999999"));
        assert_eq!(v("a").type_name(), "an integer");
        // Still fits an unsigned option; beyond u64 no integer option accepts it.
        assert_eq!(v("c").to_json(), serde_json::json!(u64::MAX));
        assert!(v("a").to_json().is_f64());
        // NaN must not become `null`, which an optional option reads as
        // absent, nor a string, which a string option would take.
        assert!(v("d").to_json().is_object());
    }

    #[test]
    fn syntax_errors_have_a_span() {
        let (msg, span) = parse("a = \n").unwrap_err();
        assert!(!msg.is_empty());
        assert!(span.is_some());
    }
}
