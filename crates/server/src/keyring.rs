//! The server's key ring: the master key, and workspace data keys unwrapped on first use
//! and cached in memory (zeroized when dropped).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use patchbay_crypto::{DataKey, MasterKey};
use patchbay_store::{Store, StoredDataKey};

use crate::error::ApiResult;

pub struct KeyRing {
    master: MasterKey,
    data_keys: RwLock<HashMap<String, Arc<DataKey>>>,
}

impl KeyRing {
    pub fn new(master: MasterKey) -> Self {
        Self {
            master,
            data_keys: RwLock::default(),
        }
    }

    pub fn master_key_id(&self) -> &str {
        self.master.id()
    }

    /// A new data key for a new workspace, wrapped for storage.
    pub fn new_data_key(&self, workspace_id: &str) -> StoredDataKey {
        let dek = DataKey::generate();
        let wrapped = self.master.wrap(&dek, workspace_id);
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

    fn unwrap(&self, stored: &StoredDataKey) -> ApiResult<Arc<DataKey>> {
        let dek = self
            .master
            .unwrap(&stored.wrapped, &stored.workspace_id, &stored.id)?;
        Ok(self.cache(dek))
    }

    /// The key that encrypts new secrets of a workspace.
    pub async fn active_key(&self, store: &Store, workspace_id: &str) -> ApiResult<Arc<DataKey>> {
        let stored = store.active_data_key(workspace_id).await?;
        match self.cached(&stored.id) {
            Some(k) => Ok(k),
            None => self.unwrap(&stored),
        }
    }

    /// The key a stored ciphertext names.
    pub async fn key(&self, store: &Store, key_id: &str) -> ApiResult<Arc<DataKey>> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        let stored = store.data_key(key_id).await?;
        self.unwrap(&stored)
    }
}
