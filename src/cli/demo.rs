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
//! With `--topology chain|diamond` the same run shows trusted relaying
//! ([`relay`]): three or four gateways ([`crate::testbed::AgentNetwork`]),
//! QKD links only between neighbours, and the tunnel between the two ends
//! keyed from keys the gateways between them relay — the view follows
//! each hop's relaying, the relayed keys at the ends, the tunnel, the
//! pings and every gateway's WAN filter. [`live`] runs either topology.
//!
//! On a kernel without ESP the demo re-runs itself in a VM ([`vm`]), with
//! the same flags. It needs root (namespaces, XFRM, nftables) and says so
//! otherwise.

mod live;
mod pair;
mod relay;
mod relay_view;
mod traffic;
mod view;
mod vm;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::config::RelayMode;
use crate::testbed::{AgentNetwork, AgentPair, AgentPairOptions, NetworkOptions, Topology};
use live::LiveOptions;
use pair::PairScene;
use relay::RelayScene;

/// `--topology`: gateways whose ends have no QKD link of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoTopology {
    /// gw-a – gw-b – gw-c: gw-b relays.
    Chain,
    /// gw-a – gw-b/gw-c – gw-d: two disjoint paths.
    Diamond,
}

impl DemoTopology {
    fn topology(self) -> Topology {
        match self {
            DemoTopology::Chain => Topology::Chain,
            DemoTopology::Diamond => Topology::Diamond,
        }
    }
}

/// `--relay`: how the ends' keys cross the relays (`[peer.relay] mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoRelay {
    /// One path: every relay on it learns the key.
    Single,
    /// An XOR share on each disjoint path (the diamond only).
    Multipath,
}

