//! LDAP / Active Directory probe: LDAPv3 BER written by hand so each step maps to one
//! stage — LDAPS or StartTLS (tls), a simple bind (auth; invalidCredentials → auth_failed),
//! a base-scope search of the base DN asking for no attributes (query; noSuchObject →
//! not_found).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

#[derive(PartialEq)]
enum Security {
    Plain,
    Ldaps,
    StartTls,
}

struct Params {
    host: String,
    port: u16,
    security: Security,
    tls: TlsOptions,
    base_dn: String,
    bind_dn: Option<String>,
}

fn params(t: &Target<'_>) -> Result<(Params, String), Failure> {
    let invalid = |m: String| Failure::new(ErrorClass::InvalidSettings, m);
    let start_tls = t.bool("start_tls").unwrap_or(false);
    let (host, port, ldaps, base_dn, bind_dn) = if t.ty.id == "active-directory" {
        let domain = t.required_str("domain")?.to_owned();
        let host = t
            .value("domain_controllers")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().find_map(|s| s.as_str().filter(|s| !s.is_empty())))
            .map(str::to_owned)
            .unwrap_or_else(|| domain.clone());
        let ldaps = t.bool("use_ldaps").unwrap_or(true);
        let port = match t.int("port") {
            Some(_) => t.port("port")?,
            None if ldaps => 636,
            None => 389,
        };
        let base_dn = t.str("base_dn").map(str::to_owned).unwrap_or_else(|| {
            domain
                .split('.')
                .map(|p| format!("DC={p}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        (
            host,
            port,
            ldaps,
            base_dn,
            t.str("bind_username").map(str::to_owned),
        )
    } else {
        let url = t.required_str("url")?;
        let (ldaps, rest) = if let Some(r) = url.strip_prefix("ldaps://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ldap://") {
            (false, r)
        } else {
            return Err(invalid(
                "the URL must start with ldap:// or ldaps://".into(),
            ));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let default_port = if ldaps { 636 } else { 389 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                None => return Err(invalid("the URL's IPv6 address lacks its `]`".into())),
            },
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(format!("the URL's port `{p}` is not valid")))?,
        };
        let host = host.to_owned();
        if host.is_empty() {
            return Err(invalid("the URL has no host".into()));
        }
        (
            host,
            port,
            ldaps,
            t.required_str("base_dn")?.to_owned(),
            t.str("bind_dn").map(str::to_owned),
        )
    };
    if ldaps && start_tls {
        return Err(invalid(
            "StartTLS and LDAPS are exclusive: use one of them".into(),
        ));
    }
    let security = if ldaps {
        Security::Ldaps
    } else if start_tls {
        Security::StartTls
    } else {
        Security::Plain
    };
    let mode = verify_unless(t, "tls_verify", VerifyMode::None);
    let tls = TlsOptions::from_target(t, Some(mode), PemFields::TLS);
    let detail = format!(
        "{host}:{port}{}, base {base_dn}",
        match security {
            Security::Plain => "",
            Security::Ldaps => " (LDAPS)",
            Security::StartTls => " (StartTLS)",
        }
    );
    Ok((
        Params {
            host,
            port,
            security,
            tls,
            base_dn,
            bind_dn,
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
        .stage(S::Resolve, async { params(t).map(|(p, d)| (p, Some(d))) })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &p.host, p.port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut next_id = 1;
    let io: Box<dyn Io> = match p.security {
        Security::Plain => {
            run.skip(S::Tls, "neither LDAPS nor StartTLS is set");
            run.warn("the connection is not encrypted: the bind password crosses the network in clear (use LDAPS or StartTLS)");
            Box::new(tcp)
        }
        Security::Ldaps => {
            let s = run
                .stage(S::Tls, async {
                    let (s, d) = tls::handshake(tcp, &p.tls, &checked.host).await?;
                    Ok((s, Some(format!("LDAPS: {d}"))))
                })
                .await?;
            if let Some(w) = p.tls.warning() {
                run.warn(w);
            }
            Box::new(s)
        }
        Security::StartTls => {
            let s = run
                .stage(S::Tls, async {
                    let mut io: Box<dyn Io> = Box::new(tcp);
                    let req = seq(0x77, &tlv(0x80, STARTTLS_OID.as_bytes()));
                    let (tag, body) = exchange(&mut io, &mut next_id, &req).await?;
                    if tag != 0x78 {
                        return Err(not_ldap());
                    }
                    let (code, _) = ldap_result(&body)?;
                    if code != 0 {
                        return Err(Failure::new(
                            ErrorClass::TlsHandshake,
                            format!("the server refused StartTLS (resultCode {code})"),
                        )
                        .hint("enable TLS on the server, or use LDAPS"));
                    }
                    let tcp = io;
                    let (s, d) = tls::handshake(tcp, &p.tls, &checked.host).await?;
                    Ok((s, Some(format!("StartTLS: {d}"))))
                })
                .await?;
            if let Some(w) = p.tls.warning() {
                run.warn(w);
            }
            Box::new(s)
        }
    };
    let mut io = io;
    let password = t.secret("bind_password").cloned();
    run.stage(S::Auth, async {
        let (name, pw, who) = match (&p.bind_dn, &password) {
            (Some(dn), Some(pw)) => (dn.as_str(), pw.expose_secret(), dn.clone()),
            // A DN with an empty password is an "unauthenticated bind" that succeeds
            // without checking anything (RFC 4513 §5.1.2): refuse to call that a login.
            (Some(_), None) => {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "a bind DN is set but no bind password",
                )
                .hint("set the bind password (an empty one would not be checked by the server)"))
            }
            (None, _) => ("", "", "anonymous".to_owned()),
        };
        let mut bind = tlv(0x02, &[3]);
        bind.extend(tlv(0x04, name.as_bytes()));
        bind.extend(tlv(0x80, pw.as_bytes()));
        let (tag, body) = exchange(&mut io, &mut next_id, &seq(0x60, &bind)).await?;
        if tag != 0x61 {
            return Err(not_ldap());
        }
        let (code, _) = ldap_result(&body)?;
        match code {
            0 => Ok(((), Some(format!("bound as {who}")))),
            49 => Err(Failure::new(
                ErrorClass::AuthFailed,
                "the server rejected the bind DN or password (invalidCredentials, 49)",
            )
            .hint("check the bind DN (a full DN, or user@domain for Active Directory) and the password")),
            13 => Err(Failure::new(
                ErrorClass::AuthFailed,
                "the server requires an encrypted connection to bind (confidentialityRequired, 13)",
            )
            .hint("turn on StartTLS or use an ldaps:// URL")),
            c => Err(result_failure(c, "the bind")),
        }
    })
    .await?;
    let base = p.base_dn.clone();
    run.stage(S::Query, async {
        let mut search = tlv(0x04, base.as_bytes());
        search.extend(tlv(0x0a, &[0])); // scope baseObject
        search.extend(tlv(0x0a, &[0])); // neverDerefAliases
        search.extend(tlv(0x02, &[1])); // sizeLimit
        search.extend(tlv(0x02, &[10])); // timeLimit (s)
        search.extend(tlv(0x01, &[0])); // typesOnly
        search.extend(tlv(0x87, b"objectClass")); // (objectClass=*)
        search.extend(seq(0x30, &tlv(0x04, b"1.1"))); // no attributes
        let id = next_id;
        next_id += 1;
        send(&mut io, id, &seq(0x63, &search)).await?;
        let mut entries = 0;
        loop {
            let (tag, body) = read_op(&mut io).await?;
            match tag {
                0x64 => entries += 1,
                0x73 => {} // referral
                0x65 => {
                    let (code, _) = ldap_result(&body)?;
                    return match code {
                        0 if entries > 0 => Ok(((), Some(format!("the base DN {base} exists")))),
                        0 | 32 => Err(Failure::new(
                            ErrorClass::NotFound,
                            format!("the base DN {base} does not exist (noSuchObject, 32)"),
                        )
                        .hint("check the base DN, e.g. dc=example,dc=org")),
                        50 => Err(Failure::new(
                            ErrorClass::PermissionDenied,
                            format!("the bound account may not read {base} (insufficientAccessRights, 50)"),
                        )
                        .hint("grant the account read access to the base DN")),
                        c => Err(result_failure(c, "the search")),
                    };
                }
                _ => return Err(not_ldap()),
            }
        }
    })
    .await?;
    let _ = send(&mut io, next_id, &[0x42, 0x00]).await;
    Ok(())
}

fn not_ldap() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak LDAP",
    )
    .hint("is this the right port? LDAP listens on 389 and LDAPS on 636 by default")
}

