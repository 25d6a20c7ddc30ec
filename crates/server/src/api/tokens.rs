//! API tokens and runner tokens. The secret is in the create response only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_store::TokenRecord;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::body::{JsonObject, OptionalJsonObject};
use crate::error::{ApiResult, ErrorBody};
use crate::service::tokens::{self as svc, Minted};
use crate::state::AppState;

/// A token's metadata; never the token.
#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    pub id: String,
    pub name: String,
    /// personal, runner or agent (an agent token: see GET /api/v1/zones/{id}).
    pub kind: String,
    /// The one workspace it reaches, or null for every workspace its permissions allow.
    pub workspace_id: Option<String>,
    pub permissions: Vec<String>,
    pub created_by: Option<String>,
    /// The user it belongs to; it never does more than that user's roles allow.
    pub user_id: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<TokenRecord> for TokenOut {
    fn from(t: TokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            kind: t.kind,
            workspace_id: t.workspace_id,
            permissions: t
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            created_by: t.created_by,
            user_id: t.user_id,
            created_at: format_rfc3339(t.created_at),
            expires_at: t.expires_at.map(format_rfc3339),
            last_used_at: t.last_used_at.map(format_rfc3339),
            revoked_at: t.revoked_at.map(format_rfc3339),
        }
    }
}

/// A new token: the secret `token` appears here and nowhere else, ever.
#[derive(Serialize, ToSchema)]
pub struct MintedOut {
    pub token: String,
    #[serde(flatten)]
    pub meta: TokenOut,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenOut>,
}

fn minted(m: Minted) -> Response {
    let out = MintedOut {
        // The one place a token secret is written into a response.
        token: m.token.expose_secret().to_owned(),
        meta: m.record.into(),
    };
    super::no_store((StatusCode::CREATED, Json(out)).into_response())
}

/// Documents the API token body (read field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenInput {
    /// `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Seconds until it expires, 60 to ten years; none: it does not expire.
    #[schema(minimum = 60, maximum = 315_360_000)]
    expires_in: Option<i64>,
    /// Limits the token to one workspace (a workspace-scoped caller's own by default).
    workspace_id: Option<String>,
    /// A subset of the caller's permissions; none: all of them.
    permissions: Option<Vec<String>>,
}

/// Documents the runner token body (optional).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RunnerTokenInput {
    /// Seconds the token lives: default 900, at most 3600.
    #[schema(minimum = 1, maximum = 3600)]
    ttl_seconds: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = TokenInput,
    responses((status = 201, body = MintedOut, description = "The token is shown this once"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    Ok(minted(svc::create(&state, &auth.0, body).await?))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList, description = "The caller's own token, those it minted; every token for an instance administrator")),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<TokenList>> {
    let items = svc::list(&state, &auth.0).await?;
    Ok(Json(TokenList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 204, description = "Revoked: the next request with it answers 401"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc::revoke(&state, &auth.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runner-tokens", tag = "tokens",
    params(("ws" = String, Path, description = "Workspace id or name")),
    request_body(content = Option<RunnerTokenInput>, description = "Optional"),
    responses((status = 201, body = MintedOut, description = "A token for one workspace: connections:resolve and connections:test only"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_runner(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    OptionalJsonObject(body): OptionalJsonObject,
) -> ApiResult<Response> {
    Ok(minted(
        svc::create_runner(&state, &auth.0, &ws, body).await?,
    ))
}
