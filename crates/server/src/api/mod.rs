//! The REST API: routes, the OpenAPI document, health, and the cross-cutting layers
//! (body limit, request log, panic guard, security headers, JSON fallbacks).

pub mod access;
pub mod audit;
pub mod catalog;
pub mod connections;
pub mod credentials;
pub mod dependents;
pub mod import_export;
pub mod keys;
pub mod resolve;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod webhooks;
pub mod workspaces;
pub mod zones;

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use patchbay_core::ErrorCode;
use serde_json::json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::body::MAX_BODY;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "patchbay", description = "Connection and credential manager: connections, connector catalog, workspaces."),
    paths(
        catalog::list, catalog::get, catalog::credential_kinds,
        workspaces::list, workspaces::create, workspaces::list_projects, workspaces::create_project,
        connections::list, connections::create, connections::get, connections::replace,
        connections::patch, connections::delete, connections::test, connections::test_draft,
        connections::test_history,
        import_export::import, import_export::export_plain, import_export::export_sealed,
        resolve::by_id, resolve::by_name,
        credentials::list, credentials::create, credentials::get, credentials::patch,
        credentials::delete, credentials::versions, credentials::rotate, credentials::revoke,
        credentials::usage, credentials::token,
        tokens::create, tokens::list, tokens::revoke, tokens::create_runner,
        users::create, users::list, users::list_members, users::put_member,
        users::delete_member, users::list_roles, users::create_role,
        sessions::create, sessions::delete,
        keys::status, keys::rotate_master, keys::rotate_data, keys::rotation,
        audit::list, audit::verify,
        zones::list, zones::create, zones::get, zones::delete, zones::create_agent_token,
        zones::claim, zones::result,
        dependents::list, dependents::put, dependents::delete,
        webhooks::list, webhooks::create, webhooks::get, webhooks::patch, webhooks::delete,
        webhooks::deliveries, webhooks::ping, webhooks::redeliver,
        health, ready,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &StandardErrors),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Lists, on every operation whose own annotation does not, the answers it can give by its
/// kind, in the error envelope ([`ErrorBody`]): with a bearer token, 401 (no token, or an
/// unknown, expired or revoked one), 403 (a permission missing) and 429 (too many failed
/// authentications from the source or for the token); with parameters or a body, 400 (the
/// error's `field` names the offending input); with a path parameter, 404 (what it names does
/// not exist, or the caller may not see it); with an `If-Match` header, 412 (the version
/// moved on). A client generated from the document then knows every status it may meet.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let params = op.parameters.as_deref().unwrap_or_default();
                let takes_input = op.request_body.is_some() || !params.is_empty();
                let if_match = params.iter().any(|p| p.name == "If-Match");
                let names_resource = params
                    .iter()
                    .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Path);
                let mut standard = vec![];
                if takes_input {
                    standard.push(("400", "Invalid input: `field` names it"));
                }
                if secured {
                    standard.push(("401", "No token, or an unknown, expired or revoked one"));
                    standard.push(("403", "A permission the token lacks"));
                    standard.push(("429", "Too many failed authentications"));
                }
                if names_resource {
                    standard.push((
                        "404",
                        "What the path names does not exist, or the caller may not see it",
                    ));
                }
                if if_match {
                    standard.push(("412", "If-Match names another version"));
                }
                for (status, description) in standard {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/api/v1/health", tag = "health", responses((status = 200)))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers and the master key is loaded.
#[utoipa::path(get, path = "/api/v1/ready", tag = "health",
    responses((status = 200), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({
            "status": "ready",
            "database": format!("{:?}", state.store.backend()).to_lowercase(),
            "master_key_id": state.keys.master_key_id(),
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(ErrorCode::Unavailable, "the database does not answer").into_response()
        }
    }
}

/// Expected version from If-Match: `None` is `*` (any version).
pub type Expected = Option<i64>;

pub(crate) fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// `If-Match: "<version>"` (or `*`). Missing → 428; unparseable → 412.
pub(crate) fn if_match(headers: &HeaderMap, required: bool) -> ApiResult<Option<Expected>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return if required {
            Err(ApiError::new(
                ErrorCode::PreconditionRequired,
                "send If-Match with the ETag from your last GET of this resource",
            ))
        } else {
            Ok(None)
        };
    };
    let v = v.to_str().unwrap_or("").trim();
    if v == "*" {
        return Ok(Some(None));
    }
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    v.parse::<i64>().map(|n| Some(Some(n))).map_err(|_| {
        ApiError::new(
            ErrorCode::VersionConflict,
            "If-Match does not name a version of this resource",
        )
    })
}

/// `?limit=` (1-500, default 100) and `?cursor=` of a list endpoint, taken out of `q`.
pub(crate) fn page_params(
    q: &mut std::collections::BTreeMap<String, String>,
) -> ApiResult<(u32, Option<String>)> {
    let limit = match q.remove("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| {
                ApiError::field(ErrorCode::InvalidQuery, "limit", "limit must be 1-500")
            })?,
    };
    let after = match q.remove("cursor") {
        None => None,
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::field(
                        ErrorCode::InvalidQuery,
                        "cursor",
                        "not a cursor from this API",
                    )
                })?,
        ),
    };
    Ok((limit, after))
}

