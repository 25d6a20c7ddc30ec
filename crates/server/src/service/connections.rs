//! Connections: create, read (masked or revealed), replace, merge-patch, delete, list.
//!
//! Secret values arrive in `secrets`, are moved into [`SecretString`]s as the body is read,
//! encrypted with the workspace's active data key (AAD: workspace, connection, field) and
//! handed to the store as ciphertext. They leave again only through [`reveal`].

use std::collections::{BTreeMap, BTreeSet};

use patchbay_core::model::{Connection, Principal};
use patchbay_core::names::{check_description, check_environment, check_name, check_tags};
use patchbay_core::permission::Permission;
use patchbay_core::schema::ConnectorType;
use patchbay_core::validate::{
    check_required, check_secret_length, pointer_segment, validate_secret_names, validate_settings,
};
use patchbay_core::ErrorCode;
use patchbay_crypto::{SecretAad, SecretString};
use patchbay_store::{
    new_id, ConnectionFilter, ConnectionPage, ConnectionWrite, SecretChange, StoreError,
};
use serde_json::{json, Map, Value};

use super::{audit, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What a masked secret looks like on the wire. Sending it back means "keep the value".
pub const MASK: &str = "********";

/// Fields of a connection body.
const WRITABLE: &[&str] = &[
    "name",
    "type",
    "description",
    "environment",
    "tags",
    "settings",
    "secrets",
];
/// Read-only fields of the representation, accepted and ignored so a GET body can be edited
/// and sent back.
const READ_ONLY: &[&str] = &[
    "id",
    "workspace_id",
    "project_id",
    "category",
    "secrets_set",
    "version",
    "created_at",
    "updated_at",
];

/// One entry of a body's `secrets` object.
pub enum SecretInput {
    Set(SecretString),
    /// The mask was sent back: keep the stored value.
    Keep,
    /// `null`: clear the stored value.
    Clear,
}

fn parse_secrets(map: Map<String, Value>) -> ApiResult<BTreeMap<String, SecretInput>> {
    map.into_iter()
        .map(|(k, v)| {
            let input = match v {
                Value::Null => SecretInput::Clear,
                Value::String(s) if s == MASK => SecretInput::Keep,
                Value::String(s) => {
                    check_secret_length(&k, s.len())?;
                    SecretInput::Set(SecretString::new(s))
                }
                _ => {
                    return Err(ApiError::field(
                        ErrorCode::InvalidSetting,
                        format!("/secrets/{}", pointer_segment(&k)),
                        "must be a string, or null to clear",
                    ))
                }
            };
            Ok((k, input))
        })
        .collect()
}

fn connector(state: &AppState, id: &str) -> ApiResult<&'static ConnectorType> {
    state.catalog.get(id).ok_or_else(|| {
        ApiError::field(
            ErrorCode::UnknownType,
            "/type",
            "unknown connector type; GET /api/v1/connection-types lists them",
        )
    })
}

fn check_metadata(w: &ConnectionWrite) -> ApiResult<()> {
    check_name("/name", &w.name)?;
    check_description("/description", &w.description)?;
    if let Some(env) = &w.environment {
        check_environment("/environment", env)?;
    }
    check_tags("/tags", &w.tags)?;
    Ok(())
}

/// Validates the state a write would leave and encrypts the secrets it sets.
async fn prepare(
    state: &AppState,
    ty: &ConnectorType,
    workspace_id: &str,
    connection_id: &str,
    w: &ConnectionWrite,
    stored_secrets: &[String],
    secrets: &BTreeMap<String, SecretInput>,
) -> ApiResult<Vec<(String, SecretChange)>> {
    check_metadata(w)?;
    validate_settings(ty, &w.settings)?;
    validate_secret_names(ty, secrets.keys().map(String::as_str))?;
    let mut final_set: BTreeSet<String> = stored_secrets.iter().cloned().collect();
    for (k, v) in secrets {
        match v {
            SecretInput::Set(_) => {
                final_set.insert(k.clone());
            }
            SecretInput::Clear => {
                final_set.remove(k);
            }
            SecretInput::Keep => {}
        }
    }
    check_required(ty, &w.settings, &final_set)?;
    let mut changes = Vec::new();
    let needs_key = secrets.values().any(|v| matches!(v, SecretInput::Set(_)));
    let key = if needs_key {
        Some(state.keys.active_key(&state.store, workspace_id).await?)
    } else {
        None
    };
    for (field, input) in secrets {
        match input {
            SecretInput::Set(value) => {
                let key = key.as_ref().expect("fetched above");
                let aad = SecretAad {
                    workspace_id,
                    owner_id: connection_id,
                    version: 0,
                    field,
                };
                changes.push((field.clone(), SecretChange::Set(key.encrypt(value, &aad))));
            }
            SecretInput::Clear if stored_secrets.contains(field) => {
                changes.push((field.clone(), SecretChange::Clear));
            }
            SecretInput::Clear | SecretInput::Keep => {}
        }
    }
    Ok(changes)
}

