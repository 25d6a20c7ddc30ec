//! Unsigned HTTP exchanges for families whose protocol is HTTP (Snowflake, ClickHouse):
//! one reqwest client pinned to the guard's checked addresses, no proxy, no redirects, a
//! bounded body. Failures are attributed like signed_http's (tls, tcp, else the caller's
//! stage).

use reqwest::{Client, RequestBuilder};

use crate::guard::{Checked, Host};
use crate::result::{ErrorClass, Failure, ProbeStage as S};
use crate::signed_http::{send_failure, SendError};
use crate::tls::{self, TlsOptions};

const MAX_BODY: usize = 256 * 1024;

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// A client that reaches the checked addresses only.
pub fn client(checked: &Checked, opts: &TlsOptions) -> Result<Client, SendError> {
    let config = tls::client_config(opts).map_err(|f| (S::Tls, f))?;
    let mut builder = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(config);
    if let Host::Name(n) = &checked.host {
        builder = builder.resolve_to_addrs(n, &checked.addrs);
    }
    builder.build().map_err(|_| {
        (
            S::Query,
            Failure::new(ErrorClass::Unknown, "could not build the HTTP client"),
        )
    })
}

pub async fn send(rb: RequestBuilder, checked: &Checked) -> Result<Answer, SendError> {
    let mut resp = rb.send().await.map_err(|e| send_failure(&e, checked))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| send_failure(&e, checked))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            break;
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A short printable excerpt of a server's text, for messages.
pub fn excerpt(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean.to_owned(),
    }
}
