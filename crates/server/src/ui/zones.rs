//! Network zones and their agents (docs/agents.md): the zones of a workspace with each
//! agent's health, create and delete a zone, issue an agent token (shown once, on the
//! answer to the form that minted it).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Workspace;
use patchbay_core::permission::Permission;
use serde_json::{Map, Value};

use super::form::{pairs, Posted};
use super::page::{ago, render_status, Chrome, Confirm, Ui};
use crate::error::{ApiError, ApiResult};
use crate::service::{workspaces, zones};
use crate::state::AppState;

struct AgentRow {
    name: String,
    last_seen: String,
    /// healthy | unhealthy | revoked
    health: &'static str,
}

struct ZoneRow {
    id: String,
    name: String,
    description: String,
    agents: Vec<AgentRow>,
    connections: usize,
}

/// An agent token just issued: shown on this one answer.
#[derive(Default)]
struct Minted {
    zone: String,
    agent: String,
    token: String,
}

#[derive(Template)]
#[template(path = "zones.html")]
struct ZonesPage {
    chrome: Chrome,
    ws: String,
    rows: Vec<ZoneRow>,
    can_admin: bool,
    minted: Minted,
    error: String,
    name: String,
    description: String,
}

struct Shown {
    minted: Minted,
    error: String,
    name: String,
    description: String,
}

impl Shown {
    fn none() -> Self {
        Self::error(String::new())
    }

    fn error(error: String) -> Self {
        Self {
            minted: Minted::default(),
            error,
            name: String::new(),
            description: String::new(),
        }
    }
}

async fn zones_page(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    shown: Shown,
    status: StatusCode,
) -> ApiResult<Response> {
    let rows = zones::list(state, &ui.p, &ws.id)
        .await?
        .into_iter()
        .map(|v| ZoneRow {
            agents: v
                .agents
                .iter()
                .map(|a| AgentRow {
                    name: a.name.clone(),
                    last_seen: a.last_seen_at.map(ago).unwrap_or_else(|| "never".into()),
                    health: if a.revoked {
                        "revoked"
                    } else if v.agent_healthy(a) {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                })
                .collect(),
            connections: v.connections.len(),
            id: v.zone.id,
            name: v.zone.name,
            description: v.zone.description,
        })
        .collect();
    let chrome = Chrome::load(state, ui, None, Some(&ws.id), "zones").await?;
    Ok(render_status(
        status,
        &ZonesPage {
            chrome,
            ws: ws.id.clone(),
            rows,
            can_admin: ui.p.can_in(&ws.id, Permission::WorkspaceAdmin),
            minted: shown.minted,
            error: shown.error,
            name: shown.name,
            description: shown.description,
        },
    ))
}

/// A refusal the page can show (400, 404, 409) comes back as the page with the message;
/// anything else (403 included) is the error page.
fn shown_error(e: ApiError) -> Result<(String, StatusCode), ApiError> {
    match e.0.code.status() {
        s @ (400 | 404 | 409) => Ok((
            e.0.message.clone(),
            StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
        )),
        _ => Err(e),
    }
}

/// `GET /workspaces/{ws}/zones`.
pub async fn list(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    zones_page(&state, &ui, &ws, Shown::none(), StatusCode::OK).await
}

/// `POST /workspaces/{ws}/zones`: fields `name`, `description`.
pub async fn create(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let (name, description) = (posted.text("name"), posted.text("description"));
    let mut b = Map::new();
    b.insert("name".into(), Value::String(name.clone()));
    if !description.is_empty() {
        b.insert("description".into(), Value::String(description.clone()));
    }
    match zones::create(&state, &ui.p, &ws.id, b).await {
        Ok(_) => Ok(Redirect::to(&format!("/workspaces/{}/zones", ws.id)).into_response()),
        Err(e) => {
            let (error, status) = shown_error(e)?;
            let shown = Shown {
                name,
                description,
                ..Shown::error(error)
            };
            zones_page(&state, &ui, &ws, shown, status).await
        }
    }
}

/// `POST /zones/{id}/delete`: refused (the page says why) while connections name the zone.
pub async fn delete(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let zone = zones::get(&state, &ui.p, &id).await?;
    let ws = workspaces::get(&state, &ui.p, &zone.zone.workspace_id).await?;
    let ask = Confirm {
        title: &format!("Delete zone {}?", zone.zone.name),
        message: "Its agents' tokens are revoked at once and its queued tests dropped. A zone \
                  that connections still name cannot be deleted.",
        action: &format!("/zones/{id}/delete"),
        button: "Delete zone",
        cancel: &format!("/workspaces/{}/zones", ws.id),
    };
    let chrome = Chrome::load(&state, &ui, None, Some(&ws.id), "zones").await?;
    if let Some(page) = ask.unless_confirmed(&body, chrome) {
        return Ok(page);
    }
    match zones::delete(&state, &ui.p, &id).await {
        Ok(()) => Ok(Redirect::to(&format!("/workspaces/{}/zones", ws.id)).into_response()),
        Err(e) => {
            let (error, status) = shown_error(e)?;
            zones_page(&state, &ui, &ws, Shown::error(error), status).await
        }
    }
}

/// `POST /workspaces/{ws}/zones/{zone}/agent-tokens`: field `name` (empty: generated). The
/// answer (201) is the only page that shows the token.
pub async fn create_agent_token(
    State(state): State<AppState>,
    ui: Ui,
    Path((ws, zone)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let name = posted.text("name");
    let b = (!name.is_empty()).then(|| {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(name));
        m
    });
    match zones::create_agent_token(&state, &ui.p, &ws.id, &zone, b).await {
        Ok(m) => {
            let shown = Shown {
                minted: Minted {
                    zone: m.zone.name.clone(),
                    agent: m.agent.name.clone(),
                    token: m.token.expose_secret().to_owned(),
                },
                ..Shown::none()
            };
            zones_page(&state, &ui, &ws, shown, StatusCode::CREATED).await
        }
        Err(e) => {
            let (error, status) = shown_error(e)?;
            zones_page(&state, &ui, &ws, Shown::error(error), status).await
        }
    }
}
