//! Connections, their tags and their encrypted secret fields.

use std::collections::BTreeMap;

use patchbay_core::model::{Connection, ConnectionCredential};
use patchbay_crypto::EncryptedValue;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry};
use crate::credentials::{
    add_version, insert_credential, json_list, json_map, remove_credential, NewCredential,
    NewVersion,
};
use crate::{map_unique, now_millis, stale_or_missing, Result, Store, StoreError, WriteTx};

/// The non-secret state a create or update writes.
#[derive(Debug, Clone)]
pub struct ConnectionWrite {
    pub name: String,
    pub connector_type: String,
    pub description: String,
    pub environment: Option<String>,
    pub tags: Vec<String>,
    pub settings: Map<String, Value>,
    /// The network zone whose agents test the connection (a zone name of its workspace).
    pub zone: Option<String>,
}

/// Where a new connection's secrets come from.
pub enum CredentialLink {
    /// It has none.
    None,
    /// A shared credential of the same workspace, following its current version or pinned.
    Shared {
        id: String,
        pinned_version: Option<i64>,
    },
    /// Its inline secrets, as a credential owned by the connection.
    Owned(Box<NewCredential>),
}

/// What an update does to a connection's credential.
pub enum LinkChange {
    Keep,
    /// Inline secrets changed: a new version of the connection's own credential.
    RotateOwned {
        credential_id: String,
        version: NewVersion,
    },
    /// A different source; a previously owned credential is deleted with its versions.
    Replace(CredentialLink),
}
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Any of these types (a category filter arrives here as its types).
    pub types: Option<Vec<String>>,
    pub environment: Option<String>,
    pub tag: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// Case-insensitive substring of name or description.
    pub q: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConnectionPage {
    pub items: Vec<Connection>,
    /// Name of the last item when more follow (the caller turns it into a cursor).
    pub more_after: Option<String>,
}

/// A connection's columns, the table aliased `k`, with the number of its dependents.
const COLUMNS: &str = "k.id, k.workspace_id, k.project_id, k.name, k.type, k.description, \
                       k.environment, k.tags, k.settings, k.version, k.created_at, k.updated_at, \
                       k.credential_id, k.credential_version, k.zone, k.provisioned, \
                       (SELECT COUNT(*) FROM connection_dependents d \
                       WHERE d.connection_id = k.id) AS dependents_count";

fn row_to_connection(row: &sqlx::any::AnyRow) -> Result<Connection> {
    let tags: String = row.try_get("tags")?;
    let settings: String = row.try_get("settings")?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    Ok(Connection {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        connector_type: row.try_get("type")?,
        description: row.try_get("description")?,
        environment: row.try_get("environment")?,
        zone: row.try_get("zone")?,
        tags: serde_json::from_str(&tags).map_err(corrupt)?,
        settings: serde_json::from_str(&settings).map_err(corrupt)?,
        secrets_set: Vec::new(),
        credential: None,
        provisioned: row.try_get("provisioned")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        dependents_count: row.try_get("dependents_count")?,
    })
}

