//! SMTP probe (type email): implicit TLS or the greeting, EHLO and STARTTLS before the
//! handshake (tls), then EHLO and AUTH PLAIN / LOGIN / CRAM-MD5 (auth), then QUIT. No mail
//! is sent.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Security {
    None,
    StartTls,
    Tls,
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

/// One SMTP reply: its code and lines (without the code).
struct Reply {
    code: u16,
    lines: Vec<String>,
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
) -> Result<(), crate::result::Stopped> {
    let (host, port, security, opts, helo, mechanism) = run
        .stage(S::Resolve, async {
            let host = t.required_str("host")?.to_owned();
            let port = t.port("port")?;
            let security = match t.str("security").unwrap_or("starttls") {
                "none" => Security::None,
                "starttls" => Security::StartTls,
                "tls" => Security::Tls,
                _ => {
                    return Err(Failure::new(
                        ErrorClass::InvalidSettings,
                        "security must be none, starttls or tls",
                    ))
                }
            };
            let mechanism = t.str("auth_mechanism").unwrap_or("auto").to_owned();
            if !matches!(mechanism.as_str(), "auto" | "plain" | "login" | "cram-md5") {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "auth_mechanism must be auto, plain, login or cram-md5",
                ));
            }
            let mode = verify_unless(t, "tls_verify", VerifyMode::None);
            let opts = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
            // The EHLO name is sent to the server: keep it a plain host name.
            let helo = t
                .str("helo_name")
                .filter(|h| {
                    h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
                })
                .unwrap_or("localhost")
                .to_owned();
            let detail = format!(
                "{host}:{port}, {}",
                match security {
                    Security::None => "no TLS",
                    Security::StartTls => "STARTTLS",
                    Security::Tls => "implicit TLS",
                }
            );
            Ok(((host, port, security, opts, helo, mechanism), Some(detail)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let (mut io, banner): (BufReader<Box<dyn Io>>, Option<String>) = match security {
        Security::None => {
            run.skip(S::Tls, "security none");
            run.warn("the connection is not encrypted: the password would travel in clear");
            (BufReader::new(Box::new(tcp)), None)
        }
        Security::Tls => {
            let s = run
                .stage(S::Tls, async {
                    let (s, d) = tls::handshake(tcp, &opts, &checked.host).await?;
                    Ok((s, Some(d)))
                })
                .await?;
            (BufReader::new(Box::new(s)), None)
        }
        Security::StartTls => {
            let opts = &opts;
            let host = &checked.host;
            let helo = &helo;
            let (io, banner) = run
                .stage(S::Tls, async {
                    let mut plain = BufReader::new(tcp);
                    let banner = greeting(&mut plain).await?;
                    let ehlo = command(&mut plain, &format!("EHLO {helo}")).await?;
                    expect(&ehlo, 250, "EHLO")?;
                    if !has_ext(&ehlo, "STARTTLS") {
                        return Err(Failure::new(
                            ErrorClass::TlsHandshake,
                            "the server does not offer STARTTLS",
                        )
                        .hint("use security tls on the implicit-TLS port (465), or enable STARTTLS on the server"));
                    }
                    let r = command(&mut plain, "STARTTLS").await?;
                    expect(&r, 220, "STARTTLS")?;
                    let (s, d) = tls::handshake(plain.into_inner(), opts, host).await?;
                    let io: Box<dyn Io> = Box::new(s);
                    Ok(((BufReader::new(io), banner), Some(format!("STARTTLS, {d}"))))
                })
                .await?;
            (io, Some(banner))
        }
    };
    if security != Security::None {
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
    }
    let user = t.str("username").map(str::to_owned);
    let password = t.secret("password").cloned();
    let banner = run
        .stage(S::Auth, async {
            let banner = match banner {
                Some(b) => b,
                None => greeting(&mut io).await?,
            };
            let ehlo = command(&mut io, &format!("EHLO {helo}")).await?;
            expect(&ehlo, 250, "EHLO")?;
            let Some(user) = user else {
                return Ok((
                    banner,
                    Some("no user name set: EHLO accepted, no login tried".to_owned()),
                ));
            };
            let offered: Vec<String> = ehlo
                .lines
                .iter()
                .find_map(|l| {
                    let up = l.to_ascii_uppercase();
                    up.strip_prefix("AUTH ")
                        .or_else(|| up.strip_prefix("AUTH="))
                        .map(|m| m.split_whitespace().map(str::to_owned).collect())
                })
                .unwrap_or_default();
            if offered.is_empty() {
                return Err(Failure::new(
                    ErrorClass::AuthFailed,
                    "the server offers no AUTH mechanism on this connection",
                )
                .hint(if security == Security::None {
                    "servers usually offer AUTH only after STARTTLS: set security starttls"
                } else {
                    "the server does not accept logins here; is this the submission port (587/465)?"
                }));
            }
            let pick = match mechanism.as_str() {
                "plain" => "PLAIN",
                "login" => "LOGIN",
                "cram-md5" => "CRAM-MD5",
                _ => ["PLAIN", "LOGIN", "CRAM-MD5"]
                    .into_iter()
                    .find(|m| offered.iter().any(|o| o == m))
                    .unwrap_or("PLAIN"),
            };
            if !offered.iter().any(|o| o == pick) {
                return Err(Failure::new(
                    ErrorClass::AuthFailed,
                    format!(
                        "the server does not offer AUTH {pick} (it offers {})",
                        offered.join(" ")
                    ),
                )
                .hint("set auth_mechanism to one the server offers, or auto"));
            }
            let pw = password.as_ref().map(|p| p.expose_secret()).unwrap_or("");
            let done = match pick {
                "PLAIN" => {
                    let token = B64.encode(format!("\0{user}\0{pw}"));
                    command(&mut io, &format!("AUTH PLAIN {token}")).await?
                }
                "LOGIN" => {
                    let r = command(&mut io, "AUTH LOGIN").await?;
                    expect(&r, 334, "AUTH LOGIN")?;
                    let r = command(&mut io, &B64.encode(&user)).await?;
                    if r.code != 334 {
                        return Err(auth_failure(&r, &user));
                    }
                    command(&mut io, &B64.encode(pw)).await?
                }
                _ => {
                    let r = command(&mut io, "AUTH CRAM-MD5").await?;
                    expect(&r, 334, "AUTH CRAM-MD5")?;
                    let challenge = B64
                        .decode(r.lines.first().map(String::as_str).unwrap_or("").trim())
                        .map_err(|_| not_smtp())?;
                    let mut mac = <Hmac<md5::Md5> as Mac>::new_from_slice(pw.as_bytes())
                        .unwrap_or_else(|_| unreachable!());
                    mac.update(&challenge);
                    let digest: String = mac
                        .finalize()
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    command(&mut io, &B64.encode(format!("{user} {digest}"))).await?
                }
            };
            if done.code != 235 {
                return Err(auth_failure(&done, &user));
            }
            Ok((banner, Some(format!("logged in as {user} (AUTH {pick})"))))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "SMTP".into(),
        version: banner,
    });
    let _ = command(&mut io, "QUIT").await;
    Ok(())
}

fn not_smtp() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak SMTP",
    )
    .hint("is this the right port and security? 587 STARTTLS, 465 implicit TLS, 25 relay")
}

