//! The token manager: a per-credential cache that refreshes single-flight (one lock per
//! credential in process, the [`TokenStore`] lease across replicas), and the store trait
//! the server implements over SQL (plus an in-memory one for tests).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_crypto::SecretString;

use super::{now_ms, AccessToken, GrantKind, OAuth2Client, OAuthClientConfig, StoredToken};
use crate::error::{ExternalError, Result};

/// A boxed future returned by [`TokenStore`] methods (keeps the trait usable as `dyn`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Persistence and cross-replica leasing of tokens, implemented by the server over its SQL
/// store (one row per credential: encrypted tokens, `lease_holder`, `lease_until`).
///
/// Contract:
/// * `load` returns the last saved token.
/// * `try_lease` atomically takes the refresh lease when it is free, expired, or already held
///   by `holder` (e.g. `UPDATE … SET lease_holder=$h, lease_until=$now+ttl WHERE id=$c AND
///   (lease_holder IS NULL OR lease_until < $now OR lease_holder=$h)`), answering whether
///   `holder` now holds it.
/// * `save_and_release` durably saves `token` — even if the lease has meanwhile expired, since
///   the old refresh token is already spent — and clears the lease if `holder` holds it.
/// * `release` clears the lease if `holder` holds it (after a failed refresh).
///
/// Errors should be [`ExternalError::Store`].
pub trait TokenStore: Send + Sync {
    /// The last saved token of `credential_id`.
    fn load<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Option<StoredToken>>;
    /// Takes the refresh lease of `credential_id` for `ttl` if free; whether `holder` holds it.
    fn try_lease<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Saves `token` and releases `holder`'s lease.
    fn save_and_release<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        token: &'a StoredToken,
    ) -> StoreFuture<'a, ()>;
    /// Releases `holder`'s lease without saving.
    fn release<'a>(&'a self, credential_id: &'a str, holder: &'a str) -> StoreFuture<'a, ()>;
}

struct MemoryEntry {
    token: Option<StoredToken>,
    lease: Option<(String, Instant)>,
}

/// An in-memory [`TokenStore`] (tests, single-process use).
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: std::sync::Mutex<HashMap<String, MemoryEntry>>,
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore").finish_non_exhaustive()
    }
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the token of a credential (seeding).
    pub fn put(&self, credential_id: &str, token: StoredToken) {
        self.lock()
            .entry(credential_id.to_owned())
            .or_insert(MemoryEntry {
                token: None,
                lease: None,
            })
            .token = Some(token);
    }

    /// The saved token of a credential.
    pub fn get(&self, credential_id: &str) -> Option<StoredToken> {
        self.lock().get(credential_id).and_then(|e| e.token.clone())
    }
}

impl TokenStore for MemoryTokenStore {
    fn load<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(async move { Ok(self.get(credential_id)) })
    }

    fn try_lease<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut map = self.lock();
            let e = map.entry(credential_id.to_owned()).or_insert(MemoryEntry {
                token: None,
                lease: None,
            });
            let free = match &e.lease {
                None => true,
                Some((h, until)) => h == holder || Instant::now() >= *until,
            };
            if free {
                e.lease = Some((holder.to_owned(), Instant::now() + ttl));
            }
            Ok(free)
        })
    }

    fn save_and_release<'a>(
        &'a self,
        credential_id: &'a str,
        holder: &'a str,
        token: &'a StoredToken,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut map = self.lock();
            let e = map.entry(credential_id.to_owned()).or_insert(MemoryEntry {
                token: None,
                lease: None,
            });
            e.token = Some(token.clone());
            if e.lease.as_ref().is_some_and(|(h, _)| h == holder) {
                e.lease = None;
            }
            Ok(())
        })
    }

    fn release<'a>(&'a self, credential_id: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Some(e) = self.lock().get_mut(credential_id) {
                if e.lease.as_ref().is_some_and(|(h, _)| h == holder) {
                    e.lease = None;
                }
            }
            Ok(())
        })
    }
}

/// Tuning of a [`TokenManager`].
#[derive(Debug, Clone)]
pub struct TokenManagerOptions {
    /// Refresh when less than this remains of the token's lifetime (capped at half the
    /// lifetime). Default 60 s.
    pub refresh_margin: Duration,
    /// How long a refresh lease is held at most. Default 30 s (longer than the HTTP timeout).
    pub lease_ttl: Duration,
    /// How long to wait for another holder's refresh before giving up. Default 35 s.
    pub wait_for_holder: Duration,
    /// How often to look at the store while another holder refreshes. Default 100 ms.
    pub poll_interval: Duration,
    /// This replica's lease holder id (unique per process).
    pub holder_id: String,
}

impl Default for TokenManagerOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
            wait_for_holder: Duration::from_secs(35),
            poll_interval: Duration::from_millis(100),
            holder_id: format!("pid{}-{}", std::process::id(), now_ms()),
        }
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<StoredToken>,
    /// A token obtained but not yet saved (the save failed): saved before anything else.
    unsaved: Option<StoredToken>,
}

