//! SNMP probe against Debian's snmpd (scripts/peers-more-a.sh) on udp 127.0.0.1:1161:
//! community pb-snmp-community, v3 users pbuser (SHA, AES) and pbuser256 (SHA-256, AES),
//! passphrases pb-auth-pass / pb-priv-pass.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, CANARY};

const PORT: u16 = 1161;
const COMMUNITY: &str = "pb-snmp-community";
const AUTH: &str = "pb-auth-pass";
const PRIV: &str = "pb-priv-pass";

/// snmpd is UDP: the peer check sends one v2c GET sysDescr.0 and waits for any answer.
fn snmpd() -> bool {
    let c = COMMUNITY.as_bytes();
    let varbind = [&[
        0x30, 0x0c, 0x06, 0x08, 0x2b, 6, 1, 2, 1, 1, 1, 0, 0x05, 0x00,
    ][..]]
    .concat();
    let mut pdu = vec![
        0x02,
        1,
        1,
        0x02,
        1,
        0,
        0x02,
        1,
        0,
        0x30,
        varbind.len() as u8,
    ];
    pdu.extend(&varbind);
    let mut body = vec![0x02, 1, 1, 0x04, c.len() as u8];
    body.extend(c);
    body.extend([0xa0, pdu.len() as u8]);
    body.extend(&pdu);
    let mut msg = vec![0x30, body.len() as u8];
    msg.extend(&body);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = sock.send_to(&msg, ("127.0.0.1", PORT));
    let up = sock.recv(&mut [0u8; 1500]).is_ok();
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("snmpd not answering on udp 127.0.0.1:{PORT} (CI=true: scripts/peers-more-a.sh starts it)");
        }
        eprintln!("SKIPPED: snmpd not answering on udp 127.0.0.1:{PORT} (run scripts/peers.sh)");
    }
    up
}

async fn snmp(settings: Value, secrets: &[(&str, &str)]) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        "snmp",
        settings,
        secrets,
        Duration::from_secs(5),
    )
    .await
}

fn v2c() -> Value {
    json!({"host": "127.0.0.1", "port": PORT, "version": "v2c", "timeout_ms": 300, "retries": 1})
}

fn v3(user: &str, auth: &str) -> Value {
    json!({
        "host": "127.0.0.1", "port": PORT, "version": "v3", "security_name": user,
        "security_level": "authPriv", "auth_protocol": auth, "priv_protocol": "AES",
        "timeout_ms": 500, "retries": 1,
    })
}

#[tokio::test]
async fn v2c_with_the_community_reads_sys_descr() {
    if !snmpd() {
        return;
    }
    let r = snmp(v2c(), &[("community", COMMUNITY)]).await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "SNMP agent (SNMPv2c)");
    assert!(server.version.starts_with("Linux"), "{server:?}");
    assert!(r.warnings.iter().any(|w| w.contains("clear text")));
}

#[tokio::test]
async fn a_wrong_community_gets_no_answer_and_times_out_at_auth_with_a_hint() {
    if !snmpd() {
        return;
    }
    let r = snmp(v2c(), &[("community", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::Timeout);
    let e = r.error.as_ref().unwrap();
    assert!(e.hint.as_deref().unwrap().contains("without answering"));
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn v3_auth_priv_with_sha1_and_aes_reads_sys_descr() {
    if !snmpd() {
        return;
    }
    let r = snmp(
        v3("pbuser", "SHA"),
        &[("auth_key", AUTH), ("priv_key", PRIV)],
    )
    .await;
    assert_ok(&r);
    assert_eq!(r.server.as_ref().unwrap().product, "SNMP agent (SNMPv3)");
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    let detail = auth.detail.as_deref().unwrap();
    assert!(
        detail.contains("engine ") && detail.contains("encrypted"),
        "{detail}"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[tokio::test]
async fn v3_auth_priv_with_sha256_reads_sys_descr() {
    if !snmpd() {
        return;
    }
    let r = snmp(
        v3("pbuser256", "SHA-256"),
        &[("auth_key", AUTH), ("priv_key", PRIV)],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn v3_a_wrong_auth_passphrase_is_a_wrong_digest_report() {
    if !snmpd() {
        return;
    }
    let r = snmp(
        v3("pbuser", "SHA"),
        &[("auth_key", CANARY), ("priv_key", PRIV)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("usmStatsWrongDigests"));
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn v3_an_unknown_user_is_auth_failed() {
    if !snmpd() {
        return;
    }
    let r = snmp(
        v3("nobody-here", "SHA"),
        &[("auth_key", AUTH), ("priv_key", PRIV)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("usmStatsUnknownUserNames"));
}

#[tokio::test]
async fn v3_a_wrong_auth_protocol_is_auth_failed() {
    if !snmpd() {
        return;
    }
    let r = snmp(
        v3("pbuser", "SHA-256"),
        &[("auth_key", AUTH), ("priv_key", PRIV)],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn a_closed_udp_port_is_refused_at_auth() {
    // Loopback answers ICMP port-unreachable, which the connected socket reports.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = v2c();
    s["port"] = json!(port);
    let r = snmp(s, &[("community", COMMUNITY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn des_privacy_is_said_not_implemented() {
    let mut s = v3("pbuser", "SHA");
    s["priv_protocol"] = json!("DES");
    let r = snmp(s, &[("auth_key", AUTH), ("priv_key", PRIV)]).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}
