//! GCS and BigQuery with a service-account key, against a local responder that follows
//! Google's documented flows: the OAuth 2.0 token endpoint of the JWT-bearer grant (it
//! verifies the RS256 assertion with `openssl dgst -verify` against the account's public
//! key, and checks `iss`, `aud`, `scope`, `exp`), then `buckets.get` / `datasets.get` with
//! the issued token. Keys are generated per test with the openssl CLI.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const EMAIL: &str = "probe@test-project.iam.gserviceaccount.com";
const TOKEN: &str = "ya29.issued-by-the-test";

fn dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "patchbay-gcp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh RSA key: (PKCS#8 private PEM, public PEM path).
pub fn keypair() -> (String, PathBuf) {
    let d = dir();
    let key = d.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genpkey");
    let public = d.join("pub.pem");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl pkey -pubout");
    (std::fs::read_to_string(key).unwrap(), public)
}

pub fn verify(public: &PathBuf, input: &str, sig: &[u8]) -> bool {
    let d = dir();
    std::fs::write(d.join("data"), input).unwrap();
    std::fs::write(d.join("sig"), sig).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(d.join("sig"))
        .arg(d.join("data"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct Google {
    public: PathBuf,
    token_uri: String,
}

fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.replace("%3A", ":").replace("%3a", ":"))
    })
}

/// The documented token-endpoint checks of a JWT-bearer assertion.
fn grant(g: &Google, body: &str) -> bool {
    if form_value(body, "grant_type").as_deref()
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return false;
    }
    let Some(jwt) = form_value(body, "assertion") else {
        return false;
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return false;
    }
    let header: Value =
        serde_json::from_slice(&B64.decode(parts[0]).unwrap_or_default()).unwrap_or(Value::Null);
    let claims: Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap_or_default()).unwrap_or(Value::Null);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    header["alg"] == "RS256"
        && claims["iss"] == EMAIL
        && claims["aud"] == g.token_uri.as_str()
        && claims["scope"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://www.googleapis.com/auth/"))
        && claims["exp"]
            .as_u64()
            .is_some_and(|e| e > now && e <= now + 3600 + 5)
        && verify(
            &g.public,
            &format!("{}.{}", parts[0], parts[1]),
            &B64.decode(parts[2]).unwrap_or_default(),
        )
}

async fn answer(mut s: tokio::net::TcpStream, g: &Google) {
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
        ("POST", "/token") if grant(g, &body) => (
            200,
            json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        ),
        ("POST", "/token") => (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        ),
        ("GET", _) if !bearer => (
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        ),
        ("GET", "/storage/v1/b/known") => (200, json!({"kind": "storage#bucket", "name": "known"})),
        ("GET", "/bigquery/v2/projects/test-project/datasets/known") => (
            200,
            json!({"kind": "bigquery#dataset", "id": "test-project:known"}),
        ),
        ("GET", "/bigquery/v2/projects/test-project/datasets?maxResults=1") => {
            (200, json!({"kind": "bigquery#datasetList", "datasets": []}))
        }
        _ => (404, json!({"error": {"code": 404, "status": "NOT_FOUND"}})),
    };
    let reply = reply.to_string();
    let out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The responder (token endpoint and both APIs) trusting `public`.
async fn google(public: PathBuf) -> (u16, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let g = Arc::new(Google {
        public,
        token_uri: format!("http://127.0.0.1:{port}/token"),
    });
    let uri = g.token_uri.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move { answer(s, &g).await });
        }
    });
    (port, uri)
}

fn key_file(private_pem: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": CANARY,
        "private_key": private_pem,
        "client_email": EMAIL,
        "token_uri": token_uri,
    })
    .to_string()
}

async fn run(ty: &str, port: u16, settings: Value, sa: &str) -> patchbay_probe::ProbeResult {
    let mut s = settings;
    s["api_base_url"] = json!(format!("http://127.0.0.1:{port}"));
    kit::run(
        &kit::loopback(),
        ty,
        s,
        &[("service_account_json", sa)],
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn gcs_and_bigquery_pass_with_the_accounts_key_and_keep_it_out_of_the_result() {
    let (private, public) = keypair();
    let (port, uri) = google(public).await;
    let sa = key_file(&private, &uri);
    for (ty, settings) in [
        ("gcs", json!({"bucket": "known"})),
        (
            "bigquery",
            json!({"project_id": "test-project", "dataset": "known"}),
        ),
        ("bigquery", json!({"project_id": "test-project"})),
    ] {
        let r = run(ty, port, settings, &sa).await;
        assert_ok(&r);
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains(CANARY) && !text.contains("PRIVATE KEY") && !text.contains(TOKEN),
            "{ty}: {text}"
        );
    }
}

#[tokio::test]
async fn a_key_the_account_does_not_have_is_auth_failed_at_auth() {
    let (_, public) = keypair();
    let (other, _) = keypair();
    let (port, uri) = google(public).await;
    let r = run(
        "gcs",
        port,
        json!({"bucket": "known"}),
        &key_file(&other, &uri),
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_missing_bucket_or_dataset_is_not_found_at_query() {
    let (private, public) = keypair();
    let (port, uri) = google(public).await;
    let sa = key_file(&private, &uri);
    let r = run("gcs", port, json!({"bucket": "missing"}), &sa).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    let r = run(
        "bigquery",
        port,
        json!({"project_id": "test-project", "dataset": "missing"}),
        &sa,
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_malformed_key_file_is_invalid_settings_without_echoing_it() {
    let r = run(
        "gcs",
        kit::closed_port(),
        json!({"bucket": "known"}),
        &format!("{{\"type\": \"service_account\", \"private_key\": \"{CANARY}\"}}"),
    )
    .await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let (private, _) = keypair();
    let port = kit::closed_port();
    let sa = key_file(&private, &format!("http://127.0.0.1:{port}/token"));
    let r = run("gcs", port, json!({"bucket": "known"}), &sa).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}
