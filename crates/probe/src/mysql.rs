//! MySQL / MariaDB probe: the client/server protocol written by hand so each step maps to
//! one stage — the server's initial handshake and SSLRequest (tls), the handshake response
//! with mysql_native_password or caching_sha2_password (auth; the database is named there,
//! so a missing one answers 1049 at auth), `SELECT VERSION()` (query), `SHOW GRANTS`
//! (permissions).

use std::time::Duration;

use patchbay_crypto::SecretString;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[
    S::Resolve,
    S::Dns,
    S::Tcp,
    S::Tls,
    S::Auth,
    S::Query,
    S::Permissions,
];

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_LONG_FLAG: u32 = 0x4;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const MAX_PACKET: u32 = 16 * 1024 * 1024;
const CHARSET_UTF8MB4: u8 = 45;

/// How TLS is used, from either type's ssl_mode vocabulary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    /// TLS when the server offers it, plain otherwise (MySQL's PREFERRED).
    Preferred,
    Required,
}

struct Params {
    host: String,
    port: u16,
    database: String,
    user: String,
    tls_use: Tls,
    tls: TlsOptions,
}

fn params(t: &Target<'_>) -> Result<(Params, String), Failure> {
    let host = t.required_str("host")?.to_owned();
    let port = t.port("port")?;
    let database = t.required_str("database")?.to_owned();
    let user = t.required_str("username")?.to_owned();
    let ssl_mode = t.str("ssl_mode").unwrap_or("PREFERRED").to_owned();
    let (tls_use, mode) = match ssl_mode.as_str() {
        "DISABLED" | "disable" => (Tls::Off, None),
        "PREFERRED" => (Tls::Preferred, Some(VerifyMode::None)),
        // MariaDB's `trust`: encrypt, trust whatever certificate the server shows.
        "REQUIRED" | "trust" => (Tls::Required, Some(VerifyMode::None)),
        "VERIFY_CA" | "verify-ca" => (Tls::Required, Some(VerifyMode::CaOnly)),
        "VERIFY_IDENTITY" | "verify-full" => (Tls::Required, Some(VerifyMode::Full)),
        _ => {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                format!(
                    "ssl_mode `{}` is not one this type declares",
                    excerpt(&ssl_mode)
                ),
            ))
        }
    };
    let pem = PemFields {
        ca: "ssl_ca",
        cert: "ssl_cert",
        key: "ssl_private_key",
    };
    let tls = TlsOptions::from_target(t, mode, pem);
    let detail = format!("{user}@{host}:{port}/{database}, ssl_mode {ssl_mode}");
    Ok((
        Params {
            host,
            port,
            database,
            user,
            tls_use,
            tls,
        },
        detail,
    ))
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

