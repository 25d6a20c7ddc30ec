//! Network zones (issue 7, "agents"): a named network of a workspace (a VPC, a VPN, a
//! private link) whose connections are tested by agents running inside it. A zone shows
//! its agents with their health and the connections that name it. Agent tokens are minted
//! here, one agent identity each.

use std::time::Duration;

use patchbay_core::model::Principal;
use patchbay_core::names::{check_description, check_name};
use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_core::ErrorCode;
use patchbay_crypto::{generate_token, hash_token, SecretString};
use patchbay_store::{
    new_id, now_millis, AgentRecord, NewToken, StoreError, TokenRecord, ZoneRecord,
};
use serde_json::{json, Map, Value};

use super::tokens::AGENT;
use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A zone with what its page shows.
pub struct ZoneView {
    pub zone: ZoneRecord,
    pub agents: Vec<AgentRecord>,
    pub connections: Vec<(String, String)>,
    /// An agent is healthy when it called in within this window (2× the long-poll time).
    pub health_window: Duration,
}

impl ZoneView {
    pub fn agent_healthy(&self, a: &AgentRecord) -> bool {
        healthy(a.last_seen_at, a.revoked, self.health_window)
    }
}

pub fn healthy(last_seen_at: Option<i64>, revoked: bool, window: Duration) -> bool {
    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    !revoked && last_seen_at.is_some_and(|t| now_millis() - t <= window)
}

/// How long an agent may be silent and still count as healthy.
pub fn health_window(state: &AppState) -> Duration {
    state.settings.probes.agent_poll * 2
}

async fn view(state: &AppState, zone: ZoneRecord) -> ApiResult<ZoneView> {
    Ok(ZoneView {
        agents: state.store.zone_agents(&zone.id).await?,
        connections: state.store.zone_connections(&zone).await?,
        zone,
        health_window: health_window(state),
    })
}

/// A zone the principal sees (404 otherwise), by id.
async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<ZoneRecord> {
    match state.store.get_zone(id).await {
        Ok(z) if p.sees_workspace(&z.workspace_id) => Ok(z),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("zone")),
        Err(e) => Err(e.into()),
    }
}

/// A zone of a workspace by id or name (404 otherwise).
async fn in_workspace(state: &AppState, workspace_id: &str, zone: &str) -> ApiResult<ZoneRecord> {
    let found = match state.store.get_zone(zone).await {
        Ok(z) if z.workspace_id == workspace_id => Ok(z),
        Ok(_) | Err(StoreError::NotFound) => state.store.zone_by_name(workspace_id, zone).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(z) => Ok(z),
        Err(StoreError::NotFound) => Err(ApiError::not_found("zone")),
        Err(e) => Err(e.into()),
    }
}

pub async fn list(state: &AppState, p: &Principal, ws: &str) -> ApiResult<Vec<ZoneView>> {
    let ws = workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::ConnectionsRead)?;
    let mut out = vec![];
    for z in state.store.list_zones(&ws.id).await? {
        out.push(view(state, z).await?);
    }
    Ok(out)
}

pub async fn get(state: &AppState, p: &Principal, id: &str) -> ApiResult<ZoneView> {
    let z = find(state, p, id).await?;
    require_in(p, &z.workspace_id, Permission::ConnectionsRead)?;
    view(state, z).await
}

/// POST /api/v1/workspaces/{ws}/zones: `{name, description?}`.
pub async fn create(
    state: &AppState,
    p: &Principal,
    ws: &str,
    body: Map<String, Value>,
) -> ApiResult<ZoneView> {
    let ws = workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    let mut f = Fields::new(body, &["name", "description"], &[])?;
    let name = f.required_string("name")?;
    check_name("/name", &name)?;
    let description = f.optional_string("description")?.unwrap_or_default();
    check_description("/description", &description)?;
    let zone = ZoneRecord {
        id: new_id(),
        workspace_id: ws.id.clone(),
        name,
        description,
        created_at: now_millis(),
    };
    let entry = audit(
        p,
        "zone.create",
        Some(&ws.id),
        "zone",
        &zone.id,
        json!({"name": zone.name}),
    );
    state.store.create_zone(&zone, &entry).await?;
    view(state, zone).await
}

/// Deletes a zone that no connection names; its agents' tokens are revoked with it.
pub async fn delete(state: &AppState, p: &Principal, id: &str) -> ApiResult<()> {
    let z = find(state, p, id).await?;
    require_in(p, &z.workspace_id, Permission::WorkspaceAdmin)?;
    let entry = audit(
        p,
        "zone.delete",
        Some(&z.workspace_id),
        "zone",
        &z.id,
        json!({"name": z.name}),
    );
    match state.store.delete_zone(&z, &entry).await {
        Ok(()) => Ok(()),
        Err(StoreError::InUse(users)) => {
            let mut err = patchbay_core::Error::new(
                ErrorCode::ZoneInUse,
                format!(
                    "{} connection(s) name this zone; move them to another zone or none first",
                    users.len()
                ),
            );
            err.details = Some(Box::new(json!({
                "connections": users
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect::<Vec<_>>()
            })));
            Err(ApiError(err))
        }
        Err(e) => Err(e.into()),
    }
}

/// An agent token just minted: the secret is shown this once.
pub struct MintedAgent {
    pub agent: AgentRecord,
    pub zone: ZoneRecord,
    pub record: TokenRecord,
    pub token: SecretString,
}

/// POST /api/v1/workspaces/{ws}/zones/{zone}/agent-tokens: `{name?}`. The token carries no
/// permission at all: the route table lets it call the agent endpoints of its zone only.
pub async fn create_agent_token(
    state: &AppState,
    p: &Principal,
    ws: &str,
    zone: &str,
    body: Option<Map<String, Value>>,
) -> ApiResult<MintedAgent> {
    let ws = workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    let zone = in_workspace(state, &ws.id, zone).await?;
    let agent_id = new_id();
    let name = match body {
        None => None,
        Some(b) => Fields::new(b, &["name"], &[])?.optional_string("name")?,
    }
    .unwrap_or_else(|| format!("agent-{}", &agent_id[24..]));
    check_name("/name", &name)?;
    let token = generate_token();
    let token_id = new_id();
    let entry = audit(
        p,
        "agent.token_create",
        Some(&ws.id),
        "zone",
        &zone.id,
        json!({"zone": zone.name, "agent": {"id": agent_id, "name": name}, "token_id": token_id}),
    );
    let new = NewToken {
        id: token_id.clone(),
        name: format!("agent:{}:{}", zone.name, name),
        token_hash: hash_token(token.expose_secret()),
        workspace_id: Some(ws.id.clone()),
        permissions: PermissionSet::default(),
        expires_at: None,
        kind: AGENT.into(),
        created_by: Some(p.actor()),
        user_id: None,
    };
    state
        .store
        .create_agent(&new, &agent_id, &zone.id, &name, &entry)
        .await?;
    Ok(MintedAgent {
        agent: state.store.agent_by_token(&token_id).await?,
        record: state.store.get_token(&token_id).await?,
        zone,
        token,
    })
}

/// Checks a connection's `zone` member: a zone name of the workspace (or null for none).
pub async fn check_zone(state: &AppState, workspace_id: &str, zone: Option<&str>) -> ApiResult<()> {
    let Some(name) = zone else { return Ok(()) };
    match state.store.zone_by_name(workspace_id, name).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound) => Err(ApiError::field(
            ErrorCode::UnknownZone,
            "/zone",
            "no network zone of this name in the connection's workspace",
        )),
        Err(e) => Err(e.into()),
    }
}
