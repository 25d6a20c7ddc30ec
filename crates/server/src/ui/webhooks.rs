//! Webhooks of a workspace (docs/events.md): the list with each webhook's latest delivery,
//! create (the signing secret is shown once, on the answer to the creating form), enable /
//! disable, delete, and a webhook's deliveries with redeliver.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Workspace;
use patchbay_store::{DeliveryRecord, EVENT_KINDS};
use serde_json::{json, Map, Value};

use super::form::{pairs, Posted};
use super::page::{ago, render, render_status, Chrome, Confirm, Ui};
use crate::error::{ApiError, ApiResult};
use crate::service::{webhooks, workspaces};
use crate::state::AppState;

/// Deliveries shown on a webhook's page.
const DELIVERIES: u32 = 50;

struct DeliveryRow {
    event_id: String,
    kind: String,
    /// pending | delivered | failed
    state: String,
    attempts: i64,
    detail: String,
    when: String,
}

impl DeliveryRow {
    fn of(d: DeliveryRecord) -> Self {
        let detail = match (&d.last_status, &d.last_error) {
            (_, Some(e)) => e.clone(),
            (Some(s), None) => format!("HTTP {s}"),
            (None, None) => String::new(),
        };
        Self {
            when: ago(d.last_attempt_at.unwrap_or(d.created_at)),
            event_id: d.event_id,
            kind: d.kind,
            state: d.state,
            attempts: d.attempts,
            detail,
        }
    }
}

struct WebhookRow {
    id: String,
    url: String,
    description: String,
    events: String,
    enabled: bool,
    /// The latest delivery, if any.
    last: Option<DeliveryRow>,
}

struct EventChoice {
    kind: &'static str,
    checked: bool,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    ws: String,
    rows: Vec<WebhookRow>,
    kinds: Vec<EventChoice>,
    url: String,
    description: String,
    error: String,
    /// A webhook just created, and its signing secret: shown on this one answer.
    created_url: String,
    secret: String,
}

fn events_label(events: &[String]) -> String {
    if events.is_empty() {
        "every event".into()
    } else {
        events.join(", ")
    }
}

#[derive(Default)]
struct Form {
    url: String,
    description: String,
    events: Vec<String>,
    error: String,
    created_url: String,
    secret: String,
}

async fn webhooks_page(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    form: Form,
    status: StatusCode,
) -> ApiResult<Response> {
    let rows = webhooks::list_with_latest(state, &ui.p, &ws.id)
        .await?
        .into_iter()
        .map(|(w, last)| WebhookRow {
            events: events_label(&w.events),
            id: w.id,
            url: w.url,
            description: w.description,
            enabled: w.enabled,
            last: last.map(DeliveryRow::of),
        })
        .collect();
    let kinds = EVENT_KINDS
        .iter()
        .map(|k| EventChoice {
            kind: k,
            checked: form.events.iter().any(|e| e == k),
        })
        .collect();
    let chrome = Chrome::load(state, ui, None, Some(&ws.id), "webhooks").await?;
    Ok(render_status(
        status,
        &WebhooksPage {
            chrome,
            ws: ws.id.clone(),
            rows,
            kinds,
            url: form.url,
            description: form.description,
            error: form.error,
            created_url: form.created_url,
            secret: form.secret,
        },
    ))
}

/// `GET /workspaces/{ws}/webhooks`.
pub async fn list(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    webhooks_page(&state, &ui, &ws, Form::default(), StatusCode::OK).await
}

/// `POST /workspaces/{ws}/webhooks`: fields `url`, `description`, `events` (checkboxes;
/// none ticked: every event). The answer (201) shows the generated secret, once.
pub async fn create(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let url = posted.text("url");
    let description = posted.text("description");
    let events = posted.all("events");
    let mut b = Map::new();
    b.insert("url".into(), Value::String(url.clone()));
    if !description.is_empty() {
        b.insert("description".into(), Value::String(description.clone()));
    }
    b.insert("events".into(), json!(events));
    match webhooks::create(&state, &ui.p, &ws.id, b).await {
        Ok((w, secret)) => {
            let form = Form {
                created_url: w.url,
                secret: secret.expose_secret().to_owned(),
                ..Form::default()
            };
            webhooks_page(&state, &ui, &ws, form, StatusCode::CREATED).await
        }
        Err(ApiError(e)) if matches!(e.code.status(), 400 | 409) => {
            let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let error = match &e.field {
                Some(f) => format!("{}: {}", f.trim_start_matches('/'), e.message),
                None => e.message.clone(),
            };
            let form = Form {
                url,
                description,
                events,
                error,
                ..Form::default()
            };
            webhooks_page(&state, &ui, &ws, form, status).await
        }
        Err(e) => Err(e),
    }
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    ws: String,
    id: String,
    url: String,
    description: String,
    events: String,
    enabled: bool,
    deliveries: Vec<DeliveryRow>,
}

/// `GET /webhooks/{id}`: the webhook and its latest deliveries, each with "Redeliver".
pub async fn detail(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = webhooks::get(&state, &ui.p, &id).await?;
    let deliveries = webhooks::deliveries(&state, &ui.p, &w.id, DELIVERIES)
        .await?
        .into_iter()
        .map(DeliveryRow::of)
        .collect();
    let chrome = Chrome::load(&state, &ui, None, Some(&w.workspace_id), "webhooks").await?;
    Ok(render(&WebhookPage {
        chrome,
        ws: w.workspace_id,
        id: w.id,
        events: events_label(&w.events),
        url: w.url,
        description: w.description,
        enabled: w.enabled,
        deliveries,
    }))
}

/// `POST /webhooks/{id}/enabled`: field `enabled` (`true` or `false`).
pub async fn set_enabled(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let posted = Posted(pairs(&body));
    let enabled = match posted.text("enabled").as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(ApiError::field(
                patchbay_core::ErrorCode::InvalidField,
                "/enabled",
                "must be true or false",
            ))
        }
    };
    let mut b = Map::new();
    b.insert("enabled".into(), Value::Bool(enabled));
    let w = webhooks::patch(&state, &ui.p, &id, None, b).await?;
    Ok(Redirect::to(&format!("/webhooks/{}", w.id)).into_response())
}

/// `POST /webhooks/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let w = webhooks::get(&state, &ui.p, &id).await?;
    let ask = Confirm {
        title: "Delete this webhook?",
        message: &format!(
            "{} stops receiving events, and deliveries not yet made are dropped.",
            w.url
        ),
        action: &format!("/webhooks/{id}/delete"),
        button: "Delete webhook",
        cancel: &format!("/webhooks/{id}"),
    };
    let chrome = Chrome::load(&state, &ui, None, Some(&w.workspace_id), "webhooks").await?;
    if let Some(page) = ask.unless_confirmed(&body, chrome) {
        return Ok(page);
    }
    webhooks::delete(&state, &ui.p, &w.id).await?;
    Ok(Redirect::to(&format!("/workspaces/{}/webhooks", w.workspace_id)).into_response())
}

/// `POST /webhooks/{id}/deliveries/{event}/redeliver`.
pub async fn redeliver(
    State(state): State<AppState>,
    ui: Ui,
    Path((id, event)): Path<(String, String)>,
) -> ApiResult<Response> {
    webhooks::redeliver(&state, &ui.p, &id, &event).await?;
    Ok(Redirect::to(&format!("/webhooks/{id}")).into_response())
}
