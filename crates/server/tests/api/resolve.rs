//! Run-time resolve: every format for several types, rotation seen by the next resolve,
//! refused tokens, permissions and isolation, the audit event, bad bodies, and test and
//! resolve consuming the same material.

use std::time::Duration;

use patchbay_core::permission::Permission;
use patchbay_server::service::probes::ProbeSettings;
use patchbay_server::state::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Reply, Service, CANARY};

/// A password with every character a URI must encode, and the canary.
pub(crate) fn hard_password() -> String {
    format!("p@ss:w/rd?#%&=+ é{CANARY}")
}

pub(crate) async fn create(
    s: &Service,
    name: &str,
    ty: &str,
    settings: Value,
    secrets: Value,
) -> String {
    let project = s.default_project().await;
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": name, "type": ty, "settings": settings, "secrets": secrets})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// A PostgreSQL connection `name` whose password is the canary.
async fn canary_postgres(s: &Service, name: &str) -> String {
    create(
        s,
        name,
        "postgresql",
        json!({"host": "db", "database": "d"}),
        json!({"password": CANARY}),
    )
    .await
}

pub(crate) async fn runner(s: &Service, ttl: Option<i64>) -> (String, String) {
    let ws = s.default_workspace().await;
    let r = s
        .call_as(
            &s.token,
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/runner-tokens"),
            ttl.map(|t| json!({"ttl_seconds": t})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.body["token"].as_str().unwrap().to_owned(),
        r.body["id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn resolve(s: &Service, token: &str, id: &str, body: Option<Value>) -> Reply {
    s.call_as(
        token,
        Method::POST,
        &format!("/api/v1/connections/{id}/resolve"),
        body,
    )
    .await
}

pub(crate) async fn ok(s: &Service, token: &str, id: &str, format: &str) -> Value {
    let r = resolve(s, token, id, Some(json!({"format": format}))).await;
    assert_eq!(r.status, StatusCode::OK, "{format}: {}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["pragma"], "no-cache");
    assert_eq!(r.body["format"], format);
    r.body
}

pub(crate) async fn unsupported(s: &Service, token: &str, id: &str, format: &str) {
    let r = resolve(s, token, id, Some(json!({"format": format}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{format}: {}", r.text);
    assert_eq!(r.body["code"], "format_unsupported");
    assert_eq!(r.body["field"], "/format");
    assert!(!r.text.contains(CANARY));
}

#[tokio::test]
async fn a_rotated_credential_is_seen_by_the_next_resolve() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let cred = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(json!({"name": "svc", "kind": "username_password",
                        "secrets": {"username": "svc", "password": "first"}})),
            &[],
        )
        .await;
    assert_eq!(cred.status, StatusCode::CREATED, "{}", cred.text);
    let cred_id = cred.body["id"].as_str().unwrap().to_owned();
    let project = s.default_project().await;
    let conn = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "dw", "type": "postgresql",
                        "settings": {"host": "db", "database": "dw"},
                        "credential": {"id": cred_id}})),
            &[],
        )
        .await;
    assert_eq!(conn.status, StatusCode::CREATED, "{}", conn.text);
    let id = conn.body["id"].as_str().unwrap().to_owned();
    let (token, _) = runner(&s, None).await;

    let before = ok(&s, &token, &id, "json").await;
    assert_eq!(before["secrets"]["password"], "first");
    // The credential's non-secret username fills the setting.
    assert_eq!(before["settings"]["username"], "svc");
    assert_eq!(before["credential"], json!({"id": cred_id, "version": 1}));
    // The next resolve is served from the resolve cache, which must see the rotation.
    assert!(s.app_state.materials.get(&id).is_some());

    let rotated = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(json!({"secrets": {"username": "svc2", "password": "second"}})),
            &[],
        )
        .await;
    assert!(rotated.status.is_success(), "{}", rotated.text);
    let after = ok(&s, &token, &id, "json").await;
    assert_eq!(after["secrets"]["password"], "second");
    // The settings a cache entry assembled from the old version are not served either.
    assert_eq!(after["settings"]["username"], "svc2");
    assert_eq!(after["credential"]["version"], 2);
    let env = ok(&s, &token, &id, "env").await;
    assert_eq!(env["env"]["PGPASSWORD"], "second");

    // An inline secret edit is a rotation of the connection's own credential.
    let inline = create(
        &s,
        "inline",
        "postgresql",
        json!({"host": "db", "database": "d"}),
        json!({"password": "one"}),
    )
    .await;
    assert_eq!(
        ok(&s, &token, &inline, "json").await["secrets"]["password"],
        "one"
    );
    let patched = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{inline}"),
            Some(json!({"secrets": {"password": "two"}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let again = ok(&s, &token, &inline, "json").await;
    assert_eq!(again["secrets"]["password"], "two");
    assert_eq!(again["credential"]["version"], 2);
}

#[tokio::test]
async fn revoked_and_expired_runner_tokens_are_refused() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "db").await;
    let (token, token_id) = runner(&s, None).await;
    assert_eq!(resolve(&s, &token, &id, None).await.status, StatusCode::OK);
    let revoked = s
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{token_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let r = resolve(&s, &token, &id, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.body["code"], "unauthenticated");
    assert!(!r.text.contains(CANARY));

    let (short, _) = runner(&s, Some(1)).await;
    assert_eq!(resolve(&s, &short, &id, None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = resolve(&s, &short, &id, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(!r.text.contains(CANARY));
}

#[tokio::test]
async fn a_viewer_gets_403_and_another_workspace_404_like_a_missing_id() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "db").await;
    let ws = s.default_workspace().await;
    let viewer = s.create_user("viewer").await;
    s.set_role(&ws, &viewer, "viewer").await;
    let viewer = s.user_token(&viewer).await;
    let r = resolve(&s, &viewer, &id, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.body["code"], "forbidden");
    assert!(!r.text.contains(CANARY));

    // A runner of another workspace: the connection does not exist for it.
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other = other.body["id"].as_str().unwrap().to_owned();
    let r = s
        .call_as(
            &s.token,
            Method::POST,
            &format!("/api/v1/workspaces/{other}/runner-tokens"),
            None,
        )
        .await;
    let foreign = r.body["token"].as_str().unwrap().to_owned();
    let a = resolve(&s, &foreign, &id, None).await;
    let b = resolve(&s, &foreign, "0190c0de-0000-7000-8000-00000000f00d", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(a.text, b.text);
    let project = s.default_project().await;
    let by_name = s
        .call_as(
            &foreign,
            Method::POST,
            &format!("/api/v1/projects/{project}/connections/by-name/db/resolve"),
            None,
        )
        .await;
    assert_eq!(by_name.status, StatusCode::NOT_FOUND, "{}", by_name.text);
    assert!(!by_name.text.contains(CANARY));
}

#[tokio::test]
async fn by_name_finds_the_connection_in_a_project_given_by_id_or_name() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "prod-postgres-finance").await;
    let (token, _) = runner(&s, None).await;
    let project = s.default_project().await;
    for p in [project.as_str(), "default"] {
        let r = s
            .call_as(
                &token,
                Method::POST,
                &format!("/api/v1/projects/{p}/connections/by-name/prod-postgres-finance/resolve"),
                Some(json!({"format": "env", "run_id": "dag=etl/run=42"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.text);
        assert_eq!(r.headers["cache-control"], "no-store");
        assert_eq!(r.body["connection"]["id"], id.as_str());
        assert_eq!(r.body["env"]["PGPASSWORD"], CANARY);
    }
    let r = s
        .call_as(
            &token,
            Method::POST,
            "/api/v1/projects/default/connections/by-name/prod-postgres-finance/resolve?workspace=default",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for path in [
        "/api/v1/projects/default/connections/by-name/nope/resolve",
        "/api/v1/projects/nope/connections/by-name/prod-postgres-finance/resolve",
        "/api/v1/projects/default/connections/by-name/prod-postgres-finance/resolve?workspace=nope",
    ] {
        let r = s.call_as(&token, Method::POST, path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }
}

/// Bodies the typed reading of the hot path does not take (nulls aside) still resolve as
/// the field-by-field reading does: a repeated field counts its last value.
#[tokio::test]
async fn unusual_but_valid_bodies_resolve() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "db").await;
    let (token, _) = runner(&s, None).await;
    for (body, format, run_id) in [
        (
            &br#"{"format": null, "run_id": null}"#[..],
            "json",
            Value::Null,
        ),
        (
            br#"{"format": "json", "format": "env"}"#,
            "env",
            Value::Null,
        ),
        (br#"{"run_id": "a", "run_id": "b"}"#, "json", json!("b")),
        (b"{}", "json", Value::Null),
    ] {
        let r = s
            .raw(
                Method::POST,
                &format!("/api/v1/connections/{id}/resolve"),
                Some(&token),
                &[("content-type", "Application/JSON; charset=utf-8")],
                Some(body.to_vec()),
            )
            .await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(r.status, StatusCode::OK, "{shown}: {}", r.text);
        assert_eq!(r.body["format"], format, "{shown}");
        assert_eq!(r.body["run_id"], run_id, "{shown}");
    }
}

#[tokio::test]
async fn bad_bodies_answer_400_naming_the_field_and_record_nothing() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "db").await;
    let (token, _) = runner(&s, None).await;
    for (body, field) in [
        (json!({"format": "xml"}), "/format"),
        (json!({"format": 3}), "/format"),
        (json!({"run_id": "x".repeat(201)}), "/run_id"),
        (json!({"run_id": "line\nbreak"}), "/run_id"),
        (json!({"run_id": ""}), "/run_id"),
        (json!({"run_id": 42}), "/run_id"),
        (json!({"formats": "json"}), "/formats"),
        // Two faults: the format is named first, as the body's fields are read in order.
        (json!({"format": "xml", "run_id": 5}), "/format"),
    ] {
        let r = resolve(&s, &token, &id, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.body["field"], field, "{body}");
        assert!(!r.text.contains(CANARY));
    }
    let r = s
        .raw(
            Method::POST,
            &format!("/api/v1/connections/{id}/resolve"),
            Some(&token),
            &[("content-type", "application/json")],
            Some(b"[1]".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let ws = s.default_workspace().await;
    let events = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.resolve"),
            None,
            &[],
        )
        .await;
    assert_eq!(events.body["items"], json!([]), "{}", events.text);
}

#[tokio::test]
async fn every_resolve_is_audited_with_run_id_format_and_credential_version_and_no_secret() {
    let s = Service::start().await;
    let id = canary_postgres(&s, "db").await;
    let (token, _) = runner(&s, None).await;
    for (format, run) in [("json", "run-1"), ("env", "run-2"), ("uri", "run-3")] {
        ok_with_run(&s, &token, &id, format, run).await;
    }
    let ws = s.default_workspace().await;
    let events = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.resolve"),
            None,
            &[],
        )
        .await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.text);
    let items = events.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{}", events.text);
    let mut runs: Vec<&str> = items
        .iter()
        .map(|e| e["details"]["run_id"].as_str().unwrap())
        .collect();
    runs.sort();
    assert_eq!(runs, ["run-1", "run-2", "run-3"]);
    for e in items {
        assert_eq!(e["target_id"], id.as_str());
        assert_eq!(e["details"]["credential"]["version"], 1);
        assert!(e["details"]["format"].is_string());
        assert_eq!(e["outcome"], "success");
    }
    assert!(!events.text.contains(CANARY));
    // Nor anywhere in the stored log.
    let rows: Vec<(String,)> = sqlx::query_as("SELECT details FROM audit_events")
        .fetch_all(&s.raw_db().await)
        .await
        .unwrap();
    assert!(rows.len() > 3);
    assert!(rows.iter().all(|(d,)| !d.contains(CANARY)));
    // The credential records its last use by the runner.
    let usage = s
        .call(
            Method::GET,
            &format!(
                "/api/v1/credentials/{}/usage",
                ok(&s, &token, &id, "json").await["credential"]["id"]
                    .as_str()
                    .unwrap()
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    assert!(usage.text.contains("last_used_at"));
}

async fn ok_with_run(s: &Service, token: &str, id: &str, format: &str, run: &str) {
    let r = resolve(s, token, id, Some(json!({"format": format, "run_id": run}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["run_id"], run);
}

fn pg_up() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok();
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PostgreSQL on 127.0.0.1:5432 not reachable (CI=true)");
        }
        eprintln!("SKIPPED: PostgreSQL on 127.0.0.1:5432 not reachable (run scripts/peers.sh)");
    }
    up
}

/// Test connection and resolve assemble the same material: the username comes only from
/// the shared credential (a non-secret field filling a setting), and a rotation that
/// changes it changes what both see.
#[tokio::test]
async fn test_connection_and_resolve_use_the_same_material() {
    if !pg_up() {
        return;
    }
    let s = Service::start_with(Settings {
        probes: ProbeSettings {
            policy: patchbay_probe::Policy::parse("127.0.0.1", "").unwrap(),
            deadline: Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let ws = s.default_workspace().await;
    let cred = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(json!({"name": "pg", "kind": "username_password",
                        "secrets": {"username": "postgres", "password": CANARY}})),
            &[],
        )
        .await;
    assert_eq!(cred.status, StatusCode::CREATED, "{}", cred.text);
    let cred_id = cred.body["id"].as_str().unwrap().to_owned();
    let project = s.default_project().await;
    let conn = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "local", "type": "postgresql",
                        "settings": {"host": "127.0.0.1", "port": 5432, "database": "test", "sslmode": "disable"},
                        "credential": {"id": cred_id}})),
            &[],
        )
        .await;
    assert_eq!(conn.status, StatusCode::CREATED, "{}", conn.text);
    let id = conn.body["id"].as_str().unwrap().to_owned();
    let token = s
        .token_with(
            &[Permission::ConnectionsResolve, Permission::ConnectionsTest],
            Some(&ws),
        )
        .await;
    let test = |tok: String| {
        let s = &s;
        let id = id.clone();
        async move {
            s.call_as(
                &tok,
                Method::POST,
                &format!("/api/v1/connections/{id}/test"),
                None,
            )
            .await
        }
    };
    let resolved = ok(&s, &token, &id, "json").await;
    assert_eq!(resolved["settings"]["username"], "postgres");
    let t = test(token.clone()).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.body["ok"], true, "{}", t.text);

    let rotated = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(json!({"secrets": {"username": "no_such_role_pb"}})),
            &[],
        )
        .await;
    assert!(rotated.status.is_success(), "{}", rotated.text);
    let resolved = ok(&s, &token, &id, "json").await;
    assert_eq!(resolved["settings"]["username"], "no_such_role_pb");
    let t = test(token).await;
    assert_eq!(t.body["ok"], false, "{}", t.text);
    assert_eq!(t.body["error"]["stage"], "auth", "{}", t.text);
    assert!(!t.text.contains(CANARY));
}

/// Concurrent resolves share audit transactions (group commit): each still has its own
/// event, the credential records its last use, and the chain verifies.
#[tokio::test]
async fn concurrent_resolves_each_leave_an_event_and_the_chain_verifies() {
    let s = Service::start().await;
    let mut ids = vec![];
    for i in 0..4 {
        ids.push(canary_postgres(&s, &format!("db-{i}")).await);
    }
    let (token, _) = runner(&s, None).await;
    let calls = (0..40).map(|i| {
        let (s, token, id) = (&s, token.clone(), ids[i % ids.len()].clone());
        async move {
            let r = resolve(s, &token, &id, Some(json!({"run_id": format!("c-{i}")}))).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    });
    futures_util::future::join_all(calls).await;
    let ws = s.default_workspace().await;
    let events = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.resolve&limit=500"),
            None,
            &[],
        )
        .await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 40);
    let verify = s.call(Method::GET, "/api/v1/audit/verify", None, &[]).await;
    assert_eq!(verify.body["ok"], true, "{}", verify.text);
    for id in &ids {
        let j = ok(&s, &token, id, "json").await;
        let cred = j["credential"]["id"].as_str().unwrap();
        let usage = s
            .call(
                Method::GET,
                &format!("/api/v1/credentials/{cred}/usage"),
                None,
                &[],
            )
            .await;
        assert!(
            usage.body["items"][0]["last_used_at"].is_string(),
            "{}",
            usage.text
        );
    }
}
