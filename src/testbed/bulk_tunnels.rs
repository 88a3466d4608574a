//! The extra tunnels of an [`super::AgentPair`] for scale benches
//! ([`AgentPairOptions::bulk_tunnels`]): tunnel `i` joins
//! 10.(16 + i/256).(i%256).0/24 behind gw-a and 10.(144 + i/256).(i%256).0/24
//! behind gw-b, with an explicit reqid — derived reqids of a thousand names
//! would collide in the owned range (birthday bound: about 7 pairs among
//! 1,000 names in 65,536 reqids), which the config check refuses.
//!
//! Owns only the TOML text of these tunnels; no hosts stand behind them and
//! nothing here starts or creates anything.

use super::Testbed;
use super::config_sections::{duration_str, quoted};
use super::pair_config::{AgentPairOptions, Side};

/// Most bulk tunnels a pair can hold: their subnets use the second octets
/// 16..=31 (and 144..=159 behind gw-b), 256 /24s each, less the first.
pub const MAX_BULK_TUNNELS: usize = 16 * 256 - 1;
/// Bulk tunnel `i` has reqid `BULK_REQID_BASE + i`: inside the default
/// owned range and clear of the site tunnel's derived reqid (0x5144_10db).
const BULK_REQID_BASE: u32 = 0x5144_8000;

/// The subnets behind gw-a and gw-b of bulk tunnel `i` (1-based):
/// 10.(16 + i/256).(i%256).0/24 and 10.(144 + i/256).(i%256).0/24, clear
/// of the sites (10.1.0.0/24, 10.2.0.0/24) and of each other.
pub fn bulk_tunnel_subnets(i: usize) -> (String, String) {
    let (hi, lo) = (i / 256, i % 256);
    (
        format!("10.{}.{lo}.0/24", 16 + hi),
        format!("10.{}.{lo}.0/24", 144 + hi),
    )
}

/// The `[[tunnel]]` sections of the bulk tunnels, from `side`'s view.
pub(super) fn render(side: Side, opts: &AgentPairOptions, bed: &Testbed) -> String {
    let (me, peer) = match side {
        Side::A => (&bed.gw_a, &bed.gw_b),
        Side::B => (&bed.gw_b, &bed.gw_a),
    };
    let mut t = String::new();
    for i in 1..=opts.bulk_tunnels {
        let (a, b) = bulk_tunnel_subnets(i);
        let (local, remote) = match side {
            Side::A => (a, b),
            Side::B => (b, a),
        };
        t.push_str(&format!(
            "\n[[tunnel]]\nname = \"bulk-{i:04}\"\npeer = {}\nreqid = {}\n\
             local_subnets = [{}]\nremote_subnets = [{}]\n\
             local_endpoint = {}\nremote_endpoint = {}\n\
             rekey_interval = {}\nrekey_jitter = {:?}\n",
            quoted(side.other().gateway_name()),
            BULK_REQID_BASE + i as u32,
            quoted(&local),
            quoted(&remote),
            quoted(&me.wan.to_string()),
            quoted(&peer.wan.to_string()),
            duration_str(opts.rekey_interval),
            opts.rekey_jitter,
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, pair};
    use crate::netns::Netns;
    use crate::testbed::pair_config::{GatewayFiles, render_config};
    use crate::testbed::{Gateway, Host};
    use crate::xfrm::Prefix;
    use std::net::IpAddr;
    use std::path::Path;

    fn addressing_only() -> Testbed {
        let v4 = |a, b, c, d| IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
        let gw = |wan, lan, site| Gateway {
            name: "gw".into(),
            netns: Netns::Current,
            wan,
            lan,
            site: Prefix::new(site, 24),
        };
        let host = |addr| Host {
            name: "host".into(),
            netns: Netns::Current,
            addr,
        };
        Testbed {
            prefix: "bulk".into(),
            gw_a: gw(v4(192, 0, 2, 1), v4(10, 1, 0, 1), v4(10, 1, 0, 0)),
            gw_b: gw(v4(192, 0, 2, 2), v4(10, 2, 0, 1), v4(10, 2, 0, 0)),
            host_a: host(v4(10, 1, 0, 2)),
            host_b: host(v4(10, 2, 0, 2)),
            namespaces: crate::testbed::OwnedNamespaces::new("paper"),
        }
    }

    #[test]
    fn a_thousand_tunnels_render_valid_mirrored_configs() {
        let bed = addressing_only();
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        opts.bulk_tunnels = 999;
        opts.pulse_rate_hz = 1e3;
        let parse = |side| {
            let files = GatewayFiles::under(Path::new("/nonexistent/pair"), side);
            let text = render_config(side, &opts, &bed, &files);
            Config::parse(&text, &files.config).unwrap_or_else(|e| panic!("{side}: {e}"))
        };
        let (a, b) = (parse(Side::A), parse(Side::B));
        let findings = pair::check_pair(&a, &b, pair::PairCredentials::default());
        assert!(
            findings.is_empty(),
            "{:?}",
            findings.first().map(|f| f.render())
        );
        assert_eq!(a.tunnels.len(), 1000);
        assert_eq!(a.peers[0].pulse_rate_hz(), 1e3);
        let last = &a.tunnels[999];
        assert_eq!(last.name, "bulk-0999");
        assert_eq!(last.reqid, BULK_REQID_BASE + 999);
        assert_eq!(last.local_subnets[0].to_string(), "10.19.231.0/24");
        assert_eq!(b.tunnels[999].remote_subnets, last.local_subnets);
        assert_eq!(b.tunnels[999].local_subnets, last.remote_subnets);
        assert!(last.initiator && !b.tunnels[999].initiator);
    }

    #[test]
    fn derived_reqids_of_these_names_collide_so_they_are_explicit() {
        let bed = addressing_only();
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        opts.bulk_tunnels = 999;
        let files = GatewayFiles::under(Path::new("/nonexistent/pair"), Side::A);
        let text = render_config(Side::A, &opts, &bed, &files);
        let derived: String = text
            .lines()
            .filter(|l| !l.starts_with("reqid = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = Config::parse(&derived, &files.config)
            .expect_err("1,000 derived reqids in a 65,536 range should collide")
            .to_string();
        assert!(err.contains("set reqid explicitly"), "{err}");
    }
}
