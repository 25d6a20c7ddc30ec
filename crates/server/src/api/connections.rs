//! Connection endpoints. Handlers extract, call `service::connections`, shape the response.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::{format_rfc3339, Connection};
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{etag, if_match};
use crate::auth::Auth;
use crate::body::JsonObject;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::connections::{self as svc, ListFilter, ListQuery, MASK};
use crate::state::AppState;

/// A connection as the API shows it. `secrets` has a key for every secret field of the
/// type: `null` when unset (and always in lists), the mask when set but not revealed, the
/// value only for principals with connections:reveal on a single GET.
#[derive(Serialize, ToSchema)]
pub struct ConnectionOut {
    pub id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub connector_type: String,
    pub category: String,
    pub description: String,
    pub environment: Option<String>,
    /// The network zone whose agents test the connection; `null`: the server tests it.
    pub zone: Option<String>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    #[schema(value_type = Object)]
    pub secrets: Map<String, Value>,
    pub secrets_set: Vec<String>,
    /// The credential the secrets come from; `null` when the connection has no secrets.
    pub credential: Option<CredentialRefOut>,
    /// How many dependents (pipelines, datasets, …) are registered on the connection.
    pub dependents_count: i64,
    /// The provisioning file that manages it (read-only through the API); `null` otherwise.
    pub provisioned: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A connection's credential: its own (`owned`, holding the inline secrets) or a shared one.
#[derive(Serialize, ToSchema)]
pub struct CredentialRefOut {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub owned: bool,
    /// The pinned version, or `null` when the connection follows the current version.
    pub version: Option<i64>,
    pub current_version: i64,
    pub external: bool,
}

enum SecretView {
    /// Lists: every secret field null (seed 001's list rule).
    Null,
    Masked,
    Revealed(BTreeMap<String, SecretString>),
}

impl ConnectionOut {
    fn new(state: &AppState, mut c: Connection, view: SecretView) -> Self {
        let ty = state.catalog.get(&c.connector_type);
        if let (Some(ty), Some(cred)) = (ty, &c.credential) {
            c.secrets_set = crate::service::connection_secrets::provided_secrets(state, ty, cred);
        }
        let mut secrets = Map::new();
        for field in ty.into_iter().flat_map(|t| t.secret_fields()) {
            let set = c.secrets_set.iter().any(|s| s == field);
            let v = match (&view, set) {
                (_, false) | (SecretView::Null, _) => Value::Null,
                (SecretView::Masked, true) => Value::String(MASK.into()),
                // The one place a stored secret is written into a response.
                (SecretView::Revealed(values), true) => values
                    .get(field)
                    .map(|s| Value::String(s.expose_secret().to_owned()))
                    .unwrap_or(Value::Null),
            };
            secrets.insert(field.to_owned(), v);
        }
        Self {
            category: ty.map(|t| t.category.clone()).unwrap_or_default(),
            id: c.id,
            workspace_id: c.workspace_id,
            project_id: c.project_id,
            name: c.name,
            connector_type: c.connector_type,
            description: c.description,
            environment: c.environment,
            zone: c.zone,
            tags: c.tags,
            settings: c.settings,
            secrets,
            secrets_set: c.secrets_set,
            credential: c.credential.map(|k| CredentialRefOut {
                id: k.id,
                name: k.name,
                kind: k.kind,
                owned: k.owned,
                version: k.pinned_version,
                current_version: k.current_version,
                external: k.external,
            }),
            dependents_count: c.dependents_count,
            provisioned: c.provisioned,
            version: c.version,
            created_at: format_rfc3339(c.created_at),
            updated_at: format_rfc3339(c.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionList {
    pub items: Vec<ConnectionOut>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Documents the create/replace body (the server reads it field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConnectionInput {
    /// Unique in the project; `[a-z0-9][a-z0-9._-]{0,62}`, e.g. `prod-postgres-finance`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Connector type id from the catalog.
    #[schema(rename = "type")]
    connector_type: String,
    description: Option<String>,
    /// prod, staging, dev, …
    environment: Option<String>,
    tags: Option<Vec<String>>,
    /// Non-secret settings, checked against the type's schema.
    #[schema(value_type = Object)]
    settings: Option<Map<String, Value>>,
    /// Secret fields: a string sets, `null` clears, the mask `********` keeps. Stored as a
    /// credential owned by the connection.
    #[schema(value_type = Object)]
    secrets: Option<Map<String, Value>>,
    /// Instead of `secrets`: a shared credential, `{"id": …}` or `{"name": …}`, with
    /// `"version": n` to pin one version. `null` detaches it.
    #[schema(value_type = Option<Object>)]
    credential: Option<Value>,
    /// A network zone of the workspace (by name): its agents test the connection on the
    /// workers' network path. `null` or absent: the server tests it. Drafts cannot name one.
    zone: Option<String>,
}

fn with_etag(status: StatusCode, out: ConnectionOut, revealed: bool) -> Response {
    let version = out.version;
    let mut resp = (status, Json(out)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(version));
    if revealed {
        return super::no_store(resp);
    }
    resp
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/connections", tag = "connections",
    params(("project" = String, Path, description = "Project id"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-500 (default 100)"),
        ("cursor" = Option<String>, Query, description = "From the previous page's next_cursor"),
        ("type" = Option<String>, Query), ("category" = Option<String>, Query),
        ("environment" = Option<String>, Query), ("tag" = Option<String>, Query),
        ("name" = Option<String>, Query, description = "Exact name"),
        ("q" = Option<String>, Query, description = "Substring of name or description")),
    responses((status = 200, body = ConnectionList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ConnectionList>> {
    let Query(mut q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let (limit, after) = super::page_params(&mut q)?;
    let filter = ListFilter {
        connector_type: q.remove("type"),
        category: q.remove("category"),
        environment: q.remove("environment"),
        tag: q.remove("tag"),
        name: q.remove("name"),
        q: q.remove("q"),
    };
    let page = svc::list(
        &state,
        &auth.0,
        &project,
        ListQuery {
            filter,
            limit,
            after,
        },
    )
    .await?;
    Ok(Json(ConnectionList {
        next_cursor: page.more_after.map(|n| super::cursor(&n)),
        items: page
            .items
            .into_iter()
            .map(|c| ConnectionOut::new(&state, c, SecretView::Null))
            .collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/connections", tag = "connections",
    params(("project" = String, Path, description = "Project id")),
    request_body = ConnectionInput,
    responses((status = 201, body = ConnectionOut, description = "Created; Location and ETag headers set"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let c = svc::create(&state, &auth.0, &project, body).await?;
    let location = format!("/api/v1/connections/{}", c.id);
    let resp = with_etag(
        StatusCode::CREATED,
        ConnectionOut::new(&state, c, SecretView::Masked),
        false,
    );
    Ok(super::located(resp, &location))
}

#[utoipa::path(get, path = "/api/v1/connections/{id}", tag = "connections",
    params(("id" = String, Path),
        ("reveal" = Option<bool>, Query, description = "Default true: principals with connections:reveal get secrets in full (audited); false masks them")),
    responses((status = 200, body = ConnectionOut, description = "Secrets in full with connections:reveal (audited), masked otherwise"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let reveal = match q.get("reveal").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidQuery,
                "reveal",
                "reveal must be true or false",
            ))
        }
    };
    let c = svc::load(&state, &auth.0, &id).await?;
    if reveal
        && auth
            .0
            .can_in(&c.workspace_id, Permission::ConnectionsReveal)
    {
        let values = svc::reveal(&state, &auth.0, &c).await?;
        Ok(with_etag(
            StatusCode::OK,
            ConnectionOut::new(&state, c, SecretView::Revealed(values)),
            true,
        ))
    } else {
        Ok(with_etag(
            StatusCode::OK,
            ConnectionOut::new(&state, c, SecretView::Masked),
            false,
        ))
    }
}

#[utoipa::path(put, path = "/api/v1/connections/{id}", tag = "connections",
    params(("id" = String, Path), ("If-Match" = String, Header, description = "ETag of the version being replaced")),
    request_body = ConnectionInput,
    responses((status = 200, body = ConnectionOut), (status = 412, body = ErrorBody), (status = 428, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn replace(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let expected = if_match(&headers, true)?.flatten();
    let c = svc::replace(&state, &auth.0, &id, expected, body).await?;
    Ok(with_etag(
        StatusCode::OK,
        ConnectionOut::new(&state, c, SecretView::Masked),
        false,
    ))
}

#[utoipa::path(patch, path = "/api/v1/connections/{id}", tag = "connections",
    params(("id" = String, Path), ("If-Match" = String, Header, description = "ETag of the version being changed")),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "RFC 7396 merge patch over name, description, environment, tags, settings, secrets"),
    responses((status = 200, body = ConnectionOut), (status = 412, body = ErrorBody), (status = 428, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let expected = if_match(&headers, true)?.flatten();
    let c = svc::patch(&state, &auth.0, &id, expected, body).await?;
    Ok(with_etag(
        StatusCode::OK,
        ConnectionOut::new(&state, c, SecretView::Masked),
        false,
    ))
}

/// Deletes a connection. One with registered dependents answers 409 `has_dependents`
/// (listed in `details.dependents`) unless `cascade` names them all; the cascaded
/// registrations go with it, each as a `dependent.cascade_deleted` event.
#[utoipa::path(delete, path = "/api/v1/connections/{id}", tag = "connections",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Optional: delete only this version"),
        ("cascade" = Option<String>, Query, description = "`all`, or `kind/ref,kind/ref`: the dependents to delete with the connection (every one it has)")),
    responses((status = 204), (status = 400, body = ErrorBody, description = "cascade malformed or naming an unregistered dependent"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "has_dependents: details.dependents lists those not chosen"),
        (status = 412, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let cascade = crate::service::dependents::parse_cascade(q.get("cascade").map(String::as_str))?;
    let expected = if_match(&headers, false)?.flatten();
    svc::delete(&state, &auth.0, &id, expected, cascade).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tests a saved connection stage by stage (resolve, dns, tcp, tls, auth, query,
/// permissions) through the server's network guard. A failing test is still a 200 with
/// `ok: false`, the failed stage, an error class and a hint.
#[utoipa::path(post, path = "/api/v1/connections/{id}/test", tag = "connections",
    params(("id" = String, Path, description = "Connection id")),
    responses(
        (status = 200, description = "`{ok, duration_ms, stages: [{stage, status, duration_ms, detail}], error?: {stage, class, message, hint}, server?: {product, version}, warnings}`", body = Object),
        (status = 400, body = ErrorBody, description = "The settings cannot describe a target (URL with credentials, scheme the type does not declare)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "rate_limited: per-principal limit or concurrency cap")),
    security(("bearer" = [])))]
pub async fn test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<patchbay_probe::ProbeResult>> {
    Ok(Json(
        crate::service::probes::test_saved(&state, &auth.0, &id).await?,
    ))
}

/// Tests a draft connection: the body of a create (inline `secrets` or a shared
/// `credential`), validated the same way; nothing is stored.
#[utoipa::path(post, path = "/api/v1/projects/{project}/connections/test", tag = "connections",
    params(("project" = String, Path, description = "Project id")),
    request_body = ConnectionInput,
    responses(
        (status = 200, description = "The staged result, as for a saved connection", body = Object),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn test_draft(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<patchbay_probe::ProbeResult>> {
    Ok(Json(
        crate::service::probes::test_draft(&state, &auth.0, &project, body).await?,
    ))
}

/// One stored test result.
#[derive(Serialize, ToSchema)]
pub struct TestRecordOut {
    pub at: String,
    pub ok: bool,
    /// The result as `POST …/test` answered it.
    #[schema(value_type = Object)]
    pub result: Value,
}

#[derive(Serialize, ToSchema)]
pub struct TestHistoryOut {
    /// Newest first: the first item is the connection's last test; at most 20 are kept.
    pub items: Vec<TestRecordOut>,
}

/// The connection's last test results (at most 20, newest first).
#[utoipa::path(get, path = "/api/v1/connections/{id}/tests", tag = "connections",
    params(("id" = String, Path, description = "Connection id")),
    responses((status = 200, body = TestHistoryOut), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn test_history(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<TestHistoryOut>> {
    let items = crate::service::probes::history(&state, &auth.0, &id)
        .await?
        .into_iter()
        .map(|r| TestRecordOut {
            at: format_rfc3339(r.at),
            ok: r.ok,
            result: r.result,
        })
        .collect();
    Ok(Json(TestHistoryOut { items }))
}
