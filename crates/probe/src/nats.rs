//! NATS probe over the client protocol: the server's INFO (version, whether TLS and auth are
//! required), TLS upgrade after INFO (tls), CONNECT with user/password or token then
//! PING → PONG (auth), and with `jetstream` on a JetStream API request — account info, or
//! the configured stream's info (query). Only the first of the configured servers is tested.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls;
use crate::tls::broker_tls;
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

/// host, port and whether the URL's scheme asks for TLS.
fn server_url(url: &str) -> Result<(String, u16, bool), Failure> {
    let bad = |m: &str| Failure::new(ErrorClass::InvalidSettings, m.to_owned());
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let tls = match scheme {
        "nats" => false,
        "tls" => true,
        _ => return Err(bad("a NATS server URL starts with nats:// or tls://")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "the server URL carries credentials: put them in the username/password or token settings",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("the port must be 1–65535"))?,
        ),
        _ => (authority, 4222),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the server URL has no host"));
    }
    Ok((host.to_owned(), port, tls))
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
) -> Result<(), crate::result::Stopped> {
    let (host, port, use_tls, opts, others) = run
        .stage(S::Resolve, async {
            let servers: Vec<&str> = t
                .value("servers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let first = servers.first().ok_or_else(|| {
                Failure::new(ErrorClass::InvalidSettings, "no NATS server URL is set")
            })?;
            let (host, port, url_tls) = server_url(first)?;
            if t.secret("credentials").is_some() || t.secret("nkey_seed").is_some() {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing with NKey or .creds authentication is not implemented yet",
                )
                .hint("test with a user/password or token, or check with the nats CLI for now"));
            }
            let (tls_setting, opts) = broker_tls(t);
            let use_tls = tls_setting || url_tls;
            let detail = format!(
                "{host}:{port}{}{}",
                if use_tls { ", TLS" } else { "" },
                if servers.len() > 1 {
                    format!(" (first of {} servers)", servers.len())
                } else {
                    String::new()
                }
            );
            Ok(((host, port, use_tls, opts, servers.len() - 1), Some(detail)))
        })
        .await?;
    if others > 0 {
        run.warn(format!(
            "only the first server was tested; {others} more are configured"
        ));
    }
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut plain = BufReader::new(tcp);
    // INFO arrives in clear before any TLS upgrade; reading it belongs to tls (or auth).
    let (io, info): (Box<dyn Io>, Value) = if use_tls {
        let opts = &opts;
        let host = &checked.host;
        let (io, info) = run
            .stage(S::Tls, async {
                let info = read_info(&mut plain).await?;
                if !flag(&info, "tls_required") && !flag(&info, "tls_available") {
                    return Err(Failure::new(
                        ErrorClass::TlsHandshake,
                        "the server does not offer TLS",
                    )
                    .hint("enable TLS on the server, or turn TLS off for this connection"));
                }
                let (s, d) = tls::handshake(plain.into_inner(), opts, host).await?;
                let io: Box<dyn Io> = Box::new(s);
                Ok(((io, info), Some(d)))
            })
            .await?;
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
        (io, info)
    } else {
        let info = run
            .stage(S::Tls, async {
                let info = read_info(&mut plain).await?;
                if flag(&info, "tls_required") {
                    return Err(Failure::new(
                        ErrorClass::TlsHandshake,
                        "the server requires TLS and the connection has it off",
                    )
                    .hint("turn on TLS (or use a tls:// server URL)"));
                }
                Ok((info, Some("TLS is off for this connection".to_owned())))
            })
            .await?;
        run.warn("the connection is not encrypted");
        (Box::new(plain.into_inner()), info)
    };
    run.server = Some(ServerInfo {
        product: "NATS".into(),
        version: info
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    });
    let user = t.str("username").map(str::to_owned);
    let password = t.secret("password").cloned();
    let token = t.secret("token").cloned();
    let auth_required = flag(&info, "auth_required");
    // No-responders (503) needs headers; without them a missing JetStream is a timeout.
    let headers = flag(&info, "headers");
    let mut io = BufReader::new(io);
    run.stage(S::Auth, async {
        let mut connect = json!({
            "verbose": false, "pedantic": false, "tls_required": use_tls,
            "name": "patchbay-probe", "lang": "rust", "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1, "headers": headers, "no_responders": headers,
        });
        let method = if let Some(tok) = &token {
            connect["auth_token"] = json!(tok.expose_secret());
            "token"
        } else if let Some(u) = &user {
            connect["user"] = json!(u);
            connect["pass"] = json!(password.as_ref().map(|p| p.expose_secret()).unwrap_or(""));
            "user and password"
        } else {
            "no credentials"
        };
        let line = format!("CONNECT {connect}\r\nPING\r\n");
        let w = io.get_mut();
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| io_failure(&e, "logging in"))?;
        w.flush().await.map_err(|e| io_failure(&e, "logging in"))?;
        loop {
            let l = read_line(&mut io, "logging in").await?;
            if l == "PONG" {
                break;
            }
            if l == "PING" {
                let _ = io.get_mut().write_all(b"PONG\r\n").await;
                continue;
            }
            if l == "+OK" || l.starts_with("INFO ") {
                continue;
            }
            if let Some(e) = l.strip_prefix("-ERR") {
                return Err(err_failure(e, auth_required && method == "no credentials"));
            }
            return Err(not_nats());
        }
        let detail = if method == "no credentials" {
            "no credentials set; the server does not ask for any".to_owned()
        } else {
            format!("logged in with {method}; PING answered PONG")
        };
        Ok(((), Some(detail)))
    })
    .await?;
    if t.bool("jetstream") != Some(true) {
        return Ok(());
    }
    let stream = t.str("stream").map(str::to_owned);
    run.stage(S::Query, async {
        let subject = match &stream {
            Some(name)
                if name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                format!("$JS.API.STREAM.INFO.{name}")
            }
            Some(_) => {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "a JetStream stream name has only letters, digits, - and _",
                ))
            }
            None => "$JS.API.INFO".to_owned(),
        };
        let inbox = "_INBOX.patchbay-probe";
        let line = format!("SUB {inbox} 1\r\nPUB {subject} {inbox} 0\r\n\r\nPING\r\n");
        let w = io.get_mut();
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| io_failure(&e, "asking JetStream"))?;
        w.flush()
            .await
            .map_err(|e| io_failure(&e, "asking JetStream"))?;
        let answer = loop {
            let l = read_line(&mut io, "asking JetStream").await?;
            if let Some(e) = l.strip_prefix("-ERR") {
                let f = err_failure(e, false);
                return Err(
                    if e.to_ascii_lowercase().contains("permissions violation") {
                        Failure::new(ErrorClass::PermissionDenied, f.message).hint(
                            "allow the user to publish to $JS.API.> and subscribe to _INBOX.>",
                        )
                    } else {
                        f
                    },
                );
            }
            let headed = l.starts_with("HMSG ");
            if !headed && !l.starts_with("MSG ") {
                continue; // PONG, +OK, PING, INFO
            }
            let total: usize = l
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n <= 1 << 20)
                .ok_or_else(not_nats)?;
            let mut body = vec![0u8; total + 2];
            io.read_exact(&mut body)
                .await
                .map_err(|e| io_failure(&e, "asking JetStream"))?;
            body.truncate(total);
            if headed && String::from_utf8_lossy(&body).starts_with("NATS/1.0 503") {
                return Err(Failure::new(
                    ErrorClass::NotFound,
                    "JetStream is not enabled on this server (no responders)",
                )
                .hint(
                    "enable JetStream on the server, or turn jetstream off for this connection",
                ));
            }
            break serde_json::from_slice::<Value>(&body).map_err(|_| not_nats())?;
        };
        if let Some(err) = answer.get("error") {
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(0);
            let text: String = err
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            let message = format!("JetStream: {text} ({code})");
            return Err(match (code, &stream) {
                (404, Some(name)) => Failure::new(ErrorClass::NotFound, message).hint(format!(
                    "stream {name} does not exist: check its name (nats stream ls)"
                )),
                (503, _) => Failure::new(ErrorClass::NotFound, message)
                    .hint("enable JetStream for this account"),
                (401 | 403, _) => Failure::new(ErrorClass::PermissionDenied, message),
                _ => Failure::new(ErrorClass::Unknown, message),
            });
        }
        let detail = match &stream {
            Some(name) => format!("JetStream stream {name} found"),
            None => format!(
                "JetStream account info: {} streams",
                answer.get("streams").and_then(Value::as_u64).unwrap_or(0)
            ),
        };
        Ok(((), Some(detail)))
    })
    .await?;
    Ok(())
}

