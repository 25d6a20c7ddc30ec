//! SQL Server and Azure Synapse over TDS (MS-TDS), written by hand so each message maps to
//! one stage: PRELOGIN (tls: the server's version and the encryption negotiation), LOGIN7
//! with a SQL login (auth: LOGINACK, or ERROR 18456 → auth_failed, 4060 → not_found), and
//! a `SELECT 1` batch (query).
//!
//! TLS inside TDS (the handshake travels in PRELOGIN packets) is not implemented yet: when
//! the connection asks for encryption or the server requires it, the test says so at `tls`
//! rather than pretend. Only servers that agree to no encryption (`encrypt: optional` and a
//! server without a forced encryption) can be tested to the end today.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{self, io_failure};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const PKT_SQL_BATCH: u8 = 0x01;
const PKT_REPLY: u8 = 0x04;
const PKT_LOGIN7: u8 = 0x10;
const PKT_PRELOGIN: u8 = 0x12;

const ENCRYPT_OFF: u8 = 0x00;
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;
const ENCRYPT_REQ: u8 = 0x03;

const TOKEN_ERROR: u8 = 0xAA;
const TOKEN_INFO: u8 = 0xAB;
const TOKEN_LOGINACK: u8 = 0xAD;
const TOKEN_ENVCHANGE: u8 = 0xE3;
const TOKEN_DONE: u8 = 0xFD;
const TOKEN_FEATUREEXTACK: u8 = 0xAE;

const TDS_7_4: u32 = 0x7400_0004;
const MAX_MESSAGE: usize = 1024 * 1024;

struct Params {
    host: String,
    port: u16,
    database: String,
    user: String,
    encrypt: String,
    app: String,
    read_only: bool,
}

