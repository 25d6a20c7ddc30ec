//! Key management: loading the master keys at start-up (and refusing to run with the wrong
//! one), master key rotation (re-wrap every data key), data key rotation (re-encrypt every
//! ciphertext of a workspace), status, and resuming unfinished rotations after a restart.
//!
//! The two invariants, and where they are kept:
//! - a data key row is deleted only in the transaction that proves no ciphertext names it
//!   (`Store::finish_data_rotation`);
//! - a master key is forgotten (its `.previous` file deleted) only after every data key row
//!   names the new one and unwraps with it (`run_master`).

use std::collections::HashSet;

use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::EncryptedValue;
use patchbay_crypto::{sync_parent, CryptoError, MasterKey, SecretString};
use patchbay_store::{
    new_id, AuditEntry, BatchOutcome, CiphertextRow, KeyRotation, Reencrypt, StartRotation, Store,
};
use serde_json::json;

use super::{audit, require_in};
use crate::error::{ApiError, ApiResult};
use crate::keyring::KeyRing;
use crate::state::AppState;
use crate::MasterKeySource;

/// Where master keys live and how a new one becomes the one the next start loads. This is
/// the extension point for other key sources: a KMS-backed source (AWS KMS, written in
/// crates/external) implements it with `begin_rotation` creating the new key version and
/// `commit_rotation` making it the default; nothing else in rotation changes, because every
/// data key row names the master key (`kek_id`) that wrapped it.
/// A boxed future (keeps [`MasterKeyStore`] usable as `dyn`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub trait MasterKeyStore: Send + Sync {
    /// `file`, `inline`, `kms`, … (shown by `GET /api/v1/keys`).
    fn source(&self) -> &'static str;
    /// Makes the next master key durable and returns it, before any row is touched.
    /// Idempotent: a pending next key (an unfinished rotation) is returned again.
    fn begin_rotation(&self) -> BoxFuture<'_, ApiResult<MasterKey>>;
    /// Every data key names `new` now: make it the key the next start loads, keeping the
    /// old one available until `forget_previous`.
    fn commit_rotation(&self) -> Result<(), String>;
    /// Every data key was verified under the new key: forget the old one.
    fn forget_previous(&self) -> Result<(), String>;
    /// Whether the source shows an unfinished rotation (e.g. `.next`/`.previous` files).
    fn pending(&self) -> bool;
}

/// The key file source: `<file>`, plus `<file>.next` during a rotation and
/// `<file>.previous` until the new key is verified. The files hold the key itself, or (KMS
/// source) its KMS ciphertext.
pub struct FileKeys {
    path: PathBuf,
    sealing: Sealing,
}

/// How a key file holds its key.
pub enum Sealing {
    /// The base64 of the key bytes (mode 0600).
    Plain,
    /// The base64 of the key's AWS KMS ciphertext, with the encryption context
    /// `{"purpose": "patchbay-master-key"}`; only KMS key `key_id` can open it.
    Kms {
        client: Box<patchbay_external::KmsClient>,
        key_id: String,
    },
}

fn kms_context() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([("purpose".to_owned(), "patchbay-master-key".to_owned())])
}

fn key_error(msg: String) -> ApiError {
    tracing::error!(error = %msg, "master key source");
    ApiError::new(ErrorCode::Unavailable, format!("master key source: {msg}"))
}

