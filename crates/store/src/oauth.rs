//! OAuth2 tokens obtained at run time (encrypted), with the lease that makes a refresh
//! single-flight across replicas.

use patchbay_crypto::EncryptedValue;

use crate::{now_millis, Result, Store};

impl Store {
    /// The encrypted token of a credential, if one was saved.
    pub async fn oauth_token(&self, credential_id: &str) -> Result<Option<EncryptedValue>> {
        let row = sqlx::query(
            "SELECT key_id, nonce, ciphertext FROM oauth_tokens \
             WHERE credential_id = $1 AND ciphertext IS NOT NULL",
        )
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(crate::encrypted_value).transpose()
    }

    /// Takes the refresh lease for `ttl_ms` when it is free, expired or already `holder`'s.
    /// Whether `holder` holds it now.
    pub async fn try_oauth_lease(
        &self,
        credential_id: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO oauth_tokens (credential_id, generation) VALUES ($1, 0) \
             ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(credential_id)
        .execute(&mut *tx.tx)
        .await?;
        let taken = sqlx::query(
            "UPDATE oauth_tokens SET lease_holder = $1, lease_until = $2 WHERE credential_id = $3 \
             AND (lease_holder IS NULL OR lease_until < $4 OR lease_holder = $1)",
        )
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(credential_id)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(taken)
    }

    /// Saves a token (always: the refresh token it replaces is already spent) and clears
    /// `holder`'s lease.
    pub async fn save_oauth_token(
        &self,
        credential_id: &str,
        holder: &str,
        token: &EncryptedValue,
        expires_at: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO oauth_tokens (credential_id, key_id, nonce, ciphertext, expires_at, \
             generation) VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (credential_id) DO UPDATE SET \
             key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             expires_at = excluded.expires_at, generation = oauth_tokens.generation + 1, \
             lease_holder = CASE WHEN oauth_tokens.lease_holder = $6 THEN NULL \
             ELSE oauth_tokens.lease_holder END, \
             lease_until = CASE WHEN oauth_tokens.lease_holder = $6 THEN NULL \
             ELSE oauth_tokens.lease_until END",
        )
        .bind(credential_id)
        .bind(&token.key_id)
        .bind(token.nonce.clone())
        .bind(token.ciphertext.clone())
        .bind(expires_at)
        .bind(holder)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Clears `holder`'s lease without saving.
    pub async fn release_oauth_lease(&self, credential_id: &str, holder: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE oauth_tokens SET lease_holder = NULL, lease_until = NULL \
             WHERE credential_id = $1 AND lease_holder = $2",
        )
        .bind(credential_id)
        .bind(holder)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Forgets the saved token (the credential rotated: its client or refresh token changed).
    pub async fn delete_oauth_token(&self, credential_id: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM oauth_tokens WHERE credential_id = $1")
            .bind(credential_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }
}
