//! The relay killed mid-relay, on the chain `relay_chain` built (its agents
//! are reused: booting three agents and their QKD links costs minutes in
//! the VM).
//!
//! gw-a keeps relaying (its relayed pool is below target), so gw-b dies
//! with shares in flight. Shown: gw-a says why no key comes (its first hop
//! is down) and keeps the tunnel on the keys it holds; after gw-b restarts
//! relaying resumes without an operator; the hop pools agree again on both
//! links — both ends hold exactly the same unconsumed bytes, so a pad gw-a
//! took for a share gw-b never opened is consumed on both sides, never
//! used again — and the tunnel still carries traffic with identical keys
//! in both kernels.

use std::time::Duration;

use qkd_ipsec::ops::BoardSnapshot;
use qkd_ipsec::testbed::{AgentNetwork, Node};

use crate::agent_support::{kernel_sas, source_bytes};
use crate::support::*;

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

pub async fn kill_the_relay(net: &AgentNetwork) {
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

    let host_a = net.network().gateway(Node::A).site.clone().expect("site a");
    let host_c = net.network().gateway(Node::C).site.clone().expect("site c");
    let stats = ping(&host_a.host.name, &host_c.host.addr.to_string(), 10, "0.2").await;
    assert_eq!(
        stats.received, stats.transmitted,
        "{stats:?} after the relay's restart"
    );
    let sas_c = kernel_sas(net.netns_name(Node::C)).await;
    for sa in kernel_sas(net.netns_name(Node::A)).await {
        if let (Some(k), Some(twin)) = (&sa.key, sas_c.iter().find(|c| c.id() == sa.id())) {
            if let Some(t) = &twin.key {
                assert!(
                    k.ct_eq(t),
                    "SA {:?} differs after the relay's crash",
                    sa.id()
                );
            }
        }
    }
}
