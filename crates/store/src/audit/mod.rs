//! The audit log: an append-only, hash-chained table (`audit_events`) and its chain state
//! (`audit_chain`: the origin a verification starts from and the head it must end at).
//!
//! Every event is appended by [`insert_audit`] inside the write transaction of the change
//! it records, so a change without its record cannot commit. Appends are serialized: on
//! SQLite by the single writer (`BEGIN IMMEDIATE` plus the in-process write lock), with
//! triggers refusing an event that does not extend the recorded head and moving the head;
//! on PostgreSQL by the lock on the one `audit_chain` row (a compare-and-set UPDATE, or
//! `SELECT … FOR UPDATE`).
//!
//! `hash = SHA-256(prev_hash || encoding)`, where `encoding` is
//! `"patchbay-audit-v1"` followed by every field in a fixed order: integers as 8-byte
//! big-endian, strings as an 8-byte big-endian byte length then the UTF-8 bytes, and
//! optional strings as one byte (0 absent, 1 present) then the string. The field order is
//! seq, at, actor, action, outcome, workspace_id?, target_kind, target_id, request_id?,
//! source_address?, details (the stored JSON text). The first event's `prev_hash` is 32
//! zero bytes. Hashes are stored as lowercase hex. See docs/audit.md.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{now_millis, Backend, Result, Store, StoreError, WriteTx};

mod read;
pub use read::{AuditFilter, AuditRecord, ChainBreak, Verification};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused for a missing permission (403).
    Denied,
    /// Attempted and failed after authorization (recorded by system tasks).
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Self::Success,
            "denied" => Self::Denied,
            "failure" => Self::Failure,
            _ => return None,
        })
    }
}

/// An audit event's details: a JSON object, held as the JSON text that is stored and hashed
/// (so an event built from a typed value is serialized once, where it is built, and never
/// goes through a `serde_json::Value`). Dereferences to the parsed value, parsed at first
/// use. Never secret values (see [`AuditEntry::details`]), so `Debug` shows the text.
#[derive(Clone)]
pub struct Details {
    text: String,
    value: std::sync::OnceLock<serde_json::Value>,
}

impl Details {
    /// The details `value` serializes to: a typed value (a struct, a map) whose
    /// serialization cannot fail.
    pub fn of(value: &impl serde::Serialize) -> Self {
        Self::unparsed(serde_json::to_string(value).expect("audit details serialize to JSON"))
    }

    /// Details stored as `text`, if it is JSON.
    pub fn from_stored(text: String) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Self::unparsed(text))
    }

    /// `text`, which is JSON, not parsed yet.
    fn unparsed(text: String) -> Self {
        Self {
            text,
            value: std::sync::OnceLock::new(),
        }
    }

    /// The text parsed. It is JSON (built by serde_json, or checked when read back), so this
    /// parses.
    fn parse(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_default()
    }

    /// The JSON text: what is stored and hashed.
    pub fn as_json(&self) -> &str {
        &self.text
    }

    /// The parsed value.
    pub fn into_value(mut self) -> serde_json::Value {
        match self.value.take() {
            Some(v) => v,
            None => self.parse(),
        }
    }
}

impl From<serde_json::Value> for Details {
    fn from(value: serde_json::Value) -> Self {
        Self {
            text: value.to_string(),
            value: value.into(),
        }
    }
}

impl std::ops::Deref for Details {
    type Target = serde_json::Value;

    fn deref(&self) -> &serde_json::Value {
        self.value.get_or_init(|| self.parse())
    }
}

