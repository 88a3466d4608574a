//! Keys relayed over a chain gw-a – gw-b – gw-c, where gw-a and gw-c have
//! no QKD link: three real agents, two simulated QKD links, and an ESP
//! tunnel between the sites behind gw-a and gw-c keyed from relayed keys.
//!
//! Shown: pings between the sites through at least five rekeys with no
//! loss; the kernels of gw-a and gw-c hold the same key for every SA; on
//! each gateway's WAN nothing but ESP and the peer channels arrives (the
//! sites' clear traffic is counted and must be zero); each hop's pool use
//! for relaying matches byte for byte on its two ends and equals the
//! shares the relay counted times (share + tag key); gw-b relayed on (or,
//! short of key on its next hop, refused) every share it received and
//! kept none; the ends' KMEs serve the same relayed keys to the SAEs on
//! their sites (enc_keys at gw-a, dec_keys at gw-c). Then, on the same
//! agents, the relay is killed mid-relay (`relay_faults`).

use std::time::Duration;

use qkd_ipsec::ops::BoardSnapshot;
use qkd_ipsec::relay::pad_len;
use qkd_ipsec::testbed::{AgentNetwork, NetworkOptions, Node, Topology};

use crate::agent_support::{
    BIN, pool_use, same_sa_keys, source_bytes, tunnel, tunnel_keyed, wan_filter_for,
};
use crate::kme_support::{SaeAt, kme_delivered};
use crate::support::*;

/// Five rekeys in under two minutes, slow enough that the emulated QKD
/// links (about 1 KiB of key per block, a block every ~40 s per link in
/// the VM) keep up: each rekey takes 72 bytes of relayed key, each relayed
/// byte one pad byte per hop.
const REKEY: Duration = Duration::from_secs(20);
/// Rekeys the traffic must cross.
const REKEYS: u64 = 5;
/// Bytes of each relayed key.
const KEY_BYTES: u32 = 256;
/// The chain's two sites.
const SITES: &str = "10.1.0.0/24, 10.3.0.0/24";

fn relay_link<'a>(s: &'a BoardSnapshot, link: &str) -> &'a qkd_ipsec::ops::RelayLinkSnapshot {
    s.relay
        .iter()
        .find(|r| r.link == link)
        .unwrap_or_else(|| panic!("{} counted no relay on the link to {link}", s.gateway))
}