impl Sealing {
    fn source(&self) -> &'static str {
        match self {
            Self::Plain => "file",
            Self::Kms { .. } => "kms",
        }
    }

    /// Reads the key a file holds.
    pub async fn open(&self, path: &Path) -> Result<MasterKey, String> {
        match self {
            Self::Plain => MasterKey::load_file(path).map_err(|e| e.to_string()),
            Self::Kms { client, .. } => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let blob = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| format!("{}: not base64", path.display()))?;
                let (_, plain) = client
                    .decrypt(&blob, &kms_context())
                    .await
                    .map_err(|e| format!("KMS could not decrypt {}: {e}", path.display()))?;
                let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
                    format!(
                        "{}: KMS returned {} bytes, not 32",
                        path.display(),
                        plain.len()
                    )
                })?;
                Ok(MasterKey::from_bytes(
                    "kms",
                    patchbay_crypto::KeyBytes::new(bytes),
                ))
            }
        }
    }

    /// Makes a new key and writes it (sealed) to a new file, durably.
    pub async fn create(&self, path: &Path) -> Result<MasterKey, String> {
        match self {
            Self::Plain => {
                let key = MasterKey::generate("file");
                key.write_new_file(path).map_err(|e| e.to_string())?;
                Ok(key)
            }
            Self::Kms { client, key_id } => {
                let bytes = patchbay_crypto::KeyBytes::random();
                let blob = client
                    .encrypt(key_id, bytes.expose_secret(), &kms_context())
                    .await
                    .map_err(|e| format!("KMS could not encrypt a new master key: {e}"))?;
                write_new_private(
                    path,
                    base64::engine::general_purpose::STANDARD
                        .encode(blob)
                        .as_bytes(),
                )
                .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(MasterKey::from_bytes("kms", bytes))
            }
        }
    }
}

/// Creates `path` (0600, never overwriting) with `content`, fsyncs it and its directory.
fn write_new_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(content)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    sync_parent(path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl FileKeys {
    /// The ring for `key` (the key file's), plus `.previous` and `.next` when a rotation is
    /// unfinished (`.next` is then the current key).
    async fn ring_with_pending(&self, key: MasterKey) -> Result<KeyRing, String> {
        let ring = KeyRing::new(key);
        let previous = self.previous();
        if previous.exists() {
            let key = self.sealing.open(&previous).await?;
            tracing::info!(
                key_id = key.id(),
                "loaded the previous master key (rotation not verified yet)"
            );
            ring.add_master(key);
        }
        let next = self.next();
        if next.exists() {
            let key = self.sealing.open(&next).await?;
            let id = key.id().to_owned();
            ring.add_master(key);
            ring.set_current_master(&id);
            tracing::info!(key_id = %id, "loaded the next master key: resuming its rotation");
        }
        Ok(ring)
    }

    fn next(&self) -> PathBuf {
        with_suffix(&self.path, ".next")
    }
    fn previous(&self) -> PathBuf {
        with_suffix(&self.path, ".previous")
    }
}

impl MasterKeyStore for FileKeys {
    fn source(&self) -> &'static str {
        self.sealing.source()
    }

    fn begin_rotation(&self) -> BoxFuture<'_, ApiResult<MasterKey>> {
        Box::pin(async move {
            let next = self.next();
            if next.exists() {
                return self.sealing.open(&next).await.map_err(key_error);
            }
            let key = self.sealing.create(&next).await.map_err(key_error)?;
            tracing::info!(path = %next.display(), key_id = key.id(), "wrote the next master key");
            Ok(key)
        })
    }

    fn commit_rotation(&self) -> Result<(), String> {
        let (next, previous) = (self.next(), self.previous());
        if !next.exists() {
            return Ok(()); // already committed (a restart after the rename)
        }
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        match std::fs::remove_file(&previous) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove stale .previous", e))
            }
            _ => {}
        }
        // The old key stays reachable as .previous (a hard link: atomic), then .next
        // atomically replaces the key file.
        std::fs::hard_link(&self.path, &previous).map_err(|e| io("link .previous", e))?;
        std::fs::rename(&next, &self.path).map_err(|e| io("rename .next", e))?;
        sync_parent(&self.path).map_err(|e| io("sync key directory", e))?;
        tracing::info!(path = %self.path.display(), "the new master key is now the key file");
        Ok(())
    }

    fn forget_previous(&self) -> Result<(), String> {
        let previous = self.previous();
        match std::fs::remove_file(&previous) {
            Ok(()) => {
                sync_parent(&previous).map_err(|e| e.to_string())?;
                tracing::info!(path = %previous.display(), "deleted the previous master key");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn pending(&self) -> bool {
        self.next().exists() || self.previous().exists()
    }
}

/// The inline source (PATCHBAY_MASTER_KEY): the server cannot replace an environment
/// variable, so rotation happens at start-up with PATCHBAY_MASTER_KEY_PREVIOUS.
pub struct InlineKeys;

pub const INLINE_ROTATION_HELP: &str = "the master key comes from PATCHBAY_MASTER_KEY and \
    cannot be rotated online: start the server once with the new key in PATCHBAY_MASTER_KEY \
    and the old one in PATCHBAY_MASTER_KEY_PREVIOUS; it re-wraps every data key at start-up \
    (GET /api/v1/keys shows when it is done), then remove PATCHBAY_MASTER_KEY_PREVIOUS";

impl MasterKeyStore for InlineKeys {
    fn source(&self) -> &'static str {
        "inline"
    }
    fn begin_rotation(&self) -> BoxFuture<'_, ApiResult<MasterKey>> {
        Box::pin(async {
            Err(ApiError::new(
                ErrorCode::RotationUnsupported,
                INLINE_ROTATION_HELP,
            ))
        })
    }
    fn commit_rotation(&self) -> Result<(), String> {
        Ok(())
    }
    fn forget_previous(&self) -> Result<(), String> {
        tracing::info!(
            "every data key is wrapped by PATCHBAY_MASTER_KEY: PATCHBAY_MASTER_KEY_PREVIOUS \
             can be removed"
        );
        Ok(())
    }
    fn pending(&self) -> bool {
        false
    }
}

