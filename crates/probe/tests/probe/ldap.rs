//! LDAP probe against Debian's slapd (scripts/peers-infra.sh): plain LDAP and StartTLS on
//! 3389, LDAPS on 6636 (test CA), suffix dc=example,dc=org, admin
//! cn=admin,dc=example,dc=org with password pb-ldap-pass.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 3389;
const LDAPS_PORT: u16 = 6636;
const ADMIN: &str = "cn=admin,dc=example,dc=org";
const PASSWORD: &str = "pb-ldap-pass";

async fn ldap(
    type_id: &str,
    settings: Value,
    secrets: &[(&str, &str)],
) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn plain(extra: Value) -> Value {
    let mut s = json!({
        "url": format!("ldap://127.0.0.1:{PORT}"),
        "base_dn": "dc=example,dc=org",
        "bind_dn": ADMIN,
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn the_admin_binds_and_the_base_dn_is_found() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap("ldap", plain(json!({})), &[("bind_password", PASSWORD)]).await;
    assert_ok(&r);
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth.detail.as_deref().unwrap().contains(ADMIN));
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn an_anonymous_bind_reads_the_base_dn() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap("ldap", plain(json!({"bind_dn": null})), &[]).await;
    assert_ok(&r);
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth.detail.as_deref().unwrap().contains("anonymous"));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth_and_never_echoed() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap("ldap", plain(json!({})), &[("bind_password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.as_ref().unwrap().message.contains("49"));
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_bind_dn_without_a_password_is_refused_before_an_unauthenticated_bind() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap("ldap", plain(json!({})), &[]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn a_missing_base_dn_is_not_found_at_query() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap(
        "ldap",
        plain(json!({"base_dn": "ou=nowhere,dc=example,dc=org"})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn active_directory_settings_reach_the_same_server() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap(
        "active-directory",
        json!({
            "domain": "example.org",
            "domain_controllers": ["127.0.0.1"],
            "port": PORT,
            "use_ldaps": false,
            "bind_username": ADMIN,
        }),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    // The base DN is derived from the domain.
    assert!(
        q.detail.as_deref().unwrap().contains("DC=example,DC=org"),
        "{q:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = ldap(
        "ldap",
        plain(json!({"url": format!("ldap://127.0.0.1:{}", kit::closed_port())})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn starttls_with_the_ca_passes_and_without_it_is_untrusted() {
    if !peer(PORT, "slapd") {
        return;
    }
    let r = ldap(
        "ldap",
        plain(json!({"url": format!("ldap://127.0.0.1:{PORT}"), "start_tls": true, "tls_ca_certificate": kit::ca_pem()})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_ok(&r);
    let tls = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Tls)
        .unwrap();
    assert_eq!(tls.status, StageStatus::Ok);
    assert!(tls.detail.as_deref().unwrap().starts_with("StartTLS"));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = ldap(
        "ldap",
        plain(json!({"start_tls": true})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}

#[tokio::test]
async fn ldaps_with_the_ca_passes_and_without_it_is_untrusted() {
    if !peer(LDAPS_PORT, "slapd (LDAPS)") {
        return;
    }
    let url = format!("ldaps://127.0.0.1:{LDAPS_PORT}");
    let r = ldap(
        "ldap",
        plain(json!({"url": url, "tls_ca_certificate": kit::ca_pem()})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_ok(&r);
    let r = ldap(
        "ldap",
        plain(json!({"url": url})),
        &[("bind_password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
