//! Envelope encryption: a master key (KEK) wraps per-workspace data keys (DEKs); DEKs
//! encrypt secret fields. Every wrapped key and ciphertext carries the id of the key that
//! made it, so keys can rotate without guessing which key a row needs.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{KeyBytes, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Wrong key, tampered ciphertext, or a ciphertext moved to another row (AAD mismatch).
    /// Deliberately says nothing more.
    #[error("decryption failed: the ciphertext does not belong to this key and record")]
    Decrypt,
    #[error("ciphertext was made by key {found}, expected {expected}")]
    WrongKey { expected: String, found: String },
    #[error("master key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

const NONCE_LEN: usize = 12;

/// Binds a secret ciphertext to the row it belongs to. Fields are length-prefixed so no two
/// different bindings serialize to the same bytes.
///
/// `version` is the credential version the value belongs to. Version 0 is the binding of
/// the first release, where secrets belonged to a connection (`owner_id`) directly; it is
/// read only to upgrade such rows into credentials.
pub struct SecretAad<'a> {
    pub workspace_id: &'a str,
    pub owner_id: &'a str,
    pub version: i64,
    pub field: &'a str,
}

impl<'a> SecretAad<'a> {
    /// The binding of a field of a credential version.
    pub fn credential(
        workspace_id: &'a str,
        credential_id: &'a str,
        version: i64,
        field: &'a str,
    ) -> Self {
        Self {
            workspace_id,
            owner_id: credential_id,
            version,
            field,
        }
    }

    /// The binding of a credential's OAuth2 token bundle (`oauth_tokens`): owner is the
    /// credential, version -1 (no credential version), field `oauth_token`. Defined here
    /// once so writers, readers and key rotation agree.
    pub fn oauth_token(workspace_id: &'a str, credential_id: &'a str) -> Self {
        Self {
            workspace_id,
            owner_id: credential_id,
            version: OAUTH_TOKEN_VERSION,
            field: OAUTH_TOKEN_FIELD,
        }
    }

    /// The binding of a webhook's signing secret (`webhooks`): owner is the webhook,
    /// version -2, field `webhook_secret`.
    pub fn webhook_secret(workspace_id: &'a str, webhook_id: &'a str) -> Self {
        Self {
            workspace_id,
            owner_id: webhook_id,
            version: WEBHOOK_SECRET_VERSION,
            field: WEBHOOK_SECRET_FIELD,
        }
    }

