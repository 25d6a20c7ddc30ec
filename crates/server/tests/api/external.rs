//! Credentials that proxy to external managers, and OAuth2 credentials, through the API.
//! AWS Secrets Manager runs against moto's server (a real implementation of the API,
//! started by scripts/peers-aws.sh); Vault and the OAuth2 token server are local responders
//! that follow their documented HTTP APIs (contract tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use patchbay_crypto::SecretString;
use patchbay_external::{AwsConfig, Credentials, SecretsManagerClient, Url};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Service, CANARY};

fn moto_url() -> Option<String> {
    let url =
        std::env::var("PATCHBAY_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:15000".into());
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    if std::net::TcpStream::connect(addr).is_ok() {
        return Some(url);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("moto not reachable at {url} (CI=true: scripts/peers-aws.sh starts it)");
    }
    eprintln!("SKIPPED: moto not reachable at {url}");
    None
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn credential(s: &Service, body: Value) -> String {
    let ws = s.default_workspace().await;
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn pg_using(s: &Service, name: &str, cred: &str) -> String {
    let project = s.default_project().await;
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": name, "type": "postgresql",
                "settings": {"host": "127.0.0.1", "database": "test"},
                "credential": {"id": cred}})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn reveal(s: &Service, id: &str) -> crate::kit::Reply {
    s.call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await
}

#[tokio::test]
async fn aws_secrets_manager_values_are_fetched_at_use_and_refreshed_after_the_ttl() {
    let Some(moto) = moto_url() else { return };
    // The server's own AWS identity (moto accepts any key).
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("PATCHBAY_AWS_ENDPOINT_URL", &moto);
    let sm = SecretsManagerClient::new(
        AwsConfig::new(
            "us-east-1",
            Credentials::new("testing", SecretString::new("testing".into()), None),
        )
        .with_endpoint(Url::parse(&moto).unwrap()),
    )
    .unwrap();
    let name = format!("pb/finance-{}", uuid::Uuid::new_v4().simple());
    let first = json!({"username": "finance", "password": CANARY}).to_string();
    patchbay_external::provision::secrets_create(&sm, &name, &SecretString::new(first))
        .await
        .unwrap();

    let s = Service::start_with(patchbay_server::state::Settings {
        external_cache_ttl: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let cred = credential(
        &s,
        json!({"name": "finance-sm", "kind": "username_password",
               "external": {"provider": "aws_secrets_manager", "secret_id": name}}),
    )
    .await;
    let conn = pg_using(&s, "sm-user", &cred).await;
    let r = reveal(&s, &conn).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["secrets"]["password"], CANARY);
    assert_eq!(r.body["credential"]["external"], true);

    // Changed in the manager: the cached value is used until the TTL, then the new one.
    let second = json!({"username": "finance", "password": "canary-sm-v2"}).to_string();
    patchbay_external::provision::secrets_put_value(&sm, &name, &SecretString::new(second))
        .await
        .unwrap();
    assert_eq!(reveal(&s, &conn).await.body["secrets"]["password"], CANARY);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reveal(&s, &conn).await.body["secrets"]["password"],
        "canary-sm-v2"
    );

    // A missing secret has its own code and echoes nothing.
    let missing = credential(
        &s,
        json!({"name": "missing-sm", "kind": "username_password",
               "external": {"provider": "aws_secrets_manager", "secret_id": "pb/nope-nope"}}),
    )
    .await;
    let conn = pg_using(&s, "sm-missing", &missing).await;
    let r = reveal(&s, &conn).await;
    assert_eq!(r.status.as_u16(), 424, "{}", r.text);
    assert_eq!(r.body["code"], "external_not_found");
    // Nothing the manager holds is stored here.
    let db = s
        .app_state
        .store
        .credential_secrets(&cred, 1)
        .await
        .unwrap();
    assert!(db.is_empty());
}

#[derive(Clone, Default)]
struct VaultState {
    reads: Arc<AtomicUsize>,
}

/// Vault KV v2 read, as documented: GET /v1/{mount}/data/{path}, X-Vault-Token,
/// X-Vault-Namespace; 403 for a wrong token, 404 for a missing path.
async fn vault_read(
    State(st): State<VaultState>,
    headers: HeaderMap,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> (StatusCode, Json<Value>) {
    st.reads.fetch_add(1, Ordering::SeqCst);
    if headers.get("x-vault-token").map(|v| v.as_bytes()) != Some(b"vault-root-token") {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"errors": ["permission denied"]})),
        );
    }
    if headers.get("x-vault-namespace").map(|v| v.as_bytes()) != Some(b"team-a") {
        return (StatusCode::NOT_FOUND, Json(json!({"errors": []})));
    }
    if path != "db/finance" {
        return (StatusCode::NOT_FOUND, Json(json!({"errors": []})));
    }
    (
        StatusCode::OK,
        Json(
            json!({"data": {"data": {"username": "vault-user", "password": CANARY},
            "metadata": {"version": 3, "created_time": "2026-11-01T00:00:00Z", "deletion_time": "", "destroyed": false}}}),
        ),
    )
}

