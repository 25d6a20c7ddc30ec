//! Kinesis probe against moto: on 15000 (scripts/peers-aws.sh) any key pair is accepted and
//! the test creates its stream with a signed CreateStream; on 15001 IAM authentication is on
//! (keys in moto-iam.json, see aws.rs).

use std::time::{Duration, SystemTime};

use patchbay_crypto::SecretString;
use patchbay_external::sigv4::{self, Credentials, Scope};
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::aws::{iam_keys, MOTO_IAM};
use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const MOTO: u16 = 15000;
const KEY: &str = "AKIAPATCHBAYTEST";
const SECRET: &str = "pb-aws-secret";

async fn probe(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "kinesis",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

/// A signed Kinesis JSON call to moto on 15000, as a client would send it.
async fn kinesis_call(target: &str, body: Value) -> reqwest::Response {
    let creds = Credentials::new(KEY, SecretString::new(SECRET.into()), None);
    let amz_date = sigv4::amz_date(SystemTime::now());
    let host = format!("127.0.0.1:{MOTO}");
    let target = format!("Kinesis_20131202.{target}");
    let payload = serde_json::to_vec(&body).unwrap();
    let headers = [
        ("content-type", sigv4::JSON_CONTENT_TYPE),
        ("host", host.as_str()),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-target", target.as_str()),
    ];
    let (_, authorization) = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            payload: &payload,
        },
        &Scope {
            service: "kinesis",
            region: "us-east-1",
            amz_date: &amz_date,
        },
        &creds,
    );
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{host}/"))
        .header("content-type", sigv4::JSON_CONTENT_TYPE)
        .header("x-amz-date", &amz_date)
        .header("x-amz-target", &target)
        .header("authorization", authorization)
        .body(payload)
        .send()
        .await
        .unwrap()
}

/// Creates `stream` (one shard); an existing one answers ResourceInUseException.
async fn create_stream(stream: &str) {
    let resp = kinesis_call(
        "CreateStream",
        json!({"StreamName": stream, "ShardCount": 1}),
    )
    .await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(
        status.is_success() || body.contains("ResourceInUseException"),
        "CreateStream: {status} {body}"
    );
}

fn kinesis(stream: &str) -> Value {
    json!({
        "region": "us-east-1",
        "stream_name": stream,
        "endpoint_url": format!("http://127.0.0.1:{MOTO}"),
        "access_key_id": KEY,
    })
}

#[tokio::test]
async fn an_existing_stream_is_described() {
    if !peer(MOTO, "moto") {
        return;
    }
    create_stream("pb-stream").await;
    let r = probe(kinesis("pb-stream"), &[("secret_access_key", SECRET)]).await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(
        q.detail.as_deref().unwrap().contains("ACTIVE"),
        "{:?}",
        q.detail
    );
    assert!(r.warnings.iter().any(|w| w.contains("plain HTTP")));
}

#[tokio::test]
async fn a_missing_stream_is_not_found_at_query() {
    if !peer(MOTO, "moto") {
        return;
    }
    let r = probe(
        kinesis("pb-no-such-stream"),
        &[("secret_access_key", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let mut s = kinesis("pb-stream");
    s["endpoint_url"] = json!(format!("http://127.0.0.1:{}", kit::closed_port()));
    let r = probe(s, &[("secret_access_key", SECRET)]).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn with_iam_on_a_wrong_secret_is_auth_failed_and_a_key_without_rights_is_denied() {
    let Some(((key, _), (none_key, none_secret))) = iam_keys() else {
        return;
    };
    let iam = |key: &str| {
        json!({"region": "us-east-1", "stream_name": "pb-stream",
            "endpoint_url": format!("http://127.0.0.1:{MOTO_IAM}"), "access_key_id": key})
    };
    let r = probe(iam(&key), &[("secret_access_key", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
    let r = probe(iam(&none_key), &[("secret_access_key", &none_secret)]).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::PermissionDenied);
}
