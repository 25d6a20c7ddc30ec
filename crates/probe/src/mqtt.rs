//! MQTT probe: optional TLS (tls), then CONNECT → CONNACK in protocol 3.1.1 or 5 (auth),
//! then DISCONNECT. MQTT has no server banner, so the result names no server version.

use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run};
use crate::tls;
use crate::tls::broker_tls;
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth];

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
    let (host, port, level, use_tls, opts) = run
        .stage(S::Resolve, async {
            let host = t.required_str("host")?.to_owned();
            let port = t.port("port")?;
            if t.str("transport").is_some_and(|x| x != "tcp") {
                return Err(Failure::new(
                    ErrorClass::NotImplemented,
                    "testing MQTT over WebSockets is not implemented yet",
                ));
            }
            let level = match t.str("protocol_version").unwrap_or("5") {
                "3.1.1" => 4u8,
                "5" => 5,
                _ => {
                    return Err(Failure::new(
                        ErrorClass::InvalidSettings,
                        "protocol_version must be 3.1.1 or 5",
                    ))
                }
            };
            let (use_tls, opts) = broker_tls(t);
            let detail = format!(
                "{host}:{port}, MQTT {}{}",
                if level == 4 { "3.1.1" } else { "5" },
                if use_tls { ", TLS" } else { "" }
            );
            Ok(((host, port, level, use_tls, opts), Some(detail)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut io: Box<dyn Io> = if use_tls {
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
        run.warn("the connection is not encrypted");
        Box::new(tcp)
    };
    let user = t.str("username").map(str::to_owned);
    let password = t.secret("password").cloned();
    let client_id = t.str("client_id").map(str::to_owned).unwrap_or_else(|| {
        let mut r = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut r);
        format!(
            "patchbay-probe-{}",
            r.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    });
    run.stage(S::Auth, async {
        let mut var = Vec::new();
        put_str(&mut var, b"MQTT");
        var.push(level);
        let mut flags = 0x02; // clean session / clean start
        if user.is_some() {
            flags |= 0x80;
        }
        if password.is_some() {
            flags |= 0x40;
        }
        var.push(flags);
        var.extend_from_slice(&30u16.to_be_bytes()); // keep-alive
        if level == 5 {
            var.push(0); // no properties
        }
        put_str(&mut var, client_id.as_bytes());
        if let Some(u) = &user {
            put_str(&mut var, u.as_bytes());
        }
        if let Some(p) = &password {
            put_str(&mut var, p.expose_secret().as_bytes());
        }
        let mut packet = vec![0x10];
        put_varint(&mut packet, var.len());
        packet.extend_from_slice(&var);
        io.write_all(&packet)
            .await
            .map_err(|e| io_failure(&e, "sending CONNECT"))?;
        io.flush()
            .await
            .map_err(|e| io_failure(&e, "sending CONNECT"))?;
        let mut head = [0u8; 1];
        io.read_exact(&mut head)
            .await
            .map_err(|e| io_failure(&e, "waiting for CONNACK"))?;
        if head[0] != 0x20 {
            return Err(not_mqtt());
        }
        let len = read_varint(&mut io).await?;
        if !(2..=1024).contains(&len) {
            return Err(not_mqtt());
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body)
            .await
            .map_err(|e| io_failure(&e, "waiting for CONNACK"))?;
        let code = body[1];
        if code != 0 {
            return Err(connack_failure(level, code));
        }
        let who = user.as_deref().unwrap_or("anonymous");
        Ok(((), Some(format!("CONNACK accepted ({who})"))))
    })
    .await?;
    let _ = io.write_all(&[0xe0, 0x00]).await; // DISCONNECT
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(65535)];
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(s);
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

async fn read_varint(io: &mut Box<dyn Io>) -> Result<usize, Failure> {
    let mut n = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        io.read_exact(&mut b)
            .await
            .map_err(|e| io_failure(&e, "waiting for CONNACK"))?;
        n |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(not_mqtt())
}

fn not_mqtt() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak MQTT",
    )
    .hint("is this the right port? MQTT listens on 1883 (8883 with TLS); is TLS required?")
}

/// CONNACK return codes (3.1.1) and reason codes (5).
fn connack_failure(level: u8, code: u8) -> Failure {
    let auth = |what: &str| {
        Failure::new(
            ErrorClass::AuthFailed,
            format!("the broker refused the login: {what} (code {code})"),
        )
        .hint("check the user name and password; the broker may not allow anonymous clients")
    };
    match (level, code) {
        (4, 4) | (5, 0x86) => auth("bad user name or password"),
        (4, 5) | (5, 0x87) => auth("not authorized"),
        (5, 0x8c) => auth("bad authentication method"),
        (4, 1) | (5, 0x84) => Failure::new(
            ErrorClass::ProtocolMismatch,
            format!("the broker does not accept this protocol version (code {code})"),
        )
        .hint("choose another protocol version (3.1.1 or 5) for this connection"),
        (4, 2) | (5, 0x85) => Failure::new(
            ErrorClass::InvalidSettings,
            format!("the broker rejected the client ID (code {code})"),
        )
        .hint("set another client ID, or leave it empty"),
        (5, 0x8a) => Failure::new(
            ErrorClass::PermissionDenied,
            format!("the broker has banned this client (code {code})"),
        ),
        (4, 3) | (5, 0x88 | 0x89 | 0x97 | 0x9f) => Failure::new(
            ErrorClass::RateLimited,
            format!("the broker is unavailable or busy (code {code})"),
        )
        .hint("retry later"),
        _ => Failure::new(
            ErrorClass::Unknown,
            format!("the broker refused the connection (code {code})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_uses_the_mqtt_varint() {
        let mut v = Vec::new();
        put_varint(&mut v, 321);
        assert_eq!(v, [0xc1, 0x02]);
        let mut v = Vec::new();
        put_varint(&mut v, 0);
        assert_eq!(v, [0]);
    }
}
