//! STOMP probe (type activemq) against Debian's ActiveMQ Classic (scripts/peers-more-a.sh):
//! STOMP on 127.0.0.1:61613, user pbamq / pb-amq-pass, anonymous access refused. TLS is
//! tested through a TLS terminator in the test (test CA) in front of the same broker.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 61613;
const USER: &str = "pbamq";
const PASSWORD: &str = "pb-amq-pass";

async fn stomp(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "activemq",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn plain(user: &str) -> Value {
    json!({"host": "127.0.0.1", "port": PORT, "username": user})
}

#[tokio::test]
async fn the_user_connects_and_the_broker_names_itself() {
    if !peer(PORT, "ActiveMQ STOMP") {
        return;
    }
    let r = stomp(plain(USER), &[("password", PASSWORD)]).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "ActiveMQ");
    assert!(server.version.starts_with('5'), "{server:?}");
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_wrong_password_is_an_error_frame_and_auth_failed() {
    if !peer(PORT, "ActiveMQ STOMP") {
        return;
    }
    let r = stomp(plain(USER), &[("password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn no_login_on_a_broker_without_anonymous_access_is_auth_failed() {
    if !peer(PORT, "ActiveMQ STOMP") {
        return;
    }
    let r = stomp(json!({"host": "127.0.0.1", "port": PORT}), &[]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .hint
        .as_deref()
        .unwrap()
        .contains("requires a login"));
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let mut s = plain(USER);
    s["port"] = json!(kit::closed_port());
    let r = stomp(s, &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn openwire_is_said_not_implemented() {
    let mut s = plain(USER);
    s["transport"] = json!("openwire");
    let r = stomp(s, &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

/// A TLS terminator with the peers' test server certificate forwarding to the broker.
async fn tls_front() -> Option<u16> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = format!("{}/server.pem", kit::PEERS_DIR);
    if !std::path::Path::new(&pem).exists() {
        kit::peer(0, "the test CA (scripts/peers-probe.sh)");
        return None;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(format!("{}/server.key", kit::PEERS_DIR)).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    if let Ok(mut broker) = TcpStream::connect(("127.0.0.1", PORT)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    }
                }
            });
        }
    });
    Some(port)
}

#[tokio::test]
async fn over_tls_with_the_ca_it_connects_and_without_it_is_untrusted_at_tls() {
    if !peer(PORT, "ActiveMQ STOMP") {
        return;
    }
    let Some(port) = tls_front().await else {
        return;
    };
    let s = json!({"host": "127.0.0.1", "port": port, "username": USER, "tls": true,
        "tls_ca_certificate": kit::ca_pem()});
    let r = stomp(s, &[("password", PASSWORD)]).await;
    assert_ok(&r);
    assert!(!r.warnings.iter().any(|w| w.contains("not encrypted")));
    let s = json!({"host": "127.0.0.1", "port": port, "username": USER, "tls": true});
    let r = stomp(s, &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
