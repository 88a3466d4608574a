//! Command-line entry points. Each command is a clap struct with `exec()`
//! in a file of its own (`src/cli/<command>.rs`); this module only parses
//! and dispatches. `anyhow` is used here and not below.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod simulate;

#[derive(Parser, Debug)]
#[command(name = "qkd-ipsec", version, about = "QKD-to-IPsec key feeder")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a simulated QKD link (Alice and Bob in one process) and print
    /// per-block figures, or sweep distances.
    Simulate(simulate::SimulateArgs),
}

/// Parses the command line, runs the command, maps errors to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result: anyhow::Result<()> = match cli.command {
        Command::Simulate(args) => args.exec(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QKD_IPSEC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
