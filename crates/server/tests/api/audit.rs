//! The audit log over the REST API: what an event carries, changed fields without secret
//! values, refused attempts, fail-closed changes, the hash chain and its verification,
//! retention, the query and export, and the canary never reaching the log.

use patchbay_core::permission::Permission;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Reply, Service, CANARY};

async fn events(s: &Service, ws: &str, query: &str) -> Vec<Value> {
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?limit=500{query}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

async fn verify(s: &Service) -> Value {
    let r = s.call(Method::GET, "/api/v1/audit/verify", None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

async fn connection(s: &Service, name: &str) -> String {
    let project = s.default_project().await;
    let r = s.create_pg(&project, name).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_event_names_actor_source_request_id_outcome_and_its_chain_position() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let body = json!({"name": "warehouse", "type": "postgresql",
        "settings": {"host": "127.0.0.1", "database": "test"}, "secrets": {"password": CANARY}});
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(body),
            &[("x-request-id", "deploy-42.step-7")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["x-request-id"], "deploy-42.step-7");
    let id = r.body["id"].as_str().unwrap();

    let found = events(&s, &ws, &format!("&target_id={id}")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let e = &found[0];
    assert_eq!(e["action"], "connection.create");
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["request_id"], "deploy-42.step-7");
    assert_eq!(e["source_address"], "127.0.0.1");
    assert_eq!(e["workspace_id"], ws.as_str());
    assert_eq!(e["target_kind"], "connection");
    let actor = e["actor"].as_str().unwrap();
    assert!(actor.starts_with("token:"), "{actor}");
    assert!(!actor.contains("pbt_") && !s.token.contains(&actor[6..]));
    assert!(e["seq"].as_i64().unwrap() > 1);
    assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    assert_ne!(e["prev_hash"], e["hash"]);

    // A request id that is too long or not printable is replaced; every response has one,
    // errors and unknown routes included.
    for (sent, path) in [
        ("x".repeat(65), "/api/v1/workspaces".to_owned()),
        ("has space".to_owned(), "/api/v1/nowhere".to_owned()),
    ] {
        let r = s
            .call(Method::GET, &path, None, &[("x-request-id", &sent)])
            .await;
        let got = r.headers["x-request-id"].to_str().unwrap();
        assert_ne!(got, sent);
        assert!(!got.is_empty() && got.len() <= 64);
    }
    let unauth = s
        .raw(Method::GET, "/api/v1/workspaces", None, &[], None)
        .await;
    assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
    assert!(unauth.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn updates_record_changed_fields_with_old_and_new_values_but_secrets_only_as_changed() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let id = connection(&s, "finance").await;
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(
                json!({"description": "Finance replica (EU)", "settings": {"port": 6432},
                        "secrets": {"password": format!("{CANARY}-2")}}),
            ),
            &[
                ("if-match", "\"1\""),
                ("content-type", "application/merge-patch+json"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let e = events(
        &s,
        &ws,
        &format!("&target_id={id}&action=connection.update"),
    )
    .await;
    assert_eq!(e.len(), 1);
    let changes = &e[0]["details"]["changes"];
    assert_eq!(
        changes["description"],
        json!({"old": "Finance warehouse replica", "new": "Finance replica (EU)"})
    );
    assert_eq!(changes["settings.port"], json!({"old": 5432, "new": 6432}));
    assert_eq!(changes["secrets.password"], "changed");
    assert!(
        changes.get("name").is_none(),
        "unchanged fields are not listed"
    );
    assert!(!e[0].to_string().contains(CANARY));

    // Shared credential: metadata old/new, a rotation's secret fields as "changed".
    let cred = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(json!({"name": "svc", "kind": "username_password",
                        "secrets": {"username": "svc-user", "password": CANARY}})),
            &[],
        )
        .await;
    assert_eq!(cred.status, StatusCode::CREATED, "{}", cred.text);
    let cid = cred.body["id"].as_str().unwrap();
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/credentials/{cid}"),
            Some(json!({"name": "svc-login", "description": "billing"})),
            &[
                ("if-match", "\"1\""),
                ("content-type", "application/merge-patch+json"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cid}/versions"),
            Some(json!({"secrets": {"username": "svc-user-2", "password": format!("{CANARY}-3")}})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let e = events(&s, &ws, &format!("&target_id={cid}&action=credential.*")).await;
    let actions: Vec<&str> = e.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "credential.create",
            "credential.update",
            "credential.rotate"
        ]
    );
    assert_eq!(
        e[1]["details"]["changes"],
        json!({"name": {"old": "svc", "new": "svc-login"}, "description": {"old": "", "new": "billing"}})
    );
    assert_eq!(e[2]["details"]["changes"]["fields.password"], "changed");
    assert_eq!(
        e[2]["details"]["changes"]["fields.username"],
        json!({"old": "svc-user", "new": "svc-user-2"})
    );
    assert!(!serde_json::to_string(&e).unwrap().contains(CANARY));
}

#[tokio::test]
async fn a_refused_attempt_is_an_audit_event_and_an_unauthenticated_one_is_not() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let id = connection(&s, "finance").await;
    let reader = s.token_with(&[Permission::ConnectionsRead], None).await;

    let r = s
        .call_as(
            &reader,
            Method::DELETE,
            &format!("/api/v1/connections/{id}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["details"]["permission"], "connections:write");
    let r = s
        .raw(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(&reader),
            &[("content-type", "application/json"), ("if-match", "*")],
            Some(json!({"name": "renamed"}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let denied = events(&s, &ws, "&action=connection.*").await;
    let denied: Vec<&Value> = denied.iter().filter(|e| e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0]["action"], "connection.delete");
    assert_eq!(denied[0]["target_id"], id.as_str());
    assert_eq!(denied[0]["target_kind"], "connection");
    assert_eq!(
        denied[0]["details"]["missing_permission"],
        "connections:write"
    );
    assert_eq!(denied[1]["action"], "connection.update");
    assert_eq!(denied[0]["source_address"], "127.0.0.1");
    assert_ne!(denied[0]["actor"], denied[1]["target_id"]);
    // The connection is still there.
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);

    let before = verify(&s).await["count"].as_i64().unwrap();
    let r = s
        .raw(
            Method::DELETE,
            &format!("/api/v1/connections/{id}"),
            Some("pbt_not-a-token"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(verify(&s).await["count"].as_i64().unwrap(), before);
}

/// Makes every audit insert fail, as a full disk or a broken table would.
async fn break_audit_writes(s: &Service) {
    let db = s.raw_db().await;
    sqlx::query(
        "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
}

async fn count(s: &Service, sql: &str) -> i64 {
    let db = s.raw_db().await;
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&db).await.unwrap();
    db.close().await;
    n
}

#[tokio::test]
async fn a_change_or_reveal_that_cannot_be_audited_does_not_happen() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let id = connection(&s, "finance").await;
    let before = (
        count(&s, "SELECT COUNT(*) FROM connections").await,
        count(&s, "SELECT COUNT(*) FROM credential_versions").await,
        count(&s, "SELECT COUNT(*) FROM audit_events").await,
    );
    break_audit_writes(&s).await;

    let internal = |r: &Reply| {
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
        assert_eq!(r.body["code"], "internal");
        assert!(!r.text.contains(CANARY), "{}", r.text);
        assert!(!r.text.contains("audit store unavailable"), "{}", r.text);
    };
    internal(&s.create_pg(&project, "other").await);
    internal(
        &s.call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"description": "changed", "secrets": {"password": "new-secret-value"}})),
            &[
                ("if-match", "\"1\""),
                ("content-type", "application/merge-patch+json"),
            ],
        )
        .await,
    );
    internal(
        &s.call(
            Method::DELETE,
            &format!("/api/v1/connections/{id}"),
            None,
            &[("if-match", "\"1\"")],
        )
        .await,
    );
    // A reveal that cannot be recorded does not hand out the secret.
    internal(
        &s.call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
            .await,
    );

    let after = (
        count(&s, "SELECT COUNT(*) FROM connections").await,
        count(&s, "SELECT COUNT(*) FROM credential_versions").await,
        count(&s, "SELECT COUNT(*) FROM audit_events").await,
    );
    assert_eq!(before, after, "nothing of the refused changes was written");
    let masked = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(masked.body["version"], 1);
    assert_eq!(masked.body["description"], "Finance warehouse replica");
    assert_eq!(verify(&s).await["ok"], true);
}

async fn tamper(sql: &str) -> Value {
    let s = Service::start().await;
    for i in 0..4 {
        connection(&s, &format!("c{i}")).await;
    }
    assert_eq!(verify(&s).await["ok"], true);
    let db = s.raw_db().await;
    sqlx::raw_sql(sql).execute(&db).await.unwrap();
    db.close().await;
    verify(&s).await
}

#[tokio::test]
async fn verify_names_the_first_broken_event_after_tampering() {
    // Bootstrap writes seq 1-4; the four connections are seq 5-8.
    let edited = tamper("UPDATE audit_events SET actor = 'token:someone-else' WHERE seq = 5").await;
    assert_eq!(
        edited,
        json!({"ok": false, "broken_seq": 5, "reason": "hash_mismatch"})
    );
    let deleted = tamper("DELETE FROM audit_events WHERE seq = 5").await;
    assert_eq!(
        deleted,
        json!({"ok": false, "broken_seq": 5, "reason": "gap"})
    );
    let swapped = tamper(
        "UPDATE audit_events SET seq = -1 WHERE seq = 5; \
         UPDATE audit_events SET seq = 5 WHERE seq = 6; \
         UPDATE audit_events SET seq = 6 WHERE seq = -1;",
    )
    .await;
    assert_eq!(swapped["ok"], false);
    assert_eq!(swapped["broken_seq"], 5);
    assert_eq!(swapped["reason"], "reordered");
    let truncated = tamper("DELETE FROM audit_events WHERE seq = 8").await;
    assert_eq!(
        truncated,
        json!({"ok": false, "broken_seq": 8, "reason": "head_mismatch"})
    );
    let cut_start = tamper("DELETE FROM audit_events WHERE seq = 1").await;
    assert_eq!(
        cut_start,
        json!({"ok": false, "broken_seq": 1, "reason": "origin_mismatch"})
    );

    let s = Service::start().await;
    let plain = s.token_with(&[Permission::AuditRead], None).await;
    let r = s
        .call_as(&plain, Method::GET, "/api/v1/audit/verify", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn retention_deletes_the_oldest_events_and_the_chain_still_verifies() {
    let s = Service::start().await;
    connection(&s, "a").await;
    connection(&s, "b").await;
    let before = verify(&s).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let deleted =
        patchbay_server::service::audit::prune(&s.app_state, std::time::Duration::from_millis(10))
            .await
            .unwrap();
    assert_eq!(deleted, before["count"].as_i64().unwrap());
    let after = verify(&s).await;
    assert_eq!(after["ok"], true, "{after}");
    assert_eq!(after["count"], 1, "only the deletion's own record is left");
    let all = s
        .app_state
        .store
        .list_audit(&Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(all[0].entry.action, "audit.retention");
    assert_eq!(all[0].entry.details["deleted"], deleted);
    assert_eq!(all[0].seq, before["head_seq"].as_i64().unwrap() + 1);
    // New events chain on.
    connection(&s, "c").await;
    assert_eq!(verify(&s).await["count"], 2);
}

#[tokio::test]
async fn the_workspace_log_filters_pages_and_exports_as_json_lines() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let ids = [
        connection(&s, "a").await,
        connection(&s, "b").await,
        connection(&s, "c").await,
    ];
    s.call(
        Method::GET,
        &format!("/api/v1/connections/{}", ids[0]),
        None,
        &[],
    )
    .await;

    let creates = events(&s, &ws, "&action=connection.create").await;
    assert_eq!(creates.len(), 3);
    let all_conn = events(&s, &ws, "&action=connection.*").await;
    assert_eq!(all_conn.len(), 4);
    assert_eq!(all_conn[3]["action"], "connection.reveal");
    let actor = creates[0]["actor"].as_str().unwrap();
    assert_eq!(
        events(&s, &ws, &format!("&actor={actor}&action=connection.*"))
            .await
            .len(),
        4
    );
    assert_eq!(events(&s, &ws, "&actor=token:nobody").await.len(), 0);
    let t = creates[1]["at"].as_str().unwrap();
    assert!(events(&s, &ws, &format!("&since={t}")).await.len() >= 2);
    assert_eq!(
        events(&s, &ws, "&until=2000-01-01T00:00:00Z").await.len(),
        0
    );

    // Pages of 2 walk every event once, in chain order.
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let r = s
            .call(
                Method::GET,
                &format!("/api/v1/workspaces/{ws}/audit?limit=2{cursor}"),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        for e in r.body["items"].as_array().unwrap() {
            seen.push(e["seq"].as_i64().unwrap());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert!(seen.len() >= 4);

    // Export: every matching event, one JSON object per line, by parameter or Accept.
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?format=jsonl&limit=1"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), seen.len());
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.create"),
            None,
            &[("accept", "application/x-ndjson")],
        )
        .await;
    assert_eq!(r.text.lines().count(), 3);

    // Bad input names its parameter.
    for (query, field) in [
        ("colour=blue", "colour"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("action=conn*ction", "action"),
        ("format=xml", "format"),
        ("limit=0", "limit"),
        ("cursor=bm90LWEtc2Vx", "cursor"),
    ] {
        let r = s
            .call(
                Method::GET,
                &format!("/api/v1/workspaces/{ws}/audit?{query}"),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.body["code"], "invalid_query");
        assert_eq!(r.body["field"], field, "{query}");
    }

    // Another workspace's log is not there; a token without audit:read is refused.
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other_id = other.body["id"].as_str().unwrap();
    let narrow = s.token_with(&[Permission::AuditRead], Some(other_id)).await;
    let r = s
        .call_as(
            &narrow,
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s
        .call_as(
            &narrow,
            Method::GET,
            &format!("/api/v1/workspaces/{other_id}/audit"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["workspace_id"] == other_id));
    let reader = s.token_with(&[Permission::ConnectionsRead], None).await;
    let r = s
        .call_as(
            &reader,
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_canary_never_reaches_the_audit_log() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let id = connection(&s, "finance").await;
    // Update with a new secret, and a PUT of the revealed body.
    s.call(
        Method::PATCH,
        &format!("/api/v1/connections/{id}"),
        Some(json!({"secrets": {"password": format!("{CANARY}-patched")}})),
        &[
            ("if-match", "\"1\""),
            ("content-type", "application/merge-patch+json"),
        ],
    )
    .await;
    let revealed = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert!(revealed.text.contains(CANARY));
    let put = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(revealed.body.clone()),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    // A shared credential: create, rotate, use from a connection, reveal through it.
    let cred = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(json!({"name": "svc", "kind": "username_password",
                        "secrets": {"username": "svc", "password": format!("{CANARY}-shared")}})),
            &[],
        )
        .await;
    let cid = cred.body["id"].as_str().unwrap().to_owned();
    s.call(
        Method::POST,
        &format!("/api/v1/credentials/{cid}/versions"),
        Some(json!({"secrets": {"password": format!("{CANARY}-rotated")}})),
        &[("if-match", "*")],
    )
    .await;
    let user = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "user", "type": "postgresql",
                        "settings": {"host": "127.0.0.1", "database": "test"}, "credential": {"id": cid}})),
            &[],
        )
        .await;
    assert_eq!(user.status, StatusCode::CREATED, "{}", user.text);
    let uid = user.body["id"].as_str().unwrap();
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{uid}"),
            None,
            &[],
        )
        .await;
    assert!(r.text.contains(&format!("{CANARY}-rotated")));
    // A refused reveal and a failed create with the canary in a bad field.
    let reader = s.token_with(&[Permission::ConnectionsRead], None).await;
    s.call_as(
        &reader,
        Method::GET,
        &format!("/api/v1/connections/{id}"),
        None,
    )
    .await;
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/connections"),
        Some(json!({"name": "bad", "type": "postgresql", "settings": {"host": CANARY, "port": CANARY}})),
        &[],
    )
    .await;

    let every = s
        .app_state
        .store
        .list_audit(&Default::default(), 500)
        .await
        .unwrap();
    assert!(every.len() >= 10);
    for e in &every {
        let text = format!("{e:?} {}", e.entry.details);
        assert!(
            !text.contains(CANARY),
            "canary in audit event {}: {text}",
            e.seq
        );
    }
    let export = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?format=jsonl"),
            None,
            &[],
        )
        .await;
    assert!(export.text.lines().count() >= 8);
    assert!(!export.text.contains(CANARY));
    let db = s.raw_db().await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT actor || action || COALESCE(request_id, '') || details FROM audit_events",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(rows.iter().all(|(r,)| !r.contains(CANARY)));
}
