//! Connections: create, read (masked or revealed), replace, merge-patch, delete, list.
//!
//! A connection takes its secrets from a credential: either one it owns (its inline
//! `secrets`, stored and rotated exactly like a shared credential) or a shared credential of
//! its workspace (`"credential": {"id": …, "version"?: n}`). Secret values arrive in
//! `secrets`, move into [`SecretString`]s as the body is read, and are encrypted by
//! [`credentials::encrypt_version`]. They leave again only through [`reveal`].

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use patchbay_core::model::{Connection, ConnectionCredential, Credential, Principal};
use patchbay_core::names::{check_description, check_environment, check_name, check_tags};
use patchbay_core::permission::Permission;
use patchbay_core::schema::{ConnectorType, CredentialKind};
use patchbay_core::validate::{check_required, validate_secret_names, validate_settings};
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_store::{
    new_id, now_millis, ConnectionFilter, ConnectionPage, ConnectionWrite, CredentialLink,
    LinkChange, NewCredential, NewVersion, StoreError,
};
use serde_json::{json, Map, Value};

use super::credentials::{self, VersionValues, INLINE_KIND};
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

/// The pseudo-kind of a connection's own credential: the type's secret fields, none required
/// (the type's own rules decide what is required).
fn inline_kind(ty: &ConnectorType) -> CredentialKind {
    CredentialKind {
        id: INLINE_KIND.into(),
        name: format!("{} inline secrets", ty.name),
        description: String::new(),
        fields: patchbay_core::schema::indexmap_like::Properties(
            ty.settings
                .properties
                .iter()
                .filter(|(_, f)| f.secret)
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect(),
        ),
        required: Vec::new(),
    }
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

/// The type's secret fields a connection's credential fills (kind fields mapped by the
/// catalog's `credential_map`, else by name), sorted.
pub fn provided_secrets(
    state: &AppState,
    ty: &ConnectorType,
    c: &ConnectionCredential,
) -> Vec<String> {
    // An external credential may hold any secret field of its kind; which ones is known
    // only when the manager is asked.
    let external_fields: Vec<String>;
    let fields = if c.external {
        external_fields = state
            .catalog
            .credential_kind(&c.kind)
            .map(|k| {
                k.fields
                    .iter()
                    .filter(|(_, f)| f.secret)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        &external_fields
    } else {
        &c.secret_fields
    };
    let mut out: Vec<String> = fields
        .iter()
        .filter_map(|f| ty.credential_target(&c.kind, f))
        .map(str::to_owned)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The type's settings a connection's credential fills with its non-secret fields.
pub fn provided_settings(ty: &ConnectorType, c: &ConnectionCredential) -> Map<String, Value> {
    c.public_fields
        .iter()
        .filter_map(|(f, v)| {
            ty.credential_target(&c.kind, f)
                .map(|t| (t.to_owned(), v.clone()))
        })
        .collect()
}

/// Decrypted credential values renamed to the type's fields they fill. Values of kind
/// fields that fill nothing are dropped.
pub fn fill_secrets(
    ty: &ConnectorType,
    kind: &str,
    values: BTreeMap<String, SecretString>,
) -> BTreeMap<String, SecretString> {
    values
        .into_iter()
        .filter_map(|(f, v)| ty.credential_target(kind, &f).map(|t| (t.to_owned(), v)))
        .collect()
}

/// A shared credential a connection of type `ty` in `workspace_id` may reference.
pub(crate) async fn shared_credential(
    state: &AppState,
    p: &Principal,
    ty: &ConnectorType,
    workspace_id: &str,
    id_or_name: &str,
    version: Option<i64>,
) -> ApiResult<Credential> {
    require_in(p, workspace_id, Permission::CredentialsUse)?;
    let found = match state.store.get_credential(id_or_name).await {
        Err(StoreError::NotFound) => {
            state
                .store
                .get_credential_by_name(workspace_id, id_or_name)
                .await
        }
        other => other,
    };
    let cred = match found {
        Ok(c) if c.workspace_id == workspace_id && c.owner_connection_id.is_none() => c,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/credential",
                "no shared credential with this id or name in the connection's workspace",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if !ty.credential_kinds.contains(&cred.kind) {
        return Err(ApiError::field(
            ErrorCode::CredentialKindMismatch,
            "/credential",
            format!(
                "type {} accepts credentials of kind {}; this one is {}",
                ty.id,
                ty.credential_kinds.join(", "),
                cred.kind
            ),
        ));
    }
    if let Some(v) = version {
        let usable = state
            .store
            .credential_versions(&cred.id)
            .await?
            .iter()
            .any(|x| {
                x.version == v
                    && matches!(
                        x.state,
                        patchbay_core::model::VersionState::Current
                            | patchbay_core::model::VersionState::Previous
                    )
            });
        if !usable {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/credential/version",
                "no usable version with this number (it may be revoked or destroyed)",
            ));
        }
    }
    Ok(cred)
}

/// What a write does to the connection's secrets, and the field names the result provides.
struct Plan {
    change: LinkChange,
    /// Secret fields the connection will have.
    secret_fields: BTreeSet<String>,
    /// Non-secret credential fields that fill settings by name.
    public_fields: Map<String, Value>,
    /// For the audit record: names of the secret fields set or cleared, or the credential.
    audit: Value,
}

/// Validates the state a write would leave and encrypts the secrets it sets.
#[allow(clippy::too_many_arguments)]
async fn plan(
    state: &AppState,
    p: &Principal,
    ty: &ConnectorType,
    workspace_id: &str,
    connection_id: &str,
    w: &ConnectionWrite,
    current: Option<&ConnectionCredential>,
    credential: CredentialInput,
    secrets: Option<Map<String, Value>>,
) -> ApiResult<Plan> {
    check_metadata(w)?;
    validate_settings(ty, &w.settings)?;
    let has_secrets = secrets.as_ref().is_some_and(|m| !m.is_empty());
    let shared_now = current.filter(|c| !c.owned);
    let plan = match credential {
        CredentialInput::Ref { .. } if has_secrets => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/secrets",
                "`secrets` and `credential` are alternatives: send one",
            ))
        }
        CredentialInput::Ref {
            id_or_name,
            version,
        } => {
            let cred = shared_credential(state, p, ty, workspace_id, &id_or_name, version).await?;
            let unchanged =
                shared_now.is_some_and(|c| c.id == cred.id && c.pinned_version == version);
            let (secret_fields, public_fields) = match version {
                Some(v) if v != cred.current_version => {
                    let versions = state.store.credential_versions(&cred.id).await?;
                    let fields = versions
                        .into_iter()
                        .find(|x| x.version == v)
                        .map(|x| x.secret_fields)
                        .unwrap_or_default();
                    (
                        fields,
                        state.store.credential_public_fields(&cred.id, v).await?,
                    )
                }
                _ => (cred.secret_fields.clone(), cred.public_fields.clone()),
            };
            let kind = cred.kind.clone();
            let secret_fields = provided_secrets(
                state,
                ty,
                &ConnectionCredential {
                    id: cred.id.clone(),
                    name: cred.name.clone(),
                    kind: kind.clone(),
                    owned: false,
                    pinned_version: version,
                    current_version: cred.current_version,
                    external: cred.external.is_some(),
                    secret_fields,
                    public_fields: Map::new(),
                },
            );
            let public_fields: Map<String, Value> = public_fields
                .into_iter()
                .filter_map(|(f, v)| ty.credential_target(&kind, &f).map(|t| (t.to_owned(), v)))
                .collect();
            Plan {
                change: if unchanged {
                    LinkChange::Keep
                } else {
                    LinkChange::Replace(CredentialLink::Shared {
                        id: cred.id.clone(),
                        pinned_version: version,
                    })
                },
                secret_fields: secret_fields.into_iter().collect(),
                public_fields,
                audit: json!({"credential": {"id": cred.id, "version": version}}),
            }
        }
        CredentialInput::Absent if shared_now.is_some() => {
            if has_secrets {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    "/secrets",
                    "this connection takes its secrets from a shared credential: rotate that credential, or send \"credential\": null to use inline secrets",
                ));
            }
            let c = shared_now.expect("checked above");
            Plan {
                change: LinkChange::Keep,
                secret_fields: provided_secrets(state, ty, c).into_iter().collect(),
                public_fields: provided_settings(ty, c),
                audit: json!({}),
            }
        }
        CredentialInput::Absent | CredentialInput::Detach => {
            let owned = current.filter(|c| c.owned);
            let changes = secrets.unwrap_or_default();
            validate_secret_names(ty, changes.keys().map(String::as_str))?;
            let detaching = shared_now.is_some();
            if changes.is_empty() && !detaching {
                Plan {
                    change: LinkChange::Keep,
                    secret_fields: owned
                        .map(|c| c.secret_fields.iter().cloned().collect())
                        .unwrap_or_default(),
                    public_fields: Map::new(),
                    audit: json!({"secrets_changed": []}),
                }
            } else {
                let kind = inline_kind(ty);
                let mut values = match owned {
                    Some(c) => {
                        credentials::current_values(
                            state,
                            workspace_id,
                            &c.id,
                            c.current_version,
                            &c.public_fields,
                        )
                        .await?
                    }
                    None => VersionValues::empty(),
                };
                let changed: Vec<String> = changes.keys().cloned().collect();
                values.apply(&kind, changes)?;
                let secret_fields: BTreeSet<String> = values.secrets.keys().cloned().collect();
                let change =
                    owned_change(state, p, workspace_id, connection_id, owned, values).await?;
                Plan {
                    change,
                    secret_fields,
                    public_fields: Map::new(),
                    audit: json!({"secrets_changed": changed, "detached_credential": shared_now.map(|c| &c.id)}),
                }
            }
        }
    };
    // What the stored connection will provide: its settings, its secret fields, and the
    // credential's non-secret fields that match a setting by name.
    let mut settings = w.settings.clone();
    for (k, v) in &plan.public_fields {
        if ty.settings.properties.get(k).is_some() && !settings.contains_key(k) {
            settings.insert(k.clone(), v.clone());
        }
    }
    check_required(ty, &settings, &plan.secret_fields)?;
    Ok(plan)
}

