//! Events: webhooks (`webhooks`), the outbox (`event_outbox`) and per-webhook delivery state
//! (`event_deliveries`).
//!
//! Events are derived from audit records: [`emit`] runs inside `insert_audit`, so an event
//! commits in the transaction of the change it describes, or not at all. One table,
//! [`event_kind_for`], says which audit actions are events. An event is stored only when
//! an enabled webhook of its workspace wants it, with one delivery row per such webhook.
//!
//! Delivery rows are claimed with a lease (`lease_owner`, `lease_until`): a claim takes
//! only due rows whose lease is free or expired, in one UPDATE that re-checks that condition
//! on the row it locks (PostgreSQL) or under the single writer (SQLite), so two replicas
//! never send the same delivery at the same time. A replica killed mid-attempt leaves a
//! lease that expires; the row is then claimed again (at least once).

use patchbay_core::model::format_rfc3339;
use patchbay_crypto::EncryptedValue;
use serde_json::{json, Value};
use sqlx::Row;

use crate::audit::{insert_audit, AuditEntry, Outcome};
use crate::{now_millis, stale_or_missing, Backend, Result, Store, StoreError, WriteTx};

/// Every event kind a webhook can subscribe to.
pub const EVENT_KINDS: &[&str] = &[
    "connection.created",
    "connection.updated",
    "connection.deleted",
    "connection.tested",
    "credential.rotated",
    "dependent.cascade_deleted",
];

/// The event an audit record is, if any: the one mapping from audit actions to events.
pub fn event_kind_for(action: &str, target_kind: &str) -> Option<&'static str> {
    Some(match (action, target_kind) {
        ("connection.create", _) => "connection.created",
        ("connection.update", _) => "connection.updated",
        ("connection.delete", _) => "connection.deleted",
        // Draft tests (nothing stored) are not events.
        ("connection.test", "connection") => "connection.tested",
        ("credential.rotate", _) => "credential.rotated",
        ("dependent.cascade_delete", _) => "dependent.cascade_deleted",
        _ => return None,
    })
}

/// A webhook as stored: the signing secret stays ciphertext.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: String,
    pub workspace_id: String,
    pub description: String,
    pub url: String,
    /// Subscribed kinds; empty means every kind.
    pub events: Vec<String>,
    pub enabled: bool,
    pub secret: EncryptedValue,
    pub created_by: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl WebhookRecord {
    pub fn wants(&self, kind: &str) -> bool {
        self.enabled && (self.events.is_empty() || self.events.iter().any(|k| k == kind))
    }
}

pub type NewWebhook = WebhookRecord;

/// A webhook change (PATCH): `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub description: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// One delivery as the API lists it.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub kind: String,
    /// pending | delivered | failed
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created_at: i64,
}

/// A delivery this replica holds the lease of, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub event_id: String,
    pub webhook_id: String,
    pub workspace_id: String,
    pub kind: String,
    /// The JSON body to POST, exactly as stored.
    pub payload: String,
    pub url: String,
    pub secret: EncryptedValue,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct DeliveryResult {
    /// The receiver's HTTP status, when it answered.
    pub status: Option<i64>,
    /// Why it failed (timeout, connection refused, HTTP status), never a response body.
    pub error: Option<String>,
    pub delivered: bool,
    /// When to retry; `None` with `delivered == false` marks the delivery failed.
    pub next_attempt_at: Option<i64>,
}

const WEBHOOK_COLUMNS: &str = "id, workspace_id, description, url, events, enabled, key_id, \
    nonce, ciphertext, created_by, version, created_at, updated_at";

