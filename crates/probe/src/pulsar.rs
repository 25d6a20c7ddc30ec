//! Apache Pulsar's binary protocol by hand (PulsarApi.proto, protobuf written field by
//! field): CONNECT with the token (auth: CONNECTED names the server version, ERROR
//! AuthenticationError → auth_failed), then LOOKUP of the configured topic (query:
//! TopicNotFound → not_found, AuthorizationError → permission_denied) or PING/PONG.

use std::time::Duration;

use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

// BaseCommand.Type values; each command's field in BaseCommand has the same number.
const CONNECT: u64 = 2;
const CONNECTED: u64 = 3;
const ERROR: u64 = 14;
const PING: u64 = 18;
const PONG: u64 = 19;
const LOOKUP: u64 = 23;
const LOOKUP_RESPONSE: u64 = 24;
const AUTH_CHALLENGE: u64 = 36;

// ServerError values.
const AUTHENTICATION_ERROR: u64 = 3;
const AUTHORIZATION_ERROR: u64 = 4;
const TOPIC_NOT_FOUND: u64 = 11;
const TOO_MANY_REQUESTS: u64 = 14;
const INVALID_TOPIC_NAME: u64 = 17;

const PROTOCOL_VERSION: u64 = 15;
const MAX_FRAME: usize = 5 * 1024 * 1024;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(n: u64, v: u64, out: &mut Vec<u8>) {
    varint(n << 3, out);
    varint(v, out);
}

fn field_bytes(n: u64, v: &[u8], out: &mut Vec<u8>) {
    varint((n << 3) | 2, out);
    varint(v.len() as u64, out);
    out.extend_from_slice(v);
}

/// A decoded protobuf field: varint or length-delimited.
#[derive(Debug)]
enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = read_varint(b, &mut at)?;
        let v = match key & 7 {
            0 => Value::Int(read_varint(b, &mut at)?),
            2 => {
                let n = usize::try_from(read_varint(b, &mut at)?).ok()?;
                let v = b.get(at..at + n)?;
                at += n;
                Value::Bytes(v)
            }
            1 => {
                at += 8;
                Value::Int(0)
            }
            5 => {
                at += 4;
                Value::Int(0)
            }
            _ => return None,
        };
        out.push((key >> 3, v));
    }
    Some(out)
}

fn int(f: &[(u64, Value<'_>)], n: u64) -> Option<u64> {
    f.iter().find_map(|(k, v)| match v {
        Value::Int(i) if *k == n => Some(*i),
        _ => None,
    })
}

fn bytes<'a>(f: &[(u64, Value<'a>)], n: u64) -> Option<&'a [u8]> {
    f.iter().find_map(|(k, v)| match v {
        Value::Bytes(b) if *k == n => Some(*b),
        _ => None,
    })
}

fn text(f: &[(u64, Value<'_>)], n: u64) -> String {
    bytes(f, n)
        .map(|b| crate::plain_http::excerpt(&String::from_utf8_lossy(b)))
        .unwrap_or_default()
}

struct Conn {
    io: Box<dyn Io>,
}

impl Conn {
    /// Sends BaseCommand{type, <type> = inner} and returns the answer's (type, inner).
    async fn call(
        &mut self,
        ty: u64,
        inner: &[u8],
        while_: &str,
    ) -> Result<(u64, Vec<u8>), Failure> {
        let mut cmd = Vec::new();
        field_varint(1, ty, &mut cmd);
        field_bytes(ty, inner, &mut cmd);
        let mut frame = Vec::with_capacity(cmd.len() + 8);
        frame.extend_from_slice(&((cmd.len() + 4) as u32).to_be_bytes());
        frame.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        frame.extend_from_slice(&cmd);
        self.io
            .write_all(&frame)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        loop {
            let mut h = [0u8; 8];
            self.io
                .read_exact(&mut h)
                .await
                .map_err(|e| io_failure(&e, while_))?;
            let total = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
            if !(4..=MAX_FRAME).contains(&total) || size + 4 > total {
                return Err(not_pulsar());
            }
            let mut rest = vec![0u8; total - 4];
            self.io
                .read_exact(&mut rest)
                .await
                .map_err(|e| io_failure(&e, while_))?;
            let f = fields(&rest[..size]).ok_or_else(not_pulsar)?;
            let got = int(&f, 1).ok_or_else(not_pulsar)?;
            if got == PING {
                // The broker's keep-alive: answer and keep waiting.
                let mut pong = Vec::new();
                field_varint(1, PONG, &mut pong);
                field_bytes(PONG, &[], &mut pong);
                let mut frame = ((pong.len() + 4) as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&(pong.len() as u32).to_be_bytes());
                frame.extend_from_slice(&pong);
                self.io
                    .write_all(&frame)
                    .await
                    .map_err(|e| io_failure(&e, while_))?;
                continue;
            }
            let inner = bytes(&f, got).unwrap_or_default().to_vec();
            return Ok((got, inner));
        }
    }
}

fn not_pulsar() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer in Pulsar's binary protocol",
    )
    .hint("is this the broker's service port (6650, or 6651 with TLS)?")
}