/// The server's first packet.
struct Greeting {
    version: String,
    caps: u32,
    scramble: Vec<u8>,
    plugin: String,
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
) -> Result<(), crate::result::Stopped> {
    let p = run
        .stage(S::Resolve, async { params(t).map(|(p, d)| (p, Some(d))) })
        .await?;
    let password = t.secret("password").cloned();
    let checked = run.stage(S::Dns, net::dns(guard, &p.host, p.port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut encrypted = false;
    let (mut conn, greeting) = if p.tls_use == Tls::Off {
        run.skip(S::Tls, "ssl_mode disables TLS");
        run.warn("the connection is not encrypted (ssl_mode disabled)");
        let conn: Conn<Box<dyn Io>> = Conn {
            io: Box::new(tcp),
            seq: 0,
        };
        (conn, None)
    } else {
        // The greeting arrives before TLS and says whether the server offers it.
        let host = &checked.host;
        let opts = &p.tls;
        let tls_use = p.tls_use;
        let (conn, g, upgraded) = run
            .stage(S::Tls, async {
                let mut plain = Conn { io: tcp, seq: 0 };
                let g = read_greeting(&mut plain).await?;
                if g.caps & CLIENT_SSL == 0 {
                    if tls_use == Tls::Preferred {
                        return Ok((
                            (plain.boxed(), g, false),
                            Some("the server does not offer TLS; continuing unencrypted (ssl_mode PREFERRED)".into()),
                        ));
                    }
                    return Err(Failure::new(
                        ErrorClass::TlsHandshake,
                        "the server does not support TLS",
                    )
                    .hint("enable TLS on the server (ssl_cert/ssl_key), or lower ssl_mode"));
                }
                let mut req = Vec::with_capacity(32);
                req.extend_from_slice(&(client_caps(&g) | CLIENT_SSL).to_le_bytes());
                req.extend_from_slice(&MAX_PACKET.to_le_bytes());
                req.push(CHARSET_UTF8MB4);
                req.extend_from_slice(&[0u8; 23]);
                plain.send(&req).await?;
                let (s, detail) = tls::handshake(plain.io, opts, host).await?;
                let conn: Conn<Box<dyn Io>> = Conn {
                    io: Box::new(s),
                    seq: plain.seq,
                };
                Ok(((conn, g, true), Some(detail)))
            })
            .await?;
        if upgraded {
            encrypted = true;
            if let Some(w) = p.tls.warning() {
                run.warn(w);
            }
        } else {
            run.warn("the connection is not encrypted: the server does not offer TLS");
        }
        (conn, Some(g))
    };
    let g = run
        .stage(S::Auth, async {
            let g = match greeting {
                Some(g) => g,
                None => read_greeting(&mut conn).await?,
            };
            let method = login(&mut conn, &g, &p, password.as_ref(), encrypted).await?;
            let detail = format!("logged in as {} ({method})", p.user);
            Ok((g, Some(detail)))
        })
        .await?;
    let version = run
        .stage(S::Query, async {
            let rows = conn.query("SELECT VERSION()").await?;
            let v = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .unwrap_or_default();
            Ok((v, Some("SELECT VERSION() answered".to_owned())))
        })
        .await?;
    let version = if version.is_empty() {
        g.version
    } else {
        version
    };
    let product = if version.contains("MariaDB") {
        "MariaDB"
    } else {
        "MySQL"
    };
    let version = version
        .strip_prefix("5.5.5-")
        .unwrap_or(&version)
        .to_owned();
    run.server = Some(ServerInfo {
        product: product.into(),
        version,
    });
    let writes = run
        .stage(S::Permissions, async {
            let rows = conn.query("SHOW GRANTS").await?;
            let mut rights: Vec<&'static str> = Vec::new();
            for grant in rows.iter().filter_map(|r| r.first().cloned().flatten()) {
                // Only the privilege list: what follows ` ON ` names objects and users.
                let privs = grant
                    .split_once(" ON ")
                    .map(|(a, _)| a)
                    .unwrap_or("")
                    .to_ascii_uppercase();
                for (word, label) in [
                    ("ALL PRIVILEGES", "ALL PRIVILEGES"),
                    ("INSERT", "INSERT"),
                    ("UPDATE", "UPDATE"),
                    ("DELETE", "DELETE"),
                    ("CREATE", "CREATE"),
                    ("DROP", "DROP"),
                    ("ALTER", "ALTER"),
                ] {
                    if privs.contains(word) && !rights.contains(&label) {
                        rights.push(label);
                    }
                }
            }
            let detail = if rights.is_empty() {
                "read-only: SHOW GRANTS lists no write privilege".to_owned()
            } else {
                format!("the account can write: {}", rights.join(", "))
            };
            Ok((rights, Some(detail)))
        })
        .await?;
    if !writes.is_empty() {
        run.warn(format!(
            "read-only account recommended: {} can write ({})",
            p.user,
            writes.join(", ")
        ));
    }
    conn.seq = 0;
    let _ = conn.send(&[0x01]).await; // COM_QUIT
    Ok(())
}

fn client_caps(g: &Greeting) -> u32 {
    let wanted = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_CONNECT_WITH_DB
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC;
    wanted & g.caps
}

fn not_mysql() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak the MySQL protocol",
    )
    .hint("is this the right port? MySQL and MariaDB listen on 3306 by default")
}

