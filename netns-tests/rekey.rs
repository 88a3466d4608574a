//! Rekey under traffic: while the hosts exchange ≥ 500 packets/s, the
//! make-before-break primitive replaces both SAs of the tunnel 20 times.
//! No packet may be lost, every generation of SA must have carried traffic,
//! the per-generation counters must add up exactly to the traffic, and only
//! the newest SAs may remain.

use std::time::{Duration, Instant};

use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::{SaId, rekey_direction};

use crate::support::*;

const REKEYS: u32 = 20;
/// Time each generation carries traffic before the next rekey.
const GENERATION: Duration = Duration::from_millis(300);
/// Packets under the old SPI can only be in flight for microseconds on a
/// veth, even emulated; 200 ms is ample and keeps the test short.
const GRACE: Duration = Duration::from_millis(200);
/// Nominal 666 packets/s; the achieved rate is measured and must be ≥ 500.
const PING_INTERVAL: &str = "0.0015";
const MIN_RATE: f64 = 500.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_twenty_times_under_traffic_without_loss() {
    let bed = Testbed::create(&Testbed::unique_prefix("rekey"))
        .await
        .expect("testbed");
    let (ga, gb) = (&bed.gw_a, &bed.gw_b);
    let (a, b) = gateway_handles(&bed).await;
    let mut ab = install_sa_pair(&b, &a, sa_spec(ga, gb, REQID_AB, test_key(100))).await;
    let mut ba = install_sa_pair(&a, &b, sa_spec(gb, ga, REQID_BA, test_key(200))).await;
    install_tunnel_policies(&a, &b, &bed).await;

    // Enough packets to outlast the rekeys at the nominal rate.
    let per_round = GENERATION + GRACE * 2 + Duration::from_millis(150);
    let duration = per_round * (REKEYS + 2);
    let count = (duration.as_secs_f64() * 666.0) as u64;
    let started = Instant::now();
    let pinger = spawn_ping(
        &bed.host_a.name,
        &bed.host_b.addr.to_string(),
        count,
        PING_INTERVAL,
    );

    // Inbound packets per generation, per direction (exact figures: read
    // from the receiver after the grace period).
    let mut inbound_ab: Vec<u64> = Vec::new();
    let mut inbound_ba: Vec<u64> = Vec::new();
    tokio::time::sleep(GENERATION).await;
    for round in 1..=REKEYS {
        for (dir, receiver, sender, from, to, reqid, current, tally) in [
            ("A→B", &b, &a, ga, gb, REQID_AB, &mut ab, &mut inbound_ab),
            ("B→A", &a, &b, gb, ga, REQID_BA, &mut ba, &mut inbound_ba),
        ] {
            let seed = round * 2 + u32::from(reqid == REQID_BA);
            let spec_rx = sa_spec(from, to, reqid, test_key(seed));
            let spec_tx = sa_spec(from, to, reqid, test_key(seed));
            let outcome = rekey_direction(
                receiver,
                sender,
                Some(*current),
                Some(*current),
                spec_rx,
                spec_tx,
                GRACE,
            )
            .await
            .unwrap_or_else(|e| panic!("rekey {round} {dir}: {e}"));
            assert_ne!(
                outcome.new.spi(),
                current.spi(),
                "rekey {round} {dir} reused the SPI"
            );
            let retired = outcome
                .retired_inbound
                .unwrap_or_else(|| panic!("rekey {round} {dir}: old inbound SA vanished"));
            tally.push(retired.packets);
            *current = outcome.new;
        }
        tokio::time::sleep(GENERATION).await;
    }

    let out = within(duration * 3, "the ping stream", pinger.wait_with_output())
        .await
        .expect("ping");
    let elapsed = started.elapsed().as_secs_f64();
    let stats = parse_ping(&String::from_utf8_lossy(&out.stdout)).expect("ping summary");
    let rate = stats.transmitted as f64 / elapsed;

    // The final generation's counters (traffic has stopped: exact).
    inbound_ab.push(b.get_sa(&ab).await.expect("final A→B").counters.packets);
    inbound_ba.push(a.get_sa(&ba).await.expect("final B→A").counters.packets);

    assert_eq!(stats.transmitted, count, "ping did not send everything");
    assert!(
        rate >= MIN_RATE,
        "traffic rate {rate:.0} packets/s < {MIN_RATE}"
    );
    assert_eq!(
        stats.received,
        stats.transmitted,
        "lost {} of {} packets during {REKEYS} rekeys",
        stats.transmitted - stats.received,
        stats.transmitted
    );
    // Every generation carried traffic (the initial one and 20 new ones per
    // direction), and the generations account for every packet exactly.
    for (dir, tally, expected) in [
        ("A→B", &inbound_ab, stats.transmitted),
        ("B→A", &inbound_ba, stats.received),
    ] {
        assert_eq!(tally.len(), REKEYS as usize + 1);
        for (g, &n) in tally.iter().enumerate() {
            assert!(n > 0, "{dir} generation {g} carried no packet: {tally:?}");
        }
        assert_eq!(
            tally.iter().sum::<u64>(),
            expected,
            "{dir} per-generation counts {tally:?}"
        );
    }
    // No stale SA: each gateway holds exactly the two newest SAs, by the
    // library's account and by iproute2's.
    let newest: Vec<SaId> = vec![ab, ba];
    for (handle, gw) in [(&a, ga), (&b, gb)] {
        let mut owned: Vec<u32> = handle
            .list_owned_sas()
            .await
            .expect("list")
            .iter()
            .map(|s| s.id.spi())
            .collect();
        owned.sort();
        let mut want: Vec<u32> = newest.iter().map(|s| s.spi()).collect();
        want.sort();
        assert_eq!(owned, want, "stale SAs in {}", gw.name);
        let mut all = ip_xfrm_spis(&gw.name).await;
        all.sort();
        assert_eq!(all, want, "ip xfrm state in {}", gw.name);
    }
    eprintln!(
        "rekey: {REKEYS} rekeys per direction, {} packets at {rate:.0}/s, 0 lost; A→B per generation {inbound_ab:?}",
        stats.transmitted
    );
    bed.teardown().expect("teardown");
}
