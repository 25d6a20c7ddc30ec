//! SSH probes (sftp, linux-script's ssh_exec) against a second OpenSSH sshd
//! (scripts/peers-more-a.sh) on 127.0.0.1:2222: user pbssh, password pb-ssh-pass, key
//! ssh/id_pbssh, host key ssh/host_ed25519.

use std::time::Duration;

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::{json, Value};

use crate::kit::{self, assert_failed, assert_ok, peer, CANARY};

const PORT: u16 = 2222;
const USER: &str = "pbssh";
const PASSWORD: &str = "pb-ssh-pass";

async fn ssh(
    type_id: &str,
    settings: Value,
    secrets: &[(&str, &str)],
) -> patchbay_probe::ProbeResult {
    kit::run(
        &kit::loopback(),
        type_id,
        settings,
        secrets,
        Duration::from_secs(10),
    )
    .await
}

fn file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/ssh/{name}", kit::PEERS_DIR)).unwrap()
}

fn host_key() -> String {
    file("host_ed25519.pub").trim().to_owned()
}

fn sftp(extra: Value) -> Value {
    let mut s =
        json!({"host": "127.0.0.1", "port": PORT, "username": USER, "known_host_key": host_key()});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn exec() -> Value {
    json!({"host": "127.0.0.1", "port": PORT, "username": USER, "known_host_key": host_key(),
        "command": "rm -rf /tmp/never-run-by-the-test"})
}

#[tokio::test]
async fn sftp_with_a_password_and_the_known_host_key_stats_the_root() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh(
        "sftp",
        sftp(json!({"root_path": "/tmp"})),
        &[("password", PASSWORD)],
    )
    .await;
    assert_ok(&r);
    let server = r.server.as_ref().unwrap();
    assert_eq!(server.product, "OpenSSH");
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(q.detail.as_deref().unwrap().contains("/tmp is a directory"));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[tokio::test]
async fn sftp_with_the_private_key_logs_in() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh(
        "sftp",
        sftp(json!({})),
        &[("private_key", &file("id_pbssh"))],
    )
    .await;
    assert_ok(&r);
    let auth = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Auth)
        .unwrap();
    assert!(auth.detail.as_deref().unwrap().contains("private key"));
}

#[tokio::test]
async fn sftp_a_missing_root_path_is_not_found() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh(
        "sftp",
        sftp(json!({"root_path": "/no/such/dir"})),
        &[("password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_and_never_shown() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh("sftp", sftp(json!({})), &[("password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn another_host_key_is_untrusted_at_tls() {
    if !peer(PORT, "sshd") {
        return;
    }
    let other = file("id_pbssh.pub");
    let r = ssh(
        "sftp",
        sftp(json!({"known_host_key": other})),
        &[("password", PASSWORD)],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::TlsUntrustedCertificate);
}

#[tokio::test]
async fn without_a_known_host_key_it_warns_and_shows_the_key() {
    if !peer(PORT, "sshd") {
        return;
    }
    let mut s = sftp(json!({}));
    s.as_object_mut().unwrap().remove("known_host_key");
    let r = ssh("sftp", s, &[("password", PASSWORD)]).await;
    assert_ok(&r);
    let key_b64 = host_key().split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("not checked") && w.contains(&key_b64)),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn ssh_exec_runs_true_not_the_configured_command() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh("linux-script", exec(), &[("password", PASSWORD)]).await;
    assert_ok(&r);
    let q = r
        .stages
        .iter()
        .find(|s| s.stage == ProbeStage::Query)
        .unwrap();
    assert!(q.detail.as_deref().unwrap().contains("exit status 0"));
    let r = ssh(
        "linux-script",
        exec(),
        &[("private_key", &file("id_pbssh"))],
    )
    .await;
    assert_ok(&r);
}

#[tokio::test]
async fn ssh_exec_with_a_wrong_password_is_auth_failed() {
    if !peer(PORT, "sshd") {
        return;
    }
    let r = ssh("linux-script", exec(), &[("password", CANARY)]).await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::AuthFailed);
    kit::assert_no_canary(&r);
}

#[tokio::test]
async fn a_closed_port_is_refused_at_tcp() {
    let mut s = exec();
    s["port"] = json!(kit::closed_port());
    s["known_host_key"] =
        json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2ZGcHlO3Qc5gUJqyF7YRHx0S3k2Lo1oPvoW6N3cLGH");
    let r = ssh("linux-script", s, &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tcp, ErrorClass::ConnectionRefused);
}

#[tokio::test]
async fn a_non_ssh_port_is_a_protocol_mismatch_at_tls() {
    // A listener that answers like HTTP.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let s = json!({"host": "127.0.0.1", "port": port, "username": USER});
    let r = ssh("sftp", s, &[("password", PASSWORD)]).await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::ProtocolMismatch);
}
