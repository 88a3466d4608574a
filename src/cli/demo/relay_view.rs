//! The relay demo's live view (`demo --topology chain|diamond`): one
//! plain-text frame per second from every gateway's status snapshot, the
//! ping counters and each gateway's WAN filter counter. Shows each QKD
//! link (hop) with the pool bytes either end spent on relaying and the
//! shares it counted on that link, the relayed keys appended at the two
//! ends, the end-to-end tunnel and the traffic through it. Pure functions
//! of their inputs (no clock, no I/O), unit-tested with hand-made
//! snapshots; the pieces every topology shows alike come from
//! [`super::view`]. Only public figures: counts, SPIs — never key bytes.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use super::view::{self, LiveFigures};
use crate::config::RelayMode;
use crate::keys::KeyUse;
use crate::ops::{
    BoardSnapshot, KeySourceSnapshot, PeerSnapshot, RELAYED_LINK_CAVEAT, RelayLinkSnapshot,
    SIMULATED_LINK_CAVEAT, key_use_name,
};
use crate::testbed::{Node, Topology, network_tunnel_name};
use crate::xfrm::Prefix;

/// Everything one frame of a relay topology shows.
pub struct RelayFrame<'a> {
    pub topology: Topology,
    pub mode: RelayMode,
    /// Simulated fibre length of every QKD link.
    pub length_km: f64,
    /// Every gateway's latest status, in [`Topology::nodes`] order.
    pub status: &'a [Option<BoardSnapshot>],
    pub live: &'a LiveFigures,
}

impl RelayFrame<'_> {
    fn of(&self, node: Node) -> Option<&BoardSnapshot> {
        let slot = self.topology.nodes().iter().position(|&n| n == node)?;
        self.status.get(slot)?.as_ref()
    }

    /// `node`'s peer entry for `peer`.
    fn peer(&self, node: Node, peer: Node) -> Option<&PeerSnapshot> {
        self.of(node)?
            .peers
            .iter()
            .find(|p| p.name == peer.gateway_name())
    }

    /// `node`'s relay counters on its link to `peer` (zero if none yet).
    fn relay_link(&self, node: Node, peer: Node) -> RelayLinkSnapshot {
        self.of(node)
            .and_then(|s| s.relay.iter().find(|r| r.link == peer.gateway_name()))
            .cloned()
            .unwrap_or_default()
    }

    /// Pool bytes `node` spent on relaying on its link to `peer`.
    fn relay_bytes(&self, node: Node, peer: Node) -> u64 {
        let name = key_use_name(KeyUse::Relay);
        self.peer(node, peer)
            .and_then(|p| p.pool.as_ref())
            .map_or(0, |pool| {
                pool.consumed
                    .iter()
                    .filter(|u| u.key_use == name)
                    .map(|u| u.bytes)
                    .sum()
            })
    }

    /// The key source of an end's relayed peer (the other end).
    fn relayed(&self, end: Node) -> Option<&KeySourceSnapshot> {
        self.peer(end, self.other_end(end))?.key_source.as_ref()
    }

    fn other_end(&self, end: Node) -> Node {
        let (first, last) = self.topology.ends();
        if end == first { last } else { first }
    }
}

/// The host behind a site: its `.2` (see [`crate::testbed::Network`]).
fn site_host(site: Prefix) -> IpAddr {
    match site.addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, d + 2))
        }
        v6 => v6,
    }
}

fn host_name(node: Node) -> String {
    format!("host-{}", node.letter())
}

/// `gw-a – gw-b – gw-c`, or the diamond's two paths.
fn picture(topology: Topology) -> String {
    let (first, last) = topology.ends();
    let middles: Vec<&str> = topology
        .nodes()
        .iter()
        .filter(|&&n| !topology.is_end(n))
        .map(|n| n.gateway_name())
        .collect();
    format!(
        "{first} – {} – {last}",
        if middles.len() == 1 {
            middles[0].to_string()
        } else {
            format!("{{{}}}", middles.join(" | "))
        }
    )
}

