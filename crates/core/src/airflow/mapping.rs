//! Airflow connection types ↔ patchbay connector types: which Airflow field (host, schema,
//! login, password, port, extra keys) fills which setting or secret. The table is the one
//! in docs/import-export.md; a test keeps the two in step.

use serde_json::{Map, Value};

use super::uri::AirflowConn;

/// How Airflow's `host` (and `port`) land in patchbay's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAs {
    /// `host` → this setting, `port` → `port`.
    Field(&'static str),
    /// A URL setting: `host` when it carries its protocol, else `{schema or http}://host[:port]`.
    Url(&'static str),
    /// An array setting of `host:port` strings (MongoDB `hosts`).
    HostPortList(&'static str),
    /// An array setting of host names, `port` → `port` (Cassandra `contact_points`).
    HostList(&'static str),
    /// Airflow's host is not used.
    Unused,
}

/// How an extra's string value is typed for its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// A JSON object or string, kept as JSON text (e.g. a service account key).
    JsonText,
}

/// One row of the mapping table.
#[derive(Debug)]
pub struct TypeMapping {
    pub airflow: &'static str,
    pub patchbay: &'static str,
    pub host: HostAs,
    /// The setting `port` fills (`None`: not used).
    pub port: Option<&'static str>,
    pub schema: Option<&'static str>,
    /// Setting the login fills (a setting: user names are not secret here).
    pub login: Option<&'static str>,
    /// Secret field the password fills.
    pub password: Option<&'static str>,
    /// Extra key → setting.
    pub extras: &'static [(&'static str, &'static str, Ty)],
    /// Extra key → secret field.
    pub secret_extras: &'static [(&'static str, &'static str)],
    /// Settings every imported connection of this row gets.
    pub fixed: &'static [(&'static str, &'static str)],
}

const fn row(airflow: &'static str, patchbay: &'static str, host: HostAs) -> TypeMapping {
    TypeMapping {
        airflow,
        patchbay,
        host,
        port: Some("port"),
        schema: None,
        login: Some("username"),
        password: Some("password"),
        extras: &[],
        secret_extras: &[],
        fixed: &[],
    }
}

use HostAs::*;
use Ty::*;

/// Airflow conn_type → patchbay type. First match wins on import; on export the first row
/// naming a patchbay type gives its Airflow conn_type.
pub const MAPPINGS: &[TypeMapping] = &[
    TypeMapping {
        schema: Some("database"),
        extras: &[
            ("sslmode", "sslmode", Str),
            ("sslrootcert", "ssl_root_cert", Str),
            ("connect_timeout", "connect_timeout_seconds", Int),
        ],
        ..row("postgres", "postgresql", Field("host"))
    },
    TypeMapping {
        schema: Some("database"),
        extras: &[("charset", "charset", Str)],
        ..row("mysql", "mysql", Field("host"))
    },
    TypeMapping {
        schema: Some("database"),
        ..row("mssql", "sqlserver", Field("host"))
    },
    TypeMapping {
        extras: &[("service_name", "service_name", Str), ("sid", "sid", Str)],
        ..row("oracle", "oracle", Field("host"))
    },
    TypeMapping {
        schema: Some("database"),
        extras: &[
            ("region", "region", Str),
            ("cluster_identifier", "cluster_identifier", Str),
        ],
        ..row("redshift", "redshift", Field("host"))
    },
    TypeMapping {
        extras: &[("db", "database", Int), ("ssl", "tls", Bool)],
        ..row("redis", "redis", Field("host"))
    },
    TypeMapping {
        schema: Some("schema"),
        extras: &[
            ("account", "account", Str),
            ("warehouse", "warehouse", Str),
            ("database", "database", Str),
            ("role", "role", Str),
            ("authenticator", "authenticator", Str),
        ],
        secret_extras: &[
            ("private_key_content", "private_key"),
            ("private_key_passphrase", "private_key_passphrase"),
        ],
        ..row("snowflake", "snowflake", Field("host"))
    },
    TypeMapping {
        port: None,
        login: Some("access_key_id"),
        password: Some("secret_access_key"),
        extras: &[
            ("region_name", "region", Str),
            ("role_arn", "role_arn", Str),
            ("endpoint_url", "endpoint_url", Str),
        ],
        secret_extras: &[("aws_session_token", "session_token")],
        ..row("aws", "s3", Unused)
    },
    TypeMapping {
        port: None,
        login: None,
        password: None,
        extras: &[("project", "project_id", Str)],
        secret_extras: &[("keyfile_dict", "service_account_json")],
        ..row("google_cloud_platform", "bigquery", Unused)
    },
    TypeMapping {
        extras: &[("host_key", "known_host_key", Str)],
        secret_extras: &[
            ("private_key", "private_key"),
            ("private_key_passphrase", "passphrase"),
        ],
        ..row("sftp", "sftp", Field("host"))
    },
    TypeMapping {
        extras: &[("host_key", "known_host_key", Str)],
        secret_extras: &[
            ("private_key", "private_key"),
            ("private_key_passphrase", "passphrase"),
        ],
        ..row("ssh", "linux-script", Field("host"))
    },
    TypeMapping {
        fixed: &[("protocol", "ftp")],
        ..row("ftp", "ftp", Field("host"))
    },
    TypeMapping {
        fixed: &[("protocol", "ftps")],
        ..row("ftps", "ftp", Field("host"))
    },
    TypeMapping {
        port: None,
        ..row("http", "rest", Url("base_url"))
    },
    TypeMapping {
        extras: &[("from_email", "from_address", Str)],
        ..row("smtp", "email", Field("host"))
    },
    TypeMapping {
        port: None,
        login: None,
        password: None,
        extras: &[
            ("bootstrap.servers", "bootstrap_servers", Str),
            ("group.id", "group_id", Str),
            ("client.id", "client_id", Str),
            ("security.protocol", "security_protocol", Str),
            ("sasl.mechanism", "sasl_mechanism", Str),
            ("sasl.username", "sasl_username", Str),
        ],
        secret_extras: &[("sasl.password", "sasl_password")],
        ..row("kafka", "kafka", Unused)
    },
    TypeMapping {
        port: None,
        schema: Some("database"),
        extras: &[
            ("replicaSet", "replica_set", Str),
            ("authSource", "auth_source", Str),
        ],
        ..row("mongo", "mongodb", HostPortList("hosts"))
    },
    TypeMapping {
        port: None,
        ..row("elasticsearch", "elasticsearch", Url("url"))
    },
    TypeMapping {
        schema: Some("keyspace"),
        ..row("cassandra", "cassandra", HostList("contact_points"))
    },
    TypeMapping {
        port: None,
        login: None,
        password: Some("access_token"),
        extras: &[("http_path", "http_path", Str)],
        ..row("databricks", "databricks", Url("workspace_url"))
    },
    TypeMapping {
        port: None,
        login: Some("account_name"),
        password: Some("account_key"),
        extras: &[("container", "container", Str)],
        secret_extras: &[("sas_token", "sas_token")],
        ..row("wasb", "azure-blob", Unused)
    },
    TypeMapping {
        port: None,
        extras: &[
            ("driver_class", "driver_class", Str),
            ("driver_path", "driver_jar_path", Str),
        ],
        ..row("jdbc", "database", Field("jdbc_url"))
    },
    TypeMapping {
        port: None,
        login: None,
        password: Some("bot_token"),
        ..row("slack", "slack", Unused)
    },
    TypeMapping {
        port: None,
        login: None,
        password: Some("api_key"),
        ..row("openai", "openai", Url("base_url"))
    },
];

pub fn by_airflow(conn_type: &str) -> Option<&'static TypeMapping> {
    MAPPINGS.iter().find(|m| m.airflow == conn_type)
}

pub fn by_patchbay(type_id: &str) -> Option<&'static TypeMapping> {
    MAPPINGS.iter().find(|m| m.patchbay == type_id)
}

