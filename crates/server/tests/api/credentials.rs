//! Credentials through the REST API: one shared credential used by several connections and
//! rotated in one place; grace periods; pinning; revocation; usage; deletion rules; bad
//! input; and the canary never leaving except through an explicit reveal.

use std::time::Duration;

use patchbay_core::permission::Permission;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Reply, Service, CANARY};

const NEW_SECRET: &str = "canary-rotated-0b9d2e";

fn short_grace() -> patchbay_server::state::Settings {
    patchbay_server::state::Settings {
        credential_grace_ms: 400,
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

async fn create_credential(s: &Service, ws: &str, body: Value) -> Reply {
    s.call(
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/credentials"),
        Some(body),
        &[],
    )
    .await
}

async fn create_user(s: &Service, project: &str, name: &str, credential: Value) -> Reply {
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/connections"),
        Some(json!({
            "name": name, "type": "postgresql",
            "settings": {"host": "127.0.0.1", "database": "test"},
            "credential": credential,
        })),
        &[],
    )
    .await
}

async fn revealed_password(s: &Service, id: &str) -> Reply {
    s.call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await
}

#[tokio::test]
async fn one_shared_credential_rotated_once_reaches_every_connection() {
    let s = Service::start_with(short_grace()).await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let cred = create_credential(
        &s,
        &ws,
        json!({"name": "finance-svc", "kind": "username_password",
               "description": "Finance service account",
               "secrets": {"username": "finance_svc", "password": CANARY}}),
    )
    .await;
    assert_eq!(cred.status, StatusCode::CREATED, "{}", cred.text);
    assert!(!cred.text.contains(CANARY), "create echoed the secret");
    assert_eq!(cred.body["fields"]["username"], "finance_svc");
    assert_eq!(cred.body["fields"]["password"], "********");
    assert_eq!(cred.body["current_version"], 1);
    let cred_id = cred.body["id"].as_str().unwrap().to_owned();

    // Three connections use it: two follow the current version, one pins version 1.
    let mut ids = Vec::new();
    for (name, credential) in [
        ("users-a", json!({"id": cred_id})),
        ("users-b", json!({"name": "finance-svc"})),
        ("users-pinned", json!({"id": cred_id, "version": 1})),
    ] {
        let c = create_user(&s, &project, name, credential).await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
        assert_eq!(c.body["secrets"]["password"], "********");
        assert_eq!(c.body["credential"]["owned"], false);
        ids.push(c.body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let r = revealed_password(&s, id).await;
        assert_eq!(r.body["secrets"]["password"], CANARY);
    }

    // Rotate once (only the password: the username is kept).
    let rotated = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(json!({"secrets": {"password": NEW_SECRET}})),
            &[],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    assert_eq!(rotated.body["current_version"], 2);
    assert_eq!(rotated.body["fields"]["username"], "finance_svc");
    for id in &ids[..2] {
        let r = revealed_password(&s, id).await;
        assert_eq!(r.body["secrets"]["password"], NEW_SECRET, "{}", r.text);
    }
    // The pinned one keeps the previous version during the grace period …
    let pinned = revealed_password(&s, &ids[2]).await;
    assert_eq!(pinned.body["secrets"]["password"], CANARY);

    let versions = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            None,
            &[],
        )
        .await;
    assert_eq!(versions.body["items"][0]["state"], "current");
    assert_eq!(versions.body["items"][1]["state"], "previous");
    assert!(!versions.text.contains(CANARY));

    // … and the old version is destroyed when it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = s
            .call(
                Method::GET,
                &format!("/api/v1/credentials/{cred_id}/versions"),
                None,
                &[],
            )
            .await;
        if v.body["items"][1]["state"] == "destroyed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version 1 not destroyed: {}",
            v.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = revealed_password(&s, &ids[2]).await;
    assert_eq!(gone.status, StatusCode::CONFLICT, "{}", gone.text);
    assert_eq!(gone.body["code"], "credential_version_unavailable");
    assert!(!gone.text.contains(CANARY));
    let audit = s.app_state.store.audit_for_target(&cred_id).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.entry.action == "credential.version.destroy"));
    // No ciphertext of version 1 is left anywhere.
    let err = s.app_state.store.credential_secrets(&cred_id, 1).await;
    assert!(err.is_err());

    // Usage lists all three with who used it last.
    let usage = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{cred_id}/usage"),
            None,
            &[],
        )
        .await;
    let items = usage.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|u| u["last_used_by"].is_string()));

    // Deleting it while used answers 409 in_use listing the connections.
    let del = s
        .call(
            Method::DELETE,
            &format!("/api/v1/credentials/{cred_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT);
    assert_eq!(del.body["code"], "in_use");
    assert_eq!(
        del.body["details"]["connections"].as_array().unwrap().len(),
        3
    );
    for id in &ids {
        let d = s
            .call(
                Method::DELETE,
                &format!("/api/v1/connections/{id}"),
                None,
                &[],
            )
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
    }
    let del = s
        .call(
            Method::DELETE,
            &format!("/api/v1/credentials/{cred_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
}

#[tokio::test]
async fn inline_secrets_are_a_credential_owned_by_the_connection() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let c = s.create_pg(&project, "inline").await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let id = c.body["id"].as_str().unwrap().to_owned();
    assert_eq!(c.body["credential"]["owned"], true);
    assert_eq!(c.body["credential"]["kind"], "inline");
    let cred_id = c.body["credential"]["id"].as_str().unwrap().to_owned();

    // Changing the inline secret is a rotation: version 2, version 1 kept for the grace.
    let p = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"secrets": {"password": NEW_SECRET}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.body["credential"]["current_version"], 2);
    assert_eq!(
        revealed_password(&s, &id).await.body["secrets"]["password"],
        NEW_SECRET
    );
    let versions = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            None,
            &[],
        )
        .await;
    assert_eq!(versions.body["items"].as_array().unwrap().len(), 2);
    // Owned credentials are not in the shared list, and change only through their connection.
    let ws = s.default_workspace().await;
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
            &[],
        )
        .await;
    assert!(list.body["items"].as_array().unwrap().is_empty());
    let owned_list = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials?owned=true"),
            None,
            &[],
        )
        .await;
    assert_eq!(owned_list.body["items"].as_array().unwrap().len(), 1);
    let rotate = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(json!({"secrets": {"password": "x"}})),
            &[],
        )
        .await;
    assert_eq!(rotate.status, StatusCode::CONFLICT);
    assert_eq!(rotate.body["code"], "invalid_state");

    // Switching to a shared credential deletes the owned one; detaching goes back inline.
    let shared = create_credential(
        &s,
        &ws,
        json!({"name": "shared", "kind": "username_password",
               "secrets": {"username": "u", "password": CANARY}}),
    )
    .await;
    let shared_id = shared.body["id"].as_str().unwrap();
    let sw = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"credential": {"id": shared_id}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(sw.status, StatusCode::OK, "{}", sw.text);
    assert_eq!(sw.body["credential"]["id"], shared_id);
    let old = s
        .call(
            Method::GET,
            &format!("/api/v1/credentials/{cred_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    // Inline secrets on a connection that uses a shared credential are refused…
    let mixed = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"secrets": {"password": "x"}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(mixed.status, StatusCode::BAD_REQUEST);
    assert_eq!(mixed.body["field"], "/secrets");
    // …unless the credential is detached in the same change.
    let back = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"credential": null, "secrets": {"password": NEW_SECRET}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text);
    assert_eq!(back.body["credential"]["owned"], true);
    assert_eq!(
        revealed_password(&s, &id).await.body["secrets"]["password"],
        NEW_SECRET
    );
}

