//! `moat user ...`: the password file.

use std::process::ExitCode;

/// Flags of `moat user`.
#[derive(Debug, clap::Args)]
pub(crate) struct UserArgs {}

/// Runs `moat user`.
pub(crate) fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat user is not built yet")
}
