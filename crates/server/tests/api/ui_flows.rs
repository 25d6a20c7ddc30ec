//! The web UI's other pages over real HTTP: shared credentials created by kind and rotated,
//! API tokens shown once and revoked, and the delete dialog with dependents (cascade only
//! with every dependent picked). Helpers: `crate::ui`.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::{Service, CANARY};
use crate::ui::{admin_password, Browser};

#[tokio::test]
async fn credentials_are_created_by_kind_and_rotated_without_their_secret_reaching_a_page() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    // A missing required field: the service's error next to that field.
    let missing = b
        .post(
            &format!("/workspaces/{ws}/credentials"),
            &[
                ("kind", "username_password"),
                ("name", "etl-user"),
                ("secrets.password", CANARY),
            ],
        )
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.text);
    let at = missing.text.find("f-settings-username-help").unwrap();
    assert!(
        missing.text[at..].contains("field-error"),
        "{}",
        missing.text
    );
    assert!(!missing.text.contains(CANARY));
    let r = b
        .post(
            &format!("/workspaces/{ws}/credentials"),
            &[
                ("kind", "username_password"),
                ("name", "etl-user"),
                ("settings.username", "etl"),
                ("secrets.password", CANARY),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let page = r.location().to_owned();
    let id = page.trim_start_matches("/credentials/").to_owned();
    let shown = b.get(&page).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.text.contains("etl-user") && !shown.text.contains(CANARY));
    let list = b.get(&format!("/workspaces/{ws}/credentials")).await;
    assert!(list.text.contains("etl-user") && !list.text.contains(CANARY));

    // Rotate: a blank secret keeps its value, a new one becomes version 2.
    let rotated = b
        .post(
            &format!("/credentials/{id}/rotate"),
            &[
                ("revision", "1"),
                ("settings.username", "etl"),
                ("secrets.password", "the next password"),
            ],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::SEE_OTHER, "{}", rotated.text);
    let versions = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{id}/versions"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        versions.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        versions.text
    );
    let stale = b
        .post(
            &format!("/credentials/{id}/rotate"),
            &[("revision", "1"), ("secrets.password", "again")],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text
    );
    assert!(stale.text.contains("changed by someone else"));

    // An unknown kind is the API's 400 on an error page.
    let unknown = b
        .post(
            &format!("/workspaces/{ws}/credentials"),
            &[("kind", "nope"), ("name", "x")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.text.contains("unknown_credential_kind"));
}

#[tokio::test]
async fn an_api_token_is_shown_once_on_creation_and_can_be_revoked() {
    let s = Service::start().await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let created = b
        .post(
            "/tokens",
            &[("name", "laptop-cli"), ("expires_in", "86400")],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let start = created.text.find("value=\"pbt_").expect("the new token") + 7;
    let token = created.text[start..].split('"').next().unwrap().to_owned();
    let works = s
        .http
        .get(format!("{}/api/v1/workspaces", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(works.status(), StatusCode::OK);
    let later = b.get("/tokens").await;
    assert!(later.text.contains("laptop-cli") && !later.text.contains(&token));

    let list = s.call(Method::GET, "/api/v1/tokens", None, &[]).await;
    let id = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "laptop-cli")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = b.post(&format!("/tokens/{id}/revoke"), &[]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.text);
    let refused = s
        .http
        .get(format!("{}/api/v1/workspaces", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(b.get("/tokens").await.text.contains("revoked"));

    let bad = b.post("/tokens", &[("name", "Not A Name")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_delete_dialog_lists_the_dependents_and_deletes_only_with_all_of_them_picked() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let ws = s.default_workspace().await;
    let id = s.create_pg(&project, "finance").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (kind, reference, name) in [
        ("pipeline", "etl-1", "Nightly ETL"),
        ("dataset", "sales", "Sales <dataset>"),
    ] {
        let r = s
            .call(
                Method::PUT,
                &format!("/api/v1/connections/{id}/dependents/{kind}/{reference}"),
                Some(json!({"name": name, "url": "https://airflow.example/dags/etl-1"})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let overview = b.get(&format!("/projects/{project}/connections")).await;
    assert!(
        overview.text.contains("<td class=\"num\">2</td>"),
        "{}",
        overview.text
    );
    let detail = b.get(&format!("/connections/{id}")).await;
    assert!(detail.text.contains("Nightly ETL"));
    assert!(
        detail.text.contains("Sales &") && !detail.text.contains("<dataset>"),
        "names are escaped"
    );

    let dialog = b.get(&format!("/connections/{id}/delete")).await;
    assert_eq!(dialog.status, StatusCode::OK);
    assert!(dialog.text.contains("value=\"pipeline/etl-1\" checked"));
    assert!(dialog.text.contains("value=\"dataset/sales\" checked"));

    // One left out: refused, the dialog says so and keeps the choice; nothing is deleted.
    let path = format!("/connections/{id}/delete");
    let partial = b
        .post(&path, &[("version", "1"), ("cascade", "pipeline/etl-1")])
        .await;
    assert_eq!(partial.status, StatusCode::CONFLICT, "{}", partial.text);
    assert!(partial.text.contains("1 dependent(s) not picked"));
    assert!(partial.text.contains("value=\"pipeline/etl-1\" checked"));
    assert!(!partial.text.contains("value=\"dataset/sales\" checked"));
    let none = b.post(&path, &[("version", "1")]).await;
    assert_eq!(none.status, StatusCode::CONFLICT);
    let still = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(still.status, StatusCode::OK);

    let all = b
        .post(
            &path,
            &[
                ("version", "1"),
                ("cascade", "pipeline/etl-1"),
                ("cascade", "dataset/sales"),
            ],
        )
        .await;
    assert_eq!(all.status, StatusCode::SEE_OTHER, "{}", all.text);
    let gone = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=dependent.cascade_delete"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        audit.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        audit.text
    );
}
