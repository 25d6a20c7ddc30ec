//! Webhooks of a workspace (workspace:admin): where events are delivered, which kinds, and
//! the HMAC signing secret — generated (or given) at creation, shown once, stored encrypted
//! with the workspace data key like credential secrets.

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::{SecretAad, SecretString};
use patchbay_store::{
    new_id, now_millis, DeliveryRecord, StoreError, WebhookPatch, WebhookRecord, EVENT_KINDS,
};
use rand::RngCore;
use serde_json::{json, Map, Value};

use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const FIELDS: &[&str] = &["url", "events", "description", "enabled", "secret"];
/// Read-only fields of the representation, ignored so a GET body can be sent back.
const READ_ONLY: &[&str] = &[
    "id",
    "workspace_id",
    "created_by",
    "version",
    "created_at",
    "updated_at",
];
const MAX_URL: usize = 2048;

/// Webhook URLs are set by workspace admins, so any host is allowed (loopback included);
/// still only http(s), and no credentials in the URL (they would show in lists).
pub fn check_url(url: &str) -> ApiResult<()> {
    let bad = |m: &str| ApiError::field(ErrorCode::InvalidField, "/url", m.to_owned());
    if url.len() > MAX_URL {
        return Err(bad("at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| bad("must be an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "must not carry credentials; receivers verify the X-Patchbay-Signature instead",
        ));
    }
    Ok(())
}

fn events_input(f: &mut Fields) -> ApiResult<Option<Vec<String>>> {
    let Some(list) = f.optional_string_list("events")? else {
        return Ok(None);
    };
    for (i, k) in list.iter().enumerate() {
        if !EVENT_KINDS.contains(&k.as_str()) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("/events/{i}"),
                format!("unknown event kind; known: {}", EVENT_KINDS.join(", ")),
            ));
        }
    }
    let mut list = list;
    list.sort();
    list.dedup();
    Ok(Some(list))
}

fn enabled_input(f: &mut Fields) -> ApiResult<Option<bool>> {
    match f.take("enabled") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidField,
            "/enabled",
            "must be true or false",
        )),
    }
}

fn description_input(f: &mut Fields) -> ApiResult<Option<String>> {
    let d = f.optional_string("description")?;
    if let Some(d) = &d {
        patchbay_core::names::check_description("/description", d)?;
    }
    Ok(d)
}

/// A new signing secret: `whsec_` and 256 random bits, hex.
fn generate_secret() -> SecretString {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SecretString::new(format!("whsec_{}", hex::encode(raw)))
}

/// The webhook (404 if its workspace is invisible, 403 without workspace:admin there).
async fn load(state: &AppState, p: &Principal, id: &str) -> ApiResult<WebhookRecord> {
    let w = match state.store.get_webhook(id).await {
        Ok(w) if p.sees_workspace(&w.workspace_id) => w,
        Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::not_found("webhook")),
        Err(e) => return Err(e.into()),
    };
    require_in(p, &w.workspace_id, Permission::WorkspaceAdmin)?;
    Ok(w)
}

pub async fn list(state: &AppState, p: &Principal, ws: &str) -> ApiResult<Vec<WebhookRecord>> {
    let ws = workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    Ok(state.store.list_webhooks(&ws.id).await?)
}

/// The workspace's webhooks, each with its newest delivery (one query for all of them).
pub async fn list_with_latest(
    state: &AppState,
    p: &Principal,
    ws: &str,
) -> ApiResult<Vec<(WebhookRecord, Option<DeliveryRecord>)>> {
    let hooks = list(state, p, ws).await?;
    let ids: Vec<String> = hooks.iter().map(|w| w.id.clone()).collect();
    let mut latest = state.store.latest_deliveries(&ids).await?;
    Ok(hooks
        .into_iter()
        .map(|w| {
            let d = latest.remove(&w.id);
            (w, d)
        })
        .collect())
}