/// The opaque cursor for "after this name".
pub(crate) fn cursor(after_name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after_name)
}

pub fn router(state: AppState) -> Router {
    use axum::routing::get as g;
    let api = Router::new()
        .route("/api/v1/health", g(health))
        .route("/api/v1/ready", g(ready))
        .route("/api/v1/connection-types", g(catalog::list))
        .route("/api/v1/connection-types/{type}", g(catalog::get))
        .route("/api/v1/credential-kinds", g(catalog::credential_kinds))
        .route(
            "/api/v1/workspaces",
            g(workspaces::list).post(workspaces::create),
        )
        .route(
            "/api/v1/workspaces/{ws}/projects",
            g(workspaces::list_projects).post(workspaces::create_project),
        )
        .route(
            "/api/v1/projects/{project}/connections",
            g(connections::list).post(connections::create),
        )
        .route(
            "/api/v1/connections/{id}",
            g(connections::get)
                .put(connections::replace)
                .patch(connections::patch)
                .delete(connections::delete),
        )
        .route(
            "/api/v1/projects/{project}/connections/test",
            axum::routing::post(connections::test_draft),
        )
        .route(
            "/api/v1/connections/{id}/test",
            axum::routing::post(connections::test),
        )
        .route(
            "/api/v1/connections/{id}/tests",
            g(connections::test_history),
        )
        .route(
            "/api/v1/projects/{project}/import",
            axum::routing::post(import_export::import),
        )
        .route(
            "/api/v1/projects/{project}/export",
            g(import_export::export_plain).post(import_export::export_sealed),
        )
        .route(
            "/api/v1/connections/{id}/resolve",
            axum::routing::post(resolve::by_id),
        )
        .route(
            "/api/v1/projects/{project}/connections/by-name/{name}/resolve",
            axum::routing::post(resolve::by_name),
        )
        .route(
            "/api/v1/workspaces/{ws}/credentials",
            g(credentials::list).post(credentials::create),
        )
        .route(
            "/api/v1/credentials/{id}",
            g(credentials::get)
                .patch(credentials::patch)
                .delete(credentials::delete),
        )
        .route(
            "/api/v1/credentials/{id}/versions",
            g(credentials::versions).post(credentials::rotate),
        )
        .route(
            "/api/v1/credentials/{id}/versions/{version}/revoke",
            axum::routing::post(credentials::revoke),
        )
        .route("/api/v1/credentials/{id}/usage", g(credentials::usage))
        .route(
            "/api/v1/credentials/{id}/token",
            axum::routing::post(credentials::token),
        )
        .route("/api/v1/tokens", g(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route(
            "/api/v1/workspaces/{ws}/runner-tokens",
            axum::routing::post(tokens::create_runner),
        )
        .route("/api/v1/sessions", axum::routing::post(sessions::create))
        .route(
            "/api/v1/sessions/current",
            axum::routing::delete(sessions::delete),
        )
        .route("/api/v1/users", g(users::list).post(users::create))
        .route("/api/v1/workspaces/{ws}/members", g(users::list_members))
        .route(
            "/api/v1/workspaces/{ws}/members/{user}",
            axum::routing::put(users::put_member).delete(users::delete_member),
        )
        .route(
            "/api/v1/workspaces/{ws}/roles",
            g(users::list_roles).post(users::create_role),
        )
        .route("/api/v1/keys", g(keys::status))
        .route(
            "/api/v1/keys/rotate-master",
            axum::routing::post(keys::rotate_master),
        )
        .route("/api/v1/keys/rotations/{id}", g(keys::rotation))
        .route(
            "/api/v1/workspaces/{ws}/keys/rotate-data",
            axum::routing::post(keys::rotate_data),
        )
        .route("/api/v1/workspaces/{ws}/audit", g(audit::list))
        .route("/api/v1/audit/verify", g(audit::verify))
        .route(
            "/api/v1/workspaces/{ws}/zones",
            g(zones::list).post(zones::create),
        )
        .route("/api/v1/zones/{id}", g(zones::get).delete(zones::delete))
        .route(
            "/api/v1/workspaces/{ws}/zones/{zone}/agent-tokens",
            axum::routing::post(zones::create_agent_token),
        )
        .route("/api/v1/agent/claim", axum::routing::post(zones::claim))
        .route(
            "/api/v1/agent/jobs/{id}/result",
            axum::routing::post(zones::result),
        )
        .route("/api/v1/connections/{id}/dependents", g(dependents::list))
        .route(
            "/api/v1/connections/{id}/dependents/{kind}/{ref}",
            axum::routing::put(dependents::put).delete(dependents::delete),
        )
        .route(
            "/api/v1/workspaces/{ws}/webhooks",
            g(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            g(webhooks::get)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        )
        .route("/api/v1/webhooks/{id}/deliveries", g(webhooks::deliveries))
        .route(
            "/api/v1/webhooks/{id}/ping",
            axum::routing::post(webhooks::ping),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{event}/redeliver",
            axum::routing::post(webhooks::redeliver),
        )
        .route("/api/openapi.json", g(openapi_json))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::enforce,
        ))
        .with_state(state.clone());
    let docs = Router::from(
        utoipa_swagger_ui::SwaggerUi::new("/api/docs")
            .config(utoipa_swagger_ui::Config::from("/api/openapi.json")),
    )
    .route_layer(middleware::from_fn(crate::request::note_route));
    api.merge(crate::ui::router(state))
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The whole HTTP service: [`router`] inside the layers that treat every request alike,
/// which wrap it once. (A `Router::layer` wraps each route instead, at a boxed clone of the
/// route's service and a boxed future per layer and request.) From the outside in:
/// - the request's context, its log line and the security headers (`request::context`);
/// - a JSON 500 for a panic;
/// - the body limit.
pub fn service(state: AppState) -> impl HttpService {
    use tower::Layer;
    let inner =
        CatchPanic(axum::extract::DefaultBodyLimit::max(MAX_BODY).layer(router(state.clone())));
    middleware::from_fn_with_state(state, crate::request::context).layer(inner)
}

/// What [`service`] is: a cloneable HTTP service that always answers.
pub trait HttpService:
    tower::Service<
        axum::extract::Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> HttpService for T where
    T: tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Answers a request whose handler panicked with a JSON 500 ([`panic_response`]), like
/// tower-http's `CatchPanic` but keeping the response's body type.
#[derive(Clone)]
pub struct CatchPanic<S>(S);

type Answered = Result<Response, std::convert::Infallible>;

impl<S> tower::Service<axum::extract::Request> for CatchPanic<S>
where
    S: tower::Service<
        axum::extract::Request,
        Response = Response,
        Error = std::convert::Infallible,
    >,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::Map<
            futures_util::future::CatchUnwind<std::panic::AssertUnwindSafe<S::Future>>,
            fn(std::thread::Result<Answered>) -> Answered,
        >,
        std::future::Ready<Answered>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures_util::future::Either;
        use futures_util::FutureExt;
        let answered: fn(std::thread::Result<Answered>) -> Answered =
            |r| r.unwrap_or_else(|payload| Ok(panic_response(payload)));
        // A panic while the call is set up is caught as well as one while it runs.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.call(req))) {
            Ok(future) => Either::Left(
                std::panic::AssertUnwindSafe(future)
                    .catch_unwind()
                    .map(answered),
            ),
            Err(payload) => Either::Right(std::future::ready(Ok(panic_response(payload)))),
        }
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Marks a response that carries a secret (a revealed value, a token or secret shown once,
/// material for a run or a test) as never to be stored by a cache.
pub(crate) fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A 201's `Location`: the created resource's path (built from an id, so a valid header).
pub(crate) fn located(mut resp: Response, path: &str) -> Response {
    resp.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(path).expect("an id path is a valid header"),
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed(req: axum::extract::Request) -> ApiError {
    // The path matched a route (whose layers did not run): the log line names it.
    crate::request::remember_route(&req, None);
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this resource does not support that method",
    )
}

/// A panic becomes a JSON 500; the payload is not echoed (it could quote data).
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError(patchbay_core::Error::internal()).into_response()
}

/// One line per request: method, route template, status, duration. Never headers, bodies
/// or query strings. Called by the request layer (crate::request::context).
pub(crate) fn request_log(
    method: &axum::http::Method,
    route: Option<&str>,
    status: StatusCode,
    start: Instant,
) {
    let route = route.unwrap_or("(unmatched)");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms, "request");
    } else {
        tracing::info!(%method, route, status = status.as_u16(), ms, "request");
    }
}

