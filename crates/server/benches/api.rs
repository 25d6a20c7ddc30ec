//! API throughput benchmark: `cargo bench -p patchbay-server --bench api`.
//!
//! Starts the real service in-process (SQLite in a temp dir, 100 connections with a secret
//! each) and, on a second listener in the same process, a bare axum route returning a small
//! JSON document. The same HTTP load (keep-alive clients on loopback) hits each endpoint in
//! turn; the figures that matter are the ratios to the bare route, measured in the same
//! run on the same machine. Results go to stdout and to bench-results/api.json.

/// The binary's allocator (crates/patchbay/src/main.rs), so the service measured here
/// allocates as it does in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

mod common;

const CONNECTIONS: usize = 100;

struct Figure {
    name: &'static str,
    requests: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn load(url: String, token: Option<String>, concurrency: usize, secs: f64) -> Figure {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (client, url, token, count) =
            (client.clone(), url.clone(), token.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < stop {
                let t = Instant::now();
                let mut req = client.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.expect("request");
                assert!(resp.status().is_success(), "{url}: {}", resp.status());
                let _ = resp.bytes().await.expect("body");
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
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Figure {
        name: "",
        requests: count.load(Ordering::Relaxed),
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn main() {
    let secs: f64 = std::env::var("PATCHBAY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let concurrency: usize = std::env::var("PATCHBAY_BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let service = common::start(None, Default::default()).await;
        let token = service.token.clone();
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = bare.local_addr().unwrap();
        let bare_router = Router::new().route("/bare", get(|| async { Json(json!({"status": "ok"})) }));
        tokio::spawn(async move { axum::serve(bare, bare_router).await.unwrap() });

        let base = service.base.clone();
        let client = reqwest::Client::new();
        let ws: serde_json::Value = client.get(format!("{base}/api/v1/workspaces")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let ws_id = ws["items"][0]["id"].as_str().unwrap();
        let ps: serde_json::Value = client.get(format!("{base}/api/v1/workspaces/{ws_id}/projects")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let project = ps["items"][0]["id"].as_str().unwrap().to_owned();
        let mut one = String::new();
        for i in 0..CONNECTIONS {
            let body = json!({"name": format!("prod-postgres-{i:03}"), "type": "postgresql", "environment": "prod",
                "settings": {"host": "db.internal", "port": 5432, "database": "finance", "username": "etl"},
                "secrets": {"password": format!("bench-secret-{i}")}});
            let r: serde_json::Value = client.post(format!("{base}/api/v1/projects/{project}/connections")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
            if i == CONNECTIONS / 2 {
                one = r["id"].as_str().unwrap().to_owned();
            }
        }

        let runs: Vec<(&'static str, String, Option<String>)> = vec![
            ("bare axum route (baseline)", format!("http://{bare_addr}/bare"), None),
            ("get one connection, masked", format!("{base}/api/v1/connections/{one}?reveal=false"), Some(token.clone())),
            ("get one connection, revealed + audited", format!("{base}/api/v1/connections/{one}"), Some(token.clone())),
            ("list 20 connections", format!("{base}/api/v1/projects/{project}/connections?limit=20"), Some(token.clone())),
            ("list 100 connections", format!("{base}/api/v1/projects/{project}/connections?limit=100"), Some(token.clone())),
        ];
        let mut figures = vec![];
        for (name, url, tok) in runs {
            let _ = load(url.clone(), tok.clone(), concurrency, 0.5).await; // warm-up
            let mut f = load(url, tok, concurrency, secs).await;
            f.name = name;
            figures.push(f);
        }
        let base_rps = figures[0].requests as f64 / figures[0].seconds;
        println!("\npatchbay API benchmark: {concurrency} keep-alive clients, {secs} s per endpoint, {CONNECTIONS} connections, SQLite\n");
        println!("{:<42} {:>10} {:>9} {:>9} {:>9}", "endpoint", "req/s", "p50 µs", "p99 µs", "ratio");
        let mut rows = vec![];
        for f in &figures {
            let rps = f.requests as f64 / f.seconds;
            println!("{:<42} {:>10.0} {:>9} {:>9} {:>9.3}", f.name, rps, f.p50_us, f.p99_us, rps / base_rps);
            rows.push(json!({"endpoint": f.name, "requests_per_second": rps.round(), "p50_us": f.p50_us, "p99_us": f.p99_us, "ratio_to_bare": (rps / base_rps * 1000.0).round() / 1000.0}));
        }
        let out = json!({"benchmark": "api", "concurrency": concurrency, "seconds_per_endpoint": secs,
            "connections": CONNECTIONS, "backend": "sqlite", "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": rows});
        common::write_results("api", &out);
    });
}
