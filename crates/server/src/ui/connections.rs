//! Connection pages: the overview with filters, the catalog picker, the detail page (test,
//! reveal, history, audit trail), and the delete dialog. The add/edit/duplicate forms are in
//! `connection_form.rs`.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Connection;
use patchbay_core::permission::Permission;
use patchbay_core::schema::{Genericity, CATEGORIES};
use patchbay_core::ErrorCode;
use patchbay_store::{AuditFilter, Dependent};

use super::form::{pairs, Posted};
use super::page::{ago, badge, category_label, render, when, Choice, Chrome, Ui};
use super::views::{Status, TestView};
use crate::error::{ApiError, ApiResult};
use crate::service::connections::{self as conn, ListFilter, ListQuery};
use crate::service::dependents::{self, Cascade};
use crate::service::{overview, probes, workspaces};
use crate::state::AppState;

pub use super::connection_form::{create, duplicate_form, edit, edit_form, new_form, test_draft};

/// A connection type as pages show it.
pub struct TypeView {
    pub id: String,
    pub name: String,
    pub badge: String,
    pub category: String,
    pub category_label: &'static str,
    pub generic: bool,
    pub description: String,
}

impl TypeView {
    pub fn of(state: &AppState, type_id: &str) -> TypeView {
        match state.catalog.get(type_id) {
            Some(t) => TypeView {
                id: t.id.clone(),
                name: t.name.clone(),
                badge: badge(&t.name),
                category: t.category.clone(),
                category_label: category_label(&t.category),
                generic: t.genericity == Genericity::Generic,
                description: t.description.clone(),
            },
            None => TypeView {
                id: type_id.to_owned(),
                name: type_id.to_owned(),
                badge: badge(type_id),
                category: "other".into(),
                category_label: "Other",
                generic: false,
                description: String::new(),
            },
        }
    }
}

struct Row {
    id: String,
    name: String,
    description: String,
    ty: TypeView,
    environment: String,
    tags: Vec<String>,
    status: Status,
    dependents: i64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    rows: Vec<Row>,
    categories: Vec<Choice>,
    types: Vec<Choice>,
    environment: String,
    tag: String,
    q: String,
    filtered: bool,
    deleted: String,
    can_write: bool,
    next: String,
}

