//! Load-time semantic checks of catalog files, beyond what deserialization enforces.
//! Every error names the file and the JSON pointer of the offending property.

use std::collections::BTreeMap;

use patchbay_core::schema::{
    indexmap_like::Properties, ConnectorType, CredentialKind, FieldSchema, FieldType,
    SettingsSchema, CATEGORIES,
};
use serde_json::Value;

use crate::CatalogError;

/// Protocol families a type's `probe.kind` may name.
#[rustfmt::skip]
pub const PROBE_KINDS: &[&str] = &[
    "postgres", "mysql", "sqlserver", "oracle", "clickhouse", "cassandra", "mongodb", "duckdb",
    "redis", "kafka", "amqp", "mqtt", "nats", "stomp", "pulsar", "smtp", "ftp", "sftp",
    "ssh_exec", "ldap", "snmp", "syslog", "gelf", "logback", "http", "s3", "gcs", "azure_blob",
    "athena", "snowflake", "bigquery", "kinesis", "jdbc", "tcp",
];

/// What a connector type can be used for.
#[rustfmt::skip]
pub const CAPABILITIES: &[&str] = &[
    "source", "destination", "http", "notify", "execute", "storage", "stream", "lookup", "log",
];

/// Form groups a field may be placed in.
#[rustfmt::skip]
pub const GROUPS: &[&str] = &[
    "connection", "authentication", "tls", "staging", "pagination", "schema_registry", "message",
    "execution", "advanced",
];

/// HTTP methods an `http` probe may use.
const PROBE_METHODS: &[&str] = &["GET", "HEAD", "POST", "OPTIONS"];

/// Name fragments that mark a field as secret-bearing.
#[rustfmt::skip]
const SECRET_MARKERS: &[&str] = &[
    "password", "passwd", "passphrase", "secret", "token", "api_key", "apikey", "private_key",
    "community", "auth_key", "priv_key", "access_key", "account_key", "connection_string",
    "service_account_json", "credentials_json",
];

/// Markers that only count as a whole `_`-separated word (`sas_token`, not `sasl_mechanism`).
const SECRET_WORDS: &[&str] = &["sas"];

/// Names (or name suffixes after `_`) that contain a marker but are not secrets.
const NOT_SECRET: &[&str] = &[
    "secret_arn",
    "token_url",
    "access_key_id",
    "key_id",
    "username",
];

pub(crate) fn error(file: &str, pointer: &str, message: impl Into<String>) -> CatalogError {
    let message = message.into();
    CatalogError {
        file: file.to_owned(),
        message: if pointer.is_empty() {
            message
        } else {
            format!("{pointer}: {message}")
        },
    }
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn fail(&self, pointer: &str, message: impl Into<String>) -> Result<(), CatalogError> {
        Err(error(self.file, pointer, message))
    }

    fn ensure(
        &self,
        ok: bool,
        pointer: &str,
        message: impl Into<String>,
    ) -> Result<(), CatalogError> {
        if ok {
            Ok(())
        } else {
            self.fail(pointer, message)
        }
    }
}

fn id_ok(id: &str, extra: char) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == extra)
}

fn list(items: &[&str]) -> String {
    items.join(", ")
}

