//! The configurations and file layout of an [`super::AgentNetwork`]: what
//! the fixture can be asked for ([`NetworkOptions`]) and the TOML it
//! writes for each node ([`render_node_config`]).
//!
//! Every node gets the same `[network]` section (all QKD links of the
//! topology, and whether this gateway relays keys), one `[[peer]]` with a
//! simulated link per QKD link it has and — on the two ends — one more
//! `[[peer]]` whose keys are relayed (`kind = "relayed"`) and the
//! `[[tunnel]]` between the sites, keyed from that relayed peer. On every
//! channel the gateway whose name sorts first is the transmitter and dials.
//! With [`NetworkOptions::kme`] the two ends also serve relayed keys to
//! the SAE on their site's host (`sae-<letter>`), over ETSI GS QKD 014.
//!
//! Owns only text and file layout; it starts nothing. The fixture checks
//! each file with [`crate::config::Config::parse`] before an agent starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config_sections::{
    GatewaySection, KmeSection, SimulatedLink, TunnelSection, duration_str, path_str, quoted,
    render_channel, toml_list,
};
use super::network::{Channel, ChannelKind, Node, Topology};
use super::pair_config::{
    AgentPairOptions, KME_PORT, LifetimeOptions, PEER_PORT, lab_ca_file, pki_dir,
};
use crate::config::{Keying, OnStop, RelayMode};
use crate::tls::TlsFiles;

/// The longest wait between attempts to relay keys.
pub const RELAY_RETRY_MAX: Duration = Duration::from_secs(5);

/// What an [`super::AgentNetwork`] sets up.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Namespace prefix tag (see [`super::Testbed::unique_prefix`]).
    pub tag: String,
    /// The `qkd-ipsec` executable the agents run.
    pub binary: PathBuf,
    pub topology: Topology,
    /// `[peer.relay] mode` of the ends' relayed peer.
    pub relay_mode: RelayMode,
    /// `[peer.relay] fallback`.
    pub fallback: bool,
    /// `[peer.relay] key_bytes`: bytes of each relayed key (one pool block).
    pub relay_key_bytes: u32,
    /// `[peer.relay] wait`: how long the destination waits for a key's
    /// shares.
    pub relay_wait: Duration,
    /// `[peer.relay] pool_target_bytes`.
    pub relay_pool_target_bytes: u64,
    /// Whether the end gateways also forward relayed keys (`[network]
    /// relay`); middle gateways always do.
    pub relay_at_ends: bool,
    /// The two ends serve keys to their sites' hosts (ETSI GS QKD 014 on
    /// [`KME_PORT`]): the SAE `sae-<letter>` behind each end shares keys
    /// with the one behind the other end, drawn from the relayed pool.
    pub kme: bool,
    /// LAB ONLY: these nodes write every relayed-key share they open to
    /// [`NodeFiles::relay_shares`] (to show what a relay learns).
    pub export_relay_shares: Vec<Node>,
    /// Simulated fibre length of every QKD link.
    pub length_km: f64,
    /// Sifted key bits per QKD block.
    pub block_sifted_bits: usize,
    /// The simulated links' pulse rate.
    pub pulse_rate_hz: f64,
    pub rekey_interval: Duration,
    /// How the tunnel between the sites makes SA keys from relayed keys.
    pub keying: Keying,
    /// Fraction of the interval by which a rekey may come early (0 = exact).
    pub rekey_jitter: f64,
    /// Lifetimes of the tunnel between the sites.
    pub lifetime: LifetimeOptions,
    pub on_stop: OnStop,
    /// Length of each bootstrap secret (at least
    /// [`crate::config::MIN_BOOTSTRAP_SECRET_BYTES`]).
    pub bootstrap_bytes: usize,
    /// `QKD_IPSEC_LOG` for the agents (tracing EnvFilter syntax).
    pub log_filter: String,
    /// Peer-channel reconnect backoff cap.
    pub backoff_max: Duration,
}

