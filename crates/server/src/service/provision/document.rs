//! The import document (apiVersion 1), read field by field into typed entries. Errors name
//! the JSON pointer of the offending member in the document (`/connections/2/settings/port`),
//! never a value.

use std::collections::BTreeSet;

use patchbay_core::ErrorCode;
use serde_json::{Map, Value};

use crate::body::Fields;
use crate::error::{ApiError, ApiResult};

pub const API_VERSION: i64 = 1;

/// A shared credential of the document.
pub struct CredentialEntry {
    /// Pointer of the entry, e.g. `/credentials/0`.
    pub at: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    /// Non-secret (`fields`) and secret (`secrets`) values together: the kind decides which
    /// is which when they are stored.
    pub values: Map<String, Value>,
    /// Names given under `secrets`.
    pub secret_names: BTreeSet<String>,
    pub external: Option<Value>,
}

/// A connection of the document.
pub struct ConnectionEntry {
    pub at: String,
    pub name: String,
    pub type_id: String,
    pub description: String,
    pub environment: Option<String>,
    pub tags: Vec<String>,
    /// The network zone whose agents test the connection (docs/agents.md).
    pub zone: Option<String>,
    pub settings: Map<String, Value>,
    /// `credential: {name, version?}`: a shared credential.
    pub credential: Option<(String, Option<i64>)>,
    /// Inline secrets; `None` when the entry has none (the stored ones are kept).
    pub secrets: Option<Map<String, Value>>,
}

pub struct Document {
    pub credentials: Vec<CredentialEntry>,
    pub connections: Vec<ConnectionEntry>,
}

/// Prefixes the pointer of an error raised while reading or applying the entry at `at`.
pub fn at(prefix: &str, e: ApiError) -> ApiError {
    let mut e = e.0;
    e.field = Some(format!("{prefix}{}", e.field.as_deref().unwrap_or("")));
    ApiError(e)
}

fn bad(field: String, msg: &str) -> ApiError {
    ApiError::field(ErrorCode::InvalidField, field, msg)
}

/// Secret values: strings, never a value sealed to a passphrase (the reader opens those).
fn secret_map(m: Map<String, Value>, at: &str) -> ApiResult<Map<String, Value>> {
    for (k, v) in &m {
        let field = format!("{at}/{}", patchbay_core::validate::pointer_segment(k));
        match v {
            Value::String(s) if patchbay_crypto::is_sealed(s) => {
                return Err(bad(
                    field,
                    "sealed to a passphrase: import the file with --passphrase-file or PATCHBAY_EXPORT_PASSPHRASE",
                ))
            }
            Value::String(_) => {}
            _ => return Err(bad(field, "must be a string")),
        }
    }
    Ok(m)
}

fn list(doc: &mut Fields, key: &str) -> ApiResult<Vec<Map<String, Value>>> {
    match doc.take(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                _ => Err(bad(format!("/{key}/{i}"), "must be an object")),
            })
            .collect(),
        Some(_) => Err(bad(format!("/{key}"), "must be an array")),
    }
}

fn unique(seen: &mut BTreeSet<String>, name: &str, at: &str) -> ApiResult<()> {
    if seen.insert(name.to_owned()) {
        Ok(())
    } else {
        Err(ApiError::field(
            ErrorCode::NameTaken,
            format!("{at}/name"),
            "another entry of the document has this name",
        ))
    }
}

