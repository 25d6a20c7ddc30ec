//! S3 (s3, minio, r2 share the probe) and Athena probes against moto: on 15000
//! (scripts/peers-aws.sh) any key pair is accepted; on 15001 (scripts/peers-infra.sh) IAM
//! authentication is on, with a key that may do anything and one that may do nothing
//! (written to moto-iam.json), for the wrong-key and no-permission cases.

use std::time::{Duration, SystemTime};

use patchbay_crypto::SecretString;
use patchbay_external::sigv4::{self, Credentials, Scope};
use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const MOTO: u16 = 15000;
const KEY: &str = "AKIAPATCHBAYTEST";
const SECRET: &str = "pb-aws-secret";

async fn probe(
    type_id: &str,
    settings: Value,
    secrets: &[(&str, &str)],
) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

/// Creates `bucket` in moto with a signed PUT (CreateBucket), as a client would.
async fn create_bucket(bucket: &str) {
    let creds = Credentials::new(KEY, SecretString::new(SECRET.into()), None);
    let amz_date = sigv4::amz_date(SystemTime::now());
    let host = format!("127.0.0.1:{MOTO}");
    let empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let headers = [
        ("host", host.as_str()),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-content-sha256", empty_hash),
    ];
    let path = format!("/{bucket}");
    let (_, authorization) = sigv4::sign(
        &sigv4::Request {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            payload: b"",
        },
        &Scope {
            service: "s3",
            region: "us-east-1",
            amz_date: &amz_date,
        },
        &creds,
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(format!("http://{host}{path}"))
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", empty_hash)
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "CreateBucket: {}",
        resp.status()
    );
}

fn s3(bucket: &str) -> Value {
    json!({
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint_url": format!("http://127.0.0.1:{MOTO}"),
        "force_path_style": true,
        "access_key_id": KEY,
    })
}

#[tokio::test]
async fn an_existing_bucket_passes_head_bucket() {
    if !peer(MOTO, "moto") {
        return;
    }
    create_bucket("pb-probe-bucket").await;
    let r = probe(
        "s3",
        s3("pb-probe-bucket"),
        &[("secret_access_key", SECRET)],
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("plain HTTP")));
    // MinIO settings (path style by default) reach the same bucket.
    let r = probe(
        "minio",
        json!({"endpoint_url": format!("http://127.0.0.1:{MOTO}"), "bucket": "pb-probe-bucket", "access_key_id": KEY}),
        &[("secret_access_key", SECRET)],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_missing_bucket_is_not_found_at_query_and_the_secret_is_never_echoed() {
    if !peer(MOTO, "moto") {
        return;
    }
    let r = probe(
        "s3",
        s3("pb-no-such-bucket"),
        &[("secret_access_key", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let mut s = s3("pb-probe-bucket");
    s["endpoint_url"] = json!(format!("http://127.0.0.1:{}", kit::closed_port()));
    let r = probe("s3", s, &[("secret_access_key", SECRET)]).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn missing_keys_are_invalid_settings() {
    let r = probe("s3", s3("pb-probe-bucket"), &[]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn the_primary_athena_workgroup_answers() {
    if !peer(MOTO, "moto") {
        return;
    }
    let r = probe(
        "athena",
        json!({"region": "us-east-1", "endpoint_url": format!("http://127.0.0.1:{MOTO}"), "access_key_id": KEY}),
        &[("secret_access_key", SECRET)],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_missing_athena_workgroup_is_not_found() {
    if !peer(MOTO, "moto") {
        return;
    }
    let r = probe(
        "athena",
        json!({"region": "us-east-1", "workgroup": "pb-no-such-wg", "endpoint_url": format!("http://127.0.0.1:{MOTO}"), "access_key_id": KEY}),
        &[("secret_access_key", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
    kit::assert_no_canary(&r);
}

pub const MOTO_IAM: u16 = 15001;

/// (full key, no-permission key) of the IAM-mode moto.
pub fn iam_keys() -> Option<((String, String), (String, String))> {
    if !peer(MOTO_IAM, "moto (IAM mode)") {
        return None;
    }
    let raw = std::fs::read_to_string(format!("{}/moto-iam.json", kit::PEERS_DIR))
        .expect("moto-iam.json (scripts/peers-infra.sh)");
    let v: Value = serde_json::from_str(&raw).unwrap();
    let pair = |k: &str| {
        (
            v[k][0].as_str().unwrap().to_owned(),
            v[k][1].as_str().unwrap().to_owned(),
        )
    };
    Some((pair("full"), pair("none")))
}

fn iam_s3(key: &str) -> Value {
    json!({
        "bucket": "pb-iam-bucket",
        "endpoint_url": format!("http://127.0.0.1:{MOTO_IAM}"),
        "force_path_style": true,
        "access_key_id": key,
    })
}

#[tokio::test]
async fn with_iam_on_the_right_key_passes_and_a_wrong_secret_is_auth_failed_at_auth() {
    let Some(((key, secret), _)) = iam_keys() else {
        return;
    };
    let r = probe("s3", iam_s3(&key), &[("secret_access_key", &secret)]).await;
    assert_ok(&r);
    let r = probe("s3", iam_s3(&key), &[("secret_access_key", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("SignatureDoesNotMatch"));
    kit::assert_no_canary(&r);
    let r = probe(
        "s3",
        iam_s3("AKIAUNKNOWNKEY000000"),
        &[("secret_access_key", &secret)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().message.contains("InvalidAccessKeyId"));
}

#[tokio::test]
async fn with_iam_on_a_key_without_rights_is_permission_denied_at_query() {
    let Some((_, (key, secret))) = iam_keys() else {
        return;
    };
    let r = probe("s3", iam_s3(&key), &[("secret_access_key", &secret)]).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::PermissionDenied);
}

#[tokio::test]
async fn with_iam_on_a_wrong_athena_secret_is_auth_failed() {
    let Some(((key, _), _)) = iam_keys() else {
        return;
    };
    let r = probe(
        "athena",
        json!({"region": "us-east-1", "endpoint_url": format!("http://127.0.0.1:{MOTO_IAM}"), "access_key_id": key}),
        &[("secret_access_key", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}
