//! The network guard: every probe connection goes through it. It owns the policy (allow and
//! deny lists plus the built-in deny set), the normalisation of host spellings, the one DNS
//! lookup per target, and URL checks (scheme, embedded credentials).
//!
//! The guard hands back checked `SocketAddr`s; callers connect to exactly those, so a name
//! whose DNS answer changes between check and connect (rebinding) cannot reach a denied
//! address.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// A CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// `10.0.0.0/8`, `fd00::/8`, or a single address.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('/') {
            Some((a, p)) => Cidr::new(parse_ip(a)?, p.parse().ok()?),
            None => {
                let ip = parse_ip(s)?;
                Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        }
    }
}

/// What a rule matches: addresses or host names (`*.corp.example` matches subdomains).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Net(Cidr),
    Host(String),
}

/// One allow or deny entry: a CIDR, an address or a host pattern, optionally limited to
/// one port (`127.0.0.1:5433`, `[::1]:80`, `db.local:5432`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    target: Target,
    port: Option<u16>,
}

impl Rule {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty network rule".into());
        }
        let (body, port) = split_port(entry)?;
        let target = if let Some(c) = Cidr::parse(body) {
            Target::Net(c)
        } else if body.contains('/') {
            return Err(format!("`{entry}` is not a valid CIDR block"));
        } else {
            let host = normalise_name(body);
            let bare = host.strip_prefix("*.").unwrap_or(&host);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(format!(
                    "`{entry}` is neither a CIDR block nor a host pattern"
                ));
            }
            Target::Host(host)
        };
        Ok(Self { target, port })
    }

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && matches!(&self.target, Target::Net(c) if c.contains(ip))
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && matches!(&self.target, Target::Host(pattern) if host_matches(pattern, name))
    }
}

fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let bad = || format!("`{entry}` has an invalid port");
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or_else(bad)?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((addr, Some(p.parse().map_err(|_| bad())?))),
            None if tail.is_empty() => Ok((addr, None)),
            None => Err(bad()),
        };
    }
    match entry.rsplit_once(':') {
        // More than one colon: a bare IPv6 address or block, no port.
        Some((body, _)) if body.contains(':') => Ok((entry, None)),
        Some((body, p)) => Ok((body, Some(p.parse().map_err(|_| bad())?))),
        None => Ok((entry, None)),
    }
}

fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() && name.ends_with(suffix) && {
                let cut = name.len() - suffix.len();
                name.as_bytes()[cut - 1] == b'.'
            }
        }
        None => pattern == name,
    }
}

