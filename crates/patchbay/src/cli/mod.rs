//! Client subcommands. Each resolves names to ids through the API, calls it, and prints
//! the answer; API failures print `error: <code>: <message>` and exit 1.

pub mod agent;
mod audit;
mod client;
mod connections;
mod credentials;
mod dependents;
mod keys;
mod output;
mod runtime;
mod tokens;
mod transfer;
mod users;
mod zones;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use client::{enc, ApiFailure, Client};
pub use output::Format;

#[derive(Args, Clone)]
pub struct Global {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_URL",
        default_value = "http://127.0.0.1:8420"
    )]
    pub url: String,
    /// API token (or PATCHBAY_TOKEN_FILE; default: <PATCHBAY_DATA_DIR>/initial-admin-token if readable).
    #[arg(long, global = true, env = "PATCHBAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Workspace name or id.
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_WORKSPACE",
        default_value = "default"
    )]
    pub workspace: String,
    /// Project name or id (names are looked up in --workspace).
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_PROJECT",
        default_value = "default"
    )]
    pub project: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Manage connections.
    #[command(subcommand, visible_alias = "conn")]
    Connections(connections::ConnectionsCommand),
    /// Manage shared credentials and their versions.
    #[command(subcommand, visible_alias = "cred")]
    Credentials(credentials::CredentialsCommand),
    /// API tokens and runner tokens.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Local users (instance administrators).
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Members of --workspace and their roles.
    #[command(subcommand)]
    Members(users::MembersCommand),
    /// Roles of --workspace: built-in and custom.
    #[command(subcommand)]
    Roles(users::RolesCommand),
    /// Browse the connector catalog.
    #[command(subcommand)]
    Types(TypesCommand),
    /// Manage workspaces.
    #[command(subcommand)]
    Workspaces(NamedCommand),
    /// Manage projects of --workspace.
    #[command(subcommand)]
    Projects(NamedCommand),
    /// Key status and rotation (master key, workspace data keys).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The audit log: list, export (JSON lines), verify the hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Network zones of --workspace: agents' health, agent tokens.
    #[command(subcommand)]
    Zones(zones::ZonesCommand),
    /// What uses a connection (pipelines, datasets, …): list, add, remove.
    #[command(subcommand, visible_alias = "deps")]
    Dependents(dependents::DependentsCommand),
    /// Webhooks of --workspace: where events are delivered, and their deliveries.
    #[command(subcommand)]
    Webhooks(dependents::WebhooksCommand),
    /// Export --project as a document (YAML, apiVersion 1) or as Airflow connections.
    Export(transfer::ExportArgs),
    /// Apply a document or Airflow connections to --project (idempotent; prints the diff).
    Import(transfer::ImportArgs),
    /// Run CMD with connections resolved into its environment (PGHOST, PGPASSWORD, …, and
    /// PATCHBAY_<NAME>_<FIELD>); exits with CMD's code. Use a runner token.
    Exec(runtime::ExecArgs),
    /// Print connections' environment variables (dotenv or JSON); secrets masked unless
    /// --reveal.
    Env(runtime::EnvArgs),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
pub enum TypesCommand {
    /// List connector types.
    List {
        #[arg(long)]
        category: Option<String>,
        /// Substring of id, name or description.
        #[arg(long, short)]
        query: Option<String>,
    },
    /// Show one type with its settings schema.
    Show { id: String },
}

#[derive(Subcommand)]
pub enum NamedCommand {
    List,
    Create { name: String },
}

pub struct Ctx {
    pub client: Client,
    pub g: Global,
}

impl Ctx {
    fn new(g: Global) -> Self {
        let token = g.token.clone().or_else(|| {
            let from_file =
                |p: String| std::fs::read_to_string(p).ok().map(|t| t.trim().to_owned());
            std::env::var("PATCHBAY_TOKEN_FILE")
                .ok()
                .and_then(from_file)
                .or_else(|| {
                    let dir = std::env::var("PATCHBAY_DATA_DIR")
                        .unwrap_or_else(|_| "./patchbay-data".into());
                    from_file(format!("{dir}/initial-admin-token"))
                })
        });
        Self {
            client: Client::new(&g.url, token),
            g,
        }
    }

    pub async fn workspace_id(&self) -> Result<String, ApiFailure> {
        let list = self.client.get("/api/v1/workspaces").await?;
        find_by_name_or_id(&list, &self.g.workspace, "workspace")
    }

    pub async fn project_id(&self) -> Result<String, ApiFailure> {
        if looks_like_id(&self.g.project) {
            return Ok(self.g.project.clone());
        }
        let ws = self.workspace_id().await?;
        let list = self
            .client
            .get(&format!("/api/v1/workspaces/{}/projects", enc(&ws)))
            .await?;
        find_by_name_or_id(&list, &self.g.project, "project")
    }
}

