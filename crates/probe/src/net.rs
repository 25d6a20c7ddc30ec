//! The dns and tcp stages every socket-level family shares: the guard's one lookup, then a
//! connect to the checked addresses only.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::guard::{Blocked, Checked, GuardError, Host, NetworkGuard};
use crate::result::{ErrorClass, Failure, StageResult};

/// Something a probe can speak a protocol over: plain TCP or TLS on top of it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub fn guard_failure(e: GuardError, host: &str) -> Failure {
    match e {
        GuardError::Blocked(_) => {
            Failure::new(ErrorClass::NetworkBlocked, Blocked::MESSAGE).hint(Blocked::HINT)
        }
        GuardError::Invalid(m) => Failure::new(ErrorClass::InvalidSettings, m),
        GuardError::NotFound => Failure::new(
            ErrorClass::DnsNotFound,
            format!("the host name `{host}` does not resolve"),
        )
        .hint("check the spelling of the host, and that the patchbay server uses the DNS that knows it"),
        GuardError::Lookup(m) => Failure::new(ErrorClass::DnsNotFound, m),
    }
}

/// The dns stage: normalise, check, resolve once, check every address.
pub async fn dns(guard: &NetworkGuard, host: &str, port: u16) -> StageResult<Checked> {
    let checked = guard
        .check(host, port)
        .await
        .map_err(|e| guard_failure(e, host))?;
    let detail = match &checked.host {
        Host::Ip(ip) => format!("{ip} (address, no lookup)"),
        Host::Name(n) => format!(
            "{n} → {}",
            checked
                .addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ok((checked, Some(detail)))
}

/// The tcp stage: the checked addresses in order, the first that accepts wins.
pub async fn tcp(addrs: &[SocketAddr]) -> StageResult<TcpStream> {
    let mut last: Option<(SocketAddr, std::io::Error)> = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Probes send small messages and wait for answers: no batching delay.
                let _ = s.set_nodelay(true);
                return Ok((s, Some(format!("connected to {addr}"))));
            }
            Err(e) => last = Some((*addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) => connect_failure(addr, &e),
        None => Failure::new(ErrorClass::DnsNotFound, "no address to connect to"),
    })
}

pub fn connect_failure(addr: SocketAddr, e: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    let port = addr.port();
    match e.kind() {
        K::ConnectionRefused => Failure::new(
            ErrorClass::ConnectionRefused,
            format!("{addr} refused the connection"),
        )
        .hint(format!(
            "port {port} refused: is the server listening on that port?"
        )),
        K::TimedOut => Failure::new(
            ErrorClass::Timeout,
            format!("connecting to {addr} timed out"),
        )
        .hint("check the host and port, and that firewalls let the patchbay server through"),
        K::HostUnreachable | K::NetworkUnreachable => Failure::new(
            ErrorClass::ConnectionRefused,
            format!("{addr} is unreachable from the patchbay server"),
        )
        .hint("check routing and firewalls between the patchbay server and the host"),
        k => Failure::new(
            ErrorClass::Unknown,
            format!("connecting to {addr} failed: {k}"),
        ),
    }
}

/// A read or write failure in the middle of a protocol exchange.
pub fn io_failure(e: &std::io::Error, while_: &str) -> Failure {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => {
            Failure::new(
                ErrorClass::ProtocolMismatch,
                format!("the server closed the connection while {while_}"),
            )
            .hint("is this the right port and protocol for this type?")
        }
        k => Failure::new(
            ErrorClass::Unknown,
            format!("I/O error while {while_}: {k}"),
        ),
    }
}
