//! MySQL-protocol probe against MariaDB: the pre-started server on 3306 (no TLS) and the
//! TLS one on 3307 (scripts/peers-brokers.sh; users pb_ro and pb_rw, database pbtest).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 3306;
const TLS_PORT: u16 = 3307;

fn settings(port: u16, user: &str, extra: Value) -> Value {
    let mut s = json!({
        "host": "127.0.0.1", "port": port, "database": "pbtest", "username": user,
        "ssl_mode": "disable",
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn tls(user: &str, extra: Value) -> Value {
    let mut s = settings(
        TLS_PORT,
        user,
        json!({"ssl_mode": "verify-full", "ssl_ca": kit::ca_pem()}),
    );
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn my(type_id: &str, settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        &[("password", password)],
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn a_select_only_user_passes_every_stage_and_reports_mariadb() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my("mariadb", settings(PORT, "pb_ro", json!({})), "pb-ro-pass").await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "MariaDB");
    assert!(server.version.starts_with("10."), "{server:?}");
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth
        .detail
        .as_deref()
        .unwrap()
        .contains("mysql_native_password"));
    assert!(
        r.warnings.iter().all(|w| !w.contains("read-only")),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_user_that_can_write_gets_the_read_only_recommendation() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mysql",
        settings(PORT, "pb_rw", json!({"ssl_mode": "DISABLED"})),
        "pb-rw-pass",
    )
    .await;
    assert_ok(&r);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("read-only account recommended")
                && w.contains("INSERT")
                && w.contains("CREATE")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_appears_in_the_result() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my("mariadb", settings(PORT, "pb_ro", json!({})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.as_ref().unwrap().message.contains("1045"));
    assert!(!serde_json::to_string(&r).unwrap().contains(CANARY));
}

#[tokio::test]
async fn a_missing_database_is_not_found_at_auth() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mariadb",
        settings(PORT, "root", json!({"database": "no_such_db"})),
        "",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
    assert!(r.error.unwrap().hint.unwrap().contains("no_such_db"));
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = my("mysql", settings(kit::closed_port(), "u", json!({})), "p").await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn required_tls_against_a_server_without_it_fails_at_tls_and_preferred_goes_plain() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mysql",
        settings(PORT, "pb_ro", json!({"ssl_mode": "REQUIRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHandshake);
    let r = my(
        "mysql",
        settings(PORT, "pb_ro", json!({"ssl_mode": "PREFERRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("does not offer TLS")));
}

#[tokio::test]
async fn a_redis_port_is_not_mysql() {
    if !peer(6379, "Redis") {
        return;
    }
    let r = kit::run(
        &kit::loopback(),
        "mysql",
        settings(6379, "u", json!({})),
        &[("password", "p")],
        Duration::from_secs(3),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Auth);
}

#[tokio::test]
async fn verified_tls_passes_and_the_tls_stage_is_reported() {
    if !peer(TLS_PORT, "MariaDB (TLS)") {
        return;
    }
    let r = my("mariadb", tls("pb_ro", json!({})), "pb-ro-pass").await;
    assert_ok(&r);
    assert!(
        r.stages.iter().all(|s| s.status == StageStatus::Ok),
        "{r:?}"
    );
    let t = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Tls)
        .unwrap();
    assert!(
        t.detail.as_deref().unwrap().contains("verification full"),
        "{t:?}"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // A wrong password inside TLS is still auth_failed.
    let r = my("mariadb", tls("pb_ro", json!({})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(!serde_json::to_string(&r).unwrap().contains(CANARY));
}

#[tokio::test]
async fn tls_without_the_ca_is_untrusted_and_trust_mode_passes_with_a_warning() {
    if !peer(TLS_PORT, "MariaDB (TLS)") {
        return;
    }
    let r = my(
        "mariadb",
        tls("pb_ro", json!({"ssl_ca": null})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = my(
        "mysql",
        tls("pb_ro", json!({"ssl_ca": null, "ssl_mode": "REQUIRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}
