//! Rekey soak: the agents rekey every 2 s and on a soft packet limit while
//! numbered UDP datagrams stream from host to host for over a minute. No
//! datagram may be lost or duplicated; the kernel may never hold a stale SA
//! (one older than a rekey interval plus the grace period for packets in
//! flight, plus slack); every key the kernel
//! shows is seen under one SPI only — no key is ever reused — and both
//! rekey causes (timer, soft expiry) occur.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qkd_ipsec::ops::RekeyCause;
use qkd_ipsec::rekey::DEFAULT_GRACE;
use qkd_ipsec::secret::SecretBytes;
use qkd_ipsec::testbed::{LifetimeOptions, Side};

use crate::agent_support::*;
use crate::support::*;

const SOAK: Duration = Duration::from_secs(64);
/// A slow stream throughout (timer-driven rekeys: it never reaches the soft
/// limit within the 2 s interval) and a fast one for the last 20 s (it
/// reaches the soft limit in about 1.2 s).
const SLOW_RATE: u32 = 50;
const FAST_RATE: u32 = 250;
const FAST_FOR: Duration = Duration::from_secs(20);
const SOFT_PACKETS: u64 = 300;
/// Pool bytes gw-a must hold before the soak: the emulated link refills
/// about 30 bytes/s for the initiator, the soak spends about 40
/// generations × 72 bytes in 64 s.
const PREFILL: u64 = 1800;
/// Longest an SA may stay in the kernel: one rekey interval as the current
/// SA, the agent's grace period for packets in flight after it is replaced,
/// and slack for an emulated CPU and the poll interval.
const MAX_SA_AGE: Duration = Duration::from_secs(2 + 4).saturating_add(DEFAULT_GRACE);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_soak_without_loss_stale_sas_or_reused_keys() {
    // Fill the pool under a slow rekey interval first, then restart both
    // agents with the soak's settings (their SAs, kept on stop, are
    // replaced by the restarted agents: the stale-SA check covers them).
    let mut opts = options("soak");
    opts.rekey_interval = Duration::from_secs(60);
    let mut pair = start_pair(opts).await;
    wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    let filled = Instant::now();
    wait_pool(&pair, PREFILL, Duration::from_secs(300)).await;
    println!("soak: pool prefilled in {:?}", filled.elapsed());
    for side in Side::BOTH {
        let status = pair.stop_agent(side).expect("agent was running");
        assert!(status.success(), "{side}'s agent stopped with {status}");
    }
    pair.reconfigure(|o| {
        o.rekey_interval = Duration::from_secs(2);
        o.lifetime = LifetimeOptions {
            soft_packets: Some(SOFT_PACKETS),
            hard_packets: Some(SOFT_PACKETS * 50),
            ..LifetimeOptions::default()
        };
    })
    .expect("reconfigure");
    for side in [Side::B, Side::A] {
        pair.start_agent(side).unwrap_or_else(|e| panic!("{e}"));
    }
    let pair = pair;
    let bed = pair.bed();
    let (a0, _) = wait_keyed(&pair, 2, Duration::from_secs(60)).await;
    let g0 = tunnel(&a0).generation;

    let slow = UdpStream::start(&bed.host_a, &bed.host_b, 5001, SLOW_RATE).await;
    let t0 = Instant::now();
    let mut fast = None;
    // When each (gateway, SPI) was first seen in the kernel.
    let mut first_seen: BTreeMap<(usize, u32), Instant> = BTreeMap::new();
    let mut oldest = Duration::ZERO;
    let mut keys: BTreeMap<u32, SecretBytes> = BTreeMap::new();
    let mut max_sas = [0usize; 2];
    while t0.elapsed() < SOAK {
        if fast.is_none() && t0.elapsed() >= SOAK - FAST_FOR {
            fast = Some(UdpStream::start(&bed.host_b, &bed.host_a, 5002, FAST_RATE).await);
        }
        for side in Side::BOTH {
            let sas = kernel_sas(pair.netns_name(side)).await;
            max_sas[side as usize] = max_sas[side as usize].max(sas.len());
            for sa in sas {
                if let Some(k) = sa.key {
                    match keys.get(&sa.spi) {
                        Some(seen) => assert!(seen.ct_eq(&k), "SA {:#x} changed its key", sa.spi),
                        None => {
                            for (other, ok) in &keys {
                                assert!(
                                    !ok.ct_eq(&k),
                                    "SAs {other:#x} and {:#x} share a key",
                                    sa.spi
                                );
                            }
                            keys.insert(sa.spi, k);
                        }
                    }
                }
                // Stale: older than one rekey interval (its own life as
                // the current SA) plus the grace period for packets in
                // flight once it is replaced, plus slack.
                let age = first_seen
                    .entry((side as usize, sa.spi))
                    .or_insert_with(Instant::now)
                    .elapsed();
                oldest = oldest.max(age);
                assert!(
                    age <= MAX_SA_AGE,
                    "{side}: SA {:#x} still in the kernel after {age:?} (rekey every 2 s, \
                     grace {DEFAULT_GRACE:?}): stale",
                    sa.spi
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let slow = slow.finish(Duration::from_secs(2)).await;
    let fast = fast
        .expect("fast stream")
        .finish(Duration::from_secs(2))
        .await;
    let (a, b) = (
        pair.status(Side::A).unwrap_or_else(|e| panic!("{e}")),
        pair.status(Side::B).unwrap_or_else(|e| panic!("{e}")),
    );
    let ta = tunnel(&a);
    let tally = |c: RekeyCause| {
        ta.rekeys
            .iter()
            .filter(|r| r.cause == c)
            .map(|r| r.ok)
            .sum::<u64>()
    };
    println!(
        "soak: generations {g0}..{}, A rekeys {:?}, B rekeys done {}, failed A {} B {}, \
         max SAs in the kernel A {} B {}, oldest SA {oldest:?}, {} distinct keys; slow {slow:?}; fast {fast:?}",
        ta.generation,
        ta.rekeys,
        tunnel(&b).rekeys_done(),
        ta.rekeys_failed(),
        tunnel(&b).rekeys_failed(),
        max_sas[0],
        max_sas[1],
        keys.len()
    );
    for (name, s, rate) in [("A→B", slow, SLOW_RATE), ("B→A", fast, FAST_RATE)] {
        assert!(s.sent > 0, "{name}: nothing sent");
        assert_eq!(s.send_errors, 0, "{name}: send errors");
        assert_eq!(
            (s.received, s.duplicates),
            (s.sent, 0),
            "{name} at {rate}/s: lost or duplicated datagrams, first missing {:?}",
            s.first_missing
        );
    }
    let generations = ta.generation - g0;
    assert!(
        generations >= SOAK.as_secs() / 2 / 2,
        "only {generations} rekeys in {SOAK:?} at a 2 s interval"
    );
    assert!(
        tally(RekeyCause::Timer) > 0,
        "no timer rekey: {:?}",
        ta.rekeys
    );
    assert!(
        tally(RekeyCause::SoftExpire) > 0,
        "no rekey on the soft packet limit: {:?}",
        ta.rekeys
    );
    assert_eq!(
        ta.rekeys_failed(),
        0,
        "failed rekeys: {:?}",
        ta.last_failure
    );
    assert!(
        keys.len() as u64 >= 2 * generations,
        "{} keys for {generations} generations",
        keys.len()
    );
    pair.teardown().expect("teardown");
}
