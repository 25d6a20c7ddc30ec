//! Kafka probe: the Kafka protocol written by hand so each step maps to one stage —
//! TLS when the security protocol says SSL (tls), ApiVersions (the broker's API ranges: the
//! first exchange of any client) then SaslHandshake + SaslAuthenticate with PLAIN or
//! SCRAM-SHA-256/512 when SASL is on (auth), Metadata for the configured topic (query). Only the first bootstrap server is contacted: a client needs one to
//! learn the cluster.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, io_failure, Io};
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, ServerInfo};
use crate::scram::{Hash, Scram};
use crate::tls::{self, verify_unless, PemFields, TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];

const API_METADATA: i16 = 3;
const API_SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const API_SASL_AUTHENTICATE: i16 = 36;

struct Params {
    host: String,
    port: u16,
    tls: Option<TlsOptions>,
    sasl: bool,
    mechanism: String,
    topic: Option<String>,
    client_id: String,
}

fn params(t: &Target<'_>) -> Result<(Params, String), Failure> {
    let first = t
        .value("bootstrap_servers")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().find_map(|s| s.as_str().filter(|s| !s.is_empty())))
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the setting `bootstrap_servers` needs at least one host:port",
            )
        })?;
    let (host, port) = first.rsplit_once(':').ok_or_else(|| {
        Failure::new(
            ErrorClass::InvalidSettings,
            format!("the bootstrap server `{first}` is not host:port"),
        )
    })?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        Failure::new(
            ErrorClass::InvalidSettings,
            format!("the bootstrap server `{first}` has no valid port"),
        )
    })?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let protocol = t.str("security_protocol").unwrap_or("PLAINTEXT").to_owned();
    let (use_tls, sasl) = match protocol.as_str() {
        "PLAINTEXT" => (false, false),
        "SSL" => (true, false),
        "SASL_PLAINTEXT" => (false, true),
        "SASL_SSL" => (true, true),
        _ => {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                "security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            ))
        }
    };
    let mechanism = t.str("sasl_mechanism").unwrap_or("PLAIN").to_owned();
    if sasl
        && !matches!(
            mechanism.as_str(),
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
        )
    {
        return Err(Failure::new(
            ErrorClass::NotImplemented,
            format!(
                "testing SASL {mechanism} is not implemented yet (PLAIN and SCRAM-SHA-256/512 are)"
            ),
        ));
    }
    let tls = use_tls.then(|| {
        let mode = verify_unless(t, "ssl_endpoint_identification", VerifyMode::CaOnly);
        let pem = PemFields {
            ca: "ssl_ca_certificate",
            cert: "ssl_client_certificate",
            key: "ssl_private_key",
        };
        TlsOptions::from_target(t, Some(mode), pem)
    });
    let topic = t.str("topic").map(str::to_owned);
    let detail = format!(
        "{host}:{port}, {protocol}{}{}",
        if sasl {
            format!(" ({mechanism})")
        } else {
            String::new()
        },
        topic
            .as_deref()
            .map(|x| format!(", topic {x}"))
            .unwrap_or_default()
    );
    Ok((
        Params {
            host,
            port,
            tls,
            sasl,
            mechanism,
            topic,
            client_id: t.str("client_id").unwrap_or("patchbay").to_owned(),
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
    let io: Box<dyn Io> = match &p.tls {
        Some(opts) => {
            let s = run
                .stage(S::Tls, async {
                    let (s, d) = tls::handshake(tcp, opts, &checked.host).await?;
                    Ok((s, Some(d)))
                })
                .await?;
            if let Some(w) = opts.warning() {
                run.warn(w);
            }
            Box::new(s)
        }
        None => {
            run.skip(S::Tls, "security_protocol without SSL");
            run.warn("the connection is not encrypted (security_protocol without SSL)");
            Box::new(tcp)
        }
    };
    let mut conn = Conn {
        io,
        correlation: 0,
        client_id: p.client_id.clone(),
    };
    let sasl_password = t.secret("sasl_password").cloned();
    let sasl_user = t.str("sasl_username").map(str::to_owned);
    let versions = run
        .stage(S::Auth, async {
            let versions = api_versions(&mut conn).await?;
            if !p.sasl {
                return Ok((
                    versions,
                    Some("no SASL (security_protocol without SASL); the broker answered ApiVersions".into()),
                ));
            }
            let (Some(user), Some(password)) = (&sasl_user, &sasl_password) else {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    "SASL is on but the user name or password is not set",
                ));
            };
            if versions.max(API_SASL_AUTHENTICATE).is_none() {
                return Err(Failure::new(
                    ErrorClass::ProtocolMismatch,
                    "the broker does not offer SaslAuthenticate",
                )
                .hint("the listener may not have SASL enabled: try security_protocol PLAINTEXT or SSL"));
            }
            sasl_login(&mut conn, &p.mechanism, user, password).await?;
            Ok((
                versions,
                Some(format!("authenticated as {user} with SASL {}", p.mechanism)),
            ))
        })
        .await?;
    run.server = Some(ServerInfo {
        product: "Kafka protocol".into(),
        version: versions.summary(),
    });
    let topic = p.topic.clone();
    let warning = run
        .stage(S::Query, async {
            let Some(v) = versions.max(API_METADATA).map(|m| m.min(4)) else {
                return Err(not_kafka());
            };
            if v < 1 {
                return Err(Failure::new(
                    ErrorClass::ProtocolMismatch,
                    "the broker supports only Metadata v0 (Kafka before 0.10)",
                ));
            }
            match metadata(&mut conn, v, topic.as_deref()).await {
                // A SASL listener drops a client that asks anything before logging in.
                Err(f) if !p.sasl && f.message.starts_with("the server closed the connection") => Err(Failure::new(
                    ErrorClass::AuthFailed,
                    "the broker closed the connection at the first request after ApiVersions",
                )
                .hint("the listener probably requires SASL: set security_protocol to SASL_PLAINTEXT or SASL_SSL and the SASL user")),
                other => other,
            }
        })
        .await?;
    if let Some(w) = warning {
        run.warn(w);
    }
    Ok(())
}

