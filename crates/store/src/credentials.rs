//! Credentials: typed, versioned secret bundles. Each version's secret fields are stored as
//! ciphertext rows (`credential_secrets`); its non-secret fields as JSON on the version row.
//!
//! A rotation adds a version and moves the old current one to `previous` with a grace
//! deadline; [`Store::destroy_expired_versions`] later deletes its ciphertext. Every change
//! commits together with its audit record.

use std::collections::BTreeMap;

use patchbay_core::model::{Credential, CredentialVersion, VersionState};
use patchbay_crypto::EncryptedValue;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry};
use crate::{map_unique, now_millis, stale_or_missing, Result, Store, StoreError, WriteTx};

/// A credential to insert, with the ciphertext of its first version. The caller chose `id`
/// (it is bound into each ciphertext's AAD, as is version 1).
pub struct NewCredential {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub owner_connection_id: Option<String>,
    pub external: Option<Value>,
    pub public_fields: Map<String, Value>,
    pub secrets: Vec<(String, EncryptedValue)>,
    pub created_by: String,
}

/// A new version of a credential, encrypted for `version` (the current one plus 1).
pub struct NewVersion {
    pub version: i64,
    pub public_fields: Map<String, Value>,
    pub secrets: Vec<(String, EncryptedValue)>,
    pub created_by: String,
    /// When the version it replaces stops being usable.
    pub grace_until: i64,
}

/// One credential version's state and ciphertext rows, as [`Store::version_secrets`] read
/// them.
#[derive(Debug, Clone)]
pub struct VersionSecrets {
    pub version: i64,
    /// current, previous, revoked, destroyed, or `missing` (no such version).
    pub state: String,
    pub grace_until: Option<i64>,
    pub values: BTreeMap<String, EncryptedValue>,
}

