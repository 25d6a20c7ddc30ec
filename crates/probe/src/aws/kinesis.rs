//! Kinesis Data Streams: DescribeStreamSummary of the configured stream in the AWS JSON
//! protocol, signed like Athena.

use reqwest::Method;

use patchbay_external::sigv4;

use super::{
    credential_failure, is_credential_error, json_error_type, ok, origin, parse_url, unexpected,
};
use crate::result::{ErrorClass, Failure, ProbeStage as S, Run, Stopped};
use crate::signed_http::{Answer, Call};
use crate::Target;

pub(super) fn call(t: &Target<'_>) -> Result<(Call, String), Failure> {
    let region = t.required_str("region")?.to_owned();
    let stream = t.required_str("stream_name")?.to_owned();
    let endpoint = t
        .str("endpoint_url")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://kinesis.{region}.amazonaws.com"));
    let url = parse_url(&endpoint)?;
    let body = serde_json::to_vec(&serde_json::json!({ "StreamName": stream })).unwrap_or_default();
    let detail = format!("DescribeStreamSummary {stream} at {}", origin(&url));
    Ok((
        Call {
            method: Method::POST,
            url,
            service: "kinesis",
            region,
            headers: vec![
                ("content-type", sigv4::JSON_CONTENT_TYPE.to_owned()),
                (
                    "x-amz-target",
                    "Kinesis_20131202.DescribeStreamSummary".to_owned(),
                ),
            ],
            body,
        },
        detail,
    ))
}

/// DescribeStreamSummary: 200 with the stream's status, or an AWS JSON error type.
pub(super) fn outcome(run: &mut Run, answer: Answer) -> Result<(), Stopped> {
    if answer.status == 200 {
        run.push(ok(S::Auth, "the signature and access key were accepted"));
        let json = serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap_or_default();
        let Some(summary) = json.get("StreamDescriptionSummary") else {
            return Err(run.fail(S::Query, unexpected(answer.status)));
        };
        let status = summary
            .get("StreamStatus")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown");
        let shards = summary
            .get("OpenShardCount")
            .and_then(|s| s.as_u64())
            .map(|n| format!(", {n} open shard(s)"))
            .unwrap_or_default();
        if !matches!(status, "ACTIVE" | "UPDATING") {
            run.warn(format!(
                "the stream is {status}: it cannot be read or written until it is ACTIVE"
            ));
        }
        run.push(ok(
            S::Query,
            &format!("DescribeStreamSummary: the stream is {status}{shards}"),
        ));
        return Ok(());
    }
    let kind = json_error_type(&answer);
    match kind.as_str() {
        "AccessDeniedException" | "AccessDenied" => {
            run.push(ok(S::Auth, "the signature and access key were accepted"));
            Err(run.fail(
                S::Query,
                Failure::new(
                    ErrorClass::PermissionDenied,
                    format!("the key may not describe the stream ({kind})"),
                )
                .hint("grant kinesis:DescribeStreamSummary on the stream"),
            ))
        }
        "ResourceNotFoundException" => {
            run.push(ok(S::Auth, "the signature and access key were accepted"));
            Err(run.fail(
                S::Query,
                Failure::new(
                    ErrorClass::NotFound,
                    format!("the stream does not exist ({kind})"),
                )
                .hint("check the stream name and the region"),
            ))
        }
        "LimitExceededException" => Err(run.fail(
            S::Query,
            Failure::new(
                ErrorClass::RateLimited,
                "Kinesis is throttling DescribeStreamSummary",
            )
            .hint("retry later"),
        )),
        k if is_credential_error(k) => Err(run.fail(S::Auth, credential_failure(k))),
        _ => Err(run.fail(S::Query, unexpected(answer.status))),
    }
}
