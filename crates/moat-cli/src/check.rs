//! `moat check URL`: diagnose a TLS/MQTT connection step by step.

use std::process::ExitCode;

/// Flags of `moat check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {}

/// Runs `moat check`.
pub(crate) fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat check is not built yet")
}
