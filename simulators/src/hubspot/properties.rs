//! The contact property catalog and the properties API: the portal's
//! properties and groups, the validation of new and changed definitions
//! (names, type/fieldType pairs, options, groups, unique values, at most 10
//! custom unique properties), and the `/crm/v3/properties/contacts…`
//! endpoints (list, get, create, batch create, update, groups).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::defs::{
    DEFAULTS_CREATED, PropertyDef, PropertyGroup, PropertyOption, PropertyType, default_groups, default_properties,
};
use super::wire::{ApiError, Reply, now_iso, parse_body};

/// At most this many custom unique-value properties per object type.
const MAX_UNIQUE_PROPERTIES: usize = 10;

pub struct Property {
    pub def: PropertyDef,
    pub created_at: String,
    pub updated_at: String,
}

impl Property {
    pub fn to_json(&self) -> Value {
        let d = &self.def;
        let mut v = json!({
            "name": d.name,
            "label": d.label,
            "type": d.property_type.as_str(),
            "fieldType": d.field_type,
            "description": d.description,
            "groupName": d.group_name,
            "options": d.options,
            "displayOrder": d.display_order,
            "calculated": false,
            "externalOptions": false,
            "hasUniqueValue": d.has_unique_value,
            "hidden": d.hidden,
            "modificationMetadata": {
                "archivable": !d.hubspot_defined,
                "readOnlyDefinition": d.read_only_definition,
                "readOnlyValue": d.read_only_value,
            },
            "formField": d.form_field,
            "dataSensitivity": "non_sensitive",
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": false,
        });
        if d.hubspot_defined {
            v["hubspotDefined"] = json!(true);
        }
        v
    }
}

/// A refused definition or value: status, category and message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub category: &'static str,
    pub message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure { status: StatusCode::BAD_REQUEST, category: "VALIDATION_ERROR", message: message.into() }
    }
    fn reply(self, cid: String) -> Reply {
        Reply::error(self.status, ApiError::new(self.category, self.message, cid))
    }
}

/// The portal's contact properties and groups.
pub struct Catalog {
    pub props: BTreeMap<String, Property>,
    pub groups: BTreeMap<String, PropertyGroup>,
}

