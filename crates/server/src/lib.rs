//! The patchbay service: configuration, start-up (data directory, master key, database,
//! first-start bootstrap) and the HTTP API.

pub mod api;
pub mod auth;
pub mod body;
pub mod document_file;
pub mod error;
pub mod keyring;
pub mod materials;
pub mod principals;
pub mod ratelimit;
pub mod request;
pub mod service;
pub mod session;
pub mod state;
pub mod tls;
pub mod ui;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use patchbay_core::permission::PermissionSet;
use patchbay_crypto::{generate_password, generate_token, hash_token, SecretString};
use patchbay_store::{new_id, AuditEntry, NewToken, NewUser, Store, StoreError};

use crate::state::AppState;

/// Where the master key comes from.
pub enum MasterKeySource {
    /// A key file, created (0600) on first start when absent.
    File(PathBuf),
    /// The base64 key itself (from PATCHBAY_MASTER_KEY or its *_FILE variant).
    Inline(SecretString),
    /// A key held encrypted by AWS KMS ("auto-unseal"): `file` holds the KMS ciphertext of
    /// the master key, decrypted by KMS key `kms_key_id` at start-up. AWS credentials,
    /// region and endpoint come from the environment.
    Kms { kms_key_id: String, file: PathBuf },
}

/// How the listener speaks.
#[derive(Debug, Clone, Default)]
pub enum TlsMode {
    /// Plain HTTP: the default, meant for loopback (a warning otherwise).
    #[default]
    Off,
    /// HTTPS with this certificate and key (PATCHBAY_TLS_CERT, PATCHBAY_TLS_KEY).
    Files(tls::TlsFiles),
    /// HTTPS with a self-signed certificate made on first start (`--dev-tls`).
    Dev,
}

pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsMode,
    pub data_dir: PathBuf,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<SecretString>,
    pub master_key: MasterKeySource,
    pub settings: state::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Key(#[from] patchbay_crypto::CryptoError),
    #[error("master key: {0}")]
    KeyFormat(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Keys(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Provision(String),
}

/// A started service: state plus its router, before binding (tests and benchmarks serve it
/// on their own listeners).
pub struct App {
    pub state: AppState,
}

impl App {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.display().to_string(), e))?;
        restrict_dir(&config.data_dir);
        let keys = service::master_keys::load(&config.master_key)
            .await
            .map_err(StartError::KeyFormat)?;
        let url = match &config.database_url {
            Some(u) => u.expose_secret().to_owned(),
            None => format!(
                "sqlite://{}?mode=rwc",
                config.data_dir.join("patchbay.db").display()
            ),
        };
        let store = Store::connect(&url).await?;
        // Fail fast: never run with data keys the loaded master key cannot unwrap.
        if let Err(msg) = service::master_keys::check(&store, &keys.ring).await {
            if let Some(created) = &keys.created {
                let _ = std::fs::remove_file(created);
            }
            return Err(StartError::Keys(msg));
        }
        let ring = Arc::new(keys.ring);
        let oauth = patchbay_external::TokenManager::new(
            patchbay_external::OAuth2Client::new(patchbay_external::HttpOptions::default())
                .map_err(|e| StartError::Bootstrap(format!("OAuth2 client: {e}")))?,
            Arc::new(service::oauth::SqlTokenStore {
                store: store.clone(),
                keys: ring.clone(),
            }),
            patchbay_external::TokenManagerOptions {
                holder_id: format!("replica-{}", new_id()),
                ..Default::default()
            },
        );
        let state = AppState::new(state::Shared {
            principals: Default::default(),
            materials: Default::default(),
            resolve_log: Arc::new(service::resolve_log::ResolveLog::start(store.clone())),
            store,
            keys: ring,
            catalog: patchbay_catalog::Catalog::builtin(),
            settings: Arc::new(state::Settings {
                secure_cookies: !matches!(config.tls, TlsMode::Off),
                ..config.settings.clone()
            }),
            oauth: Arc::new(oauth),
            external: Arc::new(service::external::External::new(
                config.settings.external_cache_ttl,
            )),
            key_manager: Arc::new(keys.manager),
            auth_failures: Arc::new(ratelimit::WindowLimiter::new(
                config.settings.auth_failure_limit,
                std::time::Duration::from_secs(60),
            )),
            probes: Arc::new(service::probes::Probes::new(config.settings.probes.clone())),
        });
        bootstrap(&state, &config.data_dir).await?;
        service::keys::resume(&state)
            .await
            .map_err(StartError::Keys)?;
        service::connection_secrets::upgrade_legacy_secrets(&state)
            .await
            .map_err(|e| {
                StartError::Bootstrap(format!(
                    "moving inline secrets into credentials: {}",
                    e.0.message
                ))
            })?;
        if let Some(dir) = &state.settings.provision_dir {
            service::provision::startup::provision(&state, dir)
                .await
                .map_err(StartError::Provision)?;
        }
        tokio::spawn(service::credentials::sweep_forever(
            state.clone(),
            state.settings.sweep_interval,
        ));
        tokio::spawn(service::events::deliver_forever(state.clone()));
        if state.store.backend() == patchbay_store::Backend::Sqlite {
            tokio::spawn(checkpoint_forever(state.store.clone()));
        }
        if let Some(retention) = state.settings.audit_retention {
            tokio::spawn(service::audit::retention_forever(
                state.clone(),
                retention,
                state.settings.sweep_interval,
            ));
        }
        Ok(Self { state })
    }

    /// The HTTP service (`api::service`): serve it with
    /// `axum::ServiceExt::into_make_service_with_connect_info::<SocketAddr>`, as
    /// [`serve`] does (audit records and the authentication limiter read the peer address).
    pub fn service(&self) -> impl api::HttpService {
        api::service(self.state.clone())
    }
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let app = App::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let files = match &config.tls {
        TlsMode::Off => None,
        TlsMode::Files(f) => Some(f.clone()),
        TlsMode::Dev => Some(tls::dev_certificate(&config.data_dir).map_err(StartError::Tls)?),
    };
    match files {
        None => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "serving plain HTTP on a non-loopback address: set PATCHBAY_TLS_CERT and PATCHBAY_TLS_KEY, or put TLS in front");
            }
            tracing::info!(%addr, backend = ?app.state.store.backend(), "patchbay listening (http)");
            axum::serve(
                listener,
                axum::ServiceExt::into_make_service_with_connect_info::<SocketAddr>(app.service()),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| StartError::Listen(addr, e))?;
        }
        Some(files) => {
            let slot = tls::CertificateSlot::load(files).map_err(StartError::Tls)?;
            tls::reload_on_sighup(slot.clone());
            tracing::info!(%addr, backend = ?app.state.store.backend(), "patchbay listening (https)");
            tls::serve_tls(listener, app.service(), slot, shutdown_signal())
                .await
                .map_err(StartError::Tls)?;
        }
    }
    app.state.store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn restrict_dir(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    let _ = dir;
}

