//! Types that hold secret values. Deliberately no `Debug`, `Display`, `Serialize` or
//! `Clone`-into-plain-string conversions: getting the value out is always a visible call.

use serde::{Deserialize, Deserializer};
use zeroize::{Zeroize, Zeroizing};

/// A secret text value (password, API key, private key PEM, …), zeroized on drop.
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Every call site is a place where a secret leaves its box: keep them few.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Clone for SecretString {
    fn clone(&self) -> Self {
        Self::new(self.0.as_str().to_owned())
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// Secrets arrive in request bodies, so they can be deserialized — never serialized back.
impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// Raw key material (32 bytes for AES-256), zeroized on drop.
pub struct KeyBytes(Box<[u8; 32]>);

impl KeyBytes {
    pub fn new(bytes: [u8; 32]) -> Self {
        let mut b = Box::new(bytes);
        let out = Self(b.clone());
        b.zeroize();
        out
    }

    pub fn random() -> Self {
        use rand::RngCore;
        let mut b = Box::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(b.as_mut_slice());
        Self(b)
    }

    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}