fn row_to_webhook(r: &sqlx::any::AnyRow) -> Result<WebhookRecord> {
    let events: String = r.try_get("events")?;
    let enabled: i64 = r.try_get("enabled")?;
    Ok(WebhookRecord {
        id: r.try_get("id")?,
        workspace_id: r.try_get("workspace_id")?,
        description: r.try_get("description")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(&events)
            .map_err(|e| StoreError::Corrupt(format!("webhooks.events: {e}")))?,
        enabled: enabled != 0,
        secret: crate::encrypted_value(r)?,
        created_by: r.try_get("created_by")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn webhooks_of(tx: &mut WriteTx<'_>, workspace_id: &str) -> Result<Vec<WebhookRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE workspace_id = $1 AND enabled = 1"
    ))
    .bind(workspace_id)
    .fetch_all(&mut *tx.tx)
    .await?;
    rows.iter().map(row_to_webhook).collect()
}

/// Stores event `kind` with `data` for each of `webhooks` (none: nothing is stored).
async fn enqueue(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    kind: &str,
    data: Value,
    webhooks: &[&str],
) -> Result<Option<String>> {
    if webhooks.is_empty() {
        return Ok(None);
    }
    let id = crate::new_id();
    let now = now_millis();
    let payload = json!({
        "id": id,
        "kind": kind,
        "workspace_id": workspace_id,
        "occurred_at": format_rfc3339(now),
        "data": data,
    });
    sqlx::query(
        "INSERT INTO event_outbox (id, workspace_id, kind, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(workspace_id)
    .bind(kind)
    .bind(payload.to_string())
    .bind(now)
    .execute(&mut *tx.tx)
    .await?;
    for w in webhooks {
        sqlx::query(
            "INSERT INTO event_deliveries (event_id, webhook_id, state, attempts, \
             next_attempt_at, created_at) VALUES ($1, $2, 'pending', 0, $3, $3)",
        )
        .bind(&id)
        .bind(*w)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(Some(id))
}

/// The event of an audit record, if it is one, in the record's transaction. The event's
/// `data` is the record's actor, target and details (which never hold secret values).
pub(crate) async fn emit(tx: &mut WriteTx<'_>, e: &AuditEntry) -> Result<()> {
    if e.outcome != Outcome::Success {
        return Ok(());
    }
    let (Some(kind), Some(ws)) = (
        event_kind_for(&e.action, &e.target_kind),
        e.workspace_id.as_deref(),
    ) else {
        return Ok(());
    };
    let hooks = webhooks_of(tx, ws).await?;
    let wanted: Vec<&str> = hooks
        .iter()
        .filter(|w| w.wants(kind))
        .map(|w| w.id.as_str())
        .collect();
    let data = json!({
        "actor": e.actor,
        "request_id": e.request_id,
        "target": {"kind": e.target_kind, "id": e.target_id},
        "details": &*e.details,
    });
    enqueue(tx, ws, kind, data, &wanted).await?;
    Ok(())
}

const DELIVERY_COLUMNS: &str = "d.event_id, o.kind, d.state, d.attempts, d.next_attempt_at, \
    d.last_attempt_at, d.last_status, d.last_error, d.delivered_at, d.created_at";

fn row_to_delivery(r: &sqlx::any::AnyRow) -> Result<DeliveryRecord> {
    let state: String = r.try_get("state")?;
    let next: i64 = r.try_get("next_attempt_at")?;
    Ok(DeliveryRecord {
        event_id: r.try_get("event_id")?,
        kind: r.try_get("kind")?,
        next_attempt_at: (state == "pending").then_some(next),
        state,
        attempts: r.try_get("attempts")?,
        last_attempt_at: r.try_get("last_attempt_at")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        delivered_at: r.try_get("delivered_at")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    pub async fn create_webhook(&self, w: &NewWebhook, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, workspace_id, description, url, events, enabled, key_id, \
             nonce, ciphertext, created_by, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)",
        )
        .bind(&w.id)
        .bind(&w.workspace_id)
        .bind(&w.description)
        .bind(&w.url)
        .bind(serde_json::to_string(&w.events).expect("strings serialize"))
        .bind(i64::from(w.enabled))
        .bind(&w.secret.key_id)
        .bind(w.secret.nonce.clone())
        .bind(w.secret.ciphertext.clone())
        .bind(&w.created_by)
        .bind(w.created_at)
        .execute(&mut *tx.tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn get_webhook(&self, id: &str) -> Result<WebhookRecord> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row_to_webhook(&row)
    }

    pub async fn list_webhooks(&self, workspace_id: &str) -> Result<Vec<WebhookRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE workspace_id = $1 ORDER BY created_at, id"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_webhook).collect()
    }

    /// Applies `p` if the stored version is `expected` (`None`: any); bumps the version.
    pub async fn update_webhook(
        &self,
        id: &str,
        expected: Option<i64>,
        p: &WebhookPatch,
        audit: &AuditEntry,
    ) -> Result<WebhookRecord> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let cur = row_to_webhook(&row)?;
        let version = expected.unwrap_or(cur.version);
        let updated = sqlx::query(
            "UPDATE webhooks SET description = $1, url = $2, events = $3, enabled = $4, \
             version = version + 1, updated_at = $5 WHERE id = $6 AND version = $7",
        )
        .bind(p.description.clone().unwrap_or(cur.description))
        .bind(p.url.clone().unwrap_or(cur.url))
        .bind(
            serde_json::to_string(p.events.as_ref().unwrap_or(&cur.events))
                .expect("strings serialize"),
        )
        .bind(i64::from(p.enabled.unwrap_or(cur.enabled)))
        .bind(now_millis())
        .bind(id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
        if updated.rows_affected() == 0 {
            let sql = "SELECT version FROM webhooks WHERE id = $1";
            return Err(stale_or_missing(&mut tx, sql, id).await?);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_webhook(id).await
    }

    /// Deletes a webhook with its delivery rows (pending ones are dropped).
    pub async fn delete_webhook(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM event_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// Queues a `ping` event for this one webhook (whatever its filter), with its audit
    /// record. Returns the event id.
    pub async fn ping_webhook(&self, w: &WebhookRecord, audit: &AuditEntry) -> Result<String> {
        let mut tx = self.write().await?;
        let id = enqueue(
            &mut tx,
            &w.workspace_id,
            "ping",
            json!({"webhook_id": w.id}),
            &[w.id.as_str()],
        )
        .await?
        .expect("one webhook given");
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Queues a delivery again (a failed one, typically) with a fresh attempt budget, with
    /// its audit record. `NotFound` when the webhook has no delivery of that event.
    pub async fn redeliver(
        &self,
        event_id: &str,
        webhook_id: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE event_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             delivered_at = NULL WHERE event_id = $2 AND webhook_id = $3",
        )
        .bind(now_millis())
        .bind(event_id)
        .bind(webhook_id)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// The webhook's newest deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries d \
             JOIN event_outbox o ON o.id = d.event_id WHERE d.webhook_id = $1 \
             ORDER BY d.created_at DESC, d.event_id DESC LIMIT {limit}"
        ))
        .bind(webhook_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_delivery).collect()
    }

    /// The newest delivery of each of these webhooks, in one query (a webhook without
    /// deliveries is absent from the map). For the webhooks page.
    pub async fn latest_deliveries(
        &self,
        webhook_ids: &[String],
    ) -> Result<std::collections::HashMap<String, DeliveryRecord>> {
        let mut out = std::collections::HashMap::new();
        for chunk in webhook_ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // Newest as in list_deliveries: by created_at, then event id (UUIDv7).
            let sql = format!(
                "SELECT d.webhook_id, {DELIVERY_COLUMNS} FROM ( \
                   SELECT webhook_id, event_id, ROW_NUMBER() OVER ( \
                     PARTITION BY webhook_id ORDER BY created_at DESC, event_id DESC) AS n \
                   FROM event_deliveries WHERE webhook_id IN ({})) newest \
                 JOIN event_deliveries d \
                   ON d.webhook_id = newest.webhook_id AND d.event_id = newest.event_id \
                 JOIN event_outbox o ON o.id = d.event_id WHERE newest.n = 1",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("webhook_id")?, row_to_delivery(&r)?);
            }
        }
        Ok(out)
    }

    /// Takes the lease of up to `limit` due deliveries for `owner` until `now + lease_ms`.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        let now = now_millis();
        // A read first: an idle worker then never takes the (SQLite) write lock.
        let due: Option<(String,)> = sqlx::query_as(
            "SELECT event_id FROM event_deliveries WHERE state = 'pending' \
             AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        // The outer WHERE repeats the due/free condition: on PostgreSQL a row locked by a
        // concurrent claim is re-checked after that claim commits, and then skipped.
        let skip = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE event_deliveries SET lease_owner = $1, lease_until = $2 \
             WHERE state = 'pending' AND next_attempt_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3) \
             AND (event_id, webhook_id) IN (SELECT event_id, webhook_id FROM event_deliveries \
               WHERE state = 'pending' AND next_attempt_at <= $3 \
               AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY next_attempt_at LIMIT {limit}{skip}) \
             RETURNING event_id, webhook_id, attempts"
        );
        let claimed = sqlx::query(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_all(&mut *tx.tx)
            .await?;
        let mut out = Vec::with_capacity(claimed.len());
        for c in &claimed {
            let event_id: String = c.try_get("event_id")?;
            let webhook_id: String = c.try_get("webhook_id")?;
            let r = sqlx::query(
                "SELECT o.workspace_id, o.kind, o.payload, w.url, w.key_id, w.nonce, \
                 w.ciphertext FROM event_outbox o, webhooks w WHERE o.id = $1 AND w.id = $2",
            )
            .bind(&event_id)
            .bind(&webhook_id)
            .fetch_one(&mut *tx.tx)
            .await?;
            out.push(ClaimedDelivery {
                workspace_id: r.try_get("workspace_id")?,
                kind: r.try_get("kind")?,
                payload: r.try_get("payload")?,
                url: r.try_get("url")?,
                secret: crate::encrypted_value(&r)?,
                attempts: c.try_get("attempts")?,
                event_id,
                webhook_id,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records an attempt of a delivery `owner` holds the lease of, and releases the lease.
    /// Returns false when the lease was lost (expired and taken by another replica).
    pub async fn finish_delivery(
        &self,
        event_id: &str,
        webhook_id: &str,
        owner: &str,
        r: &DeliveryResult,
    ) -> Result<bool> {
        let now = now_millis();
        let state = match (r.delivered, r.next_attempt_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE event_deliveries SET state = $1, attempts = attempts + 1, \
             next_attempt_at = $2, last_attempt_at = $3, last_status = $4, last_error = $5, \
             delivered_at = $6, lease_owner = NULL, lease_until = NULL \
             WHERE event_id = $7 AND webhook_id = $8 AND lease_owner = $9",
        )
        .bind(state)
        .bind(r.next_attempt_at.unwrap_or(now))
        .bind(now)
        .bind(r.status)
        .bind(r.error.clone())
        .bind(r.delivered.then_some(now))
        .bind(event_id)
        .bind(webhook_id)
        .bind(owner)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Deletes finished deliveries (delivered or failed) created before `before`, and events
    /// left with no delivery. Returns how many deliveries went.
    pub async fn prune_events(&self, before: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "DELETE FROM event_deliveries WHERE state <> 'pending' AND created_at < $1",
        )
        .bind(before)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM event_outbox WHERE created_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM event_deliveries d WHERE d.event_id = event_outbox.id)",
        )
        .bind(before)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}
