//! Credentials: create, read (masked), rename, rotate, list versions, revoke, usage, delete;
//! and the one decrypt path every secret read goes through ([`decrypt`]).
//!
//! A credential's fields are those of its kind (catalog/credential-kinds). Secret fields are
//! encrypted per version with the workspace's data key, bound to (workspace, credential,
//! version, field); non-secret fields (user names, client ids) are stored as plain JSON on
//! the version so they can be shown and used to fill connection settings.

use std::collections::BTreeMap;

use patchbay_core::model::{ConnectionCredential, Credential, CredentialVersion, Principal};
use patchbay_core::names::{check_description, check_name};
use patchbay_core::permission::Permission;
use patchbay_core::schema::CredentialKind;
use patchbay_core::validate::{
    check_credential_required, pointer_segment, validate_credential_values,
};
use patchbay_core::ErrorCode;
use patchbay_crypto::{EncryptedValue, SecretAad, SecretString};
use patchbay_store::{
    new_id, now_millis, CredentialPage, CredentialUse, NewCredential, NewVersion, StoreError,
};
use serde_json::{json, Map, Value};

use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The kind of a connection's own credential (its inline secrets): its fields are the
/// connector type's secret fields.
pub const INLINE_KIND: &str = "inline";

const CREATE_FIELDS: &[&str] = &["name", "kind", "description", "secrets", "external"];
const READ_ONLY: &[&str] = &[
    "id",
    "workspace_id",
    "kind",
    "owner_connection_id",
    "current_version",
    "revision",
    "fields",
    "external",
    "provisioned",
    "created_at",
    "updated_at",
];

pub fn kind<'a>(state: &'a AppState, id: &str) -> ApiResult<&'a CredentialKind> {
    state.catalog.credential_kind(id).ok_or_else(|| {
        ApiError::field(
            ErrorCode::UnknownCredentialKind,
            "/kind",
            "unknown credential kind; GET /api/v1/credential-kinds lists them",
        )
    })
}

/// A version's field values, split into what is stored in clear and what is encrypted.
pub struct VersionValues {
    pub public: Map<String, Value>,
    pub secrets: BTreeMap<String, SecretString>,
}

