//! A thin REST client for the CLI. API errors keep their code so the CLI can print it and
//! scripts can match on it.

use reqwest::{header, Method};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An error the API answered with, or a transport failure (code `connection_failed`).
#[derive(Debug)]
pub struct ApiFailure {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (at {field})")?;
        }
        Ok(())
    }
}

pub struct Reply {
    pub body: Value,
    pub etag: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("patchbay-cli/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("HTTP client"),
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Reply, ApiFailure> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            let ct = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req.header(header::CONTENT_TYPE, ct).body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| ApiFailure {
            code: "connection_failed".into(),
            message: format!("could not reach {}: {}", self.base, e.without_url()),
            field: None,
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(Reply { body, etag });
        }
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        Err(ApiFailure {
            code: s("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message: s("message").unwrap_or_else(|| status.to_string()),
            field: s("field"),
        })
    }

    /// Streams a successful response body to `out` as it arrives (large exports).
    pub async fn download(
        &self,
        path: &str,
        out: &mut impl std::io::Write,
    ) -> Result<(), ApiFailure> {
        let failed = |e: String| ApiFailure {
            code: "connection_failed".into(),
            message: e,
            field: None,
        };
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(|e| {
            failed(format!(
                "could not reach {}: {}",
                self.base,
                e.without_url()
            ))
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
            return Err(ApiFailure {
                code: s("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
                message: s("message").unwrap_or_else(|| status.to_string()),
                field: s("field"),
            });
        }
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| failed(format!("download interrupted: {}", e.without_url())))?
        {
            out.write_all(&chunk)
                .map_err(|e| failed(format!("writing the output: {e}")))?;
        }
        out.flush()
            .map_err(|e| failed(format!("writing the output: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiFailure> {
        Ok(self.call(Method::GET, path, None, &[]).await?.body)
    }
}

/// Percent-encodes a query or path component.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
