//! The OAuth2 client and TokenManager against a local token server that follows RFC 6749:
//! `POST /token` (form-urlencoded) with client authentication by HTTP Basic over the
//! form-urlencoded id and secret (§2.3.1) or in the body, `refresh_token` and
//! `client_credentials` grants, errors as `{"error": "..."}` with 400/401. Refresh tokens are
//! one-time: each use invalidates it and issues a new one; reuse answers 400 invalid_grant.
//! `GET /resource` checks a Bearer access token (401 when unknown or expired).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use patchbay_crypto::SecretString;
use patchbay_external::oauth2::now_ms;
use patchbay_external::{
    ClientAuthMethod, ExternalError, GrantKind, HttpOptions, MemoryTokenStore, OAuth2Client,
    OAuthClientConfig, StoredToken, TokenManager, TokenManagerOptions, Url,
};
use serde_json::json;

const CLIENT_ID: &str = "patchbay client";
const CLIENT_SECRET: &str = "s3cr:t/+ &=%x";

struct Server {
    expires_in: u64,
    /// Delay of every token answer, so concurrent callers really overlap.
    delay: Duration,
    rotate: bool,
    refresh_tokens: Mutex<HashSet<String>>,
    access_tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicUsize,
    refresh_requests: AtomicUsize,
    cc_requests: AtomicUsize,
    /// How each token request authenticated: "basic" or "post".
    auth_seen: Mutex<Vec<String>>,
    /// Whether a body carried client_secret while Basic was used (must never happen).
    bad_requests: AtomicUsize,
}

impl Server {
    fn new(expires_in: u64) -> Self {
        Self {
            expires_in,
            delay: Duration::from_millis(50),
            rotate: true,
            refresh_tokens: Mutex::new(HashSet::from(["rt-0".to_owned()])),
            access_tokens: Mutex::new(HashMap::new()),
            issued: AtomicUsize::new(0),
            refresh_requests: AtomicUsize::new(0),
            cc_requests: AtomicUsize::new(0),
            auth_seen: Mutex::new(Vec::new()),
            bad_requests: AtomicUsize::new(0),
        }
    }

    fn valid(&self, token: &str) -> bool {
        self.access_tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|exp| Instant::now() < *exp)
    }
}

fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({ "error": code, "error_description": "secret-free description" })),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    tokio::time::sleep(s.delay).await;
    // Client authentication: exactly one method (RFC 6749 §2.3).
    let basic = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "));
    let (id, secret, method) = match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => {
            s.bad_requests.fetch_add(1, Ordering::SeqCst);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        (Some(b), None) => {
            let Some(decoded) = B64.decode(b).ok().and_then(|d| String::from_utf8(d).ok()) else {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
            };
            let Some((id, secret)) = decoded.split_once(':') else {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
            };
            (form_decode(id), form_decode(secret), "basic")
        }
        (None, Some(secret)) => (form.get("client_id").cloned(), Some(secret.clone()), "post"),
        (None, None) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    s.auth_seen.lock().unwrap().push(method.to_owned());
    if id.as_deref() != Some(CLIENT_ID) || secret.as_deref() != Some(CLIENT_SECRET) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }

    let n = s.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let access = format!("at-{n}");
    let mut body =
        json!({ "access_token": access, "token_type": "Bearer", "expires_in": s.expires_in });
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            s.refresh_requests.fetch_add(1, Ordering::SeqCst);
            let Some(rt) = form.get("refresh_token") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            let mut valid = s.refresh_tokens.lock().unwrap();
            if s.rotate {
                // One-time refresh tokens: first use consumes it.
                if !valid.remove(rt) {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
                let new_rt = format!("rt-{n}");
                valid.insert(new_rt.clone());
                body["refresh_token"] = json!(new_rt);
            } else if !valid.contains(rt) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
        }
        Some("client_credentials") => {
            s.cc_requests.fetch_add(1, Ordering::SeqCst);
            body["scope"] = json!(form.get("scope").cloned().unwrap_or_default());
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    s.access_tokens
        .lock()
        .unwrap()
        .insert(access, Instant::now() + Duration::from_secs(s.expires_in));
    (
        [("cache-control", "no-store"), ("pragma", "no-cache")],
        Json(body),
    )
        .into_response()
}

