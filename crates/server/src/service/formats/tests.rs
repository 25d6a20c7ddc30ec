use std::collections::BTreeMap;

use patchbay_catalog::Catalog;
use patchbay_crypto::SecretString;
use serde_json::{json, Map, Value};

use super::{render, supports, Format, Input};

const HARD: &str = "p@ss:w/rd?#%&= é";

fn run(ty: &str, settings: Value, secrets: &[(&str, &str)], format: Format) -> Map<String, Value> {
    let ty = Catalog::builtin().get(ty).unwrap();
    let settings = settings.as_object().unwrap().clone();
    let secrets: BTreeMap<String, SecretString> = secrets
        .iter()
        .map(|(k, v)| ((*k).to_owned(), SecretString::new((*v).to_owned())))
        .collect();
    assert!(supports(ty, format), "{} {format:?}", ty.id);
    render(
        format,
        &Input {
            ty,
            name: "prod-db.finance",
            settings: &settings,
            secrets: &secrets,
        },
    )
}

fn s(m: &Map<String, Value>, k: &str) -> String {
    m[k].as_str().unwrap().to_owned()
}

#[test]
fn postgres_in_every_format_encodes_the_password() {
    let settings = json!({"host": "db.internal", "port": 5433, "database": "fin ance", "username": "etl", "sslmode": "require"});
    let secrets = [("password", HARD)];
    let env = run("postgresql", settings.clone(), &secrets, Format::Env);
    let vars = env["env"].as_object().unwrap();
    assert_eq!(vars["PGHOST"], "db.internal");
    assert_eq!(vars["PGPORT"], "5433");
    assert_eq!(vars["PGDATABASE"], "fin ance");
    assert_eq!(vars["PGUSER"], "etl");
    assert_eq!(vars["PGPASSWORD"], HARD);
    assert_eq!(vars["PGSSLMODE"], "require");
    assert_eq!(vars["PATCHBAY_PROD_DB_FINANCE_PASSWORD"], HARD);
    assert_eq!(vars["PATCHBAY_PROD_DB_FINANCE_HOST"], "db.internal");
    assert_eq!(env["prefix"], "PATCHBAY_PROD_DB_FINANCE_");
    let secret_vars: Vec<&str> = env["secret_variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(secret_vars.contains(&"PGPASSWORD"));
    assert!(secret_vars.contains(&"PATCHBAY_PROD_DB_FINANCE_PASSWORD"));
    assert!(!secret_vars.contains(&"PGHOST"));

    let uri = s(
        &run("postgresql", settings.clone(), &secrets, Format::Uri),
        "uri",
    );
    assert_eq!(
        uri,
        "postgresql://etl:p%40ss%3Aw%2Frd%3F%23%25%26%3D%20%C3%A9@db.internal:5433/fin%20ance?sslmode=require"
    );
    let jdbc = run("postgresql", settings.clone(), &secrets, Format::Jdbc);
    assert_eq!(
        s(&jdbc, "jdbc_url"),
        "jdbc:postgresql://db.internal:5433/fin%20ance?sslmode=require"
    );
    assert!(!s(&jdbc, "jdbc_url").contains("p@ss"));
    assert_eq!(jdbc["user"], "etl");
    assert_eq!(jdbc["password"], HARD);
    assert_eq!(jdbc["properties"]["password"], HARD);
    let af = run("postgresql", settings, &secrets, Format::AirflowUri);
    assert_eq!(af["conn_type"], "postgres");
    assert_eq!(
        s(&af, "uri"),
        "postgres://etl:p%40ss%3Aw%2Frd%3F%23%25%26%3D%20%C3%A9@db.internal:5433/fin%20ance?sslmode=require"
    );
}

#[test]
fn catalog_defaults_fill_the_port() {
    let uri = run(
        "postgresql",
        json!({"host": "h", "database": "d"}),
        &[],
        Format::Uri,
    );
    assert_eq!(s(&uri, "uri"), "postgresql://h:5432/d");
}

#[test]
fn mysql_redis_and_rabbitmq_uris() {
    let m = run(
        "mysql",
        json!({"host": "::1", "port": 3307, "database": "app", "username": "u"}),
        &[("password", "a b")],
        Format::Uri,
    );
    assert_eq!(s(&m, "uri"), "mysql://u:a%20b@[::1]:3307/app");
    let env = run(
        "mysql",
        json!({"host": "m", "database": "app", "username": "u"}),
        &[("password", "pw")],
        Format::Env,
    );
    assert_eq!(env["env"]["MYSQL_PWD"], "pw");
    assert_eq!(env["env"]["MYSQL_HOST"], "m");
    assert_eq!(env["env"]["MYSQL_TCP_PORT"], "3306");
    let jdbc = run(
        "mysql",
        json!({"host": "m", "database": "app"}),
        &[],
        Format::Jdbc,
    );
    assert_eq!(s(&jdbc, "jdbc_url"), "jdbc:mysql://m:3306/app");

    let r = run(
        "redis",
        json!({"host": "cache", "tls": true, "database": 2}),
        &[("password", "s/cret")],
        Format::Uri,
    );
    assert_eq!(s(&r, "uri"), "rediss://:s%2Fcret@cache:6379/2");
    let r = run("redis", json!({"host": "cache"}), &[], Format::Env);
    assert_eq!(r["env"]["REDIS_URL"], "redis://cache:6379/0");

    let a = run(
        "rabbitmq",
        json!({"host": "mq", "username": "guest"}),
        &[("password", "guest")],
        Format::Uri,
    );
    assert_eq!(s(&a, "uri"), "amqp://guest:guest@mq:5672/%2F");
}

#[test]
fn s3_has_aws_variables_and_no_uri_or_jdbc() {
    let ty = Catalog::builtin().get("s3").unwrap();
    assert!(!supports(ty, Format::Uri));
    assert!(!supports(ty, Format::Jdbc));
    let settings = json!({"bucket": "b", "region": "eu-west-1", "access_key_id": "AKIA1", "endpoint_url": "http://127.0.0.1:9000"});
    let secrets = [("secret_access_key", "se/cr+et"), ("session_token", "tok")];
    let env = run("s3", settings.clone(), &secrets, Format::Env);
    let vars = env["env"].as_object().unwrap();
    assert_eq!(vars["AWS_ACCESS_KEY_ID"], "AKIA1");
    assert_eq!(vars["AWS_SECRET_ACCESS_KEY"], "se/cr+et");
    assert_eq!(vars["AWS_SESSION_TOKEN"], "tok");
    assert_eq!(vars["AWS_REGION"], "eu-west-1");
    assert_eq!(vars["AWS_ENDPOINT_URL"], "http://127.0.0.1:9000");
    let af = run("s3", settings, &secrets, Format::AirflowUri);
    assert_eq!(
        s(&af, "uri"),
        "aws://AKIA1:se%2Fcr%2Bet@/?bucket=b&region_name=eu-west-1&endpoint_url=http%3A%2F%2F127.0.0.1%3A9000&aws_session_token=tok"
    );
}

#[test]
fn snowflake_in_every_format() {
    let settings = json!({"account": "xy12345", "username": "etl", "database": "DW", "schema": "PUBLIC", "warehouse": "WH", "role": "R"});
    let secrets = [("password", "p w")];
    let env = run("snowflake", settings.clone(), &secrets, Format::Env);
    assert_eq!(env["env"]["SNOWSQL_ACCOUNT"], "xy12345");
    assert_eq!(env["env"]["SNOWSQL_PWD"], "p w");
    assert_eq!(env["env"]["SNOWSQL_WAREHOUSE"], "WH");
    let uri = run("snowflake", settings.clone(), &secrets, Format::Uri);
    assert_eq!(
        s(&uri, "uri"),
        "snowflake://etl:p%20w@xy12345/DW/PUBLIC?warehouse=WH&role=R"
    );
    let jdbc = run("snowflake", settings.clone(), &secrets, Format::Jdbc);
    assert_eq!(
        s(&jdbc, "jdbc_url"),
        "jdbc:snowflake://xy12345.snowflakecomputing.com/?db=DW&schema=PUBLIC&warehouse=WH&role=R"
    );
    let af = run("snowflake", settings, &secrets, Format::AirflowUri);
    assert_eq!(
        s(&af, "uri"),
        "snowflake://etl:p%20w@/PUBLIC?account=xy12345&database=DW&warehouse=WH&role=R"
    );
}

#[test]
fn http_uri_is_the_base_url_and_airflow_keeps_the_protocol() {
    let settings = json!({"base_url": "https://api.example.com/v1", "auth_type": "basic", "username": "me", "timeout_seconds": 5});
    let secrets = [("password", "pa:ss")];
    let uri = run("rest", settings.clone(), &secrets, Format::Uri);
    assert_eq!(s(&uri, "uri"), "https://api.example.com/v1");
    let ty = Catalog::builtin().get("rest").unwrap();
    assert!(!supports(ty, Format::Jdbc));
    let af = run("rest", settings, &secrets, Format::AirflowUri);
    // A non-string extra value: the whole extra as one JSON parameter, as Airflow does.
    assert_eq!(
        s(&af, "uri"),
        "http://https://me:pa%3Ass@api.example.com%2Fv1/?__extra__=%7B%22auth_type%22%3A+%22basic%22%2C+%22timeout_seconds%22%3A+5%7D"
    );
}

#[test]
fn sqlserver_and_oracle_jdbc_urls() {
    let j = run(
        "sqlserver",
        json!({"host": "sql", "database": "dw", "encrypt": "strict"}),
        &[],
        Format::Jdbc,
    );
    assert_eq!(
        s(&j, "jdbc_url"),
        "jdbc:sqlserver://sql:1433;databaseName=dw;encrypt=strict"
    );
    let o = run(
        "oracle",
        json!({"host": "ora", "service_name": "ORCLPDB1"}),
        &[],
        Format::Jdbc,
    );
    assert_eq!(s(&o, "jdbc_url"), "jdbc:oracle:thin:@//ora:1521/ORCLPDB1");
    let o = run(
        "oracle",
        json!({"host": "ora", "connection_type": "sid", "sid": "ORCL"}),
        &[],
        Format::Jdbc,
    );
    assert_eq!(s(&o, "jdbc_url"), "jdbc:oracle:thin:@ora:1521:ORCL");
}

#[test]
fn every_type_renders_every_format_it_supports() {
    for ty in Catalog::builtin().types() {
        for f in Format::ALL {
            if supports(ty, *f) {
                let out = render(
                    *f,
                    &Input {
                        ty,
                        name: "x",
                        settings: &Map::new(),
                        secrets: &BTreeMap::new(),
                    },
                );
                if *f != Format::Json {
                    assert!(!out.is_empty(), "{} {f:?}", ty.id);
                }
            }
        }
    }
}
