//! Audit endpoints: a workspace's events (page by page, or every match as JSON lines) and
//! the verification of the whole hash chain.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patchbay_core::model::format_rfc3339;
use patchbay_core::ErrorCode;
use patchbay_store::{AuditFilter, AuditRecord, Verification};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::audit as svc;
use crate::state::AppState;

/// One audit event.
#[derive(Serialize, ToSchema)]
pub struct AuditEventOut {
    /// Position in the chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    pub at: String,
    /// `token:<id>`, `user:<id>` or `system:<task>`.
    pub actor: String,
    pub action: String,
    /// success, denied or failure.
    pub outcome: &'static str,
    pub workspace_id: Option<String>,
    pub target_kind: String,
    pub target_id: String,
    pub request_id: Option<String>,
    pub source_address: Option<String>,
    /// Never secret values: field names, versions, non-secret old/new values.
    #[schema(value_type = Object)]
    pub details: Value,
    /// SHA-256 (hex) of the previous event; see docs/audit.md for the encoding.
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditRecord> for AuditEventOut {
    fn from(r: AuditRecord) -> Self {
        Self {
            seq: r.seq,
            at: format_rfc3339(r.at),
            actor: r.entry.actor,
            action: r.entry.action,
            outcome: r.entry.outcome.as_str(),
            workspace_id: r.entry.workspace_id,
            target_kind: r.entry.target_kind,
            target_id: r.entry.target_id,
            request_id: r.entry.request_id,
            source_address: r.entry.source_address,
            details: r.entry.details.into_value(),
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEventOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The result of walking the chain.
#[derive(Serialize, ToSchema)]
pub struct VerifyOut {
    /// `true` when every event from the recorded origin to the recorded head checks.
    pub ok: bool,
    /// Events checked (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// The first broken position (when not ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<i64>,
    /// hash_mismatch, gap, reordered, origin_mismatch or head_mismatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 (`2026-11-26T04:00:00Z`, fractions and offsets allowed) to Unix milliseconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh = num(s.len() - 5..s.len() - 3)?;
            let om = num(s.len() - 2..s.len())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

fn time_param(q: &mut BTreeMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    q.remove(name)
        .map(|v| {
            parse_rfc3339(&v).ok_or_else(|| {
                ApiError::field(
                    ErrorCode::InvalidQuery,
                    name,
                    format!("{name} must be an RFC 3339 time such as 2026-11-26T04:00:00Z"),
                )
            })
        })
        .transpose()
}

fn text_param(q: &mut BTreeMap<String, String>, name: &str) -> ApiResult<Option<String>> {
    match q.remove(name) {
        Some(v) if v.is_empty() || v.len() > 200 => Err(ApiError::field(
            ErrorCode::InvalidQuery,
            name,
            format!("{name} must be 1-200 characters"),
        )),
        other => Ok(other),
    }
}

fn wants_jsonl(q: &mut BTreeMap<String, String>, headers: &HeaderMap) -> ApiResult<bool> {
    match q.remove("format").as_deref() {
        Some("jsonl") => Ok(true),
        Some("json") => Ok(false),
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidQuery,
            "format",
            "format must be json or jsonl",
        )),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-ndjson"))),
    }
}

/// `order=asc|desc`: chain order (the default) or newest first.
fn newest_first(q: &mut BTreeMap<String, String>) -> ApiResult<bool> {
    match q.remove("order").as_deref() {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidQuery,
            "order",
            "order must be asc or desc",
        )),
    }
}

/// Every matching event as one JSON object per line, read from the store page by page
/// while the response streams.
fn jsonl(state: AppState, filter: AuditFilter) -> Response {
    let stream = futures_util::stream::try_unfold(
        (state, filter, false),
        |(state, mut filter, done)| async move {
            if done {
                return Ok::<_, std::io::Error>(None);
            }
            let page = state.store.list_audit(&filter, 500).await.map_err(|e| {
                tracing::error!(error = %e, "audit export failed mid-stream");
                std::io::Error::other("audit export failed")
            })?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            if filter.newest_first {
                filter.before_seq = Some(last.seq);
            } else {
                filter.after_seq = Some(last.seq);
            }
            let done = page.len() < 500;
            let mut out = Vec::new();
            for r in page {
                serde_json::to_writer(&mut out, &AuditEventOut::from(r))
                    .map_err(std::io::Error::other)?;
                out.push(b'\n');
            }
            Ok(Some((Bytes::from(out), (state, filter, done))))
        },
    );
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit", tag = "audit",
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
        ("actor" = Option<String>, Query, description = "Exact actor, e.g. token:<id>"),
        ("action" = Option<String>, Query, description = "Exact action, or a prefix ending in `.*` (connection.*)"),
        ("target_id" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "RFC 3339; events at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339; events before"),
        ("order" = Option<String>, Query, description = "asc (default: chain order, oldest first) or desc (newest first); a cursor continues in the order it was given in"),
        ("format" = Option<String>, Query, description = "json (default) or jsonl: every match, one event per line (also chosen by Accept: application/x-ndjson)")),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(ws): Path<String>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(mut q) =
        query.map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "malformed query string"))?;
    let jsonl_wanted = wants_jsonl(&mut q, &headers)?;
    let newest_first = newest_first(&mut q)?;
    let (limit, after) = super::page_params(&mut q)?;
    let cursor_seq = after
        .map(|a| {
            a.parse::<i64>().map_err(|_| {
                ApiError::field(
                    ErrorCode::InvalidQuery,
                    "cursor",
                    "not a cursor from this API",
                )
            })
        })
        .transpose()?;
    let mut filter = AuditFilter {
        workspace_id: None,
        actor: text_param(&mut q, "actor")?,
        action: text_param(&mut q, "action")?,
        target_id: text_param(&mut q, "target_id")?,
        since: time_param(&mut q, "since")?,
        until: time_param(&mut q, "until")?,
        // The cursor is the last seq of the previous page, in the page's own order.
        after_seq: cursor_seq.filter(|_| !newest_first),
        before_seq: cursor_seq.filter(|_| newest_first),
        newest_first,
    };
    if let Some(a) = &filter.action {
        if a.contains('*') && !(a.ends_with(".*") && a.matches('*').count() == 1) {
            return Err(ApiError::field(
                ErrorCode::InvalidQuery,
                "action",
                "action is exact, or a prefix ending in .* (connection.*)",
            ));
        }
    }
    if let Some(unknown) = q.keys().next() {
        return Err(ApiError::field(
            ErrorCode::InvalidQuery,
            unknown.clone(),
            "unknown query parameter; this endpoint takes limit, cursor, actor, action, \
             target_id, since, until, order and format",
        ));
    }
    filter.workspace_id = Some(svc::readable_workspace(&state, &auth.0, &ws).await?);
    if jsonl_wanted {
        return Ok(jsonl(state, filter));
    }
    let items = svc::list(&state, &filter, limit).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|r| super::cursor(&r.seq.to_string())))
        .flatten();
    Ok(Json(AuditList {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = VerifyOut), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<VerifyOut>> {
    Ok(Json(match svc::verify(&state, &auth.0).await? {
        Verification::Ok {
            count,
            head_seq,
            head_hash,
        } => VerifyOut {
            ok: true,
            count: Some(count),
            head_seq: Some(head_seq),
            head_hash: Some(head_hash),
            broken_seq: None,
            reason: None,
        },
        Verification::Broken { seq, reason } => VerifyOut {
            ok: false,
            count: None,
            head_seq: None,
            head_hash: None,
            broken_seq: Some(seq),
            reason: Some(reason.as_str()),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123Z"),
            Some(951_782_400_123)
        );
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40+01:00"),
            Some(1_795_000_000_000)
        );
        for bad in [
            "",
            "2026-11-18",
            "2026-13-01T00:00:00Z",
            "2026-11-18T00:00:00",
            "x026-11-18T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
