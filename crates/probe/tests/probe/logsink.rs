//! Syslog, GELF and Logback probes against receivers started in the test on 127.0.0.1:
//! each receiver parses the real wire format and the test asserts what arrived.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

use crate::kit::{self, assert_failed, assert_ok};

async fn probe(type_id: &str, settings: Value) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        &[],
        Duration::from_secs(5),
    )
    .await
}

/// Reads everything one TCP client sends until it closes.
async fn tcp_receiver() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    });
    (port, h)
}

async fn udp_receiver() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(n);
        buf
    });
    (port, h)
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`.
fn parse_5424(line: &str) -> (u32, Vec<&str>, &str) {
    let rest = line.strip_prefix('<').expect("PRI");
    let (pri, rest) = rest.split_once('>').unwrap();
    let parts: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{line}");
    assert_eq!(parts[0], "1", "version");
    (pri.parse().unwrap(), parts[..7].to_vec(), parts[7])
}

#[tokio::test]
async fn syslog_over_udp_arrives_as_rfc5424_with_a_delivery_warning() {
    let (port, got) = udp_receiver().await;
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "udp", "facility": "local3", "hostname": "pb-host", "app_name": "pbtest"}),
    )
    .await;
    assert_ok(&r);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("UDP cannot confirm delivery")));
    let line = String::from_utf8(got.await.unwrap()).unwrap();
    let (pri, head, msg) = parse_5424(&line);
    assert_eq!(pri, 19 * 8 + 6, "local3.info");
    assert!(head[1].ends_with('Z') && head[1].contains('T'), "{line}");
    assert_eq!((head[2], head[3]), ("pb-host", "pbtest"));
    assert_eq!(head[6], "-", "no structured data");
    assert_eq!(msg, "patchbay connection test");
}

#[tokio::test]
async fn syslog_over_tcp_uses_octet_counting() {
    let (port, got) = tcp_receiver().await;
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "tcp"}),
    )
    .await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert_eq!(q.status, StageStatus::Ok);
    let raw = String::from_utf8(got.await.unwrap()).unwrap();
    let (len, frame) = raw.split_once(' ').unwrap();
    assert_eq!(
        len.parse::<usize>().unwrap(),
        frame.len(),
        "octet count = frame length"
    );
    let (pri, head, msg) = parse_5424(frame);
    assert_eq!(pri, 8 + 6, "user.info");
    assert_eq!(head[2], "patchbay");
    assert_eq!(msg, "patchbay connection test");
}

#[tokio::test]
async fn syslog_rfc3164_with_newline_framing() {
    let (port, got) = tcp_receiver().await;
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "tcp", "framing": "newline", "format": "rfc3164"}),
    )
    .await;
    assert_ok(&r);
    let raw = String::from_utf8(got.await.unwrap()).unwrap();
    assert!(
        raw.starts_with("<14>") && raw.ends_with(": patchbay connection test\n"),
        "{raw:?}"
    );
}

#[tokio::test]
async fn syslog_over_tcp_to_a_closed_port_is_refused_at_tcp() {
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": kit::closed_port(), "transport": "tcp"}),
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn syslog_over_udp_to_a_closed_port_is_refused_when_the_host_says_so() {
    // Loopback answers ICMP port-unreachable, which the connected socket reports.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "udp"}),
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::ConnectionRefused);
}

/// A TLS receiver with the peers' test server certificate (scripts/peers-probe.sh makes
/// it); reads one client's stream to the end.
async fn tls_receiver() -> Option<(u16, tokio::task::JoinHandle<Vec<u8>>)> {
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
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        if let Ok(mut s) = acceptor.accept(s).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        }
        buf
    });
    Some((port, h))
}

#[tokio::test]
async fn syslog_over_tls_with_the_ca_arrives_and_without_it_is_untrusted_at_tls() {
    let Some((port, got)) = tls_receiver().await else {
        return;
    };
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "tls", "tls_ca_certificate": kit::ca_pem()}),
    )
    .await;
    assert_ok(&r);
    let raw = String::from_utf8(got.await.unwrap()).unwrap();
    let (len, frame) = raw.split_once(' ').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), frame.len());
    assert_eq!(parse_5424(frame).2, "patchbay connection test");
    let Some((port, _got)) = tls_receiver().await else {
        return;
    };
    let r = probe(
        "syslog",
        json!({"host": "127.0.0.1", "port": port, "transport": "tls"}),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}

fn parse_gelf(raw: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(v["version"], "1.1");
    assert!(v["host"].is_string());
    assert_eq!(v["short_message"], "patchbay connection test");
    v
}

#[tokio::test]
async fn gelf_over_udp_arrives_as_gelf_json() {
    let (port, got) = udp_receiver().await;
    let r = probe(
        "graylog",
        json!({"host": "127.0.0.1", "port": port, "transport": "udp", "source": "pb-source", "facility": "pb"}),
    )
    .await;
    assert_ok(&r);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("UDP cannot confirm delivery")));
    let v = parse_gelf(&got.await.unwrap());
    assert_eq!(v["host"], "pb-source");
    assert_eq!(v["_facility"], "pb");
}

#[tokio::test]
async fn gelf_over_tcp_is_nul_terminated_json() {
    let (port, got) = tcp_receiver().await;
    let r = probe(
        "graylog",
        json!({"host": "127.0.0.1", "port": port, "transport": "tcp"}),
    )
    .await;
    assert_ok(&r);
    let raw = got.await.unwrap();
    assert_eq!(raw.last(), Some(&0u8), "GELF TCP frames end with NUL");
    let v = parse_gelf(&raw[..raw.len() - 1]);
    assert_eq!(v["host"], "patchbay");
}

/// A minimal GELF HTTP input: answers 202 on /gelf (404 elsewhere) and hands over the
/// request's path and body.
async fn gelf_http_input() -> (u16, tokio::task::JoinHandle<(String, Vec<u8>)>) {
    use tokio::io::AsyncWriteExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        // The probe's tcp stage opens (and closes) a connection of its own first.
        let (mut s, mut buf, head_end, len) = 'conn: loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    continue 'conn;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse::<usize>().unwrap())
                        .unwrap_or(0);
                    break 'conn (s, buf, i + 4, len);
                }
            }
        };
        let mut chunk = [0u8; 4096];
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head.split(' ').nth(1).unwrap().to_owned();
        let status = if path == "/gelf" {
            "202 Accepted"
        } else {
            "404 Not Found"
        };
        s.write_all(
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        (path, buf[head_end..head_end + len].to_vec())
    });
    (port, h)
}

#[tokio::test]
async fn gelf_over_http_is_posted_to_the_input_and_its_answer_counts() {
    let (port, got) = gelf_http_input().await;
    let r = probe(
        "graylog",
        json!({"host": "127.0.0.1", "port": port, "transport": "http"}),
    )
    .await;
    assert_ok(&r);
    let (path, body) = got.await.unwrap();
    assert_eq!(path, "/gelf");
    parse_gelf(&body);
    let (port, _) = gelf_http_input().await;
    let r = probe(
        "graylog",
        json!({"host": "127.0.0.1", "port": port, "transport": "http", "http_path": "/wrong"}),
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn logback_tests_the_connection_only_and_says_so() {
    let (port, got) = tcp_receiver().await;
    let r = probe("logback", json!({"host": "127.0.0.1", "port": port})).await;
    assert_ok(&r);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("only the connection was tested")));
    assert!(got.await.unwrap().is_empty(), "nothing is sent");
    let r = probe(
        "logback",
        json!({"host": "127.0.0.1", "port": kit::closed_port()}),
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}
