//! Run time: the material a job (or a connection test) gets for a connection — its
//! effective settings and its secrets, decrypted for this call only.
//!
//! `assemble` is the one function that builds it from what was read: [`material`] (tests,
//! agents; read now) and [`answer`] (runs; read now or from the resolve cache) both go
//! through it, so a test cannot pass with material a run would not get.

use std::collections::BTreeMap;
use std::sync::Arc;

use patchbay_core::model::{Connection, Principal, Project};
use patchbay_core::permission::Permission;
use patchbay_core::schema::ConnectorType;
use patchbay_core::ErrorCode;
use patchbay_crypto::SecretString;
use patchbay_store::{Details, StoreError, UseRecord};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::connection_secrets::{decrypt_stored, provided_settings, stored_secrets, StoredSecrets};
use super::connections::connector;
use super::formats::{self, Format};
use super::resolve_log::Logged;
use super::{audit, require_in, workspaces};
use crate::body::{Fields, Shaped};
use crate::error::{ApiError, ApiResult};
use crate::materials::Entry;
use crate::state::AppState;

/// A connection's run-time material. Secrets stay `SecretString`s until a response is
/// shaped; dropping the value zeroizes them.
pub struct Material {
    pub connection: Arc<Connection>,
    /// The credential version's non-secret fields that fill the type's settings, with the
    /// connection's own settings on top ([`settings_of`]); shared with the resolve cache's
    /// entry when it came from there.
    pub settings: Arc<Map<String, Value>>,
    /// Secret values by the type's field names.
    pub secrets: BTreeMap<String, SecretString>,
    /// The credential (id, version) the secrets came from, if any.
    pub credential: Option<(String, i64)>,
}

impl Material {
    /// `{id, version}` of the credential the secrets came from, as the answer and the audit
    /// event name it.
    fn credential_ref(&self) -> Option<CredentialRef<'_>> {
        self.credential.as_ref().map(|(id, version)| CredentialRef {
            id,
            version: *version,
        })
    }
}

/// Assembles a connection's material, read from the database now. No permission check and
/// no audit: callers (`probes::test_saved`, agents) do both.
pub async fn material(state: &AppState, c: Connection) -> ApiResult<Material> {
    let stored = stored_secrets(state, &c).await?;
    let settings = Arc::new(settings_of(connector(state, &c.connector_type)?, &c));
    assemble(state, Arc::new(c), settings, &stored).await
}

/// A connection's effective non-secret settings: the fields of its credential's version
/// that fill the type's settings, with the connection's own settings on top.
fn settings_of(ty: &ConnectorType, c: &Connection) -> Map<String, Value> {
    let mut settings = c
        .credential
        .as_ref()
        .map(|cred| provided_settings(ty, cred))
        .unwrap_or_default();
    for (k, v) in &c.settings {
        settings.insert(k.clone(), v.clone());
    }
    settings
}

/// The material of a connection whose settings were assembled and whose secrets'
/// ciphertext was read into `stored` (now, or earlier by the resolve cache).
async fn assemble(
    state: &AppState,
    c: Arc<Connection>,
    settings: Arc<Map<String, Value>>,
    stored: &StoredSecrets,
) -> ApiResult<Material> {
    let secrets = decrypt_stored(state, &c, stored).await?;
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
/// transaction as the credential's last use — no record, no secret. From the resolve cache
/// when it holds the connection (the use recorded checked, see crate::materials), else from
/// the database.
async fn resolve_id(
    state: &AppState,
    p: &Principal,
    id: &str,
    run_id: Option<&str>,
    format: Format,
) -> ApiResult<Material> {
    if let Some(entry) = state.materials.get(id) {
        if let Some(m) = resolve_entry(state, p, &entry, run_id, format, true).await? {
            return Ok(m);
        }
        state.materials.evict(id);
    }
    let entry = load(state, id).await?;
    resolve_entry(state, p, &entry, run_id, format, false)
        .await?
        .ok_or_else(|| ApiError(patchbay_core::Error::internal()))
}

/// Reads a connection's cache entry from the database: the material generation first,
/// then the rows.
async fn load(state: &AppState, id: &str) -> ApiResult<Arc<Entry>> {
    let generation = state.store.material_generation().await?;
    let connection = match state.store.get_connection(id).await {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("connection")),
        Err(e) => return Err(e.into()),
    };
    let stored = stored_secrets(state, &connection).await?;
    // A type the catalog lacks fails the resolve later, after the visibility and
    // permission checks; its entry's settings are never used.
    let settings = connector(state, &connection.connector_type)
        .map(|ty| settings_of(ty, &connection))
        .unwrap_or_default();
    Ok(state.materials.put(Entry {
        generation,
        connection: Arc::new(connection),
        settings: Arc::new(settings),
        stored,
    }))
}

