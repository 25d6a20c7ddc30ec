//! Shared state handed to every handler.

use std::sync::Arc;

use patchbay_catalog::Catalog;
use patchbay_store::Store;

use crate::keyring::KeyRing;

/// Every request clones the state (each layer and handler that takes it), so it is one
/// reference-counted pointer to [`Shared`], whose fields it dereferences to.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub catalog: &'static Catalog,
    pub settings: Arc<Settings>,
    /// OAuth2 access tokens: single-flight refresh per credential.
    pub oauth: Arc<patchbay_external::TokenManager>,
    /// External secret managers: clients and the short value cache.
    pub external: Arc<crate::service::external::External>,
    /// Key rotation machinery (service::keys).
    pub key_manager: Arc<crate::service::keys::KeyManager>,
    /// Failed authentications, per source address and per token prefix.
    pub auth_failures: Arc<crate::ratelimit::WindowLimiter>,
    /// Connection tests: network guard and rate limits (service::probes).
    pub probes: Arc<crate::service::probes::Probes>,
    /// Authenticated tokens, for a short while (auth.rs; invalidated by the store's auth
    /// generation).
    pub principals: Arc<crate::principals::PrincipalCache>,
    /// What resolves read from the database, per replica (crate::materials).
    pub materials: Arc<crate::materials::MaterialCache>,
    /// Group commit of resolves' audit events (service::resolve_log).
    pub resolve_log: Arc<crate::service::resolve_log::ResolveLog>,
}

/// Tunables read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a credential version replaced by a rotation stays usable.
    pub credential_grace_ms: i64,
    /// How often versions past their grace period are destroyed.
    pub sweep_interval: std::time::Duration,
    /// How long a value fetched from an external secret manager is reused.
    pub external_cache_ttl: std::time::Duration,
    /// Failed authentications allowed per source address, and per token prefix, per minute.
    pub auth_failure_limit: u32,
    /// How long a browser session lasts after sign-in.
    pub session_ttl: std::time::Duration,
    /// Session cookies carry `Secure` (set when serving HTTPS).
    pub secure_cookies: bool,
    /// How long audit events are kept (`None`: forever). Older ones are deleted, the
    /// deletion recorded, every `sweep_interval`.
    pub audit_retention: Option<std::time::Duration>,
    /// Whether reveals are audited. Only for measuring the audit's cost
    /// (PATCHBAY_AUDIT_READS=off): switching it off is unsafe, reveals then leave no trace.
    pub audit_reads: bool,
    /// Connection tests: network policy, deadline, rate limits.
    pub probes: crate::service::probes::ProbeSettings,
    /// Proxies whose `X-Forwarded-For` is believed (PATCHBAY_TRUSTED_PROXIES). Empty: none,
    /// the TCP peer is the source address.
    pub trusted_proxies: Vec<patchbay_probe::guard::Cidr>,
    /// Webhook delivery: poll interval, timeout, retries and backoff, lease, retention.
    pub events: crate::service::events::EventSettings,
    /// `serve --provision DIR`: document files applied at start (service::provision).
    pub provision_dir: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            credential_grace_ms: 24 * 3600 * 1000,
            sweep_interval: std::time::Duration::from_secs(60),
            external_cache_ttl: std::time::Duration::from_secs(60),
            auth_failure_limit: 20,
            session_ttl: std::time::Duration::from_secs(12 * 3600),
            secure_cookies: false,
            audit_retention: None,
            audit_reads: true,
            probes: Default::default(),
            trusted_proxies: Vec::new(),
            events: Default::default(),
            provision_dir: None,
        }
    }
}
