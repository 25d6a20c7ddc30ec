//! Secrets in an export file, encrypted to a passphrase: argon2id (64 MiB, 3 passes,
//! 1 lane, a random 16-byte salt per file) derives a 256-bit key once per file; each
//! secret value is then sealed with AES-256-GCM under a random 96-bit nonce and AAD naming
//! the value's place in the document (`connections/<name>/secrets/<field>`), so a value
//! moved to another place fails to open. The file's header carries algorithm, parameters
//! and salt; each value is `pbenc:v1:<base64 nonce‖ciphertext‖tag>`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;

use crate::{KeyBytes, SecretString};

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "pbenc:v1:";
/// The header's `algorithm`.
pub const ALGORITHM: &str = "argon2id+aes-256-gcm";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassphraseError {
    #[error("the passphrase is empty")]
    Empty,
    #[error("the encryption header is malformed or names unsupported parameters")]
    BadHeader,
    #[error("a sealed value is malformed")]
    Malformed,
    #[error("wrong passphrase, or the file was changed after export")]
    Refused,
}

/// Key derivation parameters, as written in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// Fresh parameters for a new file.
    pub fn generate() -> Self {
        let mut salt = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt,
        }
    }

    /// Bounds a header may name (a hostile file must not ask for gigabytes).
    fn check(&self) -> Result<(), PassphraseError> {
        let ok = (8 * 1024..=1024 * 1024).contains(&self.memory_kib)
            && (1..=16).contains(&self.iterations)
            && (1..=8).contains(&self.parallelism)
            && (16..=64).contains(&self.salt.len());
        ok.then_some(()).ok_or(PassphraseError::BadHeader)
    }

    pub fn salt_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.salt)
    }

    pub fn from_header(
        memory_kib: u64,
        iterations: u64,
        parallelism: u64,
        salt_b64: &str,
    ) -> Result<Self, PassphraseError> {
        let salt = base64::engine::general_purpose::STANDARD
            .decode(salt_b64)
            .map_err(|_| PassphraseError::BadHeader)?;
        let p = Self {
            memory_kib: u32::try_from(memory_kib).map_err(|_| PassphraseError::BadHeader)?,
            iterations: u32::try_from(iterations).map_err(|_| PassphraseError::BadHeader)?,
            parallelism: u32::try_from(parallelism).map_err(|_| PassphraseError::BadHeader)?,
            salt,
        };
        p.check()?;
        Ok(p)
    }
}

/// A key derived from a passphrase, sealing and opening the values of one file.
pub struct PassphraseKey(KeyBytes);

impl PassphraseKey {
    pub fn derive(passphrase: &SecretString, params: &KdfParams) -> Result<Self, PassphraseError> {
        if passphrase.is_empty() {
            return Err(PassphraseError::Empty);
        }
        params.check()?;
        let p = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|_| PassphraseError::BadHeader)?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
            .hash_password_into(
                passphrase.expose_secret().as_bytes(),
                &params.salt,
                &mut out,
            )
            .map_err(|_| PassphraseError::BadHeader)?;
        let key = KeyBytes::new(out);
        zeroize::Zeroize::zeroize(&mut out);
        Ok(Self(key))
    }

    pub fn seal(&self, value: &SecretString, place: &str) -> String {
        let cipher = Aes256Gcm::new(self.0.expose_secret().into());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.expose_secret().as_bytes(),
                    aad: place.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory value does not fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    pub fn open(&self, sealed: &str, place: &str) -> Result<SecretString, PassphraseError> {
        let b64 = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(PassphraseError::Malformed)?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| PassphraseError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(PassphraseError::Malformed);
        }
        let (nonce, ct) = blob.split_at(12);
        let cipher = Aes256Gcm::new(self.0.expose_secret().into());
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| PassphraseError::Refused)?;
        String::from_utf8(plain)
            .map(SecretString::new)
            .map_err(|_| PassphraseError::Malformed)
    }
}

/// Whether a document value is a sealed secret.
pub fn is_sealed(v: &str) -> bool {
    v.starts_with(SEALED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> KdfParams {
        KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            ..KdfParams::generate()
        }
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_passphrase_and_in_its_place() {
        let params = quick();
        let key =
            PassphraseKey::derive(&SecretString::new("correct horse".into()), &params).unwrap();
        let sealed = key.seal(
            &SecretString::new("s3cr3t".into()),
            "connections/a/secrets/p",
        );
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("s3cr3t"));
        let opened = key.open(&sealed, "connections/a/secrets/p").unwrap();
        assert_eq!(opened.expose_secret(), "s3cr3t");
        assert_eq!(
            key.open(&sealed, "connections/b/secrets/p").err(),
            Some(PassphraseError::Refused)
        );
        let wrong =
            PassphraseKey::derive(&SecretString::new("wrong horse".into()), &params).unwrap();
        assert_eq!(
            wrong.open(&sealed, "connections/a/secrets/p").err(),
            Some(PassphraseError::Refused)
        );
        assert_eq!(
            key.open("pbenc:v1:AAAA", "x").err(),
            Some(PassphraseError::Malformed)
        );
    }

    #[test]
    fn headers_asking_for_absurd_parameters_are_refused() {
        assert_eq!(
            KdfParams::from_header(64 * 1024 * 1024, 3, 1, "AAAAAAAAAAAAAAAAAAAAAA==").err(),
            Some(PassphraseError::BadHeader)
        );
        assert!(KdfParams::from_header(65536, 3, 1, "AAAAAAAAAAAAAAAAAAAAAA==").is_ok());
        assert!(PassphraseKey::derive(&SecretString::new(String::new()), &quick()).is_err());
    }
}
