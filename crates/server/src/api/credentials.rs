//! Credential endpoints. Values never leave through here: GET shows non-secret fields in
//! clear and secret fields as the mask; versions show metadata only.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::{format_rfc3339, Credential, CredentialVersion};
use patchbay_core::ErrorCode;
use patchbay_store::CredentialUse;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{etag, if_match};
use crate::auth::Auth;
use crate::body::JsonObject;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::connections::MASK;
use crate::service::credentials as svc;
use crate::state::AppState;

/// A credential, masked: non-secret fields in clear, each set secret field as `********`.
#[derive(Serialize, ToSchema)]
pub struct CredentialOut {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    /// The connection whose inline secrets this credential holds; `null` for a shared one.
    pub owner_connection_id: Option<String>,
    /// The external secret manager reference, when the values live there.
    #[schema(value_type = Option<Object>)]
    pub external: Option<Value>,
    /// Fields of the current version.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    pub current_version: i64,
    /// Bumped by every change; the ETag.
    pub revision: i64,
    /// The provisioning file that manages it (read-only through the API); `null` otherwise.
    pub provisioned: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Credential> for CredentialOut {
    fn from(c: Credential) -> Self {
        let mut fields = c.public_fields;
        for f in c.secret_fields {
            fields.insert(f, Value::String(MASK.into()));
        }
        Self {
            provisioned: c.provisioned,
            id: c.id,
            workspace_id: c.workspace_id,
            name: c.name,
            kind: c.kind,
            description: c.description,
            owner_connection_id: c.owner_connection_id,
            external: c.external,
            fields,
            current_version: c.current_version,
            revision: c.revision,
            created_at: format_rfc3339(c.created_at),
            updated_at: format_rfc3339(c.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CredentialList {
    pub items: Vec<CredentialOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionOut {
    pub version: i64,
    /// current, previous (usable until `usable_until`), revoked or destroyed.
    pub state: &'static str,
    /// Names of the secret fields set in this version (never values).
    pub secret_fields: Vec<String>,
    pub created_at: String,
    pub created_by: String,
    pub usable_until: Option<String>,
    pub revoked_at: Option<String>,
    pub destroyed_at: Option<String>,
}

impl From<CredentialVersion> for VersionOut {
    fn from(v: CredentialVersion) -> Self {
        Self {
            version: v.version,
            state: v.state.as_str(),
            secret_fields: v.secret_fields,
            created_at: format_rfc3339(v.created_at),
            created_by: v.created_by,
            usable_until: v.grace_until.map(format_rfc3339),
            revoked_at: v.revoked_at.map(format_rfc3339),
            destroyed_at: v.destroyed_at.map(format_rfc3339),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub items: Vec<VersionOut>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageOut {
    pub connection_id: String,
    pub connection_name: String,
    pub project_id: String,
    /// Pinned version, or `null` when the connection follows the current version.
    pub version: Option<i64>,
    pub last_used_at: Option<String>,
    pub last_used_by: Option<String>,
}

impl From<CredentialUse> for UsageOut {
    fn from(u: CredentialUse) -> Self {
        Self {
            connection_id: u.connection_id,
            connection_name: u.connection_name,
            project_id: u.project_id,
            version: u.pinned_version,
            last_used_at: u.last_used_at.map(format_rfc3339),
            last_used_by: u.last_used_by,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UsageList {
    pub items: Vec<UsageOut>,
}

/// Documents the create body (read field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CredentialInput {
    /// Unique in the workspace; `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// A credential kind id (GET /api/v1/credential-kinds).
    kind: String,
    description: Option<String>,
    /// The kind's fields, secret and not (e.g. username and password).
    #[schema(value_type = Option<Object>)]
    secrets: Option<Map<String, Value>>,
    /// Instead of `secrets`: `{provider: vault_kv2, address, mount?, path, key?, version?,
    /// namespace?, auth?}` or `{provider: aws_secrets_manager, secret_id, key?, version_id?,
    /// version_stage?, region?, endpoint?}`.
    #[schema(value_type = Option<Object>)]
    external: Option<Value>,
}

fn respond(status: StatusCode, c: Credential) -> Response {
    let rev = c.revision;
    let mut resp = (status, Json(CredentialOut::from(c))).into_response();
    resp.headers_mut().insert(header::ETAG, etag(rev));
    resp
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/credentials", tag = "credentials",
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
        ("owned" = Option<bool>, Query, description = "Include connections' own credentials (default false)")),
    responses((status = 200, body = CredentialList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<CredentialList>> {
    let Query(mut q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let (limit, after) = super::page_params(&mut q)?;
    let owned = match q.remove("owned").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidQuery,
                "owned",
                "owned must be true or false",
            ))
        }
    };
    let page = svc::list(&state, &auth.0, &ws, owned, limit, after.as_deref()).await?;
    Ok(Json(CredentialList {
        next_cursor: page.more_after.map(|n| super::cursor(&n)),
        items: page.items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/credentials", tag = "credentials",
    params(("ws" = String, Path, description = "Workspace id or name")),
    request_body = CredentialInput,
    responses((status = 201, body = CredentialOut), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let c = svc::create(&state, &auth.0, &ws, body).await?;
    let location = format!("/api/v1/credentials/{}", c.id);
    Ok(super::located(respond(StatusCode::CREATED, c), &location))
}

#[utoipa::path(get, path = "/api/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path)),
    responses((status = 200, body = CredentialOut), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = svc::load(&state, &auth.0, &id).await?;
    Ok(respond(StatusCode::OK, c))
}

#[utoipa::path(patch, path = "/api/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path), ("If-Match" = String, Header, description = "ETag (revision)")),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "name, description"),
    responses((status = 200, body = CredentialOut), (status = 412, body = ErrorBody),
        (status = 428, body = ErrorBody)),
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
    Ok(respond(StatusCode::OK, c))
}

#[utoipa::path(delete, path = "/api/v1/credentials/{id}", tag = "credentials",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "in_use: details.connections lists the users")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = if_match(&headers, false)?.flatten();
    svc::delete(&state, &auth.0, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/credentials/{id}/versions", tag = "credentials",
    params(("id" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn versions(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<VersionList>> {
    let items = svc::versions(&state, &auth.0, &id).await?;
    Ok(Json(VersionList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/versions", tag = "credentials",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Optional ETag (revision)")),
    request_body(content = Object, description = "{secrets: {...}}: fields sent replace, null clears, omitted keep"),
    responses((status = 201, body = CredentialOut, description = "The new version is current"),
        (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let expected = if_match(&headers, false)?.flatten();
    let c = svc::rotate(&state, &auth.0, &id, expected, body).await?;
    Ok(respond(StatusCode::CREATED, c))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/versions/{version}/revoke", tag = "credentials",
    params(("id" = String, Path), ("version" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The current version, or already revoked/destroyed")),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let version = version
        .parse::<i64>()
        .map_err(|_| ApiError::not_found("credential version"))?;
    svc::revoke(&state, &auth.0, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/credentials/{id}/usage", tag = "credentials",
    params(("id" = String, Path)),
    responses((status = 200, body = UsageList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<UsageList>> {
    let items = svc::usage(&state, &auth.0, &id).await?;
    Ok(Json(UsageList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    pub access_token: String,
    pub token_type: String,
    /// When it expires, if the token server said.
    pub expires_at: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/token", tag = "credentials",
    params(("id" = String, Path)),
    request_body(content = Option<Object>, description = "Optional {rejected: \"<token>\"}: the token an API answered 401 to; forces a refresh"),
    responses((status = 200, body = TokenOut, description = "A valid access token (Cache-Control: no-store; audited)"),
        (status = 409, body = ErrorBody, description = "Not an oauth2 credential"),
        (status = 424, body = ErrorBody, description = "The token server refused"),
        (status = 502, body = ErrorBody, description = "The token server is unreachable")),
    security(("bearer" = [])))]
pub async fn token(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    crate::body::OptionalJsonObject(body): crate::body::OptionalJsonObject,
) -> ApiResult<Response> {
    let rejected = match body {
        None => None,
        Some(b) => {
            let mut f = crate::body::Fields::new(b, &["rejected"], &[])?;
            f.optional_string("rejected")?
                .map(patchbay_crypto::SecretString::new)
        }
    };
    let t = crate::service::oauth::access_token(&state, &auth.0, &id, rejected).await?;
    let out = TokenOut {
        // The one place an access token is written into a response.
        access_token: t.token.expose_secret().to_owned(),
        token_type: t.token_type.clone(),
        expires_at: t.expires_at_ms.map(format_rfc3339),
    };
    Ok(super::no_store(Json(out).into_response()))
}
