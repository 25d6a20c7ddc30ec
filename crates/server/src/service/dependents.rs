//! Dependents (seed 002): consumers register what uses a connection; deleting a connection
//! that has dependents needs an explicit cascade naming them (`?cascade=all` or
//! `?cascade=kind/ref,…`), and each cascaded dependent becomes a
//! `dependent.cascade_deleted` event so its owner deletes it.

use std::collections::BTreeSet;

use patchbay_core::model::Principal;
use patchbay_core::names::check_name;
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_store::{Dependent, Registered};
use serde_json::{json, Map, Value};

use super::{audit, connections, require_in};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Longest `ref` and `name` accepted.
const MAX_REF: usize = 200;
const MAX_URL: usize = 2048;

/// `has_dependents` (409) listing `list`; `total` is how many the connection has.
pub fn has_dependents(list: &[Dependent], total: usize) -> ApiError {
    let mut e = patchbay_core::Error::new(
        ErrorCode::HasDependents,
        format!(
            "the connection has {total} dependent(s); {} not chosen for deletion: pass \
             ?cascade=all or ?cascade=kind/ref,… naming each, or unregister them first",
            list.len()
        ),
    );
    e.details = Some(Box::new(json!({
        "dependents": list.iter().map(summary).collect::<Vec<_>>()
    })));
    ApiError(e)
}

/// A dependent as errors, events and audit records name it.
pub fn summary(d: &Dependent) -> Value {
    json!({"kind": d.kind, "ref": d.reference, "name": d.name, "url": d.url})
}

fn check_kind(kind: &str) -> ApiResult<()> {
    check_name("kind", kind).map_err(|_| {
        ApiError::field(
            ErrorCode::InvalidField,
            "kind",
            "kinds match [a-z0-9][a-z0-9._-]{0,62}, e.g. pipeline, dataset, alert_policy",
        )
    })
}

fn check_ref(reference: &str) -> ApiResult<()> {
    let ok = !reference.is_empty()
        && reference.len() <= MAX_REF
        && reference
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '/' && c != ',');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            ErrorCode::InvalidField,
            "ref",
            "a ref is 1-200 characters without whitespace, '/' or ','",
        ))
    }
}

/// An optional link to the dependent in its owner's UI: http(s), no credentials.
fn check_link(url: &str) -> ApiResult<()> {
    let bad = |m: &str| ApiError::field(ErrorCode::InvalidField, "/url", m.to_owned());
    if url.len() > MAX_URL {
        return Err(bad("at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| bad("must be an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("must be an http or https URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(())
}

pub async fn list(
    state: &AppState,
    p: &Principal,
    connection_id: &str,
) -> ApiResult<Vec<Dependent>> {
    let c = connections::load(state, p, connection_id).await?;
    Ok(state.store.list_dependents(&c.id).await?)
}

/// PUT: registers the dependent, or updates its name and url.
pub async fn register(
    state: &AppState,
    p: &Principal,
    connection_id: &str,
    kind: &str,
    reference: &str,
    body: Map<String, Value>,
) -> ApiResult<(Dependent, Registered)> {
    let c = connections::load(state, p, connection_id).await?;
    require_in(p, &c.workspace_id, Permission::ConnectionsWrite)?;
    check_kind(kind)?;
    check_ref(reference)?;
    let mut f = Fields::new(
        body,
        &["name", "url"],
        &["kind", "ref", "registered_by", "created_at", "updated_at"],
    )?;
    let name = f.required_string("name")?;
    if name.trim().is_empty()
        || name.chars().count() > MAX_REF
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "/name",
            "a name is 1-200 characters without control characters",
        ));
    }
    let url = f.optional_string("url")?;
    if let Some(u) = &url {
        check_link(u)?;
    }
    let d = Dependent {
        connection_id: c.id.clone(),
        kind: kind.to_owned(),
        reference: reference.to_owned(),
        name,
        url,
        registered_by: p.actor(),
        created_at: 0,
        updated_at: 0,
    };
    let entry = audit(
        p,
        "dependent.register",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({"dependent": summary(&d)}),
    );
    let outcome = state.store.register_dependent(&d, &entry).await?;
    let stored = state
        .store
        .list_dependents(&c.id)
        .await?
        .into_iter()
        .find(|x| x.kind == d.kind && x.reference == d.reference)
        .ok_or_else(|| ApiError::not_found("dependent"))?;
    Ok((stored, outcome))
}

pub async fn unregister(
    state: &AppState,
    p: &Principal,
    connection_id: &str,
    kind: &str,
    reference: &str,
) -> ApiResult<()> {
    let c = connections::load(state, p, connection_id).await?;
    require_in(p, &c.workspace_id, Permission::ConnectionsWrite)?;
    let entry = audit(
        p,
        "dependent.unregister",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({"dependent": {"kind": kind, "ref": reference}}),
    );
    match state
        .store
        .unregister_dependent(&c.id, kind, reference, &entry)
        .await
    {
        Err(patchbay_store::StoreError::NotFound) => Err(ApiError::not_found("dependent")),
        other => Ok(other?),
    }
}

/// What `?cascade=` asks for.
pub enum Cascade {
    /// No cascade: the delete fails if the connection has dependents.
    None,
    All,
    /// These `(kind, ref)` pairs.
    Only(Vec<(String, String)>),
}

/// Parses `?cascade=all` or `?cascade=kind/ref,kind/ref`. Empty items are refused.
pub fn parse_cascade(raw: Option<&str>) -> ApiResult<Cascade> {
    let Some(raw) = raw else {
        return Ok(Cascade::None);
    };
    if raw == "all" {
        return Ok(Cascade::All);
    }
    let mut out = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let pair = item
            .split_once('/')
            .filter(|(k, r)| !k.is_empty() && !r.is_empty() && !r.contains('/'));
        let Some((k, r)) = pair else {
            return Err(ApiError::field(
                ErrorCode::InvalidQuery,
                "cascade",
                format!(
                    "item {} is not kind/ref; use all or kind/ref,kind/ref",
                    i + 1
                ),
            ));
        };
        out.push((k.to_owned(), r.to_owned()));
    }
    Ok(Cascade::Only(out))
}

