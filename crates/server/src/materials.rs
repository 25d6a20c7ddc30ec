//! The resolve cache: per replica, what a resolve reads from the database for a connection
//! — the connection and the ciphertext of the credential version in effect. Never
//! plaintext: each resolve decrypts for itself, as without the cache.
//!
//! Freshness does not rest on a time to live. The database keeps a material generation
//! (migration 0013): a counter that triggers move in the same transaction as any change to
//! connections, credentials, their versions and ciphertexts, or data keys, whichever replica
//! or process makes it. An entry is tagged with the generation read before its rows. A
//! resolve served from an entry is recorded *checked*: the transaction that commits its
//! audit event (service::resolve_log, before any secret leaves) reads the generation, and
//! when it has moved the event is not written and the resolve reads the database again. So
//! every change committed before a resolve began is seen by it, on every replica; the cost
//! is one statement per group commit instead of two queries per resolve.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use patchbay_core::model::Connection;

use crate::service::connection_secrets::StoredSecrets;

/// Entries kept at most (the cache is emptied when full).
const CAPACITY: usize = 10_000;

/// A connection as the database held it at `generation`.
#[derive(Debug)]
pub struct Entry {
    pub generation: i64,
    /// Shared with the material of each resolve served from this entry (not cloned).
    pub connection: Arc<Connection>,
    /// Its effective non-secret settings (service::resolve::settings_of), shared likewise.
    pub settings: Arc<serde_json::Map<String, serde_json::Value>>,
    pub stored: StoredSecrets,
}

pub struct MaterialCache {
    /// The newest material generation this process has read.
    seen: AtomicI64,
    entries: RwLock<HashMap<String, Arc<Entry>>>,
}

impl Default for MaterialCache {
    fn default() -> Self {
        Self {
            seen: AtomicI64::new(i64::MIN),
            entries: RwLock::default(),
        }
    }
}

impl MaterialCache {
    /// The entry for connection `id`, if it was read at the newest generation seen here.
    /// (The database may have moved on since: the caller records its use checked.)
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let entries = self.entries.read().ok()?;
        let e = entries.get(id)?;
        (e.generation == self.seen.load(Ordering::Acquire)).then(|| e.clone())
    }

    /// Keeps an entry just read from the database (its generation read before its rows).
    pub fn put(&self, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        self.observe(entry.generation);
        if let Ok(mut entries) = self.entries.write() {
            // A newer generation may have been seen meanwhile: then the entry is already
            // stale, and answers this one call only.
            if entry.generation == self.seen.load(Ordering::Acquire) {
                if entries.len() >= CAPACITY {
                    entries.clear();
                }
                entries.insert(entry.connection.id.clone(), entry.clone());
            }
        }
        entry
    }

    /// Notes a generation read from the database; a newer one empties the cache.
    pub fn observe(&self, generation: i64) {
        let before = self.seen.fetch_max(generation, Ordering::AcqRel);
        if generation > before {
            if let Ok(mut entries) = self.entries.write() {
                entries.retain(|_, e| e.generation >= generation);
            }
        }
    }

    /// Drops the entry for connection `id` (a use of it failed; the next one reads again).
    pub fn evict(&self, id: &str) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, generation: i64) -> Entry {
        Entry {
            generation,
            connection: Arc::new(Connection {
                id: id.into(),
                workspace_id: "w".into(),
                project_id: "p".into(),
                name: id.into(),
                connector_type: "postgresql".into(),
                description: String::new(),
                environment: None,
                zone: None,
                tags: vec![],
                settings: Default::default(),
                secrets_set: vec![],
                credential: None,
                provisioned: None,
                version: 1,
                created_at: 0,
                updated_at: 0,
                dependents_count: 0,
            }),
            settings: Default::default(),
            stored: StoredSecrets::Legacy(vec![]),
        }
    }

    #[test]
    fn an_entry_serves_only_at_the_newest_generation_seen() {
        let cache = MaterialCache::default();
        assert!(cache.get("a").is_none());
        cache.put(entry("a", 5));
        assert_eq!(cache.get("a").unwrap().generation, 5);
        // Seeing an older generation (a slow reader reporting late) changes nothing.
        cache.observe(4);
        assert!(cache.get("a").is_some());
        // A newer one: the entry is stale and dropped.
        cache.observe(6);
        assert!(cache.get("a").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn an_entry_read_before_a_newer_generation_was_seen_is_not_kept() {
        let cache = MaterialCache::default();
        cache.observe(9);
        let e = cache.put(entry("a", 8));
        assert_eq!(e.generation, 8);
        assert!(cache.get("a").is_none());
        assert!(cache.is_empty());
        cache.put(entry("a", 9));
        cache.evict("a");
        assert!(cache.get("a").is_none());
    }
}