/// Creates a webhook; the secret comes back once, here.
pub async fn create(
    state: &AppState,
    p: &Principal,
    ws: &str,
    body: Map<String, Value>,
) -> ApiResult<(WebhookRecord, SecretString)> {
    let ws = workspaces::get(state, p, ws).await?;
    require_in(p, &ws.id, Permission::WorkspaceAdmin)?;
    let mut f = Fields::new(body, FIELDS, &[])?;
    let url = f.required_string("url")?;
    check_url(&url)?;
    let events = events_input(&mut f)?.unwrap_or_default();
    let description = description_input(&mut f)?.unwrap_or_default();
    let enabled = enabled_input(&mut f)?.unwrap_or(true);
    let secret = match f.take("secret") {
        None | Some(Value::Null) => generate_secret(),
        Some(Value::String(s)) if (16..=256).contains(&s.len()) => SecretString::new(s),
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/secret",
                "must be a string of 16-256 characters, or omitted to have one generated",
            ))
        }
    };
    let id = new_id();
    let key = state.keys.active_key(&state.store, &ws.id).await?;
    let encrypted = key.encrypt(&secret, &SecretAad::webhook_secret(&ws.id, &id));
    let now = now_millis();
    let w = WebhookRecord {
        id: id.clone(),
        workspace_id: ws.id.clone(),
        description,
        url,
        events,
        enabled,
        secret: encrypted,
        created_by: p.actor(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    // The URL is not audited: it can carry a receiver's token in its path.
    let entry = audit(
        p,
        "webhook.create",
        Some(&ws.id),
        "webhook",
        &id,
        json!({"events": w.events, "enabled": w.enabled}),
    );
    state.store.create_webhook(&w, &entry).await?;
    Ok((state.store.get_webhook(&id).await?, secret))
}

pub async fn get(state: &AppState, p: &Principal, id: &str) -> ApiResult<WebhookRecord> {
    load(state, p, id).await
}

/// PATCH: `url`, `events`, `description`, `enabled`; the secret cannot be read or changed
/// (create a new webhook to rotate it).
pub async fn patch(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    body: Map<String, Value>,
) -> ApiResult<WebhookRecord> {
    let w = load(state, p, id).await?;
    let mut f = Fields::new(body, FIELDS, READ_ONLY)?;
    if f.has("secret") {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/secret",
            "the secret cannot change; create a new webhook and delete this one to rotate it",
        ));
    }
    let url = f.optional_string("url")?;
    if let Some(u) = &url {
        check_url(u)?;
    }
    let change = WebhookPatch {
        url,
        events: events_input(&mut f)?,
        description: description_input(&mut f)?,
        enabled: enabled_input(&mut f)?,
    };
    let entry = audit(
        p,
        "webhook.update",
        Some(&w.workspace_id),
        "webhook",
        &w.id,
        json!({"url_changed": change.url.is_some(), "events": change.events,
               "enabled": change.enabled, "from_version": w.version}),
    );
    Ok(state
        .store
        .update_webhook(&w.id, expected, &change, &entry)
        .await?)
}

pub async fn delete(state: &AppState, p: &Principal, id: &str) -> ApiResult<()> {
    let w = load(state, p, id).await?;
    let entry = audit(
        p,
        "webhook.delete",
        Some(&w.workspace_id),
        "webhook",
        &w.id,
        json!({}),
    );
    Ok(state.store.delete_webhook(&w.id, &entry).await?)
}

pub async fn deliveries(
    state: &AppState,
    p: &Principal,
    id: &str,
    limit: u32,
) -> ApiResult<Vec<DeliveryRecord>> {
    let w = load(state, p, id).await?;
    Ok(state.store.list_deliveries(&w.id, limit).await?)
}

/// Queues a `ping` event for this webhook; returns its event id.
pub async fn ping(state: &AppState, p: &Principal, id: &str) -> ApiResult<String> {
    let w = load(state, p, id).await?;
    let entry = audit(
        p,
        "webhook.ping",
        Some(&w.workspace_id),
        "webhook",
        &w.id,
        json!({}),
    );
    Ok(state.store.ping_webhook(&w, &entry).await?)
}

/// Sends a delivery again (after it failed, or to replay it): same event id, fresh
/// attempt budget.
pub async fn redeliver(state: &AppState, p: &Principal, id: &str, event_id: &str) -> ApiResult<()> {
    let w = load(state, p, id).await?;
    let entry = audit(
        p,
        "webhook.redeliver",
        Some(&w.workspace_id),
        "webhook",
        &w.id,
        json!({"event_id": event_id}),
    );
    match state.store.redeliver(event_id, &w.id, &entry).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("delivery")),
        other => Ok(other?),
    }
}
