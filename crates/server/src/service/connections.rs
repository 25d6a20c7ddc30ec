//! Connections: create, read (masked or revealed), replace, merge-patch, delete, list.
//!
//! A connection takes its secrets from a credential: either one it owns (its inline
//! `secrets`, stored and rotated exactly like a shared credential) or a shared credential of
//! its workspace (`"credential": {"id": …, "version"?: n}`). Secret values arrive in
//! `secrets`, move into [`SecretString`]s as the body is read, and are encrypted by
//! [`credentials::encrypt_version`]. They leave again only through [`reveal`].

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use patchbay_core::model::{Connection, Principal};
use patchbay_core::names::{check_description, check_environment, check_name, check_tags};
use patchbay_core::permission::Permission;
use patchbay_core::schema::ConnectorType;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_store::{
    new_id, ConnectionFilter, ConnectionPage, ConnectionWrite, CredentialLink, LinkChange,
    StoreError,
};
use serde_json::{json, Map, Value};

use super::connection_secrets::{plan, resolve_secrets};
use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What a masked secret looks like on the wire. Sending it back means "keep the value".
pub const MASK: &str = "********";

/// Fields of a connection body.
pub(crate) const WRITABLE: &[&str] = &[
    "name",
    "type",
    "description",
    "environment",
    "tags",
    "settings",
    "secrets",
    "credential",
    "zone",
];
/// Read-only fields of the representation, accepted and ignored so a GET body can be edited
/// and sent back.
const READ_ONLY: &[&str] = &[
    "id",
    "workspace_id",
    "project_id",
    "category",
    "secrets_set",
    "dependents_count",
    "provisioned",
    "version",
    "created_at",
    "updated_at",
];

/// The body's `credential` member.
pub(crate) enum CredentialInput {
    /// Not sent: keep the connection's current source.
    Absent,
    /// `null`: stop using a shared credential (inline `secrets` follow).
    Detach,
    /// `{"id": …}` or `{"name": …}`, optionally `"version": n` to pin.
    Ref {
        id_or_name: String,
        version: Option<i64>,
    },
}

pub(crate) fn credential_input(f: &mut Fields) -> ApiResult<CredentialInput> {
    let bad = |msg: &str| ApiError::field(ErrorCode::InvalidField, "/credential", msg);
    match f.take("credential") {
        None => Ok(CredentialInput::Absent),
        Some(Value::Null) => Ok(CredentialInput::Detach),
        Some(Value::Object(mut m)) => {
            // A GET representation sent back: the connection's own credential means "keep
            // the inline secrets as they are".
            if m.get("owned") == Some(&Value::Bool(true)) {
                return Ok(CredentialInput::Absent);
            }
            let id = match (m.remove("id"), m.remove("name")) {
                (Some(Value::String(id)), _) | (None, Some(Value::String(id))) => id,
                _ => {
                    return Err(bad(
                        "must be {\"id\": …} or {\"name\": …}, with an optional \"version\"",
                    ))
                }
            };
            let version = match m.remove("version") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().filter(|n| *n >= 1).ok_or_else(|| {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        "/credential/version",
                        "must be a positive integer",
                    )
                })?),
            };
            // Members a GET shows, accepted and ignored so a representation can be sent back.
            m.retain(|k, _| {
                !["kind", "owned", "current_version", "external"].contains(&k.as_str())
            });
            if let Some(k) = m.keys().next() {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    format!("/credential/{k}"),
                    "unknown field",
                ));
            }
            Ok(CredentialInput::Ref {
                id_or_name: id,
                version,
            })
        }
        Some(_) => Err(bad("must be an object or null")),
    }
}

/// The body's `secrets`, with masks (keep the value) dropped. `None` when not sent.
pub(crate) fn secrets_input(f: &mut Fields) -> ApiResult<Option<Map<String, Value>>> {
    Ok(f.optional_object("secrets")?.map(|mut m| {
        m.retain(|_, v| v.as_str() != Some(MASK));
        m
    }))
}

pub(crate) fn connector(state: &AppState, id: &str) -> ApiResult<&'static ConnectorType> {
    state.catalog.get(id).ok_or_else(|| {
        ApiError::field(
            ErrorCode::UnknownType,
            "/type",
            "unknown connector type; GET /api/v1/connection-types lists them",
        )
    })
}

pub(crate) fn check_metadata(w: &ConnectionWrite) -> ApiResult<()> {
    check_name("/name", &w.name)?;
    check_description("/description", &w.description)?;
    if let Some(env) = &w.environment {
        check_environment("/environment", env)?;
    }
    check_tags("/tags", &w.tags)?;
    Ok(())
}

