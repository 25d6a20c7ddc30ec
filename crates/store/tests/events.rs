//! Dependents, the event outbox and delivery leases, run once on SQLite and once on
//! PostgreSQL (PATCHBAY_TEST_POSTGRES_URL, default the local server; SKIPPED without one,
//! a failure under CI=true).

mod common;
use common::workspace_and_project;

use patchbay_crypto::EncryptedValue;
use patchbay_store::{
    AuditEntry, ConnectionWrite, CredentialLink, DeliveryResult, Dependent, Store, StoreError,
    WebhookRecord,
};
use serde_json::json;

on_both_backends!("events":
    a_cascade_deletes_only_when_the_dependents_are_the_ones_chosen,
    events_commit_with_their_audit_record_and_only_for_webhooks_that_want_them,
    a_claimed_delivery_is_leased_to_one_replica_until_it_is_recorded_or_expires,
    the_latest_delivery_of_each_webhook_comes_in_one_query,
);

fn entry(action: &str, ws: Option<&str>, kind: &str, target: &str) -> AuditEntry {
    AuditEntry::system("system:test", action, ws, kind, target, json!({"n": 1}))
}

async fn connection(s: &Store, ws: &str, project: &str, name: &str) -> String {
    let id = patchbay_store::new_id();
    let w = ConnectionWrite {
        name: name.into(),
        connector_type: "redis".into(),
        description: String::new(),
        environment: None,
        tags: vec![],
        settings: json!({"host": "h"}).as_object().unwrap().clone(),
        zone: None,
    };
    s.create_connection(
        &id,
        ws,
        project,
        &w,
        &CredentialLink::None,
        &entry("connection.create", Some(ws), "connection", &id),
    )
    .await
    .unwrap();
    id
}

fn dependent(conn: &str, kind: &str, reference: &str) -> Dependent {
    Dependent {
        connection_id: conn.into(),
        kind: kind.into(),
        reference: reference.into(),
        name: format!("{kind} {reference}"),
        url: None,
        registered_by: "token:t".into(),
        created_at: 0,
        updated_at: 0,
    }
}

