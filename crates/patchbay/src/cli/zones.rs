//! `patchbay zones …`: network zones of --workspace, their agents' health, agent tokens.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, ApiFailure};
use super::{looks_like_id, output, Ctx};

#[derive(Subcommand)]
pub enum ZonesCommand {
    /// List the zones of --workspace with their agents' health.
    List,
    /// Show one zone: agents (last seen, healthy) and the connections that name it.
    Show { zone: String },
    /// Create a zone.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a zone no connection names; its agents' tokens are revoked.
    Delete { zone: String },
    /// Mint an agent token for a zone (printed once) for `patchbay agent --token`.
    AgentToken {
        zone: String,
        /// The agent's name, unique in the zone (default: generated).
        #[arg(long)]
        name: Option<String>,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("ID", "/id"),
    ("HEALTHY", "/healthy"),
    ("AGENTS", "/agent_names"),
    ("CONNECTIONS", "/connection_count"),
];

/// Adds the summary columns the table shows.
fn summarize(mut z: Value) -> Value {
    let agents: Vec<String> = z["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{}({})",
                a["name"].as_str().unwrap_or_default(),
                if a["healthy"] == true { "up" } else { "down" }
            )
        })
        .collect();
    let count = z["connections"].as_array().map_or(0, Vec::len);
    if let Some(o) = z.as_object_mut() {
        o.insert("agent_names".into(), json!(agents.join(" ")));
        o.insert("connection_count".into(), json!(count));
    }
    z
}

async fn zone_id(ctx: &Ctx, ws: &str, zone: &str) -> Result<String, ApiFailure> {
    if looks_like_id(zone) {
        return Ok(zone.to_owned());
    }
    let list = ctx
        .client
        .get(&format!("/api/v1/workspaces/{}/zones", enc(ws)))
        .await?;
    super::find_by_name_or_id(&list, zone, "zone")
}

pub async fn run(cmd: ZonesCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    let ws = ctx.workspace_id().await?;
    match cmd {
        ZonesCommand::List => {
            let v = ctx
                .client
                .get(&format!("/api/v1/workspaces/{}/zones", enc(&ws)))
                .await?;
            let rows: Vec<Value> = v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(summarize)
                .collect();
            output::print(ctx.g.output, &v, Some(&rows), COLUMNS);
        }
        ZonesCommand::Show { zone } => {
            let id = zone_id(&ctx, &ws, &zone).await?;
            let v = ctx
                .client
                .get(&format!("/api/v1/zones/{}", enc(&id)))
                .await?;
            output::print(ctx.g.output, &v, None, &[]);
        }
        ZonesCommand::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/workspaces/{}/zones", enc(&ws)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            let v = summarize(v);
            output::print(ctx.g.output, &v, Some(std::slice::from_ref(&v)), COLUMNS);
        }
        ZonesCommand::Delete { zone } => {
            let id = zone_id(&ctx, &ws, &zone).await?;
            ctx.client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/zones/{}", enc(&id)),
                    None,
                    &[],
                )
                .await?;
            eprintln!("zone {zone} deleted");
        }
        ZonesCommand::AgentToken { zone, name } => {
            let body = name.map(|n| json!({"name": n}));
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!(
                        "/api/v1/workspaces/{}/zones/{}/agent-tokens",
                        enc(&ws),
                        enc(&zone)
                    ),
                    body.as_ref(),
                    &[],
                )
                .await?
                .body;
            eprintln!(
                "agent {} of zone {}: token shown once, store it now",
                v["agent"]["name"].as_str().unwrap_or_default(),
                v["zone"].as_str().unwrap_or_default()
            );
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}
