//! Connections over the REST API: the lifecycle, secret visibility, concurrency control,
//! listing, isolation, and the catalog and docs endpoints.

use patchbay_core::permission::Permission;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::{Service, CANARY};

#[tokio::test]
async fn a_connection_lives_through_create_get_update_and_delete() {
    let s = Service::start().await;
    let project = s.default_project().await;

    let created = s.create_pg(&project, "prod-postgres-finance").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.headers["location"].to_str().unwrap(),
        format!("/api/v1/connections/{id}")
    );
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(created.body["secrets"]["password"], "********");
    assert_eq!(created.body["category"], "databases");
    assert!(!created.text.contains(CANARY));

    // A single GET by a principal with the reveal permission returns secrets in full.
    let got = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["secrets"]["password"], CANARY);
    assert_eq!(got.headers["cache-control"], "no-store");
    // ... unless it asks for the masked view.
    let masked = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(masked.body["secrets"]["password"], "********");

    // PUT the GET body back with a change: the mask keeps the stored password.
    let mut body = masked.body.clone();
    body["settings"]["port"] = json!(5433);
    let put = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(body),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["version"], 2);
    assert_eq!(put.body["settings"]["port"], 5433);
    assert_eq!(put.body["secrets_set"], json!(["password"]));

    // PUT without secrets also keeps them (omitted = unchanged).
    let put = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"name": "prod-postgres-finance", "settings": {"host": "db", "database": "test"}})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["secrets_set"], json!(["password"]));
    assert_eq!(
        put.body["settings"],
        json!({"host": "db", "database": "test"})
    );
    assert_eq!(put.body["environment"], json!(null));

    // Merge patch: null removes a setting, null clears a secret, strings set.
    let patch = s
        .raw(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(&s.token),
            &[("content-type", "application/merge-patch+json"), ("if-match", "\"3\"")],
            Some(
                json!({"settings": {"database": null, "port": 6432}, "secrets": {"password": null}, "tags": ["x"]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(
        patch.status,
        StatusCode::BAD_REQUEST,
        "database is required: {}",
        patch.text
    );
    assert_eq!(patch.body["field"], "/settings/database");
    let patch = s
        .raw(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(&s.token),
            &[("content-type", "application/merge-patch+json"), ("if-match", "\"3\"")],
            Some(
                json!({"settings": {"port": 6432}, "secrets": {"password": null}, "tags": ["x"], "description": null})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(patch.status, StatusCode::OK, "{}", patch.text);
    assert_eq!(
        patch.body["settings"],
        json!({"host": "db", "database": "test", "port": 6432})
    );
    assert_eq!(patch.body["secrets"]["password"], json!(null));
    assert_eq!(patch.body["secrets_set"], json!([]));
    assert_eq!(patch.body["tags"], json!(["x"]));
    assert_eq!(patch.body["description"], "");

    // A stale version answers 412 with the current version.
    let stale = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"name": "x"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.body["code"], "version_conflict");
    assert_eq!(stale.body["current_version"], 4);

    let del = s
        .call(
            Method::DELETE,
            &format!("/api/v1/connections/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["code"], "not_found");

    // Every change and the reveal left an audit record; none carries the secret.
    let audit = s.app_state.store.audit_for_target(&id).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "connection.create",
            "connection.reveal",
            "connection.update",
            "connection.update",
            "connection.update",
            "connection.delete"
        ]
    );
    assert!(audit
        .iter()
        .all(|r| !r.entry.details.to_string().contains(CANARY)));
}

#[tokio::test]
async fn lists_show_secret_fields_as_null_and_paginate_with_filters() {
    let s = Service::start().await;
    let project = s.default_project().await;
    for i in 0..5 {
        assert_eq!(
            s.create_pg(&project, &format!("pg-{i}")).await.status,
            StatusCode::CREATED
        );
    }
    let mysql = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(
                json!({"name": "dev-mysql", "type": "mysql", "environment": "dev",
                "settings": {"host": "127.0.0.1", "database": "test", "username": "root"}}),
            ),
            &[],
        )
        .await;
    assert_eq!(mysql.status, StatusCode::CREATED, "{}", mysql.text);

    let page1 = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections?limit=4"),
            None,
            &[],
        )
        .await;
    assert_eq!(page1.status, StatusCode::OK);
    let items = page1.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["name"], "dev-mysql");
    assert!(items.iter().all(|i| i["secrets"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v.is_null())));
    assert_eq!(items[1]["secrets"], json!({"password": null}));
    assert!(!page1.text.contains(CANARY));
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections?limit=4&cursor={cursor}"),
            None,
            &[],
        )
        .await;
    let names: Vec<&str> = page2.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg-3", "pg-4"]);
    assert!(page2.body.get("next_cursor").is_none());

    let count = |q: &'static str| {
        let s = &s;
        let project = project.clone();
        async move {
            let r = s
                .call(
                    Method::GET,
                    &format!("/api/v1/projects/{project}/connections?{q}"),
                    None,
                    &[],
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
            r.body["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("type=mysql").await, 1);
    assert_eq!(count("category=databases").await, 6);
    assert_eq!(count("category=saas").await, 0);
    assert_eq!(count("type=mysql&category=saas").await, 0);
    assert_eq!(count("environment=prod").await, 5);
    assert_eq!(count("tag=team:finance").await, 5);
    assert_eq!(count("q=WAREHOUSE").await, 5);
    assert_eq!(count("q=pg-2").await, 1);
    assert_eq!(count("name=pg-2").await, 1);
}

#[tokio::test]
async fn principals_without_reveal_see_masks_and_other_workspaces_do_not_exist() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let ws = s.default_workspace().await;
    let id = s.create_pg(&project, "prod-pg").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let viewer = s
        .token_with(&[Permission::ConnectionsRead], Some(&ws))
        .await;
    let got = s
        .raw(
            Method::GET,
            &format!("/api/v1/connections/{id}"),
            Some(&viewer),
            &[],
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["secrets"]["password"], "********");
    assert_eq!(got.body["secrets_set"], json!(["password"]));
    assert!(!got.text.contains(CANARY));

    // A viewer may not write.
    let del = s
        .raw(
            Method::DELETE,
            &format!("/api/v1/connections/{id}"),
            Some(&viewer),
            &[],
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::FORBIDDEN);
    assert_eq!(del.body["code"], "forbidden");

    // A token of another workspace gets the same 404 body as for an id that never existed.
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    let outsider = s
        .token_with(Permission::ALL, Some(other.body["id"].as_str().unwrap()))
        .await;
    let hidden = s
        .raw(
            Method::GET,
            &format!("/api/v1/connections/{id}"),
            Some(&outsider),
            &[],
            None,
        )
        .await;
    let missing = s
        .raw(
            Method::GET,
            "/api/v1/connections/0190a0a0-0000-7000-8000-000000000000",
            Some(&outsider),
            &[],
            None,
        )
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(hidden.text, missing.text);
    let list = s
        .raw(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            Some(&outsider),
            &[],
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::NOT_FOUND);
    let wss = s
        .raw(
            Method::GET,
            "/api/v1/workspaces",
            Some(&outsider),
            &[],
            None,
        )
        .await;
    assert_eq!(wss.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn workspaces_and_projects_are_created_and_names_are_unique() {
    let s = Service::start().await;
    let ws = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "analytics"})),
            &[],
        )
        .await;
    assert_eq!(ws.status, StatusCode::CREATED);
    let again = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "analytics"})),
            &[],
        )
        .await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("name_taken"))
    );
    let p = s
        .call(
            Method::POST,
            "/api/v1/workspaces/analytics/projects",
            Some(json!({"name": "etl"})),
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    let list = s
        .call(
            Method::GET,
            "/api/v1/workspaces/analytics/projects",
            None,
            &[],
        )
        .await;
    assert_eq!(list.body["items"][0]["name"], "etl");
    // Connection names are unique per project, not globally.
    let project = p.body["id"].as_str().unwrap();
    assert_eq!(
        s.create_pg(project, "same").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.create_pg(&s.default_project().await, "same").await.status,
        StatusCode::CREATED
    );
    let dup = s.create_pg(project, "same").await;
    assert_eq!(
        (dup.status, dup.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("name_taken"))
    );
}

