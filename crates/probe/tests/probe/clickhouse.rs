//! ClickHouse probe against a responder in the test that answers as ClickHouse's HTTP
//! interface does: `/ping` → "Ok.", queries authenticated by X-ClickHouse-User/Key, errors
//! as an HTTP status plus `X-ClickHouse-Exception-Code` and a `Code: N. DB::Exception` body
//! (516 AUTHENTICATION_FAILED → 401, 81 UNKNOWN_DATABASE → 404).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::http_responder::{serve, Reply};
use crate::kit::{self, assert_failed, assert_ok, CANARY};

const USER: &str = "pb_ch";
const PASSWORD: &str = "pb-ch-pass";

fn error(status: u16, code: u32, name: &str, text: &str) -> Reply {
    Reply {
        status,
        headers: vec![("x-clickhouse-exception-code", code.to_string())],
        body: format!(
            "Code: {code}. DB::Exception: {text}. ({name}) (version 24.8.4.13 (official build))\n"
        )
        .into_bytes(),
    }
}

fn text(body: &str) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

async fn clickhouse_like() -> u16 {
    serve(|req| {
        if req.target == "/ping" {
            return text("Ok.\n");
        }
        if req.header("x-clickhouse-user") != Some(USER) || req.header("x-clickhouse-key") != Some(PASSWORD) {
            return error(401, 516, "AUTHENTICATION_FAILED", "pb_ch: Authentication failed: password is incorrect, or there is no user with such name");
        }
        if req.target.contains("database=") && !req.target.contains("database=pbdb") {
            return error(404, 81, "UNKNOWN_DATABASE", "Database nope does not exist");
        }
        if req.target.contains("version%28%29") {
            text("24.8.4.13\n")
        } else {
            text("1\n")
        }
    })
    .await
}

fn settings(port: u16) -> Value {
    json!({"host": "127.0.0.1", "protocol": "http", "port": port, "database": "pbdb", "username": USER})
}

async fn probe(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "clickhouse",
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn ping_login_and_version_succeed() {
    let port = clickhouse_like().await;
    let r = probe(settings(port), PASSWORD).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.product.as_str(), server.version.as_str()),
        ("ClickHouse", "24.8.4.13")
    );
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    let port = clickhouse_like().await;
    let r = probe(settings(port), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("AUTHENTICATION_FAILED"));
}

#[tokio::test]
async fn a_missing_database_is_not_found_at_query() {
    let port = clickhouse_like().await;
    let mut s = settings(port);
    s["database"] = json!("nope");
    let r = probe(s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_server_that_is_not_clickhouse_is_protocol_mismatch() {
    let port = serve(|_| text("hello")).await;
    let r = probe(settings(port), PASSWORD).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::ProtocolMismatch);
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port()), PASSWORD).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn the_native_protocol_is_not_implemented_before_any_contact() {
    let mut s = settings(kit::closed_port());
    s["protocol"] = json!("native");
    let r = probe(s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = clickhouse_like().await;
    let r = probe(settings(port), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "clickhouse",
        |port| json!({"host": "127.0.0.1", "protocol": "http", "port": port}),
        &[],
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
    let r = kit::run(
        &kit::loopback(),
        "clickhouse",
        json!({"host": "127.0.0.1", "protocol": "https", "port": 6381}),
        &[("password", "p")],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