/// Lowercase letters, digits and underscores, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Catalog {
    /// A fresh portal: HubSpot's default contact properties and groups.
    pub fn fresh() -> Catalog {
        let groups = default_groups().into_iter().map(|g| (g.name.clone(), g)).collect();
        let props = default_properties()
            .into_iter()
            .map(|d| {
                let p = Property { def: d, created_at: DEFAULTS_CREATED.into(), updated_at: DEFAULTS_CREATED.into() };
                (p.def.name.clone(), p)
            })
            .collect();
        Catalog { props, groups }
    }

    pub fn def(&self, name: &str) -> Option<&PropertyDef> {
        self.props.get(name).map(|p| &p.def)
    }

    /// Whether values of `name` identify one record: unique-value
    /// properties and `email` (unique per contact although HubSpot does not
    /// flag it `hasUniqueValue`).
    pub fn is_unique(&self, name: &str) -> bool {
        name == "email" || self.def(name).is_some_and(|d| d.has_unique_value)
    }

    /// Every property whose values must be unique.
    pub fn unique_names(&self) -> Vec<String> {
        self.props
            .values()
            .filter(|p| p.def.has_unique_value || p.def.name == "email")
            .map(|p| p.def.name.clone())
            .collect()
    }

    pub fn defs(&self) -> Vec<PropertyDef> {
        self.props.values().map(|p| p.def.clone()).collect()
    }

    /// Checks a new definition against the catalog.
    fn check_new(&self, d: &PropertyDef) -> Result<(), Failure> {
        if self.props.contains_key(&d.name) {
            return Err(Failure {
                status: StatusCode::CONFLICT,
                category: "OBJECT_ALREADY_EXISTS",
                message: format!("Property named '{}' already exists.", d.name),
            });
        }
        if !valid_name(&d.name) {
            return Err(Failure::invalid(format!(
                "Property name '{}' is invalid: use lowercase letters, digits and underscores, starting with a letter.",
                d.name
            )));
        }
        if d.name.starts_with("hs_") {
            return Err(Failure::invalid(format!(
                "Property name '{}' is invalid: the prefix 'hs_' is reserved for HubSpot-defined properties.",
                d.name
            )));
        }
        if d.label.trim().is_empty() {
            return Err(Failure::invalid("Property label must not be empty."));
        }
        if !self.groups.contains_key(&d.group_name) {
            return Err(Failure::invalid(format!("Property group '{}' does not exist.", d.group_name)));
        }
        if d.has_unique_value {
            if !d.property_type.can_be_unique() {
                return Err(Failure::invalid(format!(
                    "Properties of type {} cannot have unique values: only string and number properties can.",
                    d.property_type.as_str()
                )));
            }
            let custom = self.props.values().filter(|p| p.def.has_unique_value && !p.def.hubspot_defined).count();
            if custom >= MAX_UNIQUE_PROPERTIES {
                return Err(Failure::invalid(format!(
                    "An object type can have at most {MAX_UNIQUE_PROPERTIES} unique value properties."
                )));
            }
        }
        check_shape(d)
    }

    /// Creates a checked definition.
    fn insert(&mut self, mut d: PropertyDef) -> &Property {
        // What the API decides, whatever the caller sent.
        d.hubspot_defined = false;
        d.read_only_value = false;
        d.read_only_definition = false;
        let now = now_iso();
        let name = d.name.clone();
        self.props.insert(name.clone(), Property { def: d, created_at: now.clone(), updated_at: now });
        &self.props[&name]
    }

    /// Creates a property directly (test set-up, `Config::properties`),
    /// validated as the API does, creating its group when missing.
    pub fn create_direct(&mut self, d: PropertyDef) -> Result<(), String> {
        if !self.groups.contains_key(&d.group_name) && valid_name(&d.group_name) {
            let g = PropertyGroup {
                name: d.group_name.clone(),
                label: d.group_name.clone(),
                display_order: -1,
                archived: false,
            };
            self.groups.insert(g.name.clone(), g);
        }
        self.check_new(&d).map_err(|f| f.message)?;
        self.insert(d);
        Ok(())
    }

    fn list(&self) -> Reply {
        let results: Vec<Value> = self.props.values().map(Property::to_json).collect();
        Reply::ok(json!({ "results": results }))
    }

    fn get(&self, name: &str, cid: String) -> Reply {
        match self.props.get(name) {
            Some(p) => Reply::ok(p.to_json()),
            None => not_found(format!("Property \"{name}\" does not exist"), cid),
        }
    }

    fn create(&mut self, body: &[u8], cid: String) -> Reply {
        let v = match parse_body(body) {
            Ok(v) => v,
            Err(m) => return Failure::invalid(m).reply(cid),
        };
        match parse_def(&v).and_then(|d| self.check_new(&d).map(|()| d)) {
            Ok(d) => Reply::json(StatusCode::CREATED, self.insert(d).to_json()),
            Err(f) => f.reply(cid),
        }
    }

    fn batch_create(&mut self, body: &[u8], cid: String) -> Reply {
        let started = now_iso();
        let v = match parse_body(body) {
            Ok(v) => v,
            Err(m) => return Failure::invalid(m).reply(cid),
        };
        let Some(inputs) = v.get("inputs").and_then(Value::as_array) else {
            return Failure::invalid("Invalid input JSON: `inputs` is required.").reply(cid);
        };
        if inputs.len() > 100 {
            return Failure::invalid(format!(
                "The maximum number of inputs supported in a batch is 100. Received {} inputs.",
                inputs.len()
            ))
            .reply(cid);
        }
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for input in inputs {
            match parse_def(input).and_then(|d| self.check_new(&d).map(|()| d)) {
                Ok(d) => results.push(self.insert(d).to_json()),
                Err(f) => {
                    let name = input.get("name").and_then(Value::as_str).unwrap_or_default();
                    errors.push(json!({ "status": "error", "category": f.category, "message": f.message,
                        "context": { "name": [name] } }));
                }
            }
        }
        let completed = now_iso();
        if errors.is_empty() {
            return Reply::json(
                StatusCode::CREATED,
                json!({ "status": "COMPLETE", "results": results, "startedAt": started, "completedAt": completed }),
            );
        }
        Reply::json(
            StatusCode::MULTI_STATUS,
            json!({ "status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors,
                "startedAt": started, "completedAt": completed }),
        )
    }

    fn patch(&mut self, name: &str, body: &[u8], cid: String) -> Reply {
        let v = match parse_body(body) {
            Ok(v) => v,
            Err(m) => return Failure::invalid(m).reply(cid),
        };
        let Some(p) = self.props.get(name) else {
            return not_found(format!("Property \"{name}\" does not exist"), cid);
        };
        match self.patched(&p.def, &v) {
            Ok(d) => {
                let p = self.props.get_mut(name).expect("checked above");
                p.def = d;
                p.updated_at = now_iso();
                Reply::ok(p.to_json())
            }
            Err(f) => f.reply(cid),
        }
    }

    /// `d` with the changes in `v`, checked.
    fn patched(&self, d: &PropertyDef, v: &Value) -> Result<PropertyDef, Failure> {
        if d.read_only_definition {
            return Err(Failure::invalid(format!(
                "Property \"{}\" is HubSpot-defined and cannot be modified.",
                d.name
            )));
        }
        let Some(o) = v.as_object() else { return Err(Failure::invalid("Invalid input JSON: expected an object")) };
        let mut n = d.clone();
        if let Some(t) = o.get("type")
            && t.as_str() != Some(d.property_type.as_str())
        {
            return Err(Failure::invalid(format!(
                "The type of property \"{}\" cannot be changed by this simulator.",
                d.name
            )));
        }
        if let Some(u) = o.get("hasUniqueValue")
            && u.as_bool() != Some(d.has_unique_value)
        {
            return Err(Failure::invalid(format!("hasUniqueValue of property \"{}\" cannot be changed.", d.name)));
        }
        if let Some(x) = o.get("label") {
            n.label = req_str(x, "label")?;
            if n.label.trim().is_empty() {
                return Err(Failure::invalid("Property label must not be empty."));
            }
        }
        if let Some(x) = o.get("description") {
            n.description = req_str(x, "description")?;
        }
        if let Some(x) = o.get("groupName") {
            n.group_name = req_str(x, "groupName")?;
            if !self.groups.contains_key(&n.group_name) {
                return Err(Failure::invalid(format!("Property group '{}' does not exist.", n.group_name)));
            }
        }
        if let Some(x) = o.get("fieldType") {
            n.field_type = req_str(x, "fieldType")?;
        }
        if let Some(x) = o.get("options") {
            n.options = parse_options(x)?;
        }
        if let Some(x) = o.get("displayOrder") {
            n.display_order = x.as_i64().ok_or_else(|| Failure::invalid("displayOrder must be an integer"))?;
        }
        if let Some(x) = o.get("hidden") {
            n.hidden = x.as_bool().ok_or_else(|| Failure::invalid("hidden must be a boolean"))?;
        }
        if let Some(x) = o.get("formField") {
            n.form_field = x.as_bool().ok_or_else(|| Failure::invalid("formField must be a boolean"))?;
        }
        check_shape(&n)?;
        Ok(n)
    }

    fn group_list(&self) -> Reply {
        let results: Vec<&PropertyGroup> = self.groups.values().collect();
        Reply::ok(json!({ "results": results }))
    }

    fn group_get(&self, name: &str, cid: String) -> Reply {
        match self.groups.get(name) {
            Some(g) => Reply::ok(json!(g)),
            None => not_found(format!("Property group \"{name}\" does not exist"), cid),
        }
    }

    fn group_create(&mut self, body: &[u8], cid: String) -> Reply {
        let v = match parse_body(body) {
            Ok(v) => v,
            Err(m) => return Failure::invalid(m).reply(cid),
        };
        let missing: Vec<&str> =
            ["name", "label"].into_iter().filter(|k| v.get(*k).and_then(Value::as_str).is_none()).collect();
        if !missing.is_empty() {
            return Failure::invalid(format!(
                "Invalid input JSON: Cannot build PropertyGroupCreate, some of required attributes are not set [{}]",
                missing.join(", ")
            ))
            .reply(cid);
        }
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let label = v["label"].as_str().unwrap_or_default().to_string();
        if self.groups.contains_key(&name) {
            return Failure {
                status: StatusCode::CONFLICT,
                category: "OBJECT_ALREADY_EXISTS",
                message: format!("Property group named '{name}' already exists."),
            }
            .reply(cid);
        }
        if !valid_name(&name) {
            return Failure::invalid(format!(
                "Property group name '{name}' is invalid: use lowercase letters, digits and underscores, starting with a letter."
            ))
            .reply(cid);
        }
        if label.trim().is_empty() {
            return Failure::invalid("Property group label must not be empty.").reply(cid);
        }
        let display_order = match v.get("displayOrder") {
            None => -1,
            Some(x) => match x.as_i64() {
                Some(n) => n,
                None => return Failure::invalid("displayOrder must be an integer").reply(cid),
            },
        };
        let g = PropertyGroup { name: name.clone(), label, display_order, archived: false };
        self.groups.insert(name, g.clone());
        Reply::json(StatusCode::CREATED, json!(g))
    }

    /// Serves one properties endpoint.
    pub fn serve(&mut self, ep: &PropertiesEndpoint, body: &[u8], cid: String) -> Reply {
        match ep {
            PropertiesEndpoint::List => self.list(),
            PropertiesEndpoint::Create => self.create(body, cid),
            PropertiesEndpoint::BatchCreate => self.batch_create(body, cid),
            PropertiesEndpoint::Get(n) => self.get(n, cid),
            PropertiesEndpoint::Patch(n) => self.patch(n, body, cid),
            PropertiesEndpoint::GroupList => self.group_list(),
            PropertiesEndpoint::GroupCreate => self.group_create(body, cid),
            PropertiesEndpoint::GroupGet(n) => self.group_get(n, cid),
        }
    }
}

