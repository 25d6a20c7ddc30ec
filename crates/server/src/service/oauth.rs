//! OAuth2 credentials: access tokens obtained and refreshed by the server, single-flight per
//! credential (in process through the token manager, across replicas through a lease row),
//! stored encrypted in `oauth_tokens` and never returned by list or get.

use std::sync::Arc;
use std::time::Duration;

use patchbay_core::model::{Credential, Principal};
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::{SecretAad, SecretString};
use patchbay_external::oauth2::StoreFuture;
use patchbay_external::{
    AccessToken, ClientAuthMethod, ExternalError, GrantKind, OAuthClientConfig, StoredToken,
    TokenStore, Url,
};
use patchbay_store::Store;
use serde_json::{json, Value};

use super::{audit, credentials, require_in};
use crate::error::{ApiError, ApiResult};
use crate::keyring::KeyRing;
use crate::state::AppState;

/// The kind whose credentials get tokens.
pub const OAUTH2_KIND: &str = "oauth2";

/// [`TokenStore`] over the SQL store: the token (access and refresh token together, as JSON)
/// encrypted with the workspace's data key, bound to the credential.
pub struct SqlTokenStore {
    pub store: Store,
    pub keys: Arc<KeyRing>,
}

fn store_err(e: impl std::fmt::Display) -> ExternalError {
    ExternalError::Store(format!("token store: {e}"))
}

impl SqlTokenStore {
    async fn workspace_of(&self, credential_id: &str) -> patchbay_external::Result<String> {
        Ok(self
            .store
            .get_credential(credential_id)
            .await
            .map_err(store_err)?
            .workspace_id)
    }

    async fn load_token(
        &self,
        credential_id: &str,
    ) -> patchbay_external::Result<Option<StoredToken>> {
        let Some(ev) = self
            .store
            .oauth_token(credential_id)
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let ws = self.workspace_of(credential_id).await?;
        let key = self
            .keys
            .key(&self.store, &ev.key_id)
            .await
            .map_err(|e| store_err(e.0.message))?;
        let aad = SecretAad::oauth_token(&ws, credential_id);
        let plain = key.decrypt(&ev, &aad).map_err(store_err)?;
        let v: Value = serde_json::from_str(plain.expose_secret()).map_err(store_err)?;
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(|s| SecretString::new(s.to_owned()))
        };
        Ok(Some(StoredToken {
            access_token: text("access_token"),
            token_type: v["token_type"].as_str().unwrap_or("Bearer").to_owned(),
            issued_at_ms: v["issued_at_ms"].as_i64().unwrap_or(0),
            expires_at_ms: v["expires_at_ms"].as_i64(),
            refresh_token: text("refresh_token"),
            scope: v["scope"].as_str().map(str::to_owned),
        }))
    }

    async fn save_token(
        &self,
        credential_id: &str,
        holder: &str,
        token: &StoredToken,
    ) -> patchbay_external::Result<()> {
        let ws = self.workspace_of(credential_id).await?;
        let json = zeroize::Zeroizing::new(
            json!({
                "access_token": token.access_token.as_ref().map(SecretString::expose_secret),
                "token_type": token.token_type,
                "issued_at_ms": token.issued_at_ms,
                "expires_at_ms": token.expires_at_ms,
                "refresh_token": token.refresh_token.as_ref().map(SecretString::expose_secret),
                "scope": token.scope,
            })
            .to_string(),
        );
        let key = self
            .keys
            .active_key(&self.store, &ws)
            .await
            .map_err(|e| store_err(e.0.message))?;
        let aad = SecretAad::oauth_token(&ws, credential_id);
        let ev = key.encrypt(&SecretString::new(json.to_string()), &aad);
        self.store
            .save_oauth_token(credential_id, holder, &ev, token.expires_at_ms)
            .await
            .map_err(store_err)
    }
}

impl TokenStore for SqlTokenStore {
    fn load<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(self.load_token(credential_id))
    }

    fn try_lease<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.store
                .try_oauth_lease(credential_id, holder, ttl.as_millis() as i64)
                .await
                .map_err(store_err)
        })
    }

    fn save_and_release<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        token: &'a StoredToken,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.save_token(credential_id, holder, token))
    }

    fn release<'a>(&'a self, credential_id: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.store
                .release_oauth_lease(credential_id, holder)
                .await
                .map_err(store_err)
        })
    }
}

