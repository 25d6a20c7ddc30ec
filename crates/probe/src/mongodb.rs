//! MongoDB: OP_MSG by hand with a minimal BSON codec. `hello` (tls/auth: the server
//! answers before login; maxWireVersion hints at the version), SCRAM-SHA-256 via
//! saslStart/saslContinue (scram.rs; code 18 AuthenticationFailed → auth_failed), then
//! `ping`, `buildInfo` (the version) and `listCollections` on the database (query; 13
//! Unauthorized → permission_denied).

use std::time::Duration;

use patchbay_crypto::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::scram::{Hash, Scram};
use crate::tls::{self, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const OP_MSG: i32 = 2013;
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The BSON values the probe reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Bson {
    Double(f64),
    Str(String),
    Doc(Doc),
    Array(Vec<Bson>),
    Binary(Vec<u8>),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
    /// Any other type, kept as its raw bytes' length only.
    Other,
}

pub type Doc = Vec<(String, Bson)>;

pub fn get<'a>(d: &'a Doc, key: &str) -> Option<&'a Bson> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn num(d: &Doc, key: &str) -> Option<f64> {
    match get(d, key)? {
        Bson::Double(f) => Some(*f),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn text<'a>(d: &'a Doc, key: &str) -> Option<&'a str> {
    match get(d, key)? {
        Bson::Str(s) => Some(s),
        _ => None,
    }
}

pub fn encode(d: &Doc) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    for (k, v) in d {
        let ty = match v {
            Bson::Double(_) => 0x01,
            Bson::Str(_) => 0x02,
            Bson::Doc(_) => 0x03,
            Bson::Array(_) => 0x04,
            Bson::Binary(_) => 0x05,
            Bson::Bool(_) => 0x08,
            Bson::Null | Bson::Other => 0x0A,
            Bson::Int32(_) => 0x10,
            Bson::Int64(_) => 0x12,
        };
        out.push(ty);
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        match v {
            Bson::Double(f) => out.extend_from_slice(&f.to_le_bytes()),
            Bson::Str(s) => {
                out.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Bson::Doc(d) => out.extend_from_slice(&encode(d)),
            Bson::Array(a) => {
                let d: Doc = a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v.clone()))
                    .collect();
                out.extend_from_slice(&encode(&d));
            }
            Bson::Binary(b) => {
                out.extend_from_slice(&(b.len() as i32).to_le_bytes());
                out.push(0);
                out.extend_from_slice(b);
            }
            Bson::Bool(b) => out.push(u8::from(*b)),
            Bson::Null | Bson::Other => {}
            Bson::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
            Bson::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
        }
    }
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Decodes one document at the start of `b`.
pub fn decode(b: &[u8]) -> Option<Doc> {
    let len = i32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(4..len.checked_sub(1)?)?;
    let mut d = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let ty = body[i];
        i += 1;
        let end = i + body[i..].iter().position(|c| *c == 0)?;
        let key = String::from_utf8_lossy(&body[i..end]).into_owned();
        i = end + 1;
        let rest = &body[i..];
        let i32_at = |at: usize| -> Option<i32> {
            Some(i32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?))
        };
        let (v, used) = match ty {
            0x01 => (
                Bson::Double(f64::from_le_bytes(rest.get(..8)?.try_into().ok()?)),
                8,
            ),
            0x02 | 0x0D | 0x0E => {
                let n = usize::try_from(i32_at(0)?).ok()?;
                let s = rest.get(4..4 + n.checked_sub(1)?)?;
                (Bson::Str(String::from_utf8_lossy(s).into_owned()), 4 + n)
            }
            0x03 | 0x04 => {
                let n = usize::try_from(i32_at(0)?).ok()?;
                let inner = decode(rest.get(..n)?)?;
                let v = if ty == 0x03 {
                    Bson::Doc(inner)
                } else {
                    Bson::Array(inner.into_iter().map(|(_, v)| v).collect())
                };
                (v, n)
            }
            0x05 => {
                let n = usize::try_from(i32_at(0)?).ok()?;
                (Bson::Binary(rest.get(5..5 + n)?.to_vec()), 5 + n)
            }
            0x07 => (Bson::Other, 12),
            0x08 => (Bson::Bool(*rest.first()? != 0), 1),
            0x09 | 0x11 => (Bson::Other, 8),
            0x0A | 0x06 | 0xFF | 0x7F => (Bson::Null, 0),
            0x10 => (Bson::Int32(i32_at(0)?), 4),
            0x12 => (
                Bson::Int64(i64::from_le_bytes(rest.get(..8)?.try_into().ok()?)),
                8,
            ),
            0x13 => (Bson::Other, 16),
            _ => return None,
        };
        i += used;
        d.push((key, v));
    }
    Some(d)
}

