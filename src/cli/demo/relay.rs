//! The relay demo's [`Scene`] (`demo --topology chain|diamond`): one agent
//! per gateway of an [`AgentNetwork`], QKD links only between neighbours,
//! the tunnel between the two ends keyed from keys the other gateways
//! relay.

use std::net::IpAddr;

use anyhow::bail;

use super::live::Scene;
use super::relay_view::{self, RelayFrame};
use super::view::{self, LiveFigures};
use crate::config::RelayMode;
use crate::ops::BoardSnapshot;
use crate::testbed::{AgentNetwork, NetworkSite, Node, Topology};
use crate::xfrm::Prefix;

pub struct RelayScene {
    net: AgentNetwork,
    /// The latest status of every gateway, in [`Topology::nodes`] order.
    last: Vec<Option<BoardSnapshot>>,
}

impl RelayScene {
    pub fn new(net: AgentNetwork) -> Self {
        let last = vec![None; net.options().topology.nodes().len()];
        Self { net, last }
    }

    fn topology(&self) -> Topology {
        self.net.options().topology
    }

    fn site(&self, node: Node) -> &NetworkSite {
        self.net
            .network()
            .gateway(node)
            .site
            .as_ref()
            .expect("the ends of a topology have sites")
    }

    fn frame<'a>(&'a self, live: &'a LiveFigures) -> RelayFrame<'a> {
        let opts = self.net.options();
        RelayFrame {
            topology: opts.topology,
            mode: opts.relay_mode,
            length_km: opts.length_km,
            status: &self.last,
            live,
        }
    }
}

impl Scene for RelayScene {
    fn gateway_namespaces(&self) -> Vec<String> {
        self.topology()
            .nodes()
            .iter()
            .map(|&n| self.net.netns_name(n).to_string())
            .collect()
    }

    fn sites(&self) -> [Prefix; 2] {
        let (first, last) = self.topology().ends();
        [self.site(first).prefix, self.site(last).prefix]
    }

    fn ping_route(&self) -> (String, IpAddr) {
        let (first, last) = self.topology().ends();
        (
            self.site(first).host.name.clone(),
            self.site(last).host.addr,
        )
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        for (slot, &node) in self.topology().nodes().iter().enumerate() {
            if !self.net.agent_running(node) {
                bail!(
                    "{node}'s agent stopped; the end of its log:\n{}",
                    self.net.log_tail(node, 30)
                );
            }
            self.last[slot] = self.net.status(node).ok();
        }
        Ok(())
    }

    fn keyed(&self) -> bool {
        let topology = self.topology();
        let (first, last) = topology.ends();
        topology
            .nodes()
            .iter()
            .zip(&self.last)
            .filter(|(n, _)| [first, last].contains(n))
            .all(|(_, s)| view::tunnel(s.as_ref()).is_some_and(|t| t.generation > 0))
    }

    fn render(&self, live: &LiveFigures) -> String {
        relay_view::render(&self.frame(live))
    }

    fn summary(&self, live: &LiveFigures) -> String {
        relay_view::summary(&self.frame(live))
    }

    fn teardown(self) -> anyhow::Result<()> {
        for &node in self.topology().nodes() {
            self.net.stop_agent(node);
        }
        Ok(self.net.teardown()?)
    }
}

/// The demo's relay settings, those of `netns-tests/relay_chain.rs`,
/// which the emulated QKD links (about 1 KiB of key per ~40 s block in the
/// VM, half of it for each side's takes) are known to feed: keys of 256
/// bytes, a 4 KiB relayed pool (a rekey takes 72 bytes of it), and a rekey
/// interval of at least 20 s (8 s starves them and the tunnel fails
/// closed between refills, as it should).
pub const RELAY_KEY_BYTES: u32 = 256;
pub const RELAY_POOL_TARGET_BYTES: u64 = 4096;
pub const MIN_RELAY_REKEY_INTERVAL_S: u64 = 20;
/// The demo's rekey interval with `--topology` when none is given.
pub const DEFAULT_RELAY_REKEY_INTERVAL_S: u64 = 30;

/// The relay mode when `--relay` is not given: multipath where there are
/// two disjoint paths, single on the chain.
pub fn default_mode(topology: Topology) -> RelayMode {
    match topology {
        Topology::Chain => RelayMode::Single,
        Topology::Diamond => RelayMode::Multipath,
    }
}
