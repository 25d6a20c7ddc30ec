//! Redis / Valkey probe over RESP2: optional TLS, AUTH (user + password or password only),
//! PING, SELECT of the configured database, INFO server for the version.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

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
    let (host, port, db, use_tls, opts) = run
        .stage(S::Resolve, async {
            let host = t.required_str("host")?.to_owned();
            let port = t.port("port")?;
            let db = t.int("database").unwrap_or(0);
            if t.str("mode").is_some_and(|m| m != "standalone") {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing is implemented for standalone Redis only (not sentinel or cluster mode yet)",
                ));
            }
            let use_tls = t.bool("tls").unwrap_or(false);
            let mode = verify_unless(t, "tls_verify", VerifyMode::None);
            let opts = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
            let detail = format!("{host}:{port} database {db}{}", if use_tls { ", TLS" } else { "" });
            Ok(((host, port, db, use_tls, opts), Some(detail)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let io: Box<dyn Io> = if use_tls {
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
        Box::new(tcp)
    };
    let mut conn = Resp(BufReader::new(io));
    let user = t.str("username").map(str::to_owned);
    match t.secret("password") {
        Some(pw) => {
            run.stage(S::Auth, async {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(u) = &user {
                    args.push(u.as_bytes());
                }
                args.push(pw.expose_secret().as_bytes());
                match conn.call(&args).await? {
                    Reply::Simple(_) => Ok((
                        (),
                        Some(match &user {
                            Some(u) => format!("authenticated as {u}"),
                            None => "authenticated with the password".to_owned(),
                        }),
                    )),
                    Reply::Error(e) => Err(auth_error(&e)),
                    _ => Err(not_redis()),
                }
            })
            .await?
        }
        None => {
            // No password: PING tells whether the server needs one (NOAUTH).
            run.stage(S::Auth, async {
                match conn.call(&[b"PING"]).await? {
                    Reply::Error(e) => Err(auth_error(&e)),
                    _ => Ok((
                        (),
                        Some("no password set; the server does not ask for one".to_owned()),
                    )),
                }
            })
            .await?
        }
    }
    let version = run
        .stage(S::Query, async {
            match conn.call(&[b"PING"]).await? {
                Reply::Simple(s) if s == "PONG" => {}
                Reply::Error(e) => return Err(auth_error(&e)),
                _ => return Err(not_redis()),
            }
            if db != 0 {
                let n = db.to_string();
                if let Reply::Error(e) = conn.call(&[b"SELECT", n.as_bytes()]).await? {
                    return Err(Failure::new(
                        ErrorClass::NotFound,
                        format!("database index {db} cannot be selected: {}", first_word_msg(&e)),
                    )
                    .hint("the server has fewer databases (see `databases` in redis.conf), or runs in cluster mode (database 0 only)"));
                }
            }
            let version = match conn.call(&[b"INFO", b"server"]).await? {
                Reply::Bulk(info) => info
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("valkey_version:")
                            .map(|v| ("Valkey", v))
                            .or_else(|| l.strip_prefix("redis_version:").map(|v| ("Redis", v)))
                    })
                    .map(|(p, v)| (p.to_owned(), v.trim().to_owned())),
                Reply::Error(e) if e.starts_with("NOPERM") => None,
                Reply::Error(e) => return Err(auth_error(&e)),
                _ => None,
            };
            Ok((version, Some("PING answered PONG".to_owned())))
        })
        .await?;
    if let Some((product, version)) = version {
        run.server = Some(ServerInfo { product, version });
    }
    Ok(())
}

fn not_redis() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak the Redis protocol",
    )
    .hint("is this the right port? Redis listens on 6379 by default; is TLS required?")
}

/// Only the error code and a fixed message: server text could echo what was sent.
fn first_word_msg(e: &str) -> &str {
    e.split_whitespace().next().unwrap_or("ERR")
}

fn auth_error(e: &str) -> Failure {
    let code = first_word_msg(e);
    match code {
        "WRONGPASS" => Failure::new(
            ErrorClass::AuthFailed,
            "the server rejected the user name or password (WRONGPASS)",
        )
        .hint("check the password (and the ACL user name, if set)"),
        "NOAUTH" => Failure::new(
            ErrorClass::AuthFailed,
            "the server requires a password (NOAUTH)",
        )
        .hint("set the connection's password"),
        "NOPERM" => Failure::new(
            ErrorClass::PermissionDenied,
            "the ACL user may not run this command (NOPERM)",
        )
        .hint("grant the user +ping and +info, or test with a user that has them"),
        "ERR" if e.contains("password") || e.contains("AUTH") => {
            Failure::new(ErrorClass::AuthFailed, "the server rejected the password")
                .hint("check the password; a server without requirepass rejects AUTH")
        }
        _ => Failure::new(
            ErrorClass::Unknown,
            format!("the server answered an error ({code})"),
        ),
    }
}

enum Reply {
    Simple(String),
    Error(String),
    Int,
    Bulk(String),
    Nil,
    Array,
}

struct Resp(BufReader<Box<dyn Io>>);

impl Resp {
    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, Failure> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        let w = self.0.get_mut();
        w.write_all(&out)
            .await
            .map_err(|e| io_failure(&e, "sending a command"))?;
        w.flush()
            .await
            .map_err(|e| io_failure(&e, "sending a command"))?;
        self.read().await
    }

    async fn line(&mut self) -> Result<String, Failure> {
        let mut buf = Vec::new();
        let n = (&mut self.0)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| io_failure(&e, "reading the answer"))?;
        if n == 0 {
            return Err(io_failure(
                &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                "reading the answer",
            ));
        }
        if !buf.ends_with(b"\r\n") {
            return Err(not_redis());
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| not_redis())
    }

    async fn read(&mut self) -> Result<Reply, Failure> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(not_redis)?;
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Int),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| not_redis())?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = usize::try_from(len).map_err(|_| not_redis())?;
                if len > 1 << 20 {
                    return Err(not_redis());
                }
                let mut data = vec![0u8; len + 2];
                self.0
                    .read_exact(&mut data)
                    .await
                    .map_err(|e| io_failure(&e, "reading the answer"))?;
                data.truncate(len);
                Ok(Reply::Bulk(String::from_utf8_lossy(&data).into_owned()))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| not_redis())?;
                for _ in 0..n.clamp(0, 1024) {
                    Box::pin(self.read()).await?;
                }
                Ok(Reply::Array)
            }
            _ => Err(not_redis()),
        }
    }
}
