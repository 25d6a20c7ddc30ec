//! OAuth2 (RFC 6749) token client and a single-flight token manager.
//!
//! * [`OAuth2Client`] — token endpoint requests: `client_credentials` and `refresh_token`
//!   grants, client authentication `client_secret_basic` (HTTP Basic over the
//!   form-urlencoded id and secret, RFC 6749 §2.3.1) or `client_secret_post`.
//! * [`TokenManager`] — caches a token per credential id, refreshes it proactively before it
//!   expires and reactively after a 401 ([`TokenManager::invalidate_and_refresh`]). Refreshes
//!   are **single-flight**: in one process, concurrent callers for a credential wait on one
//!   per-credential lock and share the one refresh; across replicas, the [`TokenStore`] lease
//!   lets one holder refresh while the others poll the store for the result. A rotated
//!   refresh token is saved through [`TokenStore::save_and_release`] before any caller gets
//!   the new access token, so a one-time refresh token is never lost.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use patchbay_crypto::SecretString;
use reqwest::Url;
use zeroize::Zeroizing;

use crate::error::{ExternalError, Result};
use crate::http::{sanitize_code, HttpOptions};

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (RFC 6749 §2.3.1; the default
    /// every server must support).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret.
    None,
}

/// Which grant obtains a new token when the current one runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// `grant_type=client_credentials` (machine-to-machine).
    ClientCredentials,
    /// `grant_type=refresh_token` with the stored refresh token.
    RefreshToken,
}

/// One OAuth2 client registration. `Debug` redacts the client secret.
#[derive(Clone)]
pub struct OAuthClientConfig {
    /// Token endpoint URL.
    pub token_url: Url,
    /// Client id.
    pub client_id: String,
    /// Client secret (confidential clients).
    pub client_secret: Option<SecretString>,
    /// Client authentication method.
    pub auth_method: ClientAuthMethod,
    /// Grant used to obtain tokens.
    pub grant: GrantKind,
    /// Requested scopes (sent space-separated; omitted when empty).
    pub scopes: Vec<String>,
    /// Extra form parameters (e.g. `audience`, `resource`).
    pub extra_params: Vec<(String, String)>,
}

impl fmt::Debug for OAuthClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClientConfig")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_method", &self.auth_method)
            .field("grant", &self.grant)
            .field("scopes", &self.scopes)
            .field("extra_params", &self.extra_params)
            .finish()
    }
}

impl OAuthClientConfig {
    /// A confidential client using `client_secret_basic` and the given grant, no scopes.
    pub fn new(
        token_url: Url,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
        grant: GrantKind,
    ) -> Self {
        Self {
            token_url,
            client_id: client_id.into(),
            client_secret,
            auth_method: ClientAuthMethod::ClientSecretBasic,
            grant,
            scopes: Vec::new(),
            extra_params: Vec::new(),
        }
    }
}