impl VersionSecrets {
    /// The ciphertext when the version is usable at `now` (current, or previous within its
    /// grace period); [`StoreError::VersionUnavailable`] otherwise.
    pub fn usable(&self, now: i64) -> Result<&BTreeMap<String, EncryptedValue>> {
        match (self.state.as_str(), self.grace_until) {
            ("current", _) => Ok(&self.values),
            ("previous", Some(until)) if until > now => Ok(&self.values),
            (s, _) => Err(StoreError::VersionUnavailable {
                version: self.version,
                state: if s == "previous" {
                    "expired".into()
                } else {
                    s.to_owned()
                },
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CredentialPage {
    pub items: Vec<Credential>,
    pub more_after: Option<String>,
}

/// One connection using a credential.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialUse {
    pub connection_id: String,
    pub connection_name: String,
    pub project_id: String,
    pub pinned_version: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_by: Option<String>,
}

const COLUMNS: &str = "c.id, c.workspace_id, c.name, c.kind, c.description, \
    c.owner_connection_id, c.external, c.current_version, c.revision, c.created_at, \
    c.updated_at, c.provisioned, v.secret_fields, v.public_fields";

const FROM: &str = "FROM credentials c JOIN credential_versions v \
    ON v.credential_id = c.id AND v.version = c.current_version";

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(crate) fn json_list(row: &sqlx::any::AnyRow, col: &str) -> Result<Vec<String>> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(corrupt)
}

pub(crate) fn json_map(row: &sqlx::any::AnyRow, col: &str) -> Result<Map<String, Value>> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(corrupt)
}

fn row_to_credential(row: &sqlx::any::AnyRow) -> Result<Credential> {
    let external: Option<String> = row.try_get("external")?;
    Ok(Credential {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        description: row.try_get("description")?,
        owner_connection_id: row.try_get("owner_connection_id")?,
        external: external
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(corrupt)?,
        current_version: row.try_get("current_version")?,
        revision: row.try_get("revision")?,
        secret_fields: json_list(row, "secret_fields")?,
        public_fields: json_map(row, "public_fields")?,
        provisioned: row.try_get("provisioned")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn row_to_version(row: &sqlx::any::AnyRow) -> Result<CredentialVersion> {
    let state: String = row.try_get("state")?;
    Ok(CredentialVersion {
        version: row.try_get("version")?,
        state: VersionState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("version state {state}")))?,
        secret_fields: json_list(row, "secret_fields")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        grace_until: row.try_get("grace_until")?,
        revoked_at: row.try_get("revoked_at")?,
        destroyed_at: row.try_get("destroyed_at")?,
    })
}

fn field_names(secrets: &[(String, EncryptedValue)]) -> String {
    let mut names: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    serde_json::to_string(&names).expect("strings serialize")
}

async fn insert_version(
    tx: &mut WriteTx<'_>,
    credential_id: &str,
    version: i64,
    public_fields: &Map<String, Value>,
    secrets: &[(String, EncryptedValue)],
    created_by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO credential_versions (credential_id, version, state, secret_fields, \
         public_fields, created_at, created_by) VALUES ($1, $2, 'current', $3, $4, $5, $6)",
    )
    .bind(credential_id)
    .bind(version)
    .bind(field_names(secrets))
    .bind(Value::Object(public_fields.clone()).to_string())
    .bind(now_millis())
    .bind(created_by)
    .execute(&mut *tx.tx)
    .await?;
    for (field, v) in secrets {
        sqlx::query(
            "INSERT INTO credential_secrets (credential_id, version, field, key_id, nonce, \
             ciphertext) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(credential_id)
        .bind(version)
        .bind(field)
        .bind(&v.key_id)
        .bind(v.nonce.clone())
        .bind(v.ciphertext.clone())
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(())
}

pub(crate) async fn insert_credential(tx: &mut WriteTx<'_>, c: &NewCredential) -> Result<()> {
    let now = now_millis();
    sqlx::query(
        "INSERT INTO credentials (id, workspace_id, name, kind, description, \
         owner_connection_id, external, current_version, revision, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 1, $8, $8)",
    )
    .bind(&c.id)
    .bind(&c.workspace_id)
    .bind(&c.name)
    .bind(&c.kind)
    .bind(&c.description)
    .bind(c.owner_connection_id.clone())
    .bind(c.external.as_ref().map(Value::to_string))
    .bind(now)
    .execute(&mut *tx.tx)
    .await
    .map_err(map_unique)?;
    insert_version(tx, &c.id, 1, &c.public_fields, &c.secrets, &c.created_by).await
}

/// Adds version `v.version` if the credential's current version is `v.version - 1` (and, when
/// given, its revision is `expected_revision`). The replaced version becomes `previous`.
pub(crate) async fn add_version(
    tx: &mut WriteTx<'_>,
    credential_id: &str,
    expected_revision: Option<i64>,
    v: &NewVersion,
) -> Result<()> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT current_version, revision FROM credentials WHERE id = $1")
            .bind(credential_id)
            .fetch_optional(&mut *tx.tx)
            .await?;
    let (current, revision) = row.ok_or(StoreError::NotFound)?;
    if current + 1 != v.version || expected_revision.is_some_and(|r| r != revision) {
        return Err(StoreError::VersionConflict { current: revision });
    }
    sqlx::query(
        "UPDATE credential_versions SET state = 'previous', grace_until = $1 \
         WHERE credential_id = $2 AND version = $3",
    )
    .bind(v.grace_until)
    .bind(credential_id)
    .bind(current)
    .execute(&mut *tx.tx)
    .await?;
    insert_version(
        tx,
        credential_id,
        v.version,
        &v.public_fields,
        &v.secrets,
        &v.created_by,
    )
    .await?;
    sqlx::query(
        "UPDATE credentials SET current_version = $1, revision = revision + 1, updated_at = $2 \
         WHERE id = $3",
    )
    .bind(v.version)
    .bind(now_millis())
    .bind(credential_id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Deletes a credential with every version, ciphertext, use record and OAuth token.
pub(crate) async fn remove_credential(tx: &mut WriteTx<'_>, id: &str) -> Result<()> {
    // The chain head before any last-use row (see uses/mod.rs and delete_connection_in).
    crate::audit::locked_head(tx, tx.backend).await?;
    tx.recent_uses.forget();
    for sql in [
        "DELETE FROM credential_secrets WHERE credential_id = $1",
        "DELETE FROM credential_versions WHERE credential_id = $1",
        "DELETE FROM credential_uses WHERE credential_id = $1",
        "DELETE FROM oauth_tokens WHERE credential_id = $1",
        "DELETE FROM credentials WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx.tx).await?;
    }
    Ok(())
}

impl Store {
    pub async fn create_credential(
        &self,
        c: &NewCredential,
        audit: &AuditEntry,
    ) -> Result<Credential> {
        let mut tx = self.write().await?;
        insert_credential(&mut tx, c).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_credential(&c.id).await
    }

    pub async fn get_credential(&self, id: &str) -> Result<Credential> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} {FROM} WHERE c.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        row_to_credential(&row)
    }

    /// A shared credential of a workspace by name.
    pub async fn get_credential_by_name(
        &self,
        workspace_id: &str,
        name: &str,
    ) -> Result<Credential> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} {FROM} WHERE c.workspace_id = $1 AND c.name = $2"
        ))
        .bind(workspace_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row_to_credential(&row)
    }

