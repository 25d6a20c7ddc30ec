//! Log sinks that only receive: syslog (RFC 5424 or 3164 over UDP, TCP or TLS), GELF
//! (Graylog, JSON over UDP, TCP or HTTP) and Logback's socket receiver. The test sends one
//! message and reports ok after the write: only GELF's HTTP input answers, UDP cannot
//! confirm delivery at all (a closed port is noticed only when the host says so with an
//! ICMP port-unreachable), and Logback gets a connection but no event (its wire format is
//! Java serialization).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, Stopped};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

/// The text every test message carries, so a receiver's operator can find it.
pub const TEST_MESSAGE: &str = "patchbay connection test";

const UDP_WARNING: &str = "UDP cannot confirm delivery: the message was sent, but nothing tells whether the server received it";

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
    /// GELF HTTP input: one POST, which (unlike the other transports) is answered.
    Http,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Syslog,
    Gelf,
    Logback,
}

fn tls_options(t: &Target<'_>) -> TlsOptions {
    let mode = verify_unless(t, "tls_verify", VerifyMode::None);
    TlsOptions::from_target(t, Some(mode), PemFields::TLS)
}

fn transport(t: &Target<'_>, kind: Kind) -> Result<Transport, Failure> {
    let tls = t.bool("tls").unwrap_or(false);
    match (kind, t.str("transport")) {
        (Kind::Logback, _) => Ok(if tls { Transport::Tls } else { Transport::Tcp }),
        (_, Some("udp") | None) => Ok(Transport::Udp),
        (Kind::Syslog, Some("tcp")) => Ok(Transport::Tcp),
        (Kind::Syslog, Some("tls")) => Ok(Transport::Tls),
        (Kind::Gelf, Some("tcp")) => Ok(if tls { Transport::Tls } else { Transport::Tcp }),
        (Kind::Gelf, Some("http")) => Ok(Transport::Http),
        (_, Some(other)) => Err(Failure::new(
            ErrorClass::InvalidSettings,
            format!("unknown transport `{other}`"),
        )),
    }
}

pub async fn probe(
    t: &Target<'_>,
    guard: &NetworkGuard,
    budget: Duration,
    kind: Kind,
) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard, kind).await;
    run.finish()
}

async fn steps(
    run: &mut Run,
    t: &Target<'_>,
    guard: &NetworkGuard,
    kind: Kind,
) -> Result<(), Stopped> {
    let (host, port, transport, message) = run
        .stage(S::Resolve, async {
            let host = t.required_str("host")?.to_owned();
            let port = t.port("port")?;
            let transport = transport(t, kind)?;
            let message = match kind {
                Kind::Syslog => syslog_message(t, transport)?,
                Kind::Gelf => gelf_message(t, transport),
                Kind::Logback => Vec::new(),
            };
            let detail = format!(
                "{host}:{port} over {}",
                match transport {
                    Transport::Udp => "UDP",
                    Transport::Tcp => "TCP",
                    Transport::Tls => "TLS",
                    Transport::Http if t.bool("tls") == Some(true) => "HTTPS",
                    Transport::Http => "HTTP",
                }
            );
            Ok(((host, port, transport, message), Some(detail)))
        })
        .await?;
    let checked = run.stage(S::Dns, net::dns(guard, &host, port)).await?;
    run.skip(S::Auth, "the protocol has no login");
    if transport == Transport::Udp {
        run.skip(S::Tcp, "UDP: no connection to open");
        run.skip(S::Tls, "UDP: no TLS");
        let addr = checked.addrs[0];
        run.stage(S::Query, send_udp(addr, message)).await?;
        run.warn(UDP_WARNING);
        return Ok(());
    }
    if transport == Transport::Http {
        return gelf_http(run, t, &checked, port, message).await;
    }
    let tcp = run.stage(S::Tcp, net::tcp(&checked.addrs)).await?;
    let mut io: Box<dyn Io> = if transport == Transport::Tls {
        let opts = tls_options(t);
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
        run.skip(S::Tls, "plain TCP");
        run.warn("the connection is not encrypted");
        Box::new(tcp)
    };
    if kind == Kind::Logback {
        run.skip(
            S::Query,
            "no event sent: Logback's socket protocol is Java serialization",
        );
        run.warn("only the connection was tested: Logback receives Java-serialized events, which patchbay does not send");
        let _ = io.shutdown().await;
        return Ok(());
    }
    let len = message.len();
    run.stage(S::Query, async {
        io.write_all(&message)
            .await
            .map_err(|e| io_failure(&e, "sending the test message"))?;
        io.flush()
            .await
            .map_err(|e| io_failure(&e, "sending the test message"))?;
        // A clean close so the receiver sees the end of the stream.
        let _ = io.shutdown().await;
        Ok((
            (),
            Some(format!(
                "sent one test message ({len} bytes); the protocol has no acknowledgement"
            )),
        ))
    })
    .await?;
    Ok(())
}