fn result_failure(code: u32, what: &str) -> Failure {
    let (class, name) = match code {
        1 => (ErrorClass::Unknown, "operationsError"),
        2 => (ErrorClass::ProtocolMismatch, "protocolError"),
        8 => (ErrorClass::AuthFailed, "strongerAuthRequired"),
        48 => (ErrorClass::AuthFailed, "inappropriateAuthentication"),
        50 => (ErrorClass::PermissionDenied, "insufficientAccessRights"),
        51 | 52 => (ErrorClass::RateLimited, "busy or unavailable"),
        53 => (ErrorClass::PermissionDenied, "unwillingToPerform"),
        _ => (ErrorClass::Unknown, "error"),
    };
    Failure::new(class, format!("{what} failed: {name} (resultCode {code})"))
}

fn len_bytes(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let b = (n as u32).to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        let mut out = vec![0x80 | (4 - skip) as u8];
        out.extend_from_slice(&b[skip..]);
        out
    }
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(len_bytes(value.len()));
    out.extend_from_slice(value);
    out
}

fn seq(tag: u8, content: &[u8]) -> Vec<u8> {
    tlv(tag, content)
}

fn int_bytes(n: i32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let skip = b
        .windows(2)
        .take_while(|w| w[0] == 0 && w[1] & 0x80 == 0)
        .count();
    b[skip..].to_vec()
}

