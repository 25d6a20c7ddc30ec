//! The store's behaviour, run once on SQLite and once on PostgreSQL: both backends must
//! agree. PostgreSQL comes from PATCHBAY_TEST_POSTGRES_URL (default: the local server on
//! 127.0.0.1:5432); each test gets a fresh database. Without a server the PostgreSQL half
//! prints SKIPPED, except under CI=true, where a missing peer is a failure.

mod common;
use common::{audit, dek, ev, version, workspace_and_project, write};

use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_store::{
    ConnectionFilter, CredentialLink, LinkChange, NewCredential, NewToken, Store, StoreError,
};
use serde_json::json;

on_both_backends!("store":
    workspaces_projects_and_names_are_unique,
    connection_lifecycle_with_versions_and_secrets,
    listing_filters_and_paginates_in_name_order,
    a_failed_change_writes_no_audit_record,
    tokens_are_found_by_hash_only,
    migrations_are_idempotent,
    connection_test_results_keep_the_newest_20_and_go_with_the_connection,
    the_server_checkpoints_the_sqlite_wal_itself,
);

/// SQLite leaves the write-ahead log to the server's checkpoint (every second, PASSIVE):
/// it copies every committed page into the database file when no reader holds it back.
/// PostgreSQL has nothing to do.
async fn the_server_checkpoints_the_sqlite_wal_itself(s: &Store) {
    workspace_and_project(s).await;
    match (s.backend(), s.checkpoint().await.unwrap()) {
        (patchbay_store::Backend::Sqlite, Some((log, done))) => {
            assert!(log > 0, "the writes are in the log");
            assert_eq!(done, log, "a checkpoint with no reader copies every page");
        }
        (patchbay_store::Backend::Postgres, None) => {}
        other => panic!("{other:?}"),
    }
}

async fn connection_test_results_keep_the_newest_20_and_go_with_the_connection(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let id = patchbay_store::new_id();
    s.create_connection(
        &id,
        &ws,
        &p,
        &write("probed", "redis"),
        &CredentialLink::None,
        &audit("create", &id),
    )
    .await
    .unwrap();
    for i in 0..23 {
        s.record_connection_test(
            &id,
            i % 2 == 0,
            &json!({"n": i}),
            &audit("connection.test", &id),
        )
        .await
        .unwrap();
    }
    let rows = s.connection_tests(&id).await.unwrap();
    assert_eq!(rows.len(), patchbay_store::TEST_HISTORY as usize);
    assert_eq!(rows[0].result["n"], 22);
    assert!(rows[0].ok);
    assert_eq!(rows[19].result["n"], 3);
    s.delete_connection(&id, &audit("delete", &id))
        .await
        .unwrap();
    assert!(s.connection_tests(&id).await.unwrap().is_empty());
}

async fn workspaces_projects_and_names_are_unique(s: &Store) {
    let (ws, _) = workspace_and_project(s).await;
    let w = s.get_workspace(&ws).await.unwrap();
    assert_eq!(s.get_workspace_by_name(&w.name).await.unwrap().id, ws);
    let again = s
        .create_workspace("other-id", &w.name, &dek("other-id"), &audit("ws", "x"))
        .await;
    assert!(matches!(again, Err(StoreError::NameTaken)));
    assert!(matches!(
        s.create_project(&ws, "default", &audit("p", "")).await,
        Err(StoreError::NameTaken)
    ));
    let key = s.active_data_key(&ws).await.unwrap();
    assert_eq!(key.wrapped.ciphertext, vec![2; 48]);
    assert_eq!(s.data_key(&key.id).await.unwrap().workspace_id, ws);
    assert_eq!(s.list_projects(&ws).await.unwrap().len(), 1);
    assert!(matches!(
        s.get_project("nope").await,
        Err(StoreError::NotFound)
    ));
}