/// A token as persisted per credential. `Debug` redacts both tokens.
#[derive(Clone)]
pub struct StoredToken {
    /// The access token, if one was issued.
    pub access_token: Option<SecretString>,
    /// `token_type`, usually `Bearer`.
    pub token_type: String,
    /// When the token endpoint answered (Unix ms).
    pub issued_at_ms: i64,
    /// `issued_at + expires_in` (Unix ms); `None` when the server did not say.
    pub expires_at_ms: Option<i64>,
    /// The refresh token (rotated ones replace the previous one).
    pub refresh_token: Option<SecretString>,
    /// Granted scope, when the server said.
    pub scope: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("token_type", &self.token_type)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl StoredToken {
    /// A stored refresh token without an access token (e.g. right after an authorization code
    /// exchange done elsewhere, or imported by an operator).
    pub fn from_refresh_token(refresh_token: SecretString) -> Self {
        Self {
            access_token: None,
            token_type: "Bearer".into(),
            issued_at_ms: 0,
            expires_at_ms: Some(0),
            refresh_token: Some(refresh_token),
            scope: None,
        }
    }

    /// Whether the access token can still be handed out at `now_ms`: present, and more than
    /// `margin` (capped at half the token's lifetime) before its expiry.
    pub fn is_fresh(&self, now_ms: i64, margin: Duration) -> bool {
        if self.access_token.is_none() {
            return false;
        }
        match self.expires_at_ms {
            None => true,
            Some(exp) => {
                let lifetime = (exp - self.issued_at_ms).max(0);
                let margin = i64::try_from(margin.as_millis())
                    .unwrap_or(i64::MAX)
                    .min(lifetime / 2);
                exp - now_ms > margin
            }
        }
    }
}

/// An access token handed to a caller. `Debug` redacts the token.
#[derive(Clone)]
pub struct AccessToken {
    /// The access token (for `Authorization: {token_type} {token}`).
    pub token: SecretString,
    /// `token_type`, usually `Bearer`.
    pub token_type: String,
    /// Expiry (Unix ms), when known.
    pub expires_at_ms: Option<i64>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl AccessToken {
    fn from_stored(t: &StoredToken) -> Option<Self> {
        Some(Self {
            token: t.access_token.clone()?,
            token_type: t.token_type.clone(),
            expires_at_ms: t.expires_at_ms,
        })
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `application/x-www-form-urlencoded` byte serializer (WHATWG URL §5.2): keeps
/// `A-Z a-z 0-9 * - . _`, space → `+`, everything else `%XX`.
pub fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form_body(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&form_urlencode(k));
        out.push('=');
        out.push_str(&form_urlencode(v));
    }
    out
}

/// Token endpoint client.
#[derive(Debug, Clone)]
pub struct OAuth2Client {
    http: reqwest::Client,
}

impl OAuth2Client {
    /// A client with the given timeouts.
    pub fn new(http: HttpOptions) -> Result<Self> {
        Ok(Self {
            http: http.client()?,
        })
    }

    /// `grant_type=client_credentials`.
    pub async fn client_credentials(&self, cfg: &OAuthClientConfig) -> Result<StoredToken> {
        self.token_request(cfg, "client_credentials", None).await
    }

    /// `grant_type=refresh_token`. When the server does not rotate the refresh token, the
    /// returned token carries the one that was sent.
    pub async fn refresh(
        &self,
        cfg: &OAuthClientConfig,
        refresh_token: &SecretString,
    ) -> Result<StoredToken> {
        let mut t = self
            .token_request(cfg, "refresh_token", Some(refresh_token))
            .await?;
        if t.refresh_token.is_none() {
            t.refresh_token = Some(refresh_token.clone());
        }
        Ok(t)
    }

