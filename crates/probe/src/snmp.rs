//! SNMP over UDP, BER written by hand: v2c sends GET sysDescr.0 / sysUpTime.0 with the
//! community; v3 discovers the agent's engine (RFC 3414 report), then sends the same GET
//! with USM (HMAC-MD5/SHA-1-96 or the SHA-2 family of RFC 7860, AES-128-CFB of RFC 3826).
//!
//! SNMP never says why it refuses a community: the agent just stays silent, so a wrong
//! community is a timeout at the auth stage. USM does answer: unknown user, wrong digest,
//! decryption error come back as reports, mapped to `auth_failed`.

use std::net::SocketAddr;
use std::time::Duration;

use patchbay_crypto::SecretString;
use rand::RngCore;
use tokio::net::UdpSocket;

use crate::net::{self, io_failure};
use crate::result::{ErrorClass, Failure, ProbeStage as S, Run, ServerInfo, StageResult, Stopped};
use crate::{NetworkGuard, ProbeResult, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const SYS_DESCR: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 1, 0];
const SYS_UPTIME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];

const SILENT_HINT: &str = "SNMP agents drop a request they do not accept without answering, so a wrong community, an access rule that excludes the patchbay server's address and a wrong port all look the same: check the community, the agent's access rules (e.g. rocommunity … SOURCE) and the port";

mod ber;
mod usm;

use usm::{aes_cfb, aes_iv, AuthProto};

/// One decoded PDU: response or report.
struct Pdu {
    tag: u8,
    request_id: i64,
    error_status: i64,
    /// (OID content bytes, value tag, value content)
    varbinds: Vec<(Vec<u8>, u8, Vec<u8>)>,
}

fn decode_pdu(tag: u8, content: &[u8]) -> Option<Pdu> {
    let mut r = ber::Reader(content);
    let request_id = r.int()?;
    let error_status = r.int()?;
    let _error_index = r.int()?;
    let mut vbs = ber::Reader(r.expect(ber::SEQ)?);
    let mut varbinds = Vec::new();
    while !vbs.0.is_empty() {
        let mut vb = ber::Reader(vbs.expect(ber::SEQ)?);
        let oid = vb.expect(0x06)?.to_vec();
        let (vt, vc) = vb.next()?;
        varbinds.push((oid, vt, vc.to_vec()));
    }
    Some(Pdu {
        tag,
        request_id,
        error_status,
        varbinds,
    })
}

