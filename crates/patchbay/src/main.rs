//! The `patchbay` binary: `serve` runs the service; every other subcommand is a client of
//! its REST API (configured by PATCHBAY_URL and PATCHBAY_TOKEN).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use patchbay_crypto::SecretString;
use patchbay_server::{Config, MasterKeySource};

#[derive(Parser)]
#[command(
    name = "patchbay",
    version,
    about = "Connection and credential manager",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (REST API on PATCHBAY_LISTEN).
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PATCHBAY_LISTEN", default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// Data directory: SQLite database, master key file, initial admin token.
    #[arg(long, env = "PATCHBAY_DATA_DIR", default_value = "./patchbay-data")]
    data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://… (default: SQLite in the data directory).
    /// PATCHBAY_DATABASE_URL_FILE names a file holding it instead.
    #[arg(long, env = "PATCHBAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Master key file (base64 of 32 bytes; created with mode 0600 if absent).
    /// Default: <data-dir>/master.key.
    #[arg(long, env = "PATCHBAY_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

/// Reads `NAME` from the environment, or the content of the file named by `NAME_FILE`.
fn env_or_file(name: &str) -> anyhow::Result<Option<SecretString>> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(SecretString::new(v)));
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{name}_FILE={path}: {e}"))?;
            Ok(Some(SecretString::new(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            )))
        }
        Err(_) => Ok(None),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATCHBAY_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let database_url = match args.database_url {
        Some(u) => Some(SecretString::new(u)),
        None => env_or_file("PATCHBAY_DATABASE_URL")?,
    };
    let master_key = match (args.master_key_file, env_or_file("PATCHBAY_MASTER_KEY")?) {
        (Some(path), _) => MasterKeySource::File(path),
        (None, Some(inline)) => MasterKeySource::Inline(inline),
        (None, None) => MasterKeySource::File(args.data_dir.join("master.key")),
    };
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url,
        master_key,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(patchbay_server::serve(config))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("patchbay: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Client(cmd) => cli::run(cmd, cli.global, <Cli as clap::CommandFactory>::command),
    }
}
