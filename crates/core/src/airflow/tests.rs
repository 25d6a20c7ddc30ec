//! Airflow URI round trips. Sources, cited per URI:
//! - [T] apache/airflow `tests/models/test_connection.py` (`test_from_uri_params`,
//!   `test_connection_from_with_auth_info`, `test_using_env_var`,
//!   `test_using_unix_socket_env_var`);
//! - [TP] apache/airflow `tests/always/test_connection.py`, the host-with-protocol cases;
//! - [D] Airflow docs, "Managing Connections" (`docs/apache-airflow/howto/connection.rst`),
//!   URI format and JSON-extra examples (the docs' `port` placeholder written as 5432);
//! - [DA] apache-airflow-providers-amazon docs, "Amazon Web Services Connection" URI example;
//! - [C] constructed here for an edge case the sources do not cover (said which).

use serde_json::{json, Value};

use super::*;

fn extra_json(c: &AirflowConn) -> Option<Value> {
    c.extra
        .as_deref()
        .map(|e| serde_json::from_str(e).unwrap_or(Value::String(e.into())))
}

/// parse → format → parse gives the same fields (extras compared as JSON).
fn round_trip(uri: &str) -> AirflowConn {
    let a = parse_uri(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    let formatted = to_uri(&a);
    let b = parse_uri(&formatted).unwrap_or_else(|e| panic!("{formatted}: {e}"));
    assert_eq!(a.conn_type, b.conn_type, "{uri} → {formatted}");
    assert_eq!(a.host, b.host, "{uri} → {formatted}");
    assert_eq!(a.login, b.login, "{uri} → {formatted}");
    assert_eq!(a.password, b.password, "{uri} → {formatted}");
    assert_eq!(a.schema, b.schema, "{uri} → {formatted}");
    assert_eq!(a.port, b.port, "{uri} → {formatted}");
    assert_eq!(extra_json(&a), extra_json(&b), "{uri} → {formatted}");
    a
}

struct Case {
    uri: &'static str,
    conn_type: &'static str,
    host: &'static str,
    login: Option<&'static str>,
    password: Option<&'static str>,
    schema: &'static str,
    port: Option<u16>,
    extra: Option<Value>,
}

const fn case(uri: &'static str, conn_type: &'static str, host: &'static str) -> Case {
    Case {
        uri,
        conn_type,
        host,
        login: None,
        password: None,
        schema: "",
        port: None,
        extra: None,
    }
}

fn cases() -> Vec<Case> {
    let up = |c: Case, l: &'static str, p: &'static str| Case {
        login: Some(l),
        password: Some(p),
        ..c
    };
    vec![
        // [T] without extras
        Case {
            schema: "schema",
            port: Some(1234),
            ..up(
                case(
                    "scheme://user:password@host%2Flocation:1234/schema",
                    "scheme",
                    "host/location",
                ),
                "user",
                "password",
            )
        },
        // [T] with extras
        Case {
            schema: "schema",
            port: Some(1234),
            extra: Some(json!({"extra1": "a value", "extra2": "/path/"})),
            ..up(
                case(
                    "scheme://user:password@host%2Flocation:1234/schema?extra1=a%20value&extra2=%2Fpath%2F",
                    "scheme",
                    "host/location",
                ),
                "user",
                "password",
            )
        },
        // [T] with empty extras
        Case {
            schema: "schema",
            port: Some(1234),
            extra: Some(json!({"extra1": "a value", "extra2": ""})),
            ..up(
                case(
                    "scheme://user:password@host%2Flocation:1234/schema?extra1=a%20value&extra2=",
                    "scheme",
                    "host/location",
                ),
                "user",
                "password",
            )
        },
        // [T] with colon in hostname
        Case {
            schema: "schema",
            port: Some(1234),
            extra: Some(json!({"extra1": "a value", "extra2": "/path/"})),
            ..up(
                case(
                    "scheme://user:password@host%2Flocation%3Ax%3Ay:1234/schema?extra1=a%20value&extra2=%2Fpath%2F",
                    "scheme",
                    "host/location:x:y",
                ),
                "user",
                "password",
            )
        },
        // [T] with encoded password (spaces)
        Case {
            schema: "schema",
            port: Some(1234),
            ..up(
                case(
                    "scheme://user:password%20with%20space@host%2Flocation%3Ax%3Ay:1234/schema",
                    "scheme",
                    "host/location:x:y",
                ),
                "user",
                "password with space",
            )
        },
        // [T] with encoded user
        Case {
            schema: "schema",
            port: Some(1234),
            ..up(
                case(
                    "scheme://domain%2Fuser:password@host%2Flocation%3Ax%3Ay:1234/schema",
                    "scheme",
                    "host/location:x:y",
                ),
                "domain/user",
                "password",
            )
        },
        // [T] with encoded schema
        Case {
            schema: "schema/test",
            port: Some(1234),
            ..up(
                case(
                    "scheme://user:password%20with%20space@host:1234/schema%2Ftest",
                    "scheme",
                    "host",
                ),
                "user",
                "password with space",
            )
        },
        // [T] no schema
        Case {
            port: Some(1234),
            ..up(
                case(
                    "scheme://user:password%20with%20space@host:1234",
                    "scheme",
                    "host",
                ),
                "user",
                "password with space",
            )
        },
        // [T] with underscore (google-cloud-platform → google_cloud_platform), no host
        Case {
            extra: Some(json!({
                "extra__google_cloud_platform__key_path": "/keys/key.json",
                "extra__google_cloud_platform__scope": "https://www.googleapis.com/auth/cloud-platform",
                "extra__google_cloud_platform__project": "airflow"})),
            ..case(
                "google-cloud-platform://?extra__google_cloud_platform__key_path=%2Fkeys%2Fkey.json&extra__google_cloud_platform__scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform&extra__google_cloud_platform__project=airflow",
                "google_cloud_platform",
                "",
            )
        },
        // [T] without auth info
        Case {
            port: Some(1234),
            ..case("scheme://host:1234", "scheme", "host")
        },
        // [T] with path (case kept: the host holds a slash)
        Case {
            port: Some(1234),
            ..case("scheme://%2FTmP%2F:1234", "scheme", "/TmP/")
        },
        // [T] schema only
        Case {
            schema: "airflow",
            ..case("scheme:///airflow", "scheme", "")
        },
        // [T] port only
        Case {
            login: Some(""),
            port: Some(1234),
            ..case("scheme://@:1234", "scheme", "")
        },
        // [T] password only, every special character
        Case {
            login: Some(""),
            password: Some("password/!@#$%^&*(){}"),
            ..case(
                "scheme://:password%2F%21%40%23%24%25%5E%26%2A%28%29%7B%7D@",
                "scheme",
                "",
            )
        },
        // [T] login only, every special character
        Case {
            login: Some("login/!@#$%^&*(){}"),
            ..case(
                "scheme://login%2F%21%40%23%24%25%5E%26%2A%28%29%7B%7D@",
                "scheme",
                "",
            )
        },
        // [T] empty login
        Case {
            schema: "database",
            port: Some(80),
            ..up(
                case("http://:password@host:80/database", "http", "host"),
                "",
                "password",
            )
        },
        // [T] empty password (Airflow keeps None)
        Case {
            login: Some("user"),
            schema: "database",
            port: Some(80),
            ..case("http://user:@host:80/database", "http", "host")
        },
        // [T] no host
        Case {
            schema: "database",
            ..up(
                case("http://user:password@/database", "http", ""),
                "user",
                "password",
            )
        },
        // [T] empty schema
        Case {
            port: Some(80),
            ..up(
                case("http://user:password@host:80/", "http", "host"),
                "user",
                "password",
            )
        },
        // [T] neither host nor schema
        up(case("http://user:password@/", "http", ""), "user", "password"),
        // [T] Cloud SQL socket path as host, postgresql → postgres
        Case {
            schema: "testdb",
            ..up(
                case(
                    "postgresql://user:password@%2Ftmp%2Fz6rqdzqh%2Fexample%3Awest1%3Atestdb/testdb",
                    "postgres",
                    "/tmp/z6rqdzqh/example:west1:testdb",
                ),
                "user",
                "password",
            )
        },
        // [T] socket path, login without password
        Case {
            login: Some("user"),
            schema: "testdb",
            ..case(
                "postgresql://user@%2Ftmp%2Fz6rqdzqh%2Fexample%3Aeurope-west1%3Atestdb/testdb",
                "postgres",
                "/tmp/z6rqdzqh/example:europe-west1:testdb",
            )
        },
        // [T] socket path only
        case(
            "postgresql://%2Ftmp%2Fz6rqdzqh%2Fexample%3Aeurope-west1%3Atestdb",
            "postgres",
            "/tmp/z6rqdzqh/example:europe-west1:testdb",
        ),
        // [T] test_using_env_var
        Case {
            schema: "the_database",
            port: Some(5432),
            ..up(
                case(
                    "postgres://username:password@ec2.compute.com:5432/the_database",
                    "postgres",
                    "ec2.compute.com",
                ),
                "username",
                "password",
            )
        },
        // [T] test_using_unix_socket_env_var (no credentials)
        Case {
            schema: "the_database",
            ..case(
                "postgres://ec2.compute.com/the_database",
                "postgres",
                "ec2.compute.com",
            )
        },
        // [D] the URI format example (my-conn-type → my_conn_type)
        Case {
            schema: "schema",
            port: Some(5432),
            extra: Some(json!({"param1": "val1", "param2": "val2"})),
            ..up(
                case(
                    "my-conn-type://login:password@host:5432/schema?param1=val1&param2=val2",
                    "my_conn_type",
                    "host",
                ),
                "login",
                "password",
            )
        },
        // [D] JSON extra through __extra__ (nested values)
        Case {
            schema: "schema",
            port: Some(5432),
            extra: Some(
                json!({"my_val": ["list", "of", "values"], "extra": {"nested": {"json": "val"}}}),
            ),
            ..up(
                case(
                    "my-conn-type://login:password@host:5432/schema?__extra__=%7B%22my_val%22%3A+%5B%22list%22%2C+%22of%22%2C+%22values%22%5D%2C+%22extra%22%3A+%7B%22nested%22%3A+%7B%22json%22%3A+%22val%22%7D%7D%7D",
                    "my_conn_type",
                    "host",
                ),
                "login",
                "password",
            )
        },
        // [TP] host with its own protocol (two `://`)
        Case {
            port: Some(443),
            extra: Some(json!({"deploy-mode": "cluster"})),
            ..case(
                "spark://k8s://100.68.0.1:443?deploy-mode=cluster",
                "spark",
                "k8s://100.68.0.1",
            )
        },
        // [TP] the percent-encoded form of a host with protocol (`conn-type://protocol%3A%2F%2Fhost`)
        Case {
            port: Some(8080),
            ..case(
                "http://https%3A%2F%2Fapi.example.com:8080",
                "http",
                "https://api.example.com",
            )
        },
        // [DA] AWS keys with `/` in the secret, no host, region extra
        Case {
            extra: Some(json!({"region_name": "eu-central-1"})),
            ..up(
                case(
                    "aws://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY@/?region_name=eu-central-1",
                    "aws",
                    "",
                ),
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )
        },
        // [C] IPv6 loopback literal with port
        Case {
            schema: "db",
            port: Some(5432),
            ..up(
                case("postgres://user:pw@[::1]:5432/db", "postgres", "::1"),
                "user",
                "pw",
            )
        },
        // [C] IPv6 address literal, upper case hex lower-cased as Python does, no port
        Case {
            schema: "app",
            ..up(
                case("mysql://app:s3cret@[2001:DB8::10]/app", "mysql", "2001:db8::10"),
                "app",
                "s3cret",
            )
        },
        // [C] every reserved character and non-ASCII text in the password
        Case {
            schema: "sales",
            port: Some(5432),
            ..up(
                case(
                    "postgres://etl:p%C3%A4ss%40%2F%3A%25%23%3F%20w%C3%B6rd%E2%9C%93@db.example.com:5432/sales",
                    "postgres",
                    "db.example.com",
                ),
                "etl",
                "päss@/:%#? wörd✓",
            )
        },
        // [C] extras with `+` for space, a repeated key (the last wins) and an empty value
        Case {
            extra: Some(json!({"a": "two", "b": "x y", "c": ""})),
            ..case("redis://cache.internal?a=one&b=x+y&c&a=two", "redis", "cache.internal")
        },
    ]
}

#[test]
fn airflow_uris_parse_as_airflow_parses_them_and_round_trip() {
    let cases = cases();
    assert!(cases.len() >= 25, "acceptance asks for at least 25 URIs");
    for c in &cases {
        let got = round_trip(c.uri);
        assert_eq!(got.conn_type, c.conn_type, "{}", c.uri);
        assert_eq!(got.host.as_deref(), Some(c.host), "{}", c.uri);
        assert_eq!(got.login.as_deref(), c.login, "{}", c.uri);
        assert_eq!(got.password.as_deref(), c.password, "{}", c.uri);
        assert_eq!(got.schema.as_deref(), Some(c.schema), "{}", c.uri);
        assert_eq!(got.port, c.port, "{}", c.uri);
        assert_eq!(extra_json(&got), c.extra, "{}", c.uri);
    }
}

#[test]
fn formatting_matches_airflow_get_uri() {
    // [T] test_connection_get_uri_from_conn: built from fields, formatted, parsed back.
    let c = AirflowConn {
        conn_type: "google_cloud_platform".into(),
        password: Some("p@ss w/rd".into()),
        login: Some("me".into()),
        host: Some("::1".into()),
        port: Some(5432),
        schema: Some("db/x".into()),
        extra: Some(r#"{"k":"v w"}"#.into()),
        ..Default::default()
    };
    assert_eq!(
        to_uri(&c),
        "google-cloud-platform://me:p%40ss%20w%2Frd@%3A%3A1:5432/db%2Fx?k=v+w"
    );
    // A non-string extra value travels as __extra__, so its type survives.
    let c = AirflowConn {
        conn_type: "http".into(),
        extra: Some(r#"{"timeout":30}"#.into()),
        ..Default::default()
    };
    let uri = to_uri(&c);
    assert_eq!(uri, "http:///?__extra__=%7B%22timeout%22%3A30%7D");
    assert_eq!(
        parse_uri(&uri).unwrap().extra.as_deref(),
        Some(r#"{"timeout":30}"#)
    );
    // Port without host or login: `@:port`.
    let c = AirflowConn {
        conn_type: "x".into(),
        port: Some(9),
        ..Default::default()
    };
    assert_eq!(to_uri(&c), "x://@:9");
}

#[test]
fn malformed_uris_are_refused_without_quoting_them() {
    for bad in [
        "a://b://c://d",
        "http://user:pw@host:99999/db",
        "http://host:port/db",
        "no-scheme-here",
        "spark://us@er://host",
    ] {
        let e = parse_uri(bad).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}

#[test]
fn the_export_json_round_trips_and_extra_may_be_an_object_or_a_string() {
    let export = json!({
        "pg": {"conn_type": "postgres", "description": "d", "host": "h", "login": "l",
               "password": "p", "schema": "s", "port": 5432, "extra": "{\"sslmode\": \"require\"}"},
        "api": {"conn_type": "http", "host": "https://api.example.com", "port": null,
                "extra": {"timeout": 3}},
    });
    let conns = from_export_json(&export).unwrap();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].1.port, Some(5432));
    assert_eq!(
        extra_json(&conns[1].1),
        Some(json!({"timeout": 3})),
        "an object extra is kept as JSON text"
    );
    let again = from_export_json(&to_export_json(&conns)).unwrap();
    assert_eq!(again, conns);
    assert!(from_export_json(&json!([1])).is_err());
    assert!(from_export_json(&json!({"x": {"port": "abc"}})).is_err());
}

#[test]
fn airflow_types_map_onto_the_catalog_and_back() {
    let c = parse_uri(
        "postgresql://etl:p%40ss@db.internal:5433/finance?sslmode=require&application_name=etl",
    )
    .unwrap();
    let imp = import(&c).unwrap();
    assert_eq!(imp.type_id, "postgresql");
    assert_eq!(
        Value::Object(imp.settings.clone()),
        json!({"host": "db.internal", "port": 5433, "database": "finance", "username": "etl", "sslmode": "require"})
    );
    assert_eq!(
        Value::Object(imp.secrets.clone()),
        json!({"password": "p@ss"})
    );
    assert_eq!(
        Value::Object(imp.unmapped.clone()),
        json!({"application_name": "etl"})
    );
    let back = export("postgresql", &imp.settings, &imp.secrets, "");
    assert_eq!(back.conn_type, "postgres");
    assert_eq!(back.host.as_deref(), Some("db.internal"));
    assert_eq!(back.password.as_deref(), Some("p@ss"));
    assert_eq!(extra_json(&back), Some(json!({"sslmode": "require"})));

    // HTTP: schema is the URL scheme, a host with protocol is the URL.
    let h = import(&parse_uri("http://u:p@api.example.com:8443/https").unwrap()).unwrap();
    assert_eq!(h.settings["base_url"], "https://api.example.com:8443");
    assert_eq!(h.settings["auth_type"], "basic");
    let h = import(&parse_uri("http://https%3A%2F%2Fapi.example.com%2Fv1").unwrap()).unwrap();
    assert_eq!(h.settings["base_url"], "https://api.example.com/v1");

    // Old-style prefixed extras and typed values.
    let g = import(&parse_uri("google-cloud-platform://?extra__google_cloud_platform__project=airflow&extra__google_cloud_platform__keyfile_dict=%7B%7D").unwrap()).unwrap();
    assert_eq!(g.type_id, "bigquery");
    assert_eq!(g.settings["project_id"], "airflow");
    assert_eq!(g.secrets["service_account_json"], "{}");
    let r = import(&parse_uri("redis://:pw@cache:6380?db=2").unwrap()).unwrap();
    assert_eq!(r.settings["database"], 2);

    // Unknown conn types have no row; they export under their own id.
    assert!(import(&parse_uri("hive-cli://h").unwrap()).is_none());
    let d = export(
        "duckdb",
        &serde_json::from_value(json!({"path": "/data/x.duckdb"})).unwrap(),
        &Default::default(),
        "",
    );
    assert_eq!(d.conn_type, "duckdb");
    assert_eq!(extra_json(&d), Some(json!({"path": "/data/x.duckdb"})));
}

#[test]
fn the_docs_table_lists_every_mapping() {
    let doc = include_str!("../../../../docs/import-export.md");
    for m in MAPPINGS {
        let row = format!("| `{}` | `{}` |", m.airflow, m.patchbay);
        assert!(doc.contains(&row), "docs/import-export.md lacks {row}");
    }
}

#[test]
fn conn_ids_become_valid_names() {
    assert_eq!(
        conn_id_of_env_var("AIRFLOW_CONN_MY_PROD_DB").as_deref(),
        Some("my_prod_db")
    );
    assert_eq!(
        name_for_conn_id("My Prod/DB").as_deref(),
        Some("my-prod-db")
    );
    assert_eq!(name_for_conn_id("__x").as_deref(), Some("x"));
    assert_eq!(name_for_conn_id("!!!"), None);
}

#[test]
fn secrets_and_auth_schemes_the_row_does_not_name_travel_as_extras() {
    // An HTTP connection with a bearer token: neither Airflow's login nor its password, so
    // the token and the scheme go to the extra and come back as unmapped fields.
    let settings = json!({"base_url": "https://api.example.com/v1", "auth_type": "bearer"});
    let secrets = json!({"bearer_token": "tok/+?"});
    let c = export(
        "rest",
        settings.as_object().unwrap(),
        secrets.as_object().unwrap(),
        "",
    );
    let back = import(&parse_uri(&to_uri(&c)).unwrap()).unwrap();
    assert_eq!(back.unmapped["bearer_token"], "tok/+?");
    assert_eq!(back.unmapped["auth_type"], "bearer");
    // Basic auth stays implied by the login and password, as Airflow writes it.
    let basic = export(
        "rest",
        json!({"base_url": "https://api.example.com", "auth_type": "basic", "username": "me"})
            .as_object()
            .unwrap(),
        json!({"password": "pw"}).as_object().unwrap(),
        "",
    );
    assert!(basic.extra.is_none(), "{:?}", basic.extra);
    let back = import(&parse_uri(&to_uri(&basic)).unwrap()).unwrap();
    assert_eq!(back.settings["auth_type"], "basic");
    assert_eq!(back.secrets["password"], "pw");
}

#[test]
fn debug_output_never_carries_a_secret() {
    let c = parse_uri("postgres://u:canary-pw@h:5432/db?token=canary-tok").unwrap();
    let imported = import(&c).unwrap();
    for text in [format!("{c:?}"), format!("{imported:?}")] {
        assert!(!text.contains("canary"), "{text}");
    }
    assert!(
        format!("{imported:?}").contains("password"),
        "secret fields are named"
    );
}
