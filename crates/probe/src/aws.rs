//! S3-compatible storage (s3, minio, r2) and Athena probes: one SigV4-signed request
//! (signed_http.rs) through the guard — HeadBucket for a bucket (200 ok, 404
//! not_found, 403 explained by a signed ListObjectsV2 that carries S3's error code), and
//! Athena GetWorkGroup for the configured workgroup, Kinesis DescribeStreamSummary for the
//! configured stream (both the AWS JSON protocol).

use std::time::{Duration, Instant};

use patchbay_external::sigv4::{self, Credentials};
use reqwest::{Method, Url};

use crate::guard::Checked;
use crate::net;
use crate::result::{
    ms, ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, StageReport, StageStatus, Stopped,
};
use crate::signed_http::{send, Answer, Call};
use crate::tls::{verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

mod kinesis;

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

fn credentials(t: &Target<'_>) -> Result<Credentials, Failure> {
    let key = t.str("access_key_id");
    let secret = t.secret("secret_access_key");
    match (key, secret) {
        (Some(k), Some(s)) => Ok(Credentials::new(
            k,
            s.clone(),
            t.secret("session_token").cloned(),
        )),
        _ if t.bool("use_default_credentials") == Some(true) => Err(Failure::new(
            ErrorClass::NotImplemented,
            "testing with the server's default AWS credentials is not implemented yet",
        )
        .hint("set an access key id and secret access key to test")),
        _ => Err(Failure::new(
            ErrorClass::InvalidSettings,
            "the access key id and secret access key are required to test this connection",
        )),
    }
}

fn tls_options(t: &Target<'_>) -> TlsOptions {
    let mode = verify_unless(t, "tls_verify", VerifyMode::None);
    TlsOptions::from_target(t, Some(mode), PemFields::TLS)
}

fn parse_url(raw: &str) -> Result<Url, Failure> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the endpoint URL is not a valid http(s) URL",
            )
            .hint("e.g. https://s3.eu-west-1.amazonaws.com or http://minio.internal:9000")
        })
}

/// The HeadBucket request of an S3-compatible type.
fn s3_call(t: &Target<'_>) -> Result<(Call, String), Failure> {
    let bucket = t.required_str("bucket")?.to_owned();
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    {
        return Err(Failure::new(
            ErrorClass::InvalidSettings,
            "a bucket name has lower-case letters, digits, dots and hyphens only",
        ));
    }
    let (endpoint, region, path_style) = if t.ty.id == "r2" {
        let account = t.required_str("account_id")?;
        let jurisdiction = match t.str("jurisdiction").unwrap_or("default") {
            "default" => String::new(),
            j => format!(".{j}"),
        };
        (
            format!("https://{account}{jurisdiction}.r2.cloudflarestorage.com"),
            "auto".to_owned(),
            true,
        )
    } else {
        let region = t.str("region").unwrap_or("us-east-1").to_owned();
        match t.str("endpoint_url") {
            Some(e) => (
                e.to_owned(),
                region,
                t.bool("force_path_style").unwrap_or(true),
            ),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                region,
                t.bool("force_path_style").unwrap_or(false),
            ),
        }
    };
    let mut url = parse_url(&endpoint)?;
    if path_style {
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{bucket}"));
    } else {
        let host = format!("{bucket}.{}", url.host_str().unwrap_or_default());
        url.set_host(Some(&host)).map_err(|_| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the bucket host name is not valid",
            )
        })?;
    }
    let detail = format!("HeadBucket {bucket} at {}", origin(&url));
    Ok((
        Call {
            method: Method::HEAD,
            url,
            service: "s3",
            region,
            headers: Vec::new(),
            body: Vec::new(),
        },
        detail,
    ))
}

fn athena_call(t: &Target<'_>) -> Result<(Call, String), Failure> {
    let region = t.required_str("region")?.to_owned();
    let workgroup = t.str("workgroup").unwrap_or("primary").to_owned();
    let endpoint = t
        .str("endpoint_url")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://athena.{region}.amazonaws.com"));
    let url = parse_url(&endpoint)?;
    let body =
        serde_json::to_vec(&serde_json::json!({ "WorkGroup": workgroup })).unwrap_or_default();
    let detail = format!("GetWorkGroup {workgroup} at {}", origin(&url));
    Ok((
        Call {
            method: Method::POST,
            url,
            service: "athena",
            region,
            headers: vec![
                ("content-type", sigv4::JSON_CONTENT_TYPE.to_owned()),
                ("x-amz-target", "AmazonAthena.GetWorkGroup".to_owned()),
            ],
            body,
        },
        detail,
    ))
}

