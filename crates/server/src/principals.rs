//! A short-lived cache of authenticated tokens: token hash → the token's record and its
//! user's memberships. It saves the three lookups of every request (token, user,
//! memberships) for runners that resolve many times a second.
//!
//! Freshness: an entry lives at most [`TTL`]; expiry is checked on every hit; and every
//! change that can narrow a token on this replica (revoking a token, changing or removing a
//! membership, creating a role) bumps the store's auth generation, which empties the cache
//! at once. A change made through another replica is seen here within [`TTL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use patchbay_core::permission::PermissionSet;
use patchbay_store::{now_millis, TokenRecord};

/// How long an entry is used without asking the database again.
pub const TTL: Duration = Duration::from_secs(2);
/// Entries kept at most (the cache is emptied when full).
const CAPACITY: usize = 10_000;

pub type Memberships = Option<BTreeMap<String, PermissionSet>>;

struct Entry {
    record: TokenRecord,
    memberships: Memberships,
    at: Instant,
    generation: u64,
}

#[derive(Default)]
pub struct PrincipalCache {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl PrincipalCache {
    /// The live record and memberships cached for `hash`, if fresh and of `generation`.
    pub fn get(&self, hash: &[u8], generation: u64) -> Option<(TokenRecord, Memberships)> {
        let mut entries = self.entries.lock().ok()?;
        let e = entries.get(hash)?;
        let fresh = e.generation == generation
            && e.at.elapsed() < TTL
            && e.record.revoked_at.is_none()
            && e.record.expires_at.is_none_or(|x| x > now_millis());
        if !fresh {
            entries.remove(hash);
            return None;
        }
        Some((e.record.clone(), e.memberships.clone()))
    }

    pub fn put(
        &self,
        hash: Vec<u8>,
        record: TokenRecord,
        memberships: Memberships,
        generation: u64,
    ) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(
                hash,
                Entry {
                    record,
                    memberships,
                    at: Instant::now(),
                    generation,
                },
            );
        }
    }

    /// Records that the token was just used (so the once-a-minute touch is not repeated).
    pub fn touched(&self, hash: &[u8], at: i64) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(e) = entries.get_mut(hash) {
                e.record.last_used_at = Some(at);
            }
        }
    }
}
