//! The shape of a test result (`ProbeResult`) and the recorder (`Run`) that fills it stage
//! by stage under one deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStage {
    /// Handing the test to an agent of the connection's network zone (server side only).
    Agent,
    Resolve,
    Dns,
    Tcp,
    Tls,
    Auth,
    Query,
    Permissions,
}

impl ProbeStage {
    pub const ALL: &'static [ProbeStage] = &[
        ProbeStage::Agent,
        ProbeStage::Resolve,
        ProbeStage::Dns,
        ProbeStage::Tcp,
        ProbeStage::Tls,
        ProbeStage::Auth,
        ProbeStage::Query,
        ProbeStage::Permissions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStage::Agent => "agent",
            ProbeStage::Resolve => "resolve",
            ProbeStage::Dns => "dns",
            ProbeStage::Tcp => "tcp",
            ProbeStage::Tls => "tls",
            ProbeStage::Auth => "auth",
            ProbeStage::Query => "query",
            ProbeStage::Permissions => "permissions",
        }
    }

    /// What the stage was doing, for timeout messages.
    fn doing(self) -> &'static str {
        match self {
            ProbeStage::Agent => "waiting for an agent of the zone",
            ProbeStage::Resolve => "reading the settings",
            ProbeStage::Dns => "resolving the host name",
            ProbeStage::Tcp => "opening the TCP connection",
            ProbeStage::Tls => "negotiating TLS",
            ProbeStage::Auth => "logging in",
            ProbeStage::Query => "running the test query",
            ProbeStage::Permissions => "checking the account's privileges",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Ok,
    Failed,
    Skipped,
}

/// Stable error classes a script can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    DnsNotFound,
    ConnectionRefused,
    Timeout,
    NetworkBlocked,
    TlsUntrustedCertificate,
    TlsHostnameMismatch,
    TlsHandshake,
    AuthFailed,
    PermissionDenied,
    NotFound,
    ProtocolMismatch,
    RateLimited,
    /// The settings cannot describe a target (missing host, URL with credentials, a scheme
    /// the type does not declare): an input error, answered 400 by the API.
    InvalidSettings,
    /// The type's probe kind has no probe yet; said plainly rather than faking success.
    NotImplemented,
    /// The connection's zone has no agent that is connected (or none took the test in time).
    AgentUnavailable,
    Unknown,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::DnsNotFound => "dns_not_found",
            ErrorClass::ConnectionRefused => "connection_refused",
            ErrorClass::Timeout => "timeout",
            ErrorClass::NetworkBlocked => "network_blocked",
            ErrorClass::TlsUntrustedCertificate => "tls_untrusted_certificate",
            ErrorClass::TlsHostnameMismatch => "tls_hostname_mismatch",
            ErrorClass::TlsHandshake => "tls_handshake",
            ErrorClass::AuthFailed => "auth_failed",
            ErrorClass::PermissionDenied => "permission_denied",
            ErrorClass::NotFound => "not_found",
            ErrorClass::ProtocolMismatch => "protocol_mismatch",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::InvalidSettings => "invalid_settings",
            ErrorClass::NotImplemented => "not_implemented",
            ErrorClass::AgentUnavailable => "agent_unavailable",
            ErrorClass::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: ProbeStage,
    pub status: StageStatus,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    pub stage: ProbeStage,
    pub class: ErrorClass,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub product: String,
    pub version: String,
}

/// The answer of a test: every stage in order (failed or skipped ones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    pub duration_ms: u64,
    pub stages: Vec<StageReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerInfo>,
    pub warnings: Vec<String>,
}

/// A stage's failure before the runner attaches the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The probe stopped at a failed stage (already recorded in the run).
#[derive(Debug)]
pub struct Stopped;

pub type StageResult<T> = Result<(T, Option<String>), Failure>;

/// Records stages against one absolute deadline.
pub struct Run {
    started: Instant,
    deadline: tokio::time::Instant,
    budget: Duration,
    planned: Vec<ProbeStage>,
    stages: Vec<StageReport>,
    error: Option<ProbeError>,
    pub warnings: Vec<String>,
    pub server: Option<ServerInfo>,
}