/// The frame as text (no terminal control codes).
pub fn render(f: &RelayFrame) -> String {
    let mut out = String::new();
    let topology = f.topology;
    let (first, last) = topology.ends();
    let _ = writeln!(
        out,
        "qkd-ipsec demo — {topology} {}, relay {}, {} km of simulated fibre per link — {}",
        picture(topology),
        f.mode.name(),
        f.length_km,
        f.live.title_tail()
    );
    let site = |n: Node| topology.site(n).expect("an end has a site");
    let _ = writeln!(
        out,
        "  {} {} ── {first} {} ══ ESP ══ {} {last} ── {} {}",
        host_name(first),
        site_host(site(first)),
        first.wan_addr(),
        last.wan_addr(),
        host_name(last),
        site_host(site(last)),
    );
    let _ = writeln!(
        out,
        "  no QKD link between {first} and {last}: their keys are relayed by the other gateways"
    );
    let _ = writeln!(out, "  {SIMULATED_LINK_CAVEAT}");
    let _ = writeln!(out, "  {RELAYED_LINK_CAVEAT}\n");
    render_hops(&mut out, f);
    out.push('\n');
    render_relayed_keys(&mut out, f);
    out.push('\n');
    let _ = writeln!(
        out,
        "Tunnel  {} {} ⇄ {}, ESP rfc4106(gcm(aes)), keys from the relayed pool",
        network_tunnel_name(topology),
        site(first),
        site(last)
    );
    for end in [first, last] {
        view::render_tunnel_line(&mut out, end.gateway_name(), f.of(end));
    }
    out.push('\n');
    view::render_traffic(
        &mut out,
        &format!("{} → {}", host_name(first), host_name(last)),
        f.live,
    );
    if let Some(counts) = &f.live.clear_on_wan {
        let each: Vec<String> = topology
            .nodes()
            .iter()
            .zip(counts)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        let _ = writeln!(
            out,
            "         clear-text packets between the sites on each WAN: {} (nftables counters)",
            each.join(", ")
        );
    }
    out.push('\n');
    let every: Vec<(&str, Option<&BoardSnapshot>)> = topology
        .nodes()
        .iter()
        .map(|&n| (n.gateway_name(), f.of(n)))
        .collect();
    view::render_alarms(&mut out, &every);
    out
}

/// Each QKD link: its QKD output, and per end the pool, the part of it
/// spent on relaying and the shares counted on the link.
fn render_hops(out: &mut String, f: &RelayFrame) {
    out.push_str("Hops  (QKD links; each end's pool, its bytes spent on relaying, the shares over the link)\n");
    for &(x, y) in f.topology.links() {
        let state = |n: Node, p: Node| f.peer(n, p).map_or("no status", |p| p.channel.state.name());
        let qkd = f.peer(x, y).or(f.peer(y, x)).map_or(String::new(), |p| {
            format!(
                "   {} blocks with key, {}",
                p.qkd.blocks_ok,
                view::rate(p.qkd.key_rate_bps)
            )
        });
        let _ = writeln!(
            out,
            "  {x} ── {y}  channel {}/{}{qkd}",
            state(x, y),
            state(y, x)
        );
        for (n, p) in [(x, y), (y, x)] {
            render_hop_end(out, f, n, p);
        }
    }
}

fn render_hop_end(out: &mut String, f: &RelayFrame, node: Node, peer: Node) {
    let available = f
        .peer(node, peer)
        .and_then(|p| p.pool.as_ref())
        .map_or("-".into(), |pool| pool.available_bytes.to_string());
    let r = f.relay_link(node, peer);
    let received = if r.received_shares_total == 0 {
        "0".to_string()
    } else {
        format!(
            "{} (relayed on {}, kept {}, refused {})",
            r.received_shares_total,
            r.forwarded_shares_total,
            r.delivered_shares_total,
            r.refused_shares_total
        )
    };
    let _ = writeln!(
        out,
        "     {node}: pool {available} B available, {} B used for relaying; shares sent {}, received {received}",
        f.relay_bytes(node, peer),
        r.sent_shares_total,
    );
}

