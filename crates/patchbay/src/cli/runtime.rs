//! Run time on the client side: `patchbay exec` (run a command with connections resolved into
//! its environment) and `patchbay env` (print a connection's variables). Both resolve through
//! `POST …/resolve` with `format: env`, so each call is one audited resolve.
//!
//! `exec` never prints or writes a secret: values go from the response straight into the
//! child's environment. The child does not inherit PATCHBAY_TOKEN (it is the runner's, not
//! the job's).

use std::collections::BTreeMap;
use std::process::ExitCode;

use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, ApiFailure};
use super::connections::usage_error;
use super::{looks_like_id, Ctx, Global};

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Connection name (in --project) or id; repeatable. Product variables (PGHOST…) come
    /// from the first connection that sets them; PATCHBAY_<NAME>_<FIELD> from each.
    #[arg(short = 'c', long = "connection", required = true, value_name = "NAME")]
    connections: Vec<String>,
    /// The orchestrator's run id, recorded with each resolve.
    #[arg(long, env = "PATCHBAY_RUN_ID")]
    run_id: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EnvFormat {
    Dotenv,
    Json,
}

#[derive(clap::Args)]
pub struct EnvArgs {
    /// Connection name (in --project) or id; repeatable.
    #[arg(short = 'c', long = "connection", required = true, value_name = "NAME")]
    connections: Vec<String>,
    /// Output: dotenv (KEY='value' lines) or json.
    #[arg(long, value_enum, default_value = "dotenv")]
    format: EnvFormat,
    /// Print secret values; without it they are masked as ********.
    #[arg(long)]
    reveal: bool,
    /// The orchestrator's run id, recorded with each resolve.
    #[arg(long, env = "PATCHBAY_RUN_ID")]
    run_id: Option<String>,
}

const MASK: &str = "********";

/// Whether --workspace / PATCHBAY_WORKSPACE was given (else its default is only a guess: a
/// runner token's workspace need not be called `default`).
fn workspace_given() -> bool {
    std::env::var_os("PATCHBAY_WORKSPACE").is_some()
        || std::env::args().any(|a| a == "--workspace" || a.starts_with("--workspace="))
}

/// One resolved connection in the `env` format.
struct Resolved {
    name: String,
    prefix: String,
    vars: BTreeMap<String, String>,
    secret: Vec<String>,
}

async fn resolve_env(
    ctx: &Ctx,
    wanted: &str,
    run_id: Option<&str>,
) -> Result<Resolved, ApiFailure> {
    let body = json!({"format": "env", "run_id": run_id});
    let call = |path: String| {
        let body = body.clone();
        async move {
            ctx.client
                .call(Method::POST, &path, Some(&body), &[])
                .await
                .map(|r| r.body)
        }
    };
    let v = if looks_like_id(wanted) {
        call(format!("/api/v1/connections/{}/resolve", enc(wanted))).await?
    } else {
        let base = format!(
            "/api/v1/projects/{}/connections/by-name/{}/resolve",
            enc(&ctx.g.project),
            enc(wanted)
        );
        let with_ws = format!("{base}?workspace={}", enc(&ctx.g.workspace));
        if workspace_given() {
            call(with_ws).await?
        } else {
            match call(base).await {
                // The project name is in several workspaces the token sees: take --workspace's
                // default.
                Err(e) if e.field.as_deref() == Some("workspace") => call(with_ws).await?,
                other => other?,
            }
        }
    };
    let vars = v["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let secret = v["secret_variables"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Resolved {
        name: v["connection"]["name"]
            .as_str()
            .unwrap_or(wanted)
            .to_owned(),
        prefix: v["prefix"].as_str().unwrap_or("PATCHBAY_").to_owned(),
        vars,
        secret,
    })
}

/// The environment of several connections: generic variables from each (a clash between
/// two connections is an error), product variables from the first that sets them.
fn merge(all: &[Resolved]) -> Result<(BTreeMap<String, String>, Vec<String>), ApiFailure> {
    let mut env = BTreeMap::new();
    let mut secret = vec![];
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for r in all {
        for (k, v) in &r.vars {
            let generic = k.starts_with(&r.prefix);
            if let Some(first) = owner.get(k.as_str()) {
                if generic {
                    return Err(usage_error(format!(
                        "connections {first} and {} both set {k}; their names map to the same PATCHBAY_<NAME>_ prefix",
                        r.name
                    )));
                }
                // Product convention: the first connection keeps it.
                continue;
            }
            owner.insert(k.clone(), &r.name);
            env.insert(k.clone(), v.clone());
            if r.secret.contains(k) {
                secret.push(k.clone());
            }
        }
    }
    Ok((env, secret))
}

