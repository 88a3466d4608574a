//! The relay killed mid-relay, on the chain `relay_chain` built (its agents
//! are reused: booting three agents and their QKD links costs minutes in
//! the VM).
//!
//! gw-a keeps relaying (its relayed pool is below target), so gw-b dies
//! with shares in flight. Shown:
//! - gw-a says why no key comes (its first hop is down);
//! - from both ends' pool files (`qkd-ipsec pool-audit`, read while gw-b
//!   is down): no pad byte was used twice on any end of either hop, every
//!   pad a receiver took the sender took at the same positions, and only
//!   the shares in flight when gw-b died were taken by one end alone;
//! - the tunnel lives on the relayed keys gw-a and gw-c hold, and once
//!   they are spent and its SAs expire it fails closed: pings are dropped
//!   and no clear site traffic reaches any WAN;
//! - after gw-b restarts, relaying resumes without an operator; the hop
//!   pools agree again on both links — both ends hold exactly the same
//!   unconsumed bytes, so a pad taken for a share never opened is consumed
//!   on both sides, never used again — and the tunnel is keyed again and
//!   carries traffic with identical keys in both kernels;
//! - restarted with `keying = "wrapped"`, the ends key the tunnel from the
//!   same relayed pool in the other keying mode, and traffic passes.

use std::time::Duration;

use qkd_ipsec::config::Keying;
use qkd_ipsec::keys::KeyUse;
use qkd_ipsec::keys::audit::{AuditSegment, PoolAudit};
use qkd_ipsec::ops::{Alarm, BoardSnapshot, TunnelState};
use qkd_ipsec::testbed::{AgentNetwork, Node};

use crate::agent_support::{
    BIN, alarm_active, pool_use, same_sa_keys, source_bytes, tunnel, tunnel_keyed,
};
use crate::support::*;

/// Shares a sender may have taken pad for that its next hop never opened:
/// the ones in flight when the relay died.
const IN_FLIGHT: usize = 2;

/// `node`'s pool with `peer`, as `qkd-ipsec pool-audit` reads it from the
/// node's files (the operator's tool, not the agent's memory).
async fn audit(net: &AgentNetwork, node: Node, peer: Node) -> PoolAudit {
    let out = tokio::process::Command::new(BIN)
        .arg("pool-audit")
        .arg("--json")
        .args(["--peer", peer.gateway_name()])
        .arg(&net.files(node).config)
        .output()
        .await
        .expect("run qkd-ipsec pool-audit");
    assert!(
        out.status.success(),
        "pool-audit of {node}'s pool with {peer}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let mut audits: Vec<PoolAudit> = serde_json::from_slice(&out.stdout).expect("audit JSON");
    assert_eq!(audits.len(), 1);
    audits.remove(0)
}

/// The relay pads of hop `sender`→`receiver`, from both ends' files: what
/// does not add up (empty: all of it does), and the pads the receiver took.
fn hop_pad_mismatches(hop: &str, sender: &PoolAudit, receiver: &PoolAudit) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    for (end, a) in [("sender", sender), ("receiver", receiver)] {
        if !a.findings.is_empty() {
            wrong.push(format!(
                "{hop}: the {end}'s pool used bytes twice: {:?}",
                a.findings
            ));
        }
    }
    let sent: Vec<&[AuditSegment]> = sender
        .takes(KeyUse::Relay)
        .filter(|(here, _)| *here)
        .map(|(_, s)| s)
        .collect();
    let received: Vec<&[AuditSegment]> = receiver
        .takes(KeyUse::Relay)
        .map(|(here, s)| {
            if here {
                wrong.push(format!(
                    "{hop}: the receiver drew a relay pad of its own: {s:?}"
                ));
            }
            s
        })
        .collect();
    for r in &received {
        if !sent.contains(r) {
            wrong.push(format!(
                "{hop}: the receiver took pad {r:?}, which the sender's journal does not hold"
            ));
        }
    }
    let unopened = sent.iter().filter(|s| !received.contains(s)).count();
    if unopened > IN_FLIGHT {
        wrong.push(format!(
            "{hop}: the sender took {unopened} pads its next hop never took (at most {IN_FLIGHT} were in flight)"
        ));
    }
    (wrong, received.len())
}

/// Unconsumed bytes of `s`'s pool with `peer`.
fn available(s: &BoardSnapshot, peer: &str) -> Option<u64> {
    s.peers
        .iter()
        .find(|p| p.name == peer)?
        .pool
        .as_ref()
        .map(|p| p.available_bytes)
}

fn relayed_bytes(s: &BoardSnapshot) -> u64 {
    source_bytes(s, "gw-c")
}

