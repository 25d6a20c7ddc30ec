//! Users (local accounts), workspace memberships and custom workspace roles.

use sqlx::Row;

use crate::tokens::insert_audit;
use crate::{map_unique, now_millis, AuditEntry, Result, Store, StoreError};

pub struct NewUser {
    pub id: String,
    pub username: String,
    /// A PHC string (argon2id); the store never sees a password.
    pub password_hash: String,
    pub is_admin: bool,
}

#[derive(Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("is_admin", &self.is_admin)
            .finish_non_exhaustive()
    }
}

/// One membership: a user's role in a workspace. `custom_permissions` holds the stored
/// permissions when `role` names a custom role of that workspace.
#[derive(Debug, Clone)]
pub struct Membership {
    pub workspace_id: String,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub custom_permissions: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct RoleRecord {
    pub workspace_id: String,
    pub name: String,
    pub permissions: String,
    pub description: String,
    pub created_at: i64,
}

const USER_COLUMNS: &str = "id, username, password_hash, is_admin, created_at, disabled_at";

fn user(row: &sqlx::any::AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

const MEMBER_SELECT: &str = "SELECT m.workspace_id, m.user_id, u.username, m.role, \
    r.permissions AS custom_permissions, m.created_at, m.updated_at \
    FROM workspace_members m JOIN users u ON u.id = m.user_id \
    LEFT JOIN workspace_roles r ON r.workspace_id = m.workspace_id AND r.name = m.role";

fn membership(row: &sqlx::any::AnyRow) -> Result<Membership> {
    Ok(Membership {
        workspace_id: row.try_get("workspace_id")?,
        user_id: row.try_get("user_id")?,
        username: row.try_get("username")?,
        role: row.try_get("role")?,
        custom_permissions: row.try_get("custom_permissions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn role(row: &sqlx::any::AnyRow) -> Result<RoleRecord> {
    Ok(RoleRecord {
        workspace_id: row.try_get("workspace_id")?,
        name: row.try_get("name")?,
        permissions: row.try_get("permissions")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn create_user(&self, u: &NewUser, audit: &AuditEntry) -> Result<UserRecord> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, is_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(i64::from(u.is_admin))
        .bind(now_millis())
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.get_user(&u.id).await
    }

    pub async fn get_user(&self, id: &str) -> Result<UserRecord> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        user(&row)
    }

    pub async fn get_user_by_name(&self, username: &str) -> Result<UserRecord> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        user(&row)
    }

    /// The usernames of these user ids, in one query (ids that name no user are left out).
    pub async fn usernames(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        // Bounded batches keep the statement under every backend's bind-parameter limit.
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, username FROM users WHERE id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("id")?, r.try_get("username")?);
            }
        }
        Ok(out)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user)
        .collect()
    }

    /// Sets a user's role in a workspace (adds the member or changes the role). Returns the
    /// previous role, `None` when the user was not a member.
    pub async fn put_member(
        &self,
        workspace_id: &str,
        user_id: &str,
        role: &str,
        audit: &AuditEntry,
    ) -> Result<Option<String>> {
        let now = now_millis();
        let mut tx = self.write().await?;
        let previous: Option<(String,)> = sqlx::query_as(
            "SELECT role FROM workspace_members WHERE workspace_id = $1 AND user_id = $2",
        )
        .bind(workspace_id)
        .bind(user_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        if previous.is_some() {
            sqlx::query(
                "UPDATE workspace_members SET role = $1, updated_at = $2 \
                 WHERE workspace_id = $3 AND user_id = $4",
            )
            .bind(role)
            .bind(now)
            .bind(workspace_id)
            .bind(user_id)
            .execute(&mut *tx.tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO workspace_members (workspace_id, user_id, role, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(workspace_id)
            .bind(user_id)
            .bind(role)
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.auth_changed();
        Ok(previous.map(|(r,)| r))
    }

    pub async fn delete_member(
        &self,
        workspace_id: &str,
        user_id: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let done =
            sqlx::query("DELETE FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")
                .bind(workspace_id)
                .bind(user_id)
                .execute(&mut *tx.tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.auth_changed();
        Ok(())
    }

    pub async fn list_members(&self, workspace_id: &str) -> Result<Vec<Membership>> {
        sqlx::query(&format!(
            "{MEMBER_SELECT} WHERE m.workspace_id = $1 ORDER BY u.username"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(membership)
        .collect()
    }

    /// Every membership of a user: what authentication turns into per-workspace grants.
    pub async fn memberships_of(&self, user_id: &str) -> Result<Vec<Membership>> {
        sqlx::query(&format!("{MEMBER_SELECT} WHERE m.user_id = $1"))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(membership)
            .collect()
    }

    pub async fn create_role(&self, r: &RoleRecord, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO workspace_roles (workspace_id, name, permissions, description, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&r.workspace_id)
        .bind(&r.name)
        .bind(&r.permissions)
        .bind(&r.description)
        .bind(r.created_at)
        .execute(&mut *tx.tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.auth_changed();
        Ok(())
    }

    pub async fn list_roles(&self, workspace_id: &str) -> Result<Vec<RoleRecord>> {
        sqlx::query(
            "SELECT workspace_id, name, permissions, description, created_at \
             FROM workspace_roles WHERE workspace_id = $1 ORDER BY name",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(role)
        .collect()
    }
}

/// A browser session (never its secret).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Store {
    pub async fn create_session(
        &self,
        s: &SessionRecord,
        secret_hash: &[u8],
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, secret_hash, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id)
        .bind(secret_hash.to_vec())
        .bind(&s.user_id)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *tx.tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }

    /// The unexpired session whose secret hashes to `secret_hash`.
    pub async fn find_session(&self, secret_hash: &[u8]) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT id, user_id, created_at, expires_at FROM sessions \
             WHERE secret_hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash.to_vec())
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRecord {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Ends a session (sign-out); expired ones go with it.
    pub async fn delete_session(&self, id: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM sessions WHERE id = $1 OR expires_at <= $2")
            .bind(id)
            .bind(now_millis())
            .execute(&mut *tx.tx)
            .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await
    }
}