/// Host names that are cloud metadata services, denied before any lookup.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Why the built-in policy denies an address (for logs and docs; never sent to clients,
/// which all get the same message).
fn builtin_denial(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local / metadata")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("metadata")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || o[0] >= 240 {
                Some("broadcast / reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("metadata")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// The environment variable listing the local directories tests may read files under,
/// separated like PATH (`:` on Unix).
pub const FILE_ROOTS_ENV: &str = "PATCHBAY_PROBE_FILE_ROOTS";

/// Allow and deny lists. Decision per target: a deny rule wins; else an allow rule admits
/// (overriding the built-in deny set — this is how a deployment permits loopback); else the
/// built-in deny set (link-local, metadata, unspecified, multicast, broadcast, loopback)
/// refuses; else the address is allowed (private ranges included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// Local directories whose files a test may read (file-based types such as DuckDB).
    /// Empty by default: every local path is refused, so a test cannot disclose files.
    file_roots: Vec<std::path::PathBuf>,
}

impl Policy {
    /// Comma-separated rule lists, as in PATCHBAY_NETWORK_ALLOW / PATCHBAY_NETWORK_DENY.
    pub fn parse(allow: &str, deny: &str) -> Result<Self, String> {
        let list = |s: &str| -> Result<Vec<Rule>, String> {
            s.split(',')
                .filter(|e| !e.trim().is_empty())
                .map(Rule::parse)
                .collect()
        };
        Ok(Self {
            allow: list(allow)?,
            deny: list(deny)?,
            file_roots: Vec::new(),
        })
    }

    /// The policy of PATCHBAY_NETWORK_ALLOW and PATCHBAY_NETWORK_DENY, and the local
    /// directories of PATCHBAY_PROBE_FILE_ROOTS (all optional).
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let mut policy = Self::parse(
            &var("PATCHBAY_NETWORK_ALLOW"),
            &var("PATCHBAY_NETWORK_DENY"),
        )?;
        if let Some(roots) = std::env::var_os(FILE_ROOTS_ENV) {
            for root in std::env::split_paths(&roots).filter(|p| !p.as_os_str().is_empty()) {
                policy = policy.file_root(root)?;
            }
        }
        Ok(policy)
    }

    /// Allows tests to read files under `dir` (an absolute path; symlinks in it are
    /// resolved when a path is checked).
    pub fn file_root(mut self, dir: impl Into<std::path::PathBuf>) -> Result<Self, String> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(format!(
                "{FILE_ROOTS_ENV}: `{}` is not an absolute path",
                dir.display()
            ));
        }
        self.file_roots.push(dir);
        Ok(self)
    }

    /// The local directories tests may read files under (empty: none).
    pub fn file_roots(&self) -> &[std::path::PathBuf] {
        &self.file_roots
    }

    pub fn allow(mut self, entry: &str) -> Result<Self, String> {
        self.allow.push(Rule::parse(entry)?);
        Ok(self)
    }

    pub fn deny(mut self, entry: &str) -> Result<Self, String> {
        self.deny.push(Rule::parse(entry)?);
        Ok(self)
    }

    /// Name check, before any lookup: deny-listed and metadata names are refused.
    fn check_name(&self, name: &str, port: u16) -> Result<(), Blocked> {
        if self.deny.iter().any(|r| r.matches_name(name, port)) {
            return Err(Blocked("name on the deny list"));
        }
        if METADATA_NAMES.contains(&name) {
            return Err(Blocked("metadata host name"));
        }
        Ok(())
    }

    /// Address check; `name` is the host name the address came from, if any.
    fn check_addr(&self, name: Option<&str>, ip: IpAddr, port: u16) -> Result<(), Blocked> {
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|r| r.matches_ip(ip, port)) {
            return Err(Blocked("address on the deny list"));
        }
        let allowed = self
            .allow
            .iter()
            .any(|r| r.matches_ip(ip, port) || name.is_some_and(|n| r.matches_name(n, port)));
        if allowed {
            return Ok(());
        }
        match builtin_denial(ip) {
            Some(why) => Err(Blocked(why)),
            None => Ok(()),
        }
    }
}

/// A refused target. The reason is for server logs; clients get [`Blocked::MESSAGE`] only,
/// so an answer never tells whether the target exists or is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked(pub &'static str);

impl Blocked {
    pub const MESSAGE: &'static str = "the server's network policy does not allow this target";
    pub const HINT: &'static str = "if this target is legitimate, ask an administrator to allow it (PATCHBAY_NETWORK_ALLOW or --network-allow)";
}

/// What can go wrong before a socket opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardError {
    Blocked(Blocked),
    /// The URL or host is malformed, uses a scheme the type does not declare, or embeds
    /// credentials: a 400-class input error.
    Invalid(String),
    /// The name does not resolve.
    NotFound,
    /// The resolver failed for another reason.
    Lookup(String),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Blocked(_) => f.write_str(Blocked::MESSAGE),
            GuardError::Invalid(m) => f.write_str(m),
            GuardError::NotFound => f.write_str("the host name does not resolve"),
            GuardError::Lookup(m) => write!(f, "DNS lookup failed: {m}"),
        }
    }
}

/// A host as written, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses a host setting: IP literals in any notation (`2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376`, `169.254.43518`, `[::ffff:a9fe:a9fe]`) become canonical
/// addresses (IPv4-mapped and -compatible IPv6 become IPv4); names are lower-cased without
/// a trailing dot.
pub fn parse_host(raw: &str) -> Result<Host, GuardError> {
    let s = raw.trim();
    let invalid = || GuardError::Invalid("the host is not a valid host name or address".into());
    if s.is_empty() || s.len() > 253 {
        return Err(invalid());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let ip: Ipv6Addr = inner.parse().map_err(|_| invalid())?;
        return Ok(Host::Ip(canonical_ip(IpAddr::V6(ip))));
    }
    if let Some(ip) = parse_ip(s) {
        return Ok(Host::Ip(canonical_ip(ip)));
    }
    let name = normalise_name(s);
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !labels_ok {
        return Err(invalid());
    }
    // A name whose last label is numeric is an address spelling we did not accept (e.g.
    // `1.2.3.4.5`, `0x1g`): refuse rather than hand it to a resolver that may be lenient.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_digit()) && parse_number(l).is_some())
    {
        return Err(invalid());
    }
    Ok(Host::Name(name))
}

