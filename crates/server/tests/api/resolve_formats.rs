//! Resolve formats end to end: every format of postgres (with a password holding every
//! character a URI must encode), mysql, redis, s3, snowflake and rest, and
//! `format_unsupported` where a type has no such format.

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{Service, CANARY};
use crate::resolve::{create, hard_password, ok, resolve, runner, unsupported};

#[tokio::test]
async fn every_format_round_trips_for_postgres_with_a_hard_password() {
    let s = Service::start().await;
    let pw = hard_password();
    let id = create(
        &s,
        "prod-postgres-finance",
        "postgresql",
        json!({"host": "db.internal", "port": 5433, "database": "fin", "username": "etl", "sslmode": "require"}),
        json!({"password": pw}),
    )
    .await;
    let (token, _) = runner(&s, None).await;

    // No body at all is the JSON format.
    let r = resolve(&s, &token, &id, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["format"], "json");
    let j = ok(&s, &token, &id, "json").await;
    assert_eq!(j["connection"]["id"], id.as_str());
    assert_eq!(j["connection"]["name"], "prod-postgres-finance");
    assert_eq!(j["connection"]["type"], "postgresql");
    assert_eq!(j["connection"]["version"], 1);
    assert_eq!(j["credential"]["version"], 1);
    assert_eq!(j["settings"]["host"], "db.internal");
    assert_eq!(j["secrets"]["password"], pw.as_str());

    let e = ok(&s, &token, &id, "env").await;
    assert_eq!(e["env"]["PGHOST"], "db.internal");
    assert_eq!(e["env"]["PGPORT"], "5433");
    assert_eq!(e["env"]["PGUSER"], "etl");
    assert_eq!(e["env"]["PGDATABASE"], "fin");
    assert_eq!(e["env"]["PGPASSWORD"], pw.as_str());
    assert_eq!(e["env"]["PGSSLMODE"], "require");
    assert_eq!(
        e["env"]["PATCHBAY_PROD_POSTGRES_FINANCE_PASSWORD"],
        pw.as_str()
    );
    assert!(e["secret_variables"]
        .as_array()
        .unwrap()
        .contains(&json!("PGPASSWORD")));

    let encoded = "p%40ss%3Aw%2Frd%3F%23%25%26%3D%2B%20%C3%A9canary-7f3a9c1e-secret";
    let u = ok(&s, &token, &id, "uri").await;
    assert_eq!(
        u["uri"],
        format!("postgresql://etl:{encoded}@db.internal:5433/fin?sslmode=require")
    );
    let jd = ok(&s, &token, &id, "jdbc").await;
    assert_eq!(
        jd["jdbc_url"],
        "jdbc:postgresql://db.internal:5433/fin?sslmode=require"
    );
    assert_eq!(jd["user"], "etl");
    assert_eq!(jd["password"], pw.as_str());
    let a = ok(&s, &token, &id, "airflow_uri").await;
    assert_eq!(a["conn_type"], "postgres");
    assert_eq!(
        a["uri"],
        format!("postgres://etl:{encoded}@db.internal:5433/fin?sslmode=require")
    );
}

