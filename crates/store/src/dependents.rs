//! Dependents: what consumers registered as using a connection (`connection_dependents`),
//! and the cascade delete of a connection together with the dependents chosen by the caller.

use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry};
use crate::{now_millis, Result, Store, StoreError};

/// One registration: `kind` and `ref` identify it within the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub connection_id: String,
    pub kind: String,
    pub reference: String,
    pub name: String,
    pub url: Option<String>,
    /// The actor that registered (or last re-registered) it.
    pub registered_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a register call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
}

const COLUMNS: &str = "connection_id, kind, ref, name, url, registered_by, created_at, updated_at";

fn row_to_dependent(r: &sqlx::any::AnyRow) -> Result<Dependent> {
    Ok(Dependent {
        connection_id: r.try_get("connection_id")?,
        kind: r.try_get("kind")?,
        reference: r.try_get("ref")?,
        name: r.try_get("name")?,
        url: r.try_get("url")?,
        registered_by: r.try_get("registered_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn dependents_in(tx: &mut crate::WriteTx<'_>, connection_id: &str) -> Result<Vec<Dependent>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM connection_dependents WHERE connection_id = $1 ORDER BY kind, ref"
    ))
    .bind(connection_id)
    .fetch_all(&mut *tx.tx)
    .await?;
    rows.iter().map(row_to_dependent).collect()
}

impl Store {
    /// The connection's dependents, ordered by kind then ref.
    pub async fn list_dependents(&self, connection_id: &str) -> Result<Vec<Dependent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connection_dependents WHERE connection_id = $1 \
             ORDER BY kind, ref"
        ))
        .bind(connection_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_dependent).collect()
    }

    /// Registers a dependent, or updates its name and url when it exists (PUT semantics).
    pub async fn register_dependent(
        &self,
        d: &Dependent,
        audit: &AuditEntry,
    ) -> Result<Registered> {
        let mut tx = self.write().await?;
        let now = now_millis();
        let exists: Option<(i64,)> = sqlx::query_as(
            "SELECT created_at FROM connection_dependents \
             WHERE connection_id = $1 AND kind = $2 AND ref = $3",
        )
        .bind(&d.connection_id)
        .bind(&d.kind)
        .bind(&d.reference)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let outcome = if exists.is_some() {
            sqlx::query(
                "UPDATE connection_dependents SET name = $4, url = $5, registered_by = $6, \
                 updated_at = $7 WHERE connection_id = $1 AND kind = $2 AND ref = $3",
            )
            .bind(&d.connection_id)
            .bind(&d.kind)
            .bind(&d.reference)
            .bind(&d.name)
            .bind(d.url.clone())
            .bind(&d.registered_by)
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
            Registered::Updated
        } else {
            // The connection may have been deleted since the caller loaded it: the foreign
            // key (PostgreSQL) or this check (SQLite enforces it too) makes that a 404.
            let present: Option<(String,)> =
                sqlx::query_as("SELECT id FROM connections WHERE id = $1")
                    .bind(&d.connection_id)
                    .fetch_optional(&mut *tx.tx)
                    .await?;
            if present.is_none() {
                return Err(StoreError::NotFound);
            }
            sqlx::query(
                "INSERT INTO connection_dependents (connection_id, kind, ref, name, url, \
                 registered_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&d.connection_id)
            .bind(&d.kind)
            .bind(&d.reference)
            .bind(&d.name)
            .bind(d.url.clone())
            .bind(&d.registered_by)
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
            Registered::Created
        };
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Removes one registration; `NotFound` when there is none.
    pub async fn unregister_dependent(
        &self,
        connection_id: &str,
        kind: &str,
        reference: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query(
            "DELETE FROM connection_dependents WHERE connection_id = $1 AND kind = $2 AND ref = $3",
        )
        .bind(connection_id)
        .bind(kind)
        .bind(reference)
        .execute(&mut *tx.tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// Deletes a connection together with its dependents, in one transaction with the
    /// connection's audit record and one record per cascaded dependent (`cascaded`, each
    /// naming its dependent as `target_id` = `<connection>/<kind>/<ref>`).
    ///
    /// `expected` is the set of `(kind, ref)` the caller saw and chose to cascade: when the
    /// dependents in the database differ (one was registered or removed meanwhile), nothing
    /// is deleted and the current list comes back as [`StoreError::DependentsChanged`].
    pub async fn delete_connection_cascade(
        &self,
        id: &str,
        expected: &[(String, String)],
        audit: &AuditEntry,
        cascaded: &[AuditEntry],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let current = dependents_in(&mut tx, id).await?;
        let mut now: Vec<(String, String)> = current
            .iter()
            .map(|d| (d.kind.clone(), d.reference.clone()))
            .collect();
        let mut want = expected.to_vec();
        now.sort();
        want.sort();
        if now != want {
            return Err(StoreError::DependentsChanged(current));
        }
        sqlx::query("DELETE FROM connection_dependents WHERE connection_id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        crate::connections::delete_connection_in(&mut tx, id).await?;
        for e in cascaded {
            insert_audit(&mut tx, e).await?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }
}