/// What the two ends appended to their relayed pools.
fn render_relayed_keys(out: &mut String, f: &RelayFrame) {
    let (first, last) = f.topology.ends();
    let how = f
        .relayed(first)
        .or(f.relayed(last))
        .map_or(format!("relay ({})", f.mode.name()), |k| k.kme_url.clone());
    let _ = writeln!(out, "Relayed keys  {first} ⇄ {last}: {how}");
    for end in [first, last] {
        let Some(k) = f.relayed(end) else {
            let _ = writeln!(out, "  {end}: no relayed key source yet");
            continue;
        };
        let pool = f
            .peer(end, f.other_end(end))
            .and_then(|p| p.pool.as_ref())
            .map_or(String::new(), |pool| {
                format!(
                    "; pool {} B available, used: {}",
                    pool.available_bytes,
                    view::pool_uses(pool)
                )
            });
        let _ = writeln!(
            out,
            "  {end} {:<11} {} keys, {} bytes appended, {} errors{pool}{}",
            k.role,
            k.keys_fetched,
            k.bytes_fetched,
            k.errors,
            k.last_error
                .as_deref()
                .map_or(String::new(), |e| format!("; last error: {e}"))
        );
    }
}

/// One `key=value` line a script (and a test) can read: the ends' tunnel
/// and relayed keys, per hop and direction `x_y` the pool bytes `x` spent
/// relaying on its link to `y` and the shares `x` counted there, the ping
/// and the WAN filters' total.
pub fn summary(f: &RelayFrame) -> String {
    let (first, last) = f.topology.ends();
    let tunnel = |n: Node| view::tunnel(f.of(n));
    let mut fields: Vec<(String, String)> = vec![
        ("topology".into(), f.topology.name().into()),
        ("relay".into(), f.mode.name().into()),
        ("seconds".into(), f.live.elapsed_s.to_string()),
    ];
    let mut num = |k: String, v: u64| fields.push((k, v.to_string()));
    for (end, at) in [(first, "first"), (last, "last")] {
        num(
            format!("generation_{at}"),
            tunnel(end).map_or(0, |t| t.generation),
        );
        num(
            format!("rekeys_{at}"),
            tunnel(end).map_or(0, |t| t.rekeys_done()),
        );
        let k = f.relayed(end);
        num(
            format!("relayed_keys_{at}"),
            k.map_or(0, |k| k.keys_fetched),
        );
        num(
            format!("relayed_bytes_{at}"),
            k.map_or(0, |k| k.bytes_fetched),
        );
    }
    for &(x, y) in f.topology.links() {
        for (n, p) in [(x, y), (y, x)] {
            let hop = format!("{}_{}", n.letter(), p.letter());
            let r = f.relay_link(n, p);
            num(format!("relay_bytes_{hop}"), f.relay_bytes(n, p));
            num(format!("shares_sent_{hop}"), r.sent_shares_total);
            num(format!("shares_received_{hop}"), r.received_shares_total);
            num(format!("shares_forwarded_{hop}"), r.forwarded_shares_total);
            num(format!("shares_delivered_{hop}"), r.delivered_shares_total);
            num(format!("shares_refused_{hop}"), r.refused_shares_total);
        }
    }
    let ping = &f.live.ping;
    num("ping_sent".into(), ping.sent);
    num("ping_answered".into(), ping.received);
    num("ping_unanswered".into(), ping.unanswered);
    fields.push((
        "clear_on_wan".into(),
        f.live
            .clear_total()
            .map_or("unknown".into(), |c| c.to_string()),
    ));
    let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("demo summary: {}", line.join(" "))
}

#[cfg(test)]
#[path = "relay_view_tests.rs"]
mod tests;
