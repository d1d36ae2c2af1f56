//! `moat`: the broker, its certificate toolkit and its client tools in one binary.
//!
//! This crate is the CLI definition and glue: it parses flags, reads configuration, installs the
//! tracing subscriber and turns errors into exit codes (0 ok, 1 a problem found, 2 usage or I/O).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cert;

#[derive(Debug, Parser)]
#[command(name = "moat", version, about = "A secure-by-default MQTT broker with its own certificate toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, verify and lint certificates.
    Cert(cert::CertArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Cert(args) => cert::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