fn owned(id: &str, ws: &str, conn: &str, fields: &[(&str, u8)]) -> NewCredential {
    NewCredential {
        id: id.into(),
        workspace_id: ws.into(),
        name: format!("connection/{conn}"),
        kind: "inline".into(),
        description: String::new(),
        owner_connection_id: Some(conn.into()),
        external: None,
        public_fields: Default::default(),
        secrets: fields
            .iter()
            .map(|(f, b)| (f.to_string(), ev(*b)))
            .collect(),
        created_by: "test".into(),
    }
}

async fn connection_lifecycle_with_versions_and_secrets(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    // Ciphertext must name an existing data key (migration 0003 triggers): `ev` names dek-x.
    s.create_workspace("x", "ws-x", &dek("x"), &audit("ws", "x"))
        .await
        .unwrap();
    let id = patchbay_store::new_id();
    let cred = patchbay_store::new_id();
    // The material generation (migration 0013) moves with every committed change a resolve
    // reads, and only then.
    let generation = || async { s.material_generation().await.unwrap() };
    let g0 = generation().await;
    let c = s
        .create_connection(
            &id,
            &ws,
            &p,
            &write("prod-pg", "postgresql"),
            &CredentialLink::Owned(Box::new(owned(&cred, &ws, &id, &[("password", 7)]))),
            &audit("create", &id),
        )
        .await
        .unwrap();
    assert_eq!(
        (c.version, c.secrets_set.clone()),
        (1, vec!["password".to_string()])
    );
    let g1 = generation().await;
    assert!(g1 > g0, "create: {g0} -> {g1}");
    let link = c.credential.clone().unwrap();
    assert!(link.owned);
    assert_eq!((link.id.as_str(), link.current_version), (cred.as_str(), 1));
    let dup = s
        .create_connection(
            "id2",
            &ws,
            &p,
            &write("prod-pg", "mysql"),
            &CredentialLink::None,
            &audit("create", "id2"),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::NameTaken)));
    assert_eq!(generation().await, g1, "a refused create moves nothing");
    assert_eq!(
        s.get_connection_by_name(&p, "prod-pg").await.unwrap().id,
        id
    );

    // Changing an inline secret is a rotation of the connection's own credential.
    let mut w = write("prod-pg", "postgresql");
    w.tags = vec!["a".into(), "b".into()];
    w.environment = Some("prod".into());
    let mut v2 = version(2, 9, patchbay_store::now_millis() + 60_000);
    v2.secrets = vec![("private_key".into(), ev(9))];
    let c = s
        .update_connection(
            &id,
            1,
            &w,
            &LinkChange::RotateOwned {
                credential_id: cred.clone(),
                version: v2,
            },
            &audit("update", &id),
        )
        .await
        .unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(c.secrets_set, vec!["private_key".to_string()]);
    let g2 = generation().await;
    assert!(g2 > g1, "update: {g1} -> {g2}");
    assert_eq!(c.tags, vec!["a".to_string(), "b".to_string()]);
    let secrets = s.credential_secrets(&cred, 2).await.unwrap();
    assert_eq!(secrets["private_key"].nonce, vec![9; 12]);
    assert_eq!(s.credential_secrets(&cred, 1).await.unwrap().len(), 1);

    let stale = s
        .update_connection(&id, 1, &w, &LinkChange::Keep, &audit("update", &id))
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::VersionConflict { current: 2 })
    ));
    let missing = s
        .update_connection("nope", 1, &w, &LinkChange::Keep, &audit("update", "nope"))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
    assert_eq!(generation().await, g2, "refused updates move nothing");

    // Deleting the connection deletes its own credential with every version.
    s.delete_connection(&id, &audit("delete", &id))
        .await
        .unwrap();
    let g3 = generation().await;
    assert!(g3 > g2, "delete: {g2} -> {g3}");
    assert!(matches!(
        s.get_connection(&id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get_credential(&cred).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.credential_versions(&cred).await.unwrap().is_empty());
    assert!(matches!(
        s.delete_connection(&id, &audit("delete", &id)).await,
        Err(StoreError::NotFound)
    ));
}

async fn listing_filters_and_paginates_in_name_order(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    for i in 0..7 {
        let mut w = write(
            &format!("conn-{i}"),
            if i % 2 == 0 { "postgresql" } else { "mysql" },
        );
        w.environment = Some(if i < 3 { "prod" } else { "dev" }.into());
        w.tags = if i == 5 {
            vec!["team:x".into()]
        } else {
            vec![]
        };
        w.description = if i == 6 {
            "Finance 100%_data".into()
        } else {
            String::new()
        };
        let id = patchbay_store::new_id();
        s.create_connection(
            &id,
            &ws,
            &p,
            &w,
            &CredentialLink::None,
            &audit("create", &id),
        )
        .await
        .unwrap();
    }
    let all = ConnectionFilter::default();
    let page1 = s.list_connections(&p, &all, 3, None).await.unwrap();
    let names: Vec<_> = page1.items.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["conn-0", "conn-1", "conn-2"]);
    assert_eq!(page1.more_after.as_deref(), Some("conn-2"));
    let page3 = s
        .list_connections(&p, &all, 3, Some("conn-5"))
        .await
        .unwrap();
    assert_eq!(page3.items.len(), 1);
    assert_eq!(page3.more_after, None);

    let p = &p;
    let count = |f: ConnectionFilter| async move {
        s.list_connections(p, &f, 100, None)
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(
        count(ConnectionFilter {
            types: Some(vec!["mysql".into()]),
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        count(ConnectionFilter {
            types: Some(vec![]),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(ConnectionFilter {
            environment: Some("prod".into()),
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        count(ConnectionFilter {
            tag: Some("team:x".into()),
            ..Default::default()
        })
        .await,
        1
    );
    // q is a case-insensitive literal substring: % and _ are not wildcards.
    assert_eq!(
        count(ConnectionFilter {
            q: Some("FINANCE".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        count(ConnectionFilter {
            q: Some("100%_d".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        count(ConnectionFilter {
            q: Some("1%0".into()),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(ConnectionFilter {
            q: Some("conn-".into()),
            ..Default::default()
        })
        .await,
        7
    );
}

async fn a_failed_change_writes_no_audit_record(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let id = patchbay_store::new_id();
    s.create_connection(
        &id,
        &ws,
        &p,
        &write("c", "postgresql"),
        &CredentialLink::None,
        &audit("create", &id),
    )
    .await
    .unwrap();
    let _ = s
        .update_connection(
            &id,
            99,
            &write("c", "postgresql"),
            &LinkChange::Keep,
            &audit("update", &id),
        )
        .await;
    let _ = s
        .create_connection(
            "id2",
            &ws,
            &p,
            &write("c", "postgresql"),
            &CredentialLink::None,
            &audit("create", "id2"),
        )
        .await;
    let actions: Vec<String> = s
        .audit_for_target(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry.action)
        .collect();
    assert_eq!(actions, ["create"]);
    assert!(s.audit_for_target("id2").await.unwrap().is_empty());
    // and the rejected create left no row behind
    assert!(matches!(
        s.get_connection("id2").await,
        Err(StoreError::NotFound)
    ));
}

async fn tokens_are_found_by_hash_only(s: &Store) {
    let perms: PermissionSet = [Permission::ConnectionsRead].into_iter().collect();
    s.create_token(
        &NewToken {
            id: "t1".into(),
            name: "ci".into(),
            token_hash: vec![5; 32],
            workspace_id: None,
            permissions: perms,
            expires_at: None,
            kind: "personal".into(),
            created_by: None,
            user_id: None,
        },
        &audit("token.create", "t1"),
    )
    .await
    .unwrap();
    let t = s.find_token(&[5; 32]).await.unwrap().unwrap();
    assert_eq!((t.id.as_str(), t.permissions), ("t1", perms));
    assert!(s.find_token(&[6; 32]).await.unwrap().is_none());
    s.touch_token("t1").await.unwrap();
}

async fn migrations_are_idempotent(s: &Store) {
    let (ws, _) = workspace_and_project(s).await;
    // Running the migrator again (as every replica does at start) must change nothing.
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    assert!(s.count_workspaces().await.unwrap() >= 1);
    assert_eq!(s.get_workspace(&ws).await.unwrap().id, ws);
}
