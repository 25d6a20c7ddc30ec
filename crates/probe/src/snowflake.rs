//! Snowflake: the HTTP login the official connectors send (POST
//! /session/v1/login-request with the account, login name and password or OAuth token),
//! then `select current_version()` through /queries/v1/query-request with the session
//! token. Snowflake answers errors with HTTP 200 and `success: false` plus a code:
//! 390100 (wrong user or password) and the token codes → auth_failed, the database /
//! schema / warehouse / role codes of the login → not_found.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde_json::{json, Value};

use crate::net;
use crate::plain_http::{self, excerpt, Answer};
use crate::result::{
    ms, ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo, StageReport,
    StageStatus, Stopped,
};
use crate::tls::{TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const CLIENT_APP_ID: &str = "patchbay";

enum Login<'a> {
    Password(&'a str),
    OAuth(&'a str),
}

fn base_url(t: &Target<'_>) -> Result<Url, Failure> {
    let account = t.required_str("account")?;
    let protocol = t.str("protocol").unwrap_or("https");
    if !matches!(protocol, "https" | "http") {
        return Err(Failure::new(
            ErrorClass::InvalidSettings,
            "the protocol must be https or http",
        ));
    }
    let host = match t.str("host") {
        Some(h) => h.to_owned(),
        None => {
            if !account
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "the account identifier has letters, digits, '-', '_' and '.' only",
                )
                .hint("e.g. myorg-myaccount or xy12345.eu-west-1"));
            }
            format!("{}.snowflakecomputing.com", account.replace('_', "-"))
        }
    };
    let port = match t.int("port") {
        Some(_) => t.port("port")?,
        None if protocol == "http" => 80,
        None => 443,
    };
    Url::parse(&format!("{protocol}://{host}:{port}/")).map_err(|_| {
        Failure::new(
            ErrorClass::InvalidSettings,
            "the account host and port do not form a valid URL",
        )
    })
}

fn login_settings<'a>(t: &'a Target<'_>) -> Result<(&'a str, Login<'a>), Failure> {
    let user = t.required_str("username")?;
    let login = match t.str("authenticator").unwrap_or("snowflake") {
        "snowflake" => Login::Password(
            t.secret("password")
                .ok_or_else(|| {
                    Failure::new(
                        ErrorClass::InvalidSettings,
                        "the password is required to test this connection",
                    )
                })?
                .expose_secret(),
        ),
        "oauth" => Login::OAuth(
            t.secret("oauth_token")
                .ok_or_else(|| {
                    Failure::new(
                        ErrorClass::InvalidSettings,
                        "the OAuth access token is required to test this connection",
                    )
                })?
                .expose_secret(),
        ),
        "snowflake_jwt" => {
            return Err(Failure::new(
                ErrorClass::NotImplemented,
                "testing key-pair (snowflake_jwt) authentication is not implemented yet",
            )
            .hint("the connection was not contacted; password and OAuth logins can be tested"))
        }
        other => {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                format!("unknown authenticator `{other}`"),
            ))
        }
    };
    Ok((user, login))
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let (base, user, login) = run
        .stage(S::Resolve, async {
            let base = base_url(t)?;
            let (user, login) = login_settings(t)?;
            crate::guard::check_url_shape(&base, &["https", "http"])
                .map_err(|e| net::guard_failure(e, ""))?;
            let d = format!(
                "{user} at account {} ({})",
                t.str("account").unwrap_or_default(),
                base.as_str().trim_end_matches('/')
            );
            Ok(((base, user, login), Some(d)))
        })
        .await?;
    let host = base.host_str().unwrap_or_default().to_owned();
    let checked = run
        .stage(S::Dns, async {
            let port = base.port_or_known_default().unwrap_or(443);
            net::dns(guard, &host, port).await
        })
        .await?;
    run.stage(S::Tcp, async {
        let (_, d) = net::tcp(&checked.addrs).await?;
        Ok(((), d))
    })
    .await?;
    let https = base.scheme() == "https";
    let opts = TlsOptions {
        mode: Some(VerifyMode::Full),
        ..TlsOptions::default()
    };
    let client = match plain_http::client(&checked, &opts) {
        Ok(c) => c,
        Err((stage, f)) => return Err(run.fail(stage, f)),
    };

    // Login: TLS (when https) is negotiated within this first request.
    let mut login_url = base.join("session/v1/login-request").expect("static path");
    {
        let mut q = login_url.query_pairs_mut();
        q.append_pair("requestId", &request_id());
        for (param, setting) in [
            ("warehouse", "warehouse"),
            ("databaseName", "database"),
            ("schemaName", "schema"),
            ("roleName", "role"),
        ] {
            if let Some(v) = t.str(setting) {
                q.append_pair(param, v);
            }
        }
    }
    let account_name = t
        .str("account")
        .unwrap_or_default()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_uppercase();
    let mut data = json!({
        "CLIENT_APP_ID": CLIENT_APP_ID,
        "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
        "ACCOUNT_NAME": account_name,
        "LOGIN_NAME": user,
        "CLIENT_ENVIRONMENT": {"APPLICATION": CLIENT_APP_ID},
        "SESSION_PARAMETERS": {},
    });
    match login {
        Login::Password(p) => data["PASSWORD"] = json!(p),
        Login::OAuth(tok) => {
            data["AUTHENTICATOR"] = json!("OAUTH");
            data["TOKEN"] = json!(tok);
        }
    }
    let rb = client
        .post(login_url)
        .header("accept", "application/json")
        .header(
            "user-agent",
            format!("{CLIENT_APP_ID}/{}", env!("CARGO_PKG_VERSION")),
        )
        .json(&json!({ "data": data }));
    let started = Instant::now();
    let answer = match tokio::time::timeout_at(run.deadline(), plain_http::send(rb, &checked)).await
    {
        Err(_) => {
            return Err(run.fail(
                if https { S::Tls } else { S::Auth },
                Failure::new(ErrorClass::Timeout, "no answer to the login within the deadline")
                    .hint("the server accepted the connection but did not answer: is this the Snowflake account URL?"),
            ))
        }
        Ok(Err((stage, f))) => {
            let stage = if stage == S::Query { S::Auth } else { stage };
            return Err(run.fail(stage, f));
        }
        Ok(Ok(a)) => a,
    };
    if https {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: ms(started.elapsed()),
            detail: Some(
                "negotiated within the login request, certificate verification full".into(),
            ),
        });
    } else {
        run.skip(S::Tls, "plain HTTP endpoint");
        run.warn("the endpoint is plain HTTP: the password and session token travel unencrypted");
    }
    let (token, version) = run
        .stage(S::Auth, async {
            let body = envelope(&answer)?;
            let data = &body["data"];
            let token = data["token"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Failure::new(
                        ErrorClass::ProtocolMismatch,
                        "the login succeeded but carried no session token",
                    )
                })?;
            let version = data["serverVersion"].as_str().map(str::to_owned);
            Ok((
                (token.to_owned(), version),
                Some(format!("logged in as {user}")),
            ))
        })
        .await?;

    let mut query_url = base.join("queries/v1/query-request").expect("static path");
    query_url
        .query_pairs_mut()
        .append_pair("requestId", &request_id());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let rb = client
        .post(query_url)
        .header("accept", "application/snowflake")
        .header("authorization", format!("Snowflake Token=\"{token}\""))
        .json(&json!({
            "sqlText": "select current_version()",
            "asyncExec": false,
            "sequenceId": 1,
            "querySubmissionTime": now_ms,
        }));
    let server_version = run
        .stage(S::Query, async {
            let answer = plain_http::send(rb, &checked).await.map_err(|(_, f)| f)?;
            let body = envelope(&answer)?;
            // JSON result sets carry the version; Arrow ones (the default for some
            // clients) are not decoded: the login's serverVersion stands in.
            let from_rows = body["data"]["rowset"][0][0].as_str().map(str::to_owned);
            let v = from_rows.or(version);
            Ok((v, Some("select current_version() succeeded".into())))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "Snowflake".into(),
        version: server_version.unwrap_or_else(|| "unknown".into()),
    });
    Ok(())
}