/// The properties API's endpoints (contacts).
#[derive(Debug, PartialEq)]
pub enum PropertiesEndpoint {
    List,
    Create,
    BatchCreate,
    Get(String),
    Patch(String),
    GroupList,
    GroupCreate,
    GroupGet(String),
}

fn not_found(message: String, cid: String) -> Reply {
    Reply::error(StatusCode::NOT_FOUND, ApiError::new("OBJECT_NOT_FOUND", message, cid))
}

fn req_str(v: &Value, field: &str) -> Result<String, Failure> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::invalid(format!("Invalid input JSON: {field} must be a string")))
}

/// A definition from a create body: required fields and the type's name.
fn parse_def(v: &Value) -> Result<PropertyDef, Failure> {
    let Some(o) = v.as_object() else { return Err(Failure::invalid("Invalid input JSON: expected an object")) };
    let missing: Vec<&str> = ["name", "label", "type", "fieldType", "groupName"]
        .into_iter()
        .filter(|k| o.get(*k).is_none_or(Value::is_null))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::invalid(format!(
            "Invalid input JSON: Cannot build PropertyCreate, some of required attributes are not set [{}]",
            missing.join(", ")
        )));
    }
    let type_name = req_str(&o["type"], "type")?;
    let Some(property_type) = PropertyType::parse(&type_name) else {
        let accepted: Vec<&str> = PropertyType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(Failure::invalid(format!(
            "Invalid input JSON: Cannot deserialize value of type `PropertyType` from String \"{type_name}\": not one of the values accepted for Enum class: [{}]",
            accepted.join(", ")
        )));
    };
    let bool_field = |k: &str| -> Result<bool, Failure> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(x) => {
                x.as_bool().ok_or_else(|| Failure::invalid(format!("Invalid input JSON: {k} must be a boolean")))
            }
        }
    };
    Ok(PropertyDef {
        name: req_str(&o["name"], "name")?,
        label: req_str(&o["label"], "label")?,
        property_type,
        field_type: req_str(&o["fieldType"], "fieldType")?,
        group_name: req_str(&o["groupName"], "groupName")?,
        description: match o.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(x) => req_str(x, "description")?,
        },
        has_unique_value: bool_field("hasUniqueValue")?,
        options: match o.get("options") {
            None | Some(Value::Null) => Vec::new(),
            Some(x) => parse_options(x)?,
        },
        display_order: match o.get("displayOrder") {
            None | Some(Value::Null) => -1,
            Some(x) => {
                x.as_i64().ok_or_else(|| Failure::invalid("Invalid input JSON: displayOrder must be an integer"))?
            }
        },
        hidden: bool_field("hidden")?,
        form_field: bool_field("formField")?,
        ..PropertyDef::default()
    })
}

