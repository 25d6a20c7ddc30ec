//! Test connection (issue 6): runs `patchbay_probe` against a saved connection with its
//! decrypted secrets, through the server's network guard, under a per-principal rate limit
//! and a cap on concurrently running tests; records a `connection.test` audit event with
//! the outcome (never secrets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use patchbay_core::model::{Connection, ConnectionCredential, Principal};
use patchbay_core::permission::Permission;
use patchbay_core::schema::ConnectorType;
use patchbay_core::validate::{check_required, validate_secret_names, validate_settings};
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_probe::{ErrorClass, NetworkGuard, ProbeResult};
use serde_json::{json, Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection_secrets::{self as secrets};
use super::connections::{self as conn};
use super::{audit, credentials, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::WindowLimiter;
use crate::state::AppState;

/// Tunables of connection tests, part of the server settings.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The network policy (PATCHBAY_NETWORK_ALLOW / _DENY, --network-allow / --network-deny).
    pub policy: patchbay_probe::Policy,
    /// The deadline of one test (capped at 60 s by the probe crate).
    pub deadline: Duration,
    /// Tests one principal may start per minute.
    pub per_minute: usize,
    /// Tests running at once, server-wide.
    pub concurrency: usize,
    /// How long an agent's claim waits for a job (PATCHBAY_AGENT_POLL); an agent is
    /// healthy while it called in within twice this.
    pub agent_poll: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            policy: patchbay_probe::Policy::default(),
            deadline: patchbay_probe::DEFAULT_DEADLINE,
            per_minute: 30,
            concurrency: 16,
            agent_poll: Duration::from_secs(25),
        }
    }
}

/// The guard plus the limiter state, one per service.
pub struct Probes {
    guard: NetworkGuard,
    settings: ProbeSettings,
    per_principal: WindowLimiter,
    running: Arc<Semaphore>,
    /// Wakes agents' claims and zoned tests on this replica (service::agents).
    pub agents: super::agents::AgentHub,
}

impl Probes {
    pub fn new(settings: ProbeSettings) -> Self {
        Self {
            guard: NetworkGuard::new(settings.policy.clone()),
            running: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            per_principal: WindowLimiter::new(
                u32::try_from(settings.per_minute).unwrap_or(u32::MAX),
                Duration::from_secs(60),
            ),
            agents: Default::default(),
            settings,
        }
    }

    /// A one-minute window per principal.
    fn admit(&self, actor: &str) -> ApiResult<()> {
        self.per_principal.admit(actor).map_err(|wait| {
            ApiError::rate_limited(
                format!(
                    "at most {} connection tests a minute; retry a minute later",
                    self.settings.per_minute
                ),
                wait,
            )
        })
    }
}

/// A connection the principal may test (404 for other workspaces, as everywhere).
async fn load_for_test(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    let c = conn::find(state, p, id).await?;
    super::require_in(p, &c.workspace_id, Permission::ConnectionsTest)?;
    Ok(c)
}

/// Tests a saved connection. A failed test is a 200 with `ok: false`; only settings that
/// cannot describe a target at all (URL with credentials, undeclared scheme) answer 400.
pub async fn test_saved(state: &AppState, p: &Principal, id: &str) -> ApiResult<ProbeResult> {
    let c = load_for_test(state, p, id).await?;
    let ty = state.catalog.get(&c.connector_type).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownType,
            "the connection's type is no longer in the catalog",
        )
    })?;
    let permit = admit(state, p)?;
    // The material a run would get (one code path with resolve), so a test cannot pass with
    // settings or secrets a job would not receive.
    let m = super::resolve::material(state, c).await?;
    let c = &m.connection;
    let subject = Subject {
        workspace_id: &c.workspace_id,
        kind: "connection",
        id: &c.id,
        details: json!({"version": c.version}),
    };
    if let Some(zone) = &c.zone {
        // The zone's agent tests it on the workers' network path; the material it gets is
        // resolved again when it claims the job (nothing secret is queued).
        drop(m.secrets);
        let outcome = super::agents::run_on_agent(state, p, c, zone).await;
        drop(permit);
        return match outcome? {
            super::agents::Outcome::Recorded(result) => Ok(redact_for(p, &c.workspace_id, result)),
            super::agents::Outcome::Failed { result, details } => {
                let mut subject = subject;
                if let (Some(d), Some(extra)) =
                    (subject.details.as_object_mut(), details.as_object())
                {
                    d.extend(extra.clone());
                }
                record(state, p, subject, result).await
            }
        };
    }
    let secrets = m.secrets;
    let settings = m.settings;
    run(state, p, ty, &settings, secrets, subject, permit).await
}

