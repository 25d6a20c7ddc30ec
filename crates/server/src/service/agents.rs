//! Agents (issue 7): tests of a zoned connection run on an agent inside the zone's
//! network, which keeps an outbound long poll to the server. The server never connects
//! into the zone.
//!
//! The queue is the `agent_jobs` table, so any replica may take the test request and any
//! other hand the job to an agent. A job row names the connection and holds no secret:
//! the replica that hands it out resolves the material at claim time
//! ([`super::resolve::material`], the one assembly shared with runs and local tests) and
//! sends the material of that one test in the claim response, with an `agent.material`
//! audit record committed in the claim's transaction. On one replica, a [`Notify`] wakes
//! waiters at once; across replicas they find the rows by polling at short intervals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use patchbay_core::model::{Connection, Principal};
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_probe::{ErrorClass, ProbeError, ProbeResult, ProbeStage, StageReport, StageStatus};
use patchbay_store::{new_id, now_millis, AgentJob, AgentRecord, AuditEntry, StoreError};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use super::zones::{health_window, healthy};
use super::{audit, resolve};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The largest result an agent may report (serialized JSON).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Time added to a job's deadline for the agent to report back.
const REPORT_GRACE: Duration = Duration::from_secs(3);
/// How often a waiter looks at the table when nothing woke it (jobs and results written by
/// another replica).
const POLL_ROWS: Duration = Duration::from_millis(250);

/// Wakes claim and test waiters of this replica.
#[derive(Default)]
pub struct AgentHub {
    jobs: Notify,
    results: Notify,
}

/// A job handed to an agent, with the material of its one test.
pub struct Claimed {
    pub job_id: String,
    pub connection: Connection,
    pub settings: Map<String, Value>,
    pub secrets: BTreeMap<String, SecretString>,
    /// Milliseconds the agent has left to run the test.
    pub deadline_ms: u64,
}

fn agent_of(p: &Principal) -> ApiResult<String> {
    p.agent_zone.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "only an agent token calls the agent endpoints",
        )
    })
}

async fn agent_record(state: &AppState, p: &Principal) -> ApiResult<AgentRecord> {
    match state.store.agent_by_token(&p.token_id).await {
        Ok(a) => Ok(a),
        Err(StoreError::NotFound) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only an agent token calls the agent endpoints",
        )),
        Err(e) => Err(e.into()),
    }
}

/// What the agent reports about itself with each claim. `zone`, when sent, must be the
/// token's zone: an agent started with the wrong token fails loudly instead of running
/// another network's tests.
async fn agent_facts(
    state: &AppState,
    zone_id: &str,
    body: Option<Map<String, Value>>,
) -> ApiResult<(Option<String>, Option<String>)> {
    let Some(b) = body else {
        return Ok((None, None));
    };
    let mut f = Fields::new(b, &["version", "hostname", "zone"], &[])?;
    if let Some(z) = f.optional_string("zone")? {
        let zone = state.store.get_zone(zone_id).await?;
        if zone.name != z && zone.id != z {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/zone",
                format!("this agent token belongs to zone {}", zone.name),
            ));
        }
    }
    let short = |v: Option<String>, field: &str| -> ApiResult<Option<String>> {
        match v {
            Some(s) if s.len() > 255 || s.chars().any(char::is_control) => Err(ApiError::field(
                ErrorCode::InvalidField,
                field,
                "at most 255 printable characters",
            )),
            other => Ok(other),
        }
    };
    let version = short(f.optional_string("version")?, "/version")?;
    let hostname = short(f.optional_string("hostname")?, "/hostname")?;
    Ok((version, hostname))
}

