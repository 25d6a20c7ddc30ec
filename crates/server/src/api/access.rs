//! Deny by default: every route declares here what it needs, in one table. A middleware
//! authenticates the caller and checks the declared permission before any handler runs; a
//! route with no declaration answers 403 whatever the token. The service layer then checks
//! the permission again in the workspace of the resource (`Principal::can_in`), which the
//! table cannot know.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use patchbay_core::permission::Permission::{self, *};
use patchbay_core::ErrorCode;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: health, readiness, the OpenAPI document.
    Public,
    /// Any valid token; the handler decides what it shows (e.g. the workspaces it sees).
    Authenticated,
    /// A token holding this permission in at least one workspace; the service checks the
    /// resource's own workspace.
    Needs(Permission),
    /// An agent token (service::zones), and only that: the agent endpoints of its zone.
    /// Agent tokens are refused on every other route.
    Agent,
}

use Access::*;

/// Every route of the API: method, path template (as routed), access.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/api/v1/health", Public),
    ("GET", "/api/v1/ready", Public),
    ("GET", "/api/openapi.json", Public),
    // Signing in is authentication itself.
    ("POST", "/api/v1/sessions", Public),
    ("DELETE", "/api/v1/sessions/current", Authenticated),
    // The web UI (crate::ui). Pages and form posts are checked like API routes; a form's
    // `csrf_token` field stands in for the X-CSRF-Token header. `/` and `/login` look at
    // the session themselves (a browser without one is sent to the sign-in form).
    ("GET", "/", Public),
    ("GET", "/login", Public),
    ("POST", "/login", Public),
    ("POST", "/logout", Authenticated),
    ("GET", "/assets/{file}", Public),
    ("GET", "/switch", Authenticated),
    ("GET", "/workspaces/{ws}", Needs(ConnectionsRead)),
    (
        "GET",
        "/projects/{project}/connections",
        Needs(ConnectionsRead),
    ),
    (
        "POST",
        "/projects/{project}/connections",
        Needs(ConnectionsWrite),
    ),
    (
        "GET",
        "/projects/{project}/connections/new",
        Needs(ConnectionsWrite),
    ),
    (
        "GET",
        "/projects/{project}/connections/new/{type}",
        Needs(ConnectionsWrite),
    ),
    (
        "POST",
        "/projects/{project}/connections/test",
        Needs(ConnectionsTest),
    ),
    ("GET", "/connections/{id}", Needs(ConnectionsRead)),
    ("POST", "/connections/{id}/test", Needs(ConnectionsTest)),
    ("POST", "/connections/{id}/reveal", Needs(ConnectionsReveal)),
    ("GET", "/connections/{id}/edit", Needs(ConnectionsWrite)),
    ("POST", "/connections/{id}/edit", Needs(ConnectionsWrite)),
    (
        "GET",
        "/connections/{id}/duplicate",
        Needs(ConnectionsWrite),
    ),
    ("GET", "/connections/{id}/delete", Needs(ConnectionsWrite)),
    ("POST", "/connections/{id}/delete", Needs(ConnectionsWrite)),
    (
        "GET",
        "/workspaces/{ws}/credentials",
        Needs(CredentialsRead),
    ),
    (
        "POST",
        "/workspaces/{ws}/credentials",
        Needs(CredentialsWrite),
    ),
    (
        "GET",
        "/workspaces/{ws}/credentials/new",
        Needs(CredentialsWrite),
    ),
    ("GET", "/credentials/{id}", Needs(CredentialsRead)),
    ("POST", "/credentials/{id}/rotate", Needs(CredentialsWrite)),
    ("GET", "/workspaces/{ws}/audit", Needs(AuditRead)),
    // Zones, webhooks and members: the permissions of the matching API routes.
    ("GET", "/workspaces/{ws}/zones", Needs(ConnectionsRead)),
    ("POST", "/workspaces/{ws}/zones", Needs(WorkspaceAdmin)),
    (
        "POST",
        "/workspaces/{ws}/zones/{zone}/agent-tokens",
        Needs(WorkspaceAdmin),
    ),
    ("POST", "/zones/{id}/delete", Needs(WorkspaceAdmin)),
    ("GET", "/workspaces/{ws}/webhooks", Needs(WorkspaceAdmin)),
    ("POST", "/workspaces/{ws}/webhooks", Needs(WorkspaceAdmin)),
    ("GET", "/webhooks/{id}", Needs(WorkspaceAdmin)),
    ("POST", "/webhooks/{id}/enabled", Needs(WorkspaceAdmin)),
    ("POST", "/webhooks/{id}/delete", Needs(WorkspaceAdmin)),
    (
        "POST",
        "/webhooks/{id}/deliveries/{event}/redeliver",
        Needs(WorkspaceAdmin),
    ),
    ("GET", "/workspaces/{ws}/members", Needs(MembersManage)),
    ("POST", "/workspaces/{ws}/members", Needs(MembersManage)),
    (
        "POST",
        "/workspaces/{ws}/members/{user}",
        Needs(MembersManage),
    ),
    (
        "POST",
        "/workspaces/{ws}/members/{user}/remove",
        Needs(MembersManage),
    ),
    ("GET", "/tokens", Authenticated),
    ("POST", "/tokens", Authenticated),
    ("POST", "/tokens/{id}/revoke", Authenticated),
    ("GET", "/api/v1/connection-types", Authenticated),
    ("GET", "/api/v1/connection-types/{type}", Authenticated),
    ("GET", "/api/v1/credential-kinds", Authenticated),
    ("GET", "/api/v1/workspaces", Authenticated),
    ("POST", "/api/v1/workspaces", Needs(InstanceAdmin)),
    (
        "GET",
        "/api/v1/workspaces/{ws}/projects",
        Needs(ConnectionsRead),
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/projects",
        Needs(WorkspaceAdmin),
    ),
    (
        "GET",
        "/api/v1/projects/{project}/connections",
        Needs(ConnectionsRead),
    ),
    (
        "POST",
        "/api/v1/projects/{project}/connections",
        Needs(ConnectionsWrite),
    ),
    ("GET", "/api/v1/connections/{id}", Needs(ConnectionsRead)),
    (
        "POST",
        "/api/v1/connections/{id}/test",
        Needs(ConnectionsTest),
    ),
    (
        "GET",
        "/api/v1/connections/{id}/tests",
        Needs(ConnectionsRead),
    ),
    (
        "POST",
        "/api/v1/projects/{project}/connections/test",
        Needs(ConnectionsTest),
    ),
    (
        "POST",
        "/api/v1/connections/{id}/resolve",
        Needs(ConnectionsResolve),
    ),
    (
        "POST",
        "/api/v1/projects/{project}/connections/by-name/{name}/resolve",
        Needs(ConnectionsResolve),
    ),
    ("PUT", "/api/v1/connections/{id}", Needs(ConnectionsWrite)),
    ("PATCH", "/api/v1/connections/{id}", Needs(ConnectionsWrite)),
    (
        "DELETE",
        "/api/v1/connections/{id}",
        Needs(ConnectionsWrite),
    ),
    (
        "POST",
        "/api/v1/projects/{project}/import",
        Needs(ConnectionsWrite),
    ),
    (
        "GET",
        "/api/v1/projects/{project}/export",
        Needs(ConnectionsRead),
    ),
    // Exports secrets (sealed); the service also needs connections:reveal there.
    (
        "POST",
        "/api/v1/projects/{project}/export",
        Needs(CredentialsWrite),
    ),
    (
        "GET",
        "/api/v1/workspaces/{ws}/credentials",
        Needs(CredentialsRead),
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/credentials",
        Needs(CredentialsWrite),
    ),
    ("GET", "/api/v1/credentials/{id}", Needs(CredentialsRead)),
    ("PATCH", "/api/v1/credentials/{id}", Needs(CredentialsWrite)),
    (
        "DELETE",
        "/api/v1/credentials/{id}",
        Needs(CredentialsWrite),
    ),
    (
        "GET",
        "/api/v1/credentials/{id}/versions",
        Needs(CredentialsRead),
    ),
    (
        "POST",
        "/api/v1/credentials/{id}/versions",
        Needs(CredentialsWrite),
    ),
    (
        "POST",
        "/api/v1/credentials/{id}/versions/{version}/revoke",
        Needs(CredentialsWrite),
    ),
    (
        "GET",
        "/api/v1/credentials/{id}/usage",
        Needs(CredentialsRead),
    ),
    (
        "POST",
        "/api/v1/credentials/{id}/token",
        Needs(ConnectionsResolve),
    ),
    ("GET", "/api/v1/tokens", Authenticated),
    ("POST", "/api/v1/tokens", Authenticated),
    ("DELETE", "/api/v1/tokens/{id}", Authenticated),
    (
        "POST",
        "/api/v1/workspaces/{ws}/runner-tokens",
        Needs(ConnectionsResolve),
    ),
    ("GET", "/api/v1/users", Needs(MembersManage)),
    ("POST", "/api/v1/users", Needs(InstanceAdmin)),
    (
        "GET",
        "/api/v1/workspaces/{ws}/members",
        Needs(MembersManage),
    ),
    (
        "PUT",
        "/api/v1/workspaces/{ws}/members/{user}",
        Needs(MembersManage),
    ),
    (
        "DELETE",
        "/api/v1/workspaces/{ws}/members/{user}",
        Needs(MembersManage),
    ),
    ("GET", "/api/v1/workspaces/{ws}/roles", Authenticated),
    (
        "POST",
        "/api/v1/workspaces/{ws}/roles",
        Needs(WorkspaceAdmin),
    ),
    ("GET", "/api/v1/workspaces/{ws}/audit", Needs(AuditRead)),
    ("GET", "/api/v1/audit/verify", Needs(InstanceAdmin)),
    ("GET", "/api/v1/keys", Needs(WorkspaceAdmin)),
    ("POST", "/api/v1/keys/rotate-master", Needs(InstanceAdmin)),
    ("GET", "/api/v1/keys/rotations/{id}", Needs(WorkspaceAdmin)),
    (
        "POST",
        "/api/v1/workspaces/{ws}/keys/rotate-data",
        Needs(WorkspaceAdmin),
    ),
    (
        "GET",
        "/api/v1/workspaces/{ws}/zones",
        Needs(ConnectionsRead),
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/zones",
        Needs(WorkspaceAdmin),
    ),
    ("GET", "/api/v1/zones/{id}", Needs(ConnectionsRead)),
    ("DELETE", "/api/v1/zones/{id}", Needs(WorkspaceAdmin)),
    (
        "POST",
        "/api/v1/workspaces/{ws}/zones/{zone}/agent-tokens",
        Needs(WorkspaceAdmin),
    ),
    ("POST", "/api/v1/agent/claim", Agent),
    ("POST", "/api/v1/agent/jobs/{id}/result", Agent),
    // Dependents (issue 7): consumers register what uses a connection.
    (
        "GET",
        "/api/v1/connections/{id}/dependents",
        Needs(ConnectionsRead),
    ),
    (
        "PUT",
        "/api/v1/connections/{id}/dependents/{kind}/{ref}",
        Needs(ConnectionsWrite),
    ),
    (
        "DELETE",
        "/api/v1/connections/{id}/dependents/{kind}/{ref}",
        Needs(ConnectionsWrite),
    ),
    // Webhooks (issue 7): where events are delivered; workspace administrators only.
    (
        "GET",
        "/api/v1/workspaces/{ws}/webhooks",
        Needs(WorkspaceAdmin),
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/webhooks",
        Needs(WorkspaceAdmin),
    ),
    ("GET", "/api/v1/webhooks/{id}", Needs(WorkspaceAdmin)),
    ("PATCH", "/api/v1/webhooks/{id}", Needs(WorkspaceAdmin)),
    ("DELETE", "/api/v1/webhooks/{id}", Needs(WorkspaceAdmin)),
    (
        "GET",
        "/api/v1/webhooks/{id}/deliveries",
        Needs(WorkspaceAdmin),
    ),
    ("POST", "/api/v1/webhooks/{id}/ping", Needs(WorkspaceAdmin)),
    (
        "POST",
        "/api/v1/webhooks/{id}/deliveries/{event}/redeliver",
        Needs(WorkspaceAdmin),
    ),
];

