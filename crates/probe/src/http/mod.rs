//! HTTP family probe: the check a type declares in the catalog (`base_url` and `path`
//! templates, method, auth placement, expected statuses, a JSON pointer that must exist).
//! reqwest with rustls, no proxy, no automatic redirects: each hop's URL goes through the
//! guard and the client is pinned to the checked addresses (`resolve_to_addrs`).

use std::time::{Duration, Instant};

use reqwest::{Method, Url};
use serde_json::Value;

use crate::guard::Checked;
use crate::net;
use crate::result::{
    ms, ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, StageReport, StageStatus,
};
use crate::tls;
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const MAX_REDIRECTS: usize = 5;
const MAX_BODY: usize = 1 << 20;

mod request;
use request::{request, Auth, Request};

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    // A declared check that needs an OAuth token exchange first has its own module.
    if t.ty.probe.params.get("flow").and_then(Value::as_str) == Some("salesforce_oauth") {
        return crate::salesforce::probe(t, guard, budget).await;
    }
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (
        u.scheme().to_owned(),
        u.host_str().map(str::to_owned),
        u.port_or_known_default(),
    )
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
) -> Result<(), crate::result::Stopped> {
    let (req, warning) = run
        .stage(S::Resolve, async {
            let (req, warning) = request(t)?;
            let schemes: Vec<&str> = req.schemes.iter().map(String::as_str).collect();
            crate::guard::check_url_shape(&req.url, &schemes)
                .map_err(|e| net::guard_failure(e, ""))?;
            let detail = format!(
                "{} {}://{}{}",
                req.method,
                req.url.scheme(),
                req.url.host_str().unwrap_or(""),
                req.url.path()
            );
            Ok(((req, warning), Some(detail)))
        })
        .await?;
    if let Some(w) = warning {
        run.warn(w);
    }
    let host = req.url.host_str().unwrap_or_default().to_owned();
    let schemes: Vec<&str> = req.schemes.iter().map(String::as_str).collect();
    let checked = run
        .stage(S::Dns, async {
            let c = guard
                .check_url(&req.url, &schemes)
                .await
                .map_err(|e| net::guard_failure(e, &host))?;
            let d = c
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Ok((c, Some(d)))
        })
        .await?;
    run.stage(S::Tcp, async {
        let (_, d) = net::tcp(&checked.addrs).await?;
        Ok(((), d))
    })
    .await?;
    let https = req.url.scheme() == "https";
    let config = match tls::client_config(&req.tls) {
        Ok(c) => c,
        Err(f) => return Err(run.fail(S::Tls, f)),
    };
    let started = Instant::now();
    let sent = tokio::time::timeout_at(
        run.deadline(),
        follow(guard, &req, checked, &config, &schemes),
    )
    .await;
    let took = ms(started.elapsed());
    let (status, body) = match sent {
        Err(_) => {
            return Err(run.fail(
                if https { S::Tls } else { S::Query },
                Failure::new(ErrorClass::Timeout, "no HTTP answer within the deadline")
                    .hint("the server accepted the connection but did not answer: is this an HTTP(S) endpoint?"),
            ))
        }
        Ok(Err((stage, f))) => return Err(run.fail(stage, f)),
        Ok(Ok(r)) => r,
    };
    if https {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: took,
            detail: Some(format!(
                "negotiated within the request, certificate verification {}",
                req.tls.mode().as_str()
            )),
        });
        if let Some(w) = req.tls.warning() {
            run.warn(w);
        }
    } else {
        run.skip(S::Tls, "plain HTTP");
    }
    let auth_fail = match status {
        s if req.auth_status.contains(&s) => Some(
            Failure::new(
                ErrorClass::AuthFailed,
                format!("HTTP {status}: the credentials were rejected"),
            )
            .hint("check the token, API key or password of the connection"),
        ),
        403 => Some(
            Failure::new(
                ErrorClass::PermissionDenied,
                "HTTP 403: the credentials are valid but not allowed this request",
            )
            .hint("grant the account read access to the checked endpoint"),
        ),
        _ => None,
    };
    if let Some(f) = auth_fail {
        return Err(run.fail(S::Auth, f));
    }
    // An API that answers a rejected token with 200 and a flag (`{"ok": false}`).
    if let (Some(ptr), Some(want), true) = (&req.pointer, &req.equals, req.expect.contains(&status))
    {
        let got = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|j| j.pointer(ptr).cloned());
        if got.is_some() && got.as_ref() != Some(want) && want == &Value::Bool(true) {
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::AuthFailed,
                    format!("the answer's `{ptr}` is not true: the credentials were rejected"),
                )
                .hint("check the token of the connection"),
            ));
        }
    }
    run.push(StageReport {
        stage: S::Auth,
        status: StageStatus::Ok,
        duration_ms: 0,
        detail: Some(match req.auth {
            Auth::None => "no credentials sent".to_owned(),
            _ => "credentials accepted".to_owned(),
        }),
    });
    run.stage(S::Query, async {
        if !req.expect.contains(&status) {
            let f = match status {
                404 => Failure::new(
                    ErrorClass::NotFound,
                    "HTTP 404: the checked path does not exist",
                )
                .hint("check the base URL (API prefix, version) of the connection"),
                429 => Failure::new(
                    ErrorClass::RateLimited,
                    "HTTP 429: the server is rate-limiting",
                )
                .hint("retry later"),
                s => Failure::new(
                    ErrorClass::ProtocolMismatch,
                    format!("HTTP {s}, expected {:?}", req.expect),
                )
                .hint("is the base URL the API endpoint of this type?"),
            };
            return Err(f);
        }
        if let Some(ptr) = &req.pointer {
            let json: Value = serde_json::from_slice(&body).map_err(|_| {
                Failure::new(ErrorClass::ProtocolMismatch, "the answer is not JSON")
                    .hint("is the base URL the API endpoint of this type?")
            })?;
            match (json.pointer(ptr), &req.equals) {
                (None, _) => {
                    return Err(Failure::new(
                        ErrorClass::ProtocolMismatch,
                        format!("the answer has no `{ptr}`"),
                    )
                    .hint("the endpoint answered, but not like this type's API"))
                }
                (Some(got), Some(want)) if got != want => {
                    return Err(Failure::new(
                        ErrorClass::ProtocolMismatch,
                        format!("the answer's `{ptr}` is not {want}"),
                    )
                    .hint("the endpoint answered, but not like this type's API"))
                }
                _ => {}
            }
        }
        Ok(((), Some(format!("HTTP {status}"))))
    })
    .await?;
    Ok(())
}

