//! Users, roles and workspace isolation: every route declares its access; each built-in role
//! reaches exactly what its permissions allow; ids from another workspace answer 404 exactly
//! like ids that do not exist.

use patchbay_core::permission::Permission;
use patchbay_core::roles;
use patchbay_server::api::access::{Access, ROUTES};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{Service, CANARY};

/// A workspace with one project, one connection using a shared credential, and ids for
/// every path parameter.
struct Fixture {
    ws: String,
    project: String,
    connection: String,
    credential: String,
}

async fn fixture(s: &Service, name: &str) -> Fixture {
    let ws = s
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": name})),
            &[],
        )
        .await;
    assert_eq!(ws.status, StatusCode::CREATED, "{}", ws.text);
    let ws = ws.body["id"].as_str().unwrap().to_owned();
    let project = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/projects"),
            Some(json!({"name": "etl"})),
            &[],
        )
        .await;
    assert_eq!(project.status, StatusCode::CREATED, "{}", project.text);
    let project = project.body["id"].as_str().unwrap().to_owned();
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
    let credential = cred.body["id"].as_str().unwrap().to_owned();
    let conn = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            // Loopback, port 1: a test of it is refused by the network guard before any
            // packet leaves.
            Some(json!({"name": "warehouse", "type": "postgresql",
                        "settings": {"host": "127.0.0.1", "port": 1, "database": "dw"},
                        "credential": {"id": credential}})),
            &[],
        )
        .await;
    assert_eq!(conn.status, StatusCode::CREATED, "{}", conn.text);
    Fixture {
        ws,
        project,
        connection: conn.body["id"].as_str().unwrap().to_owned(),
        credential,
    }
}

/// The route template with its parameters replaced by the fixture's ids.
fn concrete(path: &str, f: &Fixture, user: &str) -> String {
    path.replace("{ws}", &f.ws)
        .replace("{project}", &f.project)
        .replace("{type}", "postgresql")
        .replace("{user}", user)
        .replace("{version}", "1")
        .replace("{zone}", "no-such-zone")
        .replace("{kind}", "pipeline")
        .replace("{ref}", "etl-1")
        .replace("{event}", "0190c0de-0000-7000-8000-000000000001")
        .replace("{name}", "warehouse")
        .replace(
            "{id}",
            if path.starts_with("/api/v1/connections/") || path.starts_with("/connections/") {
                &f.connection
            } else if path.starts_with("/api/v1/credentials/") || path.starts_with("/credentials/")
            {
                &f.credential
            } else {
                "0190c0de-0000-7000-8000-000000000000"
            },
        )
}

