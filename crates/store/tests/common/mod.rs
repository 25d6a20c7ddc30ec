//! What the store's test binaries share: a SQLite store in a temporary directory, a fresh
//! PostgreSQL database (PATCHBAY_TEST_POSTGRES_URL, default the local server; SKIPPED
//! without one, a failure under CI=true; dropped after the test), and
//! [`on_both_backends!`], which runs a file's `async fn name(&Store)` tests once on each.

#![allow(dead_code)]

use patchbay_crypto::{EncryptedValue, WrappedKey};
use patchbay_store::{
    AuditEntry, ConnectionWrite, NewCredential, NewVersion, Store, StoredDataKey,
};
use serde_json::json;

pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    (Store::connect(&url).await.unwrap(), dir)
}

mod test_database;
pub use test_database::TestDatabase;

/// A store on a fresh database, and the database (dropped with it), or None (SKIPPED) as
/// [`TestDatabase::create`].
pub async fn postgres(tag: &str) -> Option<(Store, TestDatabase)> {
    let db = TestDatabase::create(tag).await?;
    Some((Store::connect(&db.url).await.unwrap(), db))
}

/// `on_both_backends!("tag": test_a, test_b)`: `sqlite_backend::test_a` and
/// `postgres_backend::test_a` (database `pb_tag_…`) call the file's `test_a(&Store)`.
#[macro_export]
macro_rules! on_both_backends {
    ($tag:literal: $($name:ident),* $(,)?) => {
        mod sqlite_backend { $(
            #[tokio::test]
            async fn $name() {
                let (s, _dir) = $crate::common::sqlite().await;
                super::$name(&s).await;
            }
        )* }
        mod postgres_backend { $(
            #[tokio::test]
            async fn $name() {
                if let Some((s, _db)) = $crate::common::postgres($tag).await {
                    super::$name(&s).await;
                }
            }
        )* }
    };
}

/// A data key row for workspace `ws` (id `dek-<ws>`; the bytes are placeholders: the store
/// never unwraps it).
pub fn dek(ws: &str) -> StoredDataKey {
    StoredDataKey {
        id: format!("dek-{ws}"),
        workspace_id: ws.into(),
        wrapped: WrappedKey {
            kek_id: "file:abc".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 48],
        },
    }
}

/// A new workspace (with its data key) and its `default` project: (workspace id, project id).
pub async fn workspace_and_project(s: &Store) -> (String, String) {
    let ws = patchbay_store::new_id();
    let fixture = |action: &str, target: &str| {
        AuditEntry::system(
            "system:test",
            action,
            None,
            "test",
            target,
            serde_json::json!({}),
        )
    };
    s.create_workspace(
        &ws,
        &format!("ws-{}", &ws[30..]),
        &dek(&ws),
        &fixture("ws", &ws),
    )
    .await
    .unwrap();
    let p = s
        .create_project(&ws, "default", &fixture("p", ""))
        .await
        .unwrap();
    (ws, p.id)
}

/// A system event with no workspace (what a change's audit record needs in these tests).
pub fn audit(action: &str, target: &str) -> AuditEntry {
    AuditEntry::system("system:test", action, None, "test", target, json!({}))
}

/// Ciphertext placeholder under data key `dek-x` (create workspace `x` with [`dek`] first).
pub fn ev(b: u8) -> EncryptedValue {
    EncryptedValue {
        key_id: "dek-x".into(),
        nonce: vec![b; 12],
        ciphertext: vec![b; 20],
    }
}

/// A connection `name` of type `ty` with one setting.
pub fn write(name: &str, ty: &str) -> ConnectionWrite {
    ConnectionWrite {
        name: name.into(),
        connector_type: ty.into(),
        description: String::new(),
        environment: None,
        tags: vec![],
        settings: json!({"host": "h"}).as_object().unwrap().clone(),
        zone: None,
    }
}

/// A shared username/password credential whose password is `ev(b)`.
pub fn shared(id: &str, ws: &str, name: &str, b: u8) -> NewCredential {
    NewCredential {
        id: id.into(),
        workspace_id: ws.into(),
        name: name.into(),
        kind: "username_password".into(),
        description: String::new(),
        owner_connection_id: None,
        external: None,
        public_fields: json!({"username": "svc"}).as_object().unwrap().clone(),
        secrets: vec![("password".into(), ev(b))],
        created_by: "test".into(),
    }
}

/// Version `n` of a [`shared`] credential, password `ev(b)`.
pub fn version(n: i64, b: u8, grace_until: i64) -> NewVersion {
    NewVersion {
        version: n,
        public_fields: json!({"username": "svc"}).as_object().unwrap().clone(),
        secrets: vec![("password".into(), ev(b))],
        created_by: "test".into(),
        grace_until,
    }
}
