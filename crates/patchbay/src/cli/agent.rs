//! `patchbay agent`: runs inside a network zone, keeps an outbound long poll to the server,
//! and runs the zone's connection tests with the same probes as the server, through its
//! own network guard. The server never connects into the zone.
//!
//! Loop: claim (waits up to the server's long-poll time; also the heartbeat) → probe →
//! report → claim again. Server errors back off (1 s doubling to 30 s); a refused token
//! (401/403) stops the agent. SIGTERM/SIGINT stop it between jobs (a running test finishes
//! first, within its deadline). Logs carry job ids, connection names, stages and classes;
//! never settings values or secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use patchbay_crypto::SecretString;
use patchbay_probe::{NetworkGuard, Policy, ProbeResult};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

/// Options of `patchbay agent` (the token is the global --token / PATCHBAY_TOKEN).
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The zone this agent serves; must be the zone of its token.
    #[arg(long, env = "PATCHBAY_AGENT_ZONE")]
    pub zone: String,
    /// The patchbay server's URL (the agent only ever connects out to it).
    #[arg(long, env = "PATCHBAY_AGENT_SERVER")]
    pub server: String,
    /// Tests may reach these (comma-separated CIDRs, addresses or host patterns, each
    /// optionally `:port`), overriding the built-in deny set; same syntax as serve's.
    #[arg(long, env = "PATCHBAY_NETWORK_ALLOW", default_value = "")]
    pub network_allow: String,
    /// Tests may never reach these (wins over allow).
    #[arg(long, env = "PATCHBAY_NETWORK_DENY", default_value = "")]
    pub network_deny: String,
}

/// Runs until a signal or a refused token. `token` comes from --token, PATCHBAY_TOKEN or
/// PATCHBAY_TOKEN_FILE.
pub fn run(args: AgentArgs, token: Option<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATCHBAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let token = token
        .or_else(|| {
            std::env::var("PATCHBAY_TOKEN_FILE")
                .ok()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_owned())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "an agent token is needed: --token, PATCHBAY_TOKEN or PATCHBAY_TOKEN_FILE"
            )
        })?;
    let policy = Policy::parse(&args.network_allow, &args.network_deny)
        .map_err(|e| anyhow::anyhow!("network policy: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent_loop(
        args,
        SecretString::new(token),
        NetworkGuard::new(policy),
    ))
}

struct Agent {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    zone: String,
    guard: NetworkGuard,
    hostname: Option<String>,
}

enum Claim {
    Idle,
    Job(Value),
}