pub const INITIAL_TOKEN_FILE: &str = "initial-admin-token";
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

/// First start on an empty database: workspace `default`, project `default`, the instance
/// administrator `admin` and an API token of theirs. The password and the token are printed
/// once to stderr and written to `<data dir>/initial-admin-password` and
/// `<data dir>/initial-admin-token` (0600).
/// Replicas racing on a shared PostgreSQL: the loser sees `name_taken` and leaves it.
async fn bootstrap(state: &AppState, data_dir: &Path) -> Result<(), StartError> {
    if state.store.count_workspaces().await? > 0 {
        return Ok(());
    }
    let system = |action: &str, kind: &str, id: &str| {
        AuditEntry::system(
            "system:bootstrap",
            action,
            None,
            kind,
            id,
            serde_json::json!({}),
        )
    };
    let ws_id = new_id();
    let dek = state.keys.new_data_key(&ws_id);
    match state
        .store
        .create_workspace(
            &ws_id,
            "default",
            &dek,
            &system("workspace.create", "workspace", &ws_id),
        )
        .await
    {
        Err(StoreError::NameTaken) => return Ok(()),
        other => other?,
    };
    state
        .store
        .create_project(&ws_id, "default", &system("project.create", "project", ""))
        .await?;
    let password = generate_password();
    let admin = state
        .store
        .create_user(
            &NewUser {
                id: new_id(),
                username: "admin".into(),
                password_hash: service::users::hash(password.clone())
                    .await
                    .map_err(|e| StartError::Bootstrap(e.0.to_string()))?,
                is_admin: true,
            },
            &system("user.create", "user", "admin"),
        )
        .await?;
    let token = generate_token();
    let token_id = new_id();
    state
        .store
        .create_token(
            &NewToken {
                id: token_id.clone(),
                name: "initial-admin".into(),
                token_hash: hash_token(token.expose_secret()),
                workspace_id: None,
                permissions: PermissionSet::all(),
                expires_at: None,
                kind: "personal".into(),
                created_by: None,
                user_id: Some(admin.id),
            },
            &system("token.create", "token", &token_id),
        )
        .await?;
    let path = data_dir.join(INITIAL_TOKEN_FILE);
    write_private(&path, token.expose_secret())
        .map_err(|e| StartError::Bootstrap(format!("{}: {e}", path.display())))?;
    let pw_path = data_dir.join(INITIAL_PASSWORD_FILE);
    write_private(&pw_path, password.expose_secret())
        .map_err(|e| StartError::Bootstrap(format!("{}: {e}", pw_path.display())))?;
    // Printed once, on purpose: this is how the operator receives the first credentials.
    eprintln!(
        "\npatchbay: created workspace `default`, project `default` and the administrator `admin`.\n\n    password:  {}\n    API token: {}\n\nThey are also in {} and {} (mode 0600). Store them now; they are not shown again.\n",
        password.expose_secret(),
        token.expose_secret(),
        pw_path.display(),
        path.display()
    );
    Ok(())
}

pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// SQLite: the write-ahead log is checkpointed here, every second, off every request's path
/// (`Store::checkpoint`).
async fn checkpoint_forever(store: patchbay_store::Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.checkpoint().await {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
}
