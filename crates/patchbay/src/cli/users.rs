//! `patchbay users …`, `patchbay members …` and `patchbay roles …`.

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::client::{enc, ApiFailure};
use super::connections::read_secret;
use super::{output, Ctx};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// List users.
    List,
    /// Create a local user (instance administrators only).
    Create {
        username: String,
        /// Where the password comes from: @FILE or - (stdin). Never on the command line.
        #[arg(long, value_name = "@FILE|-")]
        password: String,
        /// Make the user an instance administrator.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
pub enum MembersCommand {
    /// List the members of --workspace and their roles.
    List,
    /// Give USER (id or username) ROLE in --workspace, adding them if needed.
    Set { user: String, role: String },
    /// Remove USER from --workspace; their tokens stop reaching it at once.
    Remove { user: String },
}

#[derive(Subcommand)]
pub enum RolesCommand {
    /// List the roles of --workspace (built-in and custom) with their permissions.
    List,
    /// Create a custom role in --workspace.
    Create {
        name: String,
        /// A permission of the role (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
}

pub async fn users(cmd: UsersCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        UsersCommand::List => {
            let v = ctx.client.get("/api/v1/users").await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            let columns = &[
                ("USERNAME", "/username"),
                ("ID", "/id"),
                ("ADMIN", "/is_admin"),
                ("CREATED", "/created_at"),
            ];
            output::print(ctx.g.output, &v, Some(&rows), columns);
        }
        UsersCommand::Create {
            username,
            password,
            admin,
        } => {
            if !(password == "-" || password.starts_with('@')) {
                return Err(super::connections::usage_error(
                    "--password takes @FILE or - (stdin), so the password stays out of shell history and ps".into(),
                ));
            }
            let body = json!({"username": username, "password": read_secret(&password)?, "is_admin": admin});
            let v = ctx
                .client
                .call(Method::POST, "/api/v1/users", Some(&body), &[])
                .await?
                .body;
            output::print(ctx.g.output, &v, None, &[("ID", "/id")]);
        }
    }
    Ok(())
}

pub async fn members(cmd: MembersCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    let ws = ctx.workspace_id().await?;
    let base = format!("/api/v1/workspaces/{}/members", enc(&ws));
    match cmd {
        MembersCommand::List => {
            let v = ctx.client.get(&base).await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            let columns = &[
                ("USERNAME", "/username"),
                ("ROLE", "/role"),
                ("USER ID", "/user_id"),
                ("SINCE", "/created_at"),
            ];
            output::print(ctx.g.output, &v, Some(&rows), columns);
        }
        MembersCommand::Set { user, role } => {
            let v = ctx
                .client
                .call(
                    Method::PUT,
                    &format!("{base}/{}", enc(&user)),
                    Some(&json!({"role": role})),
                    &[],
                )
                .await?
                .body;
            eprintln!(
                "{} is {} in this workspace",
                v["username"].as_str().unwrap_or_default(),
                v["role"].as_str().unwrap_or_default()
            );
        }
        MembersCommand::Remove { user } => {
            ctx.client
                .call(Method::DELETE, &format!("{base}/{}", enc(&user)), None, &[])
                .await?;
            eprintln!("removed {user}");
        }
    }
    Ok(())
}

pub async fn roles(cmd: RolesCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    let ws = ctx.workspace_id().await?;
    let base = format!("/api/v1/workspaces/{}/roles", enc(&ws));
    match cmd {
        RolesCommand::List => {
            let mut v = ctx.client.get(&base).await?;
            // One cell per role: its permissions, space-separated.
            if let Some(items) = v["items"].as_array_mut() {
                for r in items {
                    let joined = r["permissions"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .filter_map(|p| p.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    r["permission_list"] = json!(joined);
                }
            }
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            let columns = &[
                ("ROLE", "/name"),
                ("BUILT-IN", "/builtin"),
                ("PERMISSIONS", "/permission_list"),
            ];
            output::print(ctx.g.output, &v, Some(&rows), columns);
        }
        RolesCommand::Create {
            name,
            permissions,
            description,
        } => {
            let mut body = json!({"name": name, "permissions": permissions});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            ctx.client
                .call(Method::POST, &base, Some(&body), &[])
                .await?;
            eprintln!("created role {name}");
        }
    }
    Ok(())
}
