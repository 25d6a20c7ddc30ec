//! What the server benchmarks share: the real service started in-process on a temporary
//! data directory, a fresh PostgreSQL database, and the results file.

#![allow(dead_code)]

use std::path::PathBuf;

use patchbay_crypto::SecretString;
use patchbay_server::state::Settings;
use patchbay_server::{App, Config, MasterKeySource};

/// A running service: its base URL, the initial administrator's token, its state, its
/// data directory (removed on drop).
pub struct Service {
    pub base: String,
    pub state: patchbay_server::state::AppState,
    pub token: String,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the service on SQLite in a temporary directory, or on `database_url`, and serves
/// it on a loopback port.
pub async fn start(database_url: Option<String>, settings: Settings) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = Config {
        tls: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        database_url: database_url.map(SecretString::new),
        master_key: MasterKeySource::File(data.join("master.key")),
        settings,
    };
    let app = App::start(&config).await.unwrap();
    let token = std::fs::read_to_string(data.join("initial-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.service();
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::ServiceExt::into_make_service_with_connect_info::<std::net::SocketAddr>(service),
        )
        .await
        .unwrap()
    });
    Service {
        base: format!("http://{addr}"),
        state: app.state.clone(),
        token,
        data,
        _dir: dir,
    }
}

/// A fresh database `pb_bench_<tag>_<pid>` on PATCHBAY_TEST_POSTGRES_URL (default the local
/// server): `(admin URL, database URL)`, or None when PostgreSQL is not reachable.
pub fn fresh_postgres(tag: &str) -> Option<(String, String)> {
    let admin = std::env::var("PATCHBAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("pb_bench_{tag}_{}", std::process::id());
    let ok = std::process::Command::new("psql")
        .args([
            admin.as_str(),
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {db}"),
            "-c",
            &format!("CREATE DATABASE {db}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some((admin.clone(), format!("{base}/{db}")))
}

/// Drops a database [`fresh_postgres`] made.
pub fn drop_postgres(admin: &str, url: &str) {
    let db = url.rsplit_once('/').unwrap().1;
    let _ = std::process::Command::new("psql")
        .args([
            admin,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        ])
        .output();
}

/// Writes `bench-results/<name>.json`.
pub fn write_results(name: &str, out: &serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(out).unwrap() + "\n",
    )
    .unwrap();
    println!("\nwritten to bench-results/{name}.json");
}
