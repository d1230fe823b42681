//! The contact property catalog and the properties API: HubSpot's default
//! contact properties and groups, property definitions (`PropertyDef`) and
//! their validation (names, type/fieldType pairs, options, groups, unique
//! values), the `/crm/v3/properties/contacts…` endpoints (list, get, create,
//! batch create, update, groups), and the check of one property value
//! against its definition (numbers, options, booleans, dates, datetimes,
//! emails, whitespace, length) used by the object endpoints.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::wire::{ApiError, Reply, now_iso, parse_body};

/// A property's data type (`type` in HubSpot's JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    #[default]
    String,
    Number,
    Date,
    Datetime,
    Enumeration,
    Bool,
}

impl PropertyType {
    pub const ALL: [PropertyType; 6] = [
        PropertyType::String,
        PropertyType::Number,
        PropertyType::Date,
        PropertyType::Datetime,
        PropertyType::Enumeration,
        PropertyType::Bool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Number => "number",
            PropertyType::Date => "date",
            PropertyType::Datetime => "datetime",
            PropertyType::Enumeration => "enumeration",
            PropertyType::Bool => "bool",
        }
    }

    pub fn parse(s: &str) -> Option<PropertyType> {
        PropertyType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The `fieldType`s HubSpot accepts for this type (calculated
    /// properties' `calculation_equation` is not simulated).
    pub fn field_types(self) -> &'static [&'static str] {
        match self {
            PropertyType::String => &["text", "textarea", "phonenumber", "html", "file"],
            PropertyType::Number => &["number"],
            PropertyType::Date | PropertyType::Datetime => &["date"],
            PropertyType::Enumeration => &["select", "radio", "checkbox", "booleancheckbox"],
            PropertyType::Bool => &["booleancheckbox"],
        }
    }

    /// The usual `fieldType` for this type.
    pub fn default_field_type(self) -> &'static str {
        self.field_types()[0]
    }

    /// Only strings and numbers can hold unique values.
    pub fn can_be_unique(self) -> bool {
        matches!(self, PropertyType::String | PropertyType::Number)
    }
}

/// One option of an enumeration or bool property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyOption {
    pub label: String,
    pub value: String,
    #[serde(default)]
    pub display_order: i64,
    #[serde(default)]
    pub hidden: bool,
}

impl PropertyOption {
    pub fn new(label: &str, value: &str, display_order: i64) -> PropertyOption {
        PropertyOption { label: label.into(), value: value.into(), display_order, hidden: false }
    }
}

/// A property definition: what `POST /crm/v3/properties/contacts` takes,
/// plus what HubSpot decides for its own properties (read-only flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PropertyDef {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub property_type: PropertyType,
    pub field_type: String,
    pub group_name: String,
    pub description: String,
    pub has_unique_value: bool,
    pub options: Vec<PropertyOption>,
    pub display_order: i64,
    pub hidden: bool,
    pub form_field: bool,
    /// One of HubSpot's own properties.
    pub hubspot_defined: bool,
    /// Values are set by HubSpot only (`hs_object_id`, `createdate`, …).
    pub read_only_value: bool,
    /// The definition cannot be changed through the API.
    pub read_only_definition: bool,
}

impl PropertyDef {
    /// A custom property with the usual field type for `property_type`.
    pub fn new(name: &str, label: &str, property_type: PropertyType, group_name: &str) -> PropertyDef {
        PropertyDef {
            name: name.into(),
            label: label.into(),
            property_type,
            field_type: property_type.default_field_type().into(),
            group_name: group_name.into(),
            display_order: -1,
            ..PropertyDef::default()
        }
    }
    /// Holds a unique value per record (usable as `idProperty`).
    pub fn unique(mut self) -> PropertyDef {
        self.has_unique_value = true;
        self
    }
    pub fn with_field_type(mut self, field_type: &str) -> PropertyDef {
        self.field_type = field_type.into();
        self
    }
    pub fn with_options(mut self, options: Vec<PropertyOption>) -> PropertyDef {
        self.options = options;
        self
    }
}

/// A property group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyGroup {
    pub name: String,
    pub label: String,
    pub display_order: i64,
    pub archived: bool,
}

