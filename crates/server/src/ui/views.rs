//! View models shared by several pages: a test result, a connection's status pill.

use patchbay_probe::{ProbeResult, StageStatus};
use patchbay_store::StoredTestResult;

use super::page::{ago, when};

pub struct StageView {
    pub name: &'static str,
    /// ok, failed, skipped.
    pub status: &'static str,
    pub ms: u64,
    pub detail: String,
}

pub struct ProbeErrorView {
    pub stage: &'static str,
    pub class: &'static str,
    pub message: String,
    pub hint: String,
}

/// A test result as the result panel shows it.
pub struct TestView {
    pub ok: bool,
    pub ms: u64,
    pub stages: Vec<StageView>,
    pub error: Option<ProbeErrorView>,
    pub server: String,
    pub warnings: Vec<String>,
    /// A message instead of a result (the test could not run: invalid settings, rate limit).
    pub refused: String,
}

fn stage_label(s: patchbay_probe::ProbeStage) -> &'static str {
    use patchbay_probe::ProbeStage::*;
    match s {
        Resolve => "Settings",
        Dns => "DNS",
        Tcp => "TCP",
        Tls => "TLS",
        Auth => "Authentication",
        Query => "Query",
        Permissions => "Permissions",
        Agent => "Agent",
    }
}

impl TestView {
    pub fn from_result(r: &ProbeResult) -> Self {
        TestView {
            ok: r.ok,
            ms: r.duration_ms,
            stages: r
                .stages
                .iter()
                .map(|s| StageView {
                    name: stage_label(s.stage),
                    status: match s.status {
                        StageStatus::Ok => "ok",
                        StageStatus::Failed => "failed",
                        StageStatus::Skipped => "skipped",
                    },
                    ms: s.duration_ms,
                    detail: s.detail.clone().unwrap_or_default(),
                })
                .collect(),
            error: r.error.as_ref().map(|e| ProbeErrorView {
                stage: stage_label(e.stage),
                class: e.class.as_str(),
                message: e.message.clone(),
                hint: e.hint.clone().unwrap_or_default(),
            }),
            server: r
                .server
                .as_ref()
                .map(|s| format!("{} {}", s.product, s.version))
                .unwrap_or_default(),
            warnings: r.warnings.clone(),
            refused: String::new(),
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        TestView {
            ok: false,
            ms: 0,
            stages: vec![],
            error: None,
            server: String::new(),
            warnings: vec![],
            refused: message.into(),
        }
    }
}

/// The status pill of a connection: ok, failed or never tested.
pub struct Status {
    /// ok, failed, never (also the CSS modifier).
    pub kind: &'static str,
    pub label: &'static str,
    pub when: String,
    pub ago: String,
    /// On failure: the failing stage and class.
    pub why: String,
}

impl Status {
    pub fn of(last: Option<&StoredTestResult>) -> Status {
        match last {
            None => Status {
                kind: "never",
                label: "Never tested",
                when: String::new(),
                ago: String::new(),
                why: String::new(),
            },
            Some(t) => {
                let parsed: Option<ProbeResult> = serde_json::from_value(t.result.clone()).ok();
                let why = parsed
                    .as_ref()
                    .and_then(|r| r.error.as_ref())
                    .map(|e| format!("{}: {}", stage_label(e.stage), e.class.as_str()))
                    .unwrap_or_default();
                Status {
                    kind: if t.ok { "ok" } else { "failed" },
                    label: if t.ok { "OK" } else { "Failed" },
                    when: when(t.at),
                    ago: ago(t.at),
                    why,
                }
            }
        }
    }
}