/// The broker's API version ranges from ApiVersions v0.
struct Versions(Vec<(i16, i16, i16)>);

impl Versions {
    fn max(&self, key: i16) -> Option<i16> {
        self.0
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, _, max)| *max)
    }

    /// Brokers do not announce a product version; the API ranges say what they speak.
    fn summary(&self) -> String {
        let range = |k: i16| {
            self.0
                .iter()
                .find(|(key, ..)| *key == k)
                .map(|(_, lo, hi)| format!("v{lo}–v{hi}"))
                .unwrap_or_else(|| "absent".into())
        };
        format!(
            "{} APIs; Metadata {}, ApiVersions {}",
            self.0.len(),
            range(API_METADATA),
            range(API_VERSIONS)
        )
    }
}

fn not_kafka() -> Failure {
    Failure::new(
        ErrorClass::ProtocolMismatch,
        "the server does not speak the Kafka protocol",
    )
    .hint("is this the right port? Kafka listens on 9092 by default; does the listener require TLS (security_protocol SSL)?")
}

struct Conn {
    io: Box<dyn Io>,
    correlation: i32,
    client_id: String,
}

impl Conn {
    /// One request with header v1 (non-flexible) and its response body.
    async fn call(&mut self, key: i16, version: i16, body: &[u8]) -> Result<Vec<u8>, Failure> {
        self.correlation += 1;
        let mut msg = Vec::with_capacity(body.len() + 32);
        msg.extend_from_slice(&key.to_be_bytes());
        msg.extend_from_slice(&version.to_be_bytes());
        msg.extend_from_slice(&self.correlation.to_be_bytes());
        put_str(&mut msg, &self.client_id);
        msg.extend_from_slice(body);
        let mut out = u32::try_from(msg.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&msg);
        self.io
            .write_all(&out)
            .await
            .map_err(|e| io_failure(&e, "sending a request"))?;
        self.io
            .flush()
            .await
            .map_err(|e| io_failure(&e, "sending a request"))?;
        let mut head = [0u8; 8];
        self.io
            .read_exact(&mut head)
            .await
            .map_err(|e| io_failure(&e, "reading the answer"))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(4..=1 << 24).contains(&len) || correlation != self.correlation {
            return Err(not_kafka());
        }
        let mut resp = vec![0u8; len - 4];
        self.io
            .read_exact(&mut resp)
            .await
            .map_err(|e| io_failure(&e, "reading the answer"))?;
        Ok(resp)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&i16::try_from(s.len()).unwrap_or(i16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&i32::try_from(b.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// Reads the fixed-width and length-prefixed fields of a response; any overrun is a
/// protocol mismatch.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Failure> {
        if self.0.len() < n {
            return Err(not_kafka());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i16(&mut self) -> Result<i16, Failure> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, Failure> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn count(&mut self) -> Result<usize, Failure> {
        // -1 is a null array.
        Ok(usize::try_from(self.i32()?).unwrap_or(0).min(100_000))
    }
    fn string(&mut self) -> Result<Option<String>, Failure> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Failure> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize)?.to_vec())
    }
}

async fn api_versions(conn: &mut Conn) -> Result<Versions, Failure> {
    let resp = conn.call(API_VERSIONS, 0, &[]).await?;
    let mut r = Reader(&resp);
    let code = r.i16()?;
    if code != 0 {
        return Err(kafka_error(code, "ApiVersions"));
    }
    let n = r.count()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((r.i16()?, r.i16()?, r.i16()?));
    }
    if v.is_empty() {
        return Err(not_kafka());
    }
    Ok(Versions(v))
}