fn get_pdu(request_id: i64, oids: &[&[u32]]) -> Vec<u8> {
    let vbs: Vec<Vec<u8>> = oids
        .iter()
        .map(|o| ber::seq(&[&ber::oid(o), &[0x05, 0x00]]))
        .collect();
    let vbs = ber::seq(&vbs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    ber::tlv(
        ber::GET,
        &[ber::int(request_id), ber::int(0), ber::int(0), vbs].concat(),
    )
}

struct Usm {
    user: String,
    auth: Option<(AuthProto, SecretString)>,
    privacy: Option<SecretString>,
    context: String,
}

enum Security {
    Community(SecretString),
    Usm(Usm),
}

struct Plan {
    host: String,
    port: u16,
    security: Security,
    attempt: Duration,
    attempts: u32,
}

fn plan(t: &Target<'_>) -> Result<Plan, Failure> {
    let host = t.required_str("host")?.to_owned();
    let port = t.port("port")?;
    let attempt =
        Duration::from_millis(t.int("timeout_ms").unwrap_or(1000).clamp(10, 60_000) as u64);
    let attempts = t.int("retries").unwrap_or(2).clamp(0, 10) as u32 + 1;
    let security = match t.str("version").unwrap_or("v2c") {
        "v2c" => Security::Community(t.secret("community").cloned().ok_or_else(|| {
            Failure::new(ErrorClass::InvalidSettings, "SNMP v2c needs a community")
        })?),
        "v3" => {
            let user = t.required_str("security_name")?.to_owned();
            let level = t.str("security_level").unwrap_or("authPriv");
            let auth = match level {
                "noAuthNoPriv" => None,
                "authNoPriv" | "authPriv" => {
                    let proto = t.str("auth_protocol").unwrap_or("SHA-256");
                    let proto = AuthProto::parse(proto).ok_or_else(|| {
                        Failure::new(
                            ErrorClass::InvalidSettings,
                            format!("unknown auth protocol `{proto}`"),
                        )
                    })?;
                    let key = t.secret("auth_key").cloned().ok_or_else(|| {
                        Failure::new(
                            ErrorClass::InvalidSettings,
                            format!("security level {level} needs an auth passphrase"),
                        )
                    })?;
                    Some((proto, key))
                }
                other => {
                    return Err(Failure::new(
                        ErrorClass::InvalidSettings,
                        format!("unknown security level `{other}`"),
                    ))
                }
            };
            let privacy = if level == "authPriv" {
                match t.str("priv_protocol").unwrap_or("AES") {
                    "AES" => {}
                    other => return Err(Failure::new(
                        ErrorClass::NotImplemented,
                        format!("the test speaks AES-128 privacy only, not {other}"),
                    )
                    .hint(
                        "test with priv_protocol AES, or check this agent with net-snmp's snmpget",
                    )),
                }
                Some(t.secret("priv_key").cloned().ok_or_else(|| {
                    Failure::new(
                        ErrorClass::InvalidSettings,
                        "security level authPriv needs a privacy passphrase",
                    )
                })?)
            } else {
                None
            };
            Security::Usm(Usm {
                user,
                auth,
                privacy,
                context: t.str("context_name").unwrap_or("").to_owned(),
            })
        }
        other => {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                format!("unknown SNMP version `{other}`"),
            ))
        }
    };
    Ok(Plan {
        host,
        port,
        security,
        attempt,
        attempts,
    })
}

/// A UDP socket connected to the agent; `ask` resends on silence.
struct Agent {
    sock: UdpSocket,
    addr: SocketAddr,
    attempt: Duration,
    attempts: u32,
}

impl Agent {
    async fn open(addr: SocketAddr, plan: &Plan) -> Result<Self, Failure> {
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| io_failure(&e, "opening a UDP socket"))?;
        sock.connect(addr)
            .await
            .map_err(|e| net::connect_failure(addr, &e))?;
        Ok(Self {
            sock,
            addr,
            attempt: plan.attempt,
            attempts: plan.attempts,
        })
    }

    /// Sends `msg` until `accept` takes a datagram or every attempt stayed silent.
    async fn ask<T>(
        &self,
        msg: &[u8],
        what: &str,
        accept: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<T, Failure> {
        let mut buf = vec![0u8; 65_535];
        for _ in 0..self.attempts {
            self.sock
                .send(msg)
                .await
                .map_err(|e| net::connect_failure(self.addr, &e))?;
            let until = tokio::time::Instant::now() + self.attempt;
            loop {
                match tokio::time::timeout_at(until, self.sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(net::connect_failure(self.addr, &e)),
                    Ok(Ok(n)) => {
                        if let Some(v) = accept(&buf[..n]) {
                            return Ok(v);
                        }
                    }
                }
            }
        }
        Err(Failure::new(
            ErrorClass::Timeout,
            format!(
                "no answer from {} to {what} ({} tries, {} ms each)",
                self.addr,
                self.attempts,
                self.attempt.as_millis()
            ),
        ))
    }
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let plan = run
        .stage(S::Resolve, async {
            let p = plan(t)?;
            let how = match &p.security {
                Security::Community(_) => "v2c with a community".to_owned(),
                Security::Usm(u) => format!(
                    "v3 user {} ({})",
                    u.user,
                    match (&u.auth, &u.privacy) {
                        (None, _) => "noAuthNoPriv".to_owned(),
                        (Some((a, _)), None) => format!("authNoPriv, {a:?}"),
                        (Some((a, _)), Some(_)) => format!("authPriv, {a:?} + AES-128"),
                    }
                ),
            };
            let detail = format!("{}:{} over UDP, {how}", p.host, p.port);
            Ok((p, Some(detail)))
        })
        .await?;
    let checked = run
        .stage(S::Dns, net::dns(guard, &plan.host, plan.port))
        .await?;
    run.skip(
        S::Tcp,
        "UDP: no connection; the agent's first answer shows it is reachable",
    );
    run.skip(S::Tls, "SNMP has no TLS (v3 privacy is checked at auth)");
    let addr = checked.addrs[0];
    let agent = match Agent::open(addr, &plan).await {
        Ok(a) => a,
        Err(f) => return Err(run.fail(S::Auth, f)),
    };
    let pdu = match &plan.security {
        Security::Community(c) => run.stage(S::Auth, v2c_get(&agent, c)).await?,
        Security::Usm(u) => run.stage(S::Auth, v3_get(&agent, u)).await?,
    };
    let version = match plan.security {
        Security::Community(_) => "SNMPv2c",
        Security::Usm(_) => "SNMPv3",
    };
    let server = run.stage(S::Query, async { read_system(&pdu) }).await?;
    run.server = Some(ServerInfo {
        product: format!("SNMP agent ({version})"),
        version: server,
    });
    if matches!(&plan.security, Security::Community(_)) {
        run.warn("SNMP v2c sends the community in clear text");
    } else if let Security::Usm(u) = &plan.security {
        if u.privacy.is_none() {
            run.warn("SNMPv3 without privacy: requests and answers are not encrypted");
        }
    }
    Ok(())
}

