//! `moat cert ...`: the certificate toolkit's CLI over moat-pki.

use std::process::ExitCode;

/// Flags of `moat cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {}

/// Runs `moat cert`.
pub(crate) fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("moat cert is not built yet")
}
