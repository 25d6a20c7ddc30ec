//! DuckDB probe against files in a temporary directory (no DuckDB library here): a file with
//! DuckDB's main header (checksum, `DUCK` at offset 8, storage version), a file without it,
//! and paths that must be refused: outside the allowed root, a `..` escape, a symlink out.

use std::path::Path;
use std::time::Duration;

use patchbay_probe::{ErrorClass, NetworkGuard, Policy, ProbeStage};
use serde_json::json;

use crate::kit::{self, assert_failed, assert_ok};

fn duck_header(path: &Path) {
    let mut h = vec![0u8; 4096];
    h[8..12].copy_from_slice(b"DUCK");
    h[12..20].copy_from_slice(&64u64.to_le_bytes());
    std::fs::write(path, h).unwrap();
}

fn guard(root: &Path) -> NetworkGuard {
    NetworkGuard::new(Policy::default().file_root(root).unwrap())
}

async fn probe(guard: &NetworkGuard, path: &str) -> patchbay_probe::ProbeResult {
    kit::run(
        guard,
        "duckdb",
        json!({"path": path}),
        &[],
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_duckdb_file_under_an_allowed_root_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.duckdb");
    duck_header(&db);
    let r = probe(&guard(dir.path()), db.to_str().unwrap()).await;
    assert_ok(&r);
    assert_eq!(r.server.unwrap().version, "storage version 64");
}

#[tokio::test]
async fn without_allowed_roots_every_local_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.duckdb");
    duck_header(&db);
    let r = probe(&kit::loopback(), db.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    assert_eq!(
        r.error.unwrap().message,
        "local files are not allowed for tests; set PATCHBAY_PROBE_FILE_ROOTS"
    );
}

#[tokio::test]
async fn a_file_without_the_duckdb_header_is_protocol_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.sqlite");
    std::fs::write(&f, b"SQLite format 3\0 and some more bytes here").unwrap();
    let r = probe(&guard(dir.path()), f.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Query, ErrorClass::ProtocolMismatch);
}

#[tokio::test]
async fn a_missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("missing.duckdb");
    let r = probe(&guard(dir.path()), f.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotFound);
}

#[tokio::test]
async fn a_path_outside_the_allowed_root_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let db = other.path().join("a.duckdb");
    duck_header(&db);
    let r = probe(&guard(root.path()), db.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    // Existence outside the root is not disclosed.
    let missing = other.path().join("missing.duckdb");
    let r = probe(&guard(root.path()), missing.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn a_dotdot_escape_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let db = base.path().join("a.duckdb");
    duck_header(&db);
    let escape = format!("{}/../a.duckdb", root.display());
    let r = probe(&guard(&root), &escape).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn a_symlink_out_of_the_root_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let db = other.path().join("a.duckdb");
    duck_header(&db);
    let link = root.path().join("link.duckdb");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let r = probe(&guard(root.path()), link.to_str().unwrap()).await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
    // A symlinked directory out of the root too.
    let dlink = root.path().join("dir");
    std::os::unix::fs::symlink(other.path(), &dlink).unwrap();
    let r = probe(
        &guard(root.path()),
        dlink.join("a.duckdb").to_str().unwrap(),
    )
    .await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}

#[tokio::test]
async fn motherduck_is_not_implemented() {
    let r = probe(&kit::loopback(), "md:my_db").await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::NotImplemented);
}

#[tokio::test]
async fn a_relative_path_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let r = probe(&guard(dir.path()), "a.duckdb").await;
    assert_failed(&r, ProbeStage::Resolve, ErrorClass::InvalidSettings);
}