impl NetworkOptions {
    /// The pair's defaults ([`AgentPairOptions::new`]) for everything the
    /// two fixtures share; single-path relaying without fallback, keys of
    /// 256 bytes, a 4 KiB relayed pool, ends that do not relay.
    pub fn new(tag: &str, binary: impl Into<PathBuf>, topology: Topology) -> Self {
        let pair = AgentPairOptions::new(tag, binary);
        Self {
            tag: pair.tag,
            binary: pair.binary,
            topology,
            relay_mode: RelayMode::Single,
            fallback: false,
            relay_key_bytes: 256,
            relay_wait: Duration::from_secs(10),
            relay_pool_target_bytes: 4096,
            relay_at_ends: false,
            kme: false,
            export_relay_shares: Vec::new(),
            length_km: pair.length_km,
            block_sifted_bits: pair.block_sifted_bits,
            pulse_rate_hz: pair.pulse_rate_hz,
            rekey_interval: pair.rekey_interval,
            keying: Keying::Direct,
            rekey_jitter: pair.rekey_jitter,
            lifetime: pair.lifetime,
            on_stop: pair.on_stop,
            bootstrap_bytes: pair.bootstrap_bytes,
            log_filter: pair.log_filter,
            backoff_max: pair.backoff_max,
        }
    }
}

/// Where one node's files are, under the network's private directory.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pool_key: PathBuf,
    pub state_dir: PathBuf,
    pub status_socket: PathBuf,
    /// stdout + stderr of every run of this agent, appended.
    pub log: PathBuf,
    /// LAB ONLY: the shares this node opens, when
    /// [`NetworkOptions::export_relay_shares`] names it.
    pub relay_shares: PathBuf,
    /// The KME's server identity, when the ends serve keys.
    pub kme: TlsFiles,
}

impl NodeFiles {
    pub(crate) fn under(root: &Path, node: Node) -> Self {
        let dir = root.join(node.gateway_name());
        Self {
            config: dir.join("gateway.toml"),
            pool_key: dir.join("pool-key"),
            state_dir: dir.join("state"),
            status_socket: dir.join("status.sock"),
            log: dir.join("agent.log"),
            relay_shares: dir.join("relay-shares"),
            kme: TlsFiles {
                ca: lab_ca_file(root),
                cert: pki_dir(root).join(format!("kme-{}.pem", node.gateway_name())),
                key: pki_dir(root).join(format!("kme-{}.key", node.gateway_name())),
            },
            dir,
        }
    }

    /// The bootstrap secret this node shares with `peer` (the same bytes
    /// are in `peer`'s file for this node).
    pub fn bootstrap(&self, peer: Node) -> PathBuf {
        self.dir.join(format!("bootstrap-{}", peer.gateway_name()))
    }
}

/// The name of the tunnel between the two sites (`site-a-site-c` …).
pub fn network_tunnel_name(topology: Topology) -> String {
    let (first, last) = topology.ends();
    format!("site-{}-site-{}", first.letter(), last.letter())
}

/// The TOML of `node`'s configuration. See the module docs.
///
/// # Panics
/// If `node` is not in `opts.topology`.
pub fn render_node_config(node: Node, opts: &NetworkOptions, files: &NodeFiles) -> String {
    let topology = opts.topology;
    assert!(
        topology.contains(node),
        "{node} is not a node of the {topology} topology"
    );
    let mut t = String::new();
    let mut line = |s: String| {
        t.push_str(&s);
        t.push('\n');
    };
    GatewaySection {
        name: node.gateway_name(),
        listen: Some(SocketAddr::new(node.wan_addr(), PEER_PORT)),
        state_dir: &files.state_dir,
        status_socket: &files.status_socket,
        pool_key: &files.pool_key,
        on_stop: opts.on_stop,
    }
    .render(&mut line);
    let serves_keys = opts.kme && topology.is_end(node);
    if serves_keys {
        line(format!("kme_listen = \"0.0.0.0:{KME_PORT}\""));
    }
    line(String::new());
    render_network(node, opts, files, &mut line);
    for (peer, channel) in topology.channels_of(node) {
        render_peer(node, peer, &channel, opts, files, &mut line);
    }
    if topology.is_end(node) {
        render_site_tunnel(node, opts, &mut line);
    }
    if serves_keys {
        let (first, last) = topology.ends();
        let other = if node == first { last } else { first };
        line(String::new());
        KmeSection {
            kme_id: &format!("kme-{}", node.gateway_name()),
            tls: &files.kme,
            saes: vec![(node.sae_id(), vec![other.gateway_name()])],
        }
        .render(&mut line);
    }
    t
}

