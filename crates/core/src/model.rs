//! Domain records shared by the store and the server. Secret values never appear here:
//! a connection knows only the *names* of its secret fields that are set.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::permission::{Permission, PermissionSet};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub created_at: Millis,
}

/// A connection's non-secret view.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub name: String,
    pub connector_type: String,
    pub description: String,
    pub environment: Option<String>,
    /// The network zone (a zone name of the workspace) whose agents test this connection;
    /// `None`: the server tests it itself.
    pub zone: Option<String>,
    pub tags: Vec<String>,
    pub settings: Map<String, Value>,
    /// Names of the secret fields that hold a value, sorted.
    pub secrets_set: Vec<String>,
    /// Where the secrets come from: the connection's own credential, a shared one, or none.
    pub credential: Option<ConnectionCredential>,
    /// The provisioning file that manages this connection (`serve --provision`); the API
    /// refuses to change it. `None`: managed through the API.
    pub provisioned: Option<String>,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// How many dependents (pipelines, datasets, …) consumers registered on it.
    pub dependents_count: i64,
}

/// The credential a connection takes its secrets from, as the connection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionCredential {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// The connection's own credential (its inline secrets), not a shared one.
    pub owned: bool,
    /// `Some(n)`: the connection is pinned to version n; `None`: it follows the current one.
    pub pinned_version: Option<i64>,
    pub current_version: i64,
    /// Proxies to an external secret manager.
    pub external: bool,
    /// Secret field names of the version in effect (pinned or current), sorted.
    pub secret_fields: Vec<String>,
    /// Non-secret field values of the version in effect.
    pub public_fields: Map<String, Value>,
}

impl ConnectionCredential {
    /// The version a decrypt for this connection uses.
    pub fn effective_version(&self) -> i64 {
        self.pinned_version.unwrap_or(self.current_version)
    }
}

/// A credential: a typed, versioned secret bundle (metadata only; values stay encrypted).
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    /// Set when this credential holds a connection's inline secrets.
    pub owner_connection_id: Option<String>,
    /// Reference to an external secret manager (no secret values in it).
    pub external: Option<Value>,
    pub current_version: i64,
    /// Bumped by every metadata change and rotation (the ETag).
    pub revision: i64,
    /// Secret field names set in the current version, sorted.
    pub secret_fields: Vec<String>,
    /// Non-secret field values of the current version.
    pub public_fields: Map<String, Value>,
    /// The provisioning file that manages this credential; the API refuses to change it.
    pub provisioned: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// State of one credential version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// The version new decrypts use.
    Current,
    /// Replaced by a rotation; still usable until `grace_until`.
    Previous,
    /// Withdrawn by hand; its ciphertext is gone.
    Revoked,
    /// Its grace period ended; its ciphertext is gone.
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Revoked => "revoked",
            Self::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "current" => Self::Current,
            "previous" => Self::Previous,
            "revoked" => Self::Revoked,
            "destroyed" => Self::Destroyed,
            _ => return None,
        })
    }
}

/// Metadata of one credential version; never values.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialVersion {
    pub version: i64,
    pub state: VersionState,
    pub secret_fields: Vec<String>,
    pub created_at: Millis,
    pub created_by: String,
    pub grace_until: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub destroyed_at: Option<Millis>,
}

/// Who is calling: resolved from a bearer token.
///
/// Two limits apply together: the token's own ceiling (`permissions`, optionally one
/// `workspace_id`) and, for a token that belongs to a user, what the user's role grants in
/// each workspace (`memberships`). A permission holds in a workspace only when both allow it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    /// The user the token belongs to; `None` for tokens that predate users.
    pub user_id: Option<String>,
    /// Authenticated by a browser session (`token_id` is then the session's id).
    pub session: bool,
    /// `None`: the token reaches every workspace; `Some(ws)`: only that one.
    pub workspace_id: Option<String>,
    pub permissions: PermissionSet,
    /// `None`: no per-workspace limit (instance admins, tokens without a user).
    /// `Some(map)`: the workspaces the user is a member of and what their role grants there.
    pub memberships: Option<BTreeMap<String, PermissionSet>>,
    /// `Some(zone id)`: an agent token of that network zone, which may call the agent
    /// endpoints (claim, result) and nothing else.
    pub agent_zone: Option<String>,
    /// The request this principal acts in, for audit records.
    pub request: RequestMeta,
}

/// Who asked from where: filled by the server for every authenticated request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestMeta {
    /// The request's `X-Request-Id` (the caller's, when short and printable, else generated).
    pub request_id: Option<String>,
    /// The peer IP address of the connection.
    pub source_address: Option<String>,
}

impl Principal {
    /// Whether the principal holds `p` in at least one workspace (or instance-wide). Routes
    /// check this first; the service then checks the workspace of the resource with
    /// [`Principal::can_in`].
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(p)
            && self.memberships.as_ref().is_none_or(|m| {
                m.iter()
                    .any(|(ws, perms)| perms.contains(p) && self.token_reaches(ws))
            })
    }

    /// Whether the principal holds `p` in workspace `workspace_id`.
    pub fn can_in(&self, workspace_id: &str, p: Permission) -> bool {
        self.sees_workspace(workspace_id)
            && self.permissions.contains(p)
            && self
                .memberships
                .as_ref()
                .is_none_or(|m| m.get(workspace_id).is_some_and(|perms| perms.contains(p)))
    }

    /// Whether the principal holds `p` instance-wide: every workspace, present and future.
    pub fn can_everywhere(&self, p: Permission) -> bool {
        self.workspace_id.is_none() && self.memberships.is_none() && self.permissions.contains(p)
    }

    fn token_reaches(&self, workspace_id: &str) -> bool {
        self.workspace_id
            .as_deref()
            .is_none_or(|w| w == workspace_id)
    }

    /// Whether the workspace is visible at all. Invisible workspaces answer 404, never 403.
    pub fn sees_workspace(&self, workspace_id: &str) -> bool {
        self.token_reaches(workspace_id)
            && self
                .memberships
                .as_ref()
                .is_none_or(|m| m.contains_key(workspace_id))
    }

    /// Label used in audit records.
    pub fn actor(&self) -> String {
        match (&self.user_id, self.session) {
            (Some(user), true) => format!("user:{user}"),
            _ => format!("token:{}", self.token_id),
        }
    }
}

/// RFC 3339 rendering of a [`Millis`] timestamp (UTC, millisecond precision).
pub fn format_rfc3339(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_rfc3339(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
    }
}
