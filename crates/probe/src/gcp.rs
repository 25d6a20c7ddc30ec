//! Google Cloud (gcs, bigquery) with a service-account key: the documented OAuth 2.0
//! JWT-bearer flow (an RS256-signed assertion POSTed to the key's `token_uri`, signed with
//! rustls' ring provider), then one read-only call with the access token: GCS
//! `buckets.get`, BigQuery `datasets.get` (or `datasets.list` without a dataset). Both
//! hosts go through the guard; `api_base_url` replaces the API host (a private endpoint, a
//! test responder). HMAC keys and application-default credentials answer
//! `not_implemented`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use patchbay_crypto::SecretString;
use reqwest::Url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::{json, Value};

use crate::guard::Checked;
use crate::net;
use crate::result::{
    ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, StageReport, StageStatus, Stopped,
};
use crate::tls::{self, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const MAX_BODY: usize = 256 * 1024;
const SCHEMES: &[&str] = &["https", "http"];

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Gcs,
    BigQuery,
}

struct Plan {
    token_uri: Url,
    assertion: SecretString,
    api: Url,
    pointer: &'static str,
    what: String,
}

fn invalid_key() -> Failure {
    Failure::new(
        ErrorClass::InvalidSettings,
        "the service account JSON is not a valid service-account key",
    )
    .hint("paste the whole JSON key file of the service account (type service_account)")
}

/// The signed JWT assertion of the documented service-account flow.
fn assertion(sa: &Value, scope: &str, token_uri: &str) -> Result<SecretString, Failure> {
    let email = sa
        .get("client_email")
        .and_then(Value::as_str)
        .ok_or_else(invalid_key)?;
    let pem = sa
        .get("private_key")
        .and_then(Value::as_str)
        .ok_or_else(invalid_key)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims =
        json!({"iss": email, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600});
    let kid = sa.get("private_key_id").and_then(Value::as_str);
    sign_jwt(pem, kid, &claims).ok_or_else(invalid_key)
}

/// An RS256 JWT signed with a PKCS#8 (or PKCS#1) PEM RSA key; None when the key is not one.
pub(crate) fn sign_jwt(pem: &str, kid: Option<&str>, claims: &Value) -> Option<SecretString> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    let signer = signing.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256])?;
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = Value::String(kid.to_owned());
    }
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = signer.sign(input.as_bytes()).ok()?;
    Some(SecretString::new(format!("{input}.{}", B64.encode(sig))))
}

fn url(raw: &str) -> Result<Url, Failure> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                format!("`{raw}` is not a valid http(s) URL"),
            )
        })
}

fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn plan(t: &Target<'_>, kind: Kind) -> Result<Plan, Failure> {
    let Some(raw) = t.secret("service_account_json") else {
        if t.bool("use_application_default_credentials") == Some(true)
            || t.str("hmac_access_id").is_some()
        {
            return Err(Failure::new(
                ErrorClass::NotImplemented,
                "testing with application default credentials or HMAC keys is not implemented yet",
            )
            .hint("set a service account JSON key to test"));
        }
        return Err(Failure::new(
            ErrorClass::AuthFailed,
            "no service account key is set for this connection",
        )
        .hint("paste the JSON key file of the service account"));
    };
    let sa: Value = serde_json::from_str(raw.expose_secret()).map_err(|_| invalid_key())?;
    if sa.get("type").and_then(Value::as_str) != Some("service_account") {
        return Err(invalid_key());
    }
    let token_uri = sa
        .get("token_uri")
        .and_then(Value::as_str)
        .unwrap_or(TOKEN_URI)
        .to_owned();
    let (scope, default_base) = match kind {
        Kind::Gcs => (
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://storage.googleapis.com",
        ),
        Kind::BigQuery => (
            "https://www.googleapis.com/auth/bigquery.readonly",
            "https://bigquery.googleapis.com",
        ),
    };
    let base = t
        .str("api_base_url")
        .unwrap_or(default_base)
        .trim_end_matches('/')
        .to_owned();
    let (path, pointer, what) = match kind {
        Kind::Gcs => {
            let bucket = t.required_str("bucket")?;
            (
                format!("/storage/v1/b/{}", segment(bucket)),
                "/name",
                format!("buckets.get {bucket}"),
            )
        }
        Kind::BigQuery => {
            let project = t.required_str("project_id")?;
            match t.str("dataset") {
                Some(d) => (
                    format!(
                        "/bigquery/v2/projects/{}/datasets/{}",
                        segment(project),
                        segment(d)
                    ),
                    "/kind",
                    format!("datasets.get {project}:{d}"),
                ),
                None => (
                    format!(
                        "/bigquery/v2/projects/{}/datasets?maxResults=1",
                        segment(project)
                    ),
                    "/kind",
                    format!("datasets.list {project}"),
                ),
            }
        }
    };
    Ok(Plan {
        assertion: assertion(&sa, scope, &token_uri)?,
        token_uri: url(&token_uri)?,
        api: url(&format!("{base}{path}"))?,
        pointer,
        what,
    })
}

pub async fn probe(
    t: &Target<'_>,
    guard: &NetworkGuard,
    budget: Duration,
    kind: Kind,
) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, kind).await;
    run.finish()
}

fn tls_options(t: &Target<'_>) -> TlsOptions {
    TlsOptions {
        mode: Some(VerifyMode::Full),
        ca_pem: t.str("tls_ca_certificate").map(str::to_owned),
        ..TlsOptions::default()
    }
}

pub(crate) type SendError = (S, Failure);

