//! Tunnel: SAs and policies installed through the library carry the hosts'
//! ping between the sites, and the path between the gateways carries only
//! ESP — proven by an nftables filter that drops every other IPv4 packet on
//! the WAN link (and is shown to have teeth before IPsec is on) — with the
//! kernel's own SA counters (`ip -s xfrm state`) matching the traffic.

use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::ReplayProtection;

use crate::support::*;

/// On each gateway: accept ESP and packets the kernel just decapsulated
/// (they re-enter prerouting with a secpath), drop any other IPv4 packet
/// arriving from the WAN, counting both.
const WAN_ESP_ONLY: &str = r#"
table inet qkdtest {
  counter esp_in {}
  counter plain_dropped {}
  chain wan_in {
    type filter hook prerouting priority raw; policy accept;
    iifname "wan" meta ipsec exists accept
    iifname "wan" ip protocol esp counter name "esp_in" accept
    iifname "wan" meta nfproto ipv4 counter name "plain_dropped" drop
  }
}
"#;

const PINGS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_only_esp_and_counters_match() {
    let bed = Testbed::create(&Testbed::unique_prefix("tunnel"))
        .await
        .expect("testbed");
    let (ga, gb) = (&bed.gw_a, &bed.gw_b);
    let host_b = bed.host_b.addr.to_string();

    // Routing works in the clear before anything else.
    let clear = ping(&bed.host_a.name, &host_b, 3, "0.2").await;
    assert_eq!(clear.received, 3, "no plain connectivity: {clear:?}");

    // With the ESP-only filter, plaintext no longer gets through.
    for gw in [ga, gb] {
        nft_apply(&gw.name, WAN_ESP_ONLY).await;
    }
    let blocked = ping(&bed.host_a.name, &host_b, 3, "0.2").await;
    assert_eq!(blocked.received, 0, "the filter let plaintext through");
    let dropped_b = nft_counter(&gb.name, "plain_dropped").await;
    assert!(dropped_b >= 3, "filter dropped {dropped_b} < 3 packets");
    let dropped_a = nft_counter(&ga.name, "plain_dropped").await;

    // IPsec on: A→B with a legacy 32-packet window, B→A with ESN and a
    // 128-packet window (XFRMA_REPLAY_ESN_VAL).
    let (a, b) = gateway_handles(&bed).await;
    let ab = install_sa_pair(&b, &a, sa_spec(ga, gb, REQID_AB, test_key(1))).await;
    let mut ba_spec = sa_spec(gb, ga, REQID_BA, test_key(2));
    ba_spec.replay = ReplayProtection::Esn { window: 128 };
    let ba = install_sa_pair(&a, &b, ba_spec).await;
    install_tunnel_policies(&a, &b, &bed).await;

    let through = ping(&bed.host_a.name, &host_b, PINGS, "0.05").await;
    assert_eq!(
        (through.transmitted, through.received),
        (PINGS, PINGS),
        "ping through the tunnel"
    );

    // Every packet between the gateways was ESP: the filter counted one ESP
    // packet per echo request at B and per reply at A, and dropped nothing
    // more.
    assert_eq!(nft_counter(&gb.name, "esp_in").await, PINGS);
    assert_eq!(nft_counter(&ga.name, "esp_in").await, PINGS);
    assert_eq!(nft_counter(&gb.name, "plain_dropped").await, dropped_b);
    assert_eq!(nft_counter(&ga.name, "plain_dropped").await, dropped_a);

    // The kernel's SA counters, read by iproute2, match: each SA carried
    // exactly one packet per ping on both sides.
    for gw in [ga, gb] {
        let mut seen = ip_xfrm_packets(&gw.name).await;
        seen.sort();
        let mut expected = vec![(ab.spi(), PINGS), (ba.spi(), PINGS)];
        expected.sort();
        assert_eq!(seen, expected, "ip -s xfrm state in {}", gw.name);
    }
    // And the library reads the same counters, and no key.
    for (handle, id) in [(&a, &ab), (&a, &ba), (&b, &ab), (&b, &ba)] {
        let info = handle.get_sa(id).await.expect("get SA");
        assert_eq!(info.counters.packets, PINGS, "{id}");
        assert_eq!(info.aead.as_deref(), Some("rfc4106(gcm(aes))"));
        assert_eq!(info.counters.integrity_failed, 0);
    }
    assert!(b.get_sa(&ba).await.unwrap().esn, "B→A must use ESN");
    assert!(!a.get_sa(&ab).await.unwrap().esn);

    bed.teardown().expect("teardown");
}
