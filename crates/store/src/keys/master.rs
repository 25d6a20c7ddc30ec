//! Master key rotation in the store: the rotation record, the data keys still wrapped by
//! another master key, their compare-and-set re-wrap, and the finish.

use patchbay_crypto::WrappedKey;

use super::{stored_key, StartRotation};
use crate::{now_millis, AuditEntry, Result, Store, StoredDataKey};

impl Store {
    /// Starts (or returns the open) master key rotation record towards `to_kek`.
    pub async fn start_master_rotation(
        &self,
        rotation_id: &str,
        from_kek: &str,
        to_kek: &str,
        audit: &AuditEntry,
    ) -> Result<StartRotation> {
        let mut tx = self.write().await?;
        if let Some(open) = Self::open_rotation_tx(&mut tx, "master", None).await? {
            if open.to_key == to_kek {
                let out = Self::resume_failed_tx(&mut tx, open).await?;
                tx.commit().await?;
                return Ok(match out {
                    StartRotation::AlreadyRunning(r) => StartRotation::Resumed(r),
                    other => other,
                });
            }
            tx.commit().await?;
            return Ok(StartRotation::AlreadyRunning(open));
        }
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM data_keys WHERE kek_id <> $1")
            .bind(to_kek)
            .fetch_one(&mut *tx.tx)
            .await?;
        let rec = Self::insert_rotation_tx(
            &mut tx,
            rotation_id,
            "master",
            None,
            from_kek,
            to_kek,
            total,
        )
        .await?;
        crate::tokens::insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(StartRotation::Started(rec))
    }

    /// Data keys wrapped by a master key other than `kek_id`.
    pub async fn data_keys_not_under(
        &self,
        kek_id: &str,
        limit: i64,
    ) -> Result<Vec<StoredDataKey>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, kek_id, nonce, wrapped FROM data_keys WHERE kek_id <> $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(kek_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_key).collect()
    }

    /// Stores re-wrapped data keys, each only if its row still names the master key it was
    /// read under, and advances the rotation. Returns how many rows changed.
    pub async fn rewrap_data_keys(
        &self,
        rotation_id: &str,
        rewrapped: &[(StoredDataKey, WrappedKey)],
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut n = 0;
        for (old, new) in rewrapped {
            n += sqlx::query(
                "UPDATE data_keys SET kek_id = $3, nonce = $4, wrapped = $5 \
                 WHERE id = $1 AND kek_id = $2",
            )
            .bind(&old.id)
            .bind(&old.wrapped.kek_id)
            .bind(new.kek_id.clone())
            .bind(new.nonce.clone())
            .bind(new.ciphertext.clone())
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        }
        sqlx::query("UPDATE key_rotations SET done = done + $2, updated_at = $3 WHERE id = $1")
            .bind(rotation_id)
            .bind(n as i64)
            .bind(now_millis())
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Ends a master rotation if every data key names `to_kek`; returns how many do not.
    pub async fn finish_master_rotation(
        &self,
        rotation_id: &str,
        to_kek: &str,
        audit: &AuditEntry,
    ) -> Result<i64> {
        let mut tx = self.write().await?;
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM data_keys WHERE kek_id <> $1")
            .bind(to_kek)
            .fetch_one(&mut *tx.tx)
            .await?;
        if left > 0 {
            return Ok(left);
        }
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
}
