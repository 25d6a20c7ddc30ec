//! The `patchbay` binary: `serve` runs the service; every other subcommand is a client of
//! its REST API (configured by PATCHBAY_URL and PATCHBAY_TOKEN).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use patchbay_crypto::SecretString;
use patchbay_server::tls::TlsFiles;
use patchbay_server::{Config, MasterKeySource, TlsMode};

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
    /// Seal the master key with this AWS KMS key (id, ARN or alias): the key file then holds
    /// the KMS ciphertext (default <data-dir>/master.key.kms), opened by KMS at start-up.
    /// AWS credentials, region and endpoint come from the environment.
    #[arg(long, env = "PATCHBAY_MASTER_KEY_KMS")]
    master_key_kms: Option<String>,
    /// How long a credential version replaced by a rotation stays usable (e.g. 24h, 90m, 30s).
    #[arg(long, env = "PATCHBAY_CREDENTIAL_GRACE", default_value = "24h", value_parser = parse_duration)]
    credential_grace: Duration,
    /// How often versions past their grace period are destroyed.
    #[arg(long, env = "PATCHBAY_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    sweep_interval: Duration,
    /// How long a value fetched from an external secret manager is reused.
    #[arg(long, env = "PATCHBAY_EXTERNAL_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    external_cache_ttl: Duration,
    /// Failed authentications allowed per source address, and per token prefix, per minute;
    /// beyond it the caller gets 429 until the minute ends.
    #[arg(long, env = "PATCHBAY_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    auth_failure_limit: u32,
    /// How long a browser session lasts after signing in.
    #[arg(long, env = "PATCHBAY_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    session_ttl: Duration,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key. Both files
    /// are read again on SIGHUP.
    #[arg(long, env = "PATCHBAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PATCHBAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate for localhost, created in
    /// <data-dir>/tls/ on first start. Development only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    dev_tls: bool,
    /// How long audit events are kept (e.g. 90d); older ones are deleted and the deletion
    /// recorded. Default: kept forever.
    #[arg(long, env = "PATCHBAY_AUDIT_RETENTION", value_parser = parse_duration)]
    audit_retention: Option<Duration>,
    /// `off` stops auditing reveals. UNSAFE: for measuring the audit's cost only; reveals
    /// then leave no trace.
    #[arg(long, env = "PATCHBAY_AUDIT_READS", default_value = "on", value_parser = ["on", "off"])]
    audit_reads: String,
    /// Connection tests may reach these (comma-separated CIDRs, addresses or host patterns,
    /// each optionally `:port`), overriding the built-in deny set. Loopback is denied by
    /// default: a deployment testing databases on the same host must allow 127.0.0.1.
    #[arg(long, env = "PATCHBAY_NETWORK_ALLOW", default_value = "")]
    network_allow: String,
    /// Connection tests may never reach these (same syntax; wins over allow).
    #[arg(long, env = "PATCHBAY_NETWORK_DENY", default_value = "")]
    network_deny: String,
    /// The deadline of one connection test (at most 60s).
    #[arg(long, env = "PATCHBAY_TEST_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    test_deadline: Duration,
    /// Apply the document files (*.yaml, *.yml, *.json) of this directory at start; what they
    /// define is read-only through the API, and a connection removed from them is deleted.
    /// `${VAR}` in secrets reads this process's environment; sealed secrets open with
    /// PATCHBAY_EXPORT_PASSPHRASE.
    #[arg(long, env = "PATCHBAY_PROVISION_DIR")]
    provision: Option<PathBuf>,
    /// Connection tests one principal may start per minute.
    #[arg(long, env = "PATCHBAY_TESTS_PER_MINUTE", default_value_t = 30)]
    tests_per_minute: usize,
}

/// `90`, `500ms`, `30s`, `15m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 15m or 24h"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
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
    let master_key = match (
        args.master_key_kms,
        args.master_key_file,
        env_or_file("PATCHBAY_MASTER_KEY")?,
    ) {
        (Some(kms_key_id), file, _) => MasterKeySource::Kms {
            kms_key_id,
            file: file.unwrap_or_else(|| args.data_dir.join("master.key.kms")),
        },
        (None, Some(path), _) => MasterKeySource::File(path),
        (None, None, Some(inline)) => MasterKeySource::Inline(inline),
        (None, None, None) => MasterKeySource::File(args.data_dir.join("master.key")),
    };
    let tls = match (args.tls_cert, args.tls_key, args.dev_tls) {
        (Some(cert), Some(key), _) => TlsMode::Files(TlsFiles { cert, key }),
        (_, _, true) => TlsMode::Dev,
        _ => TlsMode::Off,
    };
    let config = Config {
        listen: args.listen,
        tls,
        data_dir: args.data_dir,
        database_url,
        master_key,
        settings: patchbay_server::state::Settings {
            credential_grace_ms: i64::try_from(args.credential_grace.as_millis())
                .unwrap_or(i64::MAX),
            sweep_interval: args.sweep_interval.max(Duration::from_millis(100)),
            external_cache_ttl: args.external_cache_ttl,
            auth_failure_limit: args.auth_failure_limit.max(1),
            session_ttl: args.session_ttl.max(Duration::from_secs(60)),
            // Set by the server from the TLS mode.
            secure_cookies: false,
            audit_retention: args.audit_retention,
            audit_reads: args.audit_reads != "off",
            probes: patchbay_server::service::probes::ProbeSettings {
                policy: patchbay_probe::Policy::parse(&args.network_allow, &args.network_deny)
                    .map_err(|e| anyhow::anyhow!("network policy: {e}"))?,
                deadline: args.test_deadline.min(patchbay_probe::MAX_DEADLINE),
                per_minute: args.tests_per_minute,
                ..Default::default()
            },
            provision_dir: args.provision,
        },
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks every subcommand's arguments only when that subcommand runs; this
        // checks them all at once.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            super::parse_duration("24h"),
            Ok(Duration::from_secs(86_400))
        );
        assert!(super::parse_duration("1y").is_err());
        assert!(super::parse_duration("h").is_err());
    }
}