fn request_id() -> i64 {
    (rand::thread_rng().next_u32() >> 1) as i64
}

async fn v2c_get(agent: &Agent, community: &SecretString) -> StageResult<Pdu> {
    let id = request_id();
    let msg = ber::seq(&[
        &ber::int(1),
        &ber::octets(community.expose_secret().as_bytes()),
        &get_pdu(id, &[SYS_DESCR, SYS_UPTIME]),
    ]);
    let pdu = agent
        .ask(&msg, "a GET with the community", |b| {
            let mut r = ber::Reader(ber::Reader(b).expect(ber::SEQ)?);
            if r.int()? != 1 {
                return None;
            }
            r.expect(ber::OCTETS)?;
            let (tag, c) = r.next()?;
            decode_pdu(tag, c).filter(|p| p.request_id == id && p.tag == ber::RESPONSE)
        })
        .await
        .map_err(|f| {
            if f.class == ErrorClass::Timeout {
                f.hint(SILENT_HINT)
            } else {
                f
            }
        })?;
    Ok((
        pdu,
        Some("the agent answered a GET with this community".into()),
    ))
}

/// A decoded v3 message (RFC 3412 / 3414).
struct V3Reply {
    raw: Vec<u8>,
    flags: u8,
    engine: Vec<u8>,
    boots: i64,
    time: i64,
    auth_params: Vec<u8>,
    priv_params: Vec<u8>,
    /// (tag, content) of msgData: a plain ScopedPDU (SEQ) or an encrypted one (OCTETS).
    data: (u8, Vec<u8>),
}

fn decode_v3(b: &[u8], msg_id: i64) -> Option<V3Reply> {
    let mut r = ber::Reader(ber::Reader(b).expect(ber::SEQ)?);
    if r.int()? != 3 {
        return None;
    }
    let mut g = ber::Reader(r.expect(ber::SEQ)?);
    if g.int()? != msg_id {
        return None;
    }
    g.int()?;
    let flags = *g.expect(ber::OCTETS)?.first()?;
    let mut usm = ber::Reader(ber::Reader(r.expect(ber::OCTETS)?).expect(ber::SEQ)?);
    let engine = usm.expect(ber::OCTETS)?.to_vec();
    let boots = usm.int()?;
    let time = usm.int()?;
    usm.expect(ber::OCTETS)?;
    let auth_params = usm.expect(ber::OCTETS)?.to_vec();
    let priv_params = usm.expect(ber::OCTETS)?.to_vec();
    let (tag, c) = r.next()?;
    Some(V3Reply {
        raw: b.to_vec(),
        flags,
        engine,
        boots,
        time,
        auth_params,
        priv_params,
        data: (tag, c.to_vec()),
    })
}

