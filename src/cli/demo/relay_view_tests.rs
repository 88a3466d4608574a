use super::*;
use crate::cli::demo::view::PingCounts;
use crate::ops::{
    ChannelSnapshot, ChannelState, LinkSource, PeerRole, PoolSnapshot, QkdSnapshot, RekeyCause,
    RekeyTally, SaUsage, TunnelSnapshot, TunnelState, UseBytes,
};

fn channel() -> ChannelSnapshot {
    ChannelSnapshot {
        state: ChannelState::Connected,
        since_unix_ms: 1_000,
        remote: None,
        session: 1,
        epoch: 0,
        dial_attempts: 0,
        last_error: None,
        reconnects: 0,
        auth_failures: 0,
        replays: 0,
        protocol_errors: 0,
    }
}

fn qkd(blocks_ok: u64) -> QkdSnapshot {
    QkdSnapshot {
        blocks_ok,
        blocks_aborted: vec![],
        last_block: None,
        key_bits_total: blocks_ok * 4096,
        key_rate_bps: 2_100.0,
        key_rate_window_s: 60.0,
    }
}

fn pool(available: u64, uses: &[(&str, u64)]) -> PoolSnapshot {
    PoolSnapshot {
        updated_at_unix_ms: 1_000,
        blocks: 3,
        available_bytes: available,
        available_to_initiate: available / 2,
        low_water: 0,
        below_low_water: false,
        appended_bytes: available,
        discarded_bytes: 0,
        consumed: uses
            .iter()
            .map(|&(u, bytes)| UseBytes {
                key_use: u.into(),
                bytes,
            })
            .collect(),
    }
}

/// A peer over a simulated QKD link that spent `relay` pool bytes relaying.
fn hop(peer: Node, relay: u64) -> PeerSnapshot {
    PeerSnapshot {
        name: peer.gateway_name().into(),
        role: PeerRole::Transmitter,
        source: LinkSource::Simulated,
        caveat: None,
        channel: channel(),
        qkd: qkd(12),
        pool: Some(pool(3_000, &[("auth", 64), ("relay", relay)])),
        key_source: None,
    }
}

/// The relayed peer at an end: `keys` keys of 128 bytes appended.
fn relayed(peer: Node, role: &str, keys: u64) -> PeerSnapshot {
    PeerSnapshot {
        name: peer.gateway_name().into(),
        role: PeerRole::Receiver,
        source: LinkSource::Relayed,
        caveat: Some(RELAYED_LINK_CAVEAT.into()),
        channel: channel(),
        qkd: qkd(0),
        pool: Some(pool(1_136, &[("sa_key", 144)])),
        key_source: Some(KeySourceSnapshot {
            kme_url: "relay (single): gw-a–gw-b–gw-c".into(),
            role: role.into(),
            keys_fetched: keys,
            bytes_fetched: keys * 128,
            errors: 0,
            last_error: None,
            last_success_unix_ms: Some(1_000),
            last_delivery_us: None,
        }),
    }
}

fn site_tunnel(generation: u64) -> TunnelSnapshot {
    TunnelSnapshot {
        name: "site-a-site-c".into(),
        peer: "gw-c".into(),
        state: TunnelState::Up,
        state_since_unix_ms: 1_000,
        generation,
        spi_in: Some(0xc000_0001),
        spi_out: Some(0xc000_0002),
        sa_installed_at_unix_ms: Some(1_000),
        sa_usage: SaUsage::default(),
        sa_usage_at_unix_ms: None,
        last_rekey: None,
        last_failure: None,
        next_rekey_at_unix_ms: None,
        rekeys: vec![RekeyTally {
            cause: RekeyCause::Timer,
            ok: generation - 1,
            failed: 0,
        }],
        keys_wasted_bytes: 0,
    }
}

fn board(node: Node, peers: Vec<PeerSnapshot>, relay: Vec<RelayLinkSnapshot>) -> BoardSnapshot {
    BoardSnapshot {
        gateway: node.gateway_name().into(),
        version: "test".into(),
        started_at_unix_ms: 0,
        taken_at_unix_ms: 2_000,
        peers,
        tunnels: vec![],
        alarms: vec![],
        alarms_raised_total: vec![],
        kme: vec![],
        relay,
    }
}

fn link(peer: Node) -> RelayLinkSnapshot {
    RelayLinkSnapshot {
        link: peer.gateway_name().into(),
        ..RelayLinkSnapshot::default()
    }
}

/// gw-a relayed ten keys of 128 bytes through gw-b to gw-c; each share
/// cost 160 bytes of each hop's pool.
fn chain() -> Vec<Option<BoardSnapshot>> {
    let mut a = board(
        Node::A,
        vec![hop(Node::B, 1_600), relayed(Node::C, "source", 10)],
        vec![RelayLinkSnapshot {
            sent_shares_total: 10,
            sent_bytes_total: 1_280,
            ..link(Node::B)
        }],
    );
    a.tunnels.push(site_tunnel(3));
    let b = board(
        Node::B,
        vec![hop(Node::A, 1_600), hop(Node::C, 1_600)],
        vec![
            RelayLinkSnapshot {
                received_shares_total: 10,
                forwarded_shares_total: 10,
                ..link(Node::A)
            },
            RelayLinkSnapshot {
                sent_shares_total: 10,
                ..link(Node::C)
            },
        ],
    );
    let mut c = board(
        Node::C,
        vec![hop(Node::B, 1_600), relayed(Node::A, "destination", 10)],
        vec![RelayLinkSnapshot {
            received_shares_total: 10,
            delivered_shares_total: 10,
            ..link(Node::B)
        }],
    );
    c.tunnels.push(site_tunnel(3));
    vec![Some(a), Some(b), Some(c)]
}

