//! Group commit of run-time uses: many resolves' audit events (and their credentials' last
//! use) appended in one transaction with a few multi-row statements, so the chain's single
//! writer commits once per batch instead of once (and two statements) per resolve. On
//! PostgreSQL the usual batch is a single statement ([`AT_ONCE`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};

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
    /// The material generation the resolve's material was read at, when it came from a
    /// cache: the record is written only if the generation has not moved since (else it is
    /// reported stale and nothing of it is written). `None`: read from the database for
    /// this call, nothing to check.
    pub checked: Option<i64>,
}

/// What [`Store::record_uses`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// The material generation the transaction saw, when any record was checked.
    pub generation: Option<i64>,
    /// Indexes (into the batch) of the records not written because their material is stale.
    pub stale: Vec<usize>,
}

/// The material generation (migration 0013).
const GENERATION: &str = "SELECT n FROM material_generation WHERE id = 1";

/// Rows per multi-row statement (13 parameters each: well under both engines' limits).
const CHUNK: usize = 64;

impl Store {
    /// The material generation now (see migration 0013).
    pub async fn material_generation(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(GENERATION).fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// Records the uses of `batch` in one transaction: all of them or none, except the
    /// checked records whose material generation moved, which are left out and reported.
    /// Events are appended to the chain in the order given.
    pub async fn record_uses(&self, batch: &[UseRecord]) -> Result<Recorded> {
        if self.backend == Backend::Postgres {
            if let Some(done) = self.record_uses_at_once(batch).await? {
                return Ok(done);
            }
        }
        let mut tx = self.write().await?;
        let mut recorded = Recorded::default();
        if batch.iter().any(|u| u.checked.is_some()) {
            // Inside the writing transaction: a change committed before this statement (so
            // before any of these resolves began) is seen.
            let (n,): (i64,) = sqlx::query_as(GENERATION).fetch_one(&mut *tx.tx).await?;
            recorded.generation = Some(n);
            recorded.stale = (0..batch.len())
                .filter(|&i| batch[i].checked.is_some_and(|g| g != n))
                .collect();
        }
        let batch: Vec<&UseRecord> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| recorded.stale.binary_search(i).is_err())
            .map(|(_, u)| u)
            .collect();
        // The chain head first, then the last-use rows: the order of every writer of both
        // ([`AT_ONCE`] cannot do otherwise), so two of them never wait for each other in a
        // cycle on PostgreSQL.
        let entries: Vec<&AuditEntry> = batch.iter().map(|u| &u.audit).collect();
        append_all(&mut tx, &entries).await?;
        let last = last_uses(batch.iter().copied());
        for chunk in last.chunks(CHUNK) {
            upsert_uses(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// PostgreSQL's usual batch in one round trip instead of six: [`AT_ONCE`] moves the
    /// chain head on from this process's hint, appends the events and upserts the last
    /// uses, all only if the head is still the hint and the material generation is still
    /// the one every checked record was read at (read in the statement, so a change
    /// committed before any of these resolves began is seen). `None` when that did not
    /// hold (another replica or process appended, no hint yet, some material moved, the
    /// checked records were read at different generations): nothing was written, and the
    /// transaction path decides record by record.
    async fn record_uses_at_once(&self, batch: &[UseRecord]) -> Result<Option<Recorded>> {
        let mut generations = batch.iter().filter_map(|u| u.checked);
        let expected = generations.next();
        if batch.is_empty() || generations.any(|g| Some(g) != expected) {
            return Ok(None);
        }
        let Some((seq, hash)) = self.audit_head.lock().ok().and_then(|g| g.clone()) else {
            return Ok(None);
        };
        let at = now_millis();
        let entries: Vec<&AuditEntry> = batch.iter().map(|u| &u.audit).collect();
        let rows = chain(seq, hash.clone(), &entries, at);
        let (last_seq, last_hash) = last(&rows);
        let events: Vec<Value> = rows
            .iter()
            .map(|(seq, e, details, prev_hash, hash)| {
                json!({"seq": seq, "actor": e.actor, "action": e.action,
                       "outcome": e.outcome.as_str(), "workspace_id": e.workspace_id,
                       "target_kind": e.target_kind, "target_id": e.target_id,
                       "request_id": e.request_id, "source_address": e.source_address,
                       "details": details, "prev_hash": prev_hash, "hash": hash})
            })
            .collect();
        let uses: Vec<Value> = last_uses(batch.iter())
            .into_iter()
            .map(|((credential, connection), principal)| {
                json!({"credential_id": credential, "connection_id": connection,
                       "principal": principal})
            })
            .collect();
        let (moved, generation): (i64, i64) = sqlx::query_as(AT_ONCE)
            .bind(last_seq)
            .bind(&last_hash)
            .bind(seq)
            .bind(&hash)
            .bind(expected)
            .bind(at)
            .bind(Value::Array(events).to_string())
            .bind(Value::Array(uses).to_string())
            .fetch_one(&self.pool)
            .await?;
        if moved != 1 {
            return Ok(None);
        }
        if let Ok(mut g) = self.audit_head.lock() {
            *g = Some((last_seq, last_hash));
        }
        Ok(Some(Recorded {
            generation: expected.map(|_| generation),
            stale: Vec::new(),
        }))
    }
}

/// One statement (so one implicit transaction) that records a batch of uses on PostgreSQL
/// when the chain head is `$3`/`$4` and the material generation `$5` (NULL: not checked):
/// the head moves to `$1`/`$2`, the events (`$7`, a JSON array) are appended and the last
/// uses (`$8`) upserted, at `$6`. Answers whether the head moved, and the generation.
const AT_ONCE: &str = "WITH g AS (SELECT n FROM material_generation WHERE id = 1), \
    head AS ( \
        UPDATE audit_chain SET head_seq = $1, head_hash = $2 \
        WHERE id = 1 AND head_seq = $3 AND head_hash = $4 \
        AND ($5::BIGINT IS NULL OR $5::BIGINT = (SELECT n FROM g)) \
        RETURNING id), \
    events AS ( \
        INSERT INTO audit_events (seq, at, actor, action, outcome, workspace_id, target_kind, \
            target_id, request_id, source_address, details, prev_hash, hash) \
        SELECT e.seq, $6, e.actor, e.action, e.outcome, e.workspace_id, e.target_kind, \
            e.target_id, e.request_id, e.source_address, e.details, e.prev_hash, e.hash \
        FROM head, json_to_recordset($7::JSON) AS e(seq BIGINT, actor TEXT, action TEXT, \
            outcome TEXT, workspace_id TEXT, target_kind TEXT, target_id TEXT, \
            request_id TEXT, source_address TEXT, details TEXT, prev_hash TEXT, hash TEXT)), \
    uses AS ( \
        INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
        SELECT u.credential_id, u.connection_id, $6, u.principal \
        FROM head, json_to_recordset($8::JSON) AS u(credential_id TEXT, connection_id TEXT, \
            principal TEXT) \
        ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
        last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by) \
    SELECT (SELECT COUNT(*) FROM head)::BIGINT, (SELECT n FROM g)";

/// One last-use row per (credential, connection), sorted: the latest principal wins (a
/// multi-row upsert may not touch a row twice).
fn last_uses<'a>(batch: impl Iterator<Item = &'a UseRecord>) -> Vec<((&'a str, &'a str), &'a str)> {
    let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for u in batch {
        if let Some((cred, conn)) = &u.credential {
            last.insert((cred, conn), &u.principal);
        }
    }
    last.into_iter().collect()
}

/// `rows` tuples of `width` parameters for a multi-row VALUES list: `($1, $2), ($3, $4)` on
/// PostgreSQL, `(?, ?), (?, ?)` on SQLite, where numbered parameters cost a lookup each
/// (`sqlite3_bind_parameter_name` walks the statement's parameter list, quadratic in a
/// batch of several hundred).
fn placeholders(backend: Backend, rows: usize, width: usize) -> String {
    let mut out = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&(r * width + c + 1).to_string());
                }
                Backend::Sqlite => out.push('?'),
            }
        }
        out.push(')');
    }
    out
}

