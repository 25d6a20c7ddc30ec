//! What an HTTP-family check sends: the URL filled from the type's templates, the method,
//! the credentials placed as the type declares (header, query, basic) or inferred from the
//! secret fields that are set, the expected statuses and JSON pointer, and TLS options.

use patchbay_crypto::SecretString;
use reqwest::{Method, Url};
use serde_json::Value;

use crate::result::{ErrorClass, Failure};
use crate::tls::{TlsOptions, VerifyMode};
use crate::Target;

/// Secret fields that can carry a token, in preference order; then the type's first set
/// secret field.
const TOKEN_FIELDS: &[&str] = &[
    "token",
    "bearer_token",
    "access_token",
    "api_key",
    "api_token",
    "secret_key",
    "bot_token",
    "hec_token",
];

pub(super) enum Auth {
    None,
    Header(String, SecretString),
    Query(String, SecretString),
    Basic(String, SecretString),
}

pub(super) struct Request {
    pub(super) url: Url,
    pub(super) method: Method,
    pub(super) auth: Auth,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<Value>,
    pub(super) expect: Vec<u16>,
    pub(super) pointer: Option<String>,
    /// The value the pointer must hold (Slack's `/ok` is `false` on a bad token, HTTP 200).
    pub(super) equals: Option<Value>,
    /// Statuses that mean the credentials were rejected (default 401, 407; Datadog and
    /// Splunk HEC answer 403 to an unknown key).
    pub(super) auth_status: Vec<u16>,
    pub(super) schemes: Vec<String>,
    pub(super) tls: TlsOptions,
}

/// `{name}` → the setting's value; a missing setting is an input error naming it.
fn fill(template: &str, t: &Target<'_>) -> Result<String, Failure> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "malformed probe template in the catalog",
            )
        })?;
        let name = &rest[open + 1..close];
        let value = match t.value(name) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(Failure::new(
                    ErrorClass::InvalidSettings,
                    format!("the setting `{name}` is required to test this connection"),
                ))
            }
        };
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The token: from the probe's `token_fields` when declared (only those), else the first
/// set field of [`TOKEN_FIELDS`], else the type's first set secret field.
fn token(t: &Target<'_>) -> Option<SecretString> {
    if let Some(fields) =
        t.ty.probe
            .params
            .get("token_fields")
            .and_then(Value::as_array)
    {
        return fields
            .iter()
            .filter_map(Value::as_str)
            .find_map(|f| t.secret(f))
            .cloned();
    }
    TOKEN_FIELDS
        .iter()
        .find_map(|f| t.secret(f))
        .or_else(|| t.ty.secret_fields().find_map(|f| t.secret(f)))
        .cloned()
}

/// Secret fields a bearer token can sit in when a type without an `auth_type` setting
/// declares `"auth": "settings"` (the credentials set pick the scheme).
const BEARER_FIELDS: &[&str] = &[
    "bearer_token",
    "token",
    "personal_access_token",
    "oauth_access_token",
    "access_token",
];

/// `"auth": "settings"` for a type with no `auth_type` setting: the webhook header when
/// `auth_header_value` is set, else Basic when a user and a
/// password are set (the user from the probe's `basic_user` template when declared, e.g.
/// Zendesk's `{email}/token`), else an API key when the probe declares `api_key_header`,
/// else a bearer token, else nothing.
fn inferred(t: &Target<'_>) -> Auth {
    let p = &t.ty.probe.params;
    // A webhook's own header: `auth_header_name` (default Authorization) carries the secret.
    if let Some(v) = t.secret("auth_header_value") {
        let name = t.str("auth_header_name").unwrap_or("Authorization");
        return Auth::Header(name.to_owned(), v.clone());
    }
    let pw = ["password", "api_token"].iter().find_map(|f| t.secret(f));
    let user = match p.get("basic_user").and_then(Value::as_str) {
        Some(tpl) => fill(tpl, t).ok(),
        None => ["username", "email"]
            .iter()
            .find_map(|f| t.str(f))
            .map(str::to_owned),
    };
    if let (Some(user), Some(pw)) = (user, pw) {
        return Auth::Basic(user, pw.clone());
    }
    if let (Some(h), Some(key)) = (
        p.get("api_key_header").and_then(Value::as_str),
        t.secret("api_key"),
    ) {
        let prefix = p
            .get("api_key_prefix")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Auth::Header(
            h.to_owned(),
            SecretString::new(format!("{prefix}{}", key.expose_secret())),
        );
    }
    match BEARER_FIELDS.iter().find_map(|f| t.secret(f)) {
        Some(tok) => Auth::Header(
            "authorization".into(),
            SecretString::new(format!("Bearer {}", tok.expose_secret())),
        ),
        None => Auth::None,
    }
}

