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
    // Where the admin API writes configuration changes: the file given, or (on the embedded
    // defaults) moat-data/moat.toml, which later starts without --config then read.
    let (settings, config_path) = match &args.config {
        // Relative paths in the file are relative to the file's folder; errors name the file.
        Some(path) => (Settings::load(path)?, path.clone()),
        None => {
            let data_dir = PathBuf::from("moat-data");
            let written = data_dir.join("moat.toml");
            if !args.print_config {
                let pki = firstrun::ensure_pki(&data_dir)
                    .with_context(|| format!("cannot prepare {}", data_dir.display()))?;
                firstrun::ensure_acl(&data_dir)
                    .with_context(|| format!("cannot prepare {}", data_dir.display()))?;
                guidance = Some(firstrun::guidance(&pki, &data_dir));
            }
            if written.exists() {
                // The console changed the defaults: the first run's guidance (its CA, its
                // certificate) may no longer be what is served.
                guidance = None;
                if !args.print_config {
                    println!(
                        "moat: using {} (the embedded defaults as changed in the admin console)",
                        written.display()
                    );
                }
                (Settings::load(&written)?, written)
            } else {
                let mut settings = firstrun::default_config(&data_dir).validate()?;
                // Paths in a file written to moat-data/ are relative to moat-data/.
                settings.base_dir = data_dir.clone();
                (settings, written)
            }
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
        .worker_threads(settings.worker_threads)
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
        let admin_settings = settings.admin.clone();
        let admin_files = (
            admin_settings.token_file.clone(),
            admin_settings.viewer_token_file.clone(),
            admin_settings.audit_log.clone(),
        );
        let admin_config = moat_admin::AdminConfig {
            password_file: settings.server.auth.password_file.clone(),
            acl_file: settings.server.auth.acl_file.clone(),
            settings: admin_settings,
            config: moat_admin::ConfigTarget {
                path: config_path,
                settings: settings.clone(),
            },
        };
        // The sinks are opened (not connected: an unreachable backend is retried while the
        // spool keeps the messages) before anything listens.
        let sinks = settings.forward_rules()?;
        let mut server = Server::bind(settings.server).await?;
        for rule in sinks {
            let sink = rule.open();
            println!("moat: forwarding rule {} to {}", rule.name, sink.describe());
            server.attach_sink(&rule.name, sink)?;
        }
        let admin = if admin_config.settings.enabled {
            Some(moat_admin::Admin::bind(admin_config, server.handle()).await?)
        } else {
            None
        };
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
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(admin) = admin {
            let scheme = if admin.is_tls() { "https" } else { "http" };
            println!(
                "moat: admin API and console on {scheme}://{}/ (admin token in {}, viewer token in {}; the audit log is {})",
                admin.local_addr()?,
                admin_files.0.display(),
                admin_files.1.display(),
                admin_files.2.display(),
            );
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(e) = admin.run(stopped).await {
                    tracing::error!(error = %e, "the admin API stopped");
                }
            });
        }
        spawn_sighup(server.reload_trigger());
        let result = server.run(shutdown).await;
        stop.cancel();
        result?;
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
