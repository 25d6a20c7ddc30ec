//! The audit log as a resource: refused attempts (recorded by the request layer), a
//! workspace's events (list, export), chain verification and retention. Successful
//! changes are recorded by each operation in its own transaction (`service::audit`).

use std::time::Duration;

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_store::{AuditEntry, AuditFilter, AuditRecord, Outcome, StoreError, Verification};
use serde_json::json;

use super::workspaces;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The action a refused request attempted, named like the actions of successful ones.
fn attempted(method: &str, route: &str, permission: &str) -> String {
    let tail = route.strip_prefix("/api/v1").unwrap_or(route);
    let action = match (method, tail) {
        ("POST", "/workspaces") => "workspace.create",
        ("GET", "/workspaces/{ws}/projects") => "project.list",
        ("POST", "/workspaces/{ws}/projects") => "project.create",
        ("GET", "/projects/{project}/connections") => "connection.list",
        ("POST", "/projects/{project}/connections") => "connection.create",
        ("GET", "/connections/{id}") if permission == "connections:reveal" => "connection.reveal",
        ("GET", "/connections/{id}") => "connection.read",
        ("PUT" | "PATCH", "/connections/{id}") => "connection.update",
        ("DELETE", "/connections/{id}") => "connection.delete",
        ("POST", "/connections/{id}/test") => "connection.test",
        ("GET", "/workspaces/{ws}/credentials") => "credential.list",
        ("POST", "/workspaces/{ws}/credentials") => "credential.create",
        ("GET", "/credentials/{id}") => "credential.read",
        ("PATCH", "/credentials/{id}") => "credential.update",
        ("DELETE", "/credentials/{id}") => "credential.delete",
        ("GET", "/credentials/{id}/versions") => "credential.versions",
        ("POST", "/credentials/{id}/versions") => "credential.rotate",
        ("POST", "/credentials/{id}/versions/{version}/revoke") => "credential.version.revoke",
        ("GET", "/credentials/{id}/usage") => "credential.usage",
        ("POST", "/credentials/{id}/token") => "credential.token",
        ("GET", "/tokens") => "token.list",
        ("POST", "/tokens") => "token.create",
        ("DELETE", "/tokens/{id}") => "token.revoke",
        ("POST", "/workspaces/{ws}/runner-tokens") => "token.create_runner",
        ("GET", "/keys") => "key.status",
        ("POST", "/keys/rotate-master") => "key.rotate_master",
        ("GET", "/keys/rotations/{id}") => "key.rotation",
        ("POST", "/workspaces/{ws}/keys/rotate-data") => "key.rotate_data",
        ("GET", "/users") => "user.list",
        ("POST", "/users") => "user.create",
        ("GET", "/workspaces/{ws}/members") => "member.list",
        ("PUT", "/workspaces/{ws}/members/{user}") => "member.put",
        ("DELETE", "/workspaces/{ws}/members/{user}") => "member.delete",
        ("GET", "/workspaces/{ws}/roles") => "role.list",
        ("POST", "/workspaces/{ws}/roles") => "role.create",
        ("GET", "/connections/{id}/tests") => "connection.tests",
        ("POST", "/projects/{project}/connections/test") => "connection.test_draft",
        ("GET", "/workspaces/{ws}/audit") => "audit.list",
        ("GET", "/audit/verify") => "audit.verify",
        ("GET", "/connections/{id}/dependents") => "dependent.list",
        ("PUT", "/connections/{id}/dependents/{kind}/{ref}") => "dependent.register",
        ("DELETE", "/connections/{id}/dependents/{kind}/{ref}") => "dependent.unregister",
        ("GET", "/workspaces/{ws}/webhooks") => "webhook.list",
        ("POST", "/workspaces/{ws}/webhooks") => "webhook.create",
        ("GET", "/webhooks/{id}") => "webhook.read",
        ("PATCH", "/webhooks/{id}") => "webhook.update",
        ("DELETE", "/webhooks/{id}") => "webhook.delete",
        ("GET", "/webhooks/{id}/deliveries") => "webhook.deliveries",
        ("POST", "/webhooks/{id}/ping") => "webhook.ping",
        ("POST", "/webhooks/{id}/deliveries/{event}/redeliver") => "webhook.redeliver",
        _ => return format!("{method} {route}"),
    };
    action.to_owned()
}

/// `(target_kind, target_id)` of a route: its `{id}` named by the collection it is in,
/// else its project or workspace.
fn target(route: &str, params: &[(String, String)]) -> (String, String) {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let collection = route
        .strip_prefix("/api/v1/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    if let Some(id) = param("id") {
        let kind = match collection {
            "connections" => "connection",
            "credentials" => "credential",
            "tokens" => "token",
            "keys" => "key_rotation",
            other => other,
        };
        return (kind.to_owned(), id);
    }
    if let Some(p) = param("project") {
        return ("project".into(), p);
    }
    if let Some(ws) = param("ws") {
        return ("workspace".into(), ws);
    }
    (collection.trim_end_matches('s').to_owned(), String::new())
}

