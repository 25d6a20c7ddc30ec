//! Events and webhooks: a change commits with its event; a real HTTP receiver on 127.0.0.1
//! checks each delivery's HMAC signature; failures are retried with backoff until the
//! receiver answers 2xx, or marked failed after the last attempt; secrets never travel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, Mac};
use patchbay_server::service::events::EventSettings;
use patchbay_server::state::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::kit::{Service, CANARY};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: String,
    pub delivery: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// What the receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on 127.0.0.1 that answers 500 to the first `fail_first` requests.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Default::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let mut seen = seen.lock().unwrap();
                    let answered = if seen.len() < fail_first { 500 } else { 200 };
                    seen.push(Received {
                        event: h("x-patchbay-event"),
                        delivery: h("x-patchbay-delivery"),
                        timestamp: h("x-patchbay-timestamp"),
                        signature: h("x-patchbay-signature"),
                        body,
                        answered,
                    });
                    AxumStatus::from_u16(answered).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/hook"),
            got,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the received requests (10 s at most).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..500 {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}; got {:#?}", self.received());
    }
}

/// Verifies a delivery as a receiver would (docs/events.md).
pub fn signature_ok(secret: &str, r: &Received) -> bool {
    let Some(hex_sig) = r.signature.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", r.timestamp, r.body).as_bytes());
    let Ok(raw) = hex::decode(hex_sig) else {
        return false;
    };
    mac.verify_slice(&raw).is_ok()
}

