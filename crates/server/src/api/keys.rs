//! Key management: status, master key rotation, data key rotation, rotation progress.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_store::KeyRotation;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::service::keys as svc;
use crate::state::AppState;

/// A key rotation and its progress.
#[derive(Serialize, ToSchema)]
pub struct RotationOut {
    pub id: String,
    /// `master` (re-wrap every data key) or `data` (re-encrypt a workspace's secrets).
    pub kind: String,
    pub workspace_id: Option<String>,
    /// Master key id (kind master) or data key id (kind data) being replaced.
    pub from_key: String,
    pub to_key: String,
    /// `running`, `failed` (see `error`; run the rotation again to resume) or `done`.
    pub state: String,
    pub total: i64,
    pub done: i64,
    /// Why a rotation failed: names the row, never a value.
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

impl From<KeyRotation> for RotationOut {
    fn from(r: KeyRotation) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            workspace_id: r.workspace_id,
            from_key: r.from_key,
            to_key: r.to_key,
            state: r.state,
            total: r.total,
            done: r.done,
            error: r.error,
            started_at: format_rfc3339(r.started_at),
            finished_at: r.finished_at.map(format_rfc3339),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MasterKeyOut {
    /// Wraps new data keys.
    pub id: String,
    /// `file`, `inline` (PATCHBAY_MASTER_KEY) or another key source.
    pub source: String,
    /// Every master key loaded (more than one while a rotation is unfinished).
    pub loaded: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DataKeyOut {
    pub id: String,
    /// `active` (encrypts new secrets) or `retiring` (being rotated away).
    pub state: String,
    /// The master key that wraps it.
    pub kek_id: String,
    pub created_at: String,
    /// How many stored ciphertexts name this key.
    pub ciphertexts: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceKeysOut {
    pub workspace_id: String,
    pub workspace: String,
    pub data_keys: Vec<DataKeyOut>,
}

#[derive(Serialize, ToSchema)]
pub struct KeysStatusOut {
    pub master_key: MasterKeyOut,
    pub workspaces: Vec<WorkspaceKeysOut>,
    /// Rotations not done (running or failed).
    pub rotations: Vec<RotationOut>,
}

/// Key status: master key, data keys per workspace with the ciphertexts each protects,
/// unfinished rotations. Needs workspace:admin.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    responses((status = 200, body = KeysStatusOut), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<KeysStatusOut>> {
    let s = svc::status(&state, &auth.0).await?;
    Ok(Json(KeysStatusOut {
        master_key: MasterKeyOut {
            id: s.master_key_id,
            source: s.master_key_source.to_owned(),
            loaded: s.master_keys_loaded,
        },
        workspaces: s
            .workspaces
            .into_iter()
            .map(|w| WorkspaceKeysOut {
                workspace_id: w.workspace_id,
                workspace: w.workspace,
                data_keys: w
                    .data_keys
                    .into_iter()
                    .map(|k| DataKeyOut {
                        id: k.id,
                        state: k.state,
                        kek_id: k.kek_id,
                        created_at: format_rfc3339(k.created_at),
                        ciphertexts: k.ciphertexts,
                    })
                    .collect(),
            })
            .collect(),
        rotations: s.rotations.into_iter().map(Into::into).collect(),
    }))
}

/// Starts a master key rotation (re-wraps every data key under a new master key) in the
/// background. Needs instance:admin. 409 `rotation_unsupported` for an inline key.
#[utoipa::path(post, path = "/api/v1/keys/rotate-master", tag = "keys",
    responses((status = 202, body = RotationOut), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_master(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<(StatusCode, Json<RotationOut>)> {
    let r = svc::rotate_master(&state, &auth.0).await?;
    Ok((StatusCode::ACCEPTED, Json(r.into())))
}

/// Starts a data key rotation of the workspace (a new active data key; every secret is
/// re-encrypted under it online, then the old key is destroyed), or resumes a failed one.
/// Needs workspace:admin.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/keys/rotate-data", tag = "keys",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 202, body = RotationOut), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_data(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<(StatusCode, Json<RotationOut>)> {
    let r = svc::rotate_data(&state, &auth.0, &ws).await?;
    Ok((StatusCode::ACCEPTED, Json(r.into())))
}

/// A rotation and its progress.
#[utoipa::path(get, path = "/api/v1/keys/rotations/{id}", tag = "keys",
    params(("id" = String, Path, description = "Rotation id")),
    responses((status = 200, body = RotationOut), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotation(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RotationOut>> {
    Ok(Json(svc::get_rotation(&state, &auth.0, &id).await?.into()))
}
