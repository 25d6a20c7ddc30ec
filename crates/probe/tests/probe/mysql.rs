//! MySQL-protocol probe against MariaDB: the pre-started server on 3306 (no TLS) and the
//! TLS one on 3307 (scripts/peers-brokers.sh; users pb_ro and pb_rw, database pbtest).

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage, StageStatus};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 3306;
const TLS_PORT: u16 = 3307;

fn settings(port: u16, user: &str, extra: Value) -> Value {
    let mut s = json!({
        "host": "127.0.0.1", "port": port, "database": "pbtest", "username": user,
        "ssl_mode": "disable",
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn tls(user: &str, extra: Value) -> Value {
    let mut s = settings(
        TLS_PORT,
        user,
        json!({"ssl_mode": "verify-full", "ssl_ca": kit::ca_pem()}),
    );
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn my(type_id: &str, settings: Value, password: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        &[("password", password)],
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn a_select_only_user_passes_every_stage_and_reports_mariadb() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my("mariadb", settings(PORT, "pb_ro", json!({})), "pb-ro-pass").await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "MariaDB");
    assert!(server.version.starts_with("10."), "{server:?}");
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth
        .detail
        .as_deref()
        .unwrap()
        .contains("mysql_native_password"));
    assert!(
        r.warnings.iter().all(|w| !w.contains("read-only")),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings.iter().any(|w| w.contains("not encrypted")));
}

#[tokio::test]
async fn a_user_that_can_write_gets_the_read_only_recommendation() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mysql",
        settings(PORT, "pb_rw", json!({"ssl_mode": "DISABLED"})),
        "pb-rw-pass",
    )
    .await;
    assert_ok(&r);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("read-only account recommended")
                && w.contains("INSERT")
                && w.contains("CREATE")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_appears_in_the_result() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my("mariadb", settings(PORT, "pb_ro", json!({})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.as_ref().unwrap().message.contains("1045"));
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_missing_database_is_not_found_at_auth() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mariadb",
        settings(PORT, "root", json!({"database": "no_such_db"})),
        "",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::NotFound);
    assert!(r.error.unwrap().hint.unwrap().contains("no_such_db"));
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let r = my("mysql", settings(kit::closed_port(), "u", json!({})), "p").await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn required_tls_against_a_server_without_it_fails_at_tls_and_preferred_goes_plain() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mysql",
        settings(PORT, "pb_ro", json!({"ssl_mode": "REQUIRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsHandshake);
    let r = my(
        "mysql",
        settings(PORT, "pb_ro", json!({"ssl_mode": "PREFERRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("does not offer TLS")));
}

#[tokio::test]
async fn a_redis_port_never_greets_and_times_out_at_auth() {
    if !peer(6379, "Redis") {
        return;
    }
    let r = kit::run(
        &kit::loopback(),
        "mysql",
        settings(6379, "u", json!({})),
        &[("password", "p")],
        Duration::from_secs(1),
    )
    .await;
    // Redis waits for a command and MySQL servers speak first: the greeting never comes.
    assert_failed(&r, ProbeStage::Auth, ErrorClass::Timeout);
    assert!(r.error.unwrap().hint.unwrap().contains("right port"));
}

#[tokio::test]
async fn verified_tls_passes_and_the_tls_stage_is_reported() {
    if !peer(TLS_PORT, "MariaDB (TLS)") {
        return;
    }
    let r = my("mariadb", tls("pb_ro", json!({})), "pb-ro-pass").await;
    assert_ok(&r);
    assert!(
        r.stages.iter().all(|s| s.status == StageStatus::Ok),
        "{r:?}"
    );
    let t = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Tls)
        .unwrap();
    assert!(
        t.detail.as_deref().unwrap().contains("verification full"),
        "{t:?}"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // A wrong password inside TLS is still auth_failed.
    let r = my("mariadb", tls("pb_ro", json!({})), CANARY).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn tls_without_the_ca_is_untrusted_and_trust_mode_passes_with_a_warning() {
    if !peer(TLS_PORT, "MariaDB (TLS)") {
        return;
    }
    let r = my(
        "mariadb",
        tls("pb_ro", json!({"ssl_ca": null})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
    let r = my(
        "mysql",
        tls("pb_ro", json!({"ssl_ca": null, "ssl_mode": "REQUIRED"})),
        "pb-ro-pass",
    )
    .await;
    assert_ok(&r);
    assert!(r.warnings.iter().any(|w| w.contains("verification is off")));
}

/// A MySQL 8 stand-in offering caching_sha2_password (MariaDB has no such plugin): checks
/// the fast-path scramble and either answers fast-auth success or asks for full auth.
async fn caching_sha2_server(full_auth: bool) -> u16 {
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn packet(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        let mut body = vec![0u8; u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize];
        s.read_exact(&mut body).await.unwrap();
        body
    }
    async fn send(s: &mut tokio::net::TcpStream, seq: u8, body: &[u8]) {
        let mut out = (body.len() as u32).to_le_bytes()[..3].to_vec();
        out.push(seq);
        out.extend_from_slice(body);
        s.write_all(&out).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let scramble: Vec<u8> = (1..=20).collect();
        // PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | CONNECT_WITH_DB | LONG_PASSWORD
        let caps: u32 = 0x200 | 0x8000 | 0x8_0000 | 0x8 | 0x1;
        let mut g = vec![10];
        g.extend_from_slice(b"8.0.36\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(&scramble[..8]);
        g.push(0);
        g.extend_from_slice(&(caps as u16).to_le_bytes());
        g.extend_from_slice(&[45, 2, 0]);
        g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0u8; 10]);
        g.extend_from_slice(&scramble[8..]);
        g.push(0);
        g.extend_from_slice(b"caching_sha2_password\0");
        send(&mut s, 0, &g).await;
        let resp = packet(&mut s).await;
        let user_end = 32 + resp[32..].iter().position(|b| *b == 0).unwrap();
        let len = resp[user_end + 1] as usize;
        let got = resp[user_end + 2..user_end + 2 + len].to_vec();
        let h1 = Sha256::digest(b"sha2-pass");
        let h3 = Sha256::digest([&Sha256::digest(h1)[..], &scramble[..]].concat());
        let want: Vec<u8> = h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect();
        if got != want {
            let mut err = vec![0xff];
            err.extend_from_slice(&1045u16.to_le_bytes());
            err.extend_from_slice(b"#28000Access denied for user 'u'");
            send(&mut s, 2, &err).await;
            return;
        }
        if full_auth {
            send(&mut s, 2, &[0x01, 0x04]).await;
            let _ = packet(&mut s).await;
            return;
        }
        send(&mut s, 2, &[0x01, 0x03]).await;
        send(&mut s, 3, &[0, 0, 0, 2, 0, 0, 0]).await;
        // Two queries: VERSION() then SHOW GRANTS; one column, one row each.
        for value in [&b"8.0.36"[..], &b"GRANT SELECT ON `db`.* TO `u`@`%`"[..]] {
            let _ = packet(&mut s).await;
            send(&mut s, 1, &[1]).await;
            send(
                &mut s,
                2,
                b"\x03def\0\0\0\x01v\0\x0c\x21\0\0\0\0\xfd\0\0\0\0\0",
            )
            .await;
            send(&mut s, 3, &[0xfe, 0, 0, 2, 0]).await;
            let mut row = vec![value.len() as u8];
            row.extend_from_slice(value);
            send(&mut s, 4, &row).await;
            send(&mut s, 5, &[0xfe, 0, 0, 2, 0]).await;
        }
    });
    port
}

#[tokio::test]
async fn caching_sha2_password_fast_path_logs_in_and_reports_mysql() {
    let port = caching_sha2_server(false).await;
    let r = my(
        "mysql",
        settings(port, "u", json!({"database": "db"})),
        "sha2-pass",
    )
    .await;
    assert_ok(&r);
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth
        .detail
        .as_deref()
        .unwrap()
        .contains("caching_sha2_password"));
    let server = r.server.unwrap();
    assert_eq!(
        (server.product.as_str(), server.version.as_str()),
        ("MySQL", "8.0.36")
    );
    assert!(
        r.warnings.iter().all(|w| !w.contains("read-only")),
        "{:?}",
        r.warnings
    );
    // A wrong password gives another scramble, which the server refuses.
    let port = caching_sha2_server(false).await;
    let r = my(
        "mysql",
        settings(port, "u", json!({"database": "db"})),
        CANARY,
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
}

#[tokio::test]
async fn caching_sha2_full_authentication_is_refused_without_tls() {
    let port = caching_sha2_server(true).await;
    let r = my(
        "mysql",
        settings(port, "u", json!({"database": "db"})),
        "sha2-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    assert!(r.error.unwrap().hint.unwrap().contains("TLS"));
}

#[tokio::test]
async fn a_database_the_user_may_not_use_is_permission_denied_at_auth() {
    if !peer(PORT, "MariaDB") {
        return;
    }
    let r = my(
        "mariadb",
        settings(PORT, "pb_ro", json!({"database": "mysql"})),
        "pb-ro-pass",
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::PermissionDenied);
    assert!(r.error.unwrap().message.contains("1044"));
}
