//! Salesforce: the documented OAuth 2.0 token request at `/services/oauth2/token` for the
//! connection's flow (client credentials at the My Domain `instance_url`; refresh token or
//! JWT bearer — an RS256 assertion with `iss` the consumer key, `sub` the username, `aud`
//! the login URL — at `login_url`), then `GET /services/data/v{api_version}/` with the
//! access token at the `instance_url` the token answer names (`/sobjects` must be there).
//! Token errors (`invalid_client_id`, `invalid_client`, `invalid_grant`) are auth_failed
//! at auth.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use patchbay_crypto::SecretString;
use reqwest::Url;
use serde_json::{json, Value};

use crate::gcp::{send, sign_jwt};
use crate::net;
use crate::result::{
    ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, StageReport, StageStatus, Stopped,
};
use crate::tls::{TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const SCHEMES: &[&str] = &["https", "http"];

fn url(raw: &str, what: &str) -> Result<Url, Failure> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                format!("the {what} is not a valid http(s) URL"),
            )
        })
}

/// The token endpoint, the form to POST (secrets inside), and the flow's name.
type TokenRequest = (Url, Vec<(&'static str, SecretString)>, &'static str);

fn token_request(t: &Target<'_>) -> Result<TokenRequest, Failure> {
    let client_id = t.required_str("client_id")?.to_owned();
    let login = t.str("login_url").unwrap_or("https://login.salesforce.com");
    let plain = |v: &str| SecretString::new(v.to_owned());
    if let (Some(user), Some(pem)) = (t.str("username"), t.secret("private_key")) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({"iss": client_id, "sub": user, "aud": login.trim_end_matches('/'), "exp": now + 180});
        let jwt = sign_jwt(pem.expose_secret(), None, &claims).ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the private key is not a PEM RSA key",
            )
            .hint("paste the PEM private key whose certificate is uploaded to the connected app")
        })?;
        let endpoint = url(
            &format!("{}/services/oauth2/token", login.trim_end_matches('/')),
            "login URL",
        )?;
        return Ok((
            endpoint,
            vec![
                (
                    "grant_type",
                    plain("urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ),
                ("assertion", jwt),
            ],
            "JWT bearer",
        ));
    }
    let secret = t.secret("client_secret").cloned().ok_or_else(|| {
        Failure::new(
            ErrorClass::AuthFailed,
            "no client secret is set for this connection",
        )
    })?;
    if let Some(refresh) = t.secret("refresh_token") {
        let endpoint = url(
            &format!("{}/services/oauth2/token", login.trim_end_matches('/')),
            "login URL",
        )?;
        return Ok((
            endpoint,
            vec![
                ("grant_type", plain("refresh_token")),
                ("client_id", plain(&client_id)),
                ("client_secret", secret),
                ("refresh_token", refresh.clone()),
            ],
            "refresh token",
        ));
    }
    let instance = t.required_str("instance_url")?;
    let endpoint = url(
        &format!("{}/services/oauth2/token", instance.trim_end_matches('/')),
        "instance URL",
    )?;
    Ok((
        endpoint,
        vec![
            ("grant_type", plain("client_credentials")),
            ("client_id", plain(&client_id)),
            ("client_secret", secret),
        ],
        "client credentials",
    ))
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let (endpoint, form, flow) = run
        .stage(S::Resolve, async {
            let (e, f, flow) = token_request(t)?;
            crate::guard::check_url_shape(&e, SCHEMES).map_err(|e| net::guard_failure(e, ""))?;
            let d = format!("OAuth {flow} at {}", e.host_str().unwrap_or_default());
            Ok(((e, f, flow), Some(d)))
        })
        .await?;
    let host = endpoint.host_str().unwrap_or_default().to_owned();
    let checked = run
        .stage(S::Dns, async {
            let c = guard
                .check_url(&endpoint, SCHEMES)
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
    let opts = TlsOptions {
        mode: Some(VerifyMode::Full),
        ..TlsOptions::default()
    };
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose_secret())).collect();
    let sent = tokio::time::timeout_at(
        run.deadline(),
        send(
            guard,
            &opts,
            Some(checked),
            |c, u| c.post(u).form(&pairs),
            &endpoint,
            S::Auth,
        ),
    )
    .await;
    let (status, body) = match sent {
        Err(_) => {
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::Timeout,
                    "the token endpoint did not answer within the deadline",
                ),
            ))
        }
        Ok(Err((stage, f))) => return Err(run.fail(stage, f)),
        Ok(Ok(r)) => r,
    };
    if endpoint.scheme() == "https" {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: 0,
            detail: Some("negotiated within the requests, certificate verification full".into()),
        });
    } else {
        run.skip(S::Tls, "plain HTTP");
    }
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (token, instance) = match (status, answer.get("access_token").and_then(Value::as_str)) {
        (200, Some(tok)) => (
            SecretString::new(tok.to_owned()),
            answer
                .get("instance_url")
                .and_then(Value::as_str)
                .or(t.str("instance_url"))
                .map(str::to_owned),
        ),
        (400 | 401 | 403, _) => {
            let code = answer
                .get("error")
                .and_then(Value::as_str)
                .filter(|c| c.len() < 40 && c.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::AuthFailed,
                    format!(
                        "the token request ({flow}) was rejected (HTTP {status}{})",
                        code.map(|c| format!(", {c}")).unwrap_or_default()
                    ),
                )
                .hint("check the consumer key and secret (or the refresh token, or the certificate and pre-authorized user) of the connected app"),
            ));
        }
        (s, _) => {
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::ProtocolMismatch,
                    format!("the token endpoint answered HTTP {s} without an access token"),
                )
                .hint("is the login or instance URL a Salesforce domain?"),
            ))
        }
    };
    run.push(StageReport {
        stage: S::Auth,
        status: StageStatus::Ok,
        duration_ms: 0,
        detail: Some(format!("OAuth {flow}: access token issued")),
    });
    let version = t.str("api_version").unwrap_or("62.0").to_owned();
    run.stage(S::Query, async {
        let instance = instance.ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the setting `instance_url` is required to test this connection",
            )
        })?;
        let api = url(
            &format!(
                "{}/services/data/v{version}/",
                instance.trim_end_matches('/')
            ),
            "instance URL",
        )?;
        let auth = format!("Bearer {}", token.expose_secret());
        let (status, body) = send(
            guard,
            &opts,
            None,
            |c, u| c.get(u).header("authorization", auth),
            &api,
            S::Query,
        )
        .await
        .map_err(|(_, f)| f)?;
        match status {
            200 => {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if json.pointer("/sobjects").is_some() {
                    Ok(((), Some(format!("API v{version} answered"))))
                } else {
                    Err(Failure::new(
                        ErrorClass::ProtocolMismatch,
                        "the answer has no `/sobjects`",
                    ))
                }
            }
            401 => Err(Failure::new(
                ErrorClass::AuthFailed,
                "HTTP 401: the access token was rejected by the instance",
            )),
            403 => Err(Failure::new(
                ErrorClass::PermissionDenied,
                "HTTP 403: the user may not use the API",
            )
            .hint("the user's profile needs the API Enabled permission")),
            404 => Err(Failure::new(
                ErrorClass::NotFound,
                format!("HTTP 404: API version {version} does not exist here"),
            )
            .hint("lower `api_version`")),
            s => Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                format!("HTTP {s}"),
            )),
        }
    })
    .await?;
    Ok(())
}
