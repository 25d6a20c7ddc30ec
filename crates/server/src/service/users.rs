//! Users (local accounts with argon2id passwords), workspace members and roles.
//!
//! Nobody grants more than they hold: a role given to a member, or the permissions of a new
//! custom role, must be a subset of what the caller holds in that workspace.

use patchbay_core::model::Principal;
use patchbay_core::names::check_name;
use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_core::roles;
use patchbay_core::ErrorCode;
use patchbay_crypto::{hash_password, SecretString, MIN_PASSWORD_LEN};
use patchbay_store::{new_id, now_millis, Membership, NewUser, RoleRecord, StoreError, UserRecord};
use serde_json::{json, Map, Value};

use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const MAX_PASSWORD_LEN: usize = 1024;

/// A role as the API shows it: built-in or custom, with its permissions.
pub struct Role {
    pub name: String,
    pub builtin: bool,
    pub permissions: PermissionSet,
    pub description: String,
}

fn check_password(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/password",
            format!("{MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Hashes off the async workers: argon2id takes tens of milliseconds on purpose.
pub async fn hash(password: SecretString) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing task failed");
            ApiError::internal()
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            ApiError::internal()
        })
}

/// `POST /api/v1/users`: `{username, password, is_admin?}`; instance administrators only.
pub async fn create(
    state: &AppState,
    p: &Principal,
    body: Map<String, Value>,
) -> ApiResult<UserRecord> {
    if !p.can_everywhere(Permission::InstanceAdmin) {
        return Err(ApiError::forbidden(Permission::InstanceAdmin));
    }
    let mut f = Fields::new(body, &["username", "password", "is_admin"], &[])?;
    let username = f.required_string("username")?;
    check_name("/username", &username)?;
    let password = SecretString::from(f.required_string("password")?);
    check_password(password.expose_secret())?;
    let is_admin = match f.take("is_admin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/is_admin",
                "true or false",
            ))
        }
    };
    let new = NewUser {
        id: new_id(),
        username,
        password_hash: hash(password).await?,
        is_admin,
    };
    let entry = audit(
        p,
        "user.create",
        None,
        "user",
        &new.id,
        json!({"username": new.username, "is_admin": is_admin, "password": "changed"}),
    );
    match state.store.create_user(&new, &entry).await {
        Err(StoreError::NameTaken) => Err(ApiError::field(
            ErrorCode::NameTaken,
            "/username",
            "another user has this username",
        )),
        other => Ok(other?),
    }
}

/// `GET /api/v1/users`: instance administrators, and principals who manage members of some
/// workspace (they need user ids to add members).
pub async fn list(state: &AppState, p: &Principal) -> ApiResult<Vec<UserRecord>> {
    if !p.can_everywhere(Permission::InstanceAdmin) && !p.can(Permission::MembersManage) {
        return Err(ApiError::forbidden(Permission::MembersManage));
    }
    Ok(state.store.list_users().await?)
}

async fn user(state: &AppState, id_or_name: &str) -> ApiResult<UserRecord> {
    match state.store.get_user(id_or_name).await {
        Err(StoreError::NotFound) => match state.store.get_user_by_name(id_or_name).await {
            Err(StoreError::NotFound) => Err(ApiError::not_found("user")),
            other => Ok(other?),
        },
        other => Ok(other?),
    }
}

/// Every role of a workspace: the built-in ones, then the custom ones.
async fn roles_of(state: &AppState, workspace_id: &str) -> ApiResult<Vec<Role>> {
    let mut out: Vec<Role> = roles::BUILTIN
        .iter()
        .map(|(name, perms)| Role {
            name: (*name).to_owned(),
            builtin: true,
            permissions: perms.iter().copied().collect(),
            description: String::new(),
        })
        .collect();
    for r in state.store.list_roles(workspace_id).await? {
        out.push(Role {
            permissions: PermissionSet::from_storage(&r.permissions)
                .map_err(StoreError::Corrupt)?,
            name: r.name,
            builtin: false,
            description: r.description,
        });
    }
    Ok(out)
}

/// 400 at `pointer` unless the caller holds every permission of `perms` in the workspace.
fn grantable_by(p: &Principal, ws: &str, perms: &PermissionSet, pointer: &str) -> ApiResult<()> {
    match perms.iter().find(|perm| !p.can_in(ws, *perm)) {
        Some(missing) => Err(ApiError::field(
            ErrorCode::InvalidField,
            pointer,
            format!("the caller does not hold {missing} in this workspace and cannot grant it"),
        )),
        None => Ok(()),
    }
}