async fn send_udp(addr: SocketAddr, message: Vec<u8>) -> crate::result::StageResult<()> {
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
    sock.send(&message)
        .await
        .map_err(|e| net::connect_failure(addr, &e))?;
    // A host without a listener may answer ICMP port-unreachable, which a connected UDP
    // socket reports on its next receive. Silence proves nothing.
    let mut buf = [0u8; 16];
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
    {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            return Err(net::connect_failure(addr, &e));
        }
    }
    Ok((
        (),
        Some(format!(
            "sent one test message ({} bytes) to {addr}; no port-unreachable came back",
            message.len()
        )),
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` and the parts RFC 3164 needs, from SigV4's date helper.
fn now_parts() -> (String, String) {
    let d = patchbay_external::sigv4::amz_date(SystemTime::now());
    let (y, mo, day) = (&d[0..4], &d[4..6], &d[6..8]);
    let (h, mi, s) = (&d[9..11], &d[11..13], &d[13..15]);
    let rfc3339 = format!("{y}-{mo}-{day}T{h}:{mi}:{s}Z");
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[mo.parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    let day: u8 = day.parse().unwrap_or(1);
    (rfc3339, format!("{month} {day:>2} {h}:{mi}:{s}"))
}

const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "", "", "", "", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
];

/// A printable token without spaces, as RFC 5424 header fields require.
fn token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

fn syslog_message(t: &Target<'_>, transport: Transport) -> Result<Vec<u8>, Failure> {
    let facility_name = t.str("facility").unwrap_or("user");
    let facility = FACILITIES
        .iter()
        .position(|f| !f.is_empty() && *f == facility_name)
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                format!("unknown syslog facility `{facility_name}`"),
            )
        })?;
    // Severity 6 (informational).
    let pri = facility * 8 + 6;
    let hostname = token(t.str("hostname").unwrap_or("patchbay"), 255);
    let app = token(t.str("app_name").unwrap_or("patchbay"), 48);
    let (rfc3339, bsd) = now_parts();
    let line = match t.str("format").unwrap_or("rfc5424") {
        "rfc3164" => format!("<{pri}>{bsd} {hostname} {app}: {TEST_MESSAGE}"),
        _ => format!("<{pri}>1 {rfc3339} {hostname} {app} - patchbay-test - {TEST_MESSAGE}"),
    };
    Ok(match transport {
        Transport::Udp => line.into_bytes(),
        // RFC 6587: octet counting (the default) or a trailing newline.
        _ if t.str("framing") == Some("newline") => format!("{line}\n").into_bytes(),
        _ => format!("{} {line}", line.len()).into_bytes(),
    })
}

fn gelf_message(t: &Target<'_>, transport: Transport) -> Vec<u8> {
    let mut msg = serde_json::json!({
        "version": "1.1",
        "host": t.str("source").unwrap_or("patchbay"),
        "short_message": TEST_MESSAGE,
        "level": 6,
        "_patchbay_test": true,
    });
    if let Some(f) = t.str("facility") {
        msg["_facility"] = f.into();
    }
    let mut out = serde_json::to_vec(&msg).unwrap_or_default();
    // GELF TCP frames end with a NUL byte; UDP datagrams and HTTP bodies are the JSON
    // itself (sent uncompressed, which GELF inputs accept beside gzip and zlib).
    if matches!(transport, Transport::Tcp | Transport::Tls) {
        out.push(0);
    }
    out
}

/// GELF over HTTP(S): POST the message to `http_path`; Graylog answers 202 Accepted.
async fn gelf_http(
    run: &mut Run,
    t: &Target<'_>,
    checked: &crate::guard::Checked,
    port: u16,
    message: Vec<u8>,
) -> Result<(), Stopped> {
    run.stage(S::Tcp, async {
        let (_, d) = net::tcp(&checked.addrs).await?;
        Ok(((), d))
    })
    .await?;
    let https = t.bool("tls").unwrap_or(false);
    let opts = tls_options(t);
    let host = match &checked.host {
        crate::guard::Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        crate::guard::Host::Ip(ip) => ip.to_string(),
        crate::guard::Host::Name(n) => n.clone(),
    };
    let path = t.str("http_path").unwrap_or("/gelf");
    let url = format!(
        "{}://{host}:{port}/{}",
        if https { "https" } else { "http" },
        path.trim_start_matches('/')
    );
    let config = match tls::client_config(&opts) {
        Ok(c) => c,
        Err(f) => return Err(run.fail(S::Tls, f)),
    };
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(config);
    if let crate::guard::Host::Name(n) = &checked.host {
        builder = builder.resolve_to_addrs(n, &checked.addrs);
    }
    let sent = match builder.build() {
        Ok(client) => {
            tokio::time::timeout_at(
                run.deadline(),
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(message)
                    .send(),
            )
            .await
        }
        Err(_) => {
            return Err(run.fail(
                S::Query,
                Failure::new(ErrorClass::Unknown, "could not build the HTTP client"),
            ))
        }
    };
    let status = match sent {
        Err(_) => {
            return Err(run.fail(
                if https { S::Tls } else { S::Query },
                Failure::new(ErrorClass::Timeout, "no HTTP answer within the deadline"),
            ))
        }
        Ok(Err(e)) => {
            let stage = if https && e.is_connect() {
                S::Tls
            } else {
                S::Query
            };
            let f = if stage == S::Tls {
                Failure::new(ErrorClass::TlsHandshake, "the HTTPS connection failed")
                    .hint("check the CA certificate and that the input listens with TLS")
            } else {
                Failure::new(
                    ErrorClass::ProtocolMismatch,
                    "the HTTP exchange failed (the server closed it or did not speak HTTP)",
                )
                .hint("is this the GELF HTTP input's port?")
            };
            return Err(run.fail(stage, f));
        }
        Ok(Ok(r)) => r.status().as_u16(),
    };
    if https {
        run.push(crate::result::StageReport {
            stage: S::Tls,
            status: crate::result::StageStatus::Ok,
            duration_ms: 0,
            detail: Some(format!(
                "negotiated within the request, certificate verification {}",
                opts.mode().as_str()
            )),
        });
        if let Some(w) = opts.warning() {
            run.warn(w);
        }
    } else {
        run.skip(S::Tls, "plain HTTP");
        run.warn("the connection is not encrypted");
    }
    run.stage(S::Query, async {
        match status {
            200..=299 => Ok((
                (),
                Some(format!("POST {path} answered {status}: the input accepted the test message")),
            )),
            401 | 403 => Err(Failure::new(
                ErrorClass::PermissionDenied,
                format!("the GELF HTTP input refused the message (HTTP {status})"),
            )
            .hint("a proxy in front of the input may require credentials, which this type does not carry")),
            404 | 405 => Err(Failure::new(
                ErrorClass::NotFound,
                format!("nothing accepts GELF at {path} (HTTP {status})"),
            )
            .hint("check http_path (Graylog's input listens on /gelf)")),
            s => Err(Failure::new(
                ErrorClass::ProtocolMismatch,
                format!("the input answered HTTP {s}"),
            )),
        }
    })
    .await
}
