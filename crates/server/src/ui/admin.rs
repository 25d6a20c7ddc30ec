//! Workspace pages besides connections: shared credentials (list, create by kind, rotate,
//! usage) and the user's API tokens (shown once, revoke). The audit log is `audit.rs`.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Workspace;
use patchbay_core::permission::Permission;
use patchbay_core::schema::{FieldType, SettingsSchema};
use serde_json::{json, Map, Value};

use super::form::{self, pairs, FormState, Posted, SchemaForm};
use super::page::{render, render_status, when, Choice, Chrome, Ui};
use crate::error::{ApiError, ApiResult};
use crate::service::{credentials, tokens, workspaces};
use crate::state::AppState;

struct CredentialRow {
    id: String,
    name: String,
    kind: String,
    version: i64,
    external: bool,
    updated: String,
}

#[derive(Template)]
#[template(path = "credentials.html")]
struct CredentialsPage {
    chrome: Chrome,
    ws: String,
    rows: Vec<CredentialRow>,
    can_write: bool,
}

fn kind_name(state: &AppState, id: &str) -> String {
    state
        .catalog
        .credential_kind(id)
        .map(|k| k.name.clone())
        .unwrap_or_else(|| id.to_owned())
}

async fn chrome_for(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    nav: &'static str,
) -> ApiResult<Chrome> {
    Chrome::load(state, ui, None, Some(&ws.id), nav).await
}

/// `GET /workspaces/{ws}/credentials`: the shared credentials.
pub async fn credentials(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let page = credentials::list(&state, &ui.p, &ws.id, false, 500, None).await?;
    let rows = page
        .items
        .into_iter()
        .map(|c| CredentialRow {
            kind: kind_name(&state, &c.kind),
            external: c.external.is_some(),
            updated: when(c.updated_at),
            version: c.current_version,
            id: c.id,
            name: c.name,
        })
        .collect();
    let chrome = chrome_for(&state, &ui, &ws, "credentials").await?;
    Ok(render(&CredentialsPage {
        chrome,
        can_write: ui.p.can_in(&ws.id, Permission::CredentialsWrite),
        ws: ws.id,
        rows,
    }))
}

/// A credential kind's fields as a settings schema, so the form builder renders them.
fn kind_schema(kind: &patchbay_core::schema::CredentialKind) -> SettingsSchema {
    SettingsSchema {
        ty: FieldType::Object,
        properties: kind.fields.clone(),
        required: kind.required.clone(),
        one_of: vec![],
    }
}

#[derive(Template)]
#[template(path = "credential_new.html")]
struct NewCredentialPage {
    chrome: Chrome,
    ws: String,
    kinds: Vec<Choice>,
    kind: String,
    kind_name: String,
    name: String,
    description: String,
    form: Option<SchemaForm>,
    general_error: String,
    name_error: String,
}

#[allow(clippy::too_many_arguments)]
async fn new_credential_page(
    state: &AppState,
    ui: &Ui,
    ws: &Workspace,
    kind: &str,
    name: String,
    description: String,
    values: Map<String, Value>,
    errors: BTreeMap<String, String>,
    general_error: String,
    status: StatusCode,
) -> ApiResult<Response> {
    let k = state.catalog.credential_kind(kind);
    let form = k.map(|k| {
        form::build(
            &kind_schema(k),
            &FormState {
                values: &values,
                secrets_set: &[],
                errors: &errors,
                mode: None,
                defaults: true,
            },
        )
    });
    let mut kinds: Vec<Choice> = state
        .catalog
        .credential_kinds()
        .iter()
        .map(|k| Choice {
            value: k.id.clone(),
            label: k.name.clone(),
            selected: k.id == kind,
        })
        .collect();
    kinds.sort_by(|a, b| a.label.cmp(&b.label));
    let chrome = chrome_for(state, ui, ws, "credentials").await?;
    Ok(render_status(
        status,
        &NewCredentialPage {
            chrome,
            ws: ws.id.clone(),
            kinds,
            kind: kind.to_owned(),
            kind_name: k.map(|k| k.name.clone()).unwrap_or_default(),
            name,
            description,
            form,
            name_error: errors.get("/name").cloned().unwrap_or_default(),
            general_error,
        },
    ))
}

/// `GET /workspaces/{ws}/credentials/new?kind=…`: pick a kind, then its fields.
pub async fn new_credential(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let kind = q.get("kind").cloned().unwrap_or_default();
    new_credential_page(
        &state,
        &ui,
        &ws,
        &kind,
        String::new(),
        String::new(),
        Map::new(),
        BTreeMap::new(),
        String::new(),
        StatusCode::OK,
    )
    .await
}