/// Tests a draft: a body like create's (inline `secrets` or a shared `credential`),
/// validated the same way, nothing stored.
pub async fn test_draft(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    body: Map<String, Value>,
) -> ApiResult<ProbeResult> {
    let project = workspaces::project(state, p, project_id).await?;
    super::require_in(p, &project.workspace_id, Permission::ConnectionsTest)?;
    let mut f = Fields::new(body, conn::WRITABLE, &[])?;
    // Metadata is accepted (a create body can be tested as is) but plays no part.
    let _ = f.take("name");
    let _ = f.optional_string("description")?;
    let _ = f.optional_string("environment")?;
    let _ = f.optional_string_list("tags")?;
    if f.optional_string("zone")?.is_some() {
        return Err(ApiError::field(
            ErrorCode::ZoneDraftUnsupported,
            "/zone",
            "a draft is tested by the server itself; save the connection to test it through its zone's agent",
        ));
    }
    let ty = conn::connector(state, &f.required_string("type")?)?;
    let mut settings = conn::strip_nulls(f.optional_object("settings")?.unwrap_or_default());
    validate_settings(ty, &settings)?;
    let credential = conn::credential_input(&mut f)?;
    let inline = conn::secrets_input(&mut f)?.unwrap_or_default();
    let secrets = match credential {
        conn::CredentialInput::Ref {
            id_or_name,
            version,
        } => {
            if !inline.is_empty() {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    "/secrets",
                    "`secrets` and `credential` are alternatives: send one",
                ));
            }
            let cred = secrets::shared_credential(
                state,
                p,
                ty,
                &project.workspace_id,
                &id_or_name,
                version,
            )
            .await?;
            let public = match version {
                Some(v) => state.store.credential_public_fields(&cred.id, v).await?,
                None => cred.public_fields.clone(),
            };
            for (k, v) in public {
                if let Some(target) = ty.credential_target(&cred.kind, &k) {
                    if ty.settings.properties.get(target).is_some() {
                        settings.entry(target.to_owned()).or_insert(v);
                    }
                }
            }
            let link = ConnectionCredential {
                id: cred.id.clone(),
                name: cred.name.clone(),
                kind: cred.kind.clone(),
                owned: false,
                pinned_version: version,
                current_version: cred.current_version,
                external: cred.external.is_some(),
                secret_fields: cred.secret_fields.clone(),
                public_fields: Map::new(),
            };
            secrets::fill_secrets(
                ty,
                &cred.kind,
                credentials::values_for_use(state, &project.workspace_id, &link).await?,
            )
        }
        conn::CredentialInput::Absent | conn::CredentialInput::Detach => {
            validate_secret_names(ty, inline.keys().map(String::as_str))?;
            let mut out = BTreeMap::new();
            for (k, v) in inline {
                match v {
                    Value::String(s) => {
                        out.insert(k, SecretString::new(s));
                    }
                    Value::Null => {}
                    _ => {
                        return Err(ApiError::field(
                            ErrorCode::InvalidSetting,
                            format!("/secrets/{k}"),
                            "secret values are strings",
                        ))
                    }
                }
            }
            out
        }
    };
    let names: BTreeSet<String> = secrets.keys().cloned().collect();
    check_required(ty, &settings, &names)?;
    let permit = admit(state, p)?;
    let subject = Subject {
        workspace_id: &project.workspace_id,
        kind: "project",
        id: &project.id,
        details: json!({"draft": true, "type": ty.id}),
    };
    run(state, p, ty, &settings, secrets, subject, permit).await
}