pub fn parse(doc: Map<String, Value>) -> ApiResult<Document> {
    if doc.contains_key("encryption") {
        return Err(bad(
            "/encryption".into(),
            "the document's secrets are sealed to a passphrase: open them where the file is read (patchbay import --passphrase-file)",
        ));
    }
    let mut f = Fields::new(
        doc,
        &[
            "apiVersion",
            "workspace",
            "project",
            "credentials",
            "connections",
        ],
        &[],
    )?;
    match f.take("apiVersion") {
        Some(v) if v.as_i64() == Some(API_VERSION) => {}
        Some(_) => return Err(bad("/apiVersion".into(), "must be 1")),
        None => return Err(bad("/apiVersion".into(), "required (1)")),
    }
    // Where the document came from; the target is the project of the request.
    f.optional_string("workspace")?;
    f.optional_string("project")?;
    let mut seen = BTreeSet::new();
    let mut credentials = Vec::new();
    for (i, m) in list(&mut f, "credentials")?.into_iter().enumerate() {
        let here = format!("/credentials/{i}");
        let entry = credential(m, &here).map_err(|e| at(&here, e))?;
        unique(&mut seen, &entry.name, &here)?;
        credentials.push(entry);
    }
    let mut seen = BTreeSet::new();
    let mut connections = Vec::new();
    for (i, m) in list(&mut f, "connections")?.into_iter().enumerate() {
        let here = format!("/connections/{i}");
        let entry = connection(m, &here).map_err(|e| at(&here, e))?;
        unique(&mut seen, &entry.name, &here)?;
        connections.push(entry);
    }
    Ok(Document {
        credentials,
        connections,
    })
}

fn credential(m: Map<String, Value>, here: &str) -> ApiResult<CredentialEntry> {
    let mut f = Fields::new(
        m,
        &[
            "name",
            "kind",
            "description",
            "fields",
            "secrets",
            "external",
        ],
        &[],
    )?;
    let name = f.required_string("name")?;
    patchbay_core::names::check_name("/name", &name)?;
    let kind = f.required_string("kind")?;
    let description = f.optional_string("description")?.unwrap_or_default();
    let mut values = f.optional_object("fields")?.unwrap_or_default();
    let secrets = secret_map(
        f.optional_object("secrets")?.unwrap_or_default(),
        "/secrets",
    )?;
    let secret_names = secrets.keys().cloned().collect();
    for (k, v) in secrets {
        if values.insert(k.clone(), v).is_some() {
            return Err(bad(
                format!("/secrets/{}", patchbay_core::validate::pointer_segment(&k)),
                "also given under fields",
            ));
        }
    }
    let external = f.take("external").filter(|v| !v.is_null());
    Ok(CredentialEntry {
        at: here.to_owned(),
        name,
        kind,
        description,
        values,
        secret_names,
        external,
    })
}

fn connection(m: Map<String, Value>, here: &str) -> ApiResult<ConnectionEntry> {
    let mut f = Fields::new(
        m,
        &[
            "name",
            "type",
            "description",
            "environment",
            "tags",
            "zone",
            "settings",
            "credential",
            "secrets",
        ],
        &[],
    )?;
    let name = f.required_string("name")?;
    let type_id = f.required_string("type")?;
    let description = f.optional_string("description")?.unwrap_or_default();
    let environment = f.optional_string("environment")?;
    let tags = f.optional_string_list("tags")?.unwrap_or_default();
    let zone = f.optional_string("zone")?;
    let settings =
        super::super::connections::strip_nulls(f.optional_object("settings")?.unwrap_or_default());
    let credential = match f.take("credential") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut c)) => {
            let name = match c.remove("name") {
                Some(Value::String(n)) => n,
                _ => return Err(bad("/credential/name".into(), "required (a string)")),
            };
            let version = match c.remove("version") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().filter(|n| *n >= 1).ok_or_else(|| {
                    bad("/credential/version".into(), "must be a positive integer")
                })?),
            };
            if let Some(k) = c.keys().next() {
                return Err(bad(
                    format!(
                        "/credential/{}",
                        patchbay_core::validate::pointer_segment(k)
                    ),
                    "unknown field; allowed: name, version",
                ));
            }
            Some((name, version))
        }
        Some(_) => return Err(bad("/credential".into(), "must be {name, version?}")),
    };
    let secrets = f
        .optional_object("secrets")?
        .map(|m| secret_map(m, "/secrets"))
        .transpose()?;
    if credential.is_some() && secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(bad(
            "/secrets".into(),
            "`secrets` and `credential` are alternatives: give one",
        ));
    }
    Ok(ConnectionEntry {
        at: here.to_owned(),
        name,
        type_id,
        description,
        environment,
        tags,
        zone,
        settings,
        credential,
        secrets,
    })
}
