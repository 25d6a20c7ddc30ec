//! API tokens (stored as hashes).

use patchbay_core::permission::PermissionSet;
use sqlx::Row;

pub(crate) use crate::audit::insert_audit;
use crate::{now_millis, AuditEntry, Result, Store, StoreError};

pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token_hash: Vec<u8>,
    pub workspace_id: Option<String>,
    pub permissions: PermissionSet,
    pub expires_at: Option<i64>,
    /// `personal`, `runner` or `agent`.
    pub kind: String,
    /// The principal that minted it (`token:<id>`), `None` for the bootstrap token.
    pub created_by: Option<String>,
    /// The user it belongs to; `None` for tokens that predate users.
    pub user_id: Option<String>,
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
    pub kind: String,
    pub created_by: Option<String>,
    pub user_id: Option<String>,
    pub created_at: i64,
}

const TOKEN_COLUMNS: &str = "id, name, token_hash, workspace_id, permissions, expires_at, \
    revoked_at, last_used_at, kind, created_by, user_id, created_at";

fn row_to_token(row: &sqlx::any::AnyRow) -> Result<TokenRecord> {
    let permissions: String = row.try_get("permissions")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        workspace_id: row.try_get("workspace_id")?,
        permissions: PermissionSet::from_storage(&permissions).map_err(StoreError::Corrupt)?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        kind: row.try_get("kind")?,
        created_by: row.try_get("created_by")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn create_token(&self, t: &NewToken, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        insert_token(&mut tx, t).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn get_token(&self, id: &str) -> Result<TokenRecord> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row_to_token(&row)
    }

    /// Tokens, newest first: all of them, or those minted by `created_by`.
    pub async fn list_tokens(&self, created_by: Option<&str>) -> Result<Vec<TokenRecord>> {
        let mut sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens");
        if created_by.is_some() {
            sql += " WHERE created_by = $1";
        }
        sql += " ORDER BY created_at DESC, id";
        let mut q = sqlx::query(&sql);
        if let Some(c) = created_by {
            q = q.bind(c);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_token)
            .collect()
    }

    /// Revokes a token at once (the next request with it is refused).
    pub async fn revoke_token(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.auth_changed();
        Ok(())
    }

    pub async fn find_token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_token).transpose()
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
}

/// Inserts a token row inside a write transaction (tokens, agent tokens).
pub(crate) async fn insert_token(tx: &mut crate::WriteTx<'_>, t: &NewToken) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, workspace_id, permissions, created_at, \
         expires_at, kind, created_by, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.token_hash.clone())
    .bind(t.workspace_id.clone())
    .bind(t.permissions.to_storage())
    .bind(now_millis())
    .bind(t.expires_at)
    .bind(&t.kind)
    .bind(t.created_by.clone())
    .bind(t.user_id.clone())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}
