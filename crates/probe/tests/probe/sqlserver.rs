//! SQL Server / Synapse probe against a TDS responder in the test (no SQL Server runs
//! here): it answers PRELOGIN with a version and an encryption choice, checks LOGIN7's
//! user, de-obfuscated password and database as MS-TDS lays them out, and answers
//! LOGINACK or the ERROR a server sends (18456 login failed, 4060 cannot open database).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const USER: &str = "pb_login";
const PASSWORD: &str = "pb-Sql-pass1";
const DATABASE: &str = "pbdb";

async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.ok()?;
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let mut body = vec![0u8; len - 8];
    s.read_exact(&mut body).await.ok()?;
    Some((h[0], body))
}

async fn write_packet(s: &mut TcpStream, payload: &[u8]) {
    let mut p = vec![0x04, 0x01];
    p.extend_from_slice(&((payload.len() + 8) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 1, 0]);
    p.extend_from_slice(payload);
    s.write_all(&p).await.unwrap();
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> String {
    let u: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&u)
}

fn login_field(login: &[u8], index: usize, obfuscated: bool) -> String {
    let at = 36 + index * 4;
    let off = u16::from_le_bytes([login[at], login[at + 1]]) as usize;
    let chars = u16::from_le_bytes([login[at + 2], login[at + 3]]) as usize;
    let mut raw = login[off..off + chars * 2].to_vec();
    if obfuscated {
        for b in &mut raw {
            let x = *b ^ 0xA5;
            *b = x.rotate_right(4);
        }
    }
    from_utf16(&raw)
}

fn error_token(number: u32, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&number.to_le_bytes());
    body.push(1); // state
    body.push(14); // class
    body.extend_from_slice(&(text.encode_utf16().count() as u16).to_le_bytes());
    body.extend_from_slice(&utf16(text));
    body.push(0); // server name
    body.push(0); // proc name
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut t = vec![0xAA];
    t.extend_from_slice(&(body.len() as u16).to_le_bytes());
    t.extend_from_slice(&body);
    t
}

fn done(error: bool) -> Vec<u8> {
    let mut t = vec![0xFD, if error { 0x02 } else { 0x00 }, 0, 0, 0];
    t.extend_from_slice(&[0u8; 8]);
    t
}

/// A TDS server that answers PRELOGIN with `encryption` and checks the login.
async fn tds_server(encryption: u8) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Some((0x12, _)) = read_packet(&mut s).await else {
                    return;
                };
                // VERSION 16.0.4135, ENCRYPTION.
                let mut pre = vec![0x00, 0, 11, 0, 6, 0x01, 0, 17, 0, 1, 0xFF];
                pre.extend_from_slice(&[16, 0, 0x10, 0x27, 0, 0, encryption]);
                write_packet(&mut s, &pre).await;
                let Some((0x10, login)) = read_packet(&mut s).await else {
                    return;
                };
                let (user, password, database) = (
                    login_field(&login, 1, false),
                    login_field(&login, 2, true),
                    login_field(&login, 8, false),
                );
                let reply = if user != USER || password != PASSWORD {
                    [
                        error_token(18456, &format!("Login failed for user '{user}'.")),
                        done(true),
                    ]
                    .concat()
                } else if database != DATABASE {
                    [error_token(4060, &format!("Cannot open database \"{database}\" requested by the login. The login failed.")), done(true)].concat()
                } else {
                    let name = utf16("Microsoft SQL Server");
                    let mut ack = vec![1, 0x04, 0, 0, 0x74, 20];
                    ack.extend_from_slice(&name);
                    ack.extend_from_slice(&[16, 0, 0x10, 0x27]);
                    let mut t = vec![0xAD];
                    t.extend_from_slice(&(ack.len() as u16).to_le_bytes());
                    t.extend_from_slice(&ack);
                    [t, done(false)].concat()
                };
                write_packet(&mut s, &reply).await;
                let Some((0x01, batch)) = read_packet(&mut s).await else {
                    return;
                };
                assert_eq!(from_utf16(&batch[22..]), "SELECT 1");
                let mut result = vec![0x81, 1, 0, 0, 0, 0, 0, 0, 0, 0x38, 0];
                result.extend_from_slice(&[0xD1, 1, 0, 0, 0]);
                result.extend_from_slice(&[0xFD, 0x10, 0, 0xC1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
                write_packet(&mut s, &result).await;
            });
        }
    });
    port
}

fn settings(port: u16) -> Value {
    json!({"host": "127.0.0.1", "port": port, "database": DATABASE, "username": USER,
           "encrypt": "optional"})
}

async fn probe(type_id: &str, settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        &[("password", password)],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_sql_login_succeeds_and_names_the_version() {
    let port = tds_server(0x02).await;
    for ty in ["sqlserver", "synapse"] {
        let r = probe(ty, settings(port), PASSWORD).await;
        assert_ok(&r);
        let server = r.server.as_ref().unwrap();
        assert_eq!(
            (server.product.as_str(), server.version.as_str()),
            ("Microsoft SQL Server", "16.0.4135")
        );
        assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
    }
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth() {
    let port = tds_server(0x02).await;
    let r = probe("sqlserver", settings(port), "wrong").await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("18456"));
}

#[tokio::test]
async fn a_missing_database_is_not_found_at_auth() {
    let port = tds_server(0x02).await;
    let mut s = settings(port);
    s["database"] = json!("nope");
    let r = probe("sqlserver", s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_server_that_requires_encryption_is_reported_as_not_implemented_at_tls() {
    let port = tds_server(0x03).await;
    let r = probe("sqlserver", settings(port), PASSWORD).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::NotImplemented);
    let mut s = settings(port);
    s["encrypt"] = json!("mandatory");
    let r = probe("sqlserver", s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn mandatory_encryption_with_a_server_without_it_is_tls_handshake() {
    let port = tds_server(0x02).await;
    let mut s = settings(port);
    s["encrypt"] = json!("mandatory");
    let r = probe("sqlserver", s, PASSWORD).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHandshake);
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe("sqlserver", settings(kit::closed_port()), PASSWORD).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = tds_server(0x02).await;
    let r = probe("sqlserver", settings(port), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "sqlserver",
        |port| json!({"host": "127.0.0.1", "port": port, "database": "pbdb", "username": "u", "encrypt": "optional"}),
        &[("password", "p")],
        ProbeStage::Tls,
        Duration::from_millis(500),
    )
    .await;
}
