//! Connections, their tags and their encrypted secret fields.

use std::collections::BTreeMap;

use patchbay_core::model::Connection;
use patchbay_crypto::EncryptedValue;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::tokens::{insert_audit, AuditEntry};
use crate::{map_unique, now_millis, Result, Store, StoreError, WriteTx};

/// The non-secret state a create or update writes.
#[derive(Debug, Clone)]
pub struct ConnectionWrite {
    pub name: String,
    pub connector_type: String,
    pub description: String,
    pub environment: Option<String>,
    pub tags: Vec<String>,
    pub settings: Map<String, Value>,
}

/// What happens to one secret field in an update. Fields not mentioned keep their value.
#[derive(Debug, Clone)]
pub enum SecretChange {
    Set(EncryptedValue),
    Clear,
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

const COLUMNS: &str = "id, workspace_id, project_id, name, type, description, environment, \
                       tags, settings, version, created_at, updated_at";

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
        tags: serde_json::from_str(&tags).map_err(corrupt)?,
        settings: serde_json::from_str(&settings).map_err(corrupt)?,
        secrets_set: Vec::new(),
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
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

async fn put_secret(tx: &mut WriteTx<'_>, id: &str, field: &str, v: &EncryptedValue) -> Result<()> {
    sqlx::query(
        "INSERT INTO connection_secrets (connection_id, field, key_id, nonce, ciphertext) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (connection_id, field) DO UPDATE SET \
         key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext",
    )
    .bind(id)
    .bind(field)
    .bind(&v.key_id)
    .bind(v.nonce.clone())
    .bind(v.ciphertext.clone())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
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
        secrets: &[(String, EncryptedValue)],
        audit: &AuditEntry,
    ) -> Result<Connection> {
        let now = now_millis();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO connections (id, workspace_id, project_id, name, type, description, \
             environment, tags, settings, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10)",
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
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        write_tags(&mut tx, id, &w.tags).await?;
        for (field, v) in secrets {
            put_secret(&mut tx, id, field, v).await?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_connection(id).await
    }

    pub async fn get_connection(&self, id: &str) -> Result<Connection> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM connections WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut c = row_to_connection(&row)?;
        self.fill_secrets_set(std::slice::from_mut(&mut c)).await?;
        Ok(c)
    }

    pub async fn get_connection_by_name(&self, project_id: &str, name: &str) -> Result<Connection> {
        let (id,): (String,) =
            sqlx::query_as("SELECT id FROM connections WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        self.get_connection(&id).await
    }

    /// The encrypted secret fields of a connection, by field name.
    pub async fn connection_secrets(&self, id: &str) -> Result<BTreeMap<String, EncryptedValue>> {
        let rows = sqlx::query(
            "SELECT field, key_id, nonce, ciphertext FROM connection_secrets WHERE connection_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("field")?,
                    EncryptedValue {
                        key_id: r.try_get("key_id")?,
                        nonce: r.try_get("nonce")?,
                        ciphertext: r.try_get("ciphertext")?,
                    },
                ))
            })
            .collect()
    }

    async fn fill_secrets_set(&self, items: &mut [Connection]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=items.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT connection_id, field FROM connection_secrets WHERE connection_id IN ({}) \
             ORDER BY field",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for c in items.iter() {
            q = q.bind(c.id.clone());
        }
        for row in q.fetch_all(&self.pool).await? {
            let id: String = row.try_get("connection_id")?;
            let field: String = row.try_get("field")?;
            if let Some(c) = items.iter_mut().find(|c| c.id == id) {
                c.secrets_set.push(field);
            }
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
        let mut sql = format!("SELECT {COLUMNS} FROM connections WHERE project_id = $1");
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
                " AND EXISTS (SELECT 1 FROM connection_tags t WHERE t.connection_id = connections.id AND t.tag = {})",
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
        self.fill_secrets_set(&mut items).await?;
        Ok(ConnectionPage { items, more_after })
    }

    /// Replaces the non-secret state and applies secret changes if the stored version is
    /// still `expected_version`; bumps the version. All or nothing.
    pub async fn update_connection(
        &self,
        id: &str,
        expected_version: i64,
        w: &ConnectionWrite,
        changes: &[(String, SecretChange)],
        audit: &AuditEntry,
    ) -> Result<Connection> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE connections SET name = $1, description = $2, environment = $3, tags = $4, \
             settings = $5, version = version + 1, updated_at = $6 \
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
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        if updated.rows_affected() == 0 {
            let current: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM connections WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx.tx)
                    .await?;
            return Err(match current {
                Some((current,)) => StoreError::VersionConflict { current },
                None => StoreError::NotFound,
            });
        }
        write_tags(&mut tx, id, &w.tags).await?;
        for (field, change) in changes {
            match change {
                SecretChange::Set(v) => put_secret(&mut tx, id, field, v).await?,
                SecretChange::Clear => {
                    sqlx::query(
                        "DELETE FROM connection_secrets WHERE connection_id = $1 AND field = $2",
                    )
                    .bind(id)
                    .bind(field)
                    .execute(&mut *tx.tx)
                    .await?;
                }
            }
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_connection(id).await
    }

    pub async fn delete_connection(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        for sql in [
            "DELETE FROM connection_secrets WHERE connection_id = $1",
            "DELETE FROM connection_tags WHERE connection_id = $1",
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }
}