/// Hands out OAuth2 access tokens per credential id; see the module docs.
pub struct TokenManager {
    client: OAuth2Client,
    store: Arc<dyn TokenStore>,
    opts: TokenManagerOptions,
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager over `store`.
    pub fn new(
        client: OAuth2Client,
        store: Arc<dyn TokenStore>,
        opts: TokenManagerOptions,
    ) -> Self {
        Self {
            client,
            store,
            opts,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, credential_id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(credential_id.to_owned()).or_default().clone()
    }

    /// A valid access token for `credential_id`: the cached one while it is fresh, else the
    /// one another replica saved, else a new one from the token endpoint (one request for all
    /// concurrent callers).
    pub async fn access_token(
        &self,
        credential_id: &str,
        cfg: &OAuthClientConfig,
    ) -> Result<AccessToken> {
        self.obtain(credential_id, cfg, None).await
    }

    /// After the resource server answered 401 to `rejected`: a different, valid token. If
    /// another caller already replaced `rejected`, that replacement is returned without a new
    /// request; concurrent callers share one refresh.
    pub async fn invalidate_and_refresh(
        &self,
        credential_id: &str,
        cfg: &OAuthClientConfig,
        rejected: &SecretString,
    ) -> Result<AccessToken> {
        self.obtain(credential_id, cfg, Some(rejected)).await
    }

    /// Drops the in-memory token of `credential_id` (on rotate, update or delete). The next
    /// call reads the store again.
    pub fn forget(&self, credential_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(credential_id);
    }

    async fn obtain(
        &self,
        cred: &str,
        cfg: &OAuthClientConfig,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken> {
        let slot = self.slot(cred);
        // Single flight in this process: one caller per credential past this point.
        let mut slot = slot.lock().await;
        let holder = self.opts.holder_id.as_str();
        let margin = self.opts.refresh_margin;
        let usable = |t: &StoredToken| {
            t.is_fresh(now_ms(), margin)
                && !rejected.is_some_and(|r| t.access_token.as_ref() == Some(r))
        };
        let hand_out = |t: &StoredToken| {
            AccessToken::from_stored(t).ok_or_else(|| {
                ExternalError::InvalidResponse("OAuth2: the token has no access token".into())
            })
        };

        if let Some(t) = slot.unsaved.take() {
            if let Err(e) = self.store.save_and_release(cred, holder, &t).await {
                slot.unsaved = Some(t);
                return Err(e);
            }
            slot.cached = Some(t);
        }
        if let Some(t) = slot.cached.as_ref().filter(|t| usable(t)) {
            return hand_out(t);
        }
        slot.cached = None;

        let deadline = Instant::now() + self.opts.wait_for_holder;
        loop {
            if let Some(t) = self.store.load(cred).await?.filter(|t| usable(t)) {
                let out = hand_out(&t);
                slot.cached = Some(t);
                return out;
            }
            if self
                .store
                .try_lease(cred, holder, self.opts.lease_ttl)
                .await?
            {
                // Another holder may have saved between our load and our lease.
                let stored = match self.store.load(cred).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = self.store.release(cred, holder).await;
                        return Err(e);
                    }
                };
                if let Some(t) = stored.as_ref().filter(|t| usable(t)) {
                    let _ = self.store.release(cred, holder).await;
                    let out = hand_out(t);
                    slot.cached = stored;
                    return out;
                }
                let fresh = match self.fetch(cfg, stored.as_ref()).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = self.store.release(cred, holder).await;
                        return Err(e);
                    }
                };
                // Saved before anyone gets the token: a rotated refresh token is never lost.
                if let Err(e) = self.store.save_and_release(cred, holder, &fresh).await {
                    slot.unsaved = Some(fresh);
                    return Err(e);
                }
                let out = hand_out(&fresh);
                slot.cached = Some(fresh);
                return out;
            }
            if Instant::now() >= deadline {
                return Err(ExternalError::Unreachable(format!(
                    "OAuth2: the token refresh of credential {cred} by another replica did not finish"
                )));
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    async fn fetch(
        &self,
        cfg: &OAuthClientConfig,
        stored: Option<&StoredToken>,
    ) -> Result<StoredToken> {
        match cfg.grant {
            GrantKind::ClientCredentials => self.client.client_credentials(cfg).await,
            GrantKind::RefreshToken => {
                let rt = stored
                    .and_then(|t| t.refresh_token.as_ref())
                    .ok_or_else(|| {
                        ExternalError::OAuthInvalidGrant(
                            "OAuth2: no refresh token is stored for this credential".into(),
                        )
                    })?;
                let mut t = self.client.refresh(cfg, rt).await?;
                if t.scope.is_none() {
                    t.scope = stored.and_then(|s| s.scope.clone());
                }
                Ok(t)
            }
        }
    }
}