    /// The binding of a legacy connection-owned secret (`connection_secrets`, version 0).
    pub fn connection(workspace_id: &'a str, connection_id: &'a str, field: &'a str) -> Self {
        Self {
            workspace_id,
            owner_id: connection_id,
            version: 0,
            field,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        if self.version == 0 {
            return aad(
                b"patchbay/secret/v1",
                &[self.workspace_id, self.owner_id, self.field],
            );
        }
        // The version's decimal digits, written on the stack (this runs for every secret
        // decrypted).
        let mut digits = [0u8; 20];
        let version = decimal(self.version, &mut digits);
        aad(
            b"patchbay/secret/v2",
            &[self.workspace_id, self.owner_id, version, self.field],
        )
    }
}

/// `SecretAad::oauth_token`'s version and field.
pub const OAUTH_TOKEN_VERSION: i64 = -1;
pub const OAUTH_TOKEN_FIELD: &str = "oauth_token";
/// `SecretAad::webhook_secret`'s version and field.
pub const WEBHOOK_SECRET_VERSION: i64 = -2;
pub const WEBHOOK_SECRET_FIELD: &str = "webhook_secret";

/// `n` in decimal, as `n.to_string()` writes it, in `buf`.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

fn aad(domain: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.extend_from_slice(domain);
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn seal(key: &KeyBytes, plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption cannot fail for in-memory buffers below 64 GiB");
    (nonce.to_vec(), ct)
}

fn open(key: &KeyBytes, nonce: &[u8], ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

/// The key-encryption key. Its id is derived from the key itself, so a key file is just the
/// key and the id cannot disagree with it.
pub struct MasterKey {
    id: String,
    key: KeyBytes,
}

/// A data key as stored: wrapped by the master key named in `kek_id`.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub kek_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    pub fn from_bytes(source: &str, key: KeyBytes) -> Self {
        let digest = Sha256::new()
            .chain_update(b"patchbay/kek-id/v1")
            .chain_update(key.expose_secret())
            .finalize();
        let id = format!("{source}:{}", hex::encode(&digest[..8]));
        Self { id, key }
    }

    pub fn generate(source: &str) -> Self {
        Self::from_bytes(source, KeyBytes::random())
    }

    /// Parses the key file format: the base64 of 32 random bytes, surrounding whitespace
    /// ignored.
    pub fn from_encoded(source: &str, text: &str) -> Result<Self, String> {
        let raw = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| "not base64".to_owned())?,
        );
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| format!("expected 32 key bytes, found {}", raw.len()))?;
        Ok(Self::from_bytes(source, KeyBytes::new(bytes)))
    }

    /// Loads the key file, creating it (mode 0600, refusing to overwrite) when absent.
    /// Returns the key and whether it was created.
    pub fn load_or_create_file(path: &Path) -> Result<(Self, bool), CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_encoded("file", &text).map_err(err)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate("file");
                let encoded = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(key.key.expose_secret()),
                );
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
                f.write_all(encoded.as_bytes())
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                Ok((key, true))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Loads an existing key file (never creates one).
    pub fn load_file(path: &Path) -> Result<Self, CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_encoded("file", &text).map_err(err)
    }

    /// Writes this key to a new file (mode 0600, refusing to overwrite), fsyncs the file
    /// and its directory: once this returns, the key survives a crash.
    pub fn write_new_file(&self, path: &Path) -> Result<(), CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let encoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(self.key.expose_secret()),
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(encoded.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        sync_parent(path).map_err(|e| err(e.to_string()))
    }

    /// Unwraps a data key under `old` (the key its row names) and wraps it under `self`.
    pub fn rewrap(
        &self,
        old: &MasterKey,
        wrapped: &WrappedKey,
        workspace_id: &str,
        dek_id: &str,
    ) -> Result<WrappedKey, CryptoError> {
        let dek = old.unwrap(wrapped, workspace_id, dek_id)?;
        Ok(self.wrap(&dek, workspace_id))
    }

    pub fn wrap(&self, dek: &DataKey, workspace_id: &str) -> WrappedKey {
        let aad = aad(b"patchbay/dek/v1", &[workspace_id, &dek.id]);
        let (nonce, ciphertext) = seal(&self.key, dek.key.expose_secret(), &aad);
        WrappedKey {
            kek_id: self.id.clone(),
            nonce,
            ciphertext,
        }
    }

    pub fn unwrap(
        &self,
        wrapped: &WrappedKey,
        workspace_id: &str,
        dek_id: &str,
    ) -> Result<DataKey, CryptoError> {
        if wrapped.kek_id != self.id {
            return Err(CryptoError::WrongKey {
                expected: self.id.clone(),
                found: wrapped.kek_id.clone(),
            });
        }
        let aad = aad(b"patchbay/dek/v1", &[workspace_id, dek_id]);
        let raw =
            zeroize::Zeroizing::new(open(&self.key, &wrapped.nonce, &wrapped.ciphertext, &aad)?);
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(DataKey {
            id: dek_id.to_owned(),
            key: KeyBytes::new(bytes),
        })
    }
}

/// A workspace data key (DEK), held unwrapped only in memory.
pub struct DataKey {
    id: String,
    key: KeyBytes,
}

