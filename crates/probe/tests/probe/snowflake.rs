//! Snowflake probe: the success path against fakesnow on 18900 (scripts/peers-more-c.sh),
//! which speaks Snowflake's HTTP protocol but accepts any password, so the error codes of
//! a real account (390100 wrong login, 390201 missing database) come from a responder
//! that answers as Snowflake documents.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::http_responder::{serve, Reply};
use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const FAKESNOW: u16 = 18900;

fn settings(port: u16) -> Value {
    json!({"account": "fakesnow", "username": "pb_user", "host": "127.0.0.1",
           "port": port, "protocol": "http"})
}

async fn probe(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "snowflake",
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

/// Answers the login with `login` and any query with a JSON rowset.
async fn snowflake_like(login: Value) -> u16 {
    serve(move |req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if req.method != "POST" {
            Reply::json(json!({"success": false, "code": "000000", "message": "POST only"}))
        } else if req.target.starts_with("/session/v1/login-request") {
            assert_eq!(body["data"]["LOGIN_NAME"], "pb_user");
            assert_eq!(body["data"]["ACCOUNT_NAME"], "FAKESNOW");
            Reply::json(login.clone())
        } else if req.target.starts_with("/queries/v1/query-request")
            && req.header("authorization") == Some("Snowflake Token=\"tok-1\"")
        {
            Reply::json(json!({"success": true, "data": {"rowset": [["9.1.0"]]}}))
        } else {
            Reply::json(json!({"success": false, "code": "390104", "message": "no session"}))
        }
    })
    .await
}

#[tokio::test]
async fn login_and_current_version_succeed_against_fakesnow() {
    if !peer(FAKESNOW, "fakesnow (Snowflake)") {
        return;
    }
    let mut s = settings(FAKESNOW);
    s["database"] = json!("pb_db");
    s["schema"] = json!("pb_schema");
    let r = probe(s, "pb-snow-pass").await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "Snowflake");
    assert!(!server.version.is_empty() && server.version != "unknown");
    assert!(r.warnings.iter().any(|w| w.contains("plain HTTP")));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    let port = snowflake_like(
        json!({"success": false, "code": "390100", "data": {"nextAction": "RETRY_LOGIN"},
        "message": "Incorrect username or password was specified."}),
    )
    .await;
    let r = probe(settings(port), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("390100"));
}

#[tokio::test]
async fn a_missing_database_is_not_found_at_auth() {
    let port = snowflake_like(json!({"success": false, "code": "390201", "data": null,
        "message": "The requested database does not exist or not authorized."}))
    .await;
    let mut s = settings(port);
    s["database"] = json!("NOPE");
    let r = probe(s, "pw").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
}

#[tokio::test]
async fn the_version_comes_from_the_query_and_the_token_is_sent() {
    let port = snowflake_like(
        json!({"success": true, "data": {"token": "tok-1", "serverVersion": "9.0.0"}}),
    )
    .await;
    let r = probe(settings(port), "pw").await;
    assert_ok(&r);
    assert_eq!(r.server.unwrap().version, "9.1.0");
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port()), "pw").await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn key_pair_login_is_not_implemented_before_any_contact() {
    let mut s = settings(kit::closed_port());
    s["authenticator"] = json!("snowflake_jwt");
    let r = kit::run(
        &kit::loopback(),
        "snowflake",
        s,
        &[("private_key", "x")],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = snowflake_like(json!({"success": false, "code": "390100",
        "message": "Incorrect username or password was specified."}))
    .await;
    let r = probe(settings(port), CANARY).await;
    kit::assert_no_canary(&r);
    if peer(FAKESNOW, "fakesnow (Snowflake)") {
        let r = probe(settings(FAKESNOW), CANARY).await;
        kit::assert_no_canary(&r);
    }
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "snowflake",
        |port| json!({"account": "a", "username": "u", "host": "127.0.0.1", "port": port, "protocol": "http"}),
        &[("password", "p")],
        ProbeStage::Auth,
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_untrusted_at_tls() {
    // The TLS Redis of scripts/peers-probe.sh presents a test-CA certificate.
    if !kit::peer(6381, "TLS Redis (test CA)") {
        return;
    }
    let r = kit::run(&kit::loopback(), "snowflake", json!({"account": "a", "username": "u", "host": "127.0.0.1", "port": 6381, "protocol": "https"}), &[("password", "p")], Duration::from_secs(5)).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