fn param(q: &BTreeMap<String, String>, k: &str) -> Option<String> {
    q.get(k)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `GET /projects/{project}/connections`: filters `category`, `type`, `environment`, `tag`,
/// search `q`, paging `cursor`.
pub async fn overview(
    State(state): State<AppState>,
    ui: Ui,
    Path(project): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    let project = workspaces::project(&state, &ui.p, &project).await?;
    let category = param(&q, "category");
    let ty = param(&q, "type");
    let environment = param(&q, "environment");
    let tag = param(&q, "tag");
    let search = param(&q, "q");
    let filtered = category.is_some()
        || ty.is_some()
        || environment.is_some()
        || tag.is_some()
        || search.is_some();
    let after = param(&q, "cursor").and_then(|c| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    });
    let (rows, more) = overview::connections(
        &state,
        &ui.p,
        &project.id,
        ListQuery {
            filter: ListFilter {
                connector_type: ty.clone(),
                category: category.clone(),
                environment: environment.clone(),
                tag: tag.clone(),
                name: None,
                q: search.clone(),
            },
            limit: 50,
            after,
        },
    )
    .await?;
    let rows = rows
        .into_iter()
        .map(|r| Row {
            ty: TypeView::of(&state, &r.connection.connector_type),
            status: Status::of(r.last_test.as_ref()),
            id: r.connection.id,
            name: r.connection.name,
            description: r.connection.description,
            environment: r.connection.environment.unwrap_or_default(),
            tags: r.connection.tags,
            dependents: r.connection.dependents_count,
        })
        .collect();
    let mut types: Vec<Choice> = state
        .catalog
        .types()
        .iter()
        .map(|t| Choice {
            value: t.id.clone(),
            label: t.name.clone(),
            selected: ty.as_deref() == Some(t.id.as_str()),
        })
        .collect();
    types.sort_by_key(|t| t.label.to_lowercase());
    let categories = CATEGORIES
        .iter()
        .map(|c| Choice {
            value: (*c).to_owned(),
            label: category_label(c).to_owned(),
            selected: category.as_deref() == Some(*c),
        })
        .collect();
    let next = more
        .map(|name| {
            let mut q = q.clone();
            q.insert("cursor".into(), crate::api::cursor(&name));
            let qs: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect();
            format!("?{}", qs.join("&"))
        })
        .unwrap_or_default();
    let chrome = Chrome::load(&state, &ui, Some(&project), None, "connections").await?;
    Ok(render(&OverviewPage {
        chrome,
        rows,
        categories,
        types,
        environment: environment.unwrap_or_default(),
        tag: tag.unwrap_or_default(),
        q: search.unwrap_or_default(),
        filtered,
        deleted: param(&q, "deleted").unwrap_or_default(),
        can_write: ui
            .p
            .can_in(&project.workspace_id, Permission::ConnectionsWrite),
        next,
    }))
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct CategoryView {
    id: String,
    label: &'static str,
    types: Vec<TypeView>,
}

#[derive(Template)]
#[template(path = "picker.html")]
struct PickerPage {
    chrome: Chrome,
    q: String,
    categories: Vec<Choice>,
    groups: Vec<CategoryView>,
}

/// `GET /projects/{project}/connections/new`: the catalog by category, with search.
pub async fn picker(
    State(state): State<AppState>,
    ui: Ui,
    Path(project): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    let project = workspaces::project(&state, &ui.p, &project).await?;
    let search = param(&q, "q").unwrap_or_default().to_lowercase();
    let category = param(&q, "category").unwrap_or_default();
    let groups = CATEGORIES
        .iter()
        .filter(|c| category.is_empty() || **c == category)
        .map(|c| {
            let mut types: Vec<TypeView> = state
                .catalog
                .types()
                .iter()
                .filter(|t| t.category == *c)
                .filter(|t| {
                    search.is_empty()
                        || t.name.to_lowercase().contains(&search)
                        || t.id.contains(&search)
                        || t.description.to_lowercase().contains(&search)
                })
                .map(|t| TypeView::of(&state, &t.id))
                .collect();
            types.sort_by_key(|t| t.name.to_lowercase());
            CategoryView {
                id: (*c).to_owned(),
                label: category_label(c),
                types,
            }
        })
        .filter(|g| !g.types.is_empty())
        .collect();
    let categories = CATEGORIES
        .iter()
        .map(|c| Choice {
            value: (*c).to_owned(),
            label: category_label(c).to_owned(),
            selected: category == *c,
        })
        .collect();
    let chrome = Chrome::load(&state, &ui, Some(&project), None, "connections").await?;
    Ok(render(&PickerPage {
        chrome,
        q: param(&q, "q").unwrap_or_default(),
        categories,
        groups,
    }))
}

struct SettingRow {
    label: String,
    value: String,
    set: bool,
    /// Multi-line or long (a PEM certificate): shown folded.
    long: bool,
}

fn is_long(v: &str) -> bool {
    v.contains('\n') || v.len() > 160
}

struct HistoryRow {
    when: String,
    ago: String,
    status: Status,
}

struct AuditRow {
    when: String,
    action: String,
    actor: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "detail.html")]
struct DetailPage {
    chrome: Chrome,
    id: String,
    name: String,
    description: String,
    environment: String,
    tags: Vec<String>,
    version: i64,
    updated: String,
    ty: TypeView,
    status: Status,
    settings: Vec<SettingRow>,
    secrets: Vec<SettingRow>,
    revealed: bool,
    credential_kind: String,
    credential_shared: String,
    credential_id: String,
    credential_version: i64,
    history: Vec<HistoryRow>,
    dependents: Vec<DependentView>,
    audit: Vec<AuditRow>,
    can_audit: bool,
    can_reveal: bool,
    can_write: bool,
    can_test: bool,
    /// The provisioning file that manages this connection (read-only here), if any.
    provisioned: String,
    result: Option<TestView>,
}

