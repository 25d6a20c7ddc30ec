//! Import, export and provisioning: a document (apiVersion 1) of shared credentials and
//! connections applied to one project through the same service functions as the API (so
//! validation, encryption and audit are the API's), idempotently: an object whose stored
//! state already equals its entry is not written (no new version, no audit event).
//!
//! Order: the whole document is read and checked first (types, settings, names, references),
//! then credentials are applied, then connections, then — with `prune` — the project's
//! connections the document does not name are deleted. Each object commits with its audit
//! event; a failure midway (e.g. a concurrent edit) leaves the objects before it applied,
//! and running the import again converges.

pub mod document;
pub mod export;
pub mod startup;

use std::collections::BTreeMap;

use patchbay_core::model::{Connection, Credential, Principal};
use patchbay_core::permission::Permission;
use patchbay_core::validate::{check_required, validate_secret_names, validate_settings};
use patchbay_core::ErrorCode;
use patchbay_store::{AuditEntry, Provisionable, StoreError};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use self::document::{at, ConnectionEntry, CredentialEntry, Document};
use super::connections::{self, check_metadata, connector, not_provisioned};
use super::{credentials, require_in, workspaces};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// How a document is applied.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Report what would change; write nothing.
    pub dry_run: bool,
    /// Delete the project's connections the document does not name.
    pub prune: bool,
    /// The provisioning file applying this document (`serve --provision`): its objects are
    /// marked with it and may be changed although provisioned. `None`: an import through
    /// the API, which may not touch provisioned objects.
    pub source: Option<String>,
}

/// One object's line of the diff. `changes` names changed fields, never values.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Change {
    /// `credential` or `connection`.
    pub kind: &'static str,
    pub name: String,
    /// `create`, `update`, `unchanged`, `delete`, or `kept` (a provisioned connection an
    /// API import with prune leaves alone).
    pub action: &'static str,
    pub changes: Vec<String>,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub dry_run: bool,
    pub changes: Vec<Change>,
    /// Counts per action.
    #[schema(value_type = Object)]
    pub summary: BTreeMap<&'static str, usize>,
}

/// Applies `doc` to project `project_id` as `p`.
pub async fn apply(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    doc: Map<String, Value>,
    opts: &ApplyOptions,
) -> ApiResult<ImportReport> {
    let project = workspaces::project(state, p, project_id).await?;
    let ws = project.workspace_id.clone();
    require_in(p, &ws, Permission::ConnectionsWrite)?;
    let doc = document::parse(doc)?;
    if !doc.credentials.is_empty() {
        require_in(p, &ws, Permission::CredentialsWrite)?;
    }
    let managed = opts.source.is_some();

    // Plan: read every object, decide, check.
    let mut cred_plans = Vec::new();
    for e in &doc.credentials {
        cred_plans.push(
            plan_credential(state, &ws, e, opts)
                .await
                .map_err(|err| at(&e.at, err))?,
        );
    }
    let mut conn_plans = Vec::new();
    for e in &doc.connections {
        conn_plans.push(
            plan_connection(state, &project.id, &ws, &doc, e, opts)
                .await
                .map_err(|err| at(&e.at, err))?,
        );
    }
    let mut prune = Vec::new();
    if opts.prune {
        let named: Vec<&str> = doc.connections.iter().map(|c| c.name.as_str()).collect();
        for c in all_connections(state, p, &project.id).await? {
            if named.contains(&c.name.as_str()) {
                continue;
            }
            let foreign = match (&c.provisioned, &opts.source) {
                (Some(_), None) => true,
                (Some(a), Some(b)) => a != b,
                (None, _) => false,
            };
            prune.push((c, foreign));
        }
    }

    let mut changes = Vec::new();
    for (e, plan) in doc.credentials.iter().zip(&cred_plans) {
        changes.push(Change {
            kind: "credential",
            name: e.name.clone(),
            action: plan.action(),
            changes: plan.changed.clone(),
        });
    }
    for (e, plan) in doc.connections.iter().zip(&conn_plans) {
        changes.push(Change {
            kind: "connection",
            name: e.name.clone(),
            action: plan.action(),
            changes: plan.changed.clone(),
        });
    }
    for (c, foreign) in &prune {
        changes.push(Change {
            kind: "connection",
            name: c.name.clone(),
            action: if *foreign { "kept" } else { "delete" },
            changes: Vec::new(),
        });
    }

    if !opts.dry_run {
        for (e, plan) in doc.credentials.iter().zip(cred_plans) {
            apply_credential(state, p, &ws, e, plan, opts)
                .await
                .map_err(|err| at(&e.at, err))?;
        }
        for (e, plan) in doc.connections.iter().zip(conn_plans) {
            apply_connection(state, p, &project.id, &ws, e, plan, opts)
                .await
                .map_err(|err| at(&e.at, err))?;
        }
        for (c, foreign) in prune {
            if !foreign {
                connections::delete_managed(
                    state,
                    p,
                    &c.id,
                    None,
                    super::dependents::Cascade::None,
                    managed,
                )
                .await?;
            }
        }
    }
    let mut summary = BTreeMap::new();
    for c in &changes {
        *summary.entry(c.action).or_insert(0) += 1;
    }
    Ok(ImportReport {
        dry_run: opts.dry_run,
        changes,
        summary,
    })
}