/// The scoped PDU's PDU, decrypting when the message says so.
fn scoped_pdu(reply: &V3Reply, priv_key: Option<&[u8]>) -> Option<Pdu> {
    let plain;
    let scoped: &[u8] = if reply.flags & 0x02 != 0 {
        let key = priv_key?;
        if reply.data.0 != ber::OCTETS || reply.priv_params.len() != 8 {
            return None;
        }
        let iv = aes_iv(reply.boots, reply.time, &reply.priv_params);
        plain = aes_cfb(key, iv, &reply.data.1, false);
        ber::Reader(&plain).expect(ber::SEQ)?
    } else {
        if reply.data.0 != ber::SEQ {
            return None;
        }
        &reply.data.1
    };
    let mut s = ber::Reader(scoped);
    s.expect(ber::OCTETS)?;
    s.expect(ber::OCTETS)?;
    let (tag, c) = s.next()?;
    decode_pdu(tag, c)
}

struct V3Out<'a> {
    msg_id: i64,
    flags: u8,
    engine: &'a [u8],
    boots: i64,
    time: i64,
    user: &'a [u8],
    auth: Option<(AuthProto, &'a [u8])>,
    priv_params: &'a [u8],
    data: Vec<u8>,
}

fn encode_v3(m: V3Out<'_>) -> Vec<u8> {
    let mac_len = m.auth.map(|(p, _)| p.mac_len()).unwrap_or(0);
    let head = [
        ber::octets(m.engine),
        ber::int(m.boots),
        ber::int(m.time),
        ber::octets(m.user),
    ]
    .concat();
    let usm_tail = ber::octets(m.priv_params);
    let usm = ber::seq(&[&head, &ber::octets(&vec![0u8; mac_len]), &usm_tail]);
    let global = ber::seq(&[
        &ber::int(m.msg_id),
        &ber::int(65_507),
        &ber::octets(&[m.flags]),
        &ber::int(3),
    ]);
    let mut msg = ber::seq(&[&ber::int(3), &global, &ber::octets(&usm), &m.data]);
    if let Some((proto, key)) = m.auth {
        // The auth parameters sit just before the privacy parameters and msgData.
        let at = msg.len() - m.data.len() - usm_tail.len() - mac_len;
        let mac = proto.mac(key, &msg);
        msg[at..at + mac_len].copy_from_slice(&mac);
    }
    msg
}

fn usm_report(pdu: &Pdu) -> Failure {
    let prefix = ber::oid_content(&[1, 3, 6, 1, 6, 3, 15, 1, 1]);
    let which = pdu
        .varbinds
        .first()
        .filter(|(oid, _, _)| oid.starts_with(&prefix))
        .and_then(|(oid, _, _)| oid.get(prefix.len()).copied());
    match which {
        Some(1) => Failure::new(ErrorClass::AuthFailed, "the agent does not allow this security level for the user (usmStatsUnsupportedSecLevels)")
            .hint("check the user's security level (noAuthNoPriv, authNoPriv, authPriv) against the agent's configuration"),
        Some(3) => Failure::new(ErrorClass::AuthFailed, "the agent does not know this user (usmStatsUnknownUserNames)")
            .hint("check the security name; SNMPv3 users are defined on the agent (createUser)"),
        Some(5) => Failure::new(ErrorClass::AuthFailed, "the agent rejected the message digest (usmStatsWrongDigests)")
            .hint("check the auth passphrase and the auth protocol (MD5, SHA, SHA-2) the user was created with"),
        Some(6) => Failure::new(ErrorClass::AuthFailed, "the agent could not decrypt the request (usmStatsDecryptionErrors)")
            .hint("check the privacy passphrase and protocol"),
        Some(2) => Failure::new(ErrorClass::AuthFailed, "the agent says the request is outside its time window (usmStatsNotInTimeWindows)")
            .hint("the agent's engine boots/time moved during the test; try again"),
        _ => Failure::new(ErrorClass::ProtocolMismatch, "the agent answered with a report instead of a response"),
    }
}

