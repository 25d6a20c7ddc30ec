//! Connection test results: the newest is the connection's last result, 20 are kept per
//! connection. A result and its audit record commit together.

use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry};
use crate::{now_millis, Result, Store};

/// Results kept per connection.
pub const TEST_HISTORY: i64 = 20;

/// One stored test result (the probe's JSON, which never holds secrets).
#[derive(Debug, Clone)]
pub struct StoredTestResult {
    pub at: i64,
    pub ok: bool,
    pub result: serde_json::Value,
}

impl Store {
    /// Stores a connection's test result with its audit record and trims the history to
    /// [`TEST_HISTORY`] rows.
    pub async fn record_connection_test(
        &self,
        connection_id: &str,
        ok: bool,
        result: &serde_json::Value,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        insert_test(&mut tx, connection_id, ok, result).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// The newest stored result of each of these connections, in one query (a connection
    /// never tested is absent from the map). For a page of the overview.
    pub async fn last_connection_tests(
        &self,
        connection_ids: &[String],
    ) -> Result<std::collections::HashMap<String, StoredTestResult>> {
        let mut out = std::collections::HashMap::new();
        for chunk in connection_ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // The newest row of a connection is its highest id (ids only grow).
            let sql = format!(
                "SELECT connection_id, at, ok, result FROM connection_tests WHERE id IN \
                 (SELECT MAX(id) FROM connection_tests WHERE connection_id IN ({}) \
                 GROUP BY connection_id)",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("connection_id")?, row_to_result(&r)?);
            }
        }
        Ok(out)
    }

    /// The connection's stored results, newest first.
    pub async fn connection_tests(&self, connection_id: &str) -> Result<Vec<StoredTestResult>> {
        let rows = sqlx::query(
            "SELECT at, ok, result FROM connection_tests WHERE connection_id = $1 ORDER BY id DESC",
        )
        .bind(connection_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_result).collect()
    }
}

fn row_to_result(r: &sqlx::any::AnyRow) -> Result<StoredTestResult> {
    let text: String = r.try_get("result")?;
    let ok: i64 = r.try_get("ok")?;
    Ok(StoredTestResult {
        at: r.try_get("at")?,
        ok: ok != 0,
        result: serde_json::from_str(&text)
            .map_err(|e| crate::StoreError::Corrupt(format!("connection test result: {e}")))?,
    })
}

/// Inserts a result and trims the connection's history, inside a write transaction.
pub(crate) async fn insert_test(
    tx: &mut crate::WriteTx<'_>,
    connection_id: &str,
    ok: bool,
    result: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO connection_tests (connection_id, at, ok, result) VALUES ($1, $2, $3, $4)",
    )
    .bind(connection_id)
    .bind(now_millis())
    .bind(i64::from(ok))
    .bind(result.to_string())
    .execute(&mut *tx.tx)
    .await?;
    sqlx::query(
        "DELETE FROM connection_tests WHERE connection_id = $1 AND id NOT IN \
         (SELECT id FROM connection_tests WHERE connection_id = $2 ORDER BY id DESC LIMIT $3)",
    )
    .bind(connection_id)
    .bind(connection_id)
    .bind(TEST_HISTORY)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}
