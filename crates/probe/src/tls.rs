//! TLS for probes: rustls with the ring provider only. Roots are the system's
//! (rustls-native-certs, loaded once) unless the connection brings its own CA PEM. Verify
//! modes: `full` (chain + name), `ca-only` (chain, any name), `none` (anything; the result
//! carries a warning). Errors are classified into the untrusted / hostname / handshake
//! classes.

use std::sync::{Arc, OnceLock};

use patchbay_crypto::SecretString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::guard::Host;
use crate::result::{ErrorClass, Failure};
use crate::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    Full,
    CaOnly,
    None,
}

impl VerifyMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" | "verify-full" => Some(VerifyMode::Full),
            "ca-only" | "ca_only" | "verify-ca" => Some(VerifyMode::CaOnly),
            "none" => Some(VerifyMode::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Full => "full",
            VerifyMode::CaOnly => "ca-only",
            VerifyMode::None => "none",
        }
    }
}

/// `Full` unless the boolean setting `flag` is explicitly false, then `off` (`tls_verify:
/// false` → none; `ssl_endpoint_identification: false` → ca-only, and so on).
pub(crate) fn verify_unless(t: &Target<'_>, flag: &str, off: VerifyMode) -> VerifyMode {
    if t.bool(flag) == Some(false) {
        off
    } else {
        VerifyMode::Full
    }
}

/// TLS options shared by the broker types (`tls`, `tls_verify`, `tls_*` PEM fields).
pub(crate) fn broker_tls(t: &Target<'_>) -> (bool, TlsOptions) {
    let mode = verify_unless(t, "tls_verify", VerifyMode::None);
    (
        t.bool("tls").unwrap_or(false),
        TlsOptions::from_target(t, Some(mode), PemFields::TLS),
    )
}

/// TLS options of one connection, read from its settings by the family module.
#[derive(Default)]
pub struct TlsOptions {
    pub mode: Option<VerifyMode>,
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<SecretString>,
    /// SNI and the name checked against the certificate, instead of the host.
    pub server_name: Option<String>,
}

/// The names of a type's PEM settings (CA bundle, client certificate, secret client key):
/// the catalog names them per family after the product's own documentation.
#[derive(Debug, Clone, Copy)]
pub struct PemFields {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

impl PemFields {
    /// The names most types use.
    pub const TLS: PemFields = PemFields {
        ca: "tls_ca_certificate",
        cert: "tls_client_certificate",
        key: "tls_private_key",
    };
}

impl TlsOptions {
    /// Reads a type's TLS settings: the PEM fields under `pem`'s names, `tls_server_name`,
    /// and the verify mode — `tls_verify_mode` when the type declares and sets it, else
    /// `mode` (the family's own flags, e.g. [`verify_unless`]). A name the type does not
    /// declare reads as unset.
    pub(crate) fn from_target(t: &Target<'_>, mode: Option<VerifyMode>, pem: PemFields) -> Self {
        TlsOptions {
            mode: t
                .str("tls_verify_mode")
                .and_then(VerifyMode::parse)
                .or(mode),
            ca_pem: t.str(pem.ca).map(str::to_owned),
            client_cert_pem: t.str(pem.cert).map(str::to_owned),
            client_key_pem: t.secret(pem.key).cloned(),
            server_name: t.str("tls_server_name").map(str::to_owned),
        }
    }

    pub fn mode(&self) -> VerifyMode {
        self.mode.unwrap_or(VerifyMode::Full)
    }

