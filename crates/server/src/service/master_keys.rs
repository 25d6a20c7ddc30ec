//! Where the master key comes from and how a new one becomes the one the next start loads:
//! the key file (plain or sealed by AWS KMS), the inline key from the environment, loading
//! them at start-up, and refusing to run with a master key that does not open the stored
//! data keys. The rotation engine that uses these sources is `service::keys`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use patchbay_core::ErrorCode;
use patchbay_crypto::{sync_parent, MasterKey, SecretString};
use patchbay_store::Store;

use super::keys::KeyManager;
use crate::error::{ApiError, ApiResult};
use crate::keyring::KeyRing;
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
    let manager = KeyManager::new(store);
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
