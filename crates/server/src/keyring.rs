//! The server's key ring: the master keys (the current one, plus the previous or next one
//! while a master key rotation is unfinished), and workspace data keys unwrapped on first
//! use and cached in memory (zeroized when dropped). Each wrapped data key names the master
//! key that wrapped it, so a mixed state is readable while both master keys are loaded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use patchbay_crypto::{CryptoError, DataKey, MasterKey};
use patchbay_store::{Store, StoredDataKey};

use crate::error::ApiResult;

pub struct KeyRing {
    keks: RwLock<Keks>,
    data_keys: RwLock<HashMap<String, Arc<DataKey>>>,
}

struct Keks {
    /// Wraps new data keys.
    current: Arc<MasterKey>,
    /// Every loaded master key by id, the current one included.
    all: HashMap<String, Arc<MasterKey>>,
}

impl KeyRing {
    pub fn new(master: MasterKey) -> Self {
        let current = Arc::new(master);
        let all = HashMap::from([(current.id().to_owned(), current.clone())]);
        Self {
            keks: RwLock::new(Keks { current, all }),
            data_keys: RwLock::default(),
        }
    }

    pub fn master_key_id(&self) -> String {
        self.keks.read().expect("kek lock").current.id().to_owned()
    }

    pub fn current_master(&self) -> Arc<MasterKey> {
        self.keks.read().expect("kek lock").current.clone()
    }

    /// A loaded master key by id.
    pub fn master(&self, id: &str) -> Option<Arc<MasterKey>> {
        self.keks.read().expect("kek lock").all.get(id).cloned()
    }

    /// Ids of every loaded master key.
    pub fn master_key_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .keks
            .read()
            .expect("kek lock")
            .all
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Loads another master key; it unwraps the data keys it wrapped.
    pub fn add_master(&self, key: MasterKey) -> Arc<MasterKey> {
        let key = Arc::new(key);
        let mut k = self.keks.write().expect("kek lock");
        k.all.entry(key.id().to_owned()).or_insert(key).clone()
    }

    /// Makes a loaded master key the one that wraps new data keys.
    pub fn set_current_master(&self, id: &str) {
        let mut k = self.keks.write().expect("kek lock");
        if let Some(key) = k.all.get(id).cloned() {
            k.current = key;
        }
    }

    /// Forgets a master key that no data key names any more (never the current one).
    pub fn forget_master(&self, id: &str) {
        let mut k = self.keks.write().expect("kek lock");
        if k.current.id() != id {
            k.all.remove(id);
        }
    }

    /// A new data key for a new workspace, wrapped for storage.
    pub fn new_data_key(&self, workspace_id: &str) -> StoredDataKey {
        let dek = DataKey::generate();
        let wrapped = self.current_master().wrap(&dek, workspace_id);
        let stored = StoredDataKey {
            id: dek.id().to_owned(),
            workspace_id: workspace_id.to_owned(),
            wrapped,
        };
        self.cache(dek);
        stored
    }

    fn cache(&self, dek: DataKey) -> Arc<DataKey> {
        let dek = Arc::new(dek);
        self.data_keys
            .write()
            .expect("key cache lock")
            .insert(dek.id().to_owned(), dek.clone());
        dek
    }

    fn cached(&self, id: &str) -> Option<Arc<DataKey>> {
        self.data_keys
            .read()
            .expect("key cache lock")
            .get(id)
            .cloned()
    }

    /// Unwraps a stored data key with the master key its row names.
    pub fn unwrap(&self, stored: &StoredDataKey) -> Result<Arc<DataKey>, CryptoError> {
        let kek = self
            .master(&stored.wrapped.kek_id)
            .ok_or_else(|| CryptoError::WrongKey {
                expected: self.master_key_ids().join(", "),
                found: stored.wrapped.kek_id.clone(),
            })?;
        let dek = kek.unwrap(&stored.wrapped, &stored.workspace_id, &stored.id)?;
        Ok(self.cache(dek))
    }

    /// The key that encrypts new secrets of a workspace.
    pub async fn active_key(&self, store: &Store, workspace_id: &str) -> ApiResult<Arc<DataKey>> {
        let stored = store.active_data_key(workspace_id).await?;
        match self.cached(&stored.id) {
            Some(k) => Ok(k),
            None => Ok(self.unwrap(&stored)?),
        }
    }

    /// The key a stored ciphertext names.
    pub async fn key(&self, store: &Store, key_id: &str) -> ApiResult<Arc<DataKey>> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        let stored = store.data_key(key_id).await?;
        Ok(self.unwrap(&stored)?)
    }
}
