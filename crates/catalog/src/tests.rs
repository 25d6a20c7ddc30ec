use super::*;

#[test]
fn the_builtin_catalog_loads_with_every_category_and_the_seed_types() {
    let c = Catalog::builtin();
    assert!(c.types().len() >= 45, "{} types", c.types().len());
    for cat in CATEGORIES {
        assert!(
            c.types().iter().any(|t| t.category == *cat),
            "no type in {cat}"
        );
    }
    let seed_001 = [
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
    let seed_002 = [
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
    let seed_000 = [
        "sqlserver",
        "oracle",
        "mariadb",
        "clickhouse",
        "cassandra",
        "duckdb",
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
        "openai",
        "anthropic",
        "gemini",
    ];
    for id in seed_001.iter().chain(&seed_002).chain(&seed_000) {
        assert!(c.get(id).is_some(), "missing type {id}");
    }
    for t in c.types().iter().filter(|t| t.category == "warehouses") {
        let staging = t.settings.properties.get("staging");
        assert!(
            staging.is_some_and(|s| s.ty == patchbay_core::schema::FieldType::Object),
            "{} lacks staging",
            t.id
        );
    }
    for id in ["rest", "graphql", "odata"] {
        assert!(
            c.get(id)
                .unwrap()
                .settings
                .properties
                .get("pagination")
                .is_some(),
            "{id}"
        );
    }
    let kafka = c
        .get("kafka")
        .unwrap()
        .settings
        .properties
        .get("schema_registry")
        .unwrap();
    let reg = kafka.properties.as_ref().unwrap().get("type").unwrap();
    assert_eq!(
        reg.enumeration.as_ref().unwrap().len(),
        3,
        "none, confluent, glue"
    );
    assert_eq!(
        c.get("postgresql")
            .unwrap()
            .secret_fields()
            .collect::<Vec<_>>(),
        ["password"]
    );
    assert!(c.credential_kind("kafka_sasl").is_some());
}

fn pg(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Catalog, CatalogError> {
    let mut v: serde_json::Value = serde_json::from_str(
        files::CONNECTOR_FILES
            .iter()
            .find(|(f, _)| *f == "postgresql.json")
            .unwrap()
            .1,
    )
    .unwrap();
    edit(&mut v);
    let text = v.to_string();
    Catalog::from_files(&[("postgresql.json", &text)], files::CREDENTIAL_KIND_FILES)
}

fn rejected(edit: impl FnOnce(&mut serde_json::Value), needle: &str) {
    let e = pg(edit).err().expect("should be rejected");
    assert_eq!(e.file, "postgresql.json");
    assert!(e.message.contains(needle), "{e}");
}

#[test]
fn each_semantic_check_rejects_a_bad_definition() {
    assert!(pg(|_| {}).is_ok());
    rejected(
        |v| {
            v["settings"]["properties"]["password"]
                .as_object_mut()
                .unwrap()
                .remove("secret");
        },
        "not marked",
    );
    rejected(
        |v| {
            v["settings"]["properties"]["db_password"] =
                serde_json::json!({"type": "string", "title": "x"})
        },
        "not marked",
    );
    rejected(|v| v["category"] = "toys".into(), "unknown category");
    rejected(
        |v| v["credential_kinds"] = serde_json::json!(["magic"]),
        "unknown credential kind",
    );
    rejected(
        |v| v["probe"] = serde_json::json!({"kind": "telepathy"}),
        "unknown probe kind",
    );
    rejected(
        |v| v["probe"] = serde_json::json!({"kind": "http"}),
        "http probes need",
    );
    rejected(|v| v["id"] = "other".into(), "file name");
    rejected(
        |v| v["settings"]["properties"]["port"]["default"] = 70000.into(),
        "default",
    );
    rejected(
        |v| v["settings"]["properties"]["port"]["minimum"] = 100000.into(),
        "is greater than maximum",
    );
    rejected(
        |v| v["settings"]["required"] = serde_json::json!(["nope"]),
        "`nope` is not a property",
    );
    rejected(
        |v| v["settings"]["oneOf"] = serde_json::json!([{"title": "x", "required": ["nope"]}]),
        "oneOf",
    );
    rejected(
        |v| {
            v["settings"]["properties"]["x"] = serde_json::json!({"type": "object", "title": "x",
        "properties": {"token": {"type": "string", "title": "t", "secret": true}}})
        },
        "must be top-level",
    );
    rejected(
        |v| v["settings"]["properties"]["sslmode"]["enum"] = serde_json::json!([]),
        "enum",
    );
    rejected(|v| v["surprise"] = true.into(), "unknown field");
    rejected(|v| v["docs_url"] = "http://x".into(), "https");
    let text = files::CONNECTOR_FILES
        .iter()
        .find(|(f, _)| *f == "postgresql.json")
        .unwrap()
        .1;
    let e = Catalog::from_files(
        &[("postgresql.json", text), ("postgresql.json", text)],
        files::CREDENTIAL_KIND_FILES,
    )
    .err()
    .unwrap();
    assert!(e.message.contains("duplicate connector type id"), "{e}");
}