pub(crate) fn connector_type(
    file: &str,
    ty: &ConnectorType,
    kinds: &BTreeMap<&str, &CredentialKind>,
) -> Result<(), CatalogError> {
    let cx = Ctx { file };
    cx.ensure(
        id_ok(&ty.id, '-'),
        "/id",
        format!("`{}` must match ^[a-z0-9][a-z0-9-]*$", ty.id),
    )?;
    cx.ensure(
        file == format!("{}.json", ty.id),
        "/id",
        format!("file name must be `{}.json`", ty.id),
    )?;
    cx.ensure(!ty.name.trim().is_empty(), "/name", "must not be empty")?;
    cx.ensure(
        !ty.description.trim().is_empty(),
        "/description",
        "must not be empty",
    )?;
    cx.ensure(
        CATEGORIES.contains(&ty.category.as_str()),
        "/category",
        format!(
            "unknown category `{}`; expected one of {}",
            ty.category,
            list(CATEGORIES)
        ),
    )?;
    cx.ensure(
        !ty.capabilities.is_empty(),
        "/capabilities",
        "must not be empty",
    )?;
    for (i, c) in ty.capabilities.iter().enumerate() {
        let p = format!("/capabilities/{i}");
        cx.ensure(
            CAPABILITIES.contains(&c.as_str()),
            &p,
            format!(
                "unknown capability `{c}`; expected one of {}",
                list(CAPABILITIES)
            ),
        )?;
        cx.ensure(
            !ty.capabilities[..i].contains(c),
            &p,
            format!("duplicate capability `{c}`"),
        )?;
    }
    cx.ensure(
        !ty.credential_kinds.is_empty(),
        "/credential_kinds",
        "must not be empty",
    )?;
    for (i, k) in ty.credential_kinds.iter().enumerate() {
        let p = format!("/credential_kinds/{i}");
        cx.ensure(
            kinds.contains_key(k.as_str()),
            &p,
            format!("unknown credential kind `{k}`"),
        )?;
        cx.ensure(
            !ty.credential_kinds[..i].contains(k),
            &p,
            format!("duplicate credential kind `{k}`"),
        )?;
    }
    if let Some(url) = &ty.docs_url {
        cx.ensure(
            url.starts_with("https://") && url.len() > 8,
            "/docs_url",
            "must be an https:// URL",
        )?;
    }
    settings(&cx, &ty.settings)?;
    credential_map(&cx, ty, kinds)?;
    probe(&cx, ty)
}

/// Kind ids whose fields fill nothing (no credentials at all).
const NO_CREDENTIAL: &str = "none";

/// `credential_map` and the fields each accepted kind fills: map keys are accepted kinds,
/// mapped kind fields exist, targets are settings properties of the same type and secrecy
/// (secrets never land in plain settings, plain values never in secrets), no kind fills one
/// field twice, and every required secret of every accepted kind fills some field (same
/// name or mapped) — else a credential of an accepted kind would leave its secret unused.
fn credential_map(
    cx: &Ctx,
    ty: &ConnectorType,
    kinds: &BTreeMap<&str, &CredentialKind>,
) -> Result<(), CatalogError> {
    for (kind_id, map) in &ty.credential_map {
        let p = format!("/credential_map/{kind_id}");
        cx.ensure(
            ty.credential_kinds.contains(kind_id),
            &p,
            format!("`{kind_id}` is not one of this type's credential_kinds"),
        )?;
        let Some(kind) = kinds.get(kind_id.as_str()) else {
            continue;
        };
        for (field, target) in map {
            let fp = format!("{p}/{field}");
            cx.ensure(
                kind.fields.get(field).is_some(),
                &fp,
                format!("credential kind `{kind_id}` has no field `{field}`"),
            )?;
            cx.ensure(
                ty.settings.properties.get(target).is_some(),
                &fp,
                format!("target `{target}` is not a settings property"),
            )?;
        }
    }
    for (i, kind_id) in ty.credential_kinds.iter().enumerate() {
        let Some(kind) = kinds.get(kind_id.as_str()) else {
            continue;
        };
        let mapped = ty.credential_map.get(kind_id);
        let mut filled: Vec<&str> = Vec::new();
        for (field, kf) in kind.fields.iter() {
            let p = if mapped.is_some_and(|m| m.contains_key(field)) {
                format!("/credential_map/{kind_id}/{field}")
            } else {
                format!("/credential_kinds/{i}")
            };
            let Some(target) = ty.credential_target(kind_id, field) else {
                cx.ensure(
                    kind_id == NO_CREDENTIAL
                        || !kf.secret
                        || !kind.required.iter().any(|r| r == field),
                    &p,
                    format!(
                        "secret field `{field}` of credential kind `{kind_id}` fills no field \
                         of this type; add a `credential_map` entry for it"
                    ),
                )?;
                continue;
            };
            let Some(tf) = ty.settings.properties.get(target) else {
                continue;
            };
            let what = format!("`{kind_id}` field `{field}` fills `{target}`");
            cx.ensure(
                !kf.secret || tf.secret,
                &p,
                format!("{what}: a secret kind field must fill a secret field"),
            )?;
            cx.ensure(
                kf.secret || !tf.secret,
                &p,
                format!("{what}: a non-secret kind field must not fill a secret field"),
            )?;
            cx.ensure(
                kf.ty == tf.ty,
                &p,
                format!(
                    "{what}: a {} cannot fill a {}",
                    type_name(kf.ty),
                    type_name(tf.ty)
                ),
            )?;
            if let (Some(from), Some(to)) = (&kf.enumeration, &tf.enumeration) {
                if let Some(v) = from.iter().find(|v| !to.contains(v)) {
                    return cx.fail(
                        &p,
                        format!("{what}: kind value {v} is not one of `{target}`'s enum values"),
                    );
                }
            }
            cx.ensure(
                !filled.contains(&target),
                &p,
                format!("{what}, which another field of `{kind_id}` already fills"),
            )?;
            filled.push(target);
        }
    }
    Ok(())
}