/// POST /api/v1/agent/claim: waits up to the long-poll time for a job of the agent's zone.
/// Doubles as the heartbeat. `None`: nothing to do (204).
pub async fn claim(
    state: &AppState,
    p: &Principal,
    body: Option<Map<String, Value>>,
) -> ApiResult<Option<Claimed>> {
    let zone_id = agent_of(p)?;
    let agent = agent_record(state, p).await?;
    let (version, hostname) = agent_facts(state, &zone_id, body).await?;
    let gap = i64::try_from(health_window(state).as_millis()).unwrap_or(i64::MAX);
    state
        .store
        .touch_agent(&agent.id, version.as_deref(), hostname.as_deref(), gap)
        .await?;
    let hub = &state.probes.agents;
    let until = Instant::now() + state.settings.probes.agent_poll;
    loop {
        let woken = hub.jobs.notified();
        for job in state.store.queued_jobs(&zone_id, 8).await? {
            if let Some(c) = hand_out(state, p, &agent, job).await? {
                state.store.touch_agent(&agent.id, None, None, gap).await?;
                return Ok(Some(c));
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            state.store.touch_agent(&agent.id, None, None, gap).await?;
            return Ok(None);
        }
        let _ = tokio::time::timeout(left.min(POLL_ROWS * 2), woken).await;
    }
}

/// Resolves a job's material and claims the job in one transaction with its audit record.
/// `None` when the job went to another agent or cannot run any more.
async fn hand_out(
    state: &AppState,
    p: &Principal,
    agent: &AgentRecord,
    job: AgentJob,
) -> ApiResult<Option<Claimed>> {
    let zone = state.store.get_zone(&job.zone_id).await?;
    let c = match state.store.get_connection(&job.connection_id).await {
        Ok(c) if c.zone.as_deref() == Some(zone.name.as_str()) => c,
        // Deleted, or moved out of the zone since the request: not this agent's to run.
        Ok(_) | Err(StoreError::NotFound) => {
            state.store.expire_job(&job.id).await?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let m = match resolve::material(state, c).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(
                job = job.id,
                code = e.0.code.as_str(),
                "agent job material failed; job expired"
            );
            state.store.expire_job(&job.id).await?;
            return Ok(None);
        }
    };
    let c = &m.connection;
    let fields: Vec<&String> = m.secrets.keys().collect();
    let entry = audit(
        p,
        "agent.material",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({
            "job": job.id,
            "zone": zone.name,
            "agent": {"id": agent.id, "name": agent.name},
            "fields": fields,
            "credential": m.credential.as_ref().map(|(id, v)| json!({"id": id, "version": v})),
        }),
    );
    let actor = p.actor();
    let used = m
        .credential
        .as_ref()
        .map(|(cred, _)| (cred.as_str(), c.id.as_str(), actor.as_str()));
    if !state
        .store
        .claim_job(&job.id, &agent.id, used, &entry)
        .await?
    {
        return Ok(None);
    }
    let left = u64::try_from(job.deadline - now_millis()).unwrap_or(0);
    Ok(Some(Claimed {
        job_id: job.id,
        deadline_ms: left,
        settings: std::sync::Arc::unwrap_or_clone(m.settings),
        secrets: m.secrets,
        connection: std::sync::Arc::unwrap_or_clone(m.connection),
    }))
}

/// POST /api/v1/agent/jobs/{id}/result: the agent's `ProbeResult`, checked for shape and
/// size, then committed with the connection's test history and the `connection.test` audit
/// event (on behalf of whoever asked for the test) in one transaction, so the result is
/// recorded even when the waiting request is gone.
pub async fn report(state: &AppState, p: &Principal, job_id: &str, body: Value) -> ApiResult<()> {
    let zone_id = agent_of(p)?;
    let agent = agent_record(state, p).await?;
    let job = match state.store.get_job(job_id).await {
        Ok(j) if j.zone_id == zone_id => j,
        Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::not_found("agent job")),
        Err(e) => return Err(e.into()),
    };
    let mut result = check_result(body)?;
    let closed = || {
        ApiError::new(
            ErrorCode::AgentJobClosed,
            "this job is not running for this agent any more; the result is dropped",
        )
    };
    if job.claimed_by.as_deref() != Some(agent.id.as_str()) || job.status != "running" {
        return Err(closed());
    }
    let c = match state.store.get_connection(&job.connection_id).await {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(closed()),
        Err(e) => return Err(e.into()),
    };
    let zone = state.store.get_zone(&zone_id).await?;
    // The agent stage: from the request to the report, less the agent's own test time.
    let total = u64::try_from(now_millis() - job.created_at).unwrap_or(0);
    result.stages.insert(
        0,
        StageReport {
            stage: ProbeStage::Agent,
            status: StageStatus::Ok,
            duration_ms: total.saturating_sub(result.duration_ms),
            detail: Some(format!("run by agent {} of zone {}", agent.name, zone.name)),
        },
    );
    result.duration_ms = total.max(result.duration_ms);
    let json =
        serde_json::to_value(&result).map_err(|_| ApiError(patchbay_core::Error::internal()))?;
    let entry = AuditEntry {
        actor: job.requested_by.clone(),
        action: "connection.test".into(),
        outcome: patchbay_store::Outcome::Success,
        workspace_id: Some(c.workspace_id.clone()),
        target_kind: "connection".into(),
        target_id: c.id.clone(),
        request_id: job.request_id.clone(),
        source_address: job.source_address.clone(),
        details: json!({
            "ok": result.ok,
            "duration_ms": result.duration_ms,
            "stage": result.error.as_ref().map(|e| e.stage.as_str()),
            "class": result.error.as_ref().map(|e| e.class.as_str()),
            "version": c.version,
            "zone": zone.name,
            "job": job.id,
            "agent": agent.name,
        })
        .into(),
    };
    if !state
        .store
        .finish_job(&job, &agent.id, result.ok, &json, &entry)
        .await?
    {
        return Err(closed());
    }
    state.probes.agents.results.notify_waiters();
    let gap = i64::try_from(health_window(state).as_millis()).unwrap_or(i64::MAX);
    state.store.touch_agent(&agent.id, None, None, gap).await?;
    Ok(())
}

