//! `patchbay keys …`: key status and rotations (master key, workspace data key).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use super::client::{enc, ApiFailure};
use super::{output, Ctx};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Master key, data keys per workspace (with how many secrets each protects) and
    /// unfinished rotations.
    Status,
    /// Re-wrap every data key under a new master key (key-file source; instance:admin).
    RotateMaster {
        /// Return once the rotation has started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Re-encrypt every secret of --workspace under a new data key, online; the old data
    /// key is destroyed when no secret names it (workspace:admin).
    RotateData {
        /// Return once the rotation has started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn run(cmd: KeysCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        KeysCommand::Status => {
            let v = ctx.client.get("/api/v1/keys").await?;
            if !matches!(ctx.g.output, output::Format::Table) {
                output::print(ctx.g.output, &v, None, &[]);
                return Ok(());
            }
            let m = &v["master_key"];
            println!(
                "MASTER KEY  {} (source: {}; loaded: {})",
                s(&m["id"]),
                s(&m["source"]),
                m["loaded"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
            let mut rows = vec![];
            for w in v["workspaces"].as_array().into_iter().flatten() {
                for k in w["data_keys"].as_array().into_iter().flatten() {
                    let mut row = k.clone();
                    row["workspace"] = w["workspace"].clone();
                    rows.push(row);
                }
            }
            println!();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[
                    ("WORKSPACE", "/workspace"),
                    ("DATA KEY", "/id"),
                    ("STATE", "/state"),
                    ("SECRETS", "/ciphertexts"),
                    ("MASTER KEY", "/kek_id"),
                    ("CREATED", "/created_at"),
                ],
            );
            let rotations = v["rotations"].as_array().cloned().unwrap_or_default();
            if !rotations.is_empty() {
                println!();
                output::print(
                    ctx.g.output,
                    &v,
                    Some(&rotations),
                    &[
                        ("ROTATION", "/id"),
                        ("KIND", "/kind"),
                        ("STATE", "/state"),
                        ("DONE", "/done"),
                        ("TOTAL", "/total"),
                        ("ERROR", "/error"),
                    ],
                );
            }
            Ok(())
        }
        KeysCommand::RotateMaster { no_wait } => {
            let r = post(&ctx, "/api/v1/keys/rotate-master").await?;
            follow(&ctx, r, no_wait).await
        }
        KeysCommand::RotateData { no_wait } => {
            let ws = ctx.workspace_id().await?;
            let r = post(
                &ctx,
                &format!("/api/v1/workspaces/{}/keys/rotate-data", enc(&ws)),
            )
            .await?;
            follow(&ctx, r, no_wait).await
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

async fn post(ctx: &Ctx, path: &str) -> Result<Value, ApiFailure> {
    Ok(ctx
        .client
        .call(reqwest::Method::POST, path, None, &[])
        .await?
        .body)
}

/// Polls the rotation until it is done or failed, drawing progress on stderr: a bar when
/// stderr is a terminal, otherwise a line per 10%.
async fn follow(ctx: &Ctx, mut r: Value, no_wait: bool) -> Result<(), ApiFailure> {
    let id = s(&r["id"]);
    if no_wait {
        output::print(ctx.g.output, &r, None, &[]);
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let mut last_decile = -1i64;
    loop {
        let (done, total) = (
            r["done"].as_i64().unwrap_or(0),
            r["total"].as_i64().unwrap_or(0),
        );
        let frac = if total > 0 {
            (done as f64 / total as f64).min(1.0)
        } else {
            1.0
        };
        let mut err = std::io::stderr();
        if tty {
            let filled = (frac * 30.0).round() as usize;
            let _ = write!(
                err,
                "\r[{}{}] {done}/{total} {}",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                s(&r["kind"])
            );
            let _ = err.flush();
        } else {
            let decile = (frac * 10.0).floor() as i64;
            if decile > last_decile {
                last_decile = decile;
                let _ = writeln!(err, "{}: {done}/{total} ({}%)", s(&r["kind"]), decile * 10);
            }
        }
        match r["state"].as_str() {
            Some("done") => {
                if tty {
                    let _ = writeln!(err);
                }
                output::print(ctx.g.output, &r, None, &[]);
                return Ok(());
            }
            Some("failed") => {
                if tty {
                    let _ = writeln!(err);
                }
                return Err(ApiFailure {
                    code: "rotation_failed".into(),
                    message: format!("rotation {id} failed: {}", s(&r["error"])),
                    field: None,
                });
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        r = ctx
            .client
            .get(&format!("/api/v1/keys/rotations/{}", enc(&id)))
            .await?;
    }
}