fn origin(u: &Url) -> String {
    match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or_default()),
        None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    S3,
    Athena,
    Kinesis,
}

pub async fn probe_s3(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, Api::S3).await;
    run.finish()
}

pub async fn probe_athena(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, Api::Athena).await;
    run.finish()
}

pub async fn probe_kinesis(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, Api::Kinesis).await;
    run.finish()
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
    api: Api,
) -> Result<(), Stopped> {
    let (call, creds) = run
        .stage(S::Resolve, async {
            let (call, detail) = match api {
                Api::S3 => s3_call(t)?,
                Api::Athena => athena_call(t)?,
                Api::Kinesis => kinesis::call(t)?,
            };
            crate::guard::check_url_shape(&call.url, &["https", "http"])
                .map_err(|e| net::guard_failure(e, ""))?;
            Ok(((call, credentials(t)?), Some(detail)))
        })
        .await?;
    if t.str("role_arn").is_some() {
        run.warn("role_arn is not assumed by the test: it checks the access key itself");
    }
    let host = call.url.host_str().unwrap_or_default().to_owned();
    let checked = run
        .stage(S::Dns, async {
            let c = guard
                .check_url(&call.url, &["https", "http"])
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
    let https = call.url.scheme() == "https";
    let started = Instant::now();
    let answer =
        match tokio::time::timeout_at(run.deadline(), send(&call, &creds, &checked, &opts)).await {
            Err(_) => return Err(run.fail(
                if https { S::Tls } else { S::Query },
                Failure::new(ErrorClass::Timeout, "no HTTP answer within the deadline").hint(
                    "the server accepted the connection but did not answer: is this the endpoint?",
                ),
            )),
            Ok(Err((stage, f))) => return Err(run.fail(stage, f)),
            Ok(Ok(a)) => a,
        };
    if https {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: ms(started.elapsed()),
            detail: Some(format!(
                "negotiated within the request, certificate verification {}",
                opts.mode().as_str()
            )),
        });
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
    } else {
        run.skip(S::Tls, "plain HTTP endpoint");
        run.warn("the endpoint is plain HTTP: requests are signed but not encrypted");
    }
    match api {
        Api::S3 => s3_outcome(run, &call, &creds, &checked, &opts, answer).await,
        Api::Athena => athena_outcome(run, answer),
        Api::Kinesis => kinesis::outcome(run, answer),
    }
}

async fn s3_outcome(
    run: &mut Run,
    call: &Call,
    creds: &Credentials,
    checked: &Checked,
    opts: &TlsOptions,
    answer: Answer,
) -> Result<(), Stopped> {
    let bucket_ok = |run: &mut Run| {
        run.push(ok(S::Auth, "the signature and access key were accepted"));
    };
    match answer.status {
        200 => {
            bucket_ok(run);
            run.push(ok(
                S::Query,
                "HeadBucket answered 200: the bucket exists and the key may use it",
            ));
            Ok(())
        }
        404 => {
            bucket_ok(run);
            Err(run.fail(
                S::Query,
                Failure::new(
                    ErrorClass::NotFound,
                    "the bucket does not exist (HeadBucket 404)",
                )
                .hint("check the bucket name and the account or endpoint it lives in"),
            ))
        }
        301 | 400 if answer.region_header.is_some() => Err(run.fail(
            S::Query,
            Failure::new(
                ErrorClass::InvalidSettings,
                format!(
                    "the bucket is in region {}, not the configured one",
                    answer.region_header.unwrap_or_default()
                ),
            )
            .hint("set the connection's region to the bucket's region"),
        )),
        403 => {
            // HEAD answers carry no error code: ask the same question with a body.
            let mut list = Call {
                method: Method::GET,
                url: call.url.clone(),
                service: call.service,
                region: call.region.clone(),
                headers: Vec::new(),
                body: Vec::new(),
            };
            list.url
                .query_pairs_mut()
                .append_pair("list-type", "2")
                .append_pair("max-keys", "0");
            let code = match send(&list, creds, checked, opts).await {
                Ok(a) => xml_code(&a.body),
                Err(_) => None,
            };
            match code.as_deref() {
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "TokenRefreshRequired",
                ) => Err(run.fail(
                    S::Auth,
                    Failure::new(
                        ErrorClass::AuthFailed,
                        format!(
                            "the storage rejected the credentials ({})",
                            code.unwrap_or_default()
                        ),
                    )
                    .hint("check the access key id and secret access key (and the session token)"),
                )),
                other => {
                    bucket_ok(run);
                    Err(run.fail(
                        S::Query,
                        Failure::new(
                            ErrorClass::PermissionDenied,
                            format!(
                                "the key may not access the bucket (HeadBucket 403{})",
                                other.map(|c| format!(", {c}")).unwrap_or_default()
                            ),
                        )
                        .hint("grant s3:ListBucket on the bucket to this key"),
                    ))
                }
            }
        }
        s => Err(run.fail(S::Query, unexpected(s))),
    }
}

