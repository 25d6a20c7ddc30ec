//! What the web UI shows beyond single API resources: the connections overview (each
//! connection with its last test) and a workspace's newest audit events.

use patchbay_core::model::{Connection, Principal};
use patchbay_store::{AuditFilter, AuditRecord, StoredTestResult};

use super::connections::{self, ListQuery};
use crate::error::ApiResult;
use crate::state::AppState;

pub struct OverviewRow {
    pub connection: Connection,
    /// The newest stored test result, if the connection was ever tested.
    pub last_test: Option<StoredTestResult>,
}

/// One page of a project's connections (filters as in the API's list) with their last test.
pub async fn connections(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    query: ListQuery,
) -> ApiResult<(Vec<OverviewRow>, Option<String>)> {
    let page = connections::list(state, p, project_id, query).await?;
    let mut rows = Vec::with_capacity(page.items.len());
    for c in page.items {
        let last_test = state
            .store
            .connection_tests(&c.id)
            .await?
            .into_iter()
            .next();
        rows.push(OverviewRow {
            connection: c,
            last_test,
        });
    }
    Ok((rows, page.more_after))
}

/// The newest `limit` events of a workspace matching `filter`, newest first. The principal
/// must be allowed to read the workspace's audit log (`audit::readable_workspace`).
pub async fn newest_audit(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    mut filter: AuditFilter,
    limit: usize,
) -> ApiResult<Vec<AuditRecord>> {
    let ws = super::audit::readable_workspace(state, p, workspace).await?;
    filter.workspace_id = Some(ws);
    // The store pages oldest first; walk forward keeping the newest (bounded: 40 pages).
    let mut newest: std::collections::VecDeque<AuditRecord> = Default::default();
    for _ in 0..40 {
        let page = super::audit::list(state, &filter, 500).await?;
        let full = page.len() == 500;
        filter.after_seq = page.last().map(|r| r.seq);
        for r in page {
            if newest.len() == limit {
                newest.pop_front();
            }
            newest.push_back(r);
        }
        if !full {
            break;
        }
    }
    Ok(newest.into_iter().rev().collect())
}
