//! `patchbay connections …`

use std::io::Read;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{enc, ApiFailure};
use super::{looks_like_id, output, Ctx};

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// List the project's connections.
    List {
        #[arg(long = "type")]
        connector_type: Option<String>,
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Substring of name or description.
        #[arg(long, short)]
        query: Option<String>,
    },
    /// Show one connection (secrets masked unless --reveal; reveals are audited).
    Get {
        /// Connection name (in --project) or id.
        connection: String,
        #[arg(long)]
        reveal: bool,
    },
    /// Test a connection stage by stage (dns, tcp, tls, auth, query, permissions); exits
    /// non-zero when the test fails.
    Test {
        /// Connection name (in --project) or id.
        connection: String,
    },
    /// Create a connection.
    Create {
        name: String,
        #[arg(long = "type")]
        connector_type: String,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// Change a connection (merge patch; only what you pass changes).
    Update {
        /// Connection name (in --project) or id.
        connection: String,
        /// New name.
        #[arg(long)]
        rename: Option<String>,
        /// Remove a setting.
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        /// Clear a secret field.
        #[arg(long = "clear-secret", value_name = "FIELD")]
        clear_secret: Vec<String>,
        /// Stop using the shared credential (give inline secrets with --secret).
        #[arg(long, conflicts_with = "credential")]
        detach_credential: bool,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// Delete a connection. One with registered dependents is refused (they are listed)
    /// unless --cascade names them all.
    Delete {
        /// Connection name (in --project) or id.
        connection: String,
        /// Delete these dependents' registrations with it: `all`, or `kind/ref,kind/ref`.
        /// Each becomes a dependent.cascade_deleted event for its owner.
        #[arg(long, value_name = "all|KIND/REF,…")]
        cascade: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct FieldArgs {
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    environment: Option<String>,
    /// Tag (repeatable; replaces the tag list).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A setting KEY=VALUE (repeatable); values are typed by the connector's schema;
    /// dotted keys reach into objects (staging.bucket=…).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// A secret FIELD=VALUE, FIELD=@FILE (read a file) or FIELD=- (read stdin). Prefer @FILE
    /// or -: a value on the command line is visible to other local users.
    #[arg(long = "secret", value_name = "FIELD=VALUE")]
    secrets: Vec<String>,
    /// Take the secrets from a shared credential: NAME, ID, or NAME@VERSION to pin a version.
    #[arg(long, conflicts_with = "secrets")]
    credential: Option<String>,
    /// The network zone whose agents test it (`patchbay zones list`); `--zone ''` removes it.
    #[arg(long)]
    zone: Option<String>,
}

pub(super) fn usage_error(msg: String) -> ApiFailure {
    ApiFailure {
        code: "invalid_argument".into(),
        message: msg,
        field: None,
    }
}

pub(super) fn split_kv(s: &str) -> Result<(&str, &str), ApiFailure> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| {
            usage_error(format!(
                "expected KEY=VALUE, got `{}`",
                s.split('=').next().unwrap_or("")
            ))
        })
}

/// Types a command-line value by the schema property it lands on.
fn typed(schema: Option<&Value>, raw: &str) -> Value {
    match schema.and_then(|s| s["type"].as_str()) {
        Some("integer") | Some("number") | Some("boolean") | Some("object") | Some("array") => {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
        }
        _ => Value::String(raw.to_owned()),
    }
}

fn set_path(settings: &mut Map<String, Value>, type_schema: &Value, key: &str, raw: &str) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut schema = type_schema.pointer("/settings");
    let mut target = settings;
    for (i, part) in parts.iter().enumerate() {
        schema = schema
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(*part));
        if i == parts.len() - 1 {
            target.insert((*part).to_owned(), typed(schema, raw));
        } else {
            let next = target
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            target = next.as_object_mut().expect("made an object above");
        }
    }
}

pub(super) fn read_secret(raw: &str) -> Result<String, ApiFailure> {
    if raw == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| usage_error(format!("reading a secret from stdin: {e}")))?;
        Ok(s.trim_end_matches(['\n', '\r']).to_owned())
    } else if let Some(path) = raw.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| usage_error(format!("reading a secret from {path}: {e}")))
    } else {
        Ok(raw.to_owned())
    }
}

