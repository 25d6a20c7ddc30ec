//! The audit log newest first (API `order=desc`, the UI's Newer/Older pages and usernames
//! for `user:<id>` actors) and the admin pages: zones, webhooks, members — status codes,
//! CSRF refusal, a viewer's form posts refused, secrets shown once.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::{Service, CANARY};
use crate::ui::{admin_password, assert_ui_headers, user_with_password, Browser};

/// `count` project creations: audit events of the default workspace.
async fn events(s: &Service, ws: &str, count: usize) {
    for i in 0..count {
        let r = s
            .call(
                Method::POST,
                &format!("/api/v1/workspaces/{ws}/projects"),
                Some(json!({"name": format!("p-{i:03}")})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
}

fn seqs(items: &serde_json::Value) -> Vec<i64> {
    items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_audit_api_lists_newest_first_with_order_desc_and_refuses_other_orders() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    events(&s, &ws, 5).await;
    let url = format!("/api/v1/workspaces/{ws}/audit?action=project.create&limit=3");
    let asc = s.call(Method::GET, &url, None, &[]).await;
    assert_eq!(asc.status, StatusCode::OK, "{}", asc.text);
    let asc_seqs = seqs(&asc.body);
    assert!(asc_seqs.windows(2).all(|w| w[0] < w[1]), "{asc_seqs:?}");
    let desc = s
        .call(Method::GET, &format!("{url}&order=desc"), None, &[])
        .await;
    assert_eq!(desc.status, StatusCode::OK, "{}", desc.text);
    let first = seqs(&desc.body);
    assert_eq!(first.len(), 3);
    assert!(first.windows(2).all(|w| w[0] > w[1]), "{first:?}");
    assert_eq!(
        desc.body["items"][0]["target_kind"], "project",
        "{}",
        desc.text
    );
    let cursor = desc.body["next_cursor"].as_str().unwrap();
    let older = s
        .call(
            Method::GET,
            &format!("{url}&order=desc&cursor={cursor}"),
            None,
            &[],
        )
        .await;
    let second = seqs(&older.body);
    assert_eq!(second.len(), 2, "{}", older.text);
    assert!(second[0] < first[2], "{first:?} then {second:?}");
    // Together the two pages are the ascending list reversed.
    let all = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=project.create"),
            None,
            &[],
        )
        .await;
    let mut every = seqs(&all.body);
    every.reverse();
    assert_eq!([first, second].concat(), every);
    for bad in ["newest", "DESC", ""] {
        let r = s
            .call(Method::GET, &format!("{url}&order={bad}"), None, &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "order={bad}: {}", r.text);
        assert_eq!(r.body["code"], "invalid_query");
        assert_eq!(r.body["field"], "order");
    }
}

/// `href` values of links whose text contains `label`.
fn link(html: &str, label: &str) -> Option<String> {
    let end = html.find(label)?;
    let start = html[..end].rfind("href=\"")? + 6;
    let href = html[start..].split('"').next()?;
    Some(
        href.replace("&amp;", "&")
            .replace("&#38;", "&")
            .replace("&#x2f;", "/"),
    )
}

/// The event numbers of an audit page, top to bottom.
fn page_seqs(html: &str) -> Vec<i64> {
    html.split("<tr><td class=\"muted\">")
        .skip(1)
        .map(|r| r.split('<').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_audit_page_pages_newer_and_older_with_links_keeping_the_filters() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    events(&s, &ws, 60).await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let first = b
        .get(&format!("/workspaces/{ws}/audit?action=project.create"))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let top = page_seqs(&first.text);
    assert_eq!(top.len(), 50);
    assert!(top.windows(2).all(|w| w[0] > w[1]));
    assert!(
        link(&first.text, "Newer").is_none(),
        "the newest page has no newer"
    );
    let older = link(&first.text, "Older →").expect("an Older link");
    assert!(older.contains("action=project.create"), "{older}");
    let second = b.get(&older).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    let rest = page_seqs(&second.text);
    // 60 creations (and the bootstrap's default project, if audited in the workspace).
    assert!(!rest.is_empty() && rest.len() <= 11, "{rest:?}");
    assert!(rest[0] < top[49]);
    assert!(
        link(&second.text, "Older →").is_none(),
        "the oldest page has no older"
    );
    let newer = link(&second.text, "← Newer").expect("a Newer link");
    let back = b.get(&newer).await;
    assert_eq!(
        page_seqs(&back.text),
        top,
        "Newer leads back to the first page"
    );
    assert!(link(&back.text, "Newer").is_none());
    assert!(link(&back.text, "Older →").is_some());
    let bad = b.get(&format!("/workspaces/{ws}/audit?before=x")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
}
#[tokio::test]
async fn the_audit_page_shows_user_actors_by_username() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let b = user_with_password(&s, "auditor-ada", "admin").await;
    // A change made in a browser session is recorded as user:<id>.
    let made = b
        .post(
            &format!("/workspaces/{ws}/zones"),
            &[("name", "vpc-audited"), ("description", "")],
        )
        .await;
    assert!(made.status.is_redirection(), "{}", made.text);
    let page = b
        .get(&format!("/workspaces/{ws}/audit?action=zone.create"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    // In the table (the top bar shows the signed-in name too).
    assert!(
        page.text.contains("\">auditor-ada</span></td>"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("title=\"user:"),
        "the raw actor stays as a tooltip"
    );
    // The actor filter takes the username as people type it.
    let by_name = b
        .get(&format!(
            "/workspaces/{ws}/audit?action=zone.create&actor=auditor-ada"
        ))
        .await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.text);
    assert!(
        by_name.text.contains("\">auditor-ada</span></td>"),
        "{}",
        by_name.text
    );
    let nobody = b
        .get(&format!(
            "/workspaces/{ws}/audit?action=zone.create&actor=nobody-here"
        ))
        .await;
    assert_eq!(nobody.status, StatusCode::OK, "{}", nobody.text);
    assert!(
        !nobody.text.contains("\">auditor-ada</span></td>"),
        "{}",
        nobody.text
    );
}

#[tokio::test]
async fn zones_are_created_get_an_agent_token_shown_once_and_are_deleted() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let path = format!("/workspaces/{ws}/zones");
    let empty = b.get(&path).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text);
    assert_ui_headers(&path, &empty);
    assert!(empty.text.contains("No zones"));
    // Without the CSRF token nothing is created.
    let refused = b
        .send(Method::POST, &path, Some(&[("name", "vpc-eu")]))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(b.get(&path).await.text.contains("No zones"));
    let bad = b.post(&path, &[("name", "bad name!")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert!(bad.text.contains("alert-error"), "{}", bad.text);
    let made = b
        .post(&path, &[("name", "vpc-eu"), ("description", "EU VPC")])
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.text);
    let listed = b.get(&path).await;
    assert!(listed.text.contains("vpc-eu") && listed.text.contains("no agent"));
    let zone = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/zones"),
            None,
            &[],
        )
        .await;
    let zone_id = zone.body["items"][0]["id"].as_str().unwrap().to_owned();

    let minted = b
        .post(
            &format!("/workspaces/{ws}/zones/{zone_id}/agent-tokens"),
            &[("name", "agent-one")],
        )
        .await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.text);
    let marker = "id=\"minted\" class=\"mono\" readonly value=\"";
    let at = minted.text.find(marker).expect("the token is shown") + marker.len();
    let token = minted.text[at..].split('"').next().unwrap().to_owned();
    assert!(token.starts_with("pbt_"), "{token}");
    let again = b.get(&path).await;
    assert!(
        !again.text.contains(&token),
        "the agent token is shown once"
    );
    // The agent never called in: unhealthy, never seen.
    assert!(again.text.contains("agent-one") && again.text.contains("pill-failed\">unhealthy"));
    assert!(again.text.contains("last seen never"));

    // The first post only asks (a page with the same form and `confirmed=yes`).
    let asked = b.post(&format!("/zones/{zone_id}/delete"), &[]).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);
    assert!(asked.text.contains("Delete zone vpc-"), "{}", asked.text);
    assert!(asked.text.contains("name=\"confirmed\" value=\"yes\""));
    assert!(
        !b.get(&path).await.text.contains("No zones"),
        "nothing deleted yet"
    );
    let gone = b
        .post(&format!("/zones/{zone_id}/delete"), &[("confirmed", "yes")])
        .await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER, "{}", gone.text);
    assert!(b.get(&path).await.text.contains("No zones"));
    let missing = b
        .post(&format!("/zones/{zone_id}/delete"), &[("confirmed", "yes")])
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_zone_named_by_a_connection_is_not_deleted_and_the_page_says_why() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let z = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/zones"),
            Some(json!({"name": "vpc-used"})),
            &[],
        )
        .await;
    assert_eq!(z.status, StatusCode::CREATED, "{}", z.text);
    let zone_id = z.body["id"].as_str().unwrap().to_owned();
    let c = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(
                json!({"name": "zoned", "type": "postgresql", "zone": "vpc-used",
                        "settings": {"host": "db.internal", "database": "dw"}}),
            ),
            &[],
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let refused = b
        .post(&format!("/zones/{zone_id}/delete"), &[("confirmed", "yes")])
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(refused.text.contains("name this zone"), "{}", refused.text);
    assert!(refused.text.contains("vpc-used"));
}

