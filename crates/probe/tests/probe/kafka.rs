//! Kafka probe against tansu brokers (scripts/peers-infra.sh): 19092 without
//! authentication (topic pb-topic), 19093 requiring SASL SCRAM (no user can log in there:
//! see below), and an in-test protocol responder for successful SASL logins.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const OPEN: u16 = 19092;
const SASL: u16 = 19093;

async fn kafka(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "kafka",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn sasl(mechanism: &str, user: &str, extra: Value) -> Value {
    let mut s = json!({
        "bootstrap_servers": [format!("127.0.0.1:{SASL}")],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "topic": "pb-topic",
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn an_open_broker_with_an_existing_topic_passes_and_reports_api_ranges() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")], "topic": "pb-topic"}),
        &[],
    )
    .await;
    assert_ok(&r);
    let server = r.server.clone().unwrap();
    assert!(server.version.contains("Metadata v0–v"), "{server:?}");
    let query = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(query.detail.as_deref().unwrap().contains("pb-topic"));
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
    // Without a topic the broker list is enough.
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")]}),
        &[],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_missing_topic_is_not_found_at_query() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")], "topic": "pb-no-such-topic"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

/// tansu 0.6.0 keeps users made with AlterUserScramCredentials where a broker started with
/// --authentication cannot see them, so its SCRAM exchange always ends in
/// e=unknown-user: the full exchange (handshake, client-first, server-first, proof) runs,
/// but a successful login is covered only by the SCRAM unit tests (RFC 7677 vectors).
#[tokio::test]
async fn scram_sha_256_and_512_run_the_full_exchange_and_an_unknown_user_is_auth_failed() {
    if !peer(SASL, "tansu (SASL SCRAM)") {
        return;
    }
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let r = kafka(
            sasl(mech, "pbkafka", json!({})),
            &[("sasl_password", "pb-kafka-pass")],
        )
        .await;
        assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
        assert!(r.error.unwrap().message.contains("unknown-user"));
    }
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth_and_never_echoed() {
    if !peer(SASL, "tansu (SASL SCRAM)") {
        return;
    }
    let r = kafka(
        sasl("SCRAM-SHA-256", "pbkafka", json!({})),
        &[("sasl_password", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_mechanism_the_broker_does_not_offer_is_auth_failed() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    // Without --authentication tansu answers SaslHandshake with UNSUPPORTED_SASL_MECHANISM.
    let r = kafka(
        json!({
            "bootstrap_servers": [format!("127.0.0.1:{OPEN}")],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "pbkafka",
        }),
        &[("sasl_password", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("does not accept"));
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{}", kit::closed_port())]}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn ssl_against_a_plaintext_listener_fails_at_tls() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    // tansu never answers a ClientHello: a short deadline keeps the test quick.
    let r = kit::run(
        &kit::loopback(),
        "kafka",
        json!({
            "bootstrap_servers": [format!("127.0.0.1:{OPEN}")],
            "security_protocol": "SSL",
            "ssl_ca_certificate": kit::ca_pem(),
        }),
        &[],
        Duration::from_secs(1),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Tls);
}

#[tokio::test]
async fn a_bootstrap_server_without_a_port_is_invalid_settings() {
    let r = kafka(json!({"bootstrap_servers": ["127.0.0.1"]}), &[]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

/// A Kafka SASL responder for the login paths tansu cannot show: it follows the protocol
/// (ApiVersions v0, SaslHandshake v1, SaslAuthenticate v0, Metadata v4) and checks PLAIN
/// and SCRAM-SHA-256/512 the way RFC 5802 describes a server (StoredKey = H(ClientKey)).
mod responder {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256, Sha512};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub const USER: &str = "pb-user";
    pub const PASSWORD: &str = "pb-responder-pass";

    fn hmac(sha512: bool, key: &[u8], msg: &[u8]) -> Vec<u8> {
        if sha512 {
            let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
    }

    fn h(sha512: bool, b: &[u8]) -> Vec<u8> {
        if sha512 {
            Sha512::digest(b).to_vec()
        } else {
            Sha256::digest(b).to_vec()
        }
    }

    fn salted(sha512: bool, salt: &[u8], i: u32) -> Vec<u8> {
        let mut u = hmac(
            sha512,
            PASSWORD.as_bytes(),
            &[salt, &1u32.to_be_bytes()].concat(),
        );
        let mut out = u.clone();
        for _ in 1..i {
            u = hmac(sha512, PASSWORD.as_bytes(), &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }

    fn str16(b: &[u8]) -> (String, &[u8]) {
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        (
            String::from_utf8_lossy(&b[2..2 + n]).into_owned(),
            &b[2 + n..],
        )
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn auth_answer(code: i16, token: &[u8]) -> Vec<u8> {
        let mut out = code.to_be_bytes().to_vec();
        out.extend_from_slice(&(-1i16).to_be_bytes()); // null error message
        out.extend_from_slice(&(token.len() as i32).to_be_bytes());
        out.extend_from_slice(token);
        out
    }

    pub async fn start() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, port));
            }
        });
        port
    }

    /// The same responder behind TLS with the peers' test server certificate.
    pub async fn start_tls() -> Option<u16> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = crate::kit::PEERS_DIR;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(format!("{dir}/server.pem"))
                .ok()?
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).ok()?;
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
                let a = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(s) = a.accept(s).await {
                        serve(s, port).await;
                    }
                });
            }
        });
        Some(port)
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, port: u16) {
        let mut mechanism = String::new();
        // (sha512, client-first-bare, server-first, salted password)
        let mut scram: Option<(bool, String, String, Vec<u8>)> = None;
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut req).await.unwrap();
            let key = i16::from_be_bytes([req[0], req[1]]);
            let correlation = &req[4..8];
            let (_client, body) = str16(&req[8..]);
            let answer = match key {
                18 => {
                    let mut out = 0i16.to_be_bytes().to_vec();
                    let apis: [(i16, i16, i16); 4] =
                        [(3, 0, 12), (17, 0, 1), (18, 0, 3), (36, 0, 2)];
                    out.extend_from_slice(&(apis.len() as i32).to_be_bytes());
                    for (k, lo, hi) in apis {
                        for v in [k, lo, hi] {
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                    }
                    out
                }
                17 => {
                    mechanism = str16(body).0;
                    let offered = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
                    let code: i16 = if offered.contains(&mechanism.as_str()) {
                        0
                    } else {
                        33
                    };
                    let mut out = code.to_be_bytes().to_vec();
                    out.extend_from_slice(&(offered.len() as i32).to_be_bytes());
                    for m in offered {
                        put_str(&mut out, m);
                    }
                    out
                }
                36 => {
                    let n = i32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                    let token = String::from_utf8_lossy(&body[4..4 + n]).into_owned();
                    if mechanism == "PLAIN" {
                        let ok = token == format!("\0{USER}\0{PASSWORD}");
                        auth_answer(if ok { 0 } else { 58 }, b"")
                    } else if let Some((sha512, first_bare, server_first, salted)) = scram.take() {
                        let (without_proof, proof) = token.rsplit_once(",p=").unwrap();
                        let auth_message = format!("{first_bare},{server_first},{without_proof}");
                        let client_key = hmac(sha512, &salted, b"Client Key");
                        let stored = h(sha512, &client_key);
                        let signature = hmac(sha512, &stored, auth_message.as_bytes());
                        let proof = B64.decode(proof).unwrap();
                        let recovered: Vec<u8> =
                            proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                        if h(sha512, &recovered) == stored {
                            let server_key = hmac(sha512, &salted, b"Server Key");
                            let v = B64.encode(hmac(sha512, &server_key, auth_message.as_bytes()));
                            auth_answer(0, format!("v={v}").as_bytes())
                        } else {
                            auth_answer(58, b"")
                        }
                    } else {
                        let sha512 = mechanism == "SCRAM-SHA-512";
                        let first_bare = token.strip_prefix("n,,").unwrap().to_owned();
                        let nonce = first_bare.split(",r=").nth(1).unwrap();
                        let user = first_bare
                            .strip_prefix("n=")
                            .unwrap()
                            .split(',')
                            .next()
                            .unwrap();
                        assert_eq!(user, USER);
                        let salt = b"patchbay-salt";
                        let server_first =
                            format!("r={nonce}srv0123,s={},i=4096", B64.encode(salt));
                        let answer = auth_answer(0, server_first.as_bytes());
                        scram = Some((
                            sha512,
                            first_bare.clone(),
                            server_first,
                            salted(sha512, salt, 4096),
                        ));
                        answer
                    }
                }
                3 => {
                    let (topic, _) = str16(&body[4..]);
                    let mut out = 0i32.to_be_bytes().to_vec(); // throttle
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&1i32.to_be_bytes());
                    put_str(&mut out, "127.0.0.1");
                    out.extend_from_slice(&(port as i32).to_be_bytes());
                    out.extend_from_slice(&(-1i16).to_be_bytes()); // rack
                    out.extend_from_slice(&(-1i16).to_be_bytes()); // cluster id
                    out.extend_from_slice(&1i32.to_be_bytes()); // controller
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&0i16.to_be_bytes());
                    put_str(&mut out, &topic);
                    out.push(0);
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&0i16.to_be_bytes());
                    out.extend_from_slice(&0i32.to_be_bytes());
                    out.extend_from_slice(&1i32.to_be_bytes()); // leader
                    for _ in 0..2 {
                        out.extend_from_slice(&1i32.to_be_bytes());
                        out.extend_from_slice(&1i32.to_be_bytes());
                    }
                    out
                }
                _ => return,
            };
            let mut frame = ((answer.len() + 4) as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(correlation);
            frame.extend_from_slice(&answer);
            s.write_all(&frame).await.unwrap();
        }
    }
}