/// Every connection of a project, all pages.
pub(crate) async fn all_connections(
    state: &AppState,
    p: &Principal,
    project_id: &str,
) -> ApiResult<Vec<Connection>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = connections::list(
            state,
            p,
            project_id,
            connections::ListQuery {
                filter: connections::ListFilter {
                    connector_type: None,
                    category: None,
                    environment: None,
                    tag: None,
                    name: None,
                    q: None,
                },
                limit: 500,
                after: after.clone(),
            },
        )
        .await?;
        out.extend(page.items);
        match page.more_after {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Whether an object may be touched by this run: an API import may not change a
/// provisioned object; a provisioning file may not take over another file's object.
fn check_owner(what: &str, current: Option<&str>, opts: &ApplyOptions) -> ApiResult<()> {
    match (current, &opts.source) {
        (Some(a), Some(b)) if a != b => not_provisioned(what, Some(a)),
        (Some(_), Some(_)) => Ok(()),
        (cur, None) => not_provisioned(what, cur),
        (None, Some(_)) => Ok(()),
    }
}

/// The marker a run leaves: the provisioning file, and an API import leaves none.
async fn mark(
    state: &AppState,
    p: &Principal,
    what: Provisionable,
    ws: &str,
    id: &str,
    current: Option<&str>,
    opts: &ApplyOptions,
) -> ApiResult<()> {
    let Some(source) = &opts.source else {
        return Ok(());
    };
    if current == Some(source.as_str()) {
        return Ok(());
    }
    let (kind, action) = match what {
        Provisionable::Connection => ("connection", "connection.provision"),
        Provisionable::Credential => ("credential", "credential.provision"),
    };
    let entry: AuditEntry = super::audit(p, action, Some(ws), kind, id, json!({"source": source}));
    state
        .store
        .set_provisioned(what, id, Some(source), &entry)
        .await?;
    Ok(())
}

struct CredentialPlan {
    current: Option<Credential>,
    /// Values to rotate in (only the changed ones).
    rotate: Map<String, Value>,
    description: bool,
    changed: Vec<String>,
}

impl CredentialPlan {
    fn action(&self) -> &'static str {
        match (&self.current, self.changed.is_empty()) {
            (None, _) => "create",
            (Some(_), true) => "unchanged",
            (Some(_), false) => "update",
        }
    }
}

async fn plan_credential(
    state: &AppState,
    ws: &str,
    e: &CredentialEntry,
    opts: &ApplyOptions,
) -> ApiResult<CredentialPlan> {
    let kind = credentials::kind(state, &e.kind)?;
    let current = match state.store.get_credential_by_name(ws, &e.name).await {
        Ok(c) => Some(c),
        Err(StoreError::NotFound) => None,
        Err(err) => return Err(err.into()),
    };
    let Some(current) = current else {
        if e.external.is_none() {
            // The values of a new credential are checked as its create will check them.
            credentials::VersionValues::empty().apply(kind, e.values.clone())?;
        }
        return Ok(CredentialPlan {
            current: None,
            rotate: Map::new(),
            description: false,
            changed: e.values.keys().map(|k| format!("fields.{k}")).collect(),
        });
    };
    check_owner("credential", current.provisioned.as_deref(), opts)?;
    if current.kind != e.kind {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/kind",
            "differs from the stored credential's kind, which cannot change",
        ));
    }
    let mut changed = Vec::new();
    let description = current.description != e.description;
    if description {
        changed.push("description".into());
    }
    let mut rotate = Map::new();
    if current.external.is_none() && !e.values.is_empty() {
        let stored = credentials::current_values(
            state,
            ws,
            &current.id,
            current.current_version,
            &current.public_fields,
        )
        .await?;
        for (k, v) in &e.values {
            let same = match (stored.secrets.get(k), stored.public.get(k)) {
                (Some(s), _) => v.as_str() == Some(s.expose_secret()),
                (None, Some(pv)) => pv == v,
                (None, None) => false,
            };
            if !same {
                changed.push(format!("fields.{k}"));
                rotate.insert(k.clone(), v.clone());
            }
        }
        if !rotate.is_empty() {
            let mut check = stored;
            check.apply(kind, rotate.clone())?;
        }
    }
    Ok(CredentialPlan {
        current: Some(current),
        rotate,
        description,
        changed,
    })
}

