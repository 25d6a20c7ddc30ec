//! Shared helpers: catalog types, policies, peer checks, stage assertions.

use std::collections::BTreeMap;
use std::time::Duration;

use patchbay_core::schema::ConnectorType;
use patchbay_crypto::SecretString;
use patchbay_probe::{ErrorClass, NetworkGuard, Policy, ProbeResult, ProbeStage, StageStatus};
use serde_json::Value;

pub const CANARY: &str = "canary-7f3a9c1e-secret";
pub const PEERS_DIR: &str = "/tmp/patchbay-peers/probe";

pub fn ty(id: &str) -> &'static ConnectorType {
    patchbay_catalog::Catalog::builtin()
        .get(id)
        .unwrap_or_else(|| panic!("no type {id}"))
}

/// Loopback allowed (tests only talk to 127.0.0.1).
pub fn loopback() -> NetworkGuard {
    NetworkGuard::new(Policy::default().allow("127.0.0.1").unwrap())
}

pub async fn run(
    guard: &NetworkGuard,
    type_id: &str,
    settings: Value,
    secrets: &[(&str, &str)],
    deadline: Duration,
) -> ProbeResult {
    let settings = settings.as_object().cloned().unwrap_or_default();
    let secrets: BTreeMap<String, SecretString> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::new(v.to_string())))
        .collect();
    patchbay_probe::probe(ty(type_id), &settings, &secrets, guard, deadline).await
}

/// True when something listens on 127.0.0.1:port; under CI=true a missing peer fails the
/// test, else it prints SKIPPED.
pub fn peer(port: u16, what: &str) -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok();
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{what} not reachable on 127.0.0.1:{port} (CI=true: scripts/peers-probe.sh starts it)");
        }
        eprintln!("SKIPPED: {what} not reachable on 127.0.0.1:{port} (run scripts/peers.sh)");
    }
    up
}

pub fn ca_pem() -> String {
    std::fs::read_to_string(format!("{PEERS_DIR}/ca.pem"))
        .expect("test CA (scripts/peers-probe.sh)")
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[track_caller]
pub fn assert_ok(r: &ProbeResult) {
    assert!(
        r.ok,
        "expected success: {}",
        serde_json::to_string_pretty(r).unwrap()
    );
    assert!(r.stages.iter().all(|s| s.status != StageStatus::Failed));
}

#[track_caller]
pub fn assert_failed(r: &ProbeResult, stage: ProbeStage, class: ErrorClass) {
    let e = r.error.as_ref().unwrap_or_else(|| {
        panic!(
            "expected failure: {}",
            serde_json::to_string_pretty(r).unwrap()
        )
    });
    assert_eq!(
        (e.stage, e.class),
        (stage, class),
        "{}",
        serde_json::to_string_pretty(r).unwrap()
    );
    assert!(!r.ok);
    let failed: Vec<_> = r
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].stage, stage);
    // Every stage after the failed one is skipped.
    let at = r.stages.iter().position(|s| s.stage == stage).unwrap();
    assert!(r.stages[at + 1..]
        .iter()
        .all(|s| s.status == StageStatus::Skipped));
}

/// The result, serialized, does not carry the canary secret anywhere.
#[track_caller]
pub fn assert_no_canary(r: &ProbeResult) {
    let text = serde_json::to_string(r).unwrap();
    assert!(
        !text.contains(CANARY),
        "the canary leaked into the result: {text}"
    );
}

/// `type_id` tested against a server that accepts and never answers (settings built for its
/// port) fails at `stage` with a timeout, within the deadline plus scheduling slack.
pub async fn assert_silent_times_out(
    type_id: &str,
    settings: impl FnOnce(u16) -> serde_json::Value,
    secrets: &[(&str, &str)],
    stage: ProbeStage,
    deadline: std::time::Duration,
) {
    let port = crate::http_responder::silent().await;
    let started = std::time::Instant::now();
    let r = run(&loopback(), type_id, settings(port), secrets, deadline).await;
    assert_failed(&r, stage, ErrorClass::Timeout);
    let slack = std::time::Duration::from_millis(200).max(deadline / 2);
    assert!(
        started.elapsed() < deadline + slack,
        "answered after {:?}",
        started.elapsed()
    );
}