fn text(r: &Reply) -> String {
    let t = r.lines.join(" ");
    let clean: String = t.chars().filter(|c| !c.is_control()).take(200).collect();
    clean
}

fn expect(r: &Reply, code: u16, what: &str) -> Result<(), Failure> {
    if r.code == code {
        return Ok(());
    }
    let class = if r.code == 421 {
        ErrorClass::RateLimited
    } else {
        ErrorClass::Unknown
    };
    Err(Failure::new(
        class,
        format!("the server answered {what} with {}: {}", r.code, text(r)),
    ))
}

fn auth_failure(r: &Reply, user: &str) -> Failure {
    match r.code {
        535 | 530 | 534 | 538 | 501 => Failure::new(
            ErrorClass::AuthFailed,
            format!("the server refused the login ({}): {}", r.code, text(r)),
        )
        .hint(format!("check the user name and password of {user}")),
        454 => Failure::new(
            ErrorClass::Unknown,
            format!("temporary authentication failure ({}): {}", r.code, text(r)),
        )
        .hint("retry later"),
        _ => Failure::new(
            ErrorClass::Unknown,
            format!("the server answered AUTH with {}: {}", r.code, text(r)),
        ),
    }
}

fn has_ext(r: &Reply, ext: &str) -> bool {
    r.lines.iter().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(ext))
    })
}

/// The 220 greeting; its text (minus the host name) stands for the server's identity.
async fn greeting<R: AsyncBufRead + AsyncWrite + Unpin>(io: &mut R) -> Result<String, Failure> {
    let r = read_reply(io).await?;
    if r.code != 220 {
        return Err(Failure::new(
            if r.code == 421 || r.code == 554 {
                ErrorClass::RateLimited
            } else {
                ErrorClass::ProtocolMismatch
            },
            format!("the server greeted with {}: {}", r.code, text(&r)),
        ));
    }
    let first = text(&r);
    Ok(first
        .split_once(' ')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or(first))
}

async fn command<R: AsyncBufRead + AsyncWrite + Unpin>(
    io: &mut R,
    line: &str,
) -> Result<Reply, Failure> {
    io.write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| io_failure(&e, "talking to the server"))?;
    io.flush()
        .await
        .map_err(|e| io_failure(&e, "talking to the server"))?;
    read_reply(io).await
}

async fn read_reply<R: AsyncBufRead + Unpin>(io: &mut R) -> Result<Reply, Failure> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let mut buf = Vec::new();
        let n = (&mut *io)
            .take(4096)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| io_failure(&e, "reading the server's reply"))?;
        if n == 0 {
            return Err(io_failure(
                &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                "reading the server's reply",
            ));
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(not_smtp)?;
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_owned());
        if !more {
            return Ok(Reply { code, lines });
        }
    }
    Err(not_smtp())
}