#[tokio::test]
async fn plain_and_scram_logins_pass_against_a_protocol_responder_and_a_wrong_password_fails() {
    let port = responder::start().await;
    let settings = |mech: &str| {
        json!({
            "bootstrap_servers": [format!("127.0.0.1:{port}")],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mech,
            "sasl_username": responder::USER,
            "topic": "pb-topic",
        })
    };
    for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let r = kafka(settings(mech), &[("sasl_password", responder::PASSWORD)]).await;
        assert_ok(&r);
        let r = kafka(settings(mech), &[("sasl_password", CANARY)]).await;
        assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
        assert!(
            !serde_json::to_string(&r).unwrap().contains(CANARY),
            "{mech}"
        );
    }
}

#[tokio::test]
async fn no_sasl_against_a_broker_that_requires_it_is_auth_failed_at_query() {
    if !peer(SASL, "tansu (SASL SCRAM)") {
        return;
    }
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{SASL}")], "topic": "pb-topic"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().hint.unwrap().contains("SASL"));
}

#[tokio::test]
async fn sasl_ssl_with_the_ca_passes_and_without_it_is_untrusted_at_tls() {
    let Some(port) = responder::start_tls().await else {
        kit::peer(0, "the test CA (scripts/peers-probe.sh)");
        return;
    };
    let settings = json!({
        "bootstrap_servers": [format!("127.0.0.1:{port}")],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": responder::USER,
        "ssl_ca_certificate": kit::ca_pem(),
        "topic": "pb-topic",
    });
    let r = kafka(settings.clone(), &[("sasl_password", responder::PASSWORD)]).await;
    assert_ok(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let mut untrusted = settings;
    untrusted
        .as_object_mut()
        .unwrap()
        .remove("ssl_ca_certificate");
    let r = kafka(untrusted, &[("sasl_password", responder::PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
