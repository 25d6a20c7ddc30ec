//! The tables that hold ciphertext, described once: each one's SQL (select a batch under a
//! key, update a row's ciphertext, count rows under a key) and the AAD a row is bound to.

use patchbay_crypto::{EncryptedValue, SecretAad};

use crate::Backend;

/// The tables that hold ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiphertextTable {
    CredentialSecrets,
    ConnectionSecrets,
    OauthTokens,
    WebhookSecrets,
}

impl CiphertextTable {
    pub const ALL: [CiphertextTable; 4] = [
        CiphertextTable::CredentialSecrets,
        CiphertextTable::ConnectionSecrets,
        CiphertextTable::OauthTokens,
        CiphertextTable::WebhookSecrets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::CredentialSecrets => "credential_secrets",
            Self::ConnectionSecrets => "connection_secrets",
            Self::OauthTokens => "oauth_tokens",
            Self::WebhookSecrets => "webhooks",
        }
    }

    pub(super) fn select(self, backend: Backend) -> String {
        let (sql, lock) = match self {
            Self::CredentialSecrets => (
                "SELECT s.credential_id AS owner_id, s.version AS version, s.field AS field, \
                 s.key_id AS key_id, s.nonce AS nonce, s.ciphertext AS ciphertext, \
                 c.workspace_id AS workspace_id \
                 FROM credential_secrets s LEFT JOIN credentials c ON c.id = s.credential_id \
                 WHERE s.key_id = $1 LIMIT $2",
                " FOR UPDATE OF s",
            ),
            Self::ConnectionSecrets => (
                "SELECT s.connection_id AS owner_id, CAST(0 AS BIGINT) AS version, s.field AS field, \
                 s.key_id AS key_id, s.nonce AS nonce, s.ciphertext AS ciphertext, \
                 c.workspace_id AS workspace_id \
                 FROM connection_secrets s LEFT JOIN connections c ON c.id = s.connection_id \
                 WHERE s.key_id = $1 LIMIT $2",
                " FOR UPDATE OF s",
            ),
            Self::OauthTokens => (
                "SELECT s.credential_id AS owner_id, CAST(-1 AS BIGINT) AS version, \
                 'oauth_token' AS field, s.key_id AS key_id, s.nonce AS nonce, \
                 s.ciphertext AS ciphertext, c.workspace_id AS workspace_id \
                 FROM oauth_tokens s LEFT JOIN credentials c ON c.id = s.credential_id \
                 WHERE s.key_id = $1 LIMIT $2",
                " FOR UPDATE OF s",
            ),
            Self::WebhookSecrets => (
                "SELECT s.id AS owner_id, CAST(-2 AS BIGINT) AS version, \
                 'webhook_secret' AS field, s.key_id AS key_id, s.nonce AS nonce, \
                 s.ciphertext AS ciphertext, s.workspace_id AS workspace_id \
                 FROM webhooks s WHERE s.key_id = $1 LIMIT $2",
                " FOR UPDATE OF s",
            ),
        };
        match backend {
            Backend::Postgres => format!("{sql}{lock}"),
            Backend::Sqlite => sql.to_owned(),
        }
    }

    /// One multi-row write for `rows` rows. Parameters are bound in order of appearance:
    /// per row its values (see [`Self::params_per_row`]) and, for upserts, the new key id;
    /// then (UPDATE only) the new key id; then the old key id. SQLite gets anonymous `?`
    /// placeholders: with numbered ones, binding a statement of thousands of parameters
    /// is quadratic (each `sqlite3_bind_parameter_name` walks the list).
    pub(super) fn update(self, backend: Backend, rows: usize) -> String {
        let mut n = 0;
        let mut p = || match backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => {
                n += 1;
                format!("${n}")
            }
        };
        let per = self.params_per_row();
        let upsert = !matches!(self, Self::OauthTokens | Self::WebhookSecrets);
        let mut values = String::with_capacity(rows * (per + 1) * 7);
        for r in 0..rows {
            if r > 0 {
                values.push(',');
            }
            values.push('(');
            for c in 0..per + usize::from(upsert) {
                if c > 0 {
                    values.push(',');
                }
                values.push_str(&p());
            }
            values.push(')');
        }
        // Upserts on the primary key: each row is one index probe, whatever the planner
        // thinks of a join. The rows were read (and locked) in the same transaction, so the
        // insert branch never runs; the WHERE keeps a row that no longer names the old key.
        match self {
            Self::CredentialSecrets => format!(
                "INSERT INTO credential_secrets (credential_id, version, field, nonce, ciphertext, key_id) \
                 VALUES {values} ON CONFLICT (credential_id, version, field) DO UPDATE \
                 SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext \
                 WHERE credential_secrets.key_id = {}",
                p()
            ),
            Self::ConnectionSecrets => format!(
                "INSERT INTO connection_secrets (connection_id, field, nonce, ciphertext, key_id) \
                 VALUES {values} ON CONFLICT (connection_id, field) DO UPDATE \
                 SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext \
                 WHERE connection_secrets.key_id = {}",
                p()
            ),
            // oauth_tokens has NOT NULL columns the batch does not carry: update in place.
            Self::OauthTokens => {
                let (to, from) = (p(), p());
                format!(
                    "WITH v(owner_id, nonce, ciphertext) AS (VALUES {values}) \
                     UPDATE oauth_tokens SET key_id = {to}, nonce = v.nonce, ciphertext = v.ciphertext \
                     FROM v WHERE oauth_tokens.credential_id = v.owner_id AND oauth_tokens.key_id = {from}"
                )
            }
            Self::WebhookSecrets => {
                let (to, from) = (p(), p());
                format!(
                    "WITH v(owner_id, nonce, ciphertext) AS (VALUES {values}) \
                     UPDATE webhooks SET key_id = {to}, nonce = v.nonce, ciphertext = v.ciphertext \
                     FROM v WHERE webhooks.id = v.owner_id AND webhooks.key_id = {from}"
                )
            }
        }
    }

    pub(super) fn params_per_row(self) -> usize {
        match self {
            Self::CredentialSecrets => 5,
            Self::ConnectionSecrets => 4,
            Self::OauthTokens | Self::WebhookSecrets => 3,
        }
    }
}

