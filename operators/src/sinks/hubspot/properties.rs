//! The properties a HubSpot sink writes, made to exist before the first
//! record is sent: what the sink wants (names, types, the unique id
//! property), what the portal has, and the requests that make them agree.
//! A fresh portal has none of a pipeline's custom properties, and an upsert
//! naming one that does not exist loses its whole batch.
//!
//! Checks everything first and says every problem at once; creates nothing
//! when a problem needs a person (a type conflict, an id property that is
//! not unique).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::client::Client;
use crate::api::OperatorError;

/// HubSpot's property types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropType {
    String,
    Number,
    Date,
    Datetime,
    Bool,
    Enumeration,
}

impl PropType {
    pub fn parse(s: &str) -> Result<PropType, String> {
        Ok(match s {
            "string" => PropType::String,
            "number" => PropType::Number,
            "date" => PropType::Date,
            "datetime" => PropType::Datetime,
            "bool" => PropType::Bool,
            "enumeration" => PropType::Enumeration,
            other => {
                return Err(format!(
                    "unknown HubSpot property type `{other}` (string, number, date, datetime, bool, enumeration)"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PropType::String => "string",
            PropType::Number => "number",
            PropType::Date => "date",
            PropType::Datetime => "datetime",
            PropType::Bool => "bool",
            PropType::Enumeration => "enumeration",
        }
    }

    /// The form field HubSpot pairs with the type.
    fn field_type(self) -> &'static str {
        match self {
            PropType::String => "text",
            PropType::Number => "number",
            PropType::Date | PropType::Datetime => "date",
            PropType::Bool => "booleancheckbox",
            PropType::Enumeration => "select",
        }
    }
}

/// One property the sink writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub kind: PropType,
    /// Set in the pipeline (`property_types`/`property_options`): an
    /// existing property of another type is then a conflict.
    pub declared: bool,
    /// Values of an enumeration.
    pub options: Vec<String>,
    /// The id property: must hold unique values.
    pub unique: bool,
}

/// What setup found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Setup {
    pub existing: Vec<String>,
    pub created: Vec<String>,
    pub group_created: Option<String>,
}

impl Setup {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(g) = &self.group_created {
            parts.push(format!("created property group {g}"));
        }
        if !self.created.is_empty() {
            parts.push(format!("created {}", self.created.join(", ")));
        }
        if !self.existing.is_empty() {
            parts.push(format!("already there: {}", self.existing.join(", ")));
        }
        if self.created.is_empty() && self.group_created.is_none() {
            parts.push("nothing to change".into());
        }
        parts.join("; ")
    }
}

/// Property group names: lowercase letters, digits and underscores.
pub fn group_name(pipeline: &str) -> String {
    let mut g: String =
        pipeline.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !g.starts_with(|c: char| c.is_ascii_lowercase()) {
        g.insert_str(0, "engine_");
    }
    g
}

/// "baby_year" → "Baby year".
fn label(name: &str) -> String {
    let spaced = name.replace('_', " ");
    let mut c = spaced.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => spaced,
    }
}

