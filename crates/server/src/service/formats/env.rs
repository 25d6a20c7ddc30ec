//! `env`: environment variables, the product's own where it has a convention (libpq's PG*,
//! the mysql client's MYSQL_*, the AWS SDKs' AWS_*, SnowSQL's SNOWSQL_*, …), plus always the
//! generic `PATCHBAY_<NAME>_<FIELD>` for every setting and secret.

use super::{scalar, uri, Input};

pub struct Var {
    pub name: String,
    pub value: String,
    pub secret: bool,
}

/// `PATCHBAY_<NAME>_`: the connection name upper-cased, every non-alphanumeric as `_`.
pub fn generic_prefix(name: &str) -> String {
    format!("PATCHBAY_{}_", upper_ident(name))
}

fn upper_ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Every variable, product convention first, then the generic ones, names unique.
pub fn variables(input: &Input<'_>) -> Vec<Var> {
    let mut vars: Vec<Var> = Vec::new();
    let mut put = |name: &str, value: Option<String>, secret: bool| {
        if let Some(value) = value {
            if !vars.iter().any(|v| v.name == name) {
                vars.push(Var {
                    name: name.to_owned(),
                    value,
                    secret,
                });
            }
        }
    };
    let s = |k: &str| input.setting(k);
    let secret = |k: &str| input.secret(k).map(str::to_owned);
    match input.ty.id.as_str() {
        "postgresql" | "redshift" => {
            put("PGHOST", s("host"), false);
            put("PGPORT", s("port"), false);
            put("PGDATABASE", s("database"), false);
            put("PGUSER", s("username"), false);
            put("PGPASSWORD", secret("password"), true);
            put("PGSSLMODE", s("sslmode"), false);
            put("PGCONNECT_TIMEOUT", s("connect_timeout_seconds"), false);
            put("DATABASE_URL", Some(uri::uri(input)), true);
        }
        "mysql" | "mariadb" => {
            put("MYSQL_HOST", s("host"), false);
            put("MYSQL_TCP_PORT", s("port").or(Some("3306".into())), false);
            put("MYSQL_PWD", secret("password"), true);
            put("MYSQL_USER", s("username"), false);
            put("MYSQL_DATABASE", s("database"), false);
            put("DATABASE_URL", Some(uri::uri(input)), true);
        }
        "sqlserver" | "synapse" => {
            put("MSSQL_HOST", s("host"), false);
            put("MSSQL_PORT", s("port"), false);
            put("MSSQL_DATABASE", s("database"), false);
            put("SQLCMDSERVER", s("host"), false);
            put("SQLCMDDBNAME", s("database"), false);
            put("SQLCMDUSER", s("username"), false);
            put("SQLCMDPASSWORD", secret("password"), true);
        }
        "redis" => put("REDIS_URL", Some(uri::uri(input)), true),
        "rabbitmq" => put("AMQP_URL", Some(uri::uri(input)), true),
        "mongodb" => put("MONGODB_URI", Some(uri::uri(input)), true),
        "clickhouse" => {
            put("CLICKHOUSE_HOST", s("host"), false);
            put("CLICKHOUSE_PORT", s("port"), false);
            put("CLICKHOUSE_USER", s("username"), false);
            put("CLICKHOUSE_PASSWORD", secret("password"), true);
            put("CLICKHOUSE_DATABASE", s("database"), false);
        }
        "snowflake" => {
            put("SNOWSQL_ACCOUNT", s("account"), false);
            put("SNOWSQL_USER", s("username"), false);
            put("SNOWSQL_PWD", secret("password"), true);
            put("SNOWSQL_DATABASE", s("database"), false);
            put("SNOWSQL_SCHEMA", s("schema"), false);
            put("SNOWSQL_WAREHOUSE", s("warehouse"), false);
            put("SNOWSQL_ROLE", s("role"), false);
            put("SNOWSQL_HOST", s("host"), false);
            put("SNOWSQL_PORT", s("port"), false);
            put(
                "SNOWSQL_PRIVATE_KEY_PASSPHRASE",
                secret("private_key_passphrase"),
                true,
            );
        }
        "s3" | "minio" | "r2" | "athena" | "kinesis" => {
            put("AWS_ACCESS_KEY_ID", s("access_key_id"), false);
            put("AWS_SECRET_ACCESS_KEY", secret("secret_access_key"), true);
            put("AWS_SESSION_TOKEN", secret("session_token"), true);
            let region = if input.ty.id == "r2" {
                Some("auto".to_owned())
            } else {
                s("region")
            };
            put("AWS_REGION", region.clone(), false);
            put("AWS_DEFAULT_REGION", region, false);
            let endpoint = match input.ty.id.as_str() {
                "r2" => s("account_id").map(|a| format!("https://{a}.r2.cloudflarestorage.com")),
                _ => s("endpoint_url"),
            };
            put("AWS_ENDPOINT_URL", endpoint, false);
            put("AWS_ROLE_ARN", s("role_arn"), false);
        }
        "kafka" => {
            put(
                "KAFKA_BOOTSTRAP_SERVERS",
                Some(input.list("bootstrap_servers").join(",")),
                false,
            );
            put("KAFKA_SECURITY_PROTOCOL", s("security_protocol"), false);
            put("KAFKA_SASL_MECHANISM", s("sasl_mechanism"), false);
            put("KAFKA_SASL_USERNAME", s("sasl_username"), false);
            put("KAFKA_SASL_PASSWORD", secret("sasl_password"), true);
        }
        "email" => {
            put("SMTP_HOST", s("host"), false);
            put("SMTP_PORT", s("port"), false);
            put("SMTP_USERNAME", s("username"), false);
            put("SMTP_PASSWORD", secret("password"), true);
            put("SMTP_FROM", s("from_address"), false);
        }
        "nats" => {
            put("NATS_URL", Some(input.list("servers").join(",")), false);
            put("NATS_USER", s("username"), false);
            put("NATS_PASSWORD", secret("password"), true);
            put("NATS_TOKEN", secret("token"), true);
        }
        "openai" => put("OPENAI_API_KEY", secret("api_key"), true),
        "anthropic" => put("ANTHROPIC_API_KEY", secret("api_key"), true),
        "mistral" => put("MISTRAL_API_KEY", secret("api_key"), true),
        "cohere" => put("CO_API_KEY", secret("api_key"), true),
        "gemini" => put("GEMINI_API_KEY", secret("api_key"), true),
        "github" => put("GITHUB_TOKEN", secret("token"), true),
        "gitlab" => put("GITLAB_TOKEN", secret("token"), true),
        "databricks" => {
            put("DATABRICKS_HOST", s("workspace_url"), false);
            put("DATABRICKS_TOKEN", secret("access_token"), true);
        }
        _ => {}
    }
    let prefix = generic_prefix(input.name);
    for (key, value) in input.settings {
        put(
            &format!("{prefix}{}", upper_ident(key)),
            scalar(value),
            input.ty.is_secret(key),
        );
    }
    for (key, value) in input.secrets {
        put(
            &format!("{prefix}{}", upper_ident(key)),
            Some(value.expose_secret().to_owned()),
            true,
        );
    }
    vars
}
