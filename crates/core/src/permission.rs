//! Permissions a principal can hold, per workspace. Roles (named sets) arrive with the
//! access-control work; for now tokens carry permission sets directly.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

macro_rules! permissions {
    ($( $variant:ident => $name:literal ),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Permission { $($variant),* }
        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];
            pub fn as_str(self) -> &'static str { match self { $(Permission::$variant => $name),* } }
        }
        impl FromStr for Permission {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($name => Ok(Permission::$variant),)* _ => Err(format!("unknown permission {s}")) }
            }
        }
    };
}

permissions! {
    ConnectionsRead => "connections:read",
    ConnectionsWrite => "connections:write",
    ConnectionsTest => "connections:test",
    ConnectionsResolve => "connections:resolve",
    ConnectionsReveal => "connections:reveal",
    CredentialsRead => "credentials:read",
    CredentialsUse => "credentials:use",
    CredentialsWrite => "credentials:write",
    MembersManage => "members:manage",
    AuditRead => "audit:read",
    WorkspaceAdmin => "workspace:admin",
    // Instance-wide administration: create workspaces, see every workspace.
    InstanceAdmin => "instance:admin",
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    pub fn all() -> Self {
        Self(Permission::ALL.iter().copied().collect())
    }

    pub fn insert(&mut self, p: Permission) {
        self.0.insert(p);
    }

    pub fn contains(&self, p: Permission) -> bool {
        self.0.contains(&p)
    }

    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }

    /// Space-separated, as stored.
    pub fn to_storage(&self) -> String {
        self.iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn from_storage(s: &str) -> Result<Self, String> {
        s.split_whitespace().map(Permission::from_str).collect()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_round_trip_and_unknown_names_rejected() {
        let all = PermissionSet::all();
        assert_eq!(PermissionSet::from_storage(&all.to_storage()).unwrap(), all);
        assert!(PermissionSet::from_storage("connections:read bogus").is_err());
        let some: PermissionSet = [Permission::ConnectionsRead].into_iter().collect();
        assert!(some.contains(Permission::ConnectionsRead));
        assert!(!some.contains(Permission::ConnectionsReveal));
    }
}
