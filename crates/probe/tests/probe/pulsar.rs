//! Pulsar probe against a responder in the test that speaks the broker's binary protocol
//! (size-prefixed BaseCommand protobufs from PulsarApi.proto): CONNECTED to a CONNECT with
//! the right token (auth_method_name "token"), ERROR AuthenticationError otherwise; a
//! LOOKUP_RESPONSE (Connect, or Failed with TopicNotFound) and PONG.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.pb-token.sig";

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int_field(n: u64, v: u64, out: &mut Vec<u8>) {
    varint(n << 3, out);
    varint(v, out);
}

fn bytes_field(n: u64, v: &[u8], out: &mut Vec<u8>) {
    varint((n << 3) | 2, out);
    varint(v.len() as u64, out);
    out.extend_from_slice(v);
}

/// (field, varint or bytes) pairs of a message.
fn decode(b: &[u8]) -> Vec<(u64, Result<u64, Vec<u8>>)> {
    let read = |at: &mut usize| {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7F) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return v;
            }
        }
    };
    let mut out = vec![];
    let mut at = 0;
    while at < b.len() {
        let key = read(&mut at);
        if key & 7 == 0 {
            out.push((key >> 3, Ok(read(&mut at))));
        } else {
            let n = read(&mut at) as usize;
            out.push((key >> 3, Err(b[at..at + n].to_vec())));
            at += n;
        }
    }
    out
}

fn get_bytes(f: &[(u64, Result<u64, Vec<u8>>)], n: u64) -> Option<Vec<u8>> {
    f.iter()
        .find_map(|(k, v)| if *k == n { v.clone().err() } else { None })
}

async fn send(s: &mut TcpStream, ty: u64, inner: Vec<u8>) {
    let mut cmd = vec![];
    int_field(1, ty, &mut cmd);
    bytes_field(ty, &inner, &mut cmd);
    let mut f = ((cmd.len() + 4) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
    f.extend_from_slice(&cmd);
    s.write_all(&f).await.unwrap();
}

fn error(code: u64, msg: &str) -> Vec<u8> {
    let mut e = vec![];
    int_field(1, u64::MAX, &mut e);
    int_field(2, code, &mut e);
    bytes_field(3, msg.as_bytes(), &mut e);
    e
}

async fn broker(requires_token: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut h = [0u8; 8];
                    if s.read_exact(&mut h).await.is_err() {
                        return;
                    }
                    let total = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
                    let mut rest = vec![0u8; total - 4];
                    s.read_exact(&mut rest).await.unwrap();
                    let cmd = decode(&rest);
                    let ty = cmd[0].1.clone().unwrap();
                    let inner = decode(&get_bytes(&cmd, ty).unwrap_or_default());
                    match ty {
                        2 => {
                            let token = get_bytes(&inner, 3);
                            let method = get_bytes(&inner, 5);
                            if requires_token
                                && (method.as_deref() != Some(b"token")
                                    || token.as_deref() != Some(TOKEN.as_bytes()))
                            {
                                send(&mut s, 14, error(3, "Failed to authentication token: JWT signature does not match")).await;
                                return;
                            }
                            let mut c = vec![];
                            bytes_field(1, b"Pulsar Server3.3.2", &mut c);
                            int_field(2, 15, &mut c);
                            send(&mut s, 3, c).await;
                        }
                        23 => {
                            let topic = String::from_utf8(get_bytes(&inner, 1).unwrap()).unwrap();
                            let mut r = vec![];
                            if topic == "persistent://public/default/pb-topic" {
                                bytes_field(
                                    1,
                                    format!("pulsar://127.0.0.1:{port}").as_bytes(),
                                    &mut r,
                                );
                                int_field(3, 1, &mut r);
                                int_field(4, 1, &mut r);
                            } else {
                                int_field(3, 2, &mut r);
                                int_field(4, 1, &mut r);
                                int_field(6, 11, &mut r);
                                bytes_field(7, b"Topic not found", &mut r);
                            }
                            send(&mut s, 24, r).await;
                        }
                        18 => send(&mut s, 19, vec![]).await,
                        other => panic!("unexpected command {other}"),
                    }
                }
            });
        }
    });
    port
}

fn settings(port: u16) -> Value {
    json!({"service_url": format!("pulsar://127.0.0.1:{port}"), "auth_method": "token",
           "topic": "persistent://public/default/pb-topic"})
}

async fn probe(settings: Value, token: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "pulsar",
        settings,
        &[("token", token)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_token_connect_and_a_topic_lookup_succeed() {
    let port = broker(true).await;
    let r = probe(settings(port), TOKEN).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.product.as_str(), server.version.as_str()),
        ("Apache Pulsar", "3.3.2")
    );
}

#[tokio::test]
async fn a_wrong_token_is_auth_failed_at_auth() {
    let port = broker(true).await;
    let r = probe(settings(port), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn a_missing_topic_is_not_found_at_query() {
    let port = broker(true).await;
    let mut s = settings(port);
    s["topic"] = json!("persistent://public/default/nope");
    let r = probe(s, TOKEN).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn without_a_topic_a_ping_is_enough_and_no_auth_is_warned() {
    let port = broker(false).await;
    let r = kit::run(
        &kit::loopback(),
        "pulsar",
        json!({"service_url": format!("pulsar://127.0.0.1:{port}")}),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("without authentication")));
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port()), TOKEN).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn the_token_never_appears_in_the_result() {
    let port = broker(true).await;
    let r = probe(settings(port), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "pulsar",
        |port| json!({"service_url": format!("pulsar://127.0.0.1:{port}")}),
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
        "pulsar",
        json!({"service_url": "pulsar+ssl://127.0.0.1:6381"}),
        &[("password", "p")],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
