//! PostgreSQL probe against the scram + TLS cluster on 5433 (and the pre-started 5432).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 5433;

fn settings(user: &str, extra: Value) -> Value {
    let mut s = json!({
        "host": "127.0.0.1", "port": PORT, "database": "pbtest", "username": user,
        "sslmode": "verify-full", "ssl_root_cert": kit::ca_pem(),
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn pg(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "postgresql",
        settings,
        &[("password", password)],
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn a_read_only_role_over_verified_tls_passes_every_stage_without_warnings() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(settings("pb_ro", json!({})), "pb-ro-pass").await;
    assert_ok(&r);
    assert!(
        r.stages.iter().all(|s| s.status == StageStatus::Ok),
        "{r:?}"
    );
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "PostgreSQL");
    assert!(server.version.starts_with("15"), "{server:?}");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth.detail.as_deref().unwrap().contains("SCRAM-SHA-256"));
}

#[tokio::test]
async fn a_role_that_can_write_gets_the_read_only_recommendation() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(settings("pb_rw", json!({})), "pb-rw-pass").await;
    assert_ok(&r);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("read-only account recommended")
                && w.contains("CREATE on the database")
                && w.contains("INSERT")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn md5_and_cleartext_password_methods_log_in() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(settings("pb_md5", json!({})), "pb-md5-pass").await;
    assert_ok(&r);
    assert!(
        r.stages[4].detail.as_deref().unwrap().contains("md5"),
        "{r:?}"
    );
    let r = pg(settings("pb_clear", json!({})), "pb-clear-pass").await;
    assert_ok(&r);
    assert!(
        r.warnings.is_empty(),
        "cleartext inside TLS needs no warning: {:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_wrong_password_fails_at_auth_and_never_appears_in_the_result() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(settings("pb_ro", json!({})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
    // Without TLS too (the password travels as a SCRAM proof, never in clear).
    let r = pg(settings("pb_md5", json!({"sslmode": "disable"})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp_with_a_hint_naming_the_port() {
    let port = kit::closed_port();
    let r = pg(
        json!({"host": "127.0.0.1", "port": port, "database": "x", "username": "u"}),
        "p",
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
    let hint = r.error.unwrap().hint.unwrap();
    assert_eq!(
        hint,
        format!("port {port} refused: is the server listening on that port?")
    );
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_untrusted_at_tls() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(
        settings("pb_ro", json!({"ssl_root_cert": null})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_hostname_mismatch_unless_ca_only() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(
        settings("pb_ro", json!({"tls_server_name": "db.other.example"})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHostnameMismatch);
    let r = pg(
        settings(
            "pb_ro",
            json!({"tls_server_name": "db.other.example", "sslmode": "verify-ca"}),
        ),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(
        r.warnings.iter().any(|w| w.contains("ca-only")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn verify_mode_none_passes_an_unknown_ca_with_a_warning() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(
        settings(
            "pb_ro",
            json!({"sslmode": "require", "ssl_root_cert": null}),
        ),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(
        r.warnings.iter().any(|w| w.contains("verification is off")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_missing_database_is_not_found() {
    if !peer(PORT, "PostgreSQL (scram)") {
        return;
    }
    let r = pg(
        settings("pb_ro", json!({"database": "no_such_db"})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
    assert!(r.error.unwrap().hint.unwrap().contains("no_such_db"));
}

#[tokio::test]
async fn the_pre_started_trust_server_passes_and_reports_its_version() {
    if !peer(5432, "PostgreSQL") {
        return;
    }
    let r = pg(
        json!({"host": "127.0.0.1", "port": 5432, "database": "test", "username": "postgres", "sslmode": "prefer"}),
        "",
    )
    .await;
    assert_ok(&r);
    assert_eq!(r.server.unwrap().product, "PostgreSQL");
}

#[tokio::test]
async fn a_redis_port_is_not_postgres() {
    if !peer(6380, "Redis (requirepass)") {
        return;
    }
    let r = kit::run(
        &kit::loopback(),
        "postgresql",
        json!({"host": "127.0.0.1", "port": 6380, "database": "x", "username": "u", "sslmode": "disable"}),
        &[("password", "p")],
        Duration::from_secs(2),
    )
    .await;
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(
        matches!(e.class, ErrorClass::ProtocolMismatch | ErrorClass::Timeout),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_sni_override_is_a_catalog_setting() {
    let ty = kit::ty("postgresql");
    assert!(ty.settings.properties.get("tls_server_name").is_some());
    assert!(kit::ty("redis")
        .settings
        .properties
        .get("tls_server_name")
        .is_some());
}
