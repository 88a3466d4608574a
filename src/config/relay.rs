//! `[peer.relay]`: how a `kind = "relayed"` link gets its keys — relayed
//! hop by hop over other gateways' QKD links ([`crate::relay`]) — and
//! `[network]`, the QKD links of the whole network, from which the paths
//! are found.
//!
//! A relayed peer is a gateway this one has no QKD link with. The peer
//! channel to it is a direct classical connection like any other (its own
//! bootstrap secret, then keys from its own pool), and its pool is filled
//! with keys that travel over the QKD links listed in `[network]`: the
//! gateway whose `role` is `"transmitter"` draws them (the source), the
//! receiver gets them (the destination). `[network]` must be the same on
//! every gateway; each gateway's own `[[peer]]` QKD links must be in it.
//!
//! Paths: `mode = "single"` uses a shortest path (fewest hops, ties broken
//! by node names); `mode = "multipath"` splits each key over the largest
//! set of node-disjoint paths, so that no single relay sees the key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Findings;
use super::etsi014::{check_pool_target, check_retry_max};
use super::gateway::anchor;
use super::values::{HumanDuration, check_name};
use crate::keys::pool::MAX_BLOCK_BYTES;
use crate::relay::hop::{MAX_PATH_NODES, MAX_RELAYED_KEY_BYTES, MAX_SHARES};

/// Smallest relayed key (bytes): one SA key and salt fit.
pub const MIN_RELAYED_KEY_BYTES: u32 = 32;

/// How keys reach a relayed peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// One shortest path: every relay on it learns the key.
    Single,
    /// Every node-disjoint path, each carrying an XOR share: a relay learns
    /// nothing unless it sees every share.
    Multipath,
}

impl RelayMode {
    pub fn name(self) -> &'static str {
        match self {
            RelayMode::Single => "single",
            RelayMode::Multipath => "multipath",
        }
    }
}

/// `[peer.relay]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// `"single"` (one shortest path) or `"multipath"` (an XOR share on
    /// each node-disjoint path). Default "single".
    ///
    /// Example: `mode = "multipath"`
    pub mode: RelayMode,
    /// Multipath only: when some paths are down, relay over those that are
    /// up rather than not at all. Off by default (no silent fallback); an
    /// alarm is raised either way.
    ///
    /// Example: `fallback = true`
    pub fallback: bool,
    /// Bytes of each relayed key (one pool block), 32..=4096. The same on
    /// both gateways. Default 256.
    ///
    /// Example: `key_bytes = 256`
    pub key_bytes: u32,
    /// The source relays keys while the pool holds fewer bytes than this.
    /// Default 8192.
    ///
    /// Example: `pool_target_bytes = 8192`
    pub pool_target_bytes: u64,
    /// How long the destination waits for a key's shares once offered it
    /// (and holds shares that arrived before their offer). Default "10s".
    ///
    /// Example: `wait = "10s"`
    pub wait: HumanDuration,
    /// After a failure the source waits 1 s, doubling on each further
    /// failure up to this. Default "60s".
    ///
    /// Example: `retry_max = "60s"`
    pub retry_max: HumanDuration,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            mode: RelayMode::Single,
            fallback: false,
            key_bytes: 256,
            pool_target_bytes: 8 << 10,
            wait: HumanDuration::secs(10),
            retry_max: HumanDuration::secs(60),
        }
    }
}

/// `[peer.relay]`, checked, with the paths `[network]` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub mode: RelayMode,
    pub fallback: bool,
    pub key_bytes: u32,
    pub pool_target_bytes: u64,
    pub wait: Duration,
    pub retry_max: Duration,
    /// This gateway first, the peer last: one path for `single`, the
    /// node-disjoint paths for `multipath`. Filled in from `[network]`.
    pub paths: Vec<Vec<String>>,
}

