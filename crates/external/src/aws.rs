//! AWS configuration and a small client for AWS's JSON 1.1 protocol (`POST /` with
//! `X-Amz-Target: <Prefix>.<Operation>`), signed with [`crate::sigv4`].

use std::fmt;
use std::time::SystemTime;

use patchbay_crypto::SecretString;
use reqwest::Url;
use zeroize::Zeroizing;

use crate::error::{ExternalError, Result};
use crate::http::{sanitize_code, HttpOptions};
use crate::sigv4::{self, Credentials, Scope};

/// Where and as whom to call AWS.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// Endpoint override (moto, LocalStack, VPC endpoints, FIPS). `None` means
    /// `https://{service}.{region}.amazonaws.com`.
    pub endpoint: Option<Url>,
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Credentials (Debug-redacted).
    pub credentials: Credentials,
    /// HTTP timeouts.
    pub http: HttpOptions,
}

impl AwsConfig {
    /// A configuration from explicit values, default endpoint and timeouts.
    pub fn new(region: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            endpoint: None,
            region: region.into(),
            credentials,
            http: HttpOptions::default(),
        }
    }

    /// Same, with an endpoint override.
    pub fn with_endpoint(mut self, endpoint: Url) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// From the process environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// optional `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`, and an optional
    /// endpoint override `PATCHBAY_AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL`.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`AwsConfig::from_env`] over any variable lookup (for tests and config files).
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let access_key_id = get("AWS_ACCESS_KEY_ID")
            .ok_or_else(|| ExternalError::Config("AWS_ACCESS_KEY_ID is not set".into()))?;
        let secret = get("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| ExternalError::Config("AWS_SECRET_ACCESS_KEY is not set".into()))?;
        let session_token = get("AWS_SESSION_TOKEN").map(SecretString::new);
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .ok_or_else(|| {
                ExternalError::Config("AWS_REGION (or AWS_DEFAULT_REGION) is not set".into())
            })?;
        let endpoint = match get("PATCHBAY_AWS_ENDPOINT_URL").or_else(|| get("AWS_ENDPOINT_URL")) {
            Some(u) => Some(Url::parse(u.trim()).map_err(|_| {
                ExternalError::Config("the AWS endpoint override is not a valid URL".into())
            })?),
            None => None,
        };
        Ok(Self {
            endpoint,
            region,
            credentials: Credentials::new(access_key_id, SecretString::new(secret), session_token),
            http: HttpOptions::default(),
        })
    }

    /// The endpoint for `service`: the override, or `https://{service}.{region}.amazonaws.com`.
    pub fn endpoint_for(&self, service: &str) -> Result<Url> {
        match &self.endpoint {
            Some(u) => Ok(u.clone()),
            None => Url::parse(&format!("https://{service}.{}.amazonaws.com/", self.region))
                .map_err(|_| {
                    ExternalError::Config("the AWS region is not a valid host label".into())
                }),
        }
    }
}

/// A client for one AWS JSON-protocol service.
#[derive(Clone)]
pub struct AwsJsonClient {
    http: reqwest::Client,
    config: AwsConfig,
    service: &'static str,
    target_prefix: &'static str,
    endpoint: Url,
    host: String,
}

impl fmt::Debug for AwsJsonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsJsonClient")
            .field("service", &self.service)
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.config.region)
            .finish_non_exhaustive()
    }
}

