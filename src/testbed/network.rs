//! A disposable topology of gateways in network namespaces, for the
//! trusted-relay tests: gateways without a QKD link of their own get keys
//! relayed hop by hop through other gateways.
//!
//! Classical IP works between every pair of gateways (they share a WAN
//! router, like the Internet); only the QKD links follow the [`Topology`]:
//!
//! ```text
//!                     <prefix>-wan: the WAN router (ip_forward = 1)
//!      if gw-a            if gw-b            if gw-c            if gw-d
//!      192.0.2.1/30       192.0.2.5/30       192.0.2.9/30       192.0.2.13/30
//!        │                  │                  │                  │
//!      wan 192.0.2.2/30   wan 192.0.2.6/30   wan 192.0.2.10/30  wan 192.0.2.14/30
//!      <prefix>-gwa       <prefix>-gwb       <prefix>-gwc       <prefix>-gwd (diamond)
//!      default route via the router's address on the same /30
//!
//!  QKD links:  Chain    gw-a ── gw-b ── gw-c
//!              Diamond  gw-a ── gw-b ── gw-d  and  gw-a ── gw-c ── gw-d
//!
//!  Sites behind the two end gateways (routed by the WAN router via them):
//!   host-a ──eth0/lan── gw-a              gw-c | gw-d ──lan/eth0── host-c | host-d
//!   10.1.0.2      10.1.0.1                    10.3.0.1      10.3.0.2
//! ```
//!
//! Namespaces are `<prefix>-wan`, `<prefix>-gw<x>` for every node and
//! `<prefix>-host<x>` behind the two ends (visible to `ip netns`); only
//! veth links, made with rtnetlink from inside each namespace as
//! [`super::Testbed`] does. No IPsec is set up: that is the agents' job
//! ([`super::AgentNetwork`]).
//!
//! Dropping a [`Network`] deletes its namespaces (the veths go with them),
//! also while a failing test unwinds; [`Network::teardown`] does the same
//! and reports every error. This module owns only the namespaces it
//! created.

use std::net::{IpAddr, Ipv4Addr};

use super::namespaces::OwnedNamespaces;
use super::rtnl::Rtnl;
use super::{HOST_IF, Host, LAN_IF, TeardownError, TestbedError, WAN_IF};
use crate::netns::Netns;
use crate::xfrm::Prefix;

/// A gateway of a topology. Its name in the configs is
/// [`Node::gateway_name`]; its addressing is fixed by the node, whatever
/// the topology (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    A,
    B,
    C,
    D,
}

impl Node {
    /// The gateway's name in the configs (`gw-a` …). Names sort like the
    /// nodes, which decides each channel's transmitter.
    pub fn gateway_name(self) -> &'static str {
        match self {
            Node::A => "gw-a",
            Node::B => "gw-b",
            Node::C => "gw-c",
            Node::D => "gw-d",
        }
    }

    /// `a`, `b` …: the end of the namespace names.
    /// The SAE on the host behind this gateway, when it serves keys.
    pub fn sae_id(self) -> String {
        format!("sae-{}", self.letter())
    }

    pub fn letter(self) -> &'static str {
        &self.gateway_name()[3..]
    }

    fn index(self) -> u8 {
        self as u8
    }

    /// This gateway's WAN address: 192.0.2.(4k + 2) (RFC 5737 TEST-NET-1)
    /// for the k-th node, on a /30 of its own with the router.
    pub fn wan_addr(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 4 * self.index() + 2))
    }

    /// The router's address on this gateway's /30: its default gateway.
    pub fn router_addr(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 4 * self.index() + 1))
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gateway_name())
    }
}

/// Prefix length of each gateway's WAN link to the router.
pub const NETWORK_WAN_PREFIX_LEN: u8 = 30;

/// Which gateways share a QKD link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// gw-a – gw-b – gw-c: one relay between the ends.
    Chain,
    /// gw-a – gw-b – gw-d and gw-a – gw-c – gw-d: two disjoint paths
    /// between the ends (for multipath relaying).
    Diamond,
}

/// Whether a peer channel runs over a QKD link of its own or takes its
/// keys relayed through other gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Link,
    Relayed,
}

/// A pair of gateways that run a peer channel, the one whose name sorts
/// first (the transmitter, which dials) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub transmitter: Node,
    pub receiver: Node,
    pub kind: ChannelKind,
}

