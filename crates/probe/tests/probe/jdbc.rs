//! The generic JDBC type: jdbc:postgresql and jdbc:mariadb/mysql URLs are tested by the
//! PostgreSQL and MySQL probes against the real servers (scram PostgreSQL on 5433 from
//! scripts/peers-probe.sh, MariaDB on 3306 with users from scripts/peers-brokers.sh);
//! other subprotocols get a TCP-only check with a warning.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

async fn probe(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "database",
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_postgresql_url_is_tested_by_the_postgres_probe() {
    if !peer(5433, "PostgreSQL (scram)") {
        return;
    }
    let url = "jdbc:postgresql://127.0.0.1:5433/pbtest?sslmode=disable";
    let r = probe(json!({"jdbc_url": url, "username": "pb_ro"}), "pb-ro-pass").await;
    assert_ok(&r);
    assert_eq!(r.server.as_ref().unwrap().product, "PostgreSQL");
    assert!(r.warnings.iter().any(|w| w.contains("jdbc:postgresql")));
    let r = probe(json!({"jdbc_url": url, "username": "pb_ro"}), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    let r = probe(
        json!({"jdbc_url": "jdbc:postgresql://127.0.0.1:5433/nope?sslmode=disable&user=pb_ro"}),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_mariadb_url_is_tested_by_the_mysql_probe() {
    if !peer(3306, "MariaDB") {
        return;
    }
    for url in [
        "jdbc:mariadb://127.0.0.1:3306/pbtest?useSSL=false",
        "jdbc:mysql://127.0.0.1/pbtest?sslMode=DISABLED",
    ] {
        let r = probe(json!({"jdbc_url": url, "username": "pb_ro"}), "pb-ro-pass").await;
        assert_ok(&r);
        assert_eq!(r.server.as_ref().unwrap().product, "MariaDB");
    }
    let r = probe(json!({"jdbc_url": "jdbc:mariadb://127.0.0.1:3306/pbtest?useSSL=false", "username": "pb_ro"}), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn another_subprotocol_gets_a_tcp_check_with_a_warning() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let r = probe(
        json!({"jdbc_url": format!("jdbc:db2://127.0.0.1:{port}/SAMPLE")}),
        "pw",
    )
    .await;
    assert_ok(&r);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("only a TCP connection")));
    let r = probe(
        json!({"jdbc_url": format!("jdbc:oracle:thin:@127.0.0.1:{}:ORCL", kit::closed_port())}),
        "pw",
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn a_url_with_a_password_or_no_host_is_invalid_settings() {
    let r = probe(
        json!({"jdbc_url": format!("jdbc:postgresql://127.0.0.1/db?password={CANARY}")}),
        "pw",
    )
    .await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    kit::assert_no_canary(&r);
    let r = probe(json!({"jdbc_url": "jdbc:h2:mem:test"}), "pw").await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    if !peer(5433, "PostgreSQL (scram)") {
        return;
    }
    let r = probe(
        json!({"jdbc_url": "jdbc:postgresql://127.0.0.1:5433/pbtest", "username": "pb_ro"}),
        CANARY,
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}
