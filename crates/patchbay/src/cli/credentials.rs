//! `patchbay credentials …`: shared credentials, their versions and who uses them.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{enc, ApiFailure};
use super::connections::{read_secret, split_kv, usage_error};
use super::{looks_like_id, output, Ctx};

#[derive(Subcommand)]
pub enum CredentialsCommand {
    /// List the workspace's shared credentials.
    List {
        /// Include connections' own (inline) credentials.
        #[arg(long)]
        owned: bool,
    },
    /// Show one credential (secret fields masked; values are never shown here).
    Get { credential: String },
    /// Create a credential of a kind (`patchbay types kinds` lists them).
    Create {
        name: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        description: Option<String>,
        /// A field FIELD=VALUE, FIELD=@FILE or FIELD=- (stdin); repeatable. Prefer @FILE or
        /// - for secret fields: a value on the command line is visible to other local users.
        #[arg(long = "field", value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        /// Instead of fields: an external secret manager reference as JSON, e.g.
        /// '{"provider":"vault_kv2","address":"https://vault:8200","path":"db/finance","key":"password"}'.
        #[arg(long, conflicts_with = "fields")]
        external: Option<String>,
    },
    /// Rotate: the given fields (others kept) become the new current version.
    Rotate {
        credential: String,
        #[arg(long = "field", value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        /// Clear a field in the new version.
        #[arg(long = "clear", value_name = "FIELD")]
        clear: Vec<String>,
    },
    /// Rename or describe a credential.
    Update {
        credential: String,
        #[arg(long)]
        rename: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List versions (metadata only).
    Versions { credential: String },
    /// Revoke a previous version at once (its ciphertext is deleted).
    Revoke {
        credential: String,
        #[arg(value_name = "VERSION")]
        number: i64,
    },
    /// Connections using the credential, and who used it last.
    Usage { credential: String },
    /// Delete a credential no connection uses.
    Delete { credential: String },
}

/// Finds a credential by id, or by name in --workspace (owned ones included).
pub async fn find(ctx: &Ctx, wanted: &str) -> Result<Value, ApiFailure> {
    if looks_like_id(wanted) {
        return ctx
            .client
            .get(&format!("/api/v1/credentials/{}", enc(wanted)))
            .await;
    }
    let ws = ctx.workspace_id().await?;
    let base = format!("/api/v1/workspaces/{}/credentials?limit=500", enc(&ws));
    let mut page = ctx.client.get(&base).await?;
    loop {
        if let Some(found) = page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["name"] == wanted))
        {
            return Ok(found.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => page = ctx.client.get(&format!("{base}&cursor={}", enc(c))).await?,
            None => {
                return Err(ApiFailure {
                    code: "not_found".into(),
                    message: format!(
                        "credential {wanted} not found in workspace {}",
                        ctx.g.workspace
                    ),
                    field: None,
                })
            }
        }
    }
}

fn fields_body(fields: &[String], clear: &[String]) -> Result<Map<String, Value>, ApiFailure> {
    let mut out = Map::new();
    for kv in fields {
        let (k, v) = split_kv(kv)?;
        out.insert(k.to_owned(), Value::String(read_secret(v)?));
    }
    for k in clear {
        out.insert(k.clone(), Value::Null);
    }
    Ok(out)
}

const COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("KIND", "/kind"),
    ("VERSION", "/current_version"),
    ("DESCRIPTION", "/description"),
    ("UPDATED", "/updated_at"),
];