/// `[network]`: the same links on every node; relaying on the middle
/// nodes (and on the ends if asked).
fn render_network(
    node: Node,
    opts: &NetworkOptions,
    files: &NodeFiles,
    line: &mut impl FnMut(String),
) {
    let links: Vec<String> = opts
        .topology
        .links()
        .iter()
        .map(|(a, b)| {
            format!(
                "[{}, {}]",
                quoted(a.gateway_name()),
                quoted(b.gateway_name())
            )
        })
        .collect();
    let relay = !opts.topology.is_end(node) || opts.relay_at_ends;
    line("[network]".into());
    line(format!("links = [{}]", links.join(", ")));
    line(format!("relay = {relay}"));
    if opts.export_relay_shares.contains(&node) {
        line(format!(
            "lab_export_relay_shares = {}",
            path_str(&files.relay_shares)
        ));
    }
    line(String::new());
}

fn render_peer(
    node: Node,
    peer: Node,
    channel: &Channel,
    opts: &NetworkOptions,
    files: &NodeFiles,
    line: &mut impl FnMut(String),
) {
    line("[[peer]]".into());
    line(format!("name = {}", quoted(peer.gateway_name())));
    if node == channel.transmitter {
        let dial = SocketAddr::new(peer.wan_addr(), PEER_PORT);
        line("role = \"transmitter\"".into());
        line(format!("address = {}", quoted(&dial.to_string())));
    } else {
        line("role = \"receiver\"".into());
    }
    line(format!(
        "bootstrap_secret = {}",
        path_str(&files.bootstrap(peer))
    ));
    if opts.kme && channel.kind == ChannelKind::Relayed {
        // The SAE behind the far end, which this end's SAE shares keys with.
        line(format!("saes = {}", toml_list(&[peer.sae_id()])));
    }
    line(String::new());
    match channel.kind {
        ChannelKind::Link => SimulatedLink {
            length_km: opts.length_km,
            pulse_rate_hz: opts.pulse_rate_hz,
            block_sifted_bits: opts.block_sifted_bits,
            lab_export_fibre_keys: None,
            lab_seed_pool: None,
        }
        .render(line),
        ChannelKind::Relayed => render_relay(opts, line),
    }
    render_channel(opts.backoff_max, line);
}

/// `[peer.link] kind = "relayed"` and its `[peer.relay]`.
fn render_relay(opts: &NetworkOptions, line: &mut impl FnMut(String)) {
    line("[peer.link]".into());
    // No optics: keys are relayed hop by hop over the QKD links.
    line("kind = \"relayed\"".into());
    line(String::new());
    line("[peer.relay]".into());
    line(format!("mode = {}", quoted(opts.relay_mode.name())));
    line(format!("fallback = {}", opts.fallback));
    line(format!("key_bytes = {}", opts.relay_key_bytes));
    line(format!("wait = {}", duration_str(opts.relay_wait)));
    line(format!(
        "pool_target_bytes = {}",
        opts.relay_pool_target_bytes
    ));
    line(format!("retry_max = {}", duration_str(RELAY_RETRY_MAX)));
    line(String::new());
}

