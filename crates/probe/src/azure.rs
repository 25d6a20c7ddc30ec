//! Azure Blob Storage (`azure_blob`): Get Container Properties
//! (`GET /{container}?restype=container`) authorized with the account key (the documented
//! SharedKey scheme: HMAC-SHA256 over the canonical string, `x-ms-date`, `x-ms-version`)
//! or a SAS token, taken from the settings or a connection string (`AccountName`,
//! `AccountKey`, `SharedAccessSignature`, `BlobEndpoint`, `EndpointSuffix`,
//! `DefaultEndpointsProtocol`). Azure answers a bad signature with 403
//! `AuthenticationFailed` (auth_failed at auth), a missing container with 404
//! `ContainerNotFound`. Entra service principals and managed identity answer
//! `not_implemented`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use patchbay_crypto::SecretString;
use reqwest::Url;
use sha2::Sha256;

use crate::gcp::send;
use crate::net;
use crate::result::{
    ErrorClass, Failure, ProbeResult, ProbeStage as S, Run, StageReport, StageStatus, Stopped,
};
use crate::tls::{TlsOptions, VerifyMode};
use crate::{NetworkGuard, Target};

const PLANNED: &[S] = &[S::Resolve, S::Dns, S::Tcp, S::Tls, S::Auth, S::Query];
const VERSION: &str = "2021-08-06";
const SCHEMES: &[&str] = &["https", "http"];

enum Cred {
    Key(SecretString),
    Sas(SecretString),
}

struct Plan {
    url: Url,
    account: String,
    cred: Cred,
}

fn conn_string(t: &Target<'_>) -> Vec<(String, SecretString)> {
    t.secret("connection_string")
        .map(|c| {
            c.expose_secret()
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), SecretString::new(v.trim().to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn plan(t: &Target<'_>) -> Result<Plan, Failure> {
    let cs = conn_string(t);
    let get = |k: &str| cs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let plain = |k: &str| get(k).map(|v| v.expose_secret().to_owned());
    let account = t
        .str("account_name")
        .map(str::to_owned)
        .or_else(|| plain("AccountName"))
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the setting `account_name` is required to test this connection",
            )
        })?;
    let container = t.required_str("container")?;
    let cred = if let Some(k) = t
        .secret("account_key")
        .cloned()
        .or_else(|| get("AccountKey"))
    {
        Cred::Key(k)
    } else if let Some(s) = t
        .secret("sas_token")
        .cloned()
        .or_else(|| get("SharedAccessSignature"))
    {
        Cred::Sas(s)
    } else if t.str("client_id").is_some() || t.bool("use_managed_identity") == Some(true) {
        return Err(Failure::new(
            ErrorClass::NotImplemented,
            "testing with an Entra service principal or a managed identity is not implemented yet",
        )
        .hint("set the account key or a SAS token to test"));
    } else {
        return Err(Failure::new(
            ErrorClass::AuthFailed,
            "no account key, SAS token or connection string is set for this connection",
        ));
    };
    let base = match t
        .str("blob_endpoint")
        .map(str::to_owned)
        .or_else(|| plain("BlobEndpoint"))
    {
        Some(b) => b,
        None => {
            let proto = plain("DefaultEndpointsProtocol").unwrap_or_else(|| "https".into());
            let suffix = t
                .str("endpoint_suffix")
                .map(str::to_owned)
                .or_else(|| plain("EndpointSuffix"))
                .unwrap_or_else(|| "core.windows.net".into());
            format!("{proto}://{account}.blob.{suffix}")
        }
    };
    let mut url = Url::parse(&format!("{}/{container}", base.trim_end_matches('/')))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                "the blob endpoint is not a valid URL",
            )
        })?;
    url.query_pairs_mut().append_pair("restype", "container");
    Ok(Plan { url, account, cred })
}