struct Params {
    host: String,
    port: u16,
    database: String,
    auth_source: String,
    user: Option<String>,
    password: Option<SecretString>,
    mechanism: String,
    tls: bool,
    opts: TlsOptions,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_host(h: &str) -> Result<(String, u16), Failure> {
    let bad = || {
        Failure::new(
            ErrorClass::InvalidSettings,
            format!("`{h}` is not host:port"),
        )
    };
    match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            if host.contains(':') && !host.starts_with('[') {
                return Ok((h.to_owned(), 27017));
            }
            Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
        }
        _ => Ok((h.to_owned(), 27017)),
    }
}

fn params(t: &Target<'_>) -> Result<(Params, String), Failure> {
    let mut database = t.str("database").map(str::to_owned);
    let mut auth_source = t.str("auth_source").map(str::to_owned);
    let mut mechanism = t
        .str("auth_mechanism")
        .unwrap_or("SCRAM-SHA-256")
        .to_owned();
    let mut tls = t.bool("tls").unwrap_or(false);
    let mut user = t.str("username").map(str::to_owned);
    let mut password = t.secret("password").cloned();
    let (host, port) = if let Some(cs) = t.secret("connection_string") {
        let cs = cs.expose_secret();
        if cs.starts_with("mongodb+srv://") {
            return Err(Failure::new(
                ErrorClass::NotImplemented,
                "testing mongodb+srv:// connection strings (DNS SRV lookup) is not implemented yet",
            )
            .hint("the connection was not contacted; use a mongodb:// string or the host list"));
        }
        let rest = cs.strip_prefix("mongodb://").ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the connection string must start with mongodb://",
            )
        })?;
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let hosts = match authority.rsplit_once('@') {
            Some((cred, hosts)) => {
                let (u, p) = cred.split_once(':').unwrap_or((cred, ""));
                user = Some(pct_decode(u));
                if !p.is_empty() {
                    password = Some(SecretString::new(pct_decode(p)));
                }
                hosts
            }
            None => authority,
        };
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let path = path.trim_start_matches('/');
        if !path.is_empty() && database.is_none() {
            database = Some(pct_decode(path));
        }
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k.to_ascii_lowercase().as_str() {
                "authsource" => auth_source = Some(pct_decode(v)),
                "authmechanism" => mechanism = pct_decode(v),
                "tls" | "ssl" => tls = v == "true",
                _ => {}
            }
        }
        split_host(hosts.split(',').next().unwrap_or_default())?
    } else {
        let first = t
            .value("hosts")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                Failure::new(
                    ErrorClass::InvalidSettings,
                    "a connection string or a host list is required to test this connection",
                )
            })?;
        split_host(first)?
    };
    if host.is_empty() {
        return Err(Failure::new(ErrorClass::InvalidSettings, "no host is set"));
    }
    let database = database.unwrap_or_else(|| "admin".into());
    let auth_source = auth_source.unwrap_or_else(|| "admin".into());
    // MongoDB names the flag the other way round.
    let mode = if t.bool("tls_allow_invalid_hostnames") == Some(true) {
        VerifyMode::CaOnly
    } else {
        VerifyMode::Full
    };
    let opts = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
    let detail = format!(
        "{}{host}:{port}/{database}, {}",
        user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
        if tls { "TLS" } else { "no TLS" }
    );
    Ok((
        Params {
            host,
            port,
            database,
            auth_source,
            user,
            password,
            mechanism,
            tls,
            opts,
        },
        detail,
    ))
}

struct Conn {
    io: Box<dyn Io>,
    next_id: i32,
}

