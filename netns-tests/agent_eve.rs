//! Eavesdropper: Eve sits on the fibre stream between the agents (gw-a
//! dials her, she forwards to gw-b). The stream is sealed, so she attacks
//! with the fibre keys gw-a exports for the lab (`lab_export_fibre_keys`,
//! `eve --fibre-keys`, set up by the testbed). While she is transparent the tunnel
//! keys normally. At 100 % intercept–resend the QBER alarm goes up and no
//! block reaches the pool any more; the tunnel lives on the key already
//! pooled until that runs out, then its SAs reach their hard lifetime and
//! it fails closed — the policies stay, ping stops, and the nftables
//! counter on the gateways' WAN sees not one clear-text packet between the
//! sites. Set back to 0 % (through her fraction file, without restarting
//! anything), blocks resume and the tunnel recovers by itself.

use std::time::Duration;

use qkd_ipsec::ops::{Alarm, TunnelState};
use qkd_ipsec::testbed::{EveOptions, LifetimeOptions, Side};

use crate::agent_support::*;
use crate::support::*;

/// The link alone (about 30 bytes/s for the initiator in the VM) keeps a
/// 5 s rekey going; short lifetimes make the tunnel fail soon after the
/// pool runs dry.
const REKEY_SECONDS: u64 = 5;
const HARD_SECONDS: u64 = 12;
/// Pool bytes gw-a holds when Eve starts: the agent's authentication
/// reserve (256) and a few generations.
const PREFILL: u64 = 256 + 4 * 72;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eavesdropper_raises_the_alarm_and_the_tunnel_fails_closed_then_recovers() {
    let mut opts = options("eve");
    opts.rekey_interval = Duration::from_secs(REKEY_SECONDS);
    opts.lifetime = LifetimeOptions {
        soft_seconds: Some(HARD_SECONDS - 2),
        hard_seconds: Some(HARD_SECONDS),
        ..LifetimeOptions::default()
    };
    opts.eve = Some(EveOptions {
        side: Side::A,
        fraction: 0.0,
        record: false,
    });
    let pair = start_pair(opts).await;
    let bed = pair.bed();
    let host_b = bed.host_b.addr.to_string();
    wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    apply_wan_filter(&pair).await;
    // Traffic throughout, so that a tunnel failing open would show on the
    // WAN counter.
    let background = spawn_ping(&bed.host_a.name, &host_b, 100_000, "0.2");
    let ok = ping(&bed.host_a.name, &host_b, 5, "0.1").await;
    assert_eq!(ok.received, 5, "ping with Eve transparent: {ok:?}");
    // Some key in the pool, so the tunnel outlives the start of the attack
    // on what was made before it.
    let filled = wait_pool(&pair, PREFILL, Duration::from_secs(240)).await;
    let (before, _) = wait_keyed(&pair, tunnel(&filled).generation, Duration::from_secs(60)).await;
    assert!(tunnel(&before).state.carries_traffic());

    // Eve at 100 %.
    pair.set_eve_fraction(1.0).expect("eve fraction");
    let t_attack = std::time::Instant::now();
    let alarmed = pair
        .wait_status(Side::B, Duration::from_secs(120), "the QBER alarm", |s| {
            alarm_active(s, |a| matches!(a, Alarm::QberAboveThreshold { .. }))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alarm_after = t_attack.elapsed();
    let eve_log = pair.eve_log();
    assert!(
        eve_log.contains("opening the sealed fibre with the lab keys")
            && eve_log.contains("derived this session's fibre key"),
        "Eve did not open the sealed fibre:\n{eve_log}"
    );
    // A block whose pulses were sent before the switch may still finish;
    // after one more aborted block every block is under attack.
    let aborted = link(&alarmed).qkd.blocks_aborted_total();
    let settled = pair
        .wait_status(
            Side::B,
            Duration::from_secs(120),
            "another aborted block",
            |s| link(s).qkd.blocks_aborted_total() > aborted,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let blocks_ok = link(&settled).qkd.blocks_ok;
    let appended = link(&settled).pool.as_ref().map_or(0, |p| p.appended_bytes);
    println!(
        "eve: QBER alarm {alarm_after:?} after the attack began; a second aborted block after \
         {:?}: {:?}",
        t_attack.elapsed(),
        link(&settled).qkd.last_block
    );

    // The pooled key runs out, the SAs expire: fail closed.
    let closed = pair
        .wait_status(
            Side::A,
            Duration::from_secs(300),
            "the tunnel to fail closed",
            |s| {
                tunnel(s).state == TunnelState::DownFailedClosed
                    && alarm_active(s, |a| matches!(a, Alarm::TunnelFailedClosed { .. }))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "eve: failed closed {:?} after the attack began, at generation {}",
        t_attack.elapsed(),
        tunnel(&closed).generation
    );
    let down = ping(&bed.host_a.name, &host_b, 5, "0.2").await;
    assert_eq!(
        down.received, 0,
        "traffic still flows with the tunnel failed closed"
    );
    let b = pair.status(Side::B).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        link(&b).qkd.blocks_ok,
        blocks_ok,
        "a block produced key while Eve intercepted every pulse"
    );
    assert_eq!(
        link(&b).pool.as_ref().map_or(0, |p| p.appended_bytes),
        appended,
        "key was appended to the pool under attack"
    );
    assert!(alarms_raised(&b, "qber_above_threshold") >= 1);
    assert_eq!(
        wan_counter(&pair, "clear_sites").await,
        0,
        "clear-text packets between the sites crossed the WAN"
    );

    // Eve transparent again: the link makes key, the tunnel recovers.
    pair.set_eve_fraction(0.0).expect("eve fraction");
    let t_heal = std::time::Instant::now();
    let (a, _) = wait_keyed(
        &pair,
        tunnel(&closed).generation + 1,
        Duration::from_secs(300),
    )
    .await;
    println!(
        "eve: recovered {:?} after Eve stopped, generation {}, blocks ok {}",
        t_heal.elapsed(),
        tunnel(&a).generation,
        link(&a).qkd.blocks_ok
    );
    assert!(link(&a).qkd.blocks_ok > blocks_ok);
    let up = ping(&bed.host_a.name, &host_b, 10, "0.1").await;
    assert_eq!(up.received, 10, "ping after recovery: {up:?}");
    drop(background);
    assert_eq!(
        wan_counter(&pair, "clear_sites").await,
        0,
        "clear-text packets between the sites crossed the WAN"
    );
    pair.teardown().expect("teardown");
}