    async fn token_request(
        &self,
        cfg: &OAuthClientConfig,
        grant_type: &str,
        refresh_token: Option<&SecretString>,
    ) -> Result<StoredToken> {
        let what = format!("OAuth2 token endpoint ({grant_type})");
        let scope = cfg.scopes.join(" ");
        let mut pairs: Vec<(&str, &str)> = vec![("grant_type", grant_type)];
        if let Some(rt) = refresh_token {
            pairs.push(("refresh_token", rt.expose_secret()));
        }
        if !scope.is_empty() {
            pairs.push(("scope", &scope));
        }
        for (k, v) in &cfg.extra_params {
            pairs.push((k, v));
        }
        let mut req = self
            .http
            .post(cfg.token_url.clone())
            .header("accept", "application/json");
        match cfg.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                let secret = cfg.client_secret.as_ref().map_or("", |s| s.expose_secret());
                let creds = Zeroizing::new(format!(
                    "{}:{}",
                    form_urlencode(&cfg.client_id),
                    form_urlencode(secret)
                ));
                let header = Zeroizing::new(format!("Basic {}", B64.encode(creds.as_bytes())));
                req = req.header("authorization", header.as_str());
            }
            ClientAuthMethod::ClientSecretPost => {
                pairs.push(("client_id", &cfg.client_id));
                if let Some(s) = &cfg.client_secret {
                    pairs.push(("client_secret", s.expose_secret()));
                }
            }
            ClientAuthMethod::None => pairs.push(("client_id", &cfg.client_id)),
        }
        let body = form_body(&pairs);
        let started = now_ms();
        let resp = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| ExternalError::transport(&what, &e))?;
        let status = resp.status();
        let bytes = Zeroizing::new(Vec::from(
            resp.bytes()
                .await
                .map_err(|e| ExternalError::transport(&what, &e))?,
        ));
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let code = json
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(|e| e.as_str())
                .map(sanitize_code)
                .unwrap_or_default();
            let msg = format!(
                "{what}: {} (HTTP {})",
                if code.is_empty() {
                    "no error code"
                } else {
                    &code
                },
                status.as_u16()
            );
            return Err(match (status.as_u16(), code.as_str()) {
                (_, "invalid_grant") => ExternalError::OAuthInvalidGrant(msg),
                (_, "temporarily_unavailable") | (429 | 500..=599, _) => {
                    ExternalError::Unreachable(msg)
                }
                _ => ExternalError::OAuth(msg),
            });
        }
        let invalid = |field: &str| {
            ExternalError::InvalidResponse(format!("{what}: the answer has no valid `{field}`"))
        };
        let v = json.ok_or_else(|| invalid("access_token"))?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
        let access = text("access_token").ok_or_else(|| invalid("access_token"))?;
        let expires_in = match v.get("expires_in") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => {
                Some(n.as_i64().ok_or_else(|| invalid("expires_in"))?)
            }
            // Some servers send it as a string.
            Some(serde_json::Value::String(s)) => {
                Some(s.trim().parse::<i64>().map_err(|_| invalid("expires_in"))?)
            }
            Some(_) => return Err(invalid("expires_in")),
        };
        Ok(StoredToken {
            access_token: Some(SecretString::new(access.to_owned())),
            token_type: text("token_type").unwrap_or("Bearer").to_owned(),
            issued_at_ms: started,
            expires_at_ms: expires_in
                .map(|s| started.saturating_add(s.max(0).saturating_mul(1000))),
            refresh_token: text("refresh_token").map(|s| SecretString::new(s.to_owned())),
            scope: text("scope").map(str::to_owned),
        })
    }
}

/// A boxed future returned by [`TokenStore`] methods (keeps the trait usable as `dyn`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Persistence and cross-replica leasing of tokens, implemented by the server over its SQL
/// store (one row per credential: encrypted tokens, `lease_holder`, `lease_until`).
///
/// Contract:
/// * `load` returns the last saved token.
/// * `try_lease` atomically takes the refresh lease when it is free, expired, or already held
///   by `holder` (e.g. `UPDATE … SET lease_holder=$h, lease_until=$now+ttl WHERE id=$c AND
///   (lease_holder IS NULL OR lease_until < $now OR lease_holder=$h)`), answering whether
///   `holder` now holds it.
/// * `save_and_release` durably saves `token` — even if the lease has meanwhile expired, since
///   the old refresh token is already spent — and clears the lease if `holder` holds it.
/// * `release` clears the lease if `holder` holds it (after a failed refresh).
///
/// Errors should be [`ExternalError::Store`].
pub trait TokenStore: Send + Sync {
    /// The last saved token of `credential_id`.
    fn load<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Option<StoredToken>>;
    /// Takes the refresh lease of `credential_id` for `ttl` if free; whether `holder` holds it.
    fn try_lease<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Saves `token` and releases `holder`'s lease.
    fn save_and_release<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        token: &'a StoredToken,
    ) -> StoreFuture<'a, ()>;
    /// Releases `holder`'s lease without saving.
    fn release<'a>(&'a self, credential_id: &'a str, holder: &'a str) -> StoreFuture<'a, ()>;
}

struct MemoryEntry {
    token: Option<StoredToken>,
    lease: Option<(String, Instant)>,
}

/// An in-memory [`TokenStore`] (tests, single-process use).
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: std::sync::Mutex<HashMap<String, MemoryEntry>>,
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore").finish_non_exhaustive()
    }
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the token of a credential (seeding).
    pub fn put(&self, credential_id: &str, token: StoredToken) {
        self.lock()
            .entry(credential_id.to_owned())
            .or_insert(MemoryEntry {
                token: None,
                lease: None,
            })
            .token = Some(token);
    }

    /// The saved token of a credential.
    pub fn get(&self, credential_id: &str) -> Option<StoredToken> {
        self.lock().get(credential_id).and_then(|e| e.token.clone())
    }
}