/// The properties a portal set up for the babynames pipeline has, in a group
/// `babynames` (created with them): `baby_key` (unique string), `baby_gender`
/// (string), `baby_year` and `baby_count` (numbers).
pub fn babynames_properties() -> Vec<PropertyDef> {
    vec![
        PropertyDef::new("baby_key", "Baby key", PropertyType::String, "babynames").unique(),
        PropertyDef::new("baby_gender", "Baby gender", PropertyType::String, "babynames"),
        PropertyDef::new("baby_year", "Baby year", PropertyType::Number, "babynames"),
        PropertyDef::new("baby_count", "Baby count", PropertyType::Number, "babynames"),
    ]
}

/// When HubSpot's own properties were "created".
const DEFAULTS_CREATED: &str = "2019-08-06T02:41:52.656Z";

/// The properties every read returns on top of those asked for.
pub const SYSTEM_PROPERTIES: [&str; 3] = ["hs_object_id", "createdate", "lastmodifieddate"];

/// What reads return when no `properties` are asked for.
pub const DEFAULT_READ_PROPERTIES: [&str; 6] =
    ["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"];

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

fn hubspot(name: &str, label: &str, t: PropertyType, field_type: &str, order: i64) -> PropertyDef {
    PropertyDef {
        name: name.into(),
        label: label.into(),
        property_type: t,
        field_type: field_type.into(),
        group_name: "contactinformation".into(),
        display_order: order,
        form_field: true,
        hubspot_defined: true,
        read_only_definition: true,
        ..PropertyDef::default()
    }
}

fn default_properties() -> Vec<PropertyDef> {
    use PropertyType::*;
    let stages = [
        ("Subscriber", "subscriber"),
        ("Lead", "lead"),
        ("Marketing Qualified Lead", "marketingqualifiedlead"),
        ("Sales Qualified Lead", "salesqualifiedlead"),
        ("Opportunity", "opportunity"),
        ("Customer", "customer"),
        ("Evangelist", "evangelist"),
        ("Other", "other"),
    ];
    let lead_status = [
        ("New", "NEW"),
        ("Open", "OPEN"),
        ("In Progress", "IN_PROGRESS"),
        ("Open Deal", "OPEN_DEAL"),
        ("Unqualified", "UNQUALIFIED"),
        ("Attempted to Contact", "ATTEMPTED_TO_CONTACT"),
        ("Connected", "CONNECTED"),
        ("Bad Timing", "BAD_TIMING"),
    ];
    let opts = |o: &[(&str, &str)]| {
        o.iter().enumerate().map(|(i, (l, v))| PropertyOption::new(l, v, i as i64)).collect::<Vec<_>>()
    };
    let system = |name: &str, label: &str, t: PropertyType, ft: &str| PropertyDef {
        read_only_value: true,
        form_field: false,
        display_order: -1,
        ..hubspot(name, label, t, ft, -1)
    };
    vec![
        hubspot("email", "Email", String, "text", 3),
        hubspot("firstname", "First Name", String, "text", 0),
        hubspot("lastname", "Last Name", String, "text", 1),
        hubspot("phone", "Phone Number", String, "phonenumber", 4),
        hubspot("mobilephone", "Mobile Phone Number", String, "phonenumber", -1),
        hubspot("company", "Company Name", String, "text", -1),
        hubspot("website", "Website URL", String, "text", -1),
        hubspot("address", "Street Address", String, "text", -1),
        hubspot("city", "City", String, "text", -1),
        hubspot("state", "State/Region", String, "text", -1),
        hubspot("zip", "Postal Code", String, "text", -1),
        hubspot("country", "Country/Region", String, "text", -1),
        hubspot("jobtitle", "Job Title", String, "text", -1),
        hubspot("message", "Message", String, "textarea", -1),
        PropertyDef { options: opts(&stages), ..hubspot("lifecyclestage", "Lifecycle Stage", Enumeration, "radio", -1) },
        PropertyDef { options: opts(&lead_status), ..hubspot("hs_lead_status", "Lead Status", Enumeration, "radio", -1) },
        system("hs_object_id", "Record ID", Number, "number"),
        system("createdate", "Create Date", Datetime, "date"),
        system("lastmodifieddate", "Last Modified Date", Datetime, "date"),
    ]
}

