//! AWS Signature Version 4, written out (HMAC-SHA256 over a canonical request) so this crate
//! needs no AWS SDK. [`sign`] is the general algorithm; [`json_post_headers`] produces every
//! header of a JSON-protocol `POST /` (KMS, Secrets Manager, …).
//!
//! Proven against AWS's published examples in the tests below (the IAM `ListUsers` example of
//! the SigV4 documentation and the `get-vanilla` case of the SigV4 test suite).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use patchbay_crypto::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Content type of the AWS JSON 1.1 protocol.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// AWS credentials. `Debug` shows the access key id only; the secret key and session token
/// are redacted.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
}

impl Credentials {
    /// Credentials from explicit values.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: SecretString,
        session_token: Option<SecretString>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
        }
    }

    /// The access key id (not a secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The temporary-credentials session token, if any.
    pub fn session_token(&self) -> Option<&SecretString> {
        self.session_token.as_ref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What is being signed: one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The absolute path, not yet URI-encoded (each segment is encoded once), e.g. `/`.
    pub path: &'a str,
    /// Query parameters, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign; must include `host` and `x-amz-date` (and `x-amz-security-token`
    /// when a session token is used).
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub payload: &'a [u8],
}

/// Where and when the request is signed.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Service signing name, e.g. `kms`, `secretsmanager`.
    pub service: &'a str,
    /// Region, e.g. `us-east-1`.
    pub region: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`, the same value as the `x-amz-date` header.
    pub amz_date: &'a str,
}

/// URI-encodes per SigV4: every byte except `A-Z a-z 0-9 - _ . ~` becomes `%XX` (upper hex);
/// `/` too unless `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().to_vec())
}

/// The canonical request (step 1 of SigV4) and the `SignedHeaders` list.
pub fn canonical_request(req: &Request<'_>) -> (String, String) {
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical_uri = uri_encode(path, true);

    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");

    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri,
        canonical_query,
        canonical_headers,
        signed_headers,
        sha256_hex(req.payload)
    );
    (canonical, signed_headers)
}

/// The hex signature and the `Authorization` header value of `req`.
pub fn sign(req: &Request<'_>, scope: &Scope<'_>, creds: &Credentials) -> (String, String) {
    let (canonical, signed_headers) = canonical_request(req);
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        sha256_hex(canonical.as_bytes())
    );

    let k_secret = Zeroizing::new(format!("AWS4{}", creds.secret_access_key.expose_secret()));
    let k_date = hmac(k_secret.as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()).as_slice());

    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    );
    (signature, authorization)
}

/// All headers of a signed AWS JSON-protocol `POST /`: `host`, `x-amz-date`, `x-amz-target`,
/// `content-type`, `x-amz-security-token` (with a session token) and `authorization`.
/// `host` is the `Host` header value (with `:port` when not the default).
pub fn json_post_headers(
    host: &str,
    target: &str,
    body: &[u8],
    scope: &Scope<'_>,
    creds: &Credentials,
) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = vec![
        ("content-type", JSON_CONTENT_TYPE.to_owned()),
        ("host", host.to_owned()),
        ("x-amz-date", scope.amz_date.to_owned()),
        ("x-amz-target", target.to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.expose_secret().to_owned()));
    }
    let to_sign: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (_, authorization) = sign(
        &Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &to_sign,
            payload: body,
        },
        scope,
        creds,
    );
    headers.push(("authorization", authorization));
    headers
}

/// `YYYYMMDD'T'HHMMSS'Z'` (UTC) of a point in time.
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn example_creds() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            SecretString::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            None,
        )
    }

    /// The IAM `ListUsers` example of AWS's "Create a signed AWS API request" documentation.
    #[test]
    fn aws_docs_iam_list_users_example() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(signed, "content-type;host;x-amz-date");
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let scope = Scope {
            service: "iam",
            region: "us-east-1",
            amz_date: "20150830T123600Z",
        };
        let (signature, authorization) = sign(&req, &scope, &example_creds());
        assert_eq!(
            signature,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// `get-vanilla` of the AWS SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        let scope = Scope {
            service: "service",
            region: "us-east-1",
            amz_date: "20150830T123600Z",
        };
        let (signature, _) = sign(&req, &scope, &example_creds());
        assert_eq!(
            signature,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn json_post_headers_sign_target_and_token() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            SecretString::new("SECRETVALUE".into()),
            Some(SecretString::new("SESSIONVALUE".into())),
        );
        let scope = Scope {
            service: "kms",
            region: "eu-west-1",
            amz_date: "20240102T030405Z",
        };
        let h = json_post_headers(
            "kms.eu-west-1.amazonaws.com",
            "TrentService.Encrypt",
            b"{}",
            &scope,
            &creds,
        );
        let auth = &h.iter().find(|(n, _)| *n == "authorization").unwrap().1;
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240102/eu-west-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, "
        ));
        assert!(h.contains(&("x-amz-security-token", "SESSIONVALUE".to_owned())));
        let debug = format!("{creds:?}");
        assert!(!debug.contains("SECRETVALUE") && !debug.contains("SESSIONVALUE"));
    }

    #[test]
    fn header_values_are_trimmed_and_query_sorted() {
        let req = Request {
            method: "GET",
            path: "/a b",
            query: &[("b", "2 3"), ("a", "1")],
            headers: &[("My-Header", "  x   y  "), ("host", "h")],
            payload: b"",
        };
        let (c, _) = canonical_request(&req);
        assert!(c.starts_with("GET\n/a%20b\na=1&b=2%203\nhost:h\nmy-header:x y\n"));
    }

    #[test]
    fn amz_date_formats_utc() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30 12:36:00
        assert_eq!(amz_date(t), "20150830T123600Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29 00:00:00
        assert_eq!(amz_date(t), "20000229T000000Z");
    }
}
