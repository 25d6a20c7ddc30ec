//! `uri` (the product's own connection URI, credentials percent-encoded in the userinfo) and
//! `jdbc` (a JDBC URL without credentials: user and password travel beside it, as JDBC
//! drivers take them in `Properties`, so a logged URL leaks nothing).

use super::{pct, scalar, Input};

/// The URI family of a connector type, `None` when it has no native connection URI.
pub fn uri_family(type_id: &str) -> Option<&'static str> {
    Some(match type_id {
        "postgresql" | "redshift" => "postgresql",
        "mysql" | "mariadb" => "mysql",
        "sqlserver" | "synapse" => "sqlserver",
        "clickhouse" => "clickhouse",
        "snowflake" => "snowflake",
        "redis" => "redis",
        "rabbitmq" => "amqp",
        "mongodb" => "mongodb",
        "email" => "smtp",
        "rest" | "graphql" | "odata" | "webhook" | "elasticsearch" | "prometheus" => "http",
        _ => return None,
    })
}

/// The JDBC family of a connector type, `None` when there is no JDBC driver for it.
pub fn jdbc_family(type_id: &str) -> Option<&'static str> {
    Some(match type_id {
        "postgresql" => "postgresql",
        "redshift" => "redshift",
        "mysql" => "mysql",
        "mariadb" => "mariadb",
        "sqlserver" | "synapse" => "sqlserver",
        "snowflake" => "snowflake",
        "oracle" => "oracle",
        "clickhouse" => "clickhouse",
        "database" => "database",
        _ => return None,
    })
}

/// `user:password@` (each percent-encoded), `:password@`, `user@` or nothing.
fn userinfo(user: Option<&str>, password: Option<&str>) -> String {
    match (user, password) {
        (None, None) => String::new(),
        (Some(u), None) => format!("{}@", pct(u)),
        (None, Some(p)) => format!(":{}@", pct(p)),
        (Some(u), Some(p)) => format!("{}:{}@", pct(u), pct(p)),
    }
}

/// A host for an authority: IPv6 literals in brackets.
fn host(h: &str) -> String {
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]")
    } else {
        h.to_owned()
    }
}

fn host_port(input: &Input<'_>) -> String {
    let h = host(&input.setting("host").unwrap_or_default());
    match input.setting("port") {
        Some(p) => format!("{h}:{p}"),
        None => h,
    }
}

