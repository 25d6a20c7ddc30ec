//! The generic JDBC type: the URL names the database family. PostgreSQL (and Redshift),
//! MySQL/MariaDB and SQL Server URLs are turned into that family's settings and tested by
//! its probe; any other subprotocol gets a TCP connection to the host and port the URL
//! names, with a warning that nothing above TCP was checked.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::net;
use crate::result::{ErrorClass, Failure, ProbeResult, ProbeStage as S, Run};
use crate::{mysql, postgres, sqlserver, NetworkGuard, Target};

/// What a JDBC URL says: the subprotocol, host, port, database and its parameters.
#[derive(Debug, PartialEq)]
struct JdbcUrl {
    subprotocol: String,
    host: String,
    port: Option<u16>,
    database: Option<String>,
    params: Vec<(String, String)>,
}

fn invalid(msg: &str) -> Failure {
    Failure::new(ErrorClass::InvalidSettings, msg.to_owned())
        .hint("e.g. jdbc:postgresql://db.internal:5432/finance")
}

fn host_port(authority: &str) -> Result<(String, Option<u16>), Failure> {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // The first host of a failover list.
    let first = authority.split(',').next().unwrap_or_default();
    let (host, port) = if let Some(rest) = first.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| invalid("the IPv6 address in the JDBC URL is not closed"))?;
        (h.to_owned(), tail.strip_prefix(':'))
    } else {
        match first.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (first.to_owned(), None),
        }
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("the port in the JDBC URL is not a number in 1–65535"))?,
        ),
        None => None,
    };
    // SQL Server's host\instance form.
    let host = host.split('\\').next().unwrap_or_default().to_owned();
    if host.is_empty() {
        return Err(invalid("the JDBC URL names no host"));
    }
    Ok((host, port))
}

fn parse(raw: &str) -> Result<JdbcUrl, Failure> {
    let rest = raw
        .trim()
        .strip_prefix("jdbc:")
        .ok_or_else(|| invalid("a JDBC URL starts with jdbc:"))?;
    let (subprotocol, tail) = rest
        .split_once(':')
        .ok_or_else(|| invalid("the JDBC URL has no subprotocol"))?;
    let subprotocol = subprotocol.to_ascii_lowercase();
    let mut params = Vec::new();
    let (authority, database) = if let Some(after) = tail.strip_prefix("//") {
        // jdbc:sub://host:port/db?k=v&k=v  or  jdbc:sqlserver://host:port;k=v;k=v
        let end = after.find(['/', '?', ';']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let mut database = None;
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('/') {
            let end = r.find(['?', ';']).unwrap_or(r.len());
            if end > 0 {
                database = Some(r[..end].to_owned());
            }
            rest = &r[end..];
        }
        for kv in rest.split(['?', '&', ';']).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            params.push((k.to_ascii_lowercase(), v.to_owned()));
        }
        (authority.to_owned(), database)
    } else if let Some(at) = tail.find('@') {
        // jdbc:oracle:thin:@host:port/service or @//host:port/service
        let after = tail[at + 1..].trim_start_matches('/');
        let end = after.find(['/', ':', '?']).map_or(after.len(), |i| {
            // Keep host:port together; cut at the service separator after the port.
            after[i + 1..]
                .find(['/', '?', ':'])
                .map_or(after.len(), |j| i + 1 + j)
        });
        (after[..end].to_owned(), None)
    } else {
        return Err(invalid("the JDBC URL names no host (expected //host:port)"));
    };
    let (host, port) = host_port(&authority)?;
    Ok(JdbcUrl {
        subprotocol,
        host,
        port,
        database,
        params,
    })
}

fn param<'a>(u: &'a JdbcUrl, names: &[&str]) -> Option<&'a str> {
    u.params
        .iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

/// The family probe and its settings, or None for a TCP-only check.
fn delegate(u: &JdbcUrl, t: &Target<'_>) -> Option<(&'static str, Map<String, Value>)> {
    let user = t
        .str("username")
        .map(str::to_owned)
        .or_else(|| param(u, &["user", "username"]).map(str::to_owned));
    let mut m = Map::new();
    m.insert("host".into(), json!(u.host));
    if let Some(user) = user {
        m.insert("username".into(), json!(user));
    }
    let family = match u.subprotocol.as_str() {
        "postgresql" | "postgres" | "redshift" | "pgsql" => {
            let default = if u.subprotocol == "redshift" {
                5439
            } else {
                5432
            };
            m.insert("port".into(), json!(u.port.unwrap_or(default)));
            m.insert(
                "database".into(),
                json!(u.database.clone().unwrap_or_else(|| "postgres".into())),
            );
            if let Some(mode) = param(u, &["sslmode"]) {
                m.insert("sslmode".into(), json!(mode));
            } else if param(u, &["ssl"]) == Some("true") {
                m.insert("sslmode".into(), json!("verify-full"));
            }
            "postgres"
        }
        "mysql" | "mariadb" => {
            m.insert("port".into(), json!(u.port.unwrap_or(3306)));
            if let Some(db) = &u.database {
                m.insert("database".into(), json!(db));
            }
            if let Some(mode) = param(u, &["sslmode"]) {
                m.insert("ssl_mode".into(), json!(mode.to_ascii_uppercase()));
            } else if param(u, &["usessl", "ssl"]) == Some("false") {
                m.insert("ssl_mode".into(), json!("DISABLED"));
            }
            "mysql"
        }
        "sqlserver" | "jtds" => {
            m.insert("port".into(), json!(u.port.unwrap_or(1433)));
            if let Some(db) = param(u, &["databasename", "database"]).or(u.database.as_deref()) {
                m.insert("database".into(), json!(db));
            }
            let encrypt = match param(u, &["encrypt"])
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("false") | Some("optional") | Some("no") => "optional",
                Some("strict") => "strict",
                _ => "mandatory",
            };
            m.insert("encrypt".into(), json!(encrypt));
            "sqlserver"
        }
        _ => return None,
    };
    Some((family, m))
}

