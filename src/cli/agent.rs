//! `qkd-ipsec agent CONFIG`: runs the agent in the foreground until SIGTERM
//! or SIGINT (systemd runs it this way, see `deploy/qkd-ipsec.service`).
//! Only parses, sets up the runtime and signals; the work is
//! [`crate::agent::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The gateway's configuration file (check it with `qkd-ipsec check-config`).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
}

impl AgentArgs {
    pub fn exec(self) -> anyhow::Result<()> {
        let config = Config::load(&self.config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("qkd-ipsec")
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async move {
            let cancel = CancellationToken::new();
            let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
            let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
            let stop = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                    _ = int.recv() => tracing::info!("SIGINT: stopping"),
                }
                stop.cancel();
            });
            crate::agent::run(config, cancel)
                .await
                .context("the agent stopped with an error")
        })
    }
}
