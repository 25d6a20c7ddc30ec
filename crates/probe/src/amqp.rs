//! AMQP 0-9-1 probe (RabbitMQ and compatible brokers), written by hand so each step maps to
//! one stage: optional TLS (tls), protocol header → Connection.Start → StartOk with PLAIN →
//! Tune/TuneOk (auth), Connection.Open of the virtual host (query). The server's product
//! and version come from Connection.Start's properties.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::tls;
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xce;
const CONNECTION: u16 = 10;

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
    let (host, port, vhost, user, use_tls, opts) = run
        .stage(S::Resolve, async {
            let host = t.required_str("host")?.to_owned();
            let port = t.port("port")?;
            let vhost = t.str("virtual_host").unwrap_or("/").to_owned();
            let user = t.str("username").unwrap_or("guest").to_owned();
            let (use_tls, opts) = tls::broker_tls(t);
            let detail = format!(
                "{user}@{host}:{port} virtual host {vhost}{}",
                if use_tls { ", TLS" } else { "" }
            );
            Ok(((host, port, vhost, user, use_tls, opts), Some(detail)))
        })
        .await?;
    let password = t.secret("password").cloned();
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
        run.warn("the connection is not encrypted: the password travels in clear (PLAIN)");
        Box::new(tcp)
    };
    let mut c = Amqp { io, closed: false };
    let server = run
        .stage(S::Auth, async {
            let pw = password.as_ref().map(|p| p.expose_secret()).unwrap_or("");
            let server = login(&mut c, &user, pw).await?;
            Ok((server, Some(format!("logged in as {user} (PLAIN)"))))
        })
        .await?;
    run.server = Some(server);
    run.stage(S::Query, async {
        let mut args = shortstr(&vhost);
        args.extend_from_slice(&shortstr(""));
        args.push(0);
        c.send_method(CONNECTION, 40, &args).await?;
        let (method, body) = c.read_method("opening the virtual host").await?;
        match method {
            (CONNECTION, 41) => {}
            (CONNECTION, 50) => return Err(close_failure(&body, Some(&vhost))),
            _ => return Err(not_amqp()),
        }
        Ok(((), Some(format!("virtual host {vhost} opened"))))
    })
    .await?;
    let mut close = 200u16.to_be_bytes().to_vec();
    close.extend_from_slice(&shortstr("probe done"));
    close.extend_from_slice(&[0, 0, 0, 0]);
    let _ = c.send_method(CONNECTION, 50, &close).await;
    Ok(())
}

/// Protocol header to Tune/TuneOk. Returns the server's product and version.
async fn login(c: &mut Amqp, user: &str, password: &str) -> Result<ServerInfo, Failure> {
    c.io.write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(|e| io_failure(&e, "sending the protocol header"))?;
    let (method, body) = c.read_method("waiting for Connection.Start").await?;
    if method != (CONNECTION, 10) {
        return Err(not_amqp());
    }
    let mut at = 2; // version major, minor
    let props = table(&body, &mut at).ok_or_else(not_amqp)?;
    let mechanisms = longstr(&body, &mut at).ok_or_else(not_amqp)?;
    let get = |k: &str| {
        props
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let server = ServerInfo {
        product: get("product"),
        version: get("version"),
    };
    if !String::from_utf8_lossy(&mechanisms)
        .split(' ')
        .any(|m| m == "PLAIN")
    {
        return Err(Failure::new(
            ErrorClass::AuthFailed,
            "the broker does not offer the PLAIN mechanism",
        )
        .hint("enable PLAIN (auth_mechanisms) for this listener"));
    }
    let mut ok = Vec::new();
    // Client properties: ask for an explicit Connection.Close on a failed login instead of
    // a silent socket close (RabbitMQ's authentication_failure_close capability).
    let mut caps = Vec::new();
    caps.extend_from_slice(&shortstr("authentication_failure_close"));
    caps.extend_from_slice(&[b't', 1]);
    let mut client = Vec::new();
    client.extend_from_slice(&shortstr("product"));
    client.push(b'S');
    client.extend_from_slice(&longstr_bytes(b"patchbay-probe"));
    client.extend_from_slice(&shortstr("capabilities"));
    client.push(b'F');
    client.extend_from_slice(&longstr_bytes(&caps));
    ok.extend_from_slice(&longstr_bytes(&client));
    ok.extend_from_slice(&shortstr("PLAIN"));
    let mut response = vec![0];
    response.extend_from_slice(user.as_bytes());
    response.push(0);
    response.extend_from_slice(password.as_bytes());
    ok.extend_from_slice(&longstr_bytes(&response));
    ok.extend_from_slice(&shortstr("en_US"));
    c.send_method(CONNECTION, 11, &ok).await?;
    let answer = c.read_method("logging in").await;
    let (method, body) = match answer {
        Ok(m) => m,
        // Brokers without authentication_failure_close drop the socket on a wrong login.
        Err(_) if c.closed => {
            return Err(Failure::new(
                ErrorClass::AuthFailed,
                "the broker closed the connection after the login: it refused the user name or password",
            )
            .hint(format!("check the password of {user}; RabbitMQ closes the socket on a failed login")))
        }
        Err(f) => return Err(f),
    };
    match method {
        (CONNECTION, 30) => {
            let channel_max = body.get(0..2).ok_or_else(not_amqp)?.to_vec();
            let frame_max = body.get(2..6).ok_or_else(not_amqp)?.to_vec();
            let mut tune_ok = channel_max;
            tune_ok.extend_from_slice(&frame_max);
            tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
            c.send_method(CONNECTION, 31, &tune_ok).await?;
            Ok(server)
        }
        (CONNECTION, 50) => Err(close_failure(&body, None)),
        _ => Err(not_amqp()),
    }
}

fn not_amqp() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak AMQP 0-9-1",
    )
    .hint("is this the right port? AMQP listens on 5672 (5671 with TLS); is TLS required?")
}