/// Resolves a read connection: visibility (404) and the permission, then the format (400
/// before anything is decrypted or recorded), then the material and its audit event.
/// `checked`: the entry came from the cache; `None` then means it was stale (or failed,
/// which a newer read may not), and nothing was recorded.
async fn resolve_entry(
    state: &AppState,
    p: &Principal,
    entry: &Entry,
    run_id: Option<&str>,
    format: Format,
    checked: bool,
) -> ApiResult<Option<Material>> {
    let c = &entry.connection;
    if !p.sees_workspace(&c.workspace_id) {
        return Err(ApiError::not_found("connection"));
    }
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
    let m = match assemble(
        state,
        entry.connection.clone(),
        entry.settings.clone(),
        &entry.stored,
    )
    .await
    {
        Ok(m) => m,
        Err(_) if checked => return Ok(None),
        Err(e) => return Err(e),
    };
    let c = &m.connection;
    let event = audit(
        p,
        "connection.resolve",
        Some(&c.workspace_id),
        "connection",
        &c.id,
        Details::of(&ResolveDetails {
            run_id,
            format: format.as_str(),
            version: c.version,
            credential: m.credential_ref(),
        }),
    );
    // Committed (with the credential's last use) before the secrets leave: no record, no
    // secret. Concurrent resolves share a transaction (service::resolve_log).
    let logged = state
        .resolve_log
        .record(UseRecord {
            credential: m
                .credential
                .as_ref()
                .map(|(cred_id, _)| (cred_id.clone(), c.id.clone())),
            principal: p.actor(),
            audit: event,
            checked: checked.then_some(entry.generation),
        })
        .await?;
    match logged {
        Logged::Recorded { generation } => {
            if let Some(g) = generation {
                state.materials.observe(g);
            }
            Ok(Some(m))
        }
        Logged::Stale { generation } => {
            state.materials.observe(generation);
            Ok(None)
        }
    }
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

/// The body of a resolve call: `{format?: json|env|uri|jdbc|airflow_uri, run_id?}`, in
/// the shape [`Shaped`] reads straight from the bytes (a string or null each); any other body
/// is read by [`Fields`], which names what is wrong with it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    format: Option<String>,
    run_id: Option<String>,
}

/// The format and run id a resolve call asks for.
fn read_body(body: Shaped<Body>) -> ApiResult<(Format, Option<String>)> {
    let (format, run_id) = match body {
        Shaped::Empty => return Ok((Format::Json, None)),
        Shaped::Typed(b) => (format_of(b.format)?, b.run_id),
        Shaped::Object(body) => {
            let mut f = Fields::new(body, &["format", "run_id"], &[])?;
            let format = format_of(f.optional_string("format")?)?;
            (format, f.optional_string("run_id")?)
        }
    };
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

/// The format a body names (json when it names none).
fn format_of(name: Option<String>) -> ApiResult<Format> {
    match name {
        None => Ok(Format::Json),
        Some(s) => Format::parse(&s).ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidField,
                "/format",
                "must be one of json, env, uri, jdbc, airflow_uri",
            )
        }),
    }
}

/// The id of the connection a call names (a name is looked up in its project).
async fn target_id(state: &AppState, p: &Principal, target: Target<'_>) -> ApiResult<String> {
    let (project, name, workspace) = match target {
        Target::Id(id) => return Ok(id.to_owned()),
        Target::Name {
            project,
            name,
            workspace,
        } => (project, name, workspace),
    };
    let project = project_by_id_or_name(state, p, project, workspace).await?;
    match state.store.connection_id_by_name(&project.id, name).await {
        Ok(id) => Ok(id),
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

/// A resolve's answer: `{connection, credential, format, run_id}` and, by format, the
/// settings and secrets (json) or the rendered fields. Serialized straight into the response
/// body: in the json format no secret is copied into an intermediate document on the way
/// (the other formats render theirs first). No `Debug`.
pub struct Answer {
    material: Material,
    format: Format,
    run_id: Option<String>,
    /// Every format but json: what it renders.
    rendered: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct ConnectionRef<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    connector_type: &'a str,
    version: i64,
    workspace_id: &'a str,
    project_id: &'a str,
}

/// A `connection.resolve` event's details, serialized straight into the event's JSON text:
/// `{run_id, format, version, credential: {id, version} | null}`.
#[derive(Serialize)]
struct ResolveDetails<'a> {
    run_id: Option<&'a str>,
    format: &'a str,
    version: i64,
    credential: Option<CredentialRef<'a>>,
}

#[derive(Serialize)]
struct CredentialRef<'a> {
    id: &'a str,
    version: i64,
}

/// Secret values by field, as JSON strings.
struct Exposed<'a>(&'a BTreeMap<String, SecretString>);

impl Serialize for Exposed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Where the json format writes resolved secrets into a response (the other formats
        // do in service::formats).
        s.collect_map(self.0.iter().map(|(k, v)| (k, v.expose_secret())))
    }
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = &self.material;
        let c = &m.connection;
        let mut out = s.serialize_map(None)?;
        out.serialize_entry(
            "connection",
            &ConnectionRef {
                id: &c.id,
                name: &c.name,
                connector_type: &c.connector_type,
                version: c.version,
                workspace_id: &c.workspace_id,
                project_id: &c.project_id,
            },
        )?;
        out.serialize_entry("credential", &m.credential_ref())?;
        out.serialize_entry("format", self.format.as_str())?;
        out.serialize_entry("run_id", &self.run_id)?;
        match &self.rendered {
            None => {
                out.serialize_entry("settings", &*m.settings)?;
                out.serialize_entry("secrets", &Exposed(&m.secrets))?;
            }
            Some(fields) => {
                for (k, v) in fields {
                    out.serialize_entry(k, v)?;
                }
            }
        }
        out.end()
    }
}

/// A resolve call: reads the body, finds the connection, resolves it (permission, format,
/// audit) and shapes the answer. The caller sends it with `Cache-Control: no-store`.
pub async fn answer(
    state: &AppState,
    p: &Principal,
    target: Target<'_>,
    body: Shaped<Body>,
) -> ApiResult<Answer> {
    let (format, run_id) = read_body(body)?;
    let id = target_id(state, p, target).await?;
    let material = resolve_id(state, p, &id, run_id.as_deref(), format).await?;
    let rendered = match format {
        Format::Json => None,
        _ => {
            let c = &material.connection;
            Some(formats::render(
                format,
                &formats::Input {
                    ty: connector(state, &c.connector_type)?,
                    name: &c.name,
                    settings: &material.settings,
                    secrets: &material.secrets,
                },
            ))
        }
    };
    Ok(Answer {
        material,
        format,
        run_id,
        rendered,
    })
}
