//! Test connection: runs a connector type's probe against the target a connection
//! describes and reports what happened stage by stage (resolve, dns, tcp, tls, auth, query,
//! permissions) with a stable error class and an actionable hint.
//!
//! Every socket a probe opens goes through the [`guard::NetworkGuard`]: the host is
//! normalised, resolved once, every address checked, and the probe connects only to the
//! checked addresses. One deadline covers the whole test.
//!
//! Families, one module each (protocols written by hand so each step maps to one stage):
//! `postgres`, `mysql`, `redis`, `http` (the catalog's declared HTTP check), `amqp`,
//! `nats`, `mqtt`, `smtp`, `kafka`, `ldap`, `ftp`, `aws` (s3 and athena over
//! `signed_http`; also kinesis), `logsink` (syslog, gelf, logback: send-only), `gcp` (gcs, bigquery:
//! service-account JWT exchange), `azure` (azure_blob: SharedKey or SAS), `salesforce`
//! (an OAuth exchange before the declared HTTP check), `snmp` (UDP, v2c and v3 USM), `stomp`
//! (activemq), `ssh` (sftp, ssh_exec), `snowflake` and `clickhouse` (over `plain_http`),
//! `sqlserver` (TDS), `mongodb` (OP_MSG), `cassandra` (CQL v4), `pulsar`, `jdbc` (delegates to
//! the URL's family), `oracle` (TNS CONNECT only; no O5LOGON),
//! `duckdb` (a local file under an allowed directory: its header). Other probe kinds answer
//! `not_implemented` — said, not faked.

mod amqp;
mod aws;
mod azure;
mod cassandra;
mod clickhouse;
mod duckdb;
mod ftp;
mod gcp;
pub mod guard;
mod http;
mod jdbc;
mod kafka;
mod ldap;
mod logsink;
mod mongodb;
mod mqtt;
mod mysql;
mod nats;
mod net;
mod oracle;
mod plain_http;
mod postgres;
mod pulsar;
mod redis;
mod result;
mod salesforce;
mod scram;
mod signed_http;
mod smtp;
mod snmp;
mod snowflake;
mod sqlserver;
mod ssh;
mod stomp;
pub mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use patchbay_core::schema::ConnectorType;
use patchbay_crypto::SecretString;
use serde_json::{Map, Value};

pub use guard::{NetworkGuard, Policy};
pub use result::{
    ErrorClass, Failure, ProbeError, ProbeResult, ProbeStage, ServerInfo, StageReport, StageStatus,
};

use result::Run;

/// The deadline when the caller names none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// No type may ask for more.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// Probe kinds with a probe; the others answer `not_implemented`.
pub const IMPLEMENTED_KINDS: &[&str] = &[
    "postgres",
    "redis",
    "http",
    "mysql",
    "amqp",
    "nats",
    "mqtt",
    "smtp",
    "kafka",
    "ldap",
    "ftp",
    "s3",
    "athena",
    "syslog",
    "gelf",
    "logback",
    "gcs",
    "bigquery",
    "azure_blob",
    "snmp",
    "stomp",
    "kinesis",
    "sftp",
    "ssh_exec",
    "snowflake",
    "sqlserver",
    "mongodb",
    "clickhouse",
    "jdbc",
    "cassandra",
    "pulsar",
    "oracle",
    "duckdb",
];

/// What a probe reads: the type, its settings and its (decrypted) secrets.
pub struct Target<'a> {
    pub ty: &'a ConnectorType,
    pub settings: &'a Map<String, Value>,
    pub secrets: &'a BTreeMap<String, SecretString>,
}