impl RelaySection {
    pub(super) fn validate(&self, prefix: &str, f: &mut Findings) -> Option<Relay> {
        let at = |field: &str| format!("{prefix}.{field}");
        let mut ok = true;
        if !(MIN_RELAYED_KEY_BYTES..=MAX_RELAYED_KEY_BYTES).contains(&self.key_bytes) {
            ok = false;
            f.error(
                at("key_bytes"),
                format!(
                    "{}: must be in {MIN_RELAYED_KEY_BYTES}..={MAX_RELAYED_KEY_BYTES}, e.g. 256",
                    self.key_bytes
                ),
            );
        }
        if ok {
            ok = check_pool_target(
                &at("pool_target_bytes"),
                self.pool_target_bytes,
                u64::from(self.key_bytes),
                ("key", "keys"),
                f,
            );
        }
        const { assert!(MAX_RELAYED_KEY_BYTES <= MAX_BLOCK_BYTES) };
        if self.wait.get() < Duration::from_millis(100) {
            ok = false;
            f.error(
                at("wait"),
                format!("{}: must be at least \"100ms\"", self.wait),
            );
        }
        ok &= check_retry_max(&at("retry_max"), self.retry_max, f);
        if self.fallback && self.mode == RelayMode::Single {
            f.warn(
                at("fallback"),
                "has no effect with mode = \"single\" (one path, nothing to fall back from)",
            );
        }
        ok.then(|| Relay {
            mode: self.mode,
            fallback: self.fallback,
            key_bytes: self.key_bytes,
            pool_target_bytes: self.pool_target_bytes,
            wait: self.wait.get(),
            retry_max: self.retry_max.get(),
            paths: Vec::new(),
        })
    }
}

/// `[network]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// Every QKD link of the network as a pair of gateway names; the same
    /// list on every gateway. Required with a relayed peer or `relay`.
    ///
    /// Example: `links = [["gw-a", "gw-b"], ["gw-b", "gw-c"]]`
    pub links: Vec<Vec<String>>,
    /// This gateway relays keys between its QKD links for other gateways
    /// (it learns what it relays, unless the ends use multipath). Default
    /// false: relay messages are refused.
    ///
    /// Example: `relay = true`
    pub relay: bool,
    /// LAB ONLY. Append every relayed-key share this gateway opens to this
    /// file (created 0600), to show what a relay learns. Whoever reads it
    /// learns those shares (on a single path: the keys). Unset by default.
    ///
    /// Example: `lab_export_relay_shares = "/run/qkd-lab/relay-shares"`
    pub lab_export_relay_shares: Option<PathBuf>,
}

/// `[network]`, checked: an undirected graph of QKD links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    adjacent: BTreeMap<String, BTreeSet<String>>,
    /// This gateway forwards relayed keys.
    pub relay: bool,
    /// Lab only: the share export file (anchored to the config file).
    pub lab_export_relay_shares: Option<PathBuf>,
}

impl NetworkSection {
    pub(super) fn validate(&self, base: &Path, f: &mut Findings) -> Option<Network> {
        let mut net = Network {
            relay: self.relay,
            lab_export_relay_shares: self
                .lab_export_relay_shares
                .as_deref()
                .map(|p| anchor(base, p)),
            ..Network::default()
        };
        if let Some(p) = &net.lab_export_relay_shares {
            f.warn(
                "network.lab_export_relay_shares",
                format!(
                    "LAB ONLY: the agent writes every relayed-key share it opens to {}; whoever \
                     reads it learns them (on a single path, the keys)",
                    p.display()
                ),
            );
        }
        let mut ok = true;
        for (i, pair) in self.links.iter().enumerate() {
            let path = format!("network.links[{i}]");
            let [a, b] = pair.as_slice() else {
                ok = false;
                f.error(
                    path,
                    "a link is two gateway names, e.g. [\"gw-a\", \"gw-b\"]",
                );
                continue;
            };
            if let Some(why) = [a, b].iter().find_map(|n| check_name(n).err()) {
                ok = false;
                f.error(path, why);
                continue;
            }
            if a == b {
                ok = false;
                f.error(path, format!("{a:?} linked to itself"));
                continue;
            }
            if net.has_link(a, b) {
                f.warn(path, format!("{a}–{b} is listed twice"));
            }
            net.adjacent.entry(a.clone()).or_default().insert(b.clone());
            net.adjacent.entry(b.clone()).or_default().insert(a.clone());
        }
        ok.then_some(net)
    }
}

