//! Import, export and provisioning (docs/import-export.md): applying a document is
//! idempotent and answers a diff; dry-run and prune do what they say; exports carry no
//! secret unless sealed to a passphrase; provisioned objects are read-only through the API.

use patchbay_core::permission::Permission;
use patchbay_server::document_file;
use patchbay_server::MasterKeySource;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Service, CANARY};

fn doc() -> Value {
    json!({
        "apiVersion": 1,
        "credentials": [
            {"name": "warehouse-svc", "kind": "username_password", "description": "ETL user",
             "secrets": {"username": "etl", "password": CANARY}}
        ],
        "connections": [
            {"name": "warehouse", "type": "postgresql", "environment": "prod", "tags": ["team:data"],
             "settings": {"host": "db.internal", "port": 5432, "database": "dw"},
             "credential": {"name": "warehouse-svc"}},
            {"name": "cache", "type": "redis", "description": "sessions",
             "settings": {"host": "cache.internal", "port": 6379},
             "secrets": {"password": CANARY}}
        ]
    })
}

async fn import(s: &Service, project: &str, query: &str, body: Value) -> crate::kit::Reply {
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/import{query}"),
        Some(body),
        &[],
    )
    .await
}

fn actions(r: &crate::kit::Reply) -> Vec<(String, String)> {
    r.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn audit_count(s: &Service) -> usize {
    let ws = s.default_workspace().await;
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?limit=500"),
            None,
            &[],
        )
        .await;
    r.body["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn importing_the_same_document_twice_changes_nothing_the_second_time() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let dry = import(&s, &project, "?dry_run=true", doc()).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text);
    assert_eq!(dry.body["dry_run"], true);
    assert_eq!(
        actions(&dry),
        [
            ("warehouse-svc".into(), "create".into()),
            ("warehouse".into(), "create".into()),
            ("cache".into(), "create".into())
        ]
    );
    assert!(
        !dry.text.contains(CANARY),
        "the diff names fields, never values"
    );
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    assert_eq!(list.body["items"], json!([]), "a dry run writes nothing");

    let first = import(&s, &project, "", doc()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["summary"]["create"], 3);
    let events = audit_count(&s).await;

    let second = import(&s, &project, "", doc()).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.body["summary"], json!({"unchanged": 3}));
    assert_eq!(audit_count(&s).await, events, "no write, no audit event");
    let ws = s.default_workspace().await;
    let creds = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
            &[],
        )
        .await;
    let cred = &creds.body["items"][0];
    assert_eq!(cred["name"], "warehouse-svc");
    assert_eq!(cred["current_version"], 1, "no new credential version");

    // A changed secret and setting: an update naming the fields, one new version.
    let mut changed = doc();
    changed["credentials"][0]["secrets"]["password"] = json!("rotated-value");
    changed["connections"][1]["settings"]["port"] = json!(6380);
    let third = import(&s, &project, "", changed).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text);
    let by_name: Vec<&Value> = third.body["changes"].as_array().unwrap().iter().collect();
    assert_eq!(by_name[0]["action"], "update");
    assert_eq!(by_name[0]["changes"], json!(["fields.password"]));
    assert_eq!(by_name[1]["action"], "unchanged");
    assert_eq!(by_name[2]["changes"], json!(["settings.port"]));
    assert!(!third.text.contains("rotated-value"));
    let cred = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{}", cred["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await;
    assert_eq!(cred.body["current_version"], 2);

    // Prune: the connections the document does not name go.
    let only_cache = json!({"apiVersion": 1, "connections": [doc()["connections"][1].clone()]});
    let dry_prune = import(&s, &project, "?prune=true&dry_run=true", only_cache.clone()).await;
    assert!(actions(&dry_prune).contains(&("warehouse".into(), "delete".into())));
    let pruned = import(&s, &project, "?prune=true", only_cache).await;
    assert_eq!(pruned.status, StatusCode::OK, "{}", pruned.text);
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cache"]);
}

