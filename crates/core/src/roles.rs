//! Workspace roles: the built-in ones (fixed here, documented in docs/security-model.md)
//! and the rules custom roles follow. A role is a named set of workspace permissions; a user
//! holds one role per workspace they are a member of.

use crate::permission::{Permission, PermissionSet};

use Permission::*;

/// The built-in roles, least privilege of seeds 000 and 001: builders use connections, only
/// some people create or replace secrets, only privileged principals see secrets in full.
pub const BUILTIN: &[(&str, &[Permission])] = &[
    (
        "admin",
        &[
            ConnectionsRead,
            ConnectionsWrite,
            ConnectionsTest,
            ConnectionsResolve,
            ConnectionsReveal,
            CredentialsRead,
            CredentialsUse,
            CredentialsWrite,
            MembersManage,
            AuditRead,
            WorkspaceAdmin,
        ],
    ),
    (
        "secret_manager",
        &[
            CredentialsRead,
            CredentialsUse,
            CredentialsWrite,
            ConnectionsReveal,
            ConnectionsRead,
        ],
    ),
    (
        "editor",
        &[
            ConnectionsRead,
            ConnectionsWrite,
            ConnectionsTest,
            CredentialsRead,
            CredentialsUse,
        ],
    ),
    ("runner", &[ConnectionsResolve, ConnectionsTest]),
    ("viewer", &[ConnectionsRead, CredentialsRead]),
    ("auditor", &[AuditRead]),
];

/// The permissions of a built-in role, `None` when `name` is not one.
pub fn builtin(name: &str) -> Option<PermissionSet> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, perms)| perms.iter().copied().collect())
}

/// Whether a permission may be part of a workspace role (instance administration is not).
pub fn grantable(p: Permission) -> bool {
    p != InstanceAdmin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roles_follow_least_privilege() {
        let admin = builtin("admin").unwrap();
        assert!(Permission::ALL
            .iter()
            .all(|p| admin.contains(*p) != (*p == InstanceAdmin)));
        let editor = builtin("editor").unwrap();
        assert!(editor.contains(CredentialsUse));
        assert!(!editor.contains(CredentialsWrite) && !editor.contains(ConnectionsReveal));
        let runner = builtin("runner").unwrap();
        assert_eq!(runner.iter().count(), 2);
        assert!(!builtin("viewer").unwrap().contains(ConnectionsReveal));
        assert!(builtin("owner").is_none());
        for (_, perms) in BUILTIN {
            assert!(perms.iter().all(|p| grantable(*p)));
        }
    }
}