impl FieldArgs {
    /// Adds the given fields to a create body or merge patch.
    fn apply(&self, body: &mut Map<String, Value>, type_schema: &Value) -> Result<(), ApiFailure> {
        if let Some(c) = &self.credential {
            let reference = match c.rsplit_once('@') {
                Some((name, v)) => {
                    let v: i64 = v.parse().map_err(|_| {
                        usage_error(format!("--credential {c}: version must be a number"))
                    })?;
                    json!({"name": name, "version": v})
                }
                None if looks_like_id(c) => json!({"id": c}),
                None => json!({"name": c}),
            };
            body.insert("credential".into(), reference);
        }
        if let Some(d) = &self.description {
            body.insert("description".into(), json!(d));
        }
        if let Some(e) = &self.environment {
            body.insert("environment".into(), json!(e));
        }
        if !self.tags.is_empty() {
            body.insert("tags".into(), json!(self.tags));
        }
        match self.zone.as_deref() {
            None => {}
            Some("") => {
                body.insert("zone".into(), Value::Null);
            }
            Some(z) => {
                body.insert("zone".into(), json!(z));
            }
        }
        let settings = body
            .entry("settings")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .expect("settings is an object");
        for kv in &self.settings {
            let (k, v) = split_kv(kv)?;
            set_path(settings, type_schema, k, v);
        }
        let secrets = body
            .entry("secrets")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .expect("secrets is an object");
        for kv in &self.secrets {
            let (k, v) = split_kv(kv)?;
            secrets.insert(k.to_owned(), Value::String(read_secret(v)?));
        }
        Ok(())
    }
}

/// Finds a connection by id, or by exact name in --project. Never reveals secrets.
pub(super) async fn find(ctx: &Ctx, wanted: &str) -> Result<(Value, String), ApiFailure> {
    if looks_like_id(wanted) {
        let reply = ctx
            .client
            .call(
                Method::GET,
                &format!("/api/v1/connections/{}?reveal=false", enc(wanted)),
                None,
                &[],
            )
            .await?;
        let etag = reply.etag.unwrap_or_default();
        return Ok((reply.body, etag));
    }
    let project = ctx.project_id().await?;
    let list = ctx
        .client
        .get(&format!(
            "/api/v1/projects/{}/connections?name={}",
            enc(&project),
            enc(wanted)
        ))
        .await?;
    let item = list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == wanted))
        .cloned()
        .ok_or_else(|| ApiFailure {
            code: "not_found".into(),
            message: format!("connection {wanted} not found in project {}", ctx.g.project),
            field: None,
        })?;
    let etag = format!("\"{}\"", item["version"]);
    Ok((item, etag))
}

const COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("TYPE", "/type"),
    ("ENVIRONMENT", "/environment"),
    ("TAGS", "/tags"),
    ("SECRETS", "/secrets_set"),
    ("DEPENDENTS", "/dependents_count"),
    ("VERSION", "/version"),
    ("UPDATED", "/updated_at"),
];

const TEST_COLUMNS: &[(&str, &str)] = &[
    ("STAGE", "/stage"),
    ("STATUS", "/status"),
    ("MS", "/duration_ms"),
    ("DETAIL", "/detail"),
];

fn show(ctx: &Ctx, v: &Value) {
    output::print(ctx.g.output, v, None, &[]);
}