#[tokio::test]
async fn vault_kv2_values_are_fetched_with_a_token_from_another_credential() {
    let st = VaultState::default();
    let vault = serve(
        Router::new()
            .route("/v1/secret/data/{*path}", get(vault_read))
            .with_state(st.clone()),
    )
    .await;
    let s = Service::start().await;
    let token = credential(
        &s,
        json!({"name": "vault-token", "kind": "bearer_token", "secrets": {"token": "vault-root-token"}}),
    )
    .await;
    let cred = credential(
        &s,
        json!({"name": "finance-vault", "kind": "username_password",
               "external": {"provider": "vault_kv2", "address": vault, "path": "db/finance",
                            "namespace": "team-a", "auth": {"method": "token", "credential_id": token}}}),
    )
    .await;
    let conn = pg_using(&s, "vault-user", &cred).await;
    let r = reveal(&s, &conn).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["secrets"]["password"], CANARY);
    // Cached within the TTL: one read for two uses.
    reveal(&s, &conn).await;
    assert_eq!(st.reads.load(Ordering::SeqCst), 1);

    // Denied and missing have their own codes.
    let bad_token = credential(
        &s,
        json!({"name": "bad-token", "kind": "bearer_token", "secrets": {"token": "wrong"}}),
    )
    .await;
    for (name, path, auth, code) in [
        (
            "denied",
            "db/finance",
            bad_token.as_str(),
            "external_denied",
        ),
        ("absent", "db/nothing", token.as_str(), "external_not_found"),
    ] {
        let c = credential(
            &s,
            json!({"name": name, "kind": "username_password",
                   "external": {"provider": "vault_kv2", "address": vault, "path": path,
                                "namespace": "team-a", "auth": {"method": "token", "credential_id": auth}}}),
        )
        .await;
        let conn = pg_using(&s, &format!("conn-{name}"), &c).await;
        let r = reveal(&s, &conn).await;
        assert_eq!(r.status.as_u16(), 424, "{}", r.text);
        assert_eq!(r.body["code"], code);
        assert!(!r.text.contains("vault-root-token") && !r.text.contains("wrong"));
    }
}

/// An RFC 6749 token endpoint whose refresh tokens work once: each refresh answers a new
/// access and refresh token, and a reused refresh token gets 400 invalid_grant.
#[derive(Clone, Default)]
struct TokenServer {
    requests: Arc<AtomicUsize>,
    valid_refresh: Arc<Mutex<String>>,
    issued: Arc<AtomicUsize>,
}

async fn token_endpoint(
    State(st): State<TokenServer>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    st.requests.fetch_add(1, Ordering::SeqCst);
    // client_secret_basic: base64("client-a:client-secret")
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if basic != "Basic Y2xpZW50LWE6Y2xpZW50LXNlY3JldA==" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        );
    }
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut valid = st.valid_refresh.lock().unwrap();
        if form.get("refresh_token") != Some(&*valid) {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            );
        }
        let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
        *valid = format!("refresh-{n}");
        return (
            StatusCode::OK,
            Json(
                json!({"access_token": format!("access-{n}"), "token_type": "Bearer",
                        "expires_in": 3600, "refresh_token": format!("refresh-{n}")}),
            ),
        );
    }
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        Json(
            json!({"access_token": format!("access-{n}"), "token_type": "Bearer", "expires_in": 3600}),
        ),
    )
}

