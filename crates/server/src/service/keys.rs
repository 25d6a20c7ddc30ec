//! Key rotation: master key rotation (re-wrap every data key), data key rotation
//! (re-encrypt every ciphertext of a workspace), status, and resuming unfinished rotations
//! after a restart. Where master keys come from, and the start-up check, is
//! `service::master_keys`.
//!
//! The two invariants, and where they are kept:
//! - a data key row is deleted only in the transaction that proves no ciphertext names it
//!   (`Store::finish_data_rotation`);
//! - a master key is forgotten (its `.previous` file deleted) only after every data key row
//!   names the new one and unwraps with it (`run_master`).

use std::collections::HashSet;

use std::sync::Mutex;
use std::time::Duration;

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::CryptoError;
use patchbay_crypto::EncryptedValue;
use patchbay_store::{
    new_id, AuditEntry, BatchOutcome, CiphertextRow, KeyRotation, Reencrypt, StartRotation,
};
use serde_json::json;

use super::master_keys::MasterKeyStore;
use super::{audit, require_in};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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

impl KeyManager {
    /// Rotation over `source`, tuned by PATCHBAY_ROTATION_BATCH,
    /// PATCHBAY_ROTATION_MASTER_BATCH and (tests) PATCHBAY_TEST_ROTATION_BATCH_DELAY_MS.
    pub(super) fn new(source: Box<dyn MasterKeyStore>) -> Self {
        Self {
            source,
            master_lock: Default::default(),
            running: Default::default(),
            batch: std::env::var("PATCHBAY_ROTATION_BATCH")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map(|n| n.max(1)),
            master_batch: env_num("PATCHBAY_ROTATION_MASTER_BATCH", 100).max(1) as usize,
            delay: Duration::from_millis(env_num("PATCHBAY_TEST_ROTATION_BATCH_DELAY_MS", 0)),
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