/// An external-system error as an API error: its own code, 424 when the manager or token
/// server answered no, 502 when it could not be asked; the message never carries a value.
pub fn external_error(e: ExternalError) -> ApiError {
    let code = match &e {
        ExternalError::NotFound(_) => ErrorCode::ExternalNotFound,
        ExternalError::Denied(_) => ErrorCode::ExternalDenied,
        ExternalError::Unreachable(_) => ErrorCode::ExternalUnreachable,
        ExternalError::InvalidResponse(_) => ErrorCode::ExternalInvalidResponse,
        ExternalError::OAuthInvalidGrant(_) => ErrorCode::OauthInvalidGrant,
        ExternalError::OAuth(_) => ErrorCode::OauthError,
        ExternalError::Config(_) => ErrorCode::ExternalConfig,
        ExternalError::Store(_) => {
            tracing::error!(error = %e, "token store");
            return ApiError(patchbay_core::Error::internal());
        }
    };
    ApiError::new(code, e.to_string())
}

/// The client registration of an oauth2 credential's current version.
async fn client_config(state: &AppState, c: &Credential) -> ApiResult<OAuthClientConfig> {
    let secrets = credentials::decrypt(state, &c.workspace_id, &c.id, c.current_version).await?;
    let text = |k: &str| c.public_fields.get(k).and_then(Value::as_str);
    let bad = |field: &str, msg: &str| {
        ApiError::field(ErrorCode::InvalidState, format!("/fields/{field}"), msg)
    };
    let token_url = text("token_url")
        .and_then(|u| Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .ok_or_else(|| bad("token_url", "the credential has no http(s) token URL"))?;
    let client_id = text("client_id").ok_or_else(|| bad("client_id", "required"))?;
    let grant = match text("grant_type").unwrap_or("client_credentials") {
        "authorization_code" | "refresh_token" => GrantKind::RefreshToken,
        _ => GrantKind::ClientCredentials,
    };
    let mut cfg = OAuthClientConfig::new(
        token_url,
        client_id,
        secrets.get("client_secret").cloned(),
        grant,
    );
    if text("client_auth") == Some("client_secret_post") {
        cfg.auth_method = ClientAuthMethod::ClientSecretPost;
    }
    cfg.scopes = text("scopes")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    // An authorization-code credential starts from the refresh token it was created with.
    if grant == GrantKind::RefreshToken {
        if let Some(rt) = secrets.get("refresh_token") {
            let seed = StoredToken {
                access_token: secrets.get("access_token").cloned(),
                token_type: "Bearer".into(),
                issued_at_ms: 0,
                expires_at_ms: Some(0),
                refresh_token: Some(rt.clone()),
                scope: None,
            };
            let sql = SqlTokenStore {
                store: state.store.clone(),
                keys: state.keys.clone(),
            };
            if sql
                .load_token(&c.id)
                .await
                .map_err(external_error)?
                .is_none()
            {
                sql.save_token(&c.id, "seed", &seed)
                    .await
                    .map_err(external_error)?;
            }
        }
    }
    Ok(cfg)
}

/// A valid access token for an oauth2 credential: the cached one, or one refreshed now
/// (proactively before it expires; at once when `rejected` names the token an API refused).
pub async fn access_token(
    state: &AppState,
    p: &Principal,
    id: &str,
    rejected: Option<SecretString>,
) -> ApiResult<AccessToken> {
    let c = credentials::find(state, p, id).await?;
    require_in(p, &c.workspace_id, Permission::ConnectionsResolve)?;
    if c.kind != OAUTH2_KIND {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("credential {} is of kind {}, not oauth2", c.name, c.kind),
        ));
    }
    let cfg = client_config(state, &c).await?;
    let token = match &rejected {
        Some(r) => state.oauth.invalidate_and_refresh(&c.id, &cfg, r).await,
        None => state.oauth.access_token(&c.id, &cfg).await,
    }
    .map_err(external_error)?;
    let entry = audit(
        p,
        "credential.token",
        Some(&c.workspace_id),
        "credential",
        &c.id,
        json!({"after_rejection": rejected.is_some(), "expires_at": token.expires_at_ms}),
    );
    state.store.record_audit(&entry).await?;
    Ok(token)
}

/// Drops everything cached or stored about a credential's tokens (it rotated or went away).
pub async fn forget(state: &AppState, credential_id: &str) -> ApiResult<()> {
    state.oauth.forget(credential_id);
    state.store.delete_oauth_token(credential_id).await?;
    Ok(())
}
