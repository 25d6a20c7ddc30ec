//! The one place where errors become HTTP responses: `{code, type, message, field?,
//! current_version?}` with the status from the error table in `patchbay_core::error`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use patchbay_core::{Error, ErrorCode};
use patchbay_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error body the API returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code to match on, e.g. `invalid_setting`, `version_conflict`.
    pub code: &'static str,
    /// Family: invalid_request, auth, not_found, conflict, precondition, internal.
    #[serde(rename = "type")]
    pub error_type: &'static str,
    /// What went wrong and what to do, for a person. Never contains a submitted value.
    pub message: String,
    /// JSON pointer of the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `version_conflict`: the current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// Structured context, e.g. `{"connections": [...]}` for `in_use`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Handlers return `Result<_, ApiError>`.
#[derive(Debug)]
pub struct ApiError(pub Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Error::new(code, message))
    }
    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Error::field(code, field, message))
    }
    pub fn not_found(what: &str) -> Self {
        Self(Error::not_found(what))
    }
    /// A missing permission. `details.permission` names it; the request layer records the
    /// refusal as a `denied` audit event.
    pub fn forbidden(permission: patchbay_core::permission::Permission) -> Self {
        let mut err = Error::new(
            ErrorCode::Forbidden,
            format!("this call needs the {permission} permission, which neither this token nor its user's role grants here"),
        );
        err.details = Some(Box::new(
            serde_json::json!({"permission": permission.as_str()}),
        ));
        Self(err)
    }
    pub fn internal() -> Self {
        Self(Error::internal())
    }
    /// 429 with `Retry-After` (whole seconds, at least 1) and `details.retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let mut e = Error::new(ErrorCode::RateLimited, message);
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        e.details = Some(Box::new(serde_json::json!({"retry_after": secs.max(1)})));
        Self(e)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("resource"),
            StoreError::NameTaken => Self::field(
                ErrorCode::NameTaken,
                "/name",
                "another resource in this scope already has this name",
            ),
            StoreError::VersionConflict { current } => {
                let mut err = Error::new(
                    ErrorCode::VersionConflict,
                    format!("the resource changed since you read it; current version is {current}: reload and retry"),
                );
                err.current_version = Some(current);
                Self(err)
            }
            StoreError::InUse(users) => {
                let mut err = Error::new(
                    ErrorCode::InUse,
                    format!(
                        "{} connection(s) use this credential; point them at another credential first",
                        users.len()
                    ),
                );
                err.details = Some(Box::new(serde_json::json!({
                    "connections": users
                        .iter()
                        .map(|(id, name)| serde_json::json!({"id": id, "name": name}))
                        .collect::<Vec<_>>()
                })));
                Self(err)
            }
            StoreError::VersionUnavailable { version, state } => Self::new(
                ErrorCode::CredentialVersionUnavailable,
                format!("credential version {version} is {state}; unpin the connection or pin a current version"),
            ),
            StoreError::Conflict(message) => Self::new(ErrorCode::InvalidState, message),
            StoreError::DependentsChanged(list) => {
                crate::service::dependents::has_dependents(&list, list.len())
            }
            StoreError::Corrupt(_) | StoreError::Database(_) => {
                // The cause goes to the log (it names tables and SQL, never secret values:
                // the store only ever sees ciphertext).
                tracing::error!(error = %e, "store error");
                Self(Error::internal())
            }
        }
    }
}

impl From<patchbay_crypto::CryptoError> for ApiError {
    fn from(e: patchbay_crypto::CryptoError) -> Self {
        tracing::error!(error = %e, "crypto error");
        match e {
            patchbay_crypto::CryptoError::Decrypt => Self::new(
                ErrorCode::SecretIntegrity,
                "a stored secret failed its integrity check (it does not belong to this record, \
                 or was altered); the server log names the row",
            ),
            _ => Self(Error::internal()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let denied = (e.code == ErrorCode::Forbidden)
            .then(|| {
                e.details
                    .as_ref()
                    .and_then(|d| d.get("permission"))
                    .and_then(|v| v.as_str())
                    .map(|p| crate::request::DeniedPermission(p.to_owned()))
            })
            .flatten();
        let status =
            StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: e.code.as_str(),
            error_type: e.code.error_type(),
            message: e.message,
            field: e.field,
            current_version: e.current_version,
            details: e.details.map(|d| *d),
        };
        let retry_after = (e.code == ErrorCode::RateLimited)
            .then(|| body.details.as_ref()?.get("retry_after")?.as_u64())
            .flatten();
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(d) = denied {
            resp.extensions_mut().insert(d);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"patchbay\""),
            );
        }
        resp
    }
}
