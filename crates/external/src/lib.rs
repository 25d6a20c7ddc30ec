//! # patchbay-external
//!
//! Network clients patchbay needs for external key and secret managers and for OAuth2:
//!
//! * [`sigv4`] — AWS Signature Version 4 (HMAC-SHA256, no AWS SDK), proven against AWS's
//!   published examples.
//! * [`aws`] — [`AwsConfig`] (explicit or from the environment) and a JSON-protocol client.
//! * [`kms`] — KMS `Encrypt` / `Decrypt` with an encryption context, for wrapping the master
//!   key ("auto-unseal").
//! * [`secrets_manager`] — Secrets Manager `GetSecretValue` (whole value or one JSON key).
//! * [`vault`] — HashiCorp Vault KV v2 reads with token or AppRole auth.
//! * [`cache`] — a TTL cache for fetched values, dropped on rotate.
//! * [`oauth2`] — OAuth2 token client (client credentials, refresh token; `client_secret_basic`
//!   / `client_secret_post`) and a single-flight [`oauth2::TokenManager`].
//! * [`provision`] — `CreateKey` / `CreateSecret` / `PutSecretValue`, for tests and scripts.
//!
//! ## What is verified how
//!
//! * **Against a real server** — KMS and Secrets Manager run against moto's server (a real
//!   implementation of the AWS APIs: signing, JSON protocol, error codes), started by
//!   `scripts/peers-aws.sh`. Tests in `tests/aws_moto.rs` print `SKIPPED` when moto is not
//!   reachable, and fail when `CI=true`.
//! * **Contract-tested** — Vault cannot be installed here, so `tests/vault.rs` runs a local
//!   axum responder that follows Vault's documented KV v2 and AppRole HTTP API. The OAuth2
//!   client is tested against a local token server that follows RFC 6749 (`tests/oauth2.rs`),
//!   including one-time refresh tokens and 50 concurrent callers sharing one refresh.
//! * **Published vectors** — SigV4 against the AWS documentation's examples (unit tests).
//!
//! Secrets are held in [`patchbay_crypto::SecretString`]; no type here prints one in `Debug`,
//! and no error message carries a secret or a provider's response body (at most a provider
//! error code or Vault's `errors` array). Every request has a connect timeout (5 s) and a total
//! timeout (15 s) by default ([`HttpOptions`]).

#![warn(missing_docs)]

pub mod aws;
pub mod cache;
pub mod error;
pub mod http;
pub mod kms;
pub mod oauth2;
pub mod provision;
pub mod secrets_manager;
pub mod sigv4;
pub mod vault;

pub use aws::{AwsConfig, AwsJsonClient};
pub use error::{ExternalError, Result};
pub use http::HttpOptions;
pub use kms::KmsClient;
pub use oauth2::{
    AccessToken, ClientAuthMethod, GrantKind, MemoryTokenStore, OAuth2Client, OAuthClientConfig,
    StoredToken, TokenManager, TokenManagerOptions, TokenStore,
};
pub use reqwest::Url;
pub use secrets_manager::{SecretRef, SecretsManagerClient};
pub use sigv4::Credentials;
pub use vault::{KvSecret, VaultAuth, VaultClient, VaultConfig};
