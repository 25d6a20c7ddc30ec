//! The connector catalog's data model: connector types, their settings schema (a JSON-Schema
//! subset) and credential kinds. Catalog files deserialize straight into these types; the
//! `patchbay-catalog` crate embeds and indexes them, `crate::validate` checks settings
//! against them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The categories of seed 000, in the order the catalog lists them.
pub const CATEGORIES: &[&str] = &[
    "databases",
    "warehouses",
    "cloud_storage",
    "streaming",
    "apis_webhooks",
    "notifications",
    "logging_monitoring",
    "directory",
    "remote_execution",
    "saas",
    "ai_providers",
];

/// One entry of the connector catalog: how to reach one kind of external system.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorType {
    /// Stable identifier used in connection bodies (`"type": "postgresql"`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// One of [`CATEGORIES`].
    pub category: String,
    /// `generic` (any server speaking a protocol) or `specific` (one product or vendor).
    pub genericity: Genericity,
    pub description: String,
    /// What the connector can be used for: source, destination, http, notify, execute, …
    pub capabilities: Vec<String>,
    /// Credential kinds (ids of `catalog/credential-kinds/*.json`) this type accepts.
    pub credential_kinds: Vec<String>,
    /// How "Test connection" checks it (probes arrive with the test-connection work).
    pub probe: ProbeSpec,
    /// How its probe is tested: against a real server of the product here (`verified`),
    /// against a local responder that follows the vendor's documented protocol or API
    /// because no server can run here (`contract`), or not yet (`untested`).
    #[serde(default)]
    pub verification: Verification,
    pub docs_url: Option<String>,
    pub settings: SettingsSchema,
    /// Per accepted credential kind, where the names differ: kind field → the field of this
    /// type it fills (e.g. `{"api_key": {"key": "api_key"}}`). A kind field not listed fills
    /// the field of the same name, if the type has one.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub credential_map:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    Verified,
    Contract,
    #[default]
    Untested,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Contract => "contract",
            Self::Untested => "untested",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Genericity {
    Generic,
    Specific,
}

/// The probe a type names. `kind` picks the protocol family; the rest are family-specific
/// parameters (for `http`: method, path, expected status, auth placement, JSON pointer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub kind: String,
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// Root of a type's settings schema: always an object with named properties.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSchema {
    #[serde(rename = "type")]
    pub ty: FieldType,
    pub properties: indexmap_like::Properties,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Alternative authentication modes: at least one mode's `required` fields must all be
    /// present (settings and secrets together). Rendered as tabs by the UI.
    #[serde(default, rename = "oneOf", skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<AuthMode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthMode {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub required: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Hostname,
    Port,
    Uri,
    Email,
    /// PEM-encoded certificate(s) or key; multi-line text.
    Pem,
    /// Multi-line free text (scripts, JSON documents).
    Multiline,
}

/// One property of a settings schema (possibly nested for `object` and `array`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSchema {
    #[serde(rename = "type")]
    pub ty: FieldType,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enumeration: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Secret fields travel in `secrets`, are encrypted at rest and masked on read. Only
    /// top-level string properties may be secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Form group (e.g. `connection`, `authentication`, `tls`, `advanced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Position inside the group in generated forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    /// For `object`: nested properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<indexmap_like::Properties>,
    /// For `object`: required nested properties.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// For `array`: the item schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<FieldSchema>>,
}

/// A credential kind: the typed secret bundle a connection's secrets can come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialKind {
    pub id: String,
    pub name: String,
    pub description: String,
    pub fields: indexmap_like::Properties,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
}

impl ConnectorType {
    /// Names of the type's secret fields, in schema order.
    pub fn secret_fields(&self) -> impl Iterator<Item = &str> {
        self.settings
            .properties
            .iter()
            .filter(|(_, f)| f.secret)
            .map(|(k, _)| k.as_str())
    }

    /// The field of this type that credential field `field` of kind `kind` fills, if any.
    pub fn credential_target<'a>(&'a self, kind: &str, field: &'a str) -> Option<&'a str> {
        if let Some(target) = self.credential_map.get(kind).and_then(|m| m.get(field)) {
            return Some(target.as_str());
        }
        self.settings.properties.get(field).map(|_| field)
    }

    pub fn is_secret(&self, field: &str) -> bool {
        self.settings
            .properties
            .get(field)
            .is_some_and(|f| f.secret)
    }
}

/// Ordered property maps: schema order is meaningful (forms render in it), so properties
/// are kept as an ordered list of `(name, schema)` while (de)serializing as a JSON object.
pub mod indexmap_like {
    use super::FieldSchema;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug, Clone, Default)]
    pub struct Properties(pub Vec<(String, FieldSchema)>);

    impl Properties {
        pub fn get(&self, name: &str) -> Option<&FieldSchema> {
            self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
        }
        pub fn iter(&self) -> impl Iterator<Item = (&String, &FieldSchema)> {
            self.0.iter().map(|(k, v)| (k, v))
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    impl Serialize for Properties {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }

    impl<'de> Deserialize<'de> for Properties {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Properties;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of property schemas")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Properties, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = a.next_entry::<String, FieldSchema>()? {
                        if out.iter().any(|(existing, _)| existing == &k) {
                            return Err(serde::de::Error::custom(format!(
                                "duplicate property `{k}`"
                            )));
                        }
                        out.push((k, v));
                    }
                    Ok(Properties(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}