/// The JSON envelope of an answer, or the failure its `success: false` code means.
fn envelope(a: &Answer) -> Result<Value, Failure> {
    match a.status {
        200 => {}
        401 | 403 => {
            return Err(Failure::new(
                ErrorClass::AuthFailed,
                format!("the server refused the request (HTTP {})", a.status),
            ))
        }
        404 => {
            return Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                "the server has no Snowflake login endpoint (HTTP 404)",
            )
            .hint("check the account identifier, host and port"))
        }
        429 | 503 => {
            return Err(Failure::new(
                ErrorClass::RateLimited,
                format!(
                    "the server is refusing requests for load (HTTP {})",
                    a.status
                ),
            ))
        }
        s => {
            return Err(Failure::new(
                ErrorClass::Unknown,
                format!("the server answered HTTP {s}"),
            ))
        }
    }
    let body: Value = serde_json::from_slice(&a.body).map_err(|_| {
        Failure::new(
            ErrorClass::ProtocolMismatch,
            "the answer is not Snowflake's JSON envelope",
        )
        .hint("is this the Snowflake account URL?")
    })?;
    if body["success"].as_bool() == Some(true) {
        return Ok(body);
    }
    let code = match &body["code"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let message = excerpt(body["message"].as_str().unwrap_or("no message"));
    let text = format!("Snowflake error {code}: {message}");
    Err(match code.as_str() {
        "390100" | "390101" | "390102" | "390144" | "390303" | "390318" => {
            Failure::new(ErrorClass::AuthFailed, text)
                .hint("check the user name and password (or token); a locked or disabled user answers the same")
        }
        "390189" | "390201" | "390202" | "390203" | "002043" | "002003" => {
            Failure::new(ErrorClass::NotFound, text).hint(
                "check the warehouse, database, schema and role names and that the user may use them",
            )
        }
        "390190" => Failure::new(ErrorClass::PermissionDenied, text),
        _ => Failure::new(ErrorClass::Unknown, text),
    })
}