async fn sasl_login(
    conn: &mut Conn,
    mechanism: &str,
    user: &str,
    password: &patchbay_crypto::SecretString,
) -> Result<(), Failure> {
    let mut body = Vec::new();
    put_str(&mut body, mechanism);
    let resp = conn.call(API_SASL_HANDSHAKE, 1, &body).await?;
    let mut r = Reader(&resp);
    let code = r.i16()?;
    let mut offered = Vec::new();
    for _ in 0..r.count()? {
        offered.extend(r.string()?);
    }
    if code == 33 {
        return Err(Failure::new(
            ErrorClass::AuthFailed,
            format!(
                "the broker does not accept SASL {mechanism}; it offers: {}",
                if offered.is_empty() {
                    "nothing".to_owned()
                } else {
                    offered.join(", ")
                }
            ),
        )
        .hint("set sasl_mechanism to one the broker offers"));
    }
    if code != 0 {
        return Err(kafka_error(code, "SaslHandshake"));
    }
    match mechanism {
        "PLAIN" => {
            let mut token = Vec::new();
            token.push(0);
            token.extend_from_slice(user.as_bytes());
            token.push(0);
            token.extend_from_slice(password.expose_secret().as_bytes());
            authenticate(conn, &token).await?;
        }
        _ => {
            let hash = if mechanism == "SCRAM-SHA-512" {
                Hash::Sha512
            } else {
                Hash::Sha256
            };
            let mut scram = Scram::new(hash, user, password);
            let server_first = authenticate(conn, scram.client_first().as_bytes()).await?;
            let server_first = String::from_utf8_lossy(&server_first).into_owned();
            let client_final = scram.client_final(&server_first)?;
            let server_final = authenticate(conn, client_final.as_bytes()).await?;
            scram.verify_server(&String::from_utf8_lossy(&server_final))?;
        }
    }
    Ok(())
}

async fn authenticate(conn: &mut Conn, token: &[u8]) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    put_bytes(&mut body, token);
    let resp = conn.call(API_SASL_AUTHENTICATE, 0, &body).await?;
    let mut r = Reader(&resp);
    let code = r.i16()?;
    // The broker's message is not echoed: it could repeat what was sent.
    let _message = r.string()?;
    if code == 58 {
        return Err(Failure::new(
            ErrorClass::AuthFailed,
            "the broker rejected the SASL user name or password (SASL_AUTHENTICATION_FAILED)",
        )
        .hint("check sasl_username, sasl_password and sasl_mechanism"));
    }
    if code != 0 {
        return Err(kafka_error(code, "SaslAuthenticate"));
    }
    r.bytes()
}