impl VersionValues {
    pub fn empty() -> Self {
        Self {
            public: Map::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// Applies sent values over these: a field sent as `null` is cleared, one sent with a
    /// value replaced, one not sent kept. Secret strings move into [`SecretString`]s here.
    pub fn apply(&mut self, kind: &CredentialKind, changes: Map<String, Value>) -> ApiResult<()> {
        validate_credential_values(kind, &changes)?;
        for (k, v) in changes {
            let secret = kind.fields.get(&k).is_some_and(|f| f.secret);
            self.public.remove(&k);
            self.secrets.remove(&k);
            match v {
                Value::Null => {}
                Value::String(s) if secret => {
                    self.secrets.insert(k, SecretString::new(s));
                }
                other => {
                    self.public.insert(k, other);
                }
            }
        }
        check_credential_required(
            kind,
            self.public
                .keys()
                .chain(self.secrets.keys())
                .map(String::as_str),
        )?;
        Ok(())
    }

    pub fn field_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .public
            .keys()
            .chain(self.secrets.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }
}

/// Encrypts the secret fields of `version` of credential `credential_id`.
pub async fn encrypt_version(
    state: &AppState,
    workspace_id: &str,
    credential_id: &str,
    version: i64,
    secrets: &BTreeMap<String, SecretString>,
) -> ApiResult<Vec<(String, EncryptedValue)>> {
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let key = state.keys.active_key(&state.store, workspace_id).await?;
    Ok(secrets
        .iter()
        .map(|(field, value)| {
            let aad = SecretAad::credential(workspace_id, credential_id, version, field);
            (field.clone(), key.encrypt(value, &aad))
        })
        .collect())
}

/// Decrypts the secret fields of one version of a credential. The only way stored values
/// become plaintext; callers decide whether and how that is audited.
pub async fn decrypt(
    state: &AppState,
    workspace_id: &str,
    credential_id: &str,
    version: i64,
) -> ApiResult<BTreeMap<String, SecretString>> {
    let stored = state
        .store
        .credential_secrets(credential_id, version)
        .await?;
    decrypt_rows(state, workspace_id, credential_id, version, &stored).await
}

/// Decrypts ciphertext rows of one credential version, already read (by [`decrypt`] or from
/// the resolve cache), each bound to its credential, version and field.
pub async fn decrypt_rows(
    state: &AppState,
    workspace_id: &str,
    credential_id: &str,
    version: i64,
    stored: &BTreeMap<String, EncryptedValue>,
) -> ApiResult<BTreeMap<String, SecretString>> {
    let mut out = BTreeMap::new();
    for (field, ev) in stored {
        let key = state.keys.key(&state.store, &ev.key_id).await?;
        let aad = SecretAad::credential(workspace_id, credential_id, version, field);
        let value = key.decrypt(ev, &aad).map_err(|e| {
            super::keys::integrity_error(
                &format!(
                    "credential_secrets(credential_id={credential_id}, version={version}, field={field})"
                ),
                e,
            )
        })?;
        out.insert(field.clone(), value);
    }
    Ok(out)
}

/// The secret values a connection gets from its credential now: the version in effect,
/// decrypted (or fetched from the external manager the credential proxies to).
pub async fn values_for_use(
    state: &AppState,
    workspace_id: &str,
    cred: &ConnectionCredential,
) -> ApiResult<BTreeMap<String, SecretString>> {
    if cred.external {
        let c = state.store.get_credential(&cred.id).await?;
        return crate::service::external::fetch(state, &c).await;
    }
    decrypt(state, workspace_id, &cred.id, cred.effective_version()).await
}

fn check_external(value: &Value) -> ApiResult<()> {
    let obj = value.as_object().ok_or_else(|| {
        ApiError::field(ErrorCode::InvalidField, "/external", "must be an object")
    })?;
    let provider = obj.get("provider").and_then(Value::as_str);
    let allowed: &[&str] = match provider {
        Some("vault_kv2") => &[
            "provider",
            "address",
            "mount",
            "path",
            "key",
            "version",
            "namespace",
            "auth",
        ],
        Some("aws_secrets_manager") => &[
            "provider",
            "secret_id",
            "key",
            "version_id",
            "version_stage",
            "region",
            "endpoint",
        ],
        _ => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/external/provider",
                "must be vault_kv2 or aws_secrets_manager",
            ))
        }
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("/external/{}", pointer_segment(k)),
                format!("unknown field; allowed: {}", allowed.join(", ")),
            ));
        }
    }
    let required: &[&str] = if provider == Some("vault_kv2") {
        &["address", "path"]
    } else {
        &["secret_id"]
    };
    for r in required {
        if !obj.get(*r).is_some_and(|v| v.is_string()) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("/external/{r}"),
                "required (a string)",
            ));
        }
    }
    // An external reference names where a secret lives; it must not carry one. Vault auth
    // material is a reference to another credential, never inline.
    if let Some(auth) = obj.get("auth") {
        let ok = auth.as_object().is_some_and(|a| {
            a.keys()
                .all(|k| k == "method" || k == "credential_id" || k == "role_id_field")
        });
        if !ok {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/external/auth",
                "auth names a credential holding the Vault token or AppRole secret: {method, credential_id}",
            ));
        }
    }
    Ok(())
}

pub async fn create(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    body: Map<String, Value>,
) -> ApiResult<Credential> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::CredentialsWrite)?;
    let mut f = Fields::new(body, CREATE_FIELDS, &[])?;
    let name = f.required_string("name")?;
    check_name("/name", &name)?;
    let kind_id = f.required_string("kind")?;
    let kind = kind(state, &kind_id)?;
    let description = f.optional_string("description")?.unwrap_or_default();
    check_description("/description", &description)?;
    let external = f.take("external").filter(|v| !v.is_null());
    let secrets = f.optional_object("secrets")?;
    let id = new_id();
    let (values, external) = match (secrets, external) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/external",
                "`secrets` and `external` are alternatives: send one",
            ))
        }
        (None, Some(ext)) => {
            check_external(&ext)?;
            (VersionValues::empty(), Some(ext))
        }
        (secrets, None) => {
            let mut values = VersionValues::empty();
            values.apply(kind, secrets.unwrap_or_default())?;
            (values, None)
        }
    };
    let encrypted = encrypt_version(state, &ws.id, &id, 1, &values.secrets).await?;
    let fields = values.field_names();
    let entry = audit(
        p,
        "credential.create",
        Some(&ws.id),
        "credential",
        &id,
        json!({"name": name, "kind": kind.id, "fields": fields, "external": external.as_ref().and_then(|e| e.get("provider"))}),
    );
    let new = NewCredential {
        id: id.clone(),
        workspace_id: ws.id.clone(),
        name,
        kind: kind.id.clone(),
        description,
        owner_connection_id: None,
        external,
        public_fields: values.public,
        secrets: encrypted,
        created_by: p.actor(),
    };
    Ok(state.store.create_credential(&new, &entry).await?)
}

