//! `moat pub` and `moat sub`.

use std::process::ExitCode;

/// Flags of `moat pub`.
#[derive(Debug, clap::Args)]
pub(crate) struct PubArgs {}

/// Flags of `moat sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubArgs {}

/// Runs `moat pub`.
pub(crate) fn run_pub(args: PubArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat pub is not built yet")
}

/// Runs `moat sub`.
pub(crate) fn run_sub(args: SubArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat sub is not built yet")
}