impl PartialEq for Details {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::fmt::Debug for Details {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Display for Details {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One audit record to write.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// `token:<id>`, `user:<id>` or `system:<task>`; never a credential.
    pub actor: String,
    pub action: String,
    pub outcome: Outcome,
    pub workspace_id: Option<String>,
    pub target_kind: String,
    pub target_id: String,
    /// The request's id (`X-Request-Id`), `None` for system events.
    pub request_id: Option<String>,
    /// The peer address of the request, `None` for system events.
    pub source_address: Option<String>,
    /// Never secret values: field names, versions, counts, non-secret old/new values.
    pub details: Details,
}

impl AuditEntry {
    /// An event of the server itself (start-up upgrade, sweeper, retention): no request.
    pub fn system(
        actor: &str,
        action: &str,
        workspace_id: Option<&str>,
        target_kind: &str,
        target_id: &str,
        details: impl Into<Details>,
    ) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: Outcome::Success,
            workspace_id: workspace_id.map(str::to_owned),
            target_kind: target_kind.to_owned(),
            target_id: target_id.to_owned(),
            request_id: None,
            source_address: None,
            details: details.into(),
        }
    }
}

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

/// The chain hash of one event (hex), given the previous event's hash (hex).
pub fn event_hash(prev_hash: &str, seq: i64, at: i64, e: &AuditEntry, details: &str) -> String {
    let mut buf = Vec::with_capacity(256 + details.len());
    buf.extend_from_slice(b"patchbay-audit-v1");
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&at.to_be_bytes());
    put_str(&mut buf, &e.actor);
    put_str(&mut buf, &e.action);
    put_str(&mut buf, e.outcome.as_str());
    put_opt(&mut buf, e.workspace_id.as_deref());
    put_str(&mut buf, &e.target_kind);
    put_str(&mut buf, &e.target_id);
    put_opt(&mut buf, e.request_id.as_deref());
    put_opt(&mut buf, e.source_address.as_deref());
    put_str(&mut buf, details);
    let mut h = Sha256::new();
    // A hex string that does not decode (tampered) still feeds the hash: it then mismatches.
    // The usual 64 digits are decoded on the stack (this runs once per audit event).
    let mut prev = [0u8; 32];
    if prev_hash.len() == 64 && hex::decode_to_slice(prev_hash, &mut prev).is_ok() {
        h.update(prev);
    } else {
        h.update(hex::decode(prev_hash).unwrap_or_else(|_| prev_hash.as_bytes().to_vec()));
    }
    h.update(&buf);
    let mut out = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut out).expect("64 digits for 32 bytes");
    out.iter().map(|&b| char::from(b)).collect()
}

/// The chain head `(seq, hash)`, locked for this transaction on PostgreSQL (SQLite's write
/// transaction already excludes other writers).
pub(crate) async fn locked_head(tx: &mut WriteTx<'_>, backend: Backend) -> Result<(i64, String)> {
    let sql = match backend {
        Backend::Postgres => "SELECT head_seq, head_hash FROM audit_chain WHERE id = 1 FOR UPDATE",
        Backend::Sqlite => "SELECT head_seq, head_hash FROM audit_chain WHERE id = 1",
    };
    let row: Option<(i64, String)> = sqlx::query_as(sql).fetch_optional(&mut *tx.tx).await?;
    row.ok_or_else(|| StoreError::Corrupt("audit_chain has no state row".into()))
}

