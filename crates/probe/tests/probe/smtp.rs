//! SMTP probe (type email) against the aiosmtpd peer of scripts/peers-brokers.sh: STARTTLS
//! on 8025 and implicit TLS on 8465, user pb, AUTH only once TLS is up.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 8025;
const TLS_PORT: u16 = 8465;

fn settings(port: u16, security: &str, extra: Value) -> Value {
    let mut s = json!({
        "host": "127.0.0.1", "port": port, "security": security, "username": "pb",
        "from_address": "probe@example.org", "tls_ca_certificate": kit::ca_pem(),
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn smtp(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "email",
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn starttls_then_auth_passes_with_plain_and_login() {
    if !peer(PORT, "SMTP (aiosmtpd)") {
        return;
    }
    for mechanism in ["auto", "plain", "login"] {
        let r = smtp(
            settings(PORT, "starttls", json!({"auth_mechanism": mechanism})),
            "pb-smtp-pass",
        )
        .await;
        assert_ok(&r);
        assert!(
            r.stages.iter().all(|s| s.status == StageStatus::Ok),
            "{r:?}"
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let tls = r
            .stages
            .iter()
            .find(|s| s.stage == ProbeStage::Tls)
            .unwrap();
        assert!(tls.detail.as_deref().unwrap().starts_with("STARTTLS"));
    }
}

#[tokio::test]
async fn implicit_tls_passes() {
    if !peer(TLS_PORT, "SMTP (aiosmtpd, TLS)") {
        return;
    }
    let r = smtp(settings(TLS_PORT, "tls", json!({})), "pb-smtp-pass").await;
    assert_ok(&r);
    assert!(r.server.unwrap().version.contains("SMTP"));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_appears_in_the_result() {
    if !peer(PORT, "SMTP (aiosmtpd)") {
        return;
    }
    for mechanism in ["plain", "login"] {
        let r = smtp(
            settings(PORT, "starttls", json!({"auth_mechanism": mechanism})),
            CANARY,
        )
        .await;
        assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
        assert!(r.error.as_ref().unwrap().message.contains("535"));
        kit::assert_no_canary(&r);
    }
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_tls() {
    if !peer(PORT, "SMTP (aiosmtpd)") {
        return;
    }
    let r = smtp(
        settings(PORT, "starttls", json!({"tls_ca_certificate": null})),
        "pb-smtp-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = smtp(
        settings(TLS_PORT, "tls", json!({"tls_ca_certificate": null})),
        "pb-smtp-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}

#[tokio::test]
async fn without_tls_the_server_offers_no_auth_and_the_hint_says_starttls() {
    if !peer(PORT, "SMTP (aiosmtpd)") {
        return;
    }
    let r = smtp(settings(PORT, "none", json!({})), "pb-smtp-pass").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().hint.unwrap().contains("starttls"));
}

#[tokio::test]
async fn implicit_tls_against_the_starttls_port_fails_at_tls() {
    if !peer(PORT, "SMTP (aiosmtpd)") {
        return;
    }
    let r = smtp(settings(PORT, "tls", json!({})), "pb-smtp-pass").await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Tls);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = smtp(settings(kit::closed_port(), "starttls", json!({})), "x").await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}