pub(crate) fn strip_nulls(mut settings: Map<String, Value>) -> Map<String, Value> {
    settings.retain(|_, v| !v.is_null());
    settings
}

pub async fn create(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    body: Map<String, Value>,
) -> ApiResult<Connection> {
    let project = workspaces::project(state, p, project_id).await?;
    require_in(p, &project.workspace_id, Permission::ConnectionsWrite)?;
    let mut f = Fields::new(body, WRITABLE, &[])?;
    let name = f.required_string("name")?;
    let type_id = f.required_string("type")?;
    let ty = connector(state, &type_id)?;
    let w = ConnectionWrite {
        name,
        connector_type: ty.id.clone(),
        description: f.optional_string("description")?.unwrap_or_default(),
        environment: f.optional_string("environment")?,
        tags: f.optional_string_list("tags")?.unwrap_or_default(),
        settings: strip_nulls(f.optional_object("settings")?.unwrap_or_default()),
        zone: f.optional_string("zone")?,
    };
    super::zones::check_zone(state, &project.workspace_id, w.zone.as_deref()).await?;
    let credential = credential_input(&mut f)?;
    let secrets = secrets_input(&mut f)?;
    let id = new_id();
    let plan = plan(
        state,
        p,
        ty,
        &project.workspace_id,
        &id,
        &w,
        None,
        credential,
        secrets,
    )
    .await?;
    let link = match plan.change {
        LinkChange::Replace(link) => link,
        LinkChange::Keep | LinkChange::RotateOwned { .. } => CredentialLink::None,
    };
    let mut details = json!({"name": w.name, "type": w.connector_type, "project_id": project.id, "secrets_set": plan.secret_fields, "zone": w.zone});
    if let (Some(d), Some(extra)) = (details.as_object_mut(), plan.audit.as_object()) {
        d.extend(extra.clone());
    }
    let entry = audit(
        p,
        "connection.create",
        Some(&project.workspace_id),
        "connection",
        &id,
        details,
    );
    Ok(state
        .store
        .create_connection(&id, &project.workspace_id, &project.id, &w, &link, &entry)
        .await?)
}

/// A connection in a workspace the principal sees (404 otherwise, whatever the reason). Callers
/// check the permission their operation needs in that workspace.
pub async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    match state.store.get_connection(id).await {
        Ok(c) if p.sees_workspace(&c.workspace_id) => Ok(c),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("connection")),
        Err(e) => Err(e.into()),
    }
}

/// A connection the principal can read: 404 when its workspace is invisible, 403 without
/// connections:read there.
pub async fn load(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    let c = find(state, p, id).await?;
    require_in(p, &c.workspace_id, Permission::ConnectionsRead)?;
    Ok(c)
}

/// A connection the principal can see and change. A provisioned connection changes only
/// through its provisioning file (`managed`: the caller is the provisioning run).
async fn load_for_write(
    state: &AppState,
    p: &Principal,
    id: &str,
    managed: bool,
) -> ApiResult<Connection> {
    let current = load(state, p, id).await?;
    require_in(p, &current.workspace_id, Permission::ConnectionsWrite)?;
    if !managed {
        not_provisioned("connection", current.provisioned.as_deref())?;
    }
    Ok(current)
}

/// 409 `provisioned` for an object a provisioning file manages.
pub(crate) fn not_provisioned(what: &str, source: Option<&str>) -> ApiResult<()> {
    match source {
        None => Ok(()),
        Some(file) => {
            let mut e = patchbay_core::Error::new(
                ErrorCode::Provisioned,
                format!("this {what} is provisioned from {file}: change that file and restart the server"),
            );
            e.details = Some(Box::new(json!({"source": file})));
            Err(ApiError(e))
        }
    }
}

/// 412 unless `expected` (from If-Match; `None` is `*`) is the current version.
pub(crate) fn check_version(current: &Connection, expected: Expected) -> ApiResult<i64> {
    match expected {
        Some(v) if v != current.version => Err(StoreError::VersionConflict {
            current: current.version,
        }
        .into()),
        _ => Ok(current.version),
    }
}

/// Decrypts the secrets of the connection (from the credential version in effect) and
/// records the reveal. The only path by which stored secret values leave the server.
pub async fn reveal(
    state: &AppState,
    p: &Principal,
    c: &Connection,
) -> ApiResult<BTreeMap<String, SecretString>> {
    require_in(p, &c.workspace_id, Permission::ConnectionsReveal)?;
    let out = resolve_secrets(state, c).await?;
    let Some(cred) = &c.credential else {
        return Ok(out);
    };
    let version = cred.effective_version();
    let fields: Vec<&String> = out.keys().collect();
    let entry = audit(
        p,
        "connection.reveal",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({"fields": fields, "version": c.version, "credential": {"id": cred.id, "version": version}}),
    );
    if state.settings.audit_reads {
        // No record, no secret: a reveal that cannot be audited fails. The credential's
        // last use is written in the same transaction (one commit per reveal).
        state
            .store
            .record_reveal(&cred.id, &c.id, &p.actor(), &entry)
            .await?;
    } else if let Err(e) = state
        .store
        .record_credential_use(&cred.id, &c.id, &p.actor())
        .await
    {
        tracing::warn!(error = %e, "could not record credential use");
    }
    Ok(out)
}