async fn resolve_all(
    ctx: &Ctx,
    names: &[String],
    run_id: Option<&str>,
) -> Result<(BTreeMap<String, String>, Vec<String>), ApiFailure> {
    let mut all = vec![];
    for n in names {
        all.push(resolve_env(ctx, n, run_id).await?);
    }
    merge(&all)
}

/// `patchbay env`: the variables as dotenv lines or a JSON object.
pub async fn env(args: EnvArgs, ctx: Ctx) -> Result<(), ApiFailure> {
    let (mut env, secret) = resolve_all(&ctx, &args.connections, args.run_id.as_deref()).await?;
    if !args.reveal {
        for k in &secret {
            env.insert(k.clone(), MASK.into());
        }
    }
    match args.format {
        EnvFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(
                env.into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect()
            ))
            .unwrap_or_default()
        ),
        EnvFormat::Dotenv => {
            for (k, v) in env {
                println!("{k}={}", dotenv_quote(&v));
            }
        }
    }
    Ok(())
}

/// A dotenv value in single quotes (no interpolation), `'` written as `'\''` so the file
/// also sources in a POSIX shell.
fn dotenv_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// `patchbay exec`: resolves, then runs CMD with the variables added, stdio inherited, and
/// exits with CMD's code (128+n when a signal ended it). Signals patchbay receives are
/// passed on to CMD.
pub fn exec(args: ExecArgs, g: Global) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ctx = Ctx::new(g);
    let env = match rt.block_on(resolve_all(&ctx, &args.connections, args.run_id.as_deref())) {
        Ok((env, _)) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (program, rest) = args
        .command
        .split_first()
        .expect("clap requires the command");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .env_remove("PATCHBAY_TOKEN")
        .envs(env)
        .kill_on_drop(false);
    let code = rt.block_on(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: could not run {program}: {e}");
                // As a shell does: 127 not found, 126 not executable.
                return if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
            }
        };
        wait_forwarding_signals(&mut child).await
    });
    ExitCode::from(code)
}

#[cfg(unix)]
async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{signal, SignalKind};

    if let Some(pid) = child.id() {
        for kind in [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ] {
            // Catching the signal also keeps patchbay alive until the command ends.
            if let Ok(mut stream) = signal(kind) {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        // SAFETY: kill(2) with the child's pid and a valid signal number.
                        unsafe { libc::kill(pid as libc::pid_t, kind.as_raw_value()) };
                    }
                });
            }
        }
    }
    match child.wait().await {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c.clamp(0, 255) as u8,
            (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
            _ => 1,
        },
        Err(e) => {
            eprintln!("error: waiting for the command: {e}");
            1
        }
    }
}

#[cfg(not(unix))]
async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> u8 {
    match child.wait().await {
        Ok(s) => s.code().unwrap_or(1).clamp(0, 255) as u8,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, vars: &[(&str, &str)]) -> Resolved {
        Resolved {
            name: name.into(),
            prefix: format!("PATCHBAY_{}_", name.to_uppercase()),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            secret: vec!["PGPASSWORD".into()],
        }
    }

    #[test]
    fn product_variables_come_from_the_first_connection_generic_ones_from_each() {
        let (env, secret) = merge(&[
            r("A", &[("PGHOST", "a"), ("PATCHBAY_A_HOST", "a")]),
            r("B", &[("PGHOST", "b"), ("PATCHBAY_B_HOST", "b")]),
        ])
        .unwrap();
        assert_eq!(env["PGHOST"], "a");
        assert_eq!(env["PATCHBAY_A_HOST"], "a");
        assert_eq!(env["PATCHBAY_B_HOST"], "b");
        assert!(secret.is_empty());
        let clash = merge(&[
            r("A", &[("PATCHBAY_A_HOST", "a")]),
            r("A", &[("PATCHBAY_A_HOST", "b")]),
        ]);
        assert!(clash.is_err());
    }

    #[test]
    fn dotenv_values_are_single_quoted() {
        assert_eq!(dotenv_quote("a'b $X"), "'a'\\''b $X'");
    }
}