/// A credential in a workspace the principal sees (404 otherwise, whatever the reason). Callers
/// check the permission their operation needs in that workspace.
pub async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Credential> {
    match state.store.get_credential(id).await {
        Ok(c) if p.sees_workspace(&c.workspace_id) => Ok(c),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("credential")),
        Err(e) => Err(e.into()),
    }
}

/// A credential the principal can read: 404 when its workspace is invisible, 403 without
/// credentials:read there.
pub async fn load(state: &AppState, p: &Principal, id: &str) -> ApiResult<Credential> {
    let c = find(state, p, id).await?;
    require_in(p, &c.workspace_id, Permission::CredentialsRead)?;
    Ok(c)
}

/// A shared credential the principal can change. A connection's own credential changes
/// through its connection; a provisioned one only through its file (`managed`: the caller
/// is the provisioning run).
async fn load_for_write(
    state: &AppState,
    p: &Principal,
    id: &str,
    managed: bool,
) -> ApiResult<Credential> {
    let c = load(state, p, id).await?;
    require_in(p, &c.workspace_id, Permission::CredentialsWrite)?;
    if !managed {
        super::connections::not_provisioned("credential", c.provisioned.as_deref())?;
    }
    Ok(c)
}

fn check_revision(c: &Credential, expected: Option<i64>) -> ApiResult<i64> {
    match expected {
        Some(r) if r != c.revision => Err(StoreError::VersionConflict {
            current: c.revision,
        }
        .into()),
        _ => Ok(c.revision),
    }
}

fn not_owned(c: &Credential) -> ApiResult<()> {
    match &c.owner_connection_id {
        None => Ok(()),
        Some(conn) => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("this credential holds the inline secrets of connection {conn}: change it through that connection"),
        )),
    }
}

/// PATCH: name and description (merge patch). Values change only by rotation.
pub async fn patch(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    body: Map<String, Value>,
) -> ApiResult<Credential> {
    patch_managed(state, p, id, expected, body, false).await
}

/// [`patch`], for the provisioning run too (`managed`).
pub(crate) async fn patch_managed(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    body: Map<String, Value>,
    managed: bool,
) -> ApiResult<Credential> {
    let current = load_for_write(state, p, id, managed).await?;
    not_owned(&current)?;
    let expected = check_revision(&current, expected)?;
    let mut f = Fields::new(body, &["name", "description"], READ_ONLY)?;
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
    check_name("/name", &name)?;
    let description = if f.has("description") {
        f.optional_string("description")?.unwrap_or_default()
    } else {
        current.description.clone()
    };
    check_description("/description", &description)?;
    let entry = audit(
        p,
        "credential.update",
        Some(&current.workspace_id),
        "credential",
        &current.id,
        json!({
            "from_revision": expected,
            "changes": metadata_changes(&current, &name, &description),
        }),
    );
    Ok(state
        .store
        .update_credential_metadata(&current.id, expected, &name, &description, &entry)
        .await?)
}

/// Changed metadata for the audit record: name and description are not secret.
fn metadata_changes(current: &Credential, name: &str, description: &str) -> Value {
    let mut out = Map::new();
    if current.name != name {
        out.insert("name".into(), json!({"old": current.name, "new": name}));
    }
    if current.description != description {
        out.insert(
            "description".into(),
            json!({"old": current.description, "new": description}),
        );
    }
    Value::Object(out)
}

/// Changed fields of a rotation for the audit record: non-secret fields with old and new
/// value, secret fields as `"changed"` only.
fn value_changes(old: &Map<String, Value>, new: &VersionValues, sent: &[String]) -> Value {
    let mut out = Map::new();
    for f in sent {
        if new.secrets.contains_key(f) || !new.public.contains_key(f) && !old.contains_key(f) {
            out.insert(format!("fields.{f}"), json!("changed"));
        } else {
            let (o, n) = (old.get(f), new.public.get(f));
            if o != n {
                out.insert(
                    format!("fields.{f}"),
                    json!({"old": o.cloned().unwrap_or(Value::Null), "new": n.cloned().unwrap_or(Value::Null)}),
                );
            }
        }
    }
    Value::Object(out)
}

/// The values of version `version` of a credential, decrypted: where a rotation starts
/// (a field the rotation does not send keeps its value, re-encrypted for the new version
/// because the AAD binds the version).
pub async fn current_values(
    state: &AppState,
    workspace_id: &str,
    credential_id: &str,
    version: i64,
    public: &Map<String, Value>,
) -> ApiResult<VersionValues> {
    Ok(VersionValues {
        public: public.clone(),
        secrets: decrypt(state, workspace_id, credential_id, version).await?,
    })
}