async fn send(io: &mut Box<dyn Io>, id: i32, op: &[u8]) -> Result<(), Failure> {
    let mut msg = tlv(0x02, &int_bytes(id));
    msg.extend_from_slice(op);
    io.write_all(&seq(0x30, &msg))
        .await
        .map_err(|e| io_failure(&e, "sending a request"))?;
    io.flush()
        .await
        .map_err(|e| io_failure(&e, "sending a request"))
}

async fn exchange(
    io: &mut Box<dyn Io>,
    next_id: &mut i32,
    op: &[u8],
) -> Result<(u8, Vec<u8>), Failure> {
    let id = *next_id;
    *next_id += 1;
    send(io, id, op).await?;
    read_op(io).await
}

/// One LDAPMessage: returns the protocol operation's tag and content.
async fn read_op(io: &mut Box<dyn Io>) -> Result<(u8, Vec<u8>), Failure> {
    let mut first = [0u8; 2];
    io.read_exact(&mut first)
        .await
        .map_err(|e| io_failure(&e, "reading the answer"))?;
    if first[0] != 0x30 {
        return Err(not_ldap());
    }
    let len = if first[1] & 0x80 == 0 {
        usize::from(first[1])
    } else {
        let n = usize::from(first[1] & 0x7f);
        if n == 0 || n > 4 {
            return Err(not_ldap());
        }
        let mut b = [0u8; 4];
        io.read_exact(&mut b[4 - n..])
            .await
            .map_err(|e| io_failure(&e, "reading the answer"))?;
        u32::from_be_bytes(b) as usize
    };
    if len > 1 << 20 {
        return Err(not_ldap());
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body)
        .await
        .map_err(|e| io_failure(&e, "reading the answer"))?;
    let mut r = Ber(&body);
    let (tag, _id) = r.next()?;
    if tag != 0x02 {
        return Err(not_ldap());
    }
    let (tag, op) = r.next()?;
    Ok((tag, op.to_vec()))
}

struct Ber<'a>(&'a [u8]);

impl<'a> Ber<'a> {
    fn next(&mut self) -> Result<(u8, &'a [u8]), Failure> {
        let d = self.0;
        if d.len() < 2 {
            return Err(not_ldap());
        }
        let tag = d[0];
        let (len, head) = if d[1] & 0x80 == 0 {
            (usize::from(d[1]), 2)
        } else {
            let n = usize::from(d[1] & 0x7f);
            if n == 0 || n > 4 || d.len() < 2 + n {
                return Err(not_ldap());
            }
            (
                d[2..2 + n]
                    .iter()
                    .fold(0usize, |a, b| (a << 8) | usize::from(*b)),
                2 + n,
            )
        };
        if d.len() < head + len {
            return Err(not_ldap());
        }
        self.0 = &d[head + len..];
        Ok((tag, &d[head..head + len]))
    }
}

/// The resultCode and matchedDN of an LDAPResult. The diagnostic message is not returned:
/// it could echo what was sent.
fn ldap_result(body: &[u8]) -> Result<(u32, String), Failure> {
    let mut r = Ber(body);
    let (tag, code) = r.next()?;
    if tag != 0x0a || code.is_empty() || code.len() > 4 {
        return Err(not_ldap());
    }
    let code = code.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
    let matched = r
        .next()
        .map(|(_, m)| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    Ok((code, matched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_integers_encode_as_ber() {
        assert_eq!(len_bytes(5), vec![5]);
        assert_eq!(len_bytes(200), vec![0x81, 200]);
        assert_eq!(len_bytes(300), vec![0x82, 1, 44]);
        assert_eq!(int_bytes(1), vec![1]);
        assert_eq!(int_bytes(200), vec![0, 200]);
        assert_eq!(int_bytes(300), vec![1, 44]);
    }
}
