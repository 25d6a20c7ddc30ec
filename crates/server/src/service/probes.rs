//! Test connection (issue 6): runs `patchbay_probe` against a saved connection with its
//! decrypted secrets, through the server's network guard, under a per-principal rate limit
//! and a cap on concurrently running tests; records a `connection.test` audit event with
//! the outcome (never secrets).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patchbay_core::model::{Connection, Principal};
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_probe::{ErrorClass, NetworkGuard, ProbeResult};
use patchbay_store::StoreError;
use serde_json::json;
use tokio::sync::Semaphore;

use super::audit;
use super::connections::{provided_settings, resolve_secrets};
use crate::error::{ApiError, ApiResult};
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
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            policy: patchbay_probe::Policy::default(),
            deadline: patchbay_probe::DEFAULT_DEADLINE,
            per_minute: 30,
            concurrency: 16,
        }
    }
}

/// The guard plus the limiter state, one per service.
pub struct Probes {
    guard: NetworkGuard,
    settings: ProbeSettings,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    running: Arc<Semaphore>,
}

impl Probes {
    pub fn new(settings: ProbeSettings) -> Self {
        Self {
            guard: NetworkGuard::new(settings.policy.clone()),
            running: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            recent: Mutex::new(HashMap::new()),
            settings,
        }
    }

    /// Sliding one-minute window per principal.
    fn admit(&self, actor: &str) -> ApiResult<()> {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = recent.entry(actor.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= self.settings.per_minute {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} connection tests a minute; retry a minute later",
                    self.settings.per_minute
                ),
            ));
        }
        q.push_back(now);
        Ok(())
    }
}

/// A connection the principal may test (404 for other workspaces, as everywhere).
async fn load_for_test(state: &AppState, p: &Principal, id: &str) -> ApiResult<Connection> {
    if !p.can(Permission::ConnectionsTest) {
        return Err(ApiError::forbidden(Permission::ConnectionsTest));
    }
    match state.store.get_connection(id).await {
        Ok(c) if p.sees_workspace(&c.workspace_id) => Ok(c),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("connection")),
        Err(e) => Err(e.into()),
    }
}

/// Tests a saved connection. A failed test is a 200 with `ok: false`; only settings that
/// cannot describe a target at all (URL with credentials, undeclared scheme) answer 400.
pub async fn test_saved(state: &AppState, p: &Principal, id: &str) -> ApiResult<ProbeResult> {
    let c = load_for_test(state, p, id).await?;
    let probes = &state.probes;
    probes.admit(&p.actor())?;
    let _permit = probes.running.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::RateLimited,
            "too many connection tests are running; retry in a moment",
        )
    })?;
    let ty = state.catalog.get(&c.connector_type).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownType,
            "the connection's type is no longer in the catalog",
        )
    })?;
    let secrets = resolve_secrets(state, &c).await?;
    let mut settings = c
        .credential
        .as_ref()
        .map(|cred| provided_settings(ty, cred))
        .unwrap_or_default();
    for (k, v) in &c.settings {
        settings.insert(k.clone(), v.clone());
    }
    let result = patchbay_probe::probe(
        ty,
        &settings,
        &secrets,
        &probes.guard,
        probes.settings.deadline,
    )
    .await;
    drop(secrets);
    let entry = audit(
        p,
        "connection.test",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({
            "ok": result.ok,
            "duration_ms": result.duration_ms,
            "stage": result.error.as_ref().map(|e| e.stage.as_str()),
            "class": result.error.as_ref().map(|e| e.class.as_str()),
            "version": c.version,
        }),
    );
    state.store.record_audit(&entry).await?;
    if let Some(e) = &result.error {
        if e.class == ErrorClass::InvalidSettings {
            return Err(ApiError::new(ErrorCode::InvalidSetting, e.message.clone()));
        }
    }
    Ok(result)
}