/// POST …/versions: the new values become the current version; the replaced one stays
/// usable for the grace period.
pub async fn rotate(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    body: Map<String, Value>,
) -> ApiResult<Credential> {
    rotate_managed(state, p, id, expected, body, false).await
}

/// [`rotate`], for the provisioning run too (`managed`).
pub(crate) async fn rotate_managed(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    body: Map<String, Value>,
    managed: bool,
) -> ApiResult<Credential> {
    let current = load_for_write(state, p, id, managed).await?;
    not_owned(&current)?;
    if current.external.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            "this credential proxies to an external secret manager: rotate the value there",
        ));
    }
    check_revision(&current, expected)?;
    let kind = kind(state, &current.kind)?;
    let mut f = Fields::new(body, &["secrets"], &[])?;
    let changes = f
        .optional_object("secrets")?
        .ok_or_else(|| ApiError::field(ErrorCode::InvalidField, "/secrets", "required"))?;
    let changed: Vec<String> = changes.keys().cloned().collect();
    let mut values = current_values(
        state,
        &current.workspace_id,
        &current.id,
        current.current_version,
        &current.public_fields,
    )
    .await?;
    values.apply(kind, changes)?;
    let version = current.current_version + 1;
    let encrypted = encrypt_version(
        state,
        &current.workspace_id,
        &current.id,
        version,
        &values.secrets,
    )
    .await?;
    let grace_until = now_millis() + state.settings.credential_grace_ms;
    let entry = audit(
        p,
        "credential.rotate",
        Some(&current.workspace_id),
        "credential",
        &current.id,
        json!({"version": version, "fields_changed": changed, "previous_usable_until": grace_until,
               "changes": value_changes(&current.public_fields, &values, &changed)}),
    );
    let v = NewVersion {
        version,
        public_fields: values.public,
        secrets: encrypted,
        created_by: p.actor(),
        grace_until,
    };
    let rotated = state
        .store
        .rotate_credential(&current.id, expected, &v, &entry)
        .await?;
    // Tokens obtained with the old client secret or refresh token are dropped.
    if rotated.kind == super::oauth::OAUTH2_KIND {
        super::oauth::forget(state, &rotated.id).await?;
    }
    Ok(rotated)
}

pub async fn versions(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> ApiResult<Vec<CredentialVersion>> {
    let c = load(state, p, id).await?;
    Ok(state.store.credential_versions(&c.id).await?)
}

pub async fn revoke(state: &AppState, p: &Principal, id: &str, version: i64) -> ApiResult<()> {
    let c = load_for_write(state, p, id, false).await?;
    let entry = audit(
        p,
        "credential.version.revoke",
        Some(&c.workspace_id),
        "credential",
        &c.id,
        json!({"version": version}),
    );
    Ok(state
        .store
        .revoke_credential_version(&c.id, version, &entry)
        .await?)
}

pub async fn usage(state: &AppState, p: &Principal, id: &str) -> ApiResult<Vec<CredentialUse>> {
    let c = load(state, p, id).await?;
    Ok(state.store.credential_usage(&c.id).await?)
}

pub async fn delete(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
) -> ApiResult<()> {
    let c = load_for_write(state, p, id, false).await?;
    not_owned(&c)?;
    check_revision(&c, expected)?;
    let entry = audit(
        p,
        "credential.delete",
        Some(&c.workspace_id),
        "credential",
        &c.id,
        json!({"name": c.name, "versions": c.current_version}),
    );
    state.store.delete_credential(&c.id, &entry).await?;
    state.oauth.forget(&c.id);
    state.external.invalidate(&c.id);
    Ok(())
}

pub async fn list(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    include_owned: bool,
    limit: u32,
    after: Option<&str>,
) -> ApiResult<CredentialPage> {
    let ws = workspaces::get(state, p, workspace).await?;
    require_in(p, &ws.id, Permission::CredentialsRead)?;
    Ok(state
        .store
        .list_credentials(&ws.id, include_owned, limit, after)
        .await?)
}

/// Destroys the versions whose grace period has ended, every `interval`, for as long as the
/// process runs. Replicas may all run it: the work is idempotent.
pub async fn sweep_forever(state: AppState, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.store.destroy_expired_versions(now_millis()).await {
            Ok(done) if !done.is_empty() => {
                tracing::info!(
                    count = done.len(),
                    "destroyed credential versions past their grace period"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "credential version sweep failed; will retry"),
        }
    }
}
