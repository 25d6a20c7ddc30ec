//! Workspaces, their data keys, and projects.

use patchbay_core::model::{Project, Workspace};
use patchbay_crypto::WrappedKey;
use sqlx::Row;

use crate::{map_unique, new_id, now_millis, Result, Store, StoreError};

/// A workspace data key as stored (wrapped).
#[derive(Debug, Clone)]
pub struct StoredDataKey {
    pub id: String,
    pub workspace_id: String,
    pub wrapped: WrappedKey,
}

fn workspace(row: &sqlx::any::AnyRow) -> Result<Workspace> {
    Ok(Workspace {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn project(row: &sqlx::any::AnyRow) -> Result<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Creates a workspace with its first (active) data key, atomically: a workspace never
    /// exists without a key.
    pub async fn create_workspace(
        &self,
        workspace_id: &str,
        name: &str,
        dek: &StoredDataKey,
        audit: &crate::AuditEntry,
    ) -> Result<Workspace> {
        let now = now_millis();
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(workspace_id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx.tx)
            .await
            .map_err(map_unique)?;
        sqlx::query(
            "INSERT INTO data_keys (id, workspace_id, kek_id, nonce, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(&dek.id)
        .bind(workspace_id)
        .bind(&dek.wrapped.kek_id)
        .bind(dek.wrapped.nonce.clone())
        .bind(dek.wrapped.ciphertext.clone())
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        crate::tokens::insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Workspace {
            id: workspace_id.to_owned(),
            name: name.to_owned(),
            created_at: now,
        })
    }

    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workspace).collect()
    }

    pub async fn get_workspace(&self, id: &str) -> Result<Workspace> {
        let row = sqlx::query("SELECT id, name, created_at FROM workspaces WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        workspace(&row)
    }

    pub async fn get_workspace_by_name(&self, name: &str) -> Result<Workspace> {
        let row = sqlx::query("SELECT id, name, created_at FROM workspaces WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        workspace(&row)
    }

    pub async fn count_workspaces(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM workspaces")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// The key new secrets of the workspace are encrypted with.
    pub async fn active_data_key(&self, workspace_id: &str) -> Result<StoredDataKey> {
        let row = sqlx::query(
            "SELECT id, workspace_id, kek_id, nonce, wrapped FROM data_keys \
             WHERE workspace_id = $1 AND state = 'active' ORDER BY created_at DESC LIMIT 1",
        )
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        data_key(&row)
    }

    pub async fn data_key(&self, id: &str) -> Result<StoredDataKey> {
        let row = sqlx::query(
            "SELECT id, workspace_id, kek_id, nonce, wrapped FROM data_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        data_key(&row)
    }

    pub async fn create_project(
        &self,
        workspace_id: &str,
        name: &str,
        audit: &crate::AuditEntry,
    ) -> Result<Project> {
        let p = Project {
            id: new_id(),
            workspace_id: workspace_id.to_owned(),
            name: name.to_owned(),
            created_at: now_millis(),
        };
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO projects (id, workspace_id, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&p.id)
        .bind(&p.workspace_id)
        .bind(&p.name)
        .bind(p.created_at)
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        let mut audit = audit.clone();
        audit.target_id = p.id.clone();
        crate::tokens::insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(p)
    }

    pub async fn list_projects(&self, workspace_id: &str) -> Result<Vec<Project>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, name, created_at FROM projects \
             WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project).collect()
    }

    pub async fn get_project(&self, id: &str) -> Result<Project> {
        let row =
            sqlx::query("SELECT id, workspace_id, name, created_at FROM projects WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        project(&row)
    }
}

fn data_key(row: &sqlx::any::AnyRow) -> Result<StoredDataKey> {
    Ok(StoredDataKey {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        wrapped: WrappedKey {
            kek_id: row.try_get("kek_id")?,
            nonce: row.try_get("nonce")?,
            ciphertext: row.try_get("wrapped")?,
        },
    })
}