fn live() -> LiveFigures {
    LiveFigures {
        elapsed_s: 42,
        duration_s: None,
        in_vm: false,
        ping: PingCounts {
            sent: 100,
            received: 99,
            unanswered: 1,
            last_rtt_ms: Some(0.5),
        },
        clear_on_wan: Some(vec![0, 0, 0]),
    }
}

#[test]
fn a_chain_shows_every_hop_the_relayed_keys_and_the_tunnel() {
    let status = chain();
    let live = live();
    let frame = RelayFrame {
        topology: Topology::Chain,
        mode: RelayMode::Single,
        length_km: 25.0,
        status: &status,
        live: &live,
    };
    let text = render(&frame);
    for expected in [
        "chain gw-a – gw-b – gw-c, relay single, 25 km",
        "42 s — Ctrl-C stops and tears down",
        "host-a 10.1.0.2 ── gw-a 192.0.2.2 ══ ESP ══ 192.0.2.10 gw-c ── host-c 10.3.0.2",
        SIMULATED_LINK_CAVEAT,
        RELAYED_LINK_CAVEAT,
        "gw-a ── gw-b  channel connected/connected   12 blocks with key, 2.1 kbit/s",
        "gw-b ── gw-c",
        "gw-a: pool 3000 B available, 1600 B used for relaying; shares sent 10, received 0\n",
        "gw-b: pool 3000 B available, 1600 B used for relaying; shares sent 0, received 10 \
         (relayed on 10, kept 0, refused 0)",
        "gw-c: pool 3000 B available, 1600 B used for relaying; shares sent 0, received 10 \
         (relayed on 0, kept 10, refused 0)",
        "Relayed keys  gw-a ⇄ gw-c: relay (single): gw-a–gw-b–gw-c",
        "gw-a source      10 keys, 1280 bytes appended, 0 errors; pool 1136 B available, used: sa_key 144",
        "gw-c destination 10 keys, 1280 bytes appended",
        "Tunnel  site-a-site-c 10.1.0.0/24 ⇄ 10.3.0.0/24",
        "gw-c: up                 generation   3  SPI in 0xc0000001 out 0xc0000002  rekeys 2 ok 0 failed",
        "ping host-a → host-c: 100 sent, 99 answered, 1 lost",
        "on each WAN: gw-a 0, gw-b 0, gw-c 0 (nftables counters)",
        "Alarms  none",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    // Never key bytes: only figures.
    assert!(!text.contains("0x00"));
}

#[test]
fn the_chain_summary_has_every_hop_in_both_directions() {
    let status = chain();
    let live = live();
    let frame = RelayFrame {
        topology: Topology::Chain,
        mode: RelayMode::Single,
        length_km: 25.0,
        status: &status,
        live: &live,
    };
    let line = summary(&frame);
    assert!(line.starts_with("demo summary: topology=chain relay=single seconds=42 "));
    for field in [
        "generation_first=3",
        "generation_last=3",
        "rekeys_first=2",
        "relayed_keys_last=10",
        "relayed_bytes_first=1280",
        "relay_bytes_a_b=1600",
        "relay_bytes_b_a=1600",
        "relay_bytes_c_b=1600",
        "shares_sent_a_b=10",
        "shares_received_b_a=10",
        "shares_forwarded_b_a=10",
        "shares_sent_b_c=10",
        "shares_delivered_c_b=10",
        "shares_refused_c_b=0",
        "ping_sent=100",
        "ping_answered=99",
        "ping_unanswered=1",
        "clear_on_wan=0",
    ] {
        assert!(
            line.split_whitespace().any(|kv| kv == field),
            "no {field} in {line}"
        );
    }
    let keys = line.split_whitespace().filter_map(|kv| kv.split_once('='));
    for (k, _) in keys {
        assert!(
            !k.ends_with("_d") && !k.contains("_d_"),
            "a chain has no gw-d: {k}"
        );
    }
}

#[test]
fn a_diamond_without_status_still_renders() {
    let status = vec![None, None, None, None];
    let live = LiveFigures {
        in_vm: true,
        duration_s: Some(60),
        ..LiveFigures::default()
    };
    let frame = RelayFrame {
        topology: Topology::Diamond,
        mode: RelayMode::Multipath,
        length_km: 10.0,
        status: &status,
        live: &live,
    };
    let text = render(&frame);
    for expected in [
        "diamond gw-a – {gw-b | gw-c} – gw-d, relay multipath",
        "stops after 60 s — inside a VM",
        "gw-a ── gw-c  channel no status/no status\n",
        "gw-c ── gw-d",
        "gw-d: pool - B available, 0 B used for relaying",
        "Relayed keys  gw-a ⇄ gw-d: relay (multipath)",
        "gw-d: no relayed key source yet",
        "gw-d: no status",
        "ping host-a → host-d: 0 sent",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    assert!(!text.contains("on each WAN"), "no filter, no counters");
    let line = summary(&frame);
    assert!(line.contains(" shares_sent_a_c=0 ") && line.contains(" relay_bytes_d_c=0 "));
    assert!(line.ends_with(" clear_on_wan=unknown"), "{line}");
}
