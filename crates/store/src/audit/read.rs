//! Reading the audit log: listing with filters and cursors (chain order or newest first),
//! and verifying the hash chain from the recorded origin to the recorded head.

use sqlx::Row;

use super::{event_hash, AuditEntry, Outcome};
use crate::{Backend, Result, Store, StoreError};

/// A stored event.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub seq: i64,
    pub at: i64,
    pub prev_hash: String,
    pub hash: String,
    pub entry: AuditEntry,
}

/// What to list; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub workspace_id: Option<String>,
    pub actor: Option<String>,
    /// Exact action, or a prefix when it ends in `.*` (`connection.*`).
    pub action: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only events after this sequence number (the cursor going forward).
    pub after_seq: Option<i64>,
    /// Only events before this sequence number (the cursor going back, newest first).
    pub before_seq: Option<i64>,
    /// Newest first (descending `seq`) instead of chain order.
    pub newest_first: bool,
}

/// Where verification found the chain broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainBreak {
    /// A row's stored hash is not the hash of its fields.
    HashMismatch,
    /// A sequence number is missing (a row was deleted).
    Gap,
    /// A row does not link to the row before it (rows moved or swapped).
    Reordered,
    /// The first row is not the recorded origin (rows deleted at the start).
    OriginMismatch,
    /// The last row is not the recorded head (rows deleted at the end, or appended
    /// without the chain state).
    HeadMismatch,
}

impl ChainBreak {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::Gap => "gap",
            Self::Reordered => "reordered",
            Self::OriginMismatch => "origin_mismatch",
            Self::HeadMismatch => "head_mismatch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Ok {
        count: i64,
        head_seq: i64,
        head_hash: String,
    },
    Broken {
        seq: i64,
        reason: ChainBreak,
    },
}

const COLUMNS: &str = "id, seq, at, actor, action, outcome, workspace_id, target_kind, \
    target_id, request_id, source_address, details, prev_hash, hash";

fn row_to_record(r: &sqlx::any::AnyRow) -> Result<AuditRecord> {
    let details: String = r.try_get("details")?;
    let outcome: String = r.try_get("outcome")?;
    Ok(AuditRecord {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        entry: AuditEntry {
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            outcome: Outcome::parse(&outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("audit outcome {outcome}")))?,
            workspace_id: r.try_get("workspace_id")?,
            target_kind: r.try_get("target_kind")?,
            target_id: r.try_get("target_id")?,
            request_id: r.try_get("request_id")?,
            source_address: r.try_get("source_address")?,
            details: super::Details::from_stored(details)
                .map_err(|e| StoreError::Corrupt(format!("audit details: {e}")))?,
        },
    })
}

/// Chains rows written before the chain existed (migration 0006 leaves them without
/// `seq`), in insertion order. Idempotent; runs at start-up.
impl Store {
    pub async fn audit_for_target(&self, target_id: &str) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE target_id = $1 ORDER BY seq"
        ))
        .bind(target_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_record).collect()
    }

    /// Events matching `f`, at most `limit`: in chain order, or newest first with
    /// `f.newest_first` (then `before_seq` is the cursor of the next, older page).
    pub async fn list_audit(&self, f: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE seq IS NOT NULL");
        let mut n = 0;
        let mut next = |cond: &str| {
            n += 1;
            format!(" AND {}", cond.replace('?', &format!("${n}")))
        };
        // Built in the same order as the binds below.
        let prefix = f
            .action
            .as_deref()
            .and_then(|a| a.strip_suffix('*'))
            .map(str::to_owned);
        if f.workspace_id.is_some() {
            sql += &next("workspace_id = ?");
        }
        if f.actor.is_some() {
            sql += &next("actor = ?");
        }
        if let Some(p) = &prefix {
            // substr, not LIKE: action names contain `_`, a LIKE wildcard.
            sql += &next(&format!("substr(action, 1, {}) = ?", p.len()));
        } else if f.action.is_some() {
            sql += &next("action = ?");
        }
        if f.target_id.is_some() {
            sql += &next("target_id = ?");
        }
        if f.since.is_some() {
            sql += &next("at >= ?");
        }
        if f.until.is_some() {
            sql += &next("at < ?");
        }
        if f.after_seq.is_some() {
            sql += &next("seq > ?");
        }
        if f.before_seq.is_some() {
            sql += &next("seq < ?");
        }
        let order = if f.newest_first { "DESC" } else { "ASC" };
        sql += &format!(" ORDER BY seq {order} LIMIT {limit}");
        let mut q = sqlx::query(&sql);
        if let Some(v) = &f.workspace_id {
            q = q.bind(v);
        }
        if let Some(v) = &f.actor {
            q = q.bind(v);
        }
        if let Some(p) = &prefix {
            q = q.bind(p);
        } else if let Some(v) = &f.action {
            q = q.bind(v);
        }
        if let Some(v) = &f.target_id {
            q = q.bind(v);
        }
        if let Some(v) = f.since {
            q = q.bind(v);
        }
        if let Some(v) = f.until {
            q = q.bind(v);
        }
        if let Some(v) = f.after_seq {
            q = q.bind(v);
        }
        if let Some(v) = f.before_seq {
            q = q.bind(v);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_record)
            .collect()
    }

    /// Walks the whole chain from the recorded origin to the recorded head. Reads in
    /// batches, so its memory does not grow with the log.
    pub async fn verify_audit(&self) -> Result<Verification> {
        // One snapshot: appends and retention running meanwhile are not seen half-done.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let (origin_seq, origin_prev, head_seq, head_hash): (i64, String, i64, String) =
            sqlx::query_as(
                "SELECT origin_seq, origin_prev_hash, head_seq, head_hash \
                 FROM audit_chain WHERE id = 1",
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("audit_chain has no state row".into()))?;
        let mut expected_seq = origin_seq;
        let mut prev = origin_prev;
        let mut last_id = i64::MIN;
        let mut count = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT 1000"
            ))
            .bind(expected_seq)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let rec = row_to_record(r)?;
                let details: String = r.try_get("details")?;
                if rec.seq != expected_seq {
                    let reason = if count == 0 {
                        ChainBreak::OriginMismatch
                    } else {
                        ChainBreak::Gap
                    };
                    return Ok(Verification::Broken {
                        seq: expected_seq,
                        reason,
                    });
                }
                if rec.prev_hash != prev || rec.id <= last_id {
                    let reason = if count == 0 && rec.prev_hash != prev {
                        ChainBreak::OriginMismatch
                    } else {
                        ChainBreak::Reordered
                    };
                    return Ok(Verification::Broken {
                        seq: rec.seq,
                        reason,
                    });
                }
                if event_hash(&prev, rec.seq, rec.at, &rec.entry, &details) != rec.hash {
                    return Ok(Verification::Broken {
                        seq: rec.seq,
                        reason: ChainBreak::HashMismatch,
                    });
                }
                prev = rec.hash;
                last_id = rec.id;
                expected_seq += 1;
                count += 1;
            }
        }
        let last_seq = expected_seq - 1;
        if last_seq != head_seq || prev != head_hash {
            // The first position that differs from the recorded head: the first missing
            // event, the first extra one, or the head itself.
            let seq = match last_seq.cmp(&head_seq) {
                std::cmp::Ordering::Less => expected_seq,
                std::cmp::Ordering::Greater => head_seq + 1,
                std::cmp::Ordering::Equal => head_seq,
            };
            return Ok(Verification::Broken {
                seq,
                reason: ChainBreak::HeadMismatch,
            });
        }
        Ok(Verification::Ok {
            count,
            head_seq,
            head_hash: prev,
        })
    }
}
