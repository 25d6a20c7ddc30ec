//! HTTPS served by patchbay itself (rustls with the ring provider): a certificate and key
//! from PEM files, reloaded on SIGHUP without dropping connections, or a self-signed
//! development certificate created on first start (`--dev-tls`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of the server certificate (chain, leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificate in use; `reload` swaps it for the files' current content.
#[derive(Debug)]
pub struct CertificateSlot {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateSlot {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let key = certified_key(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again. On failure the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// A server configuration that asks this slot for the certificate at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no CERTIFICATE block",
            files.cert.display()
        ));
    }
    // The error of a key file never quotes it: it is the private key.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|_| format!("TLS key {}: not a PEM private key", files.key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| format!("TLS key {}: unsupported key type", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|_| "TLS certificate and key do not belong together".to_string())?;
    Ok(ck)
}

/// `--dev-tls`: a self-signed certificate for localhost, 127.0.0.1 and ::1, created in
/// `<data dir>/tls/` on first start and reused after. For development only: clients must
/// trust `dev-cert.pem` explicitly.
pub fn dev_certificate(data_dir: &Path) -> Result<TlsFiles, String> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        cert: dir.join("dev-cert.pem"),
        key: dir.join("dev-key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| format!("TLS: {e}"))?;
    crate::write_private(&files.key, &cert.key_pair.serialize_pem())
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    std::fs::write(&files.cert, cert.cert.pem())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    tracing::warn!(cert = %files.cert.display(), "created a self-signed development certificate; do not use it in production");
    Ok(files)
}

/// Reloads the certificate whenever the process receives SIGHUP.
#[cfg(unix)]
pub fn reload_on_sighup(slot: Arc<CertificateSlot>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; TLS certificates will not reload");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match slot.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
        }
    });
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_slot: Arc<CertificateSlot>) {}

/// Serves `service` over HTTPS on `listener` until `shutdown` completes, then lets open
/// requests finish (at most 10 s). Every response carries HSTS. Handshakes that take longer
/// than 10 s are dropped, so idle sockets cannot pin tasks.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    service: impl crate::api::HttpService,
    slot: Arc<CertificateSlot>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    use axum::extract::ConnectInfo;
    use axum::http::{header, HeaderValue};
    use hyper_util::rt::TokioIo;
    use std::time::Duration;
    use tower::ServiceExt;

    let service = tower::Layer::layer(
        &tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ),
        service,
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(slot.server_config()?));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    service.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after 10 s; closing");
    }
    Ok(())
}