#[tokio::test]
async fn every_format_for_mysql_redis_s3_snowflake_and_http_or_format_unsupported() {
    let s = Service::start().await;
    let (token, _) = runner(&s, None).await;

    let mysql = create(
        &s,
        "mysql-app",
        "mysql",
        json!({"host": "mysql.internal", "database": "app", "username": "app"}),
        json!({"password": "my pw"}),
    )
    .await;
    let e = ok(&s, &token, &mysql, "env").await;
    assert_eq!(e["env"]["MYSQL_HOST"], "mysql.internal");
    assert_eq!(e["env"]["MYSQL_TCP_PORT"], "3306");
    assert_eq!(e["env"]["MYSQL_PWD"], "my pw");
    let u = ok(&s, &token, &mysql, "uri").await;
    assert_eq!(u["uri"], "mysql://app:my%20pw@mysql.internal:3306/app");
    let jd = ok(&s, &token, &mysql, "jdbc").await;
    assert_eq!(jd["jdbc_url"], "jdbc:mysql://mysql.internal:3306/app");
    let a = ok(&s, &token, &mysql, "airflow_uri").await;
    assert_eq!(a["uri"], "mysql://app:my%20pw@mysql.internal/app");

    let redis = create(
        &s,
        "cache",
        "redis",
        json!({"host": "redis.internal", "tls": true}),
        json!({"password": "r/pw"}),
    )
    .await;
    let u = ok(&s, &token, &redis, "uri").await;
    assert_eq!(u["uri"], "rediss://:r%2Fpw@redis.internal:6379/0");
    let e = ok(&s, &token, &redis, "env").await;
    assert_eq!(
        e["env"]["REDIS_URL"],
        "rediss://:r%2Fpw@redis.internal:6379/0"
    );
    unsupported(&s, &token, &redis, "jdbc").await;
    let a = ok(&s, &token, &redis, "airflow_uri").await;
    assert_eq!(a["conn_type"], "redis");

    let s3 = create(
        &s,
        "lake",
        "s3",
        json!({"bucket": "lake", "region": "eu-west-1", "access_key_id": "AKIAEXAMPLE"}),
        json!({"secret_access_key": CANARY}),
    )
    .await;
    let e = ok(&s, &token, &s3, "env").await;
    assert_eq!(e["env"]["AWS_ACCESS_KEY_ID"], "AKIAEXAMPLE");
    assert_eq!(e["env"]["AWS_SECRET_ACCESS_KEY"], CANARY);
    assert_eq!(e["env"]["AWS_REGION"], "eu-west-1");
    assert_eq!(e["env"]["PATCHBAY_LAKE_BUCKET"], "lake");
    unsupported(&s, &token, &s3, "uri").await;
    unsupported(&s, &token, &s3, "jdbc").await;
    let a = ok(&s, &token, &s3, "airflow_uri").await;
    assert_eq!(
        a["uri"],
        format!("aws://AKIAEXAMPLE:{CANARY}@/?bucket=lake&region_name=eu-west-1")
    );
    let j = ok(&s, &token, &s3, "json").await;
    assert_eq!(j["secrets"]["secret_access_key"], CANARY);

    let sf = create(
        &s,
        "warehouse",
        "snowflake",
        json!({"account": "xy12345", "username": "etl", "database": "DW", "warehouse": "WH"}),
        json!({"password": "sf"}),
    )
    .await;
    let e = ok(&s, &token, &sf, "env").await;
    assert_eq!(e["env"]["SNOWSQL_ACCOUNT"], "xy12345");
    assert_eq!(e["env"]["SNOWSQL_PWD"], "sf");
    let u = ok(&s, &token, &sf, "uri").await;
    assert_eq!(
        u["uri"],
        "snowflake://etl:sf@xy12345/DW/PUBLIC?warehouse=WH"
    );
    let jd = ok(&s, &token, &sf, "jdbc").await;
    assert_eq!(
        jd["jdbc_url"],
        "jdbc:snowflake://xy12345.snowflakecomputing.com/?db=DW&schema=PUBLIC&warehouse=WH"
    );

    let api = create(
        &s,
        "crm-api",
        "rest",
        json!({"base_url": "https://api.example.com/v1", "auth_type": "bearer"}),
        json!({"bearer_token": "tok"}),
    )
    .await;
    let u = ok(&s, &token, &api, "uri").await;
    assert_eq!(u["uri"], "https://api.example.com/v1");
    let e = ok(&s, &token, &api, "env").await;
    assert_eq!(e["env"]["PATCHBAY_CRM_API_BEARER_TOKEN"], "tok");
    assert_eq!(
        e["env"]["PATCHBAY_CRM_API_BASE_URL"],
        "https://api.example.com/v1"
    );
    unsupported(&s, &token, &api, "jdbc").await;
    let a = ok(&s, &token, &api, "airflow_uri").await;
    assert_eq!(
        a["uri"],
        "http://https://api.example.com%2Fv1/?auth_type=bearer&bearer_token=tok"
    );
}
