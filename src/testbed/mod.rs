//! A disposable two-gateway topology in network namespaces, for the netns
//! tests, the benchmarks and `qkd-ipsec demo`:
//!
//! ```text
//!  host-a ──eth0/lan── gw-a ══wan══ gw-b ──lan/eth0── host-b
//!  10.1.0.2      10.1.0.1  192.0.2.1   192.0.2.2  10.2.0.1     10.2.0.2
//! ```
//!
//! Four namespaces named `<prefix>-{gwa,gwb,hosta,hostb}` (visible to
//! `ip netns`), veth links between them, addresses, routes and forwarding
//! on the gateways. Links, addresses and routes are made with rtnetlink
//! from inside each namespace (see [`crate::netns`]); no IPsec is set up —
//! that is the caller's job, through [`crate::xfrm`].
//!
//! Dropping a [`Testbed`] deletes its namespaces (the veths go with them),
//! also while a failing test unwinds; [`Testbed::teardown`] does the same and
//! reports every error rather than stopping at the first. This module owns
//! only the namespaces it created.
//!
//! [`AgentPair`] (in `agent_pair`, configs in `pair_config`) runs two real
//! agents as processes on a testbed, for the demo and the agent tests.
//!
//! [`Network`] (in `network`) is the same idea for more gateways: a
//! [`Topology`] of QKD links over a shared WAN router, with sites behind
//! the two end gateways, for trusted-relay tests; [`AgentNetwork`]
//! (configs in `network_config`) runs one agent per gateway on it. Both
//! fixtures build namespaces with `rtnl` and `namespaces`, run agents with
//! `agent_process` and render shared TOML sections with `config_sections`.

mod agent_network;
mod agent_pair;
mod agent_process;
mod bulk_tunnels;
mod config_sections;
mod fixture_error;
mod namespaces;
mod network;
mod network_config;
mod pair_config;
mod rtnl;

pub use agent_network::AgentNetwork;
pub use agent_pair::AgentPair;
pub use agent_process::AgentProcessError;
pub use bulk_tunnels::{MAX_BULK_TUNNELS, bulk_tunnel_subnets};
pub use fixture_error::{AgentNetworkError, AgentPairError, FixtureError};
pub use network::{
    Channel, ChannelKind, NETWORK_WAN_PREFIX_LEN, Network, NetworkGateway, NetworkSite, Node,
    Topology,
};
pub use network_config::{
    NetworkOptions, NodeFiles, RELAY_RETRY_MAX, network_tunnel_name, render_node_config,
};
pub use pair_config::{
    AgentPairOptions, EVE_PORT, Etsi014Options, EveOptions, GatewayFiles, KME_PORT, KmeOptions,
    LifetimeOptions, PEER_PORT, Side, TUNNEL_NAME,
};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{Netns, NetnsError};
use crate::xfrm::Prefix;

use namespaces::OwnedNamespaces;
use rtnl::Rtnl;

/// Interface names inside the namespaces (each namespace has its own name
/// space, so they are the same in every testbed).
pub const WAN_IF: &str = "wan";
pub const LAN_IF: &str = "lan";
pub const HOST_IF: &str = "eth0";

/// Errors while building a testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("testbed {prefix}: {step} in {netns}: {source}")]
    Rtnetlink {
        prefix: String,
        netns: String,
        step: String,
        source: rtnetlink::Error,
    },
    #[error("testbed {prefix}: cannot open rtnetlink in {netns}: {source}")]
    Connect {
        prefix: String,
        netns: String,
        source: std::io::Error,
    },
    #[error("testbed {prefix}: interface {name} not found in {netns}")]
    NoSuchLink {
        prefix: String,
        netns: String,
        name: String,
    },
}

/// Every error met while tearing a testbed down.
#[derive(Debug, thiserror::Error)]
#[error("tearing down testbed {prefix}: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct TeardownError {
    pub prefix: String,
    pub errors: Vec<NetnsError>,
}

/// A gateway: WAN side towards the other gateway, LAN side towards its host.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    pub netns: Netns,
    pub wan: IpAddr,
    pub lan: IpAddr,
    /// The subnet behind this gateway.
    pub site: Prefix,
}

/// A host behind a gateway.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: Netns,
    pub addr: IpAddr,
}

/// The four namespaces and their addressing. See the module docs.
#[derive(Debug)]
pub struct Testbed {
    pub prefix: String,
    pub gw_a: Gateway,
    pub gw_b: Gateway,
    pub host_a: Host,
    pub host_b: Host,
    namespaces: OwnedNamespaces,
}

