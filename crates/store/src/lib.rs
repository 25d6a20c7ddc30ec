//! patchbay's persistence. One [`Store`] speaks to SQLite (the embedded default) or
//! PostgreSQL (many replicas, one database) through sqlx's `Any` driver: the SQL is written
//! once with `$N` placeholders, which both engines accept; only the DDL differs
//! (`migrations/sqlite`, `migrations/postgres`).
//!
//! The store holds ciphertext only. Encryption happens above it; what it guarantees is that
//! a change and its audit record commit together or not at all.

mod audit;
mod connections;
mod credentials;
mod dependents;
mod events;
mod keys;
mod migrate;
mod oauth;
mod probe_results;
mod provisioned;
mod tokens;
mod users;
mod uses;
mod workspaces;
mod zones;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use audit::{
    event_hash, zero_hash, AuditEntry, AuditFilter, AuditRecord, ChainBreak, Details, Outcome,
    Verification,
};
pub use connections::{
    ConnectionFilter, ConnectionPage, ConnectionWrite, CredentialLink, LinkChange,
};
pub use credentials::{CredentialPage, CredentialUse, NewCredential, NewVersion, VersionSecrets};
pub use dependents::{Dependent, Registered};
pub use events::{
    event_kind_for, ClaimedDelivery, DeliveryRecord, DeliveryResult, NewWebhook, WebhookPatch,
    WebhookRecord, EVENT_KINDS,
};
pub use keys::{
    BatchOutcome, CiphertextRow, CiphertextTable, DataKeyInfo, KeyRotation, Reencrypt,
    StartRotation,
};
pub use probe_results::{StoredTestResult, TEST_HISTORY};
pub use provisioned::{Provisionable, ProvisionedConnection};
pub use tokens::{NewToken, TokenRecord};
pub use users::{Membership, NewUser, RoleRecord, SessionRecord, UserRecord};
pub use uses::{Recorded, UseRecord, BATCH_APPLICATION_NAME, LAST_USE_PRECISION_MS};
pub use workspaces::StoredDataKey;
pub use zones::{AgentJob, AgentRecord, ZoneRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("name taken")]
    NameTaken,
    #[error("version conflict: current version is {current}")]
    VersionConflict { current: i64 },
    #[error("in use by {} connection(s)", .0.len())]
    InUse(Vec<(String, String)>),
    #[error("credential version {version} is {state}")]
    VersionUnavailable { version: i64, state: String },
    #[error("{0}")]
    Conflict(String),
    /// A cascade delete found other dependents than the caller chose (they are listed).
    #[error("the connection has {} dependent(s)", .0.len())]
    DependentsChanged(Vec<Dependent>),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer; taking this before each write transaction turns
    /// "database is locked" failures into a short wait.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The audit chain head as this process last wrote it: a hint that saves reading it
    /// in each append, checked by a compare-and-set (audit::insert_audit).
    audit_head: audit::HeadHint,
    /// Bumped by every change that can narrow what a token may do (revoking it, changing
    /// memberships or roles): caches of authenticated tokens compare it.
    auth_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// PostgreSQL: the connection that records resolves' uses in one statement
    /// ([`uses::BatchConnection`]).
    batch: uses::BatchConnection,
    /// The last uses this process wrote ([`uses::RecentUses`]).
    recent_uses: uses::RecentUses,
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Store {
    /// Connects and applies pending migrations. `url` is `sqlite://PATH` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "database URL must start with sqlite: or postgres://".into(),
            )));
        };
        let options: AnyConnectOptions = url.parse()?;
        let batch = uses::BatchConnection::new(match backend {
            Backend::Postgres => Some(
                url.parse::<sqlx::postgres::PgConnectOptions>()?
                    .application_name(uses::BATCH_APPLICATION_NAME),
            ),
            Backend::Sqlite => None,
        });
        // A PostgreSQL connection is pinged before each checkout, so one broken by a server
        // restart or failover is replaced instead of failing a request. An SQLite
        // connection cannot break that way: no ping (a round trip to its worker thread).
        let mut pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 32,
            })
            .test_before_acquire(backend == Backend::Postgres);
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
                         PRAGMA wal_autocheckpoint = 100000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        let store = Self {
            pool,
            backend,
            write_lock: Default::default(),
            audit_head: Default::default(),
            auth_generation: Default::default(),
            batch,
            recent_uses: Default::default(),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// Applies pending migrations; a no-op when the schema is current.
    pub async fn migrate(&self) -> Result<()> {
        migrate::run(self).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The auth generation: changes whenever a token, membership or role changed through
    /// this process.
    pub fn auth_generation(&self) -> u64 {
        self.auth_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn auth_changed(&self) {
        self.auth_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// SQLite: copies what the write-ahead log holds into the database file without
    /// waiting for readers or writers (a PASSIVE checkpoint), so that no commit has to.
    /// Left to SQLite, the commit that finds 1,000 pages in the log checkpoints them itself,
    /// fsync included, and every resolve waiting on that group commit waits with it; the
    /// server runs this every second instead (SQLite's own checkpoint remains only as a
    /// backstop at 100,000 pages). Returns the log's pages and those now in the database;
    /// `None` on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<Option<(i64, i64)>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let (_busy, log, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some((log, done)))
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write transaction (serialized on SQLite).
    async fn write(&self) -> Result<WriteTx<'_>> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        // IMMEDIATE: the transaction takes SQLite's write lock at BEGIN, so no other
        // process can read the same audit chain head and append after it.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            _guard: guard,
            backend: self.backend,
            audit_head: self.audit_head.clone(),
            recent_uses: self.recent_uses.clone(),
        })
    }
}

struct WriteTx<'a> {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::MutexGuard<'a, ()>>,
    backend: Backend,
    audit_head: audit::HeadHint,
    recent_uses: uses::RecentUses,
}

impl WriteTx<'_> {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// The `key_id`, `nonce` and `ciphertext` columns of a row, as one stored ciphertext.
fn encrypted_value(row: &sqlx::any::AnyRow) -> Result<patchbay_crypto::EncryptedValue> {
    use sqlx::Row;
    Ok(patchbay_crypto::EncryptedValue {
        key_id: row.try_get("key_id")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
    })
}

/// `(field, ciphertext)` of a secret row.
fn field_and_value(row: &sqlx::any::AnyRow) -> Result<(String, patchbay_crypto::EncryptedValue)> {
    use sqlx::Row;
    Ok((row.try_get("field")?, encrypted_value(row)?))
}

/// Why a versioned UPDATE matched no row: the row is gone, or its version moved on.
/// `sql` selects the current version by id (`$1`).
async fn stale_or_missing(tx: &mut WriteTx<'_>, sql: &str, id: &str) -> Result<StoreError> {
    let current: Option<(i64,)> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(&mut *tx.tx)
        .await?;
    Ok(match current {
        Some((current,)) => StoreError::VersionConflict { current },
        None => StoreError::NotFound,
    })
}

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::NameTaken,
        _ => StoreError::Database(e),
    }
}
