//! The PostgreSQL connection the resolve batches' one statement ([`super::AT_ONCE`]) runs
//! on: the store's own, not the pool's, opened within a bound, dropped and reopened when it
//! breaks.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;

use crate::Result;

/// The PostgreSQL connection [`super::AT_ONCE`] runs on, held by the store rather than taken
/// from the pool: no checkout and no ping per batch (the pool pings before each checkout),
/// and the typed driver, so the batch travels as column arrays in the binary protocol (the
/// `Any` driver has no arrays). Opened at the first batch (after a failed open, tried again a
/// second later; the pool meanwhile). A batch that fails for any reason but
/// the database refusing it (a server restart, a failover) drops the connection, and the
/// next batch opens a new one; whether it committed is read off the chain head (its last
/// hash is there or not), and if it did not, the transaction path through the pool records
/// it. So a broken connection fails no resolve, and a batch that did commit is not recorded
/// again.
#[derive(Clone)]
pub(crate) struct BatchConnection {
    options: Option<PgConnectOptions>,
    state: std::sync::Arc<tokio::sync::Mutex<BatchState>>,
}

#[derive(Default)]
struct BatchState {
    conn: Option<PgConnection>,
    /// After a failed open, batches use the pool without trying again until then (a
    /// database at `max_connections` would otherwise be asked, and logged, per batch).
    retry_at: Option<std::time::Instant>,
}

/// How long after a failed open the batch connection is not tried again.
const BATCH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long opening a connection of the batch's own may take (the pool's acquire timeout
/// does not cover them): a database host that drops packets fails the batch's resolves
/// after this, not after the operating system's TCP timeout.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a connection of the batch's own, within [`CONNECT_TIMEOUT`].
async fn connect(options: &PgConnectOptions) -> std::result::Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to PostgreSQL timed out",
            ))
        })?
}

/// The batch connection's `application_name`, as `pg_stat_activity` shows it.
pub const BATCH_APPLICATION_NAME: &str = "patchbay-resolve-batch";

/// What became of a statement given to [`BatchConnection::fetch`].
pub(super) enum Sent {
    /// Its row.
    Answered((i64, i64)),
    /// Not sent: no connection (SQLite, or it could not be opened).
    NoConnection,
    /// The connection broke on the way: the statement may or may not have committed.
    /// Carries the options to open another connection with.
    Broken(Box<PgConnectOptions>),
}

pub(super) type BatchQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, i64), sqlx::postgres::PgArguments>;

impl BatchConnection {
    /// `None` on SQLite, which never uses it.
    pub(crate) fn new(options: Option<PgConnectOptions>) -> Self {
        Self {
            options,
            state: Default::default(),
        }
    }

    /// The chain head, read (`FOR UPDATE`) on a connection opened for it: not the pool's,
    /// see [`Store::record_uses_at_once`].
    pub(super) async fn read_head(options: &PgConnectOptions) -> Result<(i64, String)> {
        let mut c = connect(options).await?;
        let head =
            sqlx::query_as("SELECT head_seq, head_hash FROM audit_chain WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut c)
                .await?;
        let _ = c.close().await;
        Ok(head)
    }

    /// Runs `query` on the connection, opening it first if needed. An error from the
    /// database itself is returned as such.
    pub(super) async fn fetch(&self, query: BatchQuery<'_>) -> Result<Sent> {
        let Some(options) = &self.options else {
            return Ok(Sent::NoConnection);
        };
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            if state
                .retry_at
                .is_some_and(|t| std::time::Instant::now() < t)
            {
                return Ok(Sent::NoConnection);
            }
            match connect(options).await {
                Ok(c) => {
                    state.conn = Some(c);
                    state.retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "resolve batch connection not opened; using the pool");
                    state.retry_at = Some(std::time::Instant::now() + BATCH_RETRY);
                    return Ok(Sent::NoConnection);
                }
            }
        }
        let Some(c) = state.conn.as_mut() else {
            return Ok(Sent::NoConnection);
        };
        match query.fetch_one(c).await {
            Ok(row) => Ok(Sent::Answered(row)),
            // The statement refused (the connection lives on), unless the server is closing
            // the connection: classes 08 (connection exception) and 57 (operator
            // intervention: shutdown, terminated, idle timeout) come as errors too.
            Err(sqlx::Error::Database(e))
                if !e
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57")) =>
            {
                Err(sqlx::Error::Database(e).into())
            }
            Err(e) => {
                tracing::warn!(error = %e, "resolve batch connection dropped; using the pool");
                state.conn = None;
                Ok(Sent::Broken(Box::new(options.clone())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts TCP and never answers (the kernel completes the handshake; nobody
    /// reads): the batch's own connections give up after [`CONNECT_TIMEOUT`] instead of
    /// waiting for the operating system, the batch connection answers `NoConnection` (so the
    /// batch goes through the pool) and waits [`BATCH_RETRY`] before trying again, and reading
    /// the head after a break fails. On tokio's paused clock: no test waits 10 s.
    #[tokio::test(start_paused = true)]
    async fn the_batchs_own_connections_give_up_on_a_silent_server() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("patchbay")
            .database("patchbay");
        // Far longer than CONNECT_TIMEOUT: reached only if nothing bounds the open.
        let bound = std::time::Duration::from_secs(600);

        let batch = BatchConnection::new(Some(options.clone()));
        let started = tokio::time::Instant::now();
        let sent = tokio::time::timeout(
            bound,
            batch.fetch(sqlx::query_as("SELECT 1::BIGINT, 1::BIGINT")),
        )
        .await
        .expect("the batch connection's open is bounded")
        .unwrap();
        assert!(matches!(sent, Sent::NoConnection), "falls back to the pool");
        assert_eq!(started.elapsed().as_secs(), CONNECT_TIMEOUT.as_secs());
        assert!(
            batch.state.lock().await.retry_at.is_some(),
            "not tried again at once"
        );

        let started = tokio::time::Instant::now();
        let head = tokio::time::timeout(bound, BatchConnection::read_head(&options))
            .await
            .expect("reading the head after a break is bounded");
        let err = head.expect_err("a silent server gives no head").to_string();
        assert!(err.contains("timed out"), "{err}");
        assert_eq!(started.elapsed().as_secs(), CONNECT_TIMEOUT.as_secs());
        drop(silent);
    }
}