/// Deletes a connection, cascading to the dependents `cascade` names: 409 `has_dependents`
/// while any dependent is not named, 400 when a named one is not registered. The deletion,
/// its audit record and one `dependent.cascade_delete` record (hence event) per cascaded
/// dependent commit together.
pub async fn delete_connection(
    state: &AppState,
    p: &Principal,
    id: &str,
    expected: connections::Expected,
    cascade: Cascade,
) -> ApiResult<()> {
    let current = connections::load(state, p, id).await?;
    require_in(p, &current.workspace_id, Permission::ConnectionsWrite)?;
    connections::check_version(&current, expected)?;
    let deps = state.store.list_dependents(&current.id).await?;
    let chosen: Vec<&Dependent> = match &cascade {
        Cascade::None => vec![],
        Cascade::All => deps.iter().collect(),
        Cascade::Only(pairs) => {
            let mut picked = Vec::new();
            for (i, (k, r)) in pairs.iter().enumerate() {
                match deps.iter().find(|d| &d.kind == k && &d.reference == r) {
                    Some(d) => picked.push(d),
                    None => {
                        return Err(ApiError::field(
                            ErrorCode::InvalidQuery,
                            "cascade",
                            format!(
                                "item {} names no dependent registered on this connection",
                                i + 1
                            ),
                        ))
                    }
                }
            }
            picked
        }
    };
    let chosen_keys: BTreeSet<(&str, &str)> = chosen
        .iter()
        .map(|d| (d.kind.as_str(), d.reference.as_str()))
        .collect();
    let left: Vec<Dependent> = deps
        .iter()
        .filter(|d| !chosen_keys.contains(&(d.kind.as_str(), d.reference.as_str())))
        .cloned()
        .collect();
    if !left.is_empty() {
        return Err(has_dependents(&left, deps.len()));
    }
    let connection =
        json!({"id": current.id, "name": current.name, "project_id": current.project_id});
    let cascaded: Vec<_> = deps
        .iter()
        .map(|d| {
            audit(
                p,
                "dependent.cascade_delete",
                Some(&current.workspace_id),
                "connection",
                &current.id,
                json!({"connection": connection, "dependent": summary(d)}),
            )
        })
        .collect();
    let entry = audit(
        p,
        "connection.delete",
        Some(&current.workspace_id),
        "connection",
        &current.id,
        json!({"name": current.name, "version": current.version,
               "cascaded": deps.iter().map(summary).collect::<Vec<_>>()}),
    );
    let expected_keys: Vec<(String, String)> = deps
        .iter()
        .map(|d| (d.kind.clone(), d.reference.clone()))
        .collect();
    Ok(state
        .store
        .delete_connection_cascade(&current.id, &expected_keys, &entry, &cascaded)
        .await?)
}
