//! Permissions a principal can hold, per workspace. Roles (named sets) arrive with the
//! access-control work; for now tokens carry permission sets directly.

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

/// A set of permissions: one bit per [`Permission`], so that copying one and asking it are
/// free (every authenticated request does both). Iterates in [`Permission::ALL`]'s order.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionSet(u32);

const _: () = assert!(Permission::ALL.len() <= 32, "PermissionSet has 32 bits");

impl PermissionSet {
    pub fn all() -> Self {
        Permission::ALL.iter().copied().collect()
    }

    fn bit(p: Permission) -> u32 {
        1 << (p as u32)
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= Self::bit(p);
    }

    pub fn contains(&self, p: Permission) -> bool {
        self.0 & Self::bit(p) != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        let bits = self.0;
        Permission::ALL
            .iter()
            .copied()
            .filter(move |&p| bits & Self::bit(p) != 0)
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

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = Self::default();
        for p in iter {
            set.insert(p);
        }
        set
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
        // Every permission is its own member, in declaration order, and printed by name.
        for &p in Permission::ALL {
            let one: PermissionSet = [p].into_iter().collect();
            assert_eq!(one.iter().collect::<Vec<_>>(), vec![p]);
            assert!(all.contains(p));
        }
        assert_eq!(all.iter().collect::<Vec<_>>(), Permission::ALL);
        let mut two = PermissionSet::default();
        two.insert(Permission::InstanceAdmin);
        two.insert(Permission::ConnectionsRead);
        two.insert(Permission::InstanceAdmin);
        assert_eq!(two.to_storage(), "connections:read instance:admin");
        assert_eq!(format!("{two:?}"), "{ConnectionsRead, InstanceAdmin}");
    }
}