/// The declaration of a route; HEAD is GET's.
pub fn declared(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    static BY_ROUTE: std::sync::LazyLock<HashMap<(&str, &str), Access>> =
        std::sync::LazyLock::new(|| ROUTES.iter().map(|&(m, p, a)| ((m, p), a)).collect());
    BY_ROUTE.get(&(method, path)).copied()
}

/// The route layer: authenticate, check the declared permission, hand the principal on to
/// the handler (which then does not look the token up again). It also tells the request
/// layer which route matched (`request::remember_route`).
pub async fn enforce(
    State(state): State<AppState>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    crate::request::remember_route(&req, params.ok());
    let path = req.extensions().get::<MatchedPath>().cloned();
    let path = path.as_ref().map_or("", MatchedPath::as_str);
    let access = match declared(req.method(), path) {
        Some(a) => a,
        None => {
            tracing::error!(method = %req.method(), route = path, "route has no access declaration; denied");
            return ApiError::new(
                ErrorCode::Forbidden,
                "this route declares no permission and is denied to everyone",
            )
            .into_response();
        }
    };
    if access == Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let principal = match Auth::from_request_parts(&mut parts, &state).await {
        Ok(Auth(p)) => p,
        Err(e) => return e.into_response(),
    };
    // An agent token reaches the agent endpoints and nothing else; nothing else reaches
    // them.
    match (access, principal.agent_zone.is_some()) {
        (Agent, true) => {}
        (Agent, false) => {
            return ApiError::new(
                ErrorCode::Forbidden,
                "only an agent token (POST /api/v1/workspaces/{ws}/zones/{zone}/agent-tokens) calls the agent endpoints",
            )
            .into_response()
        }
        (_, true) => {
            return ApiError::new(
                ErrorCode::Forbidden,
                "an agent token calls the agent endpoints of its zone and nothing else",
            )
            .into_response()
        }
        (Needs(perm), false) => {
            if !principal.can(perm) {
                return ApiError::forbidden(perm).into_response();
            }
        }
        (Public | Authenticated, false) => {}
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    /// Every operation of the OpenAPI document (which lists every handler) is declared, and
    /// every declaration is documented.
    #[test]
    fn every_documented_route_declares_its_access_and_vice_versa() {
        let doc = crate::api::ApiDoc::openapi();
        let mut documented = vec![];
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (m, present) in ops {
                if present {
                    documented.push((m.to_owned(), path.clone()));
                }
            }
        }
        let undeclared: Vec<_> = documented
            .iter()
            .filter(|(m, p)| declared(&m.parse().unwrap(), p).is_none())
            .collect();
        assert!(
            undeclared.is_empty(),
            "routes without a declaration: {undeclared:?}"
        );
        let undocumented: Vec<_> = ROUTES
            .iter()
            .filter(|(m, p, _)| {
                // HTML pages and the document itself are not API operations.
                p.starts_with("/api/v1/")
                    && !documented.contains(&((*m).to_owned(), (*p).to_owned()))
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "declared but not in the OpenAPI document: {undocumented:?}"
        );
        let mut seen = std::collections::BTreeSet::new();
        for (m, p, _) in ROUTES {
            assert!(seen.insert((m, p)), "{m} {p} declared twice");
        }
    }
}
