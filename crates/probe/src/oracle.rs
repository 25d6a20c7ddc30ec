//! Oracle Database over Oracle Net (TNS), written by hand: a CONNECT packet carrying the
//! connect descriptor `(DESCRIPTION=(ADDRESS=…)(CONNECT_DATA=(SERVICE_NAME=…)))` (or SID),
//! and the listener's answer: ACCEPT (the service is reachable), REFUSE (ORA-12514 unknown
//! service, ORA-12505 unknown SID → not_found), REDIRECT (followed once, through the
//! guard), RESEND (sent once more).
//!
//! O5LOGON authentication is not implemented: after ACCEPT the `auth` stage is skipped and
//! the result warns that the password was not checked. The listener exchange is reported at
//! `query` ("is the service there?"), after the skipped `auth`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

pub const TNS_CONNECT: u8 = 1;
pub const TNS_ACCEPT: u8 = 2;
pub const TNS_REFUSE: u8 = 4;
pub const TNS_REDIRECT: u8 = 5;
pub const TNS_RESEND: u8 = 11;

/// Offset of the connect data in a CONNECT packet (8-byte header + 50 bytes of fields).
const CONNECT_DATA_OFFSET: usize = 58;
const TNS_VERSION: u16 = 314;
const TNS_VERSION_MIN: u16 = 300;
const MAX_PACKET: usize = 65535;

pub const PASSWORD_WARNING: &str =
    "the password is not checked (Oracle's O5LOGON is not implemented)";

struct Params {
    host: String,
    port: u16,
    tcps: bool,
    descriptor: String,
    /// What the descriptor asks for, for messages: `service X` or `SID X`.
    wanted: String,
    by_sid: bool,
    opts: TlsOptions,
}

/// The value of `(KEY=value)` in a descriptor, case-insensitive on the key.
fn param(desc: &str, key: &str) -> Option<String> {
    let upper = desc.to_ascii_uppercase();
    let needle = format!("({key}");
    let mut from = 0;
    while let Some(i) = upper[from..].find(&needle) {
        let at = from + i + needle.len();
        let rest = upper[at..].trim_start();
        if let Some(r) = rest.strip_prefix('=') {
            let skip = upper.len() - r.len();
            let end = desc[skip..].find(')')?;
            return Some(desc[skip..skip + end].trim().to_owned());
        }
        from = at;
    }
    None
}

fn params(t: &Target<'_>) -> Result<Params, Failure> {
    let tcps = t.str("protocol") == Some("tcps");
    let mode = verify_unless(t, "ssl_server_dn_match", VerifyMode::CaOnly);
    let pem = PemFields {
        ca: "ssl_ca",
        ..PemFields::TLS
    };
    let opts = TlsOptions::from_target(t, Some(mode), pem);
    if let Some(desc) = t.str("connect_descriptor") {
        let desc: String = desc.split_whitespace().collect::<Vec<_>>().join("");
        let host = param(&desc, "HOST").ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the connect descriptor names no (HOST=…)",
            )
        })?;
        let port = match param(&desc, "PORT") {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Failure::new(
                    ErrorClass::InvalidSettings,
                    "the descriptor's PORT is not 1–65535",
                )
            })?,
            None => 1521,
        };
        let tcps = param(&desc, "PROTOCOL").map_or(tcps, |p| p.eq_ignore_ascii_case("tcps"));
        let (wanted, by_sid) = match (param(&desc, "SERVICE_NAME"), param(&desc, "SID")) {
            (Some(s), _) => (format!("service {s}"), false),
            (None, Some(s)) => (format!("SID {s}"), true),
            (None, None) => ("the default service".to_owned(), false),
        };
        return Ok(Params {
            host,
            port,
            tcps,
            descriptor: desc,
            wanted,
            by_sid,
            opts,
        });
    }
    let host = t.required_str("host")?.to_owned();
    let port = t.port("port")?;
    let by_sid = t.str("connection_type") == Some("sid");
    let (key, name) = if by_sid {
        ("SID", t.required_str("sid")?)
    } else {
        ("SERVICE_NAME", t.required_str("service_name")?)
    };
    if name.contains(['(', ')', '=']) || host.contains(['(', ')', '=']) {
        return Err(Failure::new(
            ErrorClass::InvalidSettings,
            "the host and service may not contain parentheses or `=`",
        ));
    }
    let proto = if tcps { "TCPS" } else { "TCP" };
    let descriptor = format!(
        "(DESCRIPTION=(ADDRESS=(PROTOCOL={proto})(HOST={host})(PORT={port}))(CONNECT_DATA=({key}={name})(CID=(PROGRAM=patchbay)(HOST=patchbay)(USER=patchbay))))"
    );
    Ok(Params {
        host,
        port,
        tcps,
        descriptor,
        wanted: if by_sid {
            format!("SID {name}")
        } else {
            format!("service {name}")
        },
        by_sid,
        opts,
    })
}

