//! Shared state handed to every handler.

use std::sync::Arc;

use patchbay_catalog::Catalog;
use patchbay_store::Store;

use crate::keyring::KeyRing;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub catalog: &'static Catalog,
    /// Key rotation machinery (service::keys).
    pub key_manager: Arc<crate::service::keys::KeyManager>,
}
