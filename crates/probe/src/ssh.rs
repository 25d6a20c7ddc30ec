//! SSH families, over russh (ring provider only): `sftp` stats the root path through the
//! SFTP subsystem, `ssh_exec` runs `true` (never the configured command, which is the
//! job's work). Stages: `tls` is the SSH handshake (version exchange, key exchange, host
//! key check against `known_host_key`), `auth` the password or private-key login, `query`
//! the SFTP stat or the exec.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use patchbay_crypto::SecretString;
use russh::client;
use russh::keys::{self, HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net;
use crate::result::{ErrorClass, Failure, ProbeStage as S, Run, ServerInfo, StageResult, Stopped};
use crate::{NetworkGuard, ProbeResult, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Sftp,
    Exec,
}

enum Login {
    Password(SecretString),
    Key(Arc<keys::PrivateKey>),
}

struct Plan {
    host: String,
    port: u16,
    user: String,
    login: Login,
    known: Option<PublicKey>,
    root: String,
}

/// `ssh-ed25519 AAAA… [comment]`, or a whole known_hosts line (`host ssh-ed25519 AAAA…`).
fn parse_known(raw: &str) -> Result<PublicKey, Failure> {
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    tokens
        .windows(2)
        .find(|w| w[0].starts_with("ssh-") || w[0].starts_with("ecdsa-"))
        .and_then(|w| keys::parse_public_key_base64(w[1]).ok())
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the known host key is not an OpenSSH public key line (ssh-ed25519 AAAA…)",
            )
        })
}

fn plan(t: &Target<'_>, kind: Kind) -> Result<Plan, Failure> {
    let host = t.required_str("host")?.to_owned();
    let port = t.port("port")?;
    let user = t.required_str("username")?.to_owned();
    let login = match (t.secret("private_key"), t.secret("password")) {
        (Some(pem), _) => {
            let pass = t.secret("passphrase").map(|p| p.expose_secret());
            let key = keys::decode_secret_key(pem.expose_secret(), pass).map_err(|_| {
                Failure::new(
                    ErrorClass::InvalidSettings,
                    "the private key could not be read (not an OpenSSH/PEM key, or a wrong or missing passphrase)",
                )
            })?;
            Login::Key(Arc::new(key))
        }
        (None, Some(p)) => Login::Password(p.clone()),
        (None, None) => {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                "a password or a private key is required to test this connection",
            ))
        }
    };
    let known = t.str("known_host_key").map(parse_known).transpose()?;
    let root = match kind {
        Kind::Sftp => t.str("root_path").unwrap_or("/").to_owned(),
        Kind::Exec => String::new(),
    };
    Ok(Plan {
        host,
        port,
        user,
        login,
        known,
        root,
    })
}

/// Records the host key the server showed and accepts it only if it is the known one.
struct HostKeyCheck {
    expected: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
        Ok(match &self.expected {
            None => true,
            Some(e) => e.key_data() == key.key_data(),
        })
    }
}

