//! `serve --provision DIR`: at start, every `*.yaml`, `*.yml` and `*.json` file of DIR (not
//! recursive, in name order) is applied to the workspace and project it names (`workspace`,
//! `project`, default `default`; both created when missing), as the system actor
//! `token:system:provision`. Its objects are marked with the file name and are read-only
//! through the API. A connection that a file provisioned and no file names any more is
//! deleted; a credential no file names any more is released (its marker cleared: it may be
//! in use). A file that does not apply stops the start, naming the file and the pointer.

use std::collections::BTreeSet;
use std::path::Path;

use patchbay_core::model::{Principal, RequestMeta};
use patchbay_core::permission::PermissionSet;
use patchbay_store::{Provisionable, StoreError};
use serde_json::{json, Value};

use super::{apply, ApplyOptions};
use crate::document_file;
use crate::service::{audit, connections, workspaces};
use crate::state::AppState;

/// The principal provisioning acts as.
fn system() -> Principal {
    Principal {
        token_id: "system:provision".into(),
        token_name: "provisioning".into(),
        user_id: None,
        session: false,
        workspace_id: None,
        permissions: PermissionSet::all(),
        memberships: None,
        agent_zone: None,
        request: RequestMeta::default(),
    }
}

fn files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {}", dir.display(), e.kind()))?;
    for e in entries {
        let path = e
            .map_err(|e| format!("{}: {}", dir.display(), e.kind()))?
            .path();
        let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
        if path.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Applies the provisioning directory. Returns an error message naming the file.
pub async fn provision(state: &AppState, dir: &Path) -> Result<(), String> {
    let p = system();
    let passphrase = std::env::var("PATCHBAY_EXPORT_PASSPHRASE")
        .ok()
        .map(patchbay_crypto::SecretString::new);
    let env = |k: &str| std::env::var(k).ok();
    // (project id, connection name) and credential names each file still provisions.
    let mut connections_named: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut credentials_named: BTreeSet<(String, String)> = BTreeSet::new();
    for path in files(dir)? {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_owned();
        let fail = |msg: String| format!("provisioning file {file}: {msg}");
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.kind().to_string()))?;
        let doc = document_file::read(&text, dir, passphrase.as_ref(), &env).map_err(fail)?;
        let str_of = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned()
        };
        let (ws_name, project_name) = (str_of("workspace"), str_of("project"));
        let ws = match workspaces::get(state, &p, &ws_name).await {
            Ok(ws) => ws,
            Err(e) if e.0.code == patchbay_core::ErrorCode::NotFound => {
                workspaces::create(state, &p, &ws_name)
                    .await
                    .map_err(|e| fail(format!("/workspace: {}", e.0)))?
            }
            Err(e) => return Err(fail(e.0.to_string())),
        };
        let projects = state
            .store
            .list_projects(&ws.id)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let project = match projects.into_iter().find(|x| x.name == project_name) {
            Some(x) => x,
            None => workspaces::create_project(state, &p, &ws.id, &project_name)
                .await
                .map_err(|e| fail(format!("/project: {}", e.0)))?,
        };
        for c in doc
            .get("connections")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = c.get("name").and_then(Value::as_str) {
                connections_named.insert((file.clone(), project.id.clone(), n.to_owned()));
            }
        }
        for c in doc
            .get("credentials")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = c.get("name").and_then(Value::as_str) {
                credentials_named.insert((file.clone(), n.to_owned()));
            }
        }
        let opts = ApplyOptions {
            dry_run: false,
            prune: false,
            source: Some(file.clone()),
        };
        let report = apply(state, &p, &project.id, doc, &opts)
            .await
            .map_err(|e| fail(e.0.to_string()))?;
        for c in report.changes.iter().filter(|c| c.action != "unchanged") {
            tracing::info!(file, kind = c.kind, name = c.name, action = c.action, changes = ?c.changes, "provisioned");
        }
    }
    // Objects a file provisioned that no file names any more.
    let stale = state
        .store
        .provisioned_connections()
        .await
        .map_err(|e| e.to_string())?;
    for c in stale {
        if connections_named.contains(&(c.source.clone(), c.project_id.clone(), c.name.clone())) {
            continue;
        }
        let cascade = crate::service::dependents::Cascade::None;
        match connections::delete_managed(state, &p, &c.id, None, cascade, true).await {
            Ok(()) => tracing::info!(
                file = c.source,
                name = c.name,
                "deleted a connection no provisioning file names any more"
            ),
            Err(e) if e.0.code == patchbay_core::ErrorCode::NotFound => {}
            // Something still uses it: kept (still read-only) until its dependents are
            // unregistered or a file names it again.
            Err(e) if e.0.code == patchbay_core::ErrorCode::HasDependents => tracing::warn!(
                file = c.source,
                name = c.name,
                "a connection no provisioning file names has dependents; kept"
            ),
            Err(e) => {
                return Err(format!(
                    "deleting connection {} (from {}): {}",
                    c.name, c.source, e.0
                ))
            }
        }
    }
    for (id, name, source) in state
        .store
        .provisioned_credentials()
        .await
        .map_err(|e| e.to_string())?
    {
        if credentials_named.contains(&(source.clone(), name.clone())) {
            continue;
        }
        let cred = match state.store.get_credential(&id).await {
            Ok(c) => c,
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let entry = audit(
            &p,
            "credential.unprovision",
            Some(&cred.workspace_id),
            "credential",
            &id,
            json!({"source": source}),
        );
        state
            .store
            .set_provisioned(Provisionable::Credential, &id, None, &entry)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            file = source,
            name,
            "released a credential no provisioning file names any more"
        );
    }
    Ok(())
}