async fn a_cascade_deletes_only_when_the_dependents_are_the_ones_chosen(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let conn = connection(s, &ws, &p, "used").await;
    let reg = entry("dependent.register", Some(&ws), "connection", &conn);
    for (k, r) in [("pipeline", "etl-1"), ("dataset", "sales")] {
        s.register_dependent(&dependent(&conn, k, r), &reg)
            .await
            .unwrap();
    }
    assert_eq!(s.get_connection(&conn).await.unwrap().dependents_count, 2);
    let del = entry("connection.delete", Some(&ws), "connection", &conn);
    // The caller saw only one: nothing happens, the real list comes back.
    let only = vec![("pipeline".to_owned(), "etl-1".to_owned())];
    match s.delete_connection_cascade(&conn, &only, &del, &[]).await {
        Err(StoreError::DependentsChanged(list)) => {
            let refs: Vec<&str> = list.iter().map(|d| d.reference.as_str()).collect();
            assert_eq!(refs, ["sales", "etl-1"]);
        }
        other => panic!("expected DependentsChanged, got {other:?}"),
    }
    assert_eq!(s.list_dependents(&conn).await.unwrap().len(), 2);
    let before = s.audit_for_target(&conn).await.unwrap().len();
    let both = vec![
        ("dataset".to_owned(), "sales".to_owned()),
        ("pipeline".to_owned(), "etl-1".to_owned()),
    ];
    let cascaded = [
        entry("dependent.cascade_delete", Some(&ws), "connection", &conn),
        entry("dependent.cascade_delete", Some(&ws), "connection", &conn),
    ];
    s.delete_connection_cascade(&conn, &both, &del, &cascaded)
        .await
        .unwrap();
    assert!(matches!(
        s.get_connection(&conn).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.list_dependents(&conn).await.unwrap().is_empty());
    assert_eq!(s.audit_for_target(&conn).await.unwrap().len(), before + 3);
    // Registering on a deleted connection is NotFound, not an orphan row.
    assert!(matches!(
        s.register_dependent(&dependent(&conn, "pipeline", "late"), &reg)
            .await,
        Err(StoreError::NotFound)
    ));
}

fn webhook(ws: &str, events: &[&str], enabled: bool) -> WebhookRecord {
    WebhookRecord {
        id: patchbay_store::new_id(),
        workspace_id: ws.into(),
        description: String::new(),
        url: "http://127.0.0.1:9/hook".into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        enabled,
        secret: EncryptedValue {
            key_id: format!("dek-{ws}"),
            nonce: vec![3; 12],
            ciphertext: vec![4; 40],
        },
        created_by: "token:t".into(),
        version: 1,
        created_at: patchbay_store::now_millis(),
        updated_at: patchbay_store::now_millis(),
    }
}

async fn events_commit_with_their_audit_record_and_only_for_webhooks_that_want_them(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    // No webhook: a change stores no event.
    connection(s, &ws, &p, "before-any-webhook").await;
    assert!(s
        .claim_deliveries("a", 60_000, 100)
        .await
        .unwrap()
        .is_empty());
    let all = webhook(&ws, &[], true);
    let rotations = webhook(&ws, &["credential.rotated"], true);
    let off = webhook(&ws, &[], false);
    for w in [&all, &rotations, &off] {
        s.create_webhook(w, &entry("webhook.create", Some(&ws), "webhook", &w.id))
            .await
            .unwrap();
    }
    // A webhook's key must exist (trigger on SQLite, foreign key on PostgreSQL).
    let mut orphan = webhook(&ws, &[], true);
    orphan.secret.key_id = "dek-missing".into();
    assert!(s
        .create_webhook(
            &orphan,
            &entry("webhook.create", Some(&ws), "webhook", &orphan.id)
        )
        .await
        .is_err());
    let conn = connection(s, &ws, &p, "watched").await;
    // A failed change (name taken) commits neither its audit record nor an event.
    let dup = ConnectionWrite {
        name: "watched".into(),
        connector_type: "redis".into(),
        description: String::new(),
        environment: None,
        tags: vec![],
        settings: Default::default(),
        zone: None,
    };
    let id2 = patchbay_store::new_id();
    assert!(matches!(
        s.create_connection(
            &id2,
            &ws,
            &p,
            &dup,
            &CredentialLink::None,
            &entry("connection.create", Some(&ws), "connection", &id2)
        )
        .await,
        Err(StoreError::NameTaken)
    ));
    // Not an event kind: nothing queued.
    s.record_audit(&entry("connection.reveal", Some(&ws), "connection", &conn))
        .await
        .unwrap();
    let claimed = s.claim_deliveries("a", 60_000, 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    let d = &claimed[0];
    assert_eq!(
        (d.webhook_id.as_str(), d.kind.as_str()),
        (all.id.as_str(), "connection.created")
    );
    let body: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
    assert_eq!(body["id"], d.event_id.as_str());
    assert_eq!(body["kind"], "connection.created");
    assert_eq!(body["workspace_id"], ws.as_str());
    assert_eq!(body["data"]["target"]["id"], conn.as_str());
    assert_eq!(body["data"]["details"], json!({"n": 1}));
    assert_eq!(d.secret.ciphertext, vec![4; 40]);
    // credential.rotated reaches both the catch-all and the filtered webhook.
    s.record_audit(&entry("credential.rotate", Some(&ws), "credential", "c1"))
        .await
        .unwrap();
    let mut hooks: Vec<String> = s
        .claim_deliveries("a", 60_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.webhook_id)
        .collect();
    hooks.sort();
    let mut want = vec![all.id.clone(), rotations.id.clone()];
    want.sort();
    assert_eq!(hooks, want);
    // Deleting a webhook drops its deliveries.
    s.delete_webhook(
        &all.id,
        &entry("webhook.delete", Some(&ws), "webhook", &all.id),
    )
    .await
    .unwrap();
    assert!(s.list_deliveries(&all.id, 10).await.unwrap().is_empty());
    assert_eq!(s.list_deliveries(&rotations.id, 10).await.unwrap().len(), 1);
}

async fn the_latest_delivery_of_each_webhook_comes_in_one_query(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let all = webhook(&ws, &[], true);
    let rotations = webhook(&ws, &["credential.rotated"], true);
    let quiet = webhook(&ws, &["dependent.cascade_deleted"], true);
    for w in [&all, &rotations, &quiet] {
        s.create_webhook(w, &entry("webhook.create", Some(&ws), "webhook", &w.id))
            .await
            .unwrap();
    }
    connection(s, &ws, &p, "one").await;
    connection(s, &ws, &p, "two").await;
    s.record_audit(&entry("credential.rotate", Some(&ws), "credential", "c1"))
        .await
        .unwrap();
    let ids = vec![all.id.clone(), rotations.id.clone(), quiet.id.clone()];
    let latest = s.latest_deliveries(&ids).await.unwrap();
    assert_eq!(latest.len(), 2, "a webhook without deliveries is absent");
    assert!(!latest.contains_key(&quiet.id));
    for w in [&all, &rotations] {
        let newest = &s.list_deliveries(&w.id, 1).await.unwrap()[0];
        assert_eq!(latest[&w.id].event_id, newest.event_id, "{}", w.id);
        assert_eq!(latest[&w.id].kind, "credential.rotated");
        assert_eq!(latest[&w.id].state, "pending");
    }
    assert_eq!(s.list_deliveries(&all.id, 10).await.unwrap().len(), 3);
    assert!(s.latest_deliveries(&[]).await.unwrap().is_empty());
}

async fn a_claimed_delivery_is_leased_to_one_replica_until_it_is_recorded_or_expires(s: &Store) {
    let (ws, p) = workspace_and_project(s).await;
    let w = webhook(&ws, &[], true);
    s.create_webhook(&w, &entry("webhook.create", Some(&ws), "webhook", &w.id))
        .await
        .unwrap();
    connection(s, &ws, &p, "leased").await;
    let a = s.claim_deliveries("replica-a", 60_000, 10).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(s
        .claim_deliveries("replica-b", 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    let retry = DeliveryResult {
        status: Some(500),
        error: Some("HTTP 500".into()),
        delivered: false,
        next_attempt_at: Some(patchbay_store::now_millis() - 1),
    };
    // Only the holder records an attempt.
    assert!(!s
        .finish_delivery(&a[0].event_id, &w.id, "replica-b", &retry)
        .await
        .unwrap());
    assert!(s
        .finish_delivery(&a[0].event_id, &w.id, "replica-a", &retry)
        .await
        .unwrap());
    // Due again: the next claim (any replica) gets it, one attempt recorded.
    let b = s.claim_deliveries("replica-b", 1, 10).await.unwrap();
    assert_eq!((b.len(), b[0].attempts), (1, 1));
    // B's lease (1 ms) runs out: A may take it over (at least once), and B's late result
    // is refused.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let a2 = s.claim_deliveries("replica-a", 60_000, 10).await.unwrap();
    assert_eq!(a2.len(), 1);
    let ok = DeliveryResult {
        status: Some(200),
        error: None,
        delivered: true,
        next_attempt_at: None,
    };
    assert!(!s
        .finish_delivery(&b[0].event_id, &w.id, "replica-b", &ok)
        .await
        .unwrap());
    assert!(s
        .finish_delivery(&a2[0].event_id, &w.id, "replica-a", &ok)
        .await
        .unwrap());
    let listed = s.list_deliveries(&w.id, 10).await.unwrap();
    assert_eq!(
        (
            listed[0].state.as_str(),
            listed[0].attempts,
            listed[0].last_status
        ),
        ("delivered", 2, Some(200))
    );
    assert!(s
        .claim_deliveries("replica-b", 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    // Finished deliveries are pruned after retention, their events with them.
    assert_eq!(
        s.prune_events(patchbay_store::now_millis() + 1)
            .await
            .unwrap(),
        1
    );
    assert!(s.list_deliveries(&w.id, 10).await.unwrap().is_empty());
}

/// Several replicas (separate pools) claiming at once on PostgreSQL never get the same
/// delivery.
#[tokio::test]
async fn concurrent_claims_from_several_replicas_never_overlap_on_postgres() {
    let Some(db) = common::TestDatabase::create("events").await else {
        return;
    };
    let s = Store::connect(&db.url).await.unwrap();
    let (ws, p) = workspace_and_project(&s).await;
    let w = webhook(&ws, &[], true);
    s.create_webhook(&w, &entry("webhook.create", Some(&ws), "webhook", &w.id))
        .await
        .unwrap();
    for i in 0..60 {
        connection(&s, &ws, &p, &format!("c{i}")).await;
    }
    let mut tasks = vec![];
    for r in 0..6 {
        let replica = Store::connect(&db.url).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            loop {
                let c = replica
                    .claim_deliveries(&format!("replica-{r}"), 60_000, 4)
                    .await
                    .unwrap();
                if c.is_empty() {
                    break;
                }
                got.extend(c.into_iter().map(|d| d.event_id));
            }
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (60, 60), "a delivery was claimed twice");
}
