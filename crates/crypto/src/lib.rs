//! Secret material and its encryption.
//!
//! * [`SecretString`] / [`KeyBytes`]: values that must never leak. They implement neither
//!   `Debug`, `Display` nor `Serialize` (a compile-fail test pins this) and are zeroized on
//!   drop. The only way out is an explicit, greppable `expose_secret()`.
//! * [`MasterKey`] (KEK) wraps per-workspace [`DataKey`]s (DEKs); data keys encrypt secret
//!   fields with AES-256-GCM, a random 96-bit nonce and AAD that binds the ciphertext to its
//!   row ([`SecretAad`]), so a ciphertext copied elsewhere fails to decrypt.
//! * API tokens: [`generate_token`] and [`hash_token`] (tokens are stored as SHA-256 hashes;
//!   they carry 256 bits of entropy, so a slow hash adds nothing).

mod envelope;
mod passphrase;
mod password;
mod secret;
mod token;

pub use envelope::{
    sync_parent, CryptoError, DataKey, EncryptedValue, MasterKey, SecretAad, WrappedKey,
    OAUTH_TOKEN_FIELD, OAUTH_TOKEN_VERSION, WEBHOOK_SECRET_FIELD, WEBHOOK_SECRET_VERSION,
};
pub use passphrase::{
    is_sealed, KdfParams, PassphraseError, PassphraseKey, ALGORITHM as PASSPHRASE_ALGORITHM,
    SEALED_PREFIX,
};
pub use password::{hash_password, verify_password, PasswordError, MIN_PASSWORD_LEN};
pub use secret::{KeyBytes, SecretString};
pub use token::{generate_password, generate_token, hash_token, token_hashes_equal, TOKEN_PREFIX};
