//! The audit log newest first (API `order=desc`, the UI's Newer/Older pages and usernames
//! for `user:<id>` actors) and the admin pages: zones, webhooks, members — status codes,
//! CSRF refusal, a viewer's form posts refused, secrets shown once.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::Service;
use crate::ui::{admin_password, Browser};

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
