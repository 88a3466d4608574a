//! Lifetime events: an SA with soft and hard packet limits yields, through
//! the library's event stream, a soft EXPIRE and then a hard EXPIRE (the
//! kernel deletes the SA); the outbound policy, now without SA, then yields
//! an ACQUIRE for the same reqid.

use std::time::Duration;

use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::{Ownership, XfrmEvent, XfrmEvents};

use crate::support::*;

const SOFT_PACKETS: u64 = 5;
const HARD_PACKETS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_then_hard_expire_then_acquire() {
    let bed = Testbed::create(&Testbed::unique_prefix("lifetime"))
        .await
        .expect("testbed");
    let (ga, gb) = (&bed.gw_a, &bed.gw_b);
    let (a, b) = gateway_handles(&bed).await;
    // Subscribe before any traffic: the kernel raises ACQUIRE only while
    // someone listens.
    let mut events = XfrmEvents::subscribe(&ga.netns, Some(Ownership::default()))
        .await
        .expect("subscribe in gw-a");

    let mut spec = sa_spec(ga, gb, REQID_AB, test_key(7));
    spec.lifetimes.soft.packets = Some(SOFT_PACKETS);
    spec.lifetimes.hard.packets = Some(HARD_PACKETS);
    let ab = install_sa_pair(&b, &a, spec).await;
    install_sa_pair(&a, &b, sa_spec(gb, ga, REQID_BA, test_key(8))).await;
    install_tunnel_policies(&a, &b, &bed).await;

    // 15 echo requests leave through the limited outbound SA at gw-a.
    let stats = ping(&bed.host_a.name, &bed.host_b.addr.to_string(), 15, "0.1").await;
    // The hard limit allows exactly HARD_PACKETS through (then drops).
    assert_eq!(stats.received, HARD_PACKETS, "{stats:?}");

    let mut seen = Vec::new();
    within(
        Duration::from_secs(30),
        "soft expire, hard expire, acquire",
        async {
            loop {
                let event = events.next().await.expect("event stream");
                let done = matches!(event, XfrmEvent::Acquire(_));
                seen.push(event);
                if done {
                    break;
                }
            }
        },
    )
    .await;

    let position = |pred: &dyn Fn(&XfrmEvent) -> bool| seen.iter().position(pred);
    let soft = position(&|e| matches!(e, XfrmEvent::SoftExpire(x) if x.id == ab))
        .unwrap_or_else(|| panic!("no soft expire for {ab}: {seen:?}"));
    let hard = position(&|e| matches!(e, XfrmEvent::HardExpire(x) if x.id == ab))
        .unwrap_or_else(|| panic!("no hard expire for {ab}: {seen:?}"));
    let acquire = position(&|e| matches!(e, XfrmEvent::Acquire(q) if q.reqids.contains(&REQID_AB)))
        .unwrap_or_else(|| panic!("no acquire for reqid {REQID_AB:#x}: {seen:?}"));
    assert!(soft < hard && hard < acquire, "order {seen:?}");
    if let XfrmEvent::SoftExpire(x) = &seen[soft] {
        assert_eq!(
            x.counters.packets, SOFT_PACKETS,
            "soft expiry fired late/early"
        );
    }
    if let XfrmEvent::HardExpire(x) = &seen[hard] {
        assert_eq!(x.counters.packets, HARD_PACKETS);
    }
    if let XfrmEvent::Acquire(q) = &seen[acquire] {
        assert_eq!((q.src, q.dst), (ga.wan, gb.wan));
    }
    // The hard expiry really removed the SA.
    assert!(
        matches!(
            a.get_sa(&ab).await,
            Err(qkd_ipsec::xfrm::XfrmError::NotFound { .. })
        ),
        "SA survived its hard limit"
    );
    bed.teardown().expect("teardown");
}