impl TokenStore for MemoryTokenStore {
    fn load<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(async move { Ok(self.get(credential_id)) })
    }

    fn try_lease<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut map = self.lock();
            let e = map.entry(credential_id.to_owned()).or_insert(MemoryEntry {
                token: None,
                lease: None,
            });
            let free = match &e.lease {
                None => true,
                Some((h, until)) => h == holder || Instant::now() >= *until,
            };
            if free {
                e.lease = Some((holder.to_owned(), Instant::now() + ttl));
            }
            Ok(free)
        })
    }

    fn save_and_release<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        token: &'a StoredToken,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut map = self.lock();
            let e = map.entry(credential_id.to_owned()).or_insert(MemoryEntry {
                token: None,
                lease: None,
            });
            e.token = Some(token.clone());
            if e.lease.as_ref().is_some_and(|(h, _)| h == holder) {
                e.lease = None;
            }
            Ok(())
        })
    }

    fn release<'a>(&'a self, credential_id: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Some(e) = self.lock().get_mut(credential_id) {
                if e.lease.as_ref().is_some_and(|(h, _)| h == holder) {
                    e.lease = None;
                }
            }
            Ok(())
        })
    }
}

/// Tuning of a [`TokenManager`].
#[derive(Debug, Clone)]
pub struct TokenManagerOptions {
    /// Refresh when less than this remains of the token's lifetime (capped at half the
    /// lifetime). Default 60 s.
    pub refresh_margin: Duration,
    /// How long a refresh lease is held at most. Default 30 s (longer than the HTTP timeout).
    pub lease_ttl: Duration,
    /// How long to wait for another holder's refresh before giving up. Default 35 s.
    pub wait_for_holder: Duration,
    /// How often to look at the store while another holder refreshes. Default 100 ms.
    pub poll_interval: Duration,
    /// This replica's lease holder id (unique per process).
    pub holder_id: String,
}

impl Default for TokenManagerOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
            wait_for_holder: Duration::from_secs(35),
            poll_interval: Duration::from_millis(100),
            holder_id: format!("pid{}-{}", std::process::id(), now_ms()),
        }
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<StoredToken>,
    /// A token obtained but not yet saved (the save failed): saved before anything else.
    unsaved: Option<StoredToken>,
}

