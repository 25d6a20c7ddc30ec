//! The one error type of this crate. Every variant has a stable [`ExternalError::code`]; the
//! server maps the codes to HTTP statuses (4xx for not-found / denied / invalid grant, 502 for
//! unreachable or invalid upstream answers).
//!
//! Messages never carry a secret value or a response body that could hold one: at most the
//! operation, an HTTP status, the provider's error code (e.g. `ResourceNotFoundException`,
//! `invalid_grant`) or Vault's `errors` array.

/// An error talking to an external secret manager, key manager or OAuth2 token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    /// The secret, key, version or JSON key does not exist at the provider.
    #[error("{0}")]
    NotFound(String),
    /// The provider refused the request (credentials, permissions, wrong encryption context).
    #[error("{0}")]
    Denied(String),
    /// The provider could not be reached, timed out, or answered with a server error.
    #[error("{0}")]
    Unreachable(String),
    /// The provider answered, but not in the documented shape.
    #[error("{0}")]
    InvalidResponse(String),
    /// The OAuth2 token endpoint answered `invalid_grant` (refresh token expired, revoked or
    /// already used): the credential needs a new authorization.
    #[error("{0}")]
    OAuthInvalidGrant(String),
    /// Any other OAuth2 error answer (`invalid_client`, `unauthorized_client`, …).
    #[error("{0}")]
    OAuth(String),
    /// The token store (persistence / leasing of OAuth2 tokens) failed.
    #[error("{0}")]
    Store(String),
    /// Local configuration is incomplete (e.g. no AWS credentials in the environment).
    #[error("{0}")]
    Config(String),
}

impl ExternalError {
    /// Stable, machine-readable code of the error class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "external_not_found",
            Self::Denied(_) => "external_denied",
            Self::Unreachable(_) => "external_unreachable",
            Self::InvalidResponse(_) => "external_invalid_response",
            Self::OAuthInvalidGrant(_) => "oauth_invalid_grant",
            Self::OAuth(_) => "oauth_error",
            Self::Store(_) => "token_store_error",
            Self::Config(_) => "external_config",
        }
    }

    /// Whether retrying later may succeed (network trouble, throttling, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    /// A transport error from reqwest, described without its URL's query or any body.
    pub(crate) fn transport(what: &str, err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_body() || err.is_decode() {
            "reading the response failed"
        } else {
            "request failed"
        };
        Self::Unreachable(format!("{what}: {kind}"))
    }
}

/// Result alias of this crate.
pub type Result<T, E = ExternalError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let all = [
            (ExternalError::NotFound(String::new()), "external_not_found"),
            (ExternalError::Denied(String::new()), "external_denied"),
            (
                ExternalError::Unreachable(String::new()),
                "external_unreachable",
            ),
            (
                ExternalError::InvalidResponse(String::new()),
                "external_invalid_response",
            ),
            (
                ExternalError::OAuthInvalidGrant(String::new()),
                "oauth_invalid_grant",
            ),
            (ExternalError::OAuth(String::new()), "oauth_error"),
            (ExternalError::Store(String::new()), "token_store_error"),
            (ExternalError::Config(String::new()), "external_config"),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
        }
    }
}
