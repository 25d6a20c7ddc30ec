//! Domain operations that need IO: validate against the catalog, encrypt with the key ring,
//! persist through the store, record audit events. Handlers call these and only these.

pub mod agents;
pub mod audit;
pub mod connection_secrets;
pub mod connections;
pub mod credentials;
pub mod dependents;
pub mod events;
pub mod external;
pub mod formats;
pub mod keys;
pub mod master_keys;
pub mod oauth;
pub mod overview;
pub mod probes;
pub mod provision;
pub mod resolve;
pub mod resolve_log;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod webhooks;
pub mod workspaces;
pub mod zones;

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_store::{AuditEntry, Details, Outcome};

use crate::error::{ApiError, ApiResult};

/// 403 unless `p` holds `perm` in workspace `workspace_id`. Callers first make sure the
/// workspace is visible (404 otherwise), so a 403 never reveals that something exists.
pub(crate) fn require_in(p: &Principal, workspace_id: &str, perm: Permission) -> ApiResult<()> {
    if p.can_in(workspace_id, perm) {
        Ok(())
    } else {
        Err(ApiError::forbidden(perm))
    }
}

/// A successful action of `principal`, with its request id and source address.
pub(crate) fn audit(
    principal: &Principal,
    action: &str,
    workspace_id: Option<&str>,
    target_kind: &str,
    target_id: &str,
    details: impl Into<Details>,
) -> AuditEntry {
    AuditEntry {
        actor: principal.actor(),
        action: action.to_owned(),
        outcome: Outcome::Success,
        workspace_id: workspace_id.map(str::to_owned),
        target_kind: target_kind.to_owned(),
        target_id: target_id.to_owned(),
        request_id: principal.request.request_id.clone(),
        source_address: principal.request.source_address.clone(),
        details: details.into(),
    }
}
