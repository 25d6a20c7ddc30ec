//! Redis probe against the requirepass server on 6380.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 6380;

async fn redis(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "redis",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn the_right_password_passes_and_reports_the_version() {
    if !peer(PORT, "Redis (requirepass)") {
        return;
    }
    let r = redis(
        json!({"host": "127.0.0.1", "port": PORT}),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_ok(&r);
    let s = r.server.unwrap();
    assert_eq!(s.product, "Redis");
    assert!(!s.version.is_empty());
    // The ACL form (user + password) works too.
    let r = redis(
        json!({"host": "127.0.0.1", "port": PORT, "username": "default"}),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    if !peer(PORT, "Redis (requirepass)") {
        return;
    }
    let r = redis(
        json!({"host": "127.0.0.1", "port": PORT}),
        &[("password", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn no_password_against_requirepass_is_auth_failed_noauth() {
    if !peer(PORT, "Redis (requirepass)") {
        return;
    }
    let r = redis(json!({"host": "127.0.0.1", "port": PORT}), &[]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("NOAUTH"));
}

#[tokio::test]
async fn a_database_index_the_server_lacks_is_not_found() {
    if !peer(PORT, "Redis (requirepass)") {
        return;
    }
    let r = redis(
        json!({"host": "127.0.0.1", "port": PORT, "database": 999}),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = redis(
        json!({"host": "127.0.0.1", "port": kit::closed_port()}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn tls_against_a_plain_port_fails_at_tls() {
    if !peer(PORT, "Redis (requirepass)") {
        return;
    }
    let r = redis(
        json!({"host": "127.0.0.1", "port": PORT, "tls": true}),
        &[("password", "x")],
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Tls);
}

const TLS_PORT: u16 = 6381;

fn tls_settings(extra: Value) -> Value {
    let mut s = json!({"host": "127.0.0.1", "port": TLS_PORT, "tls": true, "tls_ca_certificate": kit::ca_pem()});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn tls_with_the_ca_passes_and_the_tls_stage_is_reported() {
    if !peer(TLS_PORT, "Redis (TLS)") {
        return;
    }
    let r = redis(tls_settings(json!({})), &[("password", "pb-redis-pass")]).await;
    assert_ok(&r);
    let tls = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Tls)
        .unwrap();
    assert!(
        tls.detail.as_deref().unwrap().contains("verification full"),
        "{tls:?}"
    );
}

#[tokio::test]
async fn tls_without_the_ca_is_untrusted_and_another_name_is_a_mismatch() {
    if !peer(TLS_PORT, "Redis (TLS)") {
        return;
    }
    let r = redis(
        tls_settings(json!({"tls_ca_certificate": null})),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = redis(
        tls_settings(json!({"tls_server_name": "cache.other.example"})),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHostnameMismatch);
    let r = redis(
        tls_settings(json!({"tls_verify": false, "tls_ca_certificate": null})),
        &[("password", "pb-redis-pass")],
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}