/// The headers every response carries. Called by the request layer.
pub(crate) fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return ApiError::new(ErrorCode::PayloadTooLarge, "the body exceeds 1 MiB").into_response();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn answer_of(svc: impl HttpService) -> (StatusCode, serde_json::Value) {
        let req = axum::extract::Request::new(axum::body::Body::empty());
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// A service whose handler panics while it runs, or while the call is set up.
    #[derive(Clone)]
    struct Panics {
        in_call: bool,
    }

    impl tower::Service<axum::extract::Request> for Panics {
        type Response = Response;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: axum::extract::Request) -> Self::Future {
            assert!(!self.in_call, "panic in call: payload-42");
            Box::pin(async { panic!("panic in the handler: payload-42") })
        }
    }

    #[tokio::test]
    async fn a_panic_answers_a_json_500_that_quotes_nothing() {
        for in_call in [false, true] {
            let (status, body) = answer_of(CatchPanic(Panics { in_call })).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body["code"], "internal", "{body}");
            assert!(!body.to_string().contains("payload-42"), "{body}");
        }
        let fine = tower::service_fn(|_: axum::extract::Request| async {
            Ok::<_, std::convert::Infallible>(Json(json!({"ok": true})).into_response())
        });
        assert_eq!(
            answer_of(CatchPanic(fine)).await,
            (StatusCode::OK, json!({"ok": true}))
        );
    }
}