/// Rotation machinery shared by the handlers and the background tasks.
pub struct KeyManager {
    source: Box<dyn MasterKeyStore>,
    /// Held by the one master rotation task of this process.
    master_lock: tokio::sync::Mutex<()>,
    /// Data rotations with a task in this process.
    running: Mutex<HashSet<String>>,
    /// Ciphertexts per transaction (PATCHBAY_ROTATION_BATCH; default by backend).
    batch: Option<usize>,
    master_batch: usize,
    /// Test-only pause after each batch (PATCHBAY_TEST_ROTATION_BATCH_DELAY_MS), to make
    /// crash windows wide.
    delay: Duration,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `NAME` from the environment, or the content of the file named by `NAME_FILE`.
fn env_or_file(name: &str) -> Result<Option<SecretString>, String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(SecretString::new(v)));
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(path) => std::fs::read_to_string(&path)
            .map(|t| Some(SecretString::new(t.trim().to_owned())))
            .map_err(|e| format!("{name}_FILE={path}: {e}")),
        Err(_) => Ok(None),
    }
}

/// What start-up loaded.
pub struct LoadedKeys {
    pub ring: KeyRing,
    pub manager: KeyManager,
    /// A key file created by this start (removed again if the database needs another key).
    pub created: Option<PathBuf>,
}

