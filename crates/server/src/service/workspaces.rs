//! Workspaces and projects, with the visibility rule: a workspace the principal cannot see
//! does not exist for it (404, never 403).

use patchbay_core::model::{Principal, Project, Workspace};
use patchbay_core::names::check_name;
use patchbay_core::permission::Permission;
use patchbay_store::{new_id, StoreError};
use serde_json::json;

use super::{audit, require_in};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn list(state: &AppState, p: &Principal) -> ApiResult<Vec<Workspace>> {
    let all = state.store.list_workspaces().await?;
    Ok(all
        .into_iter()
        .filter(|w| p.sees_workspace(&w.id))
        .collect())
}

/// Looks a workspace up by id or by name.
pub async fn get(state: &AppState, p: &Principal, id_or_name: &str) -> ApiResult<Workspace> {
    let found = match state.store.get_workspace(id_or_name).await {
        Err(StoreError::NotFound) => state.store.get_workspace_by_name(id_or_name).await,
        other => other,
    };
    match found {
        Ok(w) if p.sees_workspace(&w.id) => Ok(w),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("workspace")),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(state: &AppState, p: &Principal, name: &str) -> ApiResult<Workspace> {
    if !p.can_everywhere(Permission::InstanceAdmin) {
        return Err(ApiError::forbidden(Permission::InstanceAdmin));
    }
    check_name("/name", name)?;
    let id = new_id();
    let dek = state.keys.new_data_key(&id);
    let entry = audit(
        p,
        "workspace.create",
        Some(&id),
        "workspace",
        &id,
        json!({"name": name, "data_key": dek.id}),
    );
    Ok(state
        .store
        .create_workspace(&id, name, &dek, &entry)
        .await?)
}

pub async fn list_projects(state: &AppState, p: &Principal, ws: &str) -> ApiResult<Vec<Project>> {
    let ws = get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::ConnectionsRead)?;
    Ok(state.store.list_projects(&ws.id).await?)
}

pub async fn create_project(
    state: &AppState,
    p: &Principal,
    ws: &str,
    name: &str,
) -> ApiResult<Project> {
    let ws = get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    check_name("/name", name)?;
    let entry = audit(
        p,
        "project.create",
        Some(&ws.id),
        "project",
        "",
        json!({"name": name}),
    );
    Ok(state.store.create_project(&ws.id, name, &entry).await?)
}

/// A project the principal can see.
pub async fn project(state: &AppState, p: &Principal, id: &str) -> ApiResult<Project> {
    match state.store.get_project(id).await {
        Ok(project) if p.sees_workspace(&project.workspace_id) => Ok(project),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("project")),
        Err(e) => Err(e.into()),
    }
}
