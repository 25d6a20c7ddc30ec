//! Credentials that proxy to an external secret manager: the values are fetched at use time
//! (never stored here), kept in a short TTL cache, and dropped from it when the credential
//! changes.
//!
//! Reference shapes (the `external` member of a credential):
//! - `{provider: "aws_secrets_manager", secret_id, key?, version_id?, version_stage?,
//!   region?, endpoint?}`: AWS credentials come from the server's environment
//!   (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
//!   PATCHBAY_AWS_ENDPOINT_URL).
//! - `{provider: "vault_kv2", address, mount? (default "secret"), path, key?, version?,
//!   namespace?, auth?: {method: "token" | "approle", credential_id}}`: without `auth`, the
//!   server's PATCHBAY_VAULT_TOKEN; `token` takes the `token` field of a bearer_token
//!   credential; `approle` takes username (role id) and password (secret id) of a
//!   username_password credential.
//!
//! Without `key`, the secret is a JSON object (Secrets Manager) or KV map (Vault) whose
//! members are the credential kind's fields; with `key`, that one value fills the kind's
//! first secret field.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_core::model::Credential;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_external::cache::{CacheKey, ValueCache};
use patchbay_external::{
    AwsConfig, SecretRef, SecretsManagerClient, Url, VaultAuth, VaultClient, VaultConfig,
};
use serde_json::Value;

use super::credentials;
use super::oauth::external_error;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Clients and cache for external managers, shared by all requests.
pub struct External {
    cache: ValueCache,
    vault_clients: Mutex<HashMap<String, Arc<VaultClient>>>,
}

impl External {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: ValueCache::new(ttl),
            vault_clients: Mutex::default(),
        }
    }

    /// Drops cached values of a credential (it changed or went away).
    pub fn invalidate(&self, credential_id: &str) {
        self.cache.invalidate_credential(credential_id);
        self.vault_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.ends_with(&format!("#{credential_id}")));
    }
}

fn text<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

/// Fetches the values of an external credential, by the kind's field names.
pub async fn fetch(state: &AppState, c: &Credential) -> ApiResult<BTreeMap<String, SecretString>> {
    let r = c
        .external
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidState, "not an external credential"))?;
    let provider = text(r, "provider").unwrap_or_default();
    let path = match provider {
        "vault_kv2" => format!(
            "{}/{}",
            text(r, "mount").unwrap_or("secret"),
            text(r, "path").unwrap_or_default()
        ),
        _ => text(r, "secret_id").unwrap_or_default().to_owned(),
    };
    let key = text(r, "key").map(str::to_owned);
    let version = text(r, "version_id")
        .or_else(|| text(r, "version_stage"))
        .map(str::to_owned)
        .or_else(|| r.get("version").map(Value::to_string));
    let cache_key = CacheKey {
        credential_id: c.id.clone(),
        provider: provider.to_owned(),
        path,
        key: key.clone(),
        version,
    };
    let joined = state
        .external
        .cache
        .get_or_fetch(cache_key, || async {
            let map = match provider {
                "aws_secrets_manager" => fetch_aws(r, key.as_deref()).await,
                "vault_kv2" => fetch_vault(state, c, r, key.as_deref()).await,
                _ => Err(patchbay_external::ExternalError::Config(format!(
                    "unknown provider {provider}"
                ))),
            }?;
            // The cache holds one string per entry: the fields as a JSON object.
            let obj: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned())))
                .collect();
            Ok(SecretString::new(Value::Object(obj).to_string()))
        })
        .await
        .map_err(external_error)?;
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(joined.expose_secret())
        .map_err(|_| {
            ApiError::new(
                ErrorCode::ExternalInvalidResponse,
                "cached value unreadable",
            )
        })?;
    let kind = credentials::kind(state, &c.kind)?;
    let first_secret = kind
        .fields
        .iter()
        .find(|(_, f)| f.secret)
        .map(|(k, _)| k.clone());
    let mut out = BTreeMap::new();
    for (k, v) in parsed {
        let Value::String(s) = v else { continue };
        let field = if key.is_some() && k == "value" {
            match &first_secret {
                Some(f) => f.clone(),
                None => continue,
            }
        } else {
            k
        };
        if kind.fields.get(&field).is_some() {
            out.insert(field, SecretString::new(s));
        }
    }
    Ok(out)
}

