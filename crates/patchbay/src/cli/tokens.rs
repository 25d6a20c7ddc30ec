//! `patchbay tokens …`: API tokens and runner tokens.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, ApiFailure};
use super::{output, Ctx};

#[derive(Subcommand)]
pub enum TokensCommand {
    /// List your tokens (every token for an instance administrator).
    List,
    /// Mint a personal API token; it is printed once.
    Create {
        name: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<i64>,
        /// Restrict it to one workspace (name or id).
        #[arg(long = "only-workspace")]
        only_workspace: Option<String>,
        /// A permission it carries (repeatable; default: all of yours).
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// Mint a runner token for --workspace (resolve and test only); it is printed once.
    Runner {
        /// Lifetime in seconds (default 900, at most 3600).
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Revoke a token by id or name; the next request with it is refused.
    Revoke {
        /// Token id, or the name of one live token of yours.
        id: String,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("ID", "/id"),
    ("KIND", "/kind"),
    ("WORKSPACE", "/workspace_id"),
    ("EXPIRES", "/expires_at"),
    ("LAST USED", "/last_used_at"),
    ("REVOKED", "/revoked_at"),
];

/// Prints a minted token: the secret alone on stdout (for `$(…)`), the rest on stderr.
fn print_minted(v: &Value) {
    eprintln!(
        "token {} ({}), expires {}: shown once, store it now",
        v["name"].as_str().unwrap_or_default(),
        v["id"].as_str().unwrap_or_default(),
        v["expires_at"].as_str().unwrap_or("never")
    );
    println!("{}", v["token"].as_str().unwrap_or_default());
}

pub async fn run(cmd: TokensCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        TokensCommand::List => {
            let v = ctx.client.get("/api/v1/tokens").await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(ctx.g.output, &v, Some(&rows), COLUMNS);
        }
        TokensCommand::Create {
            name,
            expires_in,
            only_workspace,
            permissions,
        } => {
            let mut body = json!({"name": name});
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            if let Some(w) = only_workspace {
                body["workspace_id"] = json!(w);
            }
            if !permissions.is_empty() {
                body["permissions"] = json!(permissions);
            }
            let v = ctx
                .client
                .call(Method::POST, "/api/v1/tokens", Some(&body), &[])
                .await?
                .body;
            print_minted(&v);
        }
        TokensCommand::Runner { ttl } => {
            let ws = ctx.workspace_id().await?;
            let body = ttl.map(|t| json!({"ttl_seconds": t}));
            let v = ctx
                .client
                .call(
                    Method::POST,
                    &format!("/api/v1/workspaces/{}/runner-tokens", enc(&ws)),
                    body.as_ref(),
                    &[],
                )
                .await?
                .body;
            print_minted(&v);
        }
        TokensCommand::Revoke { id } => {
            let id = if super::looks_like_id(&id) {
                id
            } else {
                let list = ctx.client.get("/api/v1/tokens").await?;
                let live: Vec<&Value> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["name"] == id.as_str() && t["revoked_at"].is_null())
                    .collect();
                match live.as_slice() {
                    [one] => one["id"].as_str().unwrap_or_default().to_owned(),
                    [] => {
                        return Err(ApiFailure {
                            code: "not_found".into(),
                            message: format!("no live token named {id}"),
                            field: None,
                        })
                    }
                    _ => {
                        return Err(ApiFailure {
                            code: "invalid_argument".into(),
                            message: format!("several live tokens are named {id}; give the id"),
                            field: None,
                        })
                    }
                }
            };
            ctx.client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tokens/{}", enc(&id)),
                    None,
                    &[],
                )
                .await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}
