//! One AWS SigV4-signed HTTP request (patchbay-external's signer) sent to the guard's
//! checked addresses only: no proxy, no redirects, a bounded body. Failures are attributed
//! to the stage they belong to (tls for rustls errors, tcp for connect errors).

use std::time::SystemTime;

use patchbay_crypto::SecretString;
use patchbay_external::sigv4::{self, Credentials, Scope};
use reqwest::{Method, Url};

use crate::guard::Checked;
use crate::net;
use crate::result::{ErrorClass, Failure, ProbeStage as S};
use crate::tls::{self, TlsOptions};

const MAX_BODY: usize = 64 * 1024;

/// What to send: the signer adds `host`, `x-amz-date`, `x-amz-content-sha256` (S3),
/// `x-amz-security-token` (with a session token) and `authorization`.
pub struct Call {
    pub method: Method,
    pub url: Url,
    /// The signing name, e.g. `s3`, `athena`.
    pub service: &'static str,
    pub region: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    /// S3's `x-amz-bucket-region`, when it is a plain region name.
    pub region_header: Option<String>,
    pub body: Vec<u8>,
}

pub type SendError = (S, Failure);

pub async fn send(
    call: &Call,
    creds: &Credentials,
    checked: &Checked,
    opts: &TlsOptions,
) -> Result<Answer, SendError> {
    let config = tls::client_config(opts).map_err(|f| (S::Tls, f))?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(config);
    if let crate::guard::Host::Name(n) = &checked.host {
        builder = builder.resolve_to_addrs(n, &checked.addrs);
    }
    let client = builder.build().map_err(|_| {
        (
            S::Query,
            Failure::new(ErrorClass::Unknown, "could not build the HTTP client"),
        )
    })?;
    let amz_date = sigv4::amz_date(SystemTime::now());
    let host = match call.url.port() {
        Some(p) => format!("{}:{p}", call.url.host_str().unwrap_or_default()),
        None => call.url.host_str().unwrap_or_default().to_owned(),
    };
    let payload_hash = hex_sha256(&call.body);
    let mut headers = call.headers.clone();
    headers.push(("host", host));
    headers.push(("x-amz-date", amz_date.clone()));
    if call.service == "s3" {
        headers.push(("x-amz-content-sha256", payload_hash));
    }
    let token: Option<&SecretString> = creds.session_token();
    if let Some(tok) = token {
        headers.push(("x-amz-security-token", tok.expose_secret().to_owned()));
    }
    let query: Vec<(String, String)> = call.url.query_pairs().into_owned().collect();
    let query_ref: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let to_sign: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (_, authorization) = sigv4::sign(
        &sigv4::Request {
            method: call.method.as_str(),
            path: call.url.path(),
            query: &query_ref,
            headers: &to_sign,
            payload: &call.body,
        },
        &Scope {
            service: call.service,
            region: &call.region,
            amz_date: &amz_date,
        },
        creds,
    );
    let mut rb = client.request(call.method.clone(), call.url.clone());
    for (k, v) in &headers {
        if *k != "host" {
            rb = rb.header(*k, v);
        }
    }
    rb = rb.header("authorization", authorization);
    if !call.body.is_empty() {
        rb = rb.body(call.body.clone());
    }
    let mut resp = rb.send().await.map_err(|e| send_failure(&e, checked))?;
    let status = resp.status().as_u16();
    let region_header = resp
        .headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .filter(|r| r.len() < 32 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| send_failure(&e, checked))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            break;
        }
    }
    Ok(Answer {
        status,
        region_header,
        body,
    })
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub(crate) fn send_failure(e: &reqwest::Error, checked: &Checked) -> SendError {
    // A rustls error anywhere in the chain is a TLS failure. hyper wraps io errors in io
    // errors whose `source()` skips the wrapped error, so each io error is opened too.
    fn rustls_cause(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(r) = rustls_cause(inner) {
                return Some(r);
            }
        }
        e.source().and_then(rustls_cause)
    }
    if let Some(r) = rustls_cause(e) {
        return (S::Tls, tls::classify(&r));
    }
    if e.is_connect() {
        let addr = checked.addrs.first().copied();
        return (
            S::Tcp,
            match addr {
                Some(a) => net::connect_failure(
                    a,
                    &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                ),
                None => Failure::new(ErrorClass::ConnectionRefused, "the connection failed"),
            },
        );
    }
    (
        S::Query,
        Failure::new(
            ErrorClass::ProtocolMismatch,
            "the HTTP exchange failed (the server closed it or did not speak HTTP)",
        )
        .hint("is the endpoint URL right, and does it need https?"),
    )
}