type HopError = (S, Failure);

/// Sends the request, following at most [`MAX_REDIRECTS`] redirects, each re-checked by the
/// guard. Credentials go only to the original origin.
async fn follow(
    guard: &NetworkGuard,
    req: &Request,
    first: Checked,
    config: &rustls::ClientConfig,
    schemes: &[&str],
) -> Result<(u16, Vec<u8>), HopError> {
    let mut url = req.url.clone();
    let mut checked = first;
    let home = origin(&req.url);
    for hop in 0..=MAX_REDIRECTS {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("patchbay-probe/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(config.clone());
        if let crate::guard::Host::Name(n) = &checked.host {
            builder = builder.resolve_to_addrs(n, &checked.addrs);
        }
        let client = builder.build().map_err(|_| {
            (
                S::Query,
                Failure::new(ErrorClass::Unknown, "could not build the HTTP client"),
            )
        })?;
        let mut rb = client.request(
            if hop == 0 {
                req.method.clone()
            } else {
                Method::GET
            },
            url.clone(),
        );
        for (k, v) in &req.headers {
            rb = rb.header(k, v);
        }
        if hop == 0 {
            if let Some(b) = &req.body {
                rb = rb.json(b);
            }
        }
        if origin(&url) == home {
            rb = match &req.auth {
                Auth::None => rb,
                Auth::Header(k, v) => rb.header(k, v.expose_secret()),
                Auth::Query(k, v) => rb.query(&[(k.as_str(), v.expose_secret())]),
                Auth::Basic(u, p) => rb.basic_auth(u, Some(p.expose_secret())),
            };
        }
        let mut resp = rb
            .send()
            .await
            .map_err(|e| send_failure(&e, &url, checked.addrs.first().copied()))?;
        let status = resp.status();
        if status.is_redirection() {
            let Some(location) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok((status.as_u16(), Vec::new()));
            };
            let next = url.join(location).map_err(|_| {
                (
                    S::Query,
                    Failure::new(
                        ErrorClass::ProtocolMismatch,
                        "the server redirected to an invalid URL",
                    ),
                )
            })?;
            let host = next.host_str().unwrap_or_default().to_owned();
            checked = guard
                .check_url(&next, schemes)
                .await
                .map_err(|e| (S::Query, net::guard_failure(e, &host)))?;
            url = next;
            continue;
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| send_failure(&e, &url, checked.addrs.first().copied()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                break;
            }
        }
        return Ok((status.as_u16(), body));
    }
    Err((
        S::Query,
        Failure::new(
            ErrorClass::ProtocolMismatch,
            format!("more than {MAX_REDIRECTS} redirects"),
        )
        .hint("point the base URL at the final location"),
    ))
}

/// The rustls error or the io error kind somewhere in a reqwest error: hyper wraps io
/// errors in io errors, whose `source()` skips the wrapped error itself.
fn find_cause(
    e: &(dyn std::error::Error + 'static),
) -> (Option<rustls::Error>, Option<std::io::ErrorKind>) {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return (Some(r.clone()), None);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            let (r, k) = find_cause(inner);
            return (r, k.or(Some(io.kind())));
        }
        return (None, Some(io.kind()));
    }
    match e.source() {
        Some(s) => find_cause(s),
        None => (None, None),
    }
}

fn send_failure(e: &reqwest::Error, url: &Url, addr: Option<std::net::SocketAddr>) -> HopError {
    match find_cause(e) {
        (Some(r), _) => return (S::Tls, tls::classify(&r)),
        (None, Some(std::io::ErrorKind::ConnectionRefused)) => {
            if let Some(addr) = addr {
                let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return (S::Tcp, net::connect_failure(addr, &io));
            }
        }
        _ => {}
    }
    let stage = if url.scheme() == "https" && e.is_connect() {
        S::Tls
    } else {
        S::Query
    };
    let f = if e.is_timeout() {
        Failure::new(ErrorClass::Timeout, "the HTTP request timed out")
    } else if e.is_connect() && stage == S::Tls {
        Failure::new(ErrorClass::TlsHandshake, "the TLS handshake failed")
            .hint("is TLS enabled on this port?")
    } else {
        Failure::new(
            ErrorClass::ProtocolMismatch,
            "the server did not answer with valid HTTP",
        )
        .hint("is this an HTTP(S) endpoint?")
    };
    (stage, f)
}
