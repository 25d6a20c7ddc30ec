//! AMQP 0-9-1 probe against the pre-started RabbitMQ on 5672 (scripts/peers-brokers.sh adds
//! user pb on vhost pb-vhost and pb_noperm without rights there).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 5672;

fn settings(user: &str, vhost: &str) -> Value {
    json!({"host": "127.0.0.1", "port": PORT, "username": user, "virtual_host": vhost})
}

async fn amqp(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "rabbitmq",
        settings,
        &[("password", password)],
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn a_user_with_rights_opens_its_vhost_and_the_broker_is_named() {
    if !peer(PORT, "RabbitMQ") {
        return;
    }
    let r = amqp(settings("pb", "pb-vhost"), "pb-amqp-pass").await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "RabbitMQ");
    assert!(!server.version.is_empty());
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert_eq!(q.status, StageStatus::Ok);
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_appears_in_the_result() {
    if !peer(PORT, "RabbitMQ") {
        return;
    }
    let r = amqp(settings("pb", "pb-vhost"), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn an_unknown_vhost_is_not_found_and_one_without_rights_is_permission_denied() {
    if !peer(PORT, "RabbitMQ") {
        return;
    }
    let r = amqp(settings("pb", "pb-no-such-vhost"), "pb-amqp-pass").await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    assert!(r.error.unwrap().hint.unwrap().contains("pb-no-such-vhost"));
    let r = amqp(settings("pb_noperm", "pb-vhost"), "pb-noperm-pass").await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::PermissionDenied);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = amqp(
        json!({"host": "127.0.0.1", "port": kit::closed_port()}),
        "x",
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn tls_against_the_plain_port_fails_at_tls() {
    if !peer(PORT, "RabbitMQ") {
        return;
    }
    let mut s = settings("pb", "pb-vhost");
    s["tls"] = json!(true);
    let r = kit::run(
        &kit::loopback(),
        "rabbitmq",
        s,
        &[("password", "pb-amqp-pass")],
        Duration::from_secs(3),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Tls);
}

/// A broker that drops the socket after StartOk, as RabbitMQ does for clients that do not
/// ask for authentication_failure_close.
#[tokio::test]
async fn a_broker_closing_the_socket_after_the_login_is_auth_failed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        s.read_exact(&mut header).await.unwrap();
        // Connection.Start: 0-9, empty properties, mechanisms "PLAIN", locales "en_US".
        let mut args = vec![0, 10, 0, 10, 0, 9];
        args.extend_from_slice(&0u32.to_be_bytes());
        args.extend_from_slice(&5u32.to_be_bytes());
        args.extend_from_slice(b"PLAIN");
        args.extend_from_slice(&5u32.to_be_bytes());
        args.extend_from_slice(b"en_US");
        let payload = &args;
        let mut frame = vec![1, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xce);
        s.write_all(&frame).await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        drop(s);
    });
    let r = amqp(
        json!({"host": "127.0.0.1", "port": port, "username": "u"}),
        CANARY,
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

/// A TLS front (the test CA's server certificate, rustls) relaying to the plain RabbitMQ,
/// so AMQP over verified TLS runs against the real broker without reconfiguring it.
async fn tls_front() -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let dir = kit::PEERS_DIR;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{dir}/server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(("127.0.0.1", PORT))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn amqp_over_verified_tls_passes_and_without_the_ca_is_untrusted() {
    if !peer(PORT, "RabbitMQ") {
        return;
    }
    let port = tls_front().await;
    let settings = |ca: Value| {
        json!({"host": "127.0.0.1", "port": port, "username": "pb", "virtual_host": "pb-vhost",
               "tls": true, "tls_ca_certificate": ca})
    };
    let r = amqp(settings(json!(kit::ca_pem())), "pb-amqp-pass").await;
    assert_ok(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = amqp(settings(Value::Null), "pb-amqp-pass").await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
