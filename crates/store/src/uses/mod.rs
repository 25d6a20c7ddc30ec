//! Group commit of run-time uses: many resolves' audit events (and their credentials' last
//! use) appended in one transaction with a few multi-row statements, so the chain's single
//! writer commits once per batch instead of once (and two statements) per resolve. On
//! PostgreSQL the usual batch is a single statement ([`AT_ONCE`]).

use std::collections::{BTreeMap, HashMap};

mod batch;

pub(crate) use batch::BatchConnection;
use batch::Sent;
pub use batch::BATCH_APPLICATION_NAME;

use crate::audit::{
    event_hash, insert_audit, locked_head, move_head, remember, set_head, AuditEntry,
};
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
        if let Some(done) = self.record_uses_at_once(batch).await? {
            return Ok(done);
        }
        self.record_uses_in_transaction(batch).await
    }

    /// [`Store::record_uses`] without the one-statement path: a transaction through the
    /// pool, which decides record by record.
    pub async fn record_uses_in_transaction(&self, batch: &[UseRecord]) -> Result<Recorded> {
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
        let at = now_millis();
        let last = self
            .recent_uses
            .to_write(last_uses(batch.iter().copied()), at);
        for chunk in last.chunks(CHUNK) {
            upsert_uses(&mut tx, chunk, at).await?;
        }
        tx.commit().await?;
        self.recent_uses.wrote(&last, at);
        Ok(recorded)
    }

    /// PostgreSQL's usual batch in one round trip instead of six: [`AT_ONCE`] moves the
    /// chain head on from this process's hint, appends the events and upserts the last
    /// uses, all only if the head is still the hint and the material generation is still
    /// the one every checked record was read at (read in the statement, so a change
    /// committed before any of these resolves began is seen). `None` when that did not
    /// hold (another replica or process appended, no hint yet, some material moved, the
    /// checked records were read at different generations): nothing was written, and the
    /// transaction path decides record by record. Always `None` on SQLite.
    ///
    /// It touches only connections of its own, never the pool, so it can run on a runtime
    /// other than the pool's: service::resolve_log runs it on a thread of its own.
    pub async fn record_uses_at_once(&self, batch: &[UseRecord]) -> Result<Option<Recorded>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
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
        // One array per column, bound in the binary protocol and expanded by UNNEST:
        // cheaper for PostgreSQL than parsing a JSON document per batch.
        let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let text =
            |f: for<'r> fn(&'r Row<'_>) -> &'r str| rows.iter().map(f).collect::<Vec<&str>>();
        let optional =
            |f: for<'r> fn(&'r Row<'_>) -> Option<&'r str>| rows.iter().map(f).collect::<Vec<_>>();
        let actor = text(|r| &r.1.actor);
        let action = text(|r| &r.1.action);
        let outcome = text(|r| r.1.outcome.as_str());
        let workspace = optional(|r| r.1.workspace_id.as_deref());
        let kind = text(|r| &r.1.target_kind);
        let target = text(|r| &r.1.target_id);
        let request = optional(|r| r.1.request_id.as_deref());
        let source = optional(|r| r.1.source_address.as_deref());
        let details = text(|r| r.2);
        let prev_hashes = text(|r| &r.3);
        let hashes = text(|r| &r.4);
        let uses = self.recent_uses.to_write(last_uses(batch.iter()), at);
        let use_credentials: Vec<&str> = uses.iter().map(|((c, _), _)| *c).collect();
        let use_connections: Vec<&str> = uses.iter().map(|((_, c), _)| *c).collect();
        let use_principals: Vec<&str> = uses.iter().map(|(_, p)| *p).collect();
        let query = sqlx::query_as(AT_ONCE)
            .bind(last_seq)
            .bind(&last_hash)
            .bind(seq)
            .bind(&hash)
            .bind(expected)
            .bind(at)
            .bind(&seqs)
            .bind(&actor)
            .bind(&action)
            .bind(&outcome)
            .bind(&workspace)
            .bind(&kind)
            .bind(&target)
            .bind(&request)
            .bind(&source)
            .bind(&details)
            .bind(&prev_hashes)
            .bind(&hashes)
            .bind(&use_credentials)
            .bind(&use_connections)
            .bind(&use_principals);
        let (moved, generation) = match self.batch.fetch(query).await? {
            Sent::Answered(row) => row,
            Sent::NoConnection => return Ok(None),
            Sent::Broken(options) => {
                // Whether it committed: the head names its last event's hash, which no other
                // batch can have written. FOR UPDATE waits for the statement if the server
                // is still running it (a connection can break under a running statement).
                let (head_seq, head_hash) = BatchConnection::read_head(&options).await?;
                if (head_seq, &head_hash) != (last_seq, &last_hash) {
                    return Ok(None);
                }
                // It did, so the generation was `expected` (the statement checks it).
                (1, expected.unwrap_or_default())
            }
        };
        if moved != 1 {
            return Ok(None);
        }
        if let Ok(mut g) = self.audit_head.lock() {
            *g = Some((last_seq, last_hash));
        }
        self.recent_uses.wrote(&uses, at);
        Ok(Some(Recorded {
            generation: expected.map(|_| generation),
            stale: Vec::new(),
        }))
    }
}