impl Network {
    /// A network of `links` (for tests and tools).
    pub fn from_links<'a>(links: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut net = Network::default();
        for (a, b) in links {
            net.adjacent.entry(a.into()).or_default().insert(b.into());
            net.adjacent.entry(b.into()).or_default().insert(a.into());
        }
        net
    }

    /// Every link once, as (smaller name, larger name), sorted.
    pub fn links(&self) -> Vec<(&str, &str)> {
        self.adjacent
            .iter()
            .flat_map(|(a, ns)| ns.iter().map(move |b| (a.as_str(), b.as_str())))
            .filter(|(a, b)| a < b)
            .collect()
    }

    pub fn has_link(&self, a: &str, b: &str) -> bool {
        self.adjacent.get(a).is_some_and(|n| n.contains(b))
    }

    /// The gateways `node` has a QKD link with, by name.
    pub fn neighbours(&self, node: &str) -> impl Iterator<Item = &str> {
        self.adjacent
            .get(node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every gateway reachable from `from` (itself included).
    pub fn reachable(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([from.to_string()]);
        let mut queue = VecDeque::from([from.to_string()]);
        while let Some(n) = queue.pop_front() {
            for m in self.neighbours(&n) {
                if seen.insert(m.to_string()) {
                    queue.push_back(m.to_string());
                }
            }
        }
        seen
    }

    /// A path with the fewest hops, ties broken by names (so every gateway
    /// computes the same one). `None` if `to` is unreachable.
    pub fn shortest_path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        self.disjoint_paths_limited(from, to, 1).into_iter().next()
    }

    /// The largest set of paths from `from` to `to` that share no node but
    /// the ends (at most [`MAX_SHARES`], each at most [`MAX_PATH_NODES`]
    /// nodes), shortest first: unit-capacity max flow over the graph with
    /// every node split in two, augmenting along shortest paths.
    pub fn disjoint_paths(&self, from: &str, to: &str) -> Vec<Vec<String>> {
        self.disjoint_paths_limited(from, to, usize::from(MAX_SHARES))
    }

    fn disjoint_paths_limited(&self, from: &str, to: &str, max: usize) -> Vec<Vec<String>> {
        let names: Vec<&String> = self.adjacent.keys().collect();
        let index = |n: &str| names.iter().position(|m| m.as_str() == n);
        let (Some(s), Some(t)) = (index(from), index(to)) else {
            return Vec::new();
        };
        if s == t {
            return Vec::new();
        }
        // Node v is v_in = 2v and v_out = 2v + 1; capacity in → out is 1
        // (the ends: unbounded), each link u–v gives u_out → v_in and
        // v_out → u_in of capacity 1.
        let n = 2 * names.len();
        let mut cap = vec![BTreeMap::<usize, i32>::new(); n];
        for (v, name) in names.iter().enumerate() {
            let c = if v == s || v == t { max as i32 } else { 1 };
            cap[2 * v].insert(2 * v + 1, c);
            for m in self.neighbours(name) {
                let u = index(m).expect("neighbours are nodes");
                cap[2 * v + 1].insert(2 * u, 1);
            }
        }
        let original = cap.clone();
        let (src, sink) = (2 * s + 1, 2 * t);
        let mut found = 0;
        while found < max {
            // Shortest augmenting path by BFS over residual capacities;
            // neighbours in index (= name) order keep it deterministic.
            let mut prev = vec![usize::MAX; n];
            prev[src] = src;
            let mut queue = VecDeque::from([src]);
            while let Some(x) = queue.pop_front() {
                // Residual edges, reverse ones included (an augmentation
                // adds them to `cap[y]`), in index order.
                let next: Vec<usize> = cap[x]
                    .iter()
                    .filter(|&(_, &c)| c > 0)
                    .map(|(&y, _)| y)
                    .collect();
                for y in next {
                    if prev[y] == usize::MAX {
                        prev[y] = x;
                        queue.push_back(y);
                    }
                }
            }
            if prev[sink] == usize::MAX {
                break;
            }
            let mut y = sink;
            while y != src {
                let x = prev[y];
                *cap[x].entry(y).or_insert(0) -= 1;
                *cap[y].entry(x).or_insert(0) += 1;
                y = x;
            }
            found += 1;
        }
        // Each unit of flow out of the source is one path: follow used
        // link capacity (original minus residual) to the sink.
        let mut used: Vec<BTreeMap<usize, i32>> = original
            .iter()
            .enumerate()
            .map(|(x, m)| {
                m.iter()
                    .map(|(&y, &c)| (y, c - cap[x].get(&y).copied().unwrap_or(0)))
                    .filter(|&(_, f)| f > 0)
                    .collect()
            })
            .collect();
        let mut paths = Vec::new();
        for _ in 0..found {
            let mut path = vec![names[s].clone()];
            let mut x = src;
            let mut steps = 0;
            while x != sink && steps <= n {
                steps += 1;
                let Some((&y, _)) = used[x].iter().find(|&(_, &f)| f > 0) else {
                    break;
                };
                *used[x].get_mut(&y).expect("found") -= 1;
                // y is some v_in; cross to v_out unless it is the sink.
                let v = y / 2;
                path.push(names[v].clone());
                x = if y == sink { y } else { 2 * v + 1 };
                if x != sink {
                    *used[y].get_mut(&x).expect("in → out used") -= 1;
                }
            }
            if x == sink && path.len() <= MAX_PATH_NODES {
                paths.push(path);
            }
        }
        paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        paths
    }

    /// The nodes `from` cannot reach without `to`'s side, for messages:
    /// "gw-a reaches gw-a, gw-b".
    pub fn describe_reach(&self, from: &str) -> String {
        let r: Vec<String> = self.reachable(from).into_iter().collect();
        format!("{from} reaches {}", r.join(", "))
    }
}