/// Expected version from If-Match: `None` is `*` (any version).
pub type Expected = Option<i64>;

async fn save(
    state: &AppState,
    p: &Principal,
    current: &Connection,
    expected: Expected,
    w: ConnectionWrite,
    f: &mut Fields,
) -> ApiResult<Connection> {
    let expected = check_version(current, expected)?;
    let ty = connector(state, &current.connector_type)?;
    if w.zone != current.zone {
        super::zones::check_zone(state, &current.workspace_id, w.zone.as_deref()).await?;
    }
    let credential = credential_input(f)?;
    let secrets = secrets_input(f)?;
    let plan = plan(
        state,
        p,
        ty,
        &current.workspace_id,
        &current.id,
        &w,
        current.credential.as_ref(),
        credential,
        secrets,
    )
    .await?;
    let mut details = json!({"from_version": expected});
    if let (Some(d), Some(extra)) = (details.as_object_mut(), plan.audit.as_object()) {
        d.extend(extra.clone());
        d.insert("changes".into(), changes(ty, current, &w, &plan.audit));
    }
    let entry = audit(
        p,
        "connection.update",
        Some(&current.workspace_id),
        "connection",
        &current.id,
        details,
    );
    Ok(state
        .store
        .update_connection(&current.id, expected, &w, &plan.change, &entry)
        .await?)
}

/// What an update changes, for the audit record: each changed non-secret field with its
/// old and new value, each changed secret field (a setting the type marks secret, or a
/// secret) as `"changed"` only.
fn changes(ty: &ConnectorType, current: &Connection, w: &ConnectionWrite, plan: &Value) -> Value {
    let mut out = Map::new();
    let diff = |out: &mut Map<String, Value>, name: String, old: Value, new: Value| {
        if old != new {
            out.insert(name, json!({"old": old, "new": new}));
        }
    };
    diff(&mut out, "name".into(), json!(current.name), json!(w.name));
    diff(
        &mut out,
        "description".into(),
        json!(current.description),
        json!(w.description),
    );
    diff(
        &mut out,
        "environment".into(),
        json!(current.environment),
        json!(w.environment),
    );
    diff(&mut out, "tags".into(), json!(current.tags), json!(w.tags));
    diff(&mut out, "zone".into(), json!(current.zone), json!(w.zone));
    let keys: BTreeSet<&String> = current.settings.keys().chain(w.settings.keys()).collect();
    for k in keys {
        let (old, new) = (current.settings.get(k), w.settings.get(k));
        if old == new {
            continue;
        }
        if ty.is_secret(k) {
            out.insert(format!("settings.{k}"), json!("changed"));
        } else {
            diff(
                &mut out,
                format!("settings.{k}"),
                old.cloned().unwrap_or(Value::Null),
                new.cloned().unwrap_or(Value::Null),
            );
        }
    }
    for f in plan["secrets_changed"].as_array().into_iter().flatten() {
        if let Some(f) = f.as_str() {
            out.insert(format!("secrets.{f}"), json!("changed"));
        }
    }
    let old_cred = current
        .credential
        .as_ref()
        .filter(|c| !c.owned)
        .map(|c| c.id.clone());
    if let Some(new_cred) = plan.get("credential").and_then(|c| c.get("id")) {
        if old_cred.as_ref().map(|c| json!(c)).as_ref() != Some(new_cred) {
            out.insert(
                "credential".into(),
                json!({"old": old_cred, "new": new_cred}),
            );
        }
    } else if plan
        .get("detached_credential")
        .is_some_and(|d| !d.is_null())
    {
        out.insert("credential".into(), json!({"old": old_cred, "new": null}));
    }
    Value::Object(out)
}

fn check_type_unchanged(current: &Connection, f: &mut Fields) -> ApiResult<()> {
    match f.take("type") {
        None => Ok(()),
        Some(Value::String(t)) if t == current.connector_type => Ok(()),
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidField,
            "/type",
            "the type of a connection cannot change; create a new connection instead",
        )),
    }
}

/// PUT: the body is the whole new state. Omitted secrets (and the mask) keep their values.
pub async fn replace(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    body: Map<String, Value>,
) -> ApiResult<Connection> {
    replace_managed(state, p, id, expected, body, false).await
}

