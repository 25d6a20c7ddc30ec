//! The error table: every error patchbay reports has a stable `code` a script can match on,
//! a `type` (the family), and an HTTP status. Declared once here; the server maps an
//! [`Error`] to a response in exactly one place.

use std::fmt;

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $ty:literal, $status:literal, $doc:literal) ),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $( #[doc = $doc] $variant ),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];
            /// The stable, machine-matchable code.
            pub fn as_str(self) -> &'static str { match self { $(ErrorCode::$variant => $code),* } }
            /// The family: invalid_request, auth, not_found, conflict, precondition, dependency, internal.
            pub fn error_type(self) -> &'static str { match self { $(ErrorCode::$variant => $ty),* } }
            pub fn status(self) -> u16 { match self { $(ErrorCode::$variant => $status),* } }
            pub fn description(self) -> &'static str { match self { $(ErrorCode::$variant => $doc),* } }
        }
    };
}

error_codes! {
    InvalidJson => ("invalid_json", "invalid_request", 400, "The body is not well-formed JSON, or not a JSON object."),
    InvalidField => ("invalid_field", "invalid_request", 400, "A body field is missing, unknown or has the wrong type; `field` holds its JSON pointer."),
    InvalidName => ("invalid_name", "invalid_request", 400, "A name does not match [a-z0-9][a-z0-9._-]{0,62}."),
    InvalidSetting => ("invalid_setting", "invalid_request", 400, "A setting or secret is unknown, ill-typed or out of range; `field` holds its JSON pointer."),
    UnknownType => ("unknown_type", "invalid_request", 400, "The connector type is not in the catalog."),
    InvalidQuery => ("invalid_query", "invalid_request", 400, "A query parameter is malformed (limit, cursor, filter)."),
    UnsupportedMediaType => ("unsupported_media_type", "invalid_request", 415, "The Content-Type is not application/json (or application/merge-patch+json for PATCH)."),
    PayloadTooLarge => ("payload_too_large", "invalid_request", 413, "The body exceeds 1 MiB."),
    FormatUnsupported => ("format_unsupported", "invalid_request", 400, "The connector type has no such resolve format (e.g. `uri` for S3, `jdbc` for Redis); `field` is /format."),
    RateLimited => ("rate_limited", "invalid_request", 429, "Too many requests of one kind: failed authentications from this address, token prefix or username, or connection tests by this principal (default 30 a minute, and a cap on concurrent ones). Retry after the seconds in Retry-After."),
    Unauthenticated => ("unauthenticated", "auth", 401, "No valid bearer token was presented."),
    Forbidden => ("forbidden", "auth", 403, "The token lacks the permission this call needs, or its user's role does not grant it in this workspace."),
    NotFound => ("not_found", "not_found", 404, "No such resource, or not visible to this token."),
    MethodNotAllowed => ("method_not_allowed", "invalid_request", 405, "The resource does not support this HTTP method."),
    CredentialKindMismatch => ("credential_kind_mismatch", "invalid_request", 400, "The credential's kind is not one the connector type accepts; `field` is /credential."),
    UnknownCredentialKind => ("unknown_credential_kind", "invalid_request", 400, "The credential kind is not in the catalog; GET /api/v1/credential-kinds lists them."),
    InUse => ("in_use", "conflict", 409, "The credential is used by connections (listed in `details.connections`); detach them first."),
    HasDependents => ("has_dependents", "conflict", 409, "The connection has registered dependents (listed in `details.dependents`); delete with `?cascade=all` or `?cascade=kind/ref,…` naming every one of them, or unregister them first."),
    InvalidState => ("invalid_state", "conflict", 409, "The operation does not apply in the resource's current state (e.g. revoking the current version)."),
    CredentialVersionUnavailable => ("credential_version_unavailable", "conflict", 409, "The credential version a connection needs was revoked or destroyed, or its grace period ended."),
    ExternalNotFound => ("external_not_found", "dependency", 424, "The external secret manager has no such secret, key or version."),
    ExternalDenied => ("external_denied", "dependency", 424, "The external secret manager refused access (credentials, policy, encryption context)."),
    ExternalUnreachable => ("external_unreachable", "dependency", 502, "The external secret manager or token server could not be reached, timed out or failed."),
    ExternalInvalidResponse => ("external_invalid_response", "dependency", 502, "The external secret manager or token server answered in an undocumented shape."),
    ExternalConfig => ("external_config", "dependency", 503, "The server is not configured to reach this external manager (e.g. no AWS credentials or Vault token)."),
    OauthInvalidGrant => ("oauth_invalid_grant", "dependency", 424, "The token server rejected the refresh token (expired, revoked or already used): the credential needs a new authorization."),
    OauthError => ("oauth_error", "dependency", 424, "The token server refused the client (wrong client id or secret, scope, grant)."),
    NameTaken => ("name_taken", "conflict", 409, "Another resource in the same scope already has this name."),
    VersionConflict => ("version_conflict", "precondition", 412, "If-Match names a version that is no longer current; the body holds `current_version`."),
    PreconditionRequired => ("precondition_required", "precondition", 428, "Updates need an If-Match header with the ETag of the version being changed."),
    SecretIntegrity => ("secret_integrity_error", "conflict", 409, "A stored secret failed its integrity check: its ciphertext does not belong to the row that holds it (copied or tampered). The server log names the row."),
    RotationInProgress => ("rotation_in_progress", "conflict", 409, "A key rotation of the same scope is already running; wait for it (GET /api/v1/keys/rotations/{id})."),
    RotationUnsupported => ("rotation_unsupported", "conflict", 409, "The master key source cannot rotate online; for an inline key, restart once with PATCHBAY_MASTER_KEY (new) and PATCHBAY_MASTER_KEY_PREVIOUS (old)."),
    Provisioned => ("provisioned", "conflict", 409, "The object is managed by a provisioning file (`serve --provision`; `details.source` names the file): change the file and restart instead. The API does not change or delete it."),
    CsrfTokenInvalid => ("csrf_token_invalid", "auth", 403, "A change made with a session cookie lacks the session's CSRF token (header X-CSRF-Token, or the csrf_token form field)."),
    UnknownZone => ("unknown_zone", "invalid_request", 400, "The connection names a network zone its workspace does not have; `field` is /zone. GET /api/v1/workspaces/{ws}/zones lists them."),
    ZoneInUse => ("zone_in_use", "conflict", 409, "Connections name the zone (listed in `details.connections`); move them to another zone or none first."),
    ZoneDraftUnsupported => ("zone_draft_unsupported", "invalid_request", 400, "A draft (unsaved) connection cannot be tested through a zone's agent; save it, then test it. `field` is /zone."),
    AgentJobClosed => ("agent_job_closed", "conflict", 409, "The agent job is not running for this agent any more (expired, already reported, or claimed by another agent); its result is dropped."),
    Internal => ("internal", "internal", 500, "An unexpected server error; details are in the server log."),
    Unavailable => ("unavailable", "internal", 503, "A dependency (database, key) is not ready."),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-facing error. Messages never contain submitted values: they name fields and rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// JSON pointer of the offending field, when one is to blame.
    pub field: Option<String>,
    /// For `version_conflict`: the version that is current now.
    pub current_version: Option<i64>,
    /// Structured context, e.g. the connections using a credential for `in_use`. Never
    /// secret values.
    pub details: Option<Box<serde_json::Value>>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            current_version: None,
            details: None,
        }
    }

    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(code, message)
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the server log has the details",
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (at {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_http_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert!((400..600).contains(&c.status()));
            // 5xx only for our own failures and for external systems that failed; never for
            // anything the caller sent.
            if c.status() >= 500 {
                assert!(matches!(c.error_type(), "internal" | "dependency"), "{c}");
            }
            if c.error_type() == "internal" {
                assert!(c.status() >= 500, "{c}");
            }
        }
    }
}

#[cfg(test)]
mod docs_tests {
    use super::ErrorCode;

    /// docs/errors.md is the user-facing copy of the table: it must list every code with
    /// its status and type.
    #[test]
    fn the_error_docs_list_every_code() {
        let doc = include_str!("../../../docs/errors.md");
        for c in ErrorCode::ALL {
            let row = format!("| `{}` | {} | {} |", c.as_str(), c.status(), c.error_type());
            assert!(
                doc.contains(&row),
                "docs/errors.md lacks the row starting {row}"
            );
        }
    }
}
