//! `moat bench`: a bounded load generator.

use std::process::ExitCode;

/// Flags of `moat bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

/// Runs `moat bench`.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat bench is not built yet")
}