/// Metadata v1–v4 for the topic (or for no topic: the broker list only). Returns a
/// warning when the topic exists but has a partition without a leader.
async fn metadata(
    conn: &mut Conn,
    version: i16,
    topic: Option<&str>,
) -> crate::result::StageResult<Option<String>> {
    let mut body = Vec::new();
    match topic {
        Some(t) => {
            body.extend_from_slice(&1i32.to_be_bytes());
            put_str(&mut body, t);
        }
        // An empty array asks for no topics (null would list them all).
        None => body.extend_from_slice(&0i32.to_be_bytes()),
    }
    if version >= 4 {
        // allow_auto_topic_creation: a test must not create the topic it looks for.
        body.push(0);
    }
    let resp = conn.call(API_METADATA, version, &body).await?;
    let mut r = Reader(&resp);
    if version >= 3 {
        r.i32()?; // throttle_time_ms
    }
    let brokers = r.count()?;
    for _ in 0..brokers {
        r.i32()?;
        r.string()?;
        r.i32()?;
        r.string()?; // rack (v1+)
    }
    if version >= 2 {
        r.string()?; // cluster_id
    }
    r.i32()?; // controller_id
    let Some(wanted) = topic else {
        return Ok((
            None,
            Some(format!("Metadata answered: {brokers} broker(s)")),
        ));
    };
    for _ in 0..r.count()? {
        let code = r.i16()?;
        let name = r.string()?.unwrap_or_default();
        r.take(1)?; // is_internal
        let partitions = r.count()?;
        let mut leaderless = 0;
        for _ in 0..partitions {
            let pcode = r.i16()?;
            r.i32()?;
            let leader = r.i32()?;
            for _ in 0..r.count()? {
                r.i32()?;
            }
            for _ in 0..r.count()? {
                r.i32()?;
            }
            if pcode != 0 || leader < 0 {
                leaderless += 1;
            }
        }
        if name != wanted {
            continue;
        }
        return match code {
            0 => Ok((
                (leaderless > 0).then(|| {
                    format!(
                        "{leaderless} of {partitions} partitions of topic {wanted} have no leader"
                    )
                }),
                Some(format!(
                    "topic {wanted}: {partitions} partition(s); {brokers} broker(s)"
                )),
            )),
            3 => Err(Failure::new(
                ErrorClass::NotFound,
                format!("the topic {wanted} does not exist (UNKNOWN_TOPIC_OR_PARTITION)"),
            )
            .hint("check the topic name, or create the topic")),
            c => Err(kafka_error(c, "Metadata")),
        };
    }
    Err(Failure::new(
        ErrorClass::NotFound,
        format!("the broker's metadata does not list the topic {wanted}"),
    )
    .hint("check the topic name, or create the topic"))
}

fn kafka_error(code: i16, api: &str) -> Failure {
    let (class, name, hint) = match code {
        29 => (
            ErrorClass::PermissionDenied,
            "TOPIC_AUTHORIZATION_FAILED",
            "grant the principal Describe on the topic",
        ),
        31 => (
            ErrorClass::PermissionDenied,
            "CLUSTER_AUTHORIZATION_FAILED",
            "grant the principal Describe on the cluster",
        ),
        34 => (
            ErrorClass::AuthFailed,
            "ILLEGAL_SASL_STATE",
            "the listener expects SASL: set security_protocol to SASL_PLAINTEXT or SASL_SSL",
        ),
        35 => (
            ErrorClass::ProtocolMismatch,
            "UNSUPPORTED_VERSION",
            "the broker is older than this probe expects",
        ),
        58 => (
            ErrorClass::AuthFailed,
            "SASL_AUTHENTICATION_FAILED",
            "check sasl_username, sasl_password and sasl_mechanism",
        ),
        _ => (
            ErrorClass::Unknown,
            "error",
            "see the broker's log for this error code",
        ),
    };
    Failure::new(class, format!("{api} answered {name} (code {code})")).hint(hint)
}
