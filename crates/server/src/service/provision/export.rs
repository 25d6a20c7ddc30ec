//! Export of a project as an import document: its connections with their settings and
//! credential references, and the shared credentials they use. Without a passphrase no
//! secret value is read at all; with one (credentials:write and connections:reveal in the
//! workspace) each value is decrypted through the audited paths (`connection.reveal`,
//! `credential.export`) and sealed to the passphrase before it enters the document.

use std::collections::BTreeMap;

use patchbay_core::model::Principal;
use patchbay_core::permission::Permission;
use patchbay_crypto::{KdfParams, PassphraseKey, SecretString, PASSPHRASE_ALGORITHM};
use serde_json::{json, Map, Value};

use super::all_connections;
use crate::error::{ApiError, ApiResult};
use crate::service::{audit, connections, credentials, require_in, workspaces};
use crate::state::AppState;

/// Where a sealed value sits in the document: its AAD.
pub fn place(section: &str, name: &str, field: &str) -> String {
    format!("{section}/{name}/secrets/{field}")
}

/// The export document of project `project_id`. `passphrase`: include the secrets, sealed.
pub async fn export(
    state: &AppState,
    p: &Principal,
    project_id: &str,
    passphrase: Option<&SecretString>,
) -> ApiResult<Value> {
    let project = workspaces::project(state, p, project_id).await?;
    let ws = workspaces::get(state, p, &project.workspace_id).await?;
    require_in(p, &ws.id, Permission::ConnectionsRead)?;
    let sealing = match passphrase {
        None => None,
        Some(pass) => {
            require_in(p, &ws.id, Permission::CredentialsWrite)?;
            require_in(p, &ws.id, Permission::ConnectionsReveal)?;
            let params = KdfParams::generate();
            let key = PassphraseKey::derive(pass, &params).map_err(|_| {
                ApiError::field(
                    patchbay_core::ErrorCode::InvalidField,
                    "/passphrase",
                    "must not be empty",
                )
            })?;
            Some((params, key))
        }
    };
    let conns = all_connections(state, p, &project.id).await?;

    let mut shared: BTreeMap<String, String> = BTreeMap::new();
    let mut out_conns = Vec::new();
    for c in &conns {
        let mut e = Map::new();
        e.insert("name".into(), json!(c.name));
        e.insert("type".into(), json!(c.connector_type));
        if !c.description.is_empty() {
            e.insert("description".into(), json!(c.description));
        }
        if let Some(env) = &c.environment {
            e.insert("environment".into(), json!(env));
        }
        if !c.tags.is_empty() {
            e.insert("tags".into(), json!(c.tags));
        }
        if let Some(z) = &c.zone {
            e.insert("zone".into(), json!(z));
        }
        e.insert("settings".into(), Value::Object(c.settings.clone()));
        match &c.credential {
            Some(cred) if !cred.owned => {
                shared.insert(cred.name.clone(), cred.id.clone());
                let mut r = Map::new();
                r.insert("name".into(), json!(cred.name));
                if let Some(v) = cred.pinned_version {
                    r.insert("version".into(), json!(v));
                }
                e.insert("credential".into(), Value::Object(r));
            }
            Some(_) => {
                if let Some((_, key)) = &sealing {
                    let values = connections::reveal(state, p, c).await?;
                    let mut secrets = Map::new();
                    for (field, v) in &values {
                        secrets.insert(
                            field.clone(),
                            json!(key.seal(v, &place("connections", &c.name, field))),
                        );
                    }
                    e.insert("secrets".into(), Value::Object(secrets));
                }
            }
            None => {}
        }
        out_conns.push(Value::Object(e));
    }

    // A reader without credentials:read sees which credentials are used, not their fields.
    let read_creds = p.can_in(&ws.id, Permission::CredentialsRead);
    let mut out_creds = Vec::new();
    for (name, id) in &shared {
        let cred = credentials::find(state, p, id).await?;
        let mut e = Map::new();
        e.insert("name".into(), json!(name));
        e.insert("kind".into(), json!(cred.kind));
        if read_creds && !cred.description.is_empty() {
            e.insert("description".into(), json!(cred.description));
        }
        if read_creds && !cred.public_fields.is_empty() {
            e.insert("fields".into(), Value::Object(cred.public_fields.clone()));
        }
        if let Some(x) = cred.external.as_ref().filter(|_| read_creds) {
            e.insert("external".into(), x.clone());
        } else if let Some((_, key)) = &sealing {
            // No record, no secret: the export of the values is audited before they are read.
            let entry = audit(
                p,
                "credential.export",
                Some(&ws.id),
                "credential",
                &cred.id,
                json!({"version": cred.current_version, "fields": cred.secret_fields, "project_id": project.id}),
            );
            state.store.record_audit(&entry).await?;
            let values =
                credentials::decrypt(state, &ws.id, &cred.id, cred.current_version).await?;
            let mut secrets = Map::new();
            for (field, v) in &values {
                secrets.insert(
                    field.clone(),
                    json!(key.seal(v, &place("credentials", name, field))),
                );
            }
            e.insert("secrets".into(), Value::Object(secrets));
        }
        out_creds.push(Value::Object(e));
    }

    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(super::document::API_VERSION));
    doc.insert("workspace".into(), json!(ws.name));
    doc.insert("project".into(), json!(project.name));
    if let Some((params, _)) = &sealing {
        doc.insert(
            "encryption".into(),
            json!({
                "algorithm": PASSPHRASE_ALGORITHM,
                "memory_kib": params.memory_kib,
                "iterations": params.iterations,
                "parallelism": params.parallelism,
                "salt": params.salt_b64(),
            }),
        );
    }
    doc.insert("credentials".into(), Value::Array(out_creds));
    doc.insert("connections".into(), Value::Array(out_conns));
    Ok(Value::Object(doc))
}
