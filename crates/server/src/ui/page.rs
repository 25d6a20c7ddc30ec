//! What every page shares: the signed-in principal and its CSRF token ([`Ui`]), the chrome
//! around the content (user, workspace and project switcher, navigation: [`Chrome`]),
//! rendering, the error page, and small formatting helpers.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use patchbay_core::model::{format_rfc3339, Principal, Project};
use patchbay_store::now_millis;

use super::asset_path;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::service::{sessions, workspaces};
use crate::session;
use crate::state::AppState;

/// The caller of a UI route: its principal (a session, or a token for scripts), the CSRF
/// token forms must carry, and whether htmx asked (then a fragment answers).
pub struct Ui {
    pub p: Principal,
    pub csrf: String,
    pub htmx: bool,
}

impl FromRequestParts<AppState> for Ui {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Auth(p) = Auth::from_request_parts(parts, state).await?;
        let csrf = session::cookie_secret(&parts.headers)
            .filter(|_| p.session)
            .map(session::csrf_token)
            .unwrap_or_default();
        let htmx = parts.headers.contains_key("hx-request");
        Ok(Ui { p, csrf, htmx })
    }
}

/// An option of a `<select>`.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

/// A workspace with its projects, for the switcher.
pub struct WorkspaceChoice {
    pub name: String,
    pub projects: Vec<Choice>,
}

/// The frame of every signed-in page.
pub struct Chrome {
    pub user: String,
    pub csrf: String,
    pub css: String,
    pub htmx: String,
    pub htmx_headers: String,
    pub switcher: Vec<WorkspaceChoice>,
    pub workspace_id: String,
    pub workspace_name: String,
    pub project_id: String,
    pub project_name: String,
    /// Which navigation entry is current: connections, credentials, audit, zones,
    /// webhooks, members, tokens.
    pub nav: &'static str,
    /// Which workspace entries the sidebar shows: only those the principal may open.
    pub nav_access: NavAccess,
}

/// The sidebar's workspace entries the principal holds the permission of (the same as the
/// route table's for each page).
#[derive(Default)]
pub struct NavAccess {
    pub credentials: bool,
    pub audit: bool,
    pub zones: bool,
    pub webhooks: bool,
    pub members: bool,
}

impl NavAccess {
    fn of(p: &Principal, workspace_id: &str) -> Self {
        use patchbay_core::permission::Permission::*;
        Self {
            credentials: p.can_in(workspace_id, CredentialsRead),
            audit: p.can_in(workspace_id, AuditRead),
            zones: p.can_in(workspace_id, ConnectionsRead),
            webhooks: p.can_in(workspace_id, WorkspaceAdmin),
            members: p.can_in(workspace_id, MembersManage),
        }
    }
}

impl Chrome {
    /// `project`: the project the page is about, if any (else the first one visible).
    pub async fn load(
        state: &AppState,
        ui: &Ui,
        project: Option<&Project>,
        workspace_id: Option<&str>,
        nav: &'static str,
    ) -> ApiResult<Chrome> {
        let user = match ui.p.user_id {
            Some(_) => sessions::username(state, &ui.p).await?,
            None => ui.p.token_name.clone(),
        };
        let wanted_ws = project
            .map(|p| p.workspace_id.clone())
            .or(workspace_id.map(str::to_owned));
        let mut all = vec![];
        for ws in workspaces::list(state, &ui.p).await? {
            let projects = workspaces::list_projects(state, &ui.p, &ws.id)
                .await
                .unwrap_or_default();
            all.push((ws, projects));
        }
        let chosen = all
            .iter()
            .find(|(ws, ps)| wanted_ws.as_deref() == Some(ws.id.as_str()) && !ps.is_empty())
            .or_else(|| all.iter().find(|(_, ps)| !ps.is_empty()));
        let (workspace_id, workspace_name, project_id, project_name) = match (project, chosen) {
            (Some(p), _) => (
                p.workspace_id.clone(),
                all.iter()
                    .find(|(ws, _)| ws.id == p.workspace_id)
                    .map(|(ws, _)| ws.name.clone())
                    .unwrap_or_default(),
                p.id.clone(),
                p.name.clone(),
            ),
            (None, Some((ws, ps))) => (
                ws.id.clone(),
                ws.name.clone(),
                ps[0].id.clone(),
                ps[0].name.clone(),
            ),
            (None, None) => Default::default(),
        };
        let switcher = all
            .iter()
            .map(|(ws, projects)| WorkspaceChoice {
                name: ws.name.clone(),
                projects: projects
                    .iter()
                    .map(|p| Choice {
                        value: p.id.clone(),
                        label: p.name.clone(),
                        selected: p.id == project_id,
                    })
                    .collect(),
            })
            .collect();
        let htmx_headers = serde_json::json!({"X-CSRF-Token": ui.csrf}).to_string();
        let nav_access = NavAccess::of(&ui.p, &workspace_id);
        Ok(Chrome {
            nav_access,
            user,
            csrf: ui.csrf.clone(),
            css: asset_path("app"),
            htmx: asset_path("htmx"),
            htmx_headers,
            switcher,
            workspace_id,
            workspace_name,
            project_id,
            project_name,
            nav,
        })
    }
}

