//! Keys from a QKD device's KME (ETSI GS QKD 014 client, `kind =
//! "etsi014"`). The "device" is a first agent pair acting as two KMEs; a
//! second, independent pair of gateways takes every key of its link from
//! them: its gw-a reaches pair 1's gw-a KME and its gw-b pair 1's gw-b KME
//! over point-to-point links of their own (`kme` veths, 172.16.x.0/30).
//!
//! The second pair's tunnel carries a UDP stream with zero loss through at
//! least three rekeys; then pair 1's gw-a agent (the master's KME) stops:
//! the key source alarms, the pool drains, the tunnel fails closed when its
//! SAs reach their hard lifetime and not one packet crosses the WAN in
//! clear (nftables counts); with the KME back, the tunnel recovers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use qkd_ipsec::ops::{BoardSnapshot, TunnelState};
use qkd_ipsec::testbed::{Etsi014Options, KME_PORT, KmeOptions, LifetimeOptions, Side};

use crate::agent_support::*;
use crate::kme_support::*;
use crate::support::*;

const REKEY: Duration = Duration::from_secs(5);
/// Hard lifetime: the SAs outlive a failed rekey by this much at most.
const HARD: u64 = 15;
/// Keys the second pair keeps in stock: about three generations from
/// gw-a's half, so the KME's absence shows within a minute.
const POOL_TARGET: u64 = 512;
const STREAM_RATE: u32 = 20;

fn v4(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 16, c, d))
}

fn down_failed_closed(s: &BoardSnapshot) -> bool {
    s.tunnels
        .first()
        .is_some_and(|t| t.state == TunnelState::DownFailedClosed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pair_keys_its_tunnel_from_the_first_pairs_kmes() {
    let (sae_2a, sae_2b) = ("sae-2a", "sae-2b");
    let kmes = start_kme_pair(
        "kmes",
        KmeOptions {
            extra_saes: vec![(Side::A, sae_2a.into()), (Side::B, sae_2b.into())],
            extra_hosts: [vec![v4(0, 1)], vec![v4(1, 1)]],
        },
    )
    .await;

    let mut opts = options("etsi");
    opts.rekey_interval = REKEY;
    opts.lifetime = LifetimeOptions {
        soft_seconds: Some(HARD - 5),
        hard_seconds: Some(HARD),
        ..LifetimeOptions::default()
    };
    opts.etsi014 = Some(Etsi014Options {
        kme_url: [0, 1].map(|c| format!("https://{}:{KME_PORT}", v4(c, 1))),
        tls: [kmes.sae_tls(sae_2a), kmes.sae_tls(sae_2b)],
        sae_id: [sae_2a.into(), sae_2b.into()],
        key_size: 256,
        batch: 4,
        pool_target_bytes: POOL_TARGET,
        retry_max: Duration::from_secs(2),
    });
    let pair = start_pair(opts).await;
    // Each of the second pair's gateways gets a link to its KME.
    for (c, side) in [(0, Side::A), (1, Side::B)] {
        let (theirs, mine) = match side {
            Side::A => (&kmes.bed().gw_a.netns, &pair.bed().gw_a.netns),
            Side::B => (&kmes.bed().gw_b.netns, &pair.bed().gw_b.netns),
        };
        kmes.bed()
            .join(theirs, mine, "kme", v4(c, 1), v4(c, 2), 30)
            .await
            .unwrap_or_else(|e| panic!("link {side} to its KME: {e}"));
    }
    apply_wan_filter(&pair).await;

    let (a, _) = wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    let g0 = tunnel(&a).generation;
    let bed = pair.bed();
    let stream = UdpStream::start(&bed.host_a, &bed.host_b, 5001, STREAM_RATE).await;
    // Three rekeys (at least), each timed by the initiator, and the key
    // source's block deliveries as both sides see them.
    let mut g = g0;
    let mut rekey_us = Vec::new();
    let mut a = a;
    while g < g0 + 3 {
        let (next, b) = wait_keyed(&pair, g + 1, REKEY * 6).await;
        g = tunnel(&next).generation;
        rekey_us.extend(tunnel(&next).last_rekey.as_ref().and_then(|r| r.latency_us));
        let delivery = |s: &BoardSnapshot| {
            link(s)
                .key_source
                .as_ref()
                .map(|k| (k.role.clone(), k.keys_fetched, k.last_delivery_us))
        };
        println!(
            "etsi014: generation {g}: key source {:?} / {:?}",
            delivery(&next),
            delivery(&b)
        );
        a = next;
    }
    let stats = stream.finish(Duration::from_secs(2)).await;
    rekey_us.sort_unstable();
    println!(
        "etsi014: generations {g0}..={g} over KME keys; rekey latency (µs, trigger to old \
         outbound SA gone) {rekey_us:?}, median {:?}; stream {stats:?}",
        rekey_us.get(rekey_us.len() / 2)
    );
    assert!(stats.sent > 0 && stats.send_errors == 0, "{stats:?}");
    assert_eq!(
        stats.received, stats.sent,
        "packets lost across rekeys keyed from the KMEs: {stats:?}"
    );
    let q = &link(&a).qkd;
    assert!(
        q.blocks_ok == 0 && q.blocks_aborted.is_empty(),
        "no QKD protocol runs on an etsi014 link: {q:?}"
    );
    let source = link(&a)
        .key_source
        .as_ref()
        .expect("gw-a reports its key source");
    assert!(
        source.role == "master" && source.keys_fetched > 0,
        "{source:?}"
    );

    // The master's KME goes away.
    kmes.stop_agent(Side::A);
    let failed = pair
        .wait_status(
            Side::A,
            Duration::from_secs(120),
            "the tunnel failed closed",
            |s| alarms_raised(s, "key_source_failed") > 0 && down_failed_closed(s),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("etsi014: KME down → {:?}", tunnel(&failed).state);
    let through = ping(&bed.host_a.name, &bed.host_b.addr.to_string(), 3, "0.2").await;
    assert_eq!(
        through.received, 0,
        "traffic passed with the tunnel failed closed"
    );
    assert_eq!(
        wan_counter(&pair, "clear_sites").await,
        0,
        "clear text on the WAN"
    );

    // Back: the source retries, the pool refills, the tunnel rekeys.
    kmes.start_agent(Side::A)
        .expect("restart pair 1's gw-a agent");
    let g = tunnel(&failed).generation;
    wait_keyed(&pair, g + 1, Duration::from_secs(180)).await;
    let back = ping(&bed.host_a.name, &bed.host_b.addr.to_string(), 5, "0.2").await;
    assert_eq!(
        back.received, 5,
        "no recovery after the KME came back: {back:?}"
    );
    assert_eq!(
        wan_counter(&pair, "clear_sites").await,
        0,
        "clear text on the WAN"
    );
    pair.teardown().expect("teardown");
    kmes.teardown().expect("teardown");
}