/// Loads the master keys: the key file plus `.next`/`.previous` when present (the current
/// key is `.next` while a rotation is unfinished), or the inline key plus
/// PATCHBAY_MASTER_KEY_PREVIOUS.
pub async fn load(source: &MasterKeySource) -> Result<LoadedKeys, String> {
    let (ring, store, created): (KeyRing, Box<dyn MasterKeyStore>, _) = match source {
        MasterKeySource::File(path) => {
            let (key, created) = MasterKey::load_or_create_file(path).map_err(|e| e.to_string())?;
            if created {
                tracing::info!(path = %path.display(), key_id = key.id(), "created master key file");
            }
            let files = FileKeys {
                path: path.clone(),
                sealing: Sealing::Plain,
            };
            let ring = files.ring_with_pending(key).await?;
            (ring, Box::new(files), created.then(|| path.clone()))
        }
        MasterKeySource::Kms { kms_key_id, file } => {
            let config = patchbay_external::AwsConfig::from_env()
                .map_err(|e| format!("KMS master key: {e}"))?;
            let files = FileKeys {
                path: file.clone(),
                sealing: Sealing::Kms {
                    client: Box::new(
                        patchbay_external::KmsClient::new(config)
                            .map_err(|e| format!("KMS master key: {e}"))?,
                    ),
                    key_id: kms_key_id.clone(),
                },
            };
            let (key, created) = if file.exists() {
                (files.sealing.open(file).await?, false)
            } else {
                let key = files.sealing.create(file).await?;
                tracing::info!(path = %file.display(), key_id = key.id(), "created a master key sealed by KMS");
                (key, true)
            };
            let ring = files.ring_with_pending(key).await?;
            (ring, Box::new(files), created.then(|| file.clone()))
        }
        MasterKeySource::Inline(text) => {
            let key = MasterKey::from_encoded("env", text.expose_secret())
                .map_err(|e| format!("PATCHBAY_MASTER_KEY: {e}"))?;
            let ring = KeyRing::new(key);
            if let Some(prev) = env_or_file("PATCHBAY_MASTER_KEY_PREVIOUS")? {
                let key = MasterKey::from_encoded("env", prev.expose_secret())
                    .map_err(|e| format!("PATCHBAY_MASTER_KEY_PREVIOUS: {e}"))?;
                tracing::info!(
                    key_id = key.id(),
                    "loaded PATCHBAY_MASTER_KEY_PREVIOUS: data keys under it are re-wrapped"
                );
                ring.add_master(key);
            }
            (ring, Box::new(InlineKeys), None)
        }
    };
    let manager = KeyManager {
        source: store,
        master_lock: Default::default(),
        running: Default::default(),
        batch: std::env::var("PATCHBAY_ROTATION_BATCH")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| n.max(1)),
        master_batch: env_num("PATCHBAY_ROTATION_MASTER_BATCH", 100).max(1) as usize,
        delay: Duration::from_millis(env_num("PATCHBAY_TEST_ROTATION_BATCH_DELAY_MS", 0)),
    };
    Ok(LoadedKeys {
        ring,
        manager,
        created,
    })
}

/// Fail fast: every data key must name a loaded master key and unwrap with it. The message
/// names key ids, never key material.
pub async fn check(store: &Store, ring: &KeyRing) -> Result<(), String> {
    let keys = store
        .list_data_keys()
        .await
        .map_err(|e| format!("reading data keys: {e}"))?;
    let loaded = ring.master_key_ids().join(", ");
    for k in &keys {
        let stored = &k.key;
        if ring.master(&stored.wrapped.kek_id).is_none() {
            return Err(format!(
                "wrong master key: data key {} (workspace {}) is wrapped by master key {}, but \
                 the loaded master key is {loaded}. Start patchbay with the master key this \
                 database was written with; it will not run with data it cannot decrypt",
                stored.id, stored.workspace_id, stored.wrapped.kek_id
            ));
        }
        if let Err(e) = ring.unwrap(stored) {
            return Err(format!(
                "wrong master key: data key {} (workspace {}) names master key {} but does not \
                 unwrap with the loaded key of that id ({e}); the key file or the data_keys row \
                 is damaged",
                stored.id, stored.workspace_id, stored.wrapped.kek_id
            ));
        }
    }
    Ok(())
}

fn system(
    action: &str,
    workspace_id: Option<&str>,
    target: &str,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry::system(
        "system:keys",
        action,
        workspace_id,
        "key_rotation",
        target,
        details,
    )
}

/// After start-up: resume every running data rotation, and an unfinished master rotation
/// (a `.next`/`.previous` key file, or data keys under a non-current loaded master key).
pub async fn resume(state: &AppState) -> Result<(), String> {
    let store = &state.store;
    let current = state.keys.master_key_id();
    let stale = store
        .data_keys_not_under(&current, 1)
        .await
        .map_err(|e| e.to_string())?;
    let open = store.open_rotations().await.map_err(|e| e.to_string())?;
    let master_open = open
        .iter()
        .any(|r| r.kind == "master" && r.state == "running");
    if !stale.is_empty() || master_open || state.key_manager.source.pending() {
        spawn_master(state.clone(), None);
    }
    for r in open {
        if r.kind == "data" && r.state == "running" {
            tracing::info!(rotation = %r.id, workspace = ?r.workspace_id, done = r.done, total = r.total, "resuming data key rotation");
            spawn_data(state.clone(), r);
        }
    }
    Ok(())
}

