//! `patchbay audit …`: a workspace's audit events, their export, and chain verification.

use clap::Subcommand;

use super::client::{enc, ApiFailure};
use super::{output, Ctx};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Events of --workspace, oldest first, or newest first with --newest-first (needs
    /// audit:read).
    List {
        /// Exact action, or a prefix ending in `.*` (connection.*).
        #[arg(long)]
        action: Option<String>,
        /// Exact actor, e.g. token:<id>.
        #[arg(long)]
        actor: Option<String>,
        /// Only events about this target id.
        #[arg(long)]
        target: Option<String>,
        /// RFC 3339 time: events at or after it.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time: events before it.
        #[arg(long)]
        until: Option<String>,
        /// At most this many events (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Newest first (`order=desc`): `--newest-first --limit 20` shows the last 20.
        #[arg(long)]
        newest_first: bool,
    },
    /// Every event of --workspace as JSON lines on stdout (`> audit.jsonl`).
    Export {
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Check the whole hash chain (instance:admin); exits non-zero when it is broken.
    Verify,
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("&{k}={}", enc(v))))
        .collect()
}

pub async fn run(cmd: AuditCommand, ctx: Ctx) -> Result<(), ApiFailure> {
    match cmd {
        AuditCommand::List {
            action,
            actor,
            target,
            since,
            until,
            limit,
            newest_first,
        } => {
            let ws = ctx.workspace_id().await?;
            let order = newest_first.then(|| "desc".to_owned());
            let q = query(&[
                ("order", &order),
                ("action", &action),
                ("actor", &actor),
                ("target_id", &target),
                ("since", &since),
                ("until", &until),
            ]);
            let v = ctx
                .client
                .get(&format!(
                    "/api/v1/workspaces/{}/audit?limit={limit}{q}",
                    enc(&ws)
                ))
                .await?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            output::print(
                ctx.g.output,
                &v,
                Some(&rows),
                &[
                    ("SEQ", "/seq"),
                    ("AT", "/at"),
                    ("ACTOR", "/actor"),
                    ("ACTION", "/action"),
                    ("OUTCOME", "/outcome"),
                    ("TARGET", "/target_id"),
                    ("SOURCE", "/source_address"),
                ],
            );
            if v["next_cursor"].is_string() {
                eprintln!(
                    "(more events: raise --limit, narrow with --since, or use `audit export`)"
                );
            }
            Ok(())
        }
        AuditCommand::Export {
            action,
            since,
            until,
        } => {
            let ws = ctx.workspace_id().await?;
            let q = query(&[("action", &action), ("since", &since), ("until", &until)]);
            let path = format!("/api/v1/workspaces/{}/audit?format=jsonl{q}", enc(&ws));
            let mut out = std::io::stdout().lock();
            ctx.client.download(&path, &mut out).await
        }
        AuditCommand::Verify => {
            let v = ctx.client.get("/api/v1/audit/verify").await?;
            if v["ok"] == true {
                println!(
                    "audit chain intact: {} events, head {} ({})",
                    v["count"],
                    v["head_seq"],
                    v["head_hash"].as_str().unwrap_or_default()
                );
                Ok(())
            } else {
                Err(ApiFailure {
                    code: "audit_chain_broken".into(),
                    message: format!(
                        "the audit chain is broken at seq {}: {}",
                        v["broken_seq"],
                        v["reason"].as_str().unwrap_or("unknown")
                    ),
                    field: None,
                })
            }
        }
    }
}