#[tokio::test]
async fn bad_documents_answer_400_naming_the_place_and_write_nothing() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let cases = [
        (json!({"connections": []}), "/apiVersion"),
        (json!({"apiVersion": 2}), "/apiVersion"),
        (json!({"apiVersion": 1, "bogus": 1}), "/bogus"),
        (
            json!({"apiVersion": 1, "connections": [{"name": "ok", "type": "postgresql", "settings": {"host": "h", "database": "d"}},
                                                    {"name": "bad", "type": "postgresql", "settings": {"host": "h", "database": "d", "port": "x"}}]}),
            "/connections/1/settings/port",
        ),
        (
            json!({"apiVersion": 1, "connections": [{"name": "x", "type": "nope"}]}),
            "/connections/0/type",
        ),
        (
            json!({"apiVersion": 1, "connections": [{"name": "ok", "type": "redis", "settings": {"host": "h"}},
                                                    {"name": "no-db", "type": "postgresql", "settings": {"host": "h"}}]}),
            "/connections/1/settings/database",
        ),
        (
            json!({"apiVersion": 1, "connections": [{"name": "x", "type": "redis", "settings": {"host": "h"}, "credential": {"name": "missing"}}]}),
            "/connections/0/credential/name",
        ),
        (
            json!({"apiVersion": 1, "connections": [{"name": "x", "type": "redis", "settings": {"host": "h"}, "secrets": {"password": "pbenc:v1:AAAA"}}]}),
            "/connections/0/secrets/password",
        ),
        (
            json!({"apiVersion": 1, "encryption": {}, "connections": []}),
            "/encryption",
        ),
    ];
    for (body, field) in cases {
        let r = import(&s, &project, "", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text);
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        list.body["items"],
        json!([]),
        "the valid first entry of a failing document was not written"
    );
}

#[tokio::test]
async fn exports_hold_no_secret_unless_sealed_and_sealed_ones_open_only_with_the_passphrase() {
    let s = Service::start().await;
    let project = s.default_project().await;
    assert_eq!(import(&s, &project, "", doc()).await.status, StatusCode::OK);

    let plain = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/export"),
            None,
            &[],
        )
        .await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
    assert!(!plain.text.contains(CANARY), "canary in a plain export");
    assert_eq!(plain.body["apiVersion"], 1);
    assert_eq!(plain.body["project"], "default");
    assert_eq!(
        plain.body["connections"][1]["credential"],
        json!({"name": "warehouse-svc"})
    );
    assert_eq!(
        plain.body["credentials"][0]["fields"],
        json!({"username": "etl"})
    );
    let yaml = document_file::to_yaml(&plain.body);
    assert!(!yaml.contains(CANARY));

    // The plain export imports into another project (the credential already exists).
    let ws = s.default_workspace().await;
    let other = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/projects"),
            Some(json!({"name": "copy"})),
            &[],
        )
        .await;
    let other = other.body["id"].as_str().unwrap().to_owned();
    let mut copy = plain.body.as_object().unwrap().clone();
    // The inline secret of `cache` is not in the export: the copy gets it from the
    // environment at import time instead.
    copy["connections"][0]["secrets"] = json!({"password": "from-env"});
    let r = import(&s, &other, "", Value::Object(copy)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["summary"],
        json!({"create": 2, "unchanged": 1}),
        "{}",
        r.text
    );

    // Sealed export: needs credentials:write and connections:reveal.
    let editor = s
        .token_with(
            &[Permission::ConnectionsRead, Permission::CredentialsWrite],
            None,
        )
        .await;
    let denied = s
        .call_as(
            &editor,
            Method::POST,
            &format!("/api/v1/projects/{project}/export"),
            Some(json!({"passphrase": "correct horse battery"})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text);
    assert!(!denied.text.contains(CANARY));
    let sealed = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/export"),
            Some(json!({"passphrase": "correct horse battery"})),
            &[],
        )
        .await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);
    assert!(!sealed.text.contains(CANARY), "canary in a sealed export");
    assert_eq!(sealed.headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(
        sealed.body["encryption"]["algorithm"],
        "argon2id+aes-256-gcm"
    );
    let text = document_file::to_yaml(&sealed.body);
    let env = |_: &str| None;
    let wrong = document_file::read(
        &text,
        std::path::Path::new("."),
        Some(&patchbay_crypto::SecretString::new("wrong".into())),
        &env,
    )
    .unwrap_err();
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    assert!(document_file::read(&text, std::path::Path::new("."), None, &env).is_err());
    let opened = document_file::read(
        &text,
        std::path::Path::new("."),
        Some(&patchbay_crypto::SecretString::new(
            "correct horse battery".into(),
        )),
        &env,
    )
    .unwrap();
    assert_eq!(opened["credentials"][0]["secrets"]["password"], CANARY);
    assert_eq!(opened["connections"][0]["secrets"]["password"], CANARY);
    // The opened document applies to the project it came from without a change.
    let again = import(&s, &project, "", Value::Object(opened)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(
        again.body["summary"],
        json!({"unchanged": 3}),
        "{}",
        again.text
    );

    // Every exported secret was audited.
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?limit=500"),
            None,
            &[],
        )
        .await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"credential.export"), "{actions:?}");
    assert!(actions.contains(&"connection.reveal"), "{actions:?}");
}

