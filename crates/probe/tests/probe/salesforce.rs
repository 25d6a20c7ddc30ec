//! Salesforce against a local responder that follows the documented OAuth 2.0 token
//! endpoint (`POST /services/oauth2/token`: client credentials, refresh token, JWT bearer
//! with the RS256 assertion verified by openssl against the connected app's certificate
//! key; `invalid_client` / `invalid_grant` otherwise) and the REST API's version resource
//! (`GET /services/data/v{version}/`, `/sobjects`, only with the issued token).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gcp::{keypair, verify};
use crate::kit::{self, assert_failed, assert_ok, CANARY};

const CLIENT_ID: &str = "3MVG9-consumer-key";
const SECRET: &str = "consumer+secret/1=";
const REFRESH: &str = "5Aep861-refresh";
const USER: &str = "probe@example.com";
const TOKEN: &str = "00Dxx0000001gPL!issued";

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

struct Org {
    public: PathBuf,
    base: String,
}

fn grant(org: &Org, body: &str) -> bool {
    let form: Vec<(String, String)> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let f = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match f("grant_type") {
        Some("client_credentials") => {
            f("client_id") == Some(CLIENT_ID) && f("client_secret") == Some(SECRET)
        }
        Some("refresh_token") => {
            f("client_id") == Some(CLIENT_ID)
                && f("client_secret") == Some(SECRET)
                && f("refresh_token") == Some(REFRESH)
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(jwt) = f("assertion") else {
                return false;
            };
            let p: Vec<&str> = jwt.split('.').collect();
            if p.len() != 3 {
                return false;
            }
            let claims: Value = serde_json::from_slice(&B64.decode(p[1]).unwrap_or_default())
                .unwrap_or(Value::Null);
            claims["iss"] == CLIENT_ID
                && claims["sub"] == USER
                && claims["aud"] == org.base.as_str()
                && claims["exp"].as_u64().is_some()
                && verify(
                    &org.public,
                    &format!("{}.{}", p[0], p[1]),
                    &B64.decode(p[2]).unwrap_or_default(),
                )
        }
        _ => false,
    }
}

async fn answer(mut s: tokio::net::TcpStream, org: &Org) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                break (
                    head,
                    String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string(),
                );
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let bearer = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
    let (status, reply) = match (method, target) {
        ("POST", "/services/oauth2/token") if grant(org, &body) => (
            200,
            json!({"access_token": TOKEN, "instance_url": org.base, "token_type": "Bearer", "id": "x"}),
        ),
        ("POST", "/services/oauth2/token") => (
            400,
            json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        ),
        ("GET", _) if !bearer => (
            401,
            json!([{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}]),
        ),
        ("GET", "/services/data/v62.0/") => (
            200,
            json!({"sobjects": "/services/data/v62.0/sobjects", "limits": "/services/data/v62.0/limits"}),
        ),
        _ => (404, json!([{"errorCode": "NOT_FOUND"}])),
    };
    let reply = reply.to_string();
    let out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn org(public: PathBuf) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let o = Arc::new(Org {
        public,
        base: base.clone(),
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let o = o.clone();
            tokio::spawn(async move { answer(s, &o).await });
        }
    });
    base
}

async fn run(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "salesforce",
        settings,
        secrets,
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn each_oauth_flow_passes_and_keeps_its_secrets_out_of_the_result() {
    let (private, public) = keypair();
    let base = org(public).await;
    let cc = run(
        json!({"instance_url": base, "client_id": CLIENT_ID}),
        &[("client_secret", SECRET)],
    )
    .await;
    let rt = run(
        json!({"instance_url": base, "login_url": base, "client_id": CLIENT_ID}),
        &[("client_secret", SECRET), ("refresh_token", REFRESH)],
    )
    .await;
    let jwt = run(
        json!({"instance_url": base, "login_url": base, "client_id": CLIENT_ID, "username": USER}),
        &[("private_key", &private)],
    )
    .await;
    for r in [cc, rt, jwt] {
        assert_ok(&r);
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains(SECRET) && !text.contains(TOKEN) && !text.contains("PRIVATE KEY"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_or_key_is_auth_failed_at_auth_and_not_echoed() {
    let (_, public) = keypair();
    let (other, _) = keypair();
    let base = org(public).await;
    let r = run(
        json!({"instance_url": base, "client_id": CLIENT_ID}),
        &[("client_secret", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
    let r = run(
        json!({"instance_url": base, "login_url": base, "client_id": CLIENT_ID, "username": USER}),
        &[("private_key", &other)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn an_api_version_the_instance_lacks_is_not_found_at_query() {
    let (_, public) = keypair();
    let base = org(public).await;
    let r = run(
        json!({"instance_url": base, "client_id": CLIENT_ID, "api_version": "99.0"}),
        &[("client_secret", SECRET)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let base = format!("http://127.0.0.1:{}", kit::closed_port());
    let r = run(
        json!({"instance_url": base, "client_id": CLIENT_ID}),
        &[("client_secret", SECRET)],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}
