//! The connector catalog, read-only.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct ConnectorTypeSummary {
    pub id: String,
    pub name: String,
    pub category: String,
    /// generic or specific
    pub genericity: String,
    pub description: String,
    pub capabilities: Vec<String>,
    pub credential_kinds: Vec<String>,
    pub secret_fields: Vec<String>,
    pub probe_kind: String,
    /// verified (tested against a real server), contract (against a responder following
    /// the vendor's documented API) or untested.
    pub verification: String,
    pub docs_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectorTypeList {
    pub items: Vec<ConnectorTypeSummary>,
}

#[utoipa::path(get, path = "/api/v1/connection-types", tag = "catalog",
    params(("category" = Option<String>, Query), ("q" = Option<String>, Query, description = "Substring of id, name or description")),
    responses((status = 200, body = ConnectorTypeList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _auth: Auth,
    Query(q): Query<BTreeMap<String, String>>,
) -> Json<ConnectorTypeList> {
    let needle = q.get("q").map(|s| s.to_lowercase());
    let items = state
        .catalog
        .types()
        .iter()
        .filter(|t| q.get("category").is_none_or(|c| &t.category == c))
        .filter(|t| {
            needle.as_ref().is_none_or(|n| {
                t.id.contains(n.as_str())
                    || t.name.to_lowercase().contains(n.as_str())
                    || t.description.to_lowercase().contains(n.as_str())
            })
        })
        .map(|t| ConnectorTypeSummary {
            id: t.id.clone(),
            name: t.name.clone(),
            category: t.category.clone(),
            genericity: serde_json::to_value(t.genericity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            description: t.description.clone(),
            capabilities: t.capabilities.clone(),
            credential_kinds: t.credential_kinds.clone(),
            secret_fields: t.secret_fields().map(str::to_owned).collect(),
            probe_kind: t.probe.kind.clone(),
            verification: t.verification.as_str().to_owned(),
            docs_url: t.docs_url.clone(),
        })
        .collect();
    Json(ConnectorTypeList { items })
}

#[utoipa::path(get, path = "/api/v1/connection-types/{type}", tag = "catalog",
    params(("type" = String, Path)),
    responses((status = 200, body = Object, description = "The full type: settings schema, secret fields, credential kinds, capabilities, probe"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = state
        .catalog
        .get(&id)
        .ok_or_else(|| ApiError::not_found("connector type"))?;
    let mut v = serde_json::to_value(t).map_err(|_| ApiError(patchbay_core::Error::internal()))?;
    v["secret_fields"] = t.secret_fields().collect::<Vec<_>>().into();
    Ok(Json(v))
}

#[utoipa::path(get, path = "/api/v1/credential-kinds", tag = "catalog",
    responses((status = 200, body = Object, description = "{items: [credential kinds]}")),
    security(("bearer" = [])))]
pub async fn credential_kinds(State(state): State<AppState>, _auth: Auth) -> Json<Value> {
    Json(serde_json::json!({ "items": state.catalog.credential_kinds() }))
}