#[tokio::test]
async fn authorization_matrix_every_builtin_role_against_every_route() {
    let s = Service::start().await;
    let mut checked = 0;
    for (role, perms) in roles::BUILTIN {
        let f = fixture(&s, &format!("matrix-{}", role.replace('_', "-"))).await;
        let user = s
            .create_user(&format!("u-{}", role.replace('_', "-")))
            .await;
        s.set_role(&f.ws, &user, role).await;
        let token = s.user_token(&user).await;
        // Destructive routes last, so the earlier ones find the fixture intact.
        let mut routes: Vec<_> = ROUTES.iter().collect();
        // (The UI's delete form is a POST.)
        routes.sort_by_key(|(m, p, _)| *m == "DELETE" || p.ends_with("/delete"));
        for (method, path, access) in routes {
            let url = concrete(path, &f, "nobody");
            let m: Method = method.parse().unwrap();
            let body = matches!(*method, "POST" | "PUT" | "PATCH").then(|| json!({}));
            let r = s.call_as(&token, m, &url, body).await;
            let expect_allowed = match access {
                Access::Public | Access::Authenticated => true,
                Access::Needs(p) => perms.contains(p),
                // Only agent tokens call the agent endpoints (tests/api/zones.rs).
                Access::Agent => false,
            };
            let denied = r.status == StatusCode::FORBIDDEN && r.body["code"] == "forbidden";
            assert_ne!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{role} {method} {path}: {}",
                r.text
            );
            assert!(
                r.status != StatusCode::NOT_FOUND || r.body["message"] != "route not found",
                "{method} {path} is declared but not routed"
            );
            assert!(
                !r.status.is_server_error(),
                "{role} {method} {path}: {}",
                r.text
            );
            assert_eq!(
                !denied, expect_allowed,
                "{role} {method} {path} answered {}: {}",
                r.status, r.text
            );
            // Resolving hands out secrets by design (to runners); everything else only to
            // principals that may reveal.
            let may_see = perms.contains(&Permission::ConnectionsReveal)
                || (*access == Access::Needs(Permission::ConnectionsResolve)
                    && perms.contains(&Permission::ConnectionsResolve));
            assert!(
                !r.text.contains(CANARY) || may_see,
                "{role} {method} {path} showed a secret"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, roles::BUILTIN.len() * ROUTES.len());
}

#[tokio::test]
async fn the_seed_roles_behave_as_the_seeds_say() {
    let s = Service::start().await;
    let f = fixture(&s, "seeds").await;
    let token_of = |role: &'static str| {
        let s = &s;
        let ws = f.ws.clone();
        async move {
            let u = s
                .create_user(&format!("seed-{}", role.replace('_', "-")))
                .await;
            s.set_role(&ws, &u, role).await;
            s.user_token(&u).await
        }
    };
    let editor = token_of("editor").await;
    let secret_manager = token_of("secret_manager").await;
    let viewer = token_of("viewer").await;
    let runner = token_of("runner").await;
    let conn = format!("/api/v1/connections/{}", f.connection);

    // Builders use connections: an editor attaches the credential to a new connection...
    let built = s
        .call_as(
            &editor,
            Method::POST,
            &format!("/api/v1/projects/{}/connections", f.project),
            Some(json!({"name": "built-by-editor", "type": "postgresql",
                        "settings": {"host": "db.internal", "database": "dw"},
                        "credential": {"id": f.credential}})),
        )
        .await;
    assert_eq!(built.status, StatusCode::CREATED, "{}", built.text);
    // ...but never sees the secret in full, nor replaces it.
    let got = s.call_as(&editor, Method::GET, &conn, None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.text.contains(CANARY));
    let rotate = s
        .call_as(
            &editor,
            Method::POST,
            &format!("/api/v1/credentials/{}/versions", f.credential),
            Some(json!({"secrets": {"password": "new"}})),
        )
        .await;
    assert_eq!(rotate.status, StatusCode::FORBIDDEN, "{}", rotate.text);
    assert_eq!(rotate.body["code"], "forbidden");

    // Only privileged principals see secrets in full.
    let full = s.call_as(&secret_manager, Method::GET, &conn, None).await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.text);
    assert!(full.text.contains(CANARY));
    let masked = s.call_as(&viewer, Method::GET, &conn, None).await;
    assert_eq!(masked.status, StatusCode::OK);
    assert!(!masked.text.contains(CANARY));
    let write = s.call_as(&viewer, Method::DELETE, &conn, None).await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);

    // A runner resolves and tests; it does not browse.
    let browse = s.call_as(&runner, Method::GET, &conn, None).await;
    assert_eq!(browse.status, StatusCode::FORBIDDEN);
    let mint = s
        .call_as(
            &runner,
            Method::POST,
            &format!("/api/v1/workspaces/{}/runner-tokens", f.ws),
            None,
        )
        .await;
    assert_eq!(mint.status, StatusCode::CREATED, "{}", mint.text);
}

