//! Schema migrations, compiled in. Each backend has its own DDL; versions must match.

use sqlx::Executor;

use crate::{now_millis, Backend, Result, Store};

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_credentials.sql")),
    (3, include_str!("../migrations/sqlite/0003_keys.sql")),
    (5, include_str!("../migrations/sqlite/0005_tokens.sql")),
    (6, include_str!("../migrations/sqlite/0006_audit.sql")),
    (
        7,
        include_str!("../migrations/sqlite/0007_probe_results.sql"),
    ),
    (8, include_str!("../migrations/sqlite/0008_users.sql")),
    (9, include_str!("../migrations/sqlite/0009_sessions.sql")),
    (
        10,
        include_str!("../migrations/sqlite/0010_dependents_events.sql"),
    ),
    (
        11,
        include_str!("../migrations/sqlite/0011_zones_agents.sql"),
    ),
    (
        12,
        include_str!("../migrations/sqlite/0012_provisioned.sql"),
    ),
    (
        13,
        include_str!("../migrations/sqlite/0013_material_generation.sql"),
    ),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_credentials.sql"),
    ),
    (3, include_str!("../migrations/postgres/0003_keys.sql")),
    (5, include_str!("../migrations/postgres/0005_tokens.sql")),
    (6, include_str!("../migrations/postgres/0006_audit.sql")),
    (
        7,
        include_str!("../migrations/postgres/0007_probe_results.sql"),
    ),
    (8, include_str!("../migrations/postgres/0008_users.sql")),
    (9, include_str!("../migrations/postgres/0009_sessions.sql")),
    (
        10,
        include_str!("../migrations/postgres/0010_dependents_events.sql"),
    ),
    (
        11,
        include_str!("../migrations/postgres/0011_zones_agents.sql"),
    ),
    (
        12,
        include_str!("../migrations/postgres/0012_provisioned.sql"),
    ),
    (
        13,
        include_str!("../migrations/postgres/0013_material_generation.sql"),
    ),
];

pub(crate) async fn run(store: &Store) -> Result<()> {
    let migrations = match store.backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let mut tx = store.write().await?;
    if store.backend == Backend::Postgres {
        // Replicas starting together: one migrates, the others wait here.
        tx.tx
            .execute("SELECT pg_advisory_xact_lock(7411207300)")
            .await?;
    }
    tx.tx
        .execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx.tx)
        .await?;
    for (version, sql) in migrations {
        if applied.iter().any(|(v,)| v == version) {
            continue;
        }
        tracing::info!(version, "applying migration");
        sqlx::raw_sql(sql).execute(&mut *tx.tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(now_millis())
            .execute(&mut *tx.tx)
            .await?;
    }
    tx.commit().await?;
    let chained = crate::audit::chain_unchained(store).await?;
    if chained > 0 {
        tracing::info!(
            chained,
            "chained audit events written before the hash chain"
        );
    }
    Ok(())
}
