//! Run time: the material a job (or a connection test) gets for a connection — its
//! effective settings and its secrets, decrypted for this call only.
//!
//! [`material`] is the one function that assembles it; [`resolve`] (runs) and
//! `service::probes::test_saved` (tests) both call it, so a test cannot pass with material
//! a run would not get.

use std::collections::BTreeMap;

use patchbay_core::model::{Connection, Principal, Project};
use patchbay_core::permission::Permission;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_store::{StoreError, UseRecord};
use serde_json::{json, Map, Value};

use super::connection_secrets::{provided_settings, resolve_secrets};
use super::connections::{self as conn, connector};
use super::formats::{self, Format};
use super::{audit, require_in, workspaces};
use crate::body::Fields;
use crate::error::{ApiError, ApiResult};
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
    resolve_connection(state, p, c, run_id, Format::Json).await
}

/// [`resolve`] of a loaded connection in a given format: the permission, then the format
/// (400 before anything is decrypted or recorded), then the material and its audit event.
async fn resolve_connection(
    state: &AppState,
    p: &Principal,
    c: Connection,
    run_id: Option<&str>,
    format: Format,
) -> ApiResult<Material> {
    require_in(p, &c.workspace_id, Permission::ConnectionsResolve)?;
    let ty = connector(state, &c.connector_type)?;
    if !formats::supports(ty, format) {
        return Err(ApiError::field(
            ErrorCode::FormatUnsupported,
            "/format",
            format!(
                "connector type {} has no {} format; json, env and airflow_uri exist for every type",
                ty.id,
                format.as_str()
            ),
        ));
    }
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
            "format": format.as_str(),
            "version": c.version,
            "credential": m.credential.as_ref().map(|(id, v)| json!({"id": id, "version": v})),
        }),
    );
    // Committed (with the credential's last use) before the secrets leave: no record, no
    // secret. Concurrent resolves share a transaction (service::resolve_log).
    state
        .resolve_log
        .record(UseRecord {
            credential: m
                .credential
                .as_ref()
                .map(|(cred_id, _)| (cred_id.clone(), c.id.clone())),
            principal: p.actor(),
            audit: entry,
        })
        .await?;
    Ok(m)
}

/// Which connection a resolve call names.
pub enum Target<'a> {
    Id(&'a str),
    /// A connection name in a project given by id or by name; a project name is looked up
    /// in `workspace` (id or name) when given, else in every workspace the caller sees.
    Name {
        project: &'a str,
        name: &'a str,
        workspace: Option<&'a str>,
    },
}

/// Longest accepted run id.
pub const MAX_RUN_ID: usize = 200;

/// The body of a resolve call: `{format?: json|env|uri|jdbc|airflow_uri, run_id?}`.
fn read_body(body: Option<Map<String, Value>>) -> ApiResult<(Format, Option<String>)> {
    let Some(body) = body else {
        return Ok((Format::Json, None));
    };
    let mut f = Fields::new(body, &["format", "run_id"], &[])?;
    let format = match f.optional_string("format")? {
        None => Format::Json,
        Some(s) => Format::parse(&s).ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidField,
                "/format",
                "must be one of json, env, uri, jdbc, airflow_uri",
            )
        })?,
    };
    let run_id = f.optional_string("run_id")?;
    if let Some(r) = &run_id {
        if r.is_empty() || r.chars().count() > MAX_RUN_ID || r.chars().any(char::is_control) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "/run_id",
                format!("must be 1-{MAX_RUN_ID} printable characters"),
            ));
        }
    }
    Ok((format, run_id))
}

async fn find_target(state: &AppState, p: &Principal, target: Target<'_>) -> ApiResult<Connection> {
    let (project, name, workspace) = match target {
        Target::Id(id) => return conn::find(state, p, id).await,
        Target::Name {
            project,
            name,
            workspace,
        } => (project, name, workspace),
    };
    let project = project_by_id_or_name(state, p, project, workspace).await?;
    match state.store.get_connection_by_name(&project.id, name).await {
        Ok(c) => Ok(c),
        Err(StoreError::NotFound) => Err(ApiError::not_found("connection")),
        Err(e) => Err(e.into()),
    }
}

async fn project_by_id_or_name(
    state: &AppState,
    p: &Principal,
    project: &str,
    workspace: Option<&str>,
) -> ApiResult<Project> {
    match workspaces::project(state, p, project).await {
        Ok(found) if workspace.is_none() => return Ok(found),
        Ok(_) => {}
        Err(e) if e.0.code != ErrorCode::NotFound => return Err(e),
        Err(_) => {}
    }
    let candidates = match workspace {
        Some(ws) => vec![workspaces::get(state, p, ws).await?],
        None => workspaces::list(state, p).await?,
    };
    let mut found = vec![];
    for ws in candidates {
        for pr in state.store.list_projects(&ws.id).await? {
            if pr.name == project || pr.id == project {
                found.push(pr);
            }
        }
    }
    match found.len() {
        0 => Err(ApiError::not_found("project")),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::field(
            ErrorCode::InvalidQuery,
            "workspace",
            "several workspaces you see have a project of this name; pass ?workspace=<id or name>",
        )),
    }
}

/// A resolve call: reads the body, finds the connection, resolves it (permission, format,
/// audit) and shapes the answer. The caller sends it with `Cache-Control: no-store`.
pub async fn answer(
    state: &AppState,
    p: &Principal,
    target: Target<'_>,
    body: Option<Map<String, Value>>,
) -> ApiResult<Value> {
    let (format, run_id) = read_body(body)?;
    let c = find_target(state, p, target).await?;
    let m = resolve_connection(state, p, c, run_id.as_deref(), format).await?;
    let c = &m.connection;
    let mut out = Map::new();
    out.insert(
        "connection".into(),
        json!({"id": c.id, "name": c.name, "type": c.connector_type, "version": c.version,
               "workspace_id": c.workspace_id, "project_id": c.project_id}),
    );
    out.insert(
        "credential".into(),
        m.credential
            .as_ref()
            .map(|(id, v)| json!({"id": id, "version": v}))
            .unwrap_or(Value::Null),
    );
    out.insert("format".into(), Value::String(format.as_str().into()));
    out.insert(
        "run_id".into(),
        run_id.map(Value::String).unwrap_or(Value::Null),
    );
    let ty = connector(state, &c.connector_type)?;
    if format == Format::Json {
        out.insert("settings".into(), Value::Object(m.settings.clone()));
        // The one place a resolved secret is written into a response.
        out.insert(
            "secrets".into(),
            Value::Object(
                m.secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned())))
                    .collect(),
            ),
        );
    } else {
        out.extend(formats::render(
            format,
            &formats::Input {
                ty,
                name: &c.name,
                settings: &m.settings,
                secrets: &m.secrets,
            },
        ));
    }
    Ok(Value::Object(out))
}
