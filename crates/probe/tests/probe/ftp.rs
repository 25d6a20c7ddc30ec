//! FTP probe against pyftpdlib (scripts/peers-infra.sh): plain FTP on 2121 and explicit
//! FTPS (AUTH TLS, test CA, TLS required on the control connection) on 2990; user pbftp /
//! pb-ftp-pass, root with a directory `incoming`.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 2121;
const FTPS_PORT: u16 = 2990;

async fn ftp(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "ftp",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn plain(extra: Value) -> Value {
    let mut s =
        json!({"host": "127.0.0.1", "port": PORT, "username": "pbftp", "root_path": "/incoming"});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn the_right_password_logs_in_and_the_root_path_is_entered() {
    if !peer(PORT, "pyftpdlib") {
        return;
    }
    let r = ftp(plain(json!({})), &[("password", "pb-ftp-pass")]).await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(q.detail.as_deref().unwrap().contains("/incoming"));
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth_and_never_echoed() {
    if !peer(PORT, "pyftpdlib") {
        return;
    }
    let r = ftp(plain(json!({})), &[("password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_missing_root_path_is_not_found_at_query() {
    if !peer(PORT, "pyftpdlib") {
        return;
    }
    let r = ftp(
        plain(json!({"root_path": "/no-such-dir"})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = ftp(
        plain(json!({"port": kit::closed_port()})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn sftp_answers_not_implemented() {
    let r = ftp(plain(json!({"protocol": "sftp"})), &[]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn explicit_ftps_with_the_ca_passes_and_without_it_is_untrusted() {
    if !peer(FTPS_PORT, "pyftpdlib (FTPS)") {
        return;
    }
    let r = ftp(
        plain(json!({"port": FTPS_PORT, "protocol": "ftps", "tls_ca_certificate": kit::ca_pem()})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_ok(&r);
    let tls = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Tls)
        .unwrap();
    assert_eq!(tls.status, StageStatus::Ok);
    assert!(tls.detail.as_deref().unwrap().starts_with("AUTH TLS"));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = ftp(
        plain(json!({"port": FTPS_PORT, "protocol": "ftps"})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = ftp(
        plain(json!({"port": FTPS_PORT, "protocol": "ftps", "tls_verify": false})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}

#[tokio::test]
async fn plain_ftp_against_a_server_requiring_tls_is_auth_failed() {
    if !peer(FTPS_PORT, "pyftpdlib (FTPS)") {
        return;
    }
    let r = ftp(
        plain(json!({"port": FTPS_PORT})),
        &[("password", "pb-ftp-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}
