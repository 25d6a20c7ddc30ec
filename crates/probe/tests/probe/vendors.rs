//! The HTTP family, vendor by vendor, against one local responder that follows each
//! vendor's documented check: it answers the documented endpoint only when the documented
//! credential is presented exactly as the vendor expects (header name and prefix, Basic,
//! query parameter), with a body holding the documented JSON pointer; otherwise it answers
//! the way the vendor rejects a bad key (401, 403, Gemini's 400, Slack's `{"ok": false}`).
//! These types are `"verification": "contract"` in the catalog.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const KEY: &str = "good-key-1";
const HOST: &str = "{base}";

/// One vendor's documented check.
struct Case {
    ty: &'static str,
    /// Settings; `{base}` in a string becomes `http://127.0.0.1:PORT`.
    settings: Value,
    /// The secret field that carries the key under test, and other secrets.
    key_field: &'static str,
    other_secrets: &'static [(&'static str, &'static str)],
    method: &'static str,
    /// Path and query as the vendor documents them; `{key}` is the key (query auth).
    target: &'static str,
    /// Headers that must be present exactly (`{key}` is the key; `*` any value).
    headers: &'static [(&'static str, &'static str)],
    /// Basic credentials that must be presented (`{key}` is the key).
    basic: Option<(&'static str, &'static str)>,
    ok: (u16, Value),
    rejected: (u16, Value),
}

