//! The shapes a resolved connection is handed out in: `json`, `env`, `uri`, `jdbc` and
//! `airflow_uri`. Pure functions of (connector type, connection name, settings, secrets) —
//! no IO, no permission check, no audit (`service::resolve` does those first).
//!
//! Each format has the product's own convention where one exists (PGHOST…, MYSQL_PWD,
//! REDIS_URL, AWS_*, SNOWSQL_*; `postgresql://`, `mysql://`, `redis(s)://`, …); docs/run-time.md
//! has the table. Secrets appear only in the values this module returns, which the handler
//! writes into a `Cache-Control: no-store` response.

mod airflow;
mod env;
mod uri;

use std::collections::BTreeMap;

use patchbay_core::schema::ConnectorType;
use patchbay_crypto::SecretString;
use serde_json::{Map, Value};

/// A resolve format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Env,
    Uri,
    Jdbc,
    AirflowUri,
}

impl Format {
    pub const ALL: &'static [Format] = &[
        Format::Json,
        Format::Env,
        Format::Uri,
        Format::Jdbc,
        Format::AirflowUri,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Env => "env",
            Format::Uri => "uri",
            Format::Jdbc => "jdbc",
            Format::AirflowUri => "airflow_uri",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.as_str() == s)
    }
}

/// What a format is rendered from.
pub struct Input<'a> {
    pub ty: &'a ConnectorType,
    /// The connection's name (for the generic `PATCHBAY_<NAME>_<FIELD>` variables).
    pub name: &'a str,
    pub settings: &'a Map<String, Value>,
    pub secrets: &'a BTreeMap<String, SecretString>,
}

impl Input<'_> {
    /// A setting as text (numbers and booleans printed), falling back to the type's
    /// catalog default; `None` when neither is set or the value is empty.
    pub(crate) fn setting(&self, key: &str) -> Option<String> {
        let v = self.settings.get(key).cloned().or_else(|| {
            self.ty
                .settings
                .properties
                .get(key)
                .and_then(|f| f.default.clone())
        })?;
        scalar(&v).filter(|s| !s.is_empty())
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        self.setting(key).as_deref() == Some("true")
    }

    pub(crate) fn secret(&self, key: &str) -> Option<&str> {
        self.secrets
            .get(key)
            .map(SecretString::expose_secret)
            .filter(|s| !s.is_empty())
    }

    /// A setting the user set (no default) as an array of strings (`hosts`, `servers`).
    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        match self.settings.get(key) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => vec![],
        }
    }
}

/// Text of a scalar JSON value; objects and arrays as compact JSON.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// Whether `format` exists for the type; `json`, `env` and `airflow_uri` exist for all.
pub fn supports(ty: &ConnectorType, format: Format) -> bool {
    match format {
        Format::Json | Format::Env | Format::AirflowUri => true,
        Format::Uri => uri::uri_family(&ty.id).is_some(),
        Format::Jdbc => uri::jdbc_family(&ty.id).is_some(),
    }
}

/// The format-specific members of a resolve answer. `json` is shaped by the caller (it is
/// the material itself); call only when [`supports`] said yes.
pub fn render(format: Format, input: &Input<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    match format {
        Format::Json => {}
        Format::Env => {
            let vars = env::variables(input);
            out.insert(
                "prefix".into(),
                Value::String(env::generic_prefix(input.name)),
            );
            out.insert(
                "secret_variables".into(),
                Value::Array(
                    vars.iter()
                        .filter(|v| v.secret)
                        .map(|v| Value::String(v.name.clone()))
                        .collect(),
                ),
            );
            out.insert(
                "env".into(),
                Value::Object(
                    vars.into_iter()
                        .map(|v| (v.name, Value::String(v.value)))
                        .collect(),
                ),
            );
        }
        Format::Uri => {
            out.insert("uri".into(), Value::String(uri::uri(input)));
        }
        Format::Jdbc => {
            let j = uri::jdbc(input);
            out.insert("jdbc_url".into(), Value::String(j.url));
            let mut props = Map::new();
            if let Some(u) = &j.user {
                out.insert("user".into(), Value::String(u.clone()));
                props.insert("user".into(), Value::String(u.clone()));
            } else {
                out.insert("user".into(), Value::Null);
            }
            if let Some(p) = &j.password {
                out.insert("password".into(), Value::String(p.clone()));
                props.insert("password".into(), Value::String(p.clone()));
            } else {
                out.insert("password".into(), Value::Null);
            }
            for (k, v) in j.properties {
                props.insert(k, Value::String(v));
            }
            out.insert("properties".into(), Value::Object(props));
        }
        Format::AirflowUri => {
            let conn = airflow::connection(input);
            out.insert("conn_type".into(), Value::String(conn.conn_type.clone()));
            out.insert("uri".into(), Value::String(conn.uri()));
        }
    }
    out
}

/// Percent-encodes everything but the unreserved characters (RFC 3986 `A-Za-z0-9-._~`), as
/// Python's `quote(s, safe="")` does; used for userinfo, path segments and query values.
pub(crate) fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