impl DemoRelay {
    fn mode(self) -> RelayMode {
        match self {
            DemoRelay::Single => RelayMode::Single,
            DemoRelay::Multipath => RelayMode::Multipath,
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Seconds between rekeys of the tunnel (default 10; 30 with
    /// `--topology`, which the emulated links can feed with relayed keys).
    #[arg(long, value_name = "SECS")]
    pub rekey_interval: Option<u64>,
    /// Length of the simulated fibre between the gateways (km); with
    /// `--topology`, of every QKD link.
    #[arg(long, value_name = "KM", default_value_t = 25.0)]
    pub length_km: f64,
    /// Relay keys between gateways without a QKD link (default: the pair
    /// of gateways joined by one link).
    #[arg(long, value_enum)]
    pub topology: Option<DemoTopology>,
    /// How keys are relayed (default: multipath on the diamond, single on
    /// the chain).
    #[arg(long, value_enum, requires = "topology")]
    pub relay: Option<DemoRelay>,
    /// Set by the demo itself when it re-runs inside the VM.
    #[arg(long, hide = true)]
    pub in_vm: bool,
}

impl DemoArgs {
    /// The rekey interval asked for, or the default of the topology.
    fn rekey_interval(&self) -> u64 {
        self.rekey_interval.unwrap_or(if self.topology.is_some() {
            relay::DEFAULT_RELAY_REKEY_INTERVAL_S
        } else {
            10
        })
    }

    pub fn exec(self) -> anyhow::Result<()> {
        if !(2..=3600).contains(&self.rekey_interval()) {
            bail!(
                "--rekey-interval {} must lie in 2..=3600 seconds",
                self.rekey_interval()
            );
        }
        if !(self.length_km > 0.0 && self.length_km <= 200.0) {
            bail!("--length-km {} must lie in (0, 200]", self.length_km);
        }
        self.relay_plan()?;
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
            self.rekey_interval().to_string(),
            "--length-km".into(),
            self.length_km.to_string(),
        ];
        if let Some(d) = self.duration {
            args.extend(["--duration".into(), d.to_string()]);
        }
        for (flag, value) in [
            (
                "--topology",
                self.topology.and_then(|t| t.to_possible_value()),
            ),
            ("--relay", self.relay.and_then(|r| r.to_possible_value())),
        ] {
            if let Some(v) = value {
                args.extend([flag.into(), v.get_name().into()]);
            }
        }
        args
    }

    /// The relay topology and mode asked for, `None` for the pair; refuses
    /// what the agents' config checks would refuse, with the fix.
    fn relay_plan(&self) -> anyhow::Result<Option<(Topology, RelayMode)>> {
        let Some(topology) = self.topology.map(DemoTopology::topology) else {
            return Ok(None);
        };
        let mode = self
            .relay
            .map_or_else(|| relay::default_mode(topology), DemoRelay::mode);
        if topology == Topology::Chain && mode == RelayMode::Multipath {
            bail!(
                "--relay multipath needs two node-disjoint paths, and a chain has one: use \
                 --topology diamond or --relay single"
            );
        }
        if self.rekey_interval() < relay::MIN_RELAY_REKEY_INTERVAL_S {
            bail!(
                "--rekey-interval {} is too short for relayed keys: the emulated QKD links \
                 cannot refill the relayed pool that fast; use at least {} with --topology",
                self.rekey_interval(),
                relay::MIN_RELAY_REKEY_INTERVAL_S
            );
        }
        Ok(Some((topology, mode)))
    }

    async fn run(self, binary: std::path::PathBuf) -> anyhow::Result<()> {
        let live = LiveOptions {
            duration_s: self.duration,
            in_vm: self.in_vm,
        };
        if let Some((topology, mode)) = self.relay_plan()? {
            return self.run_relay(binary, topology, mode, live).await;
        }
        let mut opts = AgentPairOptions::new("demo", binary);
        opts.length_km = self.length_km;
        opts.rekey_interval = Duration::from_secs(self.rekey_interval());
        println!("Creating namespaces gw-a, gw-b, host-a, host-b and starting two agents...");
        let pair = AgentPair::start(opts)
            .await
            .context("cannot set up the demo")?;
        live::show(PairScene::new(pair), live).await
    }

    async fn run_relay(
        &self,
        binary: std::path::PathBuf,
        topology: Topology,
        mode: RelayMode,
        live: LiveOptions,
    ) -> anyhow::Result<()> {
        let mut opts = NetworkOptions::new("demo", binary, topology);
        opts.relay_mode = mode;
        opts.relay_key_bytes = relay::RELAY_KEY_BYTES;
        opts.relay_pool_target_bytes = relay::RELAY_POOL_TARGET_BYTES;
        opts.length_km = self.length_km;
        opts.rekey_interval = Duration::from_secs(self.rekey_interval());
        let names: Vec<&str> = topology.nodes().iter().map(|n| n.gateway_name()).collect();
        let (first, last) = topology.ends();
        println!(
            "Creating namespaces {}, host-{}, host-{} and a WAN router, and starting {} agents \
             (relay {}); the first relayed key needs every hop's first QKD blocks...",
            names.join(", "),
            first.letter(),
            last.letter(),
            names.len(),
            mode.name()
        );
        let net = AgentNetwork::start(opts)
            .await
            .context("cannot set up the relay demo")?;
        live::show(RelayScene::new(net), live).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn demo(args: &[&str]) -> DemoArgs {
        let argv = ["qkd-ipsec", "demo"].iter().chain(args);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cli::Command::Demo(d) => d,
            other => panic!("not the demo: {other:?}"),
        }
    }

    #[test]
    fn the_pair_is_the_default() {
        let d = demo(&[]);
        assert_eq!(d.relay_plan().unwrap(), None);
        assert!(!d.forwarded_args().contains(&"--topology".to_string()));
    }

    #[test]
    fn the_relay_mode_defaults_to_the_topology() {
        let plan = |args: &[&str]| demo(args).relay_plan().unwrap().unwrap();
        assert_eq!(
            plan(&["--topology", "chain"]),
            (Topology::Chain, RelayMode::Single)
        );
        assert_eq!(
            plan(&["--topology", "diamond"]),
            (Topology::Diamond, RelayMode::Multipath)
        );
        assert_eq!(
            plan(&["--topology", "diamond", "--relay", "single"]),
            (Topology::Diamond, RelayMode::Single)
        );
    }

    #[test]
    fn impossible_relay_demos_are_refused() {
        let err = |args: &[&str]| demo(args).relay_plan().unwrap_err().to_string();
        assert!(
            err(&["--topology", "chain", "--relay", "multipath"]).contains("--topology diamond")
        );
        assert!(err(&["--topology", "chain", "--rekey-interval", "8"]).contains("at least 20"));
        // No interval given: the topology's default, which passes.
        assert_eq!(
            demo(&["--topology", "chain"]).rekey_interval(),
            relay::DEFAULT_RELAY_REKEY_INTERVAL_S
        );
        assert_eq!(demo(&[]).rekey_interval(), 10);
        let argv = ["qkd-ipsec", "demo", "--relay", "single"];
        assert!(
            crate::cli::Cli::try_parse_from(argv).is_err(),
            "--relay needs --topology"
        );
    }

    #[test]
    fn the_vm_run_gets_the_topology_and_relay() {
        let d = demo(&[
            "--topology",
            "diamond",
            "--relay",
            "single",
            "--duration",
            "60",
        ]);
        let args = d.forwarded_args();
        for pair in [
            ["--topology", "diamond"],
            ["--relay", "single"],
            ["--duration", "60"],
        ] {
            assert!(
                args.windows(2).any(|w| w == pair),
                "{pair:?} not forwarded: {args:?}"
            );
        }
        // And the VM's run parses them back to the same demo.
        let mut again: Vec<&str> = args.iter().map(String::as_str).collect();
        again.push("--in-vm");
        let back = demo(&again);
        assert_eq!((back.topology, back.relay), (d.topology, d.relay));
        assert!(back.in_vm);
        assert_eq!(back.rekey_interval(), d.rekey_interval());
    }
}