async fn detail_page(
    state: &AppState,
    ui: &Ui,
    c: Connection,
    revealed: Option<BTreeMap<String, String>>,
    result: Option<TestView>,
) -> ApiResult<Response> {
    let project = workspaces::project(state, &ui.p, &c.project_id).await?;
    let ty = state.catalog.get(&c.connector_type);
    let mut settings = vec![];
    let mut secrets = vec![];
    if let Some(ty) = ty {
        for (name, f) in ty.settings.properties.iter() {
            if f.secret {
                let set = c.secrets_set.iter().any(|s| s == name);
                let value = match (&revealed, set) {
                    (Some(r), _) => r.get(name).cloned().unwrap_or_default(),
                    (None, true) => "••••••••".into(),
                    (None, false) => String::new(),
                };
                secrets.push(SettingRow {
                    label: f.title.clone(),
                    long: is_long(&value),
                    value,
                    set,
                });
            } else if let Some(v) = c.settings.get(name) {
                let value = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                settings.push(SettingRow {
                    label: f.title.clone(),
                    long: is_long(&value),
                    value,
                    set: true,
                });
            }
        }
    }
    let history_rows = probes::history(state, &ui.p, &c.id).await?;
    let status = Status::of(history_rows.first());
    let history = history_rows
        .iter()
        .map(|t| HistoryRow {
            when: when(t.at),
            ago: ago(t.at),
            status: Status::of(Some(t)),
        })
        .collect();
    let dependents = dependents::list(state, &ui.p, &c.id)
        .await?
        .iter()
        .map(DependentView::of)
        .collect();
    let can_audit = ui.p.can_in(&c.workspace_id, Permission::AuditRead);
    let audit = if can_audit {
        let filter = AuditFilter {
            target_id: Some(c.id.clone()),
            ..Default::default()
        };
        overview::audit_page(
            state,
            &ui.p,
            &c.workspace_id,
            filter,
            overview::AuditPosition::Newest,
            20,
        )
        .await?
        .rows
        .into_iter()
        .map(|r| AuditRow {
            when: when(r.at),
            action: r.entry.action,
            actor: r.entry.actor,
            outcome: format!("{:?}", r.entry.outcome).to_lowercase(),
        })
        .collect()
    } else {
        vec![]
    };
    let (credential_kind, credential_shared, credential_id, credential_version) =
        match &c.credential {
            Some(cred) => (
                state
                    .catalog
                    .credential_kind(&cred.kind)
                    .map(|k| k.name.clone())
                    .unwrap_or_else(|| cred.kind.clone()),
                if cred.owned {
                    String::new()
                } else {
                    cred.name.clone()
                },
                cred.id.clone(),
                cred.effective_version(),
            ),
            None => Default::default(),
        };
    let chrome = Chrome::load(state, ui, Some(&project), None, "connections").await?;
    Ok(render(&DetailPage {
        chrome,
        ty: TypeView::of(state, &c.connector_type),
        status,
        settings,
        secrets,
        revealed: revealed.is_some(),
        credential_kind,
        credential_shared,
        credential_id,
        credential_version,
        history,
        dependents,
        audit,
        can_audit,
        can_reveal: ui.p.can_in(&c.workspace_id, Permission::ConnectionsReveal),
        can_write: ui.p.can_in(&c.workspace_id, Permission::ConnectionsWrite),
        can_test: ui.p.can_in(&c.workspace_id, Permission::ConnectionsTest),
        provisioned: c.provisioned.clone().unwrap_or_default(),
        result,
        updated: when(c.updated_at),
        id: c.id,
        name: c.name,
        description: c.description,
        environment: c.environment.unwrap_or_default(),
        tags: c.tags,
        version: c.version,
    }))
}

/// `GET /connections/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    detail_page(&state, &ui, c, None, None).await
}

#[derive(Template)]
#[template(path = "test_result.html")]
pub struct ResultFragment {
    pub result: TestView,
}

/// `POST /connections/{id}/test`: the result panel (htmx) or the detail page with it.
pub async fn test_saved(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let result = match probes::test_saved(&state, &ui.p, &id).await {
        Ok(r) => TestView::from_result(&r),
        Err(ApiError(e)) if e.code.status() == 400 || e.code.status() == 429 => {
            TestView::refused(e.message)
        }
        Err(e) => return Err(e),
    };
    if ui.htmx {
        return Ok(render(&ResultFragment { result }));
    }
    // A tester that may not read the connection (a runner) gets the result alone.
    match conn::load(&state, &ui.p, &id).await {
        Ok(c) => detail_page(&state, &ui, c, None, Some(result)).await,
        Err(_) => Ok(render(&ResultFragment { result })),
    }
}