fn flag(info: &Value, k: &str) -> bool {
    info.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn not_nats() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak the NATS protocol",
    )
    .hint("is this the right port? NATS listens on 4222 by default")
}

fn err_failure(e: &str, no_credentials: bool) -> Failure {
    let text: String = e
        .trim()
        .trim_matches('\'')
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let lower = text.to_ascii_lowercase();
    if lower.contains("authorization violation") || lower.contains("authentication") {
        let hint = if no_credentials {
            "the server requires credentials: set a user and password or a token"
        } else {
            "check the user name and password, or the token"
        };
        return Failure::new(ErrorClass::AuthFailed, format!("server: {text}")).hint(hint);
    }
    if lower.contains("maximum connections") {
        return Failure::new(ErrorClass::RateLimited, format!("server: {text}"));
    }
    Failure::new(ErrorClass::Unknown, format!("server: {text}"))
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    while_: &str,
) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let n = r
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| io_failure(&e, while_))?;
    if n == 0 {
        return Err(io_failure(
            &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            while_,
        ));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(not_nats());
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| not_nats())
}

async fn read_info<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Value, Failure> {
    let line = read_line(r, "waiting for the server's INFO").await?;
    let json = line.strip_prefix("INFO ").ok_or_else(not_nats)?;
    serde_json::from_str(json).map_err(|_| not_nats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_with_defaults_and_refuse_credentials() {
        assert_eq!(
            server_url("nats://n1:4223").unwrap(),
            ("n1".into(), 4223, false)
        );
        assert_eq!(server_url("tls://n1").unwrap(), ("n1".into(), 4222, true));
        assert_eq!(server_url("[::1]:5").unwrap(), ("::1".into(), 5, false));
        assert_eq!(
            server_url("nats://u:p@n1").unwrap_err().class,
            ErrorClass::InvalidSettings
        );
    }
}
