//! What the web UI's pages read in one query each: the audit log newest first with a
//! cursor, the last test of a page of connections, usernames by id. Run once on SQLite and
//! once on PostgreSQL (PATCHBAY_TEST_POSTGRES_URL, default the local server; SKIPPED
//! without one, a failure under CI=true).

mod common;
use common::workspace_and_project;

use patchbay_store::{AuditEntry, AuditFilter, ConnectionWrite, CredentialLink, NewUser, Store};
use serde_json::json;

on_both_backends!("pages":
    the_audit_log_pages_newest_first_with_a_cursor,
    the_last_test_of_many_connections_comes_in_one_query,
    usernames_are_looked_up_by_id_in_one_query,
);

fn audit(action: &str, ws: Option<&str>, target: &str) -> AuditEntry {
    AuditEntry::system("system:test", action, ws, "test", target, json!({}))
}

async fn the_audit_log_pages_newest_first_with_a_cursor(s: &Store) {
    let (ws, _) = workspace_and_project(s).await;
    let (other, _) = workspace_and_project(s).await;
    for i in 0..7 {
        s.record_audit(&audit("page.test", Some(&ws), &format!("t{i}")))
            .await
            .unwrap();
        // Another workspace's events interleave and must not show.
        s.record_audit(&audit("page.test", Some(&other), "x"))
            .await
            .unwrap();
    }
    let mut f = AuditFilter {
        workspace_id: Some(ws.clone()),
        action: Some("page.test".into()),
        newest_first: true,
        ..Default::default()
    };
    let first = s.list_audit(&f, 3).await.unwrap();
    let targets = |rows: &[patchbay_store::AuditRecord]| -> Vec<String> {
        rows.iter().map(|r| r.entry.target_id.clone()).collect()
    };
    assert_eq!(targets(&first), ["t6", "t5", "t4"]);
    assert!(first.windows(2).all(|w| w[0].seq > w[1].seq));
    f.before_seq = Some(first.last().unwrap().seq);
    let second = s.list_audit(&f, 3).await.unwrap();
    assert_eq!(targets(&second), ["t3", "t2", "t1"]);
    f.before_seq = Some(second.last().unwrap().seq);
    assert_eq!(targets(&s.list_audit(&f, 3).await.unwrap()), ["t0"]);
    // The default order is still the chain's, oldest first.
    let asc = AuditFilter {
        workspace_id: Some(ws.clone()),
        action: Some("page.test".into()),
        ..Default::default()
    };
    assert_eq!(targets(&s.list_audit(&asc, 2).await.unwrap()), ["t0", "t1"]);
    // Going forward from a position, in chain order.
    let newer = AuditFilter {
        after_seq: Some(second[0].seq),
        ..asc
    };
    assert_eq!(
        targets(&s.list_audit(&newer, 10).await.unwrap()),
        ["t4", "t5", "t6"]
    );
}

fn write(name: &str) -> ConnectionWrite {
    ConnectionWrite {
        name: name.into(),
        connector_type: "redis".into(),
        description: String::new(),
        environment: None,
        tags: vec![],
        settings: json!({"host": "h"}).as_object().unwrap().clone(),
        zone: None,
    }
}

async fn the_last_test_of_many_connections_comes_in_one_query(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let mut ids = vec![];
    for name in ["a", "b", "never"] {
        let id = patchbay_store::new_id();
        s.create_connection(
            &id,
            &ws,
            &p,
            &write(name),
            &CredentialLink::None,
            &audit("create", Some(&ws), &id),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    for (conn, n) in [(&ids[0], 3), (&ids[1], 2)] {
        for i in 0..n {
            s.record_connection_test(
                conn,
                i % 2 == 0,
                &json!({"n": i}),
                &audit("connection.test", Some(&ws), conn),
            )
            .await
            .unwrap();
        }
    }
    let last = s.last_connection_tests(&ids).await.unwrap();
    assert_eq!(last.len(), 2, "a connection never tested has no entry");
    assert_eq!(last[&ids[0]].result["n"], 2);
    assert!(last[&ids[0]].ok);
    assert_eq!(last[&ids[1]].result["n"], 1);
    assert!(!last[&ids[1]].ok);
    assert!(!last.contains_key(&ids[2]));
    // Each agrees with the connection's own history.
    for id in &ids[..2] {
        let newest = &s.connection_tests(id).await.unwrap()[0];
        assert_eq!(newest.result, last[id].result);
        assert_eq!(newest.at, last[id].at);
    }
    assert!(s.last_connection_tests(&[]).await.unwrap().is_empty());
}

async fn usernames_are_looked_up_by_id_in_one_query(s: &Store) {
    let mut ids = vec![];
    for name in ["ada", "grace"] {
        let id = patchbay_store::new_id();
        s.create_user(
            &NewUser {
                id: id.clone(),
                username: name.into(),
                password_hash: "$argon2id$placeholder".into(),
                is_admin: false,
            },
            &audit("user.create", None, &id),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids.push("no-such-user".into());
    let names = s.usernames(&ids).await.unwrap();
    assert_eq!(names.len(), 2);
    assert_eq!(names[&ids[0]], "ada");
    assert_eq!(names[&ids[1]], "grace");
    assert!(s.usernames(&[]).await.unwrap().is_empty());
}
