//! The agents as KMEs for local applications (ETSI GS QKD 014 server):
//! SAE A (host-a) calls `enc_keys` at gw-a, SAE B (host-b) calls
//! `dec_keys` at gw-b with the same key_IDs and gets the same keys (seen as
//! fingerprints: the test never prints a key); another SAE's certificate
//! is refused (401) for those keys, the rightful SAE still gets them, and
//! a key_ID fetched a second time is refused. Every call goes over mutual
//! TLS from the host's namespace to its gateway's LAN address.

use qkd_ipsec::testbed::{KmeOptions, Side};

use crate::kme_support::*;

/// An SAE of gw-b's KME that is not the slave of the keys SAE A asks for.
const OTHER_SAE: &str = "sae-other";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kmes_serve_the_same_keys_once_and_only_to_their_sae() {
    let pair = start_kme_pair(
        "kme",
        KmeOptions {
            extra_saes: vec![(Side::B, OTHER_SAE.into())],
            ..KmeOptions::default()
        },
    )
    .await;
    let (sae_a, sae_b) = (Side::A.sae_id(), Side::B.sae_id());

    // Status, as the spec's field names.
    let out = sae(&pair, Side::A, sae_a, &["status", sae_b]).await;
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["source_KME_ID"], "kme-gw-a", "{status}");
    assert_eq!(status["master_SAE_ID"], sae_a, "{status}");
    assert_eq!(status["slave_SAE_ID"], sae_b, "{status}");
    assert_eq!(status["key_size"], 256, "{status}");
    assert!(
        status["stored_key_count"].as_u64().is_some_and(|n| n > 0),
        "no key to serve: {status}"
    );

    // enc at gw-a, dec at gw-b: the same keys.
    let enc = sae_keys(&pair, Side::A, sae_a, &["enc", sae_b, "--number", "3"]).await;
    assert_eq!(enc.len(), 3, "{enc:?}");
    let ids: Vec<&str> = enc.iter().map(|k| k.id.as_str()).collect();
    let mut dec_call = vec!["dec", sae_a];
    dec_call.extend(&ids);
    let dec = sae_keys(&pair, Side::B, sae_b, &dec_call).await;
    assert_eq!(dec, enc, "dec_keys at gw-b differs from enc_keys at gw-a");
    let mut fingerprints: Vec<&str> = enc.iter().map(|k| k.fingerprint.as_str()).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 3, "three keys, three distinct values");

    // Another SAE's certificate: refused, and the key stays for its slave.
    let one = sae_keys(&pair, Side::A, sae_a, &["enc", sae_b]).await;
    let id = one[0].id.as_str();
    let refused = sae_refused(&pair, Side::B, OTHER_SAE, &["dec", sae_a, id]).await;
    assert!(refused.contains("401"), "expected a 401: {refused}");
    let got = sae_keys(&pair, Side::B, sae_b, &["dec", sae_a, id]).await;
    assert_eq!(
        got, one,
        "the rightful slave lost its key to a refused call"
    );

    // A key_ID is delivered once.
    let twice = sae_refused(&pair, Side::B, sae_b, &["dec", sae_a, id]).await;
    assert!(
        twice.contains("400") || twice.contains("401"),
        "a second dec_keys of {id} must be refused with 400/401: {twice}"
    );
    // The KME's limits hold at the door (max_key_per_request is 128).
    let too_many = sae_refused(&pair, Side::A, sae_a, &["enc", sae_b, "--number", "1000"]).await;
    assert!(too_many.contains("400"), "{too_many}");

    // Every delivery is counted.
    let (a, b) = (
        pair.status(Side::A).expect("gw-a status"),
        pair.status(Side::B).expect("gw-b status"),
    );
    assert_eq!(
        kme_delivered(&a, sae_a, "enc"),
        4,
        "gw-a's count of enc_keys deliveries"
    );
    assert_eq!(
        kme_delivered(&b, sae_b, "dec"),
        4,
        "gw-b's count of dec_keys deliveries"
    );
    assert!(
        kme_refused(&b, OTHER_SAE) >= 1,
        "gw-b counted no refusal for {OTHER_SAE}"
    );
    println!("kme: 4 keys served alike at both KMEs; refusals counted");
    pair.teardown().expect("teardown");
}