async fn resource(State(s): State<Arc<Server>>, headers: HeaderMap) -> StatusCode {
    let bearer = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if s.valid(bearer) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

async fn start(server: Server) -> (Url, Arc<Server>) {
    let s = Arc::new(server);
    let app = Router::new()
        .route("/token", post(token))
        .route("/resource", get(resource))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Url::parse(&format!("http://{addr}/")).unwrap(), s)
}

fn config(base: &Url, auth: ClientAuthMethod, grant: GrantKind) -> OAuthClientConfig {
    let mut c = OAuthClientConfig::new(
        base.join("token").unwrap(),
        CLIENT_ID,
        Some(SecretString::new(CLIENT_SECRET.into())),
        grant,
    );
    c.auth_method = auth;
    c
}

fn expired_with_refresh(rt: &str) -> StoredToken {
    StoredToken {
        access_token: Some(SecretString::new("at-expired".into())),
        token_type: "Bearer".into(),
        issued_at_ms: now_ms() - 3_600_000,
        expires_at_ms: Some(now_ms() - 1_000),
        refresh_token: Some(SecretString::new(rt.into())),
        scope: None,
    }
}

fn manager(store: Arc<MemoryTokenStore>, holder: &str, margin: Duration) -> TokenManager {
    TokenManager::new(
        OAuth2Client::new(HttpOptions::default()).unwrap(),
        store,
        TokenManagerOptions {
            refresh_margin: margin,
            holder_id: holder.into(),
            poll_interval: Duration::from_millis(20),
            ..TokenManagerOptions::default()
        },
    )
}

async fn call_resource(base: &Url, token: &SecretString) -> StatusCode {
    let r = reqwest::Client::new()
        .get(base.join("resource").unwrap())
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    StatusCode::from_u16(r.status().as_u16()).unwrap()
}

fn err<T>(r: Result<T, ExternalError>) -> ExternalError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Acceptance criterion: 50 concurrent callers, an expired cached token, one-time refresh
/// tokens → exactly one refresh request reaches the server and everyone gets the same valid
/// token; the rotated refresh token is saved and works after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_exactly_one_refresh() {
    let (base, server) = start(Server::new(3600)).await;
    let store = Arc::new(MemoryTokenStore::new());
    store.put("cred-1", expired_with_refresh("rt-0"));
    let mgr = Arc::new(manager(store.clone(), "replica-a", Duration::from_secs(60)));
    let cfg = Arc::new(config(
        &base,
        ClientAuthMethod::ClientSecretBasic,
        GrantKind::RefreshToken,
    ));

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (mgr, cfg, barrier) = (mgr.clone(), cfg.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                mgr.access_token("cred-1", &cfg)
                    .await
                    .map(|t| t.token.expose_secret().to_owned())
            })
        })
        .collect();
    let mut tokens = HashSet::new();
    for t in tasks {
        tokens.insert(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("every caller gets a token: {e}")),
        );
    }
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.len(), 1, "everyone got the same token: {tokens:?}");
    let token = tokens.into_iter().next().unwrap();
    assert!(server.valid(&token));
    assert_eq!(
        call_resource(&base, &SecretString::new(token.clone())).await,
        StatusCode::OK
    );

    // The rotated refresh token was saved: the store holds the one the server now accepts.
    let saved = store.get("cred-1").unwrap();
    let saved_rt = saved.refresh_token.unwrap().expose_secret().to_owned();
    assert_eq!(
        *server.refresh_tokens.lock().unwrap(),
        HashSet::from([saved_rt.clone()])
    );
    assert_ne!(saved_rt, "rt-0");

    // A restarted process with an expired access token refreshes with the saved token.
    let mut expired = store.get("cred-1").unwrap();
    expired.expires_at_ms = Some(now_ms() - 1);
    store.put("cred-1", expired);
    let restarted = manager(store.clone(), "replica-a2", Duration::from_secs(60));
    let t = restarted.access_token("cred-1", &cfg).await.unwrap();
    assert_ne!(t.token.expose_secret(), token);
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 2);
}

