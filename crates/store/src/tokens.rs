//! API tokens (stored as hashes) and the audit record table.

use patchbay_core::permission::PermissionSet;
use sqlx::Row;

use crate::{now_millis, Result, Store, StoreError, WriteTx};

pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token_hash: Vec<u8>,
    pub workspace_id: Option<String>,
    pub permissions: PermissionSet,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub token_hash: Vec<u8>,
    pub workspace_id: Option<String>,
    pub permissions: PermissionSet,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// One audit record to write. Plain rows for now; hash chaining comes with the audit work.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub workspace_id: Option<String>,
    pub target_kind: String,
    pub target_id: String,
    /// Never secret values: field names, versions, counts.
    pub details: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub entry: AuditEntry,
}

pub(crate) async fn insert_audit(tx: &mut WriteTx<'_>, e: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, workspace_id, target_kind, target_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_millis())
    .bind(&e.actor)
    .bind(&e.action)
    .bind(e.workspace_id.clone())
    .bind(&e.target_kind)
    .bind(&e.target_id)
    .bind(e.details.to_string())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn create_token(&self, t: &NewToken, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, workspace_id, permissions, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.token_hash.clone())
        .bind(t.workspace_id.clone())
        .bind(t.permissions.to_storage())
        .bind(now_millis())
        .bind(t.expires_at)
        .execute(&mut *tx.tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn find_token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT id, name, token_hash, workspace_id, permissions, expires_at, revoked_at, last_used_at \
             FROM api_tokens WHERE token_hash = $1",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let permissions: String = row.try_get("permissions")?;
        Ok(Some(TokenRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            token_hash: row.try_get("token_hash")?,
            workspace_id: row.try_get("workspace_id")?,
            permissions: PermissionSet::from_storage(&permissions).map_err(StoreError::Corrupt)?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
        }))
    }

    /// Best-effort last-use stamp, at most once a minute per token.
    pub async fn touch_token(&self, id: &str) -> Result<()> {
        let now = now_millis();
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(now)
        .bind(id)
        .bind(now - 60_000)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an event that is not part of a change (e.g. a reveal).
    pub async fn record_audit(&self, e: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        insert_audit(&mut tx, e).await?;
        tx.commit().await
    }

    pub async fn audit_for_target(&self, target_id: &str) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, workspace_id, target_kind, target_id, details \
             FROM audit_events WHERE target_id = $1 ORDER BY id",
        )
        .bind(target_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let details: String = r.try_get("details")?;
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    entry: AuditEntry {
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        workspace_id: r.try_get("workspace_id")?,
                        target_kind: r.try_get("target_kind")?,
                        target_id: r.try_get("target_id")?,
                        details: serde_json::from_str(&details)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    },
                })
            })
            .collect()
    }
}
