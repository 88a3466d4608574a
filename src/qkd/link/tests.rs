//! Whole-block tests of the link: both sides over the in-process driver.

use super::*;
use crate::qkd::optics::LinkParams;

/// A 25 km GYS fibre with decoy settings that give key from blocks of
/// 2·10^5 sifted bits (the GYS default set needs about 10^6).
fn config(km: f64, target: usize) -> BlockConfig {
    let mut p = LinkParams::gys(km);
    p.source.intensities = [0.6, 0.2, 0.0];
    p.source.probabilities = [0.4, 0.4, 0.2];
    BlockConfig::new(p, target)
}

fn link(km: f64, eve: f64, seed: u64) -> InProcessLink {
    let bootstrap = SecretBytes::from_slice(&[7u8; 256]);
    InProcessLink::new(
        config(km, 200_000),
        LinkRng::insecure_from_fixed_seed(seed),
        LinkRng::insecure_from_fixed_seed(seed + 1000),
        Some((eve, NoiseRng::from_seed(seed + 2000))),
        &bootstrap,
    )
    .unwrap()
}

#[test]
fn honest_blocks_give_identical_distinct_keys() {
    let mut l = link(25.0, 0.0, 1);
    let mut seen: Vec<SecretBytes> = Vec::new();
    for _ in 0..3 {
        let b = l.run_block().unwrap();
        assert_eq!(b.alice.aborted, None, "{:?}", b.alice);
        assert_eq!(b.bob.aborted, None, "{:?}", b.bob);
        let (a, k) = b.keys.expect("key");
        assert!(a.ct_eq(&k), "both sides hold the same key");
        assert_eq!(b.alice.final_bits, b.bob.final_bits);
        assert_eq!(b.alice.cascade_rounds, b.bob.cascade_rounds);
        assert!(b.alice.cascade_rounds > 0);
        // The net key is the final key less the 64 bytes that went back into
        // the authentication store.
        assert_eq!(a.len() as u64, b.alice.final_bits / 8 - 64);
        assert!(a.len() > 500, "a 25 km block yields key: {} bytes", a.len());
        for s in &seen {
            assert!(!s.ct_eq(&a), "two blocks gave the same key");
        }
        seen.push(a);
    }
}

#[test]
fn full_intercept_resend_yields_no_key() {
    let mut l = link(25.0, 1.0, 2);
    for _ in 0..2 {
        let b = l.run_block().unwrap();
        assert!(b.keys.is_none());
        assert_eq!(b.alice.aborted, Some(AbortCause::TestQber));
        assert_eq!(b.bob.aborted, Some(AbortCause::TestQber));
        assert!(b.alice.aborted.unwrap().is_alarm());
        // QBER near 25 % (Eve) plus misalignment: far above the threshold.
        assert!(b.alice.qber_test() > 0.2, "{}", b.alice.qber_test());
        assert!(b.intercepted > 0);
        // Nothing authenticated, nothing consumed.
        assert_eq!(b.alice.auth_key_bits, 0);
    }
    // Eve leaves: the next block yields key with the same authentication
    // store, which aborted blocks did not touch.
    l.eve = None;
    assert!(l.run_block().unwrap().keys.is_some());
}

/// Flips one byte of the `nth` message of `kind` in the given direction.
fn tamper_one(kind: MessageKind, to_bob: bool, byte_from_end: usize) -> SimulatedBlock {
    let mut l = link(10.0, 0.0, 3);
    let mut done = false;
    let res = l.run_block_tampered(|dir, msg| {
        if !done && dir == to_bob && msg[0] == kind as u8 {
            let i = msg.len() - 1 - byte_from_end.min(msg.len() - 10);
            msg[i] ^= 0x01;
            done = true;
        }
    });
    assert!(done, "a {kind:?} message was sent");
    match res {
        Ok(b) => b,
        // A message that no longer decodes stops the block: no key either.
        Err(_) => SimulatedBlock {
            alice: BlockReport::default(),
            bob: BlockReport::default(),
            keys: None,
            intercepted: 0,
        },
    }
}

#[test]
fn a_changed_message_never_yields_key() {
    use MessageKind::*;
    for (kind, to_bob) in [
        (Detections, false),
        (Sift, true),
        (CascadeStart, false),
        (ParityReply, true),
        (Parities, false),
        (Reconciled, false),
        (Amplify, true),
    ] {
        for from_end in [0, 5, 17] {
            let b = tamper_one(kind, to_bob, from_end);
            assert!(
                b.keys.is_none(),
                "{kind:?} byte -{from_end} changed, yet key"
            );
        }
    }
}

#[test]
fn a_changed_toeplitz_seed_fails_authentication() {
    // The seed only changes the final key, which no earlier check sees: the
    // Wegman–Carter tag over the transcript is what catches it.
    let b = tamper_one(MessageKind::Amplify, true, 1000);
    assert!(b.keys.is_none());
    assert_eq!(b.bob.aborted, Some(AbortCause::AuthFailed));
    assert_eq!(b.alice.aborted, Some(AbortCause::AuthFailed));
    assert!(b.alice.aborted_by_peer);
}