/// A CONNECT packet carrying `data` (the connect descriptor).
pub fn connect_packet(data: &[u8]) -> Vec<u8> {
    let total = CONNECT_DATA_OFFSET + data.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&(total as u16).to_be_bytes()); // packet length
    p.extend_from_slice(&[0, 0]); // packet checksum
    p.push(TNS_CONNECT);
    p.push(0); // flags
    p.extend_from_slice(&[0, 0]); // header checksum
    p.extend_from_slice(&TNS_VERSION.to_be_bytes());
    p.extend_from_slice(&TNS_VERSION_MIN.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // service options
    p.extend_from_slice(&8192u16.to_be_bytes()); // SDU
    p.extend_from_slice(&32767u16.to_be_bytes()); // TDU
    p.extend_from_slice(&0x4f98u16.to_be_bytes()); // NT protocol characteristics
    p.extend_from_slice(&0u16.to_be_bytes()); // line turnaround
    p.extend_from_slice(&1u16.to_le_bytes()); // "value of 1 in hardware"
    p.extend_from_slice(&(data.len() as u16).to_be_bytes()); // connect data length
    p.extend_from_slice(&(CONNECT_DATA_OFFSET as u16).to_be_bytes()); // connect data offset
    p.extend_from_slice(&0u32.to_be_bytes()); // max receivable connect data
    p.extend_from_slice(&[0x41, 0x41]); // connect flags 0 and 1
    p.resize(CONNECT_DATA_OFFSET, 0); // trace items, unique connection id, padding
    p.extend_from_slice(data);
    p
}

async fn read_packet(io: &mut dyn Io) -> Result<(u8, Vec<u8>), Failure> {
    let mut h = [0u8; 8];
    io.read_exact(&mut h)
        .await
        .map_err(|e| io_failure(&e, "reading the listener's answer"))?;
    let len = u16::from_be_bytes([h[0], h[1]]) as usize;
    if !(8..=MAX_PACKET).contains(&len) || !matches!(h[4], 1..=19) {
        return Err(not_tns());
    }
    let mut body = vec![0u8; len - 8];
    io.read_exact(&mut body)
        .await
        .map_err(|e| io_failure(&e, "reading the listener's answer"))?;
    Ok((h[4], body))
}

fn not_tns() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server did not answer like an Oracle Net (TNS) listener",
    )
    .hint("is this the listener's port (usually 1521, or 2484 for TCPS)?")
}

/// The `ERR=` code of a REFUSE or REDIRECT text, if any.
fn err_code(text: &str) -> Option<u32> {
    param(text, "ERR").and_then(|e| e.parse().ok())
}

fn refused(body: &[u8], p: &Params) -> Failure {
    // user reason (1), system reason (1), data length (2), data
    let text = body
        .get(4..)
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    match err_code(&text) {
        Some(12514) => Failure::new(
            ErrorClass::NotFound,
            format!("ORA-12514: the listener does not know {}", p.wanted),
        )
        .hint("check the service name (lsnrctl services lists the ones the listener knows)"),
        Some(12505) => Failure::new(
            ErrorClass::NotFound,
            format!("ORA-12505: the listener does not know {}", p.wanted),
        )
        .hint("check the SID, or connect by service name"),
        Some(code) => Failure::new(
            ErrorClass::Unknown,
            format!("the listener refused the connection: ORA-{code:05}"),
        ),
        None => Failure::new(ErrorClass::Unknown, "the listener refused the connection"),
    }
}