/// The master key is instance-wide: instance:admin on a token that is not confined to a
/// workspace.
fn instance_admin(p: &Principal) -> bool {
    p.can_everywhere(Permission::InstanceAdmin)
}

/// `POST /api/v1/keys/rotate-master`.
pub async fn rotate_master(state: &AppState, p: &Principal) -> ApiResult<KeyRotation> {
    if !instance_admin(p) {
        return Err(ApiError::forbidden(Permission::InstanceAdmin));
    }
    let mgr = &state.key_manager;
    let in_progress = |r: Option<&KeyRotation>| {
        ApiError::new(
            ErrorCode::RotationInProgress,
            match r {
                Some(r) => format!("master key rotation {} is running", r.id),
                None => "a master key rotation is running".to_owned(),
            },
        )
    };
    let guard = mgr.master_lock.try_lock().map_err(|_| in_progress(None))?;
    let open = state.store.open_rotations().await?;
    if let Some(r) = open
        .iter()
        .find(|r| r.kind == "master" && r.state == "running")
    {
        return Err(in_progress(Some(r)));
    }
    let old = state.keys.master_key_id();
    let new = mgr.source.begin_rotation().await?;
    let new_id = new.id().to_owned();
    state.keys.add_master(new);
    // From here new data keys are wrapped by the new key.
    state.keys.set_current_master(&new_id);
    let rotation_id = new_id_for_rotation();
    let entry = audit(
        p,
        "keys.rotate_master",
        None,
        "key_rotation",
        &rotation_id,
        json!({"from": old, "to": new_id}),
    );
    let started = state
        .store
        .start_master_rotation(&rotation_id, &old, &new_id, &entry)
        .await;
    let rec = match started {
        Ok(StartRotation::Started(r) | StartRotation::Resumed(r)) => r,
        Ok(StartRotation::AlreadyRunning(r)) => return Err(in_progress(Some(&r))),
        Err(e) => {
            // The new key is durable and current: the background task records and
            // finishes the rotation once the database answers.
            drop(guard);
            spawn_master(state.clone(), None);
            return Err(e.into());
        }
    };
    drop(guard);
    spawn_master(state.clone(), Some(rec.clone()));
    Ok(rec)
}

fn new_id_for_rotation() -> String {
    new_id()
}

/// `POST /api/v1/workspaces/{ws}/keys/rotate-data`.
pub async fn rotate_data(state: &AppState, p: &Principal, ws: &str) -> ApiResult<KeyRotation> {
    let ws = super::workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    let dek = state.keys.new_data_key(&ws.id);
    let rotation_id = new_id();
    let entry = audit(
        p,
        "keys.rotate_data",
        Some(&ws.id),
        "key_rotation",
        &rotation_id,
        json!({"to": dek.id}),
    );
    match state
        .store
        .start_data_rotation(&rotation_id, &ws.id, &dek, &entry)
        .await?
    {
        StartRotation::Started(r) | StartRotation::Resumed(r) => {
            tracing::info!(rotation = %r.id, workspace = %ws.id, from = %r.from_key, to = %r.to_key, total = r.total, "data key rotation started");
            spawn_data(state.clone(), r.clone());
            Ok(r)
        }
        StartRotation::AlreadyRunning(r) => Err(ApiError::new(
            ErrorCode::RotationInProgress,
            format!("data key rotation {} of this workspace is running", r.id),
        )),
    }
}

/// A rotation the principal may see.
pub async fn get_rotation(state: &AppState, p: &Principal, id: &str) -> ApiResult<KeyRotation> {
    let r = match state.store.get_rotation(id).await {
        Ok(r) => r,
        Err(patchbay_store::StoreError::NotFound) => return Err(ApiError::not_found("rotation")),
        Err(e) => return Err(e.into()),
    };
    let visible = match &r.workspace_id {
        Some(ws) => p.can_in(ws, Permission::WorkspaceAdmin),
        None => instance_admin(p),
    };
    if !visible {
        return Err(ApiError::not_found("rotation"));
    }
    Ok(r)
}

