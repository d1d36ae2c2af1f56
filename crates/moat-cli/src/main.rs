//! `moat`: the broker, its certificate toolkit and its client tools in one binary.
//!
//! This crate is the CLI definition and glue: it parses flags, reads configuration, installs the
//! tracing subscriber and turns errors into exit codes (0 ok, 1 a problem found, 2 usage or I/O).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin_client;
mod bench;
mod cert;
mod check;
mod firstrun;
mod forward;
mod pubsub;
mod serve;
mod user;

#[derive(Debug, Parser)]
#[command(
    name = "moat",
    version,
    about = "A secure-by-default MQTT broker with its own certificate toolkit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Create, inspect, verify and lint certificates.
    Cert(cert::CertArgs),
    /// Manage the password file.
    User(user::UserArgs),
    /// Publish messages (like mosquitto_pub).
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages (like mosquitto_sub).
    Sub(pubsub::SubArgs),
    /// Diagnose a connection to a broker step by step.
    Check(check::CheckArgs),
    /// Generate load against a broker and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Show the running broker's forwarding rules, sinks and spools.
    Forward(forward::ForwardArgs),
}

/// How `moat serve` writes its log lines (`--log-format`, else `MOAT_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text per event; coloured only on a terminal (and without `NO_COLOR`).
    Text,
    /// One JSON object per line, never coloured.
    Json,
}

/// The log format: the flag, else `MOAT_LOG_FORMAT` (`text` or `json`), else text.
fn log_format(flag: Option<LogFormat>) -> anyhow::Result<LogFormat> {
    if let Some(f) = flag {
        return Ok(f);
    }
    match std::env::var("MOAT_LOG_FORMAT").as_deref() {
        Err(_) | Ok("") => Ok(LogFormat::Text),
        Ok(v) => <LogFormat as clap::ValueEnum>::from_str(v, true).map_err(|_| {
            anyhow::anyhow!("MOAT_LOG_FORMAT: {v:?} is not one of \"text\", \"json\"")
        }),
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `moat=info`. Colours only when stderr is
/// a terminal and `NO_COLOR` is unset or empty: log files and pipes get plain text.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("moat=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut json_logs = false;
    let result = match cli.command {
        Command::Serve(args) => match log_format(args.log_format) {
            Ok(format) => {
                init_tracing(format);
                json_logs = format == LogFormat::Json;
                serve::run(args)
            }
            Err(e) => Err(e),
        },
        Command::Cert(args) => cert::run(args),
        Command::User(args) => user::run(args),
        Command::Pub(args) => pubsub::run_pub(args),
        Command::Sub(args) => pubsub::run_sub(args),
        Command::Check(args) => check::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Forward(args) => forward::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if json_logs {
                // Every line of a JSON log stays JSON.
                tracing::error!(error = %format!("{e:#}"), "moat: error");
            } else {
                eprintln!("moat: error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}
