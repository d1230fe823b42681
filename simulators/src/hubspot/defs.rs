//! Property definitions as the public API and HubSpot's JSON name them
//! (`PropertyType`, `PropertyOption`, `PropertyDef`, `PropertyGroup`), the
//! default contact properties and groups of a fresh portal, and the
//! babynames set-up helper.

use serde::{Deserialize, Serialize};

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
pub const DEFAULTS_CREATED: &str = "2019-08-06T02:41:52.656Z";

/// The properties every read returns on top of those asked for.
pub const SYSTEM_PROPERTIES: [&str; 3] = ["hs_object_id", "createdate", "lastmodifieddate"];

/// What reads return when no `properties` are asked for.
pub const DEFAULT_READ_PROPERTIES: [&str; 6] =
    ["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"];

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

pub fn default_properties() -> Vec<PropertyDef> {
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
        PropertyDef {
            options: opts(&stages),
            ..hubspot("lifecyclestage", "Lifecycle Stage", Enumeration, "radio", -1)
        },
        PropertyDef {
            options: opts(&lead_status),
            ..hubspot("hs_lead_status", "Lead Status", Enumeration, "radio", -1)
        },
        system("hs_object_id", "Record ID", Number, "number"),
        system("createdate", "Create Date", Datetime, "date"),
        system("lastmodifieddate", "Last Modified Date", Datetime, "date"),
    ]
}

pub fn default_groups() -> Vec<PropertyGroup> {
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
    .map(|(i, (n, l))| PropertyGroup {
        name: (*n).into(),
        label: (*l).into(),
        display_order: i as i64,
        archived: false,
    })
    .collect()
}
