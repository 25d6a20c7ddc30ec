//! Browser sessions at the HTTP edge: the cookie (`pb_session`: HttpOnly, SameSite=Lax,
//! Secure under TLS, Path=/) and the CSRF token derived from it. The cookie's secret is
//! stored only as a hash; the CSRF token is SHA-256 of the secret under its own label, so it
//! can be put in a page without revealing the cookie and needs no storage.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "pb_session";
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");
/// The form field that carries the CSRF token on HTML form posts.
pub const CSRF_FIELD: &str = "csrf_token";

/// The session secret of the request's `pb_session` cookie.
pub fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session.
pub fn csrf_token(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"patchbay-csrf:")
        .chain_update(secret.as_bytes())
        .finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(secret: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .expect("base64url and digits are valid in a header")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    ))
    .expect("static text is a valid header")
}

/// Minimal HTML escaping for text put into pages.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_the_csrf_token_does_not_reveal_it() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; pb_session=s3cret; b=2"),
        );
        assert_eq!(cookie_secret(&h), Some("s3cret"));
        let t = csrf_token("s3cret");
        assert!(!t.contains("s3cret"));
        assert_eq!(t, csrf_token("s3cret"));
        assert_ne!(t, csrf_token("other"));
        assert!(cookie_secret(&HeaderMap::new()).is_none());
        let c = set_cookie("x", 60, true).to_str().unwrap().to_owned();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.ends_with("Secure"));
        assert!(!set_cookie("x", 60, false)
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