/// A result an agent may report: a `ProbeResult` of bounded size, consistent (`ok` exactly
/// when there is no error), without the server-side `agent` stage.
pub fn check_result(body: Value) -> ApiResult<ProbeResult> {
    let size = serde_json::to_vec(&body)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_RESULT_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("an agent result is at most {MAX_RESULT_BYTES} bytes"),
        ));
    }
    let bad = |field: &str, msg: &str| ApiError::field(ErrorCode::InvalidField, field, msg);
    let result: ProbeResult = serde_json::from_value(body).map_err(|_| {
        bad(
            "",
            "not a test result: {ok, duration_ms, stages, error?, server?, warnings}",
        )
    })?;
    if result.ok != result.error.is_none() {
        return Err(bad("/ok", "ok must be true exactly when there is no error"));
    }
    if result.stages.len() > 16 {
        return Err(bad("/stages", "at most 16 stages"));
    }
    if let Some(i) = result
        .stages
        .iter()
        .position(|s| s.stage == ProbeStage::Agent)
    {
        return Err(bad(
            &format!("/stages/{i}/stage"),
            "the agent stage is the server's",
        ));
    }
    if result
        .error
        .as_ref()
        .is_some_and(|e| e.stage == ProbeStage::Agent)
    {
        return Err(bad("/error/stage", "the agent stage is the server's"));
    }
    if result.warnings.len() > 32 {
        return Err(bad("/warnings", "at most 32 warnings"));
    }
    Ok(result)
}

/// A test that failed at the `agent` stage (the zone has no live agent, or none reported
/// in time).
fn agent_failure(class: ErrorClass, message: String, hint: &str, waited: Duration) -> ProbeResult {
    let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    ProbeResult {
        ok: false,
        duration_ms: ms,
        stages: vec![StageReport {
            stage: ProbeStage::Agent,
            status: StageStatus::Failed,
            duration_ms: ms,
            detail: None,
        }],
        error: Some(ProbeError {
            stage: ProbeStage::Agent,
            class,
            message,
            hint: Some(hint.to_owned()),
        }),
        server: None,
        warnings: vec![],
    }
}

/// What a zoned test produced.
pub enum Outcome {
    /// The agent's result, already recorded (history and audit) by its report.
    Recorded(ProbeResult),
    /// The test failed at the `agent` stage; the caller records it like a local test, with
    /// these audit details.
    Failed { result: ProbeResult, details: Value },
}