/// A short, printable excerpt of server text.
fn excerpt(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.chars().count() > 200 {
        format!("{clean}…")
    } else {
        clean
    }
}

struct Conn<T> {
    io: T,
    seq: u8,
}

impl<T: Io + 'static> Conn<T> {
    fn boxed(self) -> Conn<Box<dyn Io>> {
        Conn {
            io: Box::new(self.io),
            seq: self.seq,
        }
    }

    async fn read(&mut self, while_: &str) -> Result<Vec<u8>, Failure> {
        let mut head = [0u8; 4];
        self.io
            .read_exact(&mut head)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        self.seq = head[3].wrapping_add(1);
        let mut body = vec![0u8; len];
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| io_failure(&e, while_))?;
        Ok(body)
    }

    async fn send(&mut self, body: &[u8]) -> Result<(), Failure> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&len[..3]);
        out.push(self.seq);
        self.seq = self.seq.wrapping_add(1);
        out.extend_from_slice(body);
        self.io
            .write_all(&out)
            .await
            .map_err(|e| io_failure(&e, "sending to the server"))?;
        self.io
            .flush()
            .await
            .map_err(|e| io_failure(&e, "sending to the server"))
    }

    /// COM_QUERY; rows as text (NULL as None).
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Failure> {
        self.seq = 0;
        let mut body = vec![0x03];
        body.extend_from_slice(sql.as_bytes());
        self.send(&body).await?;
        let first = self.read("running the test query").await?;
        match first.first() {
            Some(0xff) => return Err(server_error(&first, None)),
            Some(0x00) => return Ok(Vec::new()),
            None => return Err(not_mysql()),
            _ => {}
        }
        let columns = lenenc(&first, &mut 0).ok_or_else(not_mysql)?;
        for _ in 0..columns {
            self.read("running the test query").await?;
        }
        let eof = self.read("running the test query").await?;
        if eof.first() != Some(&0xfe) {
            return Err(not_mysql());
        }
        let mut rows = Vec::new();
        loop {
            let row = self.read("running the test query").await?;
            match row.first() {
                Some(0xfe) if row.len() < 9 => return Ok(rows),
                Some(0xff) => return Err(server_error(&row, None)),
                _ => {}
            }
            let mut at = 0;
            let mut out = Vec::new();
            while at < row.len() {
                if row[at] == 0xfb {
                    at += 1;
                    out.push(None);
                    continue;
                }
                let n = usize::try_from(lenenc(&row, &mut at).ok_or_else(not_mysql)?)
                    .map_err(|_| not_mysql())?;
                let v = row.get(at..at + n).ok_or_else(not_mysql)?;
                out.push(Some(String::from_utf8_lossy(v).into_owned()));
                at += n;
            }
            rows.push(out);
        }
    }
}

fn lenenc(b: &[u8], at: &mut usize) -> Option<u64> {
    let first = *b.get(*at)?;
    let (n, width) = match first {
        0..=0xfa => (u64::from(first), 0),
        0xfc => (0, 2),
        0xfd => (0, 3),
        0xfe => (0, 8),
        _ => return None,
    };
    *at += 1;
    if width == 0 {
        return Some(n);
    }
    let bytes = b.get(*at..*at + width)?;
    *at += width;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(bytes);
    Some(u64::from_le_bytes(v))
}

