//! Airflow connection URIs, parsed and formatted exactly as Airflow's
//! `airflow.models.connection.Connection` does (`_parse_from_uri` over Python's `urlsplit`,
//! and `get_uri`). The Python behaviour is reproduced on purpose, quirks included: the host
//! is lower-cased up to its first `%` (Python's `SplitResult.hostname`), a host holding a
//! `/` is taken from the raw netloc instead, `postgresql` becomes `postgres`, `-` in the
//! scheme becomes `_`, a query without `__extra__` becomes a JSON object of strings, and a
//! second `://` marks a host with its own protocol (`http://https%3A%2F%2Fhost`).

use serde_json::{Map, Value};

/// The fields of an Airflow connection. `extra` is Airflow's raw JSON text. Its `Debug`
/// masks the password and the extra, which may hold secrets too (tokens, keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AirflowConn {
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub schema: Option<String>,
    pub port: Option<u16>,
    pub extra: Option<String>,
    pub description: Option<String>,
}

impl std::fmt::Debug for AirflowConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |v: &Option<String>| v.as_ref().map(|_| "********");
        f.debug_struct("AirflowConn")
            .field("conn_type", &self.conn_type)
            .field("host", &self.host)
            .field("login", &self.login)
            .field("password", &masked(&self.password))
            .field("schema", &self.schema)
            .field("port", &self.port)
            .field("extra", &masked(&self.extra))
            .field("description", &self.description)
            .finish()
    }
}

/// Why a URI or export is not an Airflow connection. Never quotes the input (it holds
/// passwords).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AirflowError {
    #[error("more than two `://` in the URI")]
    TooManySchemes,
    #[error("the protocol part of the host holds `@` or `:`")]
    BadProtocolHost,
    #[error("the port is not a number from 0 to 65535")]
    BadPort,
    #[error("the URI has no scheme (the connection type)")]
    NoScheme,
    #[error("{0}")]
    Export(String),
}

