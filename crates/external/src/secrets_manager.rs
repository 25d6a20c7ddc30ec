//! AWS Secrets Manager `GetSecretValue`: a secret's `SecretString` by name or ARN, optionally
//! a version, optionally one key of a JSON-object secret.

use std::collections::BTreeMap;

use patchbay_crypto::SecretString;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::aws::{AwsConfig, AwsJsonClient};
use crate::error::{ExternalError, Result};
use crate::kms::parse;

/// Which secret value to fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// Secret name or ARN.
    pub secret_id: String,
    /// A specific `VersionId`.
    pub version_id: Option<String>,
    /// A staging label (`AWSCURRENT` when neither version field is set).
    pub version_stage: Option<String>,
    /// When set, the `SecretString` is parsed as a JSON object and this key is returned.
    pub key: Option<String>,
}

impl SecretRef {
    /// The current version of a secret, whole.
    pub fn new(secret_id: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            ..Self::default()
        }
    }

    /// One key of a JSON-object secret.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A Secrets Manager client (JSON protocol, `secretsmanager`).
#[derive(Debug, Clone)]
pub struct SecretsManagerClient {
    pub(crate) inner: AwsJsonClient,
}

#[derive(Deserialize)]
struct GetOut {
    #[serde(rename = "SecretString")]
    secret_string: Option<String>,
}

impl SecretsManagerClient {
    /// A client for the `secretsmanager` endpoint of `config`.
    pub fn new(config: AwsConfig) -> Result<Self> {
        Ok(Self {
            inner: AwsJsonClient::new(config, "secretsmanager", "secretsmanager")?,
        })
    }

    /// `GetSecretValue`. A missing secret or version is `external_not_found`; a missing JSON
    /// key is `external_not_found` naming the key; a binary-only secret or a non-object JSON
    /// value with `key` set is `external_invalid_response`.
    pub async fn get_secret_value(&self, r: &SecretRef) -> Result<SecretString> {
        let mut body = json!({ "SecretId": r.secret_id });
        if let Some(v) = &r.version_id {
            body["VersionId"] = json!(v);
        }
        if let Some(v) = &r.version_stage {
            body["VersionStage"] = json!(v);
        }
        let raw = self
            .inner
            .call("GetSecretValue", &body)
            .await
            .map_err(|e| match e {
                ExternalError::NotFound(m) => ExternalError::NotFound(format!(
                    "secret `{}` (or the requested version) not found: {m}",
                    r.secret_id
                )),
                other => other,
            })?;
        let out: GetOut = parse(&raw, "AWS secretsmanager GetSecretValue")?;
        let mut value = Zeroizing::new(out.secret_string.ok_or_else(|| {
            ExternalError::InvalidResponse(format!(
                "secret `{}` has no SecretString (binary secrets are not supported)",
                r.secret_id
            ))
        })?);
        match &r.key {
            None => Ok(SecretString::new(std::mem::take(&mut *value))),
            Some(key) => json_key(&value, key, &format!("secret `{}`", r.secret_id)),
        }
    }
}

impl SecretsManagerClient {
    /// The secret as a field map: a JSON-object `SecretString` gives one entry per key
    /// (non-string values as JSON text); `r.key` is ignored. A secret that is not a JSON
    /// object is `external_invalid_response`.
    pub async fn get_secret_map(&self, r: &SecretRef) -> Result<BTreeMap<String, SecretString>> {
        let whole = SecretRef {
            key: None,
            ..r.clone()
        };
        let text = self.get_secret_value(&whole).await?;
        let not_object = || {
            ExternalError::InvalidResponse(format!("secret `{}` is not a JSON object", r.secret_id))
        };
        let v: serde_json::Value =
            serde_json::from_str(text.expose_secret()).map_err(|_| not_object())?;
        match v {
            serde_json::Value::Object(map) => Ok(map
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, SecretString::new(s))
                })
                .collect()),
            _ => Err(not_object()),
        }
    }
}

/// `key` of a JSON-object text: strings as they are, other JSON values as JSON text.
pub(crate) fn json_key(text: &str, key: &str, what: &str) -> Result<SecretString> {
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        ExternalError::InvalidResponse(format!(
            "{what} is not a JSON object, so key `{key}` cannot be taken from it"
        ))
    })?;
    let obj = v.as_object_mut().ok_or_else(|| {
        ExternalError::InvalidResponse(format!(
            "{what} is not a JSON object, so key `{key}` cannot be taken from it"
        ))
    })?;
    match obj.remove(key) {
        None => Err(ExternalError::NotFound(format!(
            "{what} has no key `{key}`"
        ))),
        Some(serde_json::Value::String(s)) => Ok(SecretString::new(s)),
        Some(other) => Ok(SecretString::new(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_key_errors_name_the_key_not_the_value() {
        let text = r#"{"user":"u","password":"hunter2","port":5432}"#;
        assert_eq!(
            json_key(text, "password", "s").unwrap().expose_secret(),
            "hunter2"
        );
        assert_eq!(json_key(text, "port", "s").unwrap().expose_secret(), "5432");
        let e = json_key(text, "token", "secret `db`").err().unwrap();
        assert_eq!(e.code(), "external_not_found");
        assert!(e.to_string().contains("`token`"));
        assert!(!e.to_string().contains("hunter2"));
        let e = json_key("hunter2", "k", "s").err().unwrap();
        assert_eq!(e.code(), "external_invalid_response");
        assert!(!e.to_string().contains("hunter2"));
    }
}
