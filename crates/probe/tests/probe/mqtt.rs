//! MQTT probe against the Mosquitto of scripts/peers-brokers.sh (password file, no
//! anonymous clients): plain on 1884, TLS with the test CA's certificate on 8884.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 1884;
const TLS_PORT: u16 = 8884;

async fn mqtt(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "mqtt",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn the_right_password_passes_in_both_protocol_versions() {
    if !peer(PORT, "Mosquitto (password file)") {
        return;
    }
    for version in ["3.1.1", "5"] {
        let r = mqtt(
            json!({"host": "127.0.0.1", "port": PORT, "username": "pb", "protocol_version": version}),
            &[("password", "pb-mqtt-pass")],
        )
        .await;
        assert_ok(&r);
    }
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_in_both_versions_and_never_appears() {
    if !peer(PORT, "Mosquitto (password file)") {
        return;
    }
    for version in ["3.1.1", "5"] {
        let r = mqtt(
            json!({"host": "127.0.0.1", "port": PORT, "username": "pb", "protocol_version": version}),
            &[("password", CANARY)],
        )
        .await;
        assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
        kit::assert_no_canary(&r);
    }
}

#[tokio::test]
async fn no_credentials_against_a_broker_without_anonymous_access_is_auth_failed() {
    if !peer(PORT, "Mosquitto (password file)") {
        return;
    }
    let r = mqtt(
        json!({"host": "127.0.0.1", "port": PORT, "protocol_version": "3.1.1"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = mqtt(
        json!({"host": "127.0.0.1", "port": kit::closed_port()}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn tls_with_the_ca_passes_and_without_it_is_untrusted() {
    if !peer(TLS_PORT, "Mosquitto (TLS)") {
        return;
    }
    let base = json!({"host": "127.0.0.1", "port": TLS_PORT, "username": "pb", "tls": true});
    let mut with_ca = base.clone();
    with_ca["tls_ca_certificate"] = json!(kit::ca_pem());
    let r = mqtt(with_ca, &[("password", "pb-mqtt-pass")]).await;
    assert_ok(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = mqtt(base.clone(), &[("password", "pb-mqtt-pass")]).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let mut off = base;
    off["tls_verify"] = json!(false);
    let r = mqtt(off, &[("password", "pb-mqtt-pass")]).await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}
