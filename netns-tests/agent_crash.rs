//! Crash: `kill -9` one agent in the middle of a rekey (caught by polling
//! its status for the `rekeying` state), start it again, and the tunnel is
//! keyed alike on both sides with fresh keys within 10 s; the pools agree
//! (the channel is up on both sides and rekeys keep completing); and no SA
//! from before the crash is left in either kernel once the grace period
//! for packets in flight is over. Done for the initiator (gw-a) and then
//! the responder (gw-b).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qkd_ipsec::ops::{ChannelState, TunnelState};
use qkd_ipsec::rekey::DEFAULT_GRACE;
use qkd_ipsec::secret::SecretBytes;
use qkd_ipsec::testbed::{AgentPair, Side};

use crate::agent_support::*;
use crate::support::*;

const RECOVERY: Duration = Duration::from_secs(10);
/// Pool bytes gw-a must hold before a crash: the reserve the agent keeps
/// for the link's authentication (4 blocks × 64 bytes), the SA keys of the
/// interrupted exchange (wasted) and a few generations after the restart.
const POOL_BEFORE_CRASH: u64 = 256 + 6 * 72;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_restarts_and_the_tunnel_recovers_with_fresh_keys() {
    let mut opts = options("crash");
    // Slow enough that the emulated link (about 30 bytes/s for the
    // initiator) fills the pool between the crashes.
    opts.rekey_interval = Duration::from_secs(5);
    let pair = start_pair(opts).await;
    wait_keyed(&pair, 2, Duration::from_secs(120)).await;
    for victim in [Side::A, Side::B] {
        crash_and_recover(&pair, victim).await;
    }
    pair.teardown().expect("teardown");
}

async fn crash_and_recover(pair: &AgentPair, victim: Side) {
    let bed = pair.bed();
    wait_pool(pair, POOL_BEFORE_CRASH, Duration::from_secs(240)).await;
    // Everything the kernels hold before the crash.
    let before = sa_pairs(pair).await;
    let old_spis: BTreeSet<u32> = before.keys().map(|(_, _, spi)| *spi).collect();
    let old_keys: Vec<SecretBytes> = before.into_values().flatten().flatten().collect();

    let caught = kill_mid_rekey(pair, victim).await;
    println!(
        "crash: killed {victim} {}",
        if caught {
            "while rekeying"
        } else {
            "at its rekey time"
        }
    );
    assert!(!pair.agent_running(victim));
    let survivor = victim.other();
    let start = Instant::now();
    pair.start_agent(victim)
        .unwrap_or_else(|e| panic!("restart {victim}: {e}"));

    // Keyed alike again, on SPIs that did not exist before the crash.
    let deadline = start + RECOVERY;
    let (a, b) = loop {
        let a = pair.status(Side::A);
        let b = pair.status(Side::B);
        if let (Ok(a), Ok(b)) = (a, b)
            && keyed_alike(&a, &b)
            && !old_spis.contains(&tunnel(&a).spi_out.unwrap_or(0))
            && !old_spis.contains(&tunnel(&a).spi_in.unwrap_or(0))
        {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "the tunnel did not recover within {RECOVERY:?} of restarting {victim}: A {:?} / B {:?}",
            pair.status(Side::A).ok().map(|s| tunnel(&s).clone()),
            pair.status(Side::B).ok().map(|s| tunnel(&s).clone())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovered = start.elapsed();
    let ok = ping(&bed.host_a.name, &bed.host_b.addr.to_string(), 5, "0.1").await;
    assert_eq!(ok.received, 5, "ping after recovery: {ok:?}");

    // Fresh keys: none of the new SAs' keys existed before the crash.
    let spis = [tunnel(&a).spi_in.unwrap(), tunnel(&a).spi_out.unwrap()];
    for ((_, _, spi), keys) in sa_pairs(pair).await {
        if !spis.contains(&spi) {
            continue;
        }
        for k in keys.iter().flatten() {
            assert!(
                !old_keys.iter().any(|o| o.ct_eq(k)),
                "SA {spi:#x} after the restart reuses a key from before the crash"
            );
        }
    }

    // The pools agree: both channels connected and rekeys keep completing.
    let g = tunnel(&a).generation;
    let (a2, b2) = wait_keyed(pair, g + 2, Duration::from_secs(30)).await;
    for s in [&a2, &b2] {
        assert_eq!(
            link(s).channel.state,
            ChannelState::Connected,
            "{}",
            s.gateway
        );
        assert_ne!(tunnel(s).state, TunnelState::DownFailedClosed);
    }
    let _ = b;

    // No stale SAs: after the grace period, nothing from before the crash.
    tokio::time::sleep(DEFAULT_GRACE + Duration::from_secs(2)).await;
    for side in Side::BOTH {
        for sa in kernel_sas(pair.netns_name(side)).await {
            assert!(
                !old_spis.contains(&sa.spi),
                "{side}: SA {:#x} from before {victim}'s crash is still in the kernel",
                sa.spi
            );
        }
    }
    println!(
        "crash: {victim} killed, restarted, tunnel keyed alike with fresh keys after {recovered:?}; \
         {survivor} stayed up; generation now {}",
        tunnel(&pair.status(Side::A).unwrap_or_else(|e| panic!("{e}"))).generation
    );
}

/// Kills `victim` while its status says `rekeying`, polling fast around the
/// next rekey time; if the exchange is too quick to catch within a few
/// rekeys, kills it at its rekey time. Returns whether it was caught.
async fn kill_mid_rekey(pair: &AgentPair, victim: Side) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(s) = pair.status(victim)
            && tunnel(&s).state == TunnelState::Rekeying
        {
            pair.kill_agent(victim);
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = pair.status(victim).unwrap_or_else(|e| panic!("{e}"));
    if let Some(at) = tunnel(&s).next_rekey_at_unix_ms {
        let wait = at.saturating_sub(s.taken_at_unix_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    pair.kill_agent(victim);
    false
}