#[tokio::test]
async fn membership_changes_take_effect_at_once_and_nobody_grants_more_than_they_hold() {
    let s = Service::start().await;
    let a = fixture(&s, "team-a").await;
    let b = fixture(&s, "team-b").await;
    let alice = s.create_user("alice").await;
    s.set_role(&a.ws, &alice, "editor").await;
    let token = s.user_token(&alice).await;
    let conn_a = format!("/api/v1/connections/{}", a.connection);

    // Alice sees team-a only.
    let list = s
        .call_as(&token, Method::GET, "/api/v1/workspaces", None)
        .await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a"]);
    assert_eq!(
        s.call_as(&token, Method::GET, &conn_a, None).await.status,
        StatusCode::OK
    );
    let in_b = format!("/api/v1/connections/{}", b.connection);
    assert_eq!(
        s.call_as(&token, Method::GET, &in_b, None).await.status,
        StatusCode::NOT_FOUND
    );

    // A member manager who is not an admin cannot hand out admin.
    let mallory = s.create_user("mallory").await;
    s.call(
        Method::POST,
        &format!("/api/v1/workspaces/{}/roles", a.ws),
        Some(json!({"name": "gatekeeper", "permissions": ["members:manage", "connections:read"]})),
        &[],
    )
    .await;
    s.set_role(&a.ws, &mallory, "gatekeeper").await;
    let mallory_token = s.user_token(&mallory).await;
    let escalate = s
        .call_as(
            &mallory_token,
            Method::PUT,
            &format!("/api/v1/workspaces/{}/members/{mallory}", a.ws),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        escalate.status,
        StatusCode::BAD_REQUEST,
        "{}",
        escalate.text
    );
    assert_eq!(escalate.body["field"], "/role");
    let own_role = s
        .call_as(
            &mallory_token,
            Method::PUT,
            &format!("/api/v1/workspaces/{}/members/{alice}", a.ws),
            Some(json!({"role": "gatekeeper"})),
        )
        .await;
    assert_eq!(own_role.status, StatusCode::OK, "{}", own_role.text);
    // Alice is now a gatekeeper: no more writes, at once.
    let write = s.call_as(&token, Method::DELETE, &conn_a, None).await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{}", write.text);

    // Custom roles hold workspace permissions only, and not the built-in names.
    for (body, field) in [
        (
            json!({"name": "root", "permissions": ["instance:admin"]}),
            "/permissions/0",
        ),
        (
            json!({"name": "x", "permissions": ["connections:fly"]}),
            "/permissions/0",
        ),
        (json!({"name": "x"}), "/permissions"),
    ] {
        let r = s
            .call(
                Method::POST,
                &format!("/api/v1/workspaces/{}/roles", a.ws),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.body["field"], field);
    }
    let taken = s
        .call(
            Method::POST,
            &format!("/api/v1/workspaces/{}/roles", a.ws),
            Some(json!({"name": "viewer", "permissions": ["connections:read"]})),
            &[],
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);

    // Removing the member removes the workspace from every token of theirs, at once.
    let removed = s
        .call(
            Method::DELETE,
            &format!("/api/v1/workspaces/{}/members/{alice}", a.ws),
            None,
            &[],
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    // She holds nothing anywhere now: refused before any lookup, like any id.
    let gone = s.call_as(&token, Method::GET, &conn_a, None).await;
    let nonexistent = s
        .call_as(
            &token,
            Method::GET,
            "/api/v1/connections/0190c0de-0000-7000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::FORBIDDEN, "{}", gone.text);
    assert_eq!(gone.text, nonexistent.text);
    let members = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{}/members", a.ws),
            None,
            &[],
        )
        .await;
    assert!(!members.text.contains("alice"));
    assert!(members.text.contains("mallory"));
}

#[tokio::test]
async fn users_have_argon2id_passwords_that_never_come_back() {
    let s = Service::start().await;
    // The bootstrap administrator is a real user with a private first password.
    let pw_file = s.dir.path().join("data/initial-admin-password");
    let password = std::fs::read_to_string(&pw_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pw_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let users = s.call(Method::GET, "/api/v1/users", None, &[]).await;
    assert_eq!(users.status, StatusCode::OK);
    assert_eq!(users.body["items"][0]["username"], "admin");
    assert_eq!(users.body["items"][0]["is_admin"], true);
    assert!(!users.text.contains(password.trim()));
    assert!(!users.text.contains("argon2"));
    let stored: Vec<(String,)> = sqlx::query_as("SELECT password_hash FROM users")
        .fetch_all(&s.raw_db().await)
        .await
        .unwrap();
    assert!(stored[0].0.starts_with("$argon2id$"));
    assert!(!stored[0].0.contains(password.trim()));

    let created = s
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "bob", "password": CANARY})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(!created.text.contains(CANARY));
    for (body, code, field) in [
        (
            json!({"username": "bob", "password": "long enough, really"}),
            "name_taken",
            "/username",
        ),
        (
            json!({"username": "carol", "password": "short"}),
            "invalid_field",
            "/password",
        ),
        (
            json!({"username": "Carol!", "password": "long enough, really"}),
            "invalid_name",
            "/username",
        ),
        (json!({"username": "carol"}), "invalid_field", "/password"),
        (
            json!({"username": "carol", "password": "long enough, really", "is_admin": "yes"}),
            "invalid_field",
            "/is_admin",
        ),
    ] {
        let r = s
            .call(Method::POST, "/api/v1/users", Some(body.clone()), &[])
            .await;
        assert!(r.status.is_client_error(), "{body}: {}", r.text);
        assert_eq!(
            (r.body["code"].as_str(), r.body["field"].as_str()),
            (Some(code), Some(field)),
            "{body}"
        );
    }
    // Only instance administrators create users; a workspace admin does not.
    let ws = s.default_workspace().await;
    let bob = created.body["id"].as_str().unwrap();
    s.set_role(&ws, bob, "admin").await;
    let bob_token = s.user_token(bob).await;
    let r = s
        .call_as(
            &bob_token,
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "eve", "password": "long enough, really"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nor mint tokens for other users.
    let r = s
        .call_as(
            &bob_token,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "as-admin", "user_id": users.body["items"][0]["id"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// The same request with a nonexistent id answers the same body: nothing tells the caller
/// that the other workspace's resource exists.
#[tokio::test]
async fn ids_from_another_workspace_answer_404_like_nonexistent_ids() {
    let s = Service::start().await;
    let a = fixture(&s, "victim").await;
    let b = fixture(&s, "attacker").await;
    let attacker = s.create_user("attacker").await;
    s.set_role(&b.ws, &attacker, "admin").await;
    let token = s.user_token(&attacker).await;
    let missing = Fixture {
        ws: "0190c0de-0000-7000-8000-00000000dead".into(),
        project: "0190c0de-0000-7000-8000-00000000beef".into(),
        connection: "0190c0de-0000-7000-8000-00000000f00d".into(),
        credential: "0190c0de-0000-7000-8000-00000000cafe".into(),
    };
    let patch = json!({"description": "pwned"});
    let attempts: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/v1/connections/{id}", None),
        (Method::GET, "/api/v1/connections/{id}?reveal=true", None),
        (
            Method::PATCH,
            "/api/v1/connections/{id}",
            Some(patch.clone()),
        ),
        (
            Method::PUT,
            "/api/v1/connections/{id}",
            Some(
                json!({"name": "x", "type": "postgresql", "settings": {"host": "h", "database": "d"}}),
            ),
        ),
        (Method::DELETE, "/api/v1/connections/{id}", None),
        (Method::POST, "/api/v1/connections/{id}/test", None),
        (Method::GET, "/api/v1/connections/{id}/tests", None),
        (
            Method::POST,
            "/api/v1/connections/{id}/resolve",
            Some(json!({"format": "env", "run_id": "r1"})),
        ),
        (
            Method::POST,
            "/api/v1/projects/{project}/connections/by-name/warehouse/resolve",
            Some(json!({"format": "json"})),
        ),
        (
            Method::POST,
            "/api/v1/projects/{project}/connections/test",
            Some(
                json!({"type": "postgresql", "settings": {"host": "127.0.0.1", "port": 1, "database": "d"}}),
            ),
        ),
        (Method::GET, "/api/v1/credentials/{cred}", None),
        (
            Method::PATCH,
            "/api/v1/credentials/{cred}",
            Some(patch.clone()),
        ),
        (Method::DELETE, "/api/v1/credentials/{cred}", None),
        (Method::GET, "/api/v1/credentials/{cred}/versions", None),
        (
            Method::POST,
            "/api/v1/credentials/{cred}/versions",
            Some(json!({"secrets": {"password": "x"}})),
        ),
        (
            Method::POST,
            "/api/v1/credentials/{cred}/versions/1/revoke",
            None,
        ),
        (Method::GET, "/api/v1/credentials/{cred}/usage", None),
        (Method::POST, "/api/v1/credentials/{cred}/token", None),
        (Method::GET, "/api/v1/projects/{project}/connections", None),
        (
            Method::POST,
            "/api/v1/projects/{project}/connections",
            Some(
                json!({"name": "x", "type": "postgresql", "settings": {"host": "h", "database": "d"}}),
            ),
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/credentials", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/credentials",
            Some(json!({"name": "x", "kind": "api_key", "secrets": {"key": "k"}})),
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/projects", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/projects",
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/members", None),
        (
            Method::PUT,
            "/api/v1/workspaces/{ws}/members/attacker",
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            "/api/v1/workspaces/{ws}/members/admin",
            None,
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/roles", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/roles",
            Some(json!({"name": "x", "permissions": ["connections:read"]})),
        ),
        (Method::POST, "/api/v1/workspaces/{ws}/runner-tokens", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/keys/rotate-data",
            None,
        ),
        (Method::GET, "/api/v1/connections/{id}/dependents", None),
        (
            Method::PUT,
            "/api/v1/connections/{id}/dependents/pipeline/etl-1",
            Some(json!({"name": "x"})),
        ),
        (
            Method::DELETE,
            "/api/v1/connections/{id}/dependents/pipeline/etl-1",
            None,
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/zones", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/zones",
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/zones/x/agent-tokens",
            None,
        ),
        (Method::GET, "/api/v1/workspaces/{ws}/webhooks", None),
        (
            Method::POST,
            "/api/v1/workspaces/{ws}/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/hook"})),
        ),
    ];
    let fill = |t: &str, f: &Fixture| {
        t.replace("{id}", &f.connection)
            .replace("{cred}", &f.credential)
            .replace("{project}", &f.project)
            .replace("{ws}", &f.ws)
    };
    let mut count = 0;
    for (method, template, body) in &attempts {
        let send = |path: String| {
            let body = body.as_ref().map(|b| b.to_string().into_bytes());
            let s = &s;
            let token = &token;
            let method = method.clone();
            async move {
                let mut headers = vec![("if-match", "*")];
                if body.is_some() {
                    headers.push(("content-type", "application/json"));
                }
                s.raw(method, &path, Some(token), &headers, body).await
            }
        };
        let foreign = send(fill(template, &a)).await;
        let nonexistent = send(fill(template, &missing)).await;
        assert_eq!(
            foreign.status,
            StatusCode::NOT_FOUND,
            "{method} {template}: {}",
            foreign.text
        );
        assert_eq!(foreign.text, nonexistent.text, "{method} {template}");
        count += 1;
    }
    assert!(count >= 20);
    // Nothing changed in the victim's workspace.
    let c = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{}", a.connection),
            None,
            &[],
        )
        .await;
    assert_eq!(c.status, StatusCode::OK);
    assert_ne!(c.body["description"], "pwned");
    let members = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{}/members", a.ws),
            None,
            &[],
        )
        .await;
    assert!(!members.text.contains("attacker"));
}