async fn apply_credential(
    state: &AppState,
    p: &Principal,
    ws: &str,
    e: &CredentialEntry,
    plan: CredentialPlan,
    opts: &ApplyOptions,
) -> ApiResult<()> {
    let managed = opts.source.is_some();
    let cred = match plan.current {
        None => {
            let mut body = Map::new();
            body.insert("name".into(), json!(e.name));
            body.insert("kind".into(), json!(e.kind));
            body.insert("description".into(), json!(e.description));
            match &e.external {
                Some(x) => {
                    body.insert("external".into(), x.clone());
                }
                None => {
                    body.insert("secrets".into(), Value::Object(e.values.clone()));
                }
            }
            credentials::create(state, p, ws, body).await?
        }
        Some(current) => {
            let mut c = current;
            if plan.description {
                let body = json!({"description": e.description});
                let body = body.as_object().cloned().unwrap_or_default();
                c = credentials::patch_managed(state, p, &c.id, None, body, managed).await?;
            }
            if !plan.rotate.is_empty() {
                let mut body = Map::new();
                body.insert("secrets".into(), Value::Object(plan.rotate));
                c = credentials::rotate_managed(state, p, &c.id, None, body, managed).await?;
            }
            c
        }
    };
    mark(
        state,
        p,
        Provisionable::Credential,
        ws,
        &cred.id,
        cred.provisioned.as_deref(),
        opts,
    )
    .await
}

struct ConnectionPlan {
    current: Option<Connection>,
    /// Secret fields whose value differs (to send).
    secrets: Map<String, Value>,
    changed: Vec<String>,
}

impl ConnectionPlan {
    fn action(&self) -> &'static str {
        match (&self.current, self.changed.is_empty()) {
            (None, _) => "create",
            (Some(_), true) => "unchanged",
            (Some(_), false) => "update",
        }
    }
}

