//! Semantic checks a catalog file must pass beyond its JSON shape.

use patchbay_core::schema::{
    ConnectorType, CredentialKind, FieldSchema, FieldType, CATEGORIES,
};
use serde_json::Value;

pub const PROBE_KINDS: &[&str] = &[
    "postgres", "mysql", "sqlserver", "oracle", "clickhouse", "cassandra", "mongodb", "duckdb",
    "redis", "kafka", "amqp", "mqtt", "nats", "stomp", "pulsar", "smtp", "ftp", "sftp",
    "ssh_exec", "ldap", "snmp", "syslog", "gelf", "logback", "http", "s3", "gcs",
    "azure_blob", "athena", "snowflake", "bigquery", "kinesis", "jdbc", "tcp",
];

/// Name fragments that mark a field as secret, and names that contain one but are not.
const SECRET_HINTS: &[&str] = &[
    "password", "passphrase", "secret", "token", "api_key", "apikey", "private_key",
    "community", "auth_key", "priv_key", "sas_token", "access_key", "auth_header_value",
];
const NOT_SECRET: &[&str] = &["access_key_id", "token_url", "secret_arn", "api_key_header"];

fn looks_secret(name: &str) -> bool {
    !NOT_SECRET.contains(&name) && SECRET_HINTS.iter().any(|h| name.contains(h))
}

fn id_ok(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase() || f.is_ascii_digit())
        && id.chars().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '-' || x == '_')
}

pub(crate) fn connector(file: &str, t: &ConnectorType, kinds: &[CredentialKind]) -> Result<(), String> {
    if file != format!("{}.json", t.id) {
        return Err(format!("file name must be {}.json", t.id));
    }
    if !id_ok(&t.id) {
        return Err(format!("id {} must match [a-z0-9][a-z0-9_-]*", t.id));
    }
    if !CATEGORIES.contains(&t.category.as_str()) {
        return Err(format!("unknown category {}", t.category));
    }
    if t.name.is_empty() || t.description.is_empty() || t.capabilities.is_empty() {
        return Err("name, description and capabilities must not be empty".into());
    }
    if t.credential_kinds.is_empty() {
        return Err("credential_kinds must not be empty".into());
    }
    if let Some(k) = t.credential_kinds.iter().find(|k| !kinds.iter().any(|x| &&x.id == k)) {
        return Err(format!("unknown credential kind {k}"));
    }
    if !PROBE_KINDS.contains(&t.probe.kind.as_str()) {
        return Err(format!("unknown probe kind {}", t.probe.kind));
    }
    if t.probe.kind == "http" {
        for p in ["method", "path", "expect_status"] {
            if !t.probe.params.contains_key(p) {
                return Err(format!("http probe needs `{p}`"));
            }
        }
    }
    if let Some(u) = &t.docs_url {
        if !u.starts_with("https://") {
            return Err("docs_url must be https".into());
        }
    }
    if t.settings.ty != FieldType::Object {
        return Err("settings must be an object schema".into());
    }
    for (name, f) in t.settings.properties.iter() {
        if f.secret && f.ty != FieldType::String {
            return Err(format!("/properties/{name}: secret fields must be strings"));
        }
        field(&format!("/properties/{name}"), name, f, true)?;
    }
    let known = |r: &String| t.settings.properties.get(r).is_some();
    if let Some(r) = t.settings.required.iter().find(|r| !known(r)) {
        return Err(format!("required field {r} is not a property"));
    }
    for m in &t.settings.one_of {
        if let Some(r) = m.required.iter().find(|r| !known(r)) {
            return Err(format!("oneOf {}: field {r} is not a property", m.title));
        }
    }
    Ok(())
}

pub(crate) fn kind(file: &str, k: &CredentialKind) -> Result<(), String> {
    if file != format!("{}.json", k.id) || !id_ok(&k.id) {
        return Err(format!("id {} must match the file name and [a-z0-9_-]", k.id));
    }
    for (name, f) in k.fields.iter() {
        field(&format!("/fields/{name}"), name, f, true)?;
    }
    if let Some(r) = k.required.iter().find(|r| k.fields.get(r).is_none()) {
        return Err(format!("required field {r} is not a field"));
    }
    Ok(())
}

fn matches_type(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String => v.is_string(),
        FieldType::Integer => v.is_i64() || v.is_u64(),
        FieldType::Number => v.is_number(),
        FieldType::Boolean => v.is_boolean(),
        FieldType::Object => v.is_object(),
        FieldType::Array => v.is_array(),
    }
}

fn field(path: &str, name: &str, f: &FieldSchema, top: bool) -> Result<(), String> {
    if f.secret && !top {
        return Err(format!("{path}: only top-level properties may be secret"));
    }
    if top && looks_secret(name) && !f.secret {
        return Err(format!("{path}: looks like a secret but is not marked `secret: true`"));
    }
    if f.format.is_some() && f.ty != FieldType::String {
        return Err(format!("{path}: format applies to strings only"));
    }
    let numeric = matches!(f.ty, FieldType::Integer | FieldType::Number);
    if (f.minimum.is_some() || f.maximum.is_some()) && !numeric {
        return Err(format!("{path}: minimum/maximum apply to numbers only"));
    }
    if let (Some(a), Some(b)) = (f.minimum, f.maximum) {
        if a > b {
            return Err(format!("{path}: minimum exceeds maximum"));
        }
    }
    if let Some(e) = &f.enumeration {
        if e.is_empty() || !e.iter().all(|v| matches_type(f.ty, v)) {
            return Err(format!("{path}: enum must be non-empty and match the type"));
        }
    }
    if let Some(d) = &f.default {
        let in_range = d.as_f64().is_none_or(|n| {
            f.minimum.is_none_or(|m| n >= m) && f.maximum.is_none_or(|m| n <= m)
        });
        let in_enum = f.enumeration.as_ref().is_none_or(|e| e.contains(d));
        if !matches_type(f.ty, d) || !in_range || !in_enum {
            return Err(format!("{path}: default does not satisfy the field's own schema"));
        }
    }
    match f.ty {
        FieldType::Object => {
            let props = f
                .properties
                .as_ref()
                .ok_or_else(|| format!("{path}: object fields need properties"))?;
            for (n, child) in props.iter() {
                field(&format!("{path}/properties/{n}"), n, child, false)?;
            }
            if let Some(r) = f.required.iter().find(|r| props.get(r).is_none()) {
                return Err(format!("{path}: required {r} is not a property"));
            }
        }
        FieldType::Array => {
            let items = f.items.as_ref().ok_or_else(|| format!("{path}: array fields need items"))?;
            field(&format!("{path}/items"), name, items, false)?;
        }
        _ => {}
    }
    Ok(())
}
