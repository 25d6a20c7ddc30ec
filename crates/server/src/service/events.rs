//! Webhook delivery: the worker [`deliver_forever`] (started by `App::start`) claims due
//! deliveries from the outbox with a lease, signs and POSTs them, and records each attempt.
//!
//! Events are written by the store in the transaction of the change they describe (see
//! `patchbay_store::event_kind_for`); this module only sends them. A delivery is retried
//! with exponential backoff and jitter on anything but a 2xx, up to `max_attempts`, then
//! marked failed. Delivery is at least once: a replica killed between sending and recording
//! leaves a lease that expires, and the event goes out again with the same id
//! (`X-Patchbay-Delivery`), which receivers use to drop duplicates.
//!
//! Signature (docs/events.md): `X-Patchbay-Signature: sha256=<hex HMAC-SHA256(secret,
//! "<X-Patchbay-Timestamp>.<body>")>`. Logs name the webhook and event ids, never the URL
//! (a URL can carry a token) nor the secret.

use std::time::Duration;

use hmac::{Hmac, Mac};
use patchbay_crypto::{SecretAad, SecretString};
use patchbay_store::{ClaimedDelivery, DeliveryResult};
use rand::Rng;
use sha2::Sha256;

use crate::state::AppState;

/// Tunables of delivery (PATCHBAY_WEBHOOK_*).
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// How often the worker looks for due deliveries.
    pub poll_interval: Duration,
    /// Per-attempt timeout (connect and response).
    pub timeout: Duration,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each attempt, up to `backoff_max`, then
    /// multiplied by a random factor in [0.5, 1.0] (jitter).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a claimed delivery stays reserved to the replica that claimed it.
    pub lease: Duration,
    /// Finished deliveries (and their events) older than this are deleted.
    pub retention: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            backoff_base: Duration::from_secs(20),
            backoff_max: Duration::from_secs(6 * 3600),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl EventSettings {
    /// The delay before attempt `attempts + 1`, after `attempts` failed ones (≥ 1).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// `sha256=<hex>` of `"<timestamp>.<body>"` under `secret`.
pub fn signature(secret: &SecretString, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The HTTP client of deliveries: rustls, no redirects, no proxy, a short timeout.
pub fn client(settings: &EventSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("patchbay-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static client configuration")
}

/// Decrypts a webhook's signing secret.
pub async fn webhook_secret(
    state: &AppState,
    workspace_id: &str,
    webhook_id: &str,
    secret: &patchbay_crypto::EncryptedValue,
) -> Result<SecretString, String> {
    let key = state
        .keys
        .key(&state.store, &secret.key_id)
        .await
        .map_err(|e| format!("data key: {}", e.0.message))?;
    key.decrypt(secret, &SecretAad::webhook_secret(workspace_id, webhook_id))
        .map_err(|_| "the signing secret failed its integrity check".to_owned())
}

/// One attempt: sign, POST, classify.
async fn attempt(state: &AppState, http: &reqwest::Client, d: &ClaimedDelivery) -> DeliveryResult {
    let settings = &state.settings.events;
    let failed = |status: Option<i64>, error: String| {
        let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
        let next = (attempts < settings.max_attempts)
            .then(|| patchbay_store::now_millis() + settings.backoff(attempts).as_millis() as i64);
        DeliveryResult {
            status,
            error: Some(error),
            delivered: false,
            next_attempt_at: next,
        }
    };
    let secret = match webhook_secret(state, &d.workspace_id, &d.webhook_id, &d.secret).await {
        Ok(s) => s,
        Err(e) => return failed(None, e),
    };
    let timestamp = patchbay_store::now_millis() / 1000;
    let sig = signature(&secret, timestamp, &d.payload);
    drop(secret);
    let sent = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-patchbay-event", &d.kind)
        .header("x-patchbay-delivery", &d.event_id)
        .header("x-patchbay-timestamp", timestamp.to_string())
        .header("x-patchbay-signature", sig)
        .body(d.payload.clone())
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => DeliveryResult {
            status: Some(i64::from(resp.status().as_u16())),
            error: None,
            delivered: true,
            next_attempt_at: None,
        },
        Ok(resp) => {
            let code = resp.status().as_u16();
            failed(Some(i64::from(code)), format!("HTTP {code}"))
        }
        Err(e) => {
            let why = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            failed(None, why.to_owned())
        }
    }
}

/// Claims and sends due deliveries once; returns how many were attempted.
pub async fn deliver_due(state: &AppState, http: &reqwest::Client, owner: &str) -> usize {
    let settings = &state.settings.events;
    let claimed = match state
        .store
        .claim_deliveries(owner, settings.lease.as_millis() as i64, 32)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim webhook deliveries");
            return 0;
        }
    };
    let n = claimed.len();
    let mut sends = tokio::task::JoinSet::new();
    for d in claimed {
        let (state, http, owner) = (state.clone(), http.clone(), owner.to_owned());
        sends.spawn(async move { send_and_record(&state, &http, &owner, d).await });
    }
    while sends.join_next().await.is_some() {}
    n
}

async fn send_and_record(
    state: &AppState,
    http: &reqwest::Client,
    owner: &str,
    d: ClaimedDelivery,
) {
    let result = attempt(state, http, &d).await;
    if result.delivered {
        tracing::info!(
            webhook = d.webhook_id,
            event = d.event_id,
            kind = d.kind,
            "webhook delivered"
        );
    } else {
        tracing::warn!(
            webhook = d.webhook_id,
            event = d.event_id,
            kind = d.kind,
            attempt = d.attempts + 1,
            error = result.error.as_deref().unwrap_or(""),
            gave_up = result.next_attempt_at.is_none(),
            "webhook delivery failed"
        );
    }
    match state
        .store
        .finish_delivery(&d.event_id, &d.webhook_id, owner, &result)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            webhook = d.webhook_id,
            event = d.event_id,
            "webhook delivery lease expired before the attempt was recorded"
        ),
        Err(e) => tracing::warn!(error = %e, "could not record a webhook delivery"),
    }
}

/// The delivery worker: poll, send, prune finished deliveries past their retention.
pub async fn deliver_forever(state: AppState) {
    let owner = format!("replica-{}", patchbay_store::new_id());
    let http = client(&state.settings.events);
    let mut last_prune = std::time::Instant::now();
    loop {
        // Keep going while there is a backlog; otherwise wait for the next poll.
        if deliver_due(&state, &http, &owner).await == 0 {
            tokio::time::sleep(state.settings.events.poll_interval).await;
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            let before =
                patchbay_store::now_millis() - state.settings.events.retention.as_millis() as i64;
            if let Err(e) = state.store.prune_events(before).await {
                tracing::warn!(error = %e, "could not prune delivered events");
            }
        }
    }
}