/// The tunnel between the two sites, from an end `node`'s view.
fn render_site_tunnel(node: Node, opts: &NetworkOptions, line: &mut impl FnMut(String)) {
    let topology = opts.topology;
    let (first, last) = topology.ends();
    let other = if node == first { last } else { first };
    let site = |n: Node| topology.site(n).expect("an end has a site");
    TunnelSection {
        name: &network_tunnel_name(topology),
        peer: other.gateway_name(),
        local_site: site(node),
        remote_site: site(other),
        local_endpoint: node.wan_addr(),
        remote_endpoint: other.wan_addr(),
        keying: opts.keying,
        rekey_interval: opts.rekey_interval,
        rekey_jitter: opts.rekey_jitter,
        lifetime: &opts.lifetime,
    }
    .render(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::{Table, Value};

    fn render_all(opts: &NetworkOptions) -> Vec<(Node, Table)> {
        let root = Path::new("/nonexistent/qkd-net");
        opts.topology
            .nodes()
            .iter()
            .map(|&node| {
                let files = NodeFiles::under(root, node);
                let text = render_node_config(node, opts, &files);
                // The agent's own checks accept it (paths are not opened).
                let config = crate::config::Config::parse(&text, &files.config)
                    .unwrap_or_else(|e| panic!("{node}: {e}\n{text}"));
                for p in config.peers.iter().filter_map(|p| p.relay.as_ref()) {
                    assert!(!p.paths.is_empty(), "{node}: a relayed peer without a path");
                }
                let table: Table = text
                    .parse()
                    .unwrap_or_else(|e| panic!("{node}: {e}\n{text}"));
                (node, table)
            })
            .collect()
    }

    fn str_at<'a>(t: &'a Table, key: &str) -> &'a str {
        t.get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key} in {t:?}"))
    }

    fn peers(t: &Table) -> Vec<&Table> {
        t.get("peer")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_table).collect())
            .unwrap_or_default()
    }

    fn peer<'a>(t: &'a Table, name: &str) -> &'a Table {
        peers(t)
            .into_iter()
            .find(|p| str_at(p, "name") == name)
            .unwrap_or_else(|| panic!("no peer {name}"))
    }

    fn link_kind(p: &Table) -> &str {
        str_at(p["link"].as_table().expect("[peer.link]"), "kind")
    }

    fn check_topology(opts: &NetworkOptions) {
        let topology = opts.topology;
        let configs = render_all(opts);
        let (first, last) = topology.ends();
        let root = Path::new("/nonexistent/qkd-net");
        for (node, cfg) in &configs {
            let gateway = cfg["gateway"].as_table().expect("[gateway]");
            assert_eq!(str_at(gateway, "name"), node.gateway_name());
            assert_eq!(
                str_at(gateway, "listen"),
                format!("{}:{PEER_PORT}", node.wan_addr())
            );
            // The same links everywhere.
            assert_eq!(cfg["network"]["links"], configs[0].1["network"]["links"]);
            let relay = cfg["network"]["relay"].as_bool().expect("relay");
            assert_eq!(relay, !topology.is_end(*node), "{node}");
            // One peer per QKD link, plus the relayed one on the ends.
            let mut names: Vec<&str> = peers(cfg).iter().map(|p| str_at(p, "name")).collect();
            names.sort_unstable();
            let mut expected: Vec<&str> = topology
                .links()
                .iter()
                .filter_map(|&(a, b)| match node {
                    n if *n == a => Some(b.gateway_name()),
                    n if *n == b => Some(a.gateway_name()),
                    _ => None,
                })
                .collect();
            if *node == first {
                expected.push(last.gateway_name());
            } else if *node == last {
                expected.push(first.gateway_name());
            }
            expected.sort_unstable();
            assert_eq!(names, expected, "{node}'s peers");
            for p in peers(cfg) {
                let other = str_at(p, "name");
                let expected_kind = if topology.is_end(*node)
                    && [first.gateway_name(), last.gateway_name()].contains(&other)
                {
                    "relayed"
                } else {
                    "simulated"
                };
                assert_eq!(link_kind(p), expected_kind, "{node} → {other}");
                let secret = NodeFiles::under(root, *node)
                    .dir
                    .join(format!("bootstrap-{other}"));
                assert_eq!(str_at(p, "bootstrap_secret"), secret.to_string_lossy());
            }
            let tunnels = cfg.get("tunnel").and_then(Value::as_array);
            if topology.is_end(*node) {
                let tunnels = tunnels.expect("the ends have the site tunnel");
                assert_eq!(tunnels.len(), 1);
                let tunnel = tunnels[0].as_table().expect("[[tunnel]]");
                let other = if *node == first { last } else { first };
                assert_eq!(str_at(tunnel, "peer"), other.gateway_name());
                assert_eq!(
                    str_at(tunnel, "local_endpoint"),
                    node.wan_addr().to_string()
                );
                assert_eq!(
                    str_at(tunnel, "remote_endpoint"),
                    other.wan_addr().to_string()
                );
                assert_eq!(
                    tunnel["local_subnets"][0].as_str(),
                    Some(topology.site(*node).unwrap().to_string().as_str())
                );
            } else {
                assert!(tunnels.is_none(), "{node} has no site");
            }
        }
        // On every channel: the same peer kind on both sides, one
        // transmitter that dials the other's WAN address, one receiver.
        for channel in topology.channels() {
            let table = |n: Node| &configs.iter().find(|(m, _)| *m == n).unwrap().1;
            let tx = peer(table(channel.transmitter), channel.receiver.gateway_name());
            let rx = peer(table(channel.receiver), channel.transmitter.gateway_name());
            assert_eq!(str_at(tx, "role"), "transmitter");
            assert_eq!(str_at(rx, "role"), "receiver");
            assert_eq!(
                str_at(tx, "address"),
                format!("{}:{PEER_PORT}", channel.receiver.wan_addr())
            );
            assert!(rx.get("address").is_none(), "only the transmitter dials");
            assert_eq!(link_kind(tx), link_kind(rx));
        }
    }

    #[test]
    fn chain_configs_have_the_right_peers_roles_and_tunnel() {
        check_topology(&NetworkOptions::new("t", "/bin/true", Topology::Chain));
    }

    #[test]
    fn diamond_configs_have_the_right_peers_roles_and_tunnel() {
        check_topology(&NetworkOptions::new("t", "/bin/true", Topology::Diamond));
    }

    #[test]
    fn relay_options_reach_the_relayed_peer() {
        let mut opts = NetworkOptions::new("t", "/bin/true", Topology::Diamond);
        opts.relay_mode = RelayMode::Multipath;
        opts.fallback = true;
        opts.relay_key_bytes = 96;
        opts.relay_pool_target_bytes = 1234;
        opts.relay_at_ends = true;
        opts.lifetime.hard_packets = Some(10_000);
        opts.keying = Keying::Wrapped;
        let configs = render_all(&opts);
        for (node, cfg) in &configs {
            assert_eq!(cfg["network"]["relay"].as_bool(), Some(true), "{node}");
        }
        let a = &configs[0].1;
        let relayed = peer(a, "gw-d");
        let relay = relayed["relay"].as_table().expect("[peer.relay]");
        assert_eq!(str_at(relay, "mode"), "multipath");
        assert_eq!(relay["fallback"].as_bool(), Some(true));
        assert_eq!(relay["key_bytes"].as_integer(), Some(96));
        assert_eq!(str_at(relay, "wait"), "10000ms");
        assert_eq!(relay["pool_target_bytes"].as_integer(), Some(1234));
        assert_eq!(str_at(relay, "retry_max"), "5000ms");
        assert_eq!(
            str_at(relayed["channel"].as_table().unwrap(), "backoff_max"),
            "2000ms"
        );
        let tunnel = a["tunnel"][0].as_table().unwrap();
        assert_eq!(str_at(tunnel, "name"), "site-a-site-d");
        assert_eq!(str_at(tunnel, "keying"), "wrapped");
        assert_eq!(
            tunnel["lifetime"]["hard_packets"].as_integer(),
            Some(10_000)
        );
    }

    #[test]
    fn with_kme_the_ends_serve_their_sites_sae_keys_shared_over_the_relayed_link() {
        let mut opts = NetworkOptions::new("t", "/bin/true", Topology::Chain);
        opts.kme = true;
        let configs = render_all(&opts);
        for (node, cfg) in &configs {
            let end = *node != Node::B;
            assert_eq!(cfg.contains_key("kme"), end, "{node}");
            assert_eq!(
                cfg["gateway"]
                    .as_table()
                    .unwrap()
                    .contains_key("kme_listen"),
                end
            );
        }
        let (a, c) = (&configs[0].1, &configs[2].1);
        let sae = a["kme"]["sae"][0].as_table().unwrap();
        assert_eq!(str_at(sae, "id"), "sae-a");
        assert_eq!(sae["peers"].as_array().unwrap()[0].as_str(), Some("gw-c"));
        let relayed = peer(a, "gw-c");
        assert_eq!(
            relayed["saes"].as_array().unwrap()[0].as_str(),
            Some("sae-c")
        );
        assert!(!peer(a, "gw-b").contains_key("saes"));
        assert_eq!(
            str_at(c["kme"]["sae"][0].as_table().unwrap(), "id"),
            "sae-c"
        );
        // Each rendering is a configuration the agent accepts.
        for (node, cfg) in &configs {
            let text = toml::to_string(cfg).unwrap();
            crate::config::Config::parse(&text, Path::new("/nonexistent/gateway.toml"))
                .unwrap_or_else(|e| panic!("{node}: {e}"));
        }
    }

    #[test]
    #[should_panic(expected = "gw-d is not a node of the chain topology")]
    fn a_node_outside_the_topology_is_refused() {
        let opts = NetworkOptions::new("t", "/bin/true", Topology::Chain);
        render_node_config(Node::D, &opts, &NodeFiles::under(Path::new("/x"), Node::D));
    }
}