fn athena_outcome(run: &mut Run, answer: Answer) -> Result<(), Stopped> {
    if answer.status == 200 {
        run.push(ok(S::Auth, "the signature and access key were accepted"));
        let json = serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap_or_default();
        // AWS answers a missing workgroup with InvalidRequestException; some emulators
        // answer 200 with an empty or null WorkGroup.
        if json.pointer("/WorkGroup/Name").is_none() {
            return Err(run.fail(
                S::Query,
                Failure::new(ErrorClass::NotFound, "the workgroup does not exist")
                    .hint("check the workgroup name and the region"),
            ));
        }
        let state = json
            .pointer("/WorkGroup/State")
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        if state.as_deref() == Some("DISABLED") {
            return Err(run.fail(
                S::Query,
                Failure::new(ErrorClass::PermissionDenied, "the workgroup is disabled")
                    .hint("enable the workgroup or choose another one"),
            ));
        }
        run.push(ok(S::Query, "GetWorkGroup answered 200"));
        return Ok(());
    }
    let kind = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_owned))
        .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
        // Some emulators answer in the query protocol's XML instead.
        .or_else(|| xml_code(&answer.body))
        .unwrap_or_default();
    match kind.as_str() {
        "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId" => Err(run.fail(
            S::Auth,
            Failure::new(
                ErrorClass::AuthFailed,
                format!("AWS rejected the credentials ({kind})"),
            )
            .hint("check the access key id and secret access key (and the session token)"),
        )),
        "AccessDeniedException" => {
            run.push(ok(S::Auth, "the signature and access key were accepted"));
            Err(run.fail(
                S::Query,
                Failure::new(
                    ErrorClass::PermissionDenied,
                    "the key may not read the workgroup (AccessDeniedException)",
                )
                .hint("grant athena:GetWorkGroup on the workgroup"),
            ))
        }
        "InvalidRequestException" | "ResourceNotFoundException" => {
            run.push(ok(S::Auth, "the signature and access key were accepted"));
            Err(run.fail(
                S::Query,
                Failure::new(
                    ErrorClass::NotFound,
                    format!("the workgroup does not exist ({kind})"),
                )
                .hint("check the workgroup name and the region"),
            ))
        }
        "ThrottlingException" | "TooManyRequestsException" => Err(run.fail(
            S::Query,
            Failure::new(ErrorClass::RateLimited, "AWS is throttling the requests")
                .hint("retry later"),
        )),
        _ => Err(run.fail(S::Query, unexpected(answer.status))),
    }
}

fn json_error_type(answer: &Answer) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_owned))
        .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
        // Some emulators answer in the query protocol's XML instead.
        .or_else(|| xml_code(&answer.body))
        .unwrap_or_default()
}

fn is_credential_error(kind: &str) -> bool {
    matches!(
        kind,
        "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
    )
}

fn credential_failure(kind: &str) -> Failure {
    Failure::new(
        ErrorClass::AuthFailed,
        format!("AWS rejected the credentials ({kind})"),
    )
    .hint("check the access key id and secret access key (and the session token)")
}

fn ok(stage: S, detail: &str) -> StageReport {
    StageReport {
        stage,
        status: StageStatus::Ok,
        duration_ms: 0,
        detail: Some(detail.to_owned()),
    }
}

fn unexpected(status: u16) -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        format!("unexpected HTTP {status}"),
    )
    .hint("is the endpoint URL the storage, Athena or Kinesis API?")
}

/// `<Code>…</Code>` of an S3 XML error, if it is a plain token.
fn xml_code(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let start = s.find("<Code>")? + 6;
    let end = s[start..].find("</Code>")? + start;
    let code = &s[start..end];
    (code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric())).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_codes_are_read_only_when_they_are_plain_tokens() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>x</Message></Error>";
        assert_eq!(xml_code(body).as_deref(), Some("InvalidAccessKeyId"));
        assert_eq!(xml_code(b"<Error><Code>a b</Code></Error>"), None);
        assert_eq!(xml_code(b"not xml"), None);
    }
}