/// Runs a test of a zoned connection on an agent of its zone: enqueue, wait (within the
/// test deadline plus a grace for the report) for the result the agent's report recorded.
/// No healthy agent: fails at once at stage `agent`, class `agent_unavailable`; no report
/// in time: the job expires and the failure is the caller's to record.
pub async fn run_on_agent(
    state: &AppState,
    p: &Principal,
    c: &Connection,
    zone_name: &str,
) -> ApiResult<Outcome> {
    let started = Instant::now();
    let hint = format!(
        "start `patchbay agent --zone {zone_name}` inside the zone's network with an agent token of the zone, and check its log"
    );
    let zone = match state.store.zone_by_name(&c.workspace_id, zone_name).await {
        Ok(z) => z,
        Err(StoreError::NotFound) => {
            let r = agent_failure(
                ErrorClass::AgentUnavailable,
                format!("the connection names zone {zone_name}, which does not exist"),
                &hint,
                started.elapsed(),
            );
            return Ok(Outcome::Failed {
                result: r,
                details: json!({"zone": zone_name}),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let window = health_window(state);
    let last_seen = state.store.zone_last_seen(&zone.id).await?;
    if !healthy(last_seen, false, window) {
        let message = match last_seen {
            None => format!("zone {zone_name} has no agent that ever connected"),
            Some(t) => format!(
                "no agent of zone {zone_name} has been seen for {} s",
                (now_millis() - t).max(0) / 1000
            ),
        };
        let r = agent_failure(
            ErrorClass::AgentUnavailable,
            message,
            &hint,
            started.elapsed(),
        );
        return Ok(Outcome::Failed {
            result: r,
            details: json!({"zone": zone_name}),
        });
    }
    let deadline = state.settings.probes.deadline;
    let job = AgentJob {
        id: new_id(),
        zone_id: zone.id.clone(),
        connection_id: c.id.clone(),
        requested_by: p.actor(),
        request_id: p.request.request_id.clone(),
        source_address: p.request.source_address.clone(),
        status: "queued".into(),
        created_at: now_millis(),
        deadline: now_millis() + i64::try_from(deadline.as_millis()).unwrap_or(60_000),
        claimed_by: None,
        claimed_at: None,
        result: None,
    };
    state.store.enqueue_job(&job).await?;
    let hub = &state.probes.agents;
    hub.jobs.notify_waiters();
    let until = started + deadline + REPORT_GRACE;
    let ended = loop {
        let woken = hub.results.notified();
        let j = state.store.get_job(&job.id).await?;
        if j.status == "done" || j.status == "expired" {
            break j;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // A compare-and-set: a report landing now either wins (done) or is refused.
            break state.store.expire_job(&job.id).await?;
        }
        let _ = tokio::time::timeout(left.min(POLL_ROWS), woken).await;
    };
    // Finished jobs hold results only; an hour of them is kept for inspection.
    if let Err(e) = state.store.prune_jobs(now_millis() - 3_600_000).await {
        tracing::warn!(error = %e, "could not prune finished agent jobs");
    }
    if ended.status == "done" {
        return ended
            .result
            .as_deref()
            .and_then(|t| serde_json::from_str::<ProbeResult>(t).ok())
            .map(Outcome::Recorded)
            .ok_or_else(|| ApiError(patchbay_core::Error::internal()));
    }
    let (class, message) = match &ended.claimed_by {
        Some(_) => (
            ErrorClass::Timeout,
            format!("the agent of zone {zone_name} took the test but did not report in time"),
        ),
        None if now_millis() < ended.deadline => (
            ErrorClass::AgentUnavailable,
            format!(
                "the test was withdrawn before an agent of zone {zone_name} took it: the connection left the zone or its secrets could not be resolved"
            ),
        ),
        None => (
            ErrorClass::AgentUnavailable,
            format!(
                "no agent of zone {zone_name} took the test within {} s",
                deadline.as_secs()
            ),
        ),
    };
    Ok(Outcome::Failed {
        result: agent_failure(class, message, &hint, started.elapsed()),
        details: json!({"zone": zone_name, "job": job.id}),
    })
}
