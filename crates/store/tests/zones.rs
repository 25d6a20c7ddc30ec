//! Zones, agents and the agent job queue on SQLite and PostgreSQL: a job goes to exactly
//! one agent, only its claimer reports it, and a zone is not deleted under its connections.
//! PostgreSQL as in tests/store.rs (PATCHBAY_TEST_POSTGRES_URL; SKIPPED without a server,
//! a failure under CI=true).

mod common;

use patchbay_crypto::WrappedKey;
use patchbay_store::{
    now_millis, AgentJob, AuditEntry, ConnectionWrite, CredentialLink, NewToken, Store, StoreError,
    StoredDataKey, ZoneRecord,
};
use serde_json::json;

fn audit(action: &str) -> AuditEntry {
    AuditEntry::system("system:test", action, None, "test", "t", json!({}))
}

/// A workspace, a zone `z1`, two agents of it and a connection naming it.
struct Fixture {
    ws: String,
    zone: ZoneRecord,
    agents: [String; 2],
    tokens: [String; 2],
    connection: String,
}

async fn fixture(s: &Store) -> Fixture {
    let ws = patchbay_store::new_id();
    let dek = StoredDataKey {
        id: format!("dek-{ws}"),
        workspace_id: ws.clone(),
        wrapped: WrappedKey {
            kek_id: "file:abc".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 48],
        },
    };
    s.create_workspace(&ws, &format!("ws-{}", &ws[30..]), &dek, &audit("ws"))
        .await
        .unwrap();
    let project = s.create_project(&ws, "default", &audit("p")).await.unwrap();
    let zone = ZoneRecord {
        id: patchbay_store::new_id(),
        workspace_id: ws.clone(),
        name: "z1".into(),
        description: String::new(),
        created_at: now_millis(),
    };
    s.create_zone(&zone, &audit("zone.create")).await.unwrap();
    let mut agents = [String::new(), String::new()];
    let mut tokens = [String::new(), String::new()];
    for i in 0..2 {
        agents[i] = patchbay_store::new_id();
        tokens[i] = patchbay_store::new_id();
        let t = NewToken {
            id: tokens[i].clone(),
            name: format!("agent-{i}"),
            token_hash: tokens[i].as_bytes().to_vec(),
            workspace_id: Some(ws.clone()),
            permissions: Default::default(),
            expires_at: None,
            kind: "agent".into(),
            created_by: None,
            user_id: None,
        };
        s.create_agent(&t, &agents[i], &zone.id, &format!("a{i}"), &audit("agent"))
            .await
            .unwrap();
    }
    let connection = patchbay_store::new_id();
    s.create_connection(
        &connection,
        &ws,
        &project.id,
        &ConnectionWrite {
            name: "zoned".into(),
            connector_type: "postgresql".into(),
            description: String::new(),
            environment: None,
            tags: vec![],
            settings: Default::default(),
            zone: Some("z1".into()),
        },
        &CredentialLink::None,
        &audit("connection.create"),
    )
    .await
    .unwrap();
    Fixture {
        ws,
        zone,
        agents,
        tokens,
        connection,
    }
}

