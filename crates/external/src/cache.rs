//! A small TTL cache for values fetched from external secret managers: "fetched at use time
//! with a short cache (TTL configurable, dropped on rotate)". Values are held as
//! [`SecretString`] (zeroized when evicted); keys are not secret.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use patchbay_crypto::SecretString;

use crate::error::Result;

/// What a cached value was fetched as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The patchbay credential that references the external value (for
    /// [`ValueCache::invalidate_credential`]).
    pub credential_id: String,
    /// Provider name, e.g. `aws-secretsmanager`, `vault`.
    pub provider: String,
    /// Provider path: secret name/ARN, or `mount/path` for Vault.
    pub path: String,
    /// JSON key / KV field, if one was taken.
    pub key: Option<String>,
    /// Requested version (id, stage or number), if any.
    pub version: Option<String>,
}

/// TTL cache of fetched external values. A TTL of zero disables caching.
pub struct ValueCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<CacheKey, (Instant, SecretString)>>,
}

impl fmt::Debug for ValueCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .finish()
    }
}

impl ValueCache {
    /// A cache whose entries live `ttl` (at most 10 000 entries).
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, 10_000)
    }

    /// A cache whose entries live `ttl`, holding at most `max_entries` (expired entries, then
    /// the oldest, are evicted first).
    pub fn with_capacity(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The configured TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Instant, SecretString)>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep using it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of entries (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value, if fetched less than `ttl` ago.
    pub fn get(&self, key: &CacheKey) -> Option<SecretString> {
        let mut map = self.lock();
        match map.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores a freshly fetched value.
    pub fn insert(&self, key: CacheKey, value: SecretString) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.max_entries {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(key, (Instant::now(), value));
    }

    /// The cached value, or the result of `fetch` (cached when it succeeds; errors are not
    /// cached).
    pub async fn get_or_fetch<F, Fut>(&self, key: CacheKey, fetch: F) -> Result<SecretString>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SecretString>>,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let v = fetch().await?;
        self.insert(key, v.clone());
        Ok(v)
    }

    /// Drops every value fetched for `credential_id` (on rotate, update or delete); returns how
    /// many were dropped.
    pub fn invalidate_credential(&self, credential_id: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|k, _| k.credential_id != credential_id);
        before - map.len()
    }

    /// Drops every value of `provider` whose path starts with `path_prefix`; returns how many
    /// were dropped.
    pub fn invalidate_prefix(&self, provider: &str, path_prefix: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|k, _| !(k.provider == provider && k.path.starts_with(path_prefix)));
        before - map.len()
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cred: &str, provider: &str, path: &str) -> CacheKey {
        CacheKey {
            credential_id: cred.into(),
            provider: provider.into(),
            path: path.into(),
            key: None,
            version: None,
        }
    }

    #[test]
    fn ttl_and_invalidation() {
        let c = ValueCache::new(Duration::from_millis(100));
        c.insert(
            key("c1", "vault", "kv/app/db"),
            SecretString::new("a".into()),
        );
        c.insert(
            key("c1", "vault", "kv/app/api"),
            SecretString::new("b".into()),
        );
        c.insert(
            key("c2", "vault", "kv/other"),
            SecretString::new("c".into()),
        );
        c.insert(key("c3", "aws", "kv/app/db"), SecretString::new("d".into()));
        assert_eq!(
            c.get(&key("c1", "vault", "kv/app/db"))
                .unwrap()
                .expose_secret(),
            "a"
        );
        assert_eq!(c.invalidate_prefix("vault", "kv/app/"), 2);
        assert!(c.get(&key("c1", "vault", "kv/app/db")).is_none());
        assert_eq!(c.invalidate_credential("c2"), 1);
        assert_eq!(c.len(), 1);
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.get(&key("c3", "aws", "kv/app/db")).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_evicts_oldest_and_zero_ttl_disables() {
        let c = ValueCache::with_capacity(Duration::from_secs(60), 2);
        c.insert(key("1", "p", "a"), SecretString::new("1".into()));
        c.insert(key("2", "p", "b"), SecretString::new("2".into()));
        c.insert(key("3", "p", "c"), SecretString::new("3".into()));
        assert_eq!(c.len(), 2);
        assert!(c.get(&key("1", "p", "a")).is_none());
        let z = ValueCache::new(Duration::ZERO);
        z.insert(key("1", "p", "a"), SecretString::new("1".into()));
        assert!(z.is_empty());
    }

    #[tokio::test]
    async fn get_or_fetch_caches_success_only() {
        let c = ValueCache::new(Duration::from_secs(60));
        let k = key("c", "p", "x");
        let e = c
            .get_or_fetch(k.clone(), || async {
                Err(crate::ExternalError::Unreachable("down".into()))
            })
            .await;
        assert!(e.is_err());
        let v = c
            .get_or_fetch(k.clone(), || async { Ok(SecretString::new("v1".into())) })
            .await
            .ok()
            .unwrap();
        assert_eq!(v.expose_secret(), "v1");
        let v = c
            .get_or_fetch(k, || async { Ok(SecretString::new("v2".into())) })
            .await
            .ok()
            .unwrap();
        assert_eq!(v.expose_secret(), "v1");
    }
}
