//! Rekey under traffic: while each host streams ≥ 500 numbered UDP
//! datagrams/s to the other, the make-before-break primitive replaces both
//! SAs of the tunnel 20 times. No datagram may be lost or duplicated, every
//! generation of SA must have carried traffic, the per-generation counters
//! must add up exactly to the traffic, and only the newest SAs may remain.
//!
//! (A `ping -i` stream was tried first: under emulation ping's timer only
//! managed ~280 echo requests/s; a rate-controlled UDP sender that catches
//! up on late wake-ups holds the rate, and numbered datagrams make loss
//! exact per direction.)

use std::time::Duration;

use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::{RekeyTiming, SaId, rekey_direction};

use crate::support::*;

const REKEYS: u32 = 20;
/// Time each generation carries traffic before the next rekey.
const GENERATION: Duration = Duration::from_millis(300);
/// Packets under the old SPI can only be in flight for microseconds on a
/// veth, even emulated; 200 ms is ample and keeps the test short.
const GRACE: Duration = Duration::from_millis(200);
/// Datagrams per second in each direction; the achieved rate is measured.
const RATE: u32 = 550;
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

    let stream_ab = UdpStream::start(&bed.host_a, &bed.host_b, 5001, RATE).await;
    let stream_ba = UdpStream::start(&bed.host_b, &bed.host_a, 5002, RATE).await;
    // When each rekey ran, in ms since the streams started (datagram n was
    // sent at about n / RATE s), to place any loss against the steps.
    let t0 = std::time::Instant::now();
    let mut timeline: Vec<String> = Vec::new();

    // Inbound packets per generation, per direction (exact figures: read
    // at the receiver after the grace period, when nothing uses the SA).
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
            let began = t0.elapsed().as_millis();
            let outcome = rekey_direction(
                receiver,
                sender,
                Some(*current),
                Some(*current),
                spec_rx,
                spec_tx,
                RekeyTiming {
                    grace: GRACE,
                    ..RekeyTiming::default()
                },
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
            timeline.push(format!("{round}{dir}:{began}-{}", t0.elapsed().as_millis()));
            *current = outcome.new;
        }
        tokio::time::sleep(GENERATION).await;
    }
    let drain = Duration::from_millis(500);
    let ab_stats = stream_ab.finish(drain).await;
    let ba_stats = stream_ba.finish(drain).await;

    // The final generation's counters (traffic has stopped: exact).
    inbound_ab.push(b.get_sa(&ab).await.expect("final A→B").counters.packets);
    inbound_ba.push(a.get_sa(&ba).await.expect("final B→A").counters.packets);

    let drops = format!(
        "xfrm_stat gw-a [{}] gw-b [{}]; rekeys (ms) {}",
        xfrm_stat(&ga.name).await,
        xfrm_stat(&gb.name).await,
        timeline.join(" ")
    );
    for (dir, stats, tally) in [
        ("A→B", ab_stats, &inbound_ab),
        ("B→A", ba_stats, &inbound_ba),
    ] {
        assert!(
            stats.rate >= MIN_RATE,
            "{dir}: rate {:.0}/s < {MIN_RATE}: {stats:?}",
            stats.rate
        );
        assert_eq!(stats.send_errors, 0, "{dir}: {stats:?}");
        assert_eq!(stats.duplicates, 0, "{dir}: {stats:?}");
        assert_eq!(
            stats.received,
            stats.sent,
            "{dir}: lost {} of {} datagrams during {REKEYS} rekeys (first missing {:?}; {drops})",
            stats.sent - stats.received,
            stats.sent,
            stats.first_missing
        );
        // Every generation (the initial one and 20 new ones) carried
        // traffic, and together they account for every datagram exactly.
        assert_eq!(tally.len(), REKEYS as usize + 1);
        for (g, &n) in tally.iter().enumerate() {
            assert!(n > 0, "{dir} generation {g} carried no packet: {tally:?}");
        }
        assert_eq!(
            tally.iter().sum::<u64>(),
            stats.sent,
            "{dir} per-generation counts {tally:?}"
        );
        eprintln!(
            "rekey {dir}: {REKEYS} rekeys, {} datagrams at {:.0}/s, 0 lost; per generation {tally:?}",
            stats.sent, stats.rate
        );
    }
    // No stale SA: each gateway holds exactly the two newest SAs, by the
    // library's account and by iproute2's.
    let newest: Vec<SaId> = vec![ab, ba];
    let mut want: Vec<u32> = newest.iter().map(|s| s.spi()).collect();
    want.sort();
    for (handle, gw) in [(&a, ga), (&b, gb)] {
        let mut owned: Vec<u32> = handle
            .list_owned_sas()
            .await
            .expect("list")
            .iter()
            .map(|s| s.id.spi())
            .collect();
        owned.sort();
        assert_eq!(owned, want, "stale SAs in {}", gw.name);
        let mut all = ip_xfrm_spis(&gw.name).await;
        all.sort();
        assert_eq!(all, want, "ip xfrm state in {}", gw.name);
    }
    bed.teardown().expect("teardown");
}
