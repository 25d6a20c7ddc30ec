//! Domain operations that need IO: validate against the catalog, encrypt with the key ring,
//! persist through the store, record audit events. Handlers call these and only these.

pub mod connections;
pub mod credentials;
pub mod external;
pub mod keys;
pub mod oauth;
pub mod probes;
pub mod tokens;
pub mod workspaces;

use patchbay_core::model::Principal;
use patchbay_store::AuditEntry;

pub(crate) fn audit(
    principal: &Principal,
    action: &str,
    workspace_id: Option<&str>,
    target_kind: &str,
    target_id: &str,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        actor: principal.actor(),
        action: action.to_owned(),
        workspace_id: workspace_id.map(str::to_owned),
        target_kind: target_kind.to_owned(),
        target_id: target_id.to_owned(),
        details,
    }
}