impl Conn {
    /// One command (OP_MSG, section kind 0) and its answer document.
    async fn command(&mut self, mut cmd: Doc, db: &str, while_: &str) -> Result<Doc, Failure> {
        cmd.push(("$db".into(), Bson::Str(db.into())));
        let body = encode(&cmd);
        self.next_id += 1;
        let len = 16 + 4 + 1 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as i32).to_le_bytes());
        msg.extend_from_slice(&self.next_id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&OP_MSG.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        self.io
            .write_all(&msg)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        let mut h = [0u8; 16];
        self.io
            .read_exact(&mut h)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        let len = i32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let op = i32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if !(21..=MAX_MESSAGE).contains(&len) || op != OP_MSG {
            return Err(not_mongo());
        }
        let mut rest = vec![0u8; len - 16];
        self.io
            .read_exact(&mut rest)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        if rest[4] != 0 {
            return Err(not_mongo());
        }
        decode(&rest[5..]).ok_or_else(not_mongo)
    }
}

fn not_mongo() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer in MongoDB's wire protocol (OP_MSG)",
    )
    .hint("is this the right port for MongoDB (27017 by default)?")
}

/// `ok: 0` as a failure: code 18 → auth_failed, 13 → permission_denied.
fn check_ok(d: Doc, what: &str) -> Result<Doc, Failure> {
    if num(&d, "ok") == Some(1.0) {
        return Ok(d);
    }
    let code = num(&d, "code").unwrap_or(0.0) as i64;
    let msg = crate::plain_http::excerpt(text(&d, "errmsg").unwrap_or("no message"));
    let text = format!("{what} failed: {msg} (code {code})");
    Err(match code {
        18 => Failure::new(ErrorClass::AuthFailed, text)
            .hint("check the user name, password and auth database (authSource)"),
        13 => Failure::new(ErrorClass::PermissionDenied, text)
            .hint("the user needs a role that may list the database's collections (read)"),
        26 => Failure::new(ErrorClass::NotFound, text),
        _ => Failure::new(ErrorClass::Unknown, text),
    })
}

