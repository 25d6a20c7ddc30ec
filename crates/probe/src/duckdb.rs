//! DuckDB: an embedded database, so "testing the connection" means looking at a file on the
//! patchbay server's disk. Reading local paths on a user's request would disclose files, so
//! a local path is refused unless it lies under a directory the policy allows
//! ([`Policy::file_roots`](crate::Policy::file_roots), `PATCHBAY_PROBE_FILE_ROOTS`). The
//! path is resolved first (`..` refused outright, symlinks followed) and the resolved path
//! is checked; then the file is opened read-only and its main header must carry DuckDB's
//! magic bytes `DUCK` at offset 8 (after the header checksum), followed by the storage
//! version (little-endian u64).
//!
//! MotherDuck (`md:`) and remote paths (`s3://`, `https://`, …) are not implemented.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::guard::FILE_ROOTS_ENV;
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Query];

pub const MAGIC: &[u8; 4] = b"DUCK";
pub const MAGIC_OFFSET: usize = 8;

fn refused(message: String) -> Failure {
    Failure::new(ErrorClass::InvalidSettings, message).hint(format!(
        "an administrator can allow a directory for tests with {FILE_ROOTS_ENV}"
    ))
}

fn not_allowed() -> Failure {
    refused(format!(
        "local files are not allowed for tests; set {FILE_ROOTS_ENV}"
    ))
}

fn outside() -> Failure {
    refused(format!(
        "the path is outside the directories allowed for tests ({FILE_ROOTS_ENV})"
    ))
}

/// The resolved path when `raw` lies under one of `roots`; a missing file is `not_found`
/// only once its nearest existing directory is known to be inside a root.
pub(crate) fn allowed_path(raw: &str, roots: &[PathBuf]) -> Result<PathBuf, Failure> {
    if roots.is_empty() {
        return Err(not_allowed());
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(Failure::new(
            ErrorClass::InvalidSettings,
            "the database path must be absolute",
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(outside());
    }
    let roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let inside = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    match std::fs::canonicalize(path) {
        Ok(real) if inside(&real) => Ok(real),
        Ok(_) => Err(outside()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // A dangling symlink: its target is unknown, so it is not followed.
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(outside());
            }
            let mut ancestor = path.parent();
            while let Some(dir) = ancestor {
                if let Ok(real) = std::fs::canonicalize(dir) {
                    if inside(&real) {
                        return Err(Failure::new(
                            ErrorClass::NotFound,
                            format!("the database file `{raw}` does not exist"),
                        )
                        .hint("check the path; DuckDB creates a missing file when it opens one read-write, the test does not"));
                    }
                    return Err(outside());
                }
                ancestor = dir.parent();
            }
            Err(outside())
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Err(Failure::new(
            ErrorClass::PermissionDenied,
            "the patchbay server may not read this path",
        )),
        Err(_) => Err(outside()),
    }
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
) -> Result<(), crate::result::Stopped> {
    let raw = t.str("path").unwrap_or(":memory:").to_owned();
    if raw == ":memory:" {
        run.stage(S::Resolve, async {
            Ok(((), Some("in-memory database".to_owned())))
        })
        .await?;
        run.warn(
            "an in-memory database is created empty by each client: there is nothing to connect to",
        );
        return Ok(());
    }
    let path = run
        .stage(S::Resolve, async {
            if raw.starts_with("md:") || raw.starts_with("motherduck:") {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing MotherDuck (md:) databases is not implemented yet",
                )
                .hint("the connection was not contacted; check it with the DuckDB CLI for now"));
            }
            if raw.contains("://") {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing remote DuckDB files (object storage, HTTP) is not implemented yet",
                )
                .hint("the connection was not contacted; check it with the DuckDB CLI for now"));
            }
            let real = allowed_path(&raw, guard.policy().file_roots())?;
            let d = format!("{} (allowed local file)", real.display());
            Ok((real, Some(d)))
        })
        .await?;
    let version = run
        .stage(S::Query, async {
            let mut f = tokio::fs::OpenOptions::new()
                .read(true)
                .open(&path)
                .await
                .map_err(|e| match e.kind() {
                    ErrorKind::NotFound => {
                        Failure::new(ErrorClass::NotFound, "the database file does not exist")
                    }
                    ErrorKind::PermissionDenied => Failure::new(
                        ErrorClass::PermissionDenied,
                        "the patchbay server may not read the database file",
                    ),
                    k => Failure::new(ErrorClass::Unknown, format!("opening the file failed: {k}")),
                })?;
            let meta = f.metadata().await.map_err(|e| {
                Failure::new(
                    ErrorClass::Unknown,
                    format!("reading the file failed: {}", e.kind()),
                )
            })?;
            if !meta.is_file() {
                return Err(not_duckdb("the path is not a regular file"));
            }
            let mut header = [0u8; MAGIC_OFFSET + 4 + 8];
            f.read_exact(&mut header)
                .await
                .map_err(|_| not_duckdb("the file is too short for a DuckDB header"))?;
            if &header[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
                return Err(not_duckdb(
                    "the file has no DuckDB header (magic bytes `DUCK`)",
                ));
            }
            let mut v = [0u8; 8];
            v.copy_from_slice(&header[MAGIC_OFFSET + 4..]);
            let version = u64::from_le_bytes(v);
            Ok((
                version,
                Some(format!(
                    "DuckDB file, storage version {version}, opened read-only"
                )),
            ))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "DuckDB database file".into(),
        version: format!("storage version {version}"),
    });
    Ok(())
}

fn not_duckdb(message: &str) -> Failure {
    Failure::new(ErrorClass::ProtocolMismatch, message.to_owned())
        .hint("is this a DuckDB database file (not Parquet, SQLite or CSV)?")
}