/// RFC 1123 date in GMT, as `x-ms-date` wants it.
fn rfc1123(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        MO[(m - 1) as usize],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The SharedKey `Authorization` of a GET without body (Blob service, version 2009-09-19+).
fn shared_key(account: &str, key: &SecretString, url: &Url, date: &str) -> Result<String, Failure> {
    let bad = || {
        Failure::new(
            ErrorClass::InvalidSettings,
            "the account key is not valid base64",
        )
        .hint("paste the key exactly as the Azure portal shows it (Access keys)")
    };
    let raw = B64.decode(key.expose_secret().trim()).map_err(|_| bad())?;
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
        .collect();
    query.sort();
    let mut resource = format!("/{account}{}", url.path());
    for (k, v) in &query {
        resource.push_str(&format!("\n{k}:{v}"));
    }
    let to_sign =
        format!("GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n{resource}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&raw).map_err(|_| bad())?;
    mac.update(to_sign.as_bytes());
    Ok(format!(
        "SharedKey {account}:{}",
        B64.encode(mac.finalize().into_bytes())
    ))
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, PLANNED);
    let _ = steps(&mut run, t, guard).await;
    run.finish()
}

async fn steps(run: &mut Run, t: &Target<'_>, guard: &NetworkGuard) -> Result<(), Stopped> {
    let plan = run
        .stage(S::Resolve, async {
            let p = plan(t)?;
            crate::guard::check_url_shape(&p.url, SCHEMES)
                .map_err(|e| net::guard_failure(e, ""))?;
            let d = format!(
                "Get Container Properties at {}",
                p.url.host_str().unwrap_or_default()
            );
            Ok((p, Some(d)))
        })
        .await?;
    let host = plan.url.host_str().unwrap_or_default().to_owned();
    let checked = run
        .stage(S::Dns, async {
            let c = guard
                .check_url(&plan.url, SCHEMES)
                .await
                .map_err(|e| net::guard_failure(e, &host))?;
            let d = c
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Ok((c, Some(d)))
        })
        .await?;
    run.stage(S::Tcp, async {
        let (_, d) = net::tcp(&checked.addrs).await?;
        Ok(((), d))
    })
    .await?;
    let opts = TlsOptions {
        mode: Some(VerifyMode::Full),
        ..TlsOptions::default()
    };
    let date = rfc1123(SystemTime::now());
    let mut url = plan.url.clone();
    let auth = match &plan.cred {
        Cred::Key(k) => match shared_key(&plan.account, k, &url, &date) {
            Ok(a) => Some(a),
            Err(f) => return Err(run.fail(S::Auth, f)),
        },
        Cred::Sas(s) => {
            let sas = s.expose_secret().trim_start_matches('?');
            let q = format!("{}&{sas}", url.query().unwrap_or_default());
            url.set_query(Some(&q));
            None
        }
    };
    let sent = tokio::time::timeout_at(
        run.deadline(),
        send(
            guard,
            &opts,
            Some(checked),
            |c, u| {
                let rb = c
                    .get(u)
                    .header("x-ms-date", &date)
                    .header("x-ms-version", VERSION);
                match &auth {
                    Some(a) => rb.header("authorization", a),
                    None => rb,
                }
            },
            &url,
            S::Query,
        ),
    )
    .await;
    let (status, body) = match sent {
        Err(_) => {
            return Err(run.fail(
                S::Query,
                Failure::new(ErrorClass::Timeout, "no answer within the deadline"),
            ))
        }
        Ok(Err((stage, f))) => return Err(run.fail(stage, f)),
        Ok(Ok(r)) => r,
    };
    if url.scheme() == "https" {
        run.push(StageReport {
            stage: S::Tls,
            status: StageStatus::Ok,
            duration_ms: 0,
            detail: Some("negotiated within the request, certificate verification full".into()),
        });
    } else {
        run.skip(S::Tls, "plain HTTP");
    }
    // The error code is in the XML body (`<Code>…</Code>`); HEAD-less GET keeps it.
    let text = String::from_utf8_lossy(&body);
    let code = text
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .filter(|c| c.len() < 64 && c.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("")
        .to_owned();
    let auth_fail = match (status, code.as_str()) {
        (403, "AuthenticationFailed") | (401, _) | (400, "InvalidAuthenticationInfo") => Some(
            Failure::new(
                ErrorClass::AuthFailed,
                format!("HTTP {status} {code}: the account key or SAS token was rejected"),
            )
            .hint("check the key (Access keys) or the SAS token's signature and expiry"),
        ),
        (403, _) => Some(
            Failure::new(
                ErrorClass::PermissionDenied,
                format!("HTTP 403 {code}: the credential may not read this container"),
            )
            .hint(
                "a SAS needs read (r) permission on the container; check its IP range and protocol",
            ),
        ),
        _ => None,
    };
    if let Some(f) = auth_fail {
        return Err(run.fail(S::Auth, f));
    }
    run.push(StageReport {
        stage: S::Auth,
        status: StageStatus::Ok,
        duration_ms: 0,
        detail: Some(match plan.cred {
            Cred::Key(_) => "SharedKey signature accepted".into(),
            Cred::Sas(_) => "SAS token accepted".into(),
        }),
    });
    run.stage(S::Query, async {
        match status {
            200 => Ok(((), Some("container exists".to_owned()))),
            404 => Err(Failure::new(
                ErrorClass::NotFound,
                format!("HTTP 404 {code}: the container does not exist"),
            )),
            s => Err(
                Failure::new(ErrorClass::ProtocolMismatch, format!("HTTP {s} {code}"))
                    .hint("is the blob endpoint an Azure Blob Storage endpoint?"),
            ),
        }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_ms_date_is_rfc1123() {
        assert_eq!(rfc1123(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc1123(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
