//! Group commit of run-time uses: many resolves' audit events (and their credentials' last
//! use) appended in one transaction, so the chain's single writer commits once per batch
//! instead of once per resolve.

use std::collections::BTreeMap;

use crate::audit::{insert_audit, AuditEntry};
use crate::credentials::upsert_use;
use crate::{Result, Store};

/// One resolve to record: its audit event, and the credential it used (if any).
#[derive(Debug, Clone)]
pub struct UseRecord {
    /// `(credential id, connection id)` whose last use this is.
    pub credential: Option<(String, String)>,
    /// Who used it (`Principal::actor`).
    pub principal: String,
    pub audit: AuditEntry,
}

impl Store {
    /// Records every use of `batch` in one transaction: all of them or none. Events are
    /// appended to the chain in the order given.
    pub async fn record_uses(&self, batch: &[UseRecord]) -> Result<()> {
        let mut tx = self.write().await?;
        // One last-use row per (credential, connection): the latest principal wins.
        let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for u in batch {
            if let Some((cred, conn)) = &u.credential {
                last.insert((cred, conn), &u.principal);
            }
        }
        for ((cred, conn), principal) in last {
            upsert_use(&mut tx, cred, conn, principal).await?;
        }
        for u in batch {
            insert_audit(&mut tx, &u.audit).await?;
        }
        tx.commit().await
    }
}