static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl Testbed {
    /// A name prefix unique to this process and call, e.g. `qkd-rekey-4242-3`.
    pub fn unique_prefix(tag: &str) -> String {
        format!(
            "qkd-{tag}-{}-{}",
            std::process::id(),
            NEXT_TESTBED.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Builds the topology. On failure, everything created so far is deleted.
    /// Must be called inside a tokio runtime.
    pub async fn create(prefix: &str) -> Result<Self, TestbedError> {
        let ns_name = |role: &str| format!("{prefix}-{role}");
        let mut bed = Testbed {
            prefix: prefix.to_string(),
            gw_a: Gateway {
                name: ns_name("gwa"),
                netns: Netns::Current,
                wan: v4(192, 0, 2, 1), // RFC 5737 TEST-NET-1
                lan: v4(10, 1, 0, 1),
                site: Prefix::new(v4(10, 1, 0, 0), 24),
            },
            gw_b: Gateway {
                name: ns_name("gwb"),
                netns: Netns::Current,
                wan: v4(192, 0, 2, 2),
                lan: v4(10, 2, 0, 1),
                site: Prefix::new(v4(10, 2, 0, 0), 24),
            },
            host_a: Host {
                name: ns_name("hosta"),
                netns: Netns::Current,
                addr: v4(10, 1, 0, 2),
            },
            host_b: Host {
                name: ns_name("hostb"),
                netns: Netns::Current,
                addr: v4(10, 2, 0, 2),
            },
            namespaces: OwnedNamespaces::new(prefix),
        };
        // From here on, an early return drops `bed`, which deletes whatever
        // namespaces were already created.
        for name in [
            bed.gw_a.name.clone(),
            bed.gw_b.name.clone(),
            bed.host_a.name.clone(),
            bed.host_b.name.clone(),
        ] {
            let ns = bed.namespaces.create(&name)?;
            if name == bed.gw_a.name {
                bed.gw_a.netns = ns;
            } else if name == bed.gw_b.name {
                bed.gw_b.netns = ns;
            } else if name == bed.host_a.name {
                bed.host_a.netns = ns;
            } else {
                bed.host_b.netns = ns;
            }
        }
        bed.wire().await?;
        Ok(bed)
    }

    async fn wire(&self) -> Result<(), TestbedError> {
        let ga = Rtnl::open(&self.prefix, &self.gw_a.netns).await?;
        let gb = Rtnl::open(&self.prefix, &self.gw_b.netns).await?;
        let ha = Rtnl::open(&self.prefix, &self.host_a.netns).await?;
        let hb = Rtnl::open(&self.prefix, &self.host_b.netns).await?;
        // veth pairs are created in one namespace with the peer placed
        // directly in the other (`ip link add … peer name … netns …`).
        ga.veth(WAN_IF, WAN_IF, &self.gw_b.netns).await?;
        ga.veth(LAN_IF, HOST_IF, &self.host_a.netns).await?;
        gb.veth(LAN_IF, HOST_IF, &self.host_b.netns).await?;

        for (rt, links) in [
            (&ga, &[WAN_IF, LAN_IF][..]),
            (&gb, &[WAN_IF, LAN_IF][..]),
            (&ha, &[HOST_IF][..]),
            (&hb, &[HOST_IF][..]),
        ] {
            rt.up("lo").await?;
            for l in links {
                rt.up(l).await?;
            }
        }
        ga.address(WAN_IF, self.gw_a.wan, 24).await?;
        ga.address(LAN_IF, self.gw_a.lan, 24).await?;
        gb.address(WAN_IF, self.gw_b.wan, 24).await?;
        gb.address(LAN_IF, self.gw_b.lan, 24).await?;
        ha.address(HOST_IF, self.host_a.addr, 24).await?;
        hb.address(HOST_IF, self.host_b.addr, 24).await?;

        ha.route(Prefix::new(v4(0, 0, 0, 0), 0), self.gw_a.lan)
            .await?;
        hb.route(Prefix::new(v4(0, 0, 0, 0), 0), self.gw_b.lan)
            .await?;
        ga.route(self.gw_b.site, self.gw_b.wan).await?;
        gb.route(self.gw_a.site, self.gw_a.wan).await?;

        for gw in [&self.gw_a, &self.gw_b] {
            gw.netns.write_sysctl("net/ipv4/ip_forward", "1")?;
        }
        // Dropping the connections aborts their tasks.
        Ok(())
    }

    /// Deletes the namespaces, attempting every one and reporting every
    /// error.
    pub fn teardown(mut self) -> Result<(), TeardownError> {
        self.delete_all()
    }

    fn delete_all(&mut self) -> Result<(), TeardownError> {
        self.namespaces.delete_all()
    }

    /// A point-to-point link between a namespace of this testbed and one of
    /// another (`if_name` on both ends, `/30`-style addressing given by the
    /// caller). It goes when either namespace is deleted. Used to let a
    /// second pair of gateways reach the first pair's KMEs.
    pub async fn join(
        &self,
        mine: &Netns,
        theirs: &Netns,
        if_name: &str,
        my_addr: IpAddr,
        their_addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), TestbedError> {
        let here = Rtnl::open(&self.prefix, mine).await?;
        let there = Rtnl::open(&self.prefix, theirs).await?;
        here.veth(if_name, if_name, theirs).await?;
        here.up(if_name).await?;
        there.up(if_name).await?;
        here.address(if_name, my_addr, prefix_len).await?;
        there.address(if_name, their_addr, prefix_len).await
    }

    /// The namespace names, in creation order (for `ip netns exec`).
    pub fn namespaces(&self) -> Vec<&str> {
        vec![
            &self.gw_a.name,
            &self.gw_b.name,
            &self.host_a.name,
            &self.host_b.name,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_per_call() {
        let a = Testbed::unique_prefix("t");
        let b = Testbed::unique_prefix("t");
        assert_ne!(a, b);
        assert!(a.starts_with("qkd-t-"));
    }
}
