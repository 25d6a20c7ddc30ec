//! Bearer-token authentication. Every API handler takes an [`Auth`]; a missing, unknown,
//! revoked or expired token answers 401 with one undifferentiated message.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use patchbay_core::model::Principal;
use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_core::roles;
use patchbay_core::ErrorCode;
use patchbay_crypto::{hash_token, token_hashes_equal};
use patchbay_store::{now_millis, StoreError, TokenRecord};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub struct Auth(pub Principal);

fn unauthenticated() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "send a valid API token as `Authorization: Bearer <token>`",
    )
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        // Already authenticated by the route layer (api::access).
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Auth(p.clone()));
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthenticated)?;
        // Guessing is throttled per source address and per token prefix; a blocked caller
        // is refused before the lookup, whatever it sends.
        let keys = failure_keys(parts, token);
        if let Some(wait) = keys.iter().find_map(|k| state.auth_failures.blocked(k)) {
            return Err(ApiError::rate_limited(
                "too many failed authentications; wait before retrying",
                wait,
            ));
        }
        let record = match verify(state, token).await? {
            Some(r) => r,
            None => {
                for k in &keys {
                    state.auth_failures.record(k);
                }
                return Err(unauthenticated());
            }
        };
        let now = now_millis();
        if record.last_used_at.is_none_or(|t| t < now - 60_000) {
            let store = state.store.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id).await {
                    tracing::warn!(error = %e, "could not record token use");
                }
            });
        }
        let memberships = match &record.user_id {
            None => None,
            Some(user_id) => memberships(state, user_id).await?,
        };
        let principal = Principal {
            token_id: record.id,
            token_name: record.name,
            user_id: record.user_id,
            workspace_id: record.workspace_id,
            permissions: record.permissions,
            memberships,
            request: parts
                .extensions
                .get::<patchbay_core::model::RequestMeta>()
                .cloned()
                .unwrap_or_default(),
        };
        crate::request::remember_principal(parts, &principal);
        Ok(Auth(principal))
    }
}

/// The limiter keys of a request: its source address (when known) and the token's prefix
/// (`pbt_` and 8 characters: guessing at one known token from many addresses).
fn failure_keys(parts: &Parts, token: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        keys.push(format!("addr:{}", addr.ip()));
    }
    keys.push(format!(
        "prefix:{}",
        token.chars().take(12).collect::<String>()
    ));
    keys
}

/// The live token record `token` names: known, hash equal in constant time, not revoked,
/// not expired. `None` for every kind of failure alike.
async fn verify(state: &AppState, token: &str) -> ApiResult<Option<TokenRecord>> {
    let hash = hash_token(token);
    let Some(record) = state.store.find_token(&hash).await? else {
        return Ok(None);
    };
    let now = now_millis();
    let live = token_hashes_equal(&record.token_hash, &hash)
        && record.revoked_at.is_none()
        && record.expires_at.is_none_or(|e| e > now);
    Ok(live.then_some(record))
}

/// What a user's roles grant, per workspace; `None` for an instance administrator. A
/// disabled or deleted user authenticates nothing, whatever their tokens.
async fn memberships(
    state: &AppState,
    user_id: &str,
) -> ApiResult<Option<BTreeMap<String, PermissionSet>>> {
    let user = match state.store.get_user(user_id).await {
        Ok(u) if u.disabled_at.is_none() => u,
        Ok(_) | Err(StoreError::NotFound) => return Err(unauthenticated()),
        Err(e) => return Err(e.into()),
    };
    if user.is_admin {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for m in state.store.memberships_of(user_id).await? {
        let perms = match (roles::builtin(&m.role), &m.custom_permissions) {
            (Some(perms), _) => perms,
            (None, Some(stored)) => PermissionSet::from_storage(stored)
                .map_err(|e| StoreError::Corrupt(format!("role {}: {e}", m.role)))?,
            // A role that no longer exists grants nothing; the member still sees the
            // workspace.
            (None, None) => PermissionSet::default(),
        };
        out.insert(m.workspace_id, perms);
    }
    Ok(Some(out))
}

impl Auth {
    pub fn require(&self, p: Permission) -> ApiResult<()> {
        if self.0.can(p) {
            Ok(())
        } else {
            Err(ApiError::forbidden(p))
        }
    }
}