fn server_error(code: u64, message: &str, what: &str) -> Failure {
    let text = format!("{what}: {message} (ServerError {code})");
    match code {
        AUTHENTICATION_ERROR => Failure::new(ErrorClass::AuthFailed, text)
            .hint("check the token: it may be expired, or signed with another key"),
        AUTHORIZATION_ERROR => Failure::new(ErrorClass::PermissionDenied, text)
            .hint("the role needs the consume or produce permission on the namespace"),
        TOPIC_NOT_FOUND | INVALID_TOPIC_NAME => Failure::new(ErrorClass::NotFound, text)
            .hint("check the topic name and its tenant and namespace"),
        TOO_MANY_REQUESTS => Failure::new(ErrorClass::RateLimited, text),
        _ => Failure::new(ErrorClass::Unknown, text),
    }
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
    let (host, port, use_tls, token) = run
        .stage(S::Resolve, async {
            let raw = t.required_str("service_url")?;
            let bad = || {
                Failure::new(
                    ErrorClass::InvalidSettings,
                    "the service URL must be pulsar://host:port or pulsar+ssl://host:port",
                )
            };
            let url = Url::parse(raw).map_err(|_| bad())?;
            let use_tls = match url.scheme() {
                "pulsar" => false,
                "pulsar+ssl" => true,
                _ => return Err(bad()),
            };
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "the service URL must not carry credentials",
                ));
            }
            let host = url
                .host_str()
                .ok_or_else(bad)?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = url.port().unwrap_or(if use_tls { 6651 } else { 6650 });
            let token = match t.str("auth_method").unwrap_or("none") {
                "none" | "tls" => None,
                "token" => Some(t.secret("token").cloned().ok_or_else(|| {
                    Failure::new(
                        ErrorClass::InvalidSettings,
                        "the JWT token is required to test this connection",
                    )
                })?),
                other => return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    format!("testing `{other}` authentication is not implemented yet"),
                )
                .hint(
                    "the connection was not contacted; token and TLS authentication can be tested",
                )),
            };
            let d = format!("{host}:{port}, {}", if use_tls { "TLS" } else { "no TLS" });
            Ok(((host, port, use_tls, token), Some(d)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let io: Box<dyn Io> = if use_tls {
        let mode = verify_unless(t, "tls_verify", VerifyMode::None);
        let opts = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
        let host = &checked.host;
        let io = run
            .stage(S::Tls, async {
                let (s, d) = tls::handshake(tcp, &opts, host).await?;
                Ok((Box::new(s) as Box<dyn Io>, Some(d)))
            })
            .await?;
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
        io
    } else {
        run.skip(S::Tls, "pulsar:// (no TLS)");
        run.warn("the connection is not encrypted (pulsar://)");
        Box::new(tcp)
    };
    let mut conn = Conn { io };
    let tls_auth = t.str("auth_method") == Some("tls");

    let version = run
        .stage(S::Auth, async {
            let mut connect = Vec::new();
            field_bytes(
                1,
                format!("patchbay-{}", env!("CARGO_PKG_VERSION")).as_bytes(),
                &mut connect,
            );
            if let Some(tok) = &token {
                field_bytes(3, tok.expose_secret().as_bytes(), &mut connect);
                field_bytes(5, b"token", &mut connect);
            } else if tls_auth {
                field_bytes(5, b"tls", &mut connect);
            }
            field_varint(4, PROTOCOL_VERSION, &mut connect);
            let (ty, inner) = conn.call(CONNECT, &connect, "connecting").await?;
            let f = fields(&inner).ok_or_else(not_pulsar)?;
            match ty {
                CONNECTED => {
                    let v = text(&f, 1);
                    let detail = if token.is_some() {
                        "CONNECTED with the token"
                    } else {
                        "CONNECTED"
                    };
                    Ok((v, Some(detail.to_owned())))
                }
                ERROR => Err(server_error(
                    int(&f, 2).unwrap_or(0),
                    &text(&f, 3),
                    "the broker refused CONNECT",
                )),
                AUTH_CHALLENGE => Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "the broker asks for an authentication challenge, which is not implemented yet",
                )),
                _ => Err(not_pulsar()),
            }
        })
        .await?;
    if token.is_none() && !tls_auth {
        run.warn("the broker accepted a connection without authentication");
    }
    let topic = t.str("topic").map(str::to_owned);
    run.stage(S::Query, async {
        match &topic {
            Some(topic) => {
                let mut lookup = Vec::new();
                field_bytes(1, topic.as_bytes(), &mut lookup);
                field_varint(2, 1, &mut lookup);
                field_varint(3, 0, &mut lookup);
                let (ty, inner) = conn.call(LOOKUP, &lookup, "looking the topic up").await?;
                let f = fields(&inner).ok_or_else(not_pulsar)?;
                match (ty, int(&f, 3)) {
                    (LOOKUP_RESPONSE, Some(0 | 1)) => {
                        Ok(((), Some(format!("topic {topic} found (lookup answered)"))))
                    }
                    (LOOKUP_RESPONSE, Some(2)) => Err(server_error(
                        int(&f, 6).unwrap_or(0),
                        &text(&f, 7),
                        "the topic lookup failed",
                    )),
                    (ERROR, _) => Err(server_error(
                        int(&f, 2).unwrap_or(0),
                        &text(&f, 3),
                        "the topic lookup failed",
                    )),
                    _ => Err(not_pulsar()),
                }
            }
            None => {
                let (ty, _) = conn.call(PING, &[], "sending PING").await?;
                if ty == PONG {
                    Ok(((), Some("PING answered (no topic set)".to_owned())))
                } else {
                    Err(not_pulsar())
                }
            }
        }
    })
    .await?;
    let version = version
        .strip_prefix("Pulsar Server")
        .map(|v| v.trim_start_matches(['-', ' ']).to_owned())
        .unwrap_or(version);
    run.server = Some(ServerInfo {
        product: "Apache Pulsar".into(),
        version: if version.is_empty() {
            "unknown".into()
        } else {
            version
        },
    });
    Ok(())
}