/// One request to a guard-checked URL, pinned to the checked addresses, no redirects.
pub(crate) async fn send(
    guard: &NetworkGuard,
    opts: &TlsOptions,
    checked: Option<Checked>,
    build: impl FnOnce(&reqwest::Client, Url) -> reqwest::RequestBuilder,
    url: &Url,
    stage: S,
) -> Result<(u16, Vec<u8>), SendError> {
    let checked = match checked {
        Some(c) => c,
        None => guard.check_url(url, SCHEMES).await.map_err(|e| {
            (
                stage,
                net::guard_failure(e, url.host_str().unwrap_or_default()),
            )
        })?,
    };
    let config = tls::client_config(opts).map_err(|f| (S::Tls, f))?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .user_agent(concat!("patchbay-probe/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(config);
    if let crate::guard::Host::Name(n) = &checked.host {
        builder = builder.resolve_to_addrs(n, &checked.addrs);
    }
    let client = builder.build().map_err(|_| {
        (
            stage,
            Failure::new(ErrorClass::Unknown, "could not build the HTTP client"),
        )
    })?;
    let fail = |e: reqwest::Error| -> SendError {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<rustls::Error>() {
                return (S::Tls, tls::classify(r));
            }
            source = s.source();
        }
        if e.is_connect() {
            if let Some(a) = checked.addrs.first() {
                let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return (S::Tcp, net::connect_failure(*a, &io));
            }
        }
        (
            stage,
            Failure::new(ErrorClass::ProtocolMismatch, "the HTTP exchange failed")
                .hint("is the URL right, and does it need https?"),
        )
    };
    let mut resp = build(&client, url.clone()).send().await.map_err(fail)?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(fail)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            break;
        }
    }
    Ok((status, body))
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
    kind: Kind,
) -> Result<(), Stopped> {
    let plan = run
        .stage(S::Resolve, async {
            let p = plan(t, kind)?;
            for u in [&p.api, &p.token_uri] {
                crate::guard::check_url_shape(u, SCHEMES).map_err(|e| net::guard_failure(e, ""))?;
            }
            let d = format!("{} at {}", p.what, p.api.host_str().unwrap_or_default());
            Ok((p, Some(d)))
        })
        .await?;
    let host = plan.api.host_str().unwrap_or_default().to_owned();
    let checked = run
        .stage(S::Dns, async {
            let c = guard
                .check_url(&plan.api, SCHEMES)
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
    let opts = tls_options(t);
    let deadline = run.deadline();
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
        ),
        ("assertion", plan.assertion.expose_secret().to_owned()),
    ];
    let exchanged = tokio::time::timeout_at(
        deadline,
        send(
            guard,
            &opts,
            None,
            |c, u| c.post(u).form(&form),
            &plan.token_uri,
            S::Auth,
        ),
    )
    .await;
    let (status, body) = match exchanged {
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
    if plan.api.scheme() == "https" || plan.token_uri.scheme() == "https" {
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
    let token = match (status, answer.get("access_token").and_then(Value::as_str)) {
        (200, Some(tok)) => SecretString::new(tok.to_owned()),
        (400 | 401 | 403, _) => {
            // Google's documented errors: invalid_grant (bad signature, unknown or
            // disabled key), invalid_client, unauthorized_client.
            let code = answer
                .get("error")
                .and_then(Value::as_str)
                .filter(|c| c.len() < 40 && c.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::AuthFailed,
                    format!(
                        "the token endpoint rejected the service account key (HTTP {status}{})",
                        code.map(|c| format!(", {c}")).unwrap_or_default()
                    ),
                )
                .hint("the key may be deleted or disabled, or the JSON belongs to another account"),
            ));
        }
        (s, _) => {
            return Err(run.fail(
                S::Auth,
                Failure::new(
                    ErrorClass::ProtocolMismatch,
                    format!("the token endpoint answered HTTP {s} without an access token"),
                )
                .hint("is `token_uri` in the key file Google's token endpoint?"),
            ))
        }
    };
    run.push(StageReport {
        stage: S::Auth,
        status: StageStatus::Ok,
        duration_ms: 0,
        detail: Some("service account key accepted, access token issued".into()),
    });
    let pointer = plan.pointer;
    let api = plan.api.clone();
    run.stage(S::Query, async {
        let auth = format!("Bearer {}", token.expose_secret());
        let (status, body) = send(guard, &opts, Some(checked), |c, u| c.get(u).header("authorization", auth), &api, S::Query)
            .await
            .map_err(|(_, f)| f)?;
        let f = match status {
            200 => {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if json.pointer(pointer).is_some() {
                    return Ok(((), Some("HTTP 200".to_owned())));
                }
                Failure::new(ErrorClass::ProtocolMismatch, format!("the answer has no `{pointer}`"))
                    .hint("is `api_base_url` the Google API endpoint?")
            }
            401 => Failure::new(ErrorClass::AuthFailed, "HTTP 401: the access token was rejected"),
            403 => Failure::new(ErrorClass::PermissionDenied, "HTTP 403: the service account may not read this")
                .hint(match kind {
                    Kind::Gcs => "grant it storage.buckets.get (e.g. roles/storage.legacyBucketReader or Storage Admin) on the bucket",
                    Kind::BigQuery => "grant it roles/bigquery.metadataViewer (or dataViewer) on the project or dataset",
                }),
            404 => Failure::new(ErrorClass::NotFound, match kind {
                Kind::Gcs => "HTTP 404: the bucket does not exist",
                Kind::BigQuery => "HTTP 404: the project or dataset does not exist",
            }),
            s => Failure::new(ErrorClass::ProtocolMismatch, format!("HTTP {s}")),
        };
        Err(f)
    })
    .await?;
    Ok(())
}
