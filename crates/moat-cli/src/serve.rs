//! `moat serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use moat_server::{ListenerKind, Server};

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
        let kinds: Vec<_> = settings
            .server
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.kind, l.path.clone()))
            .collect();
        let server = Server::bind(settings.server).await?;
        for (name, addr) in server.local_addrs() {
            let (scheme, path) = match kinds.iter().find(|k| k.0 == name) {
                Some((_, ListenerKind::Tls, _)) => ("mqtts", String::new()),
                Some((_, ListenerKind::Ws, p)) => ("ws", p.clone()),
                Some((_, ListenerKind::Wss, p)) => ("wss", p.clone()),
                _ => ("mqtt", String::new()),
            };
            println!("moat: listener {name} on {scheme}://{addr}{path}");
        }
        spawn_sighup(server.reload_trigger());
        server.run(shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP re-reads TLS files at once (they are also polled for changes).
fn spawn_sighup(trigger: std::sync::Arc<tokio::sync::Notify>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            trigger.notify_waiters();
        }
    });
    #[cfg(not(unix))]
    let _ = trigger;
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