/// Copies the first bytes the server sends (its identification line) for `server`.
struct Tee<S> {
    inner: S,
    head: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if head.len() < 256 {
            let new = &buf.filled()[before..];
            let take = new.len().min(256 - head.len());
            head.extend_from_slice(&new[..take]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3` → (OpenSSH, 9.2p1).
fn server_info(head: &[u8]) -> Option<ServerInfo> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().find(|l| l.starts_with("SSH-"))?;
    let software = line.splitn(3, '-').nth(2)?.split_whitespace().next()?;
    let (product, version) = software.split_once('_').unwrap_or((software, ""));
    Some(ServerInfo {
        product: product.to_owned(),
        version: version.to_owned(),
    })
}

pub async fn probe(
    t: &Target<'_>,
    guard: &NetworkGuard,
    budget: Duration,
    kind: Kind,
) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, kind).await;
    run.finish()
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
    kind: Kind,
) -> Result<(), Stopped> {
    let plan = run
        .stage(S::Resolve, async {
            let p = plan(t, kind)?;
            let how = match p.login {
                Login::Password(_) => "password",
                Login::Key(_) => "private key",
            };
            let detail = format!("{}@{}:{} with a {how}", p.user, p.host, p.port);
            Ok((p, Some(detail)))
        })
        .await?;
    let checked = run
        .stage(S::Dns, net::dns(guard, &plan.host, plan.port))
        .await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let head = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(None));
    let handler = HostKeyCheck {
        expected: plan.known.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    });
    let stream = Tee {
        inner: tcp,
        head: head.clone(),
    };
    let handshake = run
        .stage(S::Tls, async {
            let r = client::connect_stream(config, stream, handler).await;
            let shown = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match r {
                Ok(h) => {
                    let key = shown.as_ref().map(|k| k.fingerprint(HashAlg::Sha256).to_string()).unwrap_or_default();
                    let detail = if plan.known.is_some() {
                        format!("SSH key exchange done; host key {key} matches the known host key")
                    } else {
                        format!("SSH key exchange done; host key {key} (not checked)")
                    };
                    Ok(((h, shown), Some(detail)))
                }
                Err(russh::Error::UnknownKey) => {
                    let fp = shown.as_ref().map(|k| k.fingerprint(HashAlg::Sha256).to_string()).unwrap_or_default();
                    Err(Failure::new(
                        ErrorClass::TlsUntrustedCertificate,
                        format!("the server's host key {fp} does not match the known host key"),
                    )
                    .hint("if the server's key changed on purpose, update known_host_key; otherwise someone may be intercepting the connection"))
                }
                Err(russh::Error::NoCommonAlgo { kind, .. }) => Err(Failure::new(
                    ErrorClass::TlsHandshake,
                    format!("no common SSH algorithm ({kind:?}) with the server"),
                )),
                Err(e) => Err(if server_info(&head.lock().unwrap_or_else(|e| e.into_inner())).is_none() {
                    Failure::new(ErrorClass::ProtocolMismatch, "the server did not identify itself as an SSH server")
                        .hint("is this the SSH port?")
                } else {
                    Failure::new(ErrorClass::TlsHandshake, format!("the SSH handshake failed: {e}"))
                }),
            }
        })
        .await?;
    let (mut handle, shown) = handshake;
    run.server = server_info(&head.lock().unwrap_or_else(|e| e.into_inner()));
    if plan.known.is_none() {
        let line = shown
            .map(|k| k.to_openssh().unwrap_or_default())
            .unwrap_or_default();
        run.warn(format!(
            "the host key was not checked (no known_host_key); the server showed: {line}"
        ));
    }
    run.stage(S::Auth, async {
        let (result, how) = match &plan.login {
            Login::Password(p) => (
                handle
                    .authenticate_password(&plan.user, p.expose_secret())
                    .await,
                "password",
            ),
            Login::Key(k) => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten();
                (
                    handle
                        .authenticate_publickey(
                            &plan.user,
                            PrivateKeyWithHashAlg::new(k.clone(), hash),
                        )
                        .await,
                    "private key",
                )
            }
        };
        match result {
            Ok(client::AuthResult::Success) => {
                Ok(((), Some(format!("logged in as {} with a {how}", plan.user))))
            }
            Ok(client::AuthResult::Failure {
                remaining_methods, ..
            }) => Err(Failure::new(
                ErrorClass::AuthFailed,
                format!("the server refused the {how} of {}", plan.user),
            )
            .hint(format!(
                "check the user name and {how}; the server accepts: {}",
                remaining_methods
                    .iter()
                    .map(<&str>::from)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Err(e) => Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                format!("the login failed: {e}"),
            )),
        }
    })
    .await?;
    run.stage(S::Query, async {
        match kind {
            Kind::Sftp => sftp_stat(&handle, &plan.root).await,
            Kind::Exec => exec_true(&handle).await,
        }
    })
    .await?;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "probe done", "en")
        .await;
    Ok(())
}

fn channel_failure(e: russh::Error, what: &str) -> Failure {
    Failure::new(
        ErrorClass::PermissionDenied,
        format!("the server refused {what}: {e}"),
    )
}

async fn sftp_stat(handle: &client::Handle<HostKeyCheck>, root: &str) -> StageResult<()> {
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| channel_failure(e, "a session channel"))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| channel_failure(e, "the sftp subsystem"))?;
    let sftp = russh_sftp::client::SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| {
            Failure::new(
                ErrorClass::PermissionDenied,
                format!("the SFTP subsystem did not start: {e}"),
            )
            .hint("is SFTP enabled on this server (Subsystem sftp)?")
        })?;
    use russh_sftp::client::error::Error as E;
    use russh_sftp::protocol::StatusCode;
    let meta = sftp.metadata(root).await.map_err(|e| match e {
        E::Status(s) if s.status_code == StatusCode::NoSuchFile => Failure::new(
            ErrorClass::NotFound,
            format!("the root path {root} does not exist"),
        )
        .hint("check the root path (as the SFTP server sees it, e.g. inside a chroot)"),
        E::Status(s) if s.status_code == StatusCode::PermissionDenied => Failure::new(
            ErrorClass::PermissionDenied,
            format!("the user may not read {root}"),
        ),
        other => Failure::new(ErrorClass::Unknown, format!("stat {root} failed: {other}")),
    })?;
    let _ = sftp.close().await;
    let what = if meta.is_dir() {
        "a directory"
    } else {
        "a file"
    };
    Ok(((), Some(format!("SFTP: {root} is {what}"))))
}

async fn exec_true(handle: &client::Handle<HostKeyCheck>) -> StageResult<()> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| channel_failure(e, "a session channel"))?;
    channel
        .exec(true, "true")
        .await
        .map_err(|e| channel_failure(e, "running a command"))?;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Failure => {
                return Err(Failure::new(
                    ErrorClass::PermissionDenied,
                    "the server refused to run a command for this user",
                )
                .hint(
                    "is the user restricted (ForceCommand, internal-sftp only, a nologin shell)?",
                ))
            }
            ChannelMsg::ExitStatus { exit_status: 0 } => {
                return Ok(((), Some("ran `true`: exit status 0".to_owned())))
            }
            ChannelMsg::ExitStatus { exit_status } => {
                return Err(Failure::new(
                    ErrorClass::PermissionDenied,
                    format!("`true` exited with status {exit_status}"),
                )
                .hint("the user's shell may refuse commands (nologin, a restricted shell)"))
            }
            _ => {}
        }
    }
    Err(Failure::new(
        ErrorClass::ProtocolMismatch,
        "the channel closed without an exit status",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identification_line_names_the_server() {
        let s = server_info(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n").unwrap();
        assert_eq!(
            (s.product.as_str(), s.version.as_str()),
            ("OpenSSH", "9.2p1")
        );
        assert!(server_info(b"HTTP/1.1 400\r\n").is_none());
    }
}
