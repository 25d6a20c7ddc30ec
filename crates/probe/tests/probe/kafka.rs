//! Kafka probe against tansu brokers (scripts/peers-infra.sh): 19092 without
//! authentication (topic pb-topic), 19093 requiring SASL SCRAM (no user can log in there:
//! see below).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const OPEN: u16 = 19092;
const SASL: u16 = 19093;

async fn kafka(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "kafka",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn sasl(mechanism: &str, user: &str, extra: Value) -> Value {
    let mut s = json!({
        "bootstrap_servers": [format!("127.0.0.1:{SASL}")],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "topic": "pb-topic",
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn an_open_broker_with_an_existing_topic_passes_and_reports_api_ranges() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")], "topic": "pb-topic"}),
        &[],
    )
    .await;
    assert_ok(&r);
    let server = r.server.clone().unwrap();
    assert!(server.version.contains("Metadata v0–v"), "{server:?}");
    let query = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(query.detail.as_deref().unwrap().contains("pb-topic"));
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
    // Without a topic the broker list is enough.
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")]}),
        &[],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_missing_topic_is_not_found_at_query() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{OPEN}")], "topic": "pb-no-such-topic"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

/// tansu 0.6.0 keeps users made with AlterUserScramCredentials where a broker started with
/// --authentication cannot see them, so its SCRAM exchange always ends in
/// e=unknown-user: the full exchange (handshake, client-first, server-first, proof) runs,
/// but a successful login is covered only by the SCRAM unit tests (RFC 7677 vectors).
#[tokio::test]
async fn scram_sha_256_and_512_run_the_full_exchange_and_an_unknown_user_is_auth_failed() {
    if !peer(SASL, "tansu (SASL SCRAM)") {
        return;
    }
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let r = kafka(
            sasl(mech, "pbkafka", json!({})),
            &[("sasl_password", "pb-kafka-pass")],
        )
        .await;
        assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
        assert!(r.error.unwrap().message.contains("unknown-user"));
    }
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_at_auth_and_never_echoed() {
    if !peer(SASL, "tansu (SASL SCRAM)") {
        return;
    }
    let r = kafka(
        sasl("SCRAM-SHA-256", "pbkafka", json!({})),
        &[("sasl_password", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(!serde_json::to_string(&r).unwrap().contains(CANARY));
}

#[tokio::test]
async fn a_mechanism_the_broker_does_not_offer_is_auth_failed() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    // Without --authentication tansu answers SaslHandshake with UNSUPPORTED_SASL_MECHANISM.
    let r = kafka(
        json!({
            "bootstrap_servers": [format!("127.0.0.1:{OPEN}")],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "pbkafka",
        }),
        &[("sasl_password", CANARY)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("does not accept"));
    assert!(!serde_json::to_string(&r).unwrap().contains(CANARY));
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = kafka(
        json!({"bootstrap_servers": [format!("127.0.0.1:{}", kit::closed_port())]}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn ssl_against_a_plaintext_listener_fails_at_tls() {
    if !peer(OPEN, "tansu (Kafka)") {
        return;
    }
    let r = kafka(
        json!({
            "bootstrap_servers": [format!("127.0.0.1:{OPEN}")],
            "security_protocol": "SSL",
            "ssl_ca_certificate": kit::ca_pem(),
        }),
        &[],
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().stage, ProbeStage::Tls);
}

#[tokio::test]
async fn a_bootstrap_server_without_a_port_is_invalid_settings() {
    let r = kafka(json!({"bootstrap_servers": ["127.0.0.1"]}), &[]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}
