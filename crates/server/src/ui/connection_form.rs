//! The connection form: add (from the picker), edit (with the version it was opened at),
//! duplicate for another environment, and "Test connection" on the unsaved values.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use patchbay_core::model::Project;
use patchbay_core::permission::Permission;
use patchbay_core::schema::ConnectorType;
use patchbay_core::ErrorCode;
use serde_json::{Map, Value};

use super::connections::{ResultFragment, TypeView};
use super::form::{self, pairs, FormState, Posted, SchemaForm};
use super::page::{render_status, Chrome, Ui};
use super::views::TestView;
use crate::error::{ApiError, ApiResult};
use crate::service::connections as conn;
use crate::service::{probes, workspaces};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "connection_form.html")]
struct FormPage {
    chrome: Chrome,
    heading: String,
    action: String,
    test_action: String,
    cancel: String,
    ty: TypeView,
    docs_url: String,
    name: String,
    description: String,
    environment: String,
    tags: String,
    /// Edit: the version the form was opened at.
    version: String,
    form: SchemaForm,
    errors: BTreeMap<String, String>,
    general_error: String,
    conflict: bool,
    can_test: bool,
    result: Option<TestView>,
}

impl FormPage {
    fn error(&self, pointer: &str) -> String {
        self.errors.get(pointer).cloned().unwrap_or_default()
    }
}

/// What a (re-)rendered form shows.
struct Values<'a> {
    name: String,
    description: String,
    environment: String,
    tags: String,
    settings: Map<String, Value>,
    secrets_set: &'a [String],
    mode: Option<usize>,
    defaults: bool,
}

impl Values<'_> {
    fn posted(ty: &ConnectorType, posted: &Posted) -> Values<'static> {
        let (settings, _, _) = form::settings_from(&ty.settings, posted);
        Values {
            name: posted.text("name"),
            description: posted.text("description"),
            environment: posted.text("environment"),
            tags: posted.text("tags"),
            settings,
            secrets_set: &[],
            mode: posted.text("auth_mode").parse().ok(),
            defaults: false,
        }
    }
}

