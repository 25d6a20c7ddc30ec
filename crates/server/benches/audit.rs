//! Cost of auditing reveals: `cargo bench -p patchbay-server --bench audit`.
//!
//! Starts two services in this process (SQLite, each in its own temp dir, 100 connections
//! with a secret each): one with reveals audited (the default), one with
//! `audit_reads: false` (PATCHBAY_AUDIT_READS=off, unsafe, only for this measurement).
//! The same HTTP load (keep-alive clients on loopback) GETs one connection with its secret
//! revealed, alternating between the two services for several rounds so drift hits both.
//! The figure that matters is the ratio audited / unaudited. Results go to stdout and to
//! bench-results/audit.json.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_server::state::Settings;
use serde_json::json;

mod common;

const CONNECTIONS: usize = 100;
const ROUNDS: usize = 3;

async fn load(url: &str, token: &str, concurrency: usize, secs: f64) -> (u64, f64, Vec<u64>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (client, url, token, count) = (
            client.clone(),
            url.to_owned(),
            token.to_owned(),
            count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < stop {
                let t = Instant::now();
                let resp = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("request");
                assert!(resp.status().is_success(), "{url}: {}", resp.status());
                let body = resp.bytes().await.expect("body");
                assert!(
                    body.windows(13).any(|w| w == b"bench-secret-"),
                    "not revealed"
                );
                lat.push(t.elapsed().as_micros() as u64);
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (
        count.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        all,
    )
}

/// A started service with `CONNECTIONS` connections: (URL of one revealed GET, token).
/// A service with reveals audited or not, and the URL of one revealed connection. The
/// service runs (and its data directory lives) as long as the returned handle.
async fn service(audit_reads: bool) -> (common::Service, String) {
    let service = common::start(
        None,
        Settings {
            audit_reads,
            ..Default::default()
        },
    )
    .await;
    let (base, token) = (service.base.clone(), service.token.clone());
    let client = reqwest::Client::new();
    let get = |path: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            client
                .get(path)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let ws = get(format!("{base}/api/v1/workspaces")).await;
    let ws_id = ws["items"][0]["id"].as_str().unwrap().to_owned();
    let ps = get(format!("{base}/api/v1/workspaces/{ws_id}/projects")).await;
    let project = ps["items"][0]["id"].as_str().unwrap().to_owned();
    let mut one = String::new();
    for i in 0..CONNECTIONS {
        let body = json!({"name": format!("prod-postgres-{i:03}"), "type": "postgresql",
            "settings": {"host": "db.internal", "port": 5432, "database": "finance", "username": "etl"},
            "secrets": {"password": format!("bench-secret-{i}")}});
        let r: serde_json::Value = client
            .post(format!("{base}/api/v1/projects/{project}/connections"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if i == CONNECTIONS / 2 {
            one = r["id"].as_str().unwrap().to_owned();
        }
    }
    (service, format!("{base}/api/v1/connections/{one}"))
}

fn main() {
    let secs: f64 = std::env::var("PATCHBAY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let concurrency: usize = std::env::var("PATCHBAY_BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (on_service, on_url) = service(true).await;
        let (off_service, off_url) = service(false).await;
        let on = (on_url, on_service.token.clone());
        let off = (off_url, off_service.token.clone());
        let mut totals = [(0u64, 0f64, Vec::new()), (0u64, 0f64, Vec::new())];
        for _ in 0..ROUNDS {
            for (i, (url, token)) in [&off, &on].into_iter().enumerate() {
                let _ = load(url, token, concurrency, 0.3).await; // warm-up
                let (n, s, lat) = load(url, token, concurrency, secs).await;
                totals[i].0 += n;
                totals[i].1 += s;
                totals[i].2.extend(lat);
            }
        }
        let mut rows = vec![];
        let mut rps = [0f64; 2];
        println!("\npatchbay audit cost: {concurrency} keep-alive clients, {ROUNDS} rounds of {secs} s, SQLite (WAL, synchronous=NORMAL)\n");
        println!("{:<44} {:>10} {:>9} {:>9}", "get one connection with reveal", "req/s", "p50 µs", "p99 µs");
        for (i, name) in ["reveals not audited (PATCHBAY_AUDIT_READS=off)", "reveals audited (default)"].into_iter().enumerate() {
            let (n, s, lat) = &mut totals[i];
            lat.sort_unstable();
            let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
            rps[i] = *n as f64 / *s;
            println!("{:<44} {:>10.0} {:>9} {:>9}", name, rps[i], pct(0.5), pct(0.99));
            rows.push(json!({"run": name, "requests_per_second": rps[i].round(), "p50_us": pct(0.5), "p99_us": pct(0.99)}));
        }
        let ratio = rps[1] / rps[0];
        println!("\naudited / unaudited throughput: {ratio:.3} (audit cost {:.1}%)", (1.0 - ratio) * 100.0);
        let out = json!({"benchmark": "audit", "endpoint": "GET /api/v1/connections/{id} (revealed)",
            "concurrency": concurrency, "rounds": ROUNDS, "seconds_per_round": secs, "connections": CONNECTIONS,
            "backend": "sqlite", "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": rows, "ratio_audited_to_unaudited": (ratio * 1000.0).round() / 1000.0,
            "audit_cost_percent": ((1.0 - ratio) * 1000.0).round() / 10.0});
        common::write_results("audit", &out);
    });
}