fn auth(t: &Target<'_>, placement: &str, prefix: &str) -> Result<(Auth, Option<String>), Failure> {
    let missing = || {
        Failure::new(
            ErrorClass::AuthFailed,
            "no credential is set for this connection",
        )
        .hint("set the token or API key of the connection")
    };
    let basic = || -> Result<Auth, Failure> {
        let user = ["username", "account_sid", "email", "client_id"]
            .iter()
            .find_map(|f| t.str(f))
            .unwrap_or_default()
            .to_owned();
        let pw = ["password", "auth_token", "api_token"]
            .iter()
            .find_map(|f| t.secret(f))
            .ok_or_else(missing)?;
        Ok(Auth::Basic(user, pw.clone()))
    };
    let with_prefix = |s: SecretString| SecretString::new(format!("{prefix}{}", s.expose_secret()));
    Ok(match placement {
        "none" => (Auth::None, None),
        "bearer" => (
            Auth::Header(
                "authorization".into(),
                SecretString::new(format!("Bearer {}", token(t).ok_or_else(missing)?.expose_secret())),
            ),
            None,
        ),
        "basic" => (basic()?, None),
        p if p.starts_with("header:") => (
            Auth::Header(p[7..].to_owned(), with_prefix(token(t).ok_or_else(missing)?)),
            None,
        ),
        p if p.starts_with("query:") => (
            Auth::Query(p[6..].to_owned(), token(t).ok_or_else(missing)?),
            None,
        ),
        "settings" if t.value("auth_type").is_none() => (inferred(t), None),
        "settings" => match t.str("auth_type").unwrap_or("none") {
            "none" => (Auth::None, None),
            "basic" => (basic()?, None),
            "bearer" => (
                Auth::Header(
                    "authorization".into(),
                    SecretString::new(format!(
                        "Bearer {}",
                        t.secret("bearer_token").ok_or_else(missing)?.expose_secret()
                    )),
                ),
                None,
            ),
            "api_key" => {
                let key = t.secret("api_key").ok_or_else(missing)?.clone();
                let name = t.str("key_name").unwrap_or("X-API-Key").to_owned();
                if t.str("key_placement") == Some("query") {
                    (Auth::Query(name, key), None)
                } else {
                    (Auth::Header(name, key), None)
                }
            }
            other => (
                Auth::None,
                Some(format!("authentication `{other}` is not exercised by the test yet; the request was sent without credentials")),
            ),
        },
        other => {
            return Err(Failure::new(
                ErrorClass::NotImplemented,
                format!("auth placement `{other}` is not implemented by the HTTP probe"),
            ))
        }
    })
}

pub(super) fn request(t: &Target<'_>) -> Result<(Request, Option<String>), Failure> {
    let p = &t.ty.probe.params;
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
    // `api_base_url` (an advanced setting of the types whose API host is fixed) replaces
    // the declared base URL: a proxy, a regional or private endpoint, a test responder.
    let base = match t.str("api_base_url") {
        Some(b) => b.to_owned(),
        None => fill(s("base_url"), t)?,
    };
    let path = fill(s("path"), t)?;
    let joined = format!("{}{}", base.trim_end_matches('/'), path);
    let url = Url::parse(&joined).map_err(|_| {
        Failure::new(
            ErrorClass::InvalidSettings,
            "the URL built from the settings is not valid",
        )
        .hint("check the base URL: it needs a scheme and a host, e.g. https://api.example.com")
    })?;
    let method = Method::from_bytes(s("method").as_bytes()).unwrap_or(Method::GET);
    let (auth, warning) = auth(t, s("auth"), s("auth_prefix"))?;
    let headers = match p.get("headers").and_then(Value::as_object) {
        Some(h) => h
            .iter()
            .map(|(k, v)| Ok((k.clone(), fill(v.as_str().unwrap_or_default(), t)?)))
            .collect::<Result<_, Failure>>()?,
        None => Vec::new(),
    };
    let expect = p
        .get("expect_status")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .filter_map(|v| u16::try_from(v).ok())
                .collect()
        })
        .unwrap_or_else(|| vec![200]);
    let auth_status = p
        .get("auth_failed_status")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .filter_map(|v| u16::try_from(v).ok())
                .collect()
        })
        .unwrap_or_else(|| vec![401, 407]);
    let schemes = p
        .get("schemes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["https".to_owned(), "http".to_owned()]);
    let mode = t.str("tls_verify_mode").and_then(VerifyMode::parse).or(
        match t
            .bool("tls_verify")
            .or(t.bool("insecure_skip_tls_verify").map(|skip| !skip))
        {
            Some(false) => Some(VerifyMode::None),
            _ => Some(VerifyMode::Full),
        },
    );
    // Kubernetes names its TLS settings as kubeconfig does.
    let tls = TlsOptions {
        mode,
        ca_pem: t
            .str("tls_ca_certificate")
            .or(t.str("cluster_ca_certificate"))
            .map(str::to_owned),
        client_cert_pem: t
            .str("tls_client_certificate")
            .or(t.str("client_certificate"))
            .map(str::to_owned),
        client_key_pem: t
            .secret("tls_private_key")
            .or(t.secret("client_private_key"))
            .cloned(),
        server_name: None,
    };
    Ok((
        Request {
            url,
            method,
            auth,
            headers,
            body: p.get("body").cloned(),
            expect,
            pointer: p
                .get("json_pointer")
                .and_then(Value::as_str)
                .map(str::to_owned),
            equals: p.get("json_equals").cloned(),
            auth_status,
            schemes,
            tls,
        },
        warning,
    ))
}