/// One encrypted secret field as stored.
#[derive(Debug, Clone)]
pub struct EncryptedValue {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl DataKey {
    pub fn generate() -> Self {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self {
            id: format!("dek-{}", hex::encode(id)),
            key: KeyBytes::random(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn encrypt(&self, value: &SecretString, aad: &SecretAad<'_>) -> EncryptedValue {
        let (nonce, ciphertext) =
            seal(&self.key, value.expose_secret().as_bytes(), &aad.to_bytes());
        EncryptedValue {
            key_id: self.id.clone(),
            nonce,
            ciphertext,
        }
    }

    /// Re-encrypts a ciphertext made by `old` under `self`, for the same row binding. The
    /// plaintext exists only inside this call (zeroized) and need not be UTF-8. An AAD
    /// mismatch (the ciphertext was copied from another row) is `CryptoError::Decrypt`.
    pub fn reencrypt(
        &self,
        old: &DataKey,
        value: &EncryptedValue,
        aad: &SecretAad<'_>,
    ) -> Result<EncryptedValue, CryptoError> {
        if value.key_id != old.id {
            return Err(CryptoError::WrongKey {
                expected: old.id.clone(),
                found: value.key_id.clone(),
            });
        }
        let aad = aad.to_bytes();
        let plain = zeroize::Zeroizing::new(open(&old.key, &value.nonce, &value.ciphertext, &aad)?);
        let (nonce, ciphertext) = seal(&self.key, &plain, &aad);
        Ok(EncryptedValue {
            key_id: self.id.clone(),
            nonce,
            ciphertext,
        })
    }

    pub fn decrypt(
        &self,
        value: &EncryptedValue,
        aad: &SecretAad<'_>,
    ) -> Result<SecretString, CryptoError> {
        if value.key_id != self.id {
            return Err(CryptoError::WrongKey {
                expected: self.id.clone(),
                found: value.key_id.clone(),
            });
        }
        let plain = open(&self.key, &value.nonce, &value.ciphertext, &aad.to_bytes())?;
        String::from_utf8(plain)
            .map(SecretString::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// fsyncs the directory holding `path`, so a create or rename in it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad<'a>(ws: &'a str, owner: &'a str, field: &'a str) -> SecretAad<'a> {
        SecretAad::credential(ws, owner, 1, field)
    }

    #[test]
    fn versions_are_bound_as_their_decimal_digits() {
        for n in [0, 1, 9, 10, 42, -1, -2, 1_000_000_007, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
        // The bound bytes are exactly the documented layout: domain, then each part's
        // length (u32, big-endian) and bytes.
        let bytes = SecretAad::credential("ws", "cred", 12, "password").to_bytes();
        let mut expected = b"patchbay/secret/v2".to_vec();
        for part in ["ws", "cred", "12", "password"] {
            expected.extend_from_slice(&(part.len() as u32).to_be_bytes());
            expected.extend_from_slice(part.as_bytes());
        }
        assert_eq!(bytes, expected);
    }

    #[test]
    fn secret_round_trips_and_ciphertext_hides_plaintext() {
        let dek = DataKey::generate();
        let secret = SecretString::new("canary-hunter2".into());
        let ev = dek.encrypt(&secret, &aad("ws1", "conn1", "password"));
        assert_eq!(ev.key_id, dek.id());
        assert!(!ev
            .ciphertext
            .windows(b"canary".len())
            .any(|w| w == b"canary"));
        let back = dek.decrypt(&ev, &aad("ws1", "conn1", "password")).unwrap();
        assert_eq!(back.expose_secret(), "canary-hunter2");
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_fails_to_decrypt() {
        let dek = DataKey::generate();
        let ev = dek.encrypt(
            &SecretString::new("s".into()),
            &aad("ws1", "conn1", "password"),
        );
        for other in [
            aad("ws2", "conn1", "password"),
            aad("ws1", "conn2", "password"),
            aad("ws1", "conn1", "api_key"),
            // length prefixes keep ("ws1c", "onn1") distinct from ("ws1", "conn1")
            aad("ws1c", "onn1", "password"),
            SecretAad::credential("ws1", "conn1", 2, "password"),
            SecretAad {
                version: 0,
                ..aad("ws1", "conn1", "password")
            },
        ] {
            assert!(matches!(
                dek.decrypt(&ev, &other),
                Err(CryptoError::Decrypt)
            ));
        }
    }

    #[test]
    fn reencrypt_moves_a_value_to_a_new_key_and_checks_the_binding() {
        let old = DataKey::generate();
        let new = DataKey::generate();
        let ev = old.encrypt(
            &SecretString::new("tok".into()),
            &SecretAad::oauth_token("w", "c"),
        );
        let moved = new
            .reencrypt(&old, &ev, &SecretAad::oauth_token("w", "c"))
            .unwrap();
        assert_eq!(moved.key_id, new.id());
        assert_eq!(
            new.decrypt(&moved, &SecretAad::oauth_token("w", "c"))
                .unwrap()
                .expose_secret(),
            "tok"
        );
        assert!(matches!(
            new.reencrypt(&old, &ev, &SecretAad::oauth_token("w", "other")),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            new.reencrypt(&new, &ev, &SecretAad::oauth_token("w", "c")),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let dek = DataKey::generate();
        let mut ev = dek.encrypt(&SecretString::new("s".into()), &aad("w", "o", "f"));
        ev.ciphertext[0] ^= 1;
        assert!(dek.decrypt(&ev, &aad("w", "o", "f")).is_err());
        let other = DataKey::generate();
        let ev = dek.encrypt(&SecretString::new("s".into()), &aad("w", "o", "f"));
        assert!(matches!(
            other.decrypt(&ev, &aad("w", "o", "f")),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn data_keys_wrap_under_the_master_key_bound_to_their_workspace() {
        let kek = MasterKey::generate("test");
        let dek = DataKey::generate();
        let wrapped = kek.wrap(&dek, "ws1");
        assert_eq!(wrapped.kek_id, kek.id());
        let back = kek.unwrap(&wrapped, "ws1", dek.id()).unwrap();
        let ev = dek.encrypt(&SecretString::new("v".into()), &aad("ws1", "c", "f"));
        assert_eq!(
            back.decrypt(&ev, &aad("ws1", "c", "f"))
                .unwrap()
                .expose_secret(),
            "v"
        );
        assert!(kek.unwrap(&wrapped, "ws2", dek.id()).is_err());
        assert!(MasterKey::generate("test")
            .unwrap(&wrapped, "ws1", dek.id())
            .is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_reloads_to_the_same_key() {
        let dir = std::env::temp_dir().join(format!("pb-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let _ = std::fs::remove_file(&path);
        let (k1, created) = MasterKey::load_or_create_file(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = MasterKey::load_or_create_file(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.id(), k2.id());
        std::fs::write(&path, "short").unwrap();
        assert!(MasterKey::load_or_create_file(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
