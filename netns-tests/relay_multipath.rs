//! Multipath relay over a diamond gw-a – gw-b – gw-d / gw-a – gw-c – gw-d:
//! each key gw-a sends to gw-d is split into two XOR shares, one through
//! gw-b and one through gw-c, so that neither relay learns it.
//!
//! What gw-b can reconstruct is every share it can open — it holds the pads
//! of its own hops only — and the test has it write exactly those (LAB
//! ONLY `lab_export_relay_shares`). The destination gw-d writes the shares
//! it opens too. Shown:
//! - positive control: every SA key in gw-a's kernel (keyed from relayed
//!   keys) is found in the keys gw-d joins from its shares;
//! - gw-b's shares are not the keys: no 16-byte window of any SA key occurs
//!   in them, and each of gw-b's shares differs from its key;
//! - traffic between the sites through rekeys without loss;
//! - with gw-c stopped and `fallback = false`, gw-a relays nothing over the
//!   single remaining path and raises `relay_degraded`; after a restart with
//!   `fallback = true` it relays over gw-b alone, the alarm still raised.

use std::collections::BTreeMap;
use std::time::Duration;

use qkd_ipsec::config::RelayMode;
use qkd_ipsec::ops::{Alarm, BoardSnapshot};
use qkd_ipsec::relay::export::{ExportedShare, load_shares};
use qkd_ipsec::relay::shares;
use qkd_ipsec::secret::SecretBytes;
use qkd_ipsec::testbed::{AgentNetwork, NetworkOptions, Node, Topology};
use uuid::Uuid;

use crate::agent_support::{BIN, alarm_active, kernel_sas, source_bytes, tunnel, tunnel_keyed};
use crate::support::*;

/// Slow rekeys: four QKD links share the VM's CPU, and every key costs a
/// pad on both paths.
const REKEY: Duration = Duration::from_secs(30);
const KEY_BYTES: u32 = 256;
/// Bytes of an SA key looked for.
const WINDOW: usize = 16;

/// Relayed bytes gw-a appended for gw-d.
fn fetched(s: &BoardSnapshot) -> u64 {
    source_bytes(s, "gw-d")
}

fn degraded(s: &BoardSnapshot) -> bool {
    alarm_active(s, |a| matches!(a, Alarm::RelayDegraded { .. }))
}

fn has_window(key: &[u8], hay: &[u8]) -> bool {
    key.windows(WINDOW)
        .any(|w| hay.windows(WINDOW).any(|h| h == w))
}

