//! Webhooks of a workspace and their deliveries. Handlers extract, call
//! `service::webhooks`, shape the response. The signing secret appears in one response
//! only: the 201 of its creation.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_core::ErrorCode;
use patchbay_store::{DeliveryRecord, WebhookRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::{etag, if_match};
use crate::auth::Auth;
use crate::body::JsonObject;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::webhooks as svc;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: String,
    pub workspace_id: String,
    pub description: String,
    pub url: String,
    /// Subscribed event kinds; empty means every kind.
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_by: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<WebhookRecord> for WebhookOut {
    fn from(w: WebhookRecord) -> Self {
        Self {
            id: w.id,
            workspace_id: w.workspace_id,
            description: w.description,
            url: w.url,
            events: w.events,
            enabled: w.enabled,
            created_by: w.created_by,
            version: w.version,
            created_at: format_rfc3339(w.created_at),
            updated_at: format_rfc3339(w.updated_at),
        }
    }
}

/// The creation answer: the webhook plus its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookOut,
    /// HMAC-SHA256 key of `X-Patchbay-Signature`. Not shown again.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookOut>,
}

/// Documents the create body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookInput {
    /// http(s) URL without credentials.
    url: String,
    /// Event kinds to deliver (connection.created, connection.updated, connection.deleted,
    /// connection.tested, credential.rotated, dependent.cascade_deleted); empty or absent:
    /// all.
    events: Option<Vec<String>>,
    description: Option<String>,
    /// Default true.
    enabled: Option<bool>,
    /// Create only: your own signing secret (16-256 characters); generated when absent.
    secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryOut {
    /// The event id (`X-Patchbay-Delivery`).
    pub event_id: String,
    pub kind: String,
    /// pending, delivered or failed (retries exhausted).
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<i64>,
    /// Why the last attempt failed: timeout, connection failed, HTTP <status>.
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

impl From<DeliveryRecord> for DeliveryOut {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            event_id: d.event_id,
            kind: d.kind,
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(format_rfc3339),
            last_attempt_at: d.last_attempt_at.map(format_rfc3339),
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at.map(format_rfc3339),
            created_at: format_rfc3339(d.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub items: Vec<DeliveryOut>,
}

fn with_etag<T: Serialize>(status: StatusCode, version: i64, body: T) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(version));
    resp
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/webhooks", tag = "webhooks",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = WebhookList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<Json<WebhookList>> {
    let items = svc::list(&state, &auth.0, &ws).await?;
    Ok(Json(WebhookList {
        items: items.into_iter().map(WebhookOut::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/webhooks", tag = "webhooks",
    params(("ws" = String, Path, description = "Workspace id or name")),
    request_body = WebhookInput,
    responses((status = 201, body = WebhookCreated, description = "Created; the secret is shown this once"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let (w, secret) = svc::create(&state, &auth.0, &ws, body).await?;
    let location = format!("/api/v1/webhooks/{}", w.id);
    let version = w.version;
    let resp = with_etag(
        StatusCode::CREATED,
        version,
        WebhookCreated {
            webhook: w.into(),
            secret: secret.expose_secret().to_owned(),
        },
    );
    Ok(super::located(super::no_store(resp), &location))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookOut), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = svc::get(&state, &auth.0, &id).await?;
    Ok(with_etag(StatusCode::OK, w.version, WebhookOut::from(w)))
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Optional: change only this version")),
    request_body(content = Object, description = "Any of url, events, description, enabled"),
    responses((status = 200, body = WebhookOut), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let expected = if_match(&headers, false)?.flatten();
    let w = svc::patch(&state, &auth.0, &id, expected, body).await?;
    Ok(with_etag(StatusCode::OK, w.version, WebhookOut::from(w)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc::delete(&state, &auth.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The webhook's most recent deliveries with their state.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("limit" = Option<u32>, Query, description = "1-500, default 100")),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DeliveryList>> {
    let Query(mut q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let (limit, _) = super::page_params(&mut q)?;
    let items = svc::deliveries(&state, &auth.0, &id, limit).await?;
    Ok(Json(DeliveryList {
        items: items.into_iter().map(DeliveryOut::from).collect(),
    }))
}

/// Queues a `ping` event to this webhook (whatever its filter); answers its event id.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/ping", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 202, body = Object, description = "`{event_id}`"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ping(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let event_id = svc::ping(&state, &auth.0, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"event_id": event_id})),
    )
        .into_response())
}

/// Queues a delivery again with a fresh attempt budget (e.g. after it `failed`); the
/// receiver sees the same event id.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{event}/redeliver", tag = "webhooks",
    params(("id" = String, Path), ("event" = String, Path, description = "The event id")),
    responses((status = 202), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, event)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    svc::redeliver(&state, &auth.0, &id, &event).await?;
    Ok(StatusCode::ACCEPTED)
}
