//! Network zones and the agent protocol, driven over HTTP: the test plays the agent
//! (claim, report) so each rule is checked on its own. The real agent binary in separate
//! network namespaces is crates/patchbay/tests/agent.rs.

use std::time::Duration;

use patchbay_server::api::access::{Access, ROUTES};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Service, CANARY};

async fn service() -> Service {
    let mut settings = patchbay_server::state::Settings::default();
    // Short long-polls keep the test quick: an agent is healthy within 2 s of its last call.
    settings.probes.agent_poll = Duration::from_secs(1);
    settings.probes.deadline = Duration::from_secs(5);
    Service::start_with(settings).await
}

async fn zone(s: &Service, ws: &str, name: &str) -> Value {
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/zones"),
            Some(json!({"name": name, "description": "private network"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn agent_token(s: &Service, ws: &str, zone: &str, name: &str) -> String {
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/zones/{zone}/agent-tokens"),
            Some(json!({"name": name})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    r.body["token"].as_str().unwrap().to_owned()
}

async fn zoned_pg(s: &Service, project: &str, name: &str, zone: &str) -> String {
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": name, "type": "postgresql", "zone": zone,
                        "settings": {"host": "db.zone.internal", "port": 5432, "database": "dw", "username": "pb"},
                        "secrets": {"password": CANARY}})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["zone"], zone);
    r.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn zones_are_named_per_workspace_and_connections_must_name_an_existing_one() {
    let s = service().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let z = zone(&s, &ws, "dc-east").await;
    let dup = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/zones"),
            Some(json!({"name": "dc-east"})),
            &[],
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
    assert_eq!(dup.body["code"], "name_taken");

    let unknown = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "x", "type": "postgresql", "zone": "nowhere",
                        "settings": {"host": "h", "database": "d"}})),
            &[],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    assert_eq!(unknown.body["code"], "unknown_zone");
    assert_eq!(unknown.body["field"], "/zone");

    let id = zoned_pg(&s, &project, "east-dw", "dc-east").await;
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/zones/{}", z["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["connections"][0]["id"], id.as_str());
    assert_eq!(got.body["healthy"], false);

    // A zone that connections name is not deleted under them.
    let del = s
        .call(
            Method::DELETE,
            &format!("/api/v1/zones/{}", z["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.text);
    assert_eq!(del.body["code"], "zone_in_use");
    assert_eq!(del.body["details"]["connections"][0]["name"], "east-dw");

    // PATCH moves the connection out (null), then PATCH to an unknown zone is refused.
    let patched = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"zone": null})),
            &[
                ("if-match", "*"),
                ("content-type", "application/merge-patch+json"),
            ],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["zone"], Value::Null);
    let bad = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"zone": "nowhere"})),
            &[
                ("if-match", "*"),
                ("content-type", "application/merge-patch+json"),
            ],
        )
        .await;
    assert_eq!(bad.body["code"], "unknown_zone", "{}", bad.text);

    // A draft naming a zone is refused: drafts are tested by the server.
    let draft = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections/test"),
            Some(json!({"type": "postgresql", "zone": "dc-east",
                        "settings": {"host": "h", "database": "d"}})),
            &[],
        )
        .await;
    assert_eq!(draft.status, StatusCode::BAD_REQUEST, "{}", draft.text);
    assert_eq!(draft.body["code"], "zone_draft_unsupported");

    let del = s
        .call(
            Method::DELETE,
            &format!("/api/v1/zones/{}", z["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
}

#[tokio::test]
async fn another_workspaces_zone_answers_like_a_missing_one() {
    let s = service().await;
    let victim = s.default_workspace().await;
    let z = zone(&s, &victim, "secret-net").await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other = r.body["id"].as_str().unwrap().to_owned();
    let user = s.create_user("zone-attacker").await;
    s.set_role(&other, &user, "admin").await;
    let token = s.user_token(&user).await;
    for method in [Method::GET, Method::DELETE] {
        let foreign = s
            .call_as(
                &token,
                method.clone(),
                &format!("/api/v1/zones/{}", z["id"].as_str().unwrap()),
                None,
            )
            .await;
        let missing = s
            .call_as(
                &token,
                method.clone(),
                "/api/v1/zones/0190c0de-0000-7000-8000-00000000dead",
                None,
            )
            .await;
        assert_eq!(
            foreign.status,
            StatusCode::NOT_FOUND,
            "{method}: {}",
            foreign.text
        );
        assert_eq!(foreign.text, missing.text, "{method}");
    }
    // A zone name of the other workspace is unknown to a connection of this one.
    let project = s
        .call_as(
            &token,
            Method::POST,
            &format!("/api/v1/workspaces/{other}/projects"),
            Some(json!({"name": "p"})),
        )
        .await;
    let created = s
        .call_as(
            &token,
            Method::POST,
            &format!(
                "/api/v1/projects/{}/connections",
                project.body["id"].as_str().unwrap()
            ),
            Some(
                json!({"name": "x", "type": "postgresql", "zone": "secret-net",
                        "settings": {"host": "h", "database": "d"}}),
            ),
        )
        .await;
    assert_eq!(created.body["code"], "unknown_zone", "{}", created.text);
    let still = s
        .call(
            Method::GET,
            &format!("/api/v1/zones/{}", z["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await;
    assert_eq!(still.status, StatusCode::OK);
}

#[tokio::test]
async fn an_agent_token_calls_the_agent_endpoints_and_nothing_else() {
    let s = service().await;
    let ws = s.default_workspace().await;
    zone(&s, &ws, "vpc-a").await;
    let agent = agent_token(&s, &ws, "vpc-a", "a1").await;
    let mut checked = 0;
    for (method, path, access) in ROUTES {
        let url = path
            .replace("{ws}", &ws)
            .replace("{zone}", "vpc-a")
            .replace("{type}", "postgresql")
            .replace("{version}", "1")
            .replace("{user}", "nobody")
            .replace("{project}", "0190c0de-0000-7000-8000-000000000000")
            .replace("{id}", "0190c0de-0000-7000-8000-000000000000");
        let body = matches!(*method, "POST" | "PUT" | "PATCH").then(|| json!({}));
        let r = s.call_as(&agent, method.parse().unwrap(), &url, body).await;
        let denied = r.status == StatusCode::FORBIDDEN && r.body["code"] == "forbidden";
        match access {
            Access::Agent => assert!(!denied, "{method} {path}: {}", r.text),
            Access::Public => {}
            _ => assert!(
                denied,
                "agent token reached {method} {path}: {} {}",
                r.status, r.text
            ),
        }
        checked += 1;
    }
    assert_eq!(checked, ROUTES.len());
    // And nothing but an agent token calls the agent endpoints.
    let admin = s
        .call(Method::POST, "/api/v1/agent/claim", Some(json!({})), &[])
        .await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN, "{}", admin.text);
}

#[tokio::test]
async fn a_zoned_test_runs_on_the_agent_that_claims_it_and_is_recorded_like_a_local_one() {
    let s = service().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let z = zone(&s, &ws, "vpc-b").await;
    let zone_id = z["id"].as_str().unwrap().to_owned();
    let id = zoned_pg(&s, &project, "b-dw", "vpc-b").await;
    let test_path = format!("/api/v1/connections/{id}/test");

    // No agent ever connected: the test fails at stage agent, at once.
    let r = s.call(Method::POST, &test_path, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["ok"], false);
    assert_eq!(r.body["error"]["stage"], "agent");
    assert_eq!(r.body["error"]["class"], "agent_unavailable");

    let agent = agent_token(&s, &ws, "vpc-b", "b1").await;
    // An idle claim answers 204 after the long-poll time, and counts as a heartbeat.
    let idle = s
        .call_as(
            &agent,
            Method::POST,
            "/api/v1/agent/claim",
            Some(json!({"version": "9.9.9", "hostname": "b-host"})),
        )
        .await;
    assert_eq!(idle.status, StatusCode::NO_CONTENT, "{}", idle.text);
    let zv = s
        .call(Method::GET, &format!("/api/v1/zones/{zone_id}"), None, &[])
        .await;
    assert_eq!(zv.body["healthy"], true, "{}", zv.text);
    assert_eq!(zv.body["agents"][0]["version"], "9.9.9");
    assert_eq!(zv.body["agents"][0]["hostname"], "b-host");

    // The test waits for the agent; the agent claims it, gets the material, reports.
    let tester = {
        let (base, token, path) = (s.base.clone(), s.token.clone(), test_path.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let claim = s
        .call_as(&agent, Method::POST, "/api/v1/agent/claim", None)
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text);
    assert_eq!(claim.headers["cache-control"], "no-store");
    assert_eq!(claim.body["type"], "postgresql");
    assert_eq!(claim.body["settings"]["host"], "db.zone.internal");
    assert_eq!(claim.body["secrets"]["password"], CANARY);
    let job = claim.body["job_id"].as_str().unwrap().to_owned();
    let result_path = format!("/api/v1/agent/jobs/{job}/result");

    // Results are checked before they are stored.
    let bad = s
        .call_as(
            &agent,
            Method::POST,
            &result_path,
            Some(json!({"ok": true, "stages": "x"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let inconsistent = json!({"ok": true, "duration_ms": 3, "warnings": [], "stages": [],
        "error": {"stage": "tcp", "class": "timeout", "message": "m"}});
    let bad = s
        .call_as(&agent, Method::POST, &result_path, Some(inconsistent))
        .await;
    assert_eq!(bad.body["field"], "/ok", "{}", bad.text);
    let huge =
        json!({"ok": true, "duration_ms": 3, "stages": [], "warnings": ["x".repeat(70_000)]});
    let bad = s
        .call_as(&agent, Method::POST, &result_path, Some(huge))
        .await;
    assert_eq!(bad.body["code"], "payload_too_large", "{}", bad.text);

    // Another zone's agent cannot see the job.
    zone(&s, &ws, "vpc-c").await;
    let other = agent_token(&s, &ws, "vpc-c", "c1").await;
    let ok_result = json!({"ok": true, "duration_ms": 12, "warnings": [],
        "stages": [{"stage": "dns", "status": "ok", "duration_ms": 1},
                   {"stage": "tcp", "status": "ok", "duration_ms": 2},
                   {"stage": "auth", "status": "ok", "duration_ms": 9}]});
    let foreign = s
        .call_as(&other, Method::POST, &result_path, Some(ok_result.clone()))
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{}", foreign.text);

    let done = s
        .call_as(&agent, Method::POST, &result_path, Some(ok_result.clone()))
        .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    let again = s
        .call_as(&agent, Method::POST, &result_path, Some(ok_result))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.body["code"], "agent_job_closed");

    let result = tokio::time::timeout(Duration::from_secs(10), tester)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["stages"][0]["stage"], "agent");
    assert_eq!(result["stages"][0]["status"], "ok");
    assert!(!result.to_string().contains(CANARY));

    // Recorded like a local test: history and audit, with the material's own record.
    let history = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}/tests"),
            None,
            &[],
        )
        .await;
    assert_eq!(history.body["items"][0]["ok"], true, "{}", history.text);
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?limit=200"),
            None,
            &[],
        )
        .await;
    let events: Vec<&Value> = audit.body["items"].as_array().unwrap().iter().collect();
    let material = events
        .iter()
        .find(|e| e["action"] == "agent.material")
        .expect("agent.material event");
    assert_eq!(material["details"]["agent"]["name"], "b1");
    let tested = events
        .iter()
        .find(|e| e["action"] == "connection.test" && e["details"]["ok"] == true)
        .expect("connection.test event");
    assert_eq!(tested["details"]["agent"], "b1");
    assert!(!audit.text.contains(CANARY));

    // The requester hangs up while the agent works: the report still lands in the history.
    let tester = {
        let (base, token, path) = (s.base.clone(), s.token.clone(), test_path.clone());
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await;
        })
    };
    let claim = s
        .call_as(&agent, Method::POST, "/api/v1/agent/claim", None)
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text);
    tester.abort();
    let failed = json!({"ok": false, "duration_ms": 5, "warnings": [],
        "stages": [{"stage": "tcp", "status": "failed", "duration_ms": 5}],
        "error": {"stage": "tcp", "class": "connection_refused", "message": "refused"}});
    let path = format!(
        "/api/v1/agent/jobs/{}/result",
        claim.body["job_id"].as_str().unwrap()
    );
    let done = s.call_as(&agent, Method::POST, &path, Some(failed)).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    let history = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}/tests"),
            None,
            &[],
        )
        .await;
    assert_eq!(history.body["items"][0]["ok"], false, "{}", history.text);
    assert_eq!(
        history.body["items"][0]["result"]["error"]["class"],
        "connection_refused"
    );
    assert_eq!(
        history.body["items"][0]["result"]["stages"][0]["stage"],
        "agent"
    );

    // An agent that took a job but never reports: the test ends at its deadline.
    let tester = {
        let (base, token, path) = (s.base.clone(), s.token.clone(), test_path.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let claim = s
        .call_as(&agent, Method::POST, "/api/v1/agent/claim", None)
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text);
    let result = tester.await.unwrap();
    assert_eq!(result["error"]["stage"], "agent", "{result}");
    assert_eq!(result["error"]["class"], "timeout", "{result}");

    // Silent for longer than the health window: unavailable again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = s.call(Method::POST, &test_path, None, &[]).await;
    assert_eq!(r.body["error"]["class"], "agent_unavailable", "{}", r.text);
    let zv = s
        .call(Method::GET, &format!("/api/v1/zones/{zone_id}"), None, &[])
        .await;
    assert_eq!(zv.body["healthy"], false, "{}", zv.text);
}