pub async fn run(cmd: ConnectionsCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        ConnectionsCommand::List {
            connector_type,
            category,
            environment,
            tag,
            query,
        } => {
            let project = ctx.project_id().await?;
            let mut qs = vec!["limit=500".to_owned()];
            for (k, v) in [
                ("type", connector_type),
                ("category", category),
                ("environment", environment),
                ("tag", tag),
                ("q", query),
            ] {
                if let Some(v) = v {
                    qs.push(format!("{k}={}", enc(&v)));
                }
            }
            let mut items = Vec::new();
            let base = format!(
                "/api/v1/projects/{}/connections?{}",
                enc(&project),
                qs.join("&")
            );
            let mut page = ctx.client.get(&base).await?;
            loop {
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => page = ctx.client.get(&format!("{base}&cursor={}", enc(c))).await?,
                    None => break,
                }
            }
            let all = json!({ "items": items });
            output::print(ctx.g.output, &all, Some(&items), COLUMNS);
        }
        ConnectionsCommand::Get { connection, reveal } => {
            let (found, _) = find(&ctx, &connection).await?;
            let id = found["id"].as_str().unwrap_or_default().to_owned();
            let path = format!("/api/v1/connections/{}?reveal={reveal}", enc(&id));
            show(&ctx, &ctx.client.get(&path).await?);
        }
        ConnectionsCommand::Test { connection } => {
            let (found, _) = find(&ctx, &connection).await?;
            let id = found["id"].as_str().unwrap_or_default().to_owned();
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/connections/{}/test", enc(&id)),
                    None,
                    &[],
                )
                .await?
                .body;
            let stages = v["stages"].as_array().cloned().unwrap_or_default();
            output::print(ctx.g.output, &v, Some(&stages), TEST_COLUMNS);
            if matches!(ctx.g.output, output::Format::Table) {
                if let Some(s) = v["server"].as_object() {
                    println!(
                        "server: {} {}",
                        s.get("product").and_then(Value::as_str).unwrap_or_default(),
                        s.get("version").and_then(Value::as_str).unwrap_or_default()
                    );
                }
                for w in v["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", w.as_str().unwrap_or_default());
                }
                if let Some(h) = v["error"]["hint"].as_str() {
                    println!("hint: {h}");
                }
            }
            if v["ok"] != Value::Bool(true) {
                return Err(ApiFailure {
                    code: v["error"]["class"]
                        .as_str()
                        .unwrap_or("test_failed")
                        .to_owned(),
                    message: format!(
                        "the test failed at {}: {}",
                        v["error"]["stage"].as_str().unwrap_or("?"),
                        v["error"]["message"].as_str().unwrap_or_default()
                    ),
                    field: None,
                });
            }
        }
        ConnectionsCommand::Create {
            name,
            connector_type,
            fields,
        } => {
            let project = ctx.project_id().await?;
            let schema = ctx
                .client
                .get(&format!(
                    "/api/v1/connection-types/{}",
                    enc(&connector_type)
                ))
                .await
                .unwrap_or(Value::Null);
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("type".into(), json!(connector_type));
            fields.apply(&mut body, &schema)?;
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/projects/{}/connections", enc(&project)),
                    Some(&Value::Object(body)),
                    &[],
                )
                .await?
                .body;
            show(&ctx, &v);
        }
        ConnectionsCommand::Update {
            connection,
            rename,
            unset,
            clear_secret,
            detach_credential,
            fields,
        } => {
            let (current, etag) = find(&ctx, &connection).await?;
            let ty = current["type"].as_str().unwrap_or_default();
            let schema = ctx
                .client
                .get(&format!("/api/v1/connection-types/{}", enc(ty)))
                .await
                .unwrap_or(Value::Null);
            let mut patch = Map::new();
            if let Some(n) = rename {
                patch.insert("name".into(), json!(n));
            }
            fields.apply(&mut patch, &schema)?;
            for k in unset {
                patch["settings"][k.as_str()] = Value::Null;
            }
            for k in clear_secret {
                patch["secrets"][k.as_str()] = Value::Null;
            }
            if detach_credential {
                patch.insert("credential".into(), Value::Null);
            }
            let id = current["id"].as_str().unwrap_or_default();
            let v = ctx
                .client
                .call(
                    Method::PATCH,
                    &format!("/api/v1/connections/{}", enc(id)),
                    Some(&Value::Object(patch)),
                    &[("If-Match", etag)],
                )
                .await?
                .body;
            show(&ctx, &v);
        }
        ConnectionsCommand::Delete {
            connection,
            cascade,
        } => {
            let (current, _) = find(&ctx, &connection).await?;
            let id = current["id"].as_str().unwrap_or_default();
            let query = cascade
                .as_deref()
                .map(|c| format!("?cascade={}", enc(c)))
                .unwrap_or_default();
            let deleted = ctx
                .client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/connections/{}{query}", enc(id)),
                    None,
                    &[],
                )
                .await;
            if let Err(e) = &deleted {
                if e.code == "has_dependents" {
                    // Show what would go with it, so the user can choose.
                    let deps = ctx
                        .client
                        .get(&format!("/api/v1/connections/{}/dependents", enc(id)))
                        .await?;
                    let rows = deps["items"].as_array().cloned().unwrap_or_default();
                    eprint!("{}", output::table(&rows, super::dependents::COLUMNS));
                    eprintln!(
                        "pass --cascade all, or --cascade KIND/REF,… naming each, to delete them with it"
                    );
                }
            }
            deleted?;
            eprintln!(
                "deleted connection {}",
                current["name"].as_str().unwrap_or(id)
            );
        }
    }
    Ok(())
}