/// Connection.Close from the broker: reply code and (short) text.
fn close_failure(body: &[u8], vhost: Option<&str>) -> Failure {
    let code = body
        .get(0..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0);
    let mut at = 2;
    let text = shortstr_at(body, &mut at).unwrap_or_default();
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    let message = format!("broker: {text} ({code})");
    match (code, vhost) {
        (403, _) => {
            Failure::new(ErrorClass::AuthFailed, message).hint("check the user name and password")
        }
        (530, Some(v)) if text.contains("not found") => Failure::new(ErrorClass::NotFound, message)
            .hint(format!(
                "virtual host {v} does not exist: check its name (rabbitmqctl list_vhosts)"
            )),
        (530, Some(v)) => Failure::new(ErrorClass::PermissionDenied, message).hint(format!(
            "the user has no permissions on virtual host {v}: rabbitmqctl set_permissions -p {v} …"
        )),
        (320 | 541, _) => Failure::new(ErrorClass::Unknown, message)
            .hint("the broker is shutting down or failed; retry later"),
        _ => Failure::new(ErrorClass::Unknown, message),
    }
}

struct Amqp {
    io: Box<dyn Io>,
    /// The broker closed the socket (EOF or reset) during the last read.
    closed: bool,
}

impl Amqp {
    async fn send_method(&mut self, class: u16, method: u16, args: &[u8]) -> Result<(), Failure> {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        let mut out = vec![FRAME_METHOD, 0, 0];
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&payload);
        out.push(FRAME_END);
        self.io
            .write_all(&out)
            .await
            .map_err(|e| io_failure(&e, "sending to the broker"))?;
        self.io
            .flush()
            .await
            .map_err(|e| io_failure(&e, "sending to the broker"))
    }

    /// The next method frame on channel 0: ((class, method), arguments).
    async fn read_method(&mut self, while_: &str) -> Result<((u16, u16), Vec<u8>), Failure> {
        loop {
            let mut head = [0u8; 7];
            if let Err(e) = self.io.read_exact(&mut head).await {
                use std::io::ErrorKind as K;
                self.closed = matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset);
                return Err(io_failure(&e, while_));
            }
            if &head[..4] == b"AMQP" {
                // The broker answers our header with the version it speaks, then closes.
                return Err(Failure::new(
                    ErrorClass::ProtocolMismatch,
                    "the broker does not speak AMQP 0-9-1 (it answered with another protocol header)",
                )
                .hint("use a client protocol this broker enables, or check the port"));
            }
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            if size > 1 << 20 {
                return Err(not_amqp());
            }
            let mut payload = vec![0u8; size + 1];
            self.io
                .read_exact(&mut payload)
                .await
                .map_err(|e| io_failure(&e, while_))?;
            if payload.pop() != Some(FRAME_END) {
                return Err(not_amqp());
            }
            match head[0] {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD if payload.len() >= 4 => {
                    let class = u16::from_be_bytes([payload[0], payload[1]]);
                    let method = u16::from_be_bytes([payload[2], payload[3]]);
                    return Ok(((class, method), payload.split_off(4)));
                }
                _ => return Err(not_amqp()),
            }
        }
    }
}

fn shortstr(s: &str) -> Vec<u8> {
    let b = &s.as_bytes()[..s.len().min(255)];
    let mut out = vec![u8::try_from(b.len()).unwrap_or(255)];
    out.extend_from_slice(b);
    out
}

fn longstr_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(b.len()).unwrap_or(0).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

fn shortstr_at(b: &[u8], at: &mut usize) -> Option<String> {
    let n = usize::from(*b.get(*at)?);
    let s = b.get(*at + 1..*at + 1 + n)?;
    *at += 1 + n;
    Some(String::from_utf8_lossy(s).into_owned())
}

fn longstr(b: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let n = u32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let s = b.get(*at + 4..(*at + 4).checked_add(n)?)?;
    *at += 4 + n;
    Some(s.to_vec())
}

/// A field table's top-level string entries (others are skipped).
fn table(b: &[u8], at: &mut usize) -> Option<Vec<(String, String)>> {
    let raw = longstr(b, at)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let name = shortstr_at(&raw, &mut i)?;
        let kind = *raw.get(i)?;
        i += 1;
        if kind == b'S' {
            let v = longstr(&raw, &mut i)?;
            out.push((name, String::from_utf8_lossy(&v).into_owned()));
        } else {
            skip_value(&raw, &mut i, kind)?;
        }
    }
    Some(out)
}

fn skip_value(b: &[u8], at: &mut usize, kind: u8) -> Option<()> {
    let fixed = match kind {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' | b'F' | b'A' => {
            longstr(b, at)?;
            return Some(());
        }
        _ => return None,
    };
    *at += fixed;
    (*at <= b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_table_yields_its_strings_and_skips_the_rest() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&shortstr("capabilities"));
        raw.push(b'F');
        raw.extend_from_slice(&longstr_bytes(&[3, b'a', b'b', b'c', b't', 1]));
        raw.extend_from_slice(&shortstr("n"));
        raw.extend_from_slice(&[b'I', 0, 0, 0, 7]);
        raw.extend_from_slice(&shortstr("product"));
        raw.push(b'S');
        raw.extend_from_slice(&longstr_bytes(b"RabbitMQ"));
        let b = longstr_bytes(&raw);
        let t = table(&b, &mut 0).unwrap();
        assert_eq!(t, vec![("product".to_owned(), "RabbitMQ".to_owned())]);
    }
}
