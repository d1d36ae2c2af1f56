//! `moat serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use moat_server::Server;

use crate::config::ConfigFile;

/// Flags of `moat serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (moat.toml). Without it, the embedded defaults are used.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let settings = match args.config.as_ref() {
        Some(path) => file
            .validate()
            .with_context(|| format!("config file {}", path.display()))?,
        None => file.validate()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(settings.server).await?;
        for (name, addr) in server.local_addrs() {
            println!("moat: listener {name} on mqtt://{addr}");
        }
        server.run(shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