/// `LIKE` pattern for a literal substring, with `\` as the escape character.
fn like_pattern(s: &str) -> String {
    let mut out = String::from("%");
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

async fn write_tags(tx: &mut WriteTx<'_>, id: &str, tags: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM connection_tags WHERE connection_id = $1")
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    for tag in tags {
        sqlx::query(
            "INSERT INTO connection_tags (connection_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(tag)
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(())
}

/// Inserts what `link` needs and points the connection at it.
async fn write_link(
    tx: &mut WriteTx<'_>,
    connection_id: &str,
    link: &CredentialLink,
) -> Result<()> {
    let (cred, pinned) = match link {
        CredentialLink::None => (None, None),
        CredentialLink::Shared { id, pinned_version } => (Some(id.clone()), *pinned_version),
        CredentialLink::Owned(c) => {
            insert_credential(tx, c).await?;
            (Some(c.id.clone()), None)
        }
    };
    sqlx::query("UPDATE connections SET credential_id = $1, credential_version = $2 WHERE id = $3")
        .bind(cred)
        .bind(pinned)
        .bind(connection_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// The id of the credential the connection owns, if any.
async fn owned_credential(tx: &mut WriteTx<'_>, connection_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM credentials WHERE owner_connection_id = $1")
            .bind(connection_id)
            .fetch_optional(&mut *tx.tx)
            .await?;
    Ok(row.map(|(id,)| id))
}

impl Store {
    /// Inserts a connection with its encrypted secrets and audit record in one transaction.
    /// The caller chose `id` (it is bound into each ciphertext's AAD).
    pub async fn create_connection(
        &self,
        id: &str,
        workspace_id: &str,
        project_id: &str,
        w: &ConnectionWrite,
        link: &CredentialLink,
        audit: &AuditEntry,
    ) -> Result<Connection> {
        let now = now_millis();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO connections (id, workspace_id, project_id, name, type, description, \
             environment, tags, settings, version, created_at, updated_at, zone) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, $11)",
        )
        .bind(id)
        .bind(workspace_id)
        .bind(project_id)
        .bind(&w.name)
        .bind(&w.connector_type)
        .bind(&w.description)
        .bind(w.environment.clone())
        .bind(serde_json::to_string(&w.tags).expect("strings serialize"))
        .bind(Value::Object(w.settings.clone()).to_string())
        .bind(now)
        .bind(w.zone.clone())
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        write_tags(&mut tx, id, &w.tags).await?;
        write_link(&mut tx, id, link).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_connection(id).await
    }

    /// One connection with its credential reference, in one query (every request on a
    /// connection, and each resolve, starts here).
    pub async fn get_connection(&self, id: &str) -> Result<Connection> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, c.id AS cred_id, c.name AS cred_name, c.kind AS cred_kind, \
             c.owner_connection_id, c.external, c.current_version, \
             v.credential_id AS version_of, v.secret_fields, v.public_fields \
             FROM connections k LEFT JOIN credentials c ON c.id = k.credential_id \
             LEFT JOIN credential_versions v ON v.credential_id = c.id \
             AND v.version = COALESCE(k.credential_version, c.current_version) \
             WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut c = row_to_connection(&row)?;
        // As fill_credentials: a credential only with the version row in effect.
        let version_of: Option<String> = row.try_get("version_of")?;
        if version_of.is_some() {
            let owner: Option<String> = row.try_get("owner_connection_id")?;
            let external: Option<String> = row.try_get("external")?;
            let cred = ConnectionCredential {
                id: row.try_get("cred_id")?,
                name: row.try_get("cred_name")?,
                kind: row.try_get("cred_kind")?,
                owned: owner.as_deref() == Some(c.id.as_str()),
                pinned_version: row.try_get("credential_version")?,
                current_version: row.try_get("current_version")?,
                external: external.is_some(),
                secret_fields: json_list(&row, "secret_fields")?,
                public_fields: json_map(&row, "public_fields")?,
            };
            c.secrets_set = cred.secret_fields.clone();
            c.credential = Some(cred);
        }
        Ok(c)
    }

    pub async fn get_connection_by_name(&self, project_id: &str, name: &str) -> Result<Connection> {
        let id = self.connection_id_by_name(project_id, name).await?;
        self.get_connection(&id).await
    }

    /// The id of the connection named `name` in a project.
    pub async fn connection_id_by_name(&self, project_id: &str, name: &str) -> Result<String> {
        let (id,): (String,) =
            sqlx::query_as("SELECT id FROM connections WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        Ok(id)
    }

    /// Legacy (first release) secret rows: ciphertext owned by a connection directly, to be
    /// moved into a credential owned by it ([`Store::adopt_legacy_secrets`]).
    pub async fn legacy_connection_secrets(
        &self,
    ) -> Result<BTreeMap<String, Vec<(String, EncryptedValue)>>> {
        let rows = sqlx::query(
            "SELECT connection_id, field, key_id, nonce, ciphertext FROM connection_secrets \
             ORDER BY connection_id, field",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, Vec<(String, EncryptedValue)>> = BTreeMap::new();
        for r in &rows {
            out.entry(r.try_get("connection_id")?)
                .or_default()
                .push((r.try_get("field")?, crate::encrypted_value(r)?));
        }
        Ok(out)
    }

    /// One connection's legacy secret rows (see [`Store::legacy_connection_secrets`]).
    pub async fn legacy_secrets_of(
        &self,
        connection_id: &str,
    ) -> Result<Vec<(String, EncryptedValue)>> {
        let rows = sqlx::query(
            "SELECT field, key_id, nonce, ciphertext FROM connection_secrets \
             WHERE connection_id = $1 ORDER BY field",
        )
        .bind(connection_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::field_and_value).collect()
    }

    /// Moves a connection's legacy secret rows into the credential `c` (owned by it and
    /// holding the same values, re-encrypted for their new binding), in one transaction.
    pub async fn adopt_legacy_secrets(
        &self,
        connection_id: &str,
        c: &NewCredential,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        insert_credential(&mut tx, c).await?;
        insert_audit(&mut tx, audit).await?;
        sqlx::query(
            "UPDATE connections SET credential_id = $1, credential_version = NULL WHERE id = $2",
        )
        .bind(&c.id)
        .bind(connection_id)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("DELETE FROM connection_secrets WHERE connection_id = $1")
            .bind(connection_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Fills `credential` and `secrets_set` of each connection from its credential's version
    /// in effect (pinned or current).
    async fn fill_credentials(&self, items: &mut [Connection]) -> Result<()> {
        let ids: Vec<String> = items.iter().map(|c| c.id.clone()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT k.id AS connection_id, c.id, c.name, c.kind, c.owner_connection_id, \
             c.external, c.current_version, k.credential_version, v.secret_fields, \
             v.public_fields FROM connections k JOIN credentials c ON c.id = k.credential_id \
             JOIN credential_versions v ON v.credential_id = c.id \
             AND v.version = COALESCE(k.credential_version, c.current_version) \
             WHERE k.id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        for row in q.fetch_all(&self.pool).await? {
            let id: String = row.try_get("connection_id")?;
            let Some(conn) = items.iter_mut().find(|c| c.id == id) else {
                continue;
            };
            let owner: Option<String> = row.try_get("owner_connection_id")?;
            let external: Option<String> = row.try_get("external")?;
            let cred = ConnectionCredential {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                kind: row.try_get("kind")?,
                owned: owner.as_deref() == Some(id.as_str()),
                pinned_version: row.try_get("credential_version")?,
                current_version: row.try_get("current_version")?,
                external: external.is_some(),
                secret_fields: json_list(&row, "secret_fields")?,
                public_fields: json_map(&row, "public_fields")?,
            };
            conn.secrets_set = cred.secret_fields.clone();
            conn.credential = Some(cred);
        }
        Ok(())
    }

    /// One page of a project's connections in name order, starting after `after`.
    pub async fn list_connections(
        &self,
        project_id: &str,
        filter: &ConnectionFilter,
        limit: u32,
        after: Option<&str>,
    ) -> Result<ConnectionPage> {
        let mut sql = format!("SELECT {COLUMNS} FROM connections k WHERE k.project_id = $1");
        let mut binds: Vec<String> = vec![project_id.to_owned()];
        let next = |binds: &mut Vec<String>, v: String| {
            binds.push(v);
            format!("${}", binds.len())
        };
        if let Some(types) = &filter.types {
            if types.is_empty() {
                return Ok(ConnectionPage {
                    items: vec![],
                    more_after: None,
                });
            }
            let ps: Vec<String> = types.iter().map(|t| next(&mut binds, t.clone())).collect();
            sql += &format!(" AND type IN ({})", ps.join(", "));
        }
        if let Some(env) = &filter.environment {
            sql += &format!(" AND environment = {}", next(&mut binds, env.clone()));
        }
        if let Some(tag) = &filter.tag {
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM connection_tags t WHERE t.connection_id = k.id AND t.tag = {})",
                next(&mut binds, tag.clone())
            );
        }
        if let Some(name) = &filter.name {
            sql += &format!(" AND name = {}", next(&mut binds, name.clone()));
        }
        if let Some(q) = &filter.q {
            let p = next(&mut binds, like_pattern(q));
            sql += &format!(
                " AND (LOWER(name) LIKE {p} ESCAPE '\\' OR LOWER(description) LIKE {p} ESCAPE '\\')"
            );
        }
        if let Some(after) = after {
            sql += &format!(" AND name > {}", next(&mut binds, after.to_owned()));
        }
        sql += &format!(" ORDER BY name LIMIT {}", u64::from(limit) + 1);
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(row_to_connection)
            .collect::<Result<Vec<_>>>()?;
        let more_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|c| c.name.clone())
        } else {
            None
        };
        self.fill_credentials(&mut items).await?;
        Ok(ConnectionPage { items, more_after })
    }

    /// Replaces the non-secret state and applies secret changes if the stored version is
    /// still `expected_version`; bumps the version. All or nothing.
    pub async fn update_connection(
        &self,
        id: &str,
        expected_version: i64,
        w: &ConnectionWrite,
        link: &LinkChange,
        audit: &AuditEntry,
    ) -> Result<Connection> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE connections SET name = $1, description = $2, environment = $3, tags = $4, \
             settings = $5, version = version + 1, updated_at = $6, zone = $9 \
             WHERE id = $7 AND version = $8",
        )
        .bind(&w.name)
        .bind(&w.description)
        .bind(w.environment.clone())
        .bind(serde_json::to_string(&w.tags).expect("strings serialize"))
        .bind(Value::Object(w.settings.clone()).to_string())
        .bind(now_millis())
        .bind(id)
        .bind(expected_version)
        .bind(w.zone.clone())
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        if updated.rows_affected() == 0 {
            let sql = "SELECT version FROM connections WHERE id = $1";
            return Err(stale_or_missing(&mut tx, sql, id).await?);
        }
        write_tags(&mut tx, id, &w.tags).await?;
        match link {
            LinkChange::Keep => {}
            LinkChange::RotateOwned {
                credential_id,
                version,
            } => add_version(&mut tx, credential_id, None, version).await?,
            LinkChange::Replace(new) => {
                let old = owned_credential(&mut tx, id).await?;
                write_link(&mut tx, id, new).await?;
                if let Some(old) = old {
                    remove_credential(&mut tx, &old).await?;
                }
            }
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_connection(id).await
    }

    pub async fn delete_connection(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        delete_connection_in(&mut tx, id).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }
}

/// Deletes a connection with what it owns (its own credential, tags, test results, the
/// registrations of its dependents) inside the caller's transaction.
pub(crate) async fn delete_connection_in(tx: &mut WriteTx<'_>, id: &str) -> Result<()> {
    // The chain head before any last-use row (see uses/mod.rs): this transaction appends its
    // audit event anyway, and a resolve batch holding the head may be upserting these rows.
    crate::audit::locked_head(tx, tx.backend).await?;
    if let Some(owned) = owned_credential(tx, id).await? {
        remove_credential(tx, &owned).await?;
    }
    tx.recent_uses.forget();
    for sql in [
        "DELETE FROM connection_secrets WHERE connection_id = $1",
        "DELETE FROM credential_uses WHERE connection_id = $1",
        "DELETE FROM connection_tags WHERE connection_id = $1",
        "DELETE FROM connection_dependents WHERE connection_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx.tx).await?;
    }
    let deleted = sqlx::query("DELETE FROM connections WHERE id = $1")
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}
