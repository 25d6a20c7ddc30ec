//! The web UI: server-rendered pages (askama templates in `crates/server/templates/`) over
//! the same service layer as the REST API, enhanced by htmx (vendored in `assets/`) where
//! JavaScript runs and complete without it.
//!
//! Every page and form post is a route of [`crate::api::access::ROUTES`], checked by the
//! same `enforce` layer as the API. Three layers adapt that to browsers:
//! - [`csrf_form_field`] copies the `csrf_token` form field of a form post into the
//!   `X-CSRF-Token` header, so session authentication (`auth.rs`) checks forms and API calls
//!   alike;
//! - [`html_errors`] turns the JSON error of a browser request (one that accepts
//!   `text/html`) into a page: a 401 becomes a redirect to `/login`, other errors a page
//!   with the code and message; scripts keep getting JSON;
//! - [`headers`] adds the CSP (no inline script or style) and `Cache-Control: no-store`.

mod admin;
mod assets;
mod audit;
mod connection_form;
mod connections;
mod form;
mod login;
mod members;
mod page;
mod views;
mod webhooks;
mod zones;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub use assets::{asset_path, ASSETS};

/// The Content-Security-Policy of every UI response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The UI's routes, with the access layer (the caller adds the cross-cutting layers).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(login::home))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/assets/{file}", get(assets::serve))
        .route("/switch", get(page::switch))
        .route("/workspaces/{ws}", get(page::workspace_home))
        .route(
            "/projects/{project}/connections",
            get(connections::overview).post(connections::create),
        )
        .route(
            "/projects/{project}/connections/new",
            get(connections::picker),
        )
        .route(
            "/projects/{project}/connections/new/{type}",
            get(connections::new_form),
        )
        .route(
            "/projects/{project}/connections/test",
            post(connections::test_draft),
        )
        .route("/connections/{id}", get(connections::detail))
        .route("/connections/{id}/test", post(connections::test_saved))
        .route("/connections/{id}/reveal", post(connections::reveal))
        .route(
            "/connections/{id}/edit",
            get(connections::edit_form).post(connections::edit),
        )
        .route(
            "/connections/{id}/duplicate",
            get(connections::duplicate_form),
        )
        .route(
            "/connections/{id}/delete",
            get(connections::delete_dialog).post(connections::delete),
        )
        .route(
            "/workspaces/{ws}/credentials",
            get(admin::credentials).post(admin::create_credential),
        )
        .route(
            "/workspaces/{ws}/credentials/new",
            get(admin::new_credential),
        )
        .route("/credentials/{id}", get(admin::credential))
        .route("/credentials/{id}/rotate", post(admin::rotate_credential))
        .route("/workspaces/{ws}/audit", get(audit::audit))
        .route(
            "/workspaces/{ws}/zones",
            get(zones::list).post(zones::create),
        )
        .route(
            "/workspaces/{ws}/zones/{zone}/agent-tokens",
            post(zones::create_agent_token),
        )
        .route("/zones/{id}/delete", post(zones::delete))
        .route(
            "/workspaces/{ws}/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/webhooks/{id}", get(webhooks::detail))
        .route("/webhooks/{id}/enabled", post(webhooks::set_enabled))
        .route("/webhooks/{id}/delete", post(webhooks::delete))
        .route(
            "/webhooks/{id}/deliveries/{event}/redeliver",
            post(webhooks::redeliver),
        )
        .route(
            "/workspaces/{ws}/members",
            get(members::list).post(members::add),
        )
        .route("/workspaces/{ws}/members/{user}", post(members::set_role))
        .route(
            "/workspaces/{ws}/members/{user}/remove",
            post(members::remove),
        )
        .route("/tokens", get(admin::tokens).post(admin::create_token))
        .route("/tokens/{id}/revoke", post(admin::revoke_token))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::access::enforce,
        ))
        .layer(middleware::from_fn(html_errors))
        .layer(middleware::from_fn(csrf_form_field))
        .layer(middleware::from_fn(headers))
        .with_state(state)
}

fn is_form(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A form post carries its CSRF token as the field `csrf_token`; the session check reads the
/// header, so the field is copied there (a header already sent wins).
async fn csrf_form_field(req: Request, next: Next) -> Response {
    if req.method() != Method::POST
        || !is_form(&req)
        || req.headers().contains_key(crate::session::CSRF_HEADER)
    {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, crate::body::MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return crate::error::ApiError::new(
                patchbay_core::ErrorCode::PayloadTooLarge,
                "the body exceeds 1 MiB",
            )
            .into_response()
        }
    };
    let token = form::pairs(&bytes)
        .into_iter()
        .find(|(k, _)| k == crate::session::CSRF_FIELD)
        .map(|(_, v)| v);
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        parts.headers.insert(crate::session::CSRF_HEADER, v);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn wants_html(req: &Request) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
        || req.headers().contains_key("hx-request")
}

/// Browsers get pages for errors; scripts (no `text/html` in Accept) keep the JSON body.
async fn html_errors(req: Request, next: Next) -> Response {
    let html = wants_html(&req);
    let htmx = req.headers().contains_key("hx-request");
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !html || !(status.is_client_error() || status.is_server_error()) || !is_json {
        return resp;
    }
    if status == StatusCode::UNAUTHORIZED {
        if htmx {
            let mut r = StatusCode::UNAUTHORIZED.into_response();
            r.headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/login"));
            return r;
        }
        if method == Method::GET {
            return Redirect::to("/login").into_response();
        }
    }
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = body["code"].as_str().unwrap_or("error").to_owned();
    let message = body["message"].as_str().unwrap_or("").to_owned();
    let mut out = page::error_page(status, &code, &message, htmx);
    if let Some(r) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, r);
    }
    out
}

/// Security headers of UI responses (the API layer adds nosniff, X-Frame-Options DENY and
/// Referrer-Policy no-referrer to every response).
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
