//! Signing in and out of browser sessions with a local user's password.
//!
//! A failed sign-in says only that the username or password is wrong; an unknown username
//! costs the same argon2id verification as a wrong password, so timing does not tell them
//! apart. Failures count against the source address and the username (`auth::throttled`).

use std::sync::OnceLock;

use patchbay_core::model::{Principal, RequestMeta};
use patchbay_core::ErrorCode;
use patchbay_crypto::{generate_token, hash_token, verify_password, SecretString};
use patchbay_store::{new_id, now_millis, AuditEntry, Outcome, SessionRecord, StoreError};
use serde_json::json;

use super::audit;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A session just opened: its cookie secret (given to the browser once) and record.
pub struct Opened {
    pub secret: SecretString,
    pub session: SessionRecord,
    pub username: String,
}

fn wrong() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "wrong username or password")
}

/// A hash to verify against when the username is unknown.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        patchbay_crypto::hash_password(&SecretString::from("decoy password for timing".to_owned()))
            .unwrap_or_default()
    })
}

/// Checks the password and opens a session. `limiter_keys` are the caller's address key;
/// the username's key is added here.
pub async fn sign_in(
    state: &AppState,
    request: RequestMeta,
    mut limiter_keys: Vec<String>,
    username: &str,
    password: SecretString,
) -> ApiResult<Opened> {
    limiter_keys.push(format!("user:{username}"));
    crate::auth::throttled(state, &limiter_keys)?;
    let user = match state.store.get_user_by_name(username).await {
        Ok(u) if u.disabled_at.is_none() => Some(u),
        Ok(_) | Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_owned());
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|_| ApiError::internal())?
        .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        crate::auth::failed(state, &limiter_keys);
        tracing::info!(
            source = request.source_address.as_deref().unwrap_or("-"),
            "failed sign-in"
        );
        return Err(wrong());
    };
    let secret = generate_token();
    let now = now_millis();
    let session = SessionRecord {
        id: new_id(),
        user_id: user.id.clone(),
        created_at: now,
        expires_at: now + state.settings.session_ttl.as_millis() as i64,
    };
    let entry = AuditEntry {
        actor: format!("user:{}", user.id),
        action: "session.create".into(),
        outcome: Outcome::Success,
        workspace_id: None,
        target_kind: "session".into(),
        target_id: session.id.clone(),
        request_id: request.request_id,
        source_address: request.source_address,
        details: json!({"username": user.username}).into(),
    };
    state
        .store
        .create_session(&session, &hash_token(secret.expose_secret()), &entry)
        .await?;
    Ok(Opened {
        secret,
        session,
        username: user.username,
    })
}

/// Ends the caller's session.
pub async fn sign_out(state: &AppState, p: &Principal) -> ApiResult<()> {
    if !p.session {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            "this request is not authenticated by a session; revoke tokens with DELETE /api/v1/tokens/{id}",
        ));
    }
    let entry = audit(p, "session.delete", None, "session", &p.token_id, json!({}));
    Ok(state.store.delete_session(&p.token_id, &entry).await?)
}

/// The username of a session's user.
pub async fn username(state: &AppState, p: &Principal) -> ApiResult<String> {
    let id = p.user_id.as_deref().ok_or_else(ApiError::internal)?;
    Ok(state.store.get_user(id).await?.username)
}