fn parse_options(v: &Value) -> Result<Vec<PropertyOption>, Failure> {
    let Some(items) = v.as_array() else {
        return Err(Failure::invalid("Invalid input JSON: options must be an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let label = o.get("label").and_then(Value::as_str);
            let value = o.get("value").and_then(Value::as_str);
            let (Some(label), Some(value)) = (label, value) else {
                return Err(Failure::invalid(format!(
                    "Invalid input JSON: Cannot build Option, some of required attributes are not set [label, value] (option {i})"
                )));
            };
            Ok(PropertyOption {
                label: label.into(),
                value: value.into(),
                display_order: o.get("displayOrder").and_then(Value::as_i64).unwrap_or(i as i64),
                hidden: o.get("hidden").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect()
}

/// The checks that do not depend on the catalog: field type for the type,
/// options.
fn check_shape(d: &PropertyDef) -> Result<(), Failure> {
    let t = d.property_type;
    if !t.field_types().contains(&d.field_type.as_str()) {
        return Err(Failure::invalid(format!(
            "Property \"{}\": fieldType '{}' is not valid for type '{}' (valid: {}).",
            d.name,
            d.field_type,
            t.as_str(),
            t.field_types().join(", ")
        )));
    }
    let needs_options = matches!(t, PropertyType::Enumeration | PropertyType::Bool);
    if needs_options && d.options.is_empty() {
        return Err(Failure::invalid(format!("Property \"{}\" of type {} must have options.", d.name, t.as_str())));
    }
    if !needs_options && !d.options.is_empty() {
        return Err(Failure::invalid(format!("Property \"{}\" of type {} cannot have options.", d.name, t.as_str())));
    }
    let mut seen = std::collections::HashSet::new();
    for o in &d.options {
        if o.label.trim().is_empty() || o.value.trim().is_empty() {
            return Err(Failure::invalid(format!(
                "Property \"{}\": option labels and values must not be empty.",
                d.name
            )));
        }
        if o.value.trim() != o.value {
            return Err(Failure::invalid(format!(
                "Property \"{}\": option value \"{}\" includes leading or trailing whitespace.",
                d.name, o.value
            )));
        }
        if !seen.insert(o.value.as_str()) {
            return Err(Failure::invalid(format!("Property \"{}\": option value '{}' is repeated.", d.name, o.value)));
        }
    }
    if t == PropertyType::Bool {
        let mut values: Vec<&str> = d.options.iter().map(|o| o.value.as_str()).collect();
        values.sort_unstable();
        if values != ["false", "true"] {
            return Err(Failure::invalid(format!(
                "Property \"{}\" of type bool must have exactly the options 'true' and 'false'.",
                d.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_checked_like_hubspot_does() {
        let mut c = Catalog::fresh();
        assert!(c.def("email").is_some() && c.def("baby_key").is_none());
        assert!(c.is_unique("email") && !c.is_unique("firstname") && !c.is_unique("hs_object_id"));
        let create = |c: &mut Catalog, v: Value| c.create(v.to_string().as_bytes(), "cid".into());
        let ok = json!({"name": "baby_key", "label": "Key", "type": "string", "fieldType": "text",
            "groupName": "contactinformation", "hasUniqueValue": true});
        assert_eq!(create(&mut c, ok.clone()).status, StatusCode::CREATED);
        assert_eq!(create(&mut c, ok).status, StatusCode::CONFLICT);
        assert!(c.is_unique("baby_key"));
        let bad = |v: Value| {
            let mut c = Catalog::fresh();
            let r = create(&mut c, v.clone());
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{v}");
            r.body.unwrap()["message"].as_str().unwrap().to_string()
        };
        let base = json!({"name": "x", "label": "X", "type": "string", "fieldType": "text", "groupName": "contactinformation"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            b
        };
        assert!(bad(with("label", Value::Null)).contains("[label]"));
        assert!(bad(with("type", json!("text"))).contains("not one of the values accepted"));
        assert!(bad(with("fieldType", json!("select"))).contains("not valid for type"));
        assert!(bad(with("groupName", json!("nope"))).contains("does not exist"));
        assert!(bad(with("name", json!("Baby Key"))).contains("invalid"));
        assert!(bad(with("name", json!("1x"))).contains("invalid"));
        assert!(bad(with("name", json!("hs_mine"))).contains("reserved"));
        let mut e = with("type", json!("enumeration"));
        e["fieldType"] = json!("select");
        assert!(bad(e.clone()).contains("must have options"));
        e["hasUniqueValue"] = json!(true);
        e["options"] = json!([{"label": "A", "value": "a"}]);
        assert!(bad(e).contains("cannot have unique values"));
        let mut n = with("type", json!("number"));
        n["fieldType"] = json!("number");
        n["hasUniqueValue"] = json!(true);
        assert_eq!(create(&mut Catalog::fresh(), n).status, StatusCode::CREATED);
    }

    #[test]
    fn at_most_ten_custom_unique_properties() {
        let mut c = Catalog::fresh();
        for i in 0..10 {
            c.create_direct(PropertyDef::new(&format!("u{i}"), "U", PropertyType::String, "g").unique()).unwrap();
        }
        let err = c.create_direct(PropertyDef::new("u10", "U", PropertyType::String, "g").unique()).unwrap_err();
        assert!(err.contains("at most 10"), "{err}");
        c.create_direct(PropertyDef::new("plain", "P", PropertyType::String, "g")).unwrap();
    }
}
