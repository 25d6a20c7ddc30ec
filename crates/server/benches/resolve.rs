//! Resolve throughput: `cargo bench -p patchbay-server --bench resolve`.
//!
//! Starts the real service in-process on SQLite (temp dir) and on PostgreSQL (a fresh
//! database on 127.0.0.1:5432, or PATCHBAY_TEST_POSTGRES_URL; skipped when unreachable), 100
//! connections with a secret each, and a runner token. On a second listener in the same
//! process, a bare axum route answers a small JSON document. The same HTTP load (32
//! keep-alive clients on loopback by default) hits the bare route, then
//! `POST /api/v1/connections/{id}/resolve` with `{"format": "json", "run_id": …}` (audit on:
//! every call commits an audit event before it answers), in rounds (3 by default,
//! PATCHBAY_BENCH_ROUNDS). Figures: each round's requests/s, p50, p99 and ratio to the bare
//! route measured just before; the median round's ratio and the worst round's p99 against
//! the aims. Results go to stdout and to bench-results/resolve.json.

/// The binary's allocator (crates/patchbay/src/main.rs), so the service measured here
/// allocates as it does in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

mod common;

const CONNECTIONS: usize = 100;

struct Figure {
    requests: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `concurrency` clients POST to `urls` (client i uses `urls[i % len]`) for `secs`.
async fn load(urls: Vec<String>, token: Option<String>, concurrency: usize, secs: f64) -> Figure {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for i in 0..concurrency {
        let (client, url, token, count) = (
            client.clone(),
            urls[i % urls.len()].clone(),
            token.clone(),
            count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(8192);
            let body = json!({"format": "json", "run_id": format!("bench-{i}")}).to_string();
            while Instant::now() < stop {
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
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
        requests: count.load(Ordering::Relaxed),
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

const BARE: &str = "bare axum route (baseline)";
const RESOLVE: &str = "resolve, json, audited (runner token)";

async fn run(
    backend: &str,
    database_url: Option<String>,
    concurrency: usize,
    secs: f64,
    rounds: usize,
) -> Value {
    let service = common::start(database_url, Default::default()).await;
    let admin = service.token.clone();
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_addr = bare.local_addr().unwrap();
    let bare_router =
        Router::new().route("/bare", post(|| async { Json(json!({"status": "ok"})) }));
    tokio::spawn(async move { axum::serve(bare, bare_router).await.unwrap() });

    let base = service.base.clone();
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let admin = admin.clone();
        async move {
            client
                .get(path)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ws = get(format!("{base}/api/v1/workspaces")).await;
    let ws_id = ws["items"][0]["id"].as_str().unwrap().to_owned();
    let ps = get(format!("{base}/api/v1/workspaces/{ws_id}/projects")).await;
    let project = ps["items"][0]["id"].as_str().unwrap().to_owned();
    let mut ids = vec![];
    for i in 0..CONNECTIONS {
        let body = json!({"name": format!("prod-postgres-{i:03}"), "type": "postgresql", "environment": "prod",
            "settings": {"host": "db.internal", "port": 5432, "database": "finance", "username": "etl"},
            "secrets": {"password": format!("bench-secret-{i}")}});
        let r: Value = client
            .post(format!("{base}/api/v1/projects/{project}/connections"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    let runner: Value = client
        .post(format!("{base}/api/v1/workspaces/{ws_id}/runner-tokens"))
        .bearer_auth(&admin)
        .json(&json!({"ttl_seconds": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runner = runner["token"].as_str().unwrap().to_owned();

    let bare_urls = vec![format!("http://{bare_addr}/bare")];
    let resolve_urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{base}/api/v1/connections/{id}/resolve"))
        .collect();
    // Rounds of bare route then resolve, back to back: the machine's speed drifts over a run
    // (the bare route has measured 43,000-84,000 req/s on one machine), and a ratio is fair
    // only between neighbours. The figures are each round's; the summary is the median
    // round's ratio and the worst round's p99.
    let _ = load(bare_urls.clone(), None, concurrency, 0.5).await; // warm-up
    let _ = load(resolve_urls.clone(), Some(runner.clone()), concurrency, 0.5).await;
    println!(
        "\n{backend}: {concurrency} keep-alive clients, {secs} s per endpoint, {rounds} rounds\n"
    );
    println!(
        "{:<6} {:<40} {:>10} {:>9} {:>9} {:>9}",
        "round", "endpoint", "req/s", "p50 µs", "p99 µs", "ratio"
    );
    let mut rows = vec![];
    let mut ratios = vec![];
    let mut worst_p99 = 0;
    for round in 1..=rounds {
        let bare = load(bare_urls.clone(), None, concurrency, secs).await;
        let resolve = load(
            resolve_urls.clone(),
            Some(runner.clone()),
            concurrency,
            secs,
        )
        .await;
        let base_rps = bare.requests as f64 / bare.seconds;
        for (name, f) in [(BARE, &bare), (RESOLVE, &resolve)] {
            let rps = f.requests as f64 / f.seconds;
            let ratio = rps / base_rps;
            println!(
                "{:<6} {:<40} {:>10.0} {:>9} {:>9} {:>9.3}",
                round, name, rps, f.p50_us, f.p99_us, ratio
            );
            rows.push(
                json!({"round": round, "endpoint": name, "requests_per_second": rps.round(),
                "p50_us": f.p50_us, "p99_us": f.p99_us,
                "ratio_to_bare": (ratio * 1000.0).round() / 1000.0}),
            );
        }
        ratios.push(resolve.requests as f64 / resolve.seconds / base_rps);
        worst_p99 = worst_p99.max(resolve.p99_us);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("\n{backend}: median ratio {median:.3}, worst p99 {worst_p99} µs");
    // Every resolve left an audit event.
    let audited: Value = get(format!(
        "{base}/api/v1/workspaces/{ws_id}/audit?action=connection.resolve&limit=1"
    ))
    .await;
    assert!(
        audited["items"].as_array().is_some_and(|a| !a.is_empty()),
        "no connection.resolve audit event: {audited}"
    );
    json!({"backend": backend, "rounds": rows,
        "median_ratio": (median * 1000.0).round() / 1000.0, "worst_p99_us": worst_p99,
        "aims": {"ratio_at_least": 0.25, "p99_us_at_most": 5000,
                 "ratio_met": median >= 0.25, "p99_met": worst_p99 <= 5000}})
}

fn main() {
    let secs: f64 = std::env::var("PATCHBAY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let concurrency: usize = std::env::var("PATCHBAY_BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let rounds: usize = std::env::var("PATCHBAY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let only = std::env::var("PATCHBAY_BENCH_BACKEND").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut results = vec![];
        if only.as_deref().is_none_or(|b| b == "sqlite") {
            results.push(run("sqlite", None, concurrency, secs, rounds).await);
        }
        if only.as_deref().is_none_or(|b| b == "postgres") {
            match common::fresh_postgres("resolve") {
                Some((admin, url)) => {
                    results
                        .push(run("postgres", Some(url.clone()), concurrency, secs, rounds).await);
                    common::drop_postgres(&admin, &url);
                }
                None => println!("postgres: SKIPPED (not reachable)"),
            }
        }
        let out = json!({
            "benchmark": "resolve",
            "endpoint": "POST /api/v1/connections/{id}/resolve {format: json}",
            "concurrency": concurrency,
            "seconds_per_endpoint": secs,
            "rounds": rounds,
            "connections": CONNECTIONS,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": results,
        });
        common::write_results("resolve", &out);
    });
}