/// `POST /connections/{id}/reveal`: the detail page with the secrets shown (audited).
pub async fn reveal(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    let secrets = conn::reveal(&state, &ui.p, &c).await?;
    let shown = secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
        .collect();
    detail_page(&state, &ui, c, Some(shown), None).await
}

struct DependentView {
    /// `kind/ref`, as `?cascade=` names it.
    key: String,
    kind: String,
    reference: String,
    name: String,
    url: String,
}

impl DependentView {
    fn of(d: &Dependent) -> Self {
        DependentView {
            key: format!("{}/{}", d.kind, d.reference),
            kind: d.kind.clone(),
            reference: d.reference.clone(),
            name: d.name.clone(),
            url: d.url.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "delete.html")]
struct DeletePage {
    chrome: Chrome,
    id: String,
    name: String,
    version: i64,
    dependents: Vec<DependentView>,
    /// On a refused delete: the `kind/ref` the user had ticked.
    picked: Vec<String>,
    error: String,
}

impl DeletePage {
    fn is_picked(&self, key: &str) -> bool {
        self.picked.is_empty() || self.picked.iter().any(|k| k == key)
    }
}

async fn delete_page(
    state: &AppState,
    ui: &Ui,
    c: Connection,
    picked: Vec<String>,
    error: String,
) -> ApiResult<Response> {
    let project = workspaces::project(state, &ui.p, &c.project_id).await?;
    let dependents = dependents::list(state, &ui.p, &c.id)
        .await?
        .iter()
        .map(DependentView::of)
        .collect();
    let chrome = Chrome::load(state, ui, Some(&project), None, "connections").await?;
    Ok(render(&DeletePage {
        chrome,
        id: c.id,
        name: c.name,
        version: c.version,
        dependents,
        picked,
        error,
    }))
}

/// `GET /connections/{id}/delete`: the dialog listing the dependents.
pub async fn delete_dialog(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    delete_page(&state, &ui, c, vec![], String::new()).await
}

/// `POST /connections/{id}/delete`: fields `version` and one `cascade` (`kind/ref`) per
/// dependent to delete with it. The service deletes only when every dependent is picked;
/// otherwise the dialog comes back (409) saying which are left.
pub async fn delete(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let posted = Posted(pairs(&body));
    let c = conn::load(&state, &ui.p, &id).await?;
    let version = posted.text("version").parse::<i64>().ok();
    let picked = posted.all("cascade");
    let cascade = if picked.is_empty() {
        Cascade::None
    } else {
        Cascade::Only(
            picked
                .iter()
                .filter_map(|k| k.split_once('/'))
                .map(|(k, r)| (k.to_owned(), r.to_owned()))
                .collect(),
        )
    };
    let (status, message) = match conn::delete(&state, &ui.p, &id, version, cascade).await {
        Ok(()) => {
            return Ok(Redirect::to(&format!(
                "/projects/{}/connections?deleted={}",
                c.project_id,
                urlencode(&c.name)
            ))
            .into_response())
        }
        Err(ApiError(e)) if e.code == ErrorCode::VersionConflict => (
            StatusCode::PRECONDITION_FAILED,
            "This connection was changed by someone else since you opened this dialog. \
             Review it and confirm again."
                .to_owned(),
        ),
        Err(ApiError(e)) if e.code == ErrorCode::HasDependents => {
            let left = e
                .details
                .as_ref()
                .and_then(|d| d["dependents"].as_array().map(Vec::len))
                .unwrap_or(0);
            (
                StatusCode::CONFLICT,
                format!(
                    "{} not picked. The connection can only be deleted with every dependent: \
                     pick them all, or have their owners move them to another connection first.",
                    if left == 1 {
                        "One dependent was".to_owned()
                    } else {
                        format!("{left} dependents were")
                    }
                ),
            )
        }
        Err(ApiError(e)) if e.code.status() == 400 => (
            StatusCode::BAD_REQUEST,
            "The dependents changed since you opened this dialog; review them and confirm again."
                .to_owned(),
        ),
        Err(e) => return Err(e),
    };
    // What the user ticked stays ticked (nothing ticked: a sentinel that matches nothing).
    let picked = if picked.is_empty() {
        vec![String::new()]
    } else {
        picked
    };
    let mut resp = delete_page(&state, &ui, c, picked, message).await?;
    *resp.status_mut() = status;
    Ok(resp)
}