#[tokio::test]
async fn a_connection_keeps_its_network_zone_through_export_and_import() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let ws = s.default_workspace().await;
    let unknown = json!({"apiVersion": 1, "connections": [
        {"name": "zoned", "type": "redis", "zone": "dc-1", "settings": {"host": "h"}}]});
    let r = import(&s, &project, "", unknown.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["code"], "unknown_zone");
    assert_eq!(r.body["field"], "/connections/0/zone");
    let zone = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/zones"),
            Some(json!({"name": "dc-1"})),
            &[],
        )
        .await;
    assert!(zone.status.is_success(), "{}", zone.text);
    let r = import(&s, &project, "", unknown).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let exported = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/export"),
            None,
            &[],
        )
        .await;
    assert_eq!(exported.body["connections"][0]["zone"], "dc-1");
    let mut moved = exported.body.clone();
    moved["connections"][0]["zone"] = Value::Null;
    let r = import(&s, &project, "", exported.body.clone()).await;
    assert_eq!(r.body["summary"], json!({"unchanged": 1}), "{}", r.text);
    let r = import(&s, &project, "", moved).await;
    assert_eq!(
        r.body["changes"][0]["changes"],
        json!(["zone"]),
        "{}",
        r.text
    );
}

const PROVISIONED: &str = r#"
apiVersion: 1
project: default
credentials:
  - name: prov-svc
    kind: username_password
    secrets: {username: svc, password: "${PB_TEST_PROVISION_PW}"}
connections:
  - name: prov-pg
    type: postgresql
    settings: {host: db.internal, database: dw}
    credential: {name: prov-svc}
  - name: prov-redis
    type: redis
    settings: {host: cache.internal}
"#;

