//! `qkd-ipsec demo`: the whole product on one machine. Builds two gateway
//! namespaces with a host behind each ([`crate::testbed::AgentPair`]),
//! starts two agents as separate processes over a simulated 25 km link,
//! pings from host to host through the QKD-keyed ESP tunnel and shows a
//! live view (QBER, key rate, pool, SA generations and SPIs, rekeys, ping
//! loss) once a second; Ctrl-C, SIGTERM or `--duration` tears it all down.
//!
//! An nftables filter on each gateway's WAN side counts and drops any
//! packet between the two sites that is not inside ESP, so the view can
//! show that nothing crosses in clear text.
//!
//! On a kernel without ESP the demo re-runs itself in a VM ([`vm`]). It
//! needs root (namespaces, XFRM, nftables) and says so otherwise.

mod live;
mod pair;
mod traffic;
mod view;
mod vm;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::testbed::{AgentPair, AgentPairOptions};
use live::LiveOptions;
use pair::PairScene;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Seconds between rekeys of the tunnel.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub rekey_interval: u64,
    /// Length of the simulated fibre between the gateways (km).
    #[arg(long, value_name = "KM", default_value_t = 25.0)]
    pub length_km: f64,
    /// Set by the demo itself when it re-runs inside the VM.
    #[arg(long, hide = true)]
    pub in_vm: bool,
}

impl DemoArgs {
    pub fn exec(self) -> anyhow::Result<()> {
        if !(2..=3600).contains(&self.rekey_interval) {
            bail!(
                "--rekey-interval {} must lie in 2..=3600 seconds",
                self.rekey_interval
            );
        }
        if !(self.length_km > 0.0 && self.length_km <= 200.0) {
            bail!("--length-km {} must lie in (0, 200]", self.length_km);
        }
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the demo needs root: it creates network namespaces, installs IPsec SAs and \
                 nftables rules. Run it as `sudo qkd-ipsec demo`"
            );
        }
        let binary = std::env::current_exe().context("cannot find the qkd-ipsec executable")?;
        if !vm::esp_available()? {
            if self.in_vm {
                bail!("the VM's kernel cannot install an ESP SA either (modprobe esp4 failed?)");
            }
            if !vm::run_in_vm(&binary, &self.forwarded_args())? {
                bail!("the demo inside the VM failed (its output is above)");
            }
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.run(binary))
    }

    /// The arguments the VM's run of the demo gets.
    fn forwarded_args(&self) -> Vec<String> {
        let mut args = vec![
            "--rekey-interval".into(),
            self.rekey_interval.to_string(),
            "--length-km".into(),
            self.length_km.to_string(),
        ];
        if let Some(d) = self.duration {
            args.extend(["--duration".into(), d.to_string()]);
        }
        args
    }

    async fn run(self, binary: std::path::PathBuf) -> anyhow::Result<()> {
        let live = LiveOptions {
            duration_s: self.duration,
            in_vm: self.in_vm,
        };
        let mut opts = AgentPairOptions::new("demo", binary);
        opts.length_km = self.length_km;
        opts.rekey_interval = Duration::from_secs(self.rekey_interval);
        println!("Creating namespaces gw-a, gw-b, host-a, host-b and starting two agents...");
        let pair = AgentPair::start(opts)
            .await
            .context("cannot set up the demo")?;
        live::show(PairScene::new(pair), live).await
    }
}
