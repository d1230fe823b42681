//! `"{Name}|{Gender}|{Year}"`: text with column references, rendered per
//! row. `{{` and `}}` write literal braces. Owns parsing and rendering only.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Col(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed `{{` in template `{s}`")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in template `{s}`"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Col(name));
                }
                '}' => return Err(format!("unmatched `}}` in template `{s}` (write `}}}}` for a brace)")),
                other => lit.push(other),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Col(c) => Some(c.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Checks every referenced column exists.
    pub fn check(&self, schema: &SchemaRef) -> Result<(), String> {
        for c in self.columns() {
            if schema.index_of(c).is_err() {
                let have = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
                return Err(format!(
                    "template refers to column `{c}`, which the input does not have (columns: {have})"
                ));
            }
        }
        Ok(())
    }

    /// Renders row `i`; a null renders as the empty string.
    pub fn render(&self, batch: &RecordBatch, i: usize) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Col(c) => {
                    let Some(a) = batch.column_by_name(c) else { continue };
                    if a.is_null(i) {
                        continue;
                    }
                    match a.data_type() {
                        DataType::Utf8 => out.push_str(a.as_string::<i32>().value(i)),
                        DataType::Int64 => out.push_str(&a.as_primitive::<Int64Type>().value(i).to_string()),
                        DataType::Int32 => out.push_str(&a.as_primitive::<Int32Type>().value(i).to_string()),
                        _ => out.push_str(&arrow::util::display::array_value_to_string(a, i).unwrap_or_default()),
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn renders_columns_literals_and_escaped_braces() {
        let t = Template::parse("{Name}|{Gender}|{Year} {{x}}").unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, true),
            Field::new("Gender", DataType::Utf8, true),
            Field::new("Year", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("Zoë"), None])),
                Arc::new(StringArray::from(vec!["F", "M"])),
                Arc::new(Int64Array::from(vec![1880, 2014])),
            ],
        )
        .unwrap();
        t.check(&schema).unwrap();
        assert_eq!(t.render(&b, 0), "Zoë|F|1880 {x}");
        assert_eq!(t.render(&b, 1), "|M|2014 {x}");
        assert!(Template::parse("{Nope").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{Missing}").unwrap().check(&schema).unwrap_err().contains("`Missing`"));
    }
}
