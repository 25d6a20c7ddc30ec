//! Apache Cassandra (and CQL-compatible servers) over the CQL native protocol v4, by hand:
//! OPTIONS/SUPPORTED and STARTUP (auth: the server answers READY or AUTHENTICATE), then
//! the PasswordAuthenticator's AUTH_RESPONSE (error 0x0100 → auth_failed);
//! `SELECT release_version FROM system.local` (query: `server`) and `USE <keyspace>`
//! (0x2200 → not_found).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const OP_ERROR: u8 = 0x00;
const OP_STARTUP: u8 = 0x01;
const OP_READY: u8 = 0x02;
const OP_AUTHENTICATE: u8 = 0x03;
const OP_OPTIONS: u8 = 0x05;
const OP_SUPPORTED: u8 = 0x06;
const OP_QUERY: u8 = 0x07;
const OP_RESULT: u8 = 0x08;
const OP_AUTH_CHALLENGE: u8 = 0x0E;
const OP_AUTH_RESPONSE: u8 = 0x0F;
const OP_AUTH_SUCCESS: u8 = 0x10;
const MAX_FRAME: usize = 1024 * 1024;

struct Frame {
    opcode: u8,
    body: Vec<u8>,
}

struct Conn {
    io: Box<dyn Io>,
    stream: i16,
}

impl Conn {
    async fn call(&mut self, opcode: u8, body: &[u8], while_: &str) -> Result<Frame, Failure> {
        self.stream += 1;
        let mut f = vec![0x04, 0x00];
        f.extend_from_slice(&self.stream.to_be_bytes());
        f.push(opcode);
        f.extend_from_slice(&(body.len() as i32).to_be_bytes());
        f.extend_from_slice(body);
        self.io
            .write_all(&f)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        let mut h = [0u8; 9];
        self.io
            .read_exact(&mut h)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        if h[0] & 0x80 == 0 || h[0] & 0x7F == 0 || h[0] & 0x7F > 6 {
            return Err(not_cql());
        }
        let len = i32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(not_cql)?;
        let mut body = vec![0u8; len];
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        if h[0] & 0x7F != 0x04 {
            // The server speaks another version: it answers with an ERROR in its own.
            return Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                format!(
                    "the server answered in CQL protocol v{}, and the probe speaks v4",
                    h[0] & 0x7F
                ),
            ));
        }
        Ok(Frame { opcode: h[4], body })
    }
}

fn not_cql() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer in the CQL native protocol",
    )
    .hint("is this the right port for Cassandra (9042 by default)?")
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn read_string(b: &[u8], at: &mut usize) -> Option<String> {
    let n = u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]) as usize;
    let s = b.get(*at + 2..*at + 2 + n)?;
    *at += 2 + n;
    Some(String::from_utf8_lossy(s).into_owned())
}

fn read_i32(b: &[u8], at: &mut usize) -> Option<i32> {
    let v = i32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(v)
}

/// ERROR body → (code, message).
fn error_of(f: &Frame) -> (i32, String) {
    let mut at = 0;
    let code = read_i32(&f.body, &mut at).unwrap_or(0);
    let msg = read_string(&f.body, &mut at).unwrap_or_default();
    (code, crate::plain_http::excerpt(&msg))
}

fn classify(f: &Frame, what: &str) -> Failure {
    let (code, msg) = error_of(f);
    let text = format!("{what} failed: {msg} (error 0x{code:04X})");
    match code {
        0x0100 => {
            Failure::new(ErrorClass::AuthFailed, text).hint("check the user name and password")
        }
        0x2100 => Failure::new(ErrorClass::PermissionDenied, text),
        0x2200 if msg.contains("does not exist") || msg.contains("Keyspace") => {
            Failure::new(ErrorClass::NotFound, text).hint("check the keyspace name")
        }
        0x1001 => Failure::new(ErrorClass::RateLimited, text),
        0x000A => Failure::new(ErrorClass::ProtocolMismatch, text),
        _ => Failure::new(ErrorClass::Unknown, text),
    }
}

fn query_body(cql: &str) -> Vec<u8> {
    let mut b = (cql.len() as i32).to_be_bytes().to_vec();
    b.extend_from_slice(cql.as_bytes());
    b.extend_from_slice(&0x0001u16.to_be_bytes()); // consistency ONE
    b.push(0x00); // no flags
    b
}