fn params(t: &Target<'_>) -> Result<(Params, String), Failure> {
    let host = t.required_str("host")?.to_owned();
    let port = t.port("port")?;
    let database = t.required_str("database")?.to_owned();
    match t.str("authentication").unwrap_or("sql_password") {
        "sql_password" => {}
        other => {
            return Err(Failure::new(
                ErrorClass::NotImplemented,
                format!("testing `{other}` (Microsoft Entra) logins is not implemented yet"),
            )
            .hint("the connection was not contacted; SQL logins can be tested"))
        }
    }
    if t.str("tenant_id").is_some() && t.str("username").is_none() {
        return Err(Failure::new(
            ErrorClass::NotImplemented,
            "testing Microsoft Entra service principal logins is not implemented yet",
        )
        .hint("the connection was not contacted; SQL logins can be tested"));
    }
    let user = t.required_str("username")?.to_owned();
    let encrypt = t.str("encrypt").unwrap_or("mandatory").to_owned();
    let detail = format!("{user}@{host}:{port}/{database}, encrypt {encrypt}");
    Ok((
        Params {
            host,
            port,
            database,
            user,
            encrypt,
            app: t.str("application_name").unwrap_or("patchbay").to_owned(),
            read_only: t.str("application_intent") == Some("ReadOnly"),
        },
        detail,
    ))
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
            if t.secret("password").is_none() {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "the password is required to test this connection",
                ));
            }
            Ok((p, Some(d)))
        })
        .await?;
    if t.str("instance_name").is_some() {
        run.warn("the instance name is not resolved through SQL Browser: the test used the port");
    }
    let password = t
        .secret("password")
        .cloned()
        .unwrap_or_else(|| patchbay_crypto::SecretString::new(String::new()));
    let checked = run.stage(S::Dns, net::dns(guard, &p.host, p.port)).await?;
    let mut io = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;

    let encrypt = p.encrypt.clone();
    let version = run
        .stage(S::Tls, async {
            if encrypt == "strict" {
                return Err(not_implemented_tls(
                    "encrypt strict (TDS 8) starts with TLS, which is not implemented yet",
                ));
            }
            let ask = if encrypt == "optional" {
                ENCRYPT_NOT_SUP
            } else {
                ENCRYPT_ON
            };
            send(&mut io, PKT_PRELOGIN, &prelogin(ask)).await?;
            let (ty, reply) = receive(&mut io, "reading the PRELOGIN answer").await?;
            if ty != PKT_REPLY {
                return Err(not_tds());
            }
            let (version, server_enc) = parse_prelogin(&reply).ok_or_else(not_tds)?;
            let v = version.clone();
            match (ask, server_enc) {
                (ENCRYPT_NOT_SUP, ENCRYPT_NOT_SUP) => Ok((
                    v,
                    Some(format!(
                        "PRELOGIN: SQL Server {version}; the server agreed to no encryption"
                    )),
                )),
                (ENCRYPT_NOT_SUP, ENCRYPT_REQ) => Err(not_implemented_tls(
                    "the server requires encryption, and TLS inside TDS is not implemented yet",
                )),
                (ENCRYPT_ON, ENCRYPT_NOT_SUP) => Err(Failure::new(
                    ErrorClass::TlsHandshake,
                    "the server does not support encryption, and the connection requires it",
                )
                .hint("enable TLS on the server, or set encrypt to optional")),
                (_, ENCRYPT_ON | ENCRYPT_REQ | ENCRYPT_OFF) => Err(not_implemented_tls(
                    "the server agreed to encrypt, and TLS inside TDS is not implemented yet",
                )),
                _ => Err(not_tds()),
            }
        })
        .await;
    let version = match version {
        Ok(v) => v,
        Err(stopped) => return Err(stopped),
    };
    run.warn(
        "the connection is not encrypted (encrypt optional; the server agreed to no encryption)",
    );

    let login = login7(&p, password.expose_secret());
    let user = p.user.clone();
    let database = p.database.clone();
    let product_version = run
        .stage(S::Auth, async {
            send(&mut io, PKT_LOGIN7, &login).await?;
            let (_, reply) = receive(&mut io, "reading the login answer").await?;
            let tokens = scan(&reply)?;
            if let Some(e) = tokens.error {
                return Err(login_error(e, &user, &database));
            }
            let ack = tokens.loginack.ok_or_else(|| {
                Failure::new(
                    ErrorClass::ProtocolMismatch,
                    "the server answered the login without LOGINACK or ERROR",
                )
            })?;
            Ok((
                ack,
                Some(format!("logged in as {user}, database {database}")),
            ))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "Microsoft SQL Server".into(),
        version: if product_version.is_empty() {
            version
        } else {
            product_version
        },
    });

    run.stage(S::Query, async {
        send(&mut io, PKT_SQL_BATCH, &sql_batch("SELECT 1")).await?;
        let (_, reply) = receive(&mut io, "reading the query answer").await?;
        // Only the first token matters: an ERROR comes first, a result starts with
        // COLMETADATA; the final DONE is checked for its error bit.
        if reply.first() == Some(&TOKEN_ERROR) {
            let e = parse_message(&reply[1..]).ok_or_else(not_tds)?;
            return Err(Failure::new(
                ErrorClass::Unknown,
                format!("SELECT 1 failed: error {}: {}", e.0, e.1),
            ));
        }
        let n = reply.len();
        if n >= 13 && reply[n - 13] == TOKEN_DONE && reply[n - 12] & 0x02 == 0 {
            Ok(((), Some("SELECT 1 succeeded".into())))
        } else {
            Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                "the answer to SELECT 1 did not end with a successful DONE",
            ))
        }
    })
    .await?;
    Ok(())
}

fn not_implemented_tls(msg: &str) -> Failure {
    Failure::new(ErrorClass::NotImplemented, msg).hint(
        "check this connection with the vendor's own client for now; a server that does not force encryption can be tested with encrypt optional",
    )
}

fn not_tds() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer in TDS (SQL Server's protocol)",
    )
    .hint("is this the right port for SQL Server (1433 by default)?")
}

fn login_error(e: (u32, String), user: &str, database: &str) -> Failure {
    let (number, text) = e;
    let text = crate::plain_http::excerpt(&text);
    match number {
        18456 | 18486 | 18487 | 18488 => Failure::new(
            ErrorClass::AuthFailed,
            format!("login failed for {user} (error {number}): {text}"),
        )
        .hint("check the user name and password; SQL logins must be enabled on the server (mixed mode)"),
        4060 => Failure::new(
            ErrorClass::NotFound,
            format!("cannot open database {database} (error 4060): {text}"),
        )
        .hint("check the database name and that the login is a user in it"),
        _ => Failure::new(ErrorClass::Unknown, format!("login error {number}: {text}")),
    }
}