/// Two replicas (two managers, one store): the lease makes one refresh for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_refresh_through_the_store_lease() {
    let (base, server) = start(Server {
        delay: Duration::from_millis(200),
        ..Server::new(3600)
    })
    .await;
    let store = Arc::new(MemoryTokenStore::new());
    store.put("cred-1", expired_with_refresh("rt-0"));
    let a = Arc::new(manager(store.clone(), "replica-a", Duration::from_secs(60)));
    let b = Arc::new(manager(store.clone(), "replica-b", Duration::from_secs(60)));
    let cfg = Arc::new(config(
        &base,
        ClientAuthMethod::ClientSecretPost,
        GrantKind::RefreshToken,
    ));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let m = if i % 2 == 0 { a.clone() } else { b.clone() };
            let cfg = cfg.clone();
            tokio::spawn(async move {
                m.access_token("cred-1", &cfg)
                    .await
                    .map(|t| t.token.expose_secret().to_owned())
            })
        })
        .collect();
    let mut tokens = HashSet::new();
    for t in tasks {
        tokens.insert(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("every caller gets a token: {e}")),
        );
    }
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn client_secret_basic_and_post_reach_the_server_in_their_form() {
    let (base, server) = start(Server::new(3600)).await;
    let client = OAuth2Client::new(HttpOptions::default()).unwrap();

    let basic = config(
        &base,
        ClientAuthMethod::ClientSecretBasic,
        GrantKind::ClientCredentials,
    );
    let t = client.client_credentials(&basic).await.unwrap();
    assert!(server.valid(t.access_token.as_ref().unwrap().expose_secret()));
    assert_eq!(t.token_type, "Bearer");
    assert!(t.refresh_token.is_none());
    let exp = t.expires_at_ms.unwrap() - t.issued_at_ms;
    assert_eq!(exp, 3_600_000);

    let mut post = config(
        &base,
        ClientAuthMethod::ClientSecretPost,
        GrantKind::ClientCredentials,
    );
    post.scopes = vec!["read".into(), "write".into()];
    let t = client.client_credentials(&post).await.unwrap();
    assert_eq!(t.scope.as_deref(), Some("read write"));

    assert_eq!(*server.auth_seen.lock().unwrap(), vec!["basic", "post"]);
    assert_eq!(server.bad_requests.load(Ordering::SeqCst), 0);

    // Wrong client secret: invalid_client → oauth_error, no secret in the message.
    let mut wrong = basic.clone();
    wrong.client_secret = Some(SecretString::new("not-the-secret".into()));
    let e = err(client.client_credentials(&wrong).await);
    assert_eq!(e.code(), "oauth_error", "{e}");
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    assert!(!e.to_string().contains("description"), "{e}");
    assert!(!format!("{wrong:?}").contains("not-the-secret"));
}

#[tokio::test]
async fn refresh_token_reuse_is_invalid_grant() {
    let (base, _server) = start(Server::new(3600)).await;
    let client = OAuth2Client::new(HttpOptions::default()).unwrap();
    let cfg = config(
        &base,
        ClientAuthMethod::ClientSecretBasic,
        GrantKind::RefreshToken,
    );
    let rt0 = SecretString::new("rt-0".into());
    let t = client.refresh(&cfg, &rt0).await.unwrap();
    assert_ne!(t.refresh_token.as_ref().unwrap().expose_secret(), "rt-0");
    let e = err(client.refresh(&cfg, &rt0).await);
    assert_eq!(e.code(), "oauth_invalid_grant");
    assert!(!e.to_string().contains("rt-0"), "{e}");

    // Through the manager: a spent refresh token surfaces as oauth_invalid_grant.
    let store = Arc::new(MemoryTokenStore::new());
    store.put("cred-x", expired_with_refresh("rt-0"));
    let mgr = manager(store.clone(), "r", Duration::from_secs(60));
    let e = err(mgr.access_token("cred-x", &cfg).await);
    assert_eq!(e.code(), "oauth_invalid_grant");
    // Nothing stored at all.
    let e = err(mgr.access_token("cred-none", &cfg).await);
    assert_eq!(e.code(), "oauth_invalid_grant");
    // Nothing listening.
    let mut dead = cfg.clone();
    dead.token_url = Url::parse("http://127.0.0.1:1/token").unwrap();
    let e = err(client.refresh(&dead, &rt0).await);
    assert_eq!(e.code(), "external_unreachable");
}

