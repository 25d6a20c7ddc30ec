//! The `patchbay` binary: `serve` runs the service; every other subcommand is a client of
//! its REST API (configured by PATCHBAY_URL and PATCHBAY_TOKEN).

mod cli;

/// mimalloc instead of glibc malloc: under concurrent requests glibc's arena locks and
/// consolidation took a quarter of the resolve benchmark's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a network zone's connection tests inside that network: long-polls the server
    /// (--server) with an agent token (--token) of the zone.
    Agent(cli::agent::AgentArgs),
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
    /// Local directories whose files connection tests of file-based types (DuckDB) may read,
    /// separated like PATH. Default: none, every local path is refused.
    #[arg(long, env = "PATCHBAY_PROBE_FILE_ROOTS", default_value = "")]
    probe_file_roots: std::ffi::OsString,
    /// Apply the document files (*.yaml, *.yml, *.json) of this directory at start; what they
    /// define is read-only through the API, and a connection removed from them is deleted.
    /// `${VAR}` in secrets reads this process's environment; sealed secrets open with
    /// PATCHBAY_EXPORT_PASSPHRASE.
    #[arg(long, env = "PATCHBAY_PROVISION_DIR")]
    provision: Option<PathBuf>,
    /// Connection tests one principal may start per minute.
    #[arg(long, env = "PATCHBAY_TESTS_PER_MINUTE", default_value_t = 30)]
    tests_per_minute: usize,
    /// How long an agent's claim waits for a job before answering 204; an agent is
    /// healthy while it called in within twice this.
    #[arg(long, env = "PATCHBAY_AGENT_POLL", default_value = "25s", value_parser = parse_duration)]
    agent_poll: Duration,
    /// Reverse proxies whose X-Forwarded-For is believed (comma-separated CIDRs or
    /// addresses). The source address in audit records and for throttling is then the
    /// right-most forwarded address that is not a trusted proxy. Default: none.
    #[arg(long, env = "PATCHBAY_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: String,
    /// Webhook delivery settings (boxed: they are read once).
    #[command(flatten)]
    webhooks: Box<WebhookArgs>,
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// How often the webhook worker looks for due deliveries.
    #[arg(long, env = "PATCHBAY_WEBHOOK_POLL", default_value = "1s", value_parser = parse_duration)]
    webhook_poll: Duration,
    /// Timeout of one webhook delivery attempt.
    #[arg(long, env = "PATCHBAY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    webhook_timeout: Duration,
    /// Attempts before a webhook delivery is marked failed.
    #[arg(long, env = "PATCHBAY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12)]
    webhook_max_attempts: u32,
    /// First retry delay of a webhook delivery; doubles each attempt (with jitter).
    #[arg(long, env = "PATCHBAY_WEBHOOK_BACKOFF", default_value = "20s", value_parser = parse_duration)]
    webhook_backoff: Duration,
    /// Longest retry delay of a webhook delivery.
    #[arg(long, env = "PATCHBAY_WEBHOOK_BACKOFF_MAX", default_value = "6h", value_parser = parse_duration)]
    webhook_backoff_max: Duration,
    /// How long a replica keeps a claimed delivery before another may send it (must exceed
    /// the timeout).
    #[arg(long, env = "PATCHBAY_WEBHOOK_LEASE", default_value = "60s", value_parser = parse_duration)]
    webhook_lease: Duration,
    /// How long finished deliveries are kept.
    #[arg(long, env = "PATCHBAY_WEBHOOK_RETENTION", default_value = "7d", value_parser = parse_duration)]
    webhook_retention: Duration,
}

/// The network policy and the readable local directories of connection tests.
fn probe_policy(args: &ServeArgs) -> anyhow::Result<patchbay_probe::Policy> {
    let mut policy = patchbay_probe::Policy::parse(&args.network_allow, &args.network_deny)
        .map_err(|e| anyhow::anyhow!("network policy: {e}"))?;
    for root in std::env::split_paths(&args.probe_file_roots) {
        if !root.as_os_str().is_empty() {
            policy = policy.file_root(root).map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    Ok(policy)
}

/// `10.0.0.0/8, 192.168.1.10, fd00::/8`.
fn parse_cidrs(s: &str) -> Result<Vec<patchbay_probe::guard::Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            patchbay_probe::guard::Cidr::parse(e)
                .ok_or_else(|| format!("`{e}` is not an address or CIDR block"))
        })
        .collect()
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
    let policy = probe_policy(&args)?;
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
                policy,
                deadline: args.test_deadline.min(patchbay_probe::MAX_DEADLINE),
                per_minute: args.tests_per_minute,
                agent_poll: args
                    .agent_poll
                    .clamp(Duration::from_millis(500), Duration::from_secs(60)),
                ..Default::default()
            },
            trusted_proxies: parse_cidrs(&args.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("trusted proxies: {e}"))?,
            events: webhook_settings(&args.webhooks),
            provision_dir: args.provision,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(patchbay_server::serve(config))?;
    Ok(())
}

fn webhook_settings(args: &WebhookArgs) -> patchbay_server::service::events::EventSettings {
    patchbay_server::service::events::EventSettings {
        poll_interval: args.webhook_poll.max(Duration::from_millis(10)),
        timeout: args.webhook_timeout.max(Duration::from_millis(100)),
        max_attempts: args.webhook_max_attempts.max(1),
        backoff_base: args.webhook_backoff,
        backoff_max: args.webhook_backoff_max.max(args.webhook_backoff),
        lease: args
            .webhook_lease
            .max(args.webhook_timeout + Duration::from_secs(1)),
        retention: args.webhook_retention,
    }
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
        Command::Agent(args) => match cli::agent::run(args, cli.global.token) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("patchbay agent: {e:#}");
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
    fn serve_takes_probe_file_roots_and_trusted_proxies() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "patchbay",
            "serve",
            "--probe-file-roots",
            "/srv/duckdb:/data/lake",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.1",
        ])
        .unwrap();
        let super::Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let policy = super::probe_policy(&args).unwrap();
        assert_eq!(
            policy.file_roots(),
            [
                std::path::PathBuf::from("/srv/duckdb"),
                std::path::PathBuf::from("/data/lake")
            ]
        );
        assert_eq!(super::parse_cidrs(&args.trusted_proxies).unwrap().len(), 2);
        assert!(super::parse_cidrs("10.0.0.0/99").is_err());
        let relative =
            super::Cli::try_parse_from(["patchbay", "serve", "--probe-file-roots", "data"])
                .unwrap();
        let super::Command::Serve(args) = relative.command else {
            panic!("not serve")
        };
        assert!(super::probe_policy(&args).is_err());
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
