//! Signing in over the API: `POST /api/v1/sessions` (JSON) and `DELETE
//! /api/v1/sessions/current`. Sessions are cookies; changes made with one need its CSRF
//! token. The HTML sign-in form is the web UI's (`crate::ui`).

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::{format_rfc3339, RequestMeta};
use patchbay_crypto::SecretString;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{failure_keys, Auth};
use crate::body::JsonObject;
use crate::error::{ApiResult, ErrorBody};
use crate::service::sessions::{self as svc, Opened};
use crate::session::{self, csrf_token};
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
    let mut resp = super::no_store((StatusCode::CREATED, Json(out)).into_response());
    resp.headers_mut()
        .insert(header::SET_COOKIE, opened_cookie(&state, &o));
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
