//! Defaults one component takes from another, after the whole pipeline is
//! checked: today, a hubspot sink's enumerations from the `one_of` rules of
//! the validations upstream of it. Changes only options a user left unset.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Component;

/// A hubspot property whose template is exactly `{Col}`, with no declared
/// type or options, is created as an enumeration of the values a
/// `validate` upstream allows for `Col` (`one_of`): HubSpot then refuses
/// what the pipeline would have refused, and shows a picklist. Only a
/// default for creating it: an existing property of another type is used
/// as it is (`derived_property_options`, not a declaration).
pub fn hubspot_enumerations(components: &mut [Component]) {
    let by_id: BTreeMap<String, usize> = components.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
    for i in 0..components.len() {
        if components[i].kind.name != "hubspot" {
            continue;
        }
        let allowed = upstream_one_of(components, &by_id, i);
        let opts = &components[i].options;
        let declared = |key: &str, prop: &str| opts.get(key).and_then(|t| t.get(prop)).is_some();
        let mut derived = serde_json::Map::new();
        for (prop, template) in opts.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let Some(col) = template.as_str().and_then(|t| t.strip_prefix('{')?.strip_suffix('}')) else { continue };
            if col.contains(['{', '}']) || declared("property_types", prop) || declared("property_options", prop) {
                continue;
            }
            if let Some(values) = allowed.get(col) {
                derived.insert(prop.clone(), Value::Array(values.iter().cloned().map(Value::String).collect()));
            }
        }
        if derived.is_empty() {
            continue;
        }
        let opts = &mut components[i].options;
        let entry = opts
            .as_object_mut()
            .map(|o| o.entry("derived_property_options").or_insert_with(|| Value::Object(Default::default())));
        if let Some(Value::Object(m)) = entry {
            m.extend(derived);
        }
    }
}

/// Column → allowed values, from every `validate` upstream of component `i`
/// (the nearest rule wins).
fn upstream_one_of(
    components: &[Component],
    by_id: &BTreeMap<String, usize>,
    i: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut seen = vec![false; components.len()];
    let mut queue: std::collections::VecDeque<usize> = components[i]
        .inputs
        .iter()
        .filter(|inp| !inp.deletes)
        .filter_map(|inp| by_id.get(&inp.from).copied())
        .collect();
    while let Some(j) = queue.pop_front() {
        if std::mem::replace(&mut seen[j], true) {
            continue;
        }
        let c = &components[j];
        if c.kind.name == "validate" {
            for (col, rule) in c.options.get("rules").and_then(Value::as_object).into_iter().flatten() {
                let Some(values) = rule.get("one_of").and_then(Value::as_array) else { continue };
                let values: Vec<String> = values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                out.entry(col.clone()).or_insert(values);
            }
        }
        queue.extend(c.inputs.iter().filter_map(|inp| by_id.get(&inp.from).copied()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_validated_column_becomes_an_enumeration_unless_declared() {
        let text = r#"
[sources.s]
kind = "file"
path = "x.csv"
[transforms.v]
kind = "validate"
inputs = ["s"]
rules.G.one_of = ["M", "F"]
rules.N.one_of = ["a"]
[sinks.crm]
kind = "hubspot"
inputs = ["v"]
base_url = "http://127.0.0.1:1"
id_property = "k"
id = "{N}"
properties = { g = "{G}", n = "{N}", gx = "{G}x" }
property_types = { n = "string" }
outbox = "/tmp/never-written"
"#;
        let p = crate::config::load_str(std::path::Path::new("p.toml"), text, &|_| None).expect("valid");
        let crm = p.components.iter().find(|c| c.id == "crm").expect("crm");
        assert_eq!(crm.options["derived_property_options"], serde_json::json!({ "g": ["M", "F"] }));
    }
}