#[tokio::test]
async fn oauth2_refresh_is_single_flight_across_fifty_callers_and_tokens_stay_encrypted() {
    let st = TokenServer::default();
    *st.valid_refresh.lock().unwrap() = "refresh-0".into();
    let issuer = serve(
        Router::new()
            .route("/token", post(token_endpoint))
            .with_state(st.clone()),
    )
    .await;
    let s = Service::start().await;
    let cred = credential(
        &s,
        json!({"name": "crm-oauth", "kind": "oauth2",
               "secrets": {"token_url": format!("{issuer}/token"), "client_id": "client-a",
                           "client_secret": "client-secret", "grant_type": "authorization_code",
                           "refresh_token": "refresh-0"}}),
    )
    .await;

    // 50 concurrent callers, no token yet: exactly one refresh reaches the server.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let http = s.http.clone();
        let url = format!("{}/api/v1/credentials/{cred}/token", s.base);
        let token = s.token.clone();
        calls.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            let cache = r.headers().get("cache-control").cloned();
            (r.status(), cache, r.json::<Value>().await.unwrap())
        }));
    }
    for c in calls {
        let (status, cache, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(cache.unwrap(), "no-store");
        assert_eq!(body["access_token"], "access-1");
    }
    assert_eq!(
        st.requests.load(Ordering::SeqCst),
        1,
        "refresh was not single-flight"
    );

    // A 401 from the API with that token: one reactive refresh; the rotated refresh token
    // (refresh-1) was stored before use, so it works.
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred}/token"),
            Some(json!({"rejected": "access-1"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["access_token"], "access-2");
    assert_eq!(st.requests.load(Ordering::SeqCst), 2);

    // A second replica (another token manager over the same database) reuses the stored
    // token instead of refreshing.
    let replica = patchbay_external::TokenManager::new(
        patchbay_external::OAuth2Client::new(Default::default()).unwrap(),
        Arc::new(patchbay_server::service::oauth::SqlTokenStore {
            store: s.app_state.store.clone(),
            keys: s.app_state.keys.clone(),
        }),
        patchbay_external::TokenManagerOptions {
            holder_id: "replica-b".into(),
            ..Default::default()
        },
    );
    let cfg = patchbay_external::OAuthClientConfig::new(
        Url::parse(&format!("{issuer}/token")).unwrap(),
        "client-a",
        Some(SecretString::new("client-secret".into())),
        patchbay_external::GrantKind::RefreshToken,
    );
    let t = replica.access_token(&cred, &cfg).await.unwrap();
    assert_eq!(t.token.expose_secret(), "access-2");
    assert_eq!(st.requests.load(Ordering::SeqCst), 2);

    // Tokens are never in get or list, and are stored only as ciphertext.
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{cred}"),
            None,
            &[],
        )
        .await;
    assert!(!got.text.contains("access-2") && !got.text.contains("refresh-2"));
    assert_eq!(got.body["fields"]["client_secret"], "********");
    let ev = s.app_state.store.oauth_token(&cred).await.unwrap().unwrap();
    assert!(!ev.ciphertext.windows(9).any(|w| w == b"refresh-2"));
}

/// Master key sealed by AWS KMS (moto): created on first start, opened by KMS on restart,
/// rotated online; a restart with the KMS key's sealed file gone refuses to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_sealed_by_kms_survives_restarts_and_rotation() {
    let Some(moto) = moto_url() else { return };
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("PATCHBAY_AWS_ENDPOINT_URL", &moto);
    let kms = patchbay_external::KmsClient::new(AwsConfig::from_env().unwrap()).unwrap();
    let kms_key = patchbay_external::provision::kms_create_key(&kms, "patchbay test master key")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("data/master.key.kms");
    let source = || patchbay_server::MasterKeySource::Kms {
        kms_key_id: kms_key.clone(),
        file: sealed.clone(),
    };
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let s = Service::start_in(dir, source(), Default::default()).await;
    let master_id = s.app_state.keys.master_key_id();
    assert!(master_id.starts_with("kms:"), "{master_id}");
    let project = s.default_project().await;
    let c = s.create_pg(&project, "kms-sealed").await;
    let id = c.body["id"].as_str().unwrap().to_owned();
    // The sealed file is KMS ciphertext: base64, not the key's own base64 encoding.
    let text = std::fs::read_to_string(&sealed).unwrap();
    assert!(text.trim().len() > 100, "{}", text.len());

    // Restart: KMS opens the key and the secret decrypts.
    let s = Service::start_in(s.into_dir(), source(), Default::default()).await;
    assert_eq!(s.app_state.keys.master_key_id(), master_id);
    assert_eq!(reveal(&s, &id).await.body["secrets"]["password"], CANARY);

    // Online master rotation under KMS: a new sealed key, every data key re-wrapped.
    let r = s
        .call(Method::POST, "/api/v1/keys/rotate-master", None, &[])
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text);
    let rid = r.body["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = s
            .call(
                Method::GET,
                &format!("/api/v1/keys/rotations/{rid}"),
                None,
                &[],
            )
            .await;
        if st.body["state"] == "done" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", st.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotated = s.app_state.keys.master_key_id();
    assert_ne!(rotated, master_id);
    assert_ne!(std::fs::read_to_string(&sealed).unwrap(), text);
    let s = Service::start_in(s.into_dir(), source(), Default::default()).await;
    assert_eq!(s.app_state.keys.master_key_id(), rotated);
    assert_eq!(reveal(&s, &id).await.body["secrets"]["password"], CANARY);
    let status = s.call(Method::GET, "/api/v1/keys", None, &[]).await;
    assert_eq!(
        status.body["master_key"]["source"], "kms",
        "{}",
        status.text
    );

    // Without its sealed key the database is not opened with a fresh one.
    let dir = s.into_dir();
    std::fs::remove_file(&sealed).unwrap();
    let err = Service::try_start_in(dir, source(), Default::default()).await;
    match err {
        Err(e) => assert!(e.contains("wrong master key"), "{e}"),
        Ok(_) => panic!("started with a new master key over data sealed by another"),
    }
}
