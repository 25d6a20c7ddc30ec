//! Per-request context: the request id (`X-Request-Id`, taken from the caller when short and
//! printable, else generated, and echoed on every response), the peer address, and the
//! audit record of a refused attempt (403). A 401 has no actor and is only logged. The layer
//! wraps the whole router; the route layers tell it the matched route ([`remember_route`]).
//!
//! The source address is the TCP peer (`ConnectInfo`), unless that peer is one of the
//! trusted proxies (`PATCHBAY_TRUSTED_PROXIES`): then it is the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy (nginx's `real_ip_recursive`), so a
//! client cannot choose its own address by sending the header. Audit records and the
//! authentication-failure limiter use it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use patchbay_core::model::{Principal, RequestMeta};
use patchbay_probe::guard::Cidr;

use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-chosen request id accepted.
const MAX_REQUEST_ID: usize = 64;

/// Set on a 403 response by the error conversion: the permission that was missing.
#[derive(Clone, Debug)]
pub struct DeniedPermission(pub String);

/// What the layers inside the router learn about a request, for the request layer: it
/// wraps the router, so it starts before routing and reads these after the response.
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    /// The matched route and its path parameters, left by the route layers (the access
    /// layer, and [`note_route`] on the routes it does not cover).
    route: Option<(MatchedPath, Option<RawPathParams>)>,
    /// The authenticated principal, left by the auth extractor, to attribute a refusal.
    principal: Option<Principal>,
}

fn seen(extensions: &axum::http::Extensions) -> Option<std::sync::MutexGuard<'_, Seen>> {
    extensions.get::<Slot>()?.0.lock().ok()
}

/// Called by the auth extractor.
pub(crate) fn remember_principal(parts: &Parts, p: &Principal) {
    if let Some(mut seen) = seen(&parts.extensions) {
        seen.principal = Some(p.clone());
    }
}

/// Called by the route layers: the route `req` matched, and its path parameters.
pub(crate) fn remember_route(req: &Request, params: Option<RawPathParams>) {
    if let (Some(route), Some(mut seen)) = (
        req.extensions().get::<MatchedPath>(),
        seen(req.extensions()),
    ) {
        seen.route = Some((route.clone(), params));
    }
}

/// A route layer that only remembers the route, for routes without the access layer (which
/// does it too).
pub(crate) async fn note_route(
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    remember_route(&req, params.ok());
    next.run(req).await
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address as far as the trusted proxies vouch for it: walking
/// `X-Forwarded-For` (every header, in order) from the right while the hop is trusted. An
/// unparsable entry stops the walk at the last trusted hop.
pub(crate) fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a HeaderValue>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`, `203.0.113.7:5000`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

fn accepted_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= MAX_REQUEST_ID && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// The request layer, around the whole router (`api::service`).
pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(accepted_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let source_address = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| {
        let forwarded = req.headers().get_all(&X_FORWARDED_FOR).iter();
        client_address(c.0.ip(), forwarded, &state.settings.trusted_proxies).to_string()
    });
    let method = req.method().clone();
    req.extensions_mut().insert(RequestMeta {
        request_id: Some(request_id.clone()),
        source_address: source_address.clone(),
    });
    let slot = Slot::default();
    req.extensions_mut().insert(slot.clone());

    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let Seen {
        route: matched,
        principal,
    } = slot
        .0
        .lock()
        .map(|mut g| std::mem::take(&mut *g))
        .unwrap_or_default();
    let (route, params) = match &matched {
        Some((route, params)) => (Some(route.as_str()), params.as_ref()),
        None => (None, None),
    };
    crate::api::request_log(&method, route, resp.status(), start);
    let mut resp = crate::api::security_headers(resp);

    match resp.status() {
        StatusCode::FORBIDDEN => {
            let permission = resp.extensions().get::<DeniedPermission>().cloned();
            if let (Some(p), Some(permission)) = (principal, permission) {
                let params: Vec<(String, String)> = params
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                crate::service::audit::record_denied(
                    &state,
                    &p,
                    method.as_str(),
                    route.unwrap_or("(unmatched)"),
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
                route = route.unwrap_or("(unmatched)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(peer: &str, headers: &[&str], trusted: &[&str]) -> String {
        let values: Vec<HeaderValue> = headers
            .iter()
            .map(|h| HeaderValue::from_str(h).unwrap())
            .collect();
        let trusted: Vec<Cidr> = trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        client_address(peer.parse().unwrap(), values.iter(), &trusted).to_string()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        // No trusted proxy: the header is the client's word and is ignored.
        assert_eq!(addr("198.51.100.9", &["203.0.113.7"], &[]), "198.51.100.9");
        // A peer outside the trusted set is the client even if it sends the header.
        assert_eq!(
            addr("198.51.100.9", &["203.0.113.7"], &["10.0.0.0/8"]),
            "198.51.100.9"
        );
        // Behind one trusted proxy: the right-most entry.
        assert_eq!(
            addr("10.0.0.2", &["1.2.3.4, 203.0.113.7"], &["10.0.0.0/8"]),
            "203.0.113.7"
        );
        // Chains of trusted proxies are skipped (several headers read in order); what the
        // client put in front of them is not believed.
        assert_eq!(
            addr(
                "10.0.0.2",
                &["6.6.6.6, 203.0.113.7", "10.0.0.5"],
                &["10.0.0.0/8"]
            ),
            "203.0.113.7"
        );
        // Ports and bracketed IPv6 are understood.
        assert_eq!(
            addr("10.0.0.2", &["[2001:db8::1]:443"], &["10.0.0.0/8"]),
            "2001:db8::1"
        );
        assert_eq!(addr("::1", &["203.0.113.7:5000"], &["::1"]), "203.0.113.7");
        // Garbage stops the walk at the last trusted hop, never at a made-up value.
        assert_eq!(
            addr("10.0.0.2", &["203.0.113.7, not-an-ip"], &["10.0.0.0/8"]),
            "10.0.0.2"
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(addr("10.0.0.2", &["10.0.0.9"], &["10.0.0.0/8"]), "10.0.0.9");
        assert_eq!(addr("10.0.0.2", &[], &["10.0.0.0/8"]), "10.0.0.2");
    }
}
