//! Cassandra probe against a CQL native protocol v4 responder in the test (no Cassandra
//! runs here): SUPPORTED to OPTIONS, AUTHENTICATE (PasswordAuthenticator) to STARTUP,
//! AUTH_SUCCESS or error 0x0100 to AUTH_RESPONSE, a Rows result for system.local and
//! SET_KEYSPACE or error 0x2200 for USE, framed as the v4 specification lays them out.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const USER: &str = "pb_cass";
const PASSWORD: &str = "pb-cass-pass";

fn s(v: &str) -> Vec<u8> {
    [&(v.len() as u16).to_be_bytes()[..], v.as_bytes()].concat()
}

async fn reply(sock: &mut TcpStream, stream: [u8; 2], opcode: u8, body: &[u8]) {
    let mut f = vec![0x84, 0, stream[0], stream[1], opcode];
    f.extend_from_slice(&(body.len() as i32).to_be_bytes());
    f.extend_from_slice(body);
    sock.write_all(&f).await.unwrap();
}

fn error(code: i32, msg: &str) -> Vec<u8> {
    [&code.to_be_bytes()[..], &s(msg)].concat()
}

async fn cql_server(requires_login: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut h = [0u8; 9];
                    if sock.read_exact(&mut h).await.is_err() {
                        return;
                    }
                    assert_eq!(h[0], 0x04, "a v4 request");
                    let len = i32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
                    let mut body = vec![0u8; len];
                    sock.read_exact(&mut body).await.unwrap();
                    let stream = [h[2], h[3]];
                    match h[4] {
                        0x05 => {
                            let mut b = 1u16.to_be_bytes().to_vec();
                            b.extend_from_slice(&s("CQL_VERSION"));
                            b.extend_from_slice(&1u16.to_be_bytes());
                            b.extend_from_slice(&s("3.4.7"));
                            reply(&mut sock, stream, 0x06, &b).await;
                        }
                        0x01 if requires_login => {
                            reply(
                                &mut sock,
                                stream,
                                0x03,
                                &s("org.apache.cassandra.auth.PasswordAuthenticator"),
                            )
                            .await
                        }
                        0x01 => reply(&mut sock, stream, 0x02, &[]).await,
                        0x0F => {
                            let token = &body[4..];
                            let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
                            if parts == [&b""[..], USER.as_bytes(), PASSWORD.as_bytes()] {
                                reply(&mut sock, stream, 0x10, &(-1i32).to_be_bytes()).await;
                            } else {
                                reply(
                                    &mut sock,
                                    stream,
                                    0x00,
                                    &error(
                                        0x0100,
                                        "Provided username and/or password are incorrect",
                                    ),
                                )
                                .await;
                            }
                        }
                        0x07 => {
                            let n = i32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                            let cql = String::from_utf8(body[4..4 + n].to_vec()).unwrap();
                            if cql.starts_with("SELECT release_version") {
                                // Rows: global table spec, one varchar column, one row.
                                let mut b = 2i32.to_be_bytes().to_vec();
                                b.extend_from_slice(&1i32.to_be_bytes());
                                b.extend_from_slice(&1i32.to_be_bytes());
                                b.extend_from_slice(&s("system"));
                                b.extend_from_slice(&s("local"));
                                b.extend_from_slice(&s("release_version"));
                                b.extend_from_slice(&0x000Du16.to_be_bytes());
                                b.extend_from_slice(&1i32.to_be_bytes());
                                b.extend_from_slice(&5i32.to_be_bytes());
                                b.extend_from_slice(b"4.1.7");
                                reply(&mut sock, stream, 0x08, &b).await;
                            } else if cql == "USE \"pb_ks\"" {
                                let b = [&3i32.to_be_bytes()[..], &s("pb_ks")].concat();
                                reply(&mut sock, stream, 0x08, &b).await;
                            } else {
                                reply(
                                    &mut sock,
                                    stream,
                                    0x00,
                                    &error(0x2200, "Keyspace 'nope' does not exist"),
                                )
                                .await;
                            }
                        }
                        op => panic!("unexpected opcode {op:#x}"),
                    }
                }
            });
        }
    });
    port
}

fn settings(port: u16) -> Value {
    json!({"contact_points": ["127.0.0.1"], "port": port, "local_datacenter": "dc1",
           "keyspace": "pb_ks", "username": USER})
}

async fn probe(settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "cassandra",
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_password_login_reads_the_version_and_uses_the_keyspace() {
    let port = cql_server(true).await;
    let r = probe(settings(port), PASSWORD).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.product.as_str(), server.version.as_str()),
        ("Apache Cassandra", "4.1.7")
    );
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    let port = cql_server(true).await;
    let r = probe(settings(port), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("0x0100"));
}

#[tokio::test]
async fn a_missing_keyspace_is_not_found_at_query() {
    let port = cql_server(true).await;
    let mut s = settings(port);
    s["keyspace"] = json!("nope");
    let r = probe(s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_server_without_authentication_is_ok_with_a_warning() {
    let port = cql_server(false).await;
    let r = probe(settings(port), PASSWORD).await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("without a login")));
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port()), PASSWORD).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = cql_server(true).await;
    let r = probe(settings(port), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "cassandra",
        |port| json!({"contact_points": ["127.0.0.1"], "port": port, "local_datacenter": "dc1"}),
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
    let r = kit::run(&kit::loopback(), "cassandra", json!({"contact_points": ["127.0.0.1"], "port": 6381, "local_datacenter": "dc1", "ssl_enabled": true}), &[("password", "p")], Duration::from_secs(5)).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