    /// The warning a result carries for this mode, if any.
    pub fn warning(&self) -> Option<String> {
        match self.mode() {
            VerifyMode::None => Some(
                "TLS certificate verification is off (verify mode none): the connection is encrypted but the server is not authenticated".into(),
            ),
            VerifyMode::CaOnly => Some(
                "TLS host name verification is off (verify mode ca-only)".into(),
            ),
            VerifyMode::Full => None,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            tracing::debug!(added, "loaded system CA certificates");
            Arc::new(store)
        })
        .clone()
}

fn bad_setting(what: &str) -> Failure {
    Failure::new(
        ErrorClass::InvalidSettings,
        format!("the {what} is not valid PEM"),
    )
    .hint(format!(
        "paste the {what} including the -----BEGIN …----- line"
    ))
}

/// The rustls client configuration for `opts`.
pub fn client_config(opts: &TlsOptions) -> Result<ClientConfig, Failure> {
    let roots = match &opts.ca_pem {
        Some(pem) if !pem.trim().is_empty() => {
            let mut store = RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad_setting("CA certificate"))?;
            if certs.is_empty() {
                return Err(bad_setting("CA certificate"));
            }
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad_setting("CA certificate"));
            }
            Arc::new(store)
        }
        _ => system_roots(),
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(ErrorClass::TlsHandshake, format!("TLS set-up: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match opts.mode() {
        VerifyMode::None => Arc::new(AcceptAny(provider)),
        mode => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|_| {
                    Failure::new(
                        ErrorClass::TlsUntrustedCertificate,
                        "no trusted CA certificates are available to verify the server",
                    )
                    .hint("provide the server's CA certificate (PEM) in the TLS settings")
                })?;
            if mode == VerifyMode::CaOnly {
                Arc::new(CaOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&opts.client_cert_pem, &opts.client_key_pem) {
        (Some(cert), Some(key)) if !cert.trim().is_empty() => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad_setting("client certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose_secret().as_bytes())
                .map_err(|_| bad_setting("client private key"))?;
            builder.with_client_auth_cert(chain, key).map_err(|_| {
                Failure::new(
                    ErrorClass::InvalidSettings,
                    "the client certificate and private key do not match",
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The name TLS uses: the SNI override, else the host.
pub fn server_name(opts: &TlsOptions, host: &Host) -> Result<ServerName<'static>, Failure> {
    if let Some(name) = opts.server_name.as_deref().filter(|s| !s.is_empty()) {
        return ServerName::try_from(name.to_owned()).map_err(|_| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the TLS server name override is not a valid host name",
            )
        });
    }
    Ok(match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(n) => ServerName::try_from(n.clone()).map_err(|_| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the host is not a valid TLS server name",
            )
        })?,
    })
}

/// Handshakes over `io`; the detail names the protocol version and the verify mode.
pub async fn handshake<S>(
    io: S,
    opts: &TlsOptions,
    host: &Host,
) -> Result<(tokio_rustls::client::TlsStream<S>, String), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = client_config(opts)?;
    let name = server_name(opts, host)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(name, io)
        .await
        .map_err(|e| classify_io(&e))?;
    let version = stream
        .get_ref()
        .1
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS");
    Ok((
        stream,
        format!(
            "{version}, certificate verification {}",
            opts.mode().as_str()
        ),
    ))
}

/// Classifies a handshake failure.
pub fn classify_io(e: &std::io::Error) -> Failure {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(err) => classify(err),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => Failure::new(
            ErrorClass::TlsHandshake,
            "the server closed the connection during the TLS handshake",
        )
        .hint("is TLS enabled on this port, and does the server require a client certificate?"),
        None => Failure::new(
            ErrorClass::TlsHandshake,
            format!("TLS handshake failed: {}", e.kind()),
        ),
    }
}

pub fn classify(err: &rustls::Error) -> Failure {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => Failure::new(
            ErrorClass::TlsHostnameMismatch,
            "the server's certificate is not valid for this host name",
        )
        .hint("connect with a name the certificate lists, or set the TLS server name (SNI) override"),
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => Failure::new(
            ErrorClass::TlsUntrustedCertificate,
            "the server's certificate has expired",
        )
        .hint("renew the server certificate"),
        E::InvalidCertificate(c) => Failure::new(
            ErrorClass::TlsUntrustedCertificate,
            format!("the server's certificate is not trusted ({})", cert_reason(c)),
        )
        .hint("add the CA that signed the server's certificate (PEM) to the connection's TLS settings"),
        E::AlertReceived(a) => Failure::new(
            ErrorClass::TlsHandshake,
            format!("the server refused the TLS handshake (alert {a:?})"),
        )
        .hint("check the TLS versions and client certificate the server requires"),
        other => Failure::new(ErrorClass::TlsHandshake, format!("TLS handshake failed: {other}")),
    }
}

fn cert_reason(c: &CertificateError) -> &'static str {
    match c {
        CertificateError::UnknownIssuer => "unknown issuer",
        CertificateError::BadSignature => "bad signature",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet"
        }
        CertificateError::Revoked => "revoked",
        CertificateError::BadEncoding => "malformed",
        _ => "rejected",
    }
}

/// Chain verification without the name check.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate (verify mode none) but still checks handshake signatures, so
/// the session is at least bound to the presented key.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