pub(crate) fn credential_kind(file: &str, kind: &CredentialKind) -> Result<(), CatalogError> {
    let cx = Ctx { file };
    cx.ensure(
        id_ok(&kind.id, '_'),
        "/id",
        format!("`{}` must match ^[a-z0-9][a-z0-9_]*$", kind.id),
    )?;
    cx.ensure(
        file == format!("{}.json", kind.id),
        "/id",
        format!("file name must be `{}.json`", kind.id),
    )?;
    cx.ensure(!kind.name.trim().is_empty(), "/name", "must not be empty")?;
    cx.ensure(
        !kind.description.trim().is_empty(),
        "/description",
        "must not be empty",
    )?;
    required(&cx, "/required", &kind.required, &kind.fields)?;
    for (name, f) in kind.fields.iter() {
        field(&cx, &format!("/fields/{name}"), Some(name), f, true)?;
    }
    Ok(())
}

fn settings(cx: &Ctx, s: &SettingsSchema) -> Result<(), CatalogError> {
    cx.ensure(
        s.ty == FieldType::Object,
        "/settings/type",
        "the settings root must be an object",
    )?;
    cx.ensure(
        !s.properties.is_empty(),
        "/settings/properties",
        "must not be empty",
    )?;
    required(cx, "/settings/required", &s.required, &s.properties)?;
    for (i, mode) in s.one_of.iter().enumerate() {
        let p = format!("/settings/oneOf/{i}");
        cx.ensure(
            !mode.title.trim().is_empty(),
            &format!("{p}/title"),
            "must not be empty",
        )?;
        cx.ensure(
            !mode.required.is_empty(),
            &format!("{p}/required"),
            "an auth mode must require at least one field",
        )?;
        required(cx, &format!("{p}/required"), &mode.required, &s.properties)?;
    }
    for (name, f) in s.properties.iter() {
        field(
            cx,
            &format!("/settings/properties/{name}"),
            Some(name),
            f,
            true,
        )?;
    }
    Ok(())
}

fn required(
    cx: &Ctx,
    pointer: &str,
    names: &[String],
    props: &Properties,
) -> Result<(), CatalogError> {
    for (i, r) in names.iter().enumerate() {
        let p = format!("{pointer}/{i}");
        cx.ensure(
            props.get(r).is_some(),
            &p,
            format!("`{r}` is not a property"),
        )?;
        cx.ensure(
            !names[..i].contains(r),
            &p,
            format!("`{r}` is listed twice"),
        )?;
    }
    Ok(())
}

/// The marker that makes `name` look like a secret, unless it is a known non-secret name.
pub(crate) fn secret_marker(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    if NOT_SECRET
        .iter()
        .any(|ex| name == *ex || name.ends_with(&format!("_{ex}")))
    {
        return None;
    }
    SECRET_MARKERS
        .iter()
        .find(|m| name.contains(**m))
        .or_else(|| {
            SECRET_WORDS
                .iter()
                .find(|w| name.split('_').any(|part| part == **w))
        })
        .copied()
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

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "string",
        FieldType::Integer => "integer",
        FieldType::Number => "number",
        FieldType::Boolean => "boolean",
        FieldType::Object => "object",
        FieldType::Array => "array",
    }
}

fn in_range(f: &FieldSchema, v: &Value) -> bool {
    let Some(n) = v.as_f64() else { return true };
    f.minimum.is_none_or(|m| n >= m) && f.maximum.is_none_or(|m| n <= m)
}

