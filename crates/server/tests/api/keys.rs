//! Key management API: permissions, visibility, status, rotation records.

use patchbay_core::permission::Permission;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::Service;

async fn wait_done(s: &Service, id: &str) -> serde_json::Value {
    for _ in 0..200 {
        let r = s
            .call(
                Method::GET,
                &format!("/api/v1/keys/rotations/{id}"),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["state"] != "running" {
            return r.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("rotation {id} did not finish");
}

#[tokio::test]
async fn rotations_need_their_permission_and_stay_inside_their_workspace() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let conn = s.create_pg(&project, "prod-pg").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without workspace:admin: no data rotation, no status.
    let reader = s
        .token_with(&[Permission::ConnectionsRead], Some(&ws))
        .await;
    let path = format!("/api/v1/workspaces/{ws}/keys/rotate-data");
    let r = s.raw(Method::POST, &path, Some(&reader), &[], None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let r = s
        .raw(Method::GET, "/api/v1/keys", Some(&reader), &[], None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A workspace admin rotates its workspace's data key, but not the master key, even
    // holding instance:admin while confined to one workspace.
    let admin = s.token_with(Permission::ALL, Some(&ws)).await;
    let r = s
        .raw(
            Method::POST,
            "/api/v1/keys/rotate-master",
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = s.raw(Method::POST, &path, Some(&admin), &[], None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        (r.body["kind"].as_str(), r.body["total"].as_i64()),
        (Some("data"), Some(1))
    );
    let id = r.body["id"].as_str().unwrap().to_owned();
    let done = wait_done(&s, &id).await;
    assert_eq!(
        (done["state"].as_str(), done["done"].as_i64()),
        (Some("done"), Some(1))
    );

    // The secret still reveals; the old key is gone, the new one protects it.
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}"),
            None,
            &[],
        )
        .await;
    assert_eq!(got.body["secrets"]["password"], crate::kit::CANARY);
    let status = s.call(Method::GET, "/api/v1/keys", None, &[]).await;
    assert_eq!(status.status, StatusCode::OK);
    let keys = status.body["workspaces"][0]["data_keys"]
        .as_array()
        .unwrap();
    assert_eq!(keys.len(), 1, "{}", status.text);
    assert_eq!(
        (keys[0]["id"].as_str(), keys[0]["ciphertexts"].as_i64()),
        (done["to_key"].as_str(), Some(1))
    );
    assert_eq!(status.body["master_key"]["source"], "file");

    // Another workspace's admin sees neither the rotation nor the workspace.
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other_id = other.body["id"].as_str().unwrap().to_owned();
    let outsider = s.token_with(Permission::ALL, Some(&other_id)).await;
    let r = s
        .raw(
            Method::GET,
            &format!("/api/v1/keys/rotations/{id}"),
            Some(&outsider),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.raw(Method::POST, &path, Some(&outsider), &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s
        .raw(Method::GET, "/api/v1/keys", Some(&outsider), &[], None)
        .await;
    let names: Vec<_> = r.body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workspace"].clone())
        .collect();
    assert_eq!(names, vec![json!("other")]);

    // The instance admin rotates the master key.
    let r = s
        .call(Method::POST, "/api/v1/keys/rotate-master", None, &[])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let done = wait_done(&s, r.body["id"].as_str().unwrap()).await;
    assert_eq!(
        (
            done["kind"].as_str(),
            done["state"].as_str(),
            done["total"].as_i64()
        ),
        (Some("master"), Some("done"), Some(2))
    );
    let ready = s.call(Method::GET, "/api/v1/ready", None, &[]).await;
    assert_eq!(ready.body["master_key_id"], done["to_key"]);
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{conn}"),
            None,
            &[],
        )
        .await;
    assert_eq!(got.body["secrets"]["password"], crate::kit::CANARY);
}