impl Run {
    pub fn new(budget: Duration, planned: &[ProbeStage]) -> Self {
        Self {
            started: Instant::now(),
            deadline: tokio::time::Instant::now() + budget,
            budget,
            planned: planned.to_vec(),
            stages: Vec::new(),
            error: None,
            warnings: Vec::new(),
            server: None,
        }
    }

    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Runs one stage under the shared deadline and records it.
    pub async fn stage<T>(
        &mut self,
        stage: ProbeStage,
        work: impl Future<Output = StageResult<T>>,
    ) -> Result<T, Stopped> {
        let t = Instant::now();
        let outcome = match tokio::time::timeout_at(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                ErrorClass::Timeout,
                format!(
                    "no answer within the {} s deadline while {}",
                    self.budget.as_secs_f32(),
                    stage.doing()
                ),
            )
            .hint(timeout_hint(stage))),
        };
        let duration_ms = ms(t.elapsed());
        match outcome {
            Ok((value, detail)) => {
                self.stages.push(StageReport {
                    stage,
                    status: StageStatus::Ok,
                    duration_ms,
                    detail,
                });
                Ok(value)
            }
            Err(f) => {
                self.fail_at(stage, duration_ms, f);
                Err(Stopped)
            }
        }
    }

    /// Records a failure without running anything (e.g. a setting check).
    pub fn fail(&mut self, stage: ProbeStage, f: Failure) -> Stopped {
        self.fail_at(stage, 0, f);
        Stopped
    }

    fn fail_at(&mut self, stage: ProbeStage, duration_ms: u64, f: Failure) {
        self.stages.push(StageReport {
            stage,
            status: StageStatus::Failed,
            duration_ms,
            detail: Some(f.message.clone()),
        });
        self.error = Some(ProbeError {
            stage,
            class: f.class,
            message: f.message,
            hint: f.hint,
        });
    }

    /// Records a stage measured by the caller.
    pub fn push(&mut self, report: StageReport) {
        self.stages.push(report);
    }

    pub fn skip(&mut self, stage: ProbeStage, detail: impl Into<String>) {
        self.stages.push(StageReport {
            stage,
            status: StageStatus::Skipped,
            duration_ms: 0,
            detail: Some(detail.into()),
        });
    }

    pub fn warn(&mut self, w: impl Into<String>) {
        let w = w.into();
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    /// The result: planned stages never reached are listed as skipped.
    pub fn finish(mut self) -> ProbeResult {
        let reached: Vec<ProbeStage> = self.stages.iter().map(|s| s.stage).collect();
        let failed = self.error.is_some();
        for stage in self.planned.clone() {
            if !reached.contains(&stage) {
                let why = if failed {
                    "not reached: an earlier stage failed"
                } else {
                    "not applicable"
                };
                self.skip(stage, why);
            }
        }
        self.stages.sort_by_key(|s| {
            ProbeStage::ALL
                .iter()
                .position(|x| *x == s.stage)
                .unwrap_or(usize::MAX)
        });
        ProbeResult {
            ok: self.error.is_none(),
            duration_ms: ms(self.started.elapsed()),
            stages: self.stages,
            error: self.error,
            server: self.server,
            warnings: self.warnings,
        }
    }
}

fn timeout_hint(stage: ProbeStage) -> &'static str {
    match stage {
        ProbeStage::Dns => "the DNS server did not answer in time: check the resolver configuration of the patchbay server",
        ProbeStage::Tcp => "nothing answered: check the host and port, and that firewalls let the patchbay server through",
        ProbeStage::Tls => "the server accepted the connection but did not complete TLS: is TLS enabled on this port?",
        ProbeStage::Auth => "the server accepted the connection but did not answer the login: is this the right port and protocol for this type?",
        _ => "the server stopped answering: it may be overloaded, or the deadline is too short",
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
