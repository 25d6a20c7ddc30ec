//! Checks a connection's settings and secrets against its connector type's schema.
//! Errors carry the JSON pointer of the offending field and never echo a submitted value.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorCode};
use crate::schema::{ConnectorType, CredentialKind, FieldSchema, FieldType, Format};

/// Longest accepted string setting (PEM bundles and scripts fit comfortably).
pub const MAX_STRING: usize = 64 * 1024;

/// RFC 6901 escaping of one pointer segment.
pub fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn invalid(pointer: String, message: impl Into<String>) -> Error {
    Error::field(ErrorCode::InvalidSetting, pointer, message)
}

/// Non-secret settings: every key known, not secret, well-typed and in range.
pub fn validate_settings(ty: &ConnectorType, settings: &Map<String, Value>) -> Result<(), Error> {
    for (key, value) in settings {
        let pointer = format!("/settings/{}", pointer_segment(key));
        let Some(schema) = ty.settings.properties.get(key) else {
            return Err(invalid(
                pointer,
                format!("unknown setting for type {}", ty.id),
            ));
        };
        if schema.secret {
            return Err(invalid(
                pointer,
                "this field is a secret: send it in `secrets`, not `settings`",
            ));
        }
        check_value(&pointer, schema, value)?;
    }
    Ok(())
}