impl Channel {
    /// The other end of the channel, if `node` is one of its ends.
    pub fn peer_of(&self, node: Node) -> Option<Node> {
        if node == self.transmitter {
            Some(self.receiver)
        } else if node == self.receiver {
            Some(self.transmitter)
        } else {
            None
        }
    }
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Chain => "chain",
            Topology::Diamond => "diamond",
        }
    }

    /// Every gateway, in name order.
    pub fn nodes(self) -> &'static [Node] {
        match self {
            Topology::Chain => &[Node::A, Node::B, Node::C],
            Topology::Diamond => &[Node::A, Node::B, Node::C, Node::D],
        }
    }

    /// Every QKD link, each pair in name order.
    pub fn links(self) -> &'static [(Node, Node)] {
        match self {
            Topology::Chain => &[(Node::A, Node::B), (Node::B, Node::C)],
            Topology::Diamond => &[
                (Node::A, Node::B),
                (Node::A, Node::C),
                (Node::B, Node::D),
                (Node::C, Node::D),
            ],
        }
    }

    /// The two end gateways, which have sites behind them and a relayed
    /// channel (and the tunnel) between them.
    pub fn ends(self) -> (Node, Node) {
        match self {
            Topology::Chain => (Node::A, Node::C),
            Topology::Diamond => (Node::A, Node::D),
        }
    }

    pub fn is_end(self, node: Node) -> bool {
        let (first, last) = self.ends();
        node == first || node == last
    }

    pub fn contains(self, node: Node) -> bool {
        self.nodes().contains(&node)
    }

    /// Every peer channel: one per QKD link, and the relayed one between
    /// the ends (which never share a link).
    pub fn channels(self) -> Vec<Channel> {
        let (first, last) = self.ends();
        self.links()
            .iter()
            .map(|&(a, b)| (a, b, ChannelKind::Link))
            .chain(std::iter::once((first, last, ChannelKind::Relayed)))
            .map(|(a, b, kind)| Channel {
                transmitter: a.min(b),
                receiver: a.max(b),
                kind,
            })
            .collect()
    }

    /// The channels `node` is an end of, with its peer on each.
    pub fn channels_of(self, node: Node) -> Vec<(Node, Channel)> {
        self.channels()
            .into_iter()
            .filter_map(|c| c.peer_of(node).map(|peer| (peer, c)))
            .collect()
    }

    /// The subnet behind an end gateway: 10.1.0.0/24 behind the first,
    /// 10.3.0.0/24 behind the last; middle gateways have none.
    pub fn site(self, node: Node) -> Option<Prefix> {
        let (first, last) = self.ends();
        let third_octet = match node {
            n if n == first => 1,
            n if n == last => 3,
            _ => return None,
        };
        Some(Prefix::new(
            IpAddr::V4(Ipv4Addr::new(10, third_octet, 0, 0)),
            24,
        ))
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The network behind an end gateway: its LAN address (`.1`) and the host
/// (`.2`).
#[derive(Debug, Clone)]
pub struct NetworkSite {
    pub prefix: Prefix,
    pub lan: IpAddr,
    pub host: Host,
}

/// One gateway's namespace and addressing.
#[derive(Debug, Clone)]
pub struct NetworkGateway {
    pub node: Node,
    /// The namespace name, `<prefix>-gw<x>`.
    pub name: String,
    pub netns: Netns,
    pub wan: IpAddr,
    /// Its default gateway (the router's end of its /30).
    pub router: IpAddr,
    /// Only on the two end gateways.
    pub site: Option<NetworkSite>,
}

/// The namespaces of a topology and their addressing. See the module docs.
#[derive(Debug)]
pub struct Network {
    pub prefix: String,
    pub topology: Topology,
    /// The WAN router's namespace name, `<prefix>-wan`.
    pub router_name: String,
    pub router: Netns,
    /// One per node, in [`Topology::nodes`] order.
    pub gateways: Vec<NetworkGateway>,
    namespaces: OwnedNamespaces,
}

impl Network {
    /// Builds the topology's namespaces. On failure, everything created so
    /// far is deleted. Must be called inside a tokio runtime.
    pub async fn create(prefix: &str, topology: Topology) -> Result<Self, TestbedError> {
        let mut namespaces = OwnedNamespaces::new(prefix);
        // From here on, an early return drops `namespaces`, which deletes
        // whatever was already created.
        let router_name = format!("{prefix}-wan");
        let router = namespaces.create(&router_name)?;
        let mut gateways = Vec::new();
        for &node in topology.nodes() {
            let name = format!("{prefix}-gw{}", node.letter());
            let netns = namespaces.create(&name)?;
            let site = match topology.site(node) {
                Some(site) => {
                    let host_name = format!("{prefix}-host{}", node.letter());
                    let host_netns = namespaces.create(&host_name)?;
                    Some(NetworkSite {
                        prefix: site,
                        lan: nth_host(site, 1),
                        host: Host {
                            name: host_name,
                            netns: host_netns,
                            addr: nth_host(site, 2),
                        },
                    })
                }
                None => None,
            };
            gateways.push(NetworkGateway {
                node,
                name,
                netns,
                wan: node.wan_addr(),
                router: node.router_addr(),
                site,
            });
        }
        let net = Network {
            prefix: prefix.to_string(),
            topology,
            router_name,
            router,
            gateways,
            namespaces,
        };
        net.wire().await?;
        Ok(net)
    }

    async fn wire(&self) -> Result<(), TestbedError> {
        let router = Rtnl::open(&self.prefix, &self.router).await?;
        router.up("lo").await?;
        for gw in &self.gateways {
            self.wire_gateway(&router, gw).await?;
        }
        self.router.write_sysctl("net/ipv4/ip_forward", "1")?;
        // Dropping the connections aborts their tasks.
        Ok(())
    }

    /// The gateway's /30 to the router (router side named after the
    /// gateway), its default route, and its site if it has one.
    async fn wire_gateway(&self, router: &Rtnl, gw: &NetworkGateway) -> Result<(), TestbedError> {
        let here = Rtnl::open(&self.prefix, &gw.netns).await?;
        let router_if = gw.node.gateway_name();
        router.veth(router_if, WAN_IF, &gw.netns).await?;
        router.up(router_if).await?;
        router
            .address(router_if, gw.router, NETWORK_WAN_PREFIX_LEN)
            .await?;
        here.up("lo").await?;
        here.up(WAN_IF).await?;
        here.address(WAN_IF, gw.wan, NETWORK_WAN_PREFIX_LEN).await?;
        here.route(default_route(), gw.router).await?;
        if let Some(site) = &gw.site {
            let host = Rtnl::open(&self.prefix, &site.host.netns).await?;
            here.veth(LAN_IF, HOST_IF, &site.host.netns).await?;
            here.up(LAN_IF).await?;
            here.address(LAN_IF, site.lan, site.prefix.len).await?;
            host.up("lo").await?;
            host.up(HOST_IF).await?;
            host.address(HOST_IF, site.host.addr, site.prefix.len)
                .await?;
            host.route(default_route(), site.lan).await?;
            // Like the pair testbed: sites reach each other in clear until
            // the agents install their tunnel.
            router.route(site.prefix, gw.wan).await?;
        }
        gw.netns.write_sysctl("net/ipv4/ip_forward", "1")?;
        Ok(())
    }

    /// `node`'s gateway.
    ///
    /// # Panics
    /// If `node` is not in this network's topology.
    pub fn gateway(&self, node: Node) -> &NetworkGateway {
        self.gateways
            .iter()
            .find(|g| g.node == node)
            .unwrap_or_else(|| panic!("{node} is not a node of the {} topology", self.topology))
    }

    /// Deletes the namespaces, attempting every one and reporting every
    /// error.
    pub fn teardown(mut self) -> Result<(), TeardownError> {
        self.delete_all()
    }

    pub(super) fn delete_all(&mut self) -> Result<(), TeardownError> {
        self.namespaces.delete_all()
    }

    /// The namespace names: the router, then each gateway and its host.
    pub fn namespaces(&self) -> Vec<&str> {
        std::iter::once(self.router_name.as_str())
            .chain(self.gateways.iter().flat_map(|g| {
                std::iter::once(g.name.as_str()).chain(g.site.iter().map(|s| s.host.name.as_str()))
            }))
            .collect()
    }
}

fn default_route() -> Prefix {
    Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

/// The `n`-th address of an IPv4 prefix (`n = 1`: the gateway's).
fn nth_host(prefix: Prefix, n: u8) -> IpAddr {
    let IpAddr::V4(base) = prefix.addr else {
        unreachable!("the network is IPv4");
    };
    let [a, b, c, d] = base.octets();
    IpAddr::V4(Ipv4Addr::new(a, b, c, d + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_has_its_own_wan_subnet() {
        for &node in Topology::Diamond.nodes() {
            let (IpAddr::V4(gw), IpAddr::V4(rt)) = (node.wan_addr(), node.router_addr()) else {
                unreachable!()
            };
            let mask = u32::MAX << (32 - NETWORK_WAN_PREFIX_LEN);
            assert_eq!(u32::from(gw) & mask, u32::from(rt) & mask, "{node}");
            for &other in Topology::Diamond.nodes().iter().filter(|&&o| o != node) {
                let IpAddr::V4(o) = other.wan_addr() else {
                    unreachable!()
                };
                assert_ne!(u32::from(gw) & mask, u32::from(o) & mask, "{node} {other}");
            }
        }
    }

    #[test]
    fn channels_are_the_links_and_the_relayed_ends() {
        for topology in [Topology::Chain, Topology::Diamond] {
            let channels = topology.channels();
            assert_eq!(channels.len(), topology.links().len() + 1, "{topology}");
            let relayed: Vec<_> = channels
                .iter()
                .filter(|c| c.kind == ChannelKind::Relayed)
                .collect();
            assert_eq!(relayed.len(), 1);
            let (first, last) = topology.ends();
            assert_eq!((relayed[0].transmitter, relayed[0].receiver), (first, last));
            assert!(!topology.links().contains(&(first, last)));
            for c in &channels {
                assert!(c.transmitter.gateway_name() < c.receiver.gateway_name());
            }
        }
    }

    #[test]
    fn only_the_ends_have_sites() {
        let t = Topology::Chain;
        assert_eq!(t.site(Node::A).unwrap().to_string(), "10.1.0.0/24");
        assert_eq!(t.site(Node::B), None);
        assert_eq!(t.site(Node::C).unwrap().to_string(), "10.3.0.0/24");
        assert_eq!(Topology::Diamond.site(Node::C), None);
        assert_eq!(
            Topology::Diamond.site(Node::D).unwrap().to_string(),
            "10.3.0.0/24"
        );
        assert_eq!(
            nth_host(t.site(Node::C).unwrap(), 2).to_string(),
            "10.3.0.2"
        );
    }
}
