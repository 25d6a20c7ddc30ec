//! Credentials that proxy to an external secret manager: values are fetched at use time.

use std::collections::BTreeMap;

use patchbay_core::model::Credential;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Fetches the values of an external credential.
pub async fn fetch(_state: &AppState, c: &Credential) -> ApiResult<BTreeMap<String, SecretString>> {
    Err(ApiError::new(
        ErrorCode::InvalidState,
        format!(
            "credential {} proxies to an external manager, which this build cannot reach yet",
            c.id
        ),
    ))
}