/// `PUT /api/v1/workspaces/{ws}/members/{user}`: `{role}`. Returns the membership and whether
/// it is new.
pub async fn put_member(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    user_id: &str,
    body: Map<String, Value>,
) -> ApiResult<(Membership, bool)> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::MembersManage)?;
    let role_name = Fields::new(body, &["role"], &[])?.required_string("role")?;
    let role = roles_of(state, &ws.id)
        .await?
        .into_iter()
        .find(|r| r.name == role_name)
        .ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidField,
                "/role",
                "no such role in this workspace (GET …/roles lists them)",
            )
        })?;
    grantable_by(p, &ws.id, &role.permissions, "/role")?;
    let u = user(state, user_id).await?;
    let entry = audit(
        p,
        "member.put",
        Some(&ws.id),
        "user",
        &u.id,
        json!({"username": u.username, "role": role.name}),
    );
    let previous = state
        .store
        .put_member(&ws.id, &u.id, &role.name, &entry)
        .await?;
    let m = member(state, &ws.id, &u.id).await?;
    Ok((m, previous.is_none()))
}

async fn member(state: &AppState, ws: &str, user_id: &str) -> ApiResult<Membership> {
    state
        .store
        .list_members(ws)
        .await?
        .into_iter()
        .find(|m| m.user_id == user_id)
        .ok_or_else(|| ApiError::not_found("member"))
}

pub async fn list_members(
    state: &AppState,
    p: &Principal,
    workspace: &str,
) -> ApiResult<Vec<Membership>> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::MembersManage)?;
    Ok(state.store.list_members(&ws.id).await?)
}

pub async fn delete_member(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    user_id: &str,
) -> ApiResult<()> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::MembersManage)?;
    let u = user(state, user_id).await?;
    let entry = audit(
        p,
        "member.delete",
        Some(&ws.id),
        "user",
        &u.id,
        json!({"username": u.username}),
    );
    match state.store.delete_member(&ws.id, &u.id, &entry).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("member")),
        other => Ok(other?),
    }
}

/// `GET /api/v1/workspaces/{ws}/roles`: any principal that sees the workspace.
pub async fn list_roles(state: &AppState, p: &Principal, workspace: &str) -> ApiResult<Vec<Role>> {
    let ws = workspaces::get(state, p, workspace).await?;
    roles_of(state, &ws.id).await
}

/// `POST /api/v1/workspaces/{ws}/roles`: `{name, permissions, description?}`; needs
/// workspace:admin, and the caller must hold every permission it puts in the role.
pub async fn create_role(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    body: Map<String, Value>,
) -> ApiResult<Role> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    let mut f = Fields::new(body, &["name", "permissions", "description"], &[])?;
    let name = f.required_string("name")?;
    check_name("/name", &name)?;
    if roles::builtin(&name).is_some() {
        return Err(ApiError::new(
            ErrorCode::NameTaken,
            format!("{name} is a built-in role"),
        ));
    }
    let list = f
        .optional_string_list("permissions")?
        .ok_or_else(|| ApiError::field(ErrorCode::InvalidField, "/permissions", "required"))?;
    let mut permissions = PermissionSet::default();
    for (i, s) in list.iter().enumerate() {
        match s.parse::<Permission>() {
            Ok(perm) if roles::grantable(perm) => permissions.insert(perm),
            _ => {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    format!("/permissions/{i}"),
                    "not a workspace permission",
                ))
            }
        }
    }
    grantable_by(p, &ws.id, &permissions, "/permissions")?;
    let description = f.optional_string("description")?.unwrap_or_default();
    let record = RoleRecord {
        workspace_id: ws.id.clone(),
        name,
        permissions: permissions.to_storage(),
        description,
        created_at: now_millis(),
    };
    let entry = audit(
        p,
        "role.create",
        Some(&ws.id),
        "role",
        &record.name,
        json!({"permissions": record.permissions}),
    );
    match state.store.create_role(&record, &entry).await {
        Err(StoreError::NameTaken) => {
            return Err(ApiError::field(
                ErrorCode::NameTaken,
                "/name",
                "this workspace already has a role with this name",
            ))
        }
        other => other?,
    }
    Ok(Role {
        name: record.name,
        builtin: false,
        permissions,
        description: record.description,
    })
}
