//! Key management: data key rows, key rotation records, and the batched re-encryption of
//! every ciphertext table.
//!
//! The invariants this module keeps:
//! - a data key row is deleted only in the transaction that finds no ciphertext naming it
//!   ([`Store::finish_data_rotation`]); migration 0003 makes the database enforce it too
//!   (foreign keys on PostgreSQL, triggers on SQLite);
//! - each batch re-encrypts rows read in the same transaction (locked on PostgreSQL, under
//!   the single writer on SQLite), so a concurrent update is never overwritten with an old
//!   value, and the progress counter commits with the rows.

use patchbay_crypto::{EncryptedValue, WrappedKey};
use sqlx::Row;

use crate::{now_millis, AuditEntry, Result, Store, StoreError, StoredDataKey};

mod master;
mod tables;
pub use tables::{CiphertextRow, CiphertextTable};

/// A data key row with its state (`active` | `retiring`) and age.
#[derive(Debug, Clone)]
pub struct DataKeyInfo {
    pub key: StoredDataKey,
    pub state: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub id: String,
    /// `master` | `data`
    pub kind: String,
    pub workspace_id: Option<String>,
    pub from_key: String,
    pub to_key: String,
    /// `running` | `failed` | `done`
    pub state: String,
    pub total: i64,
    pub done: i64,
    pub error: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// What asking for a rotation did.
#[derive(Debug)]
pub enum StartRotation {
    Started(KeyRotation),
    /// A failed rotation of the same scope was set running again.
    Resumed(KeyRotation),
    AlreadyRunning(KeyRotation),
}

/// Makes the new ciphertext of a row, or `None` when the row fails its integrity check.
pub trait Reencrypt: Send + Sync {
    fn reencrypt(&self, row: &CiphertextRow) -> Option<EncryptedValue>;
}

/// What one re-encryption batch did.
#[derive(Debug)]
pub enum BatchOutcome {
    /// This many rows now name the new key (0: none left under the old key).
    Done(u64),
    /// A row failed to re-encrypt; nothing of the batch was written.
    Failed { row: String },
}

/// Most bound parameters in one statement: below SQLite's 32766 and PostgreSQL's 65535.
const MAX_PARAMS: usize = 30_000;

const ROTATION_COLUMNS: &str = "id, kind, workspace_id, from_key, to_key, state, total, done, \
    error, started_at, updated_at, finished_at";

fn rotation(row: &sqlx::any::AnyRow) -> Result<KeyRotation> {
    Ok(KeyRotation {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        workspace_id: row.try_get("workspace_id")?,
        from_key: row.try_get("from_key")?,
        to_key: row.try_get("to_key")?,
        state: row.try_get("state")?,
        total: row.try_get("total")?,
        done: row.try_get("done")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

const COUNT_UNDER_KEY: &str = "SELECT \
    (SELECT COUNT(*) FROM credential_secrets WHERE key_id = $1) + \
    (SELECT COUNT(*) FROM connection_secrets WHERE key_id = $1) + \
    (SELECT COUNT(*) FROM oauth_tokens WHERE key_id = $1) + \
    (SELECT COUNT(*) FROM webhooks WHERE key_id = $1)";

fn stored_key(row: &sqlx::any::AnyRow) -> Result<StoredDataKey> {
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

impl Store {
    /// Every data key, oldest first.
    pub async fn list_data_keys(&self) -> Result<Vec<DataKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, kek_id, nonce, wrapped, state, created_at FROM data_keys \
             ORDER BY workspace_id, created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DataKeyInfo {
                    key: stored_key(r)?,
                    state: r.try_get("state")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// How many ciphertexts name each data key.
    pub async fn ciphertext_counts(&self) -> Result<std::collections::HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key_id, COUNT(*) FROM credential_secrets GROUP BY key_id \
             UNION ALL SELECT key_id, COUNT(*) FROM connection_secrets GROUP BY key_id \
             UNION ALL SELECT key_id, COUNT(*) FROM oauth_tokens WHERE key_id IS NOT NULL \
             GROUP BY key_id \
             UNION ALL SELECT key_id, COUNT(*) FROM webhooks GROUP BY key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for (k, n) in rows {
            *out.entry(k).or_insert(0) += n;
        }
        Ok(out)
    }

    pub async fn count_ciphertexts_under(&self, key_id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(COUNT_UNDER_KEY)
            .bind(key_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    pub async fn get_rotation(&self, id: &str) -> Result<KeyRotation> {
        let row = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM key_rotations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        rotation(&row)
    }

    /// Rotations not done (running or failed), oldest first.
    pub async fn open_rotations(&self) -> Result<Vec<KeyRotation>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM key_rotations WHERE state <> 'done' ORDER BY started_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rotation).collect()
    }

    async fn open_rotation_tx(
        tx: &mut crate::WriteTx<'_>,
        kind: &str,
        workspace_id: Option<&str>,
    ) -> Result<Option<KeyRotation>> {
        let row = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM key_rotations WHERE kind = $1 \
             AND COALESCE(workspace_id, '') = $2 AND state <> 'done'"
        ))
        .bind(kind)
        .bind(workspace_id.unwrap_or(""))
        .fetch_optional(&mut *tx.tx)
        .await?;
        row.as_ref().map(rotation).transpose()
    }

    async fn resume_failed_tx(
        tx: &mut crate::WriteTx<'_>,
        open: KeyRotation,
    ) -> Result<StartRotation> {
        if open.state == "running" {
            return Ok(StartRotation::AlreadyRunning(open));
        }
        let now = now_millis();
        sqlx::query(
            "UPDATE key_rotations SET state = 'running', error = NULL, updated_at = $2 WHERE id = $1",
        )
        .bind(&open.id)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        Ok(StartRotation::Resumed(KeyRotation {
            state: "running".into(),
            error: None,
            updated_at: now,
            ..open
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_rotation_tx(
        tx: &mut crate::WriteTx<'_>,
        id: &str,
        kind: &str,
        workspace_id: Option<&str>,
        from_key: &str,
        to_key: &str,
        total: i64,
    ) -> Result<KeyRotation> {
        let now = now_millis();
        sqlx::query(
            "INSERT INTO key_rotations (id, kind, workspace_id, from_key, to_key, state, total, \
             done, error, started_at, updated_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, 0, NULL, $7, $7, NULL)",
        )
        .bind(id)
        .bind(kind)
        .bind(workspace_id)
        .bind(from_key)
        .bind(to_key)
        .bind(total)
        .bind(now)
        .execute(&mut *tx.tx)
        .await
        .map_err(crate::map_unique)?;
        Ok(KeyRotation {
            id: id.to_owned(),
            kind: kind.to_owned(),
            workspace_id: workspace_id.map(str::to_owned),
            from_key: from_key.to_owned(),
            to_key: to_key.to_owned(),
            state: "running".into(),
            total,
            done: 0,
            error: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
        })
    }

    /// Starts a data key rotation of a workspace: the active key becomes `retiring`, `new`
    /// becomes active, and a running rotation record names both — in one transaction. A
    /// failed rotation of the workspace is resumed instead; a running one is returned.
    pub async fn start_data_rotation(
        &self,
        rotation_id: &str,
        workspace_id: &str,
        new: &StoredDataKey,
        audit: &AuditEntry,
    ) -> Result<StartRotation> {
        let mut tx = self.write().await?;
        if let Some(open) = Self::open_rotation_tx(&mut tx, "data", Some(workspace_id)).await? {
            let out = Self::resume_failed_tx(&mut tx, open).await?;
            tx.commit().await?;
            return Ok(out);
        }
        let (old,): (String,) = sqlx::query_as(
            "SELECT id FROM data_keys WHERE workspace_id = $1 AND state = 'active' \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(workspace_id)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let now = now_millis();
        sqlx::query(
            "UPDATE data_keys SET state = 'retiring' WHERE workspace_id = $1 AND state = 'active'",
        )
        .bind(workspace_id)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query(
            "INSERT INTO data_keys (id, workspace_id, kek_id, nonce, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(&new.id)
        .bind(workspace_id)
        .bind(&new.wrapped.kek_id)
        .bind(new.wrapped.nonce.clone())
        .bind(new.wrapped.ciphertext.clone())
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        let (total,): (i64,) = sqlx::query_as(COUNT_UNDER_KEY)
            .bind(&old)
            .fetch_one(&mut *tx.tx)
            .await?;
        let rec = Self::insert_rotation_tx(
            &mut tx,
            rotation_id,
            "data",
            Some(workspace_id),
            &old,
            &new.id,
            total,
        )
        .await?;
        crate::tokens::insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(StartRotation::Started(rec))
    }

    /// Re-encrypts up to `limit` ciphertexts naming `from_key` (all tables), reading and
    /// writing them in one transaction that also advances the rotation's `done`. `f` returns
    /// the new ciphertext of a row, or `None` when the row fails its integrity check: then
    /// nothing is written and the row is named.
    pub fn reencrypt_batch<'a>(
        &'a self,
        rotation_id: &'a str,
        from_key: &'a str,
        to_key: &'a str,
        limit: usize,
        f: &'a dyn Reencrypt,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<BatchOutcome>> + Send + 'a>>
    {
        Box::pin(self.reencrypt_batch_inner(rotation_id, from_key, to_key, limit, f))
    }

    async fn reencrypt_batch_inner(
        &self,
        rotation_id: &str,
        from_key: &str,
        to_key: &str,
        limit: usize,
        f: &dyn Reencrypt,
    ) -> Result<BatchOutcome> {
        let mut tx = self.write().await?;
        // Write first: on SQLite this takes the write lock before the reads, so no other
        // connection (e.g. a token's last-use stamp) can commit between read and write.
        sqlx::query("UPDATE key_rotations SET updated_at = $2 WHERE id = $1")
            .bind(rotation_id.to_owned())
            .bind(now_millis())
            .execute(&mut *tx.tx)
            .await?;
        let mut left = limit;
        let mut written = 0u64;
        for table in CiphertextTable::ALL {
            if left == 0 {
                break;
            }
            let select = table.select(self.backend);
            let rows = sqlx::query(&select)
                .bind(from_key.to_owned())
                .bind(left as i64)
                .fetch_all(&mut *tx.tx)
                .await?;
            if rows.is_empty() {
                continue;
            }
            left -= rows.len();
            let mut out: Vec<(CiphertextRow, EncryptedValue)> = Vec::with_capacity(rows.len());
            for r in &rows {
                let row = CiphertextRow {
                    table,
                    owner_id: r.try_get("owner_id")?,
                    version: r.try_get("version")?,
                    field: r.try_get("field")?,
                    workspace_id: r.try_get("workspace_id")?,
                    value: crate::encrypted_value(r)?,
                };
                match f.reencrypt(&row) {
                    Some(ev) => out.push((row, ev)),
                    None => {
                        return Ok(BatchOutcome::Failed {
                            row: row.identity(),
                        })
                    }
                }
            }
            let per = table.params_per_row();
            let in_place = matches!(
                table,
                CiphertextTable::OauthTokens | CiphertextTable::WebhookSecrets
            );
            for chunk in out.chunks((MAX_PARAMS - 2) / (per + 1)) {
                let sql = table.update(self.backend, chunk.len());
                let mut q = sqlx::query(&sql);
                for (row, ev) in chunk {
                    q = q.bind(row.owner_id.clone());
                    match table {
                        CiphertextTable::CredentialSecrets => {
                            q = q.bind(row.version).bind(row.field.clone());
                        }
                        CiphertextTable::ConnectionSecrets => {
                            q = q.bind(row.field.clone());
                        }
                        CiphertextTable::OauthTokens | CiphertextTable::WebhookSecrets => {}
                    }
                    q = q.bind(ev.nonce.clone()).bind(ev.ciphertext.clone());
                    if !in_place {
                        q = q.bind(to_key.to_owned());
                    }
                }
                if in_place {
                    q = q.bind(to_key.to_owned());
                }
                q = q.bind(from_key.to_owned());
                written += q.execute(&mut *tx.tx).await?.rows_affected();
            }
        }
        if written > 0 {
            sqlx::query("UPDATE key_rotations SET done = done + $2, updated_at = $3 WHERE id = $1")
                .bind(rotation_id)
                .bind(written as i64)
                .bind(now_millis())
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(BatchOutcome::Done(written))
    }

    /// Ends a data rotation if no ciphertext names `from_key` any more: in one transaction,
    /// the final count, the deletion (destruction) of the old data key, the record marked
    /// done and the audit event. Returns how many ciphertexts still name the key (0: done).
    pub async fn finish_data_rotation(
        &self,
        rotation_id: &str,
        from_key: &str,
        audit: &AuditEntry,
    ) -> Result<i64> {
        let mut tx = self.write().await?;
        // SQLite: one writer, so the count below is the truth when the key is deleted (and
        // triggers refuse a ciphertext naming a missing key). PostgreSQL: the foreign keys
        // of the ciphertext tables make the DELETE fail if a concurrent writer committed a
        // row naming the key; the rotation then retries and moves that row too.
        let (left,): (i64,) = sqlx::query_as(COUNT_UNDER_KEY)
            .bind(from_key)
            .fetch_one(&mut *tx.tx)
            .await?;
        if left > 0 {
            return Ok(left);
        }
        sqlx::query("DELETE FROM data_keys WHERE id = $1 AND state = 'retiring'")
            .bind(from_key)
            .execute(&mut *tx.tx)
            .await?;
        let now = now_millis();
        sqlx::query(
            "UPDATE key_rotations SET state = 'done', updated_at = $2, finished_at = $2 \
             WHERE id = $1",
        )
        .bind(rotation_id)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        crate::tokens::insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(0)
    }

    /// Marks a rotation failed with a message naming the row (never a value).
    pub async fn fail_rotation(&self, rotation_id: &str, error: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE key_rotations SET state = 'failed', error = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(rotation_id)
        .bind(error)
        .bind(now_millis())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }
}