/// Renders a template as a page (200).
pub fn render<T: Template>(t: &T) -> Response {
    render_status(StatusCode::OK, t)
}

pub fn render_status<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed to render");
            ApiError::internal().into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    css: String,
    status: u16,
    title: &'a str,
    code: &'a str,
    message: &'a str,
    fragment: bool,
}

/// The page (or, for htmx, the fragment) of an error answer.
pub fn error_page(status: StatusCode, code: &str, message: &str, fragment: bool) -> Response {
    let title = match status.as_u16() {
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflict",
        412 => "Changed by someone else",
        429 => "Slow down",
        s if s >= 500 => "Something went wrong",
        _ => "That did not work",
    };
    let page = ErrorPage {
        css: asset_path("app"),
        status: status.as_u16(),
        title,
        code,
        message,
        fragment,
    };
    let mut resp = render_status(status, &page);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// `GET /switch?project=…`: the switcher's form (works without JavaScript).
pub async fn switch(Query(q): Query<BTreeMap<String, String>>) -> Response {
    match q.get("project").filter(|p| is_id(p)) {
        Some(p) => Redirect::to(&format!("/projects/{p}/connections")).into_response(),
        None => Redirect::to("/").into_response(),
    }
}

/// `GET /workspaces/{ws}`: the workspace's first project.
pub async fn workspace_home(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let projects = workspaces::list_projects(&state, &ui.p, &ws.id).await?;
    Ok(match projects.first() {
        Some(p) => Redirect::to(&format!("/projects/{}/connections", p.id)).into_response(),
        None => Redirect::to("/").into_response(),
    })
}

/// Ids are UUIDs: anything else is not put into a URL.
pub fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// `2026-11-26 05:40 UTC`.
pub fn when(ms: i64) -> String {
    let s = format_rfc3339(ms);
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// `3 min ago`.
pub fn ago(ms: i64) -> String {
    let secs = (now_millis() - ms).max(0) / 1000;
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Display name of a catalog category.
pub fn category_label(id: &str) -> &'static str {
    match id {
        "databases" => "Databases",
        "warehouses" => "Warehouses",
        "cloud_storage" => "Cloud storage",
        "streaming" => "Streaming",
        "apis_webhooks" => "APIs and webhooks",
        "notifications" => "Notifications",
        "logging_monitoring" => "Logging and monitoring",
        "directory" => "Directory",
        "remote_execution" => "Remote execution",
        "saas" => "SaaS",
        "ai_providers" => "AI providers",
        _ => "Other",
    }
}

/// The two-letter badge of a connector type ("PostgreSQL" → "Pg", "Amazon S3" → "AS").
pub fn badge(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [] => "?".into(),
        [one] => one.chars().take(2).collect(),
        [a, b, ..] => [a.chars().next(), b.chars().next()]
            .into_iter()
            .flatten()
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage<'a> {
    chrome: Chrome,
    title: &'a str,
    message: &'a str,
    action: &'a str,
    button: &'a str,
    cancel: &'a str,
}

/// What a destructive form post asks before it acts: without the field `confirmed=yes` the
/// post answers this page (the same form again, with the field), so a stray click deletes
/// nothing and no JavaScript is needed.
pub struct Confirm<'a> {
    pub title: &'a str,
    pub message: &'a str,
    /// The form's own action (the post that asked).
    pub action: &'a str,
    pub button: &'a str,
    pub cancel: &'a str,
}

impl Confirm<'_> {
    /// `None` when the post is confirmed (go ahead); else the confirmation page.
    pub fn unless_confirmed(self, body: &[u8], chrome: Chrome) -> Option<Response> {
        let posted = super::form::Posted(super::form::pairs(body));
        if posted.get("confirmed") == Some("yes") {
            return None;
        }
        Some(render(&ConfirmPage {
            chrome,
            title: self.title,
            message: self.message,
            action: self.action,
            button: self.button,
            cancel: self.cancel,
        }))
    }
}