/// One statement (so one implicit transaction) that records a batch of uses on PostgreSQL
/// when the chain head is `$3`/`$4` and the material generation `$5` (NULL: not checked):
/// the head moves to `$1`/`$2`, the events (`$7`-`$18`, one array per column) are appended
/// and the last uses (`$19`-`$21`) upserted, at `$6`. Answers whether the head moved, and
/// the generation.
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
        FROM head, UNNEST($7::BIGINT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], \
            $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], \
            $18::TEXT[]) AS e(seq, actor, action, outcome, workspace_id, target_kind, \
            target_id, request_id, source_address, details, prev_hash, hash)), \
    uses AS ( \
        INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
        SELECT u.credential_id, u.connection_id, $6, u.principal \
        FROM head, UNNEST($19::TEXT[], $20::TEXT[], $21::TEXT[]) \
            AS u(credential_id, connection_id, principal) \
        ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
        last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by) \
    SELECT (SELECT COUNT(*) FROM head)::BIGINT, (SELECT n FROM g)";

/// A credential's last use through a connection is precise to [`LAST_USE_PRECISION_MS`]:
/// a resolve batch leaves out the last-use rows this process wrote less than that long ago
/// with the same principal (the audit log has every use exactly). Under steady load that is
/// one upsert per connection and second instead of one per resolve. Who used it last stays
/// exact for this process (another principal is always written); forgotten whenever
/// anything else writes or deletes last-use rows, and when it grows past
/// [`RECENT_USES_KEPT`] rows.
#[derive(Clone, Default)]
pub(crate) struct RecentUses(std::sync::Arc<std::sync::Mutex<Recent>>);

/// Credential id → connection id → (when, by whom): nested so that a row is looked up by
/// borrowed ids, without building a key.
#[derive(Default)]
struct Recent {
    uses: HashMap<String, HashMap<String, (i64, String)>>,
    rows: usize,
}

/// How stale a credential's recorded last use may be, in milliseconds.
pub const LAST_USE_PRECISION_MS: i64 = 1000;

/// Most last uses remembered.
const RECENT_USES_KEPT: usize = 10_000;

impl RecentUses {
    /// The rows of `last` to write at `now`.
    fn to_write<'a>(
        &self,
        mut last: Vec<((&'a str, &'a str), &'a str)>,
        now: i64,
    ) -> Vec<((&'a str, &'a str), &'a str)> {
        let Ok(recent) = self.0.lock() else {
            return last;
        };
        last.retain(|((cred, conn), principal)| {
            match recent.uses.get(*cred).and_then(|c| c.get(*conn)) {
                Some((at, by)) => by != principal || now - at >= LAST_USE_PRECISION_MS,
                None => true,
            }
        });
        last
    }

