//! Shared credentials in the store, on SQLite and on PostgreSQL (PATCHBAY_TEST_POSTGRES_URL;
//! SKIPPED without a server, a failure under CI=true): versions, rotation and grace,
//! deletion refused while used, and what is recorded of their use.

mod common;
use common::{audit, dek, shared, version, workspace_and_project, write};

use patchbay_store::{AuditEntry, CredentialLink, Store, StoreError};
use serde_json::json;

on_both_backends!("creds":
    shared_credentials_rotate_expire_and_refuse_deletion_while_used,
    a_last_use_is_rewritten_for_another_principal_at_once_and_for_the_same_after_a_second,
);

async fn shared_credentials_rotate_expire_and_refuse_deletion_while_used(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    // Ciphertext must name an existing data key (migration 0003): `ev` names dek-x.
    s.create_workspace("x", "ws-x", &dek("x"), &audit("ws", "x"))
        .await
        .unwrap();
    let cred = patchbay_store::new_id();
    let c = s
        .create_credential(&shared(&cred, &ws, "svc-login", 1), &audit("cred", &cred))
        .await
        .unwrap();
    assert_eq!((c.current_version, c.revision), (1, 1));
    assert_eq!(c.secret_fields, ["password"]);
    assert_eq!(c.public_fields["username"], "svc");
    assert!(matches!(
        s.create_credential(&shared("x", &ws, "svc-login", 1), &audit("cred", "x"))
            .await,
        Err(StoreError::NameTaken)
    ));
    let mut users = Vec::new();
    for (i, pin) in [None, None, Some(1)].into_iter().enumerate() {
        users.push(connect_shared(s, &ws, &p, &format!("user-{i}"), &cred, pin).await);
    }
    // Rotation: followers see version 2 at once; the pinned one keeps 1 until its grace ends.
    // Long enough that a loaded machine does not end it before the reads below; the
    // sweep is driven with explicit times.
    const GRACE_MS: i64 = 60_000;
    let now = patchbay_store::now_millis();
    let stale = s
        .rotate_credential(
            &cred,
            Some(7),
            &version(2, 2, now + GRACE_MS),
            &audit("rotate", &cred),
        )
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    let c = s
        .rotate_credential(
            &cred,
            Some(1),
            &version(2, 2, now + GRACE_MS),
            &audit("rotate", &cred),
        )
        .await
        .unwrap();
    assert_eq!((c.current_version, c.revision), (2, 2));
    let racing = s
        .rotate_credential(
            &cred,
            None,
            &version(2, 3, now + GRACE_MS),
            &audit("rotate", &cred),
        )
        .await;
    assert!(matches!(racing, Err(StoreError::VersionConflict { .. })));
    for (i, id) in users.iter().enumerate() {
        let conn = s.get_connection(id).await.unwrap();
        let link = conn.credential.unwrap();
        assert!(!link.owned);
        assert_eq!(link.effective_version(), if i == 2 { 1 } else { 2 });
    }
    assert_eq!(
        s.credential_secrets(&cred, 1).await.unwrap()["password"].nonce,
        vec![1; 12]
    );
    assert_eq!(
        s.credential_secrets(&cred, 2).await.unwrap()["password"].nonce,
        vec![2; 12]
    );
    assert!(matches!(
        s.revoke_credential_version(&cred, 2, &audit("revoke", &cred))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // The grace period ends: version 1 is destroyed, its ciphertext gone, the event recorded.
    assert!(s.destroy_expired_versions(now).await.unwrap().is_empty());
    let destroyed = s
        .destroy_expired_versions(now + GRACE_MS + 1)
        .await
        .unwrap();
    assert_eq!(destroyed, vec![(cred.clone(), 1)]);
    assert!(matches!(
        s.credential_secrets(&cred, 1).await,
        Err(StoreError::VersionUnavailable { version: 1, .. })
    ));
    let versions = s.credential_versions(&cred).await.unwrap();
    let states: Vec<(i64, &str)> = versions
        .iter()
        .map(|v| (v.version, v.state.as_str()))
        .collect();
    assert_eq!(states, [(2, "current"), (1, "destroyed")]);
    assert!(s
        .audit_for_target(&cred)
        .await
        .unwrap()
        .iter()
        .any(|r| r.entry.action == "credential.version.destroy"));

    // Revoking a previous version deletes its ciphertext at once.
    s.rotate_credential(
        &cred,
        None,
        &version(3, 3, now + 60_000),
        &audit("rotate", &cred),
    )
    .await
    .unwrap();
    s.revoke_credential_version(&cred, 2, &audit("revoke", &cred))
        .await
        .unwrap();
    assert!(s.credential_secrets(&cred, 2).await.is_err());

    // Usage lists every connection; deletion is refused while any uses it.
    s.record_credential_use(&cred, &users[0], "token:t1")
        .await
        .unwrap();
    let usage = s.credential_usage(&cred).await.unwrap();
    assert_eq!(usage.len(), 3);
    let first = usage.iter().find(|u| u.connection_id == users[0]).unwrap();
    assert_eq!(first.last_used_by.as_deref(), Some("token:t1"));
    match s.delete_credential(&cred, &audit("delete", &cred)).await {
        Err(StoreError::InUse(list)) => assert_eq!(list.len(), 3),
        other => panic!("expected InUse, got {other:?}"),
    }
    for id in &users {
        s.delete_connection(id, &audit("delete", id)).await.unwrap();
    }
    s.delete_credential(&cred, &audit("delete", &cred))
        .await
        .unwrap();
    assert!(matches!(
        s.get_credential(&cred).await,
        Err(StoreError::NotFound)
    ));
}

/// Resolve batches write a credential's last use through a connection at most once a
/// second for the same principal (LAST_USE_PRECISION_MS), at once for another one, and
/// after a reveal (written past the batches) whatever they remembered.
async fn a_last_use_is_rewritten_for_another_principal_at_once_and_for_the_same_after_a_second(
    s: &Store,
) {
    use patchbay_store::{UseRecord, LAST_USE_PRECISION_MS};
    let (ws, p) = workspace_and_project(s).await;
    // Ciphertext must name an existing data key (migration 0003): `ev` names dek-x.
    s.create_workspace("x", "ws-x", &dek("x"), &audit("ws", "x"))
        .await
        .unwrap();
    let cred = patchbay_store::new_id();
    s.create_credential(&shared(&cred, &ws, "svc", 1), &audit("cred", &cred))
        .await
        .unwrap();
    let conn = connect_shared(s, &ws, &p, "uses", &cred, None).await;
    let resolve = |by: &str| {
        vec![UseRecord {
            checked: None,
            credential: Some((cred.clone(), conn.clone())),
            principal: by.into(),
            audit: AuditEntry::system(
                by,
                "connection.resolve",
                Some(&ws),
                "connection",
                &conn,
                json!({}),
            ),
        }]
    };
    let last = || async {
        let usage = s.credential_usage(&cred).await.unwrap();
        let u = usage.into_iter().find(|u| u.connection_id == conn).unwrap();
        (u.last_used_at.unwrap(), u.last_used_by.unwrap())
    };
    // Batches on the pool's path first, then (the head known) in one statement.
    s.record_uses(&resolve("token:a")).await.unwrap();
    let (first_at, by) = last().await;
    assert_eq!(by, "token:a");
    s.record_uses(&resolve("token:b")).await.unwrap();
    assert_eq!(
        last().await.1,
        "token:b",
        "another principal is written at once"
    );
    s.record_uses(&resolve("token:a")).await.unwrap();
    let (a_at, by) = last().await;
    assert_eq!(by, "token:a");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.record_uses(&resolve("token:a")).await.unwrap();
    assert_eq!(
        last().await.0,
        a_at,
        "the same principal within the precision: not rewritten"
    );
    tokio::time::sleep(std::time::Duration::from_millis(
        LAST_USE_PRECISION_MS as u64 + 50,
    ))
    .await;
    s.record_uses(&resolve("token:a")).await.unwrap();
    let (later, by) = last().await;
    assert!(
        later >= a_at + LAST_USE_PRECISION_MS && later > first_at,
        "{later} {a_at}"
    );
    assert_eq!(by, "token:a");
    // A reveal writes its own last use; the next resolve is written even within a second.
    s.record_reveal(&cred, &conn, "user:u", &audit("connection.reveal", &conn))
        .await
        .unwrap();
    assert_eq!(last().await.1, "user:u");
    s.record_uses(&resolve("token:a")).await.unwrap();
    assert_eq!(last().await.1, "token:a");
    // Every resolve is in the audit log, written or not to the last use.
    let events = s.audit_for_target(&conn).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.entry.action == "connection.resolve")
            .count(),
        6
    );
}

/// A new postgresql connection named `name` using shared credential `cred` (pinned to a
/// version when `pin` is given); its id.
async fn connect_shared(
    s: &Store,
    ws: &str,
    project: &str,
    name: &str,
    cred: &str,
    pin: Option<i64>,
) -> String {
    let id = patchbay_store::new_id();
    s.create_connection(
        &id,
        ws,
        project,
        &write(name, "postgresql"),
        &CredentialLink::Shared {
            id: cred.to_owned(),
            pinned_version: pin,
        },
        &audit("create", &id),
    )
    .await
    .unwrap();
    id
}
