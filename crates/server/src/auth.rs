//! Bearer-token authentication. Every API handler takes an [`Auth`]; a missing, unknown,
//! revoked or expired token answers 401 with one undifferentiated message.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::{hash_token, token_hashes_equal};
use patchbay_store::now_millis;

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
        let hash = hash_token(token);
        let record = state
            .store
            .find_token(&hash)
            .await?
            .ok_or_else(unauthenticated)?;
        let now = now_millis();
        if !token_hashes_equal(&record.token_hash, &hash)
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|e| e <= now)
        {
            return Err(unauthenticated());
        }
        if record.last_used_at.is_none_or(|t| t < now - 60_000) {
            let store = state.store.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id).await {
                    tracing::warn!(error = %e, "could not record token use");
                }
            });
        }
        let principal = Principal {
            token_id: record.id,
            token_name: record.name,
            workspace_id: record.workspace_id,
            permissions: record.permissions,
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

impl Auth {
    pub fn require(&self, p: Permission) -> ApiResult<()> {
        if self.0.can(p) {
            Ok(())
        } else {
            Err(ApiError::forbidden(p))
        }
    }
}
