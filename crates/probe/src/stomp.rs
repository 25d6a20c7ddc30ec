//! STOMP 1.2 (ActiveMQ Classic and Artemis, RabbitMQ's STOMP plugin) by hand: optional TLS,
//! CONNECT with login/passcode → CONNECTED (its `server` header names the product) or ERROR
//! (→ `auth_failed`), then DISCONNECT with a receipt the broker must confirm.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeStage as S, Run, ServerInfo, Stopped};
use crate::tls;
use crate::tls::broker_tls;
use crate::{NetworkGuard, ProbeResult, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
/// A CONNECTED or ERROR frame is small; anything longer is not STOMP.
const MAX_FRAME: usize = 64 * 1024;

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

/// A header value of a CONNECT frame: STOMP 1.2 does not escape CONNECT headers, so a
/// line break or NUL would end the header (or the frame) early.
fn header_value<'a>(name: &str, v: &'a str) -> Result<&'a str, Failure> {
    if v.contains(['\n', '\r', '\0']) {
        return Err(Failure::new(
            ErrorClass::InvalidSettings,
            format!(
                "the {name} contains a line break or NUL, which a STOMP CONNECT frame cannot carry"
            ),
        ));
    }
    Ok(v)
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let (host, port, user, use_tls, opts) = run
        .stage(S::Resolve, async {
            match t.str("transport").unwrap_or("stomp") {
                "stomp" => {}
                other => {
                    return Err(Failure::new(
                        ErrorClass::NotImplemented,
                        format!("the test speaks STOMP only, not {other}"),
                    )
                    .hint("enable a STOMP connector on the broker (port 61613) to test it, or check the broker with its own client"))
                }
            }
            let Some(host) = t.str("host") else {
                return Err(Failure::new(
                    if t.str("broker_url").is_some() {
                        ErrorClass::NotImplemented
                    } else {
                        ErrorClass::InvalidSettings
                    },
                    "the test needs a host and port (a broker URL is not tested)",
                ));
            };
            let port = t.port("port")?;
            let user = t
                .str("username")
                .map(|u| header_value("user name", u))
                .transpose()?
                .map(str::to_owned);
            let (use_tls, opts) = broker_tls(t);
            let detail = format!(
                "{}{host}:{port} over STOMP{}",
                user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
                if use_tls { " + TLS" } else { "" }
            );
            Ok(((host.to_owned(), port, user, use_tls, opts), Some(detail)))
        })
        .await?;
    let password = t.secret("password").cloned();
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut io: Box<dyn Io> = if use_tls {
        let s = run
            .stage(S::Tls, async {
                let (s, d) = tls::handshake(tcp, &opts, &checked.host).await?;
                Ok((s, Some(d)))
            })
            .await?;
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
        Box::new(s)
    } else {
        run.skip(S::Tls, "TLS is off for this connection");
        if password.is_some() {
            run.warn("the connection is not encrypted: the passcode travels in clear");
        } else {
            run.warn("the connection is not encrypted");
        }
        Box::new(tcp)
    };
    let vhost = host.clone();
    let server = run
        .stage(S::Auth, async {
            let mut frame =
                format!("CONNECT\naccept-version:1.0,1.1,1.2\nhost:{vhost}\nheart-beat:0,0\n");
            if let Some(u) = &user {
                frame.push_str(&format!("login:{u}\n"));
            }
            if let Some(p) = &password {
                frame.push_str(&format!(
                    "passcode:{}\n",
                    header_value("password", p.expose_secret())?
                ));
            }
            frame.push_str("\n\0");
            io.write_all(frame.as_bytes())
                .await
                .map_err(|e| io_failure(&e, "sending CONNECT"))?;
            let (command, headers) = read_frame(&mut io, "waiting for CONNECTED").await?;
            match command.as_str() {
                "CONNECTED" => {
                    let get = |k: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.as_str())
                    };
                    let (product, version) = match get("server") {
                        Some(s) => match s.split_once('/') {
                            Some((p, v)) => (
                                p.to_owned(),
                                v.split_whitespace().next().unwrap_or("").to_owned(),
                            ),
                            None => (s.to_owned(), String::new()),
                        },
                        None => ("STOMP broker".to_owned(), String::new()),
                    };
                    let detail = format!(
                        "CONNECTED (STOMP {}){}",
                        get("version").unwrap_or("1.0"),
                        user.as_deref()
                            .map(|u| format!(" as {u}"))
                            .unwrap_or_default()
                    );
                    Ok((ServerInfo { product, version }, Some(detail)))
                }
                "ERROR" => Err(connect_error(&headers, user.as_deref())),
                _ => Err(not_stomp()),
            }
        })
        .await?;
    run.server = Some(server);
    run.stage(S::Query, async {
        io.write_all(b"DISCONNECT\nreceipt:patchbay-probe\n\n\0")
            .await
            .map_err(|e| io_failure(&e, "sending DISCONNECT"))?;
        let (command, headers) = read_frame(&mut io, "waiting for the RECEIPT").await?;
        match command.as_str() {
            "RECEIPT" => Ok((
                (),
                Some("the broker confirmed DISCONNECT with a RECEIPT".to_owned()),
            )),
            "ERROR" => Err(Failure::new(
                ErrorClass::Unknown,
                format!(
                    "the broker answered DISCONNECT with ERROR: {}",
                    message(&headers)
                ),
            )),
            _ => Err(not_stomp()),
        }
    })
    .await?;
    let _ = io.shutdown().await;
    Ok(())
}

fn message(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(n, _)| n == "message")
        .map(|(_, v)| v.chars().take(300).collect())
        .unwrap_or_else(|| "(no message)".to_owned())
}

fn connect_error(headers: &[(String, String)], user: Option<&str>) -> Failure {
    let msg = message(headers);
    let lower = msg.to_lowercase();
    if lower.contains("version") && !lower.contains("password") {
        return Failure::new(
            ErrorClass::ProtocolMismatch,
            format!("the broker refused the STOMP version: {msg}"),
        );
    }
    Failure::new(
        ErrorClass::AuthFailed,
        format!("the broker refused CONNECT: {msg}"),
    )
    .hint(match user {
        Some(u) => format!("check the user name {u} and its password on the broker"),
        None => "the broker requires a login: set a user name and password".to_owned(),
    })
}

fn not_stomp() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer like a STOMP broker",
    )
    .hint("is this the broker's STOMP port (61613, or 61614 with TLS)?")
}

/// Reads one frame up to its NUL: the command and the (unescaped) headers; the body is
/// dropped. Heart-beat EOLs before the command are skipped.
async fn read_frame(
    io: &mut Box<dyn Io>,
    while_: &str,
) -> Result<(String, Vec<(String, String)>), Failure> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.iter().position(|b| *b == 0) {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_FRAME {
            return Err(not_stomp());
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Failure::new(
                    ErrorClass::ProtocolMismatch,
                    format!("the server closed the connection while {while_}"),
                )
                .hint("is this the broker's STOMP port, and does it accept this TLS setting?")
            } else {
                not_stomp()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim_start_matches(['\r', '\n']);
    let head = text.split("\n\n").next().unwrap_or("");
    let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
    let command = lines.next().unwrap_or("").to_owned();
    if !command.chars().all(|c| c.is_ascii_uppercase()) || command.is_empty() {
        return Err(not_stomp());
    }
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect();
    Ok((command, headers))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}
