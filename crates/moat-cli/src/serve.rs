//! `moat serve`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use moat_server::config_file::Settings;
use moat_server::{ListenerKind, Server};

use crate::firstrun;

/// Flags of `moat serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (moat.toml). Without it, the embedded defaults are used: a
    /// local CA and server certificate under ./moat-data/pki, a loopback tcp listener, and tls
    /// (8883) and wss (8084) listeners.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print the effective configuration (defaults included) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log lines as text (coloured only on a terminal) or one JSON object per line. Default:
    /// the environment variable MOAT_LOG_FORMAT, else text.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<crate::LogFormat>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut guidance = None;
    let settings = match &args.config {
        // Relative paths in the file are relative to the file's folder; errors name the file.
        Some(path) => Settings::load(path)?,
        None => {
            let data_dir = PathBuf::from("moat-data");
            if !args.print_config {
                let pki = firstrun::ensure_pki(&data_dir)
                    .with_context(|| format!("cannot prepare {}", data_dir.display()))?;
                guidance = Some(firstrun::guidance(&pki, &data_dir));
            }
            firstrun::default_config(&data_dir).validate()?
        }
    };
    if args.print_config {
        let base = &settings.base_dir;
        if !base.as_os_str().is_empty() && base != Path::new(".") {
            println!("# relative paths are relative to {}", base.display());
        }
        print!("{}", settings.effective().to_toml_string()?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
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
        if let Some(text) = &guidance {
            print!("{text}");
        }
        spawn_sighup(server.reload_trigger());
        server.run(shutdown).await?;
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

/// SIGINT or SIGTERM. The handlers are installed now (call it inside the runtime), not when
/// the future is first polled: a signal that comes right after the listener lines are printed
/// must stop the broker gracefully, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (int, term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => {}
                () = wait(term) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