/// The fields of a credential form: every field of the kind goes in `secrets`; the service
/// keeps the non-secret ones as public values.
fn credential_values(
    kind: &patchbay_core::schema::CredentialKind,
    posted: &Posted,
) -> (
    Map<String, Value>,
    Map<String, Value>,
    BTreeMap<String, String>,
) {
    let schema = kind_schema(kind);
    let (public, secrets, errors) = form::settings_from(&schema, posted);
    let mut all = public.clone();
    all.extend(secrets);
    let errors = errors
        .into_iter()
        .map(|(k, v)| (k.replacen("/settings/", "/secrets/", 1), v))
        .collect();
    (all, public, errors)
}

/// `POST /workspaces/{ws}/credentials`.
pub async fn create_credential(
    State(state): State<AppState>,
    ui: Ui,
    Path(ws): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let ws = workspaces::get(&state, &ui.p, &ws).await?;
    let posted = Posted(pairs(&body));
    let kind_id = posted.text("kind");
    let kind = credentials::kind(&state, &kind_id)?;
    let (values, public, errors) = credential_values(kind, &posted);
    let fail = |errors: BTreeMap<String, String>, general: String, status| {
        new_credential_page(
            &state,
            &ui,
            &ws,
            &kind_id,
            posted.text("name"),
            posted.text("description"),
            public.clone(),
            errors,
            general,
            status,
        )
    };
    if !errors.is_empty() {
        return fail(
            errors,
            "Check the highlighted fields.".into(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let mut b = Map::new();
    b.insert("name".into(), Value::String(posted.text("name")));
    b.insert("kind".into(), Value::String(kind_id.clone()));
    let description = posted.text("description");
    if !description.is_empty() {
        b.insert("description".into(), Value::String(description));
    }
    b.insert("secrets".into(), Value::Object(values));
    match credentials::create(&state, &ui.p, &ws.id, b).await {
        Ok(c) => Ok(Redirect::to(&format!("/credentials/{}", c.id)).into_response()),
        Err(ApiError(e)) if matches!(e.code.status(), 400 | 409) => {
            let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut errors = BTreeMap::new();
            let general = match &e.field {
                Some(f) => {
                    errors.insert(f.clone(), e.message.clone());
                    "Check the highlighted field.".to_owned()
                }
                None => e.message.clone(),
            };
            fail(errors, general, status).await
        }
        Err(e) => Err(e),
    }
}

struct VersionRow {
    version: i64,
    state: &'static str,
    created: String,
    created_by: String,
}

struct UsageRow {
    id: String,
    name: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "credential.html")]
struct CredentialPage {
    chrome: Chrome,
    id: String,
    name: String,
    kind: String,
    description: String,
    revision: i64,
    external: bool,
    owned: bool,
    versions: Vec<VersionRow>,
    usage: Vec<UsageRow>,
    rotate: Option<SchemaForm>,
    error: String,
}

/// `GET /credentials/{id}`: versions, usage, the rotate form.
pub async fn credential(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    credential_page(&state, &ui, &id, String::new(), StatusCode::OK).await
}

async fn credential_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    error: String,
    status: StatusCode,
) -> ApiResult<Response> {
    let c = credentials::load(state, &ui.p, id).await?;
    let ws = workspaces::get(state, &ui.p, &c.workspace_id).await?;
    let versions = credentials::versions(state, &ui.p, &c.id)
        .await?
        .into_iter()
        .rev()
        .map(|v| VersionRow {
            version: v.version,
            state: v.state.as_str(),
            created: when(v.created_at),
            created_by: v.created_by,
        })
        .collect();
    let usage = credentials::usage(state, &ui.p, &c.id)
        .await?
        .into_iter()
        .map(|u| UsageRow {
            id: u.connection_id,
            name: u.connection_name,
            last_used: u.last_used_at.map(when).unwrap_or_else(|| "never".into()),
        })
        .collect();
    let can_write = ui.p.can_in(&c.workspace_id, Permission::CredentialsWrite);
    let rotate = state
        .catalog
        .credential_kind(&c.kind)
        .filter(|_| can_write && c.external.is_none() && c.owner_connection_id.is_none())
        .map(|k| {
            form::build(
                &kind_schema(k),
                &FormState {
                    values: &c.public_fields,
                    secrets_set: &c.secret_fields,
                    errors: &BTreeMap::new(),
                    mode: None,
                    defaults: false,
                },
            )
        });
    let chrome = chrome_for(state, ui, &ws, "credentials").await?;
    Ok(render_status(
        status,
        &CredentialPage {
            chrome,
            kind: kind_name(state, &c.kind),
            external: c.external.is_some(),
            owned: c.owner_connection_id.is_some(),
            id: c.id,
            name: c.name,
            description: c.description,
            revision: c.revision,
            versions,
            usage,
            rotate,
            error,
        },
    ))
}

/// `POST /credentials/{id}/rotate`: the changed fields become a new version (blank secret
/// fields keep their values).
pub async fn rotate_credential(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let c = credentials::load(&state, &ui.p, &id).await?;
    let kind = credentials::kind(&state, &c.kind)?;
    let posted = Posted(pairs(&body));
    let (values, _, errors) = credential_values(kind, &posted);
    if let Some((field, message)) = errors.into_iter().next() {
        let msg = format!("{field}: {message}");
        return credential_page(&state, &ui, &id, msg, StatusCode::BAD_REQUEST).await;
    }
    let expected = posted.text("revision").parse::<i64>().ok();
    let body = json!({"secrets": values});
    let body = body.as_object().cloned().unwrap_or_default();
    match credentials::rotate(&state, &ui.p, &c.id, expected, body).await {
        Ok(_) => Ok(Redirect::to(&format!("/credentials/{}", c.id)).into_response()),
        Err(ApiError(e)) if matches!(e.code.status(), 400 | 409 | 412) => {
            let msg = match e.code.status() {
                412 => "This credential was changed by someone else; review it and rotate again."
                    .to_owned(),
                _ => e.message.clone(),
            };
            let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            credential_page(&state, &ui, &id, msg, status).await
        }
        Err(e) => Err(e),
    }
}

struct TokenRow {
    id: String,
    name: String,
    kind: String,
    created: String,
    expires: String,
    last_used: String,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    rows: Vec<TokenRow>,
    /// A token just created: shown this once.
    minted: String,
    minted_name: String,
    error: String,
    name: String,
}

async fn tokens_page(
    state: &AppState,
    ui: &Ui,
    minted: (String, String),
    error: String,
    name: String,
    status: StatusCode,
) -> ApiResult<Response> {
    let rows = tokens::list(state, &ui.p)
        .await?
        .into_iter()
        .map(|t| TokenRow {
            created: when(t.created_at),
            expires: t.expires_at.map(when).unwrap_or_else(|| "never".into()),
            last_used: t.last_used_at.map(when).unwrap_or_else(|| "never".into()),
            revoked: t.revoked_at.is_some(),
            id: t.id,
            name: t.name,
            kind: t.kind,
        })
        .collect();
    let chrome = Chrome::load(state, ui, None, None, "tokens").await?;
    Ok(render_status(
        status,
        &TokensPage {
            chrome,
            rows,
            minted_name: minted.0,
            minted: minted.1,
            error,
            name,
        },
    ))
}

/// `GET /tokens`: the caller's API tokens.
pub async fn tokens(State(state): State<AppState>, ui: Ui) -> ApiResult<Response> {
    tokens_page(
        &state,
        &ui,
        Default::default(),
        String::new(),
        String::new(),
        StatusCode::OK,
    )
    .await
}

/// `POST /tokens`: fields `name`, `expires_in` (seconds, empty: never). The page that answers
/// shows the token once; it is not stored in a readable form.
pub async fn create_token(
    State(state): State<AppState>,
    ui: Ui,
    body: Bytes,
) -> ApiResult<Response> {
    let posted = Posted(pairs(&body));
    let name = posted.text("name");
    let mut b = Map::new();
    b.insert("name".into(), Value::String(name.clone()));
    if let Ok(secs) = posted.text("expires_in").parse::<i64>() {
        b.insert("expires_in".into(), Value::from(secs));
    }
    match tokens::create(&state, &ui.p, b).await {
        Ok(m) => {
            let shown = (m.record.name.clone(), m.token.expose_secret().to_owned());
            tokens_page(
                &state,
                &ui,
                shown,
                String::new(),
                String::new(),
                StatusCode::CREATED,
            )
            .await
        }
        Err(ApiError(e)) if matches!(e.code.status(), 400 | 409) => {
            let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            tokens_page(&state, &ui, Default::default(), e.message, name, status).await
        }
        Err(e) => Err(e),
    }
}

/// `POST /tokens/{id}/revoke`.
pub async fn revoke_token(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    tokens::revoke(&state, &ui.p, &id).await?;
    Ok(Redirect::to("/tokens").into_response())
}