/// What an audit record of a test is about.
struct Subject<'a> {
    workspace_id: &'a str,
    kind: &'a str,
    id: &'a str,
    details: Value,
}

/// Rate limit, then a slot under the concurrency cap.
fn admit(state: &AppState, p: &Principal) -> ApiResult<OwnedSemaphorePermit> {
    let probes = &state.probes;
    probes.admit(&p.actor())?;
    probes.running.clone().try_acquire_owned().map_err(|_| {
        ApiError::rate_limited(
            "too many connection tests are running; retry in a moment",
            std::time::Duration::from_secs(1),
        )
    })
}

async fn run(
    state: &AppState,
    p: &Principal,
    ty: &ConnectorType,
    settings: &Map<String, Value>,
    secrets: BTreeMap<String, SecretString>,
    subject: Subject<'_>,
    permit: OwnedSemaphorePermit,
) -> ApiResult<ProbeResult> {
    let probes = &state.probes;
    let result = patchbay_probe::probe(
        ty,
        settings,
        &secrets,
        &probes.guard,
        probes.settings.deadline,
    )
    .await;
    drop(secrets);
    drop(permit);
    record(state, p, subject, result).await
}

/// Records a test's result like every test: audit event, and for a saved connection its
/// last result (20 kept), in one transaction; then redacts it for the caller.
async fn record(
    state: &AppState,
    p: &Principal,
    subject: Subject<'_>,
    result: ProbeResult,
) -> ApiResult<ProbeResult> {
    let mut details = json!({
        "ok": result.ok,
        "duration_ms": result.duration_ms,
        "stage": result.error.as_ref().map(|e| e.stage.as_str()),
        "class": result.error.as_ref().map(|e| e.class.as_str()),
    });
    if let (Some(d), Some(extra)) = (details.as_object_mut(), subject.details.as_object()) {
        d.extend(extra.clone());
    }
    let entry = audit(
        p,
        "connection.test",
        Some(subject.workspace_id),
        subject.kind,
        subject.id,
        details,
    );
    if subject.kind == "connection" {
        // The result becomes the connection's last result (20 kept), with its audit record.
        let json = serde_json::to_value(&result)
            .map_err(|_| ApiError(patchbay_core::Error::internal()))?;
        state
            .store
            .record_connection_test(subject.id, result.ok, &json, &entry)
            .await?;
    } else {
        state.store.record_audit(&entry).await?;
    }
    if let Some(e) = &result.error {
        if e.class == ErrorClass::InvalidSettings {
            return Err(ApiError::new(ErrorCode::InvalidSetting, e.message.clone()));
        }
    }
    Ok(redact_for(p, subject.workspace_id, result))
}

/// Non-admins get no remote banner (product version) and no resolved addresses: the target
/// is caller-chosen, so those would map internal networks and fingerprint services.
fn redact_for(p: &Principal, workspace_id: &str, mut result: ProbeResult) -> ProbeResult {
    if p.can_in(workspace_id, Permission::WorkspaceAdmin) {
        return result;
    }
    result.server = None;
    for s in &mut result.stages {
        if s.status == patchbay_probe::StageStatus::Ok {
            match s.stage {
                patchbay_probe::ProbeStage::Dns => s.detail = Some("resolved and allowed".into()),
                patchbay_probe::ProbeStage::Tcp => s.detail = Some("connected".into()),
                _ => {}
            }
        }
    }
    result
}

/// The stored results of a connection's tests, newest first (the first is its last result).
pub async fn history(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> ApiResult<Vec<patchbay_store::StoredTestResult>> {
    let c = conn::load(state, p, id).await?;
    let mut rows = state.store.connection_tests(&c.id).await?;
    if !p.can_in(&c.workspace_id, Permission::WorkspaceAdmin) {
        for r in &mut rows {
            if let Ok(parsed) = serde_json::from_value::<ProbeResult>(r.result.clone()) {
                r.result = serde_json::to_value(redact_for(p, &c.workspace_id, parsed))
                    .unwrap_or_default();
            }
        }
    }
    Ok(rows)
}