impl Target<'_> {
    /// A setting, else the schema's default.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.settings
            .get(name)
            .filter(|v| !v.is_null())
            .or_else(|| {
                self.ty
                    .settings
                    .properties
                    .get(name)
                    .and_then(|f| f.default.as_ref())
            })
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.value(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.value(name).and_then(Value::as_i64)
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.value(name).and_then(Value::as_bool)
    }

    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets
            .get(name)
            .filter(|s| !s.expose_secret().is_empty())
    }

    pub fn port(&self, name: &str) -> Result<u16, Failure> {
        match self.int(name) {
            Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                Failure::new(ErrorClass::InvalidSettings, "the port must be 1–65535")
            }),
            None => Err(Failure::new(ErrorClass::InvalidSettings, "no port is set")),
        }
    }

    pub fn required_str(&self, name: &str) -> Result<&str, Failure> {
        self.str(name).ok_or_else(|| {
            Failure::new(
                ErrorClass::InvalidSettings,
                format!("the setting `{name}` is required to test this connection"),
            )
        })
    }
}

/// Runs the type's probe. `deadline` is clamped to [`MAX_DEADLINE`]; the answer comes
/// within it (plus scheduling slack) whatever the target does.
pub async fn probe(
    ty: &ConnectorType,
    settings: &Map<String, Value>,
    secrets: &BTreeMap<String, SecretString>,
    guard: &NetworkGuard,
    deadline: Duration,
) -> ProbeResult {
    let target = Target {
        ty,
        settings,
        secrets,
    };
    let budget = deadline.min(MAX_DEADLINE);
    match ty.probe.kind.as_str() {
        "postgres" => postgres::probe(&target, guard, budget).await,
        "redis" => redis::probe(&target, guard, budget).await,
        "http" => http::probe(&target, guard, budget).await,
        "mysql" => mysql::probe(&target, guard, budget).await,
        "amqp" => amqp::probe(&target, guard, budget).await,
        "nats" => nats::probe(&target, guard, budget).await,
        "mqtt" => mqtt::probe(&target, guard, budget).await,
        "smtp" => smtp::probe(&target, guard, budget).await,
        "kafka" => kafka::probe(&target, guard, budget).await,
        "ldap" => ldap::probe(&target, guard, budget).await,
        "ftp" => ftp::probe(&target, guard, budget).await,
        "s3" => aws::probe_s3(&target, guard, budget).await,
        "athena" => aws::probe_athena(&target, guard, budget).await,
        "syslog" => logsink::probe(&target, guard, budget, logsink::Kind::Syslog).await,
        "gelf" => logsink::probe(&target, guard, budget, logsink::Kind::Gelf).await,
        "logback" => logsink::probe(&target, guard, budget, logsink::Kind::Logback).await,
        "gcs" => gcp::probe(&target, guard, budget, gcp::Kind::Gcs).await,
        "bigquery" => gcp::probe(&target, guard, budget, gcp::Kind::BigQuery).await,
        "azure_blob" => azure::probe(&target, guard, budget).await,
        "snmp" => snmp::probe(&target, guard, budget).await,
        "stomp" => stomp::probe(&target, guard, budget).await,
        "kinesis" => aws::probe_kinesis(&target, guard, budget).await,
        "sftp" => ssh::probe(&target, guard, budget, ssh::Kind::Sftp).await,
        "ssh_exec" => ssh::probe(&target, guard, budget, ssh::Kind::Exec).await,
        "snowflake" => snowflake::probe(&target, guard, budget).await,
        "sqlserver" => sqlserver::probe(&target, guard, budget).await,
        "mongodb" => mongodb::probe(&target, guard, budget).await,
        "clickhouse" => clickhouse::probe(&target, guard, budget).await,
        "jdbc" => jdbc::probe(&target, guard, budget).await,
        "cassandra" => cassandra::probe(&target, guard, budget).await,
        "pulsar" => pulsar::probe(&target, guard, budget).await,
        "oracle" => oracle::probe(&target, guard, budget).await,
        "duckdb" => duckdb::probe(&target, guard, budget).await,
        other => {
            let mut run = Run::new(budget, &[]);
            run.fail(
                ProbeStage::Resolve,
                Failure::new(
                    ErrorClass::NotImplemented,
                    format!("testing is not implemented yet for probe kind `{other}`"),
                )
                .hint("the connection was not contacted; check it with the vendor's own client for now"),
            );
            run.finish()
        }
    }
}
