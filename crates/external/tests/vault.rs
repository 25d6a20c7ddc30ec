//! Vault KV v2 and AppRole, contract-tested against a local responder that follows Vault's
//! documented HTTP API (Vault itself cannot be installed on these machines):
//! `GET /v1/{mount}/data/{path}?version=N` answers `{"data":{"data":{…},"metadata":{…}}}`,
//! 404 `{"errors":[]}` for a missing secret or version, 403 `{"errors":["permission denied"]}`
//! for a bad token; `POST /v1/auth/approle/login` answers `{"auth":{"client_token",
//! "lease_duration",…}}` or 400 `{"errors":["invalid role or secret ID"]}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use patchbay_crypto::SecretString;
use patchbay_external::{ExternalError, Url, VaultAuth, VaultClient, VaultConfig};
use serde_json::{json, Value};

#[derive(Default)]
struct Vault {
    /// Required `X-Vault-Namespace`, if any.
    namespace: Option<String>,
    /// Valid tokens → path prefixes ("mount/path") they may read.
    tokens: Mutex<HashMap<String, Vec<String>>>,
    /// "mount/path" → versions (index 0 is version 1); `None` = deleted version.
    secrets: HashMap<String, Vec<Option<Value>>>,
    role_id: String,
    secret_id: String,
    lease_duration: u64,
    logins: AtomicUsize,
    reads: AtomicUsize,
    sealed: bool,
}

fn errors(status: StatusCode, errs: &[&str]) -> Response {
    (status, Json(json!({ "errors": errs }))).into_response()
}

fn namespace_ok(v: &Vault, headers: &HeaderMap) -> bool {
    match &v.namespace {
        None => true,
        Some(ns) => headers
            .get("x-vault-namespace")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.trim_matches('/') == ns),
    }
}

async fn kv_read(
    State(v): State<Arc<Vault>>,
    Path((mount, path)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    v.reads.fetch_add(1, Ordering::SeqCst);
    if v.sealed {
        return errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
    }
    let full = format!("{mount}/{path}");
    let token = headers
        .get("x-vault-token")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let allowed = v
        .tokens
        .lock()
        .unwrap()
        .get(token)
        .is_some_and(|prefixes| prefixes.iter().any(|p| full.starts_with(p)));
    // A token is only valid in its namespace: Vault answers 403 otherwise.
    if !allowed || !namespace_ok(&v, &headers) {
        return errors(StatusCode::FORBIDDEN, &["permission denied"]);
    }
    let Some(versions) = v.secrets.get(&full) else {
        return errors(StatusCode::NOT_FOUND, &[]);
    };
    let n = match q.get("version").map(|s| s.parse::<usize>()) {
        None | Some(Ok(0)) => versions.len(),
        Some(Ok(n)) => n,
        Some(Err(_)) => return errors(StatusCode::BAD_REQUEST, &["invalid version"]),
    };
    match versions.get(n.wrapping_sub(1)) {
        None => errors(StatusCode::NOT_FOUND, &[]),
        Some(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "data": { "data": null, "metadata": {
                "version": n, "deletion_time": "2024-01-01T00:00:00Z", "destroyed": false } } })),
        )
            .into_response(),
        Some(Some(data)) => Json(json!({
            "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": { "data": data, "metadata": {
                "created_time": "2024-01-01T00:00:00Z", "deletion_time": "",
                "destroyed": false, "version": n } },
            "wrap_info": null, "warnings": null, "auth": null
        }))
        .into_response(),
    }
}

async fn approle_login(
    State(v): State<Arc<Vault>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !namespace_ok(&v, &headers) {
        return errors(StatusCode::FORBIDDEN, &["permission denied"]);
    }
    let ok = body.get("role_id").and_then(Value::as_str) == Some(v.role_id.as_str())
        && body.get("secret_id").and_then(Value::as_str) == Some(v.secret_id.as_str());
    if !ok {
        return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
    }
    let n = v.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("hvs.approle-{n}");
    v.tokens
        .lock()
        .unwrap()
        .insert(token.clone(), vec!["secret/".into()]);
    Json(json!({ "auth": {
        "client_token": token, "accessor": "a", "policies": ["default", "app"],
        "lease_duration": v.lease_duration, "renewable": true } }))
    .into_response()
}

