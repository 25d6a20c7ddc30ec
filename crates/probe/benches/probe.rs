//! Staged test overhead: `cargo bench -p patchbay-probe --bench probe`.
//!
//! In the same run, alternating, against the same local PostgreSQL: a staged test
//! (`patchbay_probe::probe`: guard, dns, tcp, startup + auth, `SELECT version()`, the
//! privileges query) and a bare driver connect (sqlx `PgConnection`) + `SELECT 1` + close.
//! Pairs: the pre-started trust server on 5432 and the scram-sha-256 cluster on 5433
//! (scripts/peers-probe.sh), both without TLS since the workspace's sqlx has no TLS
//! feature. Median overhead goes to stdout and bench-results/probe.json.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use patchbay_crypto::SecretString;
use patchbay_probe::{NetworkGuard, Policy};
use serde_json::json;
use sqlx::Connection;

const ROUNDS: usize = 200;

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn p90(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() * 9 / 10]
}

struct Pair {
    name: &'static str,
    port: u16,
    database: &'static str,
    user: &'static str,
    password: &'static str,
}

async fn run(pair: &Pair) -> Option<serde_json::Value> {
    let up = tokio::net::TcpStream::connect(("127.0.0.1", pair.port))
        .await
        .is_ok();
    if !up {
        eprintln!("SKIPPED {}: nothing on 127.0.0.1:{}", pair.name, pair.port);
        return None;
    }
    let ty = patchbay_catalog::Catalog::builtin()
        .get("postgresql")
        .unwrap();
    let settings = json!({"host": "127.0.0.1", "port": pair.port, "database": pair.database,
        "username": pair.user, "sslmode": "disable"});
    let settings = settings.as_object().unwrap().clone();
    let mut secrets = BTreeMap::new();
    secrets.insert(
        "password".to_owned(),
        SecretString::new(pair.password.to_owned()),
    );
    let guard = NetworkGuard::new(Policy::parse("127.0.0.1", "").unwrap());
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
        pair.user, pair.password, pair.port, pair.database
    );
    // Warm-up: both paths, a few times.
    for _ in 0..10 {
        let r =
            patchbay_probe::probe(ty, &settings, &secrets, &guard, Duration::from_secs(10)).await;
        assert!(r.ok, "{r:?}");
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
    let (mut staged, mut bare) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r =
            patchbay_probe::probe(ty, &settings, &secrets, &guard, Duration::from_secs(10)).await;
        staged.push(t.elapsed().as_micros() as u64);
        assert!(r.ok);
        let t = Instant::now();
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
        c.close().await.unwrap();
        bare.push(t.elapsed().as_micros() as u64);
    }
    let (ms, mb) = (median(&mut staged), median(&mut bare));
    let (ps, pb) = (p90(&mut staged), p90(&mut bare));
    let overhead = ms as i64 - mb as i64;
    println!(
        "{:<40} staged median {:>6} us (p90 {:>6})  bare median {:>6} us (p90 {:>6})  overhead {:>6} us",
        pair.name, ms, ps, mb, pb, overhead
    );
    Some(json!({
        "pair": pair.name,
        "rounds": ROUNDS,
        "staged_median_us": ms,
        "staged_p90_us": ps,
        "bare_connect_select1_median_us": mb,
        "bare_connect_select1_p90_us": pb,
        "median_overhead_us": overhead,
        "within_2ms": overhead <= 2000,
    }))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pairs = [
        Pair {
            name: "PostgreSQL 5432 (trust, no TLS)",
            port: 5432,
            database: "test",
            user: "postgres",
            password: "",
        },
        Pair {
            name: "PostgreSQL 5433 (scram-sha-256, no TLS)",
            port: 5433,
            database: "pbtest",
            user: "pb_ro",
            password: "pb-ro-pass",
        },
    ];
    let results: Vec<_> = pairs.iter().filter_map(|p| rt.block_on(run(p))).collect();
    let doc = json!({
        "benchmark": "probe",
        "what": "staged test (guard, dns, tcp, startup/auth, SELECT version(), privileges query) vs sqlx PgConnection connect + SELECT 1 + close, alternating in one run",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": results,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(
        dir.join("probe.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
}