/// An Airflow connection turned into patchbay's terms. Its `Debug` names the secret fields
/// and the unmapped extras (which may be secrets) without their values.
#[derive(Default, PartialEq)]
pub struct Imported {
    pub type_id: String,
    pub settings: Map<String, Value>,
    pub secrets: Map<String, Value>,
    /// Extras the table does not name, by their key (without an `extra__<type>__` prefix):
    /// the caller keeps those that are settings of the type and reports the others.
    pub unmapped: Map<String, Value>,
}

impl std::fmt::Debug for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        f.debug_struct("Imported")
            .field("type_id", &self.type_id)
            .field("settings", &self.settings)
            .field("secrets", &keys(&self.secrets))
            .field("unmapped", &keys(&self.unmapped))
            .finish()
    }
}

fn typed(raw: &Value, ty: Ty) -> Value {
    match (raw, ty) {
        (Value::String(s), Int) => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| raw.clone()),
        (Value::String(s), Bool) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => raw.clone(),
        },
        (v @ (Value::Object(_) | Value::Array(_)), JsonText) => Value::String(v.to_string()),
        (v, _) => v.clone(),
    }
}

fn secret_text(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        other => Value::String(other.to_string()),
    }
}

/// Maps an Airflow connection onto the patchbay type of its conn_type; `None` when the
/// table has no row for it.
pub fn import(c: &AirflowConn) -> Option<Imported> {
    let m = by_airflow(&c.conn_type)?;
    let mut out = Imported {
        type_id: m.patchbay.to_owned(),
        ..Default::default()
    };
    let host = c.host.as_deref().filter(|h| !h.is_empty());
    match (m.host, host) {
        (Field(f), Some(h)) => {
            out.settings.insert(f.into(), Value::String(h.into()));
        }
        (Url(f), Some(h)) => {
            let url = if h.contains("://") {
                match c.port {
                    Some(p) if p != 0 => format!("{h}:{p}"),
                    _ => h.to_owned(),
                }
            } else {
                let scheme = c
                    .schema
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("http");
                match c.port {
                    Some(p) if p != 0 => format!("{scheme}://{h}:{p}"),
                    _ => format!("{scheme}://{h}"),
                }
            };
            out.settings.insert(f.into(), Value::String(url));
        }
        (HostPortList(f), Some(h)) => {
            let hp = match c.port {
                Some(p) if p != 0 => format!("{h}:{p}"),
                _ => h.to_owned(),
            };
            out.settings.insert(f.into(), Value::from(vec![hp]));
        }
        (HostList(f), Some(h)) => {
            out.settings
                .insert(f.into(), Value::from(vec![h.to_owned()]));
        }
        _ => {}
    }
    if let (Some(f), Some(p)) = (m.port, c.port.filter(|p| *p != 0)) {
        out.settings.insert(f.into(), Value::from(p));
    }
    if let (Some(f), Some(s)) = (m.schema, c.schema.as_deref().filter(|s| !s.is_empty())) {
        out.settings.insert(f.into(), Value::String(s.into()));
    }
    if let (Some(f), Some(l)) = (m.login, c.login.as_deref().filter(|l| !l.is_empty())) {
        out.settings.insert(f.into(), Value::String(l.into()));
    }
    if let (Some(f), Some(p)) = (m.password, c.password.as_deref().filter(|p| !p.is_empty())) {
        out.secrets.insert(f.into(), Value::String(p.into()));
    }
    let prefix = format!("extra__{}__", c.conn_type);
    for (k, v) in c.extra_object() {
        let key = k.strip_prefix(&prefix).unwrap_or(&k).to_owned();
        if let Some((_, to, ty)) = m.extras.iter().find(|(from, _, _)| *from == key) {
            out.settings.insert((*to).into(), typed(&v, *ty));
        } else if let Some((_, to)) = m.secret_extras.iter().find(|(from, _)| *from == key) {
            out.secrets.insert((*to).into(), secret_text(&v));
        } else {
            out.unmapped.insert(key, v);
        }
    }
    for (k, v) in m.fixed {
        out.settings.insert((*k).into(), Value::String((*v).into()));
    }
    if m.airflow == "http" && (c.login.is_some() || c.password.is_some()) {
        out.settings
            .insert("auth_type".into(), Value::String("basic".into()));
    }
    Some(out)
}

