//! The provisioning marker of connections and credentials (`serve --provision DIR`): which
//! file manages an object. Set and cleared with an audit record in one transaction.

use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry};
use crate::{Result, Store};

/// What a marker is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisionable {
    Connection,
    Credential,
}

impl Provisionable {
    fn table(self) -> &'static str {
        match self {
            Self::Connection => "connections",
            Self::Credential => "credentials",
        }
    }
}

/// A provisioned connection, as the start-up prune sees it.
#[derive(Debug, Clone)]
pub struct ProvisionedConnection {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub source: String,
}

impl Store {
    /// Sets (or, with `None`, clears) the file that manages an object.
    pub async fn set_provisioned(
        &self,
        what: Provisionable,
        id: &str,
        source: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(&format!(
            "UPDATE {} SET provisioned = $1 WHERE id = $2",
            what.table()
        ))
        .bind(source.map(str::to_owned))
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// Every provisioned connection, by project and name.
    pub async fn provisioned_connections(&self) -> Result<Vec<ProvisionedConnection>> {
        let rows = sqlx::query(
            "SELECT id, project_id, name, provisioned FROM connections \
             WHERE provisioned IS NOT NULL ORDER BY project_id, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProvisionedConnection {
                    id: r.try_get("id")?,
                    project_id: r.try_get("project_id")?,
                    name: r.try_get("name")?,
                    source: r.try_get("provisioned")?,
                })
            })
            .collect()
    }
}

impl Store {
    /// Every provisioned credential: (id, name, source).
    pub async fn provisioned_credentials(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT id, name, provisioned FROM credentials WHERE provisioned IS NOT NULL \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("name")?,
                    r.try_get("provisioned")?,
                ))
            })
            .collect()
    }
}
