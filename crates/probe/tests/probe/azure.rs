//! Azure Blob Storage against a local responder that follows the documented Blob service
//! rules: Get Container Properties (`GET /{container}?restype=container`) authorized by a
//! SharedKey signature it recomputes from the request as received (the documented string
//! to sign: verb, twelve standard headers, canonicalized `x-ms-*` headers, canonicalized
//! resource) or by a SAS `sig`; 403 `AuthenticationFailed` otherwise, 404
//! `ContainerNotFound` for other containers. The endpoint is Azurite-style (path-style,
//! the account in the path), as the `blob_endpoint` setting allows.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const ACCOUNT: &str = "devstoreaccount1";
const SAS_SIG: &str = "sig-known-to-the-test";

fn account_key() -> String {
    B64.encode(b"a 64-byte account key for the patchbay probe tests, not a real one")
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The documented SharedKey check, from the request as received.
fn shared_key_ok(head: &str, method: &str, target: &str) -> bool {
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .cloned()
        .collect();
    ms.sort();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut q: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k).to_lowercase(), decode(v)))
        .collect();
    q.sort();
    let length = match h("content-length").as_str() {
        "0" => String::new(),
        l => l.to_owned(),
    };
    let mut s = format!(
        "{method}\n{}\n{}\n{length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        h("content-encoding"),
        h("content-language"),
        h("content-md5"),
        h("content-type"),
        h("date"),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    );
    for (k, v) in &ms {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{ACCOUNT}{}", decode(path)));
    for (k, v) in &q {
        s.push_str(&format!("\n{k}:{v}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&B64.decode(account_key()).unwrap()).unwrap();
    mac.update(s.as_bytes());
    let want = format!(
        "SharedKey {ACCOUNT}:{}",
        B64.encode(mac.finalize().into_bytes())
    );
    !h("x-ms-date").is_empty() && !h("x-ms-version").is_empty() && h("authorization") == want
}

async fn answer(mut s: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let sas = target.split('&').any(|kv| kv == format!("sig={SAS_SIG}"));
    let authorized = sas || shared_key_ok(&head, method, target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let restype = query.split('&').any(|kv| kv == "restype=container");
    let (status, code) = if !authorized {
        (
            "403 Server failed to authenticate the request.",
            Some("AuthenticationFailed"),
        )
    } else if method == "GET" && restype && path == format!("/{ACCOUNT}/known") {
        ("200 OK", None)
    } else {
        (
            "404 The specified container does not exist.",
            Some("ContainerNotFound"),
        )
    };
    let body = code
        .map(|c| format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{c}</Code><Message>x</Message></Error>"))
        .unwrap_or_default();
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn responder() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(answer(s));
        }
    });
    port
}

async fn run(
    port: u16,
    container: &str,
    extra: Value,
    secrets: &[(&str, &str)],
) -> patchbay_probe::ProbeResult {
    let mut s = json!({"account_name": ACCOUNT, "container": container,
                       "blob_endpoint": format!("http://127.0.0.1:{port}/{ACCOUNT}")});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    kit::run(
        &kit::loopback(),
        "azure-blob",
        s,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn the_account_key_a_sas_token_and_a_connection_string_pass() {
    let port = responder().await;
    let key = account_key();
    assert_ok(&run(port, "known", json!({}), &[("account_key", &key)]).await);
    let sas = format!("?sv=2021-08-06&ss=b&srt=c&sp=rl&sig={SAS_SIG}");
    assert_ok(&run(port, "known", json!({}), &[("sas_token", &sas)]).await);
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    );
    let r = kit::run(
        &kit::loopback(),
        "azure-blob",
        json!({"container": "known"}),
        &[("connection_string", &cs)],
        Duration::from_secs(5),
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_wrong_key_or_sas_is_auth_failed_at_auth_and_not_echoed() {
    let port = responder().await;
    let wrong = B64.encode(CANARY);
    let r = run(port, "known", json!({}), &[("account_key", &wrong)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(!serde_json::to_string(&r).unwrap().contains(&wrong));
    let sas = format!("sv=2021-08-06&sig={CANARY}");
    let r = run(port, "known", json!({}), &[("sas_token", &sas)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_missing_container_is_not_found_at_query() {
    let port = responder().await;
    let r = run(
        port,
        "missing",
        json!({}),
        &[("account_key", &account_key())],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = run(
        kit::closed_port(),
        "known",
        json!({}),
        &[("account_key", &account_key())],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}
