//! Which credential a connection uses and what its secret fields hold: the plan of a write
//! (validate the state it leaves, encrypt the secrets it sets), the mapping of credential
//! fields onto the type's fields, decryption for reveal and test, and the start-up move of
//! first-release inline secrets into owned credentials.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use patchbay_core::model::{Connection, ConnectionCredential, Credential, Principal};
use patchbay_core::permission::Permission;
use patchbay_core::schema::{ConnectorType, CredentialKind};
use patchbay_core::validate::{check_required, validate_secret_names, validate_settings};
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_store::{
    new_id, now_millis, ConnectionWrite, CredentialLink, LinkChange, NewCredential, NewVersion,
    StoreError, VersionSecrets,
};
use serde_json::{json, Map, Value};

use super::connections::{check_metadata, connector, CredentialInput};
use super::credentials::{self, VersionValues, INLINE_KIND};
use super::require_in;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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
pub(crate) struct Plan {
    pub(crate) change: LinkChange,
    /// Secret fields the connection will have.
    pub(crate) secret_fields: BTreeSet<String>,
    /// Non-secret credential fields that fill settings by name.
    pub(crate) public_fields: Map<String, Value>,
    /// For the audit record: names of the secret fields set or cleared, or the credential.
    pub(crate) audit: Value,
}

/// Validates the state a write would leave and encrypts the secrets it sets.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn plan(
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
pub(crate) async fn owned_change(
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

/// What a connection's secrets are read from: the ciphertext rows as the database holds
/// them (what the resolve cache keeps), or the external manager a credential proxies to.
#[derive(Debug)]
pub enum StoredSecrets {
    /// The credential version in effect: its state and ciphertext. Whether it is usable is
    /// asked at each use (a grace period ends by itself).
    Version(VersionSecrets),
    /// No credential: the connection's first-release rows the start-up upgrade could not
    /// move (they fail their integrity check), usually none.
    Legacy(Vec<(String, patchbay_crypto::EncryptedValue)>),
    /// Fetched from the external secret manager at each use.
    External,
}

/// Reads what a connection's secrets come from.
pub async fn stored_secrets(state: &AppState, c: &Connection) -> ApiResult<StoredSecrets> {
    Ok(match &c.credential {
        None => StoredSecrets::Legacy(state.store.legacy_secrets_of(&c.id).await?),
        Some(cred) if cred.external => StoredSecrets::External,
        Some(cred) => StoredSecrets::Version(
            state
                .store
                .version_secrets(&cred.id, cred.effective_version())
                .await?,
        ),
    })
}

/// The decrypted secrets of a connection (from the credential version in effect, or the
/// legacy rows the start-up upgrade could not move), renamed to the type's fields. No
/// permission check and no audit: its callers (reveal, test) do both.
pub async fn resolve_secrets(
    state: &AppState,
    c: &Connection,
) -> ApiResult<BTreeMap<String, SecretString>> {
    let stored = stored_secrets(state, c).await?;
    decrypt_stored(state, c, &stored).await
}

/// Decrypts what [`stored_secrets`] read (now, or earlier for the resolve cache).
pub async fn decrypt_stored(
    state: &AppState,
    c: &Connection,
    stored: &StoredSecrets,
) -> ApiResult<BTreeMap<String, SecretString>> {
    let cred = match (&c.credential, stored) {
        (None, StoredSecrets::Legacy(rows)) => {
            // Reading rows that failed the upgrade reports that, never an empty answer.
            return decrypt_legacy(state, c, rows).await;
        }
        (Some(cred), StoredSecrets::External | StoredSecrets::Version(_)) => cred,
        _ => return Err(ApiError(patchbay_core::Error::internal())),
    };
    let values = match stored {
        StoredSecrets::Version(v) => {
            let rows = v.usable(now_millis())?;
            credentials::decrypt_rows(state, &c.workspace_id, &cred.id, v.version, rows).await?
        }
        _ => credentials::values_for_use(state, &c.workspace_id, cred).await?,
    };
    let ty = connector(state, &c.connector_type)?;
    Ok(fill_secrets(ty, &cred.kind, values))
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
