//! API tokens: shown once, never wider than their creator, revocation immediate; runner
//! tokens: one workspace, resolve and test only, at most an hour.

use patchbay_core::permission::Permission;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::Service;

#[tokio::test]
async fn personal_tokens_are_shown_once_narrowed_and_revoked_at_once() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(
                json!({"name": "ci-reader", "expires_in": 3600, "workspace_id": ws,
                        "permissions": ["connections:read", "credentials:read"]}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pbt_"));
    assert_eq!(r.body["kind"], "personal");
    assert_eq!(r.body["workspace_id"], ws.as_str());
    assert!(r.body["expires_at"].is_string());

    // It works, within its permissions only.
    let ok = s
        .call_as(
            &token,
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let denied = s
        .call_as(
            &token,
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // It cannot mint a wider token, nor reach another workspace.
    let wider = s
        .call_as(
            &token,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "wider", "permissions": ["connections:reveal"]})),
        )
        .await;
    assert_eq!(wider.status, StatusCode::BAD_REQUEST, "{}", wider.text);
    assert_eq!(wider.body["field"], "/permissions");
    let narrower = s
        .call_as(
            &token,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "narrower"})),
        )
        .await;
    assert_eq!(narrower.status, StatusCode::CREATED, "{}", narrower.text);
    assert_eq!(
        narrower.body["workspace_id"],
        ws.as_str(),
        "inherits the caller's workspace"
    );

    // Listing shows metadata, never a token.
    let list = s.call(Method::GET, "/api/v1/tokens", None, &[]).await;
    assert!(list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));
    assert!(!list.text.contains(&token));
    let own = s.call_as(&token, Method::GET, "/api/v1/tokens", None).await;
    let names: Vec<&str> = own.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ci-reader")
            && names.contains(&"narrower")
            && !names.contains(&"initial-admin"),
        "{names:?}"
    );

    // Revocation takes effect on the next request, with the same 401 as an unknown token.
    let del = s
        .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None, &[])
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let after = s
        .call_as(
            &token,
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
        )
        .await;
    let unknown = s
        .call_as(
            "pbt_nope",
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
        )
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.text, unknown.text);
    let again = s
        .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None, &[])
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // Bad input names the field.
    for (body, field) in [
        (json!({"name": "x", "expires_in": 5}), "/expires_in"),
        (
            json!({"name": "x", "permissions": ["nope"]}),
            "/permissions/0",
        ),
        (
            json!({"name": "x", "workspace_id": "no-such"}),
            "/workspace_id",
        ),
        (json!({"name": "Bad Name"}), "/name"),
    ] {
        let r = s
            .call(Method::POST, "/api/v1/tokens", Some(body), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
}

#[tokio::test]
async fn runner_tokens_reach_one_workspace_for_at_most_an_hour() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other_ws = other.body["id"].as_str().unwrap().to_owned();
    let r = s
        .raw(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/runner-tokens"),
            Some(&s.token),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["kind"], "runner");
    assert_eq!(
        r.body["permissions"],
        json!(["connections:test", "connections:resolve"])
    );
    let runner = r.body["token"].as_str().unwrap().to_owned();
    let created = r.body["created_at"].as_str().unwrap().to_owned();
    let expires = r.body["expires_at"].as_str().unwrap().to_owned();
    assert!(expires > created);

    // Nothing but resolve and test: no reads, no reveals, no minting.
    let read = s
        .call_as(
            &runner,
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    let mint = s
        .call_as(
            &runner,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "x", "permissions": ["connections:read"]})),
        )
        .await;
    assert_eq!(mint.status, StatusCode::BAD_REQUEST);
    // Another workspace does not exist for it.
    let r = s
        .call_as(
            &runner,
            Method::POST,
            &format!("/api/v1/workspaces/{other_ws}/runner-tokens"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    for ttl in [0, 3601] {
        let r = s
            .call(
                Method::POST,
                &format!("/api/v1/workspaces/{ws}/runner-tokens"),
                Some(json!({"ttl_seconds": ttl})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.body["field"], "/ttl_seconds");
    }
    // A caller without resolve and test cannot mint one.
    let reader = s
        .token_with(&[Permission::ConnectionsRead], Some(&ws))
        .await;
    let r = s
        .call_as(
            &reader,
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/runner-tokens"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A 1-second runner token stops working when it expires.
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/runner-tokens"),
            Some(json!({"ttl_seconds": 1})),
            &[],
        )
        .await;
    let short = r.body["token"].as_str().unwrap().to_owned();
    let mine = s.call_as(&short, Method::GET, "/api/v1/tokens", None).await;
    assert_eq!(mine.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let late = s.call_as(&short, Method::GET, "/api/v1/tokens", None).await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_source_address_with_one_401_for_every_cause() {
    let s = Service::start_with(patchbay_server::state::Settings {
        auth_failure_limit: 5,
        ..Default::default()
    })
    .await;
    // Unknown, malformed and truncated tokens all get the same 401: nothing says which part
    // was wrong.
    let bodies = [
        "pbt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "not-a-token".to_owned(),
        s.token[..s.token.len() - 1].to_owned(),
    ];
    let mut seen = vec![];
    for t in &bodies {
        let r = s.call_as(t, Method::GET, "/api/v1/workspaces", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        seen.push(r.text);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // Two more failures reach the limit of 5 for this address...
    for _ in 0..2 {
        let r = s
            .call_as("pbt_guess", Method::GET, "/api/v1/workspaces", None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // ...after which the address is refused before any lookup, even with a valid token.
    let blocked = s.call(Method::GET, "/api/v1/workspaces", None, &[]).await;
    assert_eq!(
        blocked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        blocked.text
    );
    assert_eq!(blocked.body["code"], "rate_limited");
    let retry: u64 = blocked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Requests that need no token still work.
    let health = s.raw(Method::GET, "/api/v1/health", None, &[], None).await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_audited_and_throttled() {
    let s = Service::start_with(patchbay_server::state::Settings {
        auth_failure_limit: 3,
        trusted_proxies: vec![patchbay_probe::guard::Cidr::parse("127.0.0.1").unwrap()],
        ..Default::default()
    })
    .await;
    let ws = s.default_workspace().await;
    // The proxy (127.0.0.1, trusted) forwards for 203.0.113.7: the audit record names the
    // client, not the proxy, and ignores what the client put in front of it.
    let project = s.default_project().await;
    let body = serde_json::json!({"name": "via-proxy", "type": "postgresql",
        "settings": {"host": "127.0.0.1", "database": "test"}});
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(body),
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.create&limit=5"),
            None,
            &[],
        )
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let events = audit.body["items"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["source_address"] == "203.0.113.7"),
        "{events:?}"
    );
    // Failures are counted per forwarded client: one client is blocked, another is not.
    for _ in 0..3 {
        let r = s
            .raw(
                Method::GET,
                "/api/v1/workspaces",
                Some("pbt_guess"),
                &[("x-forwarded-for", "203.0.113.8")],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let blocked = s
        .raw(
            Method::GET,
            "/api/v1/workspaces",
            Some(&s.token),
            &[("x-forwarded-for", "203.0.113.8")],
            None,
        )
        .await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    let other = s
        .raw(
            Method::GET,
            "/api/v1/workspaces",
            Some(&s.token),
            &[("x-forwarded-for", "203.0.113.9")],
            None,
        )
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let s = Service::start_with(patchbay_server::state::Settings {
        auth_failure_limit: 2,
        ..Default::default()
    })
    .await;
    // A client cannot escape throttling by inventing a new address per request.
    for i in 0..2 {
        let ip = format!("198.51.100.{i}");
        let r = s
            .raw(
                Method::GET,
                "/api/v1/workspaces",
                Some("pbt_guess"),
                &[("x-forwarded-for", &ip)],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let blocked = s
        .raw(
            Method::GET,
            "/api/v1/workspaces",
            Some(&s.token),
            &[("x-forwarded-for", "198.51.100.77")],
            None,
        )
        .await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
}
