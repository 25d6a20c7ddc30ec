//! KMS and Secrets Manager against moto's server (a real implementation of the AWS APIs).
//! Start it with `scripts/peers-aws.sh`. Without moto these tests print `SKIPPED` and pass,
//! except under `CI=true`, where a missing peer is a failure.

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use patchbay_crypto::SecretString;
use patchbay_external::cache::{CacheKey, ValueCache};
use patchbay_external::{
    provision, AwsConfig, Credentials, ExternalError, KmsClient, SecretRef, SecretsManagerClient,
    Url,
};

/// moto's URL when it answers; `None` (after printing SKIPPED) when not, panics under CI.
fn moto() -> Option<Url> {
    let raw = std::env::var("PATCHBAY_TEST_MOTO_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15000".to_owned());
    let url = Url::parse(&raw).expect("PATCHBAY_TEST_MOTO_URL is a URL");
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port_or_known_default().unwrap_or(80)
    );
    let up = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
    if up {
        return Some(url);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("moto not reachable at {raw} (CI=true: run scripts/peers-aws.sh)");
    }
    println!("SKIPPED: moto not reachable at {raw}");
    None
}

fn config(url: &Url) -> AwsConfig {
    AwsConfig::new(
        "us-east-1",
        Credentials::new(
            "AKIDPATCHBAYTEST",
            SecretString::new("test-secret-key".into()),
            None,
        ),
    )
    .with_endpoint(url.clone())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn err<T>(r: Result<T, ExternalError>) -> ExternalError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn kms_wraps_and_unwraps_a_master_key_with_context() {
    let Some(url) = moto() else { return };
    let kms = KmsClient::new(config(&url)).unwrap();
    let key_arn = provision::kms_create_key(&kms, "patchbay master key wrap test")
        .await
        .unwrap();
    assert!(key_arn.starts_with("arn:aws:kms:us-east-1:"), "{key_arn}");

    let master_key = [7u8; 32];
    let context = ctx(&[("purpose", "patchbay-master-key"), ("kek_id", "mk-1")]);
    let blob = kms.encrypt(&key_arn, &master_key, &context).await.unwrap();
    assert_ne!(blob.as_slice(), master_key.as_slice());

    let (arn, plaintext) = kms.decrypt(&blob, &context).await.unwrap();
    assert_eq!(arn, key_arn);
    assert_eq!(plaintext.as_slice(), master_key.as_slice());

    // A different context (or none) must not decrypt.
    let wrong = ctx(&[("purpose", "patchbay-master-key"), ("kek_id", "mk-2")]);
    let e = err(kms.decrypt(&blob, &wrong).await);
    assert_eq!(e.code(), "external_denied", "{e}");
    assert!(e.to_string().contains("InvalidCiphertextException"), "{e}");
    assert!(e.to_string().contains("encryption context"), "{e}");
    let e = err(kms.decrypt(&blob, &BTreeMap::new()).await);
    assert_eq!(e.code(), "external_denied", "{e}");

    // A key that does not exist.
    let e = err(kms
        .encrypt(
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
            &master_key,
            &context,
        )
        .await);
    assert_eq!(e.code(), "external_not_found", "{e}");
}

#[tokio::test]
async fn kms_config_from_environment_variables() {
    let Some(url) = moto() else { return };
    let vars: HashMap<&str, String> = [
        ("AWS_ACCESS_KEY_ID", "AKIDENV".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret".to_owned()),
        ("AWS_SESSION_TOKEN", "env-session-token".to_owned()),
        ("AWS_REGION", "eu-west-1".to_owned()),
        ("PATCHBAY_AWS_ENDPOINT_URL", url.to_string()),
    ]
    .into_iter()
    .collect();
    let cfg = AwsConfig::from_env_with(|k| vars.get(k).cloned()).unwrap();
    let kms = KmsClient::new(cfg).unwrap();
    let key = provision::kms_create_key(&kms, "env config").await.unwrap();
    assert!(key.starts_with("arn:aws:kms:eu-west-1:"), "{key}");
    let blob = kms.encrypt(&key, b"hello", &BTreeMap::new()).await.unwrap();
    let (_, pt) = kms.decrypt(&blob, &BTreeMap::new()).await.unwrap();
    assert_eq!(pt.as_slice(), b"hello");
}

#[tokio::test]
async fn secrets_manager_get_whole_key_version_and_missing() {
    let Some(url) = moto() else { return };
    let sm = SecretsManagerClient::new(config(&url)).unwrap();
    let name = unique("patchbay/test/db");
    let value = r#"{"username":"app","password":"s3cr3t-pw","port":5432}"#;
    let (arn, version) = provision::secrets_create(&sm, &name, &SecretString::new(value.into()))
        .await
        .unwrap();

    let whole = sm.get_secret_value(&SecretRef::new(&name)).await.unwrap();
    assert_eq!(whole.expose_secret(), value);
    let by_arn = sm.get_secret_value(&SecretRef::new(&arn)).await.unwrap();
    assert_eq!(by_arn.expose_secret(), value);

    let pw = sm
        .get_secret_value(&SecretRef::new(&name).with_key("password"))
        .await
        .unwrap();
    assert_eq!(pw.expose_secret(), "s3cr3t-pw");
    let port = sm
        .get_secret_value(&SecretRef::new(&name).with_key("port"))
        .await
        .unwrap();
    assert_eq!(port.expose_secret(), "5432");

    let map = sm.get_secret_map(&SecretRef::new(&name)).await.unwrap();
    assert_eq!(
        map.keys().map(String::as_str).collect::<Vec<_>>(),
        ["password", "port", "username"]
    );
    assert_eq!(map["password"].expose_secret(), "s3cr3t-pw");
    assert_eq!(map["port"].expose_secret(), "5432");

    let e = err(sm
        .get_secret_value(&SecretRef::new(&name).with_key("api_key"))
        .await);
    assert_eq!(e.code(), "external_not_found");
    assert!(e.to_string().contains("`api_key`"), "{e}");
    assert!(!e.to_string().contains("s3cr3t-pw"), "{e}");

    let pinned = SecretRef {
        version_id: version.clone(),
        ..SecretRef::new(&name)
    };
    assert!(version.is_some());
    assert_eq!(
        sm.get_secret_value(&pinned).await.unwrap().expose_secret(),
        value
    );
    let staged = SecretRef {
        version_stage: Some("AWSCURRENT".into()),
        ..SecretRef::new(&name)
    };
    assert_eq!(
        sm.get_secret_value(&staged).await.unwrap().expose_secret(),
        value
    );

    let missing = unique("patchbay/test/missing");
    let e = err(sm.get_secret_value(&SecretRef::new(&missing)).await);
    assert_eq!(e.code(), "external_not_found", "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
    assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");
}

#[tokio::test]
async fn cache_serves_old_value_until_ttl_then_new_value() {
    let Some(url) = moto() else { return };
    let sm = SecretsManagerClient::new(config(&url)).unwrap();
    let name = unique("patchbay/test/rotating");
    provision::secrets_create(&sm, &name, &SecretString::new("v1".into()))
        .await
        .unwrap();

    let cache = ValueCache::new(Duration::from_millis(300));
    let key = CacheKey {
        credential_id: "cred-1".into(),
        provider: "aws-secretsmanager".into(),
        path: name.clone(),
        key: None,
        version: None,
    };
    let r = SecretRef::new(&name);
    let fetch = || cache.get_or_fetch(key.clone(), || sm.get_secret_value(&r));

    assert_eq!(fetch().await.unwrap().expose_secret(), "v1");
    provision::secrets_put_value(&sm, &name, &SecretString::new("v2".into()))
        .await
        .unwrap();
    // The provider has v2, the cache still answers v1 within the TTL.
    assert_eq!(sm.get_secret_value(&r).await.unwrap().expose_secret(), "v2");
    assert_eq!(fetch().await.unwrap().expose_secret(), "v1");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(fetch().await.unwrap().expose_secret(), "v2");

    // Rotation drops the cached value at once.
    provision::secrets_put_value(&sm, &name, &SecretString::new("v3".into()))
        .await
        .unwrap();
    assert_eq!(fetch().await.unwrap().expose_secret(), "v2");
    assert_eq!(cache.invalidate_credential("cred-1"), 1);
    assert_eq!(fetch().await.unwrap().expose_secret(), "v3");
}