#[tokio::test]
async fn webhooks_show_their_secret_only_on_creation_toggle_redeliver_and_delete() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let project = s.default_project().await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let path = format!("/workspaces/{ws}/webhooks");
    let page = b.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("No webhooks"));
    let bad = b.post(&path, &[("url", "ftp://example.com/")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert!(bad.text.contains("http or https"), "{}", bad.text);
    assert!(!bad.text.contains("whsec_"));
    // Port 9 on loopback: nothing listens, deliveries fail and are retried.
    let url = "http://127.0.0.1:9/hook";
    let created = b
        .post(
            &path,
            &[
                ("url", url),
                ("description", "pipeline bus"),
                ("events", "connection.created"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let marker = "id=\"secret\" class=\"mono\" readonly value=\"";
    let at = created.text.find(marker).expect("the secret is shown") + marker.len();
    let secret = created.text[at..].split('"').next().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    let list = b.get(&path).await;
    assert!(list.text.contains(url) && list.text.contains("connection.created"));
    assert!(!list.text.contains(&secret), "the secret is shown once");
    let hooks = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/webhooks"),
            None,
            &[],
        )
        .await;
    let id = hooks.body["items"][0]["id"].as_str().unwrap().to_owned();

    // An event for it: a delivery shows on its page.
    assert_eq!(
        s.create_pg(&project, "hooked").await.status,
        StatusCode::CREATED
    );
    let list = b.get(&path).await;
    assert!(
        list.text.contains("<code>connection.created</code>") && !list.text.contains("none yet"),
        "the latest delivery shows: {}",
        list.text
    );
    let detail = b.get(&format!("/webhooks/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text);
    assert_ui_headers("webhook", &detail);
    assert!(!detail.text.contains(&secret) && !detail.text.contains(CANARY));
    assert!(
        detail.text.contains("<code>connection.created</code>"),
        "{}",
        detail.text
    );
    let deliveries = s
        .call(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
            &[],
        )
        .await;
    let event = deliveries.body["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = b
        .post(&format!("/webhooks/{id}/deliveries/{event}/redeliver"), &[])
        .await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.text);
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=webhook.redeliver"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        audit.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        audit.text
    );

    let off = b
        .post(&format!("/webhooks/{id}/enabled"), &[("enabled", "false")])
        .await;
    assert_eq!(off.status, StatusCode::SEE_OTHER, "{}", off.text);
    let detail = b.get(&format!("/webhooks/{id}")).await;
    assert!(detail.text.contains(">disabled<") && detail.text.contains(">Enable<"));
    let wrong = b
        .post(&format!("/webhooks/{id}/enabled"), &[("enabled", "maybe")])
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let on = b
        .post(&format!("/webhooks/{id}/enabled"), &[("enabled", "true")])
        .await;
    assert_eq!(on.status, StatusCode::SEE_OTHER);
    assert!(b
        .get(&format!("/webhooks/{id}"))
        .await
        .text
        .contains(">enabled<"));

    let refused = b
        .send(Method::POST, &format!("/webhooks/{id}/delete"), Some(&[]))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "no CSRF token");
    let asked = b.post(&format!("/webhooks/{id}/delete"), &[]).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);
    assert!(
        asked.text.contains("Delete this webhook?"),
        "{}",
        asked.text
    );
    let gone = b
        .post(&format!("/webhooks/{id}/delete"), &[("confirmed", "yes")])
        .await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER, "{}", gone.text);
    assert_eq!(gone.location(), path);
    assert!(b.get(&path).await.text.contains("No webhooks"));
}

#[tokio::test]
async fn members_are_added_change_role_and_are_removed() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let bob = s.create_user("member-bob").await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let path = format!("/workspaces/{ws}/members");
    let nobody = b
        .post(&path, &[("username", "no-such-user"), ("role", "viewer")])
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{}", nobody.text);
    assert!(nobody.text.contains("alert-error"));
    let added = b
        .post(&path, &[("username", "member-bob"), ("role", "viewer")])
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.text);
    let page = b.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_ui_headers(&path, &page);
    assert!(page.text.contains("member-bob"));
    let changed = b
        .post(&format!("{path}/{bob}"), &[("role", "editor")])
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.text);
    let members = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/members"),
            None,
            &[],
        )
        .await;
    let role = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == bob.as_str())
        .map(|m| m["role"].clone());
    assert_eq!(role, Some(json!("editor")), "{}", members.text);
    assert!(b
        .get(&path)
        .await
        .text
        .contains("<option value=\"editor\" selected>"));
    let unknown = b
        .post(&format!("{path}/{bob}"), &[("role", "no-such-role")])
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    assert!(unknown.text.contains("no such role"));
    let refused = b
        .send(Method::POST, &format!("{path}/{bob}/remove"), Some(&[]))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "no CSRF token");
    let asked = b.post(&format!("{path}/{bob}/remove"), &[]).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);
    assert!(asked.text.contains("Remove this member?"), "{}", asked.text);
    assert!(
        b.get(&path).await.text.contains("member-bob"),
        "not removed yet"
    );
    let removed = b
        .post(&format!("{path}/{bob}/remove"), &[("confirmed", "yes")])
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.text);
    assert!(!b.get(&path).await.text.contains("member-bob"));
}

