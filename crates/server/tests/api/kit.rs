//! Test kit: a running service and a small HTTP client.

use patchbay_core::permission::{Permission, PermissionSet};
use patchbay_server::{App, Config, MasterKeySource};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const CANARY: &str = "canary-7f3a9c1e-secret";

pub struct Service {
    pub base: String,
    pub token: String,
    pub app_state: patchbay_server::state::AppState,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Service {
    pub async fn start() -> Self {
        Self::start_with(Default::default()).await
    }

    pub async fn start_with(settings: patchbay_server::state::Settings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKeySource::File(dir.path().join("data/master.key"));
        Self::start_in(dir, key, settings).await
    }

    /// A service on `dir` (which may hold a previous service's data: a restart).
    pub async fn start_in(
        dir: tempfile::TempDir,
        master_key: MasterKeySource,
        settings: patchbay_server::state::Settings,
    ) -> Self {
        match Self::try_start_in(dir, master_key, settings).await {
            Ok(s) => s,
            Err(e) => panic!("start: {e}"),
        }
    }

    pub async fn try_start_in(
        dir: tempfile::TempDir,
        master_key: MasterKeySource,
        settings: patchbay_server::state::Settings,
    ) -> Result<Self, String> {
        let config = Config {
            tls: Default::default(),
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            database_url: None,
            master_key,
            settings,
        };
        let app = App::start(&config).await.map_err(|e| e.to_string())?;
        let addr = serve_on_loopback(&app).await;
        let token = std::fs::read_to_string(config.data_dir.join("initial-admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Ok(Self {
            base: format!("http://{addr}"),
            token,
            app_state: app.state.clone(),
            http: reqwest::Client::new(),
            dir,
        })
    }

    /// Stops serving through this value and hands back its data directory.
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// A direct connection to the service's SQLite database, for tests that tamper with rows.
    pub async fn raw_db(&self) -> sqlx::SqlitePool {
        let path = self.dir.path().join("data/patchbay.db");
        sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }

    /// Mints a token with exactly these permissions (optionally one workspace).
    pub async fn token_with(&self, perms: &[Permission], workspace: Option<&str>) -> String {
        let token = patchbay_crypto::generate_token();
        let id = patchbay_store::new_id();
        self.app_state
            .store
            .create_token(
                &patchbay_store::NewToken {
                    id: id.clone(),
                    name: "test".into(),
                    token_hash: patchbay_crypto::hash_token(token.expose_secret()),
                    workspace_id: workspace.map(str::to_owned),
                    permissions: perms.iter().copied().collect::<PermissionSet>(),
                    expires_at: None,
                    kind: "personal".into(),
                    created_by: None,
                    user_id: None,
                },
                &patchbay_store::AuditEntry::system(
                    "system:test",
                    "token.create",
                    None,
                    "token",
                    &id,
                    serde_json::json!({}),
                ),
            )
            .await
            .unwrap();
        token.expose_secret().to_owned()
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// JSON call as the admin.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        let token = self.token.clone();
        self.raw(
            method,
            path,
            Some(&token),
            &h,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// JSON call with another token.
    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut h = vec![];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        self.raw(
            method,
            path,
            Some(token),
            &h,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// A new local user (as the instance admin); returns the user id.
    pub async fn create_user(&self, username: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/v1/users",
                Some(
                    serde_json::json!({"username": username, "password": "a long enough password"}),
                ),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Gives `user` `role` in workspace `ws` (as the instance admin).
    pub async fn set_role(&self, ws: &str, user: &str, role: &str) {
        let r = self
            .call(
                Method::PUT,
                &format!("/api/v1/workspaces/{ws}/members/{user}"),
                Some(serde_json::json!({"role": role})),
                &[],
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
    }

    /// A personal token of `user`, minted by the instance admin.
    pub async fn user_token(&self, user: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({"name": "user-token", "user_id": user})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    }

    pub async fn default_workspace(&self) -> String {
        let ws = self
            .call(Method::GET, "/api/v1/workspaces", None, &[])
            .await;
        let items = ws.body["items"].as_array().unwrap();
        let default = items.iter().find(|w| w["name"] == "default").unwrap();
        default["id"].as_str().unwrap().to_owned()
    }

    pub async fn default_project(&self) -> String {
        let ws_id = self.default_workspace().await;
        let ps = self
            .call(
                Method::GET,
                &format!("/api/v1/workspaces/{ws_id}/projects"),
                None,
                &[],
            )
            .await;
        ps.body["items"][0]["id"].as_str().unwrap().to_owned()
    }

    pub async fn create_pg(&self, project: &str, name: &str) -> Reply {
        let body = serde_json::json!({
            "name": name, "type": "postgresql", "environment": "prod", "tags": ["team:finance"],
            "description": "Finance warehouse replica",
            "settings": {"host": "127.0.0.1", "port": 5432, "database": "test", "username": "pb"},
            "secrets": {"password": CANARY}
        });
        self.call(
            Method::POST,
            &format!("/api/v1/projects/{project}/connections"),
            Some(body),
            &[],
        )
        .await
    }
}

/// A fresh PostgreSQL database for replica tests, dropped with the value (the store's tests
/// share the helper).
#[path = "../../../store/tests/common/test_database.rs"]
mod test_database;
pub use test_database::TestDatabase;

/// One replica of a PostgreSQL deployment: its base URL and state.
pub struct Replica {
    pub base: String,
    pub state: patchbay_server::state::AppState,
}

/// Two replicas of one fresh PostgreSQL deployment (one database, one master key), and the
/// initial administrator's token (made by A's first start). The database and the data
/// directory live as long as this value.
pub struct TwoReplicas {
    pub db: TestDatabase,
    pub dir: tempfile::TempDir,
    pub a: Replica,
    pub b: Replica,
    pub admin: String,
}

/// [`TwoReplicas`] with `settings`; None when PostgreSQL is absent (SKIPPED; a failure under
/// CI=true).
pub async fn two_replicas(
    tag: &str,
    settings: patchbay_server::state::Settings,
) -> Option<TwoReplicas> {
    let db = TestDatabase::create(tag).await?;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let a = replica(&dir.path().join("a"), &key, &db.url, settings.clone()).await;
    let b = replica(&dir.path().join("b"), &key, &db.url, settings).await;
    let admin = std::fs::read_to_string(dir.path().join("a/initial-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Some(TwoReplicas {
        db,
        dir,
        a,
        b,
        admin,
    })
}

/// One replica: an in-process service on `url`, its data in `dir`, the deployment's master
/// key in the file `key`.
async fn replica(
    dir: &std::path::Path,
    key: &std::path::Path,
    url: &str,
    settings: patchbay_server::state::Settings,
) -> Replica {
    let config = Config {
        tls: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        database_url: Some(patchbay_crypto::SecretString::new(url.to_owned())),
        master_key: MasterKeySource::File(key.to_owned()),
        settings,
    };
    let app = App::start(&config).await.unwrap();
    let addr = serve_on_loopback(&app).await;
    Replica {
        base: format!("http://{addr}"),
        state: app.state.clone(),
    }
}

/// Serves `app` on a fresh loopback port in the background (with the peer address, as
/// `patchbay serve` does); its address.
async fn serve_on_loopback(app: &App) -> std::net::SocketAddr {
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
    addr
}
