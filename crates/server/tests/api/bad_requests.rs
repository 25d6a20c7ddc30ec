//! Bad input gets the documented 4xx and code, names the field, echoes no submitted value,
//! and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Service, CANARY};

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    token: Tok,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

enum Tok {
    Admin,
    None,
    Raw(&'static str),
}

fn pg(overrides: Value) -> Vec<u8> {
    let mut b = json!({"name": "bad-case", "type": "postgresql",
        "settings": {"host": "127.0.0.1", "database": "test"}, "secrets": {"password": CANARY}});
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v.clone();
        }
    }
    b.to_string().into_bytes()
}

fn settings(extra: Value) -> Vec<u8> {
    let mut s = json!({"host": "127.0.0.1", "database": "test"});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    pg(json!({ "settings": s }))
}

#[tokio::test]
async fn every_bad_request_gets_its_documented_4xx() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let existing = s.create_pg(&project, "existing").await;
    assert_eq!(existing.status, StatusCode::CREATED);
    let id = existing.body["id"].as_str().unwrap().to_owned();
    let create = format!("/api/v1/projects/{project}/connections");
    let one = format!("/api/v1/connections/{id}");
    let json_ct = ("content-type", "application/json".to_string());
    let v1 = ("if-match", "\"1\"".to_string());

    let c = |what, method: Method, path: &str, body: Option<Vec<u8>>, status, code, field| Case {
        what,
        method,
        path: path.to_owned(),
        token: Tok::Admin,
        headers: vec![json_ct.clone()],
        body,
        status,
        code,
        field,
    };
    let mut cases = vec![
        Case {
            token: Tok::None,
            ..c(
                "no token",
                Method::GET,
                &create,
                None,
                401,
                "unauthenticated",
                None,
            )
        },
        Case {
            token: Tok::Raw("Bearer pbt_wrong"),
            ..c(
                "wrong token",
                Method::GET,
                &create,
                None,
                401,
                "unauthenticated",
                None,
            )
        },
        Case {
            token: Tok::Raw("Basic YTpi"),
            ..c(
                "basic auth",
                Method::GET,
                &create,
                None,
                401,
                "unauthenticated",
                None,
            )
        },
        Case {
            token: Tok::Raw("Bearer "),
            ..c(
                "empty bearer",
                Method::GET,
                &create,
                None,
                401,
                "unauthenticated",
                None,
            )
        },
        c(
            "malformed JSON",
            Method::POST,
            &create,
            Some(b"{\"name\": \"x\",".to_vec()),
            400,
            "invalid_json",
            None,
        ),
        c(
            "JSON array body",
            Method::POST,
            &create,
            Some(b"[1,2]".to_vec()),
            400,
            "invalid_json",
            None,
        ),
        c(
            "empty body",
            Method::POST,
            &create,
            Some(vec![]),
            400,
            "invalid_json",
            None,
        ),
        Case {
            headers: vec![],
            ..c(
                "no content type",
                Method::POST,
                &create,
                Some(pg(json!({}))),
                415,
                "unsupported_media_type",
                None,
            )
        },
        Case {
            headers: vec![("content-type", "text/plain".into())],
            ..c(
                "text/plain",
                Method::POST,
                &create,
                Some(pg(json!({}))),
                415,
                "unsupported_media_type",
                None,
            )
        },
        c(
            "oversized body",
            Method::POST,
            &create,
            Some(pg(json!({"description": "x".repeat(1_100_000)}))),
            413,
            "payload_too_large",
            None,
        ),
        c(
            "missing name",
            Method::POST,
            &create,
            Some(pg(json!({"name": null}))),
            400,
            "invalid_field",
            Some("/name"),
        ),
        c(
            "name not a string",
            Method::POST,
            &create,
            Some(pg(json!({"name": 42}))),
            400,
            "invalid_field",
            Some("/name"),
        ),
        c(
            "name with spaces",
            Method::POST,
            &create,
            Some(pg(json!({"name": "Prod PG"}))),
            400,
            "invalid_name",
            Some("/name"),
        ),
        c(
            "name too long",
            Method::POST,
            &create,
            Some(pg(json!({"name": "a".repeat(64)}))),
            400,
            "invalid_name",
            Some("/name"),
        ),
        c(
            "missing type",
            Method::POST,
            &create,
            Some(pg(json!({"type": null}))),
            400,
            "invalid_field",
            Some("/type"),
        ),
        c(
            "unknown type",
            Method::POST,
            &create,
            Some(pg(json!({"type": "postgres-ng"}))),
            400,
            "unknown_type",
            Some("/type"),
        ),
        c(
            "unknown body key",
            Method::POST,
            &create,
            Some(pg(json!({"passwd": CANARY}))),
            400,
            "invalid_field",
            Some("/passwd"),
        ),
        c(
            "settings not an object",
            Method::POST,
            &create,
            Some(pg(json!({"settings": [CANARY]}))),
            400,
            "invalid_field",
            Some("/settings"),
        ),
        c(
            "unknown setting",
            Method::POST,
            &create,
            Some(settings(json!({"hostname": CANARY}))),
            400,
            "invalid_setting",
            Some("/settings/hostname"),
        ),
        c(
            "port as string",
            Method::POST,
            &create,
            Some(settings(json!({"port": CANARY}))),
            400,
            "invalid_setting",
            Some("/settings/port"),
        ),
        c(
            "port out of range",
            Method::POST,
            &create,
            Some(settings(json!({"port": 70000}))),
            400,
            "invalid_setting",
            Some("/settings/port"),
        ),
        c(
            "enum value not allowed",
            Method::POST,
            &create,
            Some(settings(json!({"sslmode": CANARY}))),
            400,
            "invalid_setting",
            Some("/settings/sslmode"),
        ),
        c(
            "host not a host name",
            Method::POST,
            &create,
            Some(settings(json!({"host": "db host/x"}))),
            400,
            "invalid_setting",
            Some("/settings/host"),
        ),
        c(
            "secret sent as setting",
            Method::POST,
            &create,
            Some(settings(json!({"password": CANARY}))),
            400,
            "invalid_setting",
            Some("/settings/password"),
        ),
        c(
            "setting sent as secret",
            Method::POST,
            &create,
            Some(pg(json!({"secrets": {"host": CANARY}}))),
            400,
            "invalid_setting",
            Some("/secrets/host"),
        ),
        c(
            "secret not a string",
            Method::POST,
            &create,
            Some(pg(json!({"secrets": {"password": 12345}}))),
            400,
            "invalid_setting",
            Some("/secrets/password"),
        ),
        c(
            "required setting missing",
            Method::POST,
            &create,
            Some(pg(json!({"settings": {"database": "test"}}))),
            400,
            "invalid_setting",
            Some("/settings/host"),
        ),
        c(
            "tags not an array",
            Method::POST,
            &create,
            Some(pg(json!({"tags": CANARY}))),
            400,
            "invalid_field",
            Some("/tags"),
        ),
        c(
            "bad tag",
            Method::POST,
            &create,
            Some(pg(json!({"tags": ["ok", "no spaces allowed"]}))),
            400,
            "invalid_field",
            Some("/tags/1"),
        ),
        c(
            "bad environment",
            Method::POST,
            &create,
            Some(pg(json!({"environment": "Prod!"}))),
            400,
            "invalid_field",
            Some("/environment"),
        ),
        c(
            "duplicate name",
            Method::POST,
            &create,
            Some(pg(json!({"name": "existing"}))),
            409,
            "name_taken",
            Some("/name"),
        ),
        c(
            "unknown project",
            Method::POST,
            "/api/v1/projects/0190a0a0-0000-7000-8000-000000000000/connections",
            Some(pg(json!({}))),
            404,
            "not_found",
            None,
        ),
        c(
            "PUT without If-Match",
            Method::PUT,
            &one,
            Some(pg(json!({}))),
            428,
            "precondition_required",
            None,
        ),
        Case {
            headers: vec![json_ct.clone(), ("if-match", "\"7\"".into())],
            ..c(
                "PUT with stale If-Match",
                Method::PUT,
                &one,
                Some(pg(json!({}))),
                412,
                "version_conflict",
                None,
            )
        },
        Case {
            headers: vec![json_ct.clone(), ("if-match", "garbage".into())],
            ..c(
                "PUT with garbage If-Match",
                Method::PUT,
                &one,
                Some(pg(json!({}))),
                412,
                "version_conflict",
                None,
            )
        },
        Case {
            headers: vec![json_ct.clone(), v1.clone()],
            ..c(
                "PUT changing the type",
                Method::PUT,
                &one,
                Some(pg(json!({"type": "mysql"}))),
                400,
                "invalid_field",
                Some("/type"),
            )
        },
        Case {
            headers: vec![("content-type", "application/merge-patch+json".into())],
            ..c(
                "PATCH without If-Match",
                Method::PATCH,
                &one,
                Some(b"{}".to_vec()),
                428,
                "precondition_required",
                None,
            )
        },
        Case {
            headers: vec![
                ("content-type", "application/merge-patch+json".into()),
                v1.clone(),
            ],
            ..c(
                "PATCH name to null",
                Method::PATCH,
                &one,
                Some(b"{\"name\": null}".to_vec()),
                400,
                "invalid_field",
                Some("/name"),
            )
        },
        c(
            "unknown connection id",
            Method::GET,
            "/api/v1/connections/0190a0a0-0000-7000-8000-000000000000",
            None,
            404,
            "not_found",
            None,
        ),
        c(
            "non-uuid connection id",
            Method::GET,
            "/api/v1/connections/not-an-id",
            None,
            404,
            "not_found",
            None,
        ),
        c(
            "unknown route",
            Method::GET,
            "/api/v1/nothing-here",
            None,
            404,
            "not_found",
            None,
        ),
        c(
            "method not allowed",
            Method::DELETE,
            "/api/v1/workspaces",
            None,
            405,
            "method_not_allowed",
            None,
        ),
        c(
            "limit zero",
            Method::GET,
            &format!("{create}?limit=0"),
            None,
            400,
            "invalid_query",
            Some("limit"),
        ),
        c(
            "limit not a number",
            Method::GET,
            &format!("{create}?limit=lots"),
            None,
            400,
            "invalid_query",
            Some("limit"),
        ),
        c(
            "forged cursor",
            Method::GET,
            &format!("{create}?cursor=%%%"),
            None,
            400,
            "invalid_query",
            None,
        ),
        c(
            "reveal not a boolean",
            Method::GET,
            &format!("{one}?reveal=maybe"),
            None,
            400,
            "invalid_query",
            Some("reveal"),
        ),
        c(
            "bad workspace name",
            Method::POST,
            "/api/v1/workspaces",
            Some(b"{\"name\": \"Big Team\"}".to_vec()),
            400,
            "invalid_name",
            Some("/name"),
        ),
        c(
            "unknown type in catalog",
            Method::GET,
            "/api/v1/connection-types/nope",
            None,
            404,
            "not_found",
            None,
        ),
    ];
    assert!(cases.len() >= 30);

    for case in cases.drain(..) {
        let token = match case.token {
            Tok::Admin => Some(format!("Bearer {}", s.token)),
            Tok::None => None,
            Tok::Raw(t) => Some(t.to_owned()),
        };
        let mut req = s
            .http
            .request(case.method.clone(), format!("{}{}", s.base, case.path));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        for (k, v) in &case.headers {
            req = req.header(*k, v);
        }
        if let Some(b) = case.body.clone() {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {text}", case.what));
        assert_eq!(status, case.status, "{}: {text}", case.what);
        assert_eq!(body["code"], case.code, "{}: {text}", case.what);
        assert!(
            body["type"].is_string() && body["message"].is_string(),
            "{}: {text}",
            case.what
        );
        if let Some(f) = case.field {
            assert_eq!(body["field"], f, "{}: {text}", case.what);
        }
        assert!(
            !text.contains(CANARY),
            "{}: error echoes the secret: {text}",
            case.what
        );
    }

    // Nothing above changed the existing connection or created another one.
    let after = s.call(Method::GET, &one, None, &[]).await;
    assert_eq!(after.body["version"], 1);
    assert_eq!(after.body["secrets"]["password"], CANARY);
    let list = s.call(Method::GET, &create, None, &[]).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}