    /// `rows` were committed at `now`.
    fn wrote(&self, rows: &[((&str, &str), &str)], now: i64) {
        if rows.is_empty() {
            return;
        }
        if let Ok(mut recent) = self.0.lock() {
            let recent = &mut *recent;
            if recent.rows + rows.len() > RECENT_USES_KEPT {
                *recent = Recent::default();
            }
            for ((cred, conn), principal) in rows {
                if !recent.uses.contains_key(*cred) {
                    recent.uses.insert((*cred).to_owned(), HashMap::new());
                }
                let Some(by_connection) = recent.uses.get_mut(*cred) else {
                    continue;
                };
                match by_connection.get_mut(*conn) {
                    Some(row) => {
                        row.0 = now;
                        if row.1 != *principal {
                            row.1 = (*principal).to_owned();
                        }
                    }
                    None => {
                        by_connection.insert((*conn).to_owned(), (now, (*principal).to_owned()));
                        recent.rows += 1;
                    }
                }
            }
        }
    }

    /// Someone else wrote last-use rows: write the next ones whatever was remembered.
    pub(crate) fn forget(&self) {
        if let Ok(mut recent) = self.0.lock() {
            *recent = Recent::default();
        }
    }
}

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

async fn upsert_uses(tx: &mut WriteTx<'_>, rows: &[((&str, &str), &str)], now: i64) -> Result<()> {
    let values = placeholders(tx.backend, rows.len(), 4);
    let sql = format!(
        "INSERT INTO credential_uses (credential_id, connection_id, last_used_at, last_used_by) \
         VALUES {} ON CONFLICT (credential_id, connection_id) DO UPDATE SET \
         last_used_at = excluded.last_used_at, last_used_by = excluded.last_used_by",
        values
    );
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
                let moved = move_head(tx, (seq, &hash), (last_seq, &last_hash)).await?;
                if moved {
                    insert_rows(tx, &rows, at).await?;
                }
                moved
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
type Row<'a> = (i64, &'a AuditEntry, &'a str, String, String);

fn chain<'a>(mut seq: i64, mut prev: String, entries: &[&'a AuditEntry], at: i64) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let details = e.details.as_json();
        let hash = event_hash(&prev, seq, at, e, details);
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
                .bind(*details)
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

    #[test]
    fn recent_uses_leave_out_only_a_fresh_row_by_the_same_principal() {
        let recent = RecentUses::default();
        let t = 1_000_000;
        let rows = vec![
            (("cred-a", "conn-1"), "token:r"),
            (("cred-a", "conn-2"), "token:r"),
        ];
        assert_eq!(
            recent.to_write(rows.clone(), t),
            rows,
            "nothing remembered yet"
        );
        recent.wrote(&rows, t);
        let next = vec![
            (("cred-a", "conn-1"), "token:r"), // same principal, fresh: left out
            (("cred-a", "conn-2"), "token:other"), // another principal: written
            (("cred-b", "conn-1"), "token:r"), // never written: written
        ];
        assert_eq!(
            recent.to_write(next.clone(), t + LAST_USE_PRECISION_MS - 1),
            next[1..].to_vec()
        );
        assert_eq!(
            recent.to_write(next.clone(), t + LAST_USE_PRECISION_MS),
            next,
            "a remembered use as old as the precision is written again"
        );
        // Writing again moves the time and the principal on.
        recent.wrote(&next[1..2], t + 10);
        assert_eq!(
            recent.to_write(vec![(("cred-a", "conn-2"), "token:r")], t + 20),
            vec![(("cred-a", "conn-2"), "token:r")],
            "the principal remembered is the last one written"
        );
        recent.forget();
        assert_eq!(recent.to_write(rows.clone(), t + 1), rows);
    }

    #[test]
    fn recent_uses_stay_bounded() {
        let recent = RecentUses::default();
        let ids: Vec<String> = (0..RECENT_USES_KEPT + 1).map(|i| i.to_string()).collect();
        for id in &ids {
            recent.wrote(&[(("cred", id.as_str()), "token:r")], 1);
        }
        let kept = recent.0.lock().unwrap().rows;
        assert!((1..=RECENT_USES_KEPT).contains(&kept), "{kept} rows kept");
        let inner = recent.0.lock().unwrap();
        assert_eq!(inner.uses.values().map(HashMap::len).sum::<usize>(), kept);
    }
}