/// Hands out OAuth2 access tokens per credential id; see the module docs.
pub struct TokenManager {
    client: OAuth2Client,
    store: Arc<dyn TokenStore>,
    opts: TokenManagerOptions,
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager over `store`.
    pub fn new(
        client: OAuth2Client,
        store: Arc<dyn TokenStore>,
        opts: TokenManagerOptions,
    ) -> Self {
        Self {
            client,
            store,
            opts,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, credential_id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(credential_id.to_owned()).or_default().clone()
    }

    /// A valid access token for `credential_id`: the cached one while it is fresh, else the
    /// one another replica saved, else a new one from the token endpoint (one request for all
    /// concurrent callers).
    pub async fn access_token(
        &self,
        credential_id: &str,
        cfg: &OAuthClientConfig,
    ) -> Result<AccessToken> {
        self.obtain(credential_id, cfg, None).await
    }

    /// After the resource server answered 401 to `rejected`: a different, valid token. If
    /// another caller already replaced `rejected`, that replacement is returned without a new
    /// request; concurrent callers share one refresh.
    pub async fn invalidate_and_refresh(
        &self,
        credential_id: &str,
        cfg: &OAuthClientConfig,
        rejected: &SecretString,
    ) -> Result<AccessToken> {
        self.obtain(credential_id, cfg, Some(rejected)).await
    }

    /// Drops the in-memory token of `credential_id` (on rotate, update or delete). The next
    /// call reads the store again.
    pub fn forget(&self, credential_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(credential_id);
    }

    async fn obtain(
        &self,
        cred: &str,
        cfg: &OAuthClientConfig,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken> {
        let slot = self.slot(cred);
        // Single flight in this process: one caller per credential past this point.
        let mut slot = slot.lock().await;
        let holder = self.opts.holder_id.as_str();
        let margin = self.opts.refresh_margin;
        let usable = |t: &StoredToken| {
            t.is_fresh(now_ms(), margin)
                && !rejected.is_some_and(|r| t.access_token.as_ref() == Some(r))
        };
        let hand_out = |t: &StoredToken| {
            AccessToken::from_stored(t).ok_or_else(|| {
                ExternalError::InvalidResponse("OAuth2: the token has no access token".into())
            })
        };

        if let Some(t) = slot.unsaved.take() {
            if let Err(e) = self.store.save_and_release(cred, holder, &t).await {
                slot.unsaved = Some(t);
                return Err(e);
            }
            slot.cached = Some(t);
        }
        if let Some(t) = slot.cached.as_ref().filter(|t| usable(t)) {
            return hand_out(t);
        }
        slot.cached = None;

        let deadline = Instant::now() + self.opts.wait_for_holder;
        loop {
            if let Some(t) = self.store.load(cred).await?.filter(|t| usable(t)) {
                let out = hand_out(&t);
                slot.cached = Some(t);
                return out;
            }
            if self
                .store
                .try_lease(cred, holder, self.opts.lease_ttl)
                .await?
            {
                // Another holder may have saved between our load and our lease.
                let stored = match self.store.load(cred).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = self.store.release(cred, holder).await;
                        return Err(e);
                    }
                };
                if let Some(t) = stored.as_ref().filter(|t| usable(t)) {
                    let _ = self.store.release(cred, holder).await;
                    let out = hand_out(t);
                    slot.cached = stored;
                    return out;
                }
                let fresh = match self.fetch(cfg, stored.as_ref()).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = self.store.release(cred, holder).await;
                        return Err(e);
                    }
                };
                // Saved before anyone gets the token: a rotated refresh token is never lost.
                if let Err(e) = self.store.save_and_release(cred, holder, &fresh).await {
                    slot.unsaved = Some(fresh);
                    return Err(e);
                }
                let out = hand_out(&fresh);
                slot.cached = Some(fresh);
                return out;
            }
            if Instant::now() >= deadline {
                return Err(ExternalError::Unreachable(format!(
                    "OAuth2: the token refresh of credential {cred} by another replica did not finish"
                )));
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    async fn fetch(
        &self,
        cfg: &OAuthClientConfig,
        stored: Option<&StoredToken>,
    ) -> Result<StoredToken> {
        match cfg.grant {
            GrantKind::ClientCredentials => self.client.client_credentials(cfg).await,
            GrantKind::RefreshToken => {
                let rt = stored
                    .and_then(|t| t.refresh_token.as_ref())
                    .ok_or_else(|| {
                        ExternalError::OAuthInvalidGrant(
                            "OAuth2: no refresh token is stored for this credential".into(),
                        )
                    })?;
                let mut t = self.client.refresh(cfg, rt).await?;
                if t.scope.is_none() {
                    t.scope = stored.and_then(|s| s.scope.clone());
                }
                Ok(t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_freshness() {
        assert_eq!(form_urlencode("a b+c:d/é*~"), "a+b%2Bc%3Ad%2F%C3%A9*%7E");
        assert_eq!(
            form_body(&[("grant_type", "refresh_token"), ("x", "1 2")]).as_str(),
            "grant_type=refresh_token&x=1+2"
        );
        let t = StoredToken {
            access_token: Some(SecretString::new("AT".into())),
            token_type: "Bearer".into(),
            issued_at_ms: 0,
            expires_at_ms: Some(3_600_000),
            refresh_token: Some(SecretString::new("RT".into())),
            scope: None,
        };
        let m = Duration::from_secs(60);
        assert!(t.is_fresh(3_539_999, m));
        assert!(!t.is_fresh(3_540_000, m));
        // A short-lived token: the margin is capped at half its lifetime.
        let short = StoredToken {
            expires_at_ms: Some(30_000),
            ..t.clone()
        };
        assert!(short.is_fresh(14_999, m));
        assert!(!short.is_fresh(15_000, m));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("AT\"") && !dbg.contains("RT\""), "{dbg}");
        assert!(!StoredToken::from_refresh_token(SecretString::new("r".into())).is_fresh(0, m));
    }
}