/// The PRELOGIN payload: VERSION, ENCRYPTION, then the terminator and the data.
fn prelogin(encrypt: u8) -> Vec<u8> {
    let version: [u8; 6] = [0, 1, 0, 0, 0, 0];
    let header_len: u16 = 5 + 5 + 1;
    let mut out = Vec::new();
    out.push(0x00);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&6u16.to_be_bytes());
    out.push(0x01);
    out.extend_from_slice(&(header_len + 6).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.push(0xFF);
    out.extend_from_slice(&version);
    out.push(encrypt);
    out
}

/// The server's version (major.minor.build) and ENCRYPTION byte.
fn parse_prelogin(b: &[u8]) -> Option<(String, u8)> {
    let (mut version, mut enc) = (None, None);
    let mut i = 0;
    while *b.get(i)? != 0xFF {
        let token = b[i];
        let off = u16::from_be_bytes([*b.get(i + 1)?, *b.get(i + 2)?]) as usize;
        let len = u16::from_be_bytes([*b.get(i + 3)?, *b.get(i + 4)?]) as usize;
        let data = b.get(off..off + len)?;
        match token {
            0x00 if len >= 4 => {
                version = Some(format!(
                    "{}.{}.{}",
                    data[0],
                    data[1],
                    u16::from_be_bytes([data[2], data[3]])
                ))
            }
            0x01 if len >= 1 => enc = Some(data[0]),
            _ => {}
        }
        i += 5;
    }
    Some((version?, enc?))
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// MS-TDS 2.2.6.4: each byte of the UTF-16LE password has its nibbles swapped, then is
/// XORed with 0xA5. An obfuscation, not encryption — hence the unencrypted warning.
fn obfuscate(password: &str) -> Vec<u8> {
    utf16(password)
        .into_iter()
        .map(|b| b.rotate_right(4) ^ 0xA5)
        .collect()
}

fn login7(p: &Params, password: &str) -> Vec<u8> {
    const FIXED: usize = 94;
    let fields: [Vec<u8>; 9] = [
        utf16("patchbay"), // HostName
        utf16(&p.user),
        obfuscate(password),
        utf16(&p.app),
        utf16(&p.host), // ServerName
        Vec::new(),     // Extension
        utf16("patchbay"),
        Vec::new(), // Language
        utf16(&p.database),
    ];
    let mut head = Vec::with_capacity(FIXED);
    let total = FIXED + fields.iter().map(Vec::len).sum::<usize>();
    head.extend_from_slice(&(total as u32).to_le_bytes());
    head.extend_from_slice(&TDS_7_4.to_le_bytes());
    head.extend_from_slice(&4096u32.to_le_bytes()); // PacketSize
    head.extend_from_slice(&0x0700_0000u32.to_le_bytes()); // ClientProgVer
    head.extend_from_slice(&std::process::id().to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes()); // ConnectionID
    head.push(0xE0); // OptionFlags1: USE_DB_ON, INIT_DB_FATAL, SET_LANG_ON
    head.push(0x03); // OptionFlags2: INIT_LANG_FATAL, ODBC_ON
    head.push(if p.read_only { 0x20 } else { 0x00 }); // TypeFlags: fReadOnlyIntent
    head.push(0x00); // OptionFlags3
    head.extend_from_slice(&0i32.to_le_bytes()); // ClientTimeZone
    head.extend_from_slice(&0x0409u32.to_le_bytes()); // ClientLCID
    let mut offset = FIXED;
    for f in &fields {
        head.extend_from_slice(&(offset as u16).to_le_bytes());
        head.extend_from_slice(&((f.len() / 2) as u16).to_le_bytes());
        offset += f.len();
    }
    head.extend_from_slice(&[0u8; 6]); // ClientID
    for _ in 0..3 {
        // SSPI, AtchDBFile, ChangePassword: empty
        head.extend_from_slice(&(offset as u16).to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
    }
    head.extend_from_slice(&0u32.to_le_bytes()); // cbSSPILong
    debug_assert_eq!(head.len(), FIXED);
    for f in fields {
        head.extend_from_slice(&f);
    }
    head
}

/// A SQL batch with the ALL_HEADERS block TDS 7.2+ requires (one transaction descriptor).
fn sql_batch(sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&22u32.to_le_bytes());
    out.extend_from_slice(&18u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&utf16(sql));
    out
}

async fn send(io: &mut TcpStream, ty: u8, payload: &[u8]) -> Result<(), Failure> {
    // One packet per message: every message here is far below the 4096-byte packet size.
    let len = (payload.len() + 8) as u16;
    let mut pkt = vec![ty, 0x01];
    pkt.extend_from_slice(&len.to_be_bytes());
    pkt.extend_from_slice(&[0, 0, 1, 0]);
    pkt.extend_from_slice(payload);
    io.write_all(&pkt)
        .await
        .map_err(|e| io_failure(&e, "sending a TDS message"))
}

/// One message: packets until the end-of-message status bit.
async fn receive(io: &mut TcpStream, while_: &str) -> Result<(u8, Vec<u8>), Failure> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 8];
        io.read_exact(&mut h)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        if !(8..=32768).contains(&len) || !matches!(h[0], PKT_REPLY | PKT_PRELOGIN) {
            return Err(not_tds());
        }
        let start = out.len();
        out.resize(start + len - 8, 0);
        io.read_exact(&mut out[start..])
            .await
            .map_err(|e| io_failure(&e, while_))?;
        if h[1] & 0x01 != 0 {
            return Ok((h[0], out));
        }
        if out.len() > MAX_MESSAGE {
            return Err(not_tds());
        }
    }
}

