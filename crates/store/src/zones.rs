//! Network zones, their agents and the agent job queue (issue 7, "agents").
//!
//! A job row names a connection and never holds secrets. Claiming is a compare-and-set on
//! `status = 'queued'`, so agents polling different replicas of one PostgreSQL database
//! never run the same job twice.

use sqlx::Row;

use crate::audit::insert_audit;
use crate::tokens::{insert_token, NewToken};
use crate::{map_unique, now_millis, AuditEntry, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRecord {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub token_id: String,
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub last_seen_at: Option<i64>,
    pub connected_since: Option<i64>,
    pub created_at: i64,
    /// The agent's token was revoked: it cannot call in any more.
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentJob {
    pub id: String,
    pub zone_id: String,
    pub connection_id: String,
    pub requested_by: String,
    /// The test request's id and source address (for the audit event of the result).
    pub request_id: Option<String>,
    pub source_address: Option<String>,
    /// queued | running | done | expired
    pub status: String,
    pub created_at: i64,
    pub deadline: i64,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<i64>,
    /// The ProbeResult JSON the agent reported.
    pub result: Option<String>,
}

fn zone(row: &sqlx::any::AnyRow) -> Result<ZoneRecord> {
    Ok(ZoneRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

const AGENT_COLUMNS: &str = "a.id, a.zone_id, a.name, a.token_id, a.version, a.hostname, \
    a.last_seen_at, a.connected_since, a.created_at, t.revoked_at";

fn agent(row: &sqlx::any::AnyRow) -> Result<AgentRecord> {
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    Ok(AgentRecord {
        id: row.try_get("id")?,
        zone_id: row.try_get("zone_id")?,
        name: row.try_get("name")?,
        token_id: row.try_get("token_id")?,
        version: row.try_get("version")?,
        hostname: row.try_get("hostname")?,
        last_seen_at: row.try_get("last_seen_at")?,
        connected_since: row.try_get("connected_since")?,
        created_at: row.try_get("created_at")?,
        revoked: revoked.is_some(),
    })
}

const JOB_COLUMNS: &str = "id, zone_id, connection_id, requested_by, request_id, \
    source_address, status, created_at, deadline, claimed_by, claimed_at, result";

fn job(row: &sqlx::any::AnyRow) -> Result<AgentJob> {
    Ok(AgentJob {
        id: row.try_get("id")?,
        zone_id: row.try_get("zone_id")?,
        connection_id: row.try_get("connection_id")?,
        requested_by: row.try_get("requested_by")?,
        request_id: row.try_get("request_id")?,
        source_address: row.try_get("source_address")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        deadline: row.try_get("deadline")?,
        claimed_by: row.try_get("claimed_by")?,
        claimed_at: row.try_get("claimed_at")?,
        result: row.try_get("result")?,
    })
}

impl Store {
    pub async fn create_zone(&self, z: &ZoneRecord, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO zones (id, workspace_id, name, description, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&z.id)
        .bind(&z.workspace_id)
        .bind(&z.name)
        .bind(&z.description)
        .bind(z.created_at)
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn list_zones(&self, workspace_id: &str) -> Result<Vec<ZoneRecord>> {
        sqlx::query(
            "SELECT id, workspace_id, name, description, created_at FROM zones \
             WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(zone)
        .collect()
    }

    pub async fn get_zone(&self, id: &str) -> Result<ZoneRecord> {
        let row = sqlx::query(
            "SELECT id, workspace_id, name, description, created_at FROM zones WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        zone(&row)
    }

    pub async fn zone_by_name(&self, workspace_id: &str, name: &str) -> Result<ZoneRecord> {
        let row = sqlx::query(
            "SELECT id, workspace_id, name, description, created_at FROM zones \
             WHERE workspace_id = $1 AND name = $2",
        )
        .bind(workspace_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        zone(&row)
    }

    /// Connections naming the zone: (id, name), by name.
    pub async fn zone_connections(&self, z: &ZoneRecord) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, name FROM connections WHERE workspace_id = $1 AND zone = $2 \
             ORDER BY name, id",
        )
        .bind(&z.workspace_id)
        .bind(&z.name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// Deletes a zone no connection names (409 `InUse` otherwise, checked inside the
    /// transaction), revoking its agents' tokens; agents and jobs go with it.
    pub async fn delete_zone(&self, z: &ZoneRecord, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        let users = sqlx::query(
            "SELECT id, name FROM connections WHERE workspace_id = $1 AND zone = $2 \
             ORDER BY name, id",
        )
        .bind(&z.workspace_id)
        .bind(&z.name)
        .fetch_all(&mut *tx.tx)
        .await?;
        if !users.is_empty() {
            let list = users
                .iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
                .collect::<Result<Vec<_>>>()?;
            return Err(StoreError::InUse(list));
        }
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE revoked_at IS NULL \
             AND id IN (SELECT token_id FROM agents WHERE zone_id = $2)",
        )
        .bind(now_millis())
        .bind(&z.id)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("DELETE FROM agent_jobs WHERE zone_id = $1")
            .bind(&z.id)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM agents WHERE zone_id = $1")
            .bind(&z.id)
            .execute(&mut *tx.tx)
            .await?;
        let done = sqlx::query("DELETE FROM zones WHERE id = $1")
            .bind(&z.id)
            .execute(&mut *tx.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        // The zone's agent tokens were revoked: no cached principal may outlive that.
        self.auth_changed();
        Ok(())
    }

    /// Mints an agent token and the agent identity it authenticates, atomically.
    pub async fn create_agent(
        &self,
        token: &NewToken,
        agent_id: &str,
        zone_id: &str,
        name: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        insert_token(&mut tx, token).await?;
        sqlx::query(
            "INSERT INTO agents (id, zone_id, name, token_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(agent_id)
        .bind(zone_id)
        .bind(name)
        .bind(&token.id)
        .bind(now_millis())
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn zone_agents(&self, zone_id: &str) -> Result<Vec<AgentRecord>> {
        sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents a JOIN api_tokens t ON t.id = a.token_id \
             WHERE a.zone_id = $1 ORDER BY a.name"
        ))
        .bind(zone_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(agent)
        .collect()
    }

    /// The agent a token authenticates (`NotFound` for other tokens).
    pub async fn agent_by_token(&self, token_id: &str) -> Result<AgentRecord> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents a JOIN api_tokens t ON t.id = a.token_id \
             WHERE a.token_id = $1"
        ))
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        agent(&row)
    }

    /// Heartbeat: what the agent reports, and when it was seen. `connected_since` starts
    /// again when the agent was not seen for `gap_ms`.
    pub async fn touch_agent(
        &self,
        agent_id: &str,
        version: Option<&str>,
        hostname: Option<&str>,
        gap_ms: i64,
    ) -> Result<()> {
        let now = now_millis();
        sqlx::query(
            "UPDATE agents SET version = COALESCE($1, version), \
             hostname = COALESCE($2, hostname), \
             connected_since = CASE WHEN last_seen_at IS NULL OR last_seen_at < $3 \
             THEN $4 ELSE connected_since END, last_seen_at = $4 WHERE id = $5",
        )
        .bind(version.map(str::to_owned))
        .bind(hostname.map(str::to_owned))
        .bind(now - gap_ms)
        .bind(now)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest time any agent of the zone was seen, and whether it is not revoked.
    pub async fn zone_last_seen(&self, zone_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(a.last_seen_at) AS seen FROM agents a JOIN api_tokens t \
             ON t.id = a.token_id WHERE a.zone_id = $1 AND t.revoked_at IS NULL",
        )
        .bind(zone_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("seen")?)
    }

    pub async fn enqueue_job(&self, j: &AgentJob) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_jobs (id, zone_id, connection_id, requested_by, request_id, \
             source_address, status, created_at, deadline) \
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8)",
        )
        .bind(&j.id)
        .bind(&j.zone_id)
        .bind(&j.connection_id)
        .bind(&j.requested_by)
        .bind(j.request_id.clone())
        .bind(j.source_address.clone())
        .bind(j.created_at)
        .bind(j.deadline)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<AgentJob> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM agent_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        job(&row)
    }

    /// Queued jobs of a zone whose deadline has not passed, oldest first.
    pub async fn queued_jobs(&self, zone_id: &str, limit: i64) -> Result<Vec<AgentJob>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM agent_jobs WHERE zone_id = $1 AND status = 'queued' \
             AND deadline > $2 ORDER BY created_at, id LIMIT $3"
        ))
        .bind(zone_id)
        .bind(now_millis())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job)
        .collect()
    }

    /// Hands a queued job to an agent: compare-and-set on its status, with the audit record
    /// of the material sent (and the credential's last use) in the same transaction. `false`
    /// when another agent took it first (nothing written).
    pub async fn claim_job(
        &self,
        job_id: &str,
        agent_id: &str,
        credential_use: Option<(&str, &str, &str)>,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE agent_jobs SET status = 'running', claimed_by = $1, claimed_at = $2 \
             WHERE id = $3 AND status = 'queued' AND deadline > $2",
        )
        .bind(agent_id)
        .bind(now_millis())
        .bind(job_id)
        .execute(&mut *tx.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // The chain head before the last-use row, as every writer of both (uses/mod.rs).
        insert_audit(&mut tx, audit).await?;
        if let Some((credential_id, connection_id, actor)) = credential_use {
            crate::credentials::upsert_use(&mut tx, credential_id, connection_id, actor).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stores an agent's result of a job it claimed and that is still running, with the
    /// connection's test history and the `connection.test` audit event, in one transaction.
    /// `false` when the job is not (any more) the agent's running job (nothing written).
    pub async fn finish_job(
        &self,
        job: &AgentJob,
        agent_id: &str,
        ok: bool,
        result: &serde_json::Value,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE agent_jobs SET status = 'done', result = $1, finished_at = $2 \
             WHERE id = $3 AND claimed_by = $4 AND status = 'running'",
        )
        .bind(result.to_string())
        .bind(now_millis())
        .bind(&job.id)
        .bind(agent_id)
        .execute(&mut *tx.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        crate::probe_results::insert_test(&mut tx, &job.connection_id, ok, result).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a job expired unless it is already done; returns the job as it ends.
    pub async fn expire_job(&self, job_id: &str) -> Result<AgentJob> {
        sqlx::query(
            "UPDATE agent_jobs SET status = 'expired', finished_at = $1 \
             WHERE id = $2 AND status IN ('queued', 'running')",
        )
        .bind(now_millis())
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        self.get_job(job_id).await
    }

    /// Deletes finished jobs older than `before` (they hold results, never secrets).
    pub async fn prune_jobs(&self, before: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM agent_jobs WHERE status IN ('done', 'expired') AND created_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