fn strip_nulls(mut settings: Map<String, Value>) -> Map<String, Value> {
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
    if !p.can(Permission::ConnectionsWrite) {
        return Err(ApiError::forbidden(Permission::ConnectionsWrite));
    }
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
    };
    let secrets = parse_secrets(f.optional_object("secrets")?.unwrap_or_default())?;
    let id = new_id();
    let changes = prepare(state, ty, &project.workspace_id, &id, &w, &[], &secrets).await?;
    let encrypted: Vec<_> = changes
        .into_iter()
        .filter_map(|(k, c)| match c {
            SecretChange::Set(v) => Some((k, v)),
            SecretChange::Clear => None,
        })
        .collect();
    let fields: Vec<&str> = encrypted.iter().map(|(k, _)| k.as_str()).collect();
    let entry = audit(
        p,
        "connection.create",
        Some(&project.workspace_id),
        "connection",
        &id,
        json!({"name": w.name, "type": w.connector_type, "project_id": project.id, "secrets_set": fields}),
    );
    Ok(state
        .store
        .create_connection(
            &id,
            &project.workspace_id,
            &project.id,
            &w,
            &encrypted,
            &entry,
        )
        .await?)
}

/// A connection the principal can see (404 otherwise, whatever the reason).
pub async fn load(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    if !p.can(Permission::ConnectionsRead) {
        return Err(ApiError::forbidden(Permission::ConnectionsRead));
    }
    match state.store.get_connection(id).await {
        Ok(c) if p.sees_workspace(&c.workspace_id) => Ok(c),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("connection")),
        Err(e) => Err(e.into()),
    }
}

/// A connection the principal can see and change.
async fn load_for_write(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    let current = load(state, p, id).await?;
    if !p.can(Permission::ConnectionsWrite) {
        return Err(ApiError::forbidden(Permission::ConnectionsWrite));
    }
    Ok(current)
}

/// 412 unless `expected` (from If-Match; `None` is `*`) is the current version.
fn check_version(current: &Connection, expected: Expected) -> ApiResult<i64> {
    match expected {
        Some(v) if v != current.version => Err(StoreError::VersionConflict {
            current: current.version,
        }
        .into()),
        _ => Ok(current.version),
    }
}

/// Decrypts every secret of the connection and records the reveal. The only path by which
/// stored secret values leave the server.
pub async fn reveal(
    state: &AppState,
    p: &Principal,
    c: &Connection,
) -> ApiResult<BTreeMap<String, SecretString>> {
    if !p.can(Permission::ConnectionsReveal) {
        return Err(ApiError::forbidden(Permission::ConnectionsReveal));
    }
    let stored = state.store.connection_secrets(&c.id).await?;
    let mut out = BTreeMap::new();
    for (field, ev) in &stored {
        let key = state.keys.key(&state.store, &ev.key_id).await?;
        let aad = SecretAad {
            workspace_id: &c.workspace_id,
            owner_id: &c.id,
            version: 0,
            field,
        };
        let value = key.decrypt(ev, &aad).map_err(|e| {
            super::keys::integrity_error(
                &format!("connection_secrets(connection_id={}, field={field})", c.id),
                e,
            )
        })?;
        out.insert(field.clone(), value);
    }
    let fields: Vec<&String> = out.keys().collect();
    let entry = audit(
        p,
        "connection.reveal",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({"fields": fields, "version": c.version}),
    );
    state.store.record_audit(&entry).await?;
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
    secrets: BTreeMap<String, SecretInput>,
    action: &str,
) -> ApiResult<Connection> {
    let expected = check_version(current, expected)?;
    let ty = connector(state, &current.connector_type)?;
    let changes = prepare(
        state,
        ty,
        &current.workspace_id,
        &current.id,
        &w,
        &current.secrets_set,
        &secrets,
    )
    .await?;
    let changed: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
    let entry = audit(
        p,
        action,
        Some(&current.workspace_id),
        "connection",
        &current.id,
        json!({"from_version": expected, "secrets_changed": changed}),
    );
    Ok(state
        .store
        .update_connection(&current.id, expected, &w, &changes, &entry)
        .await?)
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
    let current = load_for_write(state, p, id).await?;
    let mut f = Fields::new(body, WRITABLE, READ_ONLY)?;
    check_type_unchanged(&current, &mut f)?;
    let w = ConnectionWrite {
        name: f.required_string("name")?,
        connector_type: current.connector_type.clone(),
        description: f.optional_string("description")?.unwrap_or_default(),
        environment: f.optional_string("environment")?,
        tags: f.optional_string_list("tags")?.unwrap_or_default(),
        settings: strip_nulls(f.optional_object("settings")?.unwrap_or_default()),
    };
    let secrets = parse_secrets(f.optional_object("secrets")?.unwrap_or_default())?;
    save(
        state,
        p,
        &current,
        expected,
        w,
        secrets,
        "connection.update",
    )
    .await
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
/// secrets}; in `secrets`, null clears a field, the mask keeps it, a string sets it.
pub async fn patch(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
    body: Map<String, Value>,
) -> ApiResult<Connection> {
    let current = load_for_write(state, p, id).await?;
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
    let secrets = parse_secrets(f.optional_object("secrets")?.unwrap_or_default())?;
    let w = ConnectionWrite {
        name,
        connector_type: current.connector_type.clone(),
        description,
        environment,
        tags,
        settings,
    };
    save(
        state,
        p,
        &current,
        expected,
        w,
        secrets,
        "connection.update",
    )
    .await
}

pub async fn delete(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Expected,
) -> ApiResult<()> {
    let current = load_for_write(state, p, id).await?;
    check_version(&current, expected)?;
    let entry = audit(
        p,
        "connection.delete",
        Some(&current.workspace_id),
        "connection",
        &current.id,
        json!({"name": current.name, "version": current.version}),
    );
    Ok(state.store.delete_connection(&current.id, &entry).await?)
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
    if !p.can(Permission::ConnectionsRead) {
        return Err(ApiError::forbidden(Permission::ConnectionsRead));
    }
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