/// Millisecond retries, so tests see several attempts quickly.
pub fn fast_events(max_attempts: u32) -> Settings {
    Settings {
        events: EventSettings {
            poll_interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            max_attempts,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            lease: Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Creates a webhook in the default workspace; returns (id, secret).
pub async fn webhook(
    s: &Service,
    url: &str,
    events: Value,
    secret: Option<&str>,
) -> (String, String) {
    let ws = s.default_workspace().await;
    let mut body = json!({"url": url, "events": events, "description": "test receiver"});
    if let Some(sec) = secret {
        body["secret"] = json!(sec);
    }
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/webhooks"),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn changes_are_delivered_signed_with_their_event_id_and_no_secret() {
    let s = Service::start_with(fast_events(5)).await;
    let rx = Receiver::start(0).await;
    // The canary as signing secret: it must never appear in a delivery or a response.
    let (hook, secret) = webhook(&s, &rx.url, json!([]), Some(CANARY)).await;
    assert_eq!(secret, CANARY);
    let project = s.default_project().await;
    let created = s.create_pg(&project, "events-pg").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let conn = created.body["id"].as_str().unwrap().to_owned();
    let patched = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{conn}"),
            Some(json!({"description": "changed", "secrets": {"password": format!("{CANARY}-2")}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    // A test (refused by the network guard: loopback) is still a recorded test.
    let tested = s
        .call(
            Method::POST,
            &format!("/api/v1/connections/{conn}/test"),
            None,
            &[],
        )
        .await;
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.text);
    let ws = s.default_workspace().await;
    let cred = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/credentials"),
            Some(json!({"name": "svc", "kind": "username_password",
                        "secrets": {"username": "svc", "password": CANARY}})),
            &[],
        )
        .await;
    assert_eq!(cred.status, StatusCode::CREATED, "{}", cred.text);
    let cred = cred.body["id"].as_str().unwrap().to_owned();
    let rotated = s
        .call(
            Method::POST,
            &format!("/api/v1/credentials/{cred}/versions"),
            Some(json!({"secrets": {"password": format!("{CANARY}-3")}})),
            &[],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    let deleted = s
        .call(
            Method::DELETE,
            &format!("/api/v1/connections/{conn}"),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    let want = [
        "connection.created",
        "connection.updated",
        "connection.tested",
        "credential.rotated",
        "connection.deleted",
    ];
    let got = rx
        .wait_for("five events", |g| {
            want.iter().all(|k| g.iter().any(|r| r.event == *k))
        })
        .await;
    for r in &got {
        assert!(signature_ok(CANARY, r), "bad signature on {r:?}");
        assert!(!signature_ok("another secret of 16+", r));
        let body = r.json();
        assert_eq!(body["id"], r.delivery.as_str());
        assert_eq!(body["kind"], r.event.as_str());
        assert_eq!(body["workspace_id"], ws.as_str());
        assert!(body["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert!(
            !r.body.contains(CANARY),
            "a delivery carried a secret: {}",
            r.body
        );
        let age = patchbay_store::now_millis() / 1000 - r.timestamp.parse::<i64>().unwrap();
        assert!((0..60).contains(&age));
    }
    let created_ev = got
        .iter()
        .find(|r| r.event == "connection.created")
        .unwrap()
        .json();
    assert_eq!(created_ev["data"]["target"]["id"], conn.as_str());
    assert_eq!(created_ev["data"]["details"]["name"], "events-pg");
    let updated = got
        .iter()
        .find(|r| r.event == "connection.updated")
        .unwrap()
        .json();
    assert_eq!(
        updated["data"]["details"]["changes"]["secrets.password"],
        "changed"
    );
    let rotated = got
        .iter()
        .find(|r| r.event == "credential.rotated")
        .unwrap()
        .json();
    assert_eq!(rotated["data"]["target"]["id"], cred.as_str());
    // No event for what is not one (a credential created is not in the list).
    assert!(
        got.iter().all(|r| want.contains(&r.event.as_str())),
        "{got:#?}"
    );
    // Events keep commit order for one receiver's single-threaded view of one workspace.
    assert_eq!(
        got.iter()
            .filter(|r| r.event == "connection.created")
            .count(),
        1
    );

    // Neither the webhook nor its deliveries show the secret.
    for path in [
        format!("/api/v1/workspaces/{ws}/webhooks"),
        format!("/api/v1/webhooks/{hook}"),
        format!("/api/v1/webhooks/{hook}/deliveries"),
    ] {
        let r = s.call(Method::GET, &path, None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(!r.text.contains(CANARY), "{path} showed the secret");
    }
    let deliveries = s
        .call(
            Method::GET,
            &format!("/api/v1/webhooks/{hook}/deliveries"),
            None,
            &[],
        )
        .await;
    let items = deliveries.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{}", deliveries.text);
    assert!(
        items
            .iter()
            .all(|d| d["state"] == "delivered" && d["attempts"] == 1 && d["last_status"] == 200),
        "{}",
        deliveries.text
    );
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_event_again_until_it_answers_2xx() {
    let s = Service::start_with(fast_events(5)).await;
    let rx = Receiver::start(2).await;
    let (hook, secret) = webhook(&s, &rx.url, json!(["connection.created"]), None).await;
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{secret}"
    );
    let project = s.default_project().await;
    let created = s.create_pg(&project, "retried").await;
    let conn = created.body["id"].as_str().unwrap();
    let got = rx
        .wait_for("a 2xx answer", |g| g.iter().any(|r| r.answered == 200))
        .await;
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The same event each time (receivers deduplicate on X-Patchbay-Delivery), signed anew.
    assert!(got
        .iter()
        .all(|r| r.delivery == got[0].delivery && signature_ok(&secret, r)));
    assert_eq!(got[0].json()["data"]["target"]["id"], conn);
    // The attempts are recorded: three, delivered, status 200.
    let mut delivered = Value::Null;
    for _ in 0..100 {
        let d = s
            .call(
                Method::GET,
                &format!("/api/v1/webhooks/{hook}/deliveries"),
                None,
                &[],
            )
            .await;
        if d.body["items"][0]["state"] == "delivered" {
            delivered = d.body["items"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered["attempts"], 3, "{delivered}");
    assert_eq!(delivered["last_status"], 200);
    assert_eq!(delivered["event_id"], got[0].delivery.as_str());
    // Nothing more arrives once delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test]
async fn a_delivery_is_marked_failed_after_the_last_attempt() {
    let s = Service::start_with(fast_events(3)).await;
    let rx = Receiver::start(usize::MAX).await;
    let (hook, _) = webhook(&s, &rx.url, json!([]), None).await;
    let project = s.default_project().await;
    s.create_pg(&project, "never-delivered").await;
    rx.wait_for("three attempts", |g| g.len() >= 3).await;
    let mut last = Value::Null;
    for _ in 0..100 {
        let d = s
            .call(
                Method::GET,
                &format!("/api/v1/webhooks/{hook}/deliveries"),
                None,
                &[],
            )
            .await;
        last = d.body["items"][0].clone();
        if last["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last["state"], "failed", "{last}");
    assert_eq!(last["attempts"], 3);
    assert_eq!(last["last_status"], 500);
    assert_eq!(last["last_error"], "HTTP 500");
    assert!(last["next_attempt_at"].is_null());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 3, "retried past max_attempts");
    // Redelivery: a fresh budget of attempts, same event id.
    let event = last["event_id"].as_str().unwrap().to_owned();
    let again = s
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{hook}/deliveries/{event}/redeliver"),
            None,
            &[],
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    let got = rx.wait_for("three more attempts", |g| g.len() >= 6).await;
    assert!(got.iter().all(|r| r.delivery == event));
    let unknown = s
        .call(
            Method::POST,
            &format!(
                "/api/v1/webhooks/{hook}/deliveries/0190c0de-0000-7000-8000-000000000001/redeliver"
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test]
async fn webhooks_filter_kinds_can_be_disabled_and_pinged() {
    let s = Service::start_with(fast_events(5)).await;
    let rotations = Receiver::start(0).await;
    let everything = Receiver::start(0).await;
    let (_, _) = webhook(&s, &rotations.url, json!(["credential.rotated"]), None).await;
    let (all, all_secret) = webhook(&s, &everything.url, json!([]), None).await;
    let project = s.default_project().await;
    s.create_pg(&project, "filtered").await;
    everything
        .wait_for("connection.created", |g| {
            g.iter().any(|r| r.event == "connection.created")
        })
        .await;
    // Disabled: nothing is queued for it.
    let off = s
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{all}"),
            Some(json!({"enabled": false})),
            &[],
        )
        .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);
    assert_eq!(off.body["enabled"], false);
    assert_eq!(off.body["version"], 2);
    s.create_pg(&project, "while-disabled").await;
    // A ping goes to the webhook whatever its filter or state.
    let ping = s
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{all}/ping"),
            None,
            &[],
        )
        .await;
    assert_eq!(ping.status, StatusCode::ACCEPTED, "{}", ping.text);
    let got = everything
        .wait_for("ping", |g| g.iter().any(|r| r.event == "ping"))
        .await;
    let p = got.iter().find(|r| r.event == "ping").unwrap();
    assert_eq!(p.delivery, ping.body["event_id"].as_str().unwrap());
    assert!(signature_ok(&all_secret, p));
    assert_eq!(
        got.iter()
            .filter(|r| r.event == "connection.created")
            .count(),
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rotations.received().is_empty(),
        "{:#?}",
        rotations.received()
    );
}

#[tokio::test]
async fn webhook_input_is_checked_field_by_field() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let path = format!("/api/v1/workspaces/{ws}/webhooks");
    for (body, field) in [
        (json!({}), "/url"),
        (json!({"url": "ftp://127.0.0.1/hook"}), "/url"),
        (json!({"url": "file:///etc/passwd"}), "/url"),
        (
            json!({"url": format!("http://user:{CANARY}@127.0.0.1/hook")}),
            "/url",
        ),
        (json!({"url": "not a url"}), "/url"),
        (
            json!({"url": "http://127.0.0.1/h", "events": ["connection.exploded"]}),
            "/events/0",
        ),
        (
            json!({"url": "http://127.0.0.1/h", "events": "all"}),
            "/events",
        ),
        (
            json!({"url": "http://127.0.0.1/h", "enabled": "yes"}),
            "/enabled",
        ),
        (
            json!({"url": "http://127.0.0.1/h", "secret": "short"}),
            "/secret",
        ),
        (
            json!({"url": "http://127.0.0.1/h", "colour": "red"}),
            "/colour",
        ),
    ] {
        let r = s.call(Method::POST, &path, Some(body.clone()), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.body["field"], field, "{body}: {}", r.text);
        assert!(!r.text.contains(CANARY));
    }
    let (hook, _) = webhook(&s, "https://hooks.example.com/patchbay", json!([]), None).await;
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{hook}"),
            Some(json!({"secret": "a new secret, long enough"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["field"], "/secret");
    let stale = s
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{hook}"),
            Some(json!({"description": "x"})),
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text
    );

    // Another workspace's admin sees no such webhook; a member without workspace:admin is
    // refused.
    let other = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "other"})),
            &[],
        )
        .await;
    let other_ws = other.body["id"].as_str().unwrap().to_owned();
    let admin_b = s.create_user("admin-b").await;
    s.set_role(&other_ws, &admin_b, "admin").await;
    let token_b = s.user_token(&admin_b).await;
    for (m, p) in [
        (Method::GET, format!("/api/v1/webhooks/{hook}")),
        (Method::DELETE, format!("/api/v1/webhooks/{hook}")),
        (Method::GET, format!("/api/v1/webhooks/{hook}/deliveries")),
        (Method::GET, format!("/api/v1/workspaces/{ws}/webhooks")),
    ] {
        let r = s.call_as(&token_b, m.clone(), &p, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {p}: {}", r.text);
    }
    let editor = s.create_user("editor-a").await;
    s.set_role(&ws, &editor, "editor").await;
    let editor_token = s.user_token(&editor).await;
    let r = s
        .call_as(
            &editor_token,
            Method::GET,
            &format!("/api/v1/webhooks/{hook}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    let gone = s
        .call(
            Method::DELETE,
            &format!("/api/v1/webhooks/{hook}"),
            None,
            &[],
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = s
        .call(Method::GET, &format!("/api/v1/webhooks/{hook}"), None, &[])
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_data_key_rotation_re_encrypts_the_signing_secret() {
    let s = Service::start_with(fast_events(5)).await;
    let rx = Receiver::start(0).await;
    let (hook, secret) = webhook(&s, &rx.url, json!([]), None).await;
    let ws = s.default_workspace().await;
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/keys/rotate-data"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // The webhook's secret is one of the ciphertexts the rotation moves.
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let mut state = Value::Null;
    for _ in 0..200 {
        let r = s
            .call(
                Method::GET,
                &format!("/api/v1/keys/rotations/{id}"),
                None,
                &[],
            )
            .await;
        state = r.body["state"].clone();
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "done");
    // Signed with the same secret, now decrypted under the new data key.
    let ping = s
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{hook}/ping"),
            None,
            &[],
        )
        .await;
    assert_eq!(ping.status, StatusCode::ACCEPTED);
    let got = rx.wait_for("ping", |g| !g.is_empty()).await;
    assert!(signature_ok(&secret, &got[0]));
}
