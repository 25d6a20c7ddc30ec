//! Dependents of a connection: consumers register, list and unregister what uses it.
//! Handlers extract, call `service::dependents`, shape the response.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_store::{Dependent, Registered};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::body::JsonObject;
use crate::error::{ApiResult, ErrorBody};
use crate::service::dependents as svc;
use crate::state::AppState;

/// Something a consumer registered as using the connection.
#[derive(Serialize, ToSchema)]
pub struct DependentOut {
    /// Free-form kind: pipeline, dataset, alert_policy, dashboard, …
    pub kind: String,
    /// The consumer's own id of the dependent, unique per kind on this connection.
    #[serde(rename = "ref")]
    pub reference: String,
    pub name: String,
    /// Where to see it in its owner's UI.
    pub url: Option<String>,
    /// `token:<id>` or `user:<id>` that registered it last.
    pub registered_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Dependent> for DependentOut {
    fn from(d: Dependent) -> Self {
        Self {
            kind: d.kind,
            reference: d.reference,
            name: d.name,
            url: d.url,
            registered_by: d.registered_by,
            created_at: format_rfc3339(d.created_at),
            updated_at: format_rfc3339(d.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DependentList {
    /// Ordered by kind, then ref.
    pub items: Vec<DependentOut>,
}

/// Documents the PUT body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DependentInput {
    /// What people call it (1-200 characters).
    name: String,
    /// An http(s) link to it, without credentials.
    url: Option<String>,
}

/// The connection's dependents.
#[utoipa::path(get, path = "/api/v1/connections/{id}/dependents", tag = "dependents",
    params(("id" = String, Path, description = "Connection id")),
    responses((status = 200, body = DependentList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<DependentList>> {
    let items = svc::list(&state, &auth.0, &id).await?;
    Ok(Json(DependentList {
        items: items.into_iter().map(DependentOut::from).collect(),
    }))
}

/// Registers a dependent (201), or updates its name and url (200). Idempotent.
#[utoipa::path(put, path = "/api/v1/connections/{id}/dependents/{kind}/{ref}", tag = "dependents",
    params(("id" = String, Path, description = "Connection id"),
        ("kind" = String, Path, description = "[a-z0-9][a-z0-9._-]{0,62}, e.g. pipeline"),
        ("ref" = String, Path, description = "The consumer's id of it: 1-200 characters, no whitespace, '/' or ','")),
    request_body = DependentInput,
    responses((status = 201, body = DependentOut), (status = 200, body = DependentOut),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, kind, reference)): Path<(String, String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let (d, outcome) = svc::register(&state, &auth.0, &id, &kind, &reference, body).await?;
    let status = match outcome {
        Registered::Created => StatusCode::CREATED,
        Registered::Updated => StatusCode::OK,
    };
    Ok((status, Json(DependentOut::from(d))).into_response())
}

/// Unregisters a dependent.
#[utoipa::path(delete, path = "/api/v1/connections/{id}/dependents/{kind}/{ref}", tag = "dependents",
    params(("id" = String, Path, description = "Connection id"),
        ("kind" = String, Path), ("ref" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, kind, reference)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    svc::unregister(&state, &auth.0, &id, &kind, &reference).await?;
    Ok(StatusCode::NO_CONTENT)
}