/// The change to a connection's own credential that leaves it holding `values`.
async fn owned_change(
    state: &AppState,
    p: &Principal,
    workspace_id: &str,
    connection_id: &str,
    owned: Option<&ConnectionCredential>,
    values: VersionValues,
) -> ApiResult<LinkChange> {
    if values.secrets.is_empty() {
        return Ok(LinkChange::Replace(CredentialLink::None));
    }
    Ok(match owned {
        Some(c) => {
            let version = c.current_version + 1;
            let secrets =
                credentials::encrypt_version(state, workspace_id, &c.id, version, &values.secrets)
                    .await?;
            LinkChange::RotateOwned {
                credential_id: c.id.clone(),
                version: NewVersion {
                    version,
                    public_fields: Map::new(),
                    secrets,
                    created_by: p.actor(),
                    grace_until: now_millis() + state.settings.credential_grace_ms,
                },
            }
        }
        None => {
            let id = new_id();
            let secrets =
                credentials::encrypt_version(state, workspace_id, &id, 1, &values.secrets).await?;
            LinkChange::Replace(CredentialLink::Owned(Box::new(NewCredential {
                name: format!("connection/{connection_id}"),
                id,
                workspace_id: workspace_id.to_owned(),
                kind: INLINE_KIND.into(),
                description: String::new(),
                owner_connection_id: Some(connection_id.to_owned()),
                external: None,
                public_fields: Map::new(),
                secrets,
                created_by: p.actor(),
            })))
        }
    })
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
    };
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
    let mut details = json!({"name": w.name, "type": w.connector_type, "project_id": project.id, "secrets_set": plan.secret_fields});
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