async fn a_job_goes_to_one_agent_and_only_its_claimer_reports_it(s: &Store) {
    let f = fixture(s).await;
    let dup = ZoneRecord {
        id: patchbay_store::new_id(),
        ..f.zone.clone()
    };
    assert!(matches!(
        s.create_zone(&dup, &audit("zone.create")).await,
        Err(StoreError::NameTaken)
    ));
    assert_eq!(
        s.get_connection(&f.connection)
            .await
            .unwrap()
            .zone
            .as_deref(),
        Some("z1")
    );
    let job = AgentJob {
        id: patchbay_store::new_id(),
        zone_id: f.zone.id.clone(),
        connection_id: f.connection.clone(),
        requested_by: "token:x".into(),
        request_id: None,
        source_address: None,
        status: "queued".into(),
        created_at: now_millis(),
        deadline: now_millis() + 60_000,
        claimed_by: None,
        claimed_at: None,
        result: None,
    };
    s.enqueue_job(&job).await.unwrap();
    assert_eq!(s.queued_jobs(&f.zone.id, 8).await.unwrap().len(), 1);
    // Both agents race for it; the compare-and-set gives it to exactly one.
    let entry = audit("agent.material");
    let (a, b) = tokio::join!(
        s.claim_job(&job.id, &f.agents[0], None, &entry),
        s.claim_job(&job.id, &f.agents[1], None, &entry),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one claim wins: {a} {b}");
    let (winner, loser) = if a { (0, 1) } else { (1, 0) };
    assert!(s.queued_jobs(&f.zone.id, 8).await.unwrap().is_empty());
    let result = json!({"ok": true});
    let test = audit("connection.test");
    assert!(!s
        .finish_job(&job, &f.agents[loser], true, &result, &test)
        .await
        .unwrap());
    assert!(s
        .finish_job(&job, &f.agents[winner], true, &result, &test)
        .await
        .unwrap());
    assert!(!s
        .finish_job(&job, &f.agents[winner], true, &result, &test)
        .await
        .unwrap());
    // The report wrote the connection's history (once) with its audit record.
    let history = s.connection_tests(&f.connection).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].result, result);
    assert_eq!(
        s.audit_for_target("t")
            .await
            .unwrap()
            .iter()
            .filter(|r| r.entry.action == "connection.test")
            .count(),
        1
    );
    // Expiring a finished job keeps its result.
    let done = s.expire_job(&job.id).await.unwrap();
    assert_eq!(done.status, "done");
    assert_eq!(done.result.as_deref(), Some("{\"ok\":true}"));

    // A job past its deadline is not handed out.
    let late = AgentJob {
        id: patchbay_store::new_id(),
        deadline: now_millis() - 1,
        ..job.clone()
    };
    s.enqueue_job(&late).await.unwrap();
    assert!(s.queued_jobs(&f.zone.id, 8).await.unwrap().is_empty());
    assert!(!s
        .claim_job(&late.id, &f.agents[0], None, &audit("agent.material"))
        .await
        .unwrap());

    // Heartbeats: last seen is the newest of the zone's live agents.
    s.touch_agent(&f.agents[0], Some("1.2.3"), Some("h"), 50_000)
        .await
        .unwrap();
    let seen = s.zone_last_seen(&f.zone.id).await.unwrap().unwrap();
    assert!(now_millis() - seen < 10_000);
    let listed = s.zone_agents(&f.zone.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].version.as_deref(), Some("1.2.3"));
    assert_eq!(
        s.agent_by_token(&f.tokens[1]).await.unwrap().id,
        f.agents[1]
    );
}

async fn a_zone_is_not_deleted_under_its_connections_and_takes_its_agents_with_it(s: &Store) {
    let f = fixture(s).await;
    match s.delete_zone(&f.zone, &audit("zone.delete")).await {
        Err(StoreError::InUse(users)) => assert_eq!(users[0].1, "zoned"),
        other => panic!("expected InUse, got {other:?}"),
    }
    s.delete_connection(&f.connection, &audit("connection.delete"))
        .await
        .unwrap();
    s.delete_zone(&f.zone, &audit("zone.delete")).await.unwrap();
    assert!(matches!(
        s.get_zone(&f.zone.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.list_zones(&f.ws).await.unwrap().is_empty());
    // Its agents' tokens are revoked with it.
    for t in &f.tokens {
        assert!(s.get_token(t).await.unwrap().revoked_at.is_some());
    }
}

on_both_backends!("zones":
    a_job_goes_to_one_agent_and_only_its_claimer_reports_it,
    a_zone_is_not_deleted_under_its_connections_and_takes_its_agents_with_it,
);
