//! Per-request context: the request id (`X-Request-Id`, taken from the caller when short and
//! printable, else generated, and echoed on every response), the peer address, and the
//! audit record of a refused attempt (403). A 401 has no actor and is only logged.
//!
//! The peer address is the TCP peer (`ConnectInfo`); `X-Forwarded-For` is not honoured
//! (there is no trusted-proxy setting yet), so behind a proxy it is the proxy's address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use patchbay_core::model::{Principal, RequestMeta};

use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-chosen request id accepted.
const MAX_REQUEST_ID: usize = 64;

/// Set on a 403 response by the error conversion: the permission that was missing.
#[derive(Clone, Debug)]
pub struct DeniedPermission(pub String);

/// Where the auth extractor leaves the principal, so the layer can attribute a refusal.
#[derive(Clone, Default)]
struct PrincipalSlot(Arc<Mutex<Option<Principal>>>);

/// Called by the auth extractor.
pub(crate) fn remember_principal(parts: &Parts, p: &Principal) {
    if let Some(slot) = parts.extensions.get::<PrincipalSlot>() {
        if let Ok(mut g) = slot.0.lock() {
            *g = Some(p.clone());
        }
    }
}

fn accepted_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= MAX_REQUEST_ID && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

pub async fn context(
    State(state): State<AppState>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(accepted_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let source_address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let params: Vec<(String, String)> = params
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    req.extensions_mut().insert(RequestMeta {
        request_id: Some(request_id.clone()),
        source_address: source_address.clone(),
    });
    let slot = PrincipalSlot::default();
    req.extensions_mut().insert(slot.clone());

    let mut resp = next.run(req).await;

    match resp.status() {
        StatusCode::FORBIDDEN => {
            let principal = slot.0.lock().ok().and_then(|mut g| g.take());
            let permission = resp.extensions().get::<DeniedPermission>().cloned();
            if let (Some(p), Some(permission)) = (principal, permission) {
                crate::service::audit::record_denied(
                    &state,
                    &p,
                    method.as_str(),
                    route.as_deref().unwrap_or("(unmatched)"),
                    &params,
                    &permission.0,
                )
                .await;
            }
        }
        StatusCode::UNAUTHORIZED => {
            tracing::info!(
                request_id,
                source = source_address.as_deref().unwrap_or("-"),
                route = route.as_deref().unwrap_or("(unmatched)"),
                "request without a valid token"
            );
        }
        _ => {}
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}