async fn read_greeting<T: Io + 'static>(conn: &mut Conn<T>) -> Result<Greeting, Failure> {
    let b = conn.read("waiting for the server's greeting").await?;
    match b.first() {
        Some(10) => {}
        // The server refuses before any login (too many connections, host blocked).
        Some(0xff) => return Err(server_error(&b, None)),
        _ => return Err(not_mysql()),
    }
    let nul = b[1..].iter().position(|x| *x == 0).ok_or_else(not_mysql)? + 1;
    let version = String::from_utf8_lossy(&b[1..nul]).into_owned();
    let mut at = nul + 1 + 4; // version, NUL, connection id
    let part1 = b.get(at..at + 8).ok_or_else(not_mysql)?.to_vec();
    at += 9; // scramble part 1 and a filler byte
    let caps_lo = u16::from_le_bytes(
        b.get(at..at + 2)
            .ok_or_else(not_mysql)?
            .try_into()
            .map_err(|_| not_mysql())?,
    );
    at += 2;
    let mut caps = u32::from(caps_lo);
    let mut scramble = part1;
    let mut plugin = "mysql_native_password".to_owned();
    if b.len() > at {
        at += 3; // charset, status flags
        let caps_hi = u16::from_le_bytes(
            b.get(at..at + 2)
                .ok_or_else(not_mysql)?
                .try_into()
                .map_err(|_| not_mysql())?,
        );
        caps |= u32::from(caps_hi) << 16;
        at += 2;
        let data_len = usize::from(*b.get(at).ok_or_else(not_mysql)?);
        at += 11; // length and 10 reserved bytes
        if caps & CLIENT_SECURE_CONNECTION != 0 {
            let n = data_len.saturating_sub(8).max(13);
            let part2 = b.get(at..at + n).ok_or_else(not_mysql)?;
            at += n;
            // The scramble is 20 bytes; part 2 ends with a NUL.
            scramble.extend_from_slice(&part2[..n - 1]);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            if let Some(rest) = b.get(at..) {
                let end = rest.iter().position(|x| *x == 0).unwrap_or(rest.len());
                plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
            }
        }
    }
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return Err(Failure::new(
            ErrorClass::ProtocolMismatch,
            "the server speaks a protocol older than 4.1",
        ));
    }
    Ok(Greeting {
        version,
        caps,
        scramble,
        plugin,
    })
}

