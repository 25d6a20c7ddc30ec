//! Group commit of run-time uses: many resolves' audit events (and their credentials' last
//! use) appended in one transaction with a few multi-row statements, so the chain's single
//! writer commits once per batch instead of once (and two statements) per resolve.

use std::collections::BTreeMap;

use crate::audit::{event_hash, insert_audit, locked_head, remember, set_head, AuditEntry};
use crate::{now_millis, Backend, Result, Store, WriteTx};

/// One resolve to record: its audit event, and the credential it used (if any).
#[derive(Debug, Clone)]
pub struct UseRecord {
    /// `(credential id, connection id)` whose last use this is.
    pub credential: Option<(String, String)>,
    /// Who used it (`Principal::actor`).
    pub principal: String,
    pub audit: AuditEntry,
}

/// Rows per multi-row statement (13 parameters each: well under both engines' limits).
const CHUNK: usize = 64;

impl Store {
    /// Records every use of `batch` in one transaction: all of them or none. Events are
    /// appended to the chain in the order given.
    pub async fn record_uses(&self, batch: &[UseRecord]) -> Result<()> {
        let mut tx = self.write().await?;
        // One last-use row per (credential, connection): the latest principal wins (a
        // multi-row upsert may not touch a row twice).
        let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for u in batch {
            if let Some((cred, conn)) = &u.credential {
                last.insert((cred, conn), &u.principal);
            }
        }
        let last: Vec<_> = last.into_iter().collect();
        for chunk in last.chunks(CHUNK) {
            upsert_uses(&mut tx, chunk).await?;
        }
        let entries: Vec<&AuditEntry> = batch.iter().map(|u| &u.audit).collect();
        append_all(&mut tx, &entries).await?;
        tx.commit().await
    }
}

async fn upsert_uses(tx: &mut WriteTx<'_>, rows: &[((&str, &str), &str)]) -> Result<()> {
    let values: Vec<String> = (0..rows.len())
        .map(|i| {
            format!(
                "(${}, ${}, ${}, ${})",
                4 * i + 1,
                4 * i + 2,
                4 * i + 3,
                4 * i + 4
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
         VALUES {} ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
         last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by",
        values.join(", ")
    );
    let now = now_millis();
    let mut q = sqlx::query(&sql);
    for ((cred, conn), principal) in rows {
        q = q.bind(*cred).bind(*conn).bind(now).bind(*principal);
    }
    q.execute(&mut *tx.tx).await?;
    Ok(())
}

/// Appends `entries` to the chain: the head read under the chain lock, every hash computed
/// here, the rows inserted in multi-row statements, the head moved once (SQLite's triggers
/// check and move it per row).
async fn append_all(tx: &mut WriteTx<'_>, entries: &[&AuditEntry]) -> Result<()> {
    match entries {
        [] => return Ok(()),
        [one] => return insert_audit(tx, one).await,
        _ => {}
    }
    let (mut seq, mut prev) = locked_head(tx, tx.backend).await?;
    let at = now_millis();
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let details = e.details.to_string();
        let hash = event_hash(&prev, seq, at, e, &details);
        rows.push((seq, *e, details, prev.clone(), hash.clone()));
        prev = hash;
    }
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = 13 * i;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10,
                    b + 11,
                    b + 12,
                    b + 13
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_events (seq, at, actor, action, outcome, workspace_id, \
             target_kind, target_id, request_id, source_address, details, prev_hash, hash) \
             VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (seq, e, details, prev_hash, hash) in chunk {
            q = q
                .bind(*seq)
                .bind(at)
                .bind(e.actor.as_str())
                .bind(e.action.as_str())
                .bind(e.outcome.as_str())
                .bind(e.workspace_id.clone())
                .bind(e.target_kind.as_str())
                .bind(e.target_id.as_str())
                .bind(e.request_id.clone())
                .bind(e.source_address.clone())
                .bind(details.as_str())
                .bind(prev_hash.as_str())
                .bind(hash.as_str());
        }
        q.execute(&mut *tx.tx).await?;
    }
    if tx.backend == Backend::Postgres {
        set_head(tx, seq, &prev).await?;
    }
    remember(tx, seq, &prev);
    Ok(())
}
