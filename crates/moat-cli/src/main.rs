//! `moat`: the broker, its certificate toolkit and its client tools in one binary.
//!
//! This crate is the CLI definition and glue: it parses flags, reads configuration, installs the
//! tracing subscriber and turns errors into exit codes (0 ok, 1 a problem found, 2 usage or I/O).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cert;
mod check;
mod config;
mod firstrun;
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
}

/// Logs to stderr; `RUST_LOG` overrides the default `moat=info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("moat=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    let result = match cli.command {
        Command::Serve(args) => {
            init_tracing();
            serve::run(args)
        }
        Command::Cert(args) => cert::run(args),
        Command::User(args) => user::run(args),
        Command::Pub(args) => pubsub::run_pub(args),
        Command::Sub(args) => pubsub::run_sub(args),
        Command::Check(args) => check::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