async fn agent_loop(
    args: AgentArgs,
    token: SecretString,
    guard: NetworkGuard,
) -> anyhow::Result<()> {
    let agent = Agent {
        http: reqwest::Client::builder()
            .user_agent(concat!("patchbay-agent/", env!("CARGO_PKG_VERSION")))
            // Longer than any long poll; a silent server is retried.
            .timeout(Duration::from_secs(90))
            .build()?,
        base: args.server.trim_end_matches('/').to_owned(),
        token,
        zone: args.zone,
        guard,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
    };
    tracing::info!(zone = agent.zone, server = agent.base, "agent started");
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut backoff = Duration::from_secs(1);
    loop {
        let claim = tokio::select! {
            () = &mut shutdown => break,
            c = agent.claim() => c,
        };
        match claim {
            Ok(Claim::Idle) => backoff = Duration::from_secs(1),
            Ok(Claim::Job(job)) => {
                backoff = Duration::from_secs(1);
                // A job in hand is finished (within its deadline) before a signal is obeyed.
                agent.run_job(job).await;
            }
            Err(Stop(msg)) if msg.starts_with("refused") => {
                tracing::error!(
                    reason = msg,
                    "the server refused this agent's token; stopping"
                );
                anyhow::bail!("{msg}");
            }
            Err(Stop(msg)) => {
                tracing::warn!(reason = msg, retry_in_s = backoff.as_secs(), "claim failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Why a call failed, in words fit for the log (no URL query, no body, no token).
struct Stop(String);

impl Agent {
    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, Stop> {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| Stop(format!("could not reach the server: {}", e.without_url())))
    }

    async fn claim(&self) -> Result<Claim, Stop> {
        let body = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "hostname": self.hostname,
            "zone": self.zone,
        });
        let resp = self.post("/api/v1/agent/claim", &body).await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(Claim::Idle),
            StatusCode::OK => resp
                .json::<Value>()
                .await
                .map(Claim::Job)
                .map_err(|_| Stop("the claim answer is not JSON".into())),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(Stop(format!("refused ({s}): {}", error_code(resp).await)))
            }
            StatusCode::BAD_REQUEST => {
                Err(Stop(format!("refused (400): {}", error_code(resp).await)))
            }
            s => Err(Stop(format!(
                "server answered {s}: {}",
                error_code(resp).await
            ))),
        }
    }

    async fn run_job(&self, job: Value) {
        let id = job["job_id"].as_str().unwrap_or_default().to_owned();
        let name = job["connection_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ty_id = job["type"].as_str().unwrap_or_default().to_owned();
        let deadline = Duration::from_millis(job["deadline_ms"].as_u64().unwrap_or(0))
            .min(patchbay_probe::MAX_DEADLINE);
        let secrets: BTreeMap<String, SecretString> = job["secrets"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), SecretString::new(s.to_owned())))
            })
            .collect();
        let settings: Map<String, Value> = job["settings"].as_object().cloned().unwrap_or_default();
        // The claim's JSON held the secrets in plain strings: gone before the probe runs.
        drop(job);
        tracing::info!(
            job = id,
            connection = name,
            connector_type = ty_id,
            "running test"
        );
        let result = match patchbay_catalog::Catalog::builtin().get(&ty_id) {
            // The catalog is compiled into server and agent alike; a newer server may know
            // a type this agent does not.
            None => unknown_type(&ty_id),
            Some(ty) => patchbay_probe::probe(ty, &settings, &secrets, &self.guard, deadline).await,
        };
        let mut body = serde_json::to_value(&result).unwrap_or(Value::Null);
        scrub(&mut body, &secrets);
        drop(secrets);
        tracing::info!(
            job = id,
            connection = name,
            ok = result.ok,
            stage = result.error.as_ref().map(|e| e.stage.as_str()),
            class = result.error.as_ref().map(|e| e.class.as_str()),
            ms = result.duration_ms,
            "test finished"
        );
        match self
            .post(&format!("/api/v1/agent/jobs/{id}/result"), &body)
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let s = r.status();
                tracing::warn!(
                    job = id,
                    status = s.as_u16(),
                    code = error_code(r).await,
                    "result not accepted"
                );
            }
            Err(Stop(msg)) => tracing::warn!(job = id, reason = msg, "could not report the result"),
        }
    }
}

/// A test of a type this agent's catalog lacks: said plainly, at the first stage.
fn unknown_type(ty: &str) -> ProbeResult {
    serde_json::from_value(json!({
        "ok": false, "duration_ms": 0, "warnings": [],
        "stages": [{"stage": "resolve", "status": "failed", "duration_ms": 0}],
        "error": {"stage": "resolve", "class": "not_implemented",
                  "message": format!("this agent's catalog has no connector type {ty}"),
                  "hint": "upgrade the agent to the server's version"}
    }))
    .expect("a well-formed result")
}

/// Replaces every secret value found in the result's strings with the mask, so a probe
/// message quoting a server's echo cannot carry a secret to the server's history. Same rule
/// as the server: secrets never appear in results.
fn scrub(v: &mut Value, secrets: &BTreeMap<String, SecretString>) {
    match v {
        Value::String(s) => {
            for secret in secrets.values() {
                let secret = secret.expose_secret();
                if secret.len() >= 4 && s.contains(secret) {
                    *s = s.replace(secret, "********");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scrub(i, secrets)),
        Value::Object(m) => m.values_mut().for_each(|i| scrub(i, secrets)),
        _ => {}
    }
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    v["code"].as_str().unwrap_or("unknown").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_in_a_result_message_is_masked() {
        let secrets =
            BTreeMap::from([("password".to_owned(), SecretString::new("hunter2-x".into()))]);
        let mut v = json!({"error": {"message": "server said: bad password hunter2-x"}, "n": 1});
        scrub(&mut v, &secrets);
        assert_eq!(v["error"]["message"], "server said: bad password ********");
    }

    #[test]
    fn an_unknown_type_fails_at_resolve() {
        let r = unknown_type("nope");
        assert!(!r.ok);
        assert_eq!(r.error.unwrap().class.as_str(), "not_implemented");
    }
}
