//! Signing in: `POST /api/v1/sessions` (JSON) for scripts and the UI, and the HTML pages
//! `/login` (form posting `username` and `password`), `/` and `/logout` that the web UI
//! builds on. Sessions are cookies; changes made with one need its CSRF token.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use patchbay_core::model::{format_rfc3339, RequestMeta};
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{failure_keys, Auth};
use crate::body::JsonObject;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::sessions::{self as svc, Opened};
use crate::session::{self, csrf_token, escape};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    pub user_id: String,
    pub username: String,
    /// Send it as `X-CSRF-Token` with every change made with the session cookie.
    pub csrf_token: String,
    pub expires_at: String,
}

fn opened_cookie(state: &AppState, o: &Opened) -> HeaderValue {
    let max_age = (o.session.expires_at - o.session.created_at) / 1000;
    session::set_cookie(
        o.secret.expose_secret(),
        max_age,
        state.settings.secure_cookies,
    )
}

fn meta(parts: &Parts) -> RequestMeta {
    parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default()
}

#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions",
    request_body(content = Object, description = "{username, password}"),
    responses((status = 201, body = SessionOut, description = "Signed in: the session cookie is set (HttpOnly, SameSite=Lax, Secure under TLS)"),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    parts: Parts,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let mut f = crate::body::Fields::new(body, &["username", "password"], &[])?;
    let username = f.required_string("username")?;
    let password = SecretString::from(f.required_string("password")?);
    let o = svc::sign_in(
        &state,
        meta(&parts),
        failure_keys(&parts, None),
        &username,
        password,
    )
    .await?;
    let out = SessionOut {
        user_id: o.session.user_id.clone(),
        username: o.username.clone(),
        csrf_token: csrf_token(o.secret.expose_secret()),
        expires_at: format_rfc3339(o.session.expires_at),
    };
    let mut resp = (StatusCode::CREATED, Json(out)).into_response();
    let h = resp.headers_mut();
    h.insert(header::SET_COOKIE, opened_cookie(&state, &o));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "sessions",
    responses((status = 204, description = "Signed out; the cookie is cleared"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, auth: Auth) -> ApiResult<Response> {
    svc::sign_out(&state, &auth.0).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(state.settings.secure_cookies),
    );
    Ok(resp)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · patchbay</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>"
    )
}

fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "{error}<form method=\"post\" action=\"/login\">\
             <p><label>Username <input name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>"
        ),
    )
}

/// `GET /login`.
pub async fn login_form() -> Html<String> {
    Html(login_page(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// A form posted from another site (login CSRF) carries a foreign `Origin`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}

/// `POST /login`: the form fields `username` and `password`.
pub async fn login(
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Html(login_page(Some(
                "send the form fields username and password",
            ))),
        )
            .into_response();
    };
    if !same_origin(&parts.headers) {
        return (
            StatusCode::FORBIDDEN,
            Html(login_page(Some("sign-in from another site refused"))),
        )
            .into_response();
    }
    let password = SecretString::from(form.password);
    match svc::sign_in(
        &state,
        meta(&parts),
        failure_keys(&parts, None),
        &form.username,
        password,
    )
    .await
    {
        Ok(o) => {
            let mut resp = Redirect::to("/").into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, opened_cookie(&state, &o));
            resp
        }
        Err(ApiError(e)) => {
            let status =
                StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Html(login_page(Some(&e.message)))).into_response()
        }
    }
}

/// `GET /`: who is signed in, until the web UI lives here.
pub async fn home(State(state): State<AppState>, mut parts: Parts) -> Response {
    let Some(secret) = session::cookie_secret(&parts.headers).map(str::to_owned) else {
        return Redirect::to("/login").into_response();
    };
    let p = match Auth::from_request_parts(&mut parts, &state).await {
        Ok(Auth(p)) => p,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    let name = match svc::username(&state, &p).await {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    Html(page(
        "patchbay",
        &format!(
            "<p>Signed in as <strong>{}</strong>. The API is documented at <a href=\"/api/docs\">/api/docs</a>.</p>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"{}\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&name),
            session::CSRF_FIELD,
            csrf_token(&secret)
        ),
    ))
    .into_response()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf_token: String,
}

/// `POST /logout`: the form's `csrf_token` field stands in for the header.
pub async fn logout(
    State(state): State<AppState>,
    mut parts: Parts,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return ApiError::new(
            ErrorCode::CsrfTokenInvalid,
            "post the form field csrf_token with the sign-out form",
        )
        .into_response();
    };
    match HeaderValue::from_str(&form.csrf_token) {
        Ok(v) => {
            parts.headers.insert(session::CSRF_HEADER, v);
        }
        Err(_) => {
            return ApiError::new(ErrorCode::CsrfTokenInvalid, "malformed CSRF token")
                .into_response()
        }
    }
    let p = match Auth::from_request_parts(&mut parts, &state).await {
        Ok(Auth(p)) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = svc::sign_out(&state, &p).await {
        return e.into_response();
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(state.settings.secure_cookies),
    );
    resp
}
