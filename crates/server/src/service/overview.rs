//! What the web UI shows beyond single API resources: the connections overview (each
//! connection with its last test), a workspace's audit log a page at a time, newest
//! first, and the usernames behind `user:<id>` actors.

use std::collections::HashMap;

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

/// One page of a project's connections (filters as in the API's list) with their last
/// test, read for the whole page in one query.
pub async fn connections(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    query: ListQuery,
) -> ApiResult<(Vec<OverviewRow>, Option<String>)> {
    let page = connections::list(state, p, project_id, query).await?;
    let ids: Vec<String> = page.items.iter().map(|c| c.id.clone()).collect();
    let mut last = state.store.last_connection_tests(&ids).await?;
    let rows = page
        .items
        .into_iter()
        .map(|c| OverviewRow {
            last_test: last.remove(&c.id),
            connection: c,
        })
        .collect();
    Ok((rows, page.more_after))
}

/// Where an audit page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditPosition {
    /// The newest events.
    Newest,
    /// Events older than this seq (the "Older" link).
    Before(i64),
    /// Events newer than this seq (the "Newer" link).
    After(i64),
}

/// A page of the audit log, newest first, with the positions of its neighbours.
pub struct AuditPage {
    pub rows: Vec<AuditRecord>,
    /// Where the next newer page starts, when there is one.
    pub newer: Option<AuditPosition>,
    /// Where the next older page starts, when there is one.
    pub older: Option<AuditPosition>,
}

/// One page of `limit` events of a workspace matching `filter`, newest first. The principal
/// must be allowed to read the workspace's audit log (`audit::readable_workspace`). Reads
/// one row more than it shows to know whether the page has a neighbour that way.
pub async fn audit_page(
    state: &AppState,
    p: &Principal,
    workspace: &str,
    mut filter: AuditFilter,
    at: AuditPosition,
    limit: u32,
) -> ApiResult<AuditPage> {
    filter.workspace_id = Some(super::audit::readable_workspace(state, p, workspace).await?);
    filter.newest_first = !matches!(at, AuditPosition::After(_));
    match at {
        AuditPosition::Newest => {}
        AuditPosition::Before(seq) => filter.before_seq = Some(seq),
        AuditPosition::After(seq) => filter.after_seq = Some(seq),
    }
    let mut rows = super::audit::list(state, &filter, limit + 1).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let oldest_shown = |rows: &[AuditRecord]| rows.last().map(|r| AuditPosition::Before(r.seq));
    let (newer, older) = match at {
        AuditPosition::Newest => (None, more.then(|| oldest_shown(&rows)).flatten()),
        // Back to where this page came from: the events newer than the newest shown (or,
        // on an empty page, than its start).
        AuditPosition::Before(seq) => (
            Some(AuditPosition::After(
                rows.first().map_or(seq - 1, |r| r.seq),
            )),
            more.then(|| oldest_shown(&rows)).flatten(),
        ),
        AuditPosition::After(_) => {
            rows.reverse();
            let newest = rows.first().map(|r| AuditPosition::After(r.seq));
            (newest.filter(|_| more), oldest_shown(&rows))
        }
    };
    Ok(AuditPage { rows, newer, older })
}

/// An actor filter as people type it: a username becomes `user:<id>`; anything with a `:`
/// (`user:…`, `token:…`, `system:…`) is taken as is. An unknown username stays as typed
/// and so matches nothing.
pub async fn actor_filter(state: &AppState, typed: &str) -> ApiResult<String> {
    if typed.contains(':') {
        return Ok(typed.to_owned());
    }
    match state.store.get_user_by_name(typed).await {
        Ok(u) => Ok(format!("user:{}", u.id)),
        Err(patchbay_store::StoreError::NotFound) => Ok(typed.to_owned()),
        Err(e) => Err(e.into()),
    }
}

/// The usernames of the `user:<id>` actors among `rows`, looked up in one query.
pub async fn actor_names(
    state: &AppState,
    rows: &[AuditRecord],
) -> ApiResult<HashMap<String, String>> {
    let mut ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r.entry.actor.strip_prefix("user:"))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(state.store.usernames(&ids).await?)
}
