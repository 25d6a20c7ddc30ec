//! ClickHouse over its HTTP interface: `GET /ping` (tcp/tls reachability; "Ok."), then
//! `SELECT 1` with the X-ClickHouse-User/Key headers (auth) and `SELECT version()` in the
//! configured database (query). ClickHouse names its error in the
//! `X-ClickHouse-Exception-Code` header and the body's `Code: N.`: 516
//! AUTHENTICATION_FAILED (and 192/193/194 unknown user, wrong or required password) →
//! auth_failed, 81 UNKNOWN_DATABASE → not_found, 497 ACCESS_DENIED → permission_denied.

use std::time::{Duration, Instant};

use reqwest::{Client, Url};

use crate::guard::Checked;
use crate::net;
use crate::plain_http::{self, excerpt, Answer};
use crate::result::{
    ms, ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo, StageReport,
    StageStatus, Stopped,
};
use crate::tls::{verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

fn base_url(t: &Target<'_>) -> Result<Url, Failure> {
    let host = t.required_str("host")?;
    let protocol = t.str("protocol").unwrap_or("https");
    let scheme =
        match protocol {
            "https" | "http" => protocol,
            "native" | "native_tls" => return Err(Failure::new(
                ErrorClass::NotImplemented,
                "testing over ClickHouse's native protocol is not implemented yet",
            )
            .hint(
                "the connection was not contacted; the HTTP interface (8123/8443) can be tested",
            )),
            other => {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    format!("unknown protocol `{other}`"),
                ))
            }
        };
    let port = t.port("port")?;
    Url::parse(&format!("{scheme}://{host}:{port}/")).map_err(|_| {
        Failure::new(
            ErrorClass::InvalidSettings,
            "the host and port do not form a valid URL",
        )
    })
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let base = run
        .stage(S::Resolve, async {
            let base = base_url(t)?;
            crate::guard::check_url_shape(&base, &["https", "http"])
                .map_err(|e| net::guard_failure(e, ""))?;
            let d = format!(
                "{} at {}",
                t.str("username").unwrap_or("default"),
                base.as_str().trim_end_matches('/')
            );
            Ok((base, Some(d)))
        })
        .await?;
    let host = base.host_str().unwrap_or_default().to_owned();
    let port = base.port_or_known_default().unwrap_or(8443);
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    run.stage(S::Tcp, async {
        let (_, d) = net::tcp(&checked.addrs).await?;
        Ok(((), d))
    })
    .await?;
    let https = base.scheme() == "https";
    let mode = verify_unless(t, "verify", VerifyMode::None);
    let pem = PemFields {
        ca: "ca_certificate",
        ..PemFields::TLS
    };
    let opts = TlsOptions::from_target(t, Some(mode), pem);
    let client = match plain_http::client(&checked, &opts) {
        Ok(c) => c,
        Err((stage, f)) => return Err(run.fail(stage, f)),
    };

    // /ping needs no login: TLS (when https) is negotiated within it.
    let started = Instant::now();
    let ping = client.get(base.join("ping").expect("static path"));
    let stage_of_ping = if https { S::Tls } else { S::Auth };
    let answer =
        match tokio::time::timeout_at(run.deadline(), plain_http::send(ping, &checked)).await {
            Err(_) => {
                return Err(run.fail(
                    stage_of_ping,
                    Failure::new(ErrorClass::Timeout, "no answer to /ping within the deadline")
                        .hint("the server accepted the connection but did not answer: is this ClickHouse's HTTP port?"),
                ))
            }
            Ok(Err((stage, f))) => {
                let stage = if stage == S::Query { stage_of_ping } else { stage };
                return Err(run.fail(stage, f));
            }
            Ok(Ok(a)) => a,
        };
    if answer.status != 200 || !answer.body.starts_with(b"Ok.") {
        return Err(run.fail(
            stage_of_ping,
            Failure::new(
                ErrorClass::ProtocolMismatch,
                format!(
                    "GET /ping answered HTTP {} without ClickHouse's \"Ok.\"",
                    answer.status
                ),
            )
            .hint("is this ClickHouse's HTTP interface (8123, or 8443 with TLS)?"),
        ));
    }
    if https {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: ms(started.elapsed()),
            detail: Some(format!(
                "negotiated within GET /ping, certificate verification {}",
                opts.mode().as_str()
            )),
        });
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
    } else {
        run.skip(S::Tls, "plain HTTP interface");
        run.warn("the connection is not encrypted (protocol http): the password travels in clear");
    }

    let user = t.str("username").unwrap_or("default").to_owned();
    run.stage(S::Auth, async {
        let a = query(&client, &checked, &base, t, "SELECT 1", None).await?;
        check(&a, "SELECT 1")?;
        Ok(((), Some(format!("logged in as {user}"))))
    })
    .await?;
    let database = t.str("database").unwrap_or("default").to_owned();
    let version = run
        .stage(S::Query, async {
            let a = query(
                &client,
                &checked,
                &base,
                t,
                "SELECT version()",
                Some(&database),
            )
            .await?;
            check(&a, "SELECT version()")?;
            let v = String::from_utf8_lossy(&a.body).trim().to_owned();
            Ok((
                excerpt(&v),
                Some(format!("SELECT version() in database {database}")),
            ))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "ClickHouse".into(),
        version,
    });
    Ok(())
}

async fn query(
    client: &Client,
    checked: &Checked,
    base: &Url,
    t: &Target<'_>,
    sql: &str,
    database: Option<&str>,
) -> Result<Answer, Failure> {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("query", sql);
        if let Some(db) = database {
            q.append_pair("database", db);
        }
    }
    let mut rb = client
        .get(url)
        .header("x-clickhouse-user", t.str("username").unwrap_or("default"));
    if let Some(p) = t.secret("password") {
        rb = rb.header("x-clickhouse-key", p.expose_secret());
    }
    plain_http::send(rb, checked).await.map_err(|(_, f)| f)
}

/// The failure a non-200 answer means, from ClickHouse's exception code.
fn check(a: &Answer, what: &str) -> Result<(), Failure> {
    if a.status == 200 {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&a.body);
    let code = a
        .headers
        .get("x-clickhouse-exception-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .or_else(|| {
            body.strip_prefix("Code: ")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse().ok())
        });
    let text = format!("{what} answered HTTP {}: {}", a.status, excerpt(&body));
    Err(match (code, a.status) {
        (Some(516 | 192 | 193 | 194), _) | (None, 401) => {
            Failure::new(ErrorClass::AuthFailed, text).hint("check the user name and password")
        }
        (Some(81), _) => Failure::new(ErrorClass::NotFound, text).hint("check the database name"),
        (Some(497), _) | (None, 403) => Failure::new(ErrorClass::PermissionDenied, text),
        (Some(202), _) | (None, 429) => Failure::new(ErrorClass::RateLimited, text),
        (None, 404) => Failure::new(ErrorClass::ProtocolMismatch, text)
            .hint("is this ClickHouse's HTTP interface?"),
        _ => Failure::new(ErrorClass::Unknown, text),
    })
}
