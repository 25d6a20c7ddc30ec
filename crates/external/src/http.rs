//! The one HTTP client setup every provider client uses: rustls (ring), timeouts always on.

use std::time::Duration;

use crate::error::{ExternalError, Result};

/// Timeouts of the HTTP client. Defaults: 5 s to connect, 15 s for a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, from sending to the end of the response body.
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }
}

impl HttpOptions {
    /// A reqwest client with these timeouts and no redirects (a redirect could carry a token
    /// or secret to another host). Proxies follow the usual `HTTPS_PROXY`/`NO_PROXY` variables.
    pub fn client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| ExternalError::Config("cannot build the HTTP client".into()))
    }
}

/// Keeps a provider-supplied code printable and short: it ends up in error messages.
pub(crate) fn sanitize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':'))
        .take(100)
        .collect()
}