/// The keys whose every share is in `shares`, joined.
fn joined(shares: &[ExportedShare]) -> Vec<SecretBytes> {
    let mut by_key: BTreeMap<Uuid, Vec<&ExportedShare>> = BTreeMap::new();
    for s in shares {
        by_key.entry(s.key_id).or_default().push(s);
    }
    by_key
        .values()
        .filter(|parts| parts.len() == usize::from(parts[0].shares))
        .map(|parts| {
            let bytes: Vec<SecretBytes> = parts
                .iter()
                .map(|p| SecretBytes::from_slice(p.bytes.expose()))
                .collect();
            shares::join(&bytes).expect("shares of one length")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_multipath() {
    let mut opts = NetworkOptions::new("mpath", BIN, Topology::Diamond);
    opts.relay_mode = RelayMode::Multipath;
    opts.fallback = false;
    opts.rekey_interval = REKEY;
    opts.relay_key_bytes = KEY_BYTES;
    opts.relay_pool_target_bytes = 1024;
    opts.export_relay_shares = vec![Node::B, Node::D];
    let mut net = AgentNetwork::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the diamond: {e}"));
    let limit = Duration::from_secs(900);
    net.wait_status(Node::A, limit, "gw-a's relayed pool to fill", |s| {
        tunnel_keyed(s, 1)
            && s.peers.iter().any(|p| {
                p.name == "gw-d" && p.pool.as_ref().is_some_and(|q| q.available_bytes >= 768)
            })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    let first = tunnel(&net.status(Node::A).unwrap()).generation;

    // Traffic through two rekeys.
    let host_a = net.network().gateway(Node::A).site.clone().expect("site a");
    let host_d = net.network().gateway(Node::D).site.clone().expect("site d");
    let seconds = REKEY.as_secs() * 3;
    let pings = spawn_ping(
        &host_a.host.name,
        &host_d.host.addr.to_string(),
        seconds * 5,
        "0.2",
    );
    net.wait_status(
        Node::A,
        Duration::from_secs(seconds * 4),
        "two rekeys",
        |s| tunnel_keyed(s, first + 2),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    let stats = within(
        Duration::from_secs(seconds * 3),
        "the pings to end",
        ping_stats(pings),
    )
    .await;
    assert!(
        stats.transmitted > 0 && stats.received == stats.transmitted,
        "{stats:?}"
    );

    // What gw-b can open versus the keys.
    let sa_keys: Vec<SecretBytes> = kernel_sas(net.netns_name(Node::A))
        .await
        .into_iter()
        .filter_map(|s| s.key)
        .collect();
    assert!(
        sa_keys.len() >= 2,
        "gw-a's kernel holds {} keyed SAs",
        sa_keys.len()
    );
    let at_b = load_shares(&net.files(Node::B).relay_shares).expect("gw-b's shares");
    let at_d = load_shares(&net.files(Node::D).relay_shares).expect("gw-d's shares");
    assert!(!at_b.is_empty(), "gw-b opened no share: it relayed nothing");
    assert!(at_b.iter().all(|s| s.shares == 2), "every key split in two");
    let keys = joined(&at_d);
    assert!(keys.len() >= 2, "gw-d joined {} keys", keys.len());
    let all_keys: Vec<u8> = keys.iter().flat_map(|k| k.expose().to_vec()).collect();
    for k in &sa_keys {
        // Every SA key's bytes came from relayed keys (a take may span two
        // of them; 16 of its 36 bytes lie within one).
        assert!(
            has_window(k.expose(), &all_keys),
            "an SA key is not in gw-d's joined keys"
        );
    }
    let b_bytes: Vec<u8> = at_b
        .iter()
        .flat_map(|s| s.bytes.expose().to_vec())
        .collect();
    for k in &sa_keys {
        assert!(
            !has_window(k.expose(), &b_bytes),
            "gw-b's shares reveal an SA key"
        );
    }
    let by_id: BTreeMap<Uuid, &SecretBytes> = {
        let mut parts: BTreeMap<Uuid, Vec<&ExportedShare>> = BTreeMap::new();
        for s in &at_d {
            parts.entry(s.key_id).or_default().push(s);
        }
        parts
            .iter()
            .filter(|(_, p)| p.len() == 2)
            .map(|(id, _)| *id)
            .zip(keys.iter())
            .collect()
    };
    let mut compared = 0;
    for s in &at_b {
        if let Some(k) = by_id.get(&s.key_id) {
            assert!(!s.bytes.ct_eq(k), "gw-b's share equals the key");
            compared += 1;
        }
    }
    assert!(
        compared >= 2,
        "only {compared} of gw-b's shares matched gw-d's keys"
    );

    // gw-c down, no fallback: nothing relayed over gw-b alone.
    net.stop_agent(Node::C);
    let a = net
        .wait_status(
            Node::A,
            Duration::from_secs(180),
            "relay_degraded on gw-a",
            degraded,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    let before = fetched(&a);
    let error = a
        .peers
        .iter()
        .find(|p| p.name == "gw-d")
        .and_then(|p| p.key_source.as_ref())
        .and_then(|k| k.last_error.clone())
        .unwrap_or_default();
    assert!(error.contains("not relaying over fewer paths"), "{error}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let a = net.status(Node::A).unwrap();
    assert_eq!(
        fetched(&a),
        before,
        "keys relayed over one path without fallback"
    );
    assert!(degraded(&a));

    // fallback = true: gw-a relays over gw-b alone, alarm still raised.
    net.reconfigure(|o| o.fallback = true).expect("reconfigure");
    net.stop_agent(Node::A);
    net.start_agent(Node::A).expect("restart gw-a");
    let a = net
        .wait_status(
            Node::A,
            Duration::from_secs(300),
            "keys over the one path left",
            |s| fetched(s) > 0 && degraded(s),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", net.log_tail(Node::A, 40)));
    assert!(degraded(&a));
    let at_b = load_shares(&net.files(Node::B).relay_shares).expect("gw-b's shares");
    assert!(
        at_b.iter().any(|s| s.shares == 1),
        "no single-path share went through gw-b"
    );
    net.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
}