#[tokio::test]
async fn non_rotating_server_keeps_the_refresh_token() {
    let (base, server) = start(Server {
        rotate: false,
        ..Server::new(3600)
    })
    .await;
    let client = OAuth2Client::new(HttpOptions::default()).unwrap();
    let cfg = config(
        &base,
        ClientAuthMethod::ClientSecretPost,
        GrantKind::RefreshToken,
    );
    let t = client
        .refresh(&cfg, &SecretString::new("rt-0".into()))
        .await
        .unwrap();
    assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-0");
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 1);
}

/// Proactive refresh: when less than the margin remains, a new token is fetched while the old
/// one is still valid at the server.
#[tokio::test]
async fn proactive_refresh_before_expiry() {
    let (base, server) = start(Server {
        delay: Duration::ZERO,
        ..Server::new(4)
    })
    .await;
    let store = Arc::new(MemoryTokenStore::new());
    store.put("cred-1", expired_with_refresh("rt-0"));
    // Margin 1.5 s of a 4 s token: fresh for ~2.5 s.
    let mgr = manager(store, "r", Duration::from_millis(1500));
    let cfg = config(
        &base,
        ClientAuthMethod::ClientSecretBasic,
        GrantKind::RefreshToken,
    );
    let a = mgr.access_token("cred-1", &cfg).await.unwrap();
    let again = mgr.access_token("cred-1", &cfg).await.unwrap();
    assert_eq!(a.token.expose_secret(), again.token.expose_secret());
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_millis(2700)).await;
    let old = a.token.expose_secret().to_owned();
    assert!(server.valid(&old), "the old token has not expired yet");
    let b = mgr.access_token("cred-1", &cfg).await.unwrap();
    assert_ne!(b.token.expose_secret(), old);
    assert_eq!(server.refresh_requests.load(Ordering::SeqCst), 2);
}

/// Reactive refresh: the resource server answers 401 (token revoked early); the caller asks
/// for a replacement of the rejected token. Concurrent callers with the same rejected token
/// share one refresh; a stale rejection does not cause another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactive_refresh_after_401() {
    let (base, server) = start(Server::new(3600)).await;
    let store = Arc::new(MemoryTokenStore::new());
    let mgr = Arc::new(manager(store.clone(), "r", Duration::from_secs(60)));
    let cfg = Arc::new(config(
        &base,
        ClientAuthMethod::ClientSecretPost,
        GrantKind::ClientCredentials,
    ));

    let a = mgr.access_token("cred-cc", &cfg).await.unwrap();
    assert_eq!(call_resource(&base, &a.token).await, StatusCode::OK);
    assert_eq!(server.cc_requests.load(Ordering::SeqCst), 1);

    server
        .access_tokens
        .lock()
        .unwrap()
        .remove(a.token.expose_secret());
    assert_eq!(
        call_resource(&base, &a.token).await,
        StatusCode::UNAUTHORIZED
    );
    // Still cached: access_token alone would hand out the revoked one.
    let cached = mgr.access_token("cred-cc", &cfg).await.unwrap();
    assert_eq!(cached.token.expose_secret(), a.token.expose_secret());

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (mgr, cfg, rejected) = (mgr.clone(), cfg.clone(), a.token.clone());
            tokio::spawn(async move {
                mgr.invalidate_and_refresh("cred-cc", &cfg, &rejected)
                    .await
                    .map(|t| t.token.expose_secret().to_owned())
            })
        })
        .collect();
    let mut tokens = HashSet::new();
    for t in tasks {
        tokens.insert(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("a replacement token: {e}")),
        );
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(server.cc_requests.load(Ordering::SeqCst), 2);
    let b = SecretString::new(tokens.into_iter().next().unwrap());
    assert!(b != a.token);
    assert_eq!(call_resource(&base, &b).await, StatusCode::OK);
    assert!(store.get("cred-cc").unwrap().access_token.unwrap() == b);

    // A late 401 for the old token: the newer token is returned, no request.
    let c = mgr
        .invalidate_and_refresh("cred-cc", &cfg, &a.token)
        .await
        .unwrap();
    assert!(c.token == b);
    assert_eq!(server.cc_requests.load(Ordering::SeqCst), 2);
    assert!(!format!("{c:?}").contains(b.expose_secret()));
}
