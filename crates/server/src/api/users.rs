//! Users, workspace members and workspace roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_store::{Membership, UserRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::body::JsonObject;
use crate::error::{ApiResult, ErrorBody};
use crate::service::users::{self as svc, Role};
use crate::state::AppState;

/// A user; never the password or its hash.
#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: String,
    pub username: String,
    /// Instance administrators reach every workspace with every permission.
    pub is_admin: bool,
    pub created_at: String,
    pub disabled_at: Option<String>,
}

impl From<UserRecord> for UserOut {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            username: u.username,
            is_admin: u.is_admin,
            created_at: format_rfc3339(u.created_at),
            disabled_at: u.disabled_at.map(format_rfc3339),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserOut>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberOut {
    pub workspace_id: String,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Membership> for MemberOut {
    fn from(m: Membership) -> Self {
        Self {
            workspace_id: m.workspace_id,
            user_id: m.user_id,
            username: m.username,
            role: m.role,
            created_at: format_rfc3339(m.created_at),
            updated_at: format_rfc3339(m.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    pub items: Vec<MemberOut>,
}

#[derive(Serialize, ToSchema)]
pub struct RoleOut {
    pub name: String,
    /// Built-in roles are fixed; custom roles belong to the workspace.
    pub builtin: bool,
    pub permissions: Vec<String>,
    pub description: String,
}

impl From<Role> for RoleOut {
    fn from(r: Role) -> Self {
        Self {
            name: r.name,
            builtin: r.builtin,
            permissions: r
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            description: r.description,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    pub items: Vec<RoleOut>,
}

/// Documents the create body (read field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserInput {
    /// `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    username: String,
    /// 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
    /// Instance administrator (default false).
    is_admin: Option<bool>,
}

/// Documents the body that adds a member or changes their role.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MemberInput {
    /// A built-in or custom role of the workspace, no wider than the caller's own.
    role: String,
}

/// Documents the custom role body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RoleInput {
    /// `[a-z0-9][a-z0-9._-]{0,62}`, not a built-in role's.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Permissions (e.g. `connections:read`), each held by the caller.
    permissions: Vec<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = UserInput,
    responses((status = 201, body = UserOut), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<UserOut>)> {
    let u = svc::create(&state, &auth.0, body).await?;
    Ok((StatusCode::CREATED, Json(u.into())))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = UserList), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<UserList>> {
    let items = svc::list(&state, &auth.0).await?;
    Ok(Json(UserList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/members", tag = "members",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = MemberList), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<Json<MemberList>> {
    let items = svc::list_members(&state, &auth.0, &ws).await?;
    Ok(Json(MemberList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(put, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members",
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("user" = String, Path, description = "User id or username")),
    request_body = MemberInput,
    responses((status = 201, body = MemberOut, description = "Added"),
        (status = 200, body = MemberOut, description = "Role changed"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((ws, user)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<MemberOut>)> {
    let (m, created) = svc::put_member(&state, &auth.0, &ws, &user, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(m.into())))
}

#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members",
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("user" = String, Path, description = "User id or username")),
    responses((status = 204, description = "Removed: the user's tokens stop reaching the workspace at once"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((ws, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    svc::delete_member(&state, &auth.0, &ws, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/roles", tag = "members",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = RoleList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_roles(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<Json<RoleList>> {
    let items = svc::list_roles(&state, &auth.0, &ws).await?;
    Ok(Json(RoleList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/roles", tag = "members",
    params(("ws" = String, Path, description = "Workspace id or name")),
    request_body = RoleInput,
    responses((status = 201, body = RoleOut), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_role(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<RoleOut>)> {
    let r = svc::create_role(&state, &auth.0, &ws, body).await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}