/// One stored ciphertext with the identity of its row and the workspace of its owner
/// (`None` when the owner row is missing — an orphan cannot be decrypted).
#[derive(Debug, Clone)]
pub struct CiphertextRow {
    pub table: CiphertextTable,
    pub owner_id: String,
    pub version: i64,
    pub field: String,
    pub workspace_id: Option<String>,
    pub value: EncryptedValue,
}

impl CiphertextRow {
    /// The binding the row's ciphertext must have been made with.
    pub fn aad(&self) -> Option<SecretAad<'_>> {
        let ws = self.workspace_id.as_deref()?;
        Some(match self.table {
            CiphertextTable::CredentialSecrets => {
                SecretAad::credential(ws, &self.owner_id, self.version, &self.field)
            }
            CiphertextTable::ConnectionSecrets => {
                SecretAad::connection(ws, &self.owner_id, &self.field)
            }
            CiphertextTable::OauthTokens => SecretAad::oauth_token(ws, &self.owner_id),
            CiphertextTable::WebhookSecrets => SecretAad::webhook_secret(ws, &self.owner_id),
        })
    }

    /// Names the row (never its value), for logs and rotation errors.
    pub fn identity(&self) -> String {
        match self.table {
            CiphertextTable::CredentialSecrets => format!(
                "credential_secrets(credential_id={}, version={}, field={})",
                self.owner_id, self.version, self.field
            ),
            CiphertextTable::ConnectionSecrets => format!(
                "connection_secrets(connection_id={}, field={})",
                self.owner_id, self.field
            ),
            CiphertextTable::OauthTokens => {
                format!("oauth_tokens(credential_id={})", self.owner_id)
            }
            CiphertextTable::WebhookSecrets => format!("webhooks(id={})", self.owner_id),
        }
    }
}
