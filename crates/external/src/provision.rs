//! Provisioning calls used by tests and scripts only — the server never creates keys or
//! secrets at the provider. Kept apart so the server's surface stays read/wrap/unwrap.

use patchbay_crypto::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::error::Result;
use crate::kms::{parse, KmsClient};
use crate::secrets_manager::SecretsManagerClient;

#[derive(Deserialize)]
struct CreateKeyOut {
    #[serde(rename = "KeyMetadata")]
    key_metadata: KeyMetadata,
}

#[derive(Deserialize)]
struct KeyMetadata {
    #[serde(rename = "Arn")]
    arn: String,
}

/// KMS `CreateKey` (symmetric, ENCRYPT_DECRYPT); returns the key ARN.
pub async fn kms_create_key(kms: &KmsClient, description: &str) -> Result<String> {
    let raw = kms
        .inner
        .call(
            "CreateKey",
            &json!({ "Description": description, "KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT" }),
        )
        .await?;
    let out: CreateKeyOut = parse(&raw, "AWS kms CreateKey")?;
    Ok(out.key_metadata.arn)
}

#[derive(Deserialize)]
struct SecretOut {
    #[serde(rename = "ARN")]
    arn: String,
    #[serde(rename = "VersionId")]
    version_id: Option<String>,
}

/// Secrets Manager `CreateSecret` with a `SecretString`; returns (ARN, version id).
pub async fn secrets_create(
    sm: &SecretsManagerClient,
    name: &str,
    value: &SecretString,
) -> Result<(String, Option<String>)> {
    let raw = sm
        .inner
        .call(
            "CreateSecret",
            &json!({ "Name": name, "SecretString": value.expose_secret() }),
        )
        .await?;
    let out: SecretOut = parse(&raw, "AWS secretsmanager CreateSecret")?;
    Ok((out.arn, out.version_id))
}

/// Secrets Manager `PutSecretValue` (a new `AWSCURRENT` version); returns (ARN, version id).
pub async fn secrets_put_value(
    sm: &SecretsManagerClient,
    secret_id: &str,
    value: &SecretString,
) -> Result<(String, Option<String>)> {
    let raw = sm
        .inner
        .call(
            "PutSecretValue",
            &json!({ "SecretId": secret_id, "SecretString": value.expose_secret() }),
        )
        .await?;
    let out: SecretOut = parse(&raw, "AWS secretsmanager PutSecretValue")?;
    Ok((out.arn, out.version_id))
}
