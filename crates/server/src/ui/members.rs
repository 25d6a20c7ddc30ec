//! Members of a workspace: each user with their role, add a user, change the role, remove
//! the member (`service::users`; nobody grants more than they hold).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Workspace;
use serde_json::{Map, Value};

use super::form::{pairs, Posted};
use super::page::{render_status, when, Choice, Chrome, Confirm, Ui};
use crate::error::{ApiError, ApiResult};
use crate::service::{users, workspaces};
use crate::state::AppState;

struct MemberRow {
    user_id: String,
    username: String,
    roles: Vec<Choice>,
    since: String,
    is_you: bool,
}

#[derive(Template)]
#[template(path = "members.html")]
struct MembersPage {
    chrome: Chrome,
    ws: String,
    rows: Vec<MemberRow>,
    /// Every role of the workspace, for the "Add a member" form.
    roles: Vec<Choice>,
    error: String,
}

async fn members_page(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    error: String,
    status: StatusCode,
) -> ApiResult<Response> {
    let roles = users::list_roles(state, &ui.p, &ws.id).await?;
    let rows = users::list_members(state, &ui.p, &ws.id)
        .await?
        .into_iter()
        .map(|m| MemberRow {
            roles: roles
                .iter()
                .map(|r| Choice {
                    value: r.name.clone(),
                    label: r.name.clone(),
                    selected: r.name == m.role,
                })
                .collect(),
            since: when(m.created_at),
            is_you: ui.p.user_id.as_deref() == Some(m.user_id.as_str()),
            user_id: m.user_id,
            username: m.username,
        })
        .collect();
    let roles = roles
        .iter()
        .map(|r| Choice {
            value: r.name.clone(),
            label: r.name.clone(),
            selected: r.name == "viewer",
        })
        .collect();
    let chrome = Chrome::load(state, ui, None, Some(&ws.id), "members").await?;
    Ok(render_status(
        status,
        &MembersPage {
            chrome,
            ws: ws.id.clone(),
            rows,
            roles,
            error,
        },
    ))
}

/// A refusal the page can show (400, 404, 409) comes back as the page with the message.
async fn or_page(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    result: ApiResult<()>,
) -> ApiResult<Response> {
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/workspaces/{}/members", ws.id)).into_response()),
        Err(ApiError(e)) if matches!(e.code.status(), 400 | 404 | 409) => {
            let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            members_page(state, ui, ws, e.message.clone(), status).await
        }
        Err(e) => Err(e),
    }
}

/// `GET /workspaces/{ws}/members`.
pub async fn list(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    members_page(&state, &ui, &ws, String::new(), StatusCode::OK).await
}

/// `POST /workspaces/{ws}/members`: fields `username` (an existing user, `patchbay users
/// create`) and `role`.
pub async fn add(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let username = posted.text("username");
    if username.is_empty() {
        let done = Err(ApiError::field(
            patchbay_core::ErrorCode::InvalidField,
            "/username",
            "name the user to add",
        ));
        return or_page(&state, &ui, &ws, done).await;
    }
    let mut b = Map::new();
    b.insert("role".into(), Value::String(posted.text("role")));
    let done = users::put_member(&state, &ui.p, &ws.id, &username, b)
        .await
        .map(|_| ());
    or_page(&state, &ui, &ws, done).await
}

/// `POST /workspaces/{ws}/members/{user}`: field `role`.
pub async fn set_role(
    State(state): State<AppState>,
    ui: Ui,
    Path((ws, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let mut b = Map::new();
    b.insert("role".into(), Value::String(posted.text("role")));
    let done = users::put_member(&state, &ui.p, &ws.id, &user, b)
        .await
        .map(|_| ());
    or_page(&state, &ui, &ws, done).await
}

/// `POST /workspaces/{ws}/members/{user}/remove`.
pub async fn remove(
    State(state): State<AppState>,
    ui: Ui,
    Path((ws, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let ask = Confirm {
        title: "Remove this member?",
        message: &format!(
            "They lose their role in {} at once, and their tokens stop working here.",
            ws.name
        ),
        action: &format!("/workspaces/{}/members/{user}/remove", ws.id),
        button: "Remove member",
        cancel: &format!("/workspaces/{}/members", ws.id),
    };
    let chrome = Chrome::load(&state, &ui, None, Some(&ws.id), "members").await?;
    if let Some(page) = ask.unless_confirmed(&body, chrome) {
        return Ok(page);
    }
    let done = users::delete_member(&state, &ui.p, &ws.id, &user).await;
    or_page(&state, &ui, &ws, done).await
}
