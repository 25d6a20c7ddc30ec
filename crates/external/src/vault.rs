//! HashiCorp Vault KV v2 reads (`GET /v1/{mount}/data/{path}?version=N`) with token or
//! AppRole authentication, optional Enterprise namespace (`X-Vault-Namespace`).
//!
//! AppRole: `POST /v1/auth/{approle mount}/login` with `{role_id, secret_id}` gives
//! `auth.client_token`, cached until shortly before `auth.lease_duration` runs out and
//! replaced by a new login when Vault answers 403 to it (single-flight: concurrent requests
//! that saw the same rejected token share one login).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use patchbay_crypto::SecretString;
use reqwest::{StatusCode, Url};
use serde_json::json;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::error::{ExternalError, Result};
use crate::http::{sanitize_code, HttpOptions};

/// How to authenticate to Vault.
#[derive(Clone)]
pub enum VaultAuth {
    /// A Vault token (`X-Vault-Token`).
    Token(SecretString),
    /// AppRole login.
    AppRole {
        /// Mount path of the AppRole auth method (usually `approle`).
        mount: String,
        /// The role id (an identifier, not a secret by itself).
        role_id: String,
        /// The secret id.
        secret_id: SecretString,
    },
}

impl fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .field("secret_id", &"<redacted>")
                .finish(),
        }
    }
}

/// Where and how to reach Vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Vault address, e.g. `https://vault.example.com:8200`.
    pub addr: Url,
    /// Enterprise namespace sent as `X-Vault-Namespace` on every request.
    pub namespace: Option<String>,
    /// Authentication.
    pub auth: VaultAuth,
    /// HTTP timeouts.
    pub http: HttpOptions,
}

impl VaultConfig {
    /// A configuration with no namespace and default timeouts.
    pub fn new(addr: Url, auth: VaultAuth) -> Self {
        Self {
            addr,
            namespace: None,
            auth,
            http: HttpOptions::default(),
        }
    }
}

/// The `data.data` map of a KV v2 secret version. `Debug` lists the keys only.
pub struct KvSecret {
    /// Field values; non-string JSON values are kept as their JSON text.
    pub data: BTreeMap<String, SecretString>,
    /// `data.metadata.version`, when Vault sent it.
    pub version: Option<u64>,
}

impl fmt::Debug for KvSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSecret")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .finish()
    }
}

struct CachedToken {
    token: SecretString,
    /// `None`: no expiry announced (lease_duration 0).
    renew_at: Option<Instant>,
}

/// A Vault client. Cheap to share behind an `Arc`; holds the AppRole token cache.
pub struct VaultClient {
    http: reqwest::Client,
    config: VaultConfig,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("addr", &self.config.addr.as_str())
            .field("namespace", &self.config.namespace)
            .field("auth", &self.config.auth)
            .finish_non_exhaustive()
    }
}

/// Vault's `errors` array, sanitized and shortened, for error messages.
fn vault_errors(body: &[u8]) -> String {
    let list: Vec<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.as_str())
        .map(|e| sanitize_code(&e.chars().take(200).collect::<String>()))
        .filter(|e| !e.is_empty())
        .collect();
    if list.is_empty() {
        String::new()
    } else {
        format!(": {}", list.join("; "))
    }
}

fn status_error(what: &str, status: StatusCode, body: &[u8]) -> ExternalError {
    let msg = format!("{what}: HTTP {}{}", status.as_u16(), vault_errors(body));
    match status.as_u16() {
        404 => ExternalError::NotFound(msg),
        401 | 403 => ExternalError::Denied(msg),
        429 | 500..=599 => ExternalError::Unreachable(msg),
        400..=499 => ExternalError::Denied(msg),
        _ => ExternalError::InvalidResponse(msg),
    }
}

fn push_segments(url: &mut Url, path: &str) -> Result<()> {
    let mut segs = url
        .path_segments_mut()
        .map_err(|_| ExternalError::Config("the Vault address cannot have a path".into()))?;
    segs.pop_if_empty();
    for s in path.split('/').filter(|s| !s.is_empty()) {
        if s == "." || s == ".." {
            return Err(ExternalError::Config(
                "a Vault path must not contain `.` or `..` segments".into(),
            ));
        }
        segs.push(s);
    }
    Ok(())
}

impl VaultClient {
    /// A client for `config`.
    pub fn new(config: VaultConfig) -> Result<Self> {
        Ok(Self {
            http: config.http.client()?,
            config,
            token: Mutex::new(None),
        })
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(ns) = &self.config.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        req
    }

