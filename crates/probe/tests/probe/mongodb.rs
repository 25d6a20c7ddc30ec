//! MongoDB probe against a responder in the test (no MongoDB server can be installed
//! here): it speaks OP_MSG with BSON, answers hello, runs the server side of
//! SCRAM-SHA-256 (RFC 5802/7677: it verifies the client proof and signs its answer), and
//! answers ping, buildInfo and listCollections — or code 18 AuthenticationFailed.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const USER: &str = "pb_mongo";
const PASSWORD: &str = "pb-mongo-pass";

#[derive(Clone, Debug)]
enum B {
    I(i32),
    D(f64),
    S(String),
    Bin(Vec<u8>),
    T(bool),
    Doc(Vec<(String, B)>),
    Arr(Vec<B>),
}

fn enc(d: &[(String, B)]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    for (k, v) in d {
        let (ty, bytes): (u8, Vec<u8>) = match v {
            B::I(i) => (0x10, i.to_le_bytes().to_vec()),
            B::D(f) => (0x01, f.to_le_bytes().to_vec()),
            B::S(s) => (
                0x02,
                [&(s.len() as i32 + 1).to_le_bytes()[..], s.as_bytes(), &[0]].concat(),
            ),
            B::Bin(b) => (
                0x05,
                [&(b.len() as i32).to_le_bytes()[..], &[0], b].concat(),
            ),
            B::T(t) => (0x08, vec![u8::from(*t)]),
            B::Doc(d) => (0x03, enc(d)),
            B::Arr(a) => (
                0x04,
                enc(&a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v.clone()))
                    .collect::<Vec<_>>()),
            ),
        };
        out.push(ty);
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(&bytes);
    }
    out.push(0);
    let n = out.len() as i32;
    out[..4].copy_from_slice(&n.to_le_bytes());
    out
}

/// Decodes the types the probe sends.
fn dec(b: &[u8]) -> Vec<(String, B)> {
    let len = i32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let body = &b[4..len - 1];
    let mut d = vec![];
    let mut i = 0;
    while i < body.len() {
        let ty = body[i];
        let end = i + 1 + body[i + 1..].iter().position(|c| *c == 0).unwrap();
        let key = String::from_utf8(body[i + 1..end].to_vec()).unwrap();
        let r = &body[end + 1..];
        let n = |at: usize| i32::from_le_bytes(r[at..at + 4].try_into().unwrap()) as usize;
        let (v, used) = match ty {
            0x10 => (B::I(n(0) as i32), 4),
            0x01 => (B::D(f64::from_le_bytes(r[..8].try_into().unwrap())), 8),
            0x02 => (
                B::S(String::from_utf8(r[4..4 + n(0) - 1].to_vec()).unwrap()),
                4 + n(0),
            ),
            0x05 => (B::Bin(r[5..5 + n(0)].to_vec()), 5 + n(0)),
            0x08 => (B::T(r[0] != 0), 1),
            0x03 => (B::Doc(dec(&r[..n(0)])), n(0)),
            0x04 => (
                B::Arr(dec(&r[..n(0)]).into_iter().map(|(_, v)| v).collect()),
                n(0),
            ),
            t => panic!("unexpected BSON type {t:#x}"),
        };
        d.push((key, v));
        i = end + 1 + used;
    }
    d
}

fn field<'a>(d: &'a [(String, B)], k: &str) -> Option<&'a B> {
    d.iter().find(|(x, _)| x == k).map(|(_, v)| v)
}

fn doc(pairs: Vec<(&str, B)>) -> Vec<(String, B)> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn salted(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut u = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

async fn read_msg(s: &mut TcpStream) -> Option<(i32, Vec<(String, B)>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.ok()?;
    let len = i32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
    let id = i32::from_le_bytes(h[4..8].try_into().unwrap());
    assert_eq!(i32::from_le_bytes(h[12..16].try_into().unwrap()), 2013);
    let mut rest = vec![0u8; len - 16];
    s.read_exact(&mut rest).await.ok()?;
    assert_eq!(rest[4], 0, "section kind 0");
    Some((id, dec(&rest[5..])))
}

async fn write_msg(s: &mut TcpStream, to: i32, d: Vec<(String, B)>) {
    let body = enc(&d);
    let len = 21 + body.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as i32).to_le_bytes());
    m.extend_from_slice(&7i32.to_le_bytes());
    m.extend_from_slice(&to.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0]);
    m.extend_from_slice(&body);
    s.write_all(&m).await.unwrap();
}

fn failed(code: i32, name: &str, msg: &str) -> Vec<(String, B)> {
    doc(vec![
        ("ok", B::D(0.0)),
        ("errmsg", B::S(msg.into())),
        ("code", B::I(code)),
        ("codeName", B::S(name.into())),
    ])
}