async fn post(base: &str, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Two replicas on one PostgreSQL database: the test request arrives on A while the agent
/// long-polls B; B hands out the job (resolving the material there), the agent reports to
/// B, and A's waiting request finds the result in the table.
#[tokio::test]
async fn on_postgresql_the_agent_may_poll_another_replica_than_the_one_testing() {
    // Agents poll every 2 s.
    let mut settings = patchbay_server::state::Settings::default();
    settings.probes.agent_poll = Duration::from_secs(2);
    settings.probes.deadline = Duration::from_secs(5);
    let Some(crate::kit::TwoReplicas {
        db: _db,
        dir: _dir,
        a,
        b,
        admin: token,
    }) = crate::kit::two_replicas("agents", settings).await
    else {
        return;
    };
    let (a, b) = (a.base, b.base);

    let (st, z) = post(
        &a,
        &token,
        "/api/v1/workspaces/default/zones",
        Some(json!({"name": "pg-zone"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{z}");
    let (st, t) = post(
        &a,
        &token,
        "/api/v1/workspaces/default/zones/pg-zone/agent-tokens",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let agent = t["token"].as_str().unwrap().to_owned();
    let projects: Value = reqwest::Client::new()
        .get(format!("{a}/api/v1/workspaces/default/projects"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let project = projects["items"][0]["id"].as_str().unwrap().to_owned();
    let (st, c) = post(
        &a,
        &token,
        &format!("/api/v1/projects/{project}/connections"),
        Some(
            json!({"name": "pg-zoned", "type": "postgresql", "zone": "pg-zone",
                    "settings": {"host": "db.pg-zone.internal", "database": "dw", "username": "pb"},
                    "secrets": {"password": CANARY}}),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap().to_owned();

    // A heartbeat on B makes the zone healthy for A too (the table is shared).
    let (st, _) = post(&b, &agent, "/api/v1/agent/claim", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let tester = {
        let (a, token, id) = (a.clone(), token.clone(), id.clone());
        tokio::spawn(async move {
            post(&a, &token, &format!("/api/v1/connections/{id}/test"), None).await
        })
    };
    // B has no notification of A's job: it finds the row by polling.
    let (st, job) = post(&b, &agent, "/api/v1/agent/claim", None).await;
    assert_eq!(st, StatusCode::OK, "{job}");
    assert_eq!(job["secrets"]["password"], CANARY);
    // A second claim (another agent on A) does not get the same job.
    let (st, _) = post(&a, &agent, "/api/v1/agent/claim", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let result = json!({"ok": false, "duration_ms": 7, "warnings": [],
        "stages": [{"stage": "dns", "status": "failed", "duration_ms": 7}],
        "error": {"stage": "dns", "class": "dns_not_found", "message": "db.pg-zone.internal does not resolve"}});
    let (st, body) = post(
        &b,
        &agent,
        &format!(
            "/api/v1/agent/jobs/{}/result",
            job["job_id"].as_str().unwrap()
        ),
        Some(result),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, tested) = tokio::time::timeout(Duration::from_secs(10), tester)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{tested}");
    assert_eq!(tested["error"]["class"], "dns_not_found", "{tested}");
    assert_eq!(tested["stages"][0]["stage"], "agent", "{tested}");
    assert!(!tested.to_string().contains(CANARY));
}