pub async fn run(cmd: CredentialsCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    let id_of = |v: &Value| v["id"].as_str().unwrap_or_default().to_owned();
    match cmd {
        CredentialsCommand::List { owned } => {
            let ws = ctx.workspace_id().await?;
            let base = format!(
                "/api/v1/workspaces/{}/credentials?limit=500&owned={owned}",
                enc(&ws)
            );
            let mut items = Vec::new();
            let mut page = ctx.client.get(&base).await?;
            loop {
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => page = ctx.client.get(&format!("{base}&cursor={}", enc(c))).await?,
                    None => break,
                }
            }
            output::print(
                ctx.g.output,
                &json!({ "items": items }),
                Some(&items),
                COLUMNS,
            );
        }
        CredentialsCommand::Get { credential } => {
            let v = find(&ctx, &credential).await?;
            output::print(ctx.g.output, &v, None, &[]);
        }
        CredentialsCommand::Create {
            name,
            kind,
            description,
            fields,
            external,
        } => {
            let ws = ctx.workspace_id().await?;
            let mut body = json!({"name": name, "kind": kind});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            match external {
                Some(e) => {
                    body["external"] = serde_json::from_str(&e)
                        .map_err(|e| usage_error(format!("--external is not JSON: {e}")))?;
                }
                None => body["secrets"] = Value::Object(fields_body(&fields, &[])?),
            }
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/workspaces/{}/credentials", enc(&ws)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            output::print(ctx.g.output, &v, None, &[]);
        }
        CredentialsCommand::Rotate {
            credential,
            fields,
            clear,
        } => {
            let c = find(&ctx, &credential).await?;
            let body = json!({"secrets": fields_body(&fields, &clear)?});
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/credentials/{}/versions", enc(&id_of(&c))),
                    Some(&body),
                    &[("If-Match", format!("\"{}\"", c["revision"]))],
                )
                .await?
                .body;
            eprintln!(
                "credential {} is now at version {}",
                v["name"].as_str().unwrap_or_default(),
                v["current_version"]
            );
            output::print(ctx.g.output, &v, None, &[]);
        }
        CredentialsCommand::Update {
            credential,
            rename,
            description,
        } => {
            let c = find(&ctx, &credential).await?;
            let mut patch = Map::new();
            if let Some(n) = rename {
                patch.insert("name".into(), json!(n));
            }
            if let Some(d) = description {
                patch.insert("description".into(), json!(d));
            }
            let v = ctx
                .client
                .call(
                    Method::PATCH,
                    &format!("/api/v1/credentials/{}", enc(&id_of(&c))),
                    Some(&Value::Object(patch)),
                    &[("If-Match", format!("\"{}\"", c["revision"]))],
                )
                .await?
                .body;
            output::print(ctx.g.output, &v, None, &[]);
        }
        CredentialsCommand::Versions { credential } => {
            let c = find(&ctx, &credential).await?;
            let v = ctx
                .client
                .get(&format!("/api/v1/credentials/{}/versions", enc(&id_of(&c))))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[
                    ("VERSION", "/version"),
                    ("STATE", "/state"),
                    ("FIELDS", "/secret_fields"),
                    ("CREATED", "/created_at"),
                    ("BY", "/created_by"),
                    ("USABLE UNTIL", "/usable_until"),
                ],
            );
        }
        CredentialsCommand::Revoke {
            credential,
            number: version,
        } => {
            let c = find(&ctx, &credential).await?;
            ctx.client
                .call(
                    Method::POST,
                    &format!(
                        "/api/v1/credentials/{}/versions/{version}/revoke",
                        enc(&id_of(&c))
                    ),
                    None,
                    &[],
                )
                .await?;
            eprintln!("revoked version {version} of {credential}");
        }
        CredentialsCommand::Usage { credential } => {
            let c = find(&ctx, &credential).await?;
            let v = ctx
                .client
                .get(&format!("/api/v1/credentials/{}/usage", enc(&id_of(&c))))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[
                    ("CONNECTION", "/connection_name"),
                    ("PINNED", "/version"),
                    ("LAST USED", "/last_used_at"),
                    ("BY", "/last_used_by"),
                ],
            );
        }
        CredentialsCommand::Delete { credential } => {
            let c = find(&ctx, &credential).await?;
            ctx.client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/credentials/{}", enc(&id_of(&c))),
                    None,
                    &[],
                )
                .await?;
            eprintln!("deleted credential {credential}");
        }
    }
    Ok(())
}