impl AwsJsonClient {
    /// `service` is the signing name (`kms`), `target_prefix` the `X-Amz-Target` prefix
    /// (`TrentService`).
    pub fn new(
        config: AwsConfig,
        service: &'static str,
        target_prefix: &'static str,
    ) -> Result<Self> {
        let endpoint = config.endpoint_for(service)?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(ExternalError::Config("the AWS endpoint has no host".into())),
        };
        Ok(Self {
            http: config.http.client()?,
            config,
            service,
            target_prefix,
            endpoint,
            host,
        })
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// Calls `operation` with a JSON body and returns the raw response body of a 2xx answer
    /// (zeroized on drop: it may hold plaintext). Non-2xx answers become an [`ExternalError`]
    /// naming the service, operation and AWS error code — never the body's message.
    pub async fn call(
        &self,
        operation: &str,
        body: &serde_json::Value,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let what = format!("AWS {} {operation}", self.service);
        let payload = serde_json::to_vec(body)
            .map_err(|_| ExternalError::Config(format!("{what}: cannot encode the request")))?;
        let amz_date = sigv4::amz_date(SystemTime::now());
        let target = format!("{}.{operation}", self.target_prefix);
        let scope = Scope {
            service: self.service,
            region: &self.config.region,
            amz_date: &amz_date,
        };
        let headers = sigv4::json_post_headers(
            &self.host,
            &target,
            &payload,
            &scope,
            &self.config.credentials,
        );
        let mut req = self.http.post(self.endpoint.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req
            .body(payload)
            .send()
            .await
            .map_err(|e| ExternalError::transport(&what, &e))?;
        let status = resp.status();
        let header_code = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ExternalError::transport(&what, &e))?;
        let bytes = Zeroizing::new(Vec::from(bytes));
        if status.is_success() {
            return Ok(bytes);
        }
        let code = header_code
            .filter(|c| !c.is_empty())
            .or_else(|| error_type_from_body(&bytes))
            .map(|c| sanitize_code(&c))
            .unwrap_or_default();
        Err(map_aws_error(&what, status.as_u16(), &code))
    }
}

/// `__type` (or `code`) of an AWS JSON error body, without its namespace prefix.
fn error_type_from_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let t = v
        .get("__type")
        .or_else(|| v.get("code"))
        .or_else(|| v.get("Code"))?
        .as_str()?;
    Some(t.rsplit('#').next().unwrap_or(t).to_owned())
}

/// Classifies an AWS error answer.
pub(crate) fn map_aws_error(what: &str, status: u16, code: &str) -> ExternalError {
    let shown = if code.is_empty() {
        "no error code"
    } else {
        code
    };
    let msg = format!("{what}: {shown} (HTTP {status})");
    match code {
        "ResourceNotFoundException" | "NotFoundException" | "NotFound" => {
            ExternalError::NotFound(msg)
        }
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "LimitExceededException"
        | "KMSInternalException"
        | "InternalServiceError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "KeyUnavailableException"
        | "DependencyTimeoutException" => ExternalError::Unreachable(msg),
        "InvalidCiphertextException" | "IncorrectKeyException" => ExternalError::Denied(format!(
            "{msg}: the ciphertext does not match the key or the encryption context"
        )),
        _ if status >= 500 => ExternalError::Unreachable(msg),
        _ if status == 404 => ExternalError::NotFound(msg),
        _ if (400..500).contains(&status) => ExternalError::Denied(msg),
        _ => ExternalError::InvalidResponse(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn config_from_env() {
        let vars: HashMap<&str, &str> = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("PATCHBAY_AWS_ENDPOINT_URL", "http://127.0.0.1:15000"),
        ]
        .into_iter()
        .collect();
        let c = AwsConfig::from_env_with(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.region, "eu-central-1");
        assert_eq!(
            c.endpoint_for("kms").unwrap().as_str(),
            "http://127.0.0.1:15000/"
        );
        assert!(!format!("{c:?}").contains("sekrit"));

        let c = AwsConfig::new("us-west-2", c.credentials.clone());
        assert_eq!(
            c.endpoint_for("secretsmanager").unwrap().as_str(),
            "https://secretsmanager.us-west-2.amazonaws.com/"
        );

        let err = AwsConfig::from_env_with(|_| None).unwrap_err();
        assert_eq!(err.code(), "external_config");
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            map_aws_error("x", 400, "ResourceNotFoundException").code(),
            "external_not_found"
        );
        assert_eq!(
            map_aws_error("x", 400, "AccessDeniedException").code(),
            "external_denied"
        );
        assert_eq!(
            map_aws_error("x", 400, "InvalidCiphertextException").code(),
            "external_denied"
        );
        assert_eq!(
            map_aws_error("x", 400, "ThrottlingException").code(),
            "external_unreachable"
        );
        assert_eq!(map_aws_error("x", 503, "").code(), "external_unreachable");
        assert_eq!(
            error_type_from_body(
                br#"{"__type":"com.amazonaws.kms#NotFoundException","message":"m"}"#
            )
            .as_deref(),
            Some("NotFoundException")
        );
    }
}