async fn plan_connection(
    state: &AppState,
    project_id: &str,
    ws: &str,
    doc: &Document,
    e: &ConnectionEntry,
    opts: &ApplyOptions,
) -> ApiResult<ConnectionPlan> {
    let ty = connector(state, &e.type_id)?;
    let w = patchbay_store::ConnectionWrite {
        name: e.name.clone(),
        connector_type: ty.id.clone(),
        description: e.description.clone(),
        environment: e.environment.clone(),
        tags: e.tags.clone(),
        settings: e.settings.clone(),
        zone: e.zone.clone(),
    };
    check_metadata(&w)?;
    super::zones::check_zone(state, ws, e.zone.as_deref()).await?;
    validate_settings(ty, &e.settings)?;
    if let Some(s) = &e.secrets {
        validate_secret_names(ty, s.keys().map(String::as_str))?;
    }
    if let Some((name, _)) = &e.credential {
        let in_doc = doc.credentials.iter().any(|c| &c.name == name);
        if !in_doc {
            match state.store.get_credential_by_name(ws, name).await {
                Ok(c) if c.owner_connection_id.is_none() => {}
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::field(
                        ErrorCode::InvalidField,
                        "/credential/name",
                        "no shared credential with this name in the document or the workspace",
                    ))
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    let current = match state
        .store
        .get_connection_by_name(project_id, &e.name)
        .await
    {
        Ok(c) => Some(c),
        Err(StoreError::NotFound) => None,
        Err(err) => return Err(err.into()),
    };
    // Required settings and secrets, checked before anything is written (a shared
    // credential's fields are checked when the connection is written).
    let stays_shared = e.credential.is_some()
        || (e.secrets.is_none()
            && current
                .as_ref()
                .and_then(|c| c.credential.as_ref())
                .is_some_and(|c| !c.owned));
    if !stays_shared {
        let mut have: std::collections::BTreeSet<String> = current
            .as_ref()
            .filter(|c| c.credential.as_ref().is_some_and(|k| k.owned))
            .map(|c| c.secrets_set.iter().cloned().collect())
            .unwrap_or_default();
        have.extend(e.secrets.iter().flatten().map(|(k, _)| k.clone()));
        check_required(ty, &e.settings, &have)?;
    }
    let Some(current) = current else {
        let mut changed: Vec<String> = e.settings.keys().map(|k| format!("settings.{k}")).collect();
        changed.extend(
            e.secrets
                .iter()
                .flatten()
                .map(|(k, _)| format!("secrets.{k}")),
        );
        return Ok(ConnectionPlan {
            current: None,
            secrets: e.secrets.clone().unwrap_or_default(),
            changed,
        });
    };
    check_owner("connection", current.provisioned.as_deref(), opts)?;
    if current.connector_type != e.type_id {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/type",
            "differs from the stored connection's type, which cannot change; rename or delete it",
        ));
    }
    let mut changed = Vec::new();
    if current.description != e.description {
        changed.push("description".into());
    }
    if current.environment != e.environment {
        changed.push("environment".into());
    }
    if current.zone != e.zone {
        changed.push("zone".into());
    }
    let (mut a, mut b) = (current.tags.clone(), e.tags.clone());
    a.sort();
    b.sort();
    b.dedup();
    if a != b {
        changed.push("tags".into());
    }
    let keys: std::collections::BTreeSet<&String> =
        current.settings.keys().chain(e.settings.keys()).collect();
    for k in keys {
        if current.settings.get(k) != e.settings.get(k) {
            changed.push(format!("settings.{k}"));
        }
    }
    let shared_now = current.credential.as_ref().filter(|c| !c.owned);
    let mut secrets = Map::new();
    match (&e.credential, &e.secrets) {
        (Some((name, version)), _) => {
            let same = shared_now.is_some_and(|c| &c.name == name && &c.pinned_version == version);
            if !same {
                changed.push("credential".into());
            }
        }
        (None, Some(sent)) if !sent.is_empty() => {
            if shared_now.is_some() {
                changed.push("credential".into());
            }
            let stored = match current.credential.as_ref().filter(|c| c.owned) {
                Some(_) => super::connection_secrets::resolve_secrets(state, &current).await?,
                None => Default::default(),
            };
            for (k, v) in sent {
                let same = stored
                    .get(k)
                    .is_some_and(|s| v.as_str() == Some(s.expose_secret()));
                if !same {
                    changed.push(format!("secrets.{k}"));
                    secrets.insert(k.clone(), v.clone());
                }
            }
        }
        _ => {}
    }
    Ok(ConnectionPlan {
        current: Some(current),
        secrets,
        changed,
    })
}

async fn apply_connection(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    ws: &str,
    e: &ConnectionEntry,
    plan: ConnectionPlan,
    opts: &ApplyOptions,
) -> ApiResult<()> {
    let managed = opts.source.is_some();
    let mut body = Map::new();
    body.insert("name".into(), json!(e.name));
    body.insert("description".into(), json!(e.description));
    body.insert("environment".into(), json!(e.environment));
    body.insert("tags".into(), json!(e.tags));
    body.insert("zone".into(), json!(e.zone));
    body.insert("settings".into(), Value::Object(e.settings.clone()));
    if let Some((name, version)) = &e.credential {
        body.insert(
            "credential".into(),
            json!({"name": name, "version": version}),
        );
    }
    let c = match plan.current {
        None => {
            body.insert("type".into(), json!(e.type_id));
            if !plan.secrets.is_empty() {
                body.insert("secrets".into(), Value::Object(plan.secrets));
            }
            connections::create(state, p, project_id, body).await?
        }
        Some(current) if plan.changed.is_empty() => current,
        Some(current) => {
            let detach = e.credential.is_none()
                && !plan.secrets.is_empty()
                && current.credential.as_ref().is_some_and(|c| !c.owned);
            if detach {
                body.insert("credential".into(), Value::Null);
            }
            if !plan.secrets.is_empty() {
                body.insert("secrets".into(), Value::Object(plan.secrets));
            }
            connections::replace_managed(
                state,
                p,
                &current.id,
                Some(current.version),
                body,
                managed,
            )
            .await?
        }
    };
    mark(
        state,
        p,
        Provisionable::Connection,
        ws,
        &c.id,
        c.provisioned.as_deref(),
        opts,
    )
    .await
}