/// Reads the object's properties, checks the wanted ones against them and
/// (with `create`) creates what is missing in `group`.
pub async fn setup(
    client: &Client,
    object: &str,
    wanted: &[Wanted],
    group: &str,
    pipeline: &str,
    create: bool,
) -> Result<Setup, OperatorError> {
    let have = existing(client).await?;
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut out = Setup::default();
    for w in wanted {
        let Some(p) = have.get(&w.name) else {
            missing.push(w);
            continue;
        };
        out.existing.push(w.name.clone());
        let unique = p.get("hasUniqueValue").and_then(Value::as_bool).unwrap_or(false);
        if w.unique && !unique && w.name != "email" {
            problems.push(format!(
                "the id property `{}` exists in HubSpot but does not hold unique values (hasUniqueValue is false), so records cannot be upserted by it; HubSpot cannot make an existing property unique: set id_property to a new name (the sink creates it unique) or pick an existing unique property",
                w.name
            ));
        }
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
        if w.declared && ty != w.kind.as_str() {
            problems.push(format!(
                "the {object} property `{}` is of type {ty} in HubSpot but the pipeline declares {} (property_types): change the declaration to {ty}, or rename the property in `properties`",
                w.name,
                w.kind.as_str()
            ));
        }
        if w.kind == PropType::Enumeration && ty == "enumeration" {
            let values: Vec<&str> = p
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| o.get("value").and_then(Value::as_str))
                .collect();
            let absent: Vec<&str> = w.options.iter().map(String::as_str).filter(|o| !values.contains(o)).collect();
            if !absent.is_empty() {
                problems.push(format!(
                    "the enumeration `{}` in HubSpot lacks the option(s) {}: add them in HubSpot (Settings → Properties) so these rows are not refused",
                    w.name,
                    absent.join(", ")
                ));
            }
        }
    }
    if !missing.is_empty() && !create {
        let names: Vec<&str> = missing.iter().map(|w| w.name.as_str()).collect();
        problems.push(format!(
            "HubSpot has no {object} propert{} {} and create_properties = false: create {} with `engine hubspot setup <pipeline file>` or in HubSpot (Settings → Properties), or set create_properties = true",
            if names.len() == 1 { "y" } else { "ies" },
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ));
    }
    if !problems.is_empty() {
        return Err(OperatorError::Config(problems.join("; ")));
    }
    if missing.is_empty() {
        return Ok(out);
    }
    if ensure_group(client, group, pipeline).await? {
        out.group_created = Some(group.to_string());
    }
    let inputs: Vec<Value> = missing.iter().map(|w| definition(w, group, pipeline)).collect();
    let answer = client.post_properties("/batch/create", &json!({ "inputs": inputs })).await?;
    match answer.status {
        200 | 201 => {}
        207 => {
            // Created meanwhile by someone else: fine if it now matches.
            let errors = answer.body.get("errors").and_then(Value::as_array).cloned().unwrap_or_default();
            let real: Vec<&Value> = errors
                .iter()
                .filter(|e| e.get("category").and_then(Value::as_str) != Some("OBJECT_ALREADY_EXISTS"))
                .collect();
            if !real.is_empty() {
                let msgs: Vec<String> = real
                    .iter()
                    .map(|e| e.get("message").and_then(Value::as_str).unwrap_or("error").to_string())
                    .collect();
                return Err(OperatorError::Data(format!("HubSpot refused to create properties: {}", msgs.join("; "))));
            }
        }
        _ => {
            return Err(OperatorError::Data(format!(
                "HubSpot refused to create the properties {}: {}",
                missing.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", "),
                answer.describe()
            )));
        }
    }
    out.created = missing.iter().map(|w| w.name.clone()).collect();
    Ok(out)
}

async fn existing(client: &Client) -> Result<BTreeMap<String, Value>, OperatorError> {
    let answer = client.get_properties("").await?;
    if answer.status != 200 {
        return Err(OperatorError::Data(format!("cannot read HubSpot's properties: {}", answer.describe())));
    }
    Ok(answer
        .body
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get("name")?.as_str()?.to_string(), p.clone())))
        .collect())
}

/// Creates the property group unless it exists; true when it was created.
async fn ensure_group(client: &Client, group: &str, pipeline: &str) -> Result<bool, OperatorError> {
    let answer = client.get_properties("/groups").await?;
    let exists = answer
        .body
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|g| g.get("name").and_then(Value::as_str) == Some(group));
    if answer.status == 200 && exists {
        return Ok(false);
    }
    let body = json!({ "name": group, "label": format!("{pipeline} (engine)"), "displayOrder": -1 });
    let answer = client.post_properties("/groups", &body).await?;
    match answer.status {
        200 | 201 => Ok(true),
        409 => Ok(false),
        _ => Err(OperatorError::Data(format!(
            "HubSpot refused to create the property group {group}: {}",
            answer.describe()
        ))),
    }
}

fn definition(w: &Wanted, group: &str, pipeline: &str) -> Value {
    let mut v = json!({
        "name": w.name,
        "label": label(&w.name),
        "type": w.kind.as_str(),
        "fieldType": w.kind.field_type(),
        "groupName": group,
        "description": format!("Written by the engine pipeline {pipeline}"),
    });
    if w.unique {
        v["hasUniqueValue"] = json!(true);
    }
    if w.kind == PropType::Enumeration {
        v["options"] = w
            .options
            .iter()
            .enumerate()
            .map(|(i, o)| json!({ "label": o, "value": o, "displayOrder": i, "hidden": false }))
            .collect();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_definitions_follow_hubspots_rules() {
        assert_eq!(group_name("babynames-kaggle"), "babynames_kaggle");
        assert_eq!(group_name("2024 Names"), "engine_2024_names");
        assert_eq!(label("baby_year"), "Baby year");
        let w = Wanted {
            name: "baby_gender".into(),
            kind: PropType::Enumeration,
            declared: true,
            options: vec!["F".into(), "M".into()],
            unique: false,
        };
        let d = definition(&w, "g", "p");
        assert_eq!(d["fieldType"], "select");
        assert_eq!(d["options"][1]["value"], "M");
        assert!(d.get("hasUniqueValue").is_none());
        assert!(PropType::parse("text").is_err());
    }
}
