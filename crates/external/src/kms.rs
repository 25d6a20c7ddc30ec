//! AWS KMS `Encrypt` / `Decrypt` for wrapping patchbay's master key ("auto-unseal"): a local
//! 32-byte master key is encrypted by a KMS key, the ciphertext blob is stored, and KMS
//! decrypts it at start-up. The encryption context is bound into the ciphertext: decrypting
//! with a different context fails (`external_denied`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::aws::{AwsConfig, AwsJsonClient};
use crate::error::{ExternalError, Result};

/// A KMS client (JSON protocol, `TrentService`).
#[derive(Debug, Clone)]
pub struct KmsClient {
    pub(crate) inner: AwsJsonClient,
}

#[derive(Deserialize)]
struct EncryptOut {
    #[serde(rename = "CiphertextBlob")]
    ciphertext_blob: String,
}

#[derive(Deserialize)]
struct DecryptOut {
    #[serde(rename = "KeyId")]
    key_id: String,
    #[serde(rename = "Plaintext")]
    plaintext: String,
}

impl KmsClient {
    /// A client for the `kms` endpoint of `config`.
    pub fn new(config: AwsConfig) -> Result<Self> {
        Ok(Self {
            inner: AwsJsonClient::new(config, "kms", "TrentService")?,
        })
    }

    /// Encrypts `plaintext` (at most 4096 bytes) under `key_id` (key id, key ARN, alias name
    /// or alias ARN) bound to `context`; returns the ciphertext blob to store.
    pub async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        let mut body = json!({ "KeyId": key_id, "Plaintext": B64.encode(plaintext) });
        if !context.is_empty() {
            body["EncryptionContext"] = json!(context);
        }
        let out = self.inner.call("Encrypt", &body).await;
        // Best effort: the base64 plaintext in the request body is overwritten here; the copy
        // handed to the HTTP stack is freed without zeroizing.
        if let Some(serde_json::Value::String(s)) = body.get_mut("Plaintext") {
            zeroize::Zeroize::zeroize(s);
        }
        let out: EncryptOut = parse(&out?, "AWS kms Encrypt")?;
        B64.decode(out.ciphertext_blob.as_bytes()).map_err(|_| {
            ExternalError::InvalidResponse("AWS kms Encrypt: CiphertextBlob is not base64".into())
        })
    }

    /// Decrypts a blob made by [`KmsClient::encrypt`] with the same `context`; returns the
    /// ARN of the key that decrypted it and the plaintext.
    pub async fn decrypt(
        &self,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(String, Zeroizing<Vec<u8>>)> {
        let mut body = json!({ "CiphertextBlob": B64.encode(blob) });
        if !context.is_empty() {
            body["EncryptionContext"] = json!(context);
        }
        let raw = self.inner.call("Decrypt", &body).await?;
        let out: DecryptOut = parse(&raw, "AWS kms Decrypt")?;
        let plaintext_b64 = Zeroizing::new(out.plaintext);
        let plaintext = B64
            .decode(plaintext_b64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| {
                ExternalError::InvalidResponse("AWS kms Decrypt: Plaintext is not base64".into())
            })?;
        Ok((out.key_id, plaintext))
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(raw).map_err(|_| {
        ExternalError::InvalidResponse(format!("{what}: the answer is not the documented JSON"))
    })
}