/// Moves the chain head from `from` to `to` only if it is still `from` (PostgreSQL's
/// compare-and-set from a remembered head): whether it moved.
pub(crate) async fn move_head(
    tx: &mut WriteTx<'_>,
    from: (i64, &str),
    to: (i64, &str),
) -> Result<bool> {
    let moved = sqlx::query(
        "UPDATE audit_chain SET head_seq = $1, head_hash = $2 \
         WHERE id = 1 AND head_seq = $3 AND head_hash = $4",
    )
    .bind(to.0)
    .bind(to.1)
    .bind(from.0)
    .bind(from.1)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

pub(crate) async fn set_head(tx: &mut WriteTx<'_>, seq: i64, hash: &str) -> Result<()> {
    sqlx::query("UPDATE audit_chain SET head_seq = $1, head_hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

async fn append(
    tx: &mut WriteTx<'_>,
    head: (i64, String),
    e: &AuditEntry,
    at: i64,
) -> Result<(i64, String)> {
    let (head_seq, head_hash) = head;
    let seq = head_seq + 1;
    let details = e.details.as_json();
    let hash = event_hash(&head_hash, seq, at, e, details);
    insert_row(tx, seq, at, e, details, &head_hash, &hash).await?;
    Ok((seq, hash))
}

async fn insert_row(
    tx: &mut WriteTx<'_>,
    seq: i64,
    at: i64,
    e: &AuditEntry,
    details: &str,
    prev_hash: &str,
    hash: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (seq, at, actor, action, outcome, workspace_id, target_kind, \
         target_id, request_id, source_address, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(seq)
    .bind(at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(e.outcome.as_str())
    .bind(e.workspace_id.clone())
    .bind(&e.target_kind)
    .bind(&e.target_id)
    .bind(e.request_id.clone())
    .bind(e.source_address.clone())
    .bind(details)
    .bind(prev_hash)
    .bind(hash)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The head `(seq, hash)` this process last appended. Only a hint: another process (or a
/// rolled-back transaction) may have moved the real head, which the compare-and-set in
/// [`insert_audit`] detects.
pub(crate) type HeadHint = std::sync::Arc<std::sync::Mutex<Option<(i64, String)>>>;

pub(crate) fn remember(tx: &WriteTx<'_>, seq: i64, hash: &str) {
    if let Ok(mut g) = tx.audit_head.lock() {
        *g = Some((seq, hash.to_owned()));
    }
}

/// Appends one event to the chain inside the caller's write transaction, and queues the
/// webhook event it stands for, if any (`events::emit`): no change commits without both.
pub(crate) async fn insert_audit(tx: &mut WriteTx<'_>, e: &AuditEntry) -> Result<()> {
    append_audit(tx, e).await?;
    crate::events::emit(tx, e).await
}

/// Appends one event to the chain.
///
/// Fast path: move the head from the remembered one with one conditional UPDATE (which
/// also takes PostgreSQL's row lock); when it matches no row the hint was stale, and the
/// head is read under lock instead. Either way the new event links to the real head.
async fn append_audit(tx: &mut WriteTx<'_>, e: &AuditEntry) -> Result<()> {
    let at = now_millis();
    let hint = tx.audit_head.lock().ok().and_then(|g| g.clone());
    if tx.backend == Backend::Sqlite {
        // Triggers check that the event extends the head and move it (migration 0006).
        if let Some((head_seq, head_hash)) = hint {
            let seq = head_seq + 1;
            let details = e.details.as_json();
            let hash = event_hash(&head_hash, seq, at, e, details);
            match insert_row(tx, seq, at, e, details, &head_hash, &hash).await {
                Ok(()) => {
                    remember(tx, seq, &hash);
                    return Ok(());
                }
                // RAISE(ABORT) undoes only the statement: the transaction goes on.
                Err(StoreError::Database(sqlx::Error::Database(db)))
                    if db.message().contains("audit chain head moved") => {}
                Err(other) => return Err(other),
            }
        }
        let head = locked_head(tx, tx.backend).await?;
        let (seq, hash) = append(tx, head, e, at).await?;
        remember(tx, seq, &hash);
        return Ok(());
    }
    if let Some((head_seq, head_hash)) = hint {
        let seq = head_seq + 1;
        let details = e.details.as_json();
        let hash = event_hash(&head_hash, seq, at, e, details);
        if move_head(tx, (head_seq, &head_hash), (seq, &hash)).await? {
            insert_row(tx, seq, at, e, details, &head_hash, &hash).await?;
            remember(tx, seq, &hash);
            return Ok(());
        }
    }
    let head = locked_head(tx, tx.backend).await?;
    let (seq, hash) = append(tx, head, e, at).await?;
    set_head(tx, seq, &hash).await?;
    remember(tx, seq, &hash);
    Ok(())
}

pub(crate) async fn chain_unchained(store: &Store) -> Result<u64> {
    let mut tx = store.write().await?;
    let rows = sqlx::query(
        "SELECT id, at, actor, action, outcome, workspace_id, target_kind, target_id, \
         request_id, source_address, details FROM audit_events WHERE seq IS NULL ORDER BY id",
    )
    .fetch_all(&mut *tx.tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut seq, mut prev) = locked_head(&mut tx, store.backend).await?;
    for r in &rows {
        let outcome: String = r.try_get("outcome")?;
        let details: String = r.try_get("details")?;
        let id: i64 = r.try_get("id")?;
        let at: i64 = r.try_get("at")?;
        let e = AuditEntry {
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Success),
            workspace_id: r.try_get("workspace_id")?,
            target_kind: r.try_get("target_kind")?,
            target_id: r.try_get("target_id")?,
            request_id: r.try_get("request_id")?,
            source_address: r.try_get("source_address")?,
            // Not read: the stored text below is what is hashed.
            details: serde_json::Value::Null.into(),
        };
        seq += 1;
        let hash = event_hash(&prev, seq, at, &e, &details);
        sqlx::query("UPDATE audit_events SET seq = $1, prev_hash = $2, hash = $3 WHERE id = $4")
            .bind(seq)
            .bind(&prev)
            .bind(&hash)
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        prev = hash;
    }
    set_head(&mut tx, seq, &prev).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

impl Store {
    /// Records an event that is not part of a change (a reveal, a denied attempt).
    pub async fn record_audit(&self, e: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        insert_audit(&mut tx, e).await?;
        tx.commit().await
    }

    /// Deletes the events older than `cutoff` (a prefix of the chain), records the new
    /// origin and appends `event` (the deletion's own record), in one transaction.
    /// Returns how many events were deleted.
    pub async fn prune_audit(&self, cutoff: i64, event: &AuditEntry) -> Result<i64> {
        let mut tx = self.write().await?;
        let head = locked_head(&mut tx, self.backend).await?;
        // The first kept event: the oldest one at or after the cutoff. Everything before it
        // goes, so what remains is still one unbroken stretch of the chain.
        let keep: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, prev_hash FROM audit_events WHERE seq = \
             (SELECT MIN(seq) FROM audit_events WHERE at >= $1)",
        )
        .bind(cutoff)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let (first_seq, first_prev) = keep.unwrap_or_else(|| (head.0 + 1, head.1.clone()));
        let deleted = sqlx::query("DELETE FROM audit_events WHERE seq < $1")
            .bind(first_seq)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected() as i64;
        if deleted == 0 {
            return Ok(0);
        }
        sqlx::query("UPDATE audit_chain SET origin_seq = $1, origin_prev_hash = $2 WHERE id = 1")
            .bind(first_seq)
            .bind(&first_prev)
            .execute(&mut *tx.tx)
            .await?;
        let mut e = event.clone();
        let mut details = e.details.into_value();
        if let Some(d) = details.as_object_mut() {
            d.insert("deleted".into(), deleted.into());
            d.insert("new_origin_seq".into(), first_seq.into());
        }
        e.details = details.into();
        let (seq, hash) = append(&mut tx, head, &e, now_millis()).await?;
        set_head(&mut tx, seq, &hash).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// The hash a chain starts from.
pub fn zero_hash() -> &'static str {
    ZERO_HASH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_keep_their_json_text_and_read_as_a_value() {
        #[derive(serde::Serialize)]
        struct Typed<'a> {
            run_id: Option<&'a str>,
            format: &'a str,
            version: i64,
        }
        let typed = Details::of(&Typed {
            run_id: None,
            format: "json",
            version: 3,
        });
        let built: Details =
            serde_json::json!({"run_id": null, "format": "json", "version": 3}).into();
        // The same text, so the same stored row and the same chain hash.
        assert_eq!(
            typed.as_json(),
            r#"{"run_id":null,"format":"json","version":3}"#
        );
        assert_eq!(typed, built);
        assert_eq!(typed["version"], 3);
        assert_eq!(typed.to_string(), typed.as_json());
        assert_eq!(format!("{typed:?}"), typed.as_json());
        assert_eq!(typed.clone().into_value(), *built);
        let stored = Details::from_stored(typed.as_json().to_owned()).unwrap();
        assert_eq!(stored, typed);
        assert_eq!(stored.into_value()["format"], "json");
        assert!(Details::from_stored("{not json".into()).is_err());
    }

    fn entry(actor: &str, action: &str) -> AuditEntry {
        AuditEntry::system(
            actor,
            action,
            None,
            "connection",
            "c1",
            serde_json::json!({}),
        )
    }

    #[test]
    fn the_encoding_is_length_prefixed_so_moving_bytes_between_fields_changes_the_hash() {
        let a = event_hash(ZERO_HASH, 1, 0, &entry("ab", "c"), "{}");
        let b = event_hash(ZERO_HASH, 1, 0, &entry("a", "bc"), "{}");
        assert_ne!(a, b);
        let mut absent = entry("a", "b");
        let mut empty = entry("a", "b");
        empty.request_id = Some(String::new());
        assert_ne!(
            event_hash(ZERO_HASH, 1, 0, &absent, "{}"),
            event_hash(ZERO_HASH, 1, 0, &empty, "{}")
        );
        absent.outcome = Outcome::Denied;
        assert_ne!(
            event_hash(ZERO_HASH, 1, 0, &absent, "{}"),
            event_hash(ZERO_HASH, 1, 0, &entry("a", "b"), "{}")
        );
    }

    #[test]
    fn the_hash_follows_the_documented_encoding() {
        // docs/audit.md, written out by hand.
        let mut buf = Vec::new();
        buf.extend_from_slice(&[0u8; 32]);
        buf.extend_from_slice(b"patchbay-audit-v1");
        buf.extend_from_slice(&7i64.to_be_bytes());
        buf.extend_from_slice(&1_000i64.to_be_bytes());
        for s in ["system:test", "x.y", "success"] {
            buf.extend_from_slice(&(s.len() as u64).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        buf.push(0); // workspace_id absent
        for s in ["connection", "c1"] {
            buf.extend_from_slice(&(s.len() as u64).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        buf.push(0); // request_id absent
        buf.push(0); // source_address absent
        buf.extend_from_slice(&2u64.to_be_bytes());
        buf.extend_from_slice(b"{}");
        let expected = hex::encode(Sha256::digest(&buf));
        assert_eq!(
            event_hash(ZERO_HASH, 7, 1_000, &entry("system:test", "x.y"), "{}"),
            expected
        );
        // After another event: its hash's 32 bytes lead instead of the zeros.
        buf[..32].copy_from_slice(&Sha256::digest(b"previous"));
        let prev = hex::encode(Sha256::digest(b"previous"));
        let expected = hex::encode(Sha256::digest(&buf));
        let e = entry("system:test", "x.y");
        assert_eq!(event_hash(&prev, 7, 1_000, &e, "{}"), expected);
        assert_eq!(
            event_hash(&prev.to_uppercase(), 7, 1_000, &e, "{}"),
            expected
        );
        // A previous hash that is not 64 hex digits (tampered) feeds the hash as before:
        // decoded if it is hex, its bytes as they are if not.
        for tampered in [&prev[..62], "not hex at all"] {
            let mut raw = tampered.as_bytes().to_vec();
            if let Ok(bytes) = hex::decode(tampered) {
                raw = bytes;
            }
            raw.extend_from_slice(&buf[32..]);
            assert_eq!(
                event_hash(tampered, 7, 1_000, &e, "{}"),
                hex::encode(Sha256::digest(&raw))
            );
        }
    }
}
