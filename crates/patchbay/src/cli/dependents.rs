//! `patchbay dependents …` (what uses a connection) and `patchbay webhooks …` (where events
//! are delivered).

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, ApiFailure};
use super::connections::find;
use super::{output, Ctx};

pub(super) const COLUMNS: &[(&str, &str)] = &[
    ("KIND", "/kind"),
    ("REF", "/ref"),
    ("NAME", "/name"),
    ("URL", "/url"),
    ("UPDATED", "/updated_at"),
];

#[derive(Subcommand)]
pub enum DependentsCommand {
    /// List what is registered as using a connection.
    List {
        /// Connection name (in --project) or id.
        connection: String,
    },
    /// Register (or update) a dependent of a connection.
    Add {
        /// Connection name (in --project) or id.
        connection: String,
        /// pipeline, dataset, alert_policy, dashboard, …
        kind: String,
        /// Your id of it.
        #[arg(value_name = "REF")]
        reference: String,
        /// What people call it.
        #[arg(long)]
        name: String,
        /// A link to it in its owner's UI (`--url` is the server's address).
        #[arg(long = "link", value_name = "URL")]
        link: Option<String>,
    },
    /// Unregister a dependent.
    Remove {
        /// Connection name (in --project) or id.
        connection: String,
        kind: String,
        #[arg(value_name = "REF")]
        reference: String,
    },
}

pub async fn dependents(cmd: DependentsCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        DependentsCommand::List { connection } => {
            let (c, _) = find(&ctx, &connection).await?;
            let id = c["id"].as_str().unwrap_or_default();
            let v = ctx
                .client
                .get(&format!("/api/v1/connections/{}/dependents", enc(id)))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(ctx.g.output, &v, Some(&rows), COLUMNS);
        }
        DependentsCommand::Add {
            connection,
            kind,
            reference,
            name,
            link,
        } => {
            let (c, _) = find(&ctx, &connection).await?;
            let id = c["id"].as_str().unwrap_or_default();
            let mut body = json!({ "name": name });
            if let Some(u) = link {
                body["url"] = json!(u);
            }
            let v = ctx
                .client
                .call(
                    Method::PUT,
                    &format!(
                        "/api/v1/connections/{}/dependents/{}/{}",
                        enc(id),
                        enc(&kind),
                        enc(&reference)
                    ),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            output::print(ctx.g.output, &v, Some(std::slice::from_ref(&v)), COLUMNS);
        }
        DependentsCommand::Remove {
            connection,
            kind,
            reference,
        } => {
            let (c, _) = find(&ctx, &connection).await?;
            let id = c["id"].as_str().unwrap_or_default();
            ctx.client
                .call(
                    Method::DELETE,
                    &format!(
                        "/api/v1/connections/{}/dependents/{}/{}",
                        enc(id),
                        enc(&kind),
                        enc(&reference)
                    ),
                    None,
                    &[],
                )
                .await?;
            eprintln!("unregistered {kind}/{reference}");
        }
    }
    Ok(())
}

const WEBHOOK_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("URL", "/url"),
    ("EVENTS", "/events"),
    ("ENABLED", "/enabled"),
    ("DESCRIPTION", "/description"),
];

const DELIVERY_COLUMNS: &[(&str, &str)] = &[
    ("EVENT", "/event_id"),
    ("KIND", "/kind"),
    ("STATE", "/state"),
    ("ATTEMPTS", "/attempts"),
    ("STATUS", "/last_status"),
    ("ERROR", "/last_error"),
    ("CREATED", "/created_at"),
];

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// List the webhooks of --workspace.
    List,
    /// Create a webhook; its signing secret is printed once.
    Create {
        /// http(s) URL that receives the events.
        #[arg(value_name = "URL")]
        target: String,
        /// An event kind to deliver (repeatable); none: every kind.
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a webhook (pending deliveries are dropped).
    Delete { id: String },
    /// The webhook's recent deliveries.
    Deliveries { id: String },
    /// Queue a `ping` event to the webhook.
    Ping { id: String },
    /// Send a delivery again (e.g. a failed one) with a fresh attempt budget.
    Redeliver {
        id: String,
        /// The event id (EVENT column of `deliveries`).
        event: String,
    },
}

pub async fn webhooks(cmd: WebhooksCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        WebhooksCommand::List => {
            let ws = ctx.workspace_id().await?;
            let v = ctx
                .client
                .get(&format!("/api/v1/workspaces/{}/webhooks", enc(&ws)))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(ctx.g.output, &v, Some(&rows), WEBHOOK_COLUMNS);
        }
        WebhooksCommand::Create {
            target,
            events,
            description,
            disabled,
        } => {
            let ws = ctx.workspace_id().await?;
            let mut body = json!({"url": target, "events": events, "enabled": !disabled});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/workspaces/{}/webhooks", enc(&ws)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            output::print(
                ctx.g.output,
                &v,
                Some(std::slice::from_ref(&v)),
                WEBHOOK_COLUMNS,
            );
            if matches!(ctx.g.output, output::Format::Table) {
                // Printed once, on purpose: receivers need it to verify signatures.
                println!(
                    "\nsigning secret (shown once): {}",
                    v["secret"].as_str().unwrap_or_default()
                );
            }
        }
        WebhooksCommand::Delete { id } => {
            ctx.client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/webhooks/{}", enc(&id)),
                    None,
                    &[],
                )
                .await?;
            eprintln!("deleted webhook {id}");
        }
        WebhooksCommand::Deliveries { id } => {
            let v = ctx
                .client
                .get(&format!("/api/v1/webhooks/{}/deliveries", enc(&id)))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(ctx.g.output, &v, Some(&rows), DELIVERY_COLUMNS);
        }
        WebhooksCommand::Ping { id } => {
            let v: Value = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/webhooks/{}/ping", enc(&id)),
                    None,
                    &[],
                )
                .await?
                .body;
            println!("{}", v["event_id"].as_str().unwrap_or_default());
        }
        WebhooksCommand::Redeliver { id, event } => {
            ctx.client
                .call(
                    Method::POST,
                    &format!(
                        "/api/v1/webhooks/{}/deliveries/{}/redeliver",
                        enc(&id),
                        enc(&event)
                    ),
                    None,
                    &[],
                )
                .await?;
            eprintln!("queued event {event} again");
        }
    }
    Ok(())
}