fn native_password(pw: &[u8], scramble: &[u8]) -> Vec<u8> {
    if pw.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(pw);
    let h2 = Sha1::digest(h1);
    let h3 = Sha1::digest([scramble, &h2[..]].concat());
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn caching_sha2(pw: &[u8], scramble: &[u8]) -> Vec<u8> {
    if pw.is_empty() {
        return Vec::new();
    }
    let h1 = Sha256::digest(pw);
    let h2 = Sha256::digest(h1);
    let h3 = Sha256::digest([&h2[..], scramble].concat());
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn scramble_for(plugin: &str, pw: &[u8], scramble: &[u8]) -> Result<Vec<u8>, Failure> {
    match plugin {
        "mysql_native_password" => Ok(native_password(pw, scramble)),
        "caching_sha2_password" => Ok(caching_sha2(pw, scramble)),
        other => Err(Failure::new(
            ErrorClass::AuthFailed,
            format!(
                "the server asks for the authentication plugin `{}`, which this probe does not support",
                excerpt(other)
            ),
        )
        .hint("use mysql_native_password or caching_sha2_password for this account")),
    }
}

/// The handshake response and any plugin exchange up to OK. Returns the method name.
async fn login(
    conn: &mut Conn<Box<dyn Io>>,
    g: &Greeting,
    p: &Params,
    password: Option<&SecretString>,
    encrypted: bool,
) -> Result<String, Failure> {
    let pw = password
        .map(|s| s.expose_secret().as_bytes())
        .unwrap_or(b"");
    let caps = client_caps(g) | if encrypted { CLIENT_SSL } else { 0 };
    let mut plugin = if g.caps & CLIENT_PLUGIN_AUTH != 0 {
        g.plugin.clone()
    } else {
        "mysql_native_password".to_owned()
    };
    let mut scramble = g.scramble.clone();
    let auth = scramble_for(&plugin, pw, &scramble).unwrap_or_default();
    let mut body = Vec::new();
    body.extend_from_slice(&caps.to_le_bytes());
    body.extend_from_slice(&MAX_PACKET.to_le_bytes());
    body.push(CHARSET_UTF8MB4);
    body.extend_from_slice(&[0u8; 23]);
    body.extend_from_slice(p.user.as_bytes());
    body.push(0);
    let auth_len = u8::try_from(auth.len()).unwrap_or(0);
    body.push(auth_len);
    body.extend_from_slice(&auth);
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        body.extend_from_slice(p.database.as_bytes());
        body.push(0);
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        body.extend_from_slice(plugin.as_bytes());
        body.push(0);
    }
    conn.send(&body).await?;
    loop {
        let m = conn.read("logging in").await?;
        match m.first() {
            Some(0x00) => return Ok(plugin),
            Some(0xff) => return Err(server_error(&m, Some(p))),
            // AuthSwitchRequest: another plugin and a fresh scramble.
            Some(0xfe) => {
                let rest = &m[1..];
                let end = rest.iter().position(|x| *x == 0).ok_or_else(not_mysql)?;
                plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
                let data = &rest[end + 1..];
                scramble = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                let reply = scramble_for(&plugin, pw, &scramble)?;
                conn.send(&reply).await?;
            }
            // caching_sha2_password: 3 = the cached fast path passed, 4 = full auth needed.
            Some(0x01) if plugin == "caching_sha2_password" => match m.get(1) {
                Some(3) => {}
                Some(4) if encrypted => {
                    let mut clear = pw.to_vec();
                    clear.push(0);
                    conn.send(&clear).await?;
                }
                Some(4) => {
                    return Err(Failure::new(
                        ErrorClass::AuthFailed,
                        "caching_sha2_password needs a full authentication, which this probe does only over TLS",
                    )
                    .hint("enable TLS (ssl_mode REQUIRED or stricter), or log in once with the mysql client so the server caches the account"))
                }
                _ => return Err(not_mysql()),
            },
            _ => return Err(not_mysql()),
        }
    }
}

fn server_error(b: &[u8], p: Option<&Params>) -> Failure {
    let code = b
        .get(1..3)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .unwrap_or(0);
    let msg = match b.get(3) {
        Some(b'#') => b.get(9..).unwrap_or_default(),
        _ => b.get(3..).unwrap_or_default(),
    };
    let message = excerpt(&String::from_utf8_lossy(msg));
    let class = match code {
        1045 | 1251 | 1698 => ErrorClass::AuthFailed,
        1049 => ErrorClass::NotFound,
        1044 | 1142 | 1227 => ErrorClass::PermissionDenied,
        1040 | 1203 | 1226 => ErrorClass::RateLimited,
        1129 | 1130 => ErrorClass::NetworkBlocked,
        _ => ErrorClass::Unknown,
    };
    let hint = match (class, p) {
        (ErrorClass::AuthFailed, Some(p)) => format!(
            "check the user name and password of {}; the account must also be allowed from the patchbay server's host",
            p.user
        ),
        (ErrorClass::NotFound, Some(p)) => format!(
            "database {} does not exist on this server: check its name (SHOW DATABASES lists them)",
            p.database
        ),
        (ErrorClass::PermissionDenied, _) => {
            "grant the account access to the database (GRANT SELECT ON db.* TO …)".to_owned()
        }
        (ErrorClass::RateLimited, _) => {
            "the server refuses more connections now; retry later or raise max_connections"
                .to_owned()
        }
        (ErrorClass::NetworkBlocked, _) => {
            "the server does not accept connections from the patchbay server's host".to_owned()
        }
        _ => format!("the server answered error {code}"),
    };
    Failure::new(class, format!("server: {message} (error {code})")).hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrambles_are_20_and_32_bytes_and_empty_without_a_password() {
        let s = [7u8; 20];
        assert_eq!(native_password(b"pw", &s).len(), 20);
        assert_eq!(caching_sha2(b"pw", &s).len(), 32);
        assert!(native_password(b"", &s).is_empty());
    }
}