/// The workspace an attempt concerned, where it can be told: named in the path, else the
/// workspace of the connection, credential or project it named, else the token's own.
async fn workspace_of(
    state: &AppState,
    p: &Principal,
    kind: &str,
    id: &str,
    params: &[(String, String)],
) -> Option<String> {
    if let Some((_, ws)) = params.iter().find(|(k, _)| k == "ws") {
        let found = match state.store.get_workspace(ws).await {
            Err(StoreError::NotFound) => state.store.get_workspace_by_name(ws).await,
            other => other,
        };
        return found.ok().map(|w| w.id);
    }
    let looked_up = match kind {
        "connection" => state
            .store
            .get_connection(id)
            .await
            .ok()
            .map(|c| c.workspace_id),
        "credential" => state
            .store
            .get_credential(id)
            .await
            .ok()
            .map(|c| c.workspace_id),
        "project" => state
            .store
            .get_project(id)
            .await
            .ok()
            .map(|c| c.workspace_id),
        _ => None,
    };
    looked_up.or_else(|| p.workspace_id.clone())
}

/// Records a 403: who tried what on which target. Best effort: the request is refused
/// whether or not the record could be written (a failure is logged).
pub async fn record_denied(
    state: &AppState,
    p: &Principal,
    method: &str,
    route: &str,
    params: &[(String, String)],
    permission: &str,
) {
    let (target_kind, target_id) = target(route, params);
    let workspace_id = workspace_of(state, p, &target_kind, &target_id, params).await;
    let mut entry = super::audit(
        p,
        &attempted(method, route, permission),
        workspace_id.as_deref(),
        &target_kind,
        &target_id,
        json!({"missing_permission": permission, "method": method, "route": route}),
    );
    entry.outcome = Outcome::Denied;
    if let Err(e) = state.store.record_audit(&entry).await {
        tracing::error!(error = %e, "could not record a denied attempt in the audit log");
    }
}

/// The id of a workspace whose audit log the principal may read (404 when it cannot see
/// the workspace, 403 without `audit:read`).
pub async fn readable_workspace(state: &AppState, p: &Principal, ws: &str) -> ApiResult<String> {
    let ws = workspaces::get(state, p, ws).await?;
    super::require_in(p, &ws.id, Permission::AuditRead)?;
    Ok(ws.id)
}

/// One page of a workspace's events; `filter.workspace_id` must come from
/// [`readable_workspace`].
pub async fn list(
    state: &AppState,
    filter: &AuditFilter,
    limit: u32,
) -> ApiResult<Vec<AuditRecord>> {
    debug_assert!(filter.workspace_id.is_some());
    Ok(state.store.list_audit(filter, limit).await?)
}

/// Walks the whole chain. Instance-wide (the chain spans every workspace), so it needs
/// `instance:admin`.
pub async fn verify(state: &AppState, p: &Principal) -> ApiResult<Verification> {
    if !p.can_everywhere(Permission::InstanceAdmin) {
        return Err(ApiError::forbidden(Permission::InstanceAdmin));
    }
    Ok(state.store.verify_audit().await?)
}

/// Deletes events older than `retention`, recording the deletion as an event.
pub async fn prune(state: &AppState, retention: Duration) -> Result<i64, StoreError> {
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = patchbay_store::now_millis().saturating_sub(keep_ms);
    let event = AuditEntry::system(
        "system:retention",
        "audit.retention",
        None,
        "audit_log",
        "",
        json!({"retention_ms": keep_ms, "cutoff": patchbay_core::model::format_rfc3339(cutoff)}),
    );
    state.store.prune_audit(cutoff, &event).await
}

/// Applies the retention every `interval` for as long as the process runs.
pub async fn retention_forever(state: AppState, retention: Duration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match prune(&state, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit events past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "audit retention failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_routes_name_the_attempted_action_and_target() {
        assert_eq!(
            attempted("GET", "/api/v1/connections/{id}", "connections:reveal"),
            "connection.reveal"
        );
        assert_eq!(
            attempted("PATCH", "/api/v1/connections/{id}", "connections:write"),
            "connection.update"
        );
        assert_eq!(
            attempted("GET", "/api/v1/new/{x}", "p"),
            "GET /api/v1/new/{x}"
        );
        let params = vec![("id".to_owned(), "c1".to_owned())];
        assert_eq!(
            target("/api/v1/credentials/{id}/versions", &params),
            ("credential".to_owned(), "c1".to_owned())
        );
        assert_eq!(
            target("/api/v1/workspaces", &[]),
            ("workspace".to_owned(), String::new())
        );
    }
}