async fn open(
    guard: &NetworkGuard,
    host: &str,
    port: u16,
    p: &Params,
) -> Result<Box<dyn Io>, Failure> {
    let checked = net::dns(guard, host, port).await?.0;
    let tcp = net::tcp(&checked.addrs).await?.0;
    if p.tcps {
        Ok(Box::new(
            tls::handshake(tcp, &p.opts, &checked.host).await?.0,
        ))
    } else {
        Ok(Box::new(tcp))
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
            let p = params(t)?;
            let d = format!(
                "{}:{} {}{}",
                p.host,
                p.port,
                p.wanted,
                if p.tcps { ", TCPS" } else { "" }
            );
            Ok((p, Some(d)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &p.host, p.port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut io: Box<dyn Io> = if p.tcps {
        let s = run
            .stage(S::Tls, async {
                let (s, d) = tls::handshake(tcp, &p.opts, &checked.host).await?;
                Ok((s, Some(d)))
            })
            .await?;
        if let Some(w) = p.opts.warning() {
            run.warn(w);
        }
        Box::new(s)
    } else {
        run.skip(S::Tls, "TCPS is off for this connection");
        Box::new(tcp)
    };
    run.skip(
        S::Auth,
        "not checked: Oracle's O5LOGON authentication is not implemented",
    );
    let wanted = p.wanted.clone();
    let by_sid = p.by_sid;
    let version = run
        .stage(S::Query, async {
            let packet = connect_packet(p.descriptor.as_bytes());
            let mut redirected = false;
            let mut resent = false;
            loop {
                io.write_all(&packet)
                    .await
                    .map_err(|e| io_failure(&e, "sending CONNECT"))?;
                let (ty, body) = read_packet(io.as_mut()).await?;
                match ty {
                    TNS_ACCEPT => {
                        let v = body
                            .get(0..2)
                            .map(|b| u16::from_be_bytes([b[0], b[1]]))
                            .ok_or_else(not_tns)?;
                        let how = if by_sid { "SID" } else { "service" };
                        return Ok((
                            v,
                            Some(format!(
                                "the listener accepted the connection to {wanted} (TNS version {v}, by {how})"
                            )),
                        ));
                    }
                    TNS_REFUSE => return Err(refused(&body, &p)),
                    TNS_RESEND if !resent => resent = true,
                    TNS_REDIRECT if !redirected => {
                        redirected = true;
                        let text = String::from_utf8_lossy(body.get(2..).unwrap_or_default())
                            .into_owned();
                        let host = param(&text, "HOST").ok_or_else(not_tns)?;
                        let port = param(&text, "PORT")
                            .and_then(|p| p.parse::<u16>().ok())
                            .ok_or_else(not_tns)?;
                        io = open(guard, &host, port, &p).await?;
                    }
                    TNS_RESEND | TNS_REDIRECT => {
                        return Err(Failure::new(
                            ErrorClass::ProtocolMismatch,
                            "the listener redirected or asked to resend more than once",
                        ))
                    }
                    _ => return Err(not_tns()),
                }
            }
        })
        .await?;
    run.warn(PASSWORD_WARNING);
    run.server = Some(ServerInfo {
        product: "Oracle Net listener".into(),
        version: format!("TNS {version}"),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_values_are_found_case_insensitively() {
        let d = "(description=(address=(protocol=tcp)(host=db.example)(port=1522))(connect_data=(service_name=orcl)))";
        assert_eq!(param(d, "HOST").as_deref(), Some("db.example"));
        assert_eq!(param(d, "PORT").as_deref(), Some("1522"));
        assert_eq!(param(d, "SERVICE_NAME").as_deref(), Some("orcl"));
        assert_eq!(param(d, "SID"), None);
        assert_eq!(err_code("(DESCRIPTION=(ERR=12514)(VSNNUM=0))"), Some(12514));
    }

    #[test]
    fn the_connect_packet_puts_the_data_at_its_declared_offset() {
        let p = connect_packet(b"(DESCRIPTION=)");
        assert_eq!(u16::from_be_bytes([p[0], p[1]]) as usize, p.len());
        assert_eq!(p[4], TNS_CONNECT);
        let off = u16::from_be_bytes([p[26], p[27]]) as usize;
        let len = u16::from_be_bytes([p[24], p[25]]) as usize;
        assert_eq!(&p[off..off + len], b"(DESCRIPTION=)");
    }
}