/// What does not add up in the relay's pad accounting, from one status of
/// each node (empty: all of it does).
fn accounting_mismatches(a: &BoardSnapshot, b: &BoardSnapshot, c: &BoardSnapshot) -> Vec<String> {
    let per_share = u64::from(pad_len(KEY_BYTES));
    let a_sent = relay_link(a, "gw-b");
    let b_from_a = relay_link(b, "gw-a");
    let b_to_c = relay_link(b, "gw-c");
    let c_from_b = relay_link(c, "gw-b");
    let checks = [
        (
            "gw-a sent at least two shares",
            a_sent.sent_shares_total >= 2,
        ),
        (
            "gw-a's relay use of its pool with gw-b = shares sent × (share + 32)",
            pool_use(a, "gw-b", "relay") == a_sent.sent_shares_total * per_share,
        ),
        (
            "hop gw-a–gw-b: the same relay bytes on both ends",
            pool_use(a, "gw-b", "relay") == pool_use(b, "gw-a", "relay"),
        ),
        (
            "hop gw-b–gw-c: the same relay bytes on both ends",
            pool_use(b, "gw-c", "relay") == pool_use(c, "gw-b", "relay"),
        ),
        (
            "gw-b's relay use of its pool with gw-c = shares sent × (share + 32)",
            pool_use(b, "gw-c", "relay") == b_to_c.sent_shares_total * per_share,
        ),
        (
            "gw-b received what gw-a sent",
            b_from_a.received_shares_total == a_sent.sent_shares_total,
        ),
        (
            // A share gw-b cannot pass on (no key yet on gw-b–gw-c) is
            // refused back to gw-a; its pad on gw-a–gw-b is spent on both
            // ends all the same.
            "gw-b relayed on or refused everything it received",
            b_from_a.forwarded_shares_total + b_from_a.refused_shares_total
                == b_from_a.received_shares_total,
        ),
        (
            "gw-b kept nothing for itself",
            b_from_a.delivered_shares_total == 0,
        ),
        (
            "gw-b relayed something on",
            b_from_a.forwarded_shares_total >= 2,
        ),
        (
            "gw-c received what gw-b sent",
            c_from_b.received_shares_total == b_to_c.sent_shares_total,
        ),
        (
            "gw-c kept everything it received",
            c_from_b.delivered_shares_total == c_from_b.received_shares_total,
        ),
    ];
    checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| (*what).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_chain() {
    let mut opts = NetworkOptions::new("relay", BIN, Topology::Chain);
    opts.rekey_interval = REKEY;
    opts.relay_key_bytes = KEY_BYTES;
    // A small reserve, so that `relay_faults` can spend it while the
    // relay is down and show the tunnel failing closed.
    opts.relay_pool_target_bytes = 1024;
    opts.kme = true;
    let mut net = AgentNetwork::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the chain: {e}"));
    for node in [Node::A, Node::B, Node::C] {
        nft_apply(net.netns_name(node), &wan_filter_for(SITES)).await;
    }

    // The first generation needs both QKD links' first blocks and a relay.
    let limit = Duration::from_secs(600);
    net.wait_status(Node::A, limit, "gw-a's tunnel to gw-c keyed", |s| {
        tunnel_keyed(s, 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    net.wait_status(
        Node::C,
        Duration::from_secs(60),
        "gw-c's tunnel keyed",
        |s| tunnel_keyed(s, 1),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The emulated QKD links make key slowly: let the relayed pool fill
    // enough for the rekeys below (72 bytes each) before the traffic, so
    // that the test shows relaying, not an empty pool failing closed.
    net.wait_status(Node::A, limit, "gw-a's relayed pool to fill", |s| {
        s.peers.iter().any(|p| {
            p.name == "gw-c"
                && p.pool
                    .as_ref()
                    .is_some_and(|pool| pool.available_bytes >= 1024)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    let first = net.status(Node::A).map(|s| tunnel(&s).generation).unwrap();

    // Traffic through REKEYS rekeys: one ping every 0.2 s for long enough.
    let host_a = net.network().gateway(Node::A).site.clone().expect("site a");
    let host_c = net.network().gateway(Node::C).site.clone().expect("site c");
    let seconds = REKEY.as_secs() * (REKEYS + 2);
    let pings = spawn_ping(
        &host_a.host.name,
        &host_c.host.addr.to_string(),
        seconds * 5,
        "0.2",
    );
    let a = net
        .wait_status(
            Node::A,
            Duration::from_secs(seconds * 4),
            "five rekeys of the relayed tunnel",
            |s| tunnel_keyed(s, first + REKEYS),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    let stats = within(
        Duration::from_secs(seconds * 3),
        "the pings to end",
        ping_stats(pings),
    )
    .await;
    assert!(stats.transmitted >= seconds * 4, "{stats:?}");
    assert_eq!(
        stats.received,
        stats.transmitted,
        "packets lost through relayed-key rekeys (generation {} → {})",
        first,
        tunnel(&a).generation
    );

    // The same key for every SA in both kernels (ESP between gw-a and
    // gw-c, keyed from relayed keys), at least two SAs.
    let compared = same_sa_keys(
        net.netns_name(Node::A),
        net.netns_name(Node::C),
        "through relayed-key rekeys",
    )
    .await;
    assert!(compared >= 2, "only {compared} SAs held on both ends");

    // Nothing in clear between the sites on any WAN; ESP did arrive.
    for node in [Node::A, Node::B, Node::C] {
        assert_eq!(
            nft_counter(net.netns_name(node), "clear_sites").await,
            0,
            "clear site traffic on {node}'s WAN"
        );
    }
    assert!(nft_counter(net.netns_name(Node::C), "esp_in").await > 0);

    // Pad accounting: every hop's relay bytes match on both ends, and
    // equal the shares sent times (share + tag key). The pool figures in a
    // status are refreshed now and then, the relay counters at once, and
    // gw-a relays again after each rekey: poll until one consistent view.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (a, _, c) = loop {
        let (a, b, c) = (
            net.status(Node::A).unwrap(),
            net.status(Node::B).unwrap(),
            net.status(Node::C).unwrap(),
        );
        let wrong = accounting_mismatches(&a, &b, &c);
        if wrong.is_empty() {
            break (a, b, c);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pad accounting does not add up: {wrong:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The relayed link's pool: what gw-a relayed, gw-c holds.
    let fetched =
        |s: &BoardSnapshot| source_bytes(s, if s.gateway == "gw-a" { "gw-c" } else { "gw-a" });
    assert!(
        fetched(&a) >= u64::from(KEY_BYTES),
        "gw-a appended no relayed key"
    );
    assert!(
        fetched(&c) + u64::from(KEY_BYTES) >= fetched(&a),
        "gw-c appended {} relayed bytes, gw-a {}",
        fetched(&c),
        fetched(&a)
    );
    // The relayed keys serve applications as well: sae-a takes keys for
    // sae-c from gw-a's KME (ETSI GS QKD 014), and sae-c gets the same keys
    // from gw-c's, both drawn from the relayed pool.
    let (sae_a, sae_c) = (SaeAt::network(&net, Node::A), SaeAt::network(&net, Node::C));
    let enc = sae_a.keys(&["enc", "sae-c", "--number", "2"]).await;
    assert_eq!(enc.len(), 2, "{enc:?}");
    let mut dec_call = vec!["dec", "sae-a"];
    dec_call.extend(enc.iter().map(|k| k.id.as_str()));
    let dec = sae_c.keys(&dec_call).await;
    assert_eq!(dec, enc, "dec_keys at gw-c differs from enc_keys at gw-a");
    let (a, c) = (net.status(Node::A).unwrap(), net.status(Node::C).unwrap());
    assert_eq!(kme_delivered(&a, "sae-a", "enc"), 2);
    assert_eq!(kme_delivered(&c, "sae-c", "dec"), 2);
    for s in [&a, &c] {
        let far = if s.gateway == "gw-a" { "gw-c" } else { "gw-a" };
        assert!(
            pool_use(s, far, "application") >= 2 * 32,
            "{}: the application keys did not come from the relayed pool",
            s.gateway
        );
    }

    // The faults, on the same agents (see `relay_faults`).
    crate::relay_faults::kill_the_relay(&mut net).await;
    net.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
}
