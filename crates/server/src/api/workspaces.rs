//! Workspaces and projects.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use patchbay_core::model::{format_rfc3339, Project, Workspace};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::body::{Fields, JsonObject};
use crate::error::{ApiResult, ErrorBody};
use crate::service::workspaces as svc;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct WorkspaceOut {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl From<Workspace> for WorkspaceOut {
    fn from(w: Workspace) -> Self {
        Self {
            id: w.id,
            name: w.name,
            created_at: format_rfc3339(w.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectOut {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub created_at: String,
}

impl From<Project> for ProjectOut {
    fn from(p: Project) -> Self {
        Self {
            id: p.id,
            workspace_id: p.workspace_id,
            name: p.name,
            created_at: format_rfc3339(p.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceList {
    pub items: Vec<WorkspaceOut>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    pub items: Vec<ProjectOut>,
}

/// `{name}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NameInput {
    /// `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
}

fn name_from(body: serde_json::Map<String, serde_json::Value>) -> ApiResult<String> {
    Fields::new(body, &["name"], &[])?.required_string("name")
}

#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces",
    responses((status = 200, body = WorkspaceList)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<WorkspaceList>> {
    let items = svc::list(&state, &auth.0).await?;
    Ok(Json(WorkspaceList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = NameInput,
    responses((status = 201, body = WorkspaceOut), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<WorkspaceOut>)> {
    let name = name_from(body)?;
    let w = svc::create(&state, &auth.0, &name).await?;
    Ok((StatusCode::CREATED, Json(w.into())))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/projects", tag = "workspaces",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = ProjectList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_projects(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<Json<ProjectList>> {
    let items = svc::list_projects(&state, &auth.0, &ws).await?;
    Ok(Json(ProjectList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/projects", tag = "workspaces",
    params(("ws" = String, Path, description = "Workspace id or name")), request_body = NameInput,
    responses((status = 201, body = ProjectOut), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_project(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<ProjectOut>)> {
    let name = name_from(body)?;
    let p = svc::create_project(&state, &auth.0, &ws, &name).await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}
