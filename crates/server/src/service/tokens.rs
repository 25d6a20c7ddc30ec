//! API tokens: personal tokens (shown once, optionally narrower than their creator, optional
//! expiry, revocable) and runner tokens (one workspace, resolve and test only, at most 1 h).
//!
//! A principal can only mint what it holds: a new token's permissions are a subset of the
//! caller's, and a workspace-scoped caller mints only tokens of its workspace.

use patchbay_core::model::Principal;
use patchbay_core::names::check_name;
use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_core::ErrorCode;
use patchbay_crypto::{generate_token, hash_token, SecretString};
use patchbay_store::{new_id, now_millis, NewToken, StoreError, TokenRecord};
use serde_json::{json, Map, Value};

use super::{audit, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Longest life of a personal token (10 years); no expiry is also allowed.
const MAX_EXPIRES_IN: i64 = 10 * 365 * 86_400;
/// Runner tokens: default and longest life.
pub const RUNNER_DEFAULT_TTL: i64 = 15 * 60;
pub const RUNNER_MAX_TTL: i64 = 3600;
/// What a runner token may do.
const RUNNER_PERMISSIONS: &[Permission] =
    &[Permission::ConnectionsResolve, Permission::ConnectionsTest];

pub const PERSONAL: &str = "personal";
pub const RUNNER: &str = "runner";
/// Agent tokens (service::zones): one zone's agent endpoints, nothing else.
pub const AGENT: &str = "agent";

/// A token just minted: its record and the secret, which is shown this once.
pub struct Minted {
    pub record: TokenRecord,
    pub token: SecretString,
}

/// A token's permissions must be held by its creator: in the token's workspace when it has
/// one, else in at least one workspace (the user's roles still limit it per workspace).
fn subset_of_caller(
    p: &Principal,
    workspace_id: Option<&str>,
    wanted: &PermissionSet,
    pointer: &str,
) -> ApiResult<()> {
    let holds = |w: Permission| match workspace_id {
        Some(ws) => p.can_in(ws, w),
        None => p.can(w),
    };
    match wanted.iter().find(|w| !holds(*w)) {
        Some(missing) => Err(ApiError::field(
            ErrorCode::InvalidField,
            pointer,
            format!("the caller does not hold {missing}; a token can only carry permissions its creator holds"),
        )),
        None => Ok(()),
    }
}

/// What a new token is: everything but its id and secret.
struct Spec {
    name: String,
    kind: &'static str,
    user_id: Option<String>,
    workspace_id: Option<String>,
    permissions: PermissionSet,
    expires_at: Option<i64>,
}

async fn mint(state: &AppState, p: &Principal, spec: Spec) -> ApiResult<Minted> {
    let Spec {
        name,
        kind,
        user_id,
        workspace_id,
        permissions,
        expires_at,
    } = spec;
    let token = generate_token();
    let id = new_id();
    let entry = audit(
        p,
        "token.create",
        workspace_id.as_deref(),
        "token",
        &id,
        json!({"name": name, "kind": kind, "user_id": user_id, "permissions": permissions.to_storage(), "expires_at": expires_at}),
    );
    state
        .store
        .create_token(
            &NewToken {
                id: id.clone(),
                name,
                token_hash: hash_token(token.expose_secret()),
                workspace_id,
                permissions,
                expires_at,
                kind: kind.into(),
                created_by: Some(p.actor()),
                user_id,
            },
            &entry,
        )
        .await?;
    Ok(Minted {
        record: state.store.get_token(&id).await?,
        token,
    })
}

/// POST /api/v1/tokens: `{name, expires_in?, workspace_id?, permissions?}`.
pub async fn create(
    state: &AppState,
    p: &Principal,
    body: Map<String, Value>,
) -> ApiResult<Minted> {
    let mut f = Fields::new(
        body,
        &[
            "name",
            "expires_in",
            "workspace_id",
            "permissions",
            "user_id",
        ],
        &[],
    )?;
    let name = f.required_string("name")?;
    check_name("/name", &name)?;
    let expires_at = match f.take("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let secs = v
                .as_i64()
                .filter(|s| (60..=MAX_EXPIRES_IN).contains(s))
                .ok_or_else(|| {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        "/expires_in",
                        format!("seconds, 60 to {MAX_EXPIRES_IN}"),
                    )
                })?;
            Some(now_millis() + secs * 1000)
        }
    };
    // A workspace-scoped caller mints tokens of its own workspace only.
    let workspace_id = match (f.optional_string("workspace_id")?, &p.workspace_id) {
        (Some(ws), _) => Some(
            workspaces::get(state, p, &ws)
                .await
                .map_err(|_| {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        "/workspace_id",
                        "no such workspace",
                    )
                })?
                .id,
        ),
        (None, own) => own.clone(),
    };
    let permissions = match f.optional_string_list("permissions")? {
        None => p.permissions,
        Some(list) => {
            let mut set = PermissionSet::default();
            for (i, name) in list.iter().enumerate() {
                let perm: Permission = name.parse().map_err(|_| {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        format!("/permissions/{i}"),
                        "unknown permission",
                    )
                })?;
                set.insert(perm);
            }
            subset_of_caller(p, workspace_id.as_deref(), &set, "/permissions")?;
            set
        }
    };
    // An instance administrator may mint a token for another user; it then works only
    // within that user's roles.
    let user_id = match f.optional_string("user_id")? {
        None => p.user_id.clone(),
        Some(_) if !p.can_everywhere(Permission::InstanceAdmin) => {
            return Err(ApiError::forbidden(Permission::InstanceAdmin))
        }
        Some(u) => match state.store.get_user(&u).await {
            Ok(user) => Some(user.id),
            Err(StoreError::NotFound) => {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    "/user_id",
                    "no such user",
                ))
            }
            Err(e) => return Err(e.into()),
        },
    };
    let spec = Spec {
        name,
        kind: PERSONAL,
        user_id,
        workspace_id,
        permissions,
        expires_at,
    };
    mint(state, p, spec).await
}

