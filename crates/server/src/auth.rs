//! Authentication: a bearer token, or else a browser session cookie (with its CSRF token on
//! changes). Every API handler takes an [`Auth`]; a missing, unknown, revoked or expired
//! token or session answers 401 with one undifferentiated message, and failures are
//! throttled per source address and token prefix. A token's record and its user's
//! memberships are kept for at most 2 s (`principals::PrincipalCache`); a revocation or
//! membership change made through this process empties that cache at once, one made through
//! another replica applies within those 2 s.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use patchbay_core::model::Principal;
use patchbay_core::permission::PermissionSet;
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
        // Already authenticated by the route layer (api::access), which left it for this
        // extractor alone.
        if let Some(p) = parts.extensions.remove::<Principal>() {
            return Ok(Auth(p));
        }
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // No token: a browser session, if the request carries its cookie.
            return match crate::session::cookie_secret(&parts.headers) {
                Some(secret) => {
                    let secret = secret.to_owned();
                    session_principal(parts, state, &secret).await.map(Auth)
                }
                None => Err(unauthenticated()),
            };
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthenticated)?;
        // Guessing is throttled per source address and per token prefix; a blocked caller
        // is refused before the lookup, whatever it sends. The keys are worked out only
        // when some key may be blocked, or to count a failure.
        let keys = || failure_keys(parts, Some(token));
        if state.auth_failures.may_block() {
            throttled(state, &keys())?;
        }
        let hash = hash_token(token);
        // Read before the lookups: a change committed meanwhile makes the entry stale.
        let generation = state.store.auth_generation();
        let (record, memberships) = match state.principals.get(&hash, generation) {
            Some(cached) => cached,
            None => {
                let record = match verify(state, &hash).await? {
                    Some(r) => r,
                    None => {
                        failed(state, &keys());
                        return Err(unauthenticated());
                    }
                };
                let memberships = match &record.user_id {
                    None => None,
                    Some(user_id) => memberships(state, user_id).await?,
                };
                state.principals.put(
                    hash.clone(),
                    record.clone(),
                    memberships.clone(),
                    generation,
                );
                (record, memberships)
            }
        };
        let now = now_millis();
        if record.last_used_at.is_none_or(|t| t < now - 60_000) {
            state.principals.touched(&hash, now);
            let store = state.store.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id).await {
                    tracing::warn!(error = %e, "could not record token use");
                }
            });
        }
        // An agent token is bound to its zone through its agent row.
        let agent_zone = if record.kind == crate::service::tokens::AGENT {
            match state.store.agent_by_token(&record.id).await {
                Ok(a) => Some(a.zone_id),
                Err(StoreError::NotFound) => {
                    failed(state, &keys());
                    return Err(unauthenticated());
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let principal = Principal {
            token_id: record.id,
            token_name: record.name,
            user_id: record.user_id,
            session: false,
            workspace_id: record.workspace_id,
            permissions: record.permissions,
            memberships,
            agent_zone,
            request: request_meta(parts),
        };
        crate::request::remember_principal(parts, &principal);
        Ok(Auth(principal))
    }
}

fn request_meta(parts: &Parts) -> patchbay_core::model::RequestMeta {
    parts
        .extensions
        .get::<patchbay_core::model::RequestMeta>()
        .cloned()
        .unwrap_or_default()
}

/// 429 when any of `keys` used up its failures.
pub(crate) fn throttled(state: &AppState, keys: &[String]) -> ApiResult<()> {
    match keys.iter().find_map(|k| state.auth_failures.blocked(k)) {
        Some(wait) => Err(ApiError::rate_limited(
            "too many failed authentications; wait before retrying",
            wait,
        )),
        None => Ok(()),
    }
}

/// Counts a failed authentication against every key.
pub(crate) fn failed(state: &AppState, keys: &[String]) {
    for k in keys {
        state.auth_failures.record(k);
    }
}

/// The principal of a browser session: the user, with every permission their roles give.
/// Unsafe methods need the session's CSRF token in `X-CSRF-Token`.
async fn session_principal(parts: &Parts, state: &AppState, secret: &str) -> ApiResult<Principal> {
    let keys = failure_keys(parts, None);
    throttled(state, &keys)?;
    let Some(session) = state.store.find_session(&hash_token(secret)).await? else {
        failed(state, &keys);
        return Err(unauthenticated());
    };
    if !parts.method.is_safe() {
        let sent = parts
            .headers
            .get(crate::session::CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let expected = crate::session::csrf_token(secret);
        if !token_hashes_equal(sent, expected.as_bytes()) {
            return Err(ApiError::new(
                ErrorCode::CsrfTokenInvalid,
                "a change made with a session cookie needs the session's CSRF token in X-CSRF-Token",
            ));
        }
    }
    let memberships = memberships(state, &session.user_id).await?;
    let principal = Principal {
        token_id: session.id,
        token_name: "session".into(),
        user_id: Some(session.user_id),
        session: true,
        workspace_id: None,
        permissions: PermissionSet::all(),
        memberships,
        agent_zone: None,
        request: request_meta(parts),
    };
    crate::request::remember_principal(parts, &principal);
    Ok(principal)
}

/// The limiter keys of a request: its source address (when known) and the token's prefix
/// (`pbt_` and 8 characters: guessing at one known token from many addresses).
pub(crate) fn failure_keys(parts: &Parts, token: Option<&str>) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    // The source address as the request layer worked it out (trusted proxies honoured).
    if let Some(addr) = request_meta(parts).source_address {
        keys.push(format!("addr:{addr}"));
    }
    if let Some(token) = token {
        keys.push(format!(
            "prefix:{}",
            token.chars().take(12).collect::<String>()
        ));
    }
    keys
}

/// The live token record whose hash is `hash`: known, hash equal in constant time, not revoked,
/// not expired. `None` for every kind of failure alike.
async fn verify(state: &AppState, hash: &[u8]) -> ApiResult<Option<TokenRecord>> {
    let Some(record) = state.store.find_token(hash).await? else {
        return Ok(None);
    };
    let now = now_millis();
    let live = token_hashes_equal(&record.token_hash, hash)
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
