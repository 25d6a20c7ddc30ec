//! FTP / FTPS probe over the control connection only (no data channel): the 220 greeting,
//! AUTH TLS (explicit FTPS) or TLS from the first byte (implicit FTPS) (tls), USER/PASS
//! (auth; 530 → auth_failed), CWD into the root path (query; 550 → not_found), QUIT.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

#[derive(PartialEq, Clone, Copy)]
enum Security {
    Plain,
    Explicit,
    Implicit,
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
    let (host, port, security, opts, root) = run
        .stage(S::Resolve, async {
            let security = match t.str("protocol").unwrap_or("ftp") {
                "ftp" => Security::Plain,
                "ftps" if t.str("ftps_mode") == Some("implicit") => Security::Implicit,
                "ftps" => Security::Explicit,
                "sftp" => {
                    return Err(Failure::new(
                        ErrorClass::NotImplemented,
                        "testing SFTP (SSH) is not implemented yet; FTP and FTPS are",
                    ))
                }
                _ => {
                    return Err(Failure::new(
                        ErrorClass::InvalidSettings,
                        "protocol must be ftp, ftps or sftp",
                    ))
                }
            };
            let host = t.required_str("host")?.to_owned();
            let port = match t.settings.get("port").filter(|v| !v.is_null()) {
                None if security == Security::Implicit => 990,
                _ => t.port("port")?,
            };
            let mode = verify_unless(t, "tls_verify", VerifyMode::None);
            let opts = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
            let root = t.str("root_path").unwrap_or("/").to_owned();
            if root.contains(['\r', '\n']) {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "the root path may not contain line breaks",
                ));
            }
            let detail = format!(
                "{host}:{port}{}, root {root}",
                match security {
                    Security::Plain => "",
                    Security::Explicit => " (explicit FTPS)",
                    Security::Implicit => " (implicit FTPS)",
                }
            );
            Ok(((host, port, security, opts, root), Some(detail)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let io: Box<dyn Io> = match security {
        Security::Plain => {
            run.skip(S::Tls, "plain FTP");
            run.warn("the connection is not encrypted: the password crosses the network in clear (use FTPS)");
            Box::new(tcp)
        }
        Security::Explicit => {
            let s = run
                .stage(S::Tls, async {
                    let mut c = Control(BufReader::new(Box::new(tcp) as Box<dyn Io>));
                    greeting(&mut c).await?;
                    let (code, _) = c.command("AUTH TLS").await?;
                    if code != 234 {
                        return Err(Failure::new(
                            ErrorClass::TlsHandshake,
                            format!("the server refused AUTH TLS (reply {code})"),
                        )
                        .hint("the server does not offer explicit FTPS: use plain FTP or implicit FTPS"));
                    }
                    let (s, d) = tls::handshake(c.0.into_inner(), &opts, &checked.host).await?;
                    Ok((s, Some(format!("AUTH TLS: {d}"))))
                })
                .await?;
            if let Some(w) = opts.warning() {
                run.warn(w);
            }
            Box::new(s)
        }
        Security::Implicit => {
            let s = run
                .stage(S::Tls, async {
                    let (s, d) = tls::handshake(tcp, &opts, &checked.host).await?;
                    Ok((s, Some(format!("implicit: {d}"))))
                })
                .await?;
            if let Some(w) = opts.warning() {
                run.warn(w);
            }
            Box::new(s)
        }
    };
    let mut c = Control(BufReader::new(io));
    let user = t.str("username").unwrap_or("anonymous").to_owned();
    let password = t.secret("password").cloned();
    run.stage(S::Auth, async {
        if security != Security::Explicit {
            greeting(&mut c).await?;
        }
        if user.contains(['\r', '\n']) {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                "the user name may not contain line breaks",
            ));
        }
        let (code, _) = c.command(&format!("USER {user}")).await?;
        let code = match code {
            230 => 230,
            331 | 332 => {
                let pw = password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned())
                    .unwrap_or_else(|| "anonymous@".into());
                if pw.contains(['\r', '\n']) {
                    return Err(Failure::new(
                        ErrorClass::InvalidSettings,
                        "the password may not contain line breaks",
                    ));
                }
                c.command(&format!("PASS {pw}")).await?.0
            }
            c => c,
        };
        match code {
            230 | 202 => Ok(((), Some(format!("logged in as {user}")))),
            530 => Err(Failure::new(
                ErrorClass::AuthFailed,
                "the server rejected the user name or password (530)",
            )
            .hint("check the user name and password")),
            534 | 550 if security == Security::Plain => Err(Failure::new(
                ErrorClass::AuthFailed,
                format!("the server refused a login over plain FTP ({code})"),
            )
            .hint("the server may require FTPS: set protocol ftps")),
            c => Err(unexpected(c, "the login")),
        }
    })
    .await?;
    run.stage(S::Query, async {
        let (code, _) = c.command(&format!("CWD {root}")).await?;
        match code {
            250 | 200 => {}
            550 => {
                return Err(Failure::new(
                    ErrorClass::NotFound,
                    format!("the root path {root} does not exist or is not a directory (550)"),
                )
                .hint("check root_path; it is relative to the account's home on many servers"))
            }
            c => return Err(unexpected(c, "changing into the root path")),
        }
        Ok(((), Some(format!("CWD {root} answered {code}"))))
    })
    .await?;
    let _ = c.command("QUIT").await;
    Ok(())
}

fn not_ftp() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak FTP",
    )
    .hint("is this the right port? FTP listens on 21 and implicit FTPS on 990 by default")
}

fn unexpected(code: u16, what: &str) -> Failure {
    let class = match code {
        421 => ErrorClass::RateLimited,
        500..=504 => ErrorClass::ProtocolMismatch,
        _ => ErrorClass::Unknown,
    };
    Failure::new(class, format!("{what} got the unexpected reply {code}"))
}

async fn greeting(c: &mut Control) -> Result<(), Failure> {
    match c.reply().await?.0 {
        220 => Ok(()),
        421 => Err(Failure::new(
            ErrorClass::RateLimited,
            "the server refused the session (421): too many connections or shutting down",
        )),
        _ => Err(not_ftp()),
    }
}

struct Control(BufReader<Box<dyn Io>>);

impl Control {
    async fn command(&mut self, line: &str) -> Result<(u16, String), Failure> {
        let w = self.0.get_mut();
        w.write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| io_failure(&e, "sending a command"))?;
        w.flush()
            .await
            .map_err(|e| io_failure(&e, "sending a command"))?;
        self.reply().await
    }

    /// One reply: `ddd text` or a multi-line `ddd-` … `ddd text`. Returns the code and
    /// the last line's text.
    async fn reply(&mut self) -> Result<(u16, String), Failure> {
        let mut first: Option<u16> = None;
        for _ in 0..200 {
            let mut buf = Vec::new();
            let n = (&mut self.0)
                .take(8 * 1024)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| io_failure(&e, "reading the reply"))?;
            if n == 0 {
                return Err(io_failure(
                    &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    "reading the reply",
                ));
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (100..600).contains(c));
            match (first, code) {
                (None, None) => return Err(not_ftp()),
                (None, Some(c)) => first = Some(c),
                _ => {}
            }
            if code == first && line.as_bytes().get(3) != Some(&b'-') {
                let text = line.get(4..).unwrap_or_default().to_owned();
                return Ok((code.unwrap_or_default(), text));
            }
        }
        Err(not_ftp())
    }
}