async fn upsert_uses(tx: &mut WriteTx<'_>, rows: &[((&str, &str), &str)]) -> Result<()> {
    let values = placeholders(tx.backend, rows.len(), 4);
    let sql = format!(
        "INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
         VALUES {} ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
         last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by",
        values
    );
    let now = now_millis();
    let mut q = sqlx::query(&sql);
    for ((cred, conn), principal) in rows {
        q = q.bind(*cred).bind(*conn).bind(now).bind(*principal);
    }
    q.execute(&mut *tx.tx).await?;
    Ok(())
}

/// Appends `entries` to the chain: every hash computed here, the rows inserted in
/// multi-row statements. The head this process last wrote is tried first, moved by one
/// compare-and-set (PostgreSQL) or checked by the triggers as the rows go in (SQLite); when
/// it is stale, the head is read under the chain lock instead.
async fn append_all(tx: &mut WriteTx<'_>, entries: &[&AuditEntry]) -> Result<()> {
    match entries {
        [] => return Ok(()),
        [one] => return insert_audit(tx, one).await,
        _ => {}
    }
    let at = now_millis();
    let hint = tx.audit_head.lock().ok().and_then(|g| g.clone());
    if let Some((seq, hash)) = hint {
        let rows = chain(seq, hash.clone(), entries, at);
        let (last_seq, last_hash) = last(&rows);
        let extended = match tx.backend {
            Backend::Postgres => {
                let moved = sqlx::query(
                    "UPDATE audit_chain SET head_seq = $1, head_hash = $2 \
                     WHERE id = 1 AND head_seq = $3 AND head_hash = $4",
                )
                .bind(last_seq)
                .bind(&last_hash)
                .bind(seq)
                .bind(&hash)
                .execute(&mut *tx.tx)
                .await?
                .rows_affected();
                if moved == 1 {
                    insert_rows(tx, &rows, at).await?;
                }
                moved == 1
            }
            // RAISE(ABORT) undoes only the statement: the transaction goes on.
            Backend::Sqlite => match insert_rows(tx, &rows, at).await {
                Ok(()) => true,
                Err(crate::StoreError::Database(sqlx::Error::Database(db)))
                    if db.message().contains("audit chain head moved") =>
                {
                    false
                }
                Err(e) => return Err(e),
            },
        };
        if extended {
            remember(tx, last_seq, &last_hash);
            return Ok(());
        }
    }
    let (seq, hash) = locked_head(tx, tx.backend).await?;
    let rows = chain(seq, hash, entries, at);
    let (last_seq, last_hash) = last(&rows);
    insert_rows(tx, &rows, at).await?;
    if tx.backend == Backend::Postgres {
        set_head(tx, last_seq, &last_hash).await?;
    }
    remember(tx, last_seq, &last_hash);
    Ok(())
}

/// `(seq, entry, details, prev_hash, hash)` of each entry after head `(seq, prev)`.
type Row<'a> = (i64, &'a AuditEntry, String, String, String);

fn chain<'a>(mut seq: i64, mut prev: String, entries: &[&'a AuditEntry], at: i64) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let details = e.details.to_string();
        let hash = event_hash(&prev, seq, at, e, &details);
        rows.push((seq, *e, details, prev, hash.clone()));
        prev = hash;
    }
    rows
}

fn last(rows: &[Row<'_>]) -> (i64, String) {
    let (seq, _, _, _, hash) = rows.last().expect("at least two entries");
    (*seq, hash.clone())
}

async fn insert_rows(tx: &mut WriteTx<'_>, rows: &[Row<'_>], at: i64) -> Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let values = placeholders(tx.backend, chunk.len(), 13);
        let sql = format!(
            "INSERT INTO audit_events (seq, at, actor, action, outcome, workspace_id, \
             target_kind, target_id, request_id, source_address, details, prev_hash, hash) \
             VALUES {}",
            values
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_on_postgresql_and_are_positional_on_sqlite() {
        assert_eq!(
            placeholders(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
