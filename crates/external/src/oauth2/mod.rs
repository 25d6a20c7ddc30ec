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

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use patchbay_crypto::SecretString;
use reqwest::Url;
use zeroize::Zeroizing;

use crate::error::{ExternalError, Result};
use crate::http::{sanitize_code, HttpOptions};

mod manager;
pub use manager::{MemoryTokenStore, StoreFuture, TokenManager, TokenManagerOptions, TokenStore};

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
