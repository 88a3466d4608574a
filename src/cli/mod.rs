//! Command-line entry points. Each command is a clap struct with `exec()`
//! in a file of its own (`src/cli/<command>.rs`); this module only parses
//! and dispatches. `anyhow` is used here and not below.

mod agent;
pub mod check_config;
mod demo;
mod eve;
mod pool_audit;
pub mod simulate;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "qkd-ipsec", version, about = "QKD-to-IPsec key feeder")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent of this gateway (foreground; SIGTERM stops it).
    Agent(agent::AgentArgs),
    /// Lab eavesdropper: intercept–resend on the simulated fibre stream.
    Eve(Box<eve::EveCommand>),
    /// Check a gateway configuration file (and optionally its peer's).
    CheckConfig(check_config::CheckConfig),
    /// Show the running agent's peers, tunnels and alarms.
    Status(status::StatusArgs),
    /// Read the gateway's key pools (read only) and report every take since
    /// the last snapshot, and any key byte used twice.
    PoolAudit(pool_audit::PoolAuditArgs),
    /// Run a simulated QKD link (Alice and Bob in one process) and print
    /// per-block figures, or sweep distances.
    Simulate(simulate::SimulateArgs),
    /// Two gateways, two agents, a simulated 25 km QKD link and a tunnel
    /// keyed from it, with a live view (needs root); `--topology
    /// chain|diamond` relays the tunnel's keys over gateways between.
    Demo(demo::DemoArgs),
}

/// Parses the command line, runs the command, maps errors to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result: anyhow::Result<()> = match cli.command {
        Command::Agent(args) => args.exec(),
        Command::Eve(cmd) => cmd.exec(),
        Command::CheckConfig(c) => c.exec(),
        Command::Status(args) => args.exec(),
        Command::PoolAudit(args) => args.exec(),
        Command::Simulate(args) => args.exec(),
        Command::Demo(args) => args.exec(),
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
    // Only fails if a subscriber is already set, which leaves logging working.
    let _ = crate::ops::init_logging();
}