fn default_port(subprotocol: &str) -> Option<u16> {
    Some(match subprotocol {
        "oracle" => 1521,
        "db2" | "as400" => 50000,
        "snowflake" => 443,
        "clickhouse" | "ch" => 8123,
        "h2" => 9092,
        "derby" => 1527,
        "informix-sqli" => 9088,
        "sap" => 30015,
        "teradata" => 1025,
        "vertica" => 5433,
        "trino" | "presto" => 8080,
        "hive2" => 10000,
        "firebirdsql" => 3050,
        _ => return None,
    })
}

pub async fn probe(t: &Target<'_>, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let parsed = t.required_str("jdbc_url").and_then(|raw| {
        let u = parse(raw)?;
        if param(&u, &["password"]).is_some() {
            return Err(Failure::new(
                ErrorClass::InvalidSettings,
                "the JDBC URL carries a password",
            )
            .hint("remove it from the URL and put it in the password field, which is stored encrypted"));
        }
        Ok(u)
    });
    let u = match parsed {
        Ok(u) => u,
        Err(f) => {
            let mut run = Run::new(budget, &[S::Resolve]);
            run.fail(S::Resolve, f);
            return run.finish();
        }
    };
    if let Some((family, settings)) = delegate(&u, t) {
        let inner = Target {
            ty: t.ty,
            settings: &settings,
            secrets: t.secrets,
        };
        let mut r = match family {
            "postgres" => postgres::probe(&inner, guard, budget).await,
            "mysql" => mysql::probe(&inner, guard, budget).await,
            _ => sqlserver::probe(&inner, guard, budget).await,
        };
        r.warnings.push(format!(
            "tested with patchbay's own {family} client from the jdbc:{} URL, not with the JDBC driver",
            u.subprotocol
        ));
        return r;
    }
    tcp_only(&u, guard, budget).await
}

async fn tcp_only(u: &JdbcUrl, guard: &NetworkGuard, budget: Duration) -> ProbeResult {
    let mut run = Run::new(budget, &[S::Resolve, S::Dns, S::Tcp]);
    let port = run
        .stage(S::Resolve, async {
            let port = u
                .port
                .or_else(|| default_port(&u.subprotocol))
                .ok_or_else(|| {
                    invalid("the JDBC URL names no port, and this subprotocol has no known default")
                })?;
            Ok((
                port,
                Some(format!("jdbc:{} at {}:{port}", u.subprotocol, u.host)),
            ))
        })
        .await;
    let Ok(port) = port else {
        return run.finish();
    };
    let Ok(checked) = run.stage(S::Dns, net::dns(guard, &u.host, port)).await else {
        return run.finish();
    };
    if run.stage(S::Tcp, net::tcp(&checked.addrs)).await.is_ok() {
        run.warn(format!(
            "only a TCP connection was tested: patchbay does not speak jdbc:{}'s protocol, so the login and the database were not checked",
            u.subprotocol
        ));
    }
    run.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_each_shape_parse() {
        let u = parse("jdbc:postgresql://db.internal:5433/finance?sslmode=require").unwrap();
        assert_eq!(
            (
                u.subprotocol.as_str(),
                u.host.as_str(),
                u.port,
                u.database.as_deref()
            ),
            ("postgresql", "db.internal", Some(5433), Some("finance"))
        );
        assert_eq!(u.params, vec![("sslmode".into(), "require".into())]);
        let u = parse("jdbc:sqlserver://sql1\\inst:1444;databaseName=pb;encrypt=false").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("sql1", Some(1444)));
        assert_eq!(param(&u, &["databasename"]), Some("pb"));
        let u = parse("jdbc:oracle:thin:@//ora.internal:1522/ORCLPDB1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("ora.internal", Some(1522)));
        let u = parse("jdbc:oracle:thin:@ora.internal:1521:ORCL").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("ora.internal", Some(1521)));
        let u = parse("jdbc:db2://[::1]:50001/SAMPLE").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(50001)));
        assert!(parse("postgresql://x/y").is_err());
    }
}