/// Secret field names: each must be a secret field of the type.
pub fn validate_secret_names<'a>(
    ty: &ConnectorType,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    for name in names {
        let pointer = format!("/secrets/{}", pointer_segment(name));
        match ty.settings.properties.get(name) {
            None => {
                return Err(invalid(
                    pointer,
                    format!("unknown secret field for type {}", ty.id),
                ))
            }
            Some(f) if !f.secret => {
                return Err(invalid(
                    pointer,
                    "this field is not a secret: send it in `settings`",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Secret values: strings of bounded length (checked without looking at the content).
pub fn check_secret_length(name: &str, len: usize) -> Result<(), Error> {
    if len > MAX_STRING {
        return Err(invalid(
            format!("/secrets/{}", pointer_segment(name)),
            format!("longer than {MAX_STRING} bytes"),
        ));
    }
    Ok(())
}

/// Required fields and alternative auth modes, over the connection as it will be stored.
pub fn check_required(
    ty: &ConnectorType,
    settings: &Map<String, Value>,
    secrets_set: &BTreeSet<String>,
) -> Result<(), Error> {
    let present = |f: &str| settings.contains_key(f) || secrets_set.contains(f);
    let pointer_of = |f: &str| {
        let section = if ty.is_secret(f) {
            "secrets"
        } else {
            "settings"
        };
        format!("/{section}/{}", pointer_segment(f))
    };
    if let Some(missing) = ty.settings.required.iter().find(|f| !present(f)) {
        return Err(invalid(pointer_of(missing), "required"));
    }
    let modes = &ty.settings.one_of;
    if !modes.is_empty() && !modes.iter().any(|m| m.required.iter().all(|f| present(f))) {
        let listed: Vec<String> = modes
            .iter()
            .map(|m| format!("{} ({})", m.title, m.required.join(", ")))
            .collect();
        let first_missing = modes[0]
            .required
            .iter()
            .find(|f| !present(f))
            .map(|f| pointer_of(f))
            .unwrap_or_else(|| "/settings".into());
        return Err(invalid(
            first_missing,
            format!(
                "complete one of the authentication modes: {}",
                listed.join(" | ")
            ),
        ));
    }
    Ok(())
}

/// Field values sent for a credential version, under `/secrets`: every key a field of the
/// kind, secret ones strings of bounded length (never looked at), the others well-typed.
/// `null` (clear the field) passes.
pub fn validate_credential_values(
    kind: &CredentialKind,
    values: &Map<String, Value>,
) -> Result<(), Error> {
    for (key, value) in values {
        let pointer = format!("/secrets/{}", pointer_segment(key));
        let Some(schema) = kind.fields.get(key) else {
            return Err(invalid(
                pointer,
                format!("unknown field for credential kind {}", kind.id),
            ));
        };
        match value {
            Value::Null => {}
            Value::String(s) if schema.secret && s.len() > MAX_STRING => {
                return Err(invalid(pointer, format!("longer than {MAX_STRING} bytes")))
            }
            Value::String(_) if schema.secret => {}
            _ if schema.secret => return Err(invalid(pointer, "must be a string")),
            _ => check_value(&pointer, schema, value)?,
        }
    }
    Ok(())
}

/// Every required field of the kind is among `present`.
pub fn check_credential_required<'a>(
    kind: &CredentialKind,
    present: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    let present: BTreeSet<&str> = present.into_iter().collect();
    match kind.required.iter().find(|f| !present.contains(f.as_str())) {
        Some(missing) => Err(invalid(
            format!("/secrets/{}", pointer_segment(missing)),
            "required",
        )),
        None => Ok(()),
    }
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "a string",
        FieldType::Integer => "an integer",
        FieldType::Number => "a number",
        FieldType::Boolean => "a boolean",
        FieldType::Object => "an object",
        FieldType::Array => "an array",
    }
}

fn check_value(pointer: &str, schema: &FieldSchema, value: &Value) -> Result<(), Error> {
    let wrong_type = || {
        invalid(
            pointer.to_owned(),
            format!("must be {}", type_name(schema.ty)),
        )
    };
    match schema.ty {
        FieldType::String => {
            let s = value.as_str().ok_or_else(wrong_type)?;
            if s.len() > MAX_STRING {
                return Err(invalid(
                    pointer.to_owned(),
                    format!("longer than {MAX_STRING} bytes"),
                ));
            }
            if let Some(format) = schema.format {
                check_format(pointer, format, s)?;
            }
        }
        FieldType::Integer => {
            let n = value
                .as_i64()
                .map(|n| n as f64)
                .or_else(|| value.as_u64().map(|n| n as f64))
                .ok_or_else(wrong_type)?;
            check_range(pointer, schema, n)?;
        }
        FieldType::Number => {
            let n = value.as_f64().ok_or_else(wrong_type)?;
            check_range(pointer, schema, n)?;
        }
        FieldType::Boolean => {
            value.as_bool().ok_or_else(wrong_type)?;
        }
        FieldType::Object => {
            let obj = value.as_object().ok_or_else(wrong_type)?;
            let props = schema.properties.as_ref();
            for (key, v) in obj {
                let p = format!("{pointer}/{}", pointer_segment(key));
                let Some(child) = props.and_then(|ps| ps.get(key)) else {
                    return Err(invalid(p, "unknown setting"));
                };
                check_value(&p, child, v)?;
            }
            if let Some(missing) = schema.required.iter().find(|r| !obj.contains_key(*r)) {
                return Err(invalid(
                    format!("{pointer}/{}", pointer_segment(missing)),
                    "required",
                ));
            }
        }
        FieldType::Array => {
            let items = value.as_array().ok_or_else(wrong_type)?;
            if let Some(item_schema) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    check_value(&format!("{pointer}/{i}"), item_schema, v)?;
                }
            }
        }
    }
    if let Some(allowed) = &schema.enumeration {
        if !allowed.contains(value) {
            let listed: Vec<String> = allowed
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            return Err(invalid(
                pointer.to_owned(),
                format!("must be one of: {}", listed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn check_range(pointer: &str, schema: &FieldSchema, n: f64) -> Result<(), Error> {
    if let Some(min) = schema.minimum {
        if n < min {
            return Err(invalid(
                pointer.to_owned(),
                format!("must be at least {min}"),
            ));
        }
    }
    if let Some(max) = schema.maximum {
        if n > max {
            return Err(invalid(
                pointer.to_owned(),
                format!("must be at most {max}"),
            ));
        }
    }
    Ok(())
}

fn check_format(pointer: &str, format: Format, s: &str) -> Result<(), Error> {
    let ok = match format {
        Format::Hostname => is_hostname(s),
        Format::Port => s.parse::<u16>().is_ok_and(|p| p > 0),
        Format::Uri => is_uri(s),
        Format::Email => is_email(s),
        Format::Pem | Format::Multiline => true,
    };
    if ok {
        return Ok(());
    }
    let what = match format {
        Format::Hostname => "a host name or IP address (no scheme, no port)",
        Format::Port => "a port number 1-65535",
        Format::Uri => "an absolute URI such as https://host/path",
        Format::Email => "an email address",
        Format::Pem | Format::Multiline => "text",
    };
    Err(invalid(pointer.to_owned(), format!("must be {what}")))
}

fn is_hostname(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_email(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !local.chars().any(char::is_whitespace) && is_hostname(domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pg() -> ConnectorType {
        serde_json::from_value(json!({
            "id": "postgresql", "name": "PostgreSQL", "category": "databases",
            "genericity": "specific", "description": "d", "capabilities": ["source"],
            "credential_kinds": ["username_password"], "probe": {"kind": "postgres"},
            "docs_url": null,
            "settings": {
                "type": "object",
                "required": ["host"],
                "properties": {
                    "host": {"type": "string", "title": "Host", "format": "hostname"},
                    "port": {"type": "integer", "title": "Port", "minimum": 1, "maximum": 65535},
                    "sslmode": {"type": "string", "title": "SSL", "enum": ["disable", "require"]},
                    "ratio": {"type": "number", "title": "R"},
                    "tls": {"type": "boolean", "title": "TLS"},
                    "url": {"type": "string", "title": "URL", "format": "uri"},
                    "staging": {"type": "object", "title": "Staging", "required": ["bucket"],
                        "properties": {"bucket": {"type": "string", "title": "Bucket"}}},
                    "brokers": {"type": "array", "title": "B", "items": {"type": "string", "title": "b"}},
                    "password": {"type": "string", "title": "Password", "secret": true},
                    "private_key": {"type": "string", "title": "Key", "secret": true}
                },
                "oneOf": [
                    {"title": "Password", "required": ["password"]},
                    {"title": "Key pair", "required": ["private_key"]}
                ]
            }
        }))
        .unwrap()
    }

    fn err(settings: Value) -> Error {
        validate_settings(&pg(), settings.as_object().unwrap()).unwrap_err()
    }

    #[test]
    fn well_formed_settings_pass() {
        let s = json!({"host": "db.example.org", "port": 5432, "sslmode": "require",
            "ratio": 0.5, "tls": true, "url": "https://x", "staging": {"bucket": "b"},
            "brokers": ["a:1"]});
        validate_settings(&pg(), s.as_object().unwrap()).unwrap();
    }

    #[test]
    fn each_rule_names_the_field_and_never_echoes_the_value() {
        let cases = [
            (json!({"nope": "canary-v"}), "/settings/nope"),
            (json!({"port": "canary-v"}), "/settings/port"),
            (json!({"port": 70000}), "/settings/port"),
            (json!({"port": 0}), "/settings/port"),
            (json!({"port": 1.5}), "/settings/port"),
            (json!({"sslmode": "canary-v"}), "/settings/sslmode"),
            (json!({"host": "canary v"}), "/settings/host"),
            (json!({"url": "canary-v"}), "/settings/url"),
            (json!({"tls": "canary-v"}), "/settings/tls"),
            (
                json!({"staging": {"bucket": "b", "x/y": 1}}),
                "/settings/staging/x~1y",
            ),
            (json!({"staging": {}}), "/settings/staging/bucket"),
            (json!({"brokers": ["a", 2]}), "/settings/brokers/1"),
            (json!({"password": "canary-v"}), "/settings/password"),
        ];
        for (settings, pointer) in cases {
            let e = err(settings);
            assert_eq!(e.code, ErrorCode::InvalidSetting);
            assert_eq!(e.field.as_deref(), Some(pointer));
            assert!(!e.message.contains("canary"), "{}", e.message);
        }
    }

    #[test]
    fn secrets_must_be_secret_fields() {
        let ty = pg();
        validate_secret_names(&ty, ["password"]).unwrap();
        let e = validate_secret_names(&ty, ["host"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/secrets/host"));
        let e = validate_secret_names(&ty, ["bogus"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/secrets/bogus"));
    }

    #[test]
    fn required_fields_and_auth_modes() {
        let ty = pg();
        let s = json!({"host": "h"});
        let s = s.as_object().unwrap();
        let set = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        check_required(&ty, s, &set(&["password"])).unwrap();
        check_required(&ty, s, &set(&["private_key"])).unwrap();
        let e = check_required(&ty, s, &set(&[])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/secrets/password"));
        assert!(e.message.contains("Key pair (private_key)"));
        let e = check_required(&ty, &Map::new(), &set(&["password"])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/settings/host"));
    }
}