    /// A token to use. `rejected`: the token Vault just answered 403 to — a new AppRole login
    /// happens unless another caller already replaced that token.
    async fn token(&self, rejected: Option<&SecretString>) -> Result<SecretString> {
        let (mount, role_id, secret_id) = match &self.config.auth {
            VaultAuth::Token(t) => return Ok(t.clone()),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => (mount, role_id, secret_id),
        };
        let mut cached = self.token.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c.renew_at.is_none_or(|at| Instant::now() < at);
            let is_rejected = rejected.is_some_and(|r| *r == c.token);
            if fresh && !is_rejected {
                return Ok(c.token.clone());
            }
        }
        *cached = None;
        let login = self.login(mount, role_id, secret_id).await?;
        let token = login.token.clone();
        *cached = Some(login);
        Ok(token)
    }

    async fn login(
        &self,
        mount: &str,
        role_id: &str,
        secret_id: &SecretString,
    ) -> Result<CachedToken> {
        let what = "Vault AppRole login";
        let mut url = self.config.addr.clone();
        push_segments(&mut url, &format!("v1/auth/{mount}/login"))?;
        let body = Zeroizing::new(
            json!({ "role_id": role_id, "secret_id": secret_id.expose_secret() }).to_string(),
        );
        let started = Instant::now();
        let resp = self
            .request(reqwest::Method::POST, url)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| ExternalError::transport(what, &e))?;
        let status = resp.status();
        let bytes = Zeroizing::new(Vec::from(
            resp.bytes()
                .await
                .map_err(|e| ExternalError::transport(what, &e))?,
        ));
        if !status.is_success() {
            return Err(status_error(what, status, &bytes));
        }
        let invalid = || {
            ExternalError::InvalidResponse(format!("{what}: no auth.client_token in the answer"))
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let auth = v.get("auth").ok_or_else(invalid)?;
        let token = auth
            .get("client_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(invalid)?;
        let lease = auth
            .get("lease_duration")
            .and_then(|l| l.as_u64())
            .unwrap_or(0);
        // Renew when 90 % of the lease has passed (measured from before the request).
        let renew_at = (lease > 0).then(|| started + Duration::from_millis(lease * 900));
        Ok(CachedToken {
            token: SecretString::new(token.to_owned()),
            renew_at,
        })
    }

    /// Reads a KV v2 secret: `mount` (e.g. `secret`), `path` inside it (e.g. `app/db`), and
    /// optionally a version (latest otherwise). 404 (also a deleted or destroyed version) is
    /// `external_not_found`, 403 `external_denied` (after one re-login with AppRole).
    pub async fn read_kv2(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<KvSecret> {
        let what = format!(
            "Vault KV read {}/{}",
            mount.trim_matches('/'),
            path.trim_matches('/')
        );
        let mut url = self.config.addr.clone();
        push_segments(&mut url, "v1")?;
        push_segments(&mut url, mount)?;
        push_segments(&mut url, "data")?;
        push_segments(&mut url, path)?;
        if let Some(v) = version {
            url.query_pairs_mut().append_pair("version", &v.to_string());
        }

        let mut token = self.token(None).await?;
        let mut retried = false;
        let (status, bytes) = loop {
            let resp = self
                .request(reqwest::Method::GET, url.clone())
                .header("X-Vault-Token", token.expose_secret())
                .send()
                .await
                .map_err(|e| ExternalError::transport(&what, &e))?;
            let status = resp.status();
            let bytes = Zeroizing::new(Vec::from(
                resp.bytes()
                    .await
                    .map_err(|e| ExternalError::transport(&what, &e))?,
            ));
            let approle = matches!(self.config.auth, VaultAuth::AppRole { .. });
            if status == StatusCode::FORBIDDEN && approle && !retried {
                retried = true;
                token = self.token(Some(&token)).await?;
                continue;
            }
            break (status, bytes);
        };
        if !status.is_success() {
            let version_note = version
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default();
            return Err(status_error(
                &format!("{what}{version_note}"),
                status,
                &bytes,
            ));
        }

        let invalid = || {
            ExternalError::InvalidResponse(format!("{what}: the answer has no data.data object"))
        };
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let data = v.get_mut("data").ok_or_else(invalid)?;
        let version = data
            .get("metadata")
            .and_then(|m| m.get("version"))
            .and_then(|n| n.as_u64());
        let fields = match data.get_mut("data") {
            Some(serde_json::Value::Object(map)) => std::mem::take(map),
            Some(serde_json::Value::Null) => {
                return Err(ExternalError::NotFound(format!(
                    "{what}: the version is deleted or destroyed"
                )))
            }
            _ => return Err(invalid()),
        };
        let data = fields
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, SecretString::new(s))
            })
            .collect();
        Ok(KvSecret { data, version })
    }

    /// One field of a KV v2 secret; a missing field is `external_not_found` naming the field.
    pub async fn read_kv2_key(
        &self,
        mount: &str,
        path: &str,
        key: &str,
        version: Option<u64>,
    ) -> Result<SecretString> {
        let mut secret = self.read_kv2(mount, path, version).await?;
        secret.data.remove(key).ok_or_else(|| {
            ExternalError::NotFound(format!(
                "Vault secret {}/{} has no key `{key}`",
                mount.trim_matches('/'),
                path.trim_matches('/')
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_debug() {
        let mut u = Url::parse("https://vault.example:8200/").unwrap();
        push_segments(&mut u, "v1").unwrap();
        push_segments(&mut u, "secret").unwrap();
        push_segments(&mut u, "data").unwrap();
        push_segments(&mut u, "app/db name").unwrap();
        assert_eq!(
            u.as_str(),
            "https://vault.example:8200/v1/secret/data/app/db%20name"
        );
        assert!(push_segments(&mut u, "a/../b").is_err());

        let auth = VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: "role".into(),
            secret_id: SecretString::new("SECRETID".into()),
        };
        assert!(!format!("{auth:?}").contains("SECRETID"));
        let t = VaultAuth::Token(SecretString::new("hvs.TOKEN".into()));
        assert!(!format!("{t:?}").contains("hvs.TOKEN"));
        assert_eq!(
            vault_errors(br#"{"errors":["permission denied"]}"#),
            ": permission denied"
        );
    }
}
