//! `qkd-ipsec status [--json] [--socket PATH]`: asks the running agent over
//! its local status socket and prints the answer. The agent renders the
//! view ([`crate::ops::render_text`]) so that a plain `socat` gets the same;
//! this command only connects, waits a bounded time and explains failures.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::ops::{DEFAULT_STATUS_SOCKET, StatusFormat, query_status};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the full snapshot as JSON (stable field names, Unix-ms times).
    #[arg(long, conflicts_with = "metrics")]
    pub json: bool,
    /// Print the Prometheus exposition instead.
    #[arg(long)]
    pub metrics: bool,
    /// The agent's status socket (the config's status socket path).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATUS_SOCKET)]
    pub socket: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

impl StatusArgs {
    pub fn exec(self) -> anyhow::Result<()> {
        let format = if self.json {
            StatusFormat::Json
        } else if self.metrics {
            StatusFormat::Metrics
        } else {
            StatusFormat::Text
        };
        let reply = query_status(
            &self.socket,
            format,
            Duration::from_secs(self.timeout.max(1)),
        )?;
        std::io::stdout()
            .lock()
            .write_all(reply.as_bytes())
            .context("writing to stdout")
    }
}
