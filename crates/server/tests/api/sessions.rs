//! Browser sessions: sign in with a local user's password, an HttpOnly SameSite=Lax cookie,
//! CSRF tokens on every change made with the cookie, sign out.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kit::Service;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `pb_session=…` out of a Set-Cookie header.
fn cookie_of(resp: &reqwest::Response) -> (String, String) {
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

async fn user_with_password(s: &Service, name: &str, password: &str) -> String {
    let r = s
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": name, "password": password})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_signs_in_needs_its_csrf_token_for_changes_and_signs_out() {
    let s = Service::start().await;
    let ws = s.default_workspace().await;
    let uid = user_with_password(&s, "dana", "dana's long password").await;
    s.set_role(&ws, &uid, "editor").await;
    let http = client();
    let sign_in = |username: &str, password: &str| {
        http.post(format!("{}/api/v1/sessions", s.base))
            .json(&json!({"username": username, "password": password}))
            .send()
    };

    // Unknown user and wrong password: the same answer.
    let unknown = sign_in("nobody", "dana's long password").await.unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let unknown = unknown.text().await.unwrap();
    let wrong = sign_in("dana", "not her password").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text().await.unwrap(), unknown);

    let ok = sign_in("dana", "dana's long password").await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let (cookie, set) = cookie_of(&ok);
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag");
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["username"], "dana");
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert!(!cookie.contains(&csrf));

    // Reads need only the cookie; the user's role applies.
    let list = http
        .get(format!("{}/api/v1/workspaces", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let project = s.default_project().await;
    let create = |csrf: Option<&str>, name: &str| {
        let mut req = http
            .post(format!("{}/api/v1/projects/{project}/connections", s.base))
            .header(COOKIE, &cookie)
            .json(&json!({"name": name, "type": "postgresql",
                          "settings": {"host": "h", "database": "d"}}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    // A change without the CSRF token (what a cross-site form would send) is refused.
    let forged = create(None, "forged").await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let forged: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(forged["code"], "csrf_token_invalid");
    let wrong_token = create(Some("AAAA"), "forged").await.unwrap();
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);
    let made = create(Some(&csrf), "made-in-browser").await.unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    // The audit names the user, not a token.
    let events = s
        .call(
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/audit?action=connection.create"),
            None,
            &[],
        )
        .await;
    assert!(
        events.text.contains(&format!("user:{uid}")),
        "{}",
        events.text
    );

    // Sign out: the cookie stops working at once.
    let out = http
        .delete(format!("{}/api/v1/sessions/current", s.base))
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = http
        .get(format!("{}/api/v1/workspaces", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_login_page_posts_username_and_password_and_sign_out_is_a_csrf_form() {
    let s = Service::start().await;
    user_with_password(&s, "erin", "erin's long password").await;
    let http = client();
    let page = http.get(format!("{}/login", s.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"username\"") && html.contains("name=\"password\""));
    // Not signed in: / sends to the login page.
    let home = http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER);
    assert_eq!(home.headers()[LOCATION], "/login");

    let post = |password: &str, origin: Option<&str>| {
        let mut req = http
            .post(format!("{}/login", s.base))
            .form(&[("username", "erin"), ("password", password)]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let wrong = post("nope", None).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("wrong username or password"));
    let cross_site = post("erin's long password", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let host = s.base.trim_start_matches("http://").to_owned();
    let ok = post("erin's long password", Some(&format!("http://{host}")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[LOCATION], "/");
    let (cookie, _) = cookie_of(&ok);

    let home = http
        .get(format!("{}/", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    let html = home.text().await.unwrap();
    assert!(html.contains("erin"));
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    // Sign-out without the token (a cross-site form) is refused; with it, it works.
    let forged = http
        .post(format!("{}/logout", s.base))
        .header(COOKIE, &cookie)
        .form(&[("csrf_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let out = http
        .post(format!("{}/logout", s.base))
        .header(COOKIE, &cookie)
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(out.headers()[LOCATION], "/login");
    let home = http
        .get(format!("{}/", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER, "the session is gone");
}

#[tokio::test]
async fn session_cookies_are_secure_when_patchbay_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let config = patchbay_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: patchbay_server::TlsMode::Dev,
        data_dir: dir.path().join("data"),
        database_url: None,
        master_key: patchbay_server::MasterKeySource::File(dir.path().join("data/master.key")),
        settings: Default::default(),
    };
    let app = patchbay_server::App::start(&config).await.unwrap();
    assert!(app.state.settings.secure_cookies);
    let cookie = patchbay_server::session::set_cookie("s", 60, app.state.settings.secure_cookies);
    assert!(cookie.to_str().unwrap().ends_with("; Secure"));
}
