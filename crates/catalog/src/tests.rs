use patchbay_core::schema::{FieldType, CATEGORIES};
use serde_json::json;

use crate::Catalog;

const SEED_001: &[&str] = &[
    "email",
    "kafka",
    "elasticsearch",
    "rabbitmq",
    "ftp",
    "graylog",
    "syslog",
    "webhook",
    "logback",
    "activemq",
    "snmp",
    "linux-script",
    "database",
    "ldap",
];
const SEED_002: &[&str] = &[
    "athena",
    "s3",
    "databricks",
    "bigquery",
    "mongodb",
    "mysql",
    "postgresql",
    "redshift",
    "snowflake",
];
const OTHERS: &[&str] = &[
    "sqlserver",
    "oracle",
    "mariadb",
    "clickhouse",
    "cassandra",
    "duckdb",
    "synapse",
    "azure-blob",
    "gcs",
    "r2",
    "minio",
    "sftp",
    "redis",
    "mqtt",
    "nats",
    "kinesis",
    "pulsar",
    "rest",
    "graphql",
    "odata",
    "salesforce",
    "github",
    "slack",
    "stripe",
    "hubspot",
    "jira",
    "zendesk",
    "shopify",
    "openai",
    "anthropic",
    "gemini",
    "azure-openai",
    "mistral",
];

fn builtin() -> &'static Catalog {
    Catalog::builtin()
}

#[test]
fn the_builtin_catalog_loads_with_enough_types_in_every_category() {
    let c = builtin();
    assert!(c.types().len() >= 55, "{} types", c.types().len());
    for cat in CATEGORIES {
        assert!(
            c.types().iter().any(|t| t.category == *cat),
            "no type in {cat}"
        );
    }
    for id in SEED_001.iter().chain(SEED_002).chain(OTHERS) {
        assert!(c.get(id).is_some(), "missing type {id}");
    }
    assert!(c.get("nope").is_none());
}

#[test]
fn types_are_sorted_by_category_then_name_and_kinds_by_id() {
    let c = builtin();
    let pos = |cat: &str| CATEGORIES.iter().position(|x| *x == cat).unwrap();
    let keys: Vec<_> = c
        .types()
        .iter()
        .map(|t| (pos(&t.category), t.name.to_lowercase()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    let ids: Vec<_> = c.credential_kinds().iter().map(|k| k.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn all_credential_kinds_exist_and_are_used() {
    let c = builtin();
    for id in [
        "username_password",
        "api_key",
        "bearer_token",
        "basic",
        "aws_access_key",
        "aws_assume_role",
        "azure_service_principal",
        "gcp_service_account",
        "oauth2",
        "ssh_key",
        "tls_client_cert",
        "kafka_sasl",
        "sap",
        "snmp_v3",
        "snmp_community",
        "none",
    ] {
        let kind = c
            .credential_kind(id)
            .unwrap_or_else(|| panic!("missing kind {id}"));
        assert!(
            c.types()
                .iter()
                .any(|t| t.credential_kinds.contains(&kind.id)),
            "{id} unused"
        );
    }
    assert!(c.credential_kind("none").unwrap().fields.is_empty());
    assert!(
        c.credential_kind("oauth2")
            .unwrap()
            .fields
            .get("client_secret")
            .unwrap()
            .secret
    );
}

#[test]
fn the_postgresql_type_matches_the_documented_example() {
    let pg = builtin().get("postgresql").unwrap();
    assert_eq!(pg.secret_fields().collect::<Vec<_>>(), ["password"]);
    assert_eq!(pg.settings.required, ["host", "database"]);
    assert_eq!(
        pg.settings.properties.get("port").unwrap().default,
        Some(json!(5432))
    );
}

#[test]
fn warehouses_stage_and_generic_apis_paginate() {
    let c = builtin();
    let warehouses: Vec<_> = c
        .types()
        .iter()
        .filter(|t| t.category == "warehouses")
        .collect();
    assert!(warehouses.len() >= 5);
    for t in warehouses {
        let staging = t.settings.properties.get("staging");
        assert!(
            staging.is_some_and(|f| f.ty == FieldType::Object),
            "{} has no staging object",
            t.id
        );
    }
    for id in ["rest", "graphql", "odata"] {
        let p = c.get(id).unwrap().settings.properties.get("pagination");
        assert!(
            p.is_some_and(|f| f.ty == FieldType::Object),
            "{id} has no pagination object"
        );
    }
    let kafka = c
        .get("kafka")
        .unwrap()
        .settings
        .properties
        .get("schema_registry");
    assert!(kafka.is_some_and(|f| f.ty == FieldType::Object));
}

#[test]
fn every_type_names_a_probe_and_http_probes_declare_auth() {
    for t in builtin().types() {
        assert!(
            crate::PROBE_KINDS.contains(&t.probe.kind.as_str()),
            "{}",
            t.id
        );
        if t.probe.kind == "http" {
            assert!(
                t.probe.params.contains_key("auth"),
                "{} http probe without auth",
                t.id
            );
            assert!(
                t.probe.params.contains_key("base_url"),
                "{} http probe without base_url",
                t.id
            );
        }
    }
}

#[test]
fn secret_names_are_secret_in_the_builtin_catalog() {
    let c = builtin();
    for (ty, field) in [
        ("snmp", "community"),
        ("snmp", "auth_key"),
        ("snmp", "priv_key"),
        ("webhook", "signing_secret"),
        ("webhook", "auth_header_value"),
        ("azure-blob", "sas_token"),
        ("azure-blob", "connection_string"),
        ("mongodb", "connection_string"),
        ("linux-script", "passphrase"),
        ("ftp", "private_key"),
        ("kafka", "schema_registry_password"),
        ("slack", "incoming_webhook_url"),
        ("anthropic", "api_key"),
    ] {
        assert!(
            c.get(ty).unwrap().is_secret(field),
            "{ty}.{field} is not secret"
        );
    }
    assert!(!c.get("s3").unwrap().is_secret("access_key_id"));
}

#[test]
fn secret_name_heuristic() {
    use crate::check::secret_marker;
    for name in [
        "password",
        "sasl_password",
        "api_key",
        "apiKey",
        "sas_token",
        "hmac_secret",
        "auth_key",
        "community",
    ] {
        assert!(secret_marker(name).is_some(), "{name}");
    }
    for name in [
        "username",
        "secret_arn",
        "oauth2_token_url",
        "access_key_id",
        "key_id",
        "sasl_mechanism",
        "host",
    ] {
        assert!(secret_marker(name).is_none(), "{name}");
    }
}