fn normalise_name(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

/// Standard and inet_aton-style IPv4 (1–4 parts, each decimal, 0x-hex or 0-octal; the last
/// part fills the remaining bytes) and IPv6.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim_end_matches('.');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if s.contains(':') {
        return None;
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| parse_number(p))
        .collect::<Option<_>>()?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if rest_bits < 64 && *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u32 = 0;
    for (i, n) in head.iter().enumerate() {
        v |= (*n as u32) << (24 - 8 * i as u32);
    }
    v |= *last as u32;
    Some(IpAddr::V4(Ipv4Addr::from(v)))
}

fn parse_number(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let lower = p.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if lower.len() > 1 && lower.starts_with('0') {
        return u64::from_str_radix(&lower[1..], 8).ok();
    }
    lower.parse().ok()
}

/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) addresses are checked as the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if (s[..6] == [0, 0, 0, 0, 0, 0] && u32::from(embedded) > 1)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                IpAddr::V4(embedded)
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    }
}

pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Name resolution. The default asks the system resolver through tokio; tests plug in a
/// fixed table to play DNS answers that point at denied addresses.
pub trait Resolver: Send + Sync {
    fn lookup(&self, name: &str, port: u16) -> LookupFuture;
}

/// The system resolver (`tokio::net::lookup_host`).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, name: &str, port: u16) -> LookupFuture {
        let target = format!("{name}:{port}");
        Box::pin(async move {
            Ok(tokio::net::lookup_host(target)
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A fixed table of answers; names not in it do not resolve.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver(pub HashMap<String, Vec<IpAddr>>);

impl Resolver for StaticResolver {
    fn lookup(&self, name: &str, _port: u16) -> LookupFuture {
        let answer = self.0.get(name).cloned().unwrap_or_default();
        Box::pin(async move { Ok(answer) })
    }
}

/// The outcome of a successful check: where to connect, and the name for TLS.
#[derive(Debug, Clone)]
pub struct Checked {
    pub host: Host,
    /// Every address of the one lookup, all checked, in resolver order.
    pub addrs: Vec<SocketAddr>,
}

/// The guard: a policy plus the resolver it uses.
#[derive(Clone)]
pub struct NetworkGuard {
    policy: Policy,
    resolver: Arc<dyn Resolver>,
}

impl fmt::Debug for NetworkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkGuard")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl NetworkGuard {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            resolver: Arc::new(SystemResolver),
        }
    }

    pub fn with_resolver(policy: Policy, resolver: Arc<dyn Resolver>) -> Self {
        Self { policy, resolver }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Normalises `host`, checks the name, resolves it once and checks every address. Any
    /// denied address refuses the whole target (a DNS answer mixing a public and a metadata
    /// address is an attack, not a fallback list).
    pub async fn check(&self, raw_host: &str, port: u16) -> Result<Checked, GuardError> {
        let host = parse_host(raw_host)?;
        let ips = match &host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                self.policy
                    .check_name(name, port)
                    .map_err(GuardError::Blocked)?;
                let ips = self
                    .resolver
                    .lookup(name, port)
                    .await
                    .map_err(|e| lookup_error(&e))?;
                if ips.is_empty() {
                    return Err(GuardError::NotFound);
                }
                ips
            }
        };
        let name = match &host {
            Host::Name(n) => Some(n.as_str()),
            Host::Ip(_) => None,
        };
        let mut addrs = Vec::with_capacity(ips.len());
        for ip in ips {
            if let Err(b) = self.policy.check_addr(name, ip, port) {
                tracing::info!(reason = b.0, "network guard refused a probe target");
                return Err(GuardError::Blocked(b));
            }
            addrs.push(SocketAddr::new(canonical_ip(ip), port));
        }
        Ok(Checked { host, addrs })
    }

    /// Checks a URL: scheme among `schemes`, no embedded credentials, then the host as
    /// [`NetworkGuard::check`] does.
    pub async fn check_url(
        &self,
        url: &reqwest::Url,
        schemes: &[&str],
    ) -> Result<Checked, GuardError> {
        check_url_shape(url, schemes)?;
        let host = url
            .host_str()
            .ok_or_else(|| GuardError::Invalid("the URL has no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| GuardError::Invalid("the URL has no port".into()))?;
        self.check(host, port).await
    }
}

/// The parts of a URL check that need no lookup.
pub fn check_url_shape(url: &reqwest::Url, schemes: &[&str]) -> Result<(), GuardError> {
    if !schemes.contains(&url.scheme()) {
        return Err(GuardError::Invalid(format!(
            "the URL scheme `{}` is not allowed for this type (allowed: {})",
            url.scheme(),
            schemes.join(", ")
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(GuardError::Invalid(
            "the URL embeds credentials; put them in the authentication fields".into(),
        ));
    }
    Ok(())
}

fn lookup_error(e: &std::io::Error) -> GuardError {
    // getaddrinfo's "not found" answers surface as uncategorised io errors whose text
    // varies by libc; treat every lookup failure without an answer as "does not resolve"
    // unless the resolver reported a timeout.
    if e.kind() == std::io::ErrorKind::TimedOut {
        GuardError::Lookup("the resolver timed out".into())
    } else {
        GuardError::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_roots_are_empty_by_default_and_must_be_absolute() {
        assert!(Policy::default().file_roots().is_empty());
        assert!(Policy::parse("", "").unwrap().file_roots().is_empty());
        assert!(Policy::default().file_root("relative/dir").is_err());
        let p = Policy::default().file_root("/srv/duckdb").unwrap();
        assert_eq!(p.file_roots(), [std::path::PathBuf::from("/srv/duckdb")]);
    }

    #[test]
    fn every_notation_of_the_metadata_address_parses_to_it() {
        let meta = Host::Ip(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)));
        for s in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0xA9FEA9FE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0xa9.0xfe.0xa9.0xfe",
            "169.16689662",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[::169.254.169.254]",
            "[64:ff9b::a9fe:a9fe]",
            "169.254.169.254.",
        ] {
            assert_eq!(parse_host(s).unwrap(), meta, "{s}");
        }
    }

    #[test]
    fn rules_parse_with_and_without_ports() {
        let r = Rule::parse("127.0.0.1:5433").unwrap();
        assert!(r.matches_ip("127.0.0.1".parse().unwrap(), 5433));
        assert!(!r.matches_ip("127.0.0.1".parse().unwrap(), 5432));
        let r = Rule::parse("fe80::/10").unwrap();
        assert!(r.matches_ip("fe80::1".parse().unwrap(), 1));
        let r = Rule::parse("[::1]:80").unwrap();
        assert!(r.matches_ip("::1".parse().unwrap(), 80));
        let r = Rule::parse("*.corp.example").unwrap();
        assert!(r.matches_name("db.corp.example", 1));
        assert!(!r.matches_name("evilcorp.example", 1));
        assert!(Rule::parse("10.0.0.0/40").is_err());
        assert!(Rule::parse("a b").is_err());
    }

    #[test]
    fn private_ranges_pass_and_loopback_needs_an_allow() {
        let p = Policy::default();
        assert!(p
            .check_addr(None, "10.1.2.3".parse().unwrap(), 5432)
            .is_ok());
        assert!(p
            .check_addr(None, "127.0.0.1".parse().unwrap(), 5432)
            .is_err());
        let p = p.allow("127.0.0.1").unwrap();
        assert!(p
            .check_addr(None, "127.0.0.1".parse().unwrap(), 5432)
            .is_ok());
        let p = p.deny("10.0.0.0/8").unwrap();
        assert!(p
            .check_addr(None, "10.1.2.3".parse().unwrap(), 5432)
            .is_err());
    }
}
