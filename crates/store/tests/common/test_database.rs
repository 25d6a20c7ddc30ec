//! A fresh PostgreSQL database per test, dropped when the test is done. Shared by the store's
//! tests (`tests/common`) and the server's (`tests/api/kit.rs` includes this file).

use sqlx::Connection;

/// A database `pb_<tag>_<uuid>` made for one test on PATCHBAY_TEST_POSTGRES_URL (default the
/// local server). Dropped with this value, also when the test panics: `WITH (FORCE)`, so the
/// connections the test's pools and replicas still hold are ended first. (scripts/peers.sh
/// drops any `pb_` database a killed run left behind.)
pub struct TestDatabase {
    /// The database's URL.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates the database; None (SKIPPED) when no server answers outside CI, a panic under
    /// CI=true.
    pub async fn create(tag: &str) -> Option<Self> {
        let admin_url = std::env::var("PATCHBAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        sqlx::any::install_default_drivers();
        let mut admin = match sqlx::AnyConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL peer missing under CI=true: {e}");
                }
                eprintln!("SKIPPED: PostgreSQL {tag} test: no server at {admin_url}: {e}");
                return None;
            }
        };
        let name = format!("pb_{tag}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let (server, _) = admin_url.rsplit_once('/').unwrap();
        Some(Self {
            url: format!("{server}/{name}"),
            admin_url,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs on the test's runtime, which cannot block on a future: a thread and a
        // runtime of its own.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = sqlx::AnyConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} not dropped: {e}", self.name),
            Err(_) => eprintln!(
                "test database {} not dropped: the thread panicked",
                self.name
            ),
        }
    }
}