async fn v3_get(agent: &Agent, usm: &Usm) -> StageResult<Pdu> {
    // 1. Discovery: an empty noAuthNoPriv request makes the agent report its engine ID,
    //    boots and time.
    let msg_id = request_id();
    let probe = encode_v3(V3Out {
        msg_id,
        flags: 0x04,
        engine: &[],
        boots: 0,
        time: 0,
        user: &[],
        auth: None,
        priv_params: &[],
        data: ber::seq(&[&ber::octets(&[]), &ber::octets(&[]), &get_pdu(msg_id, &[])]),
    });
    let found = agent
        .ask(&probe, "an SNMPv3 engine discovery", |b| decode_v3(b, msg_id))
        .await
        .map_err(|f| {
            if f.class == ErrorClass::Timeout {
                f.hint("no SNMPv3 engine answered discovery: check the host, the port, and that the agent speaks SNMPv3")
            } else {
                f
            }
        })?;
    if found.engine.is_empty() {
        return Err(Failure::new(
            ErrorClass::ProtocolMismatch,
            "the agent answered discovery without an engine ID",
        ));
    }
    let engine = found.engine.clone();
    let (mut boots, mut time) = (found.boots, found.time);

    // 2. Keys localized to that engine.
    let auth_key = usm
        .auth
        .as_ref()
        .map(|(p, k)| (*p, p.localized_key(k.expose_secret().as_bytes(), &engine)));
    let priv_key = match (&usm.privacy, &usm.auth) {
        (Some(k), Some((p, _))) => Some(p.localized_key(k.expose_secret().as_bytes(), &engine)),
        _ => None,
    };
    // 3. The GET, authenticated (and encrypted) as the user. One retry when the agent
    //    says our clock is outside its window.
    for _ in 0..2 {
        let msg_id = request_id();
        let scoped = ber::seq(&[
            &ber::octets(&engine),
            &ber::octets(usm.context.as_bytes()),
            &get_pdu(msg_id, &[SYS_DESCR, SYS_UPTIME]),
        ]);
        let mut salt = [0u8; 8];
        let (data, flags) = match &priv_key {
            Some(k) => {
                rand::thread_rng().fill_bytes(&mut salt);
                let enc = aes_cfb(k, aes_iv(boots, time, &salt), &scoped, true);
                (ber::octets(&enc), 0x07)
            }
            None if auth_key.is_some() => (scoped, 0x05),
            None => (scoped, 0x04),
        };
        let msg = encode_v3(V3Out {
            msg_id,
            flags,
            engine: &engine,
            boots,
            time,
            user: usm.user.as_bytes(),
            auth: auth_key.as_ref().map(|(p, k)| (*p, k.as_slice())),
            priv_params: if priv_key.is_some() { &salt } else { &[] },
            data,
        });
        let reply = agent
            .ask(&msg, "an SNMPv3 GET", |b| decode_v3(b, msg_id))
            .await
            .map_err(|f| {
                if f.class == ErrorClass::Timeout {
                    f.hint("the agent answered discovery but not the authenticated GET: check the user's access rules on the agent")
                } else {
                    f
                }
            })?;
        let pdu = scoped_pdu(&reply, priv_key.as_deref()).ok_or_else(|| {
            Failure::new(
                ErrorClass::AuthFailed,
                "the agent's answer could not be decrypted or decoded",
            )
            .hint("check the privacy passphrase")
        })?;
        if pdu.tag == ber::REPORT {
            let f = usm_report(&pdu);
            if f.message.contains("NotInTimeWindows") {
                boots = reply.boots;
                time = reply.time;
                continue;
            }
            return Err(f);
        }
        if pdu.tag != ber::RESPONSE {
            return Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                "the agent answered with an unexpected PDU",
            ));
        }
        if let Some((proto, key)) = &auth_key {
            if !verify_mac(&reply, *proto, key) {
                return Err(Failure::new(
                    ErrorClass::AuthFailed,
                    "the agent's answer carries a wrong digest",
                )
                .hint("the answer did not come from an agent that knows this user's key"));
            }
        }
        let detail = format!(
            "engine {} (boots {}); {}",
            hex::encode(&engine),
            boots,
            match (&auth_key, &priv_key) {
                (None, _) => format!("user {} answered without authentication", usm.user),
                (Some((p, _)), None) => format!("user {} authenticated ({p:?})", usm.user),
                (Some((p, _)), Some(_)) => {
                    format!(
                        "user {} authenticated ({p:?}) and encrypted (AES-128)",
                        usm.user
                    )
                }
            }
        );
        return Ok((pdu, Some(detail)));
    }
    Err(usm_report(&Pdu {
        tag: ber::REPORT,
        request_id: 0,
        error_status: 0,
        varbinds: vec![(
            ber::oid_content(&[1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0]),
            0x41,
            Vec::new(),
        )],
    }))
}