/// A setting the user set explicitly (no catalog default).
fn explicit(input: &Input<'_>, key: &str) -> Option<String> {
    input
        .settings
        .get(key)
        .and_then(scalar)
        .filter(|s| !s.is_empty())
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", pct(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// The native URI; call only for types with a [`uri_family`].
pub fn uri(input: &Input<'_>) -> String {
    let user = input.setting("username");
    let ui = userinfo(user.as_deref(), input.secret("password"));
    let db = input.setting("database").unwrap_or_default();
    match uri_family(&input.ty.id).unwrap_or_default() {
        "postgresql" => format!(
            "postgresql://{ui}{}/{}{}",
            host_port(input),
            pct(&db),
            query(&[("sslmode", explicit(input, "sslmode"))])
        ),
        "mysql" => format!(
            "mysql://{ui}{}/{}{}",
            host_port(input),
            pct(&db),
            query(&[("ssl-mode", explicit(input, "ssl_mode"))])
        ),
        "sqlserver" => format!(
            "sqlserver://{ui}{}{}",
            host_port(input),
            query(&[("database", Some(db))])
        ),
        "clickhouse" => {
            let secure = matches!(
                input.setting("protocol").as_deref(),
                Some("https" | "native_tls")
            );
            format!(
                "clickhouse://{ui}{}/{}{}",
                host_port(input),
                pct(&db),
                query(&[("secure", secure.then(|| "true".to_owned()))])
            )
        }
        "snowflake" => {
            let mut path = format!("/{}", pct(&db));
            if let Some(schema) = input.setting("schema") {
                path.push_str(&format!("/{}", pct(&schema)));
            }
            format!(
                "snowflake://{ui}{}{}{}",
                pct(&input.setting("account").unwrap_or_default()),
                if db.is_empty() { "" } else { &path },
                query(&[
                    ("warehouse", input.setting("warehouse")),
                    ("role", input.setting("role")),
                ])
            )
        }
        "redis" => {
            let scheme = if input.flag("tls") { "rediss" } else { "redis" };
            format!(
                "{scheme}://{ui}{}/{}",
                host_port(input),
                input.setting("database").unwrap_or_else(|| "0".into())
            )
        }
        "amqp" => {
            let scheme = if input.flag("tls") { "amqps" } else { "amqp" };
            format!(
                "{scheme}://{ui}{}/{}",
                host_port(input),
                pct(&input.setting("virtual_host").unwrap_or_else(|| "/".into()))
            )
        }
        "mongodb" => {
            if let Some(cs) = input.secret("connection_string") {
                return cs.to_owned();
            }
            let hosts = input.list("hosts").join(",");
            format!(
                "mongodb://{ui}{hosts}/{}{}",
                pct(&db),
                query(&[
                    ("replicaSet", input.setting("replica_set")),
                    ("authSource", input.setting("auth_source")),
                    ("authMechanism", explicit(input, "auth_mechanism")),
                    ("tls", input.flag("tls").then(|| "true".to_owned())),
                ])
            )
        }
        "smtp" => {
            let scheme = if input.setting("security").as_deref() == Some("tls") {
                "smtps"
            } else {
                "smtp"
            };
            format!("{scheme}://{ui}{}", host_port(input))
        }
        // HTTP APIs: the base URL; credentials stay out of it (userinfo in http URLs is
        // deprecated and ignored by most clients): use `json` or `env` for them.
        "http" => ["base_url", "endpoint_url", "service_root_url", "url"]
            .iter()
            .find_map(|k| input.setting(k))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

pub struct Jdbc {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub properties: Vec<(String, String)>,
}

/// The JDBC URL (no credentials in it) with user and password beside it; call only for
/// types with a [`jdbc_family`].
pub fn jdbc(input: &Input<'_>) -> Jdbc {
    let db = input.setting("database").unwrap_or_default();
    let hp = host_port(input);
    let url = match jdbc_family(&input.ty.id).unwrap_or_default() {
        "postgresql" => format!(
            "jdbc:postgresql://{hp}/{}{}",
            pct(&db),
            query(&[("sslmode", explicit(input, "sslmode"))])
        ),
        "redshift" => format!("jdbc:redshift://{hp}/{}", pct(&db)),
        "mysql" => format!(
            "jdbc:mysql://{hp}/{}{}",
            pct(&db),
            query(&[("sslMode", explicit(input, "ssl_mode"))])
        ),
        "mariadb" => format!("jdbc:mariadb://{hp}/{}", pct(&db)),
        "sqlserver" => {
            let mut url = format!("jdbc:sqlserver://{hp};databaseName={db}");
            let encrypt = match input.setting("encrypt").as_deref() {
                Some("optional") => Some("false"),
                Some("mandatory") => Some("true"),
                Some("strict") => Some("strict"),
                _ => None,
            };
            if let Some(e) = encrypt {
                url.push_str(&format!(";encrypt={e}"));
            }
            if input.flag("trust_server_certificate") {
                url.push_str(";trustServerCertificate=true");
            }
            url
        }
        "snowflake" => {
            let host = input.setting("host").unwrap_or_else(|| {
                format!(
                    "{}.snowflakecomputing.com",
                    input.setting("account").unwrap_or_default()
                )
            });
            let host = match explicit(input, "port") {
                Some(p) => format!("{host}:{p}"),
                None => host,
            };
            let q = query(&[
                ("db", Some(db).filter(|d| !d.is_empty())),
                ("schema", input.setting("schema")),
                ("warehouse", input.setting("warehouse")),
                ("role", input.setting("role")),
            ]);
            format!("jdbc:snowflake://{host}/{q}")
        }
        "oracle" => {
            if let Some(d) = input.setting("connect_descriptor") {
                format!("jdbc:oracle:thin:@{d}")
            } else if input.setting("connection_type").as_deref() == Some("sid") {
                format!(
                    "jdbc:oracle:thin:@{hp}:{}",
                    input.setting("sid").unwrap_or_default()
                )
            } else {
                format!(
                    "jdbc:oracle:thin:@//{hp}/{}",
                    input.setting("service_name").unwrap_or_default()
                )
            }
        }
        "clickhouse" => {
            let secure = matches!(
                input.setting("protocol").as_deref(),
                Some("https" | "native_tls")
            );
            format!(
                "jdbc:clickhouse://{hp}/{}{}",
                pct(&db),
                query(&[("ssl", secure.then(|| "true".to_owned()))])
            )
        }
        "database" => input.setting("jdbc_url").unwrap_or_default(),
        _ => String::new(),
    };
    let mut properties = vec![];
    if input.ty.id == "database" {
        if let Some(serde_json::Value::Object(props)) = input.settings.get("connection_properties")
        {
            for (k, v) in props {
                if let Some(v) = scalar(v) {
                    properties.push((k.clone(), v));
                }
            }
        }
    }
    Jdbc {
        url,
        user: input.setting("username"),
        password: input.secret("password").map(str::to_owned),
        properties,
    }
}
