//! Oracle probe against a TNS listener responder in the test (no Oracle server runs here).
//! It follows the documented packet layout: an 8-byte header (length, packet checksum,
//! type — 1 CONNECT, 2 ACCEPT, 4 REFUSE, 5 REDIRECT, 11 RESEND — flags, header checksum),
//! reads the connect descriptor at the CONNECT packet's declared offset, and answers
//! ACCEPT for the service it knows, REFUSE with ERR=12514 / 12505 otherwise.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const SERVICE: &str = "pbservice";
const SID: &str = "PBSID";

async fn read_connect(s: &mut TcpStream) -> Option<String> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.ok()?;
    assert_eq!(h[4], 1, "the first packet is CONNECT");
    let len = u16::from_be_bytes([h[0], h[1]]) as usize;
    let mut p = h.to_vec();
    p.resize(len, 0);
    s.read_exact(&mut p[8..]).await.ok()?;
    let data_len = u16::from_be_bytes([p[24], p[25]]) as usize;
    let off = u16::from_be_bytes([p[26], p[27]]) as usize;
    Some(String::from_utf8(p[off..off + data_len].to_vec()).unwrap())
}

fn packet(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 8) as u16).to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, ty, 0, 0, 0]);
    p.extend_from_slice(body);
    p
}

fn accept() -> Vec<u8> {
    // version, service options, SDU, TDU, hardware, data length, data offset, flags
    let mut b = 314u16.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0x20, 0, 0x7f, 0xff, 1, 0, 0, 0, 0, 0x20, 0x41, 0x41]);
    b.resize(24, 0);
    packet(2, &b)
}

fn refuse(code: u32) -> Vec<u8> {
    let text = format!(
        "(DESCRIPTION=(TMP=)(VSNNUM=0)(ERR={code})(ERROR_STACK=(ERROR=(CODE={code})(EMFI=4))))"
    );
    let mut b = vec![0x22, 0x00];
    b.extend_from_slice(&(text.len() as u16).to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    packet(4, &b)
}

#[derive(Clone, Copy)]
enum First {
    Answer,
    Resend,
    RedirectTo(u16),
}

/// A listener that knows SERVICE (by service name) and SID (by SID).
async fn listener(first: First) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Some(mut desc) = read_connect(&mut s).await else {
                    return;
                };
                match first {
                    First::Answer => {}
                    First::Resend => {
                        s.write_all(&packet(11, &[])).await.unwrap();
                        let Some(d) = read_connect(&mut s).await else {
                            return;
                        };
                        desc = d;
                    }
                    First::RedirectTo(to) => {
                        let text =
                            format!("(ADDRESS=(PROTOCOL=tcp)(HOST=127.0.0.1)(PORT={to}))\0{desc}");
                        let mut b = (text.len() as u16).to_be_bytes().to_vec();
                        b.extend_from_slice(text.as_bytes());
                        s.write_all(&packet(5, &b)).await.unwrap();
                        return;
                    }
                }
                let answer = if desc.contains(&format!("(SERVICE_NAME={SERVICE})"))
                    || desc.contains(&format!("(SID={SID})"))
                {
                    accept()
                } else if desc.contains("(SID=") {
                    refuse(12505)
                } else {
                    refuse(12514)
                };
                s.write_all(&answer).await.unwrap();
            });
        }
    });
    port
}

fn settings(port: u16) -> Value {
    json!({"host": "127.0.0.1", "port": port, "service_name": SERVICE, "username": "scott"})
}

async fn probe(settings: Value) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "oracle",
        settings,
        &[("password", CANARY)],
        Duration::from_secs(5),
    )
    .await
}

fn assert_password_unchecked(r: &patchbay_probe::ProbeResult) {
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert_eq!(auth.status, StageStatus::Skipped);
    assert!(
        r.warnings
            .iter()
            .any(|w| w == "the password is not checked (Oracle's O5LOGON is not implemented)"),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_known_service_is_accepted_and_the_password_is_said_unchecked() {
    let port = listener(First::Answer).await;
    let r = probe(settings(port)).await;
    assert_ok(&r);
    assert_password_unchecked(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert_eq!(q.status, StageStatus::Ok);
}

#[tokio::test]
async fn a_known_sid_is_accepted() {
    let port = listener(First::Answer).await;
    let r = probe(json!({"host": "127.0.0.1", "port": port, "connection_type": "sid", "sid": SID}))
        .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_full_connect_descriptor_is_sent_as_written() {
    let port = listener(First::Answer).await;
    let desc = format!("(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=127.0.0.1)(PORT={port}))\n  (CONNECT_DATA=(SERVICE_NAME={SERVICE})))");
    let r = probe(json!({"host": "ignored.invalid", "connect_descriptor": desc})).await;
    assert_ok(&r);
}

#[tokio::test]
async fn an_unknown_service_is_not_found_at_query() {
    let port = listener(First::Answer).await;
    let r = probe(json!({"host": "127.0.0.1", "port": port, "service_name": "nosuch"})).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    assert!(r.error.unwrap().message.contains("ORA-12514"));
}

#[tokio::test]
async fn an_unknown_sid_is_not_found_at_query() {
    let port = listener(First::Answer).await;
    let r =
        probe(json!({"host": "127.0.0.1", "port": port, "connection_type": "sid", "sid": "NOSID"}))
            .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    assert!(r.error.unwrap().message.contains("ORA-12505"));
}

#[tokio::test]
async fn a_resend_is_answered_once() {
    let port = listener(First::Resend).await;
    assert_ok(&probe(settings(port)).await);
}

#[tokio::test]
async fn a_redirect_is_followed_once() {
    let real = listener(First::Answer).await;
    let port = listener(First::RedirectTo(real)).await;
    assert_ok(&probe(settings(port)).await);
}

#[tokio::test]
async fn a_redirect_goes_through_the_guard() {
    let real = listener(First::Answer).await;
    let port = listener(First::RedirectTo(real)).await;
    // Only the first listener's port is allowed: the redirect target is refused.
    let guard = patchbay_probe::NetworkGuard::new(
        patchbay_probe::Policy::default()
            .allow(&format!("127.0.0.1:{port}"))
            .unwrap(),
    );
    let r = kit::run(
        &guard,
        "oracle",
        settings(port),
        &[("password", CANARY)],
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NetworkBlocked);
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_at_tcp() {
    let r = probe(settings(kit::closed_port())).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn the_password_never_appears_in_the_result() {
    let port = listener(First::Answer).await;
    let r = probe(settings(port)).await;
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_within_the_deadline() {
    kit::assert_silent_times_out(
        "oracle",
        settings,
        &[],
        ProbeStage::Query,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn a_non_tns_server_is_protocol_mismatch() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let r = probe(settings(port)).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::ProtocolMismatch);
}