fn field(
    cx: &Ctx,
    p: &str,
    name: Option<&str>,
    f: &FieldSchema,
    top_level: bool,
) -> Result<(), CatalogError> {
    let tn = type_name(f.ty);
    let numeric = matches!(f.ty, FieldType::Integer | FieldType::Number);
    cx.ensure(
        !f.title.trim().is_empty(),
        &format!("{p}/title"),
        "must not be empty",
    )?;
    if f.secret {
        cx.ensure(
            top_level,
            p,
            "secret fields must be top-level properties, not nested in objects or arrays",
        )?;
        cx.ensure(
            f.ty == FieldType::String,
            p,
            format!("secret fields must be strings, not {tn}"),
        )?;
        cx.ensure(
            f.default.is_none(),
            &format!("{p}/default"),
            "secret fields cannot have a default",
        )?;
        cx.ensure(
            f.enumeration.is_none(),
            &format!("{p}/enum"),
            "secret fields cannot have an enum",
        )?;
    } else if let Some(marker) = name.and_then(secret_marker) {
        if top_level {
            return cx.fail(p, format!("name contains `{marker}`: looks like a secret but is not marked \"secret\": true"));
        }
        return cx.fail(p, format!("name contains `{marker}`: looks like a secret, but secrets must be top-level string properties marked \"secret\": true"));
    }
    if let Some(g) = &f.group {
        cx.ensure(
            GROUPS.contains(&g.as_str()),
            &format!("{p}/group"),
            format!("unknown group `{g}`; expected one of {}", list(GROUPS)),
        )?;
    }
    if f.format.is_some() {
        cx.ensure(
            f.ty == FieldType::String,
            &format!("{p}/format"),
            format!("format applies to strings only, not {tn}"),
        )?;
    }
    for (key, bound) in [("minimum", f.minimum), ("maximum", f.maximum)] {
        if bound.is_some() {
            cx.ensure(
                numeric,
                &format!("{p}/{key}"),
                format!("{key} applies to integer and number fields only, not {tn}"),
            )?;
        }
    }
    if let (Some(min), Some(max)) = (f.minimum, f.maximum) {
        cx.ensure(
            min <= max,
            &format!("{p}/minimum"),
            format!("minimum {min} is greater than maximum {max}"),
        )?;
    }
    if let Some(values) = &f.enumeration {
        let ep = format!("{p}/enum");
        cx.ensure(!values.is_empty(), &ep, "must not be empty")?;
        cx.ensure(
            numeric || f.ty == FieldType::String,
            &ep,
            format!("enum applies to string, integer and number fields only, not {tn}"),
        )?;
        for (i, v) in values.iter().enumerate() {
            let vp = format!("{ep}/{i}");
            cx.ensure(
                matches_type(f.ty, v),
                &vp,
                format!("enum value {v} is not a {tn}"),
            )?;
            cx.ensure(
                in_range(f, v),
                &vp,
                format!("enum value {v} is outside minimum/maximum"),
            )?;
            cx.ensure(
                !values[..i].contains(v),
                &vp,
                format!("enum value {v} is listed twice"),
            )?;
        }
    }
    if let Some(d) = &f.default {
        let dp = format!("{p}/default");
        cx.ensure(
            matches_type(f.ty, d),
            &dp,
            format!("default {d} is not a {tn}"),
        )?;
        if let Some(values) = &f.enumeration {
            cx.ensure(
                values.contains(d),
                &dp,
                format!("default {d} is not one of the enum values"),
            )?;
        }
        cx.ensure(
            in_range(f, d),
            &dp,
            format!("default {d} is outside minimum/maximum"),
        )?;
    }
    match (f.ty, &f.properties) {
        (FieldType::Object, None) => {
            return cx.fail(
                &format!("{p}/properties"),
                "object fields must declare properties",
            )
        }
        (FieldType::Object, Some(props)) => {
            cx.ensure(
                !props.is_empty(),
                &format!("{p}/properties"),
                "must not be empty",
            )?;
            required(cx, &format!("{p}/required"), &f.required, props)?;
            for (child, cf) in props.iter() {
                field(
                    cx,
                    &format!("{p}/properties/{child}"),
                    Some(child),
                    cf,
                    false,
                )?;
            }
        }
        (_, Some(_)) => {
            return cx.fail(
                &format!("{p}/properties"),
                format!("properties apply to object fields only, not {tn}"),
            )
        }
        (_, None) => cx.ensure(
            f.required.is_empty(),
            &format!("{p}/required"),
            format!("required applies to object fields only, not {tn}"),
        )?,
    }
    match (f.ty, &f.items) {
        (FieldType::Array, None) => {
            cx.fail(&format!("{p}/items"), "array fields must declare items")
        }
        (FieldType::Array, Some(items)) => field(cx, &format!("{p}/items"), None, items, false),
        (_, Some(_)) => cx.fail(
            &format!("{p}/items"),
            format!("items apply to array fields only, not {tn}"),
        ),
        (_, None) => Ok(()),
    }
}