/// A connection the principal can see and change.
async fn load_for_write(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    let current = load(state, p, id).await?;
    require_in(p, &current.workspace_id, Permission::ConnectionsWrite)?;
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

/// The decrypted secrets of a connection (from the credential version in effect, or the
/// legacy rows the start-up upgrade could not move), renamed to the type's fields. No
/// permission check and no audit: its callers (reveal, test) do both.
pub async fn resolve_secrets(
    state: &AppState,
    c: &Connection,
) -> ApiResult<BTreeMap<String, SecretString>> {
    let Some(cred) = &c.credential else {
        // Rows the start-up upgrade could not move (they fail their integrity check):
        // reading them reports that, never an empty answer.
        let legacy = state.store.legacy_secrets_of(&c.id).await?;
        return decrypt_legacy(state, c, &legacy).await;
    };
    let ty = connector(state, &c.connector_type)?;
    Ok(fill_secrets(
        ty,
        &cred.kind,
        credentials::values_for_use(state, &c.workspace_id, cred).await?,
    ))
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
    let w = ConnectionWrite {
        name,
        connector_type: current.connector_type.clone(),
        description,
        environment,
        tags,
        settings,
    };
    save(state, p, &current, expected, w, &mut f).await
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

/// Decrypts a connection's legacy (first-release) secret rows, bound to the connection.
async fn decrypt_legacy(
    state: &AppState,
    c: &Connection,
    rows: &[(String, patchbay_crypto::EncryptedValue)],
) -> ApiResult<BTreeMap<String, SecretString>> {
    let mut values = BTreeMap::new();
    for (field, ev) in rows {
        let key = state.keys.key(&state.store, &ev.key_id).await?;
        let aad = patchbay_crypto::SecretAad::connection(&c.workspace_id, &c.id, field);
        let value = key.decrypt(ev, &aad).map_err(|e| {
            super::keys::integrity_error(
                &format!("connection_secrets(connection_id={}, field={field})", c.id),
                e,
            )
        })?;
        values.insert(field.clone(), value);
    }
    Ok(values)
}

/// The first release kept a connection's secrets on the connection itself. At start-up,
/// each such connection gets a credential it owns holding the same values (re-encrypted for
/// the credential binding), in one transaction per connection. Idempotent. A connection
/// whose rows fail their integrity check stays as it is (logged; its reveal answers
/// `secret_integrity_error`) rather than keeping the server from starting.
pub async fn upgrade_legacy_secrets(state: &AppState) -> ApiResult<()> {
    let legacy = state.store.legacy_connection_secrets().await?;
    for (connection_id, rows) in legacy {
        let c = state.store.get_connection(&connection_id).await?;
        let values = match decrypt_legacy(state, &c, &rows).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(connection_id = %c.id, code = %e.0.code, "inline secrets not moved into a credential");
                continue;
            }
        };
        let id = new_id();
        let secrets = credentials::encrypt_version(state, &c.workspace_id, &id, 1, &values).await?;
        let owned = NewCredential {
            name: format!("connection/{}", c.id),
            id,
            workspace_id: c.workspace_id.clone(),
            kind: INLINE_KIND.into(),
            description: String::new(),
            owner_connection_id: Some(c.id.clone()),
            external: None,
            public_fields: Map::new(),
            secrets,
            created_by: "system:upgrade".into(),
        };
        let entry = patchbay_store::AuditEntry::system(
            "system:upgrade",
            "connection.secrets.upgrade",
            Some(&c.workspace_id),
            "connection",
            &c.id,
            json!({"credential": owned.id, "fields": rows.len()}),
        );
        state
            .store
            .adopt_legacy_secrets(&c.id, &owned, &entry)
            .await?;
        tracing::info!(connection_id = %c.id, fields = rows.len(), "moved inline secrets into the connection's own credential");
    }
    Ok(())
}
