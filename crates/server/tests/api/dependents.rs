//! Dependents (seed 002): deleting a connector used by datasets warns and lets the user pick
//! the datasets to delete with it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::events::{fast_events, signature_ok, webhook, Receiver};
use crate::kit::{Service, CANARY};

async fn register(s: &Service, conn: &str, kind: &str, reference: &str, body: Value) -> StatusCode {
    let r = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{conn}/dependents/{kind}/{reference}"),
            Some(body),
            &[],
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert!(!r.text.contains(CANARY));
    r.status
}

async fn delete(s: &Service, conn: &str, query: &str) -> crate::kit::Reply {
    s.call(
        Method::DELETE,
        &format!("/api/v1/connections/{conn}{query}"),
        None,
        &[],
    )
    .await
}

fn pairs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["ref"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn deleting_a_connection_with_dependents_answers_409_and_lists_them() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let created = s.create_pg(&project, "used-by-datasets").await;
    let conn = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["dependents_count"], 0);
    assert_eq!(
        register(
            &s,
            &conn,
            "pipeline",
            "etl-1",
            json!({"name": "Nightly ETL", "url": "https://airflow.example.com/dags/etl-1"})
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        register(&s, &conn, "dataset", "sales", json!({"name": "Sales"})).await,
        StatusCode::CREATED
    );
    // PUT again: an update, not a second registration.
    assert_eq!(
        register(&s, &conn, "dataset", "sales", json!({"name": "Sales (EU)"})).await,
        StatusCode::OK
    );
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}/dependents"),
            None,
            &[],
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(
        pairs(&list.body["items"]),
        ["dataset/sales", "pipeline/etl-1"]
    );
    assert_eq!(list.body["items"][0]["name"], "Sales (EU)");
    assert_eq!(
        list.body["items"][1]["url"],
        "https://airflow.example.com/dags/etl-1"
    );
    assert!(list.body["items"][0]["registered_by"]
        .as_str()
        .unwrap()
        .starts_with("token:"));
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(got.body["dependents_count"], 2);
    let listed = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    assert_eq!(listed.body["items"][0]["dependents_count"], 2);

    // No cascade: 409 listing both; nothing deleted.
    let refused = delete(&s, &conn, "").await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.body["code"], "has_dependents");
    assert_eq!(
        pairs(&refused.body["details"]["dependents"]),
        ["dataset/sales", "pipeline/etl-1"]
    );
    assert_eq!(
        refused.body["details"]["dependents"][0]["name"],
        "Sales (EU)"
    );
    // Choosing one of two: still 409, naming the one left.
    let partial = delete(&s, &conn, "?cascade=pipeline/etl-1").await;
    assert_eq!(partial.status, StatusCode::CONFLICT, "{}", partial.text);
    assert_eq!(
        pairs(&partial.body["details"]["dependents"]),
        ["dataset/sales"]
    );
    // Naming one that is not registered, or a malformed item: 400 on the parameter.
    for q in [
        "?cascade=pipeline/etl-1,dataset/nope",
        "?cascade=sales",
        "?cascade=",
        "?cascade=a/b/c",
    ] {
        let bad = delete(&s, &conn, q).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{q}: {}", bad.text);
        assert_eq!(bad.body["code"], "invalid_query");
        assert_eq!(bad.body["field"], "cascade");
    }
    let still = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(still.status, StatusCode::OK);
    assert_eq!(still.body["dependents_count"], 2);

    // Both chosen: deleted with its registrations, in one audited transaction.
    let done = delete(&s, &conn, "?cascade=pipeline/etl-1,dataset/sales").await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    let gone = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}"),
            None,
            &[],
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let deps = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}/dependents"),
            None,
            &[],
        )
        .await;
    assert_eq!(deps.status, StatusCode::NOT_FOUND);
    let audit = s.app_state.store.audit_for_target(&conn).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "connection.create",
            "dependent.register",
            "dependent.register",
            "dependent.register",
            "dependent.cascade_delete",
            "dependent.cascade_delete",
            "connection.delete"
        ]
    );
    let cascade: Vec<&Value> = audit
        .iter()
        .filter(|a| a.entry.action == "dependent.cascade_delete")
        .map(|a| &a.entry.details["dependent"])
        .collect();
    assert_eq!(cascade[0]["ref"], "sales");
    assert_eq!(cascade[1]["ref"], "etl-1");

    // cascade=all on another connection; and a connection without dependents needs none.
    let other = s.create_pg(&project, "used-by-a-dashboard").await;
    let other = other.body["id"].as_str().unwrap().to_owned();
    register(&s, &other, "dashboard", "42", json!({"name": "Revenue"})).await;
    assert_eq!(
        delete(&s, &other, "?cascade=all").await.status,
        StatusCode::NO_CONTENT
    );
    let plain = s.create_pg(&project, "unused").await;
    let plain = plain.body["id"].as_str().unwrap().to_owned();
    assert_eq!(delete(&s, &plain, "").await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_cascade_emits_one_event_per_dependent_plus_the_connection_deletion() {
    let s = Service::start_with(fast_events(5)).await;
    let rx = Receiver::start(0).await;
    let (_, secret) = webhook(
        &s,
        &rx.url,
        json!(["dependent.cascade_deleted", "connection.deleted"]),
        None,
    )
    .await;
    let project = s.default_project().await;
    let created = s.create_pg(&project, "cascaded").await;
    let conn = created.body["id"].as_str().unwrap().to_owned();
    register(
        &s,
        &conn,
        "pipeline",
        "etl-1",
        json!({"name": "Nightly ETL"}),
    )
    .await;
    register(
        &s,
        &conn,
        "alert_policy",
        "p-9",
        json!({"name": "Lag alert", "url": "https://grafana.example.com/alerting/p-9"}),
    )
    .await;
    let done = delete(&s, &conn, "?cascade=all").await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    let got = rx.wait_for("three events", |g| g.len() >= 3).await;
    assert!(got.iter().all(|r| signature_ok(&secret, r)));
    let mut cascaded: Vec<Value> = got
        .iter()
        .filter(|r| r.event == "dependent.cascade_deleted")
        .map(|r| r.json()["data"]["details"].clone())
        .collect();
    cascaded.sort_by_key(|d| d["dependent"]["kind"].as_str().unwrap().to_owned());
    assert_eq!(cascaded.len(), 2, "{got:#?}");
    assert_eq!(
        cascaded[0]["dependent"],
        json!({"kind": "alert_policy", "ref": "p-9",
        "name": "Lag alert", "url": "https://grafana.example.com/alerting/p-9"})
    );
    assert_eq!(cascaded[1]["dependent"]["ref"], "etl-1");
    assert_eq!(cascaded[0]["connection"]["id"], conn.as_str());
    assert_eq!(cascaded[0]["connection"]["name"], "cascaded");
    let deleted: Vec<_> = got
        .iter()
        .filter(|r| r.event == "connection.deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        deleted[0].json()["data"]["details"]["cascaded"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.delivery.as_str()).collect();
    assert_eq!(ids.len(), 3, "each event has its own id");
}

#[tokio::test]
async fn dependent_registrations_are_checked_and_scoped_like_their_connection() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let created = s.create_pg(&project, "checked").await;
    let conn = created.body["id"].as_str().unwrap().to_owned();
    let put = |kind: &str, reference: &str| {
        format!("/api/v1/connections/{conn}/dependents/{kind}/{reference}")
    };
    for (path, body, field) in [
        (put("Pipeline", "x"), json!({"name": "n"}), "kind"),
        (put("pipe%20line", "x"), json!({"name": "n"}), "kind"),
        (put("pipeline", "a,b"), json!({"name": "n"}), "ref"),
        (put("pipeline", "a%2Fb"), json!({"name": "n"}), "ref"),
        (put("pipeline", "a%20b"), json!({"name": "n"}), "ref"),
        (put("pipeline", "x"), json!({}), "/name"),
        (put("pipeline", "x"), json!({"name": " "}), "/name"),
        (
            put("pipeline", "x"),
            json!({"name": "n", "url": "javascript:alert(1)"}),
            "/url",
        ),
        (
            put("pipeline", "x"),
            json!({"name": "n", "url": format!("https://u:{CANARY}@x.example/")}),
            "/url",
        ),
        (
            put("pipeline", "x"),
            json!({"name": "n", "owner": "me"}),
            "/owner",
        ),
    ] {
        let r = s.call(Method::PUT, &path, Some(body.clone()), &[]).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            r.text
        );
        assert_eq!(r.body["field"], field, "{path} {body}: {}", r.text);
        assert!(!r.text.contains(CANARY));
    }
    // Nothing was registered by the refused calls.
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}/dependents"),
            None,
            &[],
        )
        .await;
    assert_eq!(list.body["items"], json!([]));

    // Unregister: 204, then 404.
    register(&s, &conn, "dataset", "sales", json!({"name": "Sales"})).await;
    let path = put("dataset", "sales");
    assert_eq!(
        s.call(Method::DELETE, &path, None, &[]).await.status,
        StatusCode::NO_CONTENT
    );
    let again = s.call(Method::DELETE, &path, None, &[]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);

    // A viewer lists but does not register; another workspace sees nothing.
    let ws = s.default_workspace().await;
    let viewer = s.create_user("viewer-d").await;
    s.set_role(&ws, &viewer, "viewer").await;
    let vt = s.user_token(&viewer).await;
    let r = s
        .call_as(
            &vt,
            Method::GET,
            &format!("/api/v1/connections/{conn}/dependents"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s
        .call_as(&vt, Method::PUT, &path, Some(json!({"name": "Sales"})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "elsewhere"})),
            &[],
        )
        .await;
    let other_ws = other.body["id"].as_str().unwrap().to_owned();
    let stranger = s.create_user("stranger").await;
    s.set_role(&other_ws, &stranger, "admin").await;
    let st = s.user_token(&stranger).await;
    for (m, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"name": "x"}))),
        (Method::DELETE, None),
    ] {
        let p = if m == Method::GET {
            format!("/api/v1/connections/{conn}/dependents")
        } else {
            path.clone()
        };
        let r = s.call_as(&st, m.clone(), &p, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {p}: {}", r.text);
    }
    // Unknown connection: 404 as well.
    let r = s
        .call(
            Method::PUT,
            "/api/v1/connections/0190c0de-0000-7000-8000-000000000000/dependents/dataset/x",
            Some(json!({"name": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
