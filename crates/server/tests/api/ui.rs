//! The web UI over real HTTP: pages answer with the security headers (CSP without
//! unsafe-inline, frame-ancestors none, no-store), form posts need the session's CSRF token,
//! a viewer's form posts are refused, field errors are shown next to the field, a stale edit
//! says "changed by someone else", and the canary secret never appears in HTML unless
//! revealed.

use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_FRAME_OPTIONS,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::{Service, CANARY};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A browser: a session cookie and its CSRF token, no redirects followed.
pub(crate) struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

pub(crate) struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn admin_password(s: &Service) -> String {
    std::fs::read_to_string(s.dir.path().join("data/initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The value of the first `name="csrf_token" value="…"` of a page.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

impl Browser {
    pub async fn sign_in(s: &Service, username: &str, password: &str) -> Browser {
        let http = client();
        let r = http
            .post(format!("{}/login", s.base))
            .form(&[("username", username), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in of {username}");
        let cookie = r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut b = Browser {
            base: s.base.clone(),
            http,
            cookie,
            csrf: String::new(),
        };
        let tokens = b.get("/tokens").await;
        assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text);
        b.csrf = csrf_of(&tokens.text);
        b
    }

    pub async fn send(&self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "text/html")
            .header("cookie", &self.cookie);
        if let Some(f) = form {
            req = req.form(f);
        }
        let r = req.send().await.unwrap();
        Page {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    /// A form post with the session's CSRF token added.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf_token", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.send(Method::POST, path, Some(&all)).await
    }
}

pub(crate) async fn user_with_password(s: &Service, name: &str, role: &str) -> Browser {
    let ws = s.default_workspace().await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": name, "password": "a long enough password"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    s.set_role(&ws, r.body["id"].as_str().unwrap(), role).await;
    Browser::sign_in(s, name, "a long enough password").await
}

pub(crate) fn assert_ui_headers(path: &str, p: &Page) {
    let h = |name| {
        p.headers
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(h(CONTENT_SECURITY_POLICY), CSP, "{path}");
    assert_eq!(h(X_FRAME_OPTIONS), "DENY", "{path}");
    assert_eq!(h(REFERRER_POLICY), "no-referrer", "{path}");
    assert_eq!(h(CACHE_CONTROL), "no-store", "{path}");
    assert!(h(CONTENT_TYPE).starts_with("text/html"), "{path}");
}

#[tokio::test]
async fn every_page_has_the_security_headers_and_none_shows_the_canary_until_revealed() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let ws = s.default_workspace().await;
    let conn = s.create_pg(&project, "finance").await;
    assert_eq!(conn.status, StatusCode::CREATED, "{}", conn.text);
    let id = conn.body["id"].as_str().unwrap().to_owned();
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
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;

    let home = b.get("/").await;
    assert_eq!(home.status, StatusCode::SEE_OTHER);
    assert_eq!(home.location(), format!("/projects/{project}/connections"));
    let pages = [
        format!("/projects/{project}/connections"),
        format!("/projects/{project}/connections?q=fin&category=databases&environment=prod"),
        format!("/projects/{project}/connections/new"),
        format!("/projects/{project}/connections/new?q=postgres"),
        format!("/projects/{project}/connections/new/postgresql"),
        format!("/projects/{project}/connections/new/athena"),
        format!("/connections/{id}"),
        format!("/connections/{id}/edit"),
        format!("/connections/{id}/duplicate"),
        format!("/connections/{id}/delete"),
        format!("/workspaces/{ws}/credentials"),
        format!("/workspaces/{ws}/credentials/new?kind=username_password"),
        format!("/credentials/{cred}"),
        format!("/workspaces/{ws}/audit"),
        format!("/workspaces/{ws}/audit?action=connection.*"),
        format!("/workspaces/{ws}/zones"),
        format!("/workspaces/{ws}/webhooks"),
        format!("/workspaces/{ws}/members"),
        "/tokens".to_owned(),
    ];
    for path in &pages {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.text);
        assert_ui_headers(path, &p);
        assert!(!p.text.contains(CANARY), "{path} shows the secret");
        assert!(p.text.contains("name=\"csrf_token\""), "{path}");
        assert!(!p.text.contains("<script>"), "{path} has an inline script");
        assert!(!p.text.contains(" style=\""), "{path} has an inline style");
    }
    let overview = b.get(&pages[0]).await;
    assert!(overview.text.contains("finance") && overview.text.contains("Never tested"));
    let detail = b.get(&pages[6]).await;
    assert!(detail.text.contains("Reveal secrets"));

    // The explicit reveal shows it, and is audited.
    let revealed = b.post(&format!("/connections/{id}/reveal"), &[]).await;
    assert_eq!(revealed.status, StatusCode::OK, "{}", revealed.text);
    assert_ui_headers("reveal", &revealed);
    assert!(revealed.text.contains(CANARY));
    let audit = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.reveal"),
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

    let login = b.get("/login").await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "signed in: on to /");
}

#[tokio::test]
async fn assets_are_cached_for_a_year_and_the_login_page_works_signed_out() {
    let s = Service::start().await;
    let http = client();
    let login = http.get(format!("{}/login", s.base)).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.headers()[CONTENT_SECURITY_POLICY], CSP);
    let html = login.text().await.unwrap();
    assert!(html.contains("<label for=\"username\">") && html.contains("<label for=\"password\">"));
    for name in ["app", "htmx"] {
        let path = patchbay_server::ui::asset_path(name);
        assert!(html.contains(&path) || name == "htmx", "{name}: {path}");
        let r = http.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            r.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
    }
    let missing = http
        .get(format!("{}/assets/app.00000000.css", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Signed out, pages send a browser to the sign-in form and a script gets a 401.
    let page = http
        .get(format!("{}/tokens", s.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/login");
    let script = http.get(format!("{}/tokens", s.base)).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::UNAUTHORIZED);

    // A wrong password is answered on the form, without echoing the password.
    let wrong = http
        .post(format!("{}/login", s.base))
        .form(&[("username", "admin"), ("password", CANARY)])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let text = wrong.text().await.unwrap();
    assert!(text.contains("Wrong username or password") && !text.contains(CANARY));
}

#[tokio::test]
async fn a_form_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let id = s.create_pg(&project, "finance").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let path = format!("/connections/{id}/delete");
    let none = b.send(Method::POST, &path, Some(&[("version", "1")])).await;
    assert_eq!(none.status, StatusCode::FORBIDDEN, "{}", none.text);
    assert!(none.text.contains("csrf_token_invalid"));
    assert_ui_headers("refused", &none);
    let wrong = b
        .send(
            Method::POST,
            &path,
            Some(&[("csrf_token", "not-the-token"), ("version", "1")]),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let logout = b.send(Method::POST, "/logout", Some(&[])).await;
    assert_eq!(logout.status, StatusCode::FORBIDDEN);
    let still = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(still.status, StatusCode::OK);

    let ok = b.post(&path, &[("version", "1")]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text);
    assert_eq!(
        ok.location(),
        format!("/projects/{project}/connections?deleted=finance")
    );
    let gone = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    let out = b.post("/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/login");
    assert_eq!(b.get("/tokens").await.location(), "/login");
}

#[tokio::test]
async fn a_viewer_sees_no_change_buttons_and_its_form_posts_answer_403() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let id = s.create_pg(&project, "finance").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = user_with_password(&s, "vera", "viewer").await;
    let detail = viewer.get(&format!("/connections/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text);
    assert!(!detail.text.contains("/delete\"") && !detail.text.contains("Reveal secrets"));
    assert!(!detail.text.contains(CANARY));
    let overview = viewer
        .get(&format!("/projects/{project}/connections"))
        .await;
    assert!(!overview.text.contains("Add a connection"));
    let refused = [
        (format!("/connections/{id}/delete"), vec![("version", "1")]),
        (format!("/connections/{id}/reveal"), vec![]),
        (
            format!("/connections/{id}/edit"),
            vec![("version", "1"), ("name", "x")],
        ),
        (
            format!("/projects/{project}/connections"),
            vec![("type", "postgresql"), ("name", "x")],
        ),
    ];
    for (path, fields) in &refused {
        let r = viewer.post(path, fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert!(r.text.contains("Not allowed"), "{path}: an HTML page");
        assert!(!r.text.contains(CANARY));
    }
    let edit_page = viewer.get(&format!("/connections/{id}/edit")).await;
    assert_eq!(edit_page.status, StatusCode::FORBIDDEN);
    let still = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(still.status, StatusCode::OK);
    assert_eq!(still.body["name"], "finance");
}

#[tokio::test]
async fn the_add_form_shows_field_errors_next_to_the_field_and_saves_valid_values() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let b = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let path = format!("/projects/{project}/connections");
    let base = [
        ("type", "postgresql"),
        ("name", "orders"),
        ("environment", "staging"),
        ("tags", "team:ops, nightly"),
        ("settings.host", "db.internal"),
        ("settings.database", "orders"),
        ("settings.username", "etl"),
        ("settings.sslmode", "require"),
        ("secrets.password", CANARY),
    ];

    // Typed by the form: a port that is no number.
    let mut bad = base.to_vec();
    bad.push(("settings.port", "fifty"));
    let r = b.post(&path, &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("must be a whole number"), "{}", r.text);
    assert!(r
        .text
        .contains("id=\"f-settings-port\" name=\"settings.port\" type=\"number\" value=\"\""));
    assert!(!r.text.contains(CANARY), "the secret is not filled back in");

    // Checked by the service: the API's message lands on the field it names.
    let missing: Vec<_> = base
        .iter()
        .copied()
        .filter(|(k, _)| *k != "settings.host")
        .collect();
    let r = b.post(&path, &missing).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let at_host = r.text.find("f-settings-host-help").unwrap();
    assert!(r.text[at_host..].contains("field-error"), "{}", r.text);
    let mut bad_name = base.to_vec();
    bad_name[1] = ("name", "Not A Name");
    let r = b.post(&path, &bad_name).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("has-error") && r.text.contains("aria-invalid=\"true\""));

    let mut good = base.to_vec();
    good.push(("settings.port", "6543"));
    let r = b.post(&path, &good).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let id = r.location().trim_start_matches("/connections/").to_owned();
    let api = s
        .call(
            Method::GET,
            &format!("/api/v1/connections/{id}?reveal=false"),
            None,
            &[],
        )
        .await;
    assert_eq!(api.body["settings"]["port"], 6543, "{}", api.text);
    assert_eq!(api.body["settings"]["sslmode"], "require");
    assert_eq!(api.body["environment"], "staging");
    assert_eq!(api.body["tags"], json!(["team:ops", "nightly"]));
    assert_eq!(api.body["secrets_set"], json!(["password"]));

    // Editing from a stale form: changed by someone else, nothing saved.
    let edit = b.get(&format!("/connections/{id}/edit")).await;
    assert!(edit.text.contains("name=\"version\" value=\"1\""));
    assert!(!edit.text.contains(CANARY));
    let other = s
        .call(
            Method::PATCH,
            &format!("/api/v1/connections/{id}"),
            Some(json!({"description": "changed elsewhere"})),
            &[("if-match", "*")],
        )
        .await;
    assert!(other.status.is_success(), "{}", other.text);
    let mut stale = good.clone();
    stale.retain(|(k, _)| *k != "type" && *k != "secrets.password");
    stale.push(("version", "1"));
    let r = b.post(&format!("/connections/{id}/edit"), &stale).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(r.text.contains("Changed by someone else"));
    // With the current version it saves; the blank password keeps the stored one.
    let mut fresh = stale.clone();
    fresh.retain(|(k, _)| *k != "version");
    fresh.push(("version", "2"));
    fresh.retain(|(k, _)| *k != "settings.port");
    fresh.push(("settings.port", "6544"));
    let r = b.post(&format!("/connections/{id}/edit"), &fresh).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let api = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(api.body["settings"]["port"], 6544);
    assert_eq!(api.body["secrets"]["password"], CANARY);
}

#[tokio::test]
async fn a_provisioned_connection_offers_no_edit_or_delete_and_refuses_the_form_posts() {
    let s = Service::start().await;
    let project = s.default_project().await;
    let id = s.create_pg(&project, "managed").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE connections SET provisioned = 'warehouse.yaml' WHERE id = $1")
        .bind(&id)
        .execute(&s.raw_db().await)
        .await
        .unwrap();
    let admin = Browser::sign_in(&s, "admin", &admin_password(&s)).await;
    let detail = admin.get(&format!("/connections/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text);
    assert!(detail
        .text
        .contains("Provisioned from <code>warehouse.yaml</code>"));
    assert!(!detail.text.contains(&format!("/connections/{id}/edit\"")));
    assert!(!detail.text.contains(&format!("/connections/{id}/delete\"")));
    assert!(detail
        .text
        .contains(&format!("/connections/{id}/duplicate\"")));
    // A hand-made post gets the API's answer, as a page, and changes nothing.
    let r = admin
        .post(&format!("/connections/{id}/delete"), &[("version", "1")])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let still = s
        .call(Method::GET, &format!("/api/v1/connections/{id}"), None, &[])
        .await;
    assert_eq!(still.status, StatusCode::OK);
}
