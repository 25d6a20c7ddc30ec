//! The resolve cache (`patchbay_server::materials`) on two replicas of one PostgreSQL
//! deployment: B serves resolves from its cache, and every change made through A is seen by
//! B's next resolve — a rotation, a settings edit, a pin to an old version, its revocation,
//! the deletion — with exactly one audit event per answered resolve. Concurrent resolves
//! on both replicas each leave one event, in one chain that verifies.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{two_replicas, Replica, TwoReplicas};

/// Two replicas of one fresh PostgreSQL deployment, the initial admin's token, a runner
/// token, the default workspace and project.
struct Deployment {
    _db: crate::kit::TestDatabase,
    _tmp: tempfile::TempDir,
    a: Replica,
    b: Replica,
    admin: String,
    runner: String,
    ws: String,
    project: String,
}

/// A [`Deployment`]; `None` when PostgreSQL is absent (SKIPPED; a failure under CI=true).
async fn deployment(tag: &str) -> Option<Deployment> {
    let TwoReplicas {
        db,
        dir,
        a,
        b,
        admin,
    } = two_replicas(tag, Default::default()).await?;
    let (_, ws) = call(&a, &admin, Method::GET, "/api/v1/workspaces", None).await;
    let ws = ws["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, ps) = call(
        &a,
        &admin,
        Method::GET,
        &format!("/api/v1/workspaces/{ws}/projects"),
        None,
    )
    .await;
    let project = ps["items"][0]["id"].as_str().unwrap().to_owned();
    let (st, runner) = call(
        &a,
        &admin,
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/runner-tokens"),
        Some(json!({"ttl_seconds": 600})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{runner}");
    let runner = runner["token"].as_str().unwrap().to_owned();
    Some(Deployment {
        _db: db,
        _tmp: dir,
        a,
        b,
        admin,
        runner,
        ws,
        project,
    })
}

async fn call(
    r: &Replica,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", r.base))
        .bearer_auth(token)
        .header("if-match", "*");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_change_through_one_replica_is_seen_by_the_next_resolve_on_another() {
    let Some(Deployment {
        _db,
        _tmp,
        a,
        b,
        admin: admin_token,
        runner,
        ws,
        project,
    }) = deployment("cache").await
    else {
        return;
    };
    let (st, cred) = call(
        &a,
        &admin_token,
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/credentials"),
        Some(json!({"name": "svc", "kind": "username_password",
                    "secrets": {"username": "svc", "password": "first"}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{cred}");
    let cred = cred["id"].as_str().unwrap().to_owned();
    let (st, conn) = call(
        &a,
        &admin_token,
        Method::POST,
        &format!("/api/v1/projects/{project}/connections"),
        Some(json!({"name": "dw", "type": "postgresql",
                    "settings": {"host": "db1", "database": "dw"},
                    "credential": {"id": cred}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{conn}");
    let id = conn["id"].as_str().unwrap().to_owned();
    let resolve_path = format!("/api/v1/connections/{id}/resolve");
    let answered = std::cell::Cell::new(0);
    let resolve_on_b = || async {
        let r = call(
            &b,
            &runner,
            Method::POST,
            &resolve_path,
            Some(json!({"format": "json"})),
        )
        .await;
        if r.0 == StatusCode::OK {
            answered.set(answered.get() + 1);
        }
        r
    };

    let (st, r) = resolve_on_b().await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["secrets"]["password"], "first");
    assert!(b.state.materials.get(&id).is_some(), "B keeps what it read");
    let (_, r) = resolve_on_b().await;
    assert_eq!(r["secrets"]["password"], "first");

    // A rotation through A.
    let (st, v) = call(
        &a,
        &admin_token,
        Method::POST,
        &format!("/api/v1/credentials/{cred}/versions"),
        Some(json!({"secrets": {"password": "second"}})),
    )
    .await;
    assert!(st.is_success(), "{v}");
    let (_, r) = resolve_on_b().await;
    assert_eq!(r["secrets"]["password"], "second", "{r}");
    assert_eq!(r["credential"], json!({"id": cred, "version": 2}));

    // A settings edit, then a pin to the first version.
    let (st, e) = call(
        &a,
        &admin_token,
        Method::PATCH,
        &format!("/api/v1/connections/{id}"),
        Some(json!({"settings": {"host": "db2", "database": "dw"}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{e}");
    let (_, r) = resolve_on_b().await;
    assert_eq!(r["settings"]["host"], "db2", "{r}");
    let (st, e) = call(
        &a,
        &admin_token,
        Method::PATCH,
        &format!("/api/v1/connections/{id}"),
        Some(json!({"credential": {"id": cred, "version": 1}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{e}");
    let (_, r) = resolve_on_b().await;
    assert_eq!(r["secrets"]["password"], "first", "{r}");

    // Revoking the pinned version: B refuses at once.
    let (st, e) = call(
        &a,
        &admin_token,
        Method::POST,
        &format!("/api/v1/credentials/{cred}/versions/1/revoke"),
        None,
    )
    .await;
    assert!(st.is_success(), "{e}");
    let (st, r) = resolve_on_b().await;
    assert!(
        st.is_client_error(),
        "a revoked version must not resolve: {st} {r}"
    );
    assert!(!r.to_string().contains("first"));

    // Deleted through A: 404 on B.
    let (st, e) = call(
        &a,
        &admin_token,
        Method::DELETE,
        &format!("/api/v1/connections/{id}"),
        None,
    )
    .await;
    assert!(st.is_success(), "{e}");
    let (st, r) = resolve_on_b().await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{r}");

    // One event per answered resolve, whether served from the cache or read again.
    let (_, events) = call(
        &a,
        &admin_token,
        Method::GET,
        &format!("/api/v1/workspaces/{ws}/audit?action=connection.resolve&limit=100"),
        None,
    )
    .await;
    assert_eq!(
        events["items"].as_array().unwrap().len(),
        answered.get(),
        "{events}"
    );
}

/// Resolves on two replicas at once: each replica's batches (committed on a thread of its
/// own, service::resolve_log) find the chain head moved by the other's, fall back to the
/// transaction path on the service's runtime, and every answered resolve has its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_on_two_replicas_each_leave_one_event_in_one_chain() {
    let Some(Deployment {
        _db,
        _tmp,
        a,
        b,
        admin,
        runner,
        ws,
        project,
    }) = deployment("concurrent").await
    else {
        return;
    };
    let mut ids = vec![];
    for i in 0..4 {
        let (st, conn) = call(
            &a,
            &admin,
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": format!("dw-{i}"), "type": "postgresql",
                        "settings": {"host": "db1", "database": "dw", "username": "svc"},
                        "secrets": {"password": format!("pw-{i}")}})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{conn}");
        ids.push(conn["id"].as_str().unwrap().to_owned());
    }
    // Both replicas commit on threads of their own.
    #[cfg(target_os = "linux")]
    {
        let named = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == patchbay_server::service::resolve_log::THREAD_NAME)
            .count();
        assert_eq!(named, 2, "one resolve log thread per replica");
    }

    const ROUNDS: usize = 3;
    const CALLS: usize = 48;
    for round in 0..ROUNDS {
        let calls = (0..CALLS).map(|i| {
            let (r, runner, n) = (if i % 2 == 0 { &a } else { &b }, &runner, i % ids.len());
            let path = format!("/api/v1/connections/{}/resolve", ids[n]);
            async move {
                let body = json!({"format": "json", "run_id": format!("r{round}-{i}")});
                let (st, v) = call(r, runner, Method::POST, &path, Some(body)).await;
                assert_eq!(st, StatusCode::OK, "{v}");
                assert_eq!(v["secrets"]["password"], format!("pw-{n}"));
            }
        });
        futures_util::future::join_all(calls).await;
    }

    let (_, events) = call(
        &a,
        &admin,
        Method::GET,
        &format!("/api/v1/workspaces/{ws}/audit?action=connection.resolve&limit=500"),
        None,
    )
    .await;
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), ROUNDS * CALLS, "{events}");
    let mut runs: Vec<&str> = items
        .iter()
        .map(|e| e["details"]["run_id"].as_str().unwrap())
        .collect();
    runs.sort_unstable();
    runs.dedup();
    assert_eq!(runs.len(), ROUNDS * CALLS, "one event per run");
    for r in [&a, &b] {
        let (st, v) = call(r, &admin, Method::GET, "/api/v1/audit/verify", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true, "{v}");
    }
}