enum Kind<'a> {
    New,
    Duplicate(&'a str),
    Edit { id: &'a str, version: i64 },
}

#[allow(clippy::too_many_arguments)]
async fn form_page(
    state: &AppState,
    ui: &Ui,
    project: &Project,
    ty: &'static ConnectorType,
    kind: Kind<'_>,
    v: Values<'_>,
    errors: BTreeMap<String, String>,
    general_error: String,
    conflict: bool,
    result: Option<TestView>,
    status: StatusCode,
) -> ApiResult<Response> {
    let built = form::build(
        &ty.settings,
        &FormState {
            values: &v.settings,
            secrets_set: v.secrets_set,
            errors: &errors,
            mode: v.mode,
            defaults: v.defaults,
        },
    );
    let editing = matches!(kind, Kind::Edit { .. });
    let (heading, action, cancel, version) = match kind {
        Kind::New => (
            format!("Add a {} connection", ty.name),
            format!("/projects/{}/connections", project.id),
            format!("/projects/{}/connections/new", project.id),
            String::new(),
        ),
        Kind::Duplicate(from) => (
            format!("Duplicate {from} for another environment"),
            format!("/projects/{}/connections", project.id),
            format!("/projects/{}/connections", project.id),
            String::new(),
        ),
        Kind::Edit { id, version } => (
            format!("Edit {}", v.name),
            format!("/connections/{id}/edit"),
            format!("/connections/{id}"),
            version.to_string(),
        ),
    };
    let chrome = Chrome::load(state, ui, Some(project), None, "connections").await?;
    Ok(render_status(
        status,
        &FormPage {
            chrome,
            heading,
            action,
            test_action: format!("/projects/{}/connections/test", project.id),
            cancel,
            ty: TypeView::of(state, &ty.id),
            docs_url: ty.docs_url.clone().unwrap_or_default(),
            name: v.name,
            description: v.description,
            environment: v.environment,
            tags: v.tags,
            version,
            form: built,
            errors,
            general_error,
            conflict,
            // An edit form's secret inputs are empty (kept values are never sent to the
            // page), so a draft test of it would test without them: edits are tested from
            // the connection's page once saved.
            can_test: !editing
                && ui
                    .p
                    .can_in(&project.workspace_id, Permission::ConnectionsTest),
            result,
        },
    ))
}

/// `GET /projects/{project}/connections/new/{type}`.
pub async fn new_form(
    State(state): State<AppState>,
    ui: Ui,
    Path((project, type_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let project = workspaces::project(&state, &ui.p, &project).await?;
    let ty = conn::connector(&state, &type_id)?;
    let v = Values {
        name: String::new(),
        description: String::new(),
        environment: String::new(),
        tags: String::new(),
        settings: Map::new(),
        secrets_set: &[],
        mode: None,
        defaults: true,
    };
    form_page(
        &state,
        &ui,
        &project,
        ty,
        Kind::New,
        v,
        BTreeMap::new(),
        String::new(),
        false,
        None,
        StatusCode::OK,
    )
    .await
}

/// The body the service takes, from a posted form; or the fields the form itself rejects.
fn body_of(
    ty: &ConnectorType,
    posted: &Posted,
    with_type: bool,
) -> Result<Map<String, Value>, BTreeMap<String, String>> {
    let (settings, secrets, errors) = form::settings_from(&ty.settings, posted);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut body = Map::new();
    if with_type {
        body.insert("type".into(), Value::String(ty.id.clone()));
    }
    form::metadata_from(posted, &mut body);
    body.insert("settings".into(), Value::Object(settings));
    if !secrets.is_empty() {
        body.insert("secrets".into(), Value::Object(secrets));
    }
    Ok(body)
}

/// A service error as form errors: by field pointer when it names one.
fn split_error(e: &patchbay_core::Error) -> (BTreeMap<String, String>, String) {
    match &e.field {
        Some(f) => (
            BTreeMap::from([(f.clone(), e.message.clone())]),
            "Check the highlighted field.".into(),
        ),
        None => (BTreeMap::new(), e.message.clone()),
    }
}

fn status_of(e: &patchbay_core::Error) -> StatusCode {
    StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Errors that are the caller's to fix in the form (400s, name taken, credential
/// conflicts); everything else becomes the error page.
fn is_form_error(e: &patchbay_core::Error) -> bool {
    matches!(e.code.status(), 400 | 409 | 412)
}

fn posted_type(state: &AppState, posted: &Posted) -> ApiResult<&'static ConnectorType> {
    conn::connector(state, &posted.text("type"))
}

/// `POST /projects/{project}/connections`: create from the form.
pub async fn create(
    State(state): State<AppState>,
    ui: Ui,
    Path(project): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let project = workspaces::project(&state, &ui.p, &project).await?;
    let posted = Posted(pairs(&body));
    let ty = posted_type(&state, &posted)?;
    let result = match body_of(ty, &posted, true) {
        Ok(body) => conn::create(&state, &ui.p, &project.id, body).await,
        Err(errors) => {
            let v = Values::posted(ty, &posted);
            let general = "Check the highlighted fields.".to_owned();
            return form_page(
                &state,
                &ui,
                &project,
                ty,
                Kind::New,
                v,
                errors,
                general,
                false,
                None,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match result {
        Ok(c) => Ok(Redirect::to(&format!("/connections/{}", c.id)).into_response()),
        Err(ApiError(e)) if is_form_error(&e) => {
            let (errors, general) = split_error(&e);
            let v = Values::posted(ty, &posted);
            form_page(
                &state,
                &ui,
                &project,
                ty,
                Kind::New,
                v,
                errors,
                general,
                false,
                None,
                status_of(&e),
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /projects/{project}/connections/test`: tests the form's values without saving.
/// htmx gets the result panel; without JavaScript the form comes back with it (secret inputs
/// are never filled back in: retype them to save).
pub async fn test_draft(
    State(state): State<AppState>,
    ui: Ui,
    Path(project): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let project = workspaces::project(&state, &ui.p, &project).await?;
    let posted = Posted(pairs(&body));
    let ty = posted_type(&state, &posted)?;
    let (result, errors, general) = match body_of(ty, &posted, true) {
        Err(errors) => (None, errors, "Check the highlighted fields.".to_owned()),
        Ok(body) => match probes::test_draft(&state, &ui.p, &project.id, body).await {
            Ok(r) => (
                Some(TestView::from_result(&r)),
                BTreeMap::new(),
                String::new(),
            ),
            Err(ApiError(e)) if is_form_error(&e) || e.code == ErrorCode::RateLimited => {
                let (errors, general) = split_error(&e);
                (None, errors, general)
            }
            Err(e) => return Err(e),
        },
    };
    if ui.htmx {
        let result = result.unwrap_or_else(|| {
            let fields: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            TestView::refused(if fields.is_empty() {
                general.clone()
            } else {
                format!("{general} {}", fields.join("; "))
            })
        });
        return Ok(render_status(StatusCode::OK, &ResultFragment { result }));
    }
    let v = Values::posted(ty, &posted);
    // Without JavaScript the tested values come back in a new-connection form; an edit is
    // saved from its own page.
    let kind = Kind::New;
    form_page(
        &state,
        &ui,
        &project,
        ty,
        kind,
        v,
        errors,
        general,
        false,
        result,
        StatusCode::OK,
    )
    .await
}

/// `GET /connections/{id}/edit`.
pub async fn edit_form(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    let project = workspaces::project(&state, &ui.p, &c.project_id).await?;
    let ty = conn::connector(&state, &c.connector_type)?;
    let v = Values {
        name: c.name.clone(),
        description: c.description.clone(),
        environment: c.environment.clone().unwrap_or_default(),
        tags: c.tags.join(", "),
        settings: c.settings.clone(),
        secrets_set: &c.secrets_set,
        mode: None,
        defaults: false,
    };
    form_page(
        &state,
        &ui,
        &project,
        ty,
        Kind::Edit {
            id: &c.id,
            version: c.version,
        },
        v,
        BTreeMap::new(),
        String::new(),
        false,
        None,
        StatusCode::OK,
    )
    .await
}

/// `POST /connections/{id}/edit`: replaces the connection if it is still at the posted
/// `version`; otherwise the form says it was changed by someone else.
pub async fn edit(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    let project = workspaces::project(&state, &ui.p, &c.project_id).await?;
    let ty = conn::connector(&state, &c.connector_type)?;
    let posted = Posted(pairs(&body));
    let version = posted.text("version").parse::<i64>().ok();
    let fail = |errors, general, conflict, status| {
        let mut v = Values::posted(ty, &posted);
        v.secrets_set = &c.secrets_set;
        form_page(
            &state,
            &ui,
            &project,
            ty,
            Kind::Edit {
                id: &c.id,
                version: version.unwrap_or(c.version),
            },
            v,
            errors,
            general,
            conflict,
            None,
            status,
        )
    };
    let body = match body_of(ty, &posted, false) {
        Ok(b) => b,
        Err(errors) => {
            return fail(
                errors,
                "Check the highlighted fields.".into(),
                false,
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    };
    if version.is_none() {
        return fail(
            BTreeMap::new(),
            "The form lacks the version it was opened at; reload it.".into(),
            false,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    match conn::replace(&state, &ui.p, &c.id, version, body).await {
        Ok(saved) => Ok(Redirect::to(&format!("/connections/{}", saved.id)).into_response()),
        Err(ApiError(e)) if e.code == ErrorCode::VersionConflict => {
            fail(
                BTreeMap::new(),
                String::new(),
                true,
                StatusCode::PRECONDITION_FAILED,
            )
            .await
        }
        Err(ApiError(e)) if is_form_error(&e) => {
            let (errors, general) = split_error(&e);
            fail(errors, general, false, status_of(&e)).await
        }
        Err(e) => Err(e),
    }
}

/// `GET /connections/{id}/duplicate`: a new-connection form with this one's settings (never
/// its secrets) and no environment, to save as a copy for another environment.
pub async fn duplicate_form(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = conn::load(&state, &ui.p, &id).await?;
    let project = workspaces::project(&state, &ui.p, &c.project_id).await?;
    let ty = conn::connector(&state, &c.connector_type)?;
    let v = Values {
        name: format!("{}-copy", c.name),
        description: c.description.clone(),
        environment: String::new(),
        tags: c.tags.join(", "),
        settings: c.settings.clone(),
        secrets_set: &[],
        mode: None,
        defaults: false,
    };
    form_page(
        &state,
        &ui,
        &project,
        ty,
        Kind::Duplicate(&c.name),
        v,
        BTreeMap::new(),
        String::new(),
        false,
        None,
        StatusCode::OK,
    )
    .await
}