fn version_hint(max_wire: i64) -> &'static str {
    match max_wire {
        25.. => "8.0 or later",
        21..=24 => "7.0",
        17..=20 => "6.0",
        13..=16 => "5.0",
        9..=12 => "4.4",
        8 => "4.2",
        7 => "4.0",
        6 => "3.6",
        _ => "older than 3.6",
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
    let p = run
        .stage(S::Resolve, async {
            let (p, d) = params(t)?;
            if p.user.is_some() && p.mechanism != "SCRAM-SHA-256" {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    format!(
                        "testing the {} mechanism is not implemented yet",
                        p.mechanism
                    ),
                )
                .hint("the connection was not contacted; SCRAM-SHA-256 logins can be tested"));
            }
            if p.user.is_some() && p.password.is_none() {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "the password is required to test this connection",
                ));
            }
            Ok((p, Some(d)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &p.host, p.port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut conn = if p.tls {
        let host = &checked.host;
        let opts = &p.opts;
        let io = run
            .stage(S::Tls, async {
                let (s, d) = tls::handshake(tcp, opts, host).await?;
                Ok((Box::new(s) as Box<dyn Io>, Some(d)))
            })
            .await?;
        if let Some(w) = p.opts.warning() {
            run.warn(w);
        }
        Conn { io, next_id: 0 }
    } else {
        run.skip(S::Tls, "tls is off");
        run.warn("the connection is not encrypted (tls off)");
        Conn {
            io: Box::new(tcp),
            next_id: 0,
        }
    };

    let user = p.user.clone();
    let password = p.password.clone();
    let auth_source = p.auth_source.clone();
    let max_wire = run
        .stage(S::Auth, async {
            let hello = vec![
                ("hello".into(), Bson::Int32(1)),
                (
                    "client".into(),
                    Bson::Doc(vec![(
                        "application".into(),
                        Bson::Doc(vec![("name".into(), Bson::Str("patchbay".into()))]),
                    )]),
                ),
            ];
            let h = check_ok(
                conn.command(hello, "admin", "sending hello").await?,
                "hello",
            )?;
            let max_wire = num(&h, "maxWireVersion").unwrap_or(0.0) as i64;
            let (Some(user), Some(password)) = (user, password) else {
                return Ok((max_wire, Some("hello answered; no credentials set".into())));
            };
            let mut scram = Scram::new(Hash::Sha256, &user, &password);
            let start = vec![
                ("saslStart".into(), Bson::Int32(1)),
                ("mechanism".into(), Bson::Str("SCRAM-SHA-256".into())),
                (
                    "payload".into(),
                    Bson::Binary(scram.client_first().into_bytes()),
                ),
                (
                    "options".into(),
                    Bson::Doc(vec![("skipEmptyExchange".into(), Bson::Bool(true))]),
                ),
            ];
            let first = check_ok(
                conn.command(start, &auth_source, "logging in").await?,
                "authentication",
            )?;
            let conv = get(&first, "conversationId")
                .cloned()
                .unwrap_or(Bson::Int32(1));
            let server_first = match get(&first, "payload") {
                Some(Bson::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err(not_mongo()),
            };
            let client_final = scram.client_final(&server_first)?;
            let cont = vec![
                ("saslContinue".into(), Bson::Int32(1)),
                ("conversationId".into(), conv.clone()),
                ("payload".into(), Bson::Binary(client_final.into_bytes())),
            ];
            let mut last = check_ok(
                conn.command(cont, &auth_source, "logging in").await?,
                "authentication",
            )?;
            match get(&last, "payload") {
                Some(Bson::Binary(b)) => scram.verify_server(&String::from_utf8_lossy(b))?,
                _ => return Err(not_mongo()),
            }
            if get(&last, "done") != Some(&Bson::Bool(true)) {
                let empty = vec![
                    ("saslContinue".into(), Bson::Int32(1)),
                    ("conversationId".into(), conv),
                    ("payload".into(), Bson::Binary(Vec::new())),
                ];
                last = check_ok(
                    conn.command(empty, &auth_source, "logging in").await?,
                    "authentication",
                )?;
                if get(&last, "done") != Some(&Bson::Bool(true)) {
                    return Err(not_mongo());
                }
            }
            Ok((
                max_wire,
                Some(format!(
                    "SCRAM-SHA-256 login as {user} (auth database {auth_source})"
                )),
            ))
        })
        .await?;

    let db = p.database.clone();
    let (version, collections) = run
        .stage(S::Query, async {
            check_ok(
                conn.command(vec![("ping".into(), Bson::Int32(1))], &db, "sending ping")
                    .await?,
                "ping",
            )?;
            let info = conn
                .command(
                    vec![("buildInfo".into(), Bson::Int32(1))],
                    "admin",
                    "asking the version",
                )
                .await?;
            let version = text(&info, "version").map(str::to_owned);
            let list = check_ok(
                conn.command(
                    vec![
                        ("listCollections".into(), Bson::Int32(1)),
                        ("nameOnly".into(), Bson::Bool(true)),
                        ("authorizedCollections".into(), Bson::Bool(true)),
                    ],
                    &db,
                    "listing collections",
                )
                .await?,
                "listCollections",
            )?;
            let count = match get(&list, "cursor") {
                Some(Bson::Doc(c)) => match get(c, "firstBatch") {
                    Some(Bson::Array(a)) => a.len(),
                    _ => 0,
                },
                _ => 0,
            };
            Ok((
                (version, count),
                Some(format!(
                    "ping and listCollections on {db}: {count} collection(s) in the first batch"
                )),
            ))
        })
        .await?;
    if collections == 0 {
        run.warn(format!(
            "the database {} has no collections visible to this user (MongoDB creates databases on first write: check the name)",
            p.database
        ));
    }
    run.server = Some(ServerInfo {
        product: "MongoDB".into(),
        version: version
            .unwrap_or_else(|| format!("{} (wire version {max_wire})", version_hint(max_wire))),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bson_round_trips() {
        let d: Doc = vec![
            ("a".into(), Bson::Int32(1)),
            ("b".into(), Bson::Str("x".into())),
            ("c".into(), Bson::Binary(vec![1, 2])),
            (
                "d".into(),
                Bson::Array(vec![Bson::Bool(true), Bson::Double(1.5)]),
            ),
            ("e".into(), Bson::Doc(vec![("f".into(), Bson::Int64(7))])),
        ];
        assert_eq!(decode(&encode(&d)).unwrap(), d);
    }

    #[test]
    fn connection_strings_are_percent_decoded() {
        assert_eq!(pct_decode("p%40ss%3A"), "p@ss:");
    }
}
