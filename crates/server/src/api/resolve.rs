//! Run-time resolve endpoints: a job's settings and secrets for one run, decrypted for this
//! call only, in the shape it asks for. Answers are never cached (`Cache-Control: no-store`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::ErrorCode;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::body::OptionalShaped;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::resolve::{self as svc, Target};
use crate::state::AppState;

/// Documents the resolve body (the server reads it field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ResolveInput {
    /// `json` (default), `env`, `uri`, `jdbc` or `airflow_uri`.
    format: Option<String>,
    /// The orchestrator's run id, recorded in the audit event (1-200 printable characters).
    run_id: Option<String>,
}

fn no_store(v: svc::Answer) -> Response {
    let mut resp = super::no_store(Json(v).into_response());
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

const ANSWER: &str = "`{connection: {id, name, type, version, workspace_id, project_id}, credential: {id, version} | null, format, run_id}` plus, by format: \
json `settings`, `secrets`; env `env` (name → value), `secret_variables`, `prefix`; uri `uri`; \
jdbc `jdbc_url`, `user`, `password`, `properties`; airflow_uri `uri`, `conn_type`. Sent with Cache-Control: no-store.";

/// Resolves a connection for a run: its settings and the secrets of the credential version
/// in effect, decrypted for this call only, recorded as a `connection.resolve` audit event
/// (run id, format, credential version). Needs connections:resolve (runner tokens).
#[utoipa::path(post, path = "/api/v1/connections/{id}/resolve", tag = "resolve",
    params(("id" = String, Path, description = "Connection id")),
    request_body(content = ResolveInput, description = "Optional; no body is `{\"format\": \"json\"}`"),
    responses(
        (status = 200, description = ANSWER, body = Object),
        (status = 400, body = ErrorBody, description = "invalid_field (/format, /run_id) or format_unsupported (/format)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "credential_version_unavailable, secret_integrity_error")),
    security(("bearer" = [])))]
pub async fn by_id(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalShaped(body): OptionalShaped<svc::Body>,
) -> ApiResult<Response> {
    let v = svc::answer(&state, &auth.0, Target::Id(&id), body).await?;
    Ok(no_store(v))
}

/// Resolves a connection by name: `{project}` is a project id or name (a name is looked up
/// in `?workspace=` when given, else in the workspaces the caller sees — a runner token sees
/// one). Otherwise as `POST /api/v1/connections/{id}/resolve`.
#[utoipa::path(post, path = "/api/v1/projects/{project}/connections/by-name/{name}/resolve", tag = "resolve",
    params(("project" = String, Path, description = "Project id or name"),
        ("name" = String, Path, description = "Connection name"),
        ("workspace" = Option<String>, Query, description = "Workspace id or name, when a project name is in several workspaces")),
    request_body(content = ResolveInput, description = "Optional; no body is `{\"format\": \"json\"}`"),
    responses(
        (status = 200, description = ANSWER, body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn by_name(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, name)): Path<(String, String)>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
    OptionalShaped(body): OptionalShaped<svc::Body>,
) -> ApiResult<Response> {
    let Query(q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    if q.keys().any(|k| k != "workspace") {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "unknown query parameter; allowed: workspace",
        ));
    }
    let target = Target::Name {
        project: &project,
        name: &name,
        workspace: q.get("workspace").map(String::as_str),
    };
    let v = svc::answer(&state, &auth.0, target, body).await?;
    Ok(no_store(v))
}