    /// One page of a workspace's credentials in name order. Connection-owned credentials are
    /// included only when `include_owned`.
    pub async fn list_credentials(
        &self,
        workspace_id: &str,
        include_owned: bool,
        limit: u32,
        after: Option<&str>,
    ) -> Result<CredentialPage> {
        let mut sql = format!("SELECT {COLUMNS} {FROM} WHERE c.workspace_id = $1");
        if !include_owned {
            sql += " AND c.owner_connection_id IS NULL";
        }
        if after.is_some() {
            sql += " AND c.name > $2";
        }
        sql += &format!(" ORDER BY c.name LIMIT {}", u64::from(limit) + 1);
        let mut q = sqlx::query(&sql).bind(workspace_id);
        if let Some(a) = after {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(row_to_credential)
            .collect::<Result<Vec<_>>>()?;
        let more_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|c| c.name.clone())
        } else {
            None
        };
        Ok(CredentialPage { items, more_after })
    }

    /// Changes name and description if the revision is still `expected_revision`.
    pub async fn update_credential_metadata(
        &self,
        id: &str,
        expected_revision: i64,
        name: &str,
        description: &str,
        audit: &AuditEntry,
    ) -> Result<Credential> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE credentials SET name = $1, description = $2, revision = revision + 1, \
             updated_at = $3 WHERE id = $4 AND revision = $5",
        )
        .bind(name)
        .bind(description)
        .bind(now_millis())
        .bind(id)
        .bind(expected_revision)
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        if updated.rows_affected() == 0 {
            let sql = "SELECT revision FROM credentials WHERE id = $1";
            return Err(stale_or_missing(&mut tx, sql, id).await?);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_credential(id).await
    }

    /// Rotates: `v` becomes the current version. See [`NewVersion`].
    pub async fn rotate_credential(
        &self,
        id: &str,
        expected_revision: Option<i64>,
        v: &NewVersion,
        audit: &AuditEntry,
    ) -> Result<Credential> {
        let mut tx = self.write().await?;
        add_version(&mut tx, id, expected_revision, v).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_credential(id).await
    }

    /// Every version's metadata, newest first.
    pub async fn credential_versions(&self, id: &str) -> Result<Vec<CredentialVersion>> {
        let rows = sqlx::query(
            "SELECT version, state, secret_fields, created_at, created_by, grace_until, \
             revoked_at, destroyed_at FROM credential_versions WHERE credential_id = $1 \
             ORDER BY version DESC",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_version).collect()
    }

    /// Withdraws a non-current version at once: its ciphertext is deleted.
    pub async fn revoke_credential_version(
        &self,
        id: &str,
        version: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let state: Option<(String,)> = sqlx::query_as(
            "SELECT state FROM credential_versions WHERE credential_id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(&mut *tx.tx)
        .await?;
        match state.as_ref().map(|(s,)| s.as_str()) {
            None => return Err(StoreError::NotFound),
            Some("current") => {
                return Err(StoreError::Conflict(
                    "the current version cannot be revoked; rotate first".into(),
                ))
            }
            Some("previous") => {}
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "version {version} is already {other}"
                )))
            }
        }
        sqlx::query("DELETE FROM credential_secrets WHERE credential_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query(
            "UPDATE credential_versions SET state = 'revoked', revoked_at = $1 \
             WHERE credential_id = $2 AND version = $3",
        )
        .bind(now_millis())
        .bind(id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// The ciphertext of one version, if that version is usable now (current, or previous
    /// within its grace period). [`StoreError::VersionUnavailable`] otherwise.
    pub async fn credential_secrets(
        &self,
        id: &str,
        version: i64,
    ) -> Result<BTreeMap<String, EncryptedValue>> {
        self.version_secrets(id, version)
            .await?
            .usable(now_millis())
            .cloned()
    }

    /// One version's state and ciphertext, usable or not (a resolve cache keeps this and
    /// asks [`VersionSecrets::usable`] at each use, since a grace period ends by itself).
    pub async fn version_secrets(&self, id: &str, version: i64) -> Result<VersionSecrets> {
        // One query (a resolve's hot path): the version's state with its ciphertext rows.
        let rows = sqlx::query(
            "SELECT v.state, v.grace_until, s.field, s.key_id, s.nonce, s.ciphertext \
             FROM credential_versions v LEFT JOIN credential_secrets s \
             ON s.credential_id = v.credential_id AND s.version = v.version \
             WHERE v.credential_id = $1 AND v.version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(VersionSecrets {
                version,
                state: "missing".into(),
                grace_until: None,
                values: BTreeMap::new(),
            });
        };
        let mut values = BTreeMap::new();
        for row in &rows {
            let field: Option<String> = row.try_get("field")?;
            if field.is_some() {
                let (field, value) = crate::field_and_value(row)?;
                values.insert(field, value);
            }
        }
        Ok(VersionSecrets {
            version,
            state: first.try_get("state")?,
            grace_until: first.try_get("grace_until")?,
            values,
        })
    }

    /// The non-secret fields of one version.
    pub async fn credential_public_fields(
        &self,
        id: &str,
        version: i64,
    ) -> Result<Map<String, Value>> {
        let row = sqlx::query(
            "SELECT public_fields FROM credential_versions WHERE credential_id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        json_map(&row, "public_fields")
    }

    /// Notes that `principal` used the credential through `connection_id` (a reveal, resolve
    /// or test). Best effort: callers log a failure and go on.
    pub async fn record_credential_use(
        &self,
        credential_id: &str,
        connection_id: &str,
        principal: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        upsert_use(&mut tx, credential_id, connection_id, principal).await?;
        tx.commit().await
    }

    /// A reveal through a connection: its audit record and the credential's last use, in
    /// one write transaction (one commit per reveal, not two). No record, no commit.
    pub async fn record_reveal(
        &self,
        credential_id: &str,
        connection_id: &str,
        principal: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        // The chain head before the last-use row, as every writer of both takes them
        // (uses/mod.rs), so none waits for the other in a cycle.
        insert_audit(&mut tx, audit).await?;
        upsert_use(&mut tx, credential_id, connection_id, principal).await?;
        tx.commit().await
    }

    /// Connections that use the credential, with when and by whom each last used it.
    pub async fn credential_usage(&self, credential_id: &str) -> Result<Vec<CredentialUse>> {
        let rows = sqlx::query(
            "SELECT c.id, c.name, c.project_id, c.credential_version, u.last_used_at, \
             u.last_used_by FROM connections c LEFT JOIN credential_uses u \
             ON u.credential_id = c.credential_id AND u.connection_id = c.id \
             WHERE c.credential_id = $1 ORDER BY c.name, c.id",
        )
        .bind(credential_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CredentialUse {
                    connection_id: r.try_get("id")?,
                    connection_name: r.try_get("name")?,
                    project_id: r.try_get("project_id")?,
                    pinned_version: r.try_get("credential_version")?,
                    last_used_at: r.try_get("last_used_at")?,
                    last_used_by: r.try_get("last_used_by")?,
                })
            })
            .collect()
    }

    /// Deletes a shared credential. [`StoreError::InUse`] (with the users) while any
    /// connection references it.
    pub async fn delete_credential(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        let users: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, name FROM connections WHERE credential_id = $1 ORDER BY name",
        )
        .bind(id)
        .fetch_all(&mut *tx.tx)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::InUse(users));
        }
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx.tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        remove_credential(&mut tx, id).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// Destroys every `previous` version whose grace period ended before `now`: deletes its
    /// ciphertext, marks it destroyed and records a `credential.version.destroy` event per
    /// version. Returns (credential id, version) of each.
    pub async fn destroy_expired_versions(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let mut tx = self.write().await?;
        let expired: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT v.credential_id, v.version, c.workspace_id FROM credential_versions v \
             JOIN credentials c ON c.id = v.credential_id \
             WHERE v.state = 'previous' AND v.grace_until <= $1",
        )
        .bind(now)
        .fetch_all(&mut *tx.tx)
        .await?;
        for (cred, version, ws) in &expired {
            sqlx::query("DELETE FROM credential_secrets WHERE credential_id = $1 AND version = $2")
                .bind(cred)
                .bind(*version)
                .execute(&mut *tx.tx)
                .await?;
            sqlx::query(
                "UPDATE credential_versions SET state = 'destroyed', destroyed_at = $1 \
                 WHERE credential_id = $2 AND version = $3",
            )
            .bind(now)
            .bind(cred)
            .bind(*version)
            .execute(&mut *tx.tx)
            .await?;
            insert_audit(
                &mut tx,
                &AuditEntry::system(
                    "system:sweeper",
                    "credential.version.destroy",
                    Some(ws),
                    "credential",
                    cred,
                    serde_json::json!({"version": version, "reason": "grace period ended"}),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(expired.into_iter().map(|(c, v, _)| (c, v)).collect())
    }
}

pub(crate) async fn upsert_use(
    tx: &mut WriteTx<'_>,
    credential_id: &str,
    connection_id: &str,
    principal: &str,
) -> Result<()> {
    // Written past the resolve batches' memory of what they wrote.
    tx.recent_uses.forget();
    sqlx::query(
        "INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
         last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by",
    )
    .bind(credential_id)
    .bind(connection_id)
    .bind(now_millis())
    .bind(principal)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}