/// The first cell of the first row of a Rows result, as text.
fn first_cell(b: &[u8]) -> Option<String> {
    let mut at = 0;
    if read_i32(b, &mut at)? != 2 {
        return None;
    }
    let flags = read_i32(b, &mut at)?;
    let columns = read_i32(b, &mut at)?;
    if flags & 0x0002 != 0 {
        let n = usize::try_from(read_i32(b, &mut at)?).ok()?;
        at += n;
    }
    if flags & 0x0004 == 0 {
        if flags & 0x0001 != 0 {
            read_string(b, &mut at)?;
            read_string(b, &mut at)?;
        }
        for _ in 0..columns {
            if flags & 0x0001 == 0 {
                read_string(b, &mut at)?;
                read_string(b, &mut at)?;
            }
            read_string(b, &mut at)?;
            let ty = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
            at += 2;
            if ty == 0x0000 {
                read_string(b, &mut at)?;
            } else if !matches!(ty, 0x0001..=0x0015) {
                return None;
            }
        }
    }
    if read_i32(b, &mut at)? < 1 {
        return None;
    }
    let n = usize::try_from(read_i32(b, &mut at)?).ok()?;
    Some(String::from_utf8_lossy(b.get(at..at + n)?).into_owned())
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
    let (host, port) = run
        .stage(S::Resolve, async {
            let host = t
                .value("contact_points")
                .and_then(|v| v.as_array())
                .and_then(|a| a.first())
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Failure::new(
                        ErrorClass::InvalidSettings,
                        "at least one contact point is required to test this connection",
                    )
                })?
                .to_owned();
            let port = t.port("port")?;
            if t.int("protocol_version").is_some_and(|v| v != 4) {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing with CQL protocol versions other than 4 is not implemented yet",
                )
                .hint("the connection was not contacted; set protocol_version to 4 to test"));
            }
            let d = format!("{host}:{port} (first contact point), CQL v4");
            Ok(((host, port), Some(d)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let io: Box<dyn Io> = if t.bool("ssl_enabled") == Some(true) {
        let mode = verify_unless(t, "ssl_hostname_validation", VerifyMode::CaOnly);
        let pem = PemFields {
            ca: "ssl_ca",
            cert: "ssl_client_certificate",
            key: "ssl_private_key",
        };
        let opts = TlsOptions::from_target(t, Some(mode), pem);
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
        run.skip(S::Tls, "ssl_enabled is off");
        run.warn("the connection is not encrypted (ssl_enabled off)");
        Box::new(tcp)
    };
    let mut conn = Conn { io, stream: 0 };

    let user = t.str("username").map(str::to_owned);
    let password = t.secret("password").cloned();
    let ((), unauthenticated) = run
        .stage(S::Auth, async {
            let sup = conn.call(OP_OPTIONS, &[], "asking the options").await?;
            if sup.opcode != OP_SUPPORTED {
                return Err(not_cql());
            }
            let mut startup = 1u16.to_be_bytes().to_vec();
            startup.extend_from_slice(&string("CQL_VERSION"));
            startup.extend_from_slice(&string("3.0.0"));
            let f = conn.call(OP_STARTUP, &startup, "starting up").await?;
            match f.opcode {
                OP_READY => Ok((
                    ((), true),
                    Some("the server needs no login (READY)".to_owned()),
                )),
                OP_AUTHENTICATE => {
                    let mut at = 0;
                    let authenticator = read_string(&f.body, &mut at).unwrap_or_default();
                    let (Some(user), Some(password)) = (user, password) else {
                        return Err(Failure::new(
                            ErrorClass::AuthFailed,
                            format!("the server requires a login ({authenticator}) and no user name and password are set"),
                        ));
                    };
                    let token = [
                        &[0u8][..],
                        user.as_bytes(),
                        &[0u8],
                        password.expose_secret().as_bytes(),
                    ]
                    .concat();
                    let mut body = (token.len() as i32).to_be_bytes().to_vec();
                    body.extend_from_slice(&token);
                    let f = conn.call(OP_AUTH_RESPONSE, &body, "logging in").await?;
                    match f.opcode {
                        OP_AUTH_SUCCESS => Ok((
                            ((), false),
                            Some(format!("logged in as {user} ({authenticator})")),
                        )),
                        OP_ERROR => Err(classify(&f, "the login")),
                        OP_AUTH_CHALLENGE => Err(Failure::new(
                            ErrorClass::NotImplemented,
                            format!("the authenticator {authenticator} asks for more than a password (SASL challenge), which is not implemented yet"),
                        )),
                        _ => Err(not_cql()),
                    }
                }
                OP_ERROR => Err(classify(&f, "STARTUP")),
                _ => Err(not_cql()),
            }
        })
        .await?;
    if unauthenticated {
        run.warn("the server accepts connections without a login");
    }
    let keyspace = t.str("keyspace").map(str::to_owned);
    let version = run
        .stage(S::Query, async {
            let f = conn
                .call(
                    OP_QUERY,
                    &query_body("SELECT release_version FROM system.local"),
                    "reading the version",
                )
                .await?;
            let version = match f.opcode {
                OP_RESULT => first_cell(&f.body),
                OP_ERROR => return Err(classify(&f, "SELECT release_version")),
                _ => return Err(not_cql()),
            };
            if let Some(ks) = &keyspace {
                let quoted = format!("\"{}\"", ks.replace('"', "\"\""));
                let f = conn
                    .call(
                        OP_QUERY,
                        &query_body(&format!("USE {quoted}")),
                        "using the keyspace",
                    )
                    .await?;
                match f.opcode {
                    OP_RESULT => {}
                    OP_ERROR => return Err(classify(&f, &format!("USE {quoted}"))),
                    _ => return Err(not_cql()),
                }
            }
            let d = match &keyspace {
                Some(ks) => format!("release_version read; keyspace {ks} in use"),
                None => "release_version read".to_owned(),
            };
            Ok((version, Some(d)))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "Apache Cassandra".into(),
        version: version.unwrap_or_else(|| "unknown".into()),
    });
    Ok(())
}
