//! Run time: the material a job (or a connection test) gets for a connection — its
//! effective settings and its secrets, decrypted for this call only.
//!
//! [`material`] is the one function that assembles it; [`resolve`] (runs) and
//! `service::probes::test_saved` (tests) both call it, so a test cannot pass with material
//! a run would not get.

use std::collections::BTreeMap;

use patchbay_core::model::{Connection, Principal};
use patchbay_core::permission::Permission;
use patchbay_crypto::SecretString;
use serde_json::{json, Map, Value};

use super::connection_secrets::{provided_settings, resolve_secrets};
use super::connections::{self as conn, connector};
use super::{audit, require_in};
use crate::error::ApiResult;
use crate::state::AppState;

/// A connection's run-time material. Secrets stay `SecretString`s until a response is
/// shaped; dropping the value zeroizes them.
pub struct Material {
    pub connection: Connection,
    /// The credential version's non-secret fields that fill the type's settings, with the
    /// connection's own settings on top.
    pub settings: Map<String, Value>,
    /// Secret values by the type's field names.
    pub secrets: BTreeMap<String, SecretString>,
    /// The credential (id, version) the secrets came from, if any.
    pub credential: Option<(String, i64)>,
}

/// Assembles a connection's material. No permission check and no audit: callers
/// ([`resolve`], `probes::test_saved`) do both.
pub async fn material(state: &AppState, c: Connection) -> ApiResult<Material> {
    let ty = connector(state, &c.connector_type)?;
    let secrets = resolve_secrets(state, &c).await?;
    let mut settings = c
        .credential
        .as_ref()
        .map(|cred| provided_settings(ty, cred))
        .unwrap_or_default();
    for (k, v) in &c.settings {
        settings.insert(k.clone(), v.clone());
    }
    let credential = c
        .credential
        .as_ref()
        .map(|cred| (cred.id.clone(), cred.effective_version()));
    Ok(Material {
        connection: c,
        settings,
        secrets,
        credential,
    })
}

/// Resolves a connection for a run: needs connections:resolve in its workspace, and
/// records a `connection.resolve` audit event (run id, credential version) in the same
/// transaction as the credential's last use — no record, no secret.
pub async fn resolve(
    state: &AppState,
    p: &Principal,
    id: &str,
    run_id: Option<&str>,
) -> ApiResult<Material> {
    let c = conn::find(state, p, id).await?;
    require_in(p, &c.workspace_id, Permission::ConnectionsResolve)?;
    let m = material(state, c).await?;
    let c = &m.connection;
    let entry = audit(
        p,
        "connection.resolve",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        json!({
            "run_id": run_id,
            "version": c.version,
            "credential": m.credential.as_ref().map(|(id, v)| json!({"id": id, "version": v})),
        }),
    );
    match &m.credential {
        Some((cred_id, _)) => {
            state
                .store
                .record_reveal(cred_id, &c.id, &p.actor(), &entry)
                .await?
        }
        None => state.store.record_audit(&entry).await?,
    }
    Ok(m)
}
