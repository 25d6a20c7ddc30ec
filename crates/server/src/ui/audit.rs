//! The audit log of a workspace: 50 events a page, newest first, "Newer"/"Older" links
//! (plain links: `?before=<seq>` / `?after=<seq>`, filters kept), `user:<id>` actors shown
//! by username (one lookup a page).

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use patchbay_store::AuditFilter;

use super::page::{render, when, Chrome, Ui};
use crate::error::{ApiError, ApiResult};
use crate::service::{overview, workspaces};
use crate::state::AppState;

struct AuditRow {
    seq: i64,
    when: String,
    actor: String,
    /// The actor's raw form (`user:<id>`) when `actor` shows a username instead.
    actor_id: String,
    action: String,
    outcome: String,
    target: String,
    target_link: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    ws: String,
    action: String,
    actor: String,
    target: String,
    rows: Vec<AuditRow>,
    /// Links to the neighbouring pages (empty: none), filters kept.
    newer: String,
    older: String,
}

/// Events per audit page.
const AUDIT_PAGE: u32 = 50;

/// `GET /workspaces/{ws}/audit`: 50 events, newest first; filters `action` (exact, or a
/// prefix ending in `.*`), `actor` (a username, or `user:…`/`token:…`), `target` (an id); paging `before` / `after` (a seq).
pub async fn audit(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let seq = |k: &str| -> ApiResult<Option<i64>> {
        get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::field(
                        patchbay_core::ErrorCode::InvalidQuery,
                        k,
                        format!("{k} must be an event number"),
                    )
                })
            })
            .transpose()
    };
    let at = match (seq("before")?, seq("after")?) {
        (Some(b), _) => overview::AuditPosition::Before(b),
        (None, Some(a)) => overview::AuditPosition::After(a),
        (None, None) => overview::AuditPosition::Newest,
    };
    let actor = match get("actor") {
        Some(typed) => Some(overview::actor_filter(&state, &typed).await?),
        None => None,
    };
    let filter = AuditFilter {
        action: get("action"),
        actor,
        target_id: get("target"),
        ..Default::default()
    };
    let page = overview::audit_page(&state, &ui.p, &ws.id, filter, at, AUDIT_PAGE).await?;
    let names = overview::actor_names(&state, &page.rows).await?;
    let rows = page
        .rows
        .into_iter()
        .map(|r| {
            let name = r
                .entry
                .actor
                .strip_prefix("user:")
                .and_then(|id| names.get(id));
            AuditRow {
                seq: r.seq,
                when: when(r.at),
                target_link: match r.entry.target_kind.as_str() {
                    "connection" if !r.entry.action.ends_with(".delete") => {
                        format!("/connections/{}", r.entry.target_id)
                    }
                    "credential" if !r.entry.action.ends_with(".delete") => {
                        format!("/credentials/{}", r.entry.target_id)
                    }
                    "webhook" if !r.entry.action.ends_with(".delete") => {
                        format!("/webhooks/{}", r.entry.target_id)
                    }
                    _ => String::new(),
                },
                target: format!("{} {}", r.entry.target_kind, r.entry.target_id),
                actor: name.cloned().unwrap_or_else(|| r.entry.actor.clone()),
                actor_id: if name.is_some() {
                    r.entry.actor
                } else {
                    String::new()
                },
                action: r.entry.action,
                outcome: format!("{:?}", r.entry.outcome).to_lowercase(),
            }
        })
        .collect();
    let link = |pos: Option<overview::AuditPosition>| {
        let Some(pos) = pos else {
            return String::new();
        };
        let mut params: Vec<(&str, String)> = ["action", "actor", "target"]
            .into_iter()
            .filter_map(|k| get(k).map(|v| (k, v)))
            .collect();
        match pos {
            overview::AuditPosition::Before(s) => params.push(("before", s.to_string())),
            overview::AuditPosition::After(s) => params.push(("after", s.to_string())),
            overview::AuditPosition::Newest => {}
        }
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", super::connections::urlencode(v)))
            .collect();
        let query = query.join("&");
        format!("/workspaces/{}/audit?{query}", ws.id)
    };
    let newer = link(page.newer);
    let older = link(page.older);
    let chrome = Chrome::load(&state, &ui, None, Some(&ws.id), "audit").await?;
    Ok(render(&AuditPage {
        chrome,
        ws: ws.id.clone(),
        action: get("action").unwrap_or_default(),
        actor: get("actor").unwrap_or_default(),
        target: get("target").unwrap_or_default(),
        rows,
        newer,
        older,
    }))
}