async fn mongo_like() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let salt = b"pb-salt-16-bytes".to_vec();
                let mut scram: Option<(String, String, Vec<u8>)> = None; // first-bare, server-first, salted
                let mut authed = false;
                while let Some((id, cmd)) = read_msg(&mut s).await {
                    let name = cmd[0].0.clone();
                    let reply = match name.as_str() {
                        "hello" => doc(vec![
                            ("isWritablePrimary", B::T(true)),
                            ("maxWireVersion", B::I(21)),
                            ("ok", B::D(1.0)),
                        ]),
                        "saslStart" => {
                            let Some(B::Bin(p)) = field(&cmd, "payload") else {
                                panic!()
                            };
                            let first = String::from_utf8(p.clone()).unwrap();
                            let bare = first.strip_prefix("n,,").unwrap().to_owned();
                            let user = bare.split(',').next().unwrap().strip_prefix("n=").unwrap();
                            let cnonce =
                                bare.split(',').nth(1).unwrap().strip_prefix("r=").unwrap();
                            if user != USER {
                                failed(18, "AuthenticationFailed", "Authentication failed.")
                            } else {
                                let server_first =
                                    format!("r={cnonce}srvnonce,s={},i=4096", B64.encode(&salt));
                                scram = Some((
                                    bare.clone(),
                                    server_first.clone(),
                                    salted(PASSWORD, &salt, 4096),
                                ));
                                doc(vec![
                                    ("conversationId", B::I(1)),
                                    ("done", B::T(false)),
                                    ("payload", B::Bin(server_first.into_bytes())),
                                    ("ok", B::D(1.0)),
                                ])
                            }
                        }
                        "saslContinue" => {
                            let Some(B::Bin(p)) = field(&cmd, "payload") else {
                                panic!()
                            };
                            let (bare, server_first, salted) = scram.clone().unwrap();
                            let fin = String::from_utf8(p.clone()).unwrap();
                            let (without, proof) = fin.rsplit_once(",p=").unwrap();
                            let auth_message = format!("{bare},{server_first},{without}");
                            let stored = Sha256::digest(hmac(&salted, b"Client Key")).to_vec();
                            let sig = hmac(&stored, auth_message.as_bytes());
                            let key: Vec<u8> = B64
                                .decode(proof)
                                .unwrap()
                                .iter()
                                .zip(&sig)
                                .map(|(a, b)| a ^ b)
                                .collect();
                            if Sha256::digest(&key).to_vec() != stored {
                                failed(18, "AuthenticationFailed", "Authentication failed.")
                            } else {
                                authed = true;
                                let v = B64.encode(hmac(
                                    &hmac(&salted, b"Server Key"),
                                    auth_message.as_bytes(),
                                ));
                                doc(vec![
                                    ("conversationId", B::I(1)),
                                    ("done", B::T(true)),
                                    ("payload", B::Bin(format!("v={v}").into_bytes())),
                                    ("ok", B::D(1.0)),
                                ])
                            }
                        }
                        // As MongoDB does: ping needs no login, the rest does.
                        "ping" => doc(vec![("ok", B::D(1.0))]),
                        _ if !authed => failed(
                            13,
                            "Unauthorized",
                            &format!("command {name} requires authentication"),
                        ),
                        "buildInfo" => {
                            doc(vec![("version", B::S("7.0.14".into())), ("ok", B::D(1.0))])
                        }
                        "listCollections" => {
                            let Some(B::S(db)) = field(&cmd, "$db") else {
                                panic!()
                            };
                            let batch = if db == "pbdb" {
                                vec![B::Doc(doc(vec![("name", B::S("events".into()))]))]
                            } else {
                                vec![]
                            };
                            doc(vec![
                                (
                                    "cursor",
                                    B::Doc(doc(vec![
                                        ("id", B::I(0)),
                                        ("ns", B::S(format!("{db}.$cmd.listCollections"))),
                                        ("firstBatch", B::Arr(batch)),
                                    ])),
                                ),
                                ("ok", B::D(1.0)),
                            ])
                        }
                        _ => failed(59, "CommandNotFound", "no such command"),
                    };
                    write_msg(&mut s, id, reply).await;
                }
            });
        }
    });
    port
}

fn settings(port: u16) -> Value {
    json!({"hosts": [format!("127.0.0.1:{port}")], "database": "pbdb", "username": USER})
}

async fn probe(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "mongodb",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_scram_sha_256_login_pings_and_lists_collections() {
    let port = mongo_like().await;
    let r = probe(settings(port), &[("password", PASSWORD)]).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.product.as_str(), server.version.as_str()),
        ("MongoDB", "7.0.14")
    );
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_connection_string_carries_the_login() {
    let port = mongo_like().await;
    let cs = format!(
        "mongodb://{USER}:{}@127.0.0.1:{port}/pbdb?authSource=admin",
        PASSWORD.replace('-', "%2D")
    );
    let r = probe(json!({"database": "pbdb"}), &[("connection_string", &cs)]).await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    let port = mongo_like().await;
    let r = probe(settings(port), &[("password", "wrong")]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("code 18"));
}

#[tokio::test]
async fn without_credentials_a_protected_server_is_permission_denied_at_query() {
    let port = mongo_like().await;
    let r = probe(
        json!({"hosts": [format!("127.0.0.1:{port}")], "database": "pbdb"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::PermissionDenied);
}

#[tokio::test]
async fn an_empty_database_is_ok_with_a_warning() {
    let port = mongo_like().await;
    let mut s = settings(port);
    s["database"] = json!("typo");
    let r = probe(s, &[("password", PASSWORD)]).await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("no collections")));
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port()), &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn srv_connection_strings_are_not_implemented_before_any_contact() {
    let r = probe(
        json!({"database": "pbdb"}),
        &[(
            "connection_string",
            "mongodb+srv://u:p@cluster0.example.net/",
        )],
    )
    .await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = mongo_like().await;
    let r = probe(settings(port), &[("password", CANARY)]).await;
    kit::assert_no_canary(&r);
    let cs = format!("mongodb://{USER}:{CANARY}@127.0.0.1:{port}/pbdb");
    let r = probe(json!({"database": "pbdb"}), &[("connection_string", &cs)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "mongodb",
        |port| json!({"hosts": [format!("127.0.0.1:{port}")], "database": "pbdb"}),
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
        "mongodb",
        json!({"hosts": ["127.0.0.1:6381"], "database": "pbdb", "tls": true}),
        &[("password", "p")],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}