/// Checks this gateway's peers against `[network]` and gives each relayed
/// peer its paths: every QKD link of this gateway is in `[network]` and
/// every link there that touches this gateway is one of its QKD links; a
/// relayed peer has no QKD link with this gateway, is reachable (else the
/// error names what each side reaches), and has two node-disjoint paths
/// for multipath.
pub(super) fn check_network(
    network: Option<&Network>,
    me: &str,
    peers: &mut [Option<super::Peer>],
    f: &mut Findings,
) {
    use super::LinkKind;
    let Some(net) = network else {
        for (i, p) in peers.iter().enumerate() {
            if p.as_ref().is_some_and(|p| p.kind == LinkKind::Relayed) {
                f.error(
                    format!("peer[{i}].link.kind"),
                    "a relayed peer needs [network] with the network's QKD links, e.g. \
                     links = [[\"gw-a\", \"gw-b\"], [\"gw-b\", \"gw-c\"]]",
                );
            }
        }
        return;
    };
    let direct: BTreeSet<&str> = peers
        .iter()
        .flatten()
        .filter(|p| p.kind != LinkKind::Relayed)
        .map(|p| p.name.as_str())
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let Some(p) = p else { continue };
        if p.kind != LinkKind::Relayed && !net.has_link(me, &p.name) {
            f.error(
                format!("peer[{i}].name"),
                format!(
                    "{me} has a QKD link with {} but [network] links does not list it; add \
                     [\"{me}\", \"{}\"] (the same list on every gateway)",
                    p.name, p.name
                ),
            );
        }
    }
    for other in net.neighbours(me) {
        if !direct.contains(other) {
            f.error(
                "network.links",
                format!(
                    "[network] lists a QKD link {me}–{other}, but this gateway has no [[peer]] \
                     {other:?} with kind = \"simulated\" or \"etsi014\"; add the peer or \
                     remove the link"
                ),
            );
        }
    }
    for (i, slot) in peers.iter_mut().enumerate() {
        let Some(p) = slot else { continue };
        let Some(relay) = p.relay.as_mut() else {
            continue;
        };
        let at = format!("peer[{i}].link.kind");
        if net.has_link(me, &p.name) {
            f.error(
                at,
                format!(
                    "[network] has a QKD link {me}–{}: use it (kind = \"simulated\" or \
                     \"etsi014\") rather than relaying",
                    p.name
                ),
            );
            continue;
        }
        let paths = match relay.mode {
            RelayMode::Single => net.shortest_path(me, &p.name).into_iter().collect(),
            RelayMode::Multipath => net.disjoint_paths(me, &p.name),
        };
        if paths.is_empty() {
            let theirs = net.reachable(&p.name);
            f.error(
                at,
                format!(
                    "{} cannot be reached over the QKD links in [network]: {}, and {} {}; \
                     no link joins the two groups — add the missing link",
                    p.name,
                    net.describe_reach(me),
                    p.name,
                    if theirs.len() > 1 {
                        format!(
                            "reaches {}",
                            theirs.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    } else {
                        "has no QKD link at all".to_string()
                    },
                ),
            );
            continue;
        }
        if relay.mode == RelayMode::Multipath && paths.len() < 2 {
            f.error(
                format!("peer[{i}].relay.mode"),
                format!(
                    "multipath needs at least two node-disjoint paths to {}; [network] has \
                     one ({}), so every relay on it would learn the keys: add a link that \
                     bypasses it, or use mode = \"single\"",
                    p.name,
                    paths[0].join("–")
                ),
            );
            continue;
        }
        relay.paths = paths;
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