#[tokio::test]
async fn a_viewer_sees_no_admin_entries_and_its_admin_form_posts_answer_403() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let admin = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let zones = admin.get(&format!("/workspaces/{ws}/zones")).await;
    for entry in ["Zones and agents", ">Webhooks<", ">Members<", ">Audit log<"] {
        assert!(zones.text.contains(entry), "admin's sidebar lacks {entry}");
    }
    let viewer = user_with_password(&s, "viewer-vic", "viewer").await;
    let page = viewer.get(&format!("/workspaces/{ws}/zones")).await;
    assert_eq!(page.status, StatusCode::OK, "a viewer reads zones");
    assert!(page.text.contains("Zones and agents"));
    for entry in [">Webhooks<", ">Members<", ">Audit log<"] {
        assert!(!page.text.contains(entry), "viewer's sidebar shows {entry}");
    }
    assert!(
        !page.text.contains("Create zone"),
        "no change forms for a viewer"
    );
    let posts = [
        (format!("/workspaces/{ws}/zones"), vec![("name", "vpc-x")]),
        (format!("/workspaces/{ws}/zones/vpc-x/agent-tokens"), vec![]),
        (
            "/zones/0190c0de-0000-7000-8000-000000000000/delete".into(),
            vec![],
        ),
        (
            format!("/workspaces/{ws}/webhooks"),
            vec![("url", "http://127.0.0.1:9/")],
        ),
        (
            "/webhooks/0190c0de-0000-7000-8000-000000000000/enabled".into(),
            vec![("enabled", "false")],
        ),
        (
            "/webhooks/0190c0de-0000-7000-8000-000000000000/delete".into(),
            vec![],
        ),
        (
            format!("/workspaces/{ws}/members/admin"),
            vec![("role", "viewer")],
        ),
        (format!("/workspaces/{ws}/members/admin/remove"), vec![]),
        (
            format!("/workspaces/{ws}/members"),
            vec![("username", "viewer-vic"), ("role", "admin")],
        ),
    ];
    for (path, fields) in &posts {
        let r = viewer.post(path, fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert_ui_headers(path, &r);
    }
    for path in [
        format!("/workspaces/{ws}/webhooks"),
        format!("/workspaces/{ws}/members"),
    ] {
        assert_eq!(
            viewer.get(&path).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let zones = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/zones"),
            None,
            &[],
        )
        .await;
    assert_eq!(zones.body["items"], json!([]), "nothing was created");
}