/// [`replace`], for the provisioning run too (`managed`).
pub(crate) async fn replace_managed(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    body: Map<String, Value>,
    managed: bool,
) -> ApiResult<Connection> {
    let current = load_for_write(state, p, id, managed).await?;
    let mut f = Fields::new(body, WRITABLE, READ_ONLY)?;
    check_type_unchanged(&current, &mut f)?;
    let w = ConnectionWrite {
        name: f.required_string("name")?,
        connector_type: current.connector_type.clone(),
        description: f.optional_string("description")?.unwrap_or_default(),
        environment: f.optional_string("environment")?,
        tags: f.optional_string_list("tags")?.unwrap_or_default(),
        settings: strip_nulls(f.optional_object("settings")?.unwrap_or_default()),
        zone: f.optional_string("zone")?,
    };
    save(state, p, &current, expected, w, &mut f).await
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in patch {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge_patch(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

/// PATCH with a JSON merge patch over {name, description, environment, tags, settings,
/// secrets, zone}; in `secrets`, null clears a field, the mask keeps it, a string sets it.
pub async fn patch(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    body: Map<String, Value>,
) -> ApiResult<Connection> {
    let current = load_for_write(state, p, id, false).await?;
    let mut f = Fields::new(body, WRITABLE, READ_ONLY)?;
    check_type_unchanged(&current, &mut f)?;
    if f.is_null("name") {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/name",
            "required",
        ));
    }
    let name = f
        .optional_string("name")?
        .unwrap_or_else(|| current.name.clone());
    let description = if f.has("description") {
        f.optional_string("description")?.unwrap_or_default()
    } else {
        current.description.clone()
    };
    let environment = if f.has("environment") {
        f.optional_string("environment")?
    } else {
        current.environment.clone()
    };
    let zone = if f.has("zone") {
        f.optional_string("zone")?
    } else {
        current.zone.clone()
    };
    let tags = if f.has("tags") {
        f.optional_string_list("tags")?.unwrap_or_default()
    } else {
        current.tags.clone()
    };
    let mut settings = Value::Object(current.settings.clone());
    match f.take("settings") {
        None => {}
        Some(Value::Null) => settings = Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => merge_patch(&mut settings, v),
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/settings",
                "must be an object",
            ))
        }
    }
    let settings = match settings {
        Value::Object(m) => m,
        _ => unreachable!("settings stays an object"),
    };
    let w = ConnectionWrite {
        name,
        connector_type: current.connector_type.clone(),
        description,
        environment,
        tags,
        settings,
        zone,
    };
    save(state, p, &current, expected, w, &mut f).await
}

/// Deletes a connection; with dependents, `cascade` must name them all (see
/// [`super::dependents::delete_connection`]).
pub async fn delete(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    cascade: super::dependents::Cascade,
) -> ApiResult<()> {
    delete_managed(state, p, id, expected, cascade, false).await
}

/// [`delete`], for the provisioning run too (`managed`): a provisioned connection is
/// deleted only by its provisioning run.
pub(crate) async fn delete_managed(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    cascade: super::dependents::Cascade,
    managed: bool,
) -> ApiResult<()> {
    if !managed {
        load_for_write(state, p, id, false).await?;
    }
    super::dependents::delete_connection(state, p, id, expected, cascade).await
}

pub struct ListQuery {
    pub filter: ListFilter,
    pub limit: u32,
    pub after: Option<String>,
}

pub struct ListFilter {
    pub connector_type: Option<String>,
    pub category: Option<String>,
    pub environment: Option<String>,
    pub tag: Option<String>,
    pub name: Option<String>,
    pub q: Option<String>,
}

pub async fn list(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    query: ListQuery,
) -> ApiResult<ConnectionPage> {
    let project = workspaces::project(state, p, project_id).await?;
    require_in(p, &project.workspace_id, Permission::ConnectionsRead)?;
    let ListFilter {
        connector_type,
        category,
        environment,
        tag,
        name,
        q,
    } = query.filter;
    // type and category narrow each other: the result is their intersection.
    let types = match (connector_type, category) {
        (None, None) => None,
        (t, c) => Some(
            state
                .catalog
                .types()
                .iter()
                .filter(|ty| t.as_ref().is_none_or(|t| &ty.id == t))
                .filter(|ty| c.as_ref().is_none_or(|c| &ty.category == c))
                .map(|ty| ty.id.clone())
                .collect(),
        ),
    };
    let filter = ConnectionFilter {
        types,
        environment,
        tag,
        name,
        q,
    };
    Ok(state
        .store
        .list_connections(&project.id, &filter, query.limit, query.after.as_deref())
        .await?)
}
