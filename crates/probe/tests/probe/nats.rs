//! NATS probe against the user/password servers of scripts/peers-brokers.sh: plain on 4223,
//! TLS (the test CA's certificate) on 4224; the pre-started 4222 has no auth.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 4223;
const TLS_PORT: u16 = 4224;

async fn nats(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "nats",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn plain(user: &str) -> Value {
    json!({"servers": [format!("nats://127.0.0.1:{PORT}")], "username": user})
}

#[tokio::test]
async fn the_right_password_passes_and_reports_the_version() {
    if !peer(PORT, "NATS (user/password)") {
        return;
    }
    let r = nats(plain("pb"), &[("password", "pb-nats-pass")]).await;
    assert_ok(&r);
    let s = r.server.as_ref().unwrap();
    assert_eq!(s.product, "NATS");
    assert!(s.version.starts_with('2'), "{s:?}");
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_appears_in_the_result() {
    if !peer(PORT, "NATS (user/password)") {
        return;
    }
    let r = nats(plain("pb"), &[("password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("Authorization Violation"));
    kit::assert_no_canary(&r);
    // A token the server does not know is the same violation.
    let r = nats(
        json!({"servers": [format!("nats://127.0.0.1:{PORT}")]}),
        &[("token", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn the_open_server_passes_without_credentials() {
    if !peer(4222, "NATS (pre-started)") {
        return;
    }
    let r = nats(json!({"servers": ["nats://127.0.0.1:4222"]}), &[]).await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = nats(
        json!({"servers": [format!("nats://127.0.0.1:{}", kit::closed_port())]}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn credentials_in_the_url_are_invalid_settings() {
    let r = nats(json!({"servers": ["nats://pb:secret@127.0.0.1:4223"]}), &[]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    assert!(!serde_json::to_string(&r).unwrap().contains("secret"));
}

#[tokio::test]
async fn tls_with_the_ca_passes_without_it_is_untrusted_and_plain_is_refused() {
    if !peer(TLS_PORT, "NATS (TLS)") {
        return;
    }
    let url = format!("tls://127.0.0.1:{TLS_PORT}");
    let r = nats(
        json!({"servers": [url], "username": "pb", "tls_ca_certificate": kit::ca_pem()}),
        &[("password", "pb-nats-pass")],
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = nats(
        json!({"servers": [url], "username": "pb"}),
        &[("password", "pb-nats-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = nats(
        json!({"servers": [format!("nats://127.0.0.1:{TLS_PORT}")], "username": "pb"}),
        &[("password", "pb-nats-pass")],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHandshake);
}

/// Creates (idempotently) a memory stream on the pre-started JetStream server.
fn create_stream(name: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect("127.0.0.1:4222").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let config = format!(r#"{{"name":"{name}","subjects":["{name}.>"],"storage":"memory"}}"#);
    write!(
        s,
        "CONNECT {{\"verbose\":false}}\r\nPUB $JS.API.STREAM.CREATE.{name} {}\r\n{config}\r\nPING\r\n",
        config.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 && !line.contains("PONG") {
        line.clear();
    }
}

#[tokio::test]
async fn jetstream_account_info_and_a_known_stream_pass_an_unknown_stream_is_not_found() {
    if !peer(4222, "NATS with JetStream (pre-started)") {
        return;
    }
    create_stream("PBPROBE");
    let base = json!({"servers": ["nats://127.0.0.1:4222"], "jetstream": true});
    let r = nats(base.clone(), &[]).await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(
        q.detail.as_deref().unwrap().contains("account info"),
        "{q:?}"
    );
    let mut known = base.clone();
    known["stream"] = json!("PBPROBE");
    assert_ok(&nats(known, &[]).await);
    let mut unknown = base;
    unknown["stream"] = json!("PB_NO_SUCH_STREAM");
    let r = nats(unknown, &[]).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn jetstream_on_a_server_without_it_is_not_found() {
    if !peer(PORT, "NATS (user/password)") {
        return;
    }
    let mut s = plain("pb");
    s["jetstream"] = json!(true);
    let r = nats(s, &[("password", "pb-nats-pass")]).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}