impl AirflowConn {
    /// `extra` as a JSON object (what Airflow's `extra_dejson` gives), empty when absent or
    /// not an object.
    pub fn extra_object(&self) -> Map<String, Value> {
        self.extra
            .as_deref()
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Airflow's `_normalize_conn_type`.
pub fn normalize_conn_type(t: &str) -> String {
    if t == "postgresql" {
        "postgres".into()
    } else {
        t.replace('-', "_")
    }
}

/// The parts of Python's `urlsplit`.
struct Split<'a> {
    scheme: String,
    netloc: &'a str,
    path: &'a str,
    query: &'a str,
}

const SCHEME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.";

fn urlsplit(url: &str) -> Split<'_> {
    let mut rest = url;
    let mut scheme = String::new();
    if let Some(i) = url.find(':') {
        let first = url.chars().next().unwrap_or(' ');
        if i > 0
            && first.is_ascii_alphabetic()
            && url[..i].chars().all(|c| SCHEME_CHARS.contains(c))
        {
            scheme = url[..i].to_ascii_lowercase();
            rest = &url[i + 1..];
        }
    }
    let mut netloc = "";
    if let Some(after) = rest.strip_prefix("//") {
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        netloc = &after[..end];
        rest = &after[end..];
    }
    if let Some(i) = rest.find('#') {
        rest = &rest[..i];
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    Split {
        scheme,
        netloc,
        path,
        query,
    }
}

/// Python's `SplitResult.username` / `.password` (still quoted).
fn userinfo(netloc: &str) -> (Option<&str>, Option<&str>) {
    match netloc.rsplit_once('@') {
        None => (None, None),
        Some((info, _)) => match info.split_once(':') {
            Some((u, p)) => (Some(u), Some(p)),
            None => (Some(info), None),
        },
    }
}

/// Python's `SplitResult._hostinfo`: (hostname as written, port as written).
fn hostinfo(netloc: &str) -> (&str, Option<&str>) {
    let hostinfo = netloc.rsplit_once('@').map_or(netloc, |(_, h)| h);
    let (hostname, port) = match hostinfo.split_once('[') {
        Some((_, bracketed)) => {
            let (h, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            (h, after.split_once(':').map_or("", |(_, p)| p))
        }
        None => hostinfo.split_once(':').unwrap_or((hostinfo, "")),
    };
    (hostname, (!port.is_empty()).then_some(port))
}

/// Python's `SplitResult.hostname`: lower-cased before the first `%` (a zone id keeps its
/// case), `None` when empty.
fn py_hostname(netloc: &str) -> Option<String> {
    let (h, _) = hostinfo(netloc);
    if h.is_empty() {
        return None;
    }
    Some(match h.split_once('%') {
        Some((a, b)) => format!("{}%{b}", a.to_lowercase()),
        None => h.to_lowercase(),
    })
}

fn py_port(netloc: &str) -> Result<Option<u16>, AirflowError> {
    match hostinfo(netloc).1 {
        None => Ok(None),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .map(Some)
            .map_err(|_| AirflowError::BadPort),
        Some(_) => Err(AirflowError::BadPort),
    }
}

/// Airflow's `_parse_netloc_to_hostname`.
fn netloc_to_hostname(netloc: &str) -> String {
    let hostname = unquote(&py_hostname(netloc).unwrap_or_default());
    if !hostname.contains('/') {
        return hostname;
    }
    let mut h = netloc;
    if let Some((_, after)) = h.rsplit_once('@') {
        h = after;
    }
    if let Some((before, _)) = h.split_once(':') {
        h = before;
    }
    unquote(h)
}

/// Python's `urllib.parse.unquote` (UTF-8, invalid sequences replaced).
pub fn unquote(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `quote(s, safe='')` (`quote_plus` when `plus`): everything but ASCII letters,
/// digits and `_.-~` is percent-encoded as UTF-8.
pub fn quote(s: &str, plus: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else if plus && b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Python's `parse_qsl(q, keep_blank_values=True)` folded into a dict (the last value of a
/// repeated key wins, at the key's first position).
fn parse_qs_dict(q: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = unquote(&k.replace('+', " "));
        let v = unquote(&v.replace('+', " "));
        out.insert(k, Value::String(v));
    }
    out
}

/// Python's `urlencode` of a dict of strings.
fn urlencode(m: &[(&str, &str)]) -> String {
    m.iter()
        .map(|(k, v)| format!("{}={}", quote(k, true), quote(v, true)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Airflow's `Connection(uri=…)`.
pub fn parse_uri(uri: &str) -> Result<AirflowConn, AirflowError> {
    // urlsplit drops tabs and newlines and strips leading C0 controls and spaces.
    let cleaned: String = uri
        .trim_start_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\r' | '\n'))
        .collect();
    let uri = cleaned.as_str();
    let schemes = uri.matches("://").count();
    if schemes > 2 {
        return Err(AirflowError::TooManySchemes);
    }
    let with_protocol = schemes == 2;
    let first = urlsplit(uri);
    if first.scheme.is_empty() {
        return Err(AirflowError::NoScheme);
    }
    let conn_type = normalize_conn_type(&first.scheme);
    let rest = uri.replace(
        &format!("{}://", first.scheme),
        if with_protocol { "" } else { "//" },
    );
    if with_protocol {
        let head = rest.split("://").next().unwrap_or("");
        if head.contains('@') || head.contains(':') {
            return Err(AirflowError::BadProtocolHost);
        }
    }
    let parts = urlsplit(&rest);
    let protocol = with_protocol.then(|| parts.scheme.clone());
    let host = netloc_to_hostname(parts.netloc);
    let host = match protocol {
        Some(p) if !host.is_empty() => format!("{p}://{host}"),
        _ => host,
    };
    let quoted_schema = parts.path.get(1..).unwrap_or("");
    let (login, password) = userinfo(parts.netloc);
    let port = py_port(parts.netloc)?;
    let extra = if parts.query.is_empty() {
        None
    } else {
        let q = parse_qs_dict(parts.query);
        Some(match q.get("__extra__") {
            Some(Value::String(e)) => e.clone(),
            _ => Value::Object(q).to_string(),
        })
    };
    Ok(AirflowConn {
        conn_type,
        // Airflow keeps the empty string it gets for a URI without a host.
        host: Some(host),
        // Python: `unquote(x) if x else x` — an empty login stays ""; an empty password
        // becomes None (Airflow's password setter ignores a falsy value).
        login: login.map(unquote),
        password: password.map(unquote).filter(|p| !p.is_empty()),
        schema: Some(unquote(quoted_schema)),
        port,
        extra,
        description: None,
    })
}

/// Airflow's `Connection.get_uri()`.
pub fn to_uri(c: &AirflowConn) -> String {
    let mut uri = if c.conn_type.is_empty() {
        "//".to_owned()
    } else {
        format!("{}://", c.conn_type.to_lowercase().replace('_', "-"))
    };
    let (protocol, host) = match c.host.as_deref() {
        Some(h) if h.contains("://") => {
            let (p, rest) = h.split_once("://").expect("contains ://");
            if p == c.conn_type {
                (None, Some(h))
            } else {
                (Some(p), Some(rest))
            }
        }
        other => (None, other),
    };
    if let Some(p) = protocol {
        uri.push_str(p);
        uri.push_str("://");
    }
    let mut authority = String::new();
    if let Some(l) = &c.login {
        authority.push_str(&quote(l, false));
    }
    if let Some(p) = &c.password {
        authority.push(':');
        authority.push_str(&quote(p, false));
    }
    if !authority.is_empty() {
        authority.push('@');
        uri.push_str(&authority);
    }
    let mut host_block = String::new();
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        host_block.push_str(&quote(h, false));
    }
    if let Some(port) = c.port.filter(|p| *p != 0) {
        if host_block.is_empty() && authority.is_empty() {
            host_block.push_str(&format!("@:{port}"));
        } else {
            host_block.push_str(&format!(":{port}"));
        }
    }
    let schema = c.schema.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = schema {
        host_block.push('/');
        host_block.push_str(&quote(s, false));
    }
    uri.push_str(&host_block);
    if let Some(extra) = c.extra.as_deref().filter(|e| !e.is_empty()) {
        let sep = if schema.is_some() { "?" } else { "/?" };
        let obj = c.extra_object();
        // Airflow 2: the extras go as query parameters when that round-trips (a flat
        // object of strings); anything else travels whole as `__extra__`.
        let flat: Option<Vec<(&str, &str)>> = obj
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
            .collect();
        match flat {
            Some(pairs) if !pairs.is_empty() => {
                uri.push_str(sep);
                uri.push_str(&urlencode(&pairs));
            }
            _ => {
                uri.push_str(sep);
                uri.push_str(&urlencode(&[("__extra__", extra)]));
            }
        }
    }
    uri
}

/// One connection of `airflow connections export --file-format json` (an object keyed by
/// conn_id, each value `{conn_type, description, host, login, password, schema, port,
/// extra}`; `extra` a JSON string or an object).
pub fn from_export_json(v: &Value) -> Result<Vec<(String, AirflowConn)>, AirflowError> {
    let obj = v.as_object().ok_or_else(|| {
        AirflowError::Export("an Airflow export is a JSON object keyed by conn_id".into())
    })?;
    let mut out = Vec::new();
    for (id, c) in obj {
        let c = c.as_object().ok_or_else(|| {
            AirflowError::Export(format!("/{id}: each connection is a JSON object"))
        })?;
        let s = |k: &str| -> Result<Option<String>, AirflowError> {
            match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(AirflowError::Export(format!("/{id}/{k}: must be a string"))),
            }
        };
        let port = match c.get("port") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or(AirflowError::BadPort)?,
            ),
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|_| AirflowError::BadPort)?),
            Some(_) => return Err(AirflowError::BadPort),
        };
        let extra = match c.get("extra") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ Value::Object(_)) => Some(v.to_string()),
            Some(_) => {
                return Err(AirflowError::Export(format!(
                    "/{id}/extra: must be a JSON string or object"
                )))
            }
        };
        out.push((
            id.clone(),
            AirflowConn {
                conn_type: normalize_conn_type(&s("conn_type")?.unwrap_or_default()),
                host: s("host")?,
                login: s("login")?,
                password: s("password")?,
                schema: s("schema")?,
                port,
                extra,
                description: s("description")?,
            },
        ));
    }
    Ok(out)
}

/// The JSON of `airflow connections export` for these connections.
pub fn to_export_json(conns: &[(String, AirflowConn)]) -> Value {
    let mut out = Map::new();
    for (id, c) in conns {
        let mut m = Map::new();
        m.insert("conn_type".into(), Value::String(c.conn_type.clone()));
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        m.insert("description".into(), opt(&c.description));
        m.insert("host".into(), opt(&c.host));
        m.insert("login".into(), opt(&c.login));
        m.insert("password".into(), opt(&c.password));
        m.insert("schema".into(), opt(&c.schema));
        m.insert(
            "port".into(),
            c.port.map_or(Value::Null, |p| Value::from(p as u64)),
        );
        m.insert("extra".into(), opt(&c.extra));
        out.insert(id.clone(), Value::Object(m));
    }
    Value::Object(out)
}