#[test]
fn a_changed_tag_fails_authentication() {
    let b = tamper_one(MessageKind::TagB, false, 0);
    assert!(b.keys.is_none());
    assert_eq!(b.alice.aborted, Some(AbortCause::AuthFailed));
    assert_eq!(b.bob.aborted, Some(AbortCause::AuthFailed));
}

#[test]
fn mismatched_configs_fail_loudly() {
    let bootstrap = SecretBytes::from_slice(&[7u8; 256]);
    let a = config(25.0, 200_000);
    let mut b = a.clone();
    b.estimate.eps_sec = 1e-9;
    let mut alice = AliceLink::new(a, LinkRng::insecure_from_fixed_seed(1), 0).unwrap();
    let mut bob = BobLink::new(b, LinkRng::insecure_from_fixed_seed(2)).unwrap();
    let mut keys = driver::InMemoryAuth(crate::qkd::auth::InMemoryAuthKeys::from_bootstrap(
        bootstrap.duplicate(),
    ));
    let LinkOutput::Fibre(frame) = alice.start_block().unwrap().remove(0) else {
        panic!("first output is a frame")
    };
    let LinkOutput::Send(det) = bob.handle_fibre(&frame).unwrap().remove(0) else {
        panic!("Bob reports")
    };
    let LinkOutput::Send(sift) = alice.handle(&det, &mut keys).unwrap().remove(0) else {
        panic!("Alice sifts")
    };
    let outs = bob.handle(&sift, &mut keys).unwrap();
    assert!(outs.iter().any(
        |o| matches!(o, LinkOutput::Aborted(r) if r.aborted == Some(AbortCause::ConfigMismatch))
    ));
}

#[test]
fn messages_roundtrip_and_hostile_bytes_do_not_panic() {
    let m = LinkMessage::Abort {
        block: 9,
        cause: AbortCause::AuthFailed,
    };
    let bytes = m.encode();
    let back = LinkMessage::decode(&bytes, 1 << 20).unwrap();
    assert_eq!(back.encode(), bytes);
    let mut x = 0x1234_5678u64;
    for len in 0..200 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = LinkMessage::decode(&buf, 1 << 20);
    }
}

/// Issue 9, finding 7: the frame decoder takes up to 2^30 slots, but Bob
/// measures only frames within the link's configured size; a larger one
/// is refused without a detection report.
#[test]
fn bob_refuses_a_frame_larger_than_the_links_frame_size() {
    let cfg = config(25.0, 200_000);
    let max = cfg.max_frame_slots;
    let mut bob = BobLink::new(cfg, LinkRng::insecure_from_fixed_seed(2)).unwrap();
    let at_limit = PulseFrame::empty(0, max).unwrap();
    assert!(matches!(
        bob.handle_fibre(&at_limit).unwrap().as_slice(),
        [LinkOutput::Send(_)]
    ));
    let over = PulseFrame::empty(u64::from(max), max + 1).unwrap();
    // What an unbounded receiver would have accepted: it decodes.
    assert_eq!(
        PulseFrame::decode(&over.encode()).unwrap().slot_count(),
        max + 1
    );
    match bob.handle_fibre(&over) {
        Err(LinkError::FrameTooLarge { slots, max: m }) => assert_eq!((slots, m), (max + 1, max)),
        other => panic!("an oversized frame was measured: {other:?}"),
    }
}

/// Issue 9, finding 10: Alice takes her tag key with Amplify and names it
/// in TagA. When Bob aborts at Amplify (here: a length above his own
/// bound), he must still consume those bytes, or the two sides' tag keys
/// part ways and every later block fails authentication. Likewise for a
/// TagA that finds Bob out of step.
#[test]
fn an_abort_at_amplify_keeps_both_sides_tag_keys_in_step() {
    for tamper_tag_stage in [false, true] {
        let mut l = link(25.0, 0.0, 7);
        let max_bits = l.config().cascade.max_key_bits as u64;
        let b = l
            .run_block_tampered(|to_bob, msg| {
                if !to_bob {
                    return;
                }
                let Ok(m) = LinkMessage::decode(msg, max_bits) else {
                    return;
                };
                match m {
                    LinkMessage::Amplify {
                        block,
                        secret_bits,
                        seed,
                    } if !tamper_tag_stage => {
                        *msg = LinkMessage::Amplify {
                            block,
                            secret_bits: secret_bits + 10_000,
                            seed,
                        }
                        .encode();
                    }
                    // Bob never sees Amplify: TagA finds him out of step.
                    LinkMessage::Amplify { block, .. } => {
                        *msg = LinkMessage::Confirm { block }.encode();
                    }
                    _ => {}
                }
            })
            .unwrap();
        assert!(b.bob.aborted.is_some(), "Bob must abort this block");
        assert!(b.keys.is_none());
        for _ in 0..2 {
            let next = l.run_block().unwrap();
            assert_eq!(
                (next.alice.aborted, next.bob.aborted),
                (None, None),
                "a block after the abort (tamper_tag_stage = {tamper_tag_stage})"
            );
        }
    }
}