async fn start(v: Vault) -> (Url, Arc<Vault>) {
    let v = Arc::new(v);
    let app = Router::new()
        .route("/v1/auth/approle/login", post(approle_login))
        .route("/v1/{mount}/data/{*path}", get(kv_read))
        .with_state(v.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Url::parse(&format!("http://{addr}")).unwrap(), v)
}

fn fixture() -> Vault {
    let mut secrets = HashMap::new();
    secrets.insert(
        "secret/app/db".to_owned(),
        vec![
            Some(json!({ "username": "app", "password": "pw-v1" })),
            Some(json!({ "username": "app", "password": "pw-v2", "port": 5432 })),
        ],
    );
    secrets.insert(
        "secret/app/deleted".to_owned(),
        vec![None, Some(json!({ "k": "v2" }))],
    );
    secrets.insert("other/x".to_owned(), vec![Some(json!({ "k": "v" }))]);
    let tokens = HashMap::from([("hvs.root".to_owned(), vec!["secret/".to_owned()])]);
    Vault {
        tokens: Mutex::new(tokens),
        secrets,
        role_id: "role-1".into(),
        secret_id: "secret-id-1".into(),
        lease_duration: 3600,
        ..Vault::default()
    }
}

fn token_client(addr: &Url, token: &str, ns: Option<&str>) -> VaultClient {
    let mut cfg = VaultConfig::new(
        addr.clone(),
        VaultAuth::Token(SecretString::new(token.into())),
    );
    cfg.namespace = ns.map(str::to_owned);
    VaultClient::new(cfg).unwrap()
}

fn approle_client(addr: &Url, secret_id: &str) -> VaultClient {
    VaultClient::new(VaultConfig::new(
        addr.clone(),
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: "role-1".into(),
            secret_id: SecretString::new(secret_id.into()),
        },
    ))
    .unwrap()
}

fn err<T>(r: Result<T, ExternalError>) -> ExternalError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn token_read_latest_version_key_and_errors() {
    let (addr, _v) = start(fixture()).await;
    let c = token_client(&addr, "hvs.root", None);

    let s = c.read_kv2("secret", "app/db", None).await.unwrap();
    assert_eq!(s.version, Some(2));
    assert_eq!(s.data["password"].expose_secret(), "pw-v2");
    assert_eq!(s.data["port"].expose_secret(), "5432");
    assert!(!format!("{s:?}").contains("pw-v2"));

    // The version parameter is honoured.
    let v1 = c.read_kv2("secret", "app/db", Some(1)).await.unwrap();
    assert_eq!(v1.version, Some(1));
    assert_eq!(v1.data["password"].expose_secret(), "pw-v1");
    assert!(!v1.data.contains_key("port"));
    let pw = c
        .read_kv2_key("secret", "/app/db/", "password", Some(1))
        .await
        .unwrap();
    assert_eq!(pw.expose_secret(), "pw-v1");

    let e = err(c.read_kv2("secret", "app/db", Some(9)).await);
    assert_eq!(e.code(), "external_not_found", "{e}");
    assert!(e.to_string().contains("version 9"), "{e}");
    let e = err(c.read_kv2("secret", "app/nope", None).await);
    assert_eq!(e.code(), "external_not_found", "{e}");
    let e = err(c.read_kv2("secret", "app/deleted", Some(1)).await);
    assert_eq!(e.code(), "external_not_found", "{e}");
    let e = err(c.read_kv2_key("secret", "app/db", "api_key", None).await);
    assert_eq!(e.code(), "external_not_found");
    assert!(
        e.to_string().contains("`api_key`") && !e.to_string().contains("pw-"),
        "{e}"
    );

    // Outside the token's policy, and a bad token: 403 → external_denied.
    let e = err(c.read_kv2("other", "x", None).await);
    assert_eq!(e.code(), "external_denied", "{e}");
    assert!(e.to_string().contains("permission denied"), "{e}");
    let bad = token_client(&addr, "hvs.wrong", None);
    let e = err(bad.read_kv2("secret", "app/db", None).await);
    assert_eq!(e.code(), "external_denied", "{e}");
    assert!(!e.to_string().contains("hvs.wrong"), "{e}");
}