/// The answer's HMAC over the whole message with its auth parameters zeroed.
fn verify_mac(reply: &V3Reply, proto: AuthProto, key: &[u8]) -> bool {
    let got = &reply.auth_params;
    if got.len() != proto.mac_len() {
        return false;
    }
    let Some(at) = reply.raw.windows(got.len()).position(|w| w == &got[..]) else {
        return false;
    };
    let mut zeroed = reply.raw.clone();
    zeroed[at..at + got.len()].fill(0);
    proto.mac(key, &zeroed) == *got
}

fn read_system(pdu: &Pdu) -> StageResult<String> {
    if pdu.error_status != 0 {
        let (class, name) = match pdu.error_status {
            16 => (ErrorClass::PermissionDenied, "authorizationError"),
            2 => (ErrorClass::NotFound, "noSuchName"),
            5 => (ErrorClass::Unknown, "genErr"),
            _ => (ErrorClass::Unknown, "error"),
        };
        return Err(Failure::new(
            class,
            format!(
                "the agent answered the GET with {name} ({})",
                pdu.error_status
            ),
        ));
    }
    let descr_oid = ber::oid_content(SYS_DESCR);
    let uptime_oid = ber::oid_content(SYS_UPTIME);
    let mut descr = None;
    let mut uptime = None;
    for (oid, tag, value) in &pdu.varbinds {
        if *oid == descr_oid && *tag == ber::OCTETS {
            descr = Some(String::from_utf8_lossy(value).trim().to_owned());
        } else if *oid == uptime_oid && *tag == 0x43 {
            uptime = Some(value.iter().fold(0u64, |a, b| (a << 8) | *b as u64));
        }
    }
    let Some(descr) = descr else {
        return Err(Failure::new(
            ErrorClass::PermissionDenied,
            "the agent did not return sysDescr.0 (noSuchObject: the view excludes the system group?)",
        )
        .hint("allow the system group (1.3.6.1.2.1.1) in the view of this community or user"));
    };
    let mut short: String = descr.chars().take(120).collect();
    if short.len() < descr.len() {
        short.push('…');
    }
    let detail = match uptime {
        Some(ticks) => {
            let s = ticks / 100;
            format!(
                "sysDescr {short}; up {}d {}h {}m",
                s / 86_400,
                s / 3600 % 24,
                s / 60 % 60
            )
        }
        None => format!("sysDescr {short}"),
    };
    Ok((short, Some(detail)))
}
