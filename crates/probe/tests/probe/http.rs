//! HTTP family probe against a local responder that follows the shape of the OpenAI
//! models endpoint (bearer auth, `/data` in the answer), plus redirects and TLS.

use std::sync::Arc;
use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

pub const GOOD_KEY: &str = "good-key";

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, redirects: &[String]) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_end_matches('/')
        .to_owned();
    let authorized = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {GOOD_KEY}")));
    let (status, location, body) = if let Some(n) = path.strip_prefix("/r/") {
        let target = redirects[n.parse::<usize>().unwrap()].clone();
        ("302 Found", Some(target), String::new())
    } else if path == "/hop" {
        ("302 Found", Some("/v1/models".to_owned()), String::new())
    } else if path == "/v1/models" && authorized {
        ("200 OK", None, json!({"data": []}).to_string())
    } else if path == "/v1/models" {
        (
            "401 Unauthorized",
            None,
            json!({"error": "bad key"}).to_string(),
        )
    } else if path == "/v1/other" {
        ("200 OK", None, json!({"nothing": true}).to_string())
    } else {
        ("404 Not Found", None, String::new())
    };
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    if let Some(l) = location {
        out.push_str(&format!("location: {l}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A plain HTTP responder; `/r/N` redirects to `redirects[N]`.
pub async fn responder(redirects: Vec<String>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let redirects = Arc::new(redirects);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let r = redirects.clone();
            tokio::spawn(async move { answer(s, &r).await });
        }
    });
    port
}

/// The same responder over TLS with the peers' test server certificate.
pub async fn tls_responder() -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{}/server.pem", kit::PEERS_DIR))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(format!("{}/server.key", kit::PEERS_DIR)).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(s) = a.accept(s).await {
                    answer(s, &[]).await;
                }
            });
        }
    });
    port
}

async fn openai(base: String, key: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "openai",
        json!({"base_url": base}),
        &[("api_key", key)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn the_declared_check_passes_with_the_right_key() {
    let port = responder(vec![]).await;
    let r = openai(format!("http://127.0.0.1:{port}/v1"), GOOD_KEY).await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_wrong_key_is_auth_failed_at_auth_and_not_echoed() {
    let port = responder(vec![]).await;
    let r = openai(format!("http://127.0.0.1:{port}/v1"), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_wrong_base_path_is_not_found() {
    let port = responder(vec![]).await;
    let r = openai(format!("http://127.0.0.1:{port}/v2"), GOOD_KEY).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = openai(
        format!("http://127.0.0.1:{}/v1", kit::closed_port()),
        GOOD_KEY,
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn an_answer_without_the_declared_json_pointer_is_a_protocol_mismatch() {
    let port = responder(vec![]).await;
    let r = kit::run(
        &kit::loopback(),
        "rest",
        json!({"base_url": format!("http://127.0.0.1:{port}"), "health_check_path": "/v1/other"}),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r); // rest declares no pointer
    let r = kit::run(
        &kit::loopback(),
        "github",
        json!({"base_url": format!("http://127.0.0.1:{port}/v1/other#")}),
        &[("token", GOOD_KEY)],
        Duration::from_secs(5),
    )
    .await;
    assert!(!r.ok);
}

#[tokio::test]
async fn a_same_origin_redirect_is_followed_through_the_guard() {
    let port = responder(vec![]).await;
    let r = kit::run(
        &kit::loopback(),
        "rest",
        json!({"base_url": format!("http://127.0.0.1:{port}"), "health_check_path": "/hop",
               "auth_type": "bearer"}),
        &[("bearer_token", GOOD_KEY)],
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r);
}

fn rest_tls(port: u16, extra: Value) -> Value {
    let mut s = json!({"base_url": format!("https://127.0.0.1:{port}"), "health_check_path": "/v1/models", "auth_type": "bearer"});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn https_with_the_ca_passes_and_without_it_is_untrusted_at_tls() {
    if !peer(5433, "probe peers (test CA)") {
        return;
    }
    let port = tls_responder().await;
    let guard = kit::loopback();
    let secrets = [("bearer_token", GOOD_KEY)];
    let r = kit::run(
        &guard,
        "rest",
        rest_tls(port, json!({"tls_ca_certificate": kit::ca_pem()})),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r);
    let r = kit::run(
        &guard,
        "rest",
        rest_tls(port, json!({})),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = kit::run(
        &guard,
        "rest",
        rest_tls(port, json!({"tls_verify": false})),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}

#[tokio::test]
async fn https_to_a_name_the_certificate_does_not_list_is_a_hostname_mismatch() {
    if !peer(5433, "probe peers (test CA)") {
        return;
    }
    let port = tls_responder().await;
    let mut names = std::collections::HashMap::new();
    names.insert(
        "api.other.test".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    let guard = patchbay_probe::NetworkGuard::with_resolver(
        patchbay_probe::Policy::parse("127.0.0.1", "").unwrap(),
        Arc::new(patchbay_probe::guard::StaticResolver(names)),
    );
    let mut settings = rest_tls(port, json!({"tls_ca_certificate": kit::ca_pem()}));
    settings["base_url"] = json!(format!("https://api.other.test:{port}"));
    let r = kit::run(
        &guard,
        "rest",
        settings,
        &[("bearer_token", GOOD_KEY)],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHostnameMismatch);
}
