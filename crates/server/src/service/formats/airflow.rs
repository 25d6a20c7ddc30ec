//! `airflow_uri`: Airflow's connection URI (`AIRFLOW_CONN_<ID>`), formatted as Airflow's own
//! `Connection.get_uri` does: `conn-type://login:password@host:port/schema?extra`, login,
//! password, host and schema `quote(…, safe="")`, a host holding `scheme://` kept as a
//! protocol prefix, extra as `urlencode` when every value is a string, else as one
//! `__extra__` JSON parameter.
//!
//! A small formatter of our own (the import/export work has a parser and formatter too; the
//! two are meant to be unified).

use serde_json::{Map, Value};

use super::{pct, Input};

pub struct AirflowConnection {
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub schema: Option<String>,
    pub port: Option<String>,
    pub extra: Map<String, Value>,
}

/// Our connector type → Airflow's conn type (the provider's hook); others keep our id.
fn conn_type(type_id: &str) -> &str {
    match type_id {
        "postgresql" => "postgres",
        "mysql" | "mariadb" => "mysql",
        "sqlserver" | "synapse" => "mssql",
        "mongodb" => "mongo",
        "s3" | "minio" | "r2" | "athena" | "kinesis" => "aws",
        "rest" | "graphql" | "odata" => "http",
        "email" => "smtp",
        "linux-script" => "ssh",
        "bigquery" | "gcs" => "google_cloud_platform",
        "azure-blob" => "wasb",
        "rabbitmq" => "amqp",
        other => other,
    }
}

/// Settings that become Airflow's host/login/schema/port (the rest goes to extra).
fn mapped(
    type_id: &str,
) -> (
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static str,
) {
    // (host keys, login key, schema key, password key)
    match type_id {
        "s3" | "minio" | "r2" | "athena" | "kinesis" => {
            (&[], "access_key_id", "", "secret_access_key")
        }
        "rest" => (&["base_url"], "username", "", "password"),
        "graphql" => (&["endpoint_url"], "username", "", "password"),
        "odata" => (&["service_root_url"], "username", "", "password"),
        "elasticsearch" | "prometheus" => (&["url"], "username", "", "password"),
        "snowflake" => (&[], "username", "schema", "password"),
        "mongodb" => (&["hosts"], "username", "database", "password"),
        _ => (&["host"], "username", "database", "password"),
    }
}

pub fn connection(input: &Input<'_>) -> AirflowConnection {
    let id = input.ty.id.as_str();
    let (host_keys, login_key, schema_key, password_key) = mapped(id);
    let mut used: Vec<&str> = vec![login_key, schema_key, password_key, "port"];
    used.extend_from_slice(host_keys);
    let host = host_keys.iter().find_map(|k| match input.settings.get(*k) {
        // Several hosts (mongodb): the first; Airflow's mongo hook takes one host.
        Some(Value::Array(_)) => input.list(k).into_iter().next(),
        _ => input.setting(k),
    });
    let mut extra = Map::new();
    for (k, v) in input.settings {
        if !used.contains(&k.as_str()) && !v.is_null() {
            extra.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in input.secrets {
        if !used.contains(&k.as_str()) {
            extra.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
        }
    }
    // Airflow's hooks read a few extras by their own names.
    match id {
        "s3" | "minio" | "athena" | "kinesis" => {
            if let Some(r) = extra.remove("region") {
                extra.insert("region_name".into(), r);
            }
        }
        "r2" => {
            extra.insert("region_name".into(), Value::String("auto".into()));
            if let Some(Value::String(a)) = extra.get("account_id").cloned() {
                extra.insert(
                    "endpoint_url".into(),
                    Value::String(format!("https://{a}.r2.cloudflarestorage.com")),
                );
            }
        }
        _ => {}
    }
    if conn_type(id) == "aws" {
        if let Some(t) = extra.remove("session_token") {
            extra.insert("aws_session_token".into(), t);
        }
    }
    AirflowConnection {
        conn_type: conn_type(id).to_owned(),
        host,
        login: (!login_key.is_empty())
            .then(|| input.setting(login_key))
            .flatten(),
        password: input.secret(password_key).map(str::to_owned),
        schema: (!schema_key.is_empty())
            .then(|| input.setting(schema_key))
            .flatten(),
        port: input.settings.get("port").and_then(super::scalar),
        extra,
    }
}

impl AirflowConnection {
    /// Airflow's `Connection.get_uri`.
    pub fn uri(&self) -> String {
        let mut uri = format!("{}://", self.conn_type.to_lowercase().replace('_', "-"));
        let (protocol, host) = match &self.host {
            Some(h) if h.contains("://") => {
                let (p, rest) = h.split_once("://").expect("contains ://");
                (Some(p.to_owned()), Some(rest.to_owned()))
            }
            other => (None, other.clone()),
        };
        if let Some(p) = protocol {
            uri.push_str(&format!("{p}://"));
        }
        let mut authority = String::new();
        if let Some(l) = &self.login {
            authority.push_str(&pct(l));
        }
        if let Some(p) = &self.password {
            authority.push(':');
            authority.push_str(&pct(p));
        }
        if !authority.is_empty() {
            authority.push('@');
            uri.push_str(&authority);
        }
        let mut host_block = host.map(|h| pct(&h)).unwrap_or_default();
        if let Some(port) = &self.port {
            if host_block.is_empty() && authority.is_empty() {
                host_block.push_str(&format!("@:{port}"));
            } else {
                host_block.push_str(&format!(":{port}"));
            }
        }
        if let Some(s) = &self.schema {
            host_block.push_str(&format!("/{}", pct(s)));
        }
        uri.push_str(&host_block);
        if !self.extra.is_empty() {
            let sep = if self.schema.is_some() { "?" } else { "/?" };
            let all_strings = self.extra.values().all(Value::is_string);
            let query = if all_strings {
                self.extra
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            quote_plus(k),
                            quote_plus(v.as_str().unwrap_or_default())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            } else {
                format!(
                    "__extra__={}",
                    quote_plus(&py_json(&Value::Object(self.extra.clone())))
                )
            };
            uri.push_str(sep);
            uri.push_str(&query);
        }
        uri
    }
}

/// Python's `quote_plus`: unreserved characters kept, space as `+`, the rest `%XX`.
fn quote_plus(s: &str) -> String {
    pct(s).replace("%20", "+")
}

/// Python's `json.dumps` with its default separators (`", "`, `": "`) and `ensure_ascii`.
fn py_json(v: &Value) -> String {
    match v {
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        Value::String(s) => py_str(s),
        Value::Bool(true) => "true".into(),
        Value::Bool(false) => "false".into(),
        Value::Null => "null".into(),
        Value::Number(n) => n.to_string(),
    }
}

fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