pub fn looks_like_id(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

pub(crate) fn find_by_name_or_id(
    list: &Value,
    wanted: &str,
    what: &str,
) -> Result<String, ApiFailure> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == wanted || i["id"] == wanted)
        .and_then(|i| i["id"].as_str().map(str::to_owned))
        .ok_or_else(|| ApiFailure {
            code: "not_found".into(),
            message: format!("{what} {wanted} not found"),
            field: None,
        })
}

pub fn run(cmd: ClientCommand, g: Global, command: fn() -> clap::Command) -> ExitCode {
    if let ClientCommand::Completions { shell } = cmd {
        clap_complete::generate(shell, &mut command(), "patchbay", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let cmd = match cmd {
        // exec exits with the command's own code, not ours.
        ClientCommand::Exec(args) => return runtime::exec(args, g),
        other => other,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cmd, g)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: ClientCommand, g: Global) -> Result<(), ApiFailure> {
    match cmd {
        ClientCommand::Connections(c) => connections::run(c, Ctx::new(g)).await,
        ClientCommand::Credentials(c) => credentials::run(c, Ctx::new(g)).await,
        ClientCommand::Keys(c) => keys::run(c, Ctx::new(g)).await,
        ClientCommand::Audit(c) => audit::run(c, Ctx::new(g)).await,
        ClientCommand::Dependents(c) => dependents::dependents(c, Ctx::new(g)).await,
        ClientCommand::Webhooks(c) => dependents::webhooks(c, Ctx::new(g)).await,
        ClientCommand::Tokens(c) => tokens::run(c, Ctx::new(g)).await,
        ClientCommand::Users(c) => users::users(c, Ctx::new(g)).await,
        ClientCommand::Members(c) => users::members(c, Ctx::new(g)).await,
        ClientCommand::Roles(c) => users::roles(c, Ctx::new(g)).await,
        ClientCommand::Zones(c) => zones::run(c, Ctx::new(g)).await,
        ClientCommand::Export(a) => transfer::export(a, Ctx::new(g)).await,
        ClientCommand::Import(a) => transfer::import(a, Ctx::new(g)).await,
        ClientCommand::Types(TypesCommand::List { category, query }) => {
            let ctx = Ctx::new(g);
            let mut qs = vec![];
            if let Some(c) = category {
                qs.push(format!("category={}", enc(&c)));
            }
            if let Some(q) = query {
                qs.push(format!("q={}", enc(&q)));
            }
            let v = ctx
                .client
                .get(&format!("/api/v1/connection-types?{}", qs.join("&")))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[
                    ("ID", "/id"),
                    ("NAME", "/name"),
                    ("CATEGORY", "/category"),
                    ("KIND", "/genericity"),
                    ("SECRETS", "/secret_fields"),
                ],
            );
            Ok(())
        }
        ClientCommand::Types(TypesCommand::Show { id }) => {
            let ctx = Ctx::new(g);
            let v = ctx
                .client
                .get(&format!("/api/v1/connection-types/{}", enc(&id)))
                .await?;
            output::print(ctx.g.output, &v, None, &[]);
            Ok(())
        }
        ClientCommand::Workspaces(NamedCommand::List) => {
            let ctx = Ctx::new(g);
            let v = ctx.client.get("/api/v1/workspaces").await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[("NAME", "/name"), ("ID", "/id"), ("CREATED", "/created_at")],
            );
            Ok(())
        }
        ClientCommand::Workspaces(NamedCommand::Create { name }) => {
            let ctx = Ctx::new(g);
            let body = serde_json::json!({ "name": name });
            let v = ctx
                .client
                .call(
                    reqwest::Method::POST,
                    "/api/v1/workspaces",
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            output::print(
                ctx.g.output,
                &v,
                Some(std::slice::from_ref(&v)),
                &[("NAME", "/name"), ("ID", "/id")],
            );
            Ok(())
        }
        ClientCommand::Projects(cmd) => {
            let create = match cmd {
                NamedCommand::List => None,
                NamedCommand::Create { name } => Some(name),
            };
            let ctx = Ctx::new(g);
            let ws = ctx.workspace_id().await?;
            let path = format!("/api/v1/workspaces/{}/projects", enc(&ws));
            let cols = [("NAME", "/name"), ("ID", "/id"), ("CREATED", "/created_at")];
            match create {
                None => {
                    let v = ctx.client.get(&path).await?;
                    let rows = v["items"].as_array().cloned().unwrap_or_default();
                    output::print(ctx.g.output, &v, Some(&rows), &cols);
                }
                Some(name) => {
                    let body = serde_json::json!({ "name": name });
                    let v = ctx
                        .client
                        .call(reqwest::Method::POST, &path, Some(&body), &[])
                        .await?
                        .body;
                    output::print(ctx.g.output, &v, Some(std::slice::from_ref(&v)), &cols);
                }
            }
            Ok(())
        }
        ClientCommand::Env(args) => runtime::env(args, Ctx::new(g)).await,
        ClientCommand::Exec(_) | ClientCommand::Completions { .. } => Ok(()),
    }
}