fn string_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A patchbay connection as an Airflow connection. Types without a row export under their
/// own id (`-` as `_`) with every setting as an extra. Settings the row does not name
/// become extras under their own names, so nothing is lost on the way back.
pub fn export(
    type_id: &str,
    settings: &Map<String, Value>,
    secrets: &Map<String, Value>,
    description: &str,
) -> AirflowConn {
    let mut used: Vec<&str> = Vec::new();
    let mut c = AirflowConn {
        conn_type: type_id.replace('-', "_"),
        description: (!description.is_empty()).then(|| description.to_owned()),
        ..Default::default()
    };
    let mut extra = Map::new();
    if let Some(m) = by_patchbay(type_id) {
        c.conn_type = m.airflow.to_owned();
        let get = |f: &str| settings.get(f);
        match m.host {
            Field(f) => {
                c.host = get(f).map(string_of);
                used.push(f);
            }
            Url(f) => {
                c.host = get(f).map(string_of);
                used.push(f);
            }
            HostPortList(f) | HostList(f) => {
                if let Some(first) = get(f).and_then(|v| v.as_array()).and_then(|a| a.first()) {
                    let s = string_of(first);
                    match (m.host, s.rsplit_once(':')) {
                        (HostPortList(_), Some((h, p))) if p.parse::<u16>().is_ok() => {
                            c.host = Some(h.to_owned());
                            c.port = p.parse().ok();
                        }
                        _ => c.host = Some(s),
                    }
                }
                // Further hosts travel as an extra.
                if get(f)
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| a.len() > 1)
                {
                    extra.insert(f.into(), get(f).cloned().unwrap_or_default());
                }
                used.push(f);
            }
            Unused => {}
        }
        if let Some(f) = m.port {
            c.port = get(f)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok());
            used.push(f);
        }
        if let Some(f) = m.schema {
            c.schema = get(f).map(string_of);
            used.push(f);
        }
        if let Some(f) = m.login {
            c.login = get(f).map(string_of);
            used.push(f);
        }
        if let Some(f) = m.password {
            c.password = secrets.get(f).map(string_of);
        }
        for (from, to, _) in m.extras {
            if let Some(v) = get(to) {
                extra.insert((*from).into(), Value::String(string_of(v)));
                used.push(to);
            }
        }
        for (from, to) in m.secret_extras {
            if let Some(v) = secrets.get(*to) {
                extra.insert((*from).into(), Value::String(string_of(v)));
            }
        }
        for (k, _) in m.fixed {
            used.push(k);
        }
        // Import infers `basic` from a login or password; any other scheme must travel.
        if m.airflow == "http"
            && settings.get("auth_type").and_then(Value::as_str) == Some("basic")
            && (c.login.is_some() || c.password.is_some())
        {
            used.push("auth_type");
        }
    }
    for (k, v) in settings {
        if !used.contains(&k.as_str()) && !extra.contains_key(k) {
            extra.insert(k.clone(), v.clone());
        }
    }
    // Secrets the row does not name (a bearer token, an API key) travel as extras under
    // their own names too, as the import reads them back; none is dropped.
    let named: Vec<&str> = by_patchbay(type_id)
        .map(|m| {
            m.password
                .into_iter()
                .chain(m.secret_extras.iter().map(|(_, to)| *to))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in secrets {
        if !named.contains(&k.as_str()) && !extra.contains_key(k) {
            extra.insert(k.clone(), Value::String(string_of(v)));
        }
    }
    if !extra.is_empty() {
        c.extra = Some(Value::Object(extra).to_string());
    }
    c
}
