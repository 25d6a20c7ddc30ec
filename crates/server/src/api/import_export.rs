//! Import and export of a project as a document (apiVersion 1; docs/import-export.md).
//! Handlers extract, call `service::provision`, shape the response.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use serde_json::Value;

use crate::auth::Auth;
use crate::body::{Fields, JsonObject};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::provision::{self as svc, export, ApplyOptions, ImportReport};
use crate::state::AppState;

fn flag(q: &BTreeMap<String, String>, name: &str) -> ApiResult<bool> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidQuery,
            name,
            format!("{name} must be true or false"),
        )),
    }
}

/// Applies a document to the project: creates, updates (only what differs: the same
/// document twice changes nothing) and, with `prune`, deletes the project's connections the
/// document does not name. Answers the diff: per object `create`, `update` (with the changed
/// field names, never values), `unchanged`, `delete`, or `kept` (provisioned, not pruned).
#[utoipa::path(post, path = "/api/v1/projects/{project}/import", tag = "import-export",
    params(("project" = String, Path, description = "Project id"),
        ("dry_run" = Option<bool>, Query, description = "Report the diff, change nothing"),
        ("prune" = Option<bool>, Query, description = "Delete connections of the project the document does not name")),
    request_body(content = Object, description = "The document: {apiVersion: 1, workspace?, project?, credentials: [{name, kind, description?, fields?, secrets?, external?}], connections: [{name, type, description?, environment?, tags?, zone?, settings?, credential?: {name, version?} | secrets?}]}"),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "provisioned: the document touches an object a provisioning file manages")),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<ImportReport>> {
    let Query(q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let opts = ApplyOptions {
        dry_run: flag(&q, "dry_run")?,
        prune: flag(&q, "prune")?,
        source: None,
    };
    Ok(Json(
        svc::apply(&state, &auth.0, &project, body, &opts).await?,
    ))
}

/// The project as a document: connections with settings and credential references, and
/// the shared credentials they use — no secret value.
#[utoipa::path(get, path = "/api/v1/projects/{project}/export", tag = "import-export",
    params(("project" = String, Path, description = "Project id")),
    responses((status = 200, body = Object, description = "The document (apiVersion 1)"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export_plain(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(export::export(&state, &auth.0, &project, None).await?))
}

/// The project as a document with its secrets, each sealed to `passphrase` (argon2id →
/// AES-256-GCM; the `encryption` header holds the parameters). Needs credentials:write and
/// connections:reveal in the workspace; every value exported is audited
/// (`connection.reveal`, `credential.export`).
#[utoipa::path(post, path = "/api/v1/projects/{project}/export", tag = "import-export",
    params(("project" = String, Path, description = "Project id")),
    request_body(content = Object, description = "{\"passphrase\": \"…\"}"),
    responses((status = 200, body = Object, description = "The document with sealed secrets"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export_sealed(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let mut f = Fields::new(body, &["passphrase"], &[])?;
    let passphrase = SecretString::new(f.required_string("passphrase")?);
    if passphrase.is_empty() {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/passphrase",
            "must not be empty",
        ));
    }
    let doc = export::export(&state, &auth.0, &project, Some(&passphrase)).await?;
    Ok(super::no_store(Json(doc).into_response()))
}