#[tokio::test]
async fn the_catalog_openapi_and_health_endpoints_answer() {
    let s = Service::start().await;
    let types = s
        .call(Method::GET, "/api/v1/connection-types", None, &[])
        .await;
    assert!(types.body["items"].as_array().unwrap().len() >= 45);
    let dbs = s
        .call(
            Method::GET,
            "/api/v1/connection-types?category=databases",
            None,
            &[],
        )
        .await;
    assert!(dbs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["category"] == "databases"));
    let q = s
        .call(
            Method::GET,
            "/api/v1/connection-types?q=postgres",
            None,
            &[],
        )
        .await;
    assert!(q.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == "postgresql"));
    let pg = s
        .call(
            Method::GET,
            "/api/v1/connection-types/postgresql",
            None,
            &[],
        )
        .await;
    assert_eq!(
        pg.body["settings"]["properties"]["password"]["secret"],
        true
    );
    assert_eq!(pg.body["secret_fields"], json!(["password"]));
    let none = s
        .call(Method::GET, "/api/v1/connection-types/nope", None, &[])
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);

    let health = s.raw(Method::GET, "/api/v1/health", None, &[], None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = s.raw(Method::GET, "/api/v1/ready", None, &[], None).await;
    assert_eq!(
        (ready.status, ready.body["database"].as_str()),
        (StatusCode::OK, Some("sqlite"))
    );
    let openapi = s
        .raw(Method::GET, "/api/openapi.json", None, &[], None)
        .await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/connections/{id}",
        "/api/v1/projects/{project}/connections",
        "/api/v1/connection-types",
    ] {
        assert!(paths.contains_key(p), "{p} missing from OpenAPI");
    }
    // The name rule the server enforces is the one the document states (a client generated
    // from it validates names as the server does).
    let rule = format!("^{}$", patchbay_core::names::NAME_RULE);
    let schemas = &openapi.body["components"]["schemas"];
    for (schema, field) in [
        ("ConnectionInput", "name"),
        ("CredentialInput", "name"),
        ("NameInput", "name"),
        ("UserInput", "username"),
        ("RoleInput", "name"),
        ("TokenInput", "name"),
        ("ZoneInput", "name"),
        ("AgentTokenInput", "name"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["pattern"],
            rule.as_str(),
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["UserInput"]["properties"]["password"]["minLength"],
        patchbay_crypto::MIN_PASSWORD_LEN
    );
    // Every operation lists the statuses its kind can answer (api::StandardErrors).
    let statuses = |path: &str, method: &str| -> Vec<String> {
        let responses = paths[path][method]["responses"].as_object().unwrap();
        responses.keys().cloned().collect()
    };
    let got = statuses("/api/v1/connections/{id}", "get");
    for status in ["200", "400", "401", "403", "404", "429"] {
        assert!(
            got.iter().any(|s| s == status),
            "GET connection: {status} in {got:?}"
        );
    }
    let got = statuses("/api/v1/credentials/{id}", "delete");
    assert!(got.iter().any(|s| s == "412"), "If-Match: 412 in {got:?}");
    assert_eq!(
        statuses("/api/v1/health", "get"),
        ["200"],
        "public, no input"
    );
    let docs = s.raw(Method::GET, "/api/docs/", None, &[], None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.contains("swagger"), "Swagger UI page");
}
