//! One deadline for the whole test: a target that accepts and stays silent answers within
//! deadline + 200 ms, naming the stage that timed out.

use std::time::{Duration, Instant};

use patchbay_probe::{ErrorClass, ProbeStage};
use serde_json::json;

use crate::kit::{self, assert_failed};

/// Accepts connections and never writes; sockets stay open until the test ends.
async fn silent() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

async fn timed(
    type_id: &str,
    settings: serde_json::Value,
    secrets: &[(&str, &str)],
) -> (patchbay_probe::ProbeResult, Duration) {
    let deadline = Duration::from_millis(800);
    let t = Instant::now();
    let r = kit::run(&kit::loopback(), type_id, settings, secrets, deadline).await;
    let took = t.elapsed();
    assert!(
        took < deadline + Duration::from_millis(200),
        "took {took:?}"
    );
    assert!(
        took >= deadline - Duration::from_millis(50),
        "returned early: {took:?}"
    );
    (r, took)
}

#[tokio::test]
async fn a_silent_postgres_port_times_out_at_auth_within_the_deadline() {
    let port = silent().await;
    let (r, _) = timed(
        "postgresql",
        json!({"host": "127.0.0.1", "port": port, "database": "x", "username": "u", "sslmode": "disable"}),
        &[("password", "p")],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::Timeout);
    assert!(r.error.unwrap().hint.unwrap().contains("did not answer"));
}

#[tokio::test]
async fn a_silent_port_asked_for_tls_times_out_at_tls() {
    let port = silent().await;
    let (r, _) = timed(
        "postgresql",
        json!({"host": "127.0.0.1", "port": port, "database": "x", "username": "u", "sslmode": "require"}),
        &[],
    )
    .await;
    assert_failed(&r, ProbeStage::Tls, ErrorClass::Timeout);
}

#[tokio::test]
async fn a_silent_redis_port_times_out_within_the_deadline() {
    let port = silent().await;
    let (r, _) = timed(
        "redis",
        json!({"host": "127.0.0.1", "port": port}),
        &[("password", "p")],
    )
    .await;
    assert_failed(&r, ProbeStage::Auth, ErrorClass::Timeout);
}

#[tokio::test]
async fn a_silent_http_endpoint_times_out_within_the_deadline() {
    let port = silent().await;
    let (r, _) = timed(
        "openai",
        json!({"base_url": format!("http://127.0.0.1:{port}/v1")}),
        &[("api_key", "k")],
    )
    .await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::Timeout);
}