async fn fetch_aws(
    r: &Value,
    key: Option<&str>,
) -> patchbay_external::Result<BTreeMap<String, SecretString>> {
    let mut cfg = AwsConfig::from_env()?;
    if let Some(region) = text(r, "region") {
        cfg.region = region.to_owned();
    }
    if let Some(endpoint) = text(r, "endpoint") {
        cfg.endpoint = Some(Url::parse(endpoint).map_err(|_| {
            patchbay_external::ExternalError::Config("endpoint is not a URL".into())
        })?);
    }
    let client = SecretsManagerClient::new(cfg)?;
    let mut sref = SecretRef::new(text(r, "secret_id").unwrap_or_default());
    sref.version_id = text(r, "version_id").map(str::to_owned);
    sref.version_stage = text(r, "version_stage").map(str::to_owned);
    match key {
        Some(k) => {
            let v = client.get_secret_value(&sref.with_key(k)).await?;
            Ok(BTreeMap::from([("value".to_owned(), v)]))
        }
        None => client.get_secret_map(&sref).await,
    }
}

async fn vault_auth(
    state: &AppState,
    c: &Credential,
    r: &Value,
) -> patchbay_external::Result<(String, VaultAuth)> {
    let cfg_err = |m: String| patchbay_external::ExternalError::Config(m);
    let Some(auth) = r.get("auth") else {
        let token = std::env::var("PATCHBAY_VAULT_TOKEN").map_err(|_| {
            cfg_err("no auth in the reference and PATCHBAY_VAULT_TOKEN is not set".into())
        })?;
        return Ok(("env".into(), VaultAuth::Token(SecretString::new(token))));
    };
    let cred_id = text(auth, "credential_id").unwrap_or_default();
    let auth_cred = state
        .store
        .get_credential(cred_id)
        .await
        .ok()
        .filter(|a| a.workspace_id == c.workspace_id && a.external.is_none())
        .ok_or_else(|| {
            cfg_err("auth.credential_id names no credential of this workspace".into())
        })?;
    let values = credentials::decrypt(
        state,
        &auth_cred.workspace_id,
        &auth_cred.id,
        auth_cred.current_version,
    )
    .await
    .map_err(|e| cfg_err(e.0.message))?;
    let auth = match text(auth, "method").unwrap_or("token") {
        "approle" => VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: auth_cred
                .public_fields
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            secret_id: values.get("password").cloned().ok_or_else(|| {
                cfg_err("the AppRole credential has no password (secret id)".into())
            })?,
        },
        _ => VaultAuth::Token(
            values
                .get("token")
                .cloned()
                .ok_or_else(|| cfg_err("the token credential has no token field".into()))?,
        ),
    };
    Ok((
        format!("{}@{}", auth_cred.id, auth_cred.current_version),
        auth,
    ))
}

async fn fetch_vault(
    state: &AppState,
    c: &Credential,
    r: &Value,
    key: Option<&str>,
) -> patchbay_external::Result<BTreeMap<String, SecretString>> {
    let addr = Url::parse(text(r, "address").unwrap_or_default())
        .map_err(|_| patchbay_external::ExternalError::Config("address is not a URL".into()))?;
    let namespace = text(r, "namespace").map(str::to_owned);
    let (auth_id, auth) = vault_auth(state, c, r).await?;
    let client_key = format!(
        "{addr}|{}|{auth_id}#{}",
        namespace.as_deref().unwrap_or(""),
        c.id
    );
    let existing = state
        .external
        .vault_clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&client_key)
        .cloned();
    let client = match existing {
        Some(cl) => cl,
        None => {
            let mut cfg = VaultConfig::new(addr, auth);
            cfg.namespace = namespace;
            let cl = Arc::new(VaultClient::new(cfg)?);
            state
                .external
                .vault_clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(client_key, cl.clone());
            cl
        }
    };
    let mount = text(r, "mount").unwrap_or("secret");
    let path = text(r, "path").unwrap_or_default();
    let version = r.get("version").and_then(Value::as_u64);
    match key {
        Some(k) => {
            let v = client.read_kv2_key(mount, path, k, version).await?;
            Ok(BTreeMap::from([("value".to_owned(), v)]))
        }
        None => Ok(client.read_kv2(mount, path, version).await?.data),
    }
}