fn cases() -> Vec<Case> {
    let bearer: &[(&str, &str)] = &[("authorization", "Bearer {key}")];
    let unauthorized = (401, json!({"error": "unauthorized"}));
    vec![
        Case {
            ty: "openai",
            settings: json!({"base_url": "{base}/v1"}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1/models",
            headers: bearer,
            basic: None,
            ok: (200, json!({"object": "list", "data": []})),
            rejected: (401, json!({"error": {"code": "invalid_api_key"}})),
        },
        Case {
            ty: "anthropic",
            settings: json!({"base_url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1/models",
            headers: &[("x-api-key", "{key}"), ("anthropic-version", "2023-06-01")],
            basic: None,
            ok: (200, json!({"data": [], "has_more": false})),
            rejected: (
                401,
                json!({"type": "error", "error": {"type": "authentication_error"}}),
            ),
        },
        Case {
            ty: "azure-openai",
            settings: json!({"endpoint": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/openai/models?api-version=2024-10-21",
            headers: &[("api-key", "{key}")],
            basic: None,
            ok: (200, json!({"data": []})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "cohere",
            settings: json!({"base_url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1/models",
            headers: bearer,
            basic: None,
            ok: (200, json!({"models": []})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "gemini",
            settings: json!({"base_url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1beta/models?key={key}",
            headers: &[],
            basic: None,
            ok: (200, json!({"models": []})),
            rejected: (400, json!({"error": {"status": "INVALID_ARGUMENT"}})),
        },
        Case {
            ty: "mistral",
            settings: json!({"base_url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1/models",
            headers: bearer,
            basic: None,
            ok: (200, json!({"object": "list", "data": []})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "github",
            settings: json!({"base_url": HOST}),
            key_field: "token",
            other_secrets: &[],
            method: "GET",
            target: "/user",
            headers: &[
                ("authorization", "Bearer {key}"),
                ("accept", "application/vnd.github+json"),
                ("user-agent", "*"),
            ],
            basic: None,
            ok: (200, json!({"login": "octocat"})),
            rejected: (401, json!({"message": "Bad credentials"})),
        },
        Case {
            ty: "gitlab",
            settings: json!({"base_url": HOST}),
            key_field: "token",
            other_secrets: &[],
            method: "GET",
            target: "/api/v4/user",
            headers: &[("private-token", "{key}")],
            basic: None,
            ok: (200, json!({"username": "root"})),
            rejected: (401, json!({"message": "401 Unauthorized"})),
        },
        Case {
            ty: "hubspot",
            settings: json!({"api_base_url": HOST}),
            key_field: "access_token",
            other_secrets: &[],
            method: "GET",
            target: "/account-info/v3/details",
            headers: bearer,
            basic: None,
            ok: (200, json!({"portalId": 1234})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "jira",
            settings: json!({"base_url": HOST, "email": "me@example.com"}),
            key_field: "api_token",
            other_secrets: &[],
            method: "GET",
            target: "/rest/api/2/myself",
            headers: &[],
            basic: Some(("me@example.com", "{key}")),
            ok: (
                200,
                json!({"self": "x", "accountId": "5b10a2844c20165700ede21g"}),
            ),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "jira",
            settings: json!({"base_url": HOST, "deployment": "data_center"}),
            key_field: "personal_access_token",
            other_secrets: &[],
            method: "GET",
            target: "/rest/api/2/myself",
            headers: bearer,
            basic: None,
            ok: (200, json!({"self": "x", "name": "admin", "key": "admin"})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "servicenow",
            settings: json!({"api_base_url": HOST, "instance": "acme", "username": "admin"}),
            key_field: "password",
            other_secrets: &[],
            method: "GET",
            target: "/api/now/table/sys_user?sysparm_limit=1",
            headers: &[],
            basic: Some(("admin", "{key}")),
            ok: (200, json!({"result": []})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "shopify",
            settings: json!({"api_base_url": HOST, "shop": "mystore"}),
            key_field: "access_token",
            other_secrets: &[],
            method: "GET",
            target: "/admin/api/2025-01/shop.json",
            headers: &[("x-shopify-access-token", "{key}")],
            basic: None,
            ok: (200, json!({"shop": {"id": 548380009}})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "slack",
            settings: json!({"api_base_url": HOST}),
            key_field: "bot_token",
            other_secrets: &[],
            method: "POST",
            target: "/api/auth.test",
            headers: bearer,
            basic: None,
            ok: (200, json!({"ok": true, "team": "T", "user": "bot"})),
            rejected: (200, json!({"ok": false, "error": "invalid_auth"})),
        },
        Case {
            ty: "stripe",
            settings: json!({"api_base_url": HOST}),
            key_field: "secret_key",
            other_secrets: &[],
            method: "GET",
            target: "/v1/balance",
            headers: bearer,
            basic: None,
            ok: (200, json!({"object": "balance", "available": []})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "twilio",
            settings: json!({"api_base_url": HOST, "account_sid": "AC0123"}),
            key_field: "auth_token",
            other_secrets: &[],
            method: "GET",
            target: "/2010-04-01/Accounts/AC0123.json",
            headers: &[],
            basic: Some(("AC0123", "{key}")),
            ok: (200, json!({"sid": "AC0123", "status": "active"})),
            rejected: (401, json!({"code": 20003})),
        },
        Case {
            ty: "zendesk",
            settings: json!({"api_base_url": HOST, "subdomain": "acme", "email": "agent@example.com"}),
            key_field: "api_token",
            other_secrets: &[],
            method: "GET",
            target: "/api/v2/users/me.json",
            headers: &[],
            basic: Some(("agent@example.com/token", "{key}")),
            ok: (200, json!({"user": {"id": 35436}})),
            rejected: (401, json!({"error": "Couldn't authenticate you"})),
        },
        Case {
            ty: "datadog",
            settings: json!({"api_base_url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/api/v1/validate",
            headers: &[("dd-api-key", "{key}")],
            basic: None,
            ok: (200, json!({"valid": true})),
            rejected: (403, json!({"errors": ["Forbidden"]})),
        },
        Case {
            ty: "pagerduty",
            settings: json!({"api_base_url": HOST}),
            key_field: "api_token",
            other_secrets: &[("integration_key", "routing-key-not-for-rest")],
            method: "GET",
            target: "/abilities",
            headers: &[
                ("authorization", "Token token={key}"),
                ("accept", "application/vnd.pagerduty+json;version=2"),
            ],
            basic: None,
            ok: (200, json!({"abilities": ["teams"]})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "splunk",
            settings: json!({"hec_url": HOST}),
            key_field: "hec_token",
            other_secrets: &[],
            method: "POST",
            target: "/services/collector/event",
            headers: &[("authorization", "Splunk {key}")],
            basic: None,
            ok: (400, json!({"text": "No data", "code": 5})),
            rejected: (403, json!({"text": "Invalid token", "code": 4})),
        },
        Case {
            ty: "databricks",
            settings: json!({"workspace_url": HOST, "http_path": "/sql/1.0/warehouses/1"}),
            key_field: "access_token",
            other_secrets: &[],
            method: "GET",
            target: "/api/2.0/preview/scim/v2/Me",
            headers: bearer,
            basic: None,
            ok: (200, json!({"userName": "me@example.com"})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "elasticsearch",
            settings: json!({"url": HOST, "username": "elastic"}),
            key_field: "password",
            other_secrets: &[],
            method: "GET",
            target: "/",
            headers: &[],
            basic: Some(("elastic", "{key}")),
            ok: (200, json!({"version": {"number": "8.15.0"}})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "elasticsearch",
            settings: json!({"url": HOST}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/",
            headers: &[("authorization", "ApiKey {key}")],
            basic: None,
            ok: (200, json!({"version": {"number": "8.15.0"}})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "prometheus",
            settings: json!({"url": HOST}),
            key_field: "bearer_token",
            other_secrets: &[],
            method: "GET",
            target: "/api/v1/status/buildinfo",
            headers: bearer,
            basic: None,
            ok: (
                200,
                json!({"status": "success", "data": {"version": "2.53.0"}}),
            ),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "kubernetes",
            settings: json!({"api_server_url": HOST}),
            key_field: "token",
            other_secrets: &[],
            method: "GET",
            target: "/api",
            headers: bearer,
            basic: None,
            ok: (200, json!({"kind": "APIVersions", "versions": ["v1"]})),
            rejected: (401, json!({"kind": "Status", "code": 401})),
        },
        Case {
            ty: "rest",
            settings: json!({"base_url": HOST, "health_check_path": "/health", "auth_type": "api_key"}),
            key_field: "api_key",
            other_secrets: &[],
            method: "GET",
            target: "/health",
            headers: &[("x-api-key", "{key}")],
            basic: None,
            ok: (200, json!({})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "graphql",
            settings: json!({"endpoint_url": "{base}/graphql", "auth_type": "bearer"}),
            key_field: "bearer_token",
            other_secrets: &[],
            method: "POST",
            target: "/graphql",
            headers: bearer,
            basic: None,
            ok: (200, json!({"data": {"__typename": "Query"}})),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "odata",
            settings: json!({"service_root_url": "{base}/odata", "auth_type": "basic", "username": "u"}),
            key_field: "password",
            other_secrets: &[],
            method: "GET",
            target: "/odata/$metadata",
            headers: &[],
            basic: Some(("u", "{key}")),
            ok: (200, Value::String("<edmx:Edmx Version=\"4.0\"/>".into())),
            rejected: unauthorized.clone(),
        },
        Case {
            ty: "webhook",
            settings: json!({"url": "{base}/hook", "auth_header_name": "X-Hook-Token"}),
            key_field: "auth_header_value",
            other_secrets: &[],
            method: "HEAD",
            target: "/hook",
            headers: &[("x-hook-token", "{key}")],
            basic: None,
            ok: (200, Value::Null),
            rejected: unauthorized,
        },
    ]
}

/// How the responder answers a matching, authorized request.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Documented,
    /// The documented status, but a body without the documented pointer.
    NoPointer,
}

async fn answer(mut s: tokio::net::TcpStream, case: &Case, mode: Mode) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let key = |s: &str| s.replace("{key}", KEY);
    let authorized = case.headers.iter().all(|(k, v)| match header(k) {
        Some(got) => *v == "*" || got == key(v),
        None => false,
    }) && case.basic.is_none_or(|(u, p)| {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", key(p)));
        header("authorization") == Some(format!("Basic {want}"))
    });
    let documented = method == case.method && target == key(case.target);
    // Query auth: a wrong key is a different target on the same path.
    let same_path = target.split('?').next() == key(case.target).split('?').next();
    let (status, body) = if documented && authorized {
        match mode {
            Mode::Documented => case.ok.clone(),
            Mode::NoPointer => (case.ok.0, json!({"unrelated": true})),
        }
    } else if method == case.method && same_path {
        case.rejected.clone()
    } else {
        (404, json!({"error": "not found"}))
    };
    let body = match body {
        Value::Null => String::new(),
        Value::String(s) => s,
        v => v.to_string(),
    };
    let len = if method == "HEAD" { 0 } else { body.len() };
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn responder(case: Arc<Case>, mode: Mode) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let c = case.clone();
            tokio::spawn(async move { answer(s, &c, mode).await });
        }
    });
    port
}

fn with_base(v: &Value, base: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{base}", base)),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), with_base(v, base)))
            .collect(),
        other => other.clone(),
    }
}

async fn run(case: &Case, base: &str, key: &str) -> patchbay_probe::ProbeResult {
    let mut secrets: Vec<(&str, &str)> = case.other_secrets.to_vec();
    secrets.push((case.key_field, key));
    kit::run(
        &kit::loopback(),
        case.ty,
        with_base(&case.settings, base),
        &secrets,
        Duration::from_secs(5),
    )
    .await
}

fn label(case: &Case) -> String {
    format!("{} ({})", case.ty, case.key_field)
}

#[tokio::test]
async fn each_vendor_passes_with_the_documented_credential() {
    for case in cases() {
        let case = Arc::new(case);
        let port = responder(case.clone(), Mode::Documented).await;
        let r = run(&case, &format!("http://127.0.0.1:{port}"), KEY).await;
        assert!(
            r.ok,
            "{}: {}",
            label(&case),
            serde_json::to_string_pretty(&r).unwrap()
        );
        assert_ok(&r);
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains(KEY),
            "{}: the key is in the result",
            label(&case)
        );
    }
}

#[tokio::test]
async fn each_vendor_rejects_a_wrong_key_at_auth_without_echoing_it() {
    for case in cases() {
        let case = Arc::new(case);
        let port = responder(case.clone(), Mode::Documented).await;
        let r = run(&case, &format!("http://127.0.0.1:{port}"), CANARY).await;
        let e = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{}: a wrong key passed", label(&case)));
        assert_eq!(
            (e.stage, e.class),
            (ProbeStage::Auth, ErrorClass::AuthFailed),
            "{}",
            label(&case)
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains(CANARY),
            "{}: the key is in the result",
            label(&case)
        );
    }
}

#[tokio::test]
async fn an_answer_without_the_documented_pointer_is_a_protocol_mismatch() {
    for case in cases() {
        let declared = kit::ty(case.ty).probe.params.get("json_pointer").is_some();
        if !declared {
            continue;
        }
        let case = Arc::new(case);
        let port = responder(case.clone(), Mode::NoPointer).await;
        let r = run(&case, &format!("http://127.0.0.1:{port}"), KEY).await;
        let e = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{}: passed without the pointer", label(&case)));
        assert_eq!(
            (e.stage, e.class),
            (ProbeStage::Query, ErrorClass::ProtocolMismatch),
            "{}",
            label(&case)
        );
    }
}

#[tokio::test]
async fn a_base_url_with_a_wrong_prefix_is_not_found_at_query() {
    for ty in ["openai", "stripe", "github", "prometheus"] {
        let case = Arc::new(cases().into_iter().find(|c| c.ty == ty).unwrap());
        let port = responder(case.clone(), Mode::Documented).await;
        let r = run(&case, &format!("http://127.0.0.1:{port}/nope"), KEY).await;
        assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    }
}

#[tokio::test]
async fn every_type_of_the_http_family_has_a_case_and_is_marked_contract() {
    let covered: Vec<&str> = cases().iter().map(|c| c.ty).collect();
    for ty in patchbay_catalog::Catalog::builtin().types() {
        if ty.probe.kind != "http" {
            continue;
        }
        // A type with its own flow (Salesforce's OAuth exchange) has its own test file.
        let own_flow = ty.probe.params.get("flow").is_some();
        if covered.contains(&ty.id.as_str()) || own_flow {
            assert_eq!(ty.verification.as_str(), "contract", "{}", ty.id);
        } else {
            assert_eq!(
                ty.verification.as_str(),
                "untested",
                "{} has no vendor case",
                ty.id
            );
        }
    }
}

#[tokio::test]
async fn kubernetes_trusts_its_cluster_ca_certificate_setting() {
    if !kit::peer(5433, "probe peers (test CA)") {
        return;
    }
    // The TLS responder of http.rs knows no /api: a 404 at query means TLS passed.
    let port = crate::http::tls_responder().await;
    let settings = |extra: Value| {
        let mut s = json!({"api_server_url": format!("https://127.0.0.1:{port}")});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let secrets = [("token", KEY)];
    let guard = kit::loopback();
    let r = kit::run(
        &guard,
        "kubernetes",
        settings(json!({})),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let ca = json!({"cluster_ca_certificate": kit::ca_pem()});
    let r = kit::run(
        &guard,
        "kubernetes",
        settings(ca),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    let skip = json!({"insecure_skip_tls_verify": true});
    let r = kit::run(
        &guard,
        "kubernetes",
        settings(skip),
        &secrets,
        Duration::from_secs(5),
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}