#[tokio::test]
async fn credential_input_errors_name_the_field_and_change_nothing() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let api_key = create_credential(
        &s,
        &ws,
        json!({"name": "an-api-key", "kind": "api_key", "secrets": {"key": CANARY}}),
    )
    .await;
    assert_eq!(api_key.status, StatusCode::CREATED, "{}", api_key.text);
    let api_key_id = api_key.body["id"].as_str().unwrap().to_owned();

    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "unknown kind",
            json!({"name": "x", "kind": "nope", "secrets": {}}),
            400,
            "unknown_credential_kind",
            "/kind",
        ),
        (
            "unknown field",
            json!({"name": "x", "kind": "username_password", "secrets": {"username": "u", "password": CANARY, "pin": "1"}}),
            400,
            "invalid_setting",
            "/secrets/pin",
        ),
        (
            "missing required",
            json!({"name": "x", "kind": "username_password", "secrets": {"username": "u"}}),
            400,
            "invalid_setting",
            "/secrets/password",
        ),
        (
            "secret not a string",
            json!({"name": "x", "kind": "username_password", "secrets": {"username": "u", "password": 5}}),
            400,
            "invalid_setting",
            "/secrets/password",
        ),
        (
            "both secrets and external",
            json!({"name": "x", "kind": "api_key", "secrets": {"key": CANARY}, "external": {"provider": "vault_kv2", "address": "http://127.0.0.1:1", "path": "p"}}),
            400,
            "invalid_field",
            "/external",
        ),
        (
            "unknown provider",
            json!({"name": "x", "kind": "api_key", "external": {"provider": "keychain"}}),
            400,
            "invalid_field",
            "/external/provider",
        ),
        (
            "bad name",
            json!({"name": "Bad Name", "kind": "api_key", "secrets": {"key": CANARY}}),
            400,
            "invalid_name",
            "/name",
        ),
        (
            "duplicate name",
            json!({"name": "an-api-key", "kind": "api_key", "secrets": {"key": CANARY}}),
            409,
            "name_taken",
            "/name",
        ),
    ];
    for (what, body, status, code, field) in cases {
        let r = create_credential(&s, &ws, body).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        assert_eq!(r.body["code"], code, "{what}: {}", r.text);
        assert_eq!(r.body["field"], field, "{what}: {}", r.text);
        assert!(!r.text.contains(CANARY), "{what} echoed the secret");
    }

    // A postgresql connection does not accept an api_key credential.
    let mismatch = create_user(&s, &project, "pg", json!({"id": api_key_id})).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(mismatch.body["code"], "credential_kind_mismatch");
    assert_eq!(mismatch.body["field"], "/credential");
    let both = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "pg", "type": "postgresql",
                "settings": {"host": "h", "database": "d"},
                "secrets": {"password": CANARY}, "credential": {"id": api_key_id}})),
            &[],
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    assert_eq!(both.body["field"], "/secrets");
    let missing = create_user(&s, &project, "pg", json!({"id": "no-such-id"})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.body["field"], "/credential");
    let bad_pin = create_user(&s, &project, "pg", json!({"id": api_key_id, "version": 0})).await;
    assert_eq!(bad_pin.body["field"], "/credential/version");
    let list = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/connections"),
            None,
            &[],
        )
        .await;
    assert!(list.body["items"].as_array().unwrap().is_empty());

    // Revoking the current version is refused; an unknown version is 404.
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{api_key_id}/versions/1/revoke"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["code"], "invalid_state");
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{api_key_id}/versions/9/revoke"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // PATCH needs If-Match and changes only metadata.
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/credentials/{api_key_id}"),
            Some(json!({"description": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status.as_u16(), 428);
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/credentials/{api_key_id}"),
            Some(json!({"secrets": {"api_key": "y"}})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "/secrets");
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/credentials/{api_key_id}"),
            Some(json!({"name": "renamed"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["revision"], 2);
}

#[tokio::test]
async fn credentials_respect_permissions_and_workspaces() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let cred = create_credential(
        &s,
        &ws,
        json!({"name": "db", "kind": "username_password",
               "secrets": {"username": "u", "password": CANARY}}),
    )
    .await;
    let cred_id = cred.body["id"].as_str().unwrap().to_owned();
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other_ws = other.body["id"].as_str().unwrap().to_owned();

    // A token of another workspace does not see it at all.
    let outsider = s
        .token_with(
            &[Permission::CredentialsRead, Permission::CredentialsWrite],
            Some(&other_ws),
        )
        .await;
    for (method, path) in [
        (Method::GET, format!("/api/v1/credentials/{cred_id}")),
        (
            Method::GET,
            format!("/api/v1/credentials/{cred_id}/versions"),
        ),
        (Method::GET, format!("/api/v1/credentials/{cred_id}/usage")),
        (Method::DELETE, format!("/api/v1/credentials/{cred_id}")),
    ] {
        let r = s.raw(method, &path, Some(&outsider), &[], None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    // A builder may attach it (credentials:use) but not read values or rotate.
    let builder = s
        .token_with(
            &[
                Permission::ConnectionsRead,
                Permission::ConnectionsWrite,
                Permission::CredentialsRead,
                Permission::CredentialsUse,
            ],
            Some(&ws),
        )
        .await;
    let body = json!({"name": "built", "type": "postgresql",
        "settings": {"host": "h", "database": "d"}, "credential": {"id": cred_id}});
    let r = s
        .raw(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(&builder),
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let conn_id = r.body["id"].as_str().unwrap();
    let r = s
        .raw(
            Method::GET,
            &format!("/api/v1/connections/{conn_id}"),
            Some(&builder),
            &[],
            None,
        )
        .await;
    assert_eq!(r.body["secrets"]["password"], "********");
    assert!(!r.text.contains(CANARY));
    let r = s
        .raw(
            Method::POST,
            &format!("/api/v1/credentials/{cred_id}/versions"),
            Some(&builder),
            &[("content-type", "application/json")],
            Some(
                json!({"secrets": {"password": "x"}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Without credentials:use a credential cannot be attached.
    let no_use = s
        .token_with(
            &[Permission::ConnectionsRead, Permission::ConnectionsWrite],
            Some(&ws),
        )
        .await;
    let body = json!({"name": "built2", "type": "postgresql",
        "settings": {"host": "h", "database": "d"}, "credential": {"id": cred_id}});
    let r = s
        .raw(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(&no_use),
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_row_fails_its_integrity_check_and_is_reported() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let mut creds = Vec::new();
    for (name, password) in [("victim", "victim-pass"), ("source", CANARY)] {
        let c = create_credential(
            &s,
            &ws,
            json!({"name": name, "kind": "username_password",
                   "secrets": {"username": "u", "password": password}}),
        )
        .await;
        creds.push(c.body["id"].as_str().unwrap().to_owned());
    }
    let conn = create_user(&s, &project, "victim-conn", json!({"id": creds[0]})).await;
    let conn_id = conn.body["id"].as_str().unwrap().to_owned();
    let db = s.raw_db().await;
    // Copy the source credential's password ciphertext into the victim's row: another
    // credential. Then into another field, then another version: each must be caught.
    let tamper = |sql: &'static str| {
        let db = db.clone();
        let (victim, source) = (creds[0].clone(), creds[1].clone());
        async move {
            sqlx::query(sql)
                .bind(victim)
                .bind(source)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    tamper(
        "UPDATE credential_secrets SET (key_id, nonce, ciphertext) = \
         (SELECT key_id, nonce, ciphertext FROM credential_secrets \
          WHERE credential_id = $2 AND field = 'password') \
         WHERE credential_id = $1 AND field = 'password'",
    )
    .await;
    let r = revealed_password(&s, &conn_id).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.body["code"], "secret_integrity_error");
    assert!(!r.text.contains(CANARY));
    // A ciphertext moved to another field of its own credential fails too.
    let key = create_credential(
        &s,
        &ws,
        json!({"name": "deploy-key", "kind": "ssh_key",
               "secrets": {"username": "deploy", "private_key": CANARY, "passphrase": "pp"}}),
    )
    .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let twin = key.body["id"].as_str().unwrap().to_owned();
    sqlx::query(
        "UPDATE credential_secrets SET (key_id, nonce, ciphertext) = \
         (SELECT key_id, nonce, ciphertext FROM credential_secrets \
          WHERE credential_id = $1 AND field = 'private_key') \
         WHERE credential_id = $1 AND field = 'passphrase'",
    )
    .bind(&twin)
    .execute(&db)
    .await
    .unwrap();
    let sftp = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(json!({"name": "twin-conn", "type": "sftp",
                "settings": {"host": "127.0.0.1"}, "credential": {"id": twin}})),
            &[],
        )
        .await;
    assert_eq!(sftp.status, StatusCode::CREATED, "{}", sftp.text);
    let r = revealed_password(&s, sftp.body["id"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.body["code"], "secret_integrity_error");
}