/// Placeholders `{name}` in a probe template; each must name a settings property.
fn placeholders(cx: &Ctx, p: &str, template: &str, props: &Properties) -> Result<(), CatalogError> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return cx.fail(p, "unclosed `{` in template");
        };
        let name = &rest[start + 1..start + len];
        cx.ensure(
            props.get(name).is_some(),
            p,
            format!("placeholder `{{{name}}}` is not a settings property"),
        )?;
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

fn probe_auth_ok(auth: &str) -> bool {
    match auth.split_once(':') {
        Some(("header" | "query", name)) => {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        }
        Some(_) => false,
        None => ["none", "basic", "bearer", "settings"].contains(&auth),
    }
}

fn probe(cx: &Ctx, ty: &ConnectorType) -> Result<(), CatalogError> {
    let kind = ty.probe.kind.as_str();
    cx.ensure(
        PROBE_KINDS.contains(&kind),
        "/probe/kind",
        format!(
            "unknown probe kind `{kind}`; expected one of {}",
            list(PROBE_KINDS)
        ),
    )?;
    if kind != "http" {
        return Ok(());
    }
    let params = &ty.probe.params;
    let props = &ty.settings.properties;
    let method = params.get("method").and_then(Value::as_str);
    cx.ensure(
        method.is_some_and(|m| PROBE_METHODS.contains(&m)),
        "/probe/method",
        format!("http probes need a method, one of {}", list(PROBE_METHODS)),
    )?;
    let path = params.get("path").and_then(Value::as_str);
    cx.ensure(
        path.is_some_and(|s| s.is_empty() || s.starts_with('/') || s.starts_with('{')),
        "/probe/path",
        "http probes need a path: empty, starting with `/` or with a `{setting}` placeholder",
    )?;
    placeholders(cx, "/probe/path", path.unwrap_or_default(), props)?;
    let statuses = params.get("expect_status").and_then(Value::as_array);
    cx.ensure(
        statuses.is_some_and(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|c| c.as_u64().is_some_and(|c| (100..600).contains(&c)))
        }),
        "/probe/expect_status",
        "http probes need expect_status, a non-empty array of HTTP status codes",
    )?;
    if let Some(auth) = params.get("auth") {
        cx.ensure(
            auth.as_str().is_some_and(probe_auth_ok),
            "/probe/auth",
            "must be none, basic, bearer, settings, header:<name> or query:<name>",
        )?;
    }
    if let Some(ptr) = params.get("json_pointer") {
        cx.ensure(
            ptr.as_str().is_some_and(|s| s.starts_with('/')),
            "/probe/json_pointer",
            "must be a JSON pointer starting with `/`",
        )?;
    }
    if let Some(base) = params.get("base_url") {
        let base = base.as_str().unwrap_or_default();
        cx.ensure(
            base.starts_with("https://") || base.starts_with("http://") || base.starts_with('{'),
            "/probe/base_url",
            "must be an http(s) URL or start with a `{setting}` placeholder",
        )?;
        placeholders(cx, "/probe/base_url", base, props)?;
    }
    if let Some(headers) = params.get("headers") {
        let Some(headers) = headers.as_object() else {
            return cx.fail("/probe/headers", "must be an object of header values");
        };
        for (h, v) in headers {
            let hp = format!("/probe/headers/{h}");
            let Some(v) = v.as_str() else {
                return cx.fail(&hp, "header values must be strings");
            };
            placeholders(cx, &hp, v, props)?;
        }
    }
    Ok(())
}
