//! End to end: two agent processes key the tunnel from QKD and the hosts
//! behind the gateways talk through it, while an nftables filter on the
//! WAN lets nothing but ESP and the peer channel pass (and is shown to have
//! teeth). The kernel is the witness for the keys: for every SA both
//! gateways hold, `ip xfrm state` shows the same key on sender and
//! receiver; keys differ across generations and appear (not even 8 bytes
//! of them) in no file the test wrote nor in the agents' state files; and
//! each generation consumes exactly 72 bytes of the pool's "sa_key" use.

use std::collections::BTreeMap;
use std::time::Duration;

use qkd_ipsec::ops::BoardSnapshot;
use qkd_ipsec::secret::SecretBytes;
use qkd_ipsec::testbed::Side;

use crate::agent_support::*;
use crate::support::*;

/// Generations sampled after the first one.
const GENERATIONS: usize = 4;
/// Long enough for the emulated link to refill the pool between rekeys
/// (it makes about 30 bytes/s for the initiator in the VM; a generation
/// costs 72).
const REKEY_INTERVAL: Duration = Duration::from_secs(8);
const PINGS: u64 = 20;

/// Both sides' snapshots at generation `g` with pool figures reported after
/// that generation's SAs were installed (the agent refreshes the pool
/// figures every 2 s and on new blocks, not on every take).
async fn pool_report_after_install(
    pair: &qkd_ipsec::testbed::AgentPair,
    g: u64,
) -> (BoardSnapshot, BoardSnapshot) {
    let fresh = |s: &BoardSnapshot| {
        let installed = tunnel(s).sa_installed_at_unix_ms.unwrap_or(u64::MAX);
        link(s)
            .pool
            .as_ref()
            .is_some_and(|p| p.updated_at_unix_ms > installed)
    };
    within(REKEY_INTERVAL, "pool figures after the install", async {
        loop {
            let a = pair.status(Side::A).unwrap_or_else(|e| panic!("{e}"));
            let b = pair.status(Side::B).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                tunnel(&a).generation,
                g,
                "a rekey came before the pool report"
            );
            if fresh(&a) && fresh(&b) && keyed_alike(&a, &b) {
                return (a, b);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_key_the_tunnel_from_qkd_end_to_end() {
    let mut opts = options("e2e");
    opts.rekey_interval = REKEY_INTERVAL;
    let pair = start_pair(opts).await;
    let bed = pair.bed();
    let host_b = bed.host_b.addr.to_string();

    let (a0, _) = wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    let g0 = tunnel(&a0).generation;

    // The filter has teeth: the gateways' own clear-text ping (not covered
    // by the tunnel's policies) is dropped and counted.
    apply_wan_filter(&pair).await;
    let clear = ping(&bed.gw_a.name, &bed.gw_b.wan.to_string(), 2, "0.2").await;
    assert_eq!(clear.received, 0, "the WAN filter let clear text through");
    assert!(wan_counter(&pair, "other_dropped").await >= 2);

    let through = ping(&bed.host_a.name, &host_b, PINGS, "0.05").await;
    assert_eq!(
        through.received, PINGS,
        "ping through the QKD-keyed tunnel behind the ESP-only filter: {through:?}"
    );
    assert!(wan_counter(&pair, "esp_in").await >= 2 * PINGS);
    assert_eq!(wan_counter(&pair, "clear_sites").await, 0);

    // Walk through generations; at each, compare the kernel's keys and the
    // pool's accounting.
    let mut keys: BTreeMap<u32, SecretBytes> = BTreeMap::new();
    let mut accounting = Vec::new();
    let mut g = g0;
    for _ in 0..GENERATIONS {
        let (a, _) = wait_keyed(&pair, g + 1, REKEY_INTERVAL * 6).await;
        g = tunnel(&a).generation;
        let (a, b) = pool_report_after_install(&pair, g).await;
        accounting.push((
            g,
            consumed(&a, "sa_key"),
            consumed(&b, "sa_key"),
            tunnel(&a).keys_wasted_bytes,
        ));
        let current = [tunnel(&a).spi_out, tunnel(&a).spi_in].map(|s| s.expect("keyed"));
        let sas = sa_pairs(&pair).await;
        for spi in current {
            let (_, [on_a, on_b]) = sas
                .iter()
                .find(|((_, _, s), _)| *s == spi)
                .unwrap_or_else(|| panic!("generation {g}: SA {spi:#x} is in no kernel"));
            let (Some(ka), Some(kb)) = (on_a, on_b) else {
                panic!("generation {g}: SA {spi:#x} is not keyed on both gateways");
            };
            assert_eq!(ka.len(), 36, "SA {spi:#x}: rfc4106 AES-256 key + salt");
            assert!(
                ka.ct_eq(kb),
                "generation {g}: SA {spi:#x}'s key differs between sender and receiver"
            );
        }
        for ((src, dst, spi), [on_a, on_b]) in sas {
            if let (Some(ka), Some(kb)) = (&on_a, &on_b) {
                assert!(ka.ct_eq(kb), "SA {src}→{dst} {spi:#x}: keys differ");
            }
            for k in [on_a, on_b].into_iter().flatten() {
                match keys.get(&spi) {
                    Some(seen) => assert!(seen.ct_eq(&k), "SA {spi:#x} changed its key"),
                    None => {
                        keys.insert(spi, k);
                    }
                }
            }
        }
        let ping_now = ping(&bed.host_a.name, &host_b, 5, "0.05").await;
        assert_eq!(ping_now.received, 5, "ping at generation {g}: {ping_now:?}");
    }

    // Distinct keys for distinct SAs, across all generations seen.
    let all: Vec<(&u32, &SecretBytes)> = keys.iter().collect();
    for (i, (s1, k1)) in all.iter().enumerate() {
        for (s2, k2) in &all[i + 1..] {
            assert!(!k1.ct_eq(k2), "SAs {s1:#x} and {s2:#x} share a key");
        }
    }

    // No key (nor 8 bytes of one) is in anything written to disk: the
    // configs and secrets this test wrote, and the agents' state files
    // (the pools are encrypted at rest).
    let mut files = pair.written_files();
    for side in Side::BOTH {
        let dir = &pair.files(side).state_dir;
        for entry in std::fs::read_dir(dir).expect("state dir") {
            files.push(entry.expect("state entry").path());
        }
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for (spi, k) in &keys {
            assert!(
                !shares_window(k.expose(), &bytes),
                "8 bytes of SA {spi:#x}'s key occur in {}",
                f.display()
            );
        }
    }

    // 72 pool bytes per generation, on both sides (nothing wasted).
    for w in accounting.windows(2) {
        let ((g1, a1, b1, w1), (g2, a2, b2, w2)) = (w[0], w[1]);
        let expected = SA_KEY_BYTES_PER_GENERATION * (g2 - g1);
        assert_eq!(w2, w1, "keys wasted between generations {g1} and {g2}");
        assert_eq!(
            a2 - a1,
            expected,
            "gw-a's sa_key use from generation {g1} to {g2}"
        );
        assert_eq!(
            b2 - b1,
            expected,
            "gw-b's sa_key use from generation {g1} to {g2}"
        );
    }
    println!(
        "e2e: {} SAs over generations {g0}..={g}, sa_key accounting {:?}",
        keys.len(),
        accounting
    );
    pair.teardown().expect("teardown");
}