pub struct DataKeyStatus {
    pub id: String,
    pub state: String,
    pub kek_id: String,
    pub created_at: i64,
    pub ciphertexts: i64,
}

pub struct WorkspaceKeys {
    pub workspace_id: String,
    pub workspace: String,
    pub data_keys: Vec<DataKeyStatus>,
}

pub struct KeysStatus {
    pub master_key_id: String,
    pub master_key_source: &'static str,
    pub master_keys_loaded: Vec<String>,
    pub workspaces: Vec<WorkspaceKeys>,
    pub rotations: Vec<KeyRotation>,
}

/// `GET /api/v1/keys`: needs workspace:admin; shows the workspaces the principal sees.
pub async fn status(state: &AppState, p: &Principal) -> ApiResult<KeysStatus> {
    if !p.can(Permission::WorkspaceAdmin) && !p.can(Permission::InstanceAdmin) {
        return Err(ApiError::forbidden(Permission::WorkspaceAdmin));
    }
    let counts = state.store.ciphertext_counts().await?;
    let keys = state.store.list_data_keys().await?;
    let mut workspaces = vec![];
    for w in super::workspaces::list(state, p).await? {
        if !p.can_in(&w.id, Permission::WorkspaceAdmin) {
            continue;
        }
        let data_keys = keys
            .iter()
            .filter(|k| k.key.workspace_id == w.id)
            .map(|k| DataKeyStatus {
                id: k.key.id.clone(),
                state: k.state.clone(),
                kek_id: k.key.wrapped.kek_id.clone(),
                created_at: k.created_at,
                ciphertexts: counts.get(&k.key.id).copied().unwrap_or(0),
            })
            .collect();
        workspaces.push(WorkspaceKeys {
            workspace_id: w.id,
            workspace: w.name,
            data_keys,
        });
    }
    let rotations = state
        .store
        .open_rotations()
        .await?
        .into_iter()
        .filter(|r| match &r.workspace_id {
            Some(ws) => p.can_in(ws, Permission::WorkspaceAdmin),
            None => instance_admin(p),
        })
        .collect();
    Ok(KeysStatus {
        master_key_id: state.keys.master_key_id(),
        master_key_source: state.key_manager.source.source(),
        master_keys_loaded: state.keys.master_key_ids(),
        workspaces,
        rotations,
    })
}

/// Logs a failed decryption with the row identity (never the value) and returns the
/// `secret_integrity_error` the caller answers with.
pub fn integrity_error(row: &str, e: CryptoError) -> ApiError {
    if matches!(e, CryptoError::Decrypt) {
        tracing::error!(row, "secret failed its integrity check: the ciphertext does not belong to this row, or was altered");
    }
    e.into()
}

fn spawn_data(state: AppState, rec: KeyRotation) {
    {
        let mut running = state.key_manager.running.lock().expect("rotation set");
        if !running.insert(rec.id.clone()) {
            return;
        }
    }
    tokio::spawn(async move {
        let id = rec.id.clone();
        run_data(&state, rec).await;
        state
            .key_manager
            .running
            .lock()
            .expect("rotation set")
            .remove(&id);
    });
}

