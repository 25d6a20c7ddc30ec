//! Network zones, agent tokens, and the agent protocol (claim, result). Thin: the logic
//! is in `service::zones` and `service::agents`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::format_rfc3339;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::tokens::TokenOut;
use crate::auth::Auth;
use crate::body::{JsonObject, OptionalJsonObject};
use crate::error::{ApiResult, ErrorBody};
use crate::service::agents::{self, Claimed};
use crate::service::zones::{self as svc, ZoneView};
use crate::state::AppState;

/// An agent of a zone as its zone shows it.
#[derive(Serialize, ToSchema)]
pub struct AgentOut {
    pub id: String,
    pub name: String,
    /// The agent's token (revoke it with DELETE /api/v1/tokens/{id}).
    pub token_id: String,
    /// patchbay version the agent reported.
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub last_seen_at: Option<String>,
    /// Since when it calls in without a gap longer than the health window.
    pub connected_since: Option<String>,
    /// Seen within twice the long-poll time, and its token not revoked.
    pub healthy: bool,
    pub revoked: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ZoneConnectionOut {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ZoneOut {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
    /// At least one agent is healthy: tests of the zone's connections can run.
    pub healthy: bool,
    pub agents: Vec<AgentOut>,
    /// Connections that name the zone.
    pub connections: Vec<ZoneConnectionOut>,
}

impl From<ZoneView> for ZoneOut {
    fn from(v: ZoneView) -> Self {
        let agents: Vec<AgentOut> = v
            .agents
            .iter()
            .map(|a| AgentOut {
                healthy: v.agent_healthy(a),
                id: a.id.clone(),
                name: a.name.clone(),
                token_id: a.token_id.clone(),
                version: a.version.clone(),
                hostname: a.hostname.clone(),
                last_seen_at: a.last_seen_at.map(format_rfc3339),
                connected_since: a.connected_since.map(format_rfc3339),
                revoked: a.revoked,
            })
            .collect();
        Self {
            healthy: agents.iter().any(|a| a.healthy),
            id: v.zone.id,
            workspace_id: v.zone.workspace_id,
            name: v.zone.name,
            description: v.zone.description,
            created_at: format_rfc3339(v.zone.created_at),
            agents,
            connections: v
                .connections
                .into_iter()
                .map(|(id, name)| ZoneConnectionOut { id, name })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ZoneList {
    pub items: Vec<ZoneOut>,
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/zones", tag = "zones",
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = ZoneList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
) -> ApiResult<Json<ZoneList>> {
    let items = svc::list(&state, &auth.0, &ws).await?;
    Ok(Json(ZoneList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Documents the zone body (read field by field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ZoneInput {
    /// Unique in the workspace; `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    description: Option<String>,
}

/// Documents the agent token body (optional).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AgentTokenInput {
    /// The agent's name, unique in the zone; `[a-z0-9][a-z0-9._-]{0,62}` (default
    /// `agent-<id>`).
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/zones", tag = "zones",
    params(("ws" = String, Path, description = "Workspace id or name")),
    request_body = ZoneInput,
    responses((status = 201, body = ZoneOut), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "name_taken")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let z: ZoneOut = svc::create(&state, &auth.0, &ws, body).await?.into();
    let location = format!("/api/v1/zones/{}", z.id);
    Ok(super::located(
        (StatusCode::CREATED, Json(&z)).into_response(),
        &location,
    ))
}

#[utoipa::path(get, path = "/api/v1/zones/{id}", tag = "zones",
    params(("id" = String, Path, description = "Zone id")),
    responses((status = 200, body = ZoneOut), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ZoneOut>> {
    Ok(Json(svc::get(&state, &auth.0, &id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/zones/{id}", tag = "zones",
    params(("id" = String, Path, description = "Zone id")),
    responses((status = 204, description = "Deleted; its agents' tokens are revoked"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "zone_in_use: connections name it")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc::delete(&state, &auth.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new agent token: `token` appears here and nowhere else, ever.
#[derive(Serialize, ToSchema)]
pub struct AgentTokenOut {
    pub token: String,
    pub zone: String,
    pub agent: AgentOut,
    #[serde(rename = "token_meta")]
    pub meta: TokenOut,
}

#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/zones/{zone}/agent-tokens", tag = "zones",
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("zone" = String, Path, description = "Zone id or name")),
    request_body(content = Option<AgentTokenInput>, description = "Optional"),
    responses((status = 201, body = AgentTokenOut, description = "The token is shown this once; it calls the agent endpoints of this zone and nothing else"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "name_taken")),
    security(("bearer" = [])))]
pub async fn create_agent_token(
    State(state): State<AppState>,
    auth: Auth,
    Path((ws, zone)): Path<(String, String)>,
    OptionalJsonObject(body): OptionalJsonObject,
) -> ApiResult<Response> {
    let m = svc::create_agent_token(&state, &auth.0, &ws, &zone, body).await?;
    let out = AgentTokenOut {
        // The one place an agent token's secret is written into a response.
        token: m.token.expose_secret().to_owned(),
        zone: m.zone.name,
        agent: AgentOut {
            healthy: false,
            id: m.agent.id,
            name: m.agent.name,
            token_id: m.agent.token_id,
            version: None,
            hostname: None,
            last_seen_at: None,
            connected_since: None,
            revoked: false,
        },
        meta: m.record.into(),
    };
    Ok(super::no_store(
        (StatusCode::CREATED, Json(out)).into_response(),
    ))
}

/// A job for the agent: the material of its one test.
#[derive(Serialize, ToSchema)]
pub struct ClaimOut {
    pub job_id: String,
    pub connection_id: String,
    pub connection_name: String,
    /// Connector type id (the agent has the same catalog compiled in).
    #[serde(rename = "type")]
    pub connector_type: String,
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    /// Secret values by field name, for this one test only.
    #[schema(value_type = Object)]
    pub secrets: Map<String, Value>,
    /// Milliseconds left to run the test and report.
    pub deadline_ms: u64,
}

impl From<Claimed> for ClaimOut {
    fn from(c: Claimed) -> Self {
        Self {
            job_id: c.job_id,
            connection_id: c.connection.id,
            connection_name: c.connection.name,
            connector_type: c.connection.connector_type,
            settings: c.settings,
            // The one place a job's secrets are written into a response (to its agent).
            secrets: c
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned())))
                .collect(),
            deadline_ms: c.deadline_ms,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/agent/claim", tag = "agent",
    request_body(content = Option<Object>, description = "{version?, hostname?}: what the agent reports about itself"),
    responses((status = 200, body = ClaimOut, description = "A job with its material (Cache-Control: no-store)"),
        (status = 204, description = "No job within the long-poll time (PATCHBAY_AGENT_POLL, default 25 s); call again"),
        (status = 403, body = ErrorBody, description = "Not an agent token")),
    security(("bearer" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    auth: Auth,
    OptionalJsonObject(body): OptionalJsonObject,
) -> ApiResult<Response> {
    match agents::claim(&state, &auth.0, body).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(c) => Ok(super::no_store(Json(ClaimOut::from(c)).into_response())),
    }
}

#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/result", tag = "agent",
    params(("id" = String, Path, description = "Job id from the claim")),
    request_body(content = Object, description = "The test result: {ok, duration_ms, stages, error?, server?, warnings}, at most 64 KiB"),
    responses((status = 204, description = "Recorded for the waiting test"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "agent_job_closed: expired or not this agent's")),
    security(("bearer" = [])))]
pub async fn result(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<StatusCode> {
    agents::report(&state, &auth.0, &id, Value::Object(body)).await?;
    Ok(StatusCode::NO_CONTENT)
}