/// Both ends of the QKD link `x`–`y` hold the same unconsumed bytes.
async fn hop_agrees(net: &AgentNetwork, x: Node, y: Node) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (sx, sy) = (net.status(x).unwrap(), net.status(y).unwrap());
        let (ax, ay) = (
            available(&sx, y.gateway_name()),
            available(&sy, x.gateway_name()),
        );
        if ax.is_some() && ax == ay {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pools of {x}–{y} still differ: {ax:?} vs {ay:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn kill_the_relay(net: &mut AgentNetwork) {
    net.kill_agent(Node::B);
    let a = net
        .wait_status(
            Node::A,
            Duration::from_secs(120),
            "gw-a to see its first hop down",
            |s| {
                s.peers.iter().any(|p| {
                    p.name == "gw-c"
                        && p.key_source
                            .as_ref()
                            .and_then(|k| k.last_error.as_deref())
                            .is_some_and(|e| e.contains("gw-a–gw-b"))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 30)));
    let before = relayed_bytes(&a);

    // While gw-b is down its files are still: compare each hop's two ends.
    // gw-a and gw-c run on, but neither can take pad on a hop to gw-b.
    let hops = [
        ("gw-a → gw-b", (Node::A, Node::B)),
        ("gw-b → gw-c", (Node::B, Node::C)),
    ];
    for (hop, (s, r)) in hops {
        let (sender, receiver) = (audit(net, s, r).await, audit(net, r, s).await);
        let (wrong, received) = hop_pad_mismatches(hop, &sender, &receiver);
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(
            received >= 2,
            "{hop}: only {received} relay pads in the receiver's journal; nothing was shown"
        );
        eprintln!("relay_faults: {hop}: {received} pads taken at the same positions on both ends");
    }

    // The relayed keys gw-a holds run out, the SAs expire: fail closed.
    let host_a = net.network().gateway(Node::A).site.clone().expect("site a");
    let host_c = net.network().gateway(Node::C).site.clone().expect("site c");
    let down = net
        .wait_status(
            Node::A,
            Duration::from_secs(600),
            "the tunnel to fail closed once the relayed keys are spent",
            |s| tunnel(s).state == TunnelState::DownFailedClosed,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 30)));
    assert!(
        alarm_active(&down, |a| matches!(a, Alarm::TunnelFailedClosed { .. })),
        "{:?}",
        down.alarms
    );
    let stats = ping(&host_a.host.name, &host_c.host.addr.to_string(), 10, "0.2").await;
    assert_eq!(
        stats.received, 0,
        "{stats:?} through a tunnel failed closed"
    );
    nothing_in_clear(net, "while the relay was down").await;
    let failed_generation = tunnel(&down).generation;

    net.start_agent(Node::B).expect("restart gw-b");
    net.wait_status(
        Node::A,
        Duration::from_secs(300),
        "relaying to resume",
        |s| relayed_bytes(s) >= before + 512,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            net.log_tail(Node::A, 30),
            net.log_tail(Node::B, 30)
        )
    });
    hop_agrees(net, Node::A, Node::B).await;
    hop_agrees(net, Node::B, Node::C).await;
    net.wait_status(
        Node::A,
        Duration::from_secs(300),
        "the tunnel keyed again from relayed keys",
        |s| tunnel_keyed(s, failed_generation + 1),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 30)));

    carries_traffic(net, "after the relay's restart").await;

    // Wrapped keying over the same relayed keys: both ends restart with
    // `keying = "wrapped"`, each generation a random session key sent under
    // 32 bytes of relayed key.
    net.reconfigure(|o| o.keying = Keying::Wrapped)
        .expect("reconfigure the tunnel as wrapped");
    for node in [Node::A, Node::C] {
        net.stop_agent(node);
    }
    for node in [Node::A, Node::C] {
        net.start_agent(node)
            .unwrap_or_else(|e| panic!("restart {node} wrapped: {e}"));
    }
    let wrap = Keying::Wrapped.pool_bytes_per_rekey();
    for node in [Node::A, Node::C] {
        let far = if node == Node::A { "gw-c" } else { "gw-a" };
        net.wait_status(
            node,
            Duration::from_secs(300),
            "two generations keyed wrapped from relayed keys",
            |s| tunnel_keyed(s, 2) && pool_use(s, far, "wrap") >= 2 * wrap,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(node, 30)));
    }
    carries_traffic(net, "keyed wrapped").await;
}

/// Pings between the sites all answered, SA keys equal in both kernels,
/// nothing in clear on any WAN.
async fn carries_traffic(net: &AgentNetwork, when: &str) {
    let host_a = net.network().gateway(Node::A).site.clone().expect("site a");
    let host_c = net.network().gateway(Node::C).site.clone().expect("site c");
    let stats = ping(&host_a.host.name, &host_c.host.addr.to_string(), 10, "0.2").await;
    assert_eq!(stats.received, stats.transmitted, "{stats:?} {when}");
    let compared = same_sa_keys(net.netns_name(Node::A), net.netns_name(Node::C), when).await;
    assert!(
        compared >= 2,
        "only {compared} SAs held on both ends {when}"
    );
    nothing_in_clear(net, when).await;
}

/// No clear site traffic counted on any of the three WANs.
async fn nothing_in_clear(net: &AgentNetwork, when: &str) {
    for node in [Node::A, Node::B, Node::C] {
        assert_eq!(
            nft_counter(net.netns_name(node), "clear_sites").await,
            0,
            "clear site traffic on {node}'s WAN {when}"
        );
    }
}