#[tokio::test]
async fn provisioned_connections_are_read_only_through_the_api_and_follow_their_file() {
    std::env::set_var("PB_TEST_PROVISION_PW", CANARY);
    let dir = tempfile::tempdir().unwrap();
    let prov = dir.path().join("provisioning");
    std::fs::create_dir_all(&prov).unwrap();
    std::fs::write(prov.join("finance.yaml"), PROVISIONED).unwrap();
    let settings = patchbay_server::state::Settings {
        provision_dir: Some(prov.clone()),
        ..Default::default()
    };
    let key_path = dir.path().join("data/master.key");
    let key = || MasterKeySource::File(key_path.clone());
    let s = Service::start_in(dir, key(), settings.clone()).await;
    let project = s.default_project().await;
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", list.text);
    assert!(items.iter().all(|c| c["provisioned"] == "finance.yaml"));
    let pg = items.iter().find(|c| c["name"] == "prov-pg").unwrap();
    let id = pg["id"].as_str().unwrap().to_owned();
    let url = format!("/api/v1/connections/{id}");
    let got = s
        .call(Method::GET, &format!("{url}?reveal=true"), None, &[])
        .await;
    assert_eq!(
        got.body["secrets"]["password"], CANARY,
        "interpolated at start"
    );

    let token = s.token.clone();
    for (m, body, ct) in [
        (
            Method::PUT,
            Some(json!({"name": "prov-pg", "settings": {"host": "x", "database": "d"}})),
            "application/json",
        ),
        (
            Method::PATCH,
            Some(json!({"description": "edited"})),
            "application/merge-patch+json",
        ),
        (Method::DELETE, None, "application/json"),
    ] {
        let r = s
            .raw(
                m.clone(),
                &url,
                Some(&token),
                &[("content-type", ct), ("if-match", "*")],
                body.map(|b| b.to_string().into_bytes()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{m} {}", r.text);
        assert_eq!(r.body["code"], "provisioned");
        assert_eq!(r.body["details"]["source"], "finance.yaml");
    }
    let cred_id = pg["credential"]["id"].as_str().unwrap().to_owned();
    let rotate = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(json!({"secrets": {"password": "x"}})),
            &[],
        )
        .await;
    assert_eq!(rotate.status, StatusCode::CONFLICT, "{}", rotate.text);
    assert_eq!(rotate.body["code"], "provisioned");
    // An import through the API does not take a provisioned connection over, and its
    // prune leaves provisioned ones alone.
    let take_over = import(
        &s,
        &project,
        "",
        json!({"apiVersion": 1, "connections": [{"name": "prov-redis", "type": "redis", "settings": {"host": "other"}}]}),
    )
    .await;
    assert_eq!(take_over.status, StatusCode::CONFLICT, "{}", take_over.text);
    assert_eq!(take_over.body["field"], "/connections/0");
    let prune = import(&s, &project, "?prune=true", json!({"apiVersion": 1})).await;
    assert_eq!(prune.status, StatusCode::OK, "{}", prune.text);
    assert_eq!(prune.body["summary"], json!({"kept": 2}));

    // A third connection, used by a pipeline, to be removed from the file below.
    let dir = s.into_dir();
    std::fs::write(
        prov.join("finance.yaml"),
        format!("{PROVISIONED}  - name: prov-used\n    type: redis\n    settings: {{host: used.internal}}\n"),
    )
    .unwrap();
    let s = Service::start_in(dir, key(), settings.clone()).await;
    let used = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections?name=prov-used"),
            None,
            &[],
        )
        .await;
    let used_id = used.body["items"][0]["id"].as_str().unwrap().to_owned();
    let dep = s
        .call(
            Method::PUT,
            &format!("/api/v1/connections/{used_id}/dependents/pipeline/etl-1"),
            Some(json!({"name": "Nightly ETL"})),
            &[],
        )
        .await;
    assert!(dep.status.is_success(), "{}", dep.text);

    // Restart with a changed file: the change applies; a removed connection is deleted,
    // unless something still uses it (then it is kept, still provisioned).
    let dir = s.into_dir();
    std::fs::write(
        prov.join("finance.yaml"),
        PROVISIONED
            .replace("host: db.internal", "host: db2.internal")
            .replace(
                "  - name: prov-redis\n    type: redis\n    settings: {host: cache.internal}\n",
                "",
            ),
    )
    .unwrap();
    let s = Service::start_in(dir, key(), settings.clone()).await;
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    let items = list.body["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["prov-pg", "prov-used"], "{}", list.text);
    assert_eq!(items[0]["settings"]["host"], "db2.internal");
    assert_eq!(items[0]["version"], 2);
    assert_eq!(items[1]["provisioned"], "finance.yaml");

    // A file that does not apply stops the start, naming the file and the place.
    let dir = s.into_dir();
    std::fs::write(
        prov.join("broken.yaml"),
        "apiVersion: 1\nconnections:\n  - name: b\n    type: nope\n",
    )
    .unwrap();
    let err = match Service::try_start_in(dir, key(), settings).await {
        Ok(_) => panic!("a broken provisioning file must stop the start"),
        Err(e) => e,
    };
    assert!(err.contains("broken.yaml"), "{err}");
    assert!(err.contains("/connections/0/type"), "{err}");
    assert!(!err.contains(CANARY));
}