#[derive(Default)]
struct Tokens {
    loginack: Option<String>,
    error: Option<(u32, String)>,
}

/// Walks a login answer's tokens: LOGINACK (program version), ERROR (first one kept),
/// and the tokens a login answer may carry beside them.
fn scan(b: &[u8]) -> Result<Tokens, Failure> {
    let mut t = Tokens::default();
    let mut i = 0;
    while i < b.len() {
        let token = b[i];
        i += 1;
        match token {
            TOKEN_ERROR | TOKEN_INFO | TOKEN_LOGINACK | TOKEN_ENVCHANGE => {
                let len = u16::from_le_bytes([
                    *b.get(i).ok_or_else(not_tds)?,
                    *b.get(i + 1).ok_or_else(not_tds)?,
                ]) as usize;
                let body = b.get(i + 2..i + 2 + len).ok_or_else(not_tds)?;
                if token == TOKEN_ERROR && t.error.is_none() {
                    t.error = parse_message(&b[i..]);
                } else if token == TOKEN_LOGINACK && body.len() >= 10 {
                    // Interface, TDSVersion, ProgName (B_VARCHAR), ProgVersion (4 bytes).
                    let name_len = body[5] as usize * 2;
                    if let Some(v) = body.get(6 + name_len..10 + name_len) {
                        t.loginack = Some(format!(
                            "{}.{}.{}",
                            v[0],
                            v[1],
                            u16::from_be_bytes([v[2], v[3]])
                        ));
                    } else {
                        t.loginack = Some(String::new());
                    }
                }
                i += 2 + len;
            }
            TOKEN_FEATUREEXTACK => {
                while *b.get(i).ok_or_else(not_tds)? != 0xFF {
                    let len = u32::from_le_bytes(
                        b.get(i + 1..i + 5)
                            .ok_or_else(not_tds)?
                            .try_into()
                            .map_err(|_| not_tds())?,
                    ) as usize;
                    i += 5 + len;
                }
                i += 1;
            }
            TOKEN_DONE => i += 12,
            _ => return Err(not_tds()),
        }
    }
    Ok(t)
}

/// ERROR/INFO body from its length field: (number, message text).
fn parse_message(b: &[u8]) -> Option<(u32, String)> {
    let number = u32::from_le_bytes(b.get(2..6)?.try_into().ok()?);
    let chars = u16::from_le_bytes([*b.get(8)?, *b.get(9)?]) as usize;
    let raw = b.get(10..10 + chars * 2)?;
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some((number, String::from_utf16_lossy(&units)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_obfuscation_follows_ms_tds() {
        // 'a' = 0x61 0x00 → swap → 0x16 0x00 → xor → 0xB3 0xA5.
        assert_eq!(obfuscate("a"), vec![0xB3, 0xA5]);
    }

    #[test]
    fn prelogin_round_trips_through_the_parser() {
        let (v, e) = parse_prelogin(&prelogin(ENCRYPT_NOT_SUP)).unwrap();
        assert_eq!((v.as_str(), e), ("0.1.0", ENCRYPT_NOT_SUP));
    }
}
