//! `/login` (form fields `username` and `password`), `/logout` and `/`, which sends a
//! signed-in browser to the connections of its first project.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use patchbay_core::model::RequestMeta;
use patchbay_crypto::SecretString;
use serde::Deserialize;

use super::asset_path;
use super::page::{render, render_status, Chrome, Ui};
use crate::auth::{failure_keys, Auth};
use crate::error::{ApiError, ApiResult};
use crate::service::sessions as svc;
use crate::session;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    css: String,
    error: Option<&'a str>,
    username: &'a str,
}

fn login_page(status: StatusCode, error: Option<&str>, username: &str) -> Response {
    render_status(
        status,
        &LoginPage {
            css: asset_path("app"),
            error,
            username,
        },
    )
}

/// `GET /login` (a signed-in browser goes on to `/`).
pub async fn form(State(state): State<AppState>, mut parts: Parts) -> Response {
    if session::cookie_secret(&parts.headers).is_some()
        && Auth::from_request_parts(&mut parts, &state).await.is_ok()
    {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, None, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// A form posted from another site (login CSRF) is refused. Browsers say where a request
/// comes from in `Sec-Fetch-Site`; under `Referrer-Policy: no-referrer` (ours) their `Origin`
/// of a form post is `null`, so `Origin` decides only when it names a host. Clients that send
/// neither (scripts) are not browsers.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
    else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}

/// `POST /login`: the form fields `username` and `password`.
pub async fn submit(
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            Some("Send the form fields username and password."),
            "",
        );
    };
    if !same_origin(&parts.headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("Sign-in from another site refused."),
            "",
        );
    }
    let meta = parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let password = SecretString::from(form.password);
    match svc::sign_in(
        &state,
        meta,
        failure_keys(&parts, None),
        &form.username,
        password,
    )
    .await
    {
        Ok(o) => {
            let max_age = (o.session.expires_at - o.session.created_at) / 1000;
            let mut resp = Redirect::to("/").into_response();
            resp.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(
                    o.secret.expose_secret(),
                    max_age,
                    state.settings.secure_cookies,
                ),
            );
            resp
        }
        Err(ApiError(e)) => {
            let status =
                StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match e.code {
                patchbay_core::ErrorCode::Unauthenticated => "Wrong username or password.",
                patchbay_core::ErrorCode::RateLimited => {
                    "Too many failed attempts. Wait a minute, then try again."
                }
                _ => "Signing in failed; try again.",
            };
            login_page(status, Some(message), &form.username)
        }
    }
}

#[derive(Template)]
#[template(path = "empty.html")]
struct EmptyHome {
    chrome: Chrome,
}

/// `GET /`: the connections of the first project the user sees.
pub async fn home(State(state): State<AppState>, mut parts: Parts) -> Response {
    if session::cookie_secret(&parts.headers).is_none()
        && !parts.headers.contains_key(header::AUTHORIZATION)
    {
        return Redirect::to("/login").into_response();
    }
    let ui = match Ui::from_request_parts(&mut parts, &state).await {
        Ok(ui) => ui,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    match Chrome::load(&state, &ui, None, None, "connections").await {
        Ok(chrome) if !chrome.project_id.is_empty() => {
            Redirect::to(&format!("/projects/{}/connections", chrome.project_id)).into_response()
        }
        Ok(chrome) => render(&EmptyHome { chrome }),
        Err(e) => e.into_response(),
    }
}

/// `POST /logout` (the form's `csrf_token` is checked by the session layer).
pub async fn logout(State(state): State<AppState>, ui: Ui) -> ApiResult<Response> {
    svc::sign_out(&state, &ui.p).await?;
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(state.settings.secure_cookies),
    );
    Ok(resp)
}