#[tokio::test]
async fn namespace_header_is_sent() {
    let (addr, _v) = start(Vault {
        namespace: Some("team-a".into()),
        ..fixture()
    })
    .await;
    let with_ns = token_client(&addr, "hvs.root", Some("team-a"));
    let s = with_ns
        .read_kv2_key("secret", "app/db", "username", None)
        .await
        .unwrap();
    assert_eq!(s.expose_secret(), "app");
    let without = token_client(&addr, "hvs.root", None);
    assert_eq!(
        err(without.read_kv2("secret", "app/db", None).await).code(),
        "external_denied"
    );
    let wrong = token_client(&addr, "hvs.root", Some("team-b"));
    assert_eq!(
        err(wrong.read_kv2("secret", "app/db", None).await).code(),
        "external_denied"
    );
}

#[tokio::test]
async fn approle_login_is_cached_and_renewed_on_403() {
    let (addr, v) = start(fixture()).await;
    let c = approle_client(&addr, "secret-id-1");
    for _ in 0..3 {
        let s = c
            .read_kv2_key("secret", "app/db", "password", None)
            .await
            .unwrap();
        assert_eq!(s.expose_secret(), "pw-v2");
    }
    assert_eq!(v.logins.load(Ordering::SeqCst), 1, "the token is cached");

    // Vault revokes the token (expiry, revocation): the next read sees 403, logs in again.
    v.tokens.lock().unwrap().remove("hvs.approle-1");
    let s = c
        .read_kv2_key("secret", "app/db", "username", None)
        .await
        .unwrap();
    assert_eq!(s.expose_secret(), "app");
    assert_eq!(v.logins.load(Ordering::SeqCst), 2);

    // Concurrent callers that all saw the same rejected token share one login.
    v.tokens.lock().unwrap().remove("hvs.approle-2");
    let c = Arc::new(c);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.read_kv2("secret", "app/db", None)
                    .await
                    .map(|s| s.version)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().ok().flatten(), Some(2));
    }
    assert_eq!(v.logins.load(Ordering::SeqCst), 3);

    // Policy denial survives a re-login: external_denied.
    let e = err(c.read_kv2("other", "x", None).await);
    assert_eq!(e.code(), "external_denied", "{e}");
}

#[tokio::test]
async fn approle_token_renewed_before_lease_ends() {
    let (addr, v) = start(Vault {
        lease_duration: 1,
        ..fixture()
    })
    .await;
    let c = approle_client(&addr, "secret-id-1");
    c.read_kv2("secret", "app/db", None).await.unwrap();
    c.read_kv2("secret", "app/db", None).await.unwrap();
    assert_eq!(v.logins.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(950)).await;
    c.read_kv2("secret", "app/db", None).await.unwrap();
    assert_eq!(v.logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn approle_bad_secret_id_and_sealed_vault() {
    let (addr, v) = start(fixture()).await;
    let c = approle_client(&addr, "wrong-secret-id");
    let e = err(c.read_kv2("secret", "app/db", None).await);
    assert_eq!(e.code(), "external_denied", "{e}");
    assert!(e.to_string().contains("invalid role or secret ID"), "{e}");
    assert!(!e.to_string().contains("wrong-secret-id"), "{e}");
    assert_eq!(v.reads.load(Ordering::SeqCst), 0);

    let (addr, _v) = start(Vault {
        sealed: true,
        ..fixture()
    })
    .await;
    let e = err(token_client(&addr, "hvs.root", None)
        .read_kv2("secret", "app/db", None)
        .await);
    assert_eq!(e.code(), "external_unreachable", "{e}");
    assert!(e.to_string().contains("sealed"), "{e}");

    // Nothing listening: unreachable.
    let dead = Url::parse("http://127.0.0.1:1").unwrap();
    let e = err(token_client(&dead, "hvs.root", None)
        .read_kv2("secret", "app/db", None)
        .await);
    assert_eq!(e.code(), "external_unreachable", "{e}");
}