/// Re-encrypts every ciphertext naming `rec.from_key` under `rec.to_key`, batch by batch,
/// then destroys the old key in the transaction that finds no ciphertext left under it.
/// Database errors are retried; an integrity failure stops the rotation (`failed`).
async fn run_data(state: &AppState, rec: KeyRotation) {
    let mgr = &state.key_manager;
    // Measured with `cargo bench --bench rotate`: SQLite is fastest around 1,000 rows per
    // transaction, PostgreSQL around 5,000 (row locks are held for ~0.1 s).
    let batch = mgr.batch.unwrap_or(match state.store.backend() {
        patchbay_store::Backend::Sqlite => 1000,
        patchbay_store::Backend::Postgres => 5000,
    });
    let mut backoff = Duration::from_millis(200);
    loop {
        let keys = match state.keys.key(&state.store, &rec.from_key).await {
            Ok(from) => match state.keys.key(&state.store, &rec.to_key).await {
                Ok(to) => Ok((from, to)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (from, to) = match keys {
            Ok(k) => k,
            Err(e) => {
                // The old key is gone when another replica finished the rotation.
                if let Ok(r) = state.store.get_rotation(&rec.id).await {
                    if r.state != "running" {
                        return;
                    }
                }
                tracing::warn!(rotation = %rec.id, error = %e.0, "data key rotation: keys not available; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let outcome = state
            .store
            .reencrypt_batch(
                &rec.id,
                &rec.from_key,
                &rec.to_key,
                batch,
                &KeyPair { from, to },
            )
            .await;
        match outcome {
            Ok(BatchOutcome::Done(0)) => {
                let entry = system(
                    "keys.data_key_destroyed",
                    rec.workspace_id.as_deref(),
                    &rec.id,
                    json!({"data_key": rec.from_key, "replaced_by": rec.to_key}),
                );
                match state
                    .store
                    .finish_data_rotation(&rec.id, &rec.from_key, &entry)
                    .await
                {
                    Ok(0) => {
                        tracing::info!(rotation = %rec.id, workspace = ?rec.workspace_id, destroyed = %rec.from_key, "data key rotation done; the old data key is destroyed");
                        return;
                    }
                    Ok(left) => {
                        tracing::info!(rotation = %rec.id, left, "ciphertexts appeared under the old key; continuing");
                    }
                    Err(e) => {
                        tracing::warn!(rotation = %rec.id, error = %e, "data key rotation: finishing failed; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            Ok(BatchOutcome::Done(_)) => {
                backoff = Duration::from_millis(200);
                if !mgr.delay.is_zero() {
                    tokio::time::sleep(mgr.delay).await;
                }
            }
            Ok(BatchOutcome::Failed { row }) => {
                tracing::error!(rotation = %rec.id, row = %row, "data key rotation stopped: secret failed its integrity check (it does not belong to its row, or its owner is missing); nothing was re-encrypted from this batch");
                let msg = format!(
                    "secret_integrity_error: {row} does not decrypt under its row binding; \
                     repair or delete that row, then run rotate-data again to resume"
                );
                if let Err(e) = state.store.fail_rotation(&rec.id, &msg).await {
                    tracing::error!(rotation = %rec.id, error = %e, "could not record the failure");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(rotation = %rec.id, error = %e, "data key rotation batch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Re-encrypts a row from the old data key to the new one, under the row's own binding.
struct KeyPair {
    from: std::sync::Arc<patchbay_crypto::DataKey>,
    to: std::sync::Arc<patchbay_crypto::DataKey>,
}

impl Reencrypt for KeyPair {
    fn reencrypt(&self, row: &CiphertextRow) -> Option<EncryptedValue> {
        let aad = row.aad()?;
        self.to.reencrypt(&self.from, &row.value, &aad).ok()
    }
}

fn spawn_master(state: AppState, rec: Option<KeyRotation>) {
    tokio::spawn(async move {
        let _guard = state.key_manager.master_lock.lock().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            match run_master(&state, rec.clone()).await {
                Ok(()) => return,
                Err(MasterError::Fatal(msg)) => {
                    tracing::error!(error = %msg, "master key rotation stopped");
                    return;
                }
                Err(MasterError::Retry(msg)) => {
                    tracing::warn!(error = %msg, "master key rotation: retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
}

enum MasterError {
    Retry(String),
    Fatal(String),
}

impl From<patchbay_store::StoreError> for MasterError {
    fn from(e: patchbay_store::StoreError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// Re-wraps every data key not under the current master key, then commits the key source
/// (the key file becomes the new key, the old one `.previous`), verifies every data key
/// under the new key, and only then forgets the old one.
async fn run_master(state: &AppState, rec: Option<KeyRotation>) -> Result<(), MasterError> {
    let store = &state.store;
    let mgr = &state.key_manager;
    let to = state.keys.current_master();
    let stale = store.data_keys_not_under(to.id(), 1).await?;
    let rec = match rec {
        Some(r) => Some(r),
        None => {
            // An open record towards the current key is this rotation (finish it, even if
            // every row was already re-wrapped before the crash); one towards another key
            // was superseded by the key this process started with.
            let open = store
                .open_rotations()
                .await?
                .into_iter()
                .find(|r| r.kind == "master" && r.state == "running");
            match open {
                Some(r) if r.to_key == to.id() => Some(r),
                other => {
                    if let Some(r) = other {
                        store
                            .fail_rotation(
                                &r.id,
                                "superseded: the server started with another current master key",
                            )
                            .await?;
                    }
                    if stale.is_empty() {
                        None
                    } else {
                        let from = stale[0].wrapped.kek_id.clone();
                        let id = new_id();
                        let entry = system(
                            "keys.rotate_master",
                            None,
                            &id,
                            json!({"from": from, "to": to.id(), "resumed_at_start": true}),
                        );
                        match store
                            .start_master_rotation(&id, &from, to.id(), &entry)
                            .await?
                        {
                            StartRotation::Started(r) | StartRotation::Resumed(r) => Some(r),
                            StartRotation::AlreadyRunning(_) => {
                                return Err(MasterError::Retry(
                                    "another master rotation is open".into(),
                                ))
                            }
                        }
                    }
                }
            }
        }
    };
    if let Some(rec) = &rec {
        tracing::info!(rotation = %rec.id, to = to.id(), "re-wrapping data keys under the new master key");
        loop {
            let batch = store
                .data_keys_not_under(to.id(), mgr.master_batch as i64)
                .await?;
            if batch.is_empty() {
                let entry = system("keys.master_rotated", None, &rec.id, json!({"to": to.id()}));
                if store
                    .finish_master_rotation(&rec.id, to.id(), &entry)
                    .await?
                    == 0
                {
                    break;
                }
                continue;
            }
            let mut out = Vec::with_capacity(batch.len());
            for k in batch {
                let Some(old) = state.keys.master(&k.wrapped.kek_id) else {
                    let msg = format!(
                        "data key {} names master key {}, which is not loaded",
                        k.id, k.wrapped.kek_id
                    );
                    store.fail_rotation(&rec.id, &msg).await?;
                    return Err(MasterError::Fatal(msg));
                };
                match to.rewrap(&old, &k.wrapped, &k.workspace_id, &k.id) {
                    Ok(w) => out.push((k, w)),
                    Err(e) => {
                        let msg = format!(
                            "data key {} does not unwrap with master key {}: {e}",
                            k.id,
                            old.id()
                        );
                        store.fail_rotation(&rec.id, &msg).await?;
                        return Err(MasterError::Fatal(msg));
                    }
                }
            }
            store.rewrap_data_keys(&rec.id, &out).await?;
            if !mgr.delay.is_zero() {
                tokio::time::sleep(mgr.delay).await;
            }
        }
    }
    // Every row names the new key: make it the key the next start loads.
    mgr.source.commit_rotation().map_err(MasterError::Retry)?;
    // Verify every data key under the new key before forgetting the old one.
    for k in store.list_data_keys().await? {
        if k.key.wrapped.kek_id != to.id() {
            return Err(MasterError::Retry(format!(
                "data key {} still names master key {}",
                k.key.id, k.key.wrapped.kek_id
            )));
        }
        if let Err(e) = to.unwrap(&k.key.wrapped, &k.key.workspace_id, &k.key.id) {
            return Err(MasterError::Fatal(format!(
                "data key {} does not unwrap with the new master key: {e}; keeping the previous key",
                k.key.id
            )));
        }
    }
    mgr.source.forget_previous().map_err(MasterError::Retry)?;
    for id in state.keys.master_key_ids() {
        state.keys.forget_master(&id);
    }
    if rec.is_some() {
        tracing::info!(key_id = to.id(), "master key rotation done");
    }
    Ok(())
}