/// POST /api/v1/workspaces/{ws}/runner-tokens: `{ttl_seconds?}` (default 15 min, at most 1 h).
pub async fn create_runner(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    body: Option<Map<String, Value>>,
) -> ApiResult<Minted> {
    let ws = workspaces::get(state, p, workspace).await?;
    let ttl = match body {
        None => RUNNER_DEFAULT_TTL,
        Some(b) => {
            let mut f = Fields::new(b, &["ttl_seconds"], &[])?;
            match f.take("ttl_seconds") {
                None | Some(Value::Null) => RUNNER_DEFAULT_TTL,
                Some(v) => v
                    .as_i64()
                    .filter(|s| (1..=RUNNER_MAX_TTL).contains(s))
                    .ok_or_else(|| {
                        ApiError::field(
                            ErrorCode::InvalidField,
                            "/ttl_seconds",
                            format!("seconds, 1 to {RUNNER_MAX_TTL}"),
                        )
                    })?,
            }
        }
    };
    let permissions: PermissionSet = RUNNER_PERMISSIONS.iter().copied().collect();
    if let Some(missing) = permissions.iter().find(|w| !p.can_in(&ws.id, *w)) {
        return Err(ApiError::forbidden(missing));
    }
    let name = format!("runner-{}", &new_id()[24..]);
    let spec = Spec {
        name,
        kind: RUNNER,
        user_id: p.user_id.clone(),
        workspace_id: Some(ws.id),
        permissions,
        expires_at: Some(now_millis() + ttl * 1000),
    };
    mint(state, p, spec).await
}

/// Whether `p` may see and revoke token `t`: its own, one it minted, or any for an
/// instance administrator.
fn visible(p: &Principal, t: &TokenRecord) -> bool {
    p.can_everywhere(Permission::InstanceAdmin)
        || t.id == p.token_id
        || t.created_by.as_deref() == Some(p.actor().as_str())
}

pub async fn list(state: &AppState, p: &Principal) -> ApiResult<Vec<TokenRecord>> {
    let all = state.store.list_tokens(None).await?;
    Ok(all.into_iter().filter(|t| visible(p, t)).collect())
}

pub async fn revoke(state: &AppState, p: &Principal, id: &str) -> ApiResult<()> {
    let t = match state.store.get_token(id).await {
        Ok(t) if visible(p, &t) => t,
        Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::not_found("token")),
        Err(e) => return Err(e.into()),
    };
    if t.revoked_at.is_some() {
        return Err(ApiError::not_found("token"));
    }
    let entry = audit(
        p,
        "token.revoke",
        t.workspace_id.as_deref(),
        "token",
        &t.id,
        json!({"name": t.name, "kind": t.kind}),
    );
    Ok(state.store.revoke_token(&t.id, &entry).await?)
}
