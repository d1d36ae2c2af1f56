//! `moat forward`: the running broker's forwarding rules, their sinks and spools.

use std::process::ExitCode;

use anyhow::Context;

use crate::admin_client::{AdminArgs, AdminClient};

#[derive(Debug, clap::Args)]
pub(crate) struct ForwardArgs {
    #[command(subcommand)]
    command: ForwardCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ForwardCommand {
    /// Each rule's sink state and spool, from the running broker's admin API.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the broker's JSON as it is.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ForwardCommand::Status(a) => status(&a),
    }
}

/// Exit code 0 when every sink is up (or has not written yet), 1 when one is down or a spool
/// is full: usable from a health check.
fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&a.admin)?;
    let (url, body) = client.get("/api/v1/forward")?;
    let rules: Vec<serde_json::Value> =
        serde_json::from_str(&body).with_context(|| format!("{url}: not the expected JSON"))?;
    let trouble = rules
        .iter()
        .any(|r| r["state"] == "down" || r["full"] == true);
    if a.json {
        println!("{body}");
    } else if rules.is_empty() {
        println!("(no forwarding rule: add [[forward.rules]] to moat.toml)");
    } else {
        for r in &rules {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let filters: Vec<String> = r["filters"]
                .as_array()
                .map(|f| f.iter().map(text).collect())
                .unwrap_or_default();
            println!(
                "{}  {}  sink {} ({})",
                text(&r["rule"]),
                filters.join(" "),
                text(&r["state"]),
                text(&r["sink"])
            );
            println!(
                "  spooled {} ({} bytes, oldest {} s){}  forwarded {}  retries {}  dropped qos0 {}",
                n(&r["spooled"]),
                n(&r["spooled_bytes"]),
                n(&r["oldest_age_seconds"]),
                if r["full"] == true {
                    "  FULL: publishers slowed"
                } else {
                    ""
                },
                n(&r["forwarded"]),
                n(&r["retries"]),
                n(&r["dropped_qos0"]),
            );
        }
    }
    Ok(if trouble {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