fn default_groups() -> Vec<PropertyGroup> {
    [
        ("contactinformation", "Contact information"),
        ("emailinformation", "Email information"),
        ("conversioninformation", "Conversion information"),
        ("sales_properties", "Sales properties"),
        ("socialmediainformation", "Social media information"),
        ("analyticsinformation", "Web analytics history"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (n, l))| PropertyGroup { name: (*n).into(), label: (*l).into(), display_order: i as i64, archived: false })
    .collect()
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
        self.props.values().filter(|p| p.def.has_unique_value || p.def.name == "email").map(|p| p.def.name.clone()).collect()
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
            let g = PropertyGroup { name: d.group_name.clone(), label: d.group_name.clone(), display_order: -1, archived: false };
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
            return Err(Failure::invalid(format!("Property \"{}\" is HubSpot-defined and cannot be modified.", d.name)));
        }
        let Some(o) = v.as_object() else { return Err(Failure::invalid("Invalid input JSON: expected an object")) };
        let mut n = d.clone();
        if let Some(t) = o.get("type") {
            if t.as_str() != Some(d.property_type.as_str()) {
                return Err(Failure::invalid(format!(
                    "The type of property \"{}\" cannot be changed by this simulator.",
                    d.name
                )));
            }
        }
        if let Some(u) = o.get("hasUniqueValue") {
            if u.as_bool() != Some(d.has_unique_value) {
                return Err(Failure::invalid(format!("hasUniqueValue of property \"{}\" cannot be changed.", d.name)));
            }
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
        let missing: Vec<&str> = ["name", "label"].into_iter().filter(|k| v.get(*k).and_then(Value::as_str).is_none()).collect();
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
    v.as_str().map(str::to_string).ok_or_else(|| Failure::invalid(format!("Invalid input JSON: {field} must be a string")))
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
            Some(x) => x.as_bool().ok_or_else(|| Failure::invalid(format!("Invalid input JSON: {k} must be a boolean"))),
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
            Some(x) => x.as_i64().ok_or_else(|| Failure::invalid("Invalid input JSON: displayOrder must be an integer"))?,
        },
        hidden: bool_field("hidden")?,
        form_field: bool_field("formField")?,
        ..PropertyDef::default()
    })
}

fn parse_options(v: &Value) -> Result<Vec<PropertyOption>, Failure> {
    let Some(items) = v.as_array() else { return Err(Failure::invalid("Invalid input JSON: options must be an array")) };
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
        return Err(Failure::invalid(format!(
            "Property \"{}\" of type {} must have options.",
            d.name,
            t.as_str()
        )));
    }
    if !needs_options && !d.options.is_empty() {
        return Err(Failure::invalid(format!(
            "Property \"{}\" of type {} cannot have options.",
            d.name,
            t.as_str()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for o in &d.options {
        if o.label.trim().is_empty() || o.value.trim().is_empty() {
            return Err(Failure::invalid(format!("Property \"{}\": option labels and values must not be empty.", d.name)));
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
            (v.len() == 10).then(|| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok()).flatten().map(|z| z.timestamp().as_millisecond())
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
            let ok = if multi {
                value.split(';').all(|v| allowed.contains(&v))
            } else {
                allowed.contains(&value)
            };
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
            Some(ms) if ms.rem_euclid(86_400_000) == 0 => Ok(super::wire::iso_ms(ms)[..10].to_string()),
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
            Some(ms) => Ok(super::wire::iso_ms(ms)),
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
        assert_eq!((err.code, err.message.as_str()), ("INVALID_OPTION", "c was not one of the allowed options: [a, b]"));
        assert!(check_value(&e, "a;b", 100).is_err(), "one option for a select");
        assert!(check_value(&e.clone().with_field_type("checkbox"), "a;b", 100).is_ok());

        let d = def(PropertyType::Date);
        assert_eq!(check_value(&d, "2026-03-01", 100), Ok("2026-03-01".into()));
        assert_eq!(check_value(&d, "1430438400000", 100), Ok("2015-05-01".into()));
        let err = check_value(&d, "1430438400001", 100).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), ("INVALID_DATE", "1430438400001 is at 0:0:0.1 UTC, not midnight!"));
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
