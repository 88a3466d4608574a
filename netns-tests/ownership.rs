//! Ownership: SAs and policies made by hand with `ip xfrm` in the same
//! namespace — with reqid 0, with a strongSwan-style reqid, and one that
//! shares our reqid range but not our SPI range — survive the library's
//! `remove_owned()`, while everything the library installed is removed.

use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::Removed;

use crate::support::*;

/// Hand-made SAs: (SPI, reqid). None is ours by the default rule.
const FOREIGN_SAS: [(u32, u32); 3] = [
    (0x0000_1000, 0),           // `ip xfrm` default reqid
    (0xc000_0001, 1),           // strongSwan-style reqid and SPI
    (0xc000_0002, 0x5144_0001), // our reqid, foreign SPI
];

async fn add_foreign(ns: &str, src: &str, dst: &str) {
    for (spi, reqid) in FOREIGN_SAS {
        let spi = format!("{spi:#x}");
        let reqid = reqid.to_string();
        run_ok(
            in_netns(
                ns,
                "ip",
                &[
                    "xfrm",
                    "state",
                    "add",
                    "src",
                    src,
                    "dst",
                    dst,
                    "proto",
                    "esp",
                    "spi",
                    &spi,
                    "reqid",
                    &reqid,
                    "mode",
                    "tunnel",
                    "aead",
                    "rfc4106(gcm(aes))",
                    // A throwaway key for a hand-made SA; never used for traffic.
                    "0x0101010101010101010101010101010101010101010101010101010101010101deadbeef",
                    "128",
                ],
            ),
            "ip xfrm state add",
        )
        .await;
    }
    // A hand-made policy between other prefixes, template reqid 0.
    run_ok(
        in_netns(
            ns,
            "ip",
            &[
                "xfrm",
                "policy",
                "add",
                "src",
                "172.16.1.0/24",
                "dst",
                "172.16.2.0/24",
                "dir",
                "out",
                "tmpl",
                "src",
                src,
                "dst",
                dst,
                "proto",
                "esp",
                "mode",
                "tunnel",
                "reqid",
                "0",
            ],
        ),
        "ip xfrm policy add",
    )
    .await;
}

async fn policy_count(ns: &str) -> usize {
    run_ok(
        in_netns(ns, "ip", &["xfrm", "policy", "list"]),
        "ip xfrm policy list",
    )
    .await
    .lines()
    .filter(|l| l.starts_with("src "))
    .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_owned_leaves_hand_made_objects_alone() {
    let bed = Testbed::create(&Testbed::unique_prefix("owner"))
        .await
        .expect("testbed");
    let (ga, gb) = (&bed.gw_a, &bed.gw_b);
    let (wan_a, wan_b) = (ga.wan.to_string(), gb.wan.to_string());
    add_foreign(&ga.name, &wan_a, &wan_b).await;

    let (a, b) = gateway_handles(&bed).await;
    let ab = install_sa_pair(&b, &a, sa_spec(ga, gb, REQID_AB, test_key(11))).await;
    let ba = install_sa_pair(&a, &b, sa_spec(gb, ga, REQID_BA, test_key(12))).await;
    install_tunnel_policies(&a, &b, &bed).await;
    // One more of ours: an allocated, never completed (larval) SA.
    let larval = a
        .allocate_spi(
            gb.wan,
            ga.wan,
            REQID_BA,
            qkd_ipsec::xfrm::Mode::Tunnel,
            None,
        )
        .await
        .expect("allocspi");

    let owned_before = a.list_owned_sas().await.expect("list");
    let mut owned_spis: Vec<u32> = owned_before.iter().map(|s| s.id.spi()).collect();
    owned_spis.sort();
    let mut want = vec![ab.spi(), ba.spi(), larval];
    want.sort();
    assert_eq!(owned_spis, want, "the rule must claim exactly our SAs");
    assert_eq!(a.list_owned_policies().await.expect("list").len(), 3);
    assert_eq!(policy_count(&ga.name).await, 4);

    let removed = a.remove_owned().await.expect("remove_owned");
    assert_eq!(
        removed,
        Removed {
            sas: 3,
            policies: 3
        }
    );

    // The hand-made objects are all still there, and nothing of ours is.
    let mut left = ip_xfrm_spis(&ga.name).await;
    left.sort();
    let mut foreign: Vec<u32> = FOREIGN_SAS.iter().map(|(s, _)| *s).collect();
    foreign.sort();
    assert_eq!(left, foreign, "SAs left in gw-a");
    assert_eq!(policy_count(&ga.name).await, 1, "policies left in gw-a");
    assert!(a.list_owned_sas().await.unwrap().is_empty());
    assert!(a.list_owned_policies().await.unwrap().is_empty());
    // A second pass finds nothing to do.
    assert_eq!(a.remove_owned().await.expect("again"), Removed::default());
    // The other gateway is untouched by gw-a's clean-up.
    assert_eq!(b.list_owned_sas().await.unwrap().len(), 2);
    bed.teardown().expect("teardown");
}
