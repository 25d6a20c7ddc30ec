//! API token generation and hashing.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::SecretString;

/// Every patchbay token starts with this, so secret scanners can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "pbt_";

/// A fresh token: the prefix and 32 random bytes, base64url.
pub fn generate_token() -> SecretString {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    SecretString::new(format!("{TOKEN_PREFIX}{body}"))
}

/// A random password for a generated account (the bootstrap admin): 24 URL-safe
/// characters, 144 bits.
pub fn generate_password() -> SecretString {
    let mut raw = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SecretString::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub fn token_hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), TOKEN_PREFIX.len() + 43);
        assert!(token_hashes_equal(
            &hash_token(a.expose_secret()),
            &hash_token(a.expose_secret())
        ));
        assert!(!token_hashes_equal(
            &hash_token(a.expose_secret()),
            &hash_token(b.expose_secret())
        ));
    }
}
